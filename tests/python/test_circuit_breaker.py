"""Provider circuit breakers (SPEC §6): open, cooldown, exactly one half-open probe,
close on success, reopen on failure, probe retry, status / history / reset, errors.

No assertion here waits for the clock. The cooldown is an hour, so a circuit that has
just opened (or a probe just admitted) is definitely cooling down; to reach the end of
the cooldown a test moves the circuit's ``opened_at`` / ``probe_at`` back as the
superuser. ``reserve_aged`` does that and the reservation in one transaction, where
``now()`` is one instant, so "one microsecond before the cooldown ends" and "exactly
when it ends" are exact statements."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import costwarden
from costwarden import types as t
from cwtest import Seeded, expect_sqlstate, run_as, table_snapshot

Conn = psycopg.Connection[Any]
CHAT = {"input_tokens": 100, "output_tokens": 10}
COOLDOWN = "1 hour"  # circuit_cooldown in these tests: no test lives that long
JUST_BEFORE = f"{COOLDOWN} - 1 microsecond"  # an age at which the cooldown has not ended


def one(conn: Conn, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0] if len(row) == 1 else row


@pytest.fixture
def breaker(client: costwarden.Client, seeded: Seeded) -> Seeded:
    client.set_setting("circuit_failure_threshold", 3)
    client.set_setting("circuit_cooldown", COOLDOWN)
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


def age_circuit(admin_conn: Conn, column: str, age: str, provider: str = "openai") -> None:
    """Set the circuit's ``opened_at`` or ``probe_at`` to ``now() - age``."""
    assert column in ("opened_at", "probe_at")
    state = "open" if column == "opened_at" else "half_open"
    changed = admin_conn.execute(
        f"update costwarden._circuits set {column} = now() - %s::interval "
        "where provider = %s and state = %s",
        (age, provider, state),
    ).rowcount
    assert changed == 1, f"{provider} is not {state}"


def reserve_aged(admin_conn: Conn, s: Seeded, column: str, age: str) -> t.Reservation:
    """In one transaction (one ``now()``): age the openai circuit, then reserve on it.

    The transaction commits: what the reservation did to the circuit stays.
    """
    with admin_conn.transaction():
        age_circuit(admin_conn, column, age)
        with admin_conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(
                "select * from costwarden.fn_cost_reserve(p_org_id => %s, "
                "p_workspace_id => %s, p_model => %s, p_usage => %s::jsonb)",
                (s.org, s.ws_platform, s.platform_model, '{"input_tokens": 100}'),
            ).fetchone()
    assert row is not None
    return t.Reservation.from_row(row)


def circuit(client: costwarden.Client, provider: str = "openai") -> t.CircuitStatus:
    return {c.provider: c for c in client.circuits()}[provider]


def test_failures_open_the_circuit_and_success_of_the_probe_closes_it(
    client: costwarden.Client, breaker: Seeded, admin_conn: Conn
) -> None:
    assert reserve(client, breaker).status == "held"
    # a success in between resets the count: failures must be consecutive
    client.report_provider("openai", False, "x")
    client.report_provider("openai", False, "x")
    assert client.report_provider("openai", True) == "closed"
    assert client.report_provider("openai", False, "x") == "closed"
    client.report_provider("openai", True)
    open_circuit(client)

    denied = reserve(client, breaker)  # it has just opened: an hour of cooldown ahead
    assert denied.status == "denied"
    assert codes(denied) == ["circuit_open"]
    reason = denied.reasons[0]
    assert (reason.scope_kind, reason.scope_id, reason.enforced) == ("provider", "openai", True)
    # another provider is not affected
    assert reserve(client, breaker, breaker.vendor_model).status == "held"
    opened = circuit(client)
    assert opened.state == "open"
    assert opened.opened_at is not None
    assert opened.next_probe_at == opened.opened_at + timedelta(hours=1)

    # one microsecond before the cooldown ends: still refused, no probe
    before = reserve_aged(admin_conn, breaker, "opened_at", JUST_BEFORE)
    assert (before.status, codes(before)) == ("denied", ["circuit_open"])
    assert circuit(client).state == "open"
    # exactly when it ends: this reservation is the one half-open probe
    probe = reserve_aged(admin_conn, breaker, "opened_at", COOLDOWN)
    assert (probe.status, codes(probe)) == ("held", [])
    assert codes(reserve(client, breaker)) == ["circuit_open"]  # no second probe
    status = circuit(client)
    assert status.state == "half_open"
    assert status.probe_at is not None
    assert status.next_probe_at == status.probe_at + timedelta(hours=1)

    assert client.report_provider("openai", True) == "closed"
    assert reserve(client, breaker).status == "held"
    history = [(e.from_state, e.to_state, e.reason) for e in client.circuit_history("openai")]
    assert history == [
        ("half_open", "closed", "probe_succeeded"),
        ("open", "half_open", "probe_admitted"),
        ("closed", "open", "failure_threshold"),
    ]


