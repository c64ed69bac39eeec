"""The spend saga (SPEC §2, §3) end to end on a real server."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

import costwarden
from costwarden import BudgetExceeded, InvalidArgument, InvalidState, NotFound
from cwtest import Seeded, expect_sqlstate, table_snapshot

USAGE = {"input_tokens": 1000, "output_tokens": 500}  # gpt-4o: 2500 + 5000 = 7500 micros
COST = 7500
REASON_KEYS = {
    "code",
    "scope_kind",
    "scope_id",
    "period",
    "metric",
    "window",
    "limit",
    "spent",
    "held",
    "requested",
    "enforced",
}


def reserve(
    client: costwarden.Client, s: Seeded, usage: dict[str, Any] | None = None, **kw: Any
) -> costwarden.types.Reservation:
    return client.reserve(
        s.org,
        s.ws_platform,
        s.platform_model,
        USAGE if usage is None else usage,
        raise_on_denied=False,
        **kw,
    )


def status(
    client: costwarden.Client, s: Seeded, kind: str = "workspace", scope: str | None = None
) -> list[Any]:
    return client.budget_status(s.org, kind, scope if scope is not None else s.ws_platform)


def test_reserve_holds_and_commit_charges(client: costwarden.Client, seeded: Seeded) -> None:
    client.set_budget(seeded.org, "workspace", seeded.ws_platform, "day", 100_000)
    r = reserve(client, seeded)
    assert r.status == "held" and r.amount_micros == COST and r.tokens == 1500
    assert r.reasons == () and r.billing_mode == "platform_managed"
    (st,) = status(client, seeded)
    assert (st.spent, st.held, st.remaining) == (0, COST, 100_000 - COST)

    res = client.commit(r.reservation_id, {"input_tokens": 1000, "output_tokens": 100})
    assert res.charged_micros == 3500 and res.released_micros == 4000 and res.overage_micros == 0
    assert res.entry_seq == 1 and res.entry_hash and len(res.entry_hash) == 64
    (st,) = status(client, seeded)
    assert (st.spent, st.held, st.remaining) == (3500, 0, 96_500)


def test_reservation_id_carries_org_hash(
    client: costwarden.Client, seeded: Seeded, admin_conn: psycopg.Connection[Any]
) -> None:
    r = reserve(client, seeded)
    (h,) = admin_conn.execute("select hashtext(%s)", (seeded.org,)).fetchone()  # type: ignore[misc]
    assert int.from_bytes(r.reservation_id.bytes[:4], "big", signed=True) == h


def test_denied_with_all_reason_keys(client: costwarden.Client, seeded: Seeded) -> None:
    client.set_budget(seeded.org, "workspace", seeded.ws_platform, "day", 10_000)
    assert reserve(client, seeded).status == "held"
    r = reserve(client, seeded)
    assert r.status == "denied" and r.expires_at is None
    (reason,) = r.reasons
    assert reason.code == "budget_exceeded" and reason.enforced is True
    assert (reason.limit, reason.spent, reason.held, reason.requested) == (10_000, 0, COST, COST)
    assert (reason.scope_kind, reason.scope_id, reason.period) == (
        "workspace",
        seeded.ws_platform,
        "day",
    )
    with pytest.raises(BudgetExceeded) as info:
        client.reserve(seeded.org, seeded.ws_platform, seeded.platform_model, USAGE)
    assert info.value.reasons[0].code == "budget_exceeded"
    # denied attempts are recorded and hold nothing
    (st,) = status(client, seeded)
    assert st.held == COST
    assert len(client.reservations(seeded.org, "denied")) == 2


def test_reason_json_has_eleven_keys(
    seeded: Seeded, admin_conn: psycopg.Connection[Any], client: costwarden.Client
) -> None:
    client.set_budget(seeded.org, "org", None, "hour", 0)
    row = admin_conn.execute(
        "select reasons from costwarden.fn_cost_reserve(p_org_id => %s, p_workspace_id => %s, "
        "p_model => %s, p_usage => '{}')",
        (seeded.org, seeded.ws_platform, seeded.platform_model),
    ).fetchone()
    assert row is not None
    (reason,) = row[0]
    assert set(reason) == REASON_KEYS
    assert reason["scope_kind"] == "org" and reason["scope_id"] is None


def test_zero_limit_blocks_zero_cost(client: costwarden.Client, seeded: Seeded) -> None:
    client.set_budget(seeded.org, "workspace", seeded.ws_platform, "hour", 0)
    r = reserve(client, seeded, {})
    assert r.status == "denied" and r.amount_micros == 0
    client.set_budget(seeded.org, "workspace", seeded.ws_platform, "hour", None)  # removes it
    assert reserve(client, seeded, {}).status == "held"
    assert status(client, seeded) == []


def test_budget_set_validation(
    client: costwarden.Client, seeded: Seeded, admin_conn: psycopg.Connection[Any]
) -> None:
    before = table_snapshot(admin_conn)
    bad: list[tuple[tuple[Any, ...], type[Exception], str]] = [
        ((seeded.org, "workspace", seeded.ws_platform, "day", -1), InvalidArgument, "p_limit"),
        ((seeded.org, "planet", "x", "day", 1), InvalidArgument, "p_scope_kind"),
        ((seeded.org, "workspace", seeded.ws_platform, "year", 1), InvalidArgument, "p_period"),
        ((seeded.org, "org", "x", "day", 1), InvalidArgument, "p_scope_id"),
        ((seeded.org, "workspace", None, "day", 1), InvalidArgument, "p_scope_id"),
        ((seeded.org, "workspace", "nope", "day", 1), NotFound, "p_scope_id"),
        ((seeded.org, "user", "nobody", "day", 1), NotFound, "p_scope_id"),
        ((seeded.org, "key", "nokey", "day", 1), NotFound, "p_scope_id"),
        (("no-org", "org", None, "day", 1), NotFound, "p_org_id"),
    ]
    for args, exc, arg in bad:
        with pytest.raises(exc, match=arg):
            client.set_budget(*args)  # type: ignore[arg-type]
    for kw, arg in (
        ({"metric": "dollars"}, "p_metric"),
        ({"window": "sliding"}, "p_window"),
        ({"mode": "warn"}, "p_mode"),
    ):
        with pytest.raises(InvalidArgument, match=arg):
            client.set_budget(seeded.org, "org", None, "day", 1, **kw)
    assert table_snapshot(admin_conn) == before


def test_every_period_and_metric_must_pass(client: costwarden.Client, seeded: Seeded) -> None:
    ws = seeded.ws_platform
    client.set_budget(seeded.org, "workspace", ws, "hour", 1_000_000)
    client.set_budget(seeded.org, "workspace", ws, "month", 1_000_000, window="calendar")
    client.set_budget(seeded.org, "workspace", ws, "day", 2000, metric="tokens")
    assert reserve(client, seeded).status == "held"  # 1500 tokens
    r = reserve(client, seeded)
    assert r.status == "denied"
    assert [x.code for x in r.reasons] == ["token_quota_exceeded"]
    assert r.reasons[0].held == 1500 and r.reasons[0].requested == 1500
    rows = {(x.period, x.metric, x.window_kind) for x in status(client, seeded)}
    assert rows == {
        ("hour", "cost", "rolling"),
        ("month", "cost", "calendar"),
        ("day", "tokens", "rolling"),
    }


def test_shadow_mode_and_billing_enforce(client: costwarden.Client, seeded: Seeded) -> None:
    client.set_budget(seeded.org, "workspace", seeded.ws_platform, "day", 1000, mode="shadow")
    r = reserve(client, seeded)
    assert r.status == "held"
    assert [(x.code, x.enforced) for x in r.reasons] == [("budget_exceeded", False)]
    client.set_budget(seeded.org, "workspace", seeded.ws_platform, "day", 1000)  # enforce
    assert reserve(client, seeded).status == "denied"
    client.set_setting("billing_enforce", False)
    r = reserve(client, seeded)
    assert r.status == "held" and r.reasons[0].enforced is False


def test_disabled_workspace_refused_even_in_shadow(
    client: costwarden.Client, seeded: Seeded
) -> None:
    client.set_setting("billing_enforce", False)
    client.upsert_workspace(seeded.org, seeded.ws_platform, billing_override="disabled")
    r = reserve(client, seeded)
    assert (
        r.status == "denied" and r.reasons[0].code == "billing_disabled" and r.reasons[0].enforced
    )


def test_user_effective_limits(client: costwarden.Client, seeded: Seeded) -> None:
    org = seeded.org
    client.set_budget(org, "user_default", None, "day", 50_000)
    (st,) = client.budget_status(org, "user", "alice")
    assert (st.limit_value, st.source) == (50_000, "user_default")
    client.set_budget(org, "group", "eng", "day", 30_000)
    client.set_budget(org, "group", "ops", "day", 20_000)
    (st,) = client.budget_status(org, "user", "bob")  # min of eng, ops
    assert (st.limit_value, st.source) == (20_000, "group:ops")
    (st,) = client.budget_status(org, "user", "alice")
    assert (st.limit_value, st.source) == (30_000, "group:eng")
    client.upsert_org(org, {"group_resolution": "max"})
    (st,) = client.budget_status(org, "user", "bob")
    assert (st.limit_value, st.source) == (30_000, "group:eng")
    client.set_budget(org, "user", "bob", "day", 8000)
    (st,) = client.budget_status(org, "user", "bob")
    assert (st.limit_value, st.source, st.spent, st.held) == (8000, "user", 0, 0)
    r = reserve(client, seeded, user_id="bob")
    assert r.status == "held"
    r2 = reserve(client, seeded, user_id="bob")
    assert r2.status == "denied" and r2.reasons[0].scope_kind == "user"
    assert r2.reasons[0].scope_id == "bob"
    (tmpl,) = client.budget_status(org, "group", "eng")
    assert tmpl.spent is None and tmpl.held is None and tmpl.remaining is None


def test_key_binds_user_and_workspace(client: costwarden.Client, seeded: Seeded) -> None:
    client.set_budget(seeded.org, "user", "alice", "hour", 10_000)
    r = reserve(client, seeded, key_id=seeded.key)  # key-1 belongs to alice
    assert r.status == "held"
    assert reserve(client, seeded, key_id=seeded.key).status == "denied"
    with pytest.raises(InvalidArgument, match="p_key_id"):
        client.reserve(seeded.org, seeded.ws_vendor, seeded.vendor_model, USAGE, key_id=seeded.key)


def test_idempotent_reserve(client: costwarden.Client, seeded: Seeded) -> None:
    client.set_budget(seeded.org, "workspace", seeded.ws_platform, "day", 10_000)
    a = reserve(client, seeded, idempotency_key="req-1")
    b = reserve(client, seeded, idempotency_key="req-1")
    assert a.reservation_id == b.reservation_id and b.status == "held"
    (st,) = status(client, seeded)
    assert st.held == COST  # held once
    with pytest.raises(costwarden.IdempotencyConflict, match="p_idempotency_key"):
        reserve(client, seeded, {"input_tokens": 1}, idempotency_key="req-1")
    d1 = reserve(client, seeded, idempotency_key="req-2")
    d2 = reserve(client, seeded, idempotency_key="req-2")
    assert d1.status == d2.status == "denied" and d1.reservation_id == d2.reservation_id


def test_a_repeat_returns_the_reserve_unchanged_after_a_shadow_tick(
    client: costwarden.Client, seeded: Seeded, admin_conn: psycopg.Connection[Any]
) -> None:
    """A tick's would-be refusal is kept for the shadow report, not in the answer that a
    repeat of the reserve's idempotency key returns."""
    client.set_budget(seeded.org, "workspace", seeded.ws_platform, "day", COST, mode="shadow")
    first = reserve(client, seeded, idempotency_key="req-tick")
    assert first.status == "held" and not first.reasons
    tick = client.meter(first.reservation_id, {"input_tokens": 1000, "output_tokens": 1000})
    assert tick.action == "continue" and tick.amount_micros > COST  # extended past the limit
    again = reserve(client, seeded, idempotency_key="req-tick")
    assert again == first
    # the tick's failure is where the shadow report and the listings find it
    (row,) = client.shadow_report(seeded.org)
    assert (row.scope_id, row.code, row.refusals) == (seeded.ws_platform, "budget_exceeded", 1)
    listed = admin_conn.execute(
        "select reasons from costwarden.fn_reservation_get(%s)", [first.reservation_id]
    ).fetchone()
    assert listed is not None
    assert [(x["code"], x["enforced"]) for x in listed[0]] == [("budget_exceeded", False)]


