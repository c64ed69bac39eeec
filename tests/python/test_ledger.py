"""The ledger (SPEC §4): append-only, one gapless sha256 chain per org, adjustments,
verify / digest / export, and appends of one org never waiting for another."""

from __future__ import annotations

import hashlib
import threading
from decimal import Decimal
from typing import Any

import psycopg
import pytest

import costwarden
from costwarden import ledger
from cwtest import ROLES, Seeded, expect_sqlstate, run_as, table_snapshot
from ledger_helpers import (
    ACME_ENTRIES,
    GLOBEX_ENTRIES,
    Conn,
    build_chains,
    charge,
    one,
    py_verify,
    sql_verify,
)

ZERO = bytes(32)

MUTATIONS = {
    "update": "update costwarden.{table} set {column} = {column}",
    "delete": "delete from costwarden.{table}",
    "truncate": "truncate costwarden.{table}",
}


# -- append-only ---------------------------------------------------------------------------


def test_append_only_for_the_owner_and_the_caller_roles(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    build_chains(client, seeded)
    before = table_snapshot(admin_conn)
    for table, column in (("_ledger", "amount_micros"), ("_audit_log", "action")):
        for op in sorted(MUTATIONS):
            stmt = MUTATIONS[op].format(table=table, column=column)
            # the superuser who owns the table: the triggers refuse
            expect_sqlstate(admin_conn, "CW001", stmt, match="append-only")
            # the caller roles have no table privilege at all
            for role in ROLES:
                expect_sqlstate(admin_conn, "42501", stmt, role=role)
    assert table_snapshot(admin_conn) == before


def _granted_writer(conn: Conn, table: str, column: str, ops: list[str]) -> None:
    with conn.transaction(force_rollback=True):  # the role is cluster-wide: roll it back
        conn.execute("create role cw_ledger_writer")
        conn.execute("grant usage on schema costwarden to cw_ledger_writer")
        conn.execute(f"grant all on costwarden.{table} to cw_ledger_writer")
        for op in ops:
            stmt = MUTATIONS[op].format(table=table, column=column)
            expect_sqlstate(conn, "CW001", stmt, role="cw_ledger_writer", match="append-only")


def test_ledger_append_only_for_a_role_granted_every_privilege(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    build_chains(client, seeded)
    _granted_writer(admin_conn, "_ledger", "amount_micros", sorted(MUTATIONS))
    _granted_writer(admin_conn, "_ledger_heads", "last_seq", ["delete", "truncate", "update"])


def test_audit_log_append_only_for_a_role_granted_every_privilege(
    seeded: Seeded, admin_conn: Conn
) -> None:
    _granted_writer(admin_conn, "_audit_log", "action", sorted(MUTATIONS))


def test_heads_only_move_forward(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    build_chains(client, seeded)
    for stmt in (
        "update costwarden._ledger_heads set last_seq = last_seq - 1",
        "update costwarden._ledger_heads set last_hash = sha256('x')",
        "update costwarden._ledger_heads set last_seq = last_seq + 2",
        "delete from costwarden._ledger_heads",
        "truncate costwarden._ledger_heads",
    ):
        expect_sqlstate(admin_conn, "CW001", stmt)


# -- the chain ---------------------------------------------------------------------------------


def test_one_gapless_chain_per_org(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    build_chains(client, seeded)
    rows = admin_conn.execute(
        "select org_id, seq, prev_hash, entry_hash, costwarden._ledger_payload(l) "
        "from costwarden._ledger as l order by org_id, seq"
    ).fetchall()
    by_org: dict[str, list[Any]] = {}
    for r in rows:
        by_org.setdefault(r[0], []).append(r)
    assert {o: len(v) for o, v in by_org.items()} == {
        seeded.org: ACME_ENTRIES,
        seeded.other_org: GLOBEX_ENTRIES,
    }
    for org_rows in by_org.values():
        prev = ZERO
        for i, (_org, seq, prev_hash, entry_hash, payload) in enumerate(org_rows, start=1):
            assert seq == i
            assert bytes(prev_hash) == prev
            assert bytes(entry_hash) == hashlib.sha256(prev + payload.encode()).digest()
            prev = bytes(entry_hash)
    heads = dict(
        admin_conn.execute("select org_id, last_seq from costwarden._ledger_heads").fetchall()
    )
    assert heads == {seeded.org: ACME_ENTRIES, seeded.other_org: GLOBEX_ENTRIES}


def test_commit_returns_the_entry_it_appended(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    usage = {"input_tokens": 1000, "output_tokens": 100}
    res = charge(client, seeded.org, seeded.ws_platform, seeded.platform_model, usage)
    row = one(
        admin_conn,
        "select entry_type, encode(entry_hash, 'hex'), amount_micros, usage, tokens, "
        "pricing_snapshot_id, billing_mode, approximate, late "
        "from costwarden._ledger where org_id = %s and seq = %s",
        (seeded.org, res.entry_seq),
    )
    snapshot = seeded.snapshot_ids[seeded.platform_model]
    assert row == (
        "charge", res.entry_hash, res.charged_micros, usage, 1100, snapshot,
        "platform_managed", False, False,
    )  # fmt: skip


def test_python_payload_matches_sql_payload(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    build_chains(client, seeded)
    client.ledger_adjust(
        seeded.org, seeded.ws_platform, 7, 'a "quoted"\nreason\twith\x01controls é'
    )
    payloads = dict(
        admin_conn.execute(
            "select seq, costwarden._ledger_payload(l) from costwarden._ledger as l "
            "where org_id = %s",
            (seeded.org,),
        ).fetchall()
    )
    with client.ledger_snapshot() as snap:
        rows = list(ledger.iter_rows(snap, seeded.org))
    assert len(rows) == ACME_ENTRIES + 1
    for raw in rows:
        assert ledger.canonical_payload(raw).decode() == payloads[raw["seq"]]


def test_a_usage_that_cannot_be_canonicalised_is_refused(admin_conn: Conn, seeded: Seeded) -> None:
    for usage in ('{"images": "two"}', "[1, 2]", '{"images": true}'):
        expect_sqlstate(
            admin_conn, "CW004",
            "select costwarden._ledger_append(p_org_id => %s, p_entry_type => 'charge', "
            "p_amount_micros => 1, p_usage => %s::jsonb)",
            (seeded.org, usage), match="p_usage",
        )  # fmt: skip


# -- concurrency ----------------------------------------------------------------------------


def test_appending_for_one_org_never_waits_for_another(
    client: costwarden.Client, seeded: Seeded, dsn: str
) -> None:
    usage = {"input_tokens": 100, "output_tokens": 10}
    held = client.reserve(seeded.org, seeded.ws_platform, seeded.platform_model, usage)
    with psycopg.connect(dsn) as a:
        # A: commits for acme (locks acme's pools and ledger head) and stays open
        a.execute(
            "select * from costwarden.fn_cost_commit(p_reservation_id => %s, p_usage => %s::jsonb)",
            (held.reservation_id, '{"input_tokens": 100, "output_tokens": 10}'),
        )
        with psycopg.connect(dsn, autocommit=True) as b:
            b.execute("set lock_timeout = '2s'")
            # B: a whole saga and an adjustment for globex, while A is open
            r = b.execute(
                "select reservation_id from costwarden.fn_cost_reserve(p_org_id => %s, "
                "p_workspace_id => %s, p_model => %s, p_usage => %s::jsonb)",
                (seeded.other_org, seeded.other_ws, seeded.platform_model, '{"input_tokens": 5}'),
            ).fetchone()
            assert r is not None
            seq = b.execute(
                "select entry_seq from costwarden.fn_cost_commit(p_reservation_id => %s, "
                "p_usage => %s::jsonb)",
                (r[0], '{"input_tokens": 5}'),
            ).fetchone()
            assert seq == (1,)
            adj = b.execute(
                "select entry_seq from costwarden.fn_ledger_adjust(p_org_id => %s, "
                "p_workspace_id => %s, p_amount_micros => 10, p_reason => 'credit')",
                (seeded.other_org, seeded.other_ws),
            ).fetchone()
            assert adj == (2,)
            # the same org does wait: that is what serialises its seq
            b.execute("set lock_timeout = '200ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                b.execute(
                    "select costwarden._ledger_append(p_org_id => %s, p_entry_type => 'charge', "
                    "p_amount_micros => 1)",
                    (seeded.org,),
                )
        a.commit()
    assert all(v.ok for v in client.ledger_verify())


def test_concurrent_commits_to_one_org_stay_gapless(
    client: costwarden.Client, seeded: Seeded, dsn: str, admin_conn: Conn
) -> None:
    threads, per_thread = 16, 25
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(i: int) -> None:
        try:
            with costwarden.Client(dsn, pool_size=1) as c:
                start.wait()
                for j in range(per_thread):
                    usage = {"input_tokens": 10 + i, "output_tokens": j + 1}
                    charge(c, seeded.org, seeded.ws_platform, seeded.platform_model, usage)
        except BaseException as exc:  # reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert not errors, errors[:3]
    n = threads * per_thread
    seqs = [r[0] for r in admin_conn.execute(
        "select seq from costwarden._ledger where org_id = %s order by seq", (seeded.org,)
    ).fetchall()]  # fmt: skip
    assert seqs == list(range(1, n + 1))
    assert sql_verify(client)[seeded.org].ok
    assert sql_verify(client)[seeded.org].entries == n
    result = py_verify(client)[seeded.org]
    assert result.ok and result.entries == n and result.last_seq == n


# -- adjustments ------------------------------------------------------------------------------


def test_adjustments_are_signed_entries_counted_in_budgets_and_audited(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    org, ws = seeded.org, seeded.ws_platform
    client.set_budget(org, "org", None, "day", 10_000_000)
    client.set_budget(org, "workspace", ws, "day", 5_000_000)
    client.set_budget(org, "workspace", seeded.ws_vendor, "day", 5_000_000)
    first = client.ledger_adjust(org, ws, 250_000, "correction: under-billed call")
    refund = client.ledger_adjust(org, ws, -100_000, "refund")
    assert (first.entry_seq, refund.entry_seq) == (1, 2)

    rows = admin_conn.execute(
        "select seq, entry_type, amount_micros, workspace_id, reason, usage, tokens, "
        "encode(entry_hash, 'hex') from costwarden._ledger where org_id = %s order by seq",
        (org,),
    ).fetchall()
    assert rows == [
        (1, "adjustment", 250_000, ws, "correction: under-billed call", None, 0, first.entry_hash),
        (2, "adjustment", -100_000, ws, "refund", None, 0, refund.entry_hash),
    ]

    def spent(kind: str, scope: str | None) -> int | None:
        (status,) = [s for s in client.budget_status(org, kind, scope) if s.period == "day"]
        return status.spent

    assert spent("org", None) == 150_000
    assert spent("workspace", ws) == 150_000
    assert spent("workspace", seeded.ws_vendor) == 0  # other workspaces are untouched

    audit = client.audit(org_id=org, action="ledger_adjust")
    assert [a.after for a in reversed(audit)] == [
        {"entry_seq": 1, "amount_micros": 250_000, "reason": "correction: under-billed call",
         "entry_hash": first.entry_hash},
        {"entry_seq": 2, "amount_micros": -100_000, "reason": "refund",
         "entry_hash": refund.entry_hash},
    ]  # fmt: skip
    assert audit[0].target == {"org_id": org, "workspace_id": ws}
    assert all(v.ok for v in client.ledger_verify())


BAD_ADJUSTMENTS = [
    ({"p_amount_micros": 0}, "CW004", "p_amount_micros"),
    ({"p_amount_micros": None}, "CW004", "p_amount_micros"),
    ({"p_amount_micros": 10**15 + 1}, "CW004", "p_amount_micros"),
    ({"p_reason": None}, "CW004", "p_reason"),
    ({"p_reason": ""}, "CW004", "p_reason"),
    ({"p_reason": "   "}, "CW004", "p_reason"),
    ({"p_reason": "x" * 1001}, "CW004", "p_reason"),
    ({"p_org_id": None}, "CW004", "p_org_id"),
    ({"p_workspace_id": None}, "CW004", "p_workspace_id"),
    ({"p_org_id": "nope"}, "CW002", "p_org_id"),
    ({"p_workspace_id": "nope"}, "CW002", "p_workspace_id"),
]


def test_bad_adjustments_write_nothing(seeded: Seeded, admin_conn: Conn) -> None:
    before = table_snapshot(admin_conn)
    for override, sqlstate, arg in BAD_ADJUSTMENTS:
        params: dict[str, Any] = {
            "p_org_id": seeded.org,
            "p_workspace_id": seeded.ws_platform,
            "p_amount_micros": 100,
            "p_reason": "why",
            **override,
        }
        expect_sqlstate(
            admin_conn, sqlstate,
            "select * from costwarden.fn_ledger_adjust(p_org_id => %(p_org_id)s, "
            "p_workspace_id => %(p_workspace_id)s, "
            "p_amount_micros => %(p_amount_micros)s::bigint, p_reason => %(p_reason)s)",
            params, match=arg,
        )  # fmt: skip
    assert table_snapshot(admin_conn) == before


def test_client_maps_adjust_errors(client: costwarden.Client, seeded: Seeded) -> None:
    with pytest.raises(costwarden.errors.InvalidArgument, match="p_amount_micros"):
        client.ledger_adjust(seeded.org, seeded.ws_platform, 0, "zero")
    with pytest.raises(costwarden.errors.NotFound, match="p_workspace_id"):
        client.ledger_adjust(seeded.org, "nope", 5, "x")


# -- roles ------------------------------------------------------------------------------------


LEDGER_CALLS = [
    ("select * from costwarden.fn_ledger_verify()", {"costwarden_admin", "costwarden_service"}),
    ("select * from costwarden.fn_ledger_digest()", {"costwarden_admin", "costwarden_service"}),
    ("select * from costwarden.fn_ledger_identity()", {"costwarden_admin", "costwarden_service"}),
    ("select * from costwarden.fn_ledger_export()", {"costwarden_admin"}),
    (
        "select * from costwarden.fn_ledger_adjust(p_org_id => 'acme', "
        "p_workspace_id => 'ws-platform', p_amount_micros => 5, p_reason => 'r')",
        {"costwarden_admin"},
    ),
]


def test_ledger_functions_per_role(seeded: Seeded, admin_conn: Conn) -> None:
    for call, allowed in LEDGER_CALLS:
        for role in ROLES:
            if role in allowed:
                run_as(admin_conn, role, call)
            else:
                expect_sqlstate(admin_conn, "42501", call, role=role)
    for fn in (
        "fn_ledger_verify",
        "fn_ledger_digest",
        "fn_ledger_adjust",
        "fn_ledger_export",
        "fn_ledger_identity",
    ):
        secdef, config, strict = one(
            admin_conn,
            "select prosecdef, proconfig, proisstrict from pg_proc "
            "where pronamespace = 'costwarden'::regnamespace and proname = %s",
            (fn,),
        )
        assert secdef and not strict
        assert config == ["search_path=pg_catalog, pg_temp"]


# -- verify / digest / export --------------------------------------------------------------------


def test_verify_and_digest_of_empty_and_unknown_orgs(
    client: costwarden.Client, seeded: Seeded
) -> None:
    assert client.ledger_verify() == []
    assert client.ledger_digest() == []
    (v,) = client.ledger_verify(seeded.org)
    assert (v.org_id, v.entries, v.ok, v.first_bad_seq, v.detail) == (
        seeded.org,
        0,
        True,
        None,
        None,
    )
    (h,) = client.ledger_digest(seeded.org)
    assert (h.seq, h.entry_hash) == (0, "0" * 64)
    with pytest.raises(costwarden.errors.NotFound, match="p_org_id"):
        client.ledger_verify("nope")
    with pytest.raises(costwarden.errors.NotFound, match="p_org_id"):
        client.ledger_digest("nope")


def test_digest_is_each_orgs_head(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    build_chains(client, seeded)
    heads = {h.org_id: (h.seq, h.entry_hash) for h in client.ledger_digest()}
    last = dict(
        (org, (seq, h))
        for org, seq, h in admin_conn.execute(
            "select distinct on (org_id) org_id, seq, encode(entry_hash, 'hex') "
            "from costwarden._ledger order by org_id, seq desc"
        ).fetchall()
    )
    assert heads == last
    identity = client.ledger_identity()
    assert identity.database_name == admin_conn.info.dbname
    assert identity.system_identifier.isdigit()


def test_export_pages_through_every_org_in_order(client: costwarden.Client, seeded: Seeded) -> None:
    build_chains(client, seeded)
    with client.ledger_snapshot() as snap:
        paged = [(r["org_id"], r["seq"]) for r in ledger.iter_rows(snap, page_size=2)]
        single = [(r["org_id"], r["seq"]) for r in ledger.iter_rows(snap, seeded.org, page_size=4)]
    expected = sorted(
        [(seeded.org, i) for i in range(1, ACME_ENTRIES + 1)]
        + [(seeded.other_org, i) for i in range(1, GLOBEX_ENTRIES + 1)]
    )
    assert paged == expected
    assert single == [(seeded.org, i) for i in range(1, ACME_ENTRIES + 1)]
    for bad in ({"limit": 0}, {"limit": 100_001}, {"after_seq": -1}):
        with pytest.raises(costwarden.errors.InvalidArgument):
            client.ledger_export_rows(**bad)  # type: ignore[arg-type]
    with pytest.raises(costwarden.errors.InvalidArgument, match="p_after_org_id"):
        client.ledger_export_rows(seeded.org, after_org_id=seeded.other_org)


def test_export_line_round_trip(client: costwarden.Client, seeded: Seeded) -> None:
    client.upsert_workspace(
        seeded.org, 'ws-ü "q"', model=seeded.realtime_model, billing_override="platform_managed"
    )
    usage = {"input_tokens": 10, "audio_seconds": Decimal("12.50")}
    charge(client, seeded.org, 'ws-ü "q"', seeded.realtime_model, usage)
    (entry,) = client.ledger_export_rows(seeded.org)
    raw = ledger.entry_to_raw(entry)
    line = ledger.dumps_row(raw)
    assert line.isascii()
    assert '"audio_seconds":12.50' in line  # numbers are written exactly as stored
    assert ledger.loads_row(line) == raw
    assert ledger.compute_hash(ZERO, raw).hex() == entry.entry_hash
