"""The command line as people expect it: exit codes 0 / 1 / 2 and never a traceback for
bad input, ``--json`` on every command that prints data (money in integer micro-USD),
limits in USD beside micro-USD, progress bars for long work."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

import costwarden
from costwarden.cli import main
from costwarden.cli._common import jsonable, usd_to_micros
from cwtest import Seeded

#: Commands that print no data, only a confirmation, a stream or a document of their
#: own format: they take no --json.
NO_JSON = {
    "up",
    "down",
    "demo",
    "settings get",  # prints JSON already
    "settings set",
    "orgs set",
    "users set",
    "apikeys set",
    "models set",
    "budgets set",
    "keys revoke",
    "audit-link rotate",
    "anomalies ack",
    "spend-report register",
    "ledger export",  # JSON Lines
    "ledger digest",  # the digest document (JSON)
    "watch",  # one JSON payload a line
    "serve",  # runs the HTTP service
    "metrics",  # Prometheus text
    "token",  # prints a JWT
}

#: Options whose values are free text (any string is a valid value to click).
FREE = (click.types.StringParamType, click.Path, click.File)


def leaves(group: click.Group = main, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    """Every command, by its full name ("ledger verify")."""
    for name, command in sorted(group.commands.items()):
        full = f"{prefix}{name}"
        if isinstance(command, click.Group):
            if command.invoke_without_command:
                yield full, command
            yield from leaves(command, full + " ")
        else:
            yield full, command


def run(*args: str, input: str | None = None, **env: str) -> Result:
    return CliRunner().invoke(main, list(args), input=input, env=env or None)


def assert_clean_failure(result: Result, *codes: int) -> None:
    assert result.exit_code in codes, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), repr(result.exception)


def _args_for(command: click.Command) -> list[str]:
    """Valid-looking positional arguments, so that parsing reaches the options."""
    out = []
    for p in command.params:
        if not isinstance(p, click.Argument) or not p.required:
            continue
        if p.nargs == -1:
            out.append("input_tokens=1")
        elif isinstance(p.type, click.Choice):
            out.append(str(p.type.choices[0]))
        elif isinstance(p.type, click.types._NumberParamTypeBase):
            out.append("1")
        else:
            out.append("x")
    return out


def test_every_command_refuses_bad_values_without_a_traceback(dsn: str) -> None:
    tried = 0
    for name, command in leaves():
        words = name.split()
        # an option that does not exist: a usage error
        result = run("--dsn", dsn, *words, "--no-such-option")
        assert_clean_failure(result, 2)
        tried += 1
        for p in command.params:
            if not isinstance(p, click.Option) or p.is_flag or p.hidden:
                continue
            if isinstance(p.type, FREE):
                continue
            result = run("--dsn", dsn, *words, *_args_for(command), p.opts[0], "not-a-value")
            assert_clean_failure(result, 2)
            assert "not-a-value" in result.output or "Invalid value" in result.output
            tried += 1
    assert tried > 60


BAD_INPUT = [
    # (arguments, exit code, what the message says)
    (["quote", "acme", "ws", "openai/gpt-4o-mini", "input_tokens=abc"], 2, "input_tokens=abc"),
    (["quote", "acme", "ws", "openai/gpt-4o-mini", "input_tokens"], 2, "unit=number"),
    (["quote", "acme", "ws", "openai/gpt-4o-mini", "=5"], 2, "unit=number"),
    (["orgs", "set", "acme", "--credit-rate", "x"], 2, "not a decimal number"),
    (["orgs", "set", "acme", "--credit-rate", "NaN"], 2, "not a finite number"),
    (["budgets", "set", "acme", "org", "--period", "day", "--limit", "5e"], 2, "integer"),
    (["budgets", "set", "acme", "org", "--period", "day"], 2, "--limit-usd"),
    (
        ["budgets", "set", "acme", "org", "--period", "day", "--limit", "1", "--limit-usd", "1"],
        2,
        "one of them",
    ),
    (["budgets", "set", "acme", "org", "--period", "day", "--limit-usd", "0.0000001"], 2, "6"),
    (["budgets", "set", "acme", "org", "--period", "day", "--limit-usd", "five"], 2, "five"),
    (
        [
            "budgets",
            "set",
            "acme",
            "org",
            "--period",
            "day",
            "--limit-usd",
            "1",
            "--metric",
            "tokens",
        ],
        2,
        "cost limits",
    ),
    (["ledger", "adjust", "--org", "a", "--workspace", "w", "--reason", "r"], 2, "--amount"),
    (
        [
            "ledger",
            "adjust",
            "--org",
            "a",
            "--workspace",
            "w",
            "--reason",
            "r",
            "--amount-usd",
            "0.0000005",
        ],
        2,
        "micro-USD",
    ),
    (["worker", "--json"], 2, "--once"),
    (["audit", "--since", "tomorrow"], 2, "7d / 24h / 30m"),
    # refused by the database: exit 1, the error class and SQLSTATE, no traceback
    (["quote", "nope", "ws", "openai/gpt-4o-mini", "input_tokens=1"], 1, "[CW002]"),
    (["quote", "acme", "ws-platform", "openai/gpt-4o", "input_tokens=-1"], 1, "[CW004]"),
    (["orgs", "set", "acme", "--timezone", "Mars/Olympus"], 1, "[CW004]"),
    (["budgets", "set", "acme", "org", "--period", "day", "--limit-usd", "-1"], 1, "[CW004]"),
    (["settings", "set", "bogus", "1"], 1, "[CW004]"),
    (["anomalies", "ack", "999999"], 1, "[CW002]"),
    (["keys", "list", "--workspace", "w"], 2, "--org"),
    (["pricing", "import", "--from", "genai-prices"], 2, "genai-prices"),
    (["pricing", "import", "--from", "litellm", "--provider", "nosuch"], 1, "check --provider"),
    (["pricing", "import", "--from", "litellm", "--effective-from", "soon"], 2, "soon"),
]


@pytest.mark.parametrize(("args", "code", "says"), BAD_INPUT)
def test_bad_input(dsn: str, seeded: Seeded, args: list[str], code: int, says: str) -> None:
    result = run("--dsn", dsn, *args)
    assert_clean_failure(result, code)
    assert says in result.output


def test_bad_files_and_databases(dsn: str, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_text("{not json\n")
    for args in (
        ["ledger", "verify", "--from-export", str(garbage)],
        ["ledger", "verify", "--digest", str(garbage)],
        ["pricing", "load", str(garbage)],
    ):
        assert_clean_failure(run("--dsn", dsn, *args), 1)
    unreachable = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"
    result = run("--dsn", unreachable, "status")
    assert_clean_failure(result, 1)
    result = run("--dsn", "this is not a dsn", "settings", "list")
    assert_clean_failure(result, 1)


# -- exit codes ------------------------------------------------------------------------------


def test_status_gates_a_deploy(fresh_database: Any, dsn: str) -> None:
    assert run("--dsn", dsn, "status").exit_code == 0
    doc = json.loads(run("--dsn", dsn, "status", "--json").stdout)
    assert doc["up_to_date"] is True and doc["pending"] == [] and doc["version"] > 0
    empty = fresh_database()
    result = run("--dsn", empty, "status", "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["up_to_date"] is False and doc["version"] is None and doc["pending"]


# -- --json ----------------------------------------------------------------------------------


def test_every_data_command_takes_json() -> None:
    names = dict(leaves())
    assert set(names) >= NO_JSON
    for name, command in names.items():
        has_json = any(p.name == "as_json" for p in command.params)
        assert has_json == (name not in NO_JSON), name


def test_json_output(dsn: str, client: costwarden.Client, seeded: Seeded, tmp_path: Path) -> None:
    ws = seeded.ws_platform
    client.set_budget("acme", "workspace", ws, "day", 5_000_000)

    def doc(*args: str) -> Any:
        result = run("--dsn", dsn, *args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    q = doc("quote", "acme", ws, seeded.platform_model, "input_tokens=1200", "output_tokens=800")
    assert isinstance(q["amount_micros"], int) and q["amount_micros"] > 0
    assert isinstance(q["credits"], str)  # exact decimals are strings
    Decimal(q["credits"])
    [b] = doc("budgets", "show", "acme", "workspace", ws)
    assert b["limit_value"] == 5_000_000 and b["spent"] == 0 and isinstance(b["remaining"], int)
    r = client.reserve("acme", ws, seeded.platform_model, {"input_tokens": 10})
    [listed] = doc("reservations", "list", "--org", "acme")
    assert listed["reservation_id"] == str(r.reservation_id) and listed["status"] == "held"
    assert isinstance(listed["amount_micros"], int)
    assert doc("expire") == {"expired": 0}
    assert set(doc("worker", "--once")) == {
        "costwarden-expire",
        "costwarden-anomalies",
        "costwarden-maintenance",
        "costwarden-reconcile",
    }
    assert any(s["key"] == "billing_enforce" for s in doc("settings", "list"))
    assert doc("workspaces", "set", "acme", ws)["billing_mode"] == "platform_managed"
    assert doc("circuits", "status") == doc("circuits")  # the group's default command
    assert isinstance(doc("circuits", "history"), list)
    assert doc("circuits", "report", "openai", "--ok") == {"provider": "openai", "state": "closed"}
    assert doc("anomalies", "detect") == {"recorded": 0}
    assert doc("anomalies", "list") == []
    assert isinstance(doc("audit", "--limit", "3"), list)
    assert doc("shadow-report", "--org", "acme") == []
    assert doc("spend-report", "book", "acme", ws, "gw", "1500") == {"booked_micros": 1500}
    [source] = doc("spend-report", "sources", "--org", "acme")
    assert source["booked_micros"] == 1500 and source["source"] == "gw"
    replay = doc("spend-report", "replay", "--spool-dir", str(tmp_path / "spool"))
    assert replay["remaining"] == 0
    entries = doc("pricing", "show")
    assert any(e["model"] == seeded.platform_model for e in entries)
    assert isinstance(doc("pricing", "show", "--history"), list)
    assert doc("keys", "list") == [] and isinstance(doc("keys", "keks"), list)
    assert isinstance(doc("keys", "audit"), list)
    adj = doc("ledger", "adjust", "--org", "acme", "--workspace", ws, "--amount-usd", "-0.5",
              "--reason", "refund")  # fmt: skip
    assert adj["entry_seq"] >= 1 and len(adj["entry_hash"]) == 64
    report = doc("ledger", "verify")
    assert report["ok"] is True and report["source"] == "database"
    assert [c["org_id"] for c in report["chains"]] == ["acme"] and report["rows"] >= 2
    assert doc("migrate", "--no-schedule") == {"applied": []}


def test_jsonable_rules() -> None:
    from datetime import UTC, datetime
    from uuid import UUID

    assert jsonable(
        {
            "n": 5,
            "d": Decimal("0.0000025"),
            "big": Decimal("1E+3"),
            "t": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
            "u": UUID(int=1),
            "b": b"\x00\xff",
            "l": (1, None, True),
        }
    ) == {
        "n": 5,
        "d": "0.0000025",
        "big": "1000",
        "t": "2025-01-02T03:04:05+00:00",
        "u": "00000000-0000-0000-0000-000000000001",
        "b": "00ff",
        "l": [1, None, True],
    }


# -- money in USD ------------------------------------------------------------------------------


def test_limit_usd(dsn: str, client: costwarden.Client, seeded: Seeded) -> None:
    ws = seeded.ws_platform
    r = run("--dsn", dsn, "budgets", "set", "acme", "workspace", ws, "--period", "day",
            "--limit-usd", "5")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert client.budget_status("acme", "workspace", ws)[0].limit_value == 5_000_000
    r = run("--dsn", dsn, "budgets", "set", "acme", "org", "--period", "month",
            "--limit-usd", "1_234.000001")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert client.budget_status("acme", "org")[0].limit_value == 1_234_000_001
    r = run("--dsn", dsn, "budgets", "set", "acme", "org", "--period", "month",
            "--limit-usd", "none")  # fmt: skip
    assert r.exit_code == 0 and "removed" in r.output
    assert client.budget_status("acme", "org") == []
    # the micro-USD spelling is unchanged
    r = run("--dsn", dsn, "budgets", "set", "acme", "workspace", ws, "--period", "day",
            "--limit", "7000000")  # fmt: skip
    assert r.exit_code == 0
    assert client.budget_status("acme", "workspace", ws)[0].limit_value == 7_000_000


def test_usd_to_micros_is_exact() -> None:
    assert usd_to_micros(Decimal("0.1")) == 100_000
    assert usd_to_micros(Decimal("123456789.123456")) == 123_456_789_123_456
    assert usd_to_micros(Decimal("-2.5")) == -2_500_000
    assert usd_to_micros(Decimal("1E+2")) == 100_000_000
    with pytest.raises(ValueError, match="6 decimals"):
        usd_to_micros(Decimal("0.0000001"))


# -- progress ----------------------------------------------------------------------------------


def test_long_work_shows_a_progress_bar(
    dsn: str, client: costwarden.Client, seeded: Seeded, tmp_path: Path
) -> None:
    client.ledger_adjust("acme", seeded.ws_platform, 1, "a")
    out = tmp_path / "ledger.jsonl"
    r = run("--dsn", dsn, "ledger", "export", "--out", str(out))
    assert r.exit_code == 0 and "exporting ledger entries" in r.stderr
    r = run("--dsn", dsn, "ledger", "verify")
    assert r.exit_code == 0 and "verifying ledger entries" in r.stderr
    assert "ledger OK" in r.stdout and "verifying" not in r.stdout
    r = run("ledger", "verify", "--from-export", str(out))
    assert r.exit_code == 0 and "verifying ledger entries" in r.stderr