def test_a_hold_too_large_for_the_pools_is_cw004(
    client: costwarden.Client, seeded: Seeded, admin_conn: psycopg.Connection[Any]
) -> None:
    """A hold is at most 2^53 - 1 micro-USD and tokens: above, CW004 naming p_usage and
    nothing written; below, several of them share a workspace's pools and lanes."""
    before = table_snapshot(admin_conn)
    for usage in ({"input_tokens": 10**16}, {"input_tokens": 4 * 10**15}):  # 2.5 micros each
        with pytest.raises(InvalidArgument, match="p_usage: a reservation holds at most"):
            reserve(client, seeded, usage)
    assert table_snapshot(admin_conn) == before
    big = {"input_tokens": 3 * 10**15}  # 7.5e15 micros
    held = [reserve(client, seeded, big) for _ in range(4)]
    assert [r.status for r in held] == ["held"] * 4
    with pytest.raises(InvalidArgument, match="p_usage: a reservation holds at most"):
        client.meter(held[0].reservation_id, {"input_tokens": 4 * 10**15})
    for r in held:
        assert client.commit(r.reservation_id, big).charged_micros == 7_500_000_000_000_000


def test_commit_idempotency_and_transitions(client: costwarden.Client, seeded: Seeded) -> None:
    r = reserve(client, seeded)
    first = client.commit(r.reservation_id, USAGE)
    assert client.commit(r.reservation_id, USAGE) == first
    with pytest.raises(costwarden.IdempotencyConflict):
        client.commit(r.reservation_id, {"input_tokens": 1})
    with pytest.raises(InvalidState):
        client.release(r.reservation_id)
    with pytest.raises(InvalidState):
        client.meter(r.reservation_id, USAGE)
    r2 = reserve(client, seeded)
    assert client.release(r2.reservation_id) == COST
    assert client.release(r2.reservation_id) == 0
    with pytest.raises(InvalidState):
        client.commit(r2.reservation_id, USAGE)
    client.set_budget(seeded.org, "workspace", seeded.ws_platform, "day", 0)
    d = reserve(client, seeded)
    with pytest.raises(InvalidState):
        client.commit(d.reservation_id, USAGE)
    with pytest.raises(InvalidState):
        client.release(d.reservation_id)
    with pytest.raises(NotFound, match="p_reservation_id"):
        client.commit(uuid.uuid4(), USAGE)
    with pytest.raises(NotFound):
        client.release(uuid.uuid4())


