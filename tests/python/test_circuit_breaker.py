"""Provider circuit breakers (SPEC §6): open, cooldown, exactly one half-open probe,
close on success, reopen on failure, probe retry, status / history / reset, errors."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

import costwarden
from costwarden import types as t
from cwtest import Seeded, expect_sqlstate, run_as, table_snapshot

Conn = psycopg.Connection[Any]
CHAT = {"input_tokens": 100, "output_tokens": 10}
COOLDOWN = 1.5  # seconds (circuit_cooldown in these tests): long enough for a loaded CI machine


def one(conn: Conn, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0] if len(row) == 1 else row


@pytest.fixture
def breaker(client: costwarden.Client, seeded: Seeded) -> Seeded:
    client.set_setting("circuit_failure_threshold", 3)
    client.set_setting("circuit_cooldown", f"{int(COOLDOWN * 1000)} milliseconds")
    return seeded


def reserve(client: costwarden.Client, s: Seeded, model: str | None = None) -> t.Reservation:
    return client.reserve(
        s.org, s.ws_platform, model or s.platform_model, CHAT, raise_on_denied=False
    )


def codes(r: t.Reservation) -> list[str]:
    return [reason.code for reason in r.reasons]


def open_circuit(client: costwarden.Client, provider: str = "openai") -> None:
    states = [client.report_provider(provider, False, f"503 #{i}") for i in range(3)]
    assert states == ["closed", "closed", "open"]


def test_failures_open_the_circuit_and_success_of_the_probe_closes_it(
    client: costwarden.Client, breaker: Seeded
) -> None:
    assert reserve(client, breaker).status == "held"
    # a success in between resets the count: failures must be consecutive
    client.report_provider("openai", False, "x")
    client.report_provider("openai", False, "x")
    assert client.report_provider("openai", True) == "closed"
    assert client.report_provider("openai", False, "x") == "closed"
    client.report_provider("openai", True)
    open_circuit(client)

    denied = reserve(client, breaker)
    assert denied.status == "denied"
    assert codes(denied) == ["circuit_open"]
    reason = denied.reasons[0]
    assert (reason.scope_kind, reason.scope_id, reason.enforced) == ("provider", "openai", True)
    # another provider is not affected
    assert reserve(client, breaker, breaker.vendor_model).status == "held"

    time.sleep(COOLDOWN + 0.1)
    probe = reserve(client, breaker)
    assert probe.status == "held"  # the one half-open probe
    assert codes(reserve(client, breaker)) == ["circuit_open"]  # no second probe
    status = {c.provider: c for c in client.circuits()}["openai"]
    assert status.state == "half_open"
    assert status.next_probe_at is not None

    assert client.report_provider("openai", True) == "closed"
    assert reserve(client, breaker).status == "held"
    history = [(e.from_state, e.to_state, e.reason) for e in client.circuit_history("openai")]
    assert history == [
        ("half_open", "closed", "probe_succeeded"),
        ("open", "half_open", "probe_admitted"),
        ("closed", "open", "failure_threshold"),
    ]


def test_a_failed_probe_reopens_and_cools_down_again(
    client: costwarden.Client, breaker: Seeded
) -> None:
    open_circuit(client)
    time.sleep(COOLDOWN + 0.1)
    assert reserve(client, breaker).status == "held"
    assert client.report_provider("openai", False, "still down") == "open"
    assert codes(reserve(client, breaker)) == ["circuit_open"]  # cooling down again
    time.sleep(COOLDOWN + 0.1)
    assert reserve(client, breaker).status == "held"
    assert [e.reason for e in client.circuit_history("openai", limit=2)] == [
        "probe_admitted",
        "probe_failed",
    ]
    status = {c.provider: c for c in client.circuits()}["openai"]
    assert status.last_error == "still down"
    assert status.consecutive_failures == 4


def test_a_probe_that_never_reports_is_replaced_after_the_cooldown(
    client: costwarden.Client, breaker: Seeded
) -> None:
    open_circuit(client)
    time.sleep(COOLDOWN + 0.1)
    probe = reserve(client, breaker)
    assert probe.status == "held"
    client.release(probe.reservation_id, "client crashed")  # no report ever comes
    assert codes(reserve(client, breaker)) == ["circuit_open"]
    time.sleep(COOLDOWN + 0.1)
    assert reserve(client, breaker).status == "held"  # a new probe
    assert codes(reserve(client, breaker)) == ["circuit_open"]
    assert client.circuit_history("openai", limit=1)[0].reason == "probe_retry"


def test_reports_while_open_change_nothing(client: costwarden.Client, breaker: Seeded) -> None:
    open_circuit(client)
    # a late success from a call admitted before the circuit opened does not close it
    assert client.report_provider("openai", True) == "open"
    assert client.report_provider("openai", False, "late") == "open"
    assert codes(reserve(client, breaker)) == ["circuit_open"]
    assert len(client.circuit_history("openai")) == 1


def test_the_circuit_is_enforced_in_shadow_mode(client: costwarden.Client, breaker: Seeded) -> None:
    client.set_budget(breaker.org, "workspace", breaker.ws_platform, "day", 1, mode="shadow")
    client.set_setting("billing_enforce", False)
    open_circuit(client)
    denied = reserve(client, breaker)
    assert denied.status == "denied"
    assert "circuit_open" in codes(denied)


def test_exactly_one_probe_under_concurrent_reservers(
    client: costwarden.Client, breaker: Seeded, dsn: str
) -> None:
    """16 real connections, in 16 orgs (no shared pool lock): exactly one is held."""
    n = 16
    for i in range(n):
        client.upsert_org(f"org{i}")
        client.upsert_workspace(f"org{i}", "ws", model=breaker.platform_model)
    open_circuit(client)
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(n)]
    try:
        for conn in conns:
            conn.execute("select 1")
        time.sleep(COOLDOWN + 0.1)
        barrier = threading.Barrier(n)
        results: list[str] = []
        errors: list[BaseException] = []

        def go(i: int) -> None:
            try:
                barrier.wait()
                row = (
                    conns[i]
                    .execute(
                        "select status from costwarden.fn_cost_reserve(p_org_id => %s, "
                        "p_workspace_id => 'ws', p_model => %s, p_usage => %s::jsonb)",
                        (f"org{i}", breaker.platform_model, '{"input_tokens": 100}'),
                    )
                    .fetchone()
                )
                assert row is not None
                results.append(row[0])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        for conn in conns:
            conn.close()
    assert not errors, errors
    assert sorted(results) == ["denied"] * (n - 1) + ["held"]
    assert [e.reason for e in client.circuit_history("openai")].count("probe_admitted") == 1


def test_status_lists_every_catalogue_provider(client: costwarden.Client, breaker: Seeded) -> None:
    open_circuit(client)
    status = {c.provider: c for c in client.circuits()}
    assert set(status) == {"openai", "anthropic", "acme-labs"}
    assert status["anthropic"].state == "closed"
    assert status["anthropic"].consecutive_failures == 0
    assert status["openai"].state == "open"
    assert status["openai"].failure_threshold == 3
    assert status["openai"].last_error == "503 #2"
    assert {c.state for c in status.values()} <= t.CIRCUIT_STATES


def test_reset_closes_and_is_audited(
    client: costwarden.Client, breaker: Seeded, admin_conn: Conn
) -> None:
    open_circuit(client)
    assert client.reset_circuit("openai") == "closed"
    assert reserve(client, breaker).status == "held"
    entry = client.audit(action="circuit_reset")[0]
    assert entry.target == {"provider": "openai"}
    assert entry.before == {"state": "open", "consecutive_failures": 3}
    assert entry.after == {"state": "closed", "consecutive_failures": 0}
    assert client.circuit_history("openai", limit=1)[0].reason == "reset"


def test_sql_and_python_enums_agree(admin_conn: Conn) -> None:
    checks = dict(
        admin_conn.execute(
            "select conname, pg_get_constraintdef(oid) from pg_constraint "
            "where conname in ('circuits_state_check', 'circuit_events_reason_check')"
        ).fetchall()
    )
    for value in t.CIRCUIT_STATES:
        assert f"'{value}'" in checks["circuits_state_check"]
    for value in t.CIRCUIT_EVENT_REASONS:
        assert f"'{value}'" in checks["circuit_events_reason_check"]
    assert checks["circuit_events_reason_check"].count("::text") == len(t.CIRCUIT_EVENT_REASONS)


@pytest.mark.parametrize(
    ("args", "sqlstate", "match"),
    [
        (("nope", True, None), "CW002", "p_provider: unknown provider 'nope'"),
        (("nope", False, "x"), "CW002", "p_provider"),
        ((None, False, "x"), "CW004", "p_provider is required"),
        (("openai", None, None), "CW004", "p_ok"),
    ],
)
def test_bad_reports_write_nothing(
    admin_conn: Conn, seeded: Seeded, args: tuple[Any, ...], sqlstate: str, match: str
) -> None:
    before = table_snapshot(admin_conn)
    expect_sqlstate(
        admin_conn,
        sqlstate,
        "select costwarden.fn_provider_report(p_provider => %s, p_ok => %s, p_error => %s)",
        args,
        match=match,
    )
    assert table_snapshot(admin_conn) == before


def test_long_errors_are_truncated(client: costwarden.Client, breaker: Seeded) -> None:
    client.report_provider("openai", False, "e" * 5000)
    status = {c.provider: c for c in client.circuits()}["openai"]
    assert status.last_error == "e" * 1000


def test_roles(admin_conn: Conn, seeded: Seeded) -> None:
    report = "select costwarden.fn_provider_report(p_provider => 'openai', p_ok => false)"
    assert run_as(admin_conn, "costwarden_service", report) == [("closed",)]
    assert run_as(
        admin_conn, "costwarden_admin", "select count(*) from costwarden.fn_circuit_status()"
    )
    assert run_as(
        admin_conn, "costwarden_service", "select count(*) from costwarden.fn_circuit_status()"
    )
    for role, query in [
        ("costwarden_tenant", report),
        ("costwarden_service", "select costwarden.fn_circuit_reset('openai')"),
        ("costwarden_service", "select * from costwarden.fn_circuit_history()"),
        ("costwarden_tenant", "select * from costwarden.fn_circuit_status()"),
    ]:
        expect_sqlstate(admin_conn, "42501", query, role=role)
