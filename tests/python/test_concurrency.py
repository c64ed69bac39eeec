"""The concurrency guarantee (SPEC §3), proven with real concurrent connections.

Many threads, each with its own connection, reserve / tick / commit / release /
expire against one hot limit and against nested limits. Throughout the run a
monitor samples every limit; afterwards the counters are recomputed from the
reservations and the ledger. No deadlock or serialization failure may reach a
caller.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

import costwarden
from cwtest import Seeded

RESERVE = (
    "select * from costwarden.fn_cost_reserve(p_org_id => %s, p_workspace_id => %s, "
    "p_model => %s, p_usage => %s, p_user_id => %s, p_key_id => %s, p_ttl => %s::interval)"
)


# A test-only trigger: an update of a pool whose gate the updating transaction does not
# hold raises. The gate's xmax names the transaction (or subtransaction) that locked it
# last: it must still be running, and if it is another one, NOWAIT raises at once.
GATE_CHECK = """
create function costwarden._test_gate_held() returns trigger
language plpgsql as $$
declare
    v_xmax xid;
begin
    select g.xmax into v_xmax from costwarden._pool_gates as g where g.pool_id = new.pool_id;
    if v_xmax is null or v_xmax::text = '0'
       or pg_xact_status(v_xmax::text::xid8) is distinct from 'in progress' then
        raise exception 'pool % updated without its gate', new.pool_id;
    end if;
    perform from costwarden._pool_gates as g where g.pool_id = new.pool_id for update nowait;
    return new;
end
$$;
create trigger test_gate_held before update on costwarden._pools
for each row execute function costwarden._test_gate_held();
"""


def run_threads(n: int, body: Callable[[int], None]) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def wrapped(i: int) -> None:
        try:
            start.wait()
            body(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return errors


def check_counters(conn: psycopg.Connection[Any]) -> None:
    """Pool holds and spend totals (and marks) equal a recomputation from reservations
    and ledger. A pool's held amount is the holds on it directly plus its lanes' grants
    (docs/internals.md#lanes); a lane holds what its held reservations hold, within every grant."""
    bad_held = conn.execute(
        """
        select p.pool_id, p.held_micros, p.held_tokens, coalesce(h.m, 0), coalesce(h.t, 0)
        from costwarden._pools p
        left join (
            select pool_id, sum(m) as m, sum(t) as t
            from (
                select unnest(pool_ids) as pool_id, amount_micros as m, tokens as t
                from costwarden._reservations where status = 'held' and lane is null
                union all
                select u.pool_id, u.gm - l.used_micros, u.gt - l.used_tokens
                from costwarden._lanes l,
                     unnest(l.pool_ids, l.grant_micros, l.grant_tokens) as u (pool_id, gm, gt)
            ) x
            group by 1
        ) h using (pool_id)
        where p.held_micros <> coalesce(h.m, 0) or p.held_tokens <> coalesce(h.t, 0)
        """
    ).fetchall()
    assert bad_held == []
    bad_lanes = conn.execute(
        """
        select l.org_id, l.pool_ids, l.lane, l.held_micros, l.held_tokens, r.m, r.t
        from costwarden._lanes l
        left join (
            select org_id, pool_ids, lane, sum(amount_micros) as m, sum(tokens) as t
            from costwarden._reservations where status = 'held' and lane is not null
            group by 1, 2, 3
        ) r using (org_id, pool_ids, lane)
        where l.held_micros <> coalesce(r.m, 0) or l.held_tokens <> coalesce(r.t, 0)
           or l.cap_micros < l.held_micros or l.cap_tokens < l.held_tokens
           or l.cap_micros <> (select min(g) from unnest(l.grant_micros) g) - l.used_micros
           or l.cap_tokens <> (select min(g) from unnest(l.grant_tokens) g) - l.used_tokens
        """
    ).fetchall()
    assert bad_lanes == []
    bad_spent = conn.execute(
        """
        with charged as (
            select unnest(r.pool_ids) as pool_id, l.amount_micros, l.tokens
            from costwarden._ledger l join costwarden._reservations r using (reservation_id)
        ), per_pool as (
            select pool_id, sum(amount_micros) as m, sum(tokens) as t from charged group by 1
        )
        select p.pool_id, p.spent_micros, p.spent_tokens, pp.m, pp.t
        from costwarden._pools p
        full join per_pool pp using (pool_id)
        where (p.spent_micros <> 0 or p.spent_tokens <> 0 or pp.pool_id is not null)
          and (p.spent_micros is distinct from pp.m or p.spent_tokens is distinct from pp.t)
        """
    ).fetchall()
    assert bad_spent == []
    # the marks: every window's spend, and the spend from every mark, is the ledger's
    bad_marks = conn.execute(
        "select * from costwarden._reconcile(null) where measure = 'spent'"
    ).fetchall()
    assert bad_marks == []
    gaps = conn.execute(
        "select org_id from costwarden._ledger group by org_id having max(seq) <> count(*)"
    ).fetchall()
    assert gaps == []


class Monitor:
    """Samples spent + held of every enforced limit while the workers run."""

    def __init__(self, dsn: str, scopes: list[tuple[str, str, str | None]]) -> None:
        self.dsn = dsn
        self.scopes = scopes
        self.stop = threading.Event()
        self.samples = 0
        self.violations: list[Any] = []
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row) as conn:
            while not self.stop.is_set():
                for org, kind, scope in self.scopes:
                    for row in conn.execute(
                        "select * from costwarden.fn_budget_status(%s, %s, %s)", (org, kind, scope)
                    ):
                        if (
                            row["mode"] == "enforce"
                            and row["spent"] + row["held"] > row["limit_value"]
                        ):
                            self.violations.append((kind, scope, row))
                self.samples += 1
                time.sleep(0.005)

    def __enter__(self) -> Monitor:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def test_128_concurrent_reserves_against_a_limit_that_fits_4(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    usage = {"input_tokens": 1000, "output_tokens": 500}  # 7500 micros
    client.set_budget(seeded.org, "workspace", seeded.ws_platform, "day", 4 * 7500)
    statuses: list[str] = []
    lock = threading.Lock()
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(128)]
    try:

        def body(i: int) -> None:
            row = (
                conns[i]
                .execute(
                    RESERVE,
                    (
                        seeded.org,
                        seeded.ws_platform,
                        seeded.platform_model,
                        Jsonb(usage),
                        None,
                        None,
                        None,
                    ),
                )
                .fetchone()
            )
            assert row is not None
            with lock:
                statuses.append(row[1])

        errors = run_threads(128, body)
    finally:
        for c in conns:
            c.close()
    assert errors == []
    assert statuses.count("held") == 4 and statuses.count("denied") == 124
    (st,) = client.budget_status(seeded.org, "workspace", seeded.ws_platform)
    assert st.held == 4 * 7500 and st.spent == 0
    with psycopg.connect(dsn) as conn:
        check_counters(conn)