def test_overage_is_recorded_in_full(client: costwarden.Client, seeded: Seeded) -> None:
    client.set_budget(seeded.org, "workspace", seeded.ws_platform, "day", 10_000)
    r = reserve(client, seeded)
    res = client.commit(r.reservation_id, {"input_tokens": 1000, "output_tokens": 1000})
    assert (res.charged_micros, res.released_micros, res.overage_micros) == (12_500, 0, 5000)
    (st,) = status(client, seeded)
    assert (st.spent, st.held, st.remaining) == (12_500, 0, 0)
    assert reserve(client, seeded, {}).status == "denied"  # spend past the limit refuses the next


def test_meter_tick_extends_or_aborts(client: costwarden.Client, seeded: Seeded) -> None:
    client.set_budget(seeded.org, "workspace", seeded.ws_platform, "day", 20_000)
    r = reserve(client, seeded)
    t = client.meter(r.reservation_id, {"input_tokens": 1000, "output_tokens": 100})
    assert (t.metered_micros, t.amount_micros, t.remaining_micros, t.action) == (
        3500,
        COST,
        4000,
        "continue",
    )
    t = client.meter(r.reservation_id, {"input_tokens": 1000, "output_tokens": 1000})
    assert (t.metered_micros, t.amount_micros, t.action) == (12_500, 12_500, "continue")
    (st,) = status(client, seeded)
    assert st.held == 12_500
    t = client.meter(r.reservation_id, {"input_tokens": 1000, "output_tokens": 2000})  # 22_500
    assert t.action == "abort" and t.amount_micros == 12_500 and t.remaining_micros == 0
    with pytest.raises(InvalidArgument, match="backwards"):
        client.meter(r.reservation_id, {"input_tokens": 999, "output_tokens": 2000})
    res = client.commit(r.reservation_id, {"input_tokens": 1000, "output_tokens": 2000})
    assert res.charged_micros == 22_500 and res.overage_micros == 10_000


