"""The spend marks (migration 0015, sql/functions/06_budgets.sql, docs/budgets.md "Spend
marks"): window figures against a recomputation from the bookings, thinned or not;
spend booked in a past minute; the reconciliation of a damaged mark; the conversion of
the spend buckets of an older install."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import costwarden
from costwarden import migrate as m
from cwtest import Seeded
from test_migrations import copy_sql

Conn = psycopg.Connection[Any]

_orgs = itertools.count()

#: what the counters say of a pool (its total minus the first mark at or after the
#: probe), beside the rule recomputed from the bookings (table pg_temp.booked), for
#: window starts given as ages
FIGURES = """
select a.age, s.spent, r.spent
from unnest(%(ages)s::interval[]) as a (age)
cross join lateral (
    select date_bin(case when a.age <= interval '2 hours' then interval '1 minute'
                         when a.age <= interval '26 hours' then interval '20 minutes'
                         when a.age <= interval '32 days' then interval '1 hour'
                         else interval '12 hours' end,
                    now() - a.age, timestamptz '2000-01-01') as probe
) as p
cross join lateral (
    select x.spent_micros - coalesce((
        select k.micros_before from costwarden._spend_marks as k
        where k.pool_id = x.pool_id and k.mark_at >= costwarden._mark_probe(now() - a.age, now())
        order by k.mark_at limit 1), x.spent_micros) as spent
    from costwarden._pools as x where x.pool_id = %(pool)s
) as s
cross join lateral (
    select coalesce(sum(b.micros), 0) as spent from pg_temp.booked as b
    where date_bin(interval '1 minute', b.at, timestamptz '2000-01-01') >= p.probe
) as r
order by a.age
"""


def new_pool(conn: Conn) -> int:
    org = f"marks{next(_orgs)}"
    conn.execute("insert into costwarden._orgs (org_id) values (%s)", (org,))
    row = conn.execute(
        "insert into costwarden._pools (org_id, kind, scope_id) values (%s, 'org', '') "
        "returning pool_id",
        (org,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def month_base(conn: Conn, pool: int) -> tuple[int, int]:
    """The pool's month base (migration 0016) beside what a probe of its marks reads
    at its month_start (what fn_spend_summary would read without the base)."""
    [(base, probed)] = conn.execute(
        "select p.month_base_micros, t.micros from costwarden._pools as p "
        "cross join lateral costwarden._pool_total_before(p.pool_id, p.month_start, false, "
        "interval '1 hour') as t where p.pool_id = %s",
        (pool,),
    ).fetchall()
    assert base == probed
    return int(base), int(probed)


def booked_before_month(conn: Conn, pool: int) -> tuple[int, int]:
    """What was booked before the pool's month_start (the month of its latest booking,
    UTC), from the bookings themselves."""
    [(n,)] = conn.execute(
        "select coalesce(sum(b.micros), 0) from pg_temp.booked as b, costwarden._pools as p "
        "where p.pool_id = %s and p.month_start = date_trunc('month', "
        "(select max(c.at) from pg_temp.booked as c) at time zone 'UTC') at time zone 'UTC' "
        "and date_bin(interval '1 minute', b.at, timestamptz '2000-01-01') < p.month_start",
        (pool,),
    ).fetchall()
    return int(n), int(n)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    bookings=st.lists(
        st.tuples(st.integers(0, 40 * 24 * 60), st.integers(-500, 5000)), min_size=1, max_size=40
    ),
    in_order=st.booleans(),
    ages=st.lists(st.integers(0, 45 * 24 * 60), min_size=1, max_size=8),
)
def test_window_figures_equal_the_bookings_before_and_after_thinning(
    admin_conn: Conn, bookings: list[tuple[int, int]], in_order: bool, ages: list[int]
) -> None:
    """Spend booked at random minutes of the last 40 days (in time order, or in any
    order: a booking into a past minute); every window start reads exactly what the
    rule says, before and after fn_maintenance thins the marks."""
    conn = admin_conn
    pool = new_pool(conn)
    conn.execute("create temp table if not exists booked (at timestamptz, micros bigint)")
    conn.execute("truncate booked")
    [(now,)] = conn.execute("select now()").fetchall()
    steps = sorted(bookings, reverse=True) if in_order else bookings
    for minutes_ago, micros in steps:
        if micros == 0:
            continue
        at = now - timedelta(minutes=minutes_ago, seconds=7)
        conn.execute(
            "select costwarden._pool_add_spend(array[%s]::bigint[], %s, 0, %s)", (pool, micros, at)
        )
        conn.execute("insert into booked values (%s, %s)", (at, micros))
    params = {"pool": pool, "ages": [timedelta(minutes=a) for a in [*ages, 0, 60, 1440, 43200]]}
    [(total, last)] = conn.execute(
        "select spent_micros, last_mark_at from costwarden._pools where pool_id = %s", (pool,)
    ).fetchall()
    assert total == sum(b for _a, b in bookings)
    [(newest,)] = conn.execute(
        "select max(mark_at) from costwarden._spend_marks where pool_id = %s", (pool,)
    ).fetchall()
    assert last == newest
    before = conn.execute(FIGURES, params).fetchall()
    assert all(s == r for _a, s, r in before), before
    assert month_base(conn, pool) == booked_before_month(conn, pool)
    dropped = conn.execute("select costwarden.fn_maintenance()").fetchone()
    assert dropped is not None
    after = conn.execute(FIGURES, params).fetchall()
    assert all(s == r for _a, s, r in after), after
    assert month_base(conn, pool) == booked_before_month(conn, pool)
    # what thinning kept: the first mark of each slot entirely older than its tier
    [(extra,)] = conn.execute(
        """
        select count(*) from (
            select k.mark_at,
                   case when k.mark_at < date_bin('12 hours', now() - interval '32 days', %(e)s)
                        then interval '12 hours'
                        when k.mark_at < date_bin('1 hour', now() - interval '26 hours', %(e)s)
                        then interval '1 hour'
                        when k.mark_at < date_bin('20 minutes', now() - interval '2 hours', %(e)s)
                        then interval '20 minutes' end as slot
            from costwarden._spend_marks as k where k.pool_id = %(pool)s
        ) as k
        where k.slot is not null
          and exists (select from costwarden._spend_marks as e
                      where e.pool_id = %(pool)s and e.mark_at < k.mark_at
                        and e.mark_at >= date_bin(k.slot, k.mark_at, %(e)s))
        """,
        {"pool": pool, "e": datetime(2000, 1, 1, tzinfo=UTC)},
    ).fetchall()
    assert extra == 0


def test_a_window_over_counts_at_most_one_slot_never_under_counts(admin_conn: Conn) -> None:
    """The rule against the exact spend: a rolling day (start 24 h back, 20-minute
    slots) counts the spend of its slot booked before the start, nothing else extra."""
    conn = admin_conn
    pool = new_pool(conn)
    [(now,)] = conn.execute("select now()").fetchall()
    start = now - timedelta(hours=24)
    slot = conn.execute("select costwarden._mark_probe(%s, %s)", (start, now)).fetchone()
    assert slot is not None and slot[0] <= start < slot[0] + timedelta(minutes=20)
    inside_slot_before_start = slot[0] + (start - slot[0]) / 2
    for at, micros in (
        (slot[0] - timedelta(minutes=1), 1),  # before the slot: never counted
        (inside_slot_before_start, 10),  # the over-count
        (start + timedelta(seconds=1), 100),
        (now, 1000),
    ):
        conn.execute(
            "select costwarden._pool_add_spend(array[%s]::bigint[], %s, 0, %s)", (pool, micros, at)
        )
    spent = conn.execute(
        "select micros from costwarden._pool_spent(%s, 'day', 'rolling', 'UTC', now())", (pool,)
    ).fetchone()
    assert spent == (1110,)
    hour = conn.execute(
        "select micros from costwarden._pool_spent(%s, 'hour', 'rolling', 'UTC', now())", (pool,)
    ).fetchone()
    assert hour == (1000,)


def test_reconcile_finds_and_repairs_a_damaged_or_missing_mark(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    r = client.reserve(seeded.org, seeded.ws_platform, seeded.platform_model, {"input_tokens": 100})
    client.commit(r.reservation_id, {"input_tokens": 100})
    assert client.reconcile(seeded.org) == []
    [(pool,)] = admin_conn.execute(
        "select pool_id from costwarden._pools where org_id = %s and kind = 'workspace' "
        "and scope_id = %s",
        (seeded.org, seeded.ws_platform),
    ).fetchall()
    # the first mark of the horizon says 5 micros more were spent before it
    admin_conn.execute(
        "update costwarden._spend_marks set micros_before = micros_before + 5 "
        "where pool_id = %s and mark_at = (select min(mark_at) from costwarden._spend_marks "
        "where pool_id = %s)",
        (pool, pool),
    )
    drift = client.reconcile(seeded.org)
    assert {d.pool_id for d in drift} == {pool}
    horizon = [d for d in drift if d.window_kind == "horizon"]
    assert [(d.period, d.metric, d.drift) for d in horizon] == [(None, "cost", -5)]
    assert {d.drift for d in drift} <= {0, -5}
    client.reconcile_repair(seeded.org, pool, "a mark edited by hand")
    assert client.reconcile(seeded.org) == []
    # a mark the ledger says must be there, deleted
    admin_conn.execute("delete from costwarden._spend_marks where pool_id = %s", (pool,))
    assert {d.pool_id for d in client.reconcile(seeded.org)} == {pool}
    client.reconcile_repair(seeded.org, pool, "marks deleted by hand")
    assert client.reconcile(seeded.org) == []
    # the month base (migration 0016) edited: reported as such, rebuilt by the repair
    admin_conn.execute(
        "update costwarden._pools set month_base_micros = month_base_micros + 9 where pool_id = %s",
        (pool,),
    )
    drift = client.reconcile(seeded.org)
    assert [(d.measure, d.period, d.window_kind, d.metric, d.drift) for d in drift] == [
        ("month_base", "month", "calendar", "cost", 9)
    ]
    client.reconcile_repair(seeded.org, pool, "a month base edited by hand")
    assert client.reconcile(seeded.org) == []
    [(n,)] = admin_conn.execute(
        "select count(*) from costwarden._spend_marks where pool_id = %s", (pool,)
    ).fetchall()
    assert n >= 1


# -- the conversion of an older install's spend buckets (migration 0015) ------------------

#: the window rule of the spend buckets (migration 0006), per pool: every bucket of the
#: period's resolution that overlaps [start, end)
BUCKET_FIGURES = """
select p.pool_id, w.period, w.kind,
       coalesce(sum(b.micros), 0)::bigint, coalesce(sum(b.tokens), 0)::bigint
