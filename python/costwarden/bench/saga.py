"""`costwarden bench` (`make bench`): the saga's figures, each beside a baseline that
pgbench measures in the same run on the same server, because absolute numbers on a
shared machine drift. The workloads are the files in ``workloads/`` (README.md)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from .. import migrate as migrations
from .._text import table
from ..client import Client
from .chain import grow_ledger
from .common import Echo, PgBench, percentile, recreate_database, scalar, workloads_dir

USAGE = {"input_tokens": 400, "output_tokens": 200}
COMMIT_USAGE = {"input_tokens": 400, "output_tokens": 120}


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    baseline_name: str
    baseline: float
    ratio: float
    goal: str
    met: bool


def setup_costwarden(dsn: str, orgs: int, sql_dir: Path | None = None) -> None:
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
            declare i integer;
            begin
                for i in 1..%s loop
                    perform costwarden.fn_org_upsert('org' || i);
                    perform costwarden.fn_workspace_upsert('org' || i, 'ws', 'bench/model');
                    perform costwarden.fn_budget_set(
                        'org' || i, 'workspace', 'ws', 'day', 1000000000000);
                    perform costwarden.fn_budget_set(
                        'org' || i, 'org', null, 'month', 1000000000000, p_window => 'calendar');
                end loop;
                perform costwarden.fn_org_upsert('hot');
                perform costwarden.fn_workspace_upsert('hot', 'ws', 'bench/model');
                perform costwarden.fn_budget_set('hot', 'workspace', 'ws', 'day', 1000000000000000);
            end
            $$
            """.replace("%s", str(int(orgs)))
        )
        conn.execute("create table if not exists public.bench_hot (id int primary key, n bigint)")
        conn.execute("insert into public.bench_hot values (1, 0) on conflict do nothing")
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


def run_bench(
    admin_dsn: str,
    *,
    bindir: Path | None = None,
    seconds: int = 15,
    orgs: int = 1000,
    ledger_rows: int = 10_000_000,
    echo: Echo = print,
) -> list[Figure]:
    scripts = workloads_dir()
    pgb = PgBench(bindir)
    figures: list[Figure] = []

    def add(fig: Figure) -> None:
        figures.append(fig)
        echo(
            f"  -> {fig.name}: {fig.value:,.3f} {fig.unit} | {fig.baseline_name}: "
            f"{fig.baseline:,.3f} | ratio {fig.ratio:.2f} (goal {fig.goal}) "
            f"{'MET' if fig.met else 'not met'}"
        )

    echo(f"preparing databases (pgbench TPC-B scale 10; costwarden with {orgs:,} orgs) ...")
    tpcb_dsn = recreate_database(admin_dsn, "cw_bench_tpcb")
    pgb.init(tpcb_dsn, 10)
    cw_dsn = recreate_database(admin_dsn, "cw_bench")
    setup_costwarden(cw_dsn, orgs)
    defines = {"orgs": str(orgs)}

    echo(f"1/5 saga pairs at 8 clients vs TPC-B at 8 clients ({seconds} s each)")
    tpcb = pgb.run(tpcb_dsn, clients=8, seconds=seconds, builtin="tpcb-like").tps
    pairs = pgb.run(
        cw_dsn, clients=8, seconds=seconds, script=scripts / "saga_pair.sql", defines=defines
    ).tps
    add(
        Figure(
            "saga pairs/s (reserve+commit, 8 clients)",
            pairs,
            "pairs/s",
            "pgbench TPC-B tps (8 clients)",
            tpcb,
            pairs / tpcb,
            ">= 0.6",
            pairs / tpcb >= 0.6,
        )
    )

    echo("2/5 hot budget: 32 clients on one workspace limit vs a one-row UPDATE")
    upd = pgb.run(cw_dsn, clients=32, seconds=seconds, script=scripts / "hot_update.sql").tps
    hot = pgb.run(cw_dsn, clients=32, seconds=seconds, script=scripts / "hot_reserve.sql").tps
    add(
        Figure(
            "hot-limit reservations/s (32 clients)",
            hot,
            "tps",
            "one-row UPDATE tps (32 clients)",
            upd,
            hot / upd,
            ">= 0.7",
            hot / upd >= 0.7,
        )
    )

    def reserve_latencies() -> list[float]:
        """reserve_only.sql at 8 clients, with pgbench's per-transaction log."""
        return pgb.run(
            cw_dsn,
            clients=8,
            seconds=seconds,
            script=scripts / "reserve_only.sql",
            defines=defines,
            log_latencies=True,
        ).latencies_ms

    echo("3/5 reserve latency at 8 clients (pgbench per-transaction log)")
    lat = reserve_latencies()
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    add(
        Figure(
            "reserve latency p99 (8 clients)",
            p99,
            "ms",
            "p50",
            p50,
            p99 / p50 if p50 else 0,
            "p99 <= 5 ms",
            p99 <= 5.0,
        )
    )

    echo("   single-client pair latency (pgbench, 1 client)")
    tps1 = pgb.run(
        cw_dsn, clients=1, seconds=seconds, script=scripts / "saga_pair.sql", defines=defines
    ).tps
    pair_ms = 1000 / tps1

    echo("4/5 reserve latency with a big ledger vs a small one")
    small_n = scalar(cw_dsn, "select count(*) from costwarden._ledger")
    lat_small = reserve_latencies()
    big_n = grow_ledger(cw_dsn, ledger_rows)
    lat_big = reserve_latencies()
    s50, b50 = percentile(lat_small, 50), percentile(lat_big, 50)
    add(
        Figure(
            f"reserve p50 with {big_n:,} ledger entries",
            b50,
            "ms",
            f"reserve p50 with {small_n:,} entries",
            s50,
            b50 / s50,
            "<= 1.25",
            b50 / s50 <= 1.25,
        )
    )

    echo("5/5 Python client saga vs the same SQL through pgbench (1 client)")
    py_ms = python_pairs(cw_dsn, seconds, orgs)
    add(
        Figure(
            "Python client ms per pair (1 client)",
            py_ms,
            "ms",
            "pgbench ms per pair (1 client)",
            pair_ms,
            py_ms / pair_ms,
            "<= 1.5",
            py_ms / pair_ms <= 1.5,
        )
    )
    figures.append(
        Figure(
            "pair latency (pgbench, 1 client)",
            pair_ms,
            "ms",
            "goal",
            1.0,
            pair_ms / 1.0,
            "< 1 ms",
            pair_ms < 1.0,
        )
    )
    echo(f"  -> pair latency at 1 client: {pair_ms:.3f} ms (goal < 1 ms)")
    return figures


def report(figures: list[Figure]) -> str:
    rows = [
        (
            f.name,
            f"{f.value:,.3f} {f.unit}",
            f.baseline_name,
            f"{f.baseline:,.3f}",
            f"{f.ratio:.2f}",
            f.goal,
            "yes" if f.met else "no",
        )
        for f in figures
    ]
    return table(
        rows, ["figure", "value", "baseline (same run)", "baseline", "ratio", "goal", "met"]
    )


def save(figures: list[Figure], path: Path, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "figures": [asdict(f) for f in figures]}, indent=2))