def test_expiry_commits_metered_then_late_commit_books_remainder(
    client: costwarden.Client, seeded: Seeded, admin_conn: psycopg.Connection[Any]
) -> None:
    r = reserve(client, seeded, ttl=timedelta(seconds=30))
    client.meter(r.reservation_id, {"input_tokens": 1000})  # 2500
    idle = reserve(client, seeded, ttl=timedelta(seconds=30))
    admin_conn.execute(
        "update costwarden._reservations set expires_at = now() - interval '1 second' "
        "where reservation_id = any(%s)",
        ([r.reservation_id, idle.reservation_id],),
    )
    assert client.expire() == 2
    assert client.expire() == 0
    assert status(client, seeded) == []  # no limit set: no rows
    rows = {x.reservation_id: x for x in client.reservations(seeded.org)}
    assert (
        rows[r.reservation_id].status == "expired" and rows[r.reservation_id].charged_micros == 2500
    )
    assert rows[idle.reservation_id].charged_micros == 0
    assert client.release(r.reservation_id) == 0  # release of expired: no-op
    with pytest.raises(InvalidArgument, match="below the metered"):
        client.commit(r.reservation_id, {"input_tokens": 10})
    late = client.commit(r.reservation_id, {"input_tokens": 1000, "output_tokens": 100})
    assert late.charged_micros == 1000 and late.released_micros == 0 and late.entry_seq == 2
    entries = admin_conn.execute(
        "select amount_micros, approximate, late from costwarden._ledger "
        "where reservation_id = %s order by seq",
        (r.reservation_id,),
    ).fetchall()
    assert entries == [(2500, True, False), (1000, False, True)]
    late2 = client.commit(idle.reservation_id, USAGE)  # expired unmetered: all of it, late
    assert late2.charged_micros == COST and late2.overage_micros == COST


