"""Cumulative spend reports (SPEC §6): deltas, resets, windows, key/user context,
concurrency, errors."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

import costwarden
from cwtest import Seeded, expect_sqlstate, run_as, table_snapshot

Conn = psycopg.Connection[Any]


def ledger(conn: Conn, org: str = "acme") -> list[tuple[Any, ...]]:
    return conn.execute(
        "select seq, entry_type, amount_micros, workspace_id, key_id, user_id, source, tokens "
        "from costwarden._ledger where org_id = %s order by seq",
        (org,),
    ).fetchall()


def spent(client: costwarden.Client, org: str, kind: str, scope: str | None) -> int:
    rows = client.budget_status(org, kind, scope)
    assert rows, "set a budget first"
    return int(rows[0].spent or 0)


def test_deltas_resets_and_repeats(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    ws = seeded.ws_platform
    assert client.report_spend("acme", ws, "edge-1", 1_000) == 1_000  # first report: all of it
    assert client.report_spend("acme", ws, "edge-1", 1_500) == 500
    assert client.report_spend("acme", ws, "edge-1", 1_500) == 0  # a repeat books nothing
    assert client.report_spend("acme", ws, "edge-1", 200) == 200  # went down: a reset
    assert client.report_spend("acme", ws, "edge-1", 0) == 0  # a reset to 0
    assert client.report_spend("acme", ws, "edge-2", 700) == 700  # sources are independent
    assert client.report_spend("acme", seeded.ws_vendor, "edge-1", 50) == 50  # per workspace
    assert ledger(admin_conn) == [
        (1, "spend_report", 1_000, ws, None, None, "edge-1", 0),
        (2, "spend_report", 500, ws, None, None, "edge-1", 0),
        (3, "spend_report", 200, ws, None, None, "edge-1", 0),
        (4, "spend_report", 700, ws, None, None, "edge-2", 0),
        (5, "spend_report", 50, seeded.ws_vendor, None, None, "edge-1", 0),
    ]
    src = {(s.workspace_id, s.source): s for s in client.spend_sources("acme")}
    e1 = src[(ws, "edge-1")]
    assert (e1.last_cumulative_micros, e1.reports, e1.resets, e1.booked_micros) == (0, 5, 2, 1_700)


def test_reports_count_toward_workspace_and_org_windows(
    client: costwarden.Client, seeded: Seeded
) -> None:
    for kind, scope in [("org", None), ("workspace", seeded.ws_platform)]:
        for period in ("hour", "day", "week", "month"):
            client.set_budget("acme", kind, scope, period, 10_000)
    client.report_spend("acme", seeded.ws_platform, "edge", 6_000)
    for kind, scope in [("org", None), ("workspace", seeded.ws_platform)]:
        assert {r.period: r.spent for r in client.budget_status("acme", kind, scope)} == {
            "hour": 6_000,
            "day": 6_000,
            "week": 6_000,
            "month": 6_000,
        }
    # and a reserve now sees that spend: 6 000 + 5 000 > 10 000
    denied = client.reserve(
        "acme",
        seeded.ws_platform,
        seeded.platform_model,
        {"output_tokens": 500},
        raise_on_denied=False,
    )
    assert denied.status == "denied"
    assert {r.scope_kind for r in denied.reasons} == {"org", "workspace"}


def test_a_registered_source_counts_toward_its_key_and_user(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    client.set_budget("acme", "key", seeded.key, "day", 1_000_000)
    client.set_budget("acme", "user", "bob", "day", 1_000_000)
    client.set_budget("acme", "user", "alice", "day", 1_000_000)
    # the key belongs to alice: its user applies unless another is given
    client.set_spend_source("acme", seeded.ws_platform, "gateway", key_id=seeded.key)
    client.report_spend("acme", seeded.ws_platform, "gateway", 300)
    assert spent(client, "acme", "key", seeded.key) == 300
    assert spent(client, "acme", "user", "alice") == 300
    client.set_spend_source("acme", seeded.ws_vendor, "batch", user_id="bob")
    client.report_spend("acme", seeded.ws_vendor, "batch", 40)
    assert spent(client, "acme", "user", "bob") == 40
    assert spent(client, "acme", "key", seeded.key) == 300
    assert ledger(admin_conn)[-2:] == [
        (1, "spend_report", 300, seeded.ws_platform, seeded.key, "alice", "gateway", 0),
        (2, "spend_report", 40, seeded.ws_vendor, None, "bob", "batch", 0),
    ]
    audit = client.audit(action="spend_source_set")
    assert [a.after for a in audit] == [
        {"key_id": None, "user_id": "bob"},
        {"key_id": seeded.key, "user_id": None},
    ]


def test_concurrent_reports_of_one_source_never_double_book(
    client: costwarden.Client, seeded: Seeded, dsn: str, admin_conn: Conn
) -> None:
    n = 12
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(n)]
    deltas: list[int] = []
    errors: list[BaseException] = []
    try:
        for value in (1_000, 2_500, 2_500, 4_000):
            barrier = threading.Barrier(n)

            def go(conn: Conn, cumulative: int = value, gate: threading.Barrier = barrier) -> None:
                try:
                    gate.wait()
                    row = conn.execute(
                        "select costwarden.fn_spend_report_cumulative(p_org_id => 'acme', "
                        "p_workspace_id => %s, p_source => 'shared', p_cumulative_micros => %s)",
                        (seeded.ws_platform, cumulative),
                    ).fetchone()
                    assert row is not None
                    deltas.append(row[0])
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=go, args=(c,)) for c in conns]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
    finally:
        for conn in conns:
            conn.close()
    assert not errors, errors
    assert sorted(d for d in deltas if d) == [1_000, 1_500, 1_500]
    assert sum(r[2] for r in ledger(admin_conn)) == 4_000
    spent = admin_conn.execute(
        "select sum(p.spent_micros) from costwarden._pools p where p.kind = 'workspace'"
    ).fetchone()
    assert spent == (4_000,)


@pytest.mark.parametrize(
    ("args", "sqlstate", "match"),
    [
        (("acme", "ws-platform", "s", -1), "CW004", "p_cumulative_micros must not be negative"),
        (("acme", "ws-platform", "s", None), "CW004", "p_cumulative_micros is required"),
        (("acme", "ws-platform", None, 5), "CW004", "p_source is required"),
        (("acme", "ws-platform", " s", 5), "CW004", "p_source"),
        (("acme", "nope", "s", 5), "CW002", "p_workspace_id: unknown workspace"),
        (("nope", "ws-platform", "s", 5), "CW002", "p_org_id: unknown org"),
        ((None, "ws-platform", "s", 5), "CW004", "p_org_id is required"),
    ],
)
def test_bad_reports_write_nothing(
    admin_conn: Conn, seeded: Seeded, args: tuple[Any, ...], sqlstate: str, match: str
) -> None:
    admin_conn.execute(
        "select costwarden.fn_spend_report_cumulative('acme', 'ws-platform', 's', 10)"
    )
    before = table_snapshot(admin_conn)
    expect_sqlstate(
        admin_conn,
        sqlstate,
        "select costwarden.fn_spend_report_cumulative(p_org_id => %s, p_workspace_id => %s, "
        "p_source => %s, p_cumulative_micros => %s)",
        args,
        match=match,
    )
    assert table_snapshot(admin_conn) == before


@pytest.mark.parametrize(
    ("kwargs", "sqlstate", "match"),
    [
        ({"p_key_id": "nope"}, "CW002", "p_key_id: unknown key"),
        ({"p_user_id": "nope"}, "CW002", "p_user_id: unknown user"),
        ({"p_key_id": "key-1", "p_user_id": "bob"}, "CW004", "another user"),
        ({"p_workspace_id": "ws-vendor", "p_key_id": "key-1"}, "CW004", "belongs to workspace"),
    ],
)
def test_bad_source_bindings_write_nothing(
    admin_conn: Conn, seeded: Seeded, kwargs: dict[str, str], sqlstate: str, match: str
) -> None:
    args = {"p_org_id": "acme", "p_workspace_id": "ws-platform", "p_source": "s", **kwargs}
    before = table_snapshot(admin_conn)
    expect_sqlstate(
        admin_conn,
        sqlstate,
        "select costwarden.fn_spend_source_set(p_org_id => %(p_org_id)s, "
        "p_workspace_id => %(p_workspace_id)s, p_source => %(p_source)s, "
        "p_key_id => %(p_key_id)s, p_user_id => %(p_user_id)s)",
        {"p_key_id": None, "p_user_id": None, **args},
        match=match,
    )
    assert table_snapshot(admin_conn) == before


def test_positional_spec_signature_and_roles(admin_conn: Conn, seeded: Seeded) -> None:
    call = "select costwarden.fn_spend_report_cumulative('acme', 'ws-platform', 'src', 5::bigint)"
    assert run_as(admin_conn, "costwarden_service", call) == [(5,)]
    expect_sqlstate(admin_conn, "42501", call, role="costwarden_tenant")
    expect_sqlstate(
        admin_conn,
        "42501",
        "select costwarden.fn_spend_source_set('acme', 'ws-platform', 'src')",
        role="costwarden_service",
    )
