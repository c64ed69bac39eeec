"""The ledger's costs, measured (docs/ledger.md, "Performance"): `costwarden bench ledger`.

Everything runs in a scratch database (costwarden_ledger_bench, dropped at the end
unless ``keep``) on a server whose role may CREATE DATABASE.

1. Commit latency with the chain vs without it, in the same run: the same
   reserve + commit, once with the real _ledger_append and once with a stub of
   the same signature that appends nothing (swapped in and out in alternating
   rounds, so drift on a shared machine hits both alike). Only the commit is timed.
2. Append throughput at ``clients`` clients (pgbench, workloads/ledger_*.sql): raw
   _ledger_append and fn_ledger_adjust spread over ``orgs`` orgs, and raw
   _ledger_append on a single org (all appends serialised on one head).
3. Verification speed on ``entries`` entries in one chain: generated set-based in
   SQL first (not timed), then timed: fn_ledger_verify (SQL), the Python verifier
   reading from the database, and the Python verifier reading a JSON Lines export.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click
import psycopg

from .. import ledger
from .. import migrate as migrations
from ..client import Client
from .chain import generate_chain
from .common import Echo, PgBench, percentile, scratch_database, server_facts, workloads_dir

BENCH_DB = "costwarden_ledger_bench"
MODEL = "bench/model-1"
USAGE = '{"input_tokens": 400, "output_tokens": 200}'
COMMIT_USAGE = '{"input_tokens": 380, "output_tokens": 150}'

STUB_APPEND = """
create or replace function costwarden._ledger_append(
    p_org_id text, p_entry_type text, p_amount_micros bigint,
    p_reservation_id uuid default null, p_workspace_id text default null,
    p_user_id text default null, p_key_id text default null, p_model text default null,
    p_billing_mode text default null, p_usage jsonb default null, p_tokens bigint default 0,
    p_pricing_snapshot_id bigint default null, p_approximate boolean default false,
    p_late boolean default false, p_source text default null, p_reason text default null,
    out seq bigint, out entry_hash bytea)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    seq := 0;  -- the bench's no-chain variant: nothing is appended
    entry_hash := '\\x0000000000000000000000000000000000000000000000000000000000000000';
end
$$
"""

#: The append workloads of figure 2: (name, file in workloads/).
THROUGHPUT = (
    ("_ledger_append, {orgs} orgs", "ledger_append_many.sql"),
    ("fn_ledger_adjust, {orgs} orgs", "ledger_adjust_many.sql"),
    ("_ledger_append, 1 org", "ledger_append_one.sql"),
)


@dataclass(frozen=True)
class Latency:
    p50: float
    p95: float
    mean: float
    n: int


@dataclass(frozen=True)
class LedgerBench:
    facts: str
    clients: int
    seconds: int
    entries: int
    commit_latency: dict[str, Latency]  # "with chain" / "without chain"
    throughput: dict[str, tuple[float, float]]  # workload -> (tps, mean latency ms)
    generation_seconds: float
    verification: dict[str, float]  # verifier -> seconds


def setup(dsn: str, orgs: int) -> None:
    migrations.migrate(dsn, schedule=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select costwarden.fn_model_upsert(%s, true)", (MODEL,))
        conn.execute(
            "select costwarden.fn_pricing_set(%s, "
            '\'{"input_tokens": 0.0000025, "output_tokens": 0.00001}\', '
            "now() - interval '1 day')",
            (MODEL,),
        )
        conn.execute("select costwarden.fn_org_upsert('bench')")
        conn.execute("select costwarden.fn_workspace_upsert('bench', 'ws', %s)", (MODEL,))
        for i in range(1, orgs + 1):
            conn.execute("select costwarden.fn_org_upsert(%s)", (f"org-{i}",))
            conn.execute("select costwarden.fn_workspace_upsert(%s, 'ws')", (f"org-{i}",))
        conn.execute("vacuum analyze")


def commit_latency(dsn: str, commits: int, rounds: int = 4) -> dict[str, Latency]:
    """Median / p95 / mean commit latency (ms), with and without the chain."""
    timings: dict[str, list[float]] = {"with chain": [], "without chain": []}
    per_round = max(1, commits // rounds)
    reserve = (
        "select reservation_id from costwarden.fn_cost_reserve(p_org_id => 'bench', "
        "p_workspace_id => 'ws', p_model => %s, p_usage => %s::jsonb)"
    )
    commit = "select * from costwarden.fn_cost_commit(p_reservation_id => %s, p_usage => %s::jsonb)"
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        click.progressbar(
            length=rounds * 2 * per_round, label="commit latency", file=sys.stderr
        ) as bar,
    ):
        row = conn.execute(
            "select pg_get_functiondef('costwarden._ledger_append'::regproc)"
        ).fetchone()
        assert row is not None
        real = str(row[0])
        try:
            for _ in range(rounds):
                for variant in ("with chain", "without chain"):
                    conn.execute(real if variant == "with chain" else STUB_APPEND)
                    ids = []
                    for _ in range(per_round):
                        reserved = conn.execute(reserve, (MODEL, USAGE), prepare=True).fetchone()
                        assert reserved is not None
                        ids.append(reserved[0])
                    for rid in ids:
                        t0 = time.perf_counter()
                        conn.execute(commit, (rid, COMMIT_USAGE), prepare=True).fetchall()
                        timings[variant].append((time.perf_counter() - t0) * 1000)
                    bar.update(per_round)
        finally:
            conn.execute(real)
    return {
        k: Latency(statistics.median(v), percentile(v, 95), statistics.fmean(v), len(v))
        for k, v in timings.items()
    }


def verify_speed(dsn: str, org: str, entries: int, tmp: Path) -> dict[str, float]:
    """Seconds per verifier on ``org``'s chain (every one must find it intact)."""
    out: dict[str, float] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.monotonic()
        row = conn.execute(
            "select ok, entries from costwarden.fn_ledger_verify(p_org_id => %s)", (org,)
        ).fetchone()
        out["fn_ledger_verify (SQL)"] = time.monotonic() - t0
        if row is None or not row[0] or row[1] != entries:
            raise RuntimeError(f"fn_ledger_verify on the generated chain: {row}")
    with Client(dsn, pool_size=1, on_unavailable="closed") as client:
        t0 = time.monotonic()
        report = ledger.verify_database(client, org_id=org)
        out["Python, reading the database"] = time.monotonic() - t0
        if not report.ok or report.rows != entries:
            raise RuntimeError(f"the Python verifier on the generated chain: {report}")
        path = tmp / "ledger.jsonl"
        t0 = time.monotonic()
        with path.open("w", encoding="utf-8") as f:
            ledger.export(client, f, org)
        out["export to JSON Lines (for reference)"] = time.monotonic() - t0
    t0 = time.monotonic()
    report = ledger.verify_export_file(path)
    out["Python, reading an export file"] = time.monotonic() - t0
    if not report.ok or report.rows != entries:
        raise RuntimeError(f"the Python verifier on the export: {report}")
    return out


