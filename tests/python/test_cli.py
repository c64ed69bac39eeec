"""The CLI (click) against a real database, with --dsn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
from click.testing import CliRunner, Result

from costwarden import migrate as m
from costwarden.cli import main

Conn = psycopg.Connection[Any]
SAMPLE_MODELS = 11
SAMPLE_SNAPSHOTS = 18


def cli(dsn: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--dsn", dsn, *args], catch_exceptions=False)


def ok(dsn: str, *args: str) -> str:
    result = cli(dsn, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_migrate_and_status(dsn: str) -> None:
    assert "schema is up to date" in ok(dsn, "migrate", "--no-schedule")
    out = ok(dsn, "status")
    latest = max(x.version for x in m.load_migrations())
    assert f"schema version: {latest}" in out
    assert "state: up to date" in out
    for x in m.load_migrations():
        assert f"applied  {x.version:04d}_{x.name}" in out
    assert "pending" not in out
    assert "pg_cron" in out
    assert "password" not in out


def test_status_of_an_empty_database_lists_pending(fresh_database: Any) -> None:
    dsn = fresh_database()
    result = cli(dsn, "status")
    assert result.exit_code == 1  # not up to date: a deploy gate fails
    out = result.stdout
    assert "schema version: not installed" in out
    assert "migrations pending" in out
    assert out.count("pending  ") == len(m.load_migrations())
    out = ok(dsn, "migrate", "--no-schedule")
    assert out.splitlines() == [f"applied {x.filename}" for x in m.load_migrations()]
    assert "state: up to date" in ok(dsn, "status")


def test_pricing_load_sample_is_idempotent(dsn: str, admin_conn: Conn) -> None:
    first = ok(dsn, "pricing", "load", "--sample")
    assert f"{SAMPLE_MODELS} models; {SAMPLE_SNAPSHOTS} snapshot(s) added, 0 already" in first
    assert "SAMPLE DATA" in first
    second = ok(dsn, "pricing", "load", "--sample")
    assert f"0 snapshot(s) added, {SAMPLE_SNAPSHOTS} already present" in second
    row = admin_conn.execute("select count(*) from costwarden._pricing_snapshots").fetchone()
    assert row == (SAMPLE_SNAPSHOTS,)

    out = ok(dsn, "pricing", "show")
    lines = out.splitlines()
    assert lines[0].split() == ["model", "servable", "snapshot", "since", "USD", "per", "unit"]
    assert len(lines) == 2 + SAMPLE_MODELS
    gpt = next(line for line in lines if line.startswith("openai/gpt-4o "))
    # the snapshot in force (2025-03-01), exact decimals, no float noise
    assert "2025-03-01" in gpt and "input_tokens=0.0000025" in gpt and "yes" in gpt
    assert "cache_write_tokens=0.0000025" in gpt
    history = ok(dsn, "pricing", "show", "--model", "openai/gpt-4o", "--history")
    assert "2024-05-13" in history and "2024-10-01" in history and "2025-03-01" in history
    assert "input_tokens=0.000005" in history


def test_pricing_show_unpriced(dsn: str, admin_conn: Conn) -> None:
    admin_conn.execute("select costwarden.fn_model_upsert('acme-labs/new-1')")
    out = ok(dsn, "pricing", "show", "--model", "acme-labs/new-1")
    assert "UNPRICED" in out


def test_pricing_load_without_file_or_sample_is_a_usage_error(dsn: str) -> None:
    result = cli(dsn, "pricing", "load")
    assert result.exit_code == 2
    assert "give a FILE or --sample" in result.output


MALFORMED = [
    ("[[model]\nmodel = 'x/y'\n", "bad.toml"),  # not TOML
    ("[catalogue]\nname = 'empty'\n", "no [[model]] entries"),
    ("[[model]]\nmodel = 'no-provider'\n", "model must be 'provider/model'"),
    (
        "[[model]]\nmodel = 'x/y'\n[[model.price]]\n"
        "effective_from = '2024-01-01T00:00:00Z'\ninput_tokens = 0.000003\n",
        "prices are decimal strings",
    ),
    (
        "[[model]]\nmodel = 'x/y'\n[[model.price]]\n"
        "effective_from = '2024-01-01T00:00:00Z'\ninput_tokens = 'cheap'\n",
        "is not a decimal number",
    ),
    (
        "[[model]]\nmodel = 'x/y'\n[[model.price]]\n"
        "effective_from = '2024-01-01'\ninput_tokens = '0.1'\n",
        "time zone",
    ),
    (
        "[[model]]\nmodel = 'x/y'\n[[model.price]]\ninput_tokens = '0.1'\n",
        "effective_from is required",
    ),
    (
        "[[model]]\nmodel = 'x/y'\n[[model.price]]\n"
        "effective_from = '2024-01-01T00:00:00Z'\nseconds = '0.1'\n",
        "p_prices: unknown usage unit",  # refused by the database: CW004
    ),
]


def test_malformed_catalogue(dsn: str, admin_conn: Conn, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    for text, says in MALFORMED:
        path.write_text(text)
        result = cli(dsn, "pricing", "load", str(path))
        assert result.exit_code == 1, (text, result.output)
        assert says in result.stderr, (text, result.stderr)
        assert "Traceback" not in result.output
    row = admin_conn.execute("select count(*) from costwarden._pricing_snapshots").fetchone()
    assert row == (0,)


def test_catalogue_with_changed_prices_for_a_loaded_date(dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "cat.toml"
    snapshot = "[[model.price]]\neffective_from = '2024-01-01T00:00:00Z'\ninput_tokens = '{}'\n"
    path.write_text("[[model]]\nmodel = 'x/y'\n" + snapshot.format("0.1"))
    assert "1 snapshot(s) added" in ok(dsn, "pricing", "load", str(path))
    path.write_text("[[model]]\nmodel = 'x/y'\n" + snapshot.format("0.2"))
    result = cli(dsn, "pricing", "load", str(path))
    assert result.exit_code == 1
    assert "immutable" in result.stderr


def test_settings_get_set(dsn: str) -> None:
    assert ok(dsn, "settings", "get", "billing_enforce").strip() == "true"
    assert ok(dsn, "settings", "get", "unpriced_policy").strip() == '"reject"'
    assert ok(dsn, "settings", "set", "unpriced_policy", "free").strip() == (
        'unpriced_policy = "free"'
    )
    assert ok(dsn, "settings", "get", "unpriced_policy").strip() == '"free"'
    ok(dsn, "settings", "set", "circuit_failure_threshold", "9")
    assert json.loads(ok(dsn, "settings", "get", "circuit_failure_threshold")) == 9
    ok(dsn, "settings", "set", "default_ttl", '"10 minutes"')
    assert ok(dsn, "settings", "get", "default_ttl").strip() == '"10 minutes"'
    listing = ok(dsn, "settings", "list")
    assert "unpriced_policy" in listing and "yes" in listing


def test_settings_errors(dsn: str) -> None:
    for args, says in (
        (("settings", "set", "bogus", "1"), "InvalidArgument [CW004]: p_key: unknown setting"),
        (("settings", "set", "billing_enforce", "maybe"), "InvalidArgument [CW004]: p_value"),
        (("settings", "get", "bogus"), "InvalidArgument [CW004]: p_key"),
    ):
        result = cli(dsn, *args)
        assert result.exit_code == 1, result.output
        assert says in result.stderr


def test_pricing_load_is_all_or_nothing(dsn: str, admin_conn: Conn, tmp_path: Path) -> None:
    bad = tmp_path / "half.toml"
    bad.write_text(
        '[[model]]\nmodel = "zz/first"\n[[model.price]]\n'
        'effective_from = "2024-01-01T00:00:00Z"\ninput_tokens = "0.001"\n'
        '[[model]]\nmodel = "zz/second"\n[[model.price]]\n'
        'effective_from = "2024-01-01T00:00:00Z"\nbananas = "0.001"\n'
    )
    result = CliRunner().invoke(main, ["--dsn", dsn, "pricing", "load", str(bad)])
    assert result.exit_code != 0 and "bananas" in result.output
    rows = admin_conn.execute(
        "select model from costwarden._models where model like 'zz/%'"
    ).fetchall()
    assert rows == []  # the first model was not left behind without its catalogue


def test_status_names_an_outdated_function_file(
    fresh_database: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """A function file edited after the last migrate makes status fail the deploy gate
    and name the file; migrate applies it and status is green again."""
    import shutil

    sql_dir = tmp_path / "sql"
    shutil.copytree(m.default_sql_dir(), sql_dir)
    monkeypatch.setattr(m, "default_sql_dir", lambda: sql_dir)
    dsn = fresh_database()
    ok(dsn, "migrate", "--no-schedule")
    edited = sorted((sql_dir / "functions").glob("*.sql"))[-1]
    edited.write_text(edited.read_text() + "\n-- edited\n")
    result = cli(dsn, "status")
    assert result.exit_code == 1
    assert f"outdated {edited.name}" in result.stdout
    data = json.loads(cli(dsn, "status", "--json").stdout)
    assert data["up_to_date"] is False
    assert data["functions_outdated"] == [edited.name]
    ok(dsn, "migrate", "--no-schedule")
    assert "state: up to date" in ok(dsn, "status")


def test_status_prints_no_secret_of_the_dsn(dsn: str) -> None:
    """Only where the database is and who logs in: neither the password nor any other
    secret of the connection string (sslpassword unlocks the client's key)."""
    secret_dsn = f"{dsn} password=pw-s3cret sslpassword=sslpw-s3cret application_name=x"
    out = ok(secret_dsn, "status")
    data = json.loads(ok(secret_dsn, "status", "--json"))
    for shown in (out.splitlines()[0], data["database"]):
        assert "s3cret" not in shown and "password" not in shown and "application" not in shown
        assert "dbname=" in shown and "host=" in shown and "port=" in shown and "user=" in shown
    assert "s3cret" not in out


def test_output_cut_short_by_a_closed_pipe_ends_quietly(dsn: str) -> None:
    """`costwarden status | head -3`: the reader is gone before the command writes; no
    message (click's convention: exit code 1)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "costwarden.cli", "--dsn", dsn, "status"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away before the command has written anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert err == ""
