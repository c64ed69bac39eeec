"""`costwarden bench proxy` (part of `make bench`): what the PL/Proxy hop costs.

Two local PostgreSQL servers; partition 0 on the first, partition 1 on the second, the
proxy database on the first, and beside them a plain costwarden database on the first
server (one node, direct). pgbench runs the same saga pair (``workloads/saga_pair.sql``:
reserve, then commit) against the proxy and against the direct database, in the same
run:

1. latency per pair at 1 client: proxy vs direct; the difference is the hop's cost
   (two hops per pair: the reserve's and the commit's);
2. pairs/s at 8 clients through the proxy over the two nodes vs one node direct.

On a machine with 2 cores both servers, the proxy and pgbench share the same cores:
figure 2 measures the proxy's overhead, not a speed-up (docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from .. import cluster as cl
from ..client import Client
from ..embedded import EmbeddedCluster
from .common import Echo, PgBench, recreate_database, workloads_dir
from .saga import setup_costwarden

BENCH_DIR = Path(".costwarden/bench-proxy")


@dataclass(frozen=True)
class ProxyFigures:
    seconds: int
    orgs: int
    direct_ms_per_pair_1: float
    proxy_ms_per_pair_1: float
    hop_ms_per_pair: float
    direct_pairs_per_s_8: float
    proxy_pairs_per_s_8: float
    ratio_8: float


def _seed_through_proxy(proxy_dsn: str, orgs: int) -> None:
    with Client(proxy_dsn, on_unavailable="closed") as c:
        c.upsert_model("bench/model", platform_servable=True)
        c.set_pricing(
            "bench/model",
            {"input_tokens": Decimal("0.000003"), "output_tokens": Decimal("0.000015")},
            None,
        )
        for i in range(1, orgs + 1):
            org = f"org{i}"
            c.upsert_org(org)
            c.upsert_workspace(org, "ws", "bench/model")
            c.set_budget(org, "workspace", "ws", "day", 1_000_000_000_000)


def run_proxy_bench(
    *,
    base: Path = BENCH_DIR,
    seconds: int = 10,
    orgs: int = 200,
    echo: Echo = print,
) -> ProxyFigures:
    base = base.resolve()
    base.mkdir(parents=True, exist_ok=True)
    nodes = [EmbeddedCluster(base / f"node{i}" / "pgdata", fast=True) for i in range(2)]
    admin = [n.start() for n in nodes]
    try:
        echo(f"preparing: 2 partitions on 2 servers, a proxy, one direct node; {orgs} orgs ...")
        parts = [recreate_database(admin[i], f"cw_px_p{i}") for i in range(2)]
        proxy = recreate_database(admin[0], "cw_px_proxy")
        direct = recreate_database(admin[0], "cw_px_direct")
        config = cl.ClusterConfig("cwbench", tuple(parts))
        cl.install(proxy, config, schedule=False)
        _seed_through_proxy(proxy, orgs)
        setup_costwarden(direct, orgs)
        pgb = PgBench(nodes[0].bindir)
        script = workloads_dir() / "saga_pair.sql"
        defines = {"orgs": str(orgs)}

        def run(dsn: str, clients: int) -> tuple[float, float]:
            r = pgb.run(dsn, clients=clients, seconds=seconds, script=script, defines=defines)
            return r.tps, r.latency_ms

        echo(f"1/2 saga pairs at 1 client: direct, then through the proxy ({seconds} s each)")
        _, direct_1 = run(direct, 1)
        _, proxy_1 = run(proxy, 1)
        echo(f"  -> {direct_1:.3f} ms per pair direct, {proxy_1:.3f} ms through the proxy")
        echo("2/2 saga pairs at 8 clients: one node direct, then the proxy over two nodes")
        direct_8, _ = run(direct, 8)
        proxy_8, _ = run(proxy, 8)
        echo(f"  -> {direct_8:,.0f} pairs/s direct, {proxy_8:,.0f} pairs/s through the proxy")
        return ProxyFigures(
            seconds,
            orgs,
            direct_1,
            proxy_1,
            proxy_1 - direct_1,
            direct_8,
            proxy_8,
            proxy_8 / direct_8 if direct_8 else 0.0,
        )
    finally:
        for n in nodes:
            n.stop()


def markdown(f: ProxyFigures) -> str:
    return "\n".join(
        [
            "| figure | one node, direct | proxy over two nodes | |",
            "|---|---:|---:|---|",
            f"| ms per saga pair, 1 client | {f.direct_ms_per_pair_1:.3f} | "
            f"{f.proxy_ms_per_pair_1:.3f} | hop: +{f.hop_ms_per_pair:.3f} ms per pair "
            f"(2 hops) |",
            f"| pairs/s, 8 clients | {f.direct_pairs_per_s_8:,.0f} | "
            f"{f.proxy_pairs_per_s_8:,.0f} | ratio {f.ratio_8:.2f} |",
        ]
    )
