"""`costwarden bench` (`make bench`): the saga's figures, each beside a baseline that
pgbench measures in the same run on the same server, because absolute numbers on a
shared machine drift. The workloads are the files in ``workloads/`` (README.md)."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import psycopg

from .. import migrate as migrations
from .._text import table
from ..client import Client
from .chain import grow_ledger
from .common import (
    Echo,
    PgBench,
    PgBenchResult,
    percentile,
    recreate_database,
    workloads_dir,
)

USAGE = {"input_tokens": 400, "output_tokens": 200}
COMMIT_USAGE = {"input_tokens": 400, "output_tokens": 120}


#: The small ledger of the ledger-size figure (the issue's "reserve p50 at 10 M ledger
#: entries ÷ at 10 k"; a tenth of the big one when that is smaller).
SMALL_LEDGER = 10_000

#: The peer's published figures (issue 12 of this repository, two runs on 2026-12-04,
#: the same machine, pgbench, durable settings): a reference column, never re-measured.
PEER_SOURCE = "closest PostgreSQL-native peer, issue 12 (2026-12-04, two runs), not re-measured"
PEER = {
    "pairs": "0.56-0.79 (1,436-2,025 pairs/s)",
    "hot": "0.19-0.20 (hot subject, 433-495 tps)",
    "latency": "0.89-1.03 (1.06-1.20 ms)",
}

#: What the two "[floor: ...]" rows measure (printed under the table).
FLOOR_NOTE = (
    "two durable one-row UPDATE transactions per pair (workloads/floor_pair.sql): the least"
    " a reserve + commit with two durable commits costs on this server, no target"
)

#: What the three "[minimal design: ...]" rows measure (printed under the table).
MINIMAL = "[minimal design: two limits, nothing else]"
MINIMAL_NOTE = (
    "a correct reserve + commit with two enforced limits in PL/pgSQL and nothing else"
    " (minimal_design.sql: no pricing, windows, ledger, idempotency, validation, alerts,"
    " circuits), on the same server and baselines; a reference, no target"
)


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    baseline_name: str
    baseline: float
    ratio: float
    goal: str  # the "must reach" column of issue 12 ("" when the issue sets none)
    met: bool | None  # must reach met (None: no target)
    stretch: str = ""  # the "goal" column of issue 12
    stretch_met: bool | None = None
    peer: str = ""
    round_ratios: tuple[float, ...] = ()  # each round's ratio (the figure's is their median)


def setup_costwarden(dsn: str, orgs: int, sql_dir: Path | None = None) -> None:
    """1,000 orgs (org1..orgN), each with workspace ws (a daily limit), a calendar
    month org limit, user u (a weekly limit) and key k of ws and u (a daily limit);
    hot1 (a workspace limit only), hot2 (org + workspace limits) and hot4 (org,
    workspace, user and key limits) for the hot-limit runs; refuse1 (a workspace
    limit that fits no call) and many (org and workspace limits, 256 users with a
    weekly limit each) for the [callers] rows; the floor pair's table and
    the minimal design (minimal_design.sql, schema bench_minimal) beside them."""
    migrations.migrate(dsn, schedule=False, sql_dir=sql_dir)
    with Client(dsn, on_unavailable="closed") as c:
        c.upsert_model("bench/model", platform_servable=True)
        c.set_pricing(
            "bench/model",
            {"input_tokens": Decimal("0.000003"), "output_tokens": Decimal("0.000015")},
            effective_from=None,
        )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """
            do $$
            declare
                i integer;
                o text;
                big constant bigint := 1000000000000000;
                cal constant text := 'calendar';
            begin
                for i in 1..%s loop
                    o := 'org' || i;
                    perform costwarden.fn_org_upsert(o);
                    perform costwarden.fn_workspace_upsert(o, 'ws', 'bench/model');
                    perform costwarden.fn_user_upsert(o, 'u');
                    perform costwarden.fn_key_upsert(o, 'k', 'ws', 'u');
                    perform costwarden.fn_budget_set(o, 'workspace', 'ws', 'day', big);
                    perform costwarden.fn_budget_set(o, 'org', null, 'month', big, 'cost', cal);
                    perform costwarden.fn_budget_set(o, 'user', 'u', 'week', big);
                    perform costwarden.fn_budget_set(o, 'key', 'k', 'day', big);
                end loop;
                foreach o in array array['hot1', 'hot2', 'hot4'] loop
                    perform costwarden.fn_org_upsert(o);
                    perform costwarden.fn_workspace_upsert(o, 'ws', 'bench/model');
                    perform costwarden.fn_user_upsert(o, 'u');
                    perform costwarden.fn_key_upsert(o, 'k', 'ws', 'u');
                    perform costwarden.fn_budget_set(o, 'workspace', 'ws', 'day', big);
                end loop;
                perform costwarden.fn_budget_set('hot2', 'org', null, 'month', big, 'cost', cal);
                -- a workspace whose daily limit fits no call (refused_reserve.sql)
                perform costwarden.fn_org_upsert('refuse1');
                perform costwarden.fn_workspace_upsert('refuse1', 'ws', 'bench/model');
                perform costwarden.fn_budget_set('refuse1', 'workspace', 'ws', 'day', 1000);
                -- an org of 256 users, each with a weekly limit (many_users_pair.sql)
                perform costwarden.fn_org_upsert('many');
                perform costwarden.fn_workspace_upsert('many', 'ws', 'bench/model');
                perform costwarden.fn_budget_set('many', 'org', null, 'month', big, 'cost', cal);
                perform costwarden.fn_budget_set('many', 'workspace', 'ws', 'day', big);
                for i in 1..256 loop
                    perform costwarden.fn_user_upsert('many', 'u' || i);
                    perform costwarden.fn_budget_set('many', 'user', 'u' || i, 'week', big);
                end loop;
                perform costwarden.fn_budget_set('hot4', 'org', null, 'month', big, 'cost', cal);
                perform costwarden.fn_budget_set('hot4', 'user', 'u', 'week', big);
                perform costwarden.fn_budget_set('hot4', 'key', 'k', 'day', big);
            end
            $$
            """.replace("%s", str(int(orgs)))
        )
        conn.execute("create table if not exists public.bench_hot (id int primary key, n bigint)")
        conn.execute("insert into public.bench_hot values (1, 0) on conflict do nothing")
        # The floor pair's rows (workloads/floor_pair.sql): one per org.
        conn.execute(
            "create table if not exists public.bench_floor"
            " (id int primary key, held bigint not null, spent bigint not null)"
        )
        conn.execute(
            "insert into public.bench_floor select i, 0, 0 from generate_series(1, %s) as i"
            " on conflict do nothing",
            (int(orgs),),
        )
        # The minimal design's schema and accounts (minimal_design.sql): org i's two
        # accounts are 2i and 2i + 1; org 0 is the hot one.
        conn.execute((Path(__file__).parent / "minimal_design.sql").read_text())
        conn.execute(
            "insert into bench_minimal.accounts (account_id, limit_micros)"
            " select a, 1000000000000000 from generate_series(0, 2 * %s + 1) as a"
            " on conflict do nothing",
            (int(orgs),),
        )
        conn.execute(
            "select count(bench_minimal.commit(bench_minimal.reserve(i, 4200), 3000))"
            " from generate_series(1, %s) as i",
            (int(orgs),),
        )
        # A database in use, as the TPC-B baseline's is: one saga pair per org before
        # the statistics are taken. Statistics of empty saga tables let a session plan a
        # sequential scan of _reservations for its primary key, kept while the table
        # grows until autovacuum analyzes it (docs/performance.md, row 9).
        conn.execute(
            """
            select count(c.entry_seq)
            from generate_series(1, %s) as i
            cross join lateral costwarden.fn_cost_reserve(
                p_org_id => 'org' || i, p_workspace_id => 'ws', p_model => 'bench/model',
                p_usage => '{"input_tokens": 400, "output_tokens": 200}') as r
            cross join lateral costwarden.fn_cost_commit(
                p_reservation_id => r.reservation_id,
                p_usage => '{"input_tokens": 400, "output_tokens": 120}') as c
            """,
            (int(orgs),),
        )
        conn.execute("vacuum analyze")


def python_pairs(dsn: str, seconds: float, orgs: int) -> float:
    """Mean ms per reserve+commit pair through the Python client, one client."""
    with Client(dsn, pool_size=1, on_unavailable="closed") as c:
        for _ in range(20):  # warm up
            r = c.reserve("org1", "ws", "bench/model", USAGE)
            c.commit(r.reservation_id, COMMIT_USAGE)
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            r = c.reserve(f"org{1 + n % orgs}", "ws", "bench/model", USAGE)
            c.commit(r.reservation_id, COMMIT_USAGE)
            n += 1
        return (time.perf_counter() - t0) * 1000 / n


def _at_least(value: float, target: float) -> bool:
    return value >= target


def _at_most(value: float, target: float) -> bool:
    return value <= target


def run_bench(
    admin_dsn: str,
    *,
    bindir: Path | None = None,
    seconds: int = 5,
    rounds: int = 3,
    orgs: int = 1000,
    ledger_rows: int = 10_000_000,
    batch: int = 16,
    echo: Echo = print,
) -> list[Figure]:
    """Every figure of issue 12, each beside its baseline measured in the same run:
    two limits per call (org + workspace), then four (org, workspace, user, key),
    the floor pair and the minimal design (references beside the same baselines), the
    batch RPCs, the ledger-size ratio (``ledger_rows`` > 0) and the Python client.

    A ratio figure runs ``rounds`` rounds of ``seconds`` each, its baseline first and then
    its workloads in every round, so that each workload stands beside a baseline of the
    same minute; the figure is the median of the rounds' ratios (value and baseline: the
    medians of the rounds). The reserve latencies run once for ``seconds * rounds``."""
    scripts = workloads_dir()
    pgb = PgBench(bindir)
    figures: list[Figure] = []

    def add(fig: Figure) -> None:
        figures.append(fig)
        per_round = " ".join(f"{r:.2f}" for r in fig.round_ratios)
        echo(
            f"  -> {fig.name}: {fig.value:,.3f} {fig.unit} | {fig.baseline_name}: "
            f"{fig.baseline:,.3f} | ratio {fig.ratio:.2f}"
            + (f" (rounds {per_round})" if len(fig.round_ratios) > 1 else "")
            + f" (must {fig.goal or '-'}: {_yes(fig.met)}; "
            f"goal {fig.stretch or '-'}: {_yes(fig.stretch_met)})"
        )

    def ratio_figure(
        name: str,
        measured: list[tuple[float, float]],
        unit: str,
        baseline_name: str,
        must: float | None,
        goal: float | None,
        higher_is_better: bool,
        peer: str = "",
    ) -> Figure:
        """``measured``: (value, baseline) of each round."""
        ratios = tuple(v / b if b else 0.0 for v, b in measured)
        ratio = statistics.median(ratios)
        ok = _at_least if higher_is_better else _at_most
        sign = ">=" if higher_is_better else "<="
        return Figure(
            name,
            statistics.median(v for v, _ in measured),
            unit,
            baseline_name,
            statistics.median(b for _, b in measured),
            ratio,
            f"{sign} {must}" if must is not None else "",
            ok(ratio, must) if must is not None else None,
            f"{sign} {goal}" if goal is not None else "",
            ok(ratio, goal) if goal is not None else None,
            peer,
            ratios,
        )

    echo(f"preparing databases (pgbench TPC-B scale 10; costwarden with {orgs:,} orgs) ...")
    tpcb_dsn = recreate_database(admin_dsn, "cw_bench_tpcb")
    pgb.init(tpcb_dsn, 10)
    cw_dsn = recreate_database(admin_dsn, "cw_bench")
    setup_costwarden(cw_dsn, orgs)
    defines = {"orgs": str(orgs), "batch": str(batch)}

    # the opt-in of docs/saga.md#durability: a session whose synchronous_commit is off
    # (its holds do not wait for their flush; its commits still do)
    async_holds_dsn = psycopg.conninfo.make_conninfo(cw_dsn, options="-c synchronous_commit=off")

    def run(script: str, clients: int, dsn: str = cw_dsn, **extra: str) -> PgBenchResult:
        return pgb.run(
            dsn,
            clients=clients,
            seconds=seconds,
            script=scripts / script,
            defines={**defines, **extra},
        )

    def rate(script: str, clients: int, dsn: str = cw_dsn, **extra: str) -> float:
        return run(script, clients, dsn, **extra).tps

    def latency(script: str, dsn: str = cw_dsn) -> float:
        """Mean ms per transaction (a script's pass) at 1 client."""
        return run(script, 1, dsn).latency_ms

    def tpcb(clients: int) -> PgBenchResult:
        return pgb.run(tpcb_dsn, clients=clients, seconds=seconds, builtin="tpcb-like")

    def in_rounds(
        baseline: Callable[[], float], workloads: dict[str, Callable[[], float]]
    ) -> dict[str, list[tuple[float, float]]]:
        """``rounds`` × (the baseline, then each workload): (value, baseline) per round."""
        out: dict[str, list[tuple[float, float]]] = {key: [] for key in workloads}
        for _ in range(rounds):
            base = baseline()
            for key, workload in workloads.items():
                out[key].append((workload(), base))
        return out

    def add_references(
        refs: Mapping[str, Callable[[], float]],
        measured: dict[str, list[tuple[float, float]]],
        unit: str,
        baseline_name: str,
        higher_is_better: bool,
    ) -> None:
        """A figure without a target for each reference workload (keyed by its name)."""
        for name in refs:
            add(
                ratio_figure(
                    name, measured[name], unit, baseline_name, None, None, higher_is_better
                )
            )

    def reserve_latencies(script: str, dsn: str = cw_dsn, run_seconds: int = 0) -> list[float]:
        """A reserve-only workload at 8 clients, with pgbench's per-transaction log
        (``run_seconds``, else ``seconds * rounds``)."""
        return pgb.run(
            dsn,
            clients=8,
            seconds=run_seconds or seconds * rounds,
            script=scripts / script,
            defines=defines,
            log_latencies=True,
        ).latencies_ms

    tpcb8_medians: list[float] = []  # each variant's TPC-B, for the batch's note
    each = f"{rounds} round(s) of {seconds} s"
    for limits, suffix, hot in (
        ("org + workspace", "", "2"),
        ("org, workspace, user, key", "_4", "4"),
    ):
        tag = f"[{limits}]"
        # Reference rows (no target; the two-limit variant only): the floor pair and the
        # minimal design, each beside the same baselines as the saga's row of its section.
        floor, minimal = "[floor: two one-row UPDATE transactions]", MINIMAL

        echo(f"{tag} saga pairs at 8 clients vs TPC-B at 8 clients ({each})")
        refs: Mapping[str, Callable[[], float]] = (
            {}
            if suffix
            else {
                f"{floor} pairs/s, 8 clients": partial(rate, "floor_pair.sql", 8),
                f"{minimal} pairs/s, 8 clients, {orgs:,} orgs": partial(
                    rate, "minimal_pair.sql", 8
                ),
            }
        )
        measured = in_rounds(
            lambda: tpcb(8).tps, {"pairs": partial(rate, f"saga_pair{suffix}.sql", 8), **refs}
        )
        pairs_figure = ratio_figure(
            f"{tag} pairs/s, 8 clients, {orgs:,} orgs",
            measured["pairs"],
            "pairs/s",
            "TPC-B tps, 8 clients",
            0.8,
            1.0,
            True,
            PEER["pairs"],
        )
        add(pairs_figure)
        tpcb8_medians.append(pairs_figure.baseline)
        add_references(refs, measured, "pairs/s", "TPC-B tps, 8 clients", True)

        echo(f"{tag} one hot workspace at 32 clients vs a one-row UPDATE at 32 clients ({each})")
        hot_runs: dict[str, Callable[[], float]] = {
            "hot": partial(rate, f"hot_reserve{suffix}.sql", 32, hot=hot)
        }
        if not suffix:
            hot_runs["hot1"] = partial(rate, "hot_reserve.sql", 32, hot="1")
        refs = (
            {}
            if suffix
            else {
                f"{minimal} one hot workspace, reservations/s, 32 clients": partial(
                    rate, "hot_minimal.sql", 32
                ),
            }
        )
        measured = in_rounds(partial(rate, "hot_update.sql", 32), {**hot_runs, **refs})
        add(
            ratio_figure(
                f"{tag} one hot workspace, reservations/s, 32 clients",
                measured["hot"],
                "tps",
                "one-row UPDATE tps, 32 clients",
                0.25,
                0.7,
                True,
                PEER["hot"],
            )
        )
        if not suffix:
            add(
                ratio_figure(
                    "[workspace limit only] one hot workspace, reservations/s, 32 clients",
                    measured["hot1"],
                    "tps",
                    "one-row UPDATE tps, 32 clients",
                    None,
                    None,
                    True,
                    PEER["hot"],
                )
            )
        add_references(refs, measured, "tps", "one-row UPDATE tps, 32 clients", True)

        echo(f"{tag} pair latency at 1 client vs TPC-B latency at 1 client ({each})")
        refs = (
            {}
            if suffix
            else {
                f"{floor} pair latency, 1 client": partial(latency, "floor_pair.sql"),
                f"{minimal} pair latency, 1 client": partial(latency, "minimal_pair.sql"),
            }
        )
        measured = in_rounds(
            lambda: tpcb(1).latency_ms, {"pair": partial(latency, f"saga_pair{suffix}.sql"), **refs}
        )
        add(
            ratio_figure(
                f"{tag} pair latency, 1 client",
                measured["pair"],
                "ms",
                "TPC-B latency, 1 client (ms)",
                0.85,
                0.6,
                False,
                PEER["latency"],
            )
        )
        add_references(refs, measured, "ms", "TPC-B latency, 1 client (ms)", False)

        echo(f"{tag} reserve latency at 8 clients ({seconds * rounds} s, per-transaction log)")
        lat = reserve_latencies(f"reserve_only{suffix}.sql")
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        add(
            Figure(
                f"{tag} reserve latency p99, 8 clients",
                p99,
                "ms",
                "p50 (ms)",
                p50,
                p99 / p50 if p50 else 0.0,
                "<= 8 ms",
                p99 <= 8.0,
                "<= 5 ms",
                p99 <= 5.0,
            )
        )

    echo(
        f"batch RPCs: fn_cost_reserve_many + fn_cost_commit_many, {batch} calls each,"
        f" 8 clients, vs single-call pairs ({each})"
    )
    measured = in_rounds(
        partial(rate, "saga_pair.sql", 8),
        {"batch": lambda: rate("batch_pair.sql", 8) * batch},
    )
    batch_figure = ratio_figure(
        f"batch {batch}: pairs/s (= calls/s of each batch RPC), 8 clients, {orgs:,} orgs",
        measured["batch"],
        "pairs/s",
        "single calls, pairs/s, 8 clients",
        None,
        None,
        True,
    )
    tpcb8 = statistics.median(tpcb8_medians)
    add(
        replace(
            batch_figure,
            peer=f"(the batch: {batch_figure.value / tpcb8:.2f} x TPC-B tps)" if tpcb8 else "",
        )
    )

    # What callers do that the pairs above do not (docs/performance.md, rows 43-50, 60),
    # and the opt-in of docs/saga.md#durability (holds that do not wait for their flush),
    # apart from the figures above: each beside the workload it varies, no target; a
    # ratio far below 1 is a path that costs more than its extra work. Workloads that
    # vary the same one share its rounds.
    echo(f"callers' workloads beside the ones they vary ({each})")
    callers: list[tuple[str, Callable[[], float], dict[str, Callable[[], float]], str, bool]] = [
        (
            f"saga pairs within the hold, 8 clients, {orgs:,} orgs",
            partial(rate, "saga_pair.sql", 8),
            {
                f"[callers] pairs whose commit runs over the hold, 8 clients, {orgs:,} orgs": (
                    partial(rate, "saga_pair_overage.sql", 8)
                ),
                "[callers] pairs in one org of 256 users (org, workspace, user limits),"
                " 8 clients": partial(rate, "many_users_pair.sql", 8),
                "[opt-in] pairs whose holds do not wait for their flush (the session's"
                " synchronous_commit off), 8 clients": partial(
                    rate, "saga_pair.sql", 8, async_holds_dsn
                ),
            },
            "pairs/s",
            True,
        ),
        (
            "pair latency, 1 client (ms)",
            partial(latency, "saga_pair.sql"),
            {
                "[opt-in] pair latency, holds not waiting for their flush, 1 client": partial(
                    latency, "saga_pair.sql", async_holds_dsn
                ),
            },
            "ms",
            False,
        ),
        (
            "pairs with a tick within the hold, 32 clients",
            partial(rate, "hot_pair_tick.sql", 32, hot="2"),
            {
                "[callers] one hot workspace, pairs with a tick that grows the hold,"
                " 32 clients": partial(rate, "hot_pair_tick_grow.sql", 32, hot="2"),
            },
            "pairs/s",
            True,
        ),
        (
            "pairs with a commit within the hold on one hot workspace, 32 clients",
            partial(rate, "hot_pair.sql", 32, hot="2"),
            {
                "[callers] one hot workspace, pairs whose call did not happen (reserve,"
                " release), 32 clients": partial(rate, "hot_pair_release.sql", 32, hot="2"),
            },
            "pairs/s",
            True,
        ),
        (
            "reservations/s on one hot workspace, 8 clients",
            partial(rate, "hot_reserve.sql", 8, hot="2"),
            {
                "[callers] refusals/s, 8 clients on a workspace whose limit fits no call": (
                    partial(rate, "refused_reserve.sql", 8)
                ),
            },
            "tps",
            True,
        ),
    ]
    for baseline_name, baseline, refs, unit, higher_is_better in callers:
        add_references(refs, in_rounds(baseline, refs), unit, baseline_name, higher_is_better)

    if ledger_rows > 0:
        # Two databases set up alike, one with a small ledger and one with a big one,
        # measured in alternating rounds: the small ledger's p50 of each round is the big
        # one's baseline. (Growing one database's ledger between two runs compared runs
        # minutes apart, which a busy machine read as a change of the figure.)
        small_rows = min(SMALL_LEDGER, ledger_rows // 10)
        echo(
            f"reserve latency at 8 clients with {ledger_rows:,} ledger entries vs"
            f" {small_rows:,} (two databases set up alike; {each})"
        )
        small_dsn = recreate_database(admin_dsn, "cw_bench_ledger_small")
        setup_costwarden(small_dsn, orgs)
        small_n = grow_ledger(small_dsn, small_rows)
        big_dsn = recreate_database(admin_dsn, "cw_bench_ledger_big")
        setup_costwarden(big_dsn, orgs)
        big_n = grow_ledger(big_dsn, ledger_rows)
        for dsn in (small_dsn, big_dsn):
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("vacuum analyze")

        def reserve_p50(dsn: str) -> float:
            return percentile(reserve_latencies("reserve_only.sql", dsn, seconds), 50)

        measured = in_rounds(
            partial(reserve_p50, small_dsn), {"big": partial(reserve_p50, big_dsn)}
        )
        add(
            ratio_figure(
                f"reserve p50 with {big_n:,} ledger entries",
                measured["big"],
                "ms",
                f"reserve p50 with {small_n:,} entries (ms)",
                1.25,
                1.1,
                False,
            )
        )

    echo(f"Python client saga vs the same SQL through pgbench (1 client, {each})")
    measured = in_rounds(
        partial(latency, "saga_pair.sql"),
        {"python": lambda: python_pairs(cw_dsn, seconds, orgs)},
    )
    add(
        ratio_figure(
            "Python client ms per pair, 1 client",
            measured["python"],
            "ms",
            "pgbench ms per pair, 1 client",
            1.5,
            None,
            False,
        )
    )
    return figures


def _yes(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "no")


def report(figures: list[Figure]) -> str:
    rows = [
        (
            f.name,
            f"{f.value:,.3f} {f.unit}",
            f"{f.baseline_name}: {f.baseline:,.3f}",
            f"{f.ratio:.2f}",
            " ".join(f"{r:.2f}" for r in f.round_ratios) if len(f.round_ratios) > 1 else "-",
            f"{f.goal or '-'} ({_yes(f.met)})",
            f"{f.stretch or '-'} ({_yes(f.stretch_met)})",
            f.peer or "-",
        )
        for f in figures
    ]
    return (
        table(
            rows,
            [
                "figure",
                "value",
                "baseline (same run)",
                "ratio",
                "rounds",
                "must reach (met)",
                "goal (met)",
                "peer",
            ],
        )
        + f"\npeer: {PEER_SOURCE}\nfloor: {FLOOR_NOTE}\nminimal design: {MINIMAL_NOTE}"
    )


def save(figures: list[Figure], path: Path, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "figures": [asdict(f) for f in figures]}, indent=2))
