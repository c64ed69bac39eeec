"""The minimal design with the contract's features added one at a time, beside TPC-B.

A measuring aid for docs/performance.md ("The minimal design, measured in every run"):
where between the bench's minimal design (python/costwarden/bench/minimal_design.sql: a
correct two-limit reserve + commit and nothing else) and the saga the pairs' speed goes.
Sets up two scratch databases as `costwarden bench` does (TPC-B scale 10; costwarden with
1,000 orgs and the minimal design), adds tools/minimal_ladder.sql, then runs in each
round TPC-B and, against it, each rung's pair: at 8 clients (pairs/s ÷ TPC-B tps) and at
1 client (pair latency ÷ TPC-B's). Prints every round's ratios and their medians.

    .venv/bin/python tools/minimal_ladder.py --dsn postgresql://postgres@localhost:PORT/postgres \\
        [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

import psycopg

from costwarden.bench.common import PgBench, scratch_database, workloads_dir
from costwarden.bench.saga import setup_costwarden

USAGE = '{"input_tokens": 400, "output_tokens": 200}'
COMMIT_USAGE = '{"input_tokens": 400, "output_tokens": 120}'


def pair(reserve: str, commit: str) -> str:
    """A pgbench script: reserve on a random org of :orgs, then commit (two transactions)."""
    return (
        f"\\set org random(1, :orgs)\nselect {reserve} as reservation_id \\gset\nselect {commit};\n"
    )


#: The rungs, in order: (name, pgbench script text or a bench workload's file name).
RUNGS: list[tuple[str, str]] = [
    ("minimal design", "minimal_pair.sql"),
    (
        "+ hash-chained ledger",
        pair(
            "bench_minimal.reserve(:org, 4200)",
            "bench_minimal.commit_ledger((:reservation_id)::uuid, 3000)",
        ),
    ),
    (
        "+ pricing (reserve and commit)",
        pair(
            f"bench_minimal.reserve_priced(:org, '{USAGE}')",
            f"bench_minimal.commit_priced((:reservation_id)::uuid, '{COMMIT_USAGE}')",
        ),
    ),
    (
        "+ idempotency (fingerprint, unique key)",
        pair(
            f"bench_minimal.reserve_idempotent(:org, '{USAGE}')",
            f"bench_minimal.commit_priced((:reservation_id)::uuid, '{COMMIT_USAGE}')",
        ),
    ),
    ("costwarden saga", "saga_pair.sql"),
]


LADDER_SQL = Path(__file__).parent / "minimal_ladder.sql"


def rung_scripts(tmp: Path) -> list[Path]:
    """Each rung's pgbench script (in the order of RUNGS), those of text written to ``tmp``."""
    scripts = []
    for i, (_name, body) in enumerate(RUNGS):
        if body.endswith(".sql"):
            scripts.append(workloads_dir() / body)
        else:
            scripts.append(tmp / f"rung{i}.sql")
            scripts[-1].write_text(body)
    return scripts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", required=True, help="admin DSN of the server to measure")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--orgs", type=int, default=1000)
    args = ap.parse_args()
    pgb = PgBench()
    with ExitStack() as stack:
        tpcb = stack.enter_context(scratch_database(args.dsn, "costwarden_ladder_tpcb"))
        cw = stack.enter_context(scratch_database(args.dsn, "costwarden_ladder"))
        print("preparing databases ...", flush=True)
        pgb.init(tpcb, 10)
        setup_costwarden(cw, args.orgs)
        with psycopg.connect(cw, autocommit=True) as conn:
            conn.execute(LADDER_SQL.read_text())
            conn.execute("vacuum analyze")
        scripts = rung_scripts(Path(stack.enter_context(tempfile.TemporaryDirectory())))
        defines = {"orgs": str(args.orgs)}
        figures = ((8, "pairs/s ÷ TPC-B tps, 8 clients"), (1, "latency ÷ TPC-B's, 1 client"))
        for clients, what in figures:
            ratios: list[list[float]] = [[] for _ in RUNGS]
            for r in range(args.rounds):
                base = pgb.run(tpcb, clients=clients, seconds=args.seconds, builtin="tpcb-like")
                line = [f"round {r + 1}: TPC-B {base.tps:,.0f} tps, {base.latency_ms:.3f} ms"]
                for i, script in enumerate(scripts):
                    res = pgb.run(
                        cw, clients=clients, seconds=args.seconds, script=script, defines=defines
                    )
                    ratio = res.tps / base.tps if clients > 1 else res.latency_ms / base.latency_ms
                    ratios[i].append(ratio)
                    line.append(f"{RUNGS[i][0]} {ratio:.2f}")
                print("; ".join(line), flush=True)
            print(f"{what}, median of {args.rounds} rounds of {args.seconds} s:")
            for (name, _), rs in zip(RUNGS, ratios, strict=True):
                each = " ".join(f"{x:.2f}" for x in rs)
                print(f"  {name:<42} {statistics.median(rs):.2f}  ({each})")


if __name__ == "__main__":
    main()
