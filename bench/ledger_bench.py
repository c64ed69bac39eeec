#!/usr/bin/env python3
"""The ledger's costs, measured (docs/ledger.md, "Performance").

    python bench/ledger_bench.py --dsn postgresql://postgres@localhost:5432/postgres

The DSN names a server and a role that may CREATE DATABASE; everything runs in a
scratch database (costwarden_ledger_bench, dropped at the end unless --keep).

1. Commit latency with the chain vs without it, in the same run: the same
   reserve + commit, once with the real _ledger_append and once with a stub of
   the same signature that appends nothing (swapped in and out in alternating
   rounds, so drift on a shared machine hits both alike). Only the commit is timed.
2. Append throughput at --clients clients (pgbench, custom scripts): raw
   _ledger_append and fn_ledger_adjust spread over --orgs orgs, and raw
   _ledger_append on a single org (all appends serialised on one head).
3. Verification speed on --entries entries in one chain: generated set-based in
   SQL first (a recursive CTE computes the chain; not timed), then timed:
   fn_ledger_verify (SQL), the Python verifier reading from the database, and the
   Python verifier reading a JSON Lines export file.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

from costwarden import ledger
from costwarden import migrate as migrations
from costwarden.benchmark import generate_chain
from costwarden.client import Client

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

APPEND = (
    "select costwarden._ledger_append(p_org_id => {org}, p_entry_type => 'charge', "
    "p_amount_micros => 1);\n"
)
ADJUST = (
    "select * from costwarden.fn_ledger_adjust(p_org_id => {org}, p_workspace_id => 'ws', "
    "p_amount_micros => 1, p_reason => 'bench');\n"
)
RANDOM_ORG = "\\set org random(1, {orgs})\n"
APPEND_MANY = RANDOM_ORG + APPEND.format(org="'org-' || :org")
ADJUST_MANY = RANDOM_ORG + ADJUST.format(org="'org-' || :org")
APPEND_ONE = APPEND.format(org="'org-1'")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextmanager
def scratch_database(dsn: str, keep: bool) -> Iterator[str]:
    info = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(BENCH_DB))
        )
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(BENCH_DB)))
    bench_dsn = make_conninfo(**{**info, "dbname": BENCH_DB})
    try:
        yield bench_dsn
    finally:
        if not keep:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("drop database if exists {} with (force)").format(
                        sql.Identifier(BENCH_DB)
                    )
                )


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


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def commit_latency(dsn: str, commits: int, rounds: int = 4) -> dict[str, dict[str, float]]:
    """Median / p95 / mean commit latency (ms), with and without the chain."""
    timings: dict[str, list[float]] = {"with chain": [], "without chain": []}
    per_round = max(1, commits // rounds)
    with psycopg.connect(dsn, autocommit=True) as conn:
        (real,) = conn.execute(
            "select pg_get_functiondef('costwarden._ledger_append'::regproc)"
        ).fetchone()  # type: ignore[misc]
        reserve = (
            "select reservation_id from costwarden.fn_cost_reserve(p_org_id => 'bench', "
            "p_workspace_id => 'ws', p_model => %s, p_usage => %s::jsonb)"
        )
        commit = (
            "select * from costwarden.fn_cost_commit(p_reservation_id => %s, p_usage => %s::jsonb)"
        )
        try:
            for r in range(rounds):
                for variant in ("with chain", "without chain"):
                    conn.execute(real if variant == "with chain" else STUB_APPEND)
                    ids = [
                        conn.execute(reserve, (MODEL, USAGE), prepare=True).fetchone()[0]  # type: ignore[index]
                        for _ in range(per_round)
                    ]
                    for rid in ids:
                        t0 = time.perf_counter()
                        conn.execute(commit, (rid, COMMIT_USAGE), prepare=True).fetchall()
                        timings[variant].append((time.perf_counter() - t0) * 1000)
                say(f"  commit latency: round {r + 1}/{rounds}")
        finally:
            conn.execute(real)
    return {
        k: {
            "p50": statistics.median(v),
            "p95": _pct(v, 0.95),
            "mean": statistics.fmean(v),
            "n": len(v),
        }
        for k, v in timings.items()
    }


def pgbench(dsn: str, script: str, clients: int, seconds: int) -> tuple[float, float]:
    """(tps, mean latency ms) of one pgbench run of ``script``."""
    binary = shutil.which("pgbench")
    if binary is None:
        raise SystemExit("pgbench not found (Debian: postgresql-client-15)")
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        out = subprocess.run(
            [binary, "-n", "-f", path, "-c", str(clients),
             "-j", str(min(clients, os.cpu_count() or 1)),
             "-T", str(seconds), "-M", "prepared", dsn],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    finally:
        os.unlink(path)
    if out.returncode != 0:
        raise SystemExit(f"pgbench failed:\n{out.stderr[-2000:]}")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout)
    lat = re.search(r"latency average = ([\d.]+) ms", out.stdout)
    if tps is None or lat is None:
        raise SystemExit(f"cannot read pgbench's output:\n{out.stdout}")
    return float(tps.group(1)), float(lat.group(1))


def verify_speed(dsn: str, org: str, entries: int, tmp: Path) -> dict[str, float]:
    """Seconds per verifier on ``org``'s chain (all of them must find it intact)."""
    out: dict[str, float] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.monotonic()
        (ok, n) = conn.execute(
            "select ok, entries from costwarden.fn_ledger_verify(p_org_id => %s)", (org,)
        ).fetchone()  # type: ignore[misc]
        out["fn_ledger_verify (SQL)"] = time.monotonic() - t0
        assert ok and n == entries, (ok, n)
    with Client(dsn, pool_size=1) as client:
        t0 = time.monotonic()
        report = ledger.verify_database(client, org_id=org)
        out["Python, reading the database"] = time.monotonic() - t0
        assert report.ok and report.rows == entries
        path = tmp / "ledger.jsonl"
        t0 = time.monotonic()
        with path.open("w", encoding="utf-8") as f:
            ledger.export(client, f, org)
        out["export to JSON Lines (for reference)"] = time.monotonic() - t0
    t0 = time.monotonic()
    report = ledger.verify_export_file(path)
    out["Python, reading an export file"] = time.monotonic() - t0
    assert report.ok and report.rows == entries
    return out