def test_a_refusal_after_a_refusal_waits_for_no_pool_lock(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    """A budget callers keep running into refuses them without the pools' locks
    (_reserve_admit, docs/performance.md row 46): while another transaction holds the
    workspace's pool, the first refusal waits for it, and a refusal after a refusal is
    decided at once, on one snapshot, with the same reasons, before a lane is tried
    and before anything is written: its denial is recorded by one insert, as the
    refusal under the locks left its own (rows 47 and 50)."""
    usage = Jsonb({"input_tokens": 1000, "output_tokens": 500})  # 7500 micros
    ws, model = seeded.ws_platform, seeded.platform_model
    client.set_budget(seeded.org, "workspace", ws, "day", 10_000)  # fits one
    args = (seeded.org, ws, model, usage, None, None, None)
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as c:
        c.execute("set lock_timeout = '1s'")
        first = c.execute(RESERVE, args).fetchone()
        assert first is not None and first["status"] == "held"

        def hold_the_pool(holder: psycopg.Connection[Any]) -> None:
            holder.execute(
                "select 1 from costwarden._pools where org_id = %s and kind = 'workspace'"
                " and scope_id = %s for update",
                (seeded.org, ws),
            )

        with psycopg.connect(dsn) as holder:
            hold_the_pool(holder)
            # the latest reservation was admitted: this refusal is decided under the locks
            with pytest.raises(psycopg.errors.LockNotAvailable):
                c.execute(RESERVE, args)
        denied = c.execute(RESERVE, args).fetchone()  # under the locks, which are free
        assert denied is not None and denied["status"] == "denied"
        with psycopg.connect(dsn) as holder:
            hold_the_pool(holder)
            writes_sql = (
                "select r.n_tup_ins, r.n_tup_upd,"
                " coalesce(l.idx_scan, 0) + l.seq_scan as lane_scans"
                " from pg_stat_xact_user_tables as r, pg_stat_xact_user_tables as l"
                " where r.relid = 'costwarden._reservations'::regclass"
                " and l.relid = 'costwarden._lanes'::regclass"
            )
            with c.transaction():
                before = c.execute(writes_sql).fetchone()
                again = c.execute(RESERVE, args).fetchone()  # no wait
                after = c.execute(writes_sql).fetchone()
            # decided before anything is written: the denial is one insert
            assert before is not None and after is not None
            writes = {k: after[k] - before[k] for k in after}
            assert again is not None and again["status"] == "denied"
            assert again["reasons"] == denied["reasons"]
            assert again["expires_at"] is None and again["amount_micros"] == 7500
            # and no lane tried (the first refusal gave any grants back: row 50)
            assert writes == {"n_tup_ins": 1, "n_tup_upd": 0, "lane_scans": 0}
        stored = c.execute(
            "select status, amount_micros, tokens, pool_ids, lane, expires_at,"
            " finished_at is not null as finished, reasons from costwarden._reservations"
            " where reservation_id in (%s, %s) order by created_at",
            (denied["reservation_id"], again["reservation_id"]),
        ).fetchall()
        assert stored[0] == stored[1]  # the same record as a refusal under the locks
        assert stored[1]["status"] == "denied" and stored[1]["amount_micros"] == 0
        assert stored[1]["pool_ids"] == [] and stored[1]["lane"] is None
        assert stored[1]["expires_at"] is None and stored[1]["finished"]
        (st,) = client.budget_status(seeded.org, "workspace", ws)
        assert (st.held, st.spent) == (7500, 0)
        check_counters(c)


def _mixed_worker(
    dsn: str,
    s: Seeded,
    i: int,
    iterations: int,
    contexts: list[dict[str, Any]],
    outcomes: dict[str, int],
    lock: threading.Lock,
) -> None:
    rnd = random.Random(i)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(iterations):
            ctx = contexts[rnd.randrange(len(contexts))]
            tokens_in = rnd.randrange(100, 3000)
            tokens_out = rnd.randrange(0, 2000)
            usage = {"input_tokens": tokens_in, "output_tokens": tokens_out}
            ttl = "1 second" if rnd.random() < 0.1 else "5 minutes"
            row = conn.execute(
                RESERVE,
                (
                    s.org,
                    ctx["ws"],
                    s.platform_model,
                    Jsonb(usage),
                    ctx.get("user"),
                    ctx.get("key"),
                    ttl,
                ),
            ).fetchone()
            assert row is not None
            rid, status = row[0], row[1]
            with lock:
                outcomes[status] = outcomes.get(status, 0) + 1
            if status != "held":
                continue
            action = rnd.random()
            used = {
                "input_tokens": rnd.randrange(0, tokens_in + 1),
                "output_tokens": rnd.randrange(0, tokens_out + 1),
            }
            try:
                if action < 0.15:
                    # streaming: a tick that stays within the hold, then commit
                    conn.execute(
                        "select * from costwarden.fn_cost_meter_tick(%s, %s)", (rid, Jsonb(used))
                    )
                    conn.execute(
                        "select * from costwarden.fn_cost_commit(%s, %s)", (rid, Jsonb(used))
                    )
                elif action < 0.6:
                    conn.execute(
                        "select * from costwarden.fn_cost_commit(%s, %s)", (rid, Jsonb(used))
                    )
                elif action < 0.85:
                    conn.execute("select * from costwarden.fn_cost_release(%s)", (rid,))
                else:
                    conn.execute("select costwarden.fn_cost_expire_reservations(50)")
            except psycopg.errors.RaiseException:
                raise
            except psycopg.Error as exc:
                # a short-ttl reservation may be swept by another worker first: that is
                # an invalid-state transition (CW003), never a deadlock.
                if exc.sqlstate != "CW003":
                    raise


@pytest.mark.parametrize("threads", [32])
def test_nested_limits_hold_under_mixed_load(
    dsn: str, client: costwarden.Client, seeded: Seeded, threads: int
) -> None:
    org, ws = seeded.org, seeded.ws_platform
    client.upsert_workspace(org, "ws-2", model=seeded.platform_model)
    for u in ("u1", "u2", "u3"):
        client.upsert_user(org, u, ["team"])
    client.upsert_key(org, "k1", workspace_id=ws, user_id="u1")
    client.upsert_key(org, "k2", workspace_id="ws-2", user_id="u2")
    client.set_budget(org, "org", None, "day", 600_000)
    client.set_budget(org, "org", None, "hour", 2_000_000, metric="tokens")
    client.set_budget(org, "workspace", ws, "day", 300_000)
    client.set_budget(org, "workspace", ws, "hour", 250_000, window="calendar")
    client.set_budget(org, "workspace", "ws-2", "day", 350_000)
    client.set_budget(org, "group", "team", "day", 200_000)
    client.set_budget(org, "user", "u3", "hour", 90_000)
    client.set_budget(org, "key", "k1", "day", 120_000)
    client.set_budget(org, "key", "k2", "week", 150_000, mode="shadow")
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(GATE_CHECK)  # every pool update of the run holds the pool's gate
    contexts = [
        {"ws": ws},
        {"ws": ws, "user": "u3"},
        {"ws": ws, "key": "k1"},
        {"ws": "ws-2", "key": "k2"},
        {"ws": "ws-2", "user": "u1"},
        {"ws": "ws-2"},
    ]
    scopes = [
        (org, "org", None),
        (org, "workspace", ws),
        (org, "workspace", "ws-2"),
        (org, "user", "u1"),
        (org, "user", "u2"),
        (org, "user", "u3"),
        (org, "key", "k1"),
    ]
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    with Monitor(dsn, scopes) as monitor:
        errors = run_threads(
            threads, lambda i: _mixed_worker(dsn, seeded, i, 20, contexts, outcomes, lock)
        )
    assert errors == [], errors[:3]
    assert monitor.samples > 0
    assert monitor.violations == []
    assert outcomes.get("held", 0) > 0 and outcomes.get("denied", 0) > 0, outcomes
    # sweep what is left, then everything must add up
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "update costwarden._reservations set expires_at = now() - interval '1s' "
            "where status = 'held'"
        )
        conn.execute("select costwarden.fn_cost_expire_reservations(100000)")
        check_counters(conn)
        for o, kind, scope in scopes:
            for row in client.budget_status(o, kind, scope):
                if row.mode == "enforce":
                    assert row.spent + row.held <= row.limit_value  # usage <= hold: no overage