def run_ledger_bench(
    admin_dsn: str,
    *,
    bindir: Path | None = None,
    entries: int = 1_000_000,
    commits: int = 2000,
    clients: int = 8,
    seconds: int = 10,
    orgs: int = 1000,
    keep: bool = False,
    echo: Echo = print,
) -> LedgerBench:
    pgb = PgBench(bindir)
    with (
        scratch_database(admin_dsn, BENCH_DB, keep=keep) as dsn,
        tempfile.TemporaryDirectory() as tmp,
    ):
        facts = server_facts(dsn)
        echo(f"setting up {BENCH_DB} ({facts})")
        setup(dsn, orgs)

        echo("1/3 commit latency with and without the chain")
        latency = commit_latency(dsn, commits)

        echo(f"2/3 append throughput at {clients} clients ({seconds} s per run)")
        throughput = {}
        for name, script in THROUGHPUT:
            result = pgb.run(
                dsn,
                clients=clients,
                seconds=seconds,
                script=workloads_dir() / script,
                defines={"orgs": str(orgs)},
            )
            label = name.format(orgs=orgs)
            throughput[label] = (result.tps, result.latency_ms)
            echo(f"  {label}: {result.tps:,.0f} tps")

        echo(f"3/3 verification speed on {entries:,} entries (generation is not timed)")
        generation = generate_chain(dsn, "big", entries)
        speed = verify_speed(dsn, "big", entries, Path(tmp))
    return LedgerBench(facts, clients, seconds, entries, latency, throughput, generation, speed)


def markdown(b: LedgerBench) -> str:
    """The figures as the Markdown tables of docs/ledger.md."""
    w = b.commit_latency["without chain"]
    extra = b.commit_latency["with chain"].p50 - w.p50
    lines = [
        f"## Ledger benchmark\n\n{b.facts}\n",
        "| commit latency (client side) | p50 ms | p95 ms | mean ms | commits |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {k} | {v.p50:.3f} | {v.p95:.3f} | {v.mean:.3f} | {v.n} |"
            for k, v in b.commit_latency.items()
        ),
        f"\nThe chain adds {extra:.3f} ms to a commit's median ({100 * extra / w.p50:+.0f} %).\n",
        f"| append throughput, {b.clients} clients, {b.seconds} s | tps | mean latency ms |",
        "|---|---:|---:|",
        *(f"| {name} | {tps:,.0f} | {ms:.2f} |" for name, (tps, ms) in b.throughput.items()),
        f"\nGenerating the {b.entries:,}-entry chain in SQL took {b.generation_seconds:.0f} s "
        "(not timed below).\n",
        f"| verification of {b.entries:,} entries | seconds | entries/s |",
        "|---|---:|---:|",
        *(
            f"| {name} | {secs:.1f} | {b.entries / max(secs, 1e-9):,.0f} |"
            for name, secs in b.verification.items()
        ),
    ]
    return "\n".join(lines)
