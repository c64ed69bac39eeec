"""`costwarden bench` / `make bench`: pgbench workloads beside same-run baselines.

Every figure is printed next to a baseline that pgbench measures in the same
run on the same server, because absolute numbers on a shared machine drift.
The workloads are the files in bench/ (see bench/README.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from . import migrate as migrations
from .client import Client

Echo = Callable[[str], None]
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


def bench_dir() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "bench"
        if (candidate / "saga_pair.sql").is_file():
            return candidate
    return Path(str(resources.files("costwarden") / "bench"))


class PgBench:
    def __init__(self, dsn: str, bindir: Path | None) -> None:
        self.info = psycopg.conninfo.conninfo_to_dict(dsn)
        found = shutil.which("pgbench")
        self.binary = str(bindir / "pgbench") if bindir and (bindir / "pgbench").exists() else found
        if not self.binary:
            raise RuntimeError("pgbench not found (Debian package postgresql-15)")

    def _base(self, dbname: str) -> list[str]:
        return [
            str(self.binary),
            "-h",
            str(self.info.get("host") or "localhost"),
            "-p",
            str(self.info.get("port") or 5432),
            "-U",
            str(self.info.get("user") or "postgres"),
        ]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.info.get("password"):
            env["PGPASSWORD"] = str(self.info["password"])
        return env

    def init(self, dbname: str, scale: int) -> None:
        subprocess.run(
            [*self._base(dbname), "-i", "-q", "-s", str(scale), dbname],
            check=True,
            capture_output=True,
            text=True,
            env=self.env(),
        )

    def run(
        self,
        dbname: str,
        *,
        clients: int,
        seconds: int,
        script: Path | None = None,
        builtin: str | None = None,
        defines: dict[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> tuple[float, list[float]]:
        """Run pgbench; returns (tps, per-transaction latencies in ms if logged)."""
        argv = [
            *self._base(dbname),
            "-n",
            "-c",
            str(clients),
            "-j",
            str(min(clients, 4)),
            "-T",
            str(seconds),
            "-M",
            "prepared",
        ]
        if script is not None:
            argv += ["-f", str(script)]
        if builtin is not None:
            argv += ["-b", builtin]
        for key, value in (defines or {}).items():
            argv += ["-D", f"{key}={value}"]
        if log_dir is not None:
            argv += ["-l", "--log-prefix", str(log_dir / "pgbench_log")]
        argv.append(dbname)
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=str(log_dir) if log_dir else None,
        )
        if out.returncode != 0:
            raise RuntimeError(f"pgbench failed: {out.stderr.strip()[-2000:]}")
        m = re.search(
            r"tps = ([0-9.]+) \((?:without initial connection time|excluding)", out.stdout
        )
        if not m:
            m = re.search(r"tps = ([0-9.]+)", out.stdout)
        if not m:
            raise RuntimeError(f"cannot read pgbench output:\n{out.stdout}")
        latencies: list[float] = []
        if log_dir is not None:
            for path in log_dir.glob("pgbench_log*"):
                for line in path.read_text().splitlines():
                    parts = line.split()
                    if len(parts) >= 3:
                        latencies.append(int(parts[2]) / 1000.0)
                path.unlink()
        return float(m.group(1)), latencies


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def _recreate(admin_dsn: str, dbname: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname))
        )
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))
    return psycopg.conninfo.make_conninfo(admin_dsn, dbname=dbname)


def setup_costwarden(dsn: str, orgs: int, sql_dir: Path | None = None) -> None:
    migrations.migrate(dsn, schedule=False, sql_dir=sql_dir)
    with Client(dsn) as c:
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


# A deterministic, realistic entry for seq n of the generated chain.
GEN_ENTRY = """
create function pg_temp.bench_entry(p_org text, p_seq bigint, p_prev bytea)
returns costwarden._ledger
language sql
stable  -- inlined into the generating query
as $$
    select row(
        p_org, p_seq, 'charge', md5(p_seq::text)::uuid, 'ws-' || (p_seq % 7),
        case when p_seq % 3 = 0 then null else 'user-' || (p_seq % 50) end,
        null, 'openai/gpt-4o', 'platform_managed',
        jsonb_build_object('input_tokens', 100 + p_seq % 1000, 'output_tokens', p_seq % 97),
        100 + p_seq % 1000 + p_seq % 97, 2500 + p_seq % 10000, 1, p_seq % 11 = 0, false,
        null, null, timestamptz '2025-01-01 00:00:00+00' + p_seq * interval '1 millisecond',
        p_prev, null
    )::costwarden._ledger
