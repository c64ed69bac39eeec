"""One org far larger than the rest: the hot path's look-ups by scope stay probes.

PL/pgSQL keeps one generic plan per statement (after five calls, or at once where a
helper forces it), costed for an average org. With many small orgs and one with
thousands of users, keys and groups, a statement that selects an org's rows by
``org_id`` alone and filters them afterwards reads every row of the big org on every
call: ``_context_pool_ids`` (every reserve) its pools, ``_check_limits`` (every
admission under the pools' locks) its pools, ``_user_effective_limits`` its group
limits (docs/performance.md, row 38). These tests count the heap tuples one call
fetches (``pg_stat_xact_user_tables``: this transaction's own counters), not time.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

SMALL_ORGS = 3000
BIG_USERS = 3000
BIG_KEYS = 2000
BIG_GROUPS = 1500


@pytest.fixture
def skewed(db: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """Many small orgs (an org and a workspace pool, an org limit each) and one big org
    with thousands of user and key pools, key limits, group limits and memberships."""
    db.execute(
        f"""
        insert into costwarden._orgs (org_id)
        select 's' || g from generate_series(1, {SMALL_ORGS}) as g;
        insert into costwarden._pools (org_id, kind, scope_id)
        select 's' || g, k.kind, k.scope_id from generate_series(1, {SMALL_ORGS}) as g,
               (values ('org', ''), ('workspace', 'ws')) as k (kind, scope_id);
        insert into costwarden._budgets
            (org_id, scope_kind, scope_id, period, metric, window_kind, limit_value, mode)
        select 's' || g, 'org', '', 'month', 'cost', 'calendar', 1000000000, 'enforce'
        from generate_series(1, {SMALL_ORGS}) as g;

        insert into costwarden._orgs (org_id) values ('big');
        insert into costwarden._users (org_id, user_id)
        select 'big', 'u' || g from generate_series(1, {BIG_USERS}) as g;
        insert into costwarden._pools (org_id, kind, scope_id)
        select 'big', 'org', '' union all select 'big', 'workspace', 'ws'
        union all select 'big', 'user', 'u' || g from generate_series(1, {BIG_USERS}) as g
        union all select 'big', 'key', 'k' || g from generate_series(1, {BIG_KEYS}) as g;
        insert into costwarden._budgets
            (org_id, scope_kind, scope_id, period, metric, window_kind, limit_value, mode)
        select 'big', 'org', '', 'month', 'cost', 'calendar', 1000000000, 'enforce'
        union all select 'big', 'key', 'k' || g, 'day', 'cost', 'rolling', 1000000, 'enforce'
        from generate_series(1, {BIG_KEYS}) as g
        union all select 'big', 'group', 'g' || g, 'day', 'cost', 'rolling', 1000000, 'enforce'
        from generate_series(1, {BIG_GROUPS}) as g;
        insert into costwarden._user_groups (org_id, user_id, group_id)
        select 'big', 'u' || g, 'g' || (g % {BIG_GROUPS} + 1)
        from generate_series(1, {BIG_USERS}) as g;
        analyze costwarden._orgs, costwarden._users, costwarden._pools, costwarden._budgets,
                costwarden._user_groups;
        """
    )
    return db


def fetched(conn: psycopg.Connection[Any], statement: str, table: str) -> int:
    """Heap tuples of costwarden.<table> that one execution of statement reads, after
    the five executions that give PL/pgSQL its generic plans."""
    for _ in range(6):
        conn.execute(statement)
    with conn.transaction():
        counters = (
            "select coalesce(idx_tup_fetch, 0) + seq_tup_read from pg_stat_xact_user_tables"
            " where relid = %s::regclass"
        )
        rel = f"costwarden.{table}"
        before = conn.execute(counters, (rel,)).fetchone()
        conn.execute(statement)
        after = conn.execute(counters, (rel,)).fetchone()
    assert before is not None and after is not None
    return int(after[0]) - int(before[0])


def test_the_pools_of_a_call_in_a_big_org_are_probed_not_scanned(
    skewed: psycopg.Connection[Any],
) -> None:
    small = fetched(skewed, "select costwarden._context_pool_ids('s7', 'ws', null, null)", "_pools")
    big = fetched(skewed, "select costwarden._context_pool_ids('big', 'ws', 'k5', 'u5')", "_pools")
    assert small == 2
    assert big == 4, f"{big} pools read for a call of the big org's four pools"
    ids = skewed.execute("select costwarden._context_pool_ids('big', 'ws', 'k5', 'u5')").fetchone()
    assert ids is not None and len(ids[0]) == 4 and ids[0] == sorted(ids[0])


def test_the_limits_of_a_call_in_a_big_org_are_probed_not_scanned(
    skewed: psycopg.Connection[Any],
) -> None:
    statement = "select count(*) from costwarden._check_limits('big', 'ws', 'k5', 'u7', 100, 100)"
    assert skewed.execute(statement).fetchone() == (3,)  # org, key, u7's group
    pools = fetched(skewed, statement, "_pools")
    budgets = fetched(skewed, statement, "_budgets")
    assert pools <= 3, f"{pools} pools read to check three limits"
    assert budgets <= 3, f"{budgets} limits read to find three"


def test_a_users_group_limits_in_a_big_org_are_found_from_the_users_groups(
    skewed: psycopg.Connection[Any],
) -> None:
    statement = "select * from costwarden._user_effective_limits('big', 'u7')"
    rows = skewed.execute(statement).fetchall()
    assert [r[5] for r in rows] == [f"group:g{7 % BIG_GROUPS + 1}"]
    budgets = fetched(skewed, statement, "_budgets")
    assert budgets <= 2, f"{budgets} limits read to find one group limit"


USERS_WITH_LANES = 200
USAGE = '{"input_tokens": 1000, "output_tokens": 200}'


def lanes_read(conn: psycopg.Connection[Any], statement: str, *args: object) -> tuple[int, Any]:
    """Lane rows one execution of statement reads (and its first result row)."""
    counters = (
        "select coalesce(idx_tup_fetch, 0) + seq_tup_read from pg_stat_xact_user_tables"
        " where relid = 'costwarden._lanes'::regclass"
    )
    with conn.transaction():
        before = conn.execute(counters).fetchone()
        row = conn.execute(statement, args).fetchone()
        after = conn.execute(counters).fetchone()
    assert before is not None and after is not None
    return int(after[0]) - int(before[0]), row


def test_an_org_with_many_sets_of_lanes_reads_the_lanes_of_the_call_only(
    db: psycopg.Connection[Any], seeded: Any
) -> None:
    """200 users of one org, each with a lane of its own (org, workspace, user) set.
    Near the org's limit every admission gives the grants of its pools back; once the
    org's and the workspace's grants are back, an admission reads
    the lanes of its own set, not all of the org's (docs/performance.md, row 39). A
    commit with spend beyond its hold reads the lanes of the org's current epoch only."""
    org, ws = seeded.org, seeded.ws_platform
    db.execute(
        "select costwarden.fn_user_upsert(%s, 'u' || g) from generate_series(1, %s) as g",
        (org, USERS_WITH_LANES),
    )
    db.execute("select costwarden.fn_budget_set(%s, 'org', null, 'month', 1000000000000)", (org,))
    reserve = (
        "select reservation_id, status, reasons from costwarden.fn_cost_reserve("
        "%s, %s, %s, %s::jsonb, p_user_id => %s)"
    )
    commit = "select overage_micros from costwarden.fn_cost_commit(%s, %s::jsonb)"
    for g in range(1, USERS_WITH_LANES + 1):
        rid = db.execute(reserve, (org, ws, seeded.platform_model, USAGE, f"u{g}")).fetchone()
        assert rid is not None and rid[1] == "held"
        db.execute(commit, (rid[0], USAGE))
    lanes = db.execute(
        "select count(*) from costwarden._lanes where org_id = %s", (org,)
    ).fetchone()
    # every user's set has a lane of its own, and only one: a set's lanes are made as
    # its callers need them, and each user's calls came one at a time
    sets = db.execute(
        "select count(distinct pool_ids) from costwarden._lanes where org_id = %s", (org,)
    ).fetchone()
    assert lanes is not None and sets is not None
    assert sets[0] >= USERS_WITH_LANES and lanes[0] == sets[0]

    # beside 3 000 small orgs of one lane each (the statistics then put one lane per
    # org), a call within its hold reads its own lane, not every lane of the org: the
    # take (its look-up and its update) and the commit's give-back name the lane by its
    # key, and the epoch index does not match a look-up by org alone
    # (docs/performance.md, row 63)
    db.execute(
        """
        insert into costwarden._orgs (org_id) select 'one' || g from generate_series(1, 3000) as g;
        insert into costwarden._lanes
            (org_id, pool_ids, lane, epoch, grant_micros, grant_tokens, cap_micros, cap_tokens)
        select 'one' || g, array[-g]::bigint[], 0, 0, '{0}', '{0}', 0, 0
        from generate_series(1, 3000) as g;
        analyze costwarden._lanes;
        """
    )
    within = '{"input_tokens": 400, "output_tokens": 10}'
    read, rid = lanes_read(db, reserve, org, ws, seeded.platform_model, USAGE, "u7")
    assert rid is not None and rid[1] == "held"
    lane = db.execute(
        "select lane from costwarden._reservations where reservation_id = %s", (rid[0],)
    ).fetchone()
    assert lane is not None and lane[0] is not None  # held on its set's lane
    assert read <= 2, f"{read} lanes read by a reserve of one lane's set"
    read, row = lanes_read(db, commit, rid[0], within)
    assert row is not None and row[0] == 0
    assert read <= 1, f"{read} lanes read by a commit within its hold"
    # a tick that grows the hold on its lane, and a release of the call, the same
    read, rid = lanes_read(db, reserve, org, ws, seeded.platform_model, USAGE, "u8")
    assert rid is not None and rid[1] == "held" and read <= 2
    tick = "select action from costwarden.fn_cost_meter_tick(%s, %s::jsonb)"
    grown = '{"input_tokens": 1000, "output_tokens": 400}'
    read, row = lanes_read(db, tick, rid[0], grown)
    assert row == ("continue",)
    lane = db.execute(
        "select lane, amount_micros > quoted_micros from costwarden._reservations"
        " where reservation_id = %s",
        (rid[0],),
    ).fetchone()
    assert lane is not None and lane[0] is not None and lane[1]  # grown on its lane
    assert read <= 2, f"{read} lanes read by a tick growing its hold on its lane"
    read, row = lanes_read(db, "select costwarden.fn_cost_release(%s)", rid[0])
    assert row is not None
    assert read <= 2, f"{read} lanes read by a release"

    # a commit beyond its hold retires the org's lanes; its check reads the current epoch's
    rid = db.execute(reserve, (org, ws, seeded.platform_model, USAGE, "u1")).fetchone()
    assert rid is not None
    read, row = lanes_read(db, commit, rid[0], '{"input_tokens": 3000, "output_tokens": 200}')
    assert row is not None and row[0] > 0
    # (the current epoch's lanes, and twice its own lane, which it first tried for the
    # excess: docs/performance.md, row 62)
    assert read <= USERS_WITH_LANES + 2, f"{read} lanes read by a commit with overage"

    # the org's limit just above its spend: every admission alerts and gives grants back
    spent = db.execute(
        "select spent_micros from costwarden._pools where org_id = %s and kind = 'org'", (org,)
    ).fetchone()
    assert spent is not None
    db.execute(
        "select costwarden.fn_budget_set(%s, 'org', null, 'month', %s)", (org, spent[0] * 21 // 20)
    )
    read_first, row = lanes_read(db, reserve, org, ws, seeded.platform_model, USAGE, "u2")
    assert row is not None and row[1] == "held"  # admitted, past the 80 % alert line
    assert read_first >= lanes[0]  # the org's and the workspace's grants, once
    db.execute("select costwarden.fn_cost_release(%s)", (row[0],))
    read, row = lanes_read(db, reserve, org, ws, seeded.platform_model, USAGE, "u3")
    assert row is not None and row[1] == "held"
    # its own set's lanes and its take (the planner may read a page more than it
    # needs); before the pools' flags, every lane of the org on every admission
    assert read < lanes[0] // 2, f"{read} of {lanes[0]} lanes read by an admission near the limit"
    reconcile = db.execute("select count(*) from costwarden.fn_reconcile(%s)", (org,)).fetchone()
    assert reconcile == (0,)
