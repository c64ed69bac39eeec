"""CLI of the saga: budgets, reservations, expire, worker, quote; the worker loop."""

from __future__ import annotations

from typing import Any

import psycopg
from click.testing import CliRunner

import costwarden
from costwarden.cli import main
from costwarden.worker import Job, run_forever, run_once
from cwtest import Seeded


def cli(dsn: str, *args: str) -> Any:
    result = CliRunner().invoke(main, ["--dsn", dsn, *args], catch_exceptions=False)
    return result


def test_budgets_set_show_and_remove(dsn: str, seeded: Seeded) -> None:
    r = cli(
        dsn,
        "budgets",
        "set",
        seeded.org,
        "workspace",
        seeded.ws_platform,
        "--period",
        "day",
        "--limit",
        "5_000_000",
        "--window",
        "calendar",
    )
    assert r.exit_code == 0, r.output
    r = cli(dsn, "budgets", "show", seeded.org, "workspace", seeded.ws_platform)
    assert r.exit_code == 0 and "5000000" in r.output and "calendar" in r.output
    r = cli(
        dsn,
        "budgets",
        "set",
        seeded.org,
        "workspace",
        seeded.ws_platform,
        "--period",
        "day",
        "--limit",
        "none",
        "--window",
        "calendar",
    )
    assert r.exit_code == 0 and "removed" in r.output
    assert (
        "no limits"
        in cli(dsn, "budgets", "show", seeded.org, "workspace", seeded.ws_platform).output
    )


def test_budget_errors_are_clear(dsn: str, seeded: Seeded) -> None:
    r = CliRunner().invoke(
        main,
        [
            "--dsn",
            dsn,
            "budgets",
            "set",
            seeded.org,
            "workspace",
            "nope",
            "--period",
            "day",
            "--limit",
            "1",
        ],
    )
    assert r.exit_code != 0 and "NotFound [CW002]" in r.output and "p_scope_id" in r.output
    r = CliRunner().invoke(
        main,
        ["--dsn", dsn, "budgets", "set", seeded.org, "org", "--period", "day", "--limit", "-5"],
    )
    assert r.exit_code != 0 and "InvalidArgument [CW004]" in r.output


def test_reservations_list_expire_and_worker(
    dsn: str, client: costwarden.Client, seeded: Seeded, admin_conn: psycopg.Connection[Any]
) -> None:
    r = client.reserve(
        seeded.org, seeded.ws_platform, seeded.platform_model, {"input_tokens": 10}, user_id="alice"
    )
    out = cli(dsn, "reservations", "list", "--org", seeded.org).output
    assert str(r.reservation_id) in out and "held" in out
    out = cli(
        dsn, "reservations", "list", "--mine", "--actor-org", seeded.org, "--actor-user", "alice"
    ).output
    assert str(r.reservation_id) in out
    admin_conn.execute("update costwarden._reservations set expires_at = now() - interval '1s'")
    assert "expired 1 reservation(s)" in cli(dsn, "expire").output
    out = cli(dsn, "worker", "--once").output
    assert "costwarden-expire: 0" in out and "costwarden-maintenance" in out


def test_quote_command(dsn: str, seeded: Seeded) -> None:
    out = cli(
        dsn,
        "quote",
        seeded.org,
        seeded.ws_platform,
        seeded.platform_model,
        "input_tokens=1000",
        "output_tokens=500",
    ).output
    assert "7500 micros" in out and "platform_managed" in out


def test_worker_loop_runs_jobs_on_schedule(client: costwarden.Client, seeded: Seeded) -> None:
    calls: list[str] = []
    jobs = [
        Job("a", 0, lambda c: calls.append("a") or 1),
        Job("b", 3600, lambda c: calls.append("b") or 0),
    ]
    lines: list[str] = []
    run_forever(client, echo=lines.append, tick=0, iterations=3, jobs=jobs)
    assert calls == ["a", "b", "a", "a"]
    assert lines == ["a: 1", "a: 1", "a: 1"]
    assert set(run_once(client)) == {
        "costwarden-expire",
        "costwarden-anomalies",
        "costwarden-maintenance",
        "costwarden-reconcile",
    }