from costwarden._pools as p
cross join (values ('hour', 60), ('day', 1200), ('week', 7200), ('month', 43200))
    as r (period, res)
cross join lateral (
    select r.period, k.kind,
           case when k.kind = 'rolling'
                then now() - case r.period when 'hour' then interval '1 hour'
                     when 'day' then interval '24 hours' when 'week' then interval '7 days'
                     else interval '30 days' end
                else date_trunc(r.period, now() at time zone 'UTC') at time zone 'UTC'
           end as start_at
    from (values ('rolling'), ('calendar')) as k (kind)
) as w
left join costwarden._spend_buckets as b
  on b.pool_id = p.pool_id and b.res = r.res
 and b.bucket_start > w.start_at - make_interval(secs => r.res)
group by 1, 2, 3
order by 1, 2, 3
"""

MARK_FIGURES = """
select p.pool_id, w.period, w.kind, s.micros, s.tokens
from costwarden._pools as p
cross join (values ('hour'), ('day'), ('week'), ('month')) as r (period)
cross join lateral (
    select r.period, k.kind from (values ('rolling'), ('calendar')) as k (kind)
) as w
cross join lateral costwarden._pool_spent(p.pool_id, w.period, w.kind, 'UTC', now()) as s
order by 1, 2, 3
"""


def test_migration_0015_converts_buckets_into_the_same_window_figures(
    fresh_database: Callable[[], str], tmp_path: Path
) -> None:
    """Buckets as the saga wrote them (every resolution, 32 days kept) for spend away
    from the rolling windows' starts (where the two rules over-count differently): every
    window reads the same after the conversion, and the total is the buckets' sum."""
    dsn = fresh_database()
    m.migrate(dsn, schedule=False, sql_dir=copy_sql(tmp_path / "old", count=14))
    rng = random.Random(15)
    with psycopg.connect(dsn, autocommit=True) as conn:
        [(now,)] = conn.execute("select now()").fetchall()
        starts = [
            now - timedelta(hours=1),
            now - timedelta(hours=24),
            now - timedelta(days=7),
            now - timedelta(days=30),
        ]
        conn.execute("insert into costwarden._orgs (org_id) values ('conv')")
        pools = [
            conn.execute(
                "insert into costwarden._pools (org_id, kind, scope_id) values ('conv', %s, %s) "
                "returning pool_id",
                kind,
            ).fetchone()[0]  # type: ignore[index]
            for kind in (("org", ""), ("workspace", "w"))
        ]
        spend: list[tuple[datetime, int, int]] = []
        while len(spend) < 300:
            at = now - timedelta(minutes=rng.uniform(0, 31.5 * 24 * 60))
            if any(s - timedelta(hours=12) <= at < s + timedelta(minutes=1) for s in starts):
                continue
            spend.append((at, rng.randint(-50, 5000), rng.randint(0, 700)))
        for at, micros, tokens in spend:
            conn.execute(
                """
                insert into costwarden._spend_buckets as b
                    (pool_id, res, bucket_start, micros, tokens)
                select p.pool_id, r.res,
                       date_bin(make_interval(secs => r.res), %s, timestamptz '2000-01-01'), %s, %s
                from unnest(%s::bigint[]) as p (pool_id)
                cross join (values (60), (1200), (7200), (43200)) as r (res)
                on conflict (pool_id, res, bucket_start) do update
                set micros = b.micros + excluded.micros, tokens = b.tokens + excluded.tokens
                """,
                (at, micros, tokens, pools),
            )
        before = conn.execute(BUCKET_FIGURES).fetchall()

    m.migrate(dsn, schedule=False)  # 0015 and the function files of today
    with psycopg.connect(dsn, autocommit=True) as conn:
        after = conn.execute(MARK_FIGURES).fetchall()
        assert after == before
        totals = conn.execute(
            "select spent_micros, spent_tokens from costwarden._pools order by pool_id"
        ).fetchall()
        assert totals == [(sum(s[1] for s in spend), sum(s[2] for s in spend))] * 2
        assert conn.execute("select to_regclass('costwarden._spend_buckets')").fetchone() == (None,)
        # and the saga books on top of the converted marks
        conn.execute("select costwarden._pool_add_spend(%s::bigint[], 7, 1, now())", (pools,))
        hour = conn.execute(
            "select micros from costwarden._pool_spent(%s, 'hour', 'rolling', 'UTC', now())",
            (pools[0],),
        ).fetchone()
        assert hour is not None and hour[0] == 7 + next(
            b[3] for b in before if b[0] == pools[0] and b[1:3] == ("hour", "rolling")
        )
