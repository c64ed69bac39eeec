"""Lanes (migration 0019, the lanes section of sql/functions/00_core.sql,
docs/internals.md#lanes): slices of a set of pools' headroom that reservations hold
against without locking the pools.

The guarantee: every decision is the one costwarden makes without lanes. The main test
runs the same random sequence of reserves (single calls and batches), ticks, commits
(with overage), releases and limit changes in two databases, one with lanes and one
with ``costwarden.lanes = off``, and compares every result, every reason, every alert
and every figure of fn_budget_status. The others pin the mechanics: which calls use a
lane, what gives grants back, and that concurrent reservers on lanes keep the books and
the limits.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

import costwarden
from costwarden.migrate import migrate
from cwtest import Seeded
from test_concurrency import Monitor, check_counters, run_threads

Conn = psycopg.Connection[Any]

RESERVE = (
    "select reservation_id, status, amount_micros, tokens, reasons from costwarden.fn_cost_reserve("
    "p_org_id => %s, p_workspace_id => %s, p_model => %s, p_usage => %s, p_user_id => %s, "
    "p_key_id => %s)"
)


def lane_of(conn: Conn, reservation_id: Any) -> int | None:
    row = conn.execute(
        "select lane from costwarden._reservations where reservation_id = %s", (reservation_id,)
    ).fetchone()
    assert row is not None
    return None if row[0] is None else int(row[0])


def out_tokens(micros: int) -> dict[str, int]:
    """gpt-4o output tokens at $0.00001: 10 micros each."""
    return {"output_tokens": micros // 10}


def far_limit(client: costwarden.Client, s: Seeded) -> tuple[str, str]:
    """A daily limit of 10 000 000 micros on the workspace, far above what a test spends
    (so that lanes are carved); the workspace and its model."""
    client.set_budget(s.org, "workspace", s.ws_platform, "day", 10_000_000)
    return s.ws_platform, s.platform_model


def test_a_reserve_far_from_every_limit_carves_lanes_and_the_next_ones_use_them(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    far_limit(client, seeded)
    with psycopg.connect(dsn, autocommit=True) as conn:
        first = client.reserve(
            seeded.org, seeded.ws_platform, seeded.platform_model, out_tokens(1000)
        )
        assert lane_of(conn, first.reservation_id) is None  # no lane yet: the pools decide
        lanes = conn.execute(
            "select count(*), min(cap_micros), max(cap_micros), sum(held_micros)"
            " from costwarden._lanes where org_id = %s",
            (seeded.org,),
        ).fetchone()
        # one lane (a set's lanes are made as its callers need them), a 64th of the
        # headroom below the 80 % line (7 999 999 - 1 000)
        assert lanes == (1, 7_998_999 // 64, 7_998_999 // 64, 0)
        later = [
            client.reserve(seeded.org, seeded.ws_platform, seeded.platform_model, out_tokens(1000))
            for _ in range(5)
        ]
        assert all(lane_of(conn, r.reservation_id) is not None for r in later)
        # the pool's held amount counts the grants; fn_budget_status shows the holds
        [status] = client.budget_status(seeded.org, "workspace", seeded.ws_platform)
        assert (status.spent, status.held) == (0, 6 * 1000)
        held = conn.execute(
            "select held_micros from costwarden._pools where org_id = %s and kind = 'workspace'"
            " and scope_id = %s",
            (seeded.org, seeded.ws_platform),
        ).fetchone()
        assert held == (1000 + 7_998_999 // 64,)
        for r in later:
            client.commit(r.reservation_id, out_tokens(600))
        client.release(first.reservation_id)
        [status] = client.budget_status(seeded.org, "workspace", seeded.ws_platform)
        assert (status.spent, status.held) == (5 * 600, 0)
        check_counters(conn)


def lanes_of_set(conn: Conn, org: str) -> list[int]:
    return [
        int(r[0])
        for r in conn.execute(
            "select lane from costwarden._lanes where org_id = %s order by lane", (org,)
        ).fetchall()
    ]


def grow_lanes(dsn: str, org: str, call: tuple[Any, ...]) -> list[int]:
    """Reserve while another transaction holds every lane of the org's one set: the
    reserve goes to the pools and, since a lane had room for it, doubles the set's
    lanes. Returns the lane count after each round, until all 32 are made."""
    counts = []
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn) as b:
        while True:
            b.execute("select 1 from costwarden._lanes where org_id = %s for update", (org,))
            row = a.execute(RESERVE, call).fetchone()
            assert row is not None and lane_of(a, row[0]) is None  # every lane was busy
            b.rollback()
            counts.append(len(lanes_of_set(a, org)))
            if counts[-1] == 32 or len(counts) > 8:
                return counts


def test_a_sets_lanes_are_made_as_its_callers_need_them(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    """A set one caller uses at a time keeps one lane, however many calls it makes;
    a call that finds every lane busy although one had room doubles them, up to 32
    (_lanes_carve, docs/internals.md#lanes); a call that finds no lane with room
    for it makes none."""
    ws, model = far_limit(client, seeded)
    call = (seeded.org, ws, model, Jsonb(out_tokens(1000)), None, None)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(20):
            r = client.reserve(seeded.org, ws, model, out_tokens(1000))
            client.commit(r.reservation_id, out_tokens(1000))
        assert lanes_of_set(conn, seeded.org) == [0]
        # a request larger than any lane's room goes to the pools and makes no lane
        big = client.reserve(seeded.org, ws, model, out_tokens(200_000))
        assert lane_of(conn, big.reservation_id) is None
        assert lanes_of_set(conn, seeded.org) == [0]
        client.release(big.reservation_id)
        assert grow_lanes(dsn, seeded.org, call) == [2, 4, 8, 16, 32]
        assert lanes_of_set(conn, seeded.org) == list(range(32))
        # all 32 busy: the pools decide, and no 33rd lane is made
        with psycopg.connect(dsn) as b:
            b.execute("select 1 from costwarden._lanes where org_id = %s for update", (seeded.org,))
            row = conn.execute(RESERVE, call).fetchone()
            assert row is not None and lane_of(conn, row[0]) is None
        assert len(lanes_of_set(conn, seeded.org)) == 32
        check_counters(conn)
        assert conn.execute("select count(*) from costwarden._reconcile(null)").fetchone() == (0,)


def test_a_reserve_takes_its_backends_own_lane_first_and_skips_it_when_busy(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    ws, model = far_limit(client, seeded)
    call = (seeded.org, ws, model, Jsonb(out_tokens(1000)), None, None)
    client.reserve(seeded.org, ws, model, out_tokens(1000))  # carves the first lane
    grow_lanes(dsn, seeded.org, call)  # and all 32
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn) as b:
        row = a.execute("select pg_backend_pid() % 32").fetchone()
        assert row is not None
        own = int(row[0])
        first = a.execute(RESERVE, call).fetchone()
        assert first is not None and lane_of(a, first[0]) == own
        # another transaction holds the own lane: the reserve neither waits nor goes to
        # the pools, it takes the next lane down (lane 1 when the own one is lane 0)
        b.execute(
            "select 1 from costwarden._lanes where org_id = %s and lane = %s for update",
            (seeded.org, own),
        )
        second = a.execute(RESERVE, call).fetchone()
        assert second is not None and lane_of(a, second[0]) == (own - 1 if own > 0 else 1)
        # every lane from the own one down held as well: the first free one above it
        b.execute(
            "select 1 from costwarden._lanes where org_id = %s and lane <= %s for update",
            (seeded.org, own),
        )
        if own < 31:
            third = a.execute(RESERVE, call).fetchone()
            assert third is not None and lane_of(a, third[0]) == own + 1
        b.rollback()
        fourth = a.execute(RESERVE, call).fetchone()
        assert fourth is not None and lane_of(a, fourth[0]) == own
        check_counters(a)


def test_no_lane_is_carved_within_reach_of_an_alert_line_or_a_zero_limit(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    # close to the 80 % line: 32 slices of a 64th of what is left cannot fit a request
    client.set_budget(seeded.org, "workspace", seeded.ws_platform, "day", 10_000)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(3):
            r = client.reserve(
                seeded.org, seeded.ws_platform, seeded.platform_model, out_tokens(1000)
            )
            assert lane_of(conn, r.reservation_id) is None
        assert conn.execute("select count(*) from costwarden._lanes").fetchone() == (0,)


def test_spend_beyond_a_hold_keeps_the_lanes_below_every_alert_line_and_closes_them_at_one(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    ws, model = far_limit(client, seeded)

    def epoch(conn: Conn) -> int:
        row = conn.execute(
            "select lane_epoch from costwarden._orgs where org_id = %s", (seeded.org,)
        ).fetchone()
        assert row is not None
        return int(row[0])

    def unused(conn: Conn) -> int:
        row = conn.execute(
            "select unused_micros from costwarden._pools as p,"
            " costwarden._pool_lane_grants(p.pool_id) as g"
            " where p.org_id = %s and p.kind = 'workspace' and p.scope_id = %s",
            (seeded.org, ws),
        ).fetchone()
        assert row is not None
        return int(row[0])

    with psycopg.connect(dsn, autocommit=True) as conn:
        client.reserve(seeded.org, ws, model, out_tokens(1000))  # carves
        r = client.reserve(seeded.org, ws, model, out_tokens(1000))
        assert lane_of(conn, r.reservation_id) is not None
        e0 = epoch(conn)
        # a commit within its hold leaves the lanes as they are
        client.commit(r.reservation_id, out_tokens(900))
        r = client.reserve(seeded.org, ws, model, out_tokens(1000))
        assert lane_of(conn, r.reservation_id) is not None
        # one beyond it, with spent + held (the grants counted) still below the
        # workspace limit's 80 % line: whatever the lanes admit reaches no line
        client.commit(r.reservation_id, out_tokens(5000))
        assert epoch(conn) == e0
        assert unused(conn) > 0
        r = client.reserve(seeded.org, ws, model, out_tokens(1000))
        assert lane_of(conn, r.reservation_id) is not None
        # one that takes it to the line (spent ~7.9 M + the lane's ~0.12 M grant >= 8 M):
        # the grants on its pools are given back, and the pools decide the next reserve
        client.commit(r.reservation_id, out_tokens(7_900_000))
        assert unused(conn) == 0
        assert epoch(conn) == e0
        check_counters(conn)
        # (smaller calls from here: a 64th of the ~94 000 left below the line each)
        r = client.reserve(seeded.org, ws, model, out_tokens(100))
        assert lane_of(conn, r.reservation_id) is None  # carved again under the new totals
        r = client.reserve(seeded.org, ws, model, out_tokens(100))
        assert lane_of(conn, r.reservation_id) is not None
        # a spend report below every line leaves them too
        client.report_spend(seeded.org, ws, "elsewhere", 2_000)  # spend without a hold
        assert epoch(conn) == e0
        r = client.reserve(seeded.org, ws, model, out_tokens(100))
        assert lane_of(conn, r.reservation_id) is not None
        # a limit changed anywhere in the org, and the org's settings, retire them
        client.set_budget(seeded.org, "org", None, "month", 50_000_000)
        assert epoch(conn) == e0 + 1
        r = client.reserve(seeded.org, ws, model, out_tokens(100))
        assert lane_of(conn, r.reservation_id) is None
        client.upsert_org(seeded.org, {"timezone": "Europe/Paris"})
        assert epoch(conn) == e0 + 2
        client.reserve(seeded.org, ws, model, out_tokens(100))  # carves under e0 + 2
        # so does a ledger adjustment that adds spend (it checks no limit after it)
        client.ledger_adjust(seeded.org, ws, 2_000, "a correction")
        assert epoch(conn) == e0 + 3
        client.ledger_adjust(seeded.org, ws, -2_000, "a refund")
        assert epoch(conn) == e0 + 3
        # the books, spend without reservations included (check_counters counts charges)
        assert conn.execute("select * from costwarden._reconcile(null)").fetchall() == []


def test_a_lowered_limit_refuses_exactly_where_it_would_without_lanes(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    ws, model = far_limit(client, seeded)
    with psycopg.connect(dsn, autocommit=True) as conn:
        held = [client.reserve(seeded.org, ws, model, out_tokens(1000)) for _ in range(10)]
        assert sum(lane_of(conn, r.reservation_id) is not None for r in held) == 9
        # 10 000 held; a limit of 15 000 fits exactly 5 more of 1 000
        client.set_budget(seeded.org, "workspace", ws, "day", 15_000)
        statuses = [
            client.reserve(seeded.org, ws, model, out_tokens(1000), raise_on_denied=False).status
            for _ in range(7)
        ]
        assert statuses == ["held"] * 5 + ["denied"] * 2
        [status] = client.budget_status(seeded.org, "workspace", ws)
        assert status.held == 15_000
        check_counters(conn)


def test_ticks_grow_a_hold_on_its_lane_then_on_the_pools_and_expiry_and_batches_keep_the_books(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    ws, model = far_limit(client, seeded)

    def lane_held(conn: Conn, lane: int | None) -> int:
        row = conn.execute(
            "select held_micros from costwarden._lanes where org_id = %s and lane = %s",
            (seeded.org, lane),
        ).fetchone()
        assert row is not None
        return int(row[0])

    with psycopg.connect(dsn, autocommit=True) as conn:
        client.reserve(seeded.org, ws, model, out_tokens(1000))
        r = client.reserve(seeded.org, ws, model, out_tokens(1000))
        lane = lane_of(conn, r.reservation_id)
        assert lane is not None
        client.meter(r.reservation_id, out_tokens(500))  # within the hold: stays on its lane
        assert lane_of(conn, r.reservation_id) == lane
        # grows by 2 000, which its lane has room for (a slice is 7 998 999 // 64): on it
        tick = client.meter(r.reservation_id, out_tokens(3000))
        assert (tick.action, tick.amount_micros) == ("continue", 3000)
        assert lane_of(conn, r.reservation_id) == lane and lane_held(conn, lane) == 3000
        check_counters(conn)
        # grows past the lane's room: the hold moves onto the pools and grows there
        tick = client.meter(r.reservation_id, out_tokens(200_000))
        assert (tick.action, tick.amount_micros) == ("continue", 200_000)
        assert lane_of(conn, r.reservation_id) is None and lane_held(conn, lane) == 0
        check_counters(conn)
        client.commit(r.reservation_id, out_tokens(200_000))
        # expiry of lane holds
        short = [
            client.reserve(seeded.org, ws, model, out_tokens(1000), ttl=timedelta(seconds=1))
            for _ in range(3)
        ]
        assert all(lane_of(conn, x.reservation_id) is not None for x in short)
        conn.execute(
            "update costwarden._reservations set expires_at = now() - interval '1 second'"
            " where reservation_id = any(%s)",
            ([x.reservation_id for x in short],),
        )
        assert client.expire() >= 3
        check_counters(conn)
        # a batch reserve holds on lanes, as single calls do; a batch commit settles them
        batch = client.reserve_many(
            [{"org_id": seeded.org, "workspace_id": ws, "model": model, "usage": out_tokens(1000)}]
            * 3
        )
        assert all(lane_of(conn, x.reservation_id) is not None for x in batch)
        on_lanes = [client.reserve(seeded.org, ws, model, out_tokens(1000)) for _ in range(3)]
        assert all(lane_of(conn, x.reservation_id) is not None for x in on_lanes)
        client.commit_many(
            [
                {"reservation_id": str(x.reservation_id), "usage": out_tokens(700)}
                for x in batch + on_lanes
            ]
        )
        [status] = client.budget_status(seeded.org, "workspace", ws)
        assert status.held == 1000  # the first reservation's, on the pools
        check_counters(conn)
        assert conn.execute("select count(*) from costwarden._reconcile(null)").fetchone() == (0,)


def test_a_release_gives_a_lane_hold_back_to_its_lane_without_the_pools(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    """A release of a lane hold whose call did not run gives the hold back to the lane
    (its room again, the grants as they were) and neither locks nor writes the pools: it
    completes while another transaction holds every pool gate of the org. Once the
    lane's grants have been given back, a release ends the hold under the pools' locks,
    as a commit does."""
    ws, model = far_limit(client, seeded)
    org = seeded.org

    def figures(conn: Conn) -> tuple[Any, ...]:
        row = conn.execute(
            "select (select array_agg(held_micros order by pool_id) from costwarden._pools"
            "        where org_id = %s),"
            " (select array_agg(array[held_micros, used_micros, cap_micros] order by lane)"
            "  from costwarden._lanes where org_id = %s)",
            (org, org),
        ).fetchone()
        assert row is not None
        return tuple(row)

    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        psycopg.connect(dsn, autocommit=True) as locker,
    ):
        client.reserve(org, ws, model, out_tokens(1000))  # carves
        before = figures(conn)
        [status_before] = client.budget_status(org, "workspace", ws)
        r = client.reserve(org, ws, model, out_tokens(1000))
        assert lane_of(conn, r.reservation_id) is not None
        gates = (
            "select from costwarden._pool_gates where pool_id in"
            " (select pool_id from costwarden._pools where org_id = %s) for update"
        )
        release = "select released_micros from costwarden.fn_cost_release(%s)"
        with locker.transaction():
            locker.execute(gates, (org,))
            conn.execute("set lock_timeout = '5s'")
            assert conn.execute(release, (r.reservation_id,)).fetchone() == (1000,)
        assert figures(conn) == before  # the lane's room back; pools untouched
        [status] = client.budget_status(org, "workspace", ws)
        assert status == status_before
        check_counters(conn)

        # grants given back (as an admission near a limit does, under the pools' locks):
        # the lane has no room left, so a release goes through the pools
        held = client.reserve(org, ws, model, out_tokens(1000))
        assert lane_of(conn, held.reservation_id) is not None
        pools = conn.execute(
            "select array_agg(pool_id order by pool_id) from costwarden._pools where org_id = %s",
            (org,),
        ).fetchone()
        assert pools is not None
        with conn.transaction():
            conn.execute("select costwarden._lock_pools(%s)", (pools[0],))
            conn.execute("select costwarden._lanes_reclaim(%s)", (pools[0],))
        with locker.transaction():
            locker.execute(gates, (org,))
            conn.execute("set lock_timeout = '300ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                conn.execute(release, (held.reservation_id,))
        conn.execute("reset lock_timeout")
        assert conn.execute(release, (held.reservation_id,)).fetchone() == (1000,)
        check_counters(conn)
        assert conn.execute("select count(*) from costwarden._reconcile(null)").fetchone() == (0,)


def test_a_commit_over_a_lane_hold_grows_the_hold_on_its_lane_when_the_lane_has_room(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    """Spend beyond a lane hold that the lane has room for is taken there first, as a
    tick's growth is: the lane's grants are used by the whole charge. Spend beyond the
    lane's room stays spend beyond the hold (the lane's grants used by the hold only)."""
    ws, model = far_limit(client, seeded)
    org = seeded.org
    with psycopg.connect(dsn, autocommit=True) as conn:

        def lane_figures(lane: int) -> tuple[int, int]:
            row = conn.execute(
                "select used_micros, held_micros from costwarden._lanes"
                " where org_id = %s and lane = %s",
                (org, lane),
            ).fetchone()
            assert row is not None
            return int(row[0]), int(row[1])

        client.reserve(org, ws, model, out_tokens(1000))  # carves
        for charge, used in ((1500, 1500), (400_000, 1000)):  # a slice is ~125 000
            r = client.reserve(org, ws, model, out_tokens(1000))
            lane = lane_of(conn, r.reservation_id)
            assert lane is not None
            used_before, held_before = lane_figures(lane)
            c = client.commit(r.reservation_id, out_tokens(charge))
            assert (c.charged_micros, c.overage_micros) == (charge, charge - 1000)
            assert lane_figures(lane) == (used_before + used, held_before - 1000)
            check_counters(conn)
        assert conn.execute("select count(*) from costwarden._reconcile(null)").fetchone() == (0,)


def test_a_lane_admission_the_circuit_refuses_gives_the_lane_its_room_back(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    ws, model = far_limit(client, seeded)
    client.set_setting("circuit_failure_threshold", 2)
    with psycopg.connect(dsn, autocommit=True) as conn:
        client.reserve(seeded.org, ws, model, out_tokens(1000))  # carves
        before = conn.execute(
            "select sum(held_micros), sum(cap_micros), sum(used_micros) from costwarden._lanes"
        ).fetchone()
        for i in range(2):
            client.report_provider("openai", False, f"503 #{i}")
        r = client.reserve(seeded.org, ws, model, out_tokens(1000), raise_on_denied=False)
        assert r.status == "denied" and [x.code for x in r.reasons] == ["circuit_open"]
        assert lane_of(conn, r.reservation_id) is None
        after = conn.execute(
            "select sum(held_micros), sum(cap_micros), sum(used_micros) from costwarden._lanes"
        ).fetchone()
        assert after == before
        check_counters(conn)


# -- the same decisions with and without lanes ---------------------------------------------


def _alerts(conn: Conn) -> list[tuple[Any, ...]]:
    rows = conn.execute(
        "select payload - 'at' - 'window_slot' from costwarden._alert_events"
        " where kind = 'budget' order by alert_id"
    ).fetchall()
    return [tuple(sorted(r[0].items())) for r in rows]


def _statuses(conn: Conn, s: Seeded) -> list[tuple[Any, ...]]:
    out = []
    for kind, scope in (
        ("org", None),
        ("workspace", s.ws_platform),
        ("user", "alice"),
        ("key", s.key),
    ):
        for row in conn.execute(
            "select period, metric, window_kind, limit_value, spent, held, remaining, mode"
            " from costwarden.fn_budget_status(%s, %s, %s)",
            (s.org, kind, scope),
        ):
            out.append((kind, *row))
    return out


def _run_script(dsn: str, s: Seeded, seed: int, lanes: bool) -> dict[str, Any]:
    """Reserve / tick / commit / release / limit changes drawn from ``seed``; every result."""
    rng = random.Random(seed)
    results: list[Any] = []
    held: list[Any] = []
    metered: dict[Any, int] = {}  # a reservation's last tick (usage is cumulative)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not lanes:
            conn.execute("set costwarden.lanes = off")
        limits = [
            ("workspace", s.ws_platform, "day", 2_000_000, "cost", "rolling", "enforce"),
            ("org", None, "month", 3_000_000, "cost", "calendar", "enforce"),
            ("user", "alice", "week", 250_000, "cost", "rolling", "shadow"),
            ("key", s.key, "day", 40_000, "tokens", "rolling", "enforce"),
        ]
        for kind, scope, period, value, metric, window, mode in limits:
            conn.execute(
                "select costwarden.fn_budget_set(%s, %s, %s, %s, %s, %s, %s, %s)",
                (s.org, kind, scope, period, value, metric, window, mode),
            )
        for step in range(260):
            op = rng.random()
            if op < 0.55 or not held:
                # one call, or (one time in five) a batch of two or three
                calls = []
                for _ in range(1 if rng.random() < 0.8 else rng.choice([2, 3])):
                    micros = rng.choice([500, 1000, 2000, 5000, 20_000])
                    key = rng.random() < 0.5
                    calls.append((micros, key))
                if len(calls) == 1:
                    ((micros, key),) = calls
                    rows = conn.execute(
                        RESERVE,
                        (
                            s.org,
                            s.ws_platform,
                            s.platform_model,
                            Jsonb(out_tokens(micros)),
                            "alice" if key else None,
                            s.key if key else None,
                        ),
                    ).fetchall()
                else:
                    rows = conn.execute(
                        "select reservation_id, status, amount_micros, tokens, reasons"
                        " from costwarden.fn_cost_reserve_many(%s)",
                        (
                            Jsonb(
                                [
                                    {
                                        "org_id": s.org,
                                        "workspace_id": s.ws_platform,
                                        "model": s.platform_model,
                                        "usage": out_tokens(micros),
                                        "user_id": "alice" if key else None,
                                        "key_id": s.key if key else None,
                                    }
                                    for micros, key in calls
                                ]
                            ),
                        ),
                    ).fetchall()
                assert len(rows) == len(calls)
                for row in rows:
                    results.append(("reserve", step, len(calls), row[1], row[2], row[3], row[4]))
                    if row[1] == "held":
                        held.append(row[0])
            else:
                rid = held.pop(rng.randrange(len(held)))
                what = rng.random()
                if what < 0.6:
                    use = rng.choice([0.5, 0.9, 1.0, 1.4, 3.0])
                    quoted = conn.execute(
                        "select quoted_micros from costwarden._reservations"
                        " where reservation_id = %s",
                        (rid,),
                    ).fetchone()
                    assert quoted is not None
                    micros = int(quoted[0] * use) // 10 * 10
                    row = conn.execute(
                        "select charged_micros, released_micros, overage_micros"
                        " from costwarden.fn_cost_commit(%s, %s)",
                        (rid, Jsonb(out_tokens(micros))),
                    ).fetchone()
                    results.append(("commit", step, row))
                elif what < 0.8:
                    row = conn.execute(
                        "select metered_micros, amount_micros, action"
                        " from costwarden.fn_cost_meter_tick(%s, %s)",
                        (
                            rid,
                            Jsonb(
                                out_tokens(
                                    metered.setdefault(rid, 0) + rng.choice([1000, 4000, 30_000])
                                )
                            ),
                        ),
                    ).fetchone()
                    results.append(("tick", step, row))
                    assert row is not None
                    metered[rid] = int(row[0])
                    held.append(rid)
                else:
                    row = conn.execute(
                        "select released_micros from costwarden.fn_cost_release(%s)", (rid,)
                    ).fetchone()
                    results.append(("release", step, row))
            if step in (120, 200):
                # lower the workspace's limit to near its spend, then raise it
                conn.execute(
                    "select costwarden.fn_budget_set(%s, 'workspace', %s, 'day', %s)",
                    (s.org, s.ws_platform, 450_000 if step == 120 else 4_000_000),
                )
            if step % 40 == 39:
                results.append(("status", step, _statuses(conn, s)))
        results.append(("alerts", _alerts(conn)))
        used = conn.execute(
            "select count(*) filter (where lane is not null) from costwarden._reservations"
        ).fetchone()
        check_counters(conn)
    return {"results": results, "on_lanes": int(used[0]) if used else 0}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_decision_reason_alert_and_figure_is_the_one_without_lanes(
    fresh_database: Callable[[], str], seeded_factory: Callable[[str], Seeded], seed: int
) -> None:
    with_lanes, without = fresh_database(), fresh_database()
    for db in (with_lanes, without):
        migrate(db, schedule=False)
    s1, s2 = seeded_factory(with_lanes), seeded_factory(without)
    a = _run_script(with_lanes, s1, seed, lanes=True)
    b = _run_script(without, s2, seed, lanes=False)
    for x, y in zip(a["results"], b["results"], strict=True):
        assert x == y
    assert b["on_lanes"] == 0
    assert a["on_lanes"] >= 10, a["on_lanes"]  # the lanes did admit


def assert_filled_and_balanced(
    dsn: str, client: costwarden.Client, org: str, ws: str, limit: int
) -> None:
    """After reservers ran a workspace up to its limit: within it, nothing more fits, and
    the counters (lanes included) and the reconciliation agree."""
    [status] = client.budget_status(org, "workspace", ws)
    assert status.spent + status.held <= limit
    assert limit - (status.spent + status.held) < 1000  # nothing more fits
    with psycopg.connect(dsn, autocommit=True) as conn:
        check_counters(conn)
        assert conn.execute("select count(*) from costwarden._reconcile(null)").fetchone() == (0,)


def test_concurrent_reservers_on_lanes_never_overshoot_and_keep_the_books(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    """32 connections reserve and commit (a third of them beyond the hold) on one
    workspace with lanes, then reserve without committing until the limit refuses: the
    monitor never sees spent + held above a limit, the holds end exactly at what fits,
    and the counters, lanes included, recompute."""
    ws, model = seeded.ws_platform, seeded.platform_model
    limit = 3_000_000
    client.set_budget(seeded.org, "workspace", ws, "day", limit)
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(32)]
    lock = threading.Lock()
    on_lanes = [0]
    try:

        def body(i: int) -> None:
            rng = random.Random(i)
            c = conns[i]
            for _ in range(15):
                row = c.execute(
                    RESERVE, (seeded.org, ws, model, Jsonb(out_tokens(1000)), None, None)
                ).fetchone()
                assert row is not None
                if row[1] != "held":
                    continue
                with lock:
                    on_lanes[0] += lane_of(c, row[0]) is not None
                spent = 1500 if rng.random() < 0.33 else 700
                c.execute(
                    "select * from costwarden.fn_cost_commit(%s, %s)",
                    (row[0], Jsonb(out_tokens(spent))),
                )
            while True:
                row = c.execute(
                    RESERVE, (seeded.org, ws, model, Jsonb(out_tokens(1000)), None, None)
                ).fetchone()
                assert row is not None
                if row[1] != "held":
                    break

        with Monitor(dsn, [(seeded.org, "workspace", ws)]) as monitor:
            assert run_threads(32, body) == []
        assert monitor.violations == [] and monitor.samples > 0
        assert on_lanes[0] > 100
        assert_filled_and_balanced(dsn, client, seeded.org, ws, limit)
    finally:
        for c in conns:
            c.close()


def test_batches_and_single_calls_on_lanes_at_once_never_overshoot_and_keep_the_books(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    """The elements of a batch of reserves take lanes as single calls do, holding the
    pools of every set they may take a lane of (docs/internals.md#lock-order, 4b). 16
    connections on one workspace, half sending batches of three (committed as a batch, in
    reverse order), half single calls, then both reserving until the limit refuses: no
    deadlock, the monitor never sees a limit passed, nothing more fits at the end, and the
    counters, lanes included, recompute."""
    ws, model = seeded.ws_platform, seeded.platform_model
    limit = 2_000_000
    client.set_budget(seeded.org, "workspace", ws, "day", limit)
    client.reserve(seeded.org, ws, model, out_tokens(1000))  # carves
    request = {"org_id": seeded.org, "workspace_id": ws, "model": model}
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(16)]
    lock = threading.Lock()
    batch_on_lanes = [0]
    try:

        def reserve(c: Conn, batch: bool) -> list[tuple[Any, str]]:
            if not batch:
                row = c.execute(
                    RESERVE, (seeded.org, ws, model, Jsonb(out_tokens(1000)), None, None)
                ).fetchone()
                assert row is not None
                return [(row[0], row[1])]
            rows = c.execute(
                "select reservation_id, status from costwarden.fn_cost_reserve_many(%s)",
                (Jsonb([{**request, "usage": out_tokens(1000)}] * 3),),
            ).fetchall()
            with lock:
                batch_on_lanes[0] += sum(lane_of(c, r[0]) is not None for r in rows)
            return [(r[0], r[1]) for r in rows]

        def body(i: int) -> None:
            rng = random.Random(i)
            c, batch = conns[i], i % 2 == 0
            for _ in range(10):
                held = [rid for rid, status in reserve(c, batch) if status == "held"]
                commits = [
                    {"reservation_id": str(rid), "usage": out_tokens(rng.choice([700, 1500]))}
                    for rid in reversed(held)
                ]
                if batch and commits:
                    c.execute(
                        "select * from costwarden.fn_cost_commit_many(%s)", (Jsonb(commits),)
                    ).fetchall()
                for x in [] if batch else commits:
                    c.execute(
                        "select * from costwarden.fn_cost_commit(%s, %s)",
                        (x["reservation_id"], Jsonb(x["usage"])),
                    )
            while any(status == "held" for _, status in reserve(c, batch)):
                pass

        with Monitor(dsn, [(seeded.org, "workspace", ws)]) as monitor:
            assert run_threads(16, body) == []
        assert monitor.violations == [] and monitor.samples > 0
        assert batch_on_lanes[0] > 50
        assert_filled_and_balanced(dsn, client, seeded.org, ws, limit)
    finally:
        for c in conns:
            c.close()


def test_an_overage_past_the_limit_closes_the_lanes_to_every_reserve_after_it(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    """Spend beyond a hold leaves the lanes admitting while every limit stays below its
    alert line, grants counted; one that takes a limit past its line gives the grants
    back in the commit's own transaction. 16 connections reserve on lanes while one
    commit takes the workspace past its limit: every reserve sent after that commit
    returned is refused, none goes through a lane."""
    ws, model = seeded.ws_platform, seeded.platform_model
    limit = 3_000_000
    client.set_budget(seeded.org, "workspace", ws, "day", limit)
    first = client.reserve(seeded.org, ws, model, out_tokens(1000))  # carves
    big = client.reserve(seeded.org, ws, model, out_tokens(1000))
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(16)]
    stop = threading.Event()
    seen: list[tuple[float, str, int | None]] = []  # (sent at, status, lane)
    lock = threading.Lock()
    try:

        def body(i: int) -> None:
            c = conns[i]
            while not stop.is_set():
                sent = time.monotonic()
                row = c.execute(
                    RESERVE, (seeded.org, ws, model, Jsonb(out_tokens(1000)), None, None)
                ).fetchone()
                assert row is not None
                lane = lane_of(c, row[0])
                if row[1] == "held":
                    c.execute("select * from costwarden.fn_cost_release(%s)", (row[0],))
                with lock:
                    seen.append((sent, row[1], lane))

        errors: list[BaseException] = []
        workers = threading.Thread(target=lambda: errors.extend(run_threads(16, body)))
        workers.start()
        time.sleep(0.5)
        # a small overage first: below every line, the lanes go on admitting
        small = client.reserve(seeded.org, ws, model, out_tokens(1000))
        client.commit(small.reservation_id, out_tokens(3000))
        small_done = time.monotonic()
        time.sleep(0.5)
        client.commit(big.reservation_id, out_tokens(limit))
        done = time.monotonic()
        time.sleep(0.5)
        stop.set()
        workers.join()
    finally:
        stop.set()
        for c in conns:
            c.close()
    assert errors == []
    between = [s for s in seen if small_done < s[0] < done]
    after = [s for s in seen if s[0] > done]
    assert sum(1 for s in between if s[1] == "held" and s[2] is not None) > 20
    assert after and all(status == "denied" and lane is None for _, status, lane in after)
    client.release(first.reservation_id)
    [status] = client.budget_status(seeded.org, "workspace", ws)
    assert status.spent >= limit and status.held == 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        check_counters(conn)