def test_expire_action_release(
    client: costwarden.Client, seeded: Seeded, admin_conn: psycopg.Connection[Any]
) -> None:
    client.set_setting("expire_action", "release")
    r = reserve(client, seeded)
    client.meter(r.reservation_id, {"input_tokens": 1000})
    admin_conn.execute("update costwarden._reservations set expires_at = now() - interval '1s'")
    assert client.expire() == 1
    assert admin_conn.execute("select count(*) from costwarden._ledger").fetchone() == (0,)


def test_release_books_metered_usage(client: costwarden.Client, seeded: Seeded) -> None:
    r = reserve(client, seeded)
    client.meter(r.reservation_id, {"input_tokens": 400})  # 1000 micros
    assert client.release(r.reservation_id, "client crashed") == COST - 1000
    (info,) = [x for x in client.reservations(seeded.org) if x.reservation_id == r.reservation_id]
    assert info.status == "released" and info.charged_micros == 1000


def test_bad_input_writes_nothing(
    client: costwarden.Client, seeded: Seeded, admin_conn: psycopg.Connection[Any]
) -> None:
    r = reserve(client, seeded)
    before = table_snapshot(admin_conn)
    q = (
        "select * from costwarden.fn_cost_reserve(p_org_id => %s, p_workspace_id => %s, "
        "p_model => %s, p_usage => %s::jsonb, p_user_id => %s, p_ttl => %s::interval)"
    )
    ok = [seeded.org, seeded.ws_platform, seeded.platform_model, '{"input_tokens": 1}', None, None]
    cases = [
        (0, "nope", "CW002"),
        (1, "nope", "CW002"),
        (2, "x/nope", "CW002"),
        (4, "nobody", "CW002"),
        (3, '{"input_tokens": -1}', "CW004"),
        (3, '{"input_tokens": 1.5}', "CW004"),
        (3, '{"bananas": 1}', "CW004"),
        (3, "null", "CW004"),
        (3, "[1]", "CW004"),
        (3, '{"input_tokens": "3"}', "CW004"),
        (3, '{"input_tokens": 1e30}', "CW004"),
        (3, None, "CW004"),
        (0, None, "CW004"),
        (5, "0 seconds", "CW004"),
        (5, "30 days", "CW004"),
    ]
    for pos, value, state in cases:
        args = list(ok)
        args[pos] = value
        expect_sqlstate(admin_conn, state, q, args)
    expect_sqlstate(
        admin_conn,
        "CW004",
        "select * from costwarden.fn_cost_commit(%s, %s::jsonb)",
        (r.reservation_id, '{"output_tokens": -5}'),
    )
    expect_sqlstate(admin_conn, "CW004", "select * from costwarden.fn_cost_commit(null, '{}')")
    expect_sqlstate(
        admin_conn,
        "CW002",
        "select * from costwarden.fn_cost_meter_tick(%s, '{}')",
        (uuid.uuid4(),),
    )
    expect_sqlstate(admin_conn, "CW004", "select costwarden.fn_cost_expire_reservations(0)")
    assert table_snapshot(admin_conn) == before