def server_facts(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        settings = dict(
            conn.execute(
                "select name, setting from pg_settings where name in "
                "('server_version', 'fsync', 'synchronous_commit', 'shared_buffers', 'jit')"
            ).fetchall()
        )
    return (
        f"PostgreSQL {settings['server_version']}, fsync={settings['fsync']}, "
        f"synchronous_commit={settings['synchronous_commit']}, jit={settings['jit']}; "
        f"{os.cpu_count()} CPU(s), Python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dsn", required=True, help="a server and a role that may CREATE DATABASE")
    p.add_argument("--entries", type=int, default=1_000_000, help="chain length for figure 3")
    p.add_argument("--commits", type=int, default=2000, help="commits timed per variant (figure 1)")
    p.add_argument("--clients", type=int, default=8, help="pgbench clients (figure 2)")
    p.add_argument("--seconds", type=int, default=10, help="pgbench duration per run (figure 2)")
    p.add_argument("--orgs", type=int, default=1000, help="orgs the appends spread over (figure 2)")
    p.add_argument("--keep", action="store_true", help=f"keep the scratch database {BENCH_DB}")
    args = p.parse_args(argv)

    with scratch_database(args.dsn, args.keep) as dsn, tempfile.TemporaryDirectory() as tmp:
        facts = server_facts(dsn)
        say(f"setting up {BENCH_DB} ({facts})")
        setup(dsn, args.orgs)

        say("1/3 commit latency with and without the chain")
        lat = commit_latency(dsn, args.commits)

        say(f"2/3 append throughput at {args.clients} clients ({args.seconds} s per run)")
        runs = {
            f"_ledger_append, {args.orgs} orgs": APPEND_MANY.format(orgs=args.orgs),
            f"fn_ledger_adjust, {args.orgs} orgs": ADJUST_MANY.format(orgs=args.orgs),
            "_ledger_append, 1 org": APPEND_ONE,
        }
        tput = {}
        for name, script in runs.items():
            tput[name] = pgbench(dsn, script, args.clients, args.seconds)
            say(f"  {name}: {tput[name][0]:,.0f} tps")

        say(f"3/3 verification speed on {args.entries:,} entries (generation is not timed)")
        gen = generate_chain(dsn, "big", args.entries)
        speed = verify_speed(dsn, "big", args.entries, Path(tmp))

    w = "without chain"
    print(f"## Ledger benchmark\n\n{facts}\n")
    print("| commit latency (client side) | p50 ms | p95 ms | mean ms | commits |")
    print("|---|---:|---:|---:|---:|")
    for k, v in lat.items():
        print(f"| {k} | {v['p50']:.3f} | {v['p95']:.3f} | {v['mean']:.3f} | {v['n']:.0f} |")
    extra = lat["with chain"]["p50"] - lat[w]["p50"]
    print(f"\nThe chain adds {extra:.3f} ms to a commit's median "
          f"({100 * extra / lat[w]['p50']:+.0f} %).\n")  # fmt: skip
    print(
        f"| append throughput, {args.clients} clients, {args.seconds} s | tps | mean latency ms |"
    )
    print("|---|---:|---:|")
    for name, (tps, ms) in tput.items():
        print(f"| {name} | {tps:,.0f} | {ms:.2f} |")
    print(
        f"\nGenerating the {args.entries:,}-entry chain in SQL took {gen:.0f} s "
        "(not timed below).\n"
    )
    print(f"| verification of {args.entries:,} entries | seconds | entries/s |")
    print("|---|---:|---:|")
    for name, secs in speed.items():
        print(f"| {name} | {secs:.1f} | {args.entries / secs:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