$$
"""

GEN_BATCH = """
with recursive c (seq, prev, h) as (
    select %(first)s::bigint, %(prev)s::bytea,
           costwarden._ledger_hash(%(prev)s::bytea,
                                   pg_temp.bench_entry(%(org)s, %(first)s, %(prev)s))
    union all
    select c.seq + 1, c.h,
           costwarden._ledger_hash(c.h, pg_temp.bench_entry(%(org)s, c.seq + 1, c.h))
    from c
    where c.seq < %(last)s
),
ins as (
    insert into costwarden._ledger
    select (e).org_id, (e).seq, (e).entry_type, (e).reservation_id, (e).workspace_id,
           (e).user_id, (e).key_id, (e).model, (e).billing_mode, (e).usage, (e).tokens,
           (e).amount_micros, (e).pricing_snapshot_id, (e).approximate, (e).late, (e).source,
           (e).reason, (e).created_at, (e).prev_hash, c.h
    from c, lateral (select pg_temp.bench_entry(%(org)s, c.seq, c.prev) as e) as x
    returning 1
)
select (select count(*) from ins), (select h from c where seq = %(last)s)
"""


def generate_chain(
    dsn: str, org: str, entries: int, batch: int = 100_000, echo: Echo = print
) -> float:
    """Append ``entries`` entries to ``org``'s chain, set-based; returns seconds."""
    t0 = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select costwarden.fn_org_upsert(%s)", (org,))
        conn.execute(GEN_ENTRY)
        prev = bytes(32)
        done = 0
        while done < entries:
            first, last = done + 1, min(done + batch, entries)
            row = conn.execute(
                GEN_BATCH, {"org": org, "first": first, "last": last, "prev": prev}
            ).fetchone()
            assert row is not None and row[0] == last - first + 1
            prev = bytes(row[1])
            done = last
            echo(f"  generated {done:,}/{entries:,} entries ({time.monotonic() - t0:.0f} s)")
        conn.execute(
            "insert into costwarden._ledger_heads (org_id, last_seq, last_hash) "
            "values (%s, %s, %s)",
            (org, entries, prev),
        )
        conn.execute("vacuum analyze costwarden._ledger")
    return time.monotonic() - t0


def grow_ledger(dsn: str, rows: int, echo: Echo) -> int:
    """Grow the ledger to about `rows` entries with one real, verifiable chain
    (org 'filler', generated set-based in SQL); returns the ledger's size."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        (have,) = conn.execute("select count(*) from costwarden._ledger").fetchone()  # type: ignore[misc]
        (filler,) = conn.execute(
            "select count(*) from costwarden._ledger_heads where org_id = 'filler'"
        ).fetchone()  # type: ignore[misc]
    need = rows - int(have)
    if need > 0 and not filler:
        generate_chain(dsn, "filler", need, echo=echo)
    with psycopg.connect(dsn, autocommit=True) as conn:
        (total,) = conn.execute("select count(*) from costwarden._ledger").fetchone()  # type: ignore[misc]
    return int(total)


def python_pairs(dsn: str, seconds: float, orgs: int) -> float:
    """Mean ms per reserve+commit pair through the Python client, one client."""
    with Client(dsn, pool_size=1) as c:
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
    scripts = bench_dir()
    pgb = PgBench(admin_dsn, bindir)
    figures: list[Figure] = []

    def add(fig: Figure) -> None:
        figures.append(fig)
        echo(
            f"  -> {fig.name}: {fig.value:,.3f} {fig.unit} | {fig.baseline_name}: "
            f"{fig.baseline:,.3f} | ratio {fig.ratio:.2f} (goal {fig.goal}) "
            f"{'MET' if fig.met else 'not met'}"
        )

    echo(f"preparing databases (pgbench TPC-B scale 10; costwarden with {orgs:,} orgs) ...")
    _recreate(admin_dsn, "cw_bench_tpcb")
    pgb.init("cw_bench_tpcb", 10)
    cw_dsn = _recreate(admin_dsn, "cw_bench")
    setup_costwarden(cw_dsn, orgs)
    defines = {"orgs": str(orgs)}

    echo(f"1/5 saga pairs at 8 clients vs TPC-B at 8 clients ({seconds} s each)")
    tpcb, _ = pgb.run("cw_bench_tpcb", clients=8, seconds=seconds, builtin="tpcb-like")
    pairs, _ = pgb.run(
        "cw_bench", clients=8, seconds=seconds, script=scripts / "saga_pair.sql", defines=defines
    )
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
    upd, _ = pgb.run("cw_bench", clients=32, seconds=seconds, script=scripts / "hot_update.sql")
    hot, _ = pgb.run("cw_bench", clients=32, seconds=seconds, script=scripts / "hot_reserve.sql")
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

    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp)

        def reserve_latencies() -> tuple[float, list[float]]:
            """reserve_only.sql at 8 clients, with pgbench's per-transaction log."""
            return pgb.run(
                "cw_bench",
                clients=8,
                seconds=seconds,
                script=scripts / "reserve_only.sql",
                defines=defines,
                log_dir=log_dir,
            )

        echo("3/5 reserve latency at 8 clients (pgbench per-transaction log)")
        _, lat = reserve_latencies()
        p50, p99 = _percentile(lat, 50), _percentile(lat, 99)
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
        tps1, _ = pgb.run(
            "cw_bench",
            clients=1,
            seconds=seconds,
            script=scripts / "saga_pair.sql",
            defines=defines,
        )
        pair_ms = 1000 / tps1

        echo("4/5 reserve latency with a big ledger vs a small one")
        with psycopg.connect(cw_dsn) as conn:
            (small_n,) = conn.execute("select count(*) from costwarden._ledger").fetchone()  # type: ignore[misc]
        _, lat_small = reserve_latencies()
        big_n = grow_ledger(cw_dsn, ledger_rows, echo)
        _, lat_big = reserve_latencies()
        s50, b50 = _percentile(lat_small, 50), _percentile(lat_big, 50)
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
    from .cli import table

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


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