def test_unpriced_policy(client: costwarden.Client, seeded: Seeded) -> None:
    client.upsert_workspace(seeded.org, "ws-x", model=seeded.unpriced_model)
    # 'reject': a recorded denial (reason unpriced_model); CW006 is the quote's only
    with pytest.raises(costwarden.BudgetExceeded) as denied:
        client.reserve(seeded.org, "ws-x", seeded.unpriced_model, USAGE)
    assert [(x.code, x.enforced) for x in denied.value.reasons] == [("unpriced_model", True)]
    with pytest.raises(costwarden.UnpricedModel):
        client.quote(seeded.org, "ws-x", seeded.unpriced_model, USAGE)
    client.set_setting("unpriced_policy", "free")
    r = client.reserve(seeded.org, "ws-x", seeded.unpriced_model, USAGE)
    assert r.status == "held" and r.amount_micros == 0
    assert [(x.code, x.enforced) for x in r.reasons] == [("unpriced_model", False)]


def test_pricing_snapshot_fixed_for_reservation_life(
    client: costwarden.Client, seeded: Seeded
) -> None:
    r = reserve(client, seeded)
    client.set_pricing(
        seeded.platform_model, {"input_tokens": Decimal("1"), "output_tokens": Decimal("1")}
    )
    res = client.commit(r.reservation_id, USAGE)
    assert res.charged_micros == COST  # the old snapshot's price