def test_a_failed_probe_reopens_and_cools_down_again(
    client: costwarden.Client, breaker: Seeded, admin_conn: Conn
) -> None:
    open_circuit(client)
    first_opened = circuit(client).opened_at
    assert first_opened is not None
    assert reserve_aged(admin_conn, breaker, "opened_at", COOLDOWN).status == "held"
    assert client.report_provider("openai", False, "still down") == "open"
    # the cooldown starts again from the failed report
    reopened = circuit(client)
    assert reopened.opened_at is not None and reopened.opened_at > first_opened
    assert reopened.next_probe_at == reopened.opened_at + timedelta(hours=1)
    assert codes(reserve(client, breaker)) == ["circuit_open"]  # cooling down again
    before = reserve_aged(admin_conn, breaker, "opened_at", JUST_BEFORE)
    assert codes(before) == ["circuit_open"]
    assert reserve_aged(admin_conn, breaker, "opened_at", COOLDOWN).status == "held"
    assert [e.reason for e in client.circuit_history("openai", limit=2)] == [
        "probe_admitted",
        "probe_failed",
    ]
    status = circuit(client)
    assert status.last_error == "still down"
    assert status.consecutive_failures == 4


def test_a_probe_that_never_reports_is_replaced_after_the_cooldown(
    client: costwarden.Client, breaker: Seeded, admin_conn: Conn
) -> None:
    open_circuit(client)
    probe = reserve_aged(admin_conn, breaker, "opened_at", COOLDOWN)
    assert probe.status == "held"
    client.release(probe.reservation_id, "client crashed")  # no report ever comes
    assert codes(reserve(client, breaker)) == ["circuit_open"]
    # one microsecond before the probe goes stale: still the same probe
    before = reserve_aged(admin_conn, breaker, "probe_at", JUST_BEFORE)
    assert codes(before) == ["circuit_open"]
    assert client.circuit_history("openai", limit=1)[0].reason == "probe_admitted"
    # exactly a cooldown after it was admitted: the next reservation is a new probe
    retry = reserve_aged(admin_conn, breaker, "probe_at", COOLDOWN)
    assert (retry.status, codes(retry)) == ("held", [])
    assert codes(reserve(client, breaker)) == ["circuit_open"]
    assert client.circuit_history("openai", limit=1)[0].reason == "probe_retry"
    status = circuit(client)
    assert status.state == "half_open"
    assert status.probe_at is not None
    assert status.next_probe_at == status.probe_at + timedelta(hours=1)


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


@pytest.mark.parametrize("column", ["opened_at", "probe_at"])
def test_exactly_one_probe_under_concurrent_reservers(
    client: costwarden.Client, breaker: Seeded, dsn: str, admin_conn: Conn, column: str
) -> None:
    """16 real connections, in 16 orgs (no shared pool lock), all after the cooldown
    (of the open circuit, or of a stale probe): exactly one is held."""
    n = 16
    for i in range(n):
        client.upsert_org(f"org{i}")
        client.upsert_workspace(f"org{i}", "ws", model=breaker.platform_model)
    open_circuit(client)
    if column == "probe_at":
        reserve_aged(admin_conn, breaker, "opened_at", COOLDOWN)  # the probe that goes stale
    age_circuit(admin_conn, column, COOLDOWN)  # committed before any reserver starts
    events_before = len(client.circuit_history("openai"))
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(n)]
    try:
        for conn in conns:
            conn.execute("select 1")
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
    history = client.circuit_history("openai")
    assert len(history) == events_before + 1
    expected = "probe_admitted" if column == "opened_at" else "probe_retry"
    assert history[0].reason == expected
    assert [e.reason for e in history].count("probe_admitted") == 1


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
