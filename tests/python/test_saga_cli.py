"""CLI of the saga: budgets, reservations, expire, worker, quote; the worker loop."""

from __future__ import annotations

import json
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


def test_worker_once_runs_every_job_even_after_one_fails(
    dsn: str, admin_conn: psycopg.Connection[Any]
) -> None:
    """The first job fails (its function is gone): it is reported, the three after it
    still run, and the command exits 1 at the end; in --json too."""
    admin_conn.execute(
        "alter function costwarden.fn_cost_expire_reservations rename to fn_gone_for_a_test"
    )
    result = cli(dsn, "worker", "--once")
    assert result.exit_code == 1
    [failed] = result.stderr.splitlines()
    assert failed.startswith("costwarden-expire: failed: ")
    assert "fn_cost_expire_reservations" in failed
    assert result.stdout.splitlines() == [
        "costwarden-anomalies: 0",
        "costwarden-maintenance: 0",
        "costwarden-reconcile: 0",
    ]
    result = cli(dsn, "worker", "--once", "--json")
    assert result.exit_code == 1
    done = json.loads(result.stdout)
    assert done["costwarden-expire"].startswith("failed: ")
    assert {k: v for k, v in done.items() if k != "costwarden-expire"} == {
        "costwarden-anomalies": 0,
        "costwarden-maintenance": 0,
        "costwarden-reconcile": 0,
    }


def test_run_once_reports_a_failing_job_and_runs_the_rest(client: costwarden.Client) -> None:
    def fails(_c: costwarden.Client) -> int:
        raise costwarden.InvalidArgument("p_x: broken")

    done = run_once(client, [Job("a", 60, fails), Job("b", 60, lambda c: 3)])
    assert done["a"].failed and done["a"].shown() == "failed: p_x: broken"
    assert not done["b"].failed and done["b"].result == 3 and done["b"].shown() == 3


def test_a_skipped_anomaly_run_says_it_did_not_run(dsn: str, seeded: Seeded) -> None:
    """Another detection holds the lock: fn_detect_spend_anomalies returns -1 at once;
    the commands say "did not run", never "-1"."""
    with psycopg.connect(dsn) as other:
        # what a running detection holds: the row lock of its _locks row
        other.execute(
            "select from costwarden._locks where lock_name = 'detect_spend_anomalies' for update"
        )
        result = cli(dsn, "worker", "--once")
        assert result.exit_code == 0, result.output
        assert "costwarden-anomalies: did not run (another run is in progress)" in (
            result.stdout.splitlines()
        )
        assert "-1" not in result.stdout
        result = cli(dsn, "worker", "--once", "--json")
        assert result.exit_code == 0, result.output
        skipped = json.loads(result.stdout)["costwarden-anomalies"]
        assert skipped == "did not run (another run is in progress)"
        result = cli(dsn, "anomalies", "detect")
        assert (result.exit_code, result.stdout) == (
            0,
            "did not run (another run is in progress)\n",
        )
        result = cli(dsn, "anomalies", "detect", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"recorded": "did not run (another run is in progress)"}
    assert cli(dsn, "anomalies", "detect").stdout == "0 anomaly(ies) recorded\n"