def test_my_reservations_are_the_actors(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    client.upsert_user(seeded.other_org, "carol")
    reserve(client, seeded, user_id="alice")
    reserve(client, seeded, user_id="bob")
    with pytest.raises(costwarden.Forbidden):
        client.my_reservations()
    with costwarden.Client(dsn, actor_org=seeded.org, actor_user="alice") as alice:
        mine = alice.my_reservations()
    assert [m.user_id for m in mine] == ["alice"]


def test_tenant_cannot_run_the_saga(admin_conn: psycopg.Connection[Any], seeded: Seeded) -> None:
    expect_sqlstate(
        admin_conn,
        "42501",
        "select * from costwarden.fn_cost_reserve(%s, %s, %s, '{}')",
        (seeded.org, seeded.ws_platform, seeded.platform_model),
        role="costwarden_tenant",
    )
    rows = admin_conn.execute("select 1").fetchall()
    assert rows == [(1,)]


def test_tenant_budget_status_scoped(
    admin_conn: psycopg.Connection[Any], seeded: Seeded, client: costwarden.Client
) -> None:
    client.set_budget(seeded.org, "user", "alice", "day", 1000)
    with admin_conn.transaction(force_rollback=True):
        admin_conn.execute("set local role costwarden_tenant")
        admin_conn.execute(
            "select set_config('request.jwt.claims', %s, true)",
            ('{"org_id": "acme", "sub": "alice"}',),
        )
        rows = admin_conn.execute(
            "select limit_value from costwarden.fn_budget_status('acme', 'user', 'alice')"
        ).fetchall()
        assert rows == [(1000,)]
    expect_sqlstate(
        admin_conn,
        "CW005",
        "select * from costwarden.fn_budget_status('globex', 'org')",
        role="costwarden_tenant",
    )


def test_reservation_context_manager(client: costwarden.Client, seeded: Seeded) -> None:
    with client.reservation(seeded.org, seeded.ws_platform, seeded.platform_model, USAGE) as r:
        r.commit({"input_tokens": 10})
    assert r.result is not None and r.result.charged_micros == 25
    with client.reservation(seeded.org, seeded.ws_platform, seeded.platform_model, USAGE) as r2:
        r2.meter({"output_tokens": 10})
    assert r2.result is not None and r2.result.charged_micros == 100  # committed what was metered
    with client.reservation(seeded.org, seeded.ws_platform, seeded.platform_model, USAGE) as r3:
        pass
    assert r3.released_micros == COST
    with (
        pytest.raises(RuntimeError),
        client.reservation(seeded.org, seeded.ws_platform, seeded.platform_model, USAGE) as r4,
    ):
        raise RuntimeError("provider call failed")
    assert r4.released_micros == COST
    client.set_budget(seeded.org, "workspace", seeded.ws_platform, "hour", 0)
    with (
        pytest.raises(BudgetExceeded),
        client.reservation(seeded.org, seeded.ws_platform, seeded.platform_model, USAGE),
    ):
        pytest.fail("must not run")


def test_tenant_scope_rules(admin_conn: psycopg.Connection[Any], seeded: Seeded) -> None:
    def as_tenant(claims: str, query: str) -> str | None:
        try:
            with admin_conn.transaction(force_rollback=True):
                admin_conn.execute("set local role costwarden_tenant")
                admin_conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
                admin_conn.execute(query)
        except psycopg.Error as exc:
            return exc.sqlstate
        return None

    alice = '{"org_id": "acme", "sub": "alice"}'
    org_only = '{"org_id": "acme"}'
    q = "select * from costwarden.fn_budget_status('acme', %s, %s)"
    assert as_tenant(alice, q % ("'user'", "'alice'")) is None
    assert as_tenant(alice, q % ("'user'", "'bob'")) == "CW005"
    assert as_tenant(org_only, q % ("'user'", "'alice'")) == "CW005"  # a tenant needs a user
    assert as_tenant(alice, q % ("'key'", "'key-1'")) is None  # alice's own key
    assert as_tenant('{"org_id": "acme", "sub": "bob"}', q % ("'key'", "'key-1'")) == "CW005"
    assert as_tenant(alice, q % ("'workspace'", "'ws-platform'")) is None
    # an unknown org is CW005 for a tenant, not CW002: nothing about other orgs leaks
    assert as_tenant(alice, "select * from costwarden.fn_budget_status('nope', 'org')") == "CW005"


def test_shadow_limits_never_replace_enforced_ones(
    client: costwarden.Client, seeded: Seeded
) -> None:
    org = seeded.org
    client.set_budget(org, "group", "eng", "day", 9000)
    client.set_budget(org, "group", "ops", "day", 1000, mode="shadow")  # lower, but shadow
    rows = {(r.mode, r.source, r.limit_value) for r in client.budget_status(org, "user", "bob")}
    assert rows == {("enforce", "group:eng", 9000), ("shadow", "group:ops", 1000)}
    r = reserve(client, seeded, user_id="bob")
    assert r.status == "held" and [(x.code, x.enforced) for x in r.reasons] == [
        ("budget_exceeded", False)
    ]
    assert reserve(client, seeded, user_id="bob").status == "denied"  # the enforced 9000 holds


def test_late_remainder_entry_records_the_usage_delta(
    client: costwarden.Client, seeded: Seeded, admin_conn: psycopg.Connection[Any]
) -> None:
    r = reserve(client, seeded)
    client.meter(r.reservation_id, {"input_tokens": 600, "output_tokens": 10})
    admin_conn.execute("update costwarden._reservations set expires_at = now() - interval '1s'")
    assert client.expire() == 1
    client.commit(r.reservation_id, {"input_tokens": 1000, "output_tokens": 10})
    usages = admin_conn.execute(
        "select usage, tokens from costwarden._ledger where reservation_id = %s order by seq",
        (r.reservation_id,),
    ).fetchall()
    assert usages == [
        ({"input_tokens": 600, "output_tokens": 10}, 610),
        ({"input_tokens": 400}, 400),
    ]


def test_idempotent_retry_survives_a_default_ttl_change(
    client: costwarden.Client, seeded: Seeded
) -> None:
    a = reserve(client, seeded, idempotency_key="req-ttl")
    client.set_setting("default_ttl", "10 minutes")
    b = reserve(client, seeded, idempotency_key="req-ttl")
    assert a.reservation_id == b.reservation_id
