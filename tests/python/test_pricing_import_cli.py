"""`costwarden pricing import --from litellm`: the diff first, --apply all or nothing,
--json, and clean one-line errors (real PostgreSQL, the real shipped price list)."""

from __future__ import annotations

import json
import sys
from datetime import UTC
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

import costwarden
from costwarden.cli import main

FEED = {
    "gpt-x": {
        "litellm_provider": "openai",
        "mode": "chat",
        "max_output_tokens": 32768,
        "input_cost_per_token": 1.1e-07,
        "output_cost_per_token": 4.4e-07,
    },
    "claude-x": {
        "litellm_provider": "anthropic",
        "mode": "chat",
        "input_cost_per_token": 3e-06,
        "output_cost_per_token": 1.5e-05,
        "cache_read_input_token_cost": 3e-07,
        "cache_creation_input_token_cost": 3.75e-06,
    },
}


NEGATIVE = json.dumps(
    {"m": {"litellm_provider": "p", "mode": "chat", "input_cost_per_token": -1,
           "output_cost_per_token": 1}}
)  # fmt: skip


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def snapshots(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select count(*) from costwarden._pricing_snapshots").fetchone()
    assert row is not None
    return int(row[0])


def clean_failure(result: Result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    return result.output


def test_dry_run_then_apply_then_nothing_to_do(
    dsn: str, client: costwarden.Client, admin_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    feed = tmp_path / "prices.json"
    feed.write_text(json.dumps(FEED))
    before = snapshots(admin_conn)
    dry = run("--dsn", dsn, "pricing", "import", "--from", "litellm", "--file", str(feed))
    assert dry.exit_code == 0, dry.output
    lines = dry.output.splitlines()
    assert lines[0].startswith("+ anthropic/claude-x: cache_write_tokens=0.00000375, ")
    assert lines[1] == (
        "+ openai/gpt-x: cache_write_tokens=0.00000011, cached_input_tokens=0.00000011, "
        "input_tokens=0.00000011, output_tokens=0.00000044, reasoning_tokens=0.00000044"
    )
    assert lines[2] == "2 new, 0 changed, 0 unchanged"
    assert lines[3].startswith("dry run: nothing written")
    assert snapshots(admin_conn) == before

    done = run("--dsn", dsn, "pricing", "import", "--from", "litellm", "--file", str(feed),
               "--provider", "openai", "--effective-from", "2025-01-01", "--apply")  # fmt: skip
    assert done.exit_code == 0, done.output
    assert done.output.splitlines() == [
        lines[1],
        "1 new, 0 changed, 0 unchanged",
        "applied: 1 snapshot(s) added, in one transaction",
    ]
    assert snapshots(admin_conn) == before + 1
    (entry,) = client.pricing("openai/gpt-x")
    assert Decimal(str(entry.prices["input_tokens"])) == Decimal("0.00000011")
    assert client.pricing("anthropic/claude-x") == []

    FEED["gpt-x"]["output_cost_per_token"] = 5e-07
    try:
        feed.write_text(json.dumps(FEED))
    finally:
        FEED["gpt-x"]["output_cost_per_token"] = 4.4e-07
    doc = run("--dsn", dsn, "pricing", "import", "--from", "litellm", "--file", str(feed),
              "--effective-from", "2025-06-01T12:00:00", "--apply", "--json")  # fmt: skip
    assert doc.exit_code == 0, doc.output
    out = json.loads(doc.stdout)
    assert out["applied"] is True and out["snapshots_added"] == 2
    assert (out["new"], out["changed"], out["unchanged"]) == (1, 1, 0)
    changed = next(c for c in out["changes"] if c["kind"] == "changed")
    assert changed["model"] == "openai/gpt-x"
    assert changed["old"]["output_tokens"] == "0.00000044"  # exact decimals as strings
    assert changed["new"]["output_tokens"] == "0.0000005"
    history = client.pricing_history("openai/gpt-x")
    latest = history[-1].effective_from.astimezone(UTC)
    assert f"{latest:%Y-%m-%d %H:%M}" == "2025-06-01 12:00"

    again = run("--dsn", dsn, "pricing", "import", "--from", "litellm", "--file", str(feed),
                "--apply")  # fmt: skip
    assert again.exit_code == 0
    assert again.output.splitlines()[0] == "0 new, 0 changed, 2 unchanged"
    assert snapshots(admin_conn) == before + 3


def test_the_shipped_price_list(dsn: str, admin_conn: psycopg.Connection[Any]) -> None:
    """No --file: LiteLLM's own list, as installed by the litellm extra (a dry run)."""
    before = snapshots(admin_conn)
    result = run("--dsn", dsn, "pricing", "import", "--from", "litellm",
                 "--provider", "anthropic", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["applied"] is False and doc["new"] > 5 and doc["snapshots_added"] == 0
    assert all(c["model"].startswith("anthropic/") for c in doc["changes"])
    assert snapshots(admin_conn) == before


def test_without_the_litellm_extra(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "litellm", None)  # find_spec("litellm") -> None
    out = clean_failure(run("--dsn", dsn, "pricing", "import", "--from", "litellm"), 1)
    assert out.strip() == (
        "Error: PriceFeedError: litellm is not installed: pip install 'costwarden[litellm]'"
    )


@pytest.mark.parametrize(
    ("content", "args", "code", "says"),
    [
        ("{not json", [], 1, "not JSON"),
        (b"\xff\xfe", [], 1, "not UTF-8"),
        (NEGATIVE, [], 1, "not a price"),
        (json.dumps(FEED), ["--provider", "nosuch"], 1, "check --provider"),
        (json.dumps(FEED), ["--from", "genai-prices"], 2, "genai-prices"),
        (json.dumps(FEED), ["--apply", "--json", "--bogus"], 2, "--bogus"),
    ],
)
def test_bad_input_writes_nothing(
    dsn: str,
    admin_conn: psycopg.Connection[Any],
    tmp_path: Path,
    content: str | bytes,
    args: list[str],
    code: int,
    says: str,
) -> None:
    feed = tmp_path / "prices.json"
    if isinstance(content, bytes):
        feed.write_bytes(content)
    else:
        feed.write_text(content)
    before = snapshots(admin_conn)
    words = ["--from", "litellm", "--file", str(feed), "--apply"]
    if "--from" in args:
        words = words[2:]
    out = clean_failure(run("--dsn", dsn, "pricing", "import", *words, *args), code)
    assert says in out
    assert snapshots(admin_conn) == before


def test_an_error_while_applying_changes_nothing(
    dsn: str, client: costwarden.Client, admin_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """A snapshot the database refuses rolls back the models loaded before it."""
    feed = dict(FEED)
    feed["zz bad model"] = {  # loaded last; fn_model_upsert refuses a space in the id
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 1e-06,
        "output_cost_per_token": 2e-06,
    }
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(feed))
    before = snapshots(admin_conn)
    args = ["--dsn", dsn, "pricing", "import", "--from", "litellm", "--file", str(path)]
    out = clean_failure(run(*args, "--apply"), 1)
    assert "InvalidArgument [CW004]: p_model must look like provider/model" in out
    assert snapshots(admin_conn) == before and client.pricing("openai/gpt-x") == []
