"""fn_reconcile / fn_reconcile_repair (sql/functions/18_reconcile.sql), `costwarden books
check|repair`, and the replay functions that make a spooled operation book exactly what
the online call would have: once, priced at call time."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import costwarden
from costwarden.cli import main
from costwarden.spool import Spool
from cwtest import Seeded, expect_sqlstate

Conn = psycopg.Connection[Any]
CHAT = {"input_tokens": 1000, "output_tokens": 100}  # gpt-4o: 2 500 + 1 000 micros
CHAT_MICROS = 3_500


def books(dsn: str, *args: str) -> Any:
    return CliRunner().invoke(main, ["--dsn", dsn, "books", *args])


def saga_traffic(client: costwarden.Client, seeded: Seeded) -> None:
    """A bit of everything that moves counters: commits, releases after ticks, an
    expiry, a spend report, an adjustment, and a hold left open."""
    c = client
    user = next(iter(seeded.users))
    r = c.reserve(seeded.org, seeded.ws_platform, seeded.platform_model, CHAT, user_id=user)
    c.commit(r.reservation_id, {"input_tokens": 500})
    r = c.reserve(seeded.org, seeded.ws_platform, seeded.platform_model, CHAT, key_id=seeded.key)
    c.meter(r.reservation_id, {"input_tokens": 200})
    c.release(r.reservation_id)
    c.reserve(seeded.org, seeded.ws_platform, seeded.platform_model, CHAT, user_id=user)  # held
    c.report_spend(seeded.org, seeded.ws_platform, "gateway", 12_345)
    c.ledger_adjust(seeded.org, seeded.ws_platform, -1_000, "refund")


def test_reconcile_finds_no_drift_on_correct_books(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    saga_traffic(client, seeded)
    assert client.reconcile() == []
    assert client.reconcile(seeded.org) == []
    runs = admin_conn.execute(
        "select org_id, findings from costwarden._reconcile_runs order by run_id"
    ).fetchall()
    assert runs == [(None, 0), (seeded.org, 0)]


def test_reconcile_reports_held_and_spent_drift_without_fixing_it(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    saga_traffic(client, seeded)
    ws_pool = admin_conn.execute(
        "select pool_id from costwarden._pools where org_id = %s and kind = 'workspace' "
        "and scope_id = %s",
        (seeded.org, seeded.ws_platform),
    ).fetchone()[0]
    # a lost hold and a spend total that lost 7 micros and gained 3 tokens
    admin_conn.execute(
        "update costwarden._pools set held_micros = held_micros + 42 where pool_id = %s",
        (ws_pool,),
    )
    admin_conn.execute(
        "update costwarden._pools set spent_micros = spent_micros - 7, "
        "spent_tokens = spent_tokens + 3 where pool_id = %s",
        (ws_pool,),
    )
    before = admin_conn.execute("select * from costwarden._pools order by pool_id").fetchall()
    drift = client.reconcile(seeded.org)
    assert admin_conn.execute("select * from costwarden._pools order by pool_id").fetchall() == (
        before
    )  # nothing fixed
    held = [d for d in drift if d.measure == "held"]
    assert [(d.pool_id, d.metric, d.drift) for d in held] == [(ws_pool, "cost", 42)]
    spent = {(d.period, d.window_kind, d.metric): d for d in drift if d.measure == "spent"}
    assert {d.pool_id for d in spent.values()} == {ws_pool}
    # the total is read by every window: each of them and the whole horizon see it
    windows = {(p, w) for p in ("hour", "day", "week", "month") for w in ("rolling", "calendar")}
    assert {k[:2] for k in spent} == windows | {(None, "horizon")}
    for period, window in windows | {(None, "horizon")}:
        assert spent[period, window, "cost"].drift == -7
        assert spent[period, window, "tokens"].drift == 3
        cost = spent[period, window, "cost"]
        assert cost.counter + 7 == cost.recomputed
    assert all(d.pool_kind == "workspace" and d.scope_id == seeded.ws_platform for d in drift)

    # the CLI: exit 1 and the table; --json
    result = books(client_dsn(admin_conn), "check", "--org", seeded.org)
    assert result.exit_code == 1, result.output
    assert "DISCREPANCY" in result.output and "finding(s) of drift" in result.output
    doc = json.loads(books(client_dsn(admin_conn), "check", "--json").output)
    assert doc["ok"] is False and doc["ledger"]["ok"] is True
    assert len(doc["reconcile"]["drift"]) == len(client.reconcile())

    # repair: admin only, audited, reason required; then the books balance
    repair = "select * from costwarden.fn_reconcile_repair(%s, %s, %s)"
    expect_sqlstate(
        admin_conn, "42501", repair, (seeded.org, ws_pool, "x"), role="costwarden_service"
    )
    expect_sqlstate(admin_conn, "CW004", repair, (seeded.org, ws_pool, " "), match="p_reason")
    expect_sqlstate(
        admin_conn, "CW002", repair, (seeded.other_org, ws_pool, "x"), match="p_pool_id"
    )
    fixed = client.reconcile_repair(seeded.org, ws_pool, "bucket damaged by a manual edit")
    assert set(fixed) == set(drift)
    assert client.reconcile() == []
    assert client.reconcile_repair(seeded.org, ws_pool, "again") == []  # nothing to do
    [audit] = client.audit(seeded.org, action="reconcile_repair")
    assert audit.after["reason"] == "bucket damaged by a manual edit"
    assert audit.before["held_micros"] == audit.after["held_micros"] + 42
    result = books(client_dsn(admin_conn), "check")
    assert result.exit_code == 0, result.output
    assert "the books balance" in result.output


def client_dsn(conn: Conn) -> str:
    info = conn.info
    return f"host={info.host} port={info.port} user={info.user} dbname={info.dbname}"


def test_books_check_compares_digests_and_fails_on_a_broken_chain(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn, tmp_path: Path
) -> None:
    dsn = client_dsn(admin_conn)
    saga_traffic(client, seeded)
    digest = tmp_path / "digest.json"
    result = books(dsn, "check", "--save-digest", str(digest))
    assert result.exit_code == 0, result.output
    assert json.loads(digest.read_text())["chains"]
    client.report_spend(seeded.org, seeded.ws_platform, "gateway", 20_000)
    assert books(dsn, "check", "--digest", str(digest)).exit_code == 0  # the chain only grew
    # a rewritten history: the saved head is no longer in the chain
    admin_conn.execute("alter table costwarden._ledger disable trigger user")
    admin_conn.execute(
        "update costwarden._ledger set amount_micros = amount_micros + 1 "
        "where org_id = %s and seq = 1",
        (seeded.org,),
    )
    admin_conn.execute("alter table costwarden._ledger enable trigger user")
    result = books(dsn, "check", "--digest", str(digest))
    assert result.exit_code == 1 and "DISCREPANCY" in result.output


def test_the_worker_and_pg_cron_run_the_reconciliation() -> None:
    from costwarden.migrate import CRON_JOBS
    from costwarden.worker import default_jobs

    assert ("costwarden-reconcile", "41 3 * * *", "fn_reconcile") in CRON_JOBS
    assert {j.name: j.every_seconds for j in default_jobs()}["costwarden-reconcile"] == 86400


# -- replay: exactly once, what the online call would have booked -----------------------


def ledger_of(conn: Conn, rid: uuid.UUID) -> list[tuple[Any, ...]]:
    return conn.execute(
        "select amount_micros, approximate, late from costwarden._ledger "
        "where reservation_id = %s order by seq",
        (rid,),
    ).fetchall()


def test_a_replayed_release_charges_the_offline_ticks_like_an_online_release(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    online = client.reserve(seeded.org, seeded.ws_platform, seeded.platform_model, CHAT)
    client.meter(online.reservation_id, {"input_tokens": 800})
    client.release(online.reservation_id)

    offline = client.reserve(seeded.org, seeded.ws_platform, seeded.platform_model, CHAT)
    op = uuid.uuid4()
    call = "select * from costwarden.fn_replay_reservation(%s, 'release', %s, %s::jsonb)"
    args = (op, offline.reservation_id, json.dumps({"input_tokens": 800}))
    first = admin_conn.execute(call, args).fetchone()
    again = admin_conn.execute(call, args).fetchone()
    assert first == (True, 2_000, 1_500, "released")
    assert again == (False, 0, 0, "released")  # a second replay books nothing
    assert ledger_of(admin_conn, offline.reservation_id) == ledger_of(
        admin_conn, online.reservation_id
    )
    assert client.reconcile() == []


def test_a_replayed_release_of_an_expired_reservation_still_charges_its_ticks(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    r = client.reserve(seeded.org, seeded.ws_platform, seeded.platform_model, CHAT)
    client.meter(r.reservation_id, {"input_tokens": 400})  # seen by the database: 1 000
    admin_conn.execute(
        "update costwarden._reservations set expires_at = now() - interval '1 s' "
        "where reservation_id = %s",
        (r.reservation_id,),
    )
    assert client.expire() == 1  # commit_metered: 1 000 charged
    # offline, the call metered 800 input tokens (2 000) before its release
    done = admin_conn.execute(
        "select * from costwarden.fn_replay_reservation(%s, 'release', %s, %s::jsonb)",
        (uuid.uuid4(), r.reservation_id, json.dumps({"input_tokens": 800})),
    ).fetchone()
    assert done == (True, 1_000, 0, "expired")
    assert ledger_of(admin_conn, r.reservation_id) == [(1_000, True, False), (1_000, True, True)]
    assert client.reconcile() == []


def test_a_spooled_tick_is_superseded_by_a_later_online_tick(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    r = client.reserve(seeded.org, seeded.ws_platform, seeded.platform_model, CHAT)
    client.meter(r.reservation_id, {"input_tokens": 900})
    admin_conn.execute(
        "select * from costwarden.fn_replay_reservation(%s, 'meter', %s, %s::jsonb)",
        (uuid.uuid4(), r.reservation_id, json.dumps({"input_tokens": 300})),
    )
    client.release(r.reservation_id)
    assert ledger_of(admin_conn, r.reservation_id) == [(2_250, True, False)]


def test_replayed_usage_is_priced_at_call_time_and_booked_once(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn, tmp_path: Path
) -> None:
    called_at = datetime.now(UTC)
    # the price doubles after the call, before the replay
    client.set_pricing(
        seeded.platform_model,
        {k: v * 2 for k, v in seeded.prices[seeded.platform_model].items()},
        effective_from=called_at + timedelta(seconds=1),
    )
    old_snapshot = seeded.snapshot_ids[seeded.platform_model]
    spool = Spool(tmp_path)
    rid = uuid.uuid4()
    base = {
        "kind": "usage",
        "id": str(rid),
        "org_id": seeded.org,
        "workspace_id": seeded.ws_platform,
        "model": seeded.platform_model,
        "user_id": None,
        "key_id": seeded.key,
        "approximate": False,
        "called_at": called_at.isoformat(),
    }
    spool.append({**base, "usage": {"input_tokens": 400}, "final": False})  # a tick: 1 000
    spool.append({**base, "usage": CHAT, "final": True})  # the commit
    report = spool.replay(client._run)
    assert (report.replayed, report.booked_micros, report.rejected) == (2, CHAT_MICROS, 0)
    rows = admin_conn.execute(
        "select amount_micros, tokens, pricing_snapshot_id, model, usage, key_id, source "
        "from costwarden._ledger where entry_type = 'spend_report' order by seq"
    ).fetchall()
    assert rows == [
        (
            1_000,
            400,
            old_snapshot,
            seeded.platform_model,
            {"input_tokens": 400},
            seeded.key,
            spool.source,
        ),
        (
            2_500,
            700,
            old_snapshot,
            seeded.platform_model,
            {"input_tokens": 600, "output_tokens": 100},
            seeded.key,
            spool.source,
        ),
    ]
    # both records again (a crash before the offsets were saved): nothing more
    spool._save_state({"offset": 0})
    spool.path.write_text("")
    spool.append({**base, "usage": {"input_tokens": 400}, "final": False})
    spool.append({**base, "usage": CHAT, "final": True})
    assert spool.replay(client._run).booked_micros == 0
    [src] = [s for s in client.spend_sources() if s.source == spool.source]
    assert src.booked_micros == CHAT_MICROS
    assert client.reconcile() == []


def test_replay_usage_validates_its_arguments(seeded: Seeded, admin_conn: Conn) -> None:
    call = "select * from costwarden.fn_replay_usage(%s, %s, %s, %s, %s::jsonb, %s, 'spool-x')"
    now = datetime.now(UTC)
    ws, model = seeded.ws_platform, seeded.platform_model
    for state, args, match in [
        ("CW004", (None, seeded.org, ws, model, "{}", now), "p_operation_id"),
        ("CW004", (uuid.uuid4(), seeded.org, ws, model, "{}", None), "p_called_at"),
        ("CW004", (uuid.uuid4(), seeded.org, ws, model, "[]", now), "p_usage"),
        (
            "CW006",
            (
                uuid.uuid4(),
                seeded.org,
                seeded.ws_empty,
                seeded.unpriced_model,
                '{"input_tokens": 1}',
                now,
            ),
            "p_model",
        ),
        ("CW002", (uuid.uuid4(), seeded.org, "nope", model, "{}", now), "p_workspace_id"),
    ]:
        expect_sqlstate(admin_conn, state, call, args, match=match)
    expect_sqlstate(
        admin_conn,
        "42501",
        call,
        (uuid.uuid4(), seeded.org, ws, model, "{}", now),
        role="costwarden_tenant",
    )


def test_the_spool_is_bounded(tmp_path: Path) -> None:
    from test_spool import closed_port_dsn

    with costwarden.Client(
        closed_port_dsn(),
        on_unavailable="open",
        spool_dir=tmp_path,
        spool_max_bytes=600,
        timeout=1,
    ) as down:
        admitted = 0
        with pytest.raises(costwarden.SpoolFull, match=r"is full: .* limit 600"):
            for _ in range(10):
                r = down.reserve("acme", "ws", "openai/gpt-4o", CHAT)
                admitted += 1
                down.commit(r.reservation_id, {"input_tokens": Decimal(1)})
        assert 1 <= admitted < 10
        assert isinstance(costwarden.SpoolFull("x"), costwarden.DatabaseUnavailable)


def test_no_policy_given_warns_and_fails_closed() -> None:
    from test_spool import closed_port_dsn

    with pytest.warns(UserWarning, match="on_unavailable not given: using 'closed'"):
        c = costwarden.Client(closed_port_dsn(), timeout=1)
    with c, pytest.raises(costwarden.DatabaseUnavailable):
        c.reserve("acme", "ws", "openai/gpt-4o", CHAT)
    with pytest.warns(UserWarning, match="on_unavailable not given"):
        costwarden.AsyncClient(closed_port_dsn())
