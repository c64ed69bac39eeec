"""`costwarden demo` (costwarden.demo): it runs twice on one database and tells the same
story both times; the sections after the story (BYOK, guardrails, the ledger) run in
their declared order, and each of them works (and reruns) on its own."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import costwarden
from costwarden import demo
from costwarden.cli import main
from costwarden.demo import byok as byok_demo
from costwarden.demo import guardrails as guardrails_demo
from costwarden.demo import ledger as ledger_demo
from costwarden.demo import openai_sdk as openai_demo
from costwarden.demo import story
from cwtest import Seeded, table_snapshot
from ledger_helpers import build_chains

Conn = psycopg.Connection[Any]
KEK = "byok-test-kek-0123456789abcdefghijklmnop"

SECTIONS = [
    "== 1. Catalogue and quotes ==",
    "== 2. Layered budgets",
    "== 3. Agents spending concurrently ==",
    "== 4. Shadow mode",
    "== 5. A streaming call aborted by a meter tick ==",
    "== 6. An expired reservation, then a late commit ==",
    "== 7. Spend per scope and window (budget_status) ==",
    "== 8. Spend without any limit",
]


def _run(dsn: str) -> tuple[demo.DemoSummary, list[str]]:
    lines: list[str] = []
    summary = demo.run_demo(dsn, lines.append, hooks=False)
    return summary, "\n".join(lines).splitlines()


def _check(summary: demo.DemoSummary, lines: list[str], run: int) -> None:
    assert summary.run == run
    assert lines[0].startswith(f"== costwarden demo (run {run}: orgs acme-{run}, ")
    where = [next(i for i, line in enumerate(lines) if line.startswith(s)) for s in SECTIONS]
    assert where == sorted(where)
    assert len(lines) < 150
    # 3. agents: admitted and refused, each by its own layer, never past an enforced limit
    assert summary.admitted > 0 and summary.denied > 0
    assert summary.refused_by == {
        "alice": "user:alice",  # her own override
        "bob": "user:bob",  # the interns group's per-member limit
        "carol": "user:carol",  # the org's user_default
        "ci-bot": "key:ci-key",  # the key's token quota
        "dave": "org",  # the two globex agents race for the org's hourly limit
        "erin": "org",
    }
    assert set(summary.denial_codes) == {"budget_exceeded", "token_quota_exceeded"}
    assert summary.overage_micros == 0
    assert summary.overshoot <= 0 and summary.limits_checked >= 9 and summary.watch_samples >= 2
    assert "-> spend + held never exceeded an enforced limit." in lines
    # 4. shadow: everything admitted, the would-be refusals recorded
    assert summary.shadow_admitted == 4 * demo.MAX_CALLS and summary.shadow_denied == 0
    assert summary.shadow_would_refuse > 0
    # 5. the stream is aborted by a tick; what was streamed is charged
    assert summary.stream_aborted and summary.stream_ticks >= 2
    assert 0 < summary.stream_overage_micros <= 3000  # at most one tick of 300 output tokens
    # 6. expiry charged the metered usage, the late commit only the remainder
    assert summary.expired_status == "expired"
    assert summary.expiry_charged_micros == 7500 + 8000  # 3000 in + 800 out on gpt-4o
    assert summary.late_charged_micros == 3000  # 300 more output tokens
    # 7. nothing is left held
    assert summary.closing_held == 0
    # 8. an org without limits: its spend per workspace, largest first (sample prices)
    assert summary.spend_rows == [
        ("search", 3 * (8000 * 2500 + 4000 * 1250) // 1000, 3),  # gpt-4o, cached input
        ("helpdesk", 5 * (3000 * 150 + 600 * 600) // 1000, 5),  # gpt-4o-mini
        ("notes", (500 * 2500 + 100 * 10000) // 1000, 2),  # one held call counts as a call
    ]
    assert summary.hooks_run == []


def test_demo_runs_twice_with_the_same_story(dsn: str) -> None:
    first, lines1 = _run(dsn)
    _check(first, lines1, 1)
    second, lines2 = _run(dsn)
    _check(second, lines2, 2)
    # the same story: only the timing of the races may differ
    assert first.refused_by == second.refused_by
    assert first.shadow_admitted == second.shadow_admitted
    assert first.stream_overage_micros == second.stream_overage_micros

    def quotes(lines: list[str]) -> list[str]:
        start = lines.index(SECTIONS[0])
        told = [line for line in lines[start:] if not line.startswith("readiness: ")]
        return [line.replace("-1 ", "-N ").replace("-2 ", "-N ") for line in told[:14]]

    assert quotes(lines1) == quotes(lines2)
    # a workspace that cannot reserve yet is a line of the story, not a Python warning
    for n, lines in ((1, lines1), (2, lines2)):
        assert (
            f"readiness: workspace acme-{n}/research bills byok (model) but has no anthropic key:"
            " every reserve is refused (byok_credential_missing) until one is stored with"
            " fn_byok_key_put"
        ) in lines


def test_sections_run_in_their_declared_order(dsn: str) -> None:
    calls: list[tuple[str, str]] = []

    def section(name: str) -> story.Section:
        return lambda dsn, echo: calls.append((name, dsn))

    told = story.run_sections(dsn, print, [("byok", section("byok")), ("x", section("x"))])
    assert told == ["byok", "x"]
    assert calls == [("byok", dsn), ("x", dsn)]
    # the demo's own list, registered explicitly: the ledger comes last
    assert [name for name, _ in demo.SECTIONS] == ["byok", "guardrails", "openai_sdk", "ledger"]
    assert [fn for _, fn in demo.SECTIONS] == [
        byok_demo.demo_section,
        guardrails_demo.demo_section,
        openai_demo.demo_section,
        ledger_demo.demo_section,
    ]


def test_demo_command_creates_the_embedded_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make demo` on a fresh machine: no DSN, no cluster yet -> it creates one, twice OK;
    its demo KEK is kept beside the data directory in use (--data-dir), not in the
    working directory's .costwarden."""
    import shutil
    import tempfile

    from costwarden.embedded import EmbeddedCluster

    base = Path(tempfile.mkdtemp(prefix="cw-demo-", dir="/tmp"))
    base.chmod(0o755)  # the server runs as the postgres user when we are root
    for name in ("COSTWARDEN_DSN", "COSTWARDEN_KEK", "COSTWARDEN_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(base)
    data_dir = base / "elsewhere" / "pgdata"
    try:
        for run in (1, 2):
            result = CliRunner().invoke(main, ["--data-dir", str(data_dir), "demo"])
            assert result.exit_code == 0, result.output
            assert f"run {run}" in result.output
            assert f"KEK: DEMO ONLY, generated and kept in elsewhere{os.sep}demo-kek" in (
                result.output
            )
            assert "is held: resolve -> anthropic key" in result.output  # the rerun too
        kek = base / "elsewhere" / "demo-kek"
        assert kek.stat().st_mode & 0o777 == 0o600
        assert not (base / ".costwarden").exists()
        status = CliRunner().invoke(main, ["--data-dir", str(data_dir), "status"])
        assert "up to date" in status.output
    finally:
        EmbeddedCluster(data_dir).stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("named_by", ["--dsn", "COSTWARDEN_DSN"])
def test_demo_refuses_a_database_it_was_not_told_is_scratch(
    dsn: str, admin_conn: Conn, monkeypatch: pytest.MonkeyPatch, named_by: str
) -> None:
    """The demo resets circuits, re-flags models, changes settings and writes synthetic
    spend marks: on a database of --dsn / COSTWARDEN_DSN only with --scratch. Without
    it: one line, exit code 2 (a usage error), nothing written."""
    before = table_snapshot(admin_conn)
    monkeypatch.delenv("COSTWARDEN_DSN", raising=False)
    if named_by == "--dsn":
        result = CliRunner().invoke(main, ["--dsn", f"{dsn} password=pw-s3cret", "demo"])
    else:
        monkeypatch.setenv("COSTWARDEN_DSN", f"{dsn} password=pw-s3cret")
        result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    says = f"Error: the demo writes sample data into the database it runs on, and {named_by}"
    assert line.startswith(f"{says} names one (")
    assert "--scratch" in line and "s3cret" not in line
    assert f"dbname={admin_conn.info.dbname}" in line
    assert table_snapshot(admin_conn) == before


def test_demo_on_a_scratch_database_says_which_one(
    dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With --scratch it runs there, and first prints where it writes (no secret)."""
    told: list[tuple[str, Path | None]] = []

    def run_demo(dsn: str, echo: Any, *, data_dir: Path | None = None) -> None:
        told.append((dsn, data_dir))

    monkeypatch.setattr(demo, "run_demo", run_demo)  # what the command runs, not the story
    data_dir = tmp_path / "pgdata"
    secret_dsn = f"{dsn} password=pw-s3cret"
    result = CliRunner().invoke(
        main, ["--dsn", secret_dsn, "--data-dir", str(data_dir), "demo", "--scratch"]
    )
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first.startswith("scratch database (the demo writes into it): user=")
    assert "dbname=" in first and "s3cret" not in result.output
    assert told == [(secret_dsn, data_dir)]


# -- the BYOK section ---------------------------------------------------------------------


def test_byok_section(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSTWARDEN_KEK", KEK)
    lines: list[str] = []
    byok_demo.demo_section(dsn, lines.append)
    byok_demo.demo_section(dsn, lines.append)  # a rerun works too
    out = "\n".join(lines)
    assert "initech/chat      openai/gpt-4o-mini           platform_managed  model" in out
    assert "initech/research  anthropic/claude-3-5-sonnet  byok              model" in out
    assert "denied: byok_credential_missing" in out
    assert "readiness: workspace initech/research bills byok (model) but has no anthropic" in out
    assert "Forbidden [CW005]: key-write guard rule A" in out
    assert out.count("is held: resolve -> anthropic key sk-…") == 2
    assert out.count("after commit: Forbidden [CW005]: BYOK resolve refused") == 2
    assert "sk-ant-demo-" not in out and KEK not in out


# -- the guardrails section ---------------------------------------------------------------


def test_guardrails_section(dsn: str, client: costwarden.Client) -> None:
    lines: list[str] = []
    guardrails_demo.demo_section(dsn, lines.append)
    text = "\n".join(lines)
    assert "circuit after the third failure: open" in text
    assert "first reserve after cooldown   : held" in text
    assert "the probe succeeds -> circuit  : closed" in text
    assert "reserve in the frozen workspace: denied: anomaly_freeze" in text
    assert "DEMO ONLY" in text
    assert "would refuse" in text
    # the settings it changed are back to their defaults
    assert client.get_setting("anomaly_freeze") is False
    assert client.get_setting("circuit_failure_threshold") == 5
    # and it runs again on the same database
    lines.clear()
    guardrails_demo.demo_section(dsn, lines.append)
    assert "reserve in the frozen workspace: denied: anomaly_freeze" in "\n".join(lines)


# -- the OpenAI SDK section --------------------------------------------------------------


def test_openai_sdk_section(dsn: str, client: costwarden.Client) -> None:
    """The real openai SDK against the demo's local fake API: reserved, mapped, committed;
    streamed with include_usage; the charges are ledger entries that verify."""
    lines: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shown = openai_demo.demo_section(dsn, lines.append)
    # the demo chooses its client's outage policy: no warning asks the viewer to
    assert not [w for w in caught if "on_unavailable" in str(w.message)]
    text = "\n".join(lines)
    assert lines[1] == "== The OpenAI SDK in three lines =="
    assert not shown.skipped
    # the plain call: OpenAI's prompt_tokens include the cached ones; mapped disjoint
    assert (
        "usage   : prompt_tokens=1,200 (cached_tokens=1,024 of them), completion_tokens=42" in text
    )
    assert shown.mapped == {"input_tokens": 176, "cached_input_tokens": 1024, "output_tokens": 42}
    org, ws, model = openai_demo.ORG, openai_demo.WS, "openai/gpt-4o-mini"
    quote = client.quote(org, ws, model, shown.mapped).amount_micros
    assert shown.charged_micros == quote == 129  # 26.4 + 76.8 + 25.2 µ$, rounded up once
    assert shown.held_micros > shown.charged_micros
    assert f"commit  : 129 µ$ charged (committed); {shown.held_micros - 129:,} µ$" in text
    # the stream: include_usage was added, the last chunk's usage committed exactly
    assert 'stream_options={"include_usage": true}' in text
    assert shown.stream_mapped == {
        "input_tokens": 186,
        "cached_input_tokens": 1024,
        "output_tokens": 9,
    }
    assert (
        shown.stream_charged_micros
        == client.quote(org, ws, model, shown.stream_mapped).amount_micros
    )
    assert "held (exact), ledger entry #2 of pied-piper" in text
    # nothing is left held; the chain holds both charges and verifies
    assert [r.status for r in client.reservations(org)] == ["committed", "committed"]
    [chain] = [v for v in client.ledger_verify() if v.org_id == org]
    assert chain.ok and chain.entries == 2
    # and it runs again on the same database
    again = openai_demo.demo_section(dsn, lines.append)
    assert again.charged_micros == 129 and "ledger entry #4 of pied-piper" in "\n".join(lines)


def test_openai_sdk_section_without_the_openai_extra(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "openai", None)  # find_spec("openai") -> None
    lines: list[str] = []
    assert openai_demo.demo_section(dsn, lines.append).skipped
    assert lines[1:] == [
        "== The OpenAI SDK in three lines ==",
        "skipped: the openai SDK is not installed (pip install 'costwarden[openai]')",
    ]


# -- the ledger section -------------------------------------------------------------------


def test_ledger_section_verifies_and_catches_a_tampered_copy(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    out: list[str] = []
    assert ledger_demo.demo_section(client, out.append) is True  # empty ledger: nothing to show
    assert "empty" in out[-1]
    build_chains(client, seeded)
    before = table_snapshot(admin_conn)
    out.clear()
    assert ledger_demo.demo_section(client, out.append) is True
    text = "\n".join(out)
    assert "caught: org 'acme', first bad seq 1" in text
    assert table_snapshot(admin_conn) == before  # the demo changes nothing
