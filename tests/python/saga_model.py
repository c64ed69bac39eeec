"""A small pure-Python reference model of the saga, and a driver that runs the same
operations against the database and checks it against the model after every step.

Used by test_saga_model.py (a hypothesis RuleBasedStateMachine, bounded, in `make test`)
and soak.py (`make soak`: a seeded random driver, many operations, several connections,
the server killed with SIGKILL at random points).

The world of one run: an org of its own (UTC), workspaces w1 and w2 on openai/gpt-4o
(2.5 micros per input token, 10 per output token; input tokens are even, so every
price is whole), users u1 and u2 in group g, key k bound to w1 and u1. Limits on the
org, the workspaces, the key, the users and the group, per hour / day / week, rolling
and calendar (week: rolling), cost and tokens, all enforced.

Operations: reserve, meter tick, commit, release, expire (the reservation's expiry
backdated, then the sweep), late commit, spend report, adjustment, budget change, and
clock advance. Time travels on the server's side by backdating this org's rows: the
reservations, the spend marks and the ledger (its chain recomputed, test-only) move
back by a multiple of 36 hours -- a multiple of every slot of the marks, and never
close to a window's edge -- and the model's booking times move with them. Nothing sleeps.

After every step (``Driver.check``):

- each new ledger entry is the booking the model predicted (amount and tokens);
- every pool's held equals the model's, which is the sum of its held reservations;
- every pool's spent, per period, window and metric, equals the model's;
- fn_reconcile finds no drift (the counters equal the ledger), and the chain verifies;
- every reservation's status is the model's, every admission decision is the model's,
  and after an admission every enforced limit has spent + held <= limit.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.types.json import Jsonb

MODEL = "openai/gpt-4o"
ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)

#: seconds of the slot a window of a period is read at, at least (costwarden._period_slot)
PERIOD_SLOT = {"hour": 60, "day": 1200, "week": 3600, "month": 3600}


def mark_slot(age: timedelta) -> int:
    """Seconds of the spend marks' slot at an age (costwarden._mark_slot)."""
    if age <= timedelta(hours=2):
        return 60
    if age <= timedelta(hours=26):
        return 1200
    if age <= timedelta(days=32):
        return 3600
    return 43200


LENGTH = {"hour": timedelta(hours=1), "day": timedelta(hours=24), "week": timedelta(days=7)}
WINDOWS = [(p, w) for p in ("hour", "day") for w in ("rolling", "calendar")] + [("week", "rolling")]
METRICS = ("cost", "tokens")
WORKSPACES = ("w1", "w2")
USERS = ("u1", "u2")
KEY = "k"
GROUP = "g"
#: (workspace, user, key) of a reservation
CONTEXTS = [("w1", None, None), ("w1", "u1", None), ("w2", "u2", None), ("w1", None, KEY)]
SCOPES = [
    ("org", None),
    ("workspace", "w1"),
    ("workspace", "w2"),
    ("key", KEY),
    ("user", "u1"),
    ("group", GROUP),
]
COST_LIMITS = (0, 5_000, 20_000, 60_000, 250_000)
TOKEN_LIMITS = (0, 1_500, 6_000, 30_000)
ADVANCE_HOURS = (36, 72)


def cost(usage: dict[str, int]) -> tuple[int, int]:
    """(micros, tokens) of a usage at gpt-4o's price."""
    i, o = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
    assert i % 2 == 0
    return i * 5 // 2 + o * 10, i + o