def test_overlapping_expiry_runs_never_double_process(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(200):
            conn.execute(
                RESERVE,
                (
                    seeded.org,
                    seeded.ws_platform,
                    seeded.platform_model,
                    Jsonb({"input_tokens": 10}),
                    None,
                    None,
                    "1 minute",
                ),
            )
        rids = [r[0] for r in conn.execute("select reservation_id from costwarden._reservations")]
        for rid in rids[:100]:  # half of them metered: expiry commits those
            conn.execute(
                "select * from costwarden.fn_cost_meter_tick(%s, %s)",
                (rid, Jsonb({"input_tokens": 5})),
            )
        conn.execute("update costwarden._reservations set expires_at = now() - interval '1s'")
    counts: list[int] = []
    lock = threading.Lock()

    def body(_i: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            total = 0
            while True:
                (n,) = conn.execute("select costwarden.fn_cost_expire_reservations(7)").fetchone()  # type: ignore[misc]
                if n == 0:
                    break
                total += n
            with lock:
                counts.append(total)

    assert run_threads(8, body) == []
    assert sum(counts) == 200
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select count(*) from costwarden._ledger").fetchone() == (100,)
        check_counters(conn)


def _wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_reservers_queued_on_a_busy_pool_are_admitted_in_arrival_order(
    dsn: str, seeded: Seeded
) -> None:
    """The callers waiting for a pool queue on its gate (migration 0018), a row that is
    never updated: one waits on the holder's transaction, the others on the gate's tuple
    lock, and they are admitted one at a time in the order they arrived. (Queued on the
    pool row itself, which every holder updates, each handoff sent the waiters chasing
    the row's new version, in no particular order.)"""
    args = (
        seeded.org,
        seeded.ws_platform,
        seeded.platform_model,
        Jsonb({"input_tokens": 100}),
        None,
        None,
        None,
    )
    waiters = 6
    holder = psycopg.connect(dsn)  # a transaction left open: the pools stay locked
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(waiters)]
    pids = [c.info.backend_pid for c in conns]
    admitted: list[tuple[Any, int]] = []  # (the time read while holding the pools, waiter)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def reserve(i: int) -> None:
        try:
            with conns[i].transaction():
                row = conns[i].execute(RESERVE, args).fetchone()
                assert row is not None and row[1] == "held"
                (at,) = conns[i].execute("select clock_timestamp()").fetchone()  # type: ignore[misc]
            with lock:
                admitted.append((at, i))
        except BaseException as exc:  # reported below
            errors.append(exc)

    with psycopg.connect(dsn, autocommit=True) as watcher:

        def waiting() -> list[tuple[int, str, str | None]]:
            return watcher.execute(
                "select pid, locktype, relation::regclass::text from pg_locks "
                "where not granted and pid = any(%s)",
                (pids,),
            ).fetchall()

        threads = []
        try:
            assert holder.execute(RESERVE, args).fetchone() is not None
            for i in range(waiters):
                t = threading.Thread(target=reserve, args=(i,))
                t.start()
                threads.append(t)
                _wait_until(lambda n=i + 1: len(waiting()) == n, f"waiter {i} to queue")
            locks = waiting()
            by_type = sorted(lt for _pid, lt, _rel in locks)
            assert by_type == ["transactionid"] + ["tuple"] * (waiters - 1)
            assert {rel for _pid, lt, rel in locks if lt == "tuple"} == {"costwarden._pool_gates"}
            holder.commit()
            for t in threads:
                t.join(timeout=60)
        finally:
            holder.close()
            for c in conns:
                c.close()
    assert errors == []
    assert [i for _at, i in sorted(admitted)] == list(range(waiters))
    with psycopg.connect(dsn) as conn:
        check_counters(conn)


def test_every_pool_has_its_gate(dsn: str, client: costwarden.Client, seeded: Seeded) -> None:
    """_pool_ensure creates a pool and its gate in one statement, and only once."""
    client.upsert_workspace(seeded.org, "ws-new", model=seeded.platform_model)
    client.upsert_workspace(seeded.org, "ws-new", model=seeded.platform_model)  # again: no new rows
    with psycopg.connect(dsn) as conn:
        pools, gates, orphans = conn.execute(
            "select (select count(*) from costwarden._pools), "
            "(select count(*) from costwarden._pool_gates), "
            "(select count(*) from costwarden._pools p where not exists "
            " (select from costwarden._pool_gates g where g.pool_id = p.pool_id))"
        ).fetchone()  # type: ignore[misc]
    assert pools > 0 and gates == pools and orphans == 0


def test_every_pool_update_holds_the_pools_gate(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    """The gate is the pool's admission lock only if every writer of a pool's holds,
    spend and marks holds it: each path that writes a pool runs under the trigger above."""
    org, ws, model = seeded.org, seeded.ws_platform, seeded.platform_model
    small, big = {"input_tokens": 100}, {"input_tokens": 100, "output_tokens": 400}
    client.set_budget(org, "workspace", ws, "day", 10_000_000)
    client.set_budget(org, "user", "alice", "week", 10_000_000)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(GATE_CHECK)
        # the check itself: an update without the gate is refused
        with pytest.raises(psycopg.errors.RaiseException, match="without its gate"):
            admin.execute("update costwarden._pools set held_micros = held_micros")
        # reserve, tick past the hold (extension), commit with overage
        r = client.reserve(org, ws, model, small, user_id="alice", key_id=seeded.key)
        client.meter(r.reservation_id, {"input_tokens": 150})
        client.commit(r.reservation_id, big)
        # release of a metered call (its ticks are charged)
        r = client.reserve(org, ws, model, big)
        client.meter(r.reservation_id, small)
        client.release(r.reservation_id)
        # expiry commits what was metered; then a late commit books the rest
        r = client.reserve(org, ws, model, big)
        client.meter(r.reservation_id, small)
        admin.execute(
            "update costwarden._reservations set expires_at = now() - interval '1 s' "
            "where reservation_id = %s",
            (r.reservation_id,),
        )
        assert client.expire() == 1
        client.commit(r.reservation_id, big)
        # spend reports and adjustments
        client.report_spend(org, ws, "gate-test", 5_000)
        client.report_spend(org, ws, "gate-test", 7_000)
        client.ledger_adjust(org, ws, -1_000, "refund")
        # the batch RPCs
        held = client.reserve_many(
            [{"org_id": org, "workspace_id": ws, "model": model, "usage": small}] * 3
        )
        client.commit_many([{"reservation_id": h.reservation_id, "usage": small} for h in held])
        # a budget change, and a repair of drift made (by hand) under the gate
        client.set_budget(org, "workspace", ws, "day", 20_000_000)
        (pool,) = admin.execute(
            "select pool_id from costwarden._pools where org_id = %s and kind = 'workspace' "
            "and scope_id = %s",
            (org, ws),
        ).fetchone()  # type: ignore[misc]
        with admin.transaction():
            admin.execute(
                "select from costwarden._pool_gates where pool_id = %s for update", (pool,)
            )
            admin.execute(
                "update costwarden._pools set held_micros = held_micros + 42 where pool_id = %s",
                (pool,),
            )
        assert client.reconcile_repair(org, pool, "drift made by the test") != []
    # every path ran to its end under the check, and the books balance
    assert client.reconcile() == []
    assert [v.ok for v in client.ledger_verify(org)] == [True]