def date_bin(res: int, at: datetime) -> datetime:
    return ORIGIN + timedelta(seconds=(at - ORIGIN).total_seconds() // res * res)


def window_start(period: str, window: str, now: datetime) -> datetime:
    if window == "rolling":
        return now - LENGTH[period]
    if period == "hour":
        return now.replace(minute=0, second=0, microsecond=0)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass
class Booking:
    pools: tuple[str, ...]
    micros: int
    tokens: int
    at: datetime | None = None  # the ledger entry's created_at, once seen
    bins: dict[int, datetime] = field(default_factory=dict, repr=False)  # date_bin per res

    def bin(self, res: int) -> datetime:
        b = self.bins.get(res)
        if b is None:
            assert self.at is not None
            b = self.bins[res] = date_bin(res, self.at)
        return b

    def move(self, delta: timedelta) -> None:
        """Back in time by ``delta`` (a multiple of every bucket: the bins move with it)."""
        assert self.at is not None
        self.at -= delta
        self.bins = {res: b - delta for res, b in self.bins.items()}


@dataclass
class Res:
    rid: uuid.UUID
    status: str
    pools: tuple[str, ...]
    context: tuple[str, str | None, str | None]  # workspace, user (resolved), key
    amount: int
    tokens: int
    metered: dict[str, int] | None = None
    metered_cost: tuple[int, int] = (0, 0)
    charged: tuple[int, int] = (0, 0)


class Divergence(AssertionError):
    """The database and the model disagree."""


@dataclass
class Model:
    """The reference: pools' holds, bookings with their times, reservations, limits."""

    held: dict[str, list[int]] = field(default_factory=dict)
    bookings: list[Booking] = field(default_factory=list)
    reservations: dict[uuid.UUID, Res] = field(default_factory=dict)
    limits: dict[tuple[str, str | None, str, str, str], int] = field(default_factory=dict)
    cumulative: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for pool in ("org", *(f"workspace:{w}" for w in WORKSPACES), f"key:{KEY}"):
            self.held.setdefault(pool, [0, 0])
        for u in USERS:
            self.held.setdefault(f"user:{u}", [0, 0])

    @staticmethod
    def context_pools(ws: str, user: str | None, key: str | None) -> tuple[str, ...]:
        pools = ["org", f"workspace:{ws}"]
        if key:
            pools.append(f"key:{key}")
        if user:
            pools.append(f"user:{user}")
        return tuple(pools)

    def spent(self, pool: str, period: str, window: str, metric: str, now: datetime) -> int:
        # the window rule of the spend marks (docs/budgets.md): every booking from the
        # window's start floored to the slot of its age on
        start = window_start(period, window, now)
        edge = date_bin(max(mark_slot(now - start), PERIOD_SLOT[period]), start)
        if metric == "cost":
            return sum(b.micros for b in self.bookings if pool in b.pools and b.bin(60) >= edge)
        return sum(b.tokens for b in self.bookings if pool in b.pools and b.bin(60) >= edge)

    def applicable(
        self, ws: str, user: str | None, key: str | None
    ) -> list[tuple[str, str, str, str, int]]:
        """(pool, period, metric, window, limit) of every limit of a context."""
        out = []
        for (kind, sid, period, metric, window), value in self.limits.items():
            if (
                kind == "org"
                or (kind == "workspace" and sid == ws)
                or (kind == "key" and key and sid == key)
            ):
                pool = {"org": "org", "workspace": f"workspace:{ws}", "key": f"key:{key}"}[kind]
                out.append((pool, period, metric, window, value))
        if user:
            for period, window in WINDOWS:
                for metric in METRICS:
                    own = self.limits.get(("user", user, period, metric, window))
                    group = self.limits.get(("group", GROUP, period, metric, window))
                    value = own if own is not None else group
                    if value is not None:
                        out.append((f"user:{user}", period, metric, window, value))
        return out

    def fits(
        self, ws: str, user: str | None, key: str | None, micros: int, tokens: int, now: datetime
    ) -> bool:
        for pool, period, metric, window, value in self.applicable(ws, user, key):
            spent = self.spent(pool, period, window, metric, now)
            held = self.held[pool][0 if metric == "cost" else 1]
            requested = micros if metric == "cost" else tokens
            if value == 0 or spent + held + requested > value:
                return False
        return True

    def hold(self, pools: tuple[str, ...], micros: int, tokens: int) -> None:
        for p in pools:
            self.held[p][0] += micros
            self.held[p][1] += tokens

    def book(self, pools: tuple[str, ...], micros: int, tokens: int) -> Booking:
        b = Booking(pools, micros, tokens)
        self.bookings.append(b)
        return b


class Driver:
    """Runs operations on the database (one autocommit connection, a superuser for
    the time travel) and on the model; ``check`` compares them."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        org: str,
        *,
        retry: Callable[[Driver, Callable[[], Any]], Any] | None = None,
    ) -> None:
        self.connect = connect
        self.conn = connect()
        self.org = org
        self.model = Model()
        self.seen_seq = 0
        self.ops = 0
        self.log: list[str] = []
        self._retry = retry
        self._in_run = False
        self.reconnected = False
        self._setup()

    # -- plumbing -----------------------------------------------------------------

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        def once() -> list[tuple[Any, ...]]:
            cur = self.conn.execute(query, params)
            return cur.fetchall() if cur.description else []

        if self._retry is None or self._in_run:
            return once()
        return self._retry(self, once)  # a read of a check: repeat it after a crash

    def run(self, fn: Callable[[], Any]) -> Any:
        """One operation; under kill -9 the soak's retry reconnects and repeats it
        (every operation is idempotent or checks whether it happened)."""
        if self._retry is None:
            return fn()
        self._in_run = True
        try:
            return self._retry(self, fn)
        finally:
            self._in_run = False

    def reconnect(self) -> None:
        self.reconnected = True  # the soak runs the full check once the operation is done
        try:
            self.conn.close()
        finally:
            self.conn = self.connect()

    def _setup(self) -> None:
        o = self.org
        if not self.sql("select 1 from costwarden._pricing_snapshots where model = %s", (MODEL,)):
            self.sql(
                "select costwarden.fn_model_upsert(p_model => %s, p_platform_servable => true)",
                (MODEL,),
            )
            self.sql(
                "select costwarden.fn_pricing_set(p_model => %s, p_prices => "
                '\'{"input_tokens": 0.0000025, "output_tokens": 0.00001}\'::jsonb, '
                "p_effective_from => now() - interval '400 days')",
                (MODEL,),
            )
        self.sql('select costwarden.fn_org_upsert(%s, \'{"timezone": "UTC"}\')', (o,))
        for w in WORKSPACES:
            self.sql("select costwarden.fn_workspace_upsert(%s, %s, %s)", (o, w, MODEL))
        for u in USERS:
            self.sql("select costwarden.fn_user_upsert(%s, %s, %s::text[])", (o, u, [GROUP]))
        self.sql("select costwarden.fn_key_upsert(%s, %s, 'w1', 'u1')", (o, KEY))
        if self.sql("select to_regclass('public.soak_clock')") == [(None,)]:
            self.sql(CLOCK_TABLE)
        self.sql("insert into public.soak_clock values (%s, 0) on conflict do nothing", (o,))

    def now(self) -> datetime:
        [(now,)] = self.sql("select now()")
        return now  # type: ignore[no-any-return]

    # -- operations -----------------------------------------------------------------

    def set_budget(self, scope: int, period_window: int, metric: str, value: int) -> None:
        kind, sid = SCOPES[scope % len(SCOPES)]
        period, window = WINDOWS[period_window % len(WINDOWS)]
        self.log.append(f"set_budget({kind}, {sid}, {period}, {window}, {metric}, {value})")
        self.run(
            lambda: self.sql(
                "select costwarden.fn_budget_set(p_org_id => %s, p_scope_kind => %s, "
                "p_scope_id => %s, p_period => %s, p_limit => %s::bigint, p_metric => %s, "
                "p_window => %s, p_mode => 'enforce')",
                (self.org, kind, sid, period, value, metric, window),
            )
        )
        self.model.limits[kind, sid, period, metric, window] = value
        self.after([])

    def reserve(self, context: int, inp: int, out: int) -> uuid.UUID | None:
        ws, user, key = CONTEXTS[context % len(CONTEXTS)]
        usage = {"input_tokens": inp * 2, "output_tokens": out}
        self.log.append(f"reserve({ws}, {user}, {key}, {usage})")
        micros, tokens = cost(usage)
        resolved = user or ("u1" if key else None)
        now = self.now()
        fits = self.model.fits(ws, resolved, key, micros, tokens, now)
        idem = str(uuid.uuid4())
        [(rid, status)] = self.run(
            lambda: self.sql(
                "select reservation_id, status from costwarden.fn_cost_reserve("
                "p_org_id => %s, p_workspace_id => %s, p_model => %s, p_usage => %s, "
                "p_user_id => %s, p_key_id => %s, p_idempotency_key => %s, "
                "p_ttl => interval '7 days')",
                (self.org, ws, MODEL, Jsonb(usage), user, key, idem),
            )
        )
        expected = "held" if fits else "denied"
        if status != expected:
            raise Divergence(
                f"reserve {usage} in {ws}/{resolved}/{key}: {status}, model {expected}"
            )
        pools = Model.context_pools(ws, resolved, key)
        r = Res(
            rid, status, pools, (ws, resolved, key), micros if fits else 0, tokens if fits else 0
        )
        self.model.reservations[rid] = r
        if fits:
            self.model.hold(pools, micros, tokens)
        self.after([])
        if fits:
            self.check_admission(r)
        return rid if fits else None

    def _held(self) -> list[Res]:
        return [r for r in self.model.reservations.values() if r.status == "held"]

    def _pick(self, status: str, n: int) -> Res | None:
        rs = sorted(
            (r for r in self.model.reservations.values() if r.status == status),
            key=lambda r: str(r.rid),
        )
        return rs[n % len(rs)] if rs else None

    def meter(self, n: int, add_in: int, add_out: int) -> None:
        r = self._pick("held", n)
        if r is None:
            return
        base = r.metered or {"input_tokens": 0, "output_tokens": 0}
        usage = {
            "input_tokens": base["input_tokens"] + add_in * 2,
            "output_tokens": base["output_tokens"] + add_out,
        }
        self.log.append(f"meter({r.rid}, {usage})")
        c, tk = cost(usage)
        extra, extra_t = max(c - r.amount, 0), max(tk - r.tokens, 0)
        ws, user, key = r.context
        extend = True
        if extra or extra_t:
            extend = self.model.fits(ws, user, key, extra, extra_t, self.now())
        [(action,)] = self.run(
            lambda: self.sql(
                "select action from costwarden.fn_cost_meter_tick(%s, %s)", (r.rid, Jsonb(usage))
            )
        )
        if action != ("continue" if extend else "abort"):
            raise Divergence(f"meter {r.rid} {usage}: {action}, model extends: {extend}")
        if extend and (extra or extra_t):
            self.model.hold(r.pools, extra, extra_t)
            r.amount += extra
            r.tokens += extra_t
        r.metered, r.metered_cost = usage, (c, tk)
        self.after([])

    def commit(self, n: int, inp: int, out: int) -> None:
        r = self._pick("held", n)
        if r is None:
            return
        usage = {"input_tokens": inp * 2, "output_tokens": out}
        self.log.append(f"commit({r.rid}, {usage})")
        self.run(
            lambda: self.sql(
                "select * from costwarden.fn_cost_commit(%s, %s, false)", (r.rid, Jsonb(usage))
            )
        )
        c, tk = cost(usage)
        self.model.hold(r.pools, -r.amount, -r.tokens)
        r.amount = r.tokens = 0
        r.status, r.charged = "committed", (c, tk)
        self.after([self.model.book(r.pools, c, tk)])

    def release(self, n: int) -> None:
        r = self._pick("held", n)
        if r is None:
            return
        self.log.append(f"release({r.rid})")
        self.run(lambda: self.sql("select * from costwarden.fn_cost_release(%s)", (r.rid,)))
        self._unhold_and_charge_metered(r, "released")

    def _unhold_and_charge_metered(self, r: Res, status: str) -> None:
        self.model.hold(r.pools, -r.amount, -r.tokens)
        r.amount = r.tokens = 0
        r.status = status
        bookings = []
        if r.metered is not None and (r.metered_cost[0] > 0 or r.metered_cost[1] > 0):
            bookings.append(self.model.book(r.pools, *r.metered_cost))
            r.charged = r.metered_cost
        self.after(bookings)

    def expire(self, n: int) -> None:
        r = self._pick("held", n)
        if r is None:
            return
        self.log.append(f"expire({r.rid})")

        def op() -> None:
            self.sql(
                "update costwarden._reservations set expires_at = now() - interval '1 second' "
                "where reservation_id = %s and status = 'held'",
                (r.rid,),
            )
            self.sql("select costwarden.fn_cost_expire_reservations()")
            self._await_other_sweeps("reservation_id = %s", r.rid)

        self.run(op)
        self._unhold_and_charge_metered(r, "expired")

    def _await_other_sweeps(self, where: str, arg: Any) -> None:
        """Another connection's sweep (the soak's other workers) may have taken these
        reservations first (it skips the locked ones, so ours skipped its): wait until
        it committed, so that the next read sees the expiry and what it booked."""
        self.sql(
            f"select 1 from costwarden._reservations where {where} and status = 'held' for share",
            (arg,),
        )

    def late_commit(self, n: int, add_in: int, add_out: int) -> None:
        r = self._pick("expired", n)
        if r is None:
            return
        base = r.metered or {"input_tokens": 0, "output_tokens": 0}
        usage = {
            "input_tokens": base["input_tokens"] + add_in * 2,
            "output_tokens": base["output_tokens"] + add_out,
        }
        self.log.append(f"late_commit({r.rid}, {usage})")
        self.run(
            lambda: self.sql(
                "select * from costwarden.fn_cost_commit(%s, %s, false)", (r.rid, Jsonb(usage))
            )
        )
        c, tk = cost(usage)
        charge, charge_t = max(c - r.charged[0], 0), max(tk - r.charged[1], 0)
        r.status, r.charged = "committed", (r.charged[0] + charge, r.charged[1] + charge_t)
        self.after([self.model.book(r.pools, charge, charge_t)])

    def spend_report(self, ws_n: int, add: int) -> None:
        ws = WORKSPACES[ws_n % len(WORKSPACES)]
        last = self.model.cumulative.get(ws, 0)
        cumulative = last + add
        self.log.append(f"spend_report({ws}, {cumulative})")
        self.run(
            lambda: self.sql(
                "select costwarden.fn_spend_report_cumulative(%s, %s, 'gateway', %s)",
                (self.org, ws, cumulative),
            )
        )
        self.model.cumulative[ws] = cumulative
        self.after([self.model.book(("org", f"workspace:{ws}"), add, 0)] if add > 0 else [])

    def adjust(self, ws_n: int, amount: int) -> None:
        if amount == 0:
            return
        ws = WORKSPACES[ws_n % len(WORKSPACES)]
        reason = f"adjustment {uuid.uuid4()}"
        self.log.append(f"adjust({ws}, {amount})")

        def op() -> None:
            done = self.sql(
                "select 1 from costwarden._ledger where org_id = %s and reason = %s",
                (self.org, reason),
            )
            if not done:  # a retry after a crash: the first attempt may have committed
                self.sql(
                    "select * from costwarden.fn_ledger_adjust(%s, %s, %s, %s)",
                    (self.org, ws, amount, reason),
                )

        self.run(op)
        self.after([self.model.book(("org", f"workspace:{ws}"), amount, 0)])

    def advance(self, n: int) -> None:
        hours = ADVANCE_HOURS[n % len(ADVANCE_HOURS)]
        self.log.append(f"advance({hours}h)")
        target = (
            self.sql("select shifted_hours from public.soak_clock where org_id = %s", (self.org,))[
                0
            ][0]
            + hours
        )
        self.run(lambda: backdate(self.conn, self.org, hours, target))
        for b in self.model.bookings:
            b.move(timedelta(hours=hours))
        # the time that passed ends every call still open: their holds expire (another
        # run's sweep may get there first; the outcome is the same)

        def sweep() -> None:
            self.sql(
                "update costwarden._reservations set expires_at = now() - interval '1 second' "
                "where org_id = %s and status = 'held'",
                (self.org,),
            )
            self.sql("select costwarden.fn_cost_expire_reservations()")
            self._await_other_sweeps("org_id = %s", self.org)

        self.run(sweep)
        expected: list[Booking] = []
        for r in self._held():
            self.model.hold(r.pools, -r.amount, -r.tokens)
            r.amount = r.tokens = 0
            r.status = "expired"
            if r.metered is not None and (r.metered_cost[0] > 0 or r.metered_cost[1] > 0):
                expected.append(self.model.book(r.pools, *r.metered_cost))
                r.charged = r.metered_cost
        self.after(expected, any_order=True)

    # -- checks ---------------------------------------------------------------------

    def after(self, expected: list[Booking], *, any_order: bool = False) -> None:
        """The checks of every step, in one query: the ledger entries appended since the
        last step are the bookings ``expected``, and every pool holds what the model's
        held reservations hold (the full set is :meth:`check`)."""
        self.ops += 1
        both = self.sql(
            "select seq, amount_micros, tokens, created_at, null::text from costwarden._ledger "
            "where org_id = %s and seq > %s "
            "union all "
            "select null, held_micros - g.unused_micros, held_tokens - g.unused_tokens, null, "
            "  kind || coalesce(':' || nullif(scope_id, ''), '') from costwarden._pools, "
            "  costwarden._pool_lane_grants(pool_id) as g "
            "where org_id = %s "
            "order by 1",
            (self.org, self.seen_seq, self.org),
        )
        rows = [r for r in both if r[4] is None]
        for _s, m, t, _c, name in both:
            if name is not None and [int(m), int(t)] != self.model.held.get(name, [0, 0]):
                raise Divergence(f"held of {name}: {(m, t)}, model {self.model.held.get(name)}")
        got = [(int(a), int(t)) for _s, a, t, _c, _n in rows]
        want = [(b.micros, b.tokens) for b in expected]
        if (sorted(got) != sorted(want)) if any_order else (got != want):
            raise Divergence(f"ledger entries {got}, model {want}")
        if rows:
            self.seen_seq = max(int(r[0]) for r in rows)
        if any_order:
            by_amount = sorted(zip(want, expected, strict=True), key=lambda x: x[0])
            rows = sorted(rows, key=lambda r: (int(r[1]), int(r[2])))
            expected = [b for _w, b in by_amount]
        for b, row in zip(expected, rows, strict=True):
            b.at = row[3]

    def check_admission(self, r: Res) -> None:
        """Right after an admission: spent + held <= limit for every enforced limit."""
        now = self.now()
        ws, user, key = r.context
        for pool, period, metric, window, value in self.model.applicable(ws, user, key):
            spent = self.model.spent(pool, period, window, metric, now)
            held = self.model.held[pool][0 if metric == "cost" else 1]
            if spent + held > value:
                raise Divergence(
                    f"admitted over {pool} {period}/{window}/{metric}: {spent} + {held} > {value}"
                )

    def check(self) -> None:
        o = self.org
        rows = self.sql(
            "select p.kind || coalesce(':' || nullif(p.scope_id, ''), ''), "
            "p.held_micros - g.unused_micros, p.held_tokens - g.unused_tokens, p.pool_id "
            "from costwarden._pools p, costwarden._pool_lane_grants(p.pool_id) as g "
            "where p.org_id = %s",
            (o,),
        )
        pools = {name: (int(m), int(t), pid) for name, m, t, pid in rows}
        for name, (m, t, _pid) in pools.items():
            if [m, t] != self.model.held[name]:
                raise Divergence(f"held of {name}: {(m, t)}, model {self.model.held[name]}")
        now_rows = self.sql(
            "select now(), x.pool_id, x.period, x.window_kind, s.micros, s.tokens "
            "from (select p.pool_id, w.period, w.window_kind from costwarden._pools p, "
            "  unnest(%s::text[], %s::text[]) as w(period, window_kind) where p.org_id = %s) x, "
            "lateral costwarden._pool_spent(x.pool_id, x.period, x.window_kind, 'UTC', now()) s",
            ([p for p, _w in WINDOWS], [w for _p, w in WINDOWS], o),
        )
        by_id = {pid: name for name, (_m, _t, pid) in pools.items()}
        for now, pid, period, window, micros, tokens in now_rows:
            name = by_id[pid]
            for metric, value in (("cost", micros), ("tokens", tokens)):
                want = self.model.spent(name, period, window, metric, now)
                if int(value) != want:
                    raise Divergence(
                        f"spent of {name} {period}/{window}/{metric}: {value}, model {want}"
                    )
        drift = self.sql("select * from costwarden.fn_reconcile(%s)", (o,))
        if drift:
            raise Divergence(f"fn_reconcile: {drift}")
        [(ok,)] = self.sql("select bool_and(ok) from costwarden.fn_ledger_verify(%s)", (o,))
        if ok is False:
            raise Divergence("the ledger chain does not verify")
        statuses = dict(
            self.sql(
                "select reservation_id, status from costwarden._reservations where org_id = %s",
                (o,),
            )
        )
        for rid, r in self.model.reservations.items():
            if statuses.get(rid) != r.status:
                raise Divergence(f"reservation {rid}: {statuses.get(rid)}, model {r.status}")


def backdate(conn: psycopg.Connection[Any], org: str, hours: int, target: int) -> None:
    """Move one org's time back by ``hours`` (test-only, superuser): its reservations,
    its spend marks and its ledger (created_at, then the chain recomputed from the
    first entry), in one transaction; ``target`` makes a repeat after a crash a no-op."""
    shift = f"{hours} hours"
    with conn.transaction():
        [(done,)] = conn.execute(
            "select shifted_hours from public.soak_clock where org_id = %s for update", (org,)
        ).fetchall()
        if done >= target:
            return
        conn.execute("set local session_replication_role = replica")  # no triggers
        conn.execute(
            "update costwarden._reservations set created_at = created_at - %s::interval, "
            "expires_at = expires_at - %s::interval, finished_at = finished_at - %s::interval "
            "where org_id = %s",
            (shift, shift, shift, org),
        )
        conn.execute(
            "create temp table moved on commit drop as "
            "select m.* from costwarden._spend_marks m join costwarden._pools p "
            "on p.pool_id = m.pool_id where p.org_id = %s",
            (org,),
        )
        conn.execute(
            "delete from costwarden._spend_marks m using costwarden._pools p "
            "where p.pool_id = m.pool_id and p.org_id = %s",
            (org,),
        )
        conn.execute(
            "insert into costwarden._spend_marks (pool_id, mark_at, micros_before, tokens_before) "
            "select pool_id, mark_at - %s::interval, micros_before, tokens_before from moved",
            (shift,),
        )
        conn.execute(
            "update costwarden._pools set last_mark_at = last_mark_at - %s::interval, "
            "month_start = month_start - %s::interval "
            "where org_id = %s",
            (shift, shift, org),
        )
        conn.execute(
            "update costwarden._ledger set created_at = created_at - %s::interval "
            "where org_id = %s",
            (shift, org),
        )
        conn.execute(
            pgsql.SQL(
                """
                do $$
                declare
                    v_e costwarden._ledger;
                    v_prev bytea := decode(repeat('00', 32), 'hex');
                    v_hash bytea;
                begin
                    for v_e in select * from costwarden._ledger where org_id = {org} order by seq
                    loop
                        v_e.prev_hash := v_prev;
                        v_e.entry_hash := null;
                        v_hash := costwarden._ledger_hash(v_prev, v_e);
                        update costwarden._ledger set prev_hash = v_prev, entry_hash = v_hash
                        where org_id = v_e.org_id and seq = v_e.seq;
                        v_prev := v_hash;
                    end loop;
                    update costwarden._ledger_heads set last_hash = v_prev where org_id = {org};
                end
                $$
                """
            ).format(org=pgsql.Literal(org))
        )
        conn.execute(
            "update public.soak_clock set shifted_hours = %s where org_id = %s", (target, org)
        )


#: How far each org was moved back in time (test-only; backdate's guard).
CLOCK_TABLE = (
    "create table if not exists public.soak_clock "
    "(org_id text primary key, shifted_hours integer not null)"
)


#: The operations of the random driver and their weights.
OPERATIONS: list[tuple[str, int]] = [
    ("reserve", 30),
    ("meter", 14),
    ("commit", 14),
    ("release", 6),
    ("expire", 4),
    ("late_commit", 4),
    ("spend_report", 5),
    ("adjust", 3),
    ("set_budget", 8),
    ("advance", 1),
]


Step = tuple[str, tuple[Any, ...]]


def draw_step(rng: random.Random) -> Step:
    """One random operation and its arguments (the soak's driver)."""
    name = rng.choices([n for n, _w in OPERATIONS], [w for _n, w in OPERATIONS])[0]
    args: tuple[Any, ...]
    if name == "reserve":
        args = (rng.randrange(8), rng.randrange(0, 2500), rng.randrange(0, 400))
    elif name == "meter":
        args = (rng.randrange(64), rng.randrange(0, 1500), rng.randrange(0, 200))
    elif name == "commit":
        args = (rng.randrange(64), rng.randrange(0, 2500), rng.randrange(0, 400))
    elif name in ("release", "expire"):
        args = (rng.randrange(64),)
    elif name == "late_commit":
        args = (rng.randrange(64), rng.randrange(0, 500), rng.randrange(0, 50))
    elif name == "spend_report":
        args = (rng.randrange(2), rng.randrange(0, 20_000))
    elif name == "adjust":
        args = (rng.randrange(2), rng.randrange(-5_000, 5_000))
    elif name == "set_budget":
        metric = rng.choice(METRICS)
        limits = COST_LIMITS if metric == "cost" else TOKEN_LIMITS
        args = (rng.randrange(len(SCOPES)), rng.randrange(len(WINDOWS)), metric, rng.choice(limits))
    else:
        args = (rng.randrange(2),)
    return name, args


def apply(driver: Driver, step: Step) -> None:
    name, args = step
    getattr(driver, name)(*args)


def random_step(driver: Driver, rng: random.Random) -> str:
    step = draw_step(rng)
    apply(driver, step)
    return step[0]


def dumps_log(driver: Driver) -> str:
    return json.dumps(driver.log, indent=1)
