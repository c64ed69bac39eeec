"""Two local PostgreSQL servers for the PL/Proxy tests (docs/scale-out.md).

``proxy_servers`` (session): two embedded clusters (fast, pg_cron preloaded) on their own
ports under /tmp, stopped at the end, with ``log_statement = 'all'`` so that a test can
look for secrets in their logs. ``make_cluster(name, partitions)`` creates partition
databases alternately on the two servers, a proxy database on the first, and installs
the proxy layer with ``costwarden.cluster.install`` -- exactly what
``costwarden --dsn PROXY migrate --proxy CLUSTER.toml`` runs.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

import costwarden
from costwarden import cluster as cl
from costwarden.embedded import EmbeddedCluster

PRICES = {"input_tokens": Decimal("0.000003"), "output_tokens": Decimal("0.000015")}
MODEL = "openai/gpt-4o"
BYOK_MODEL = "anthropic/claude-3-5-sonnet"


@dataclass
class Servers:
    clusters: list[EmbeddedCluster]
    dsns: list[str]  # superuser DSN of database postgres on each server
    base: Path

    def dsn(self, server: int, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(self.dsns[server], dbname=dbname)

    def create_database(self, server: int, name: str) -> str:
        with psycopg.connect(self.dsns[server], autocommit=True) as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        return self.dsn(server, name)

    def logs(self) -> str:
        text = []
        for c in self.clusters:
            for path in (c.data_dir / "log").glob("*"):
                text.append(path.read_text(encoding="utf-8", errors="replace"))
        return "\n".join(text)


@dataclass
class Cluster:
    servers: Servers
    config: cl.ClusterConfig
    proxy_dsn: str
    #: partition index -> server index
    placement: list[int]
    orgs: dict[int, list[str]] = field(default_factory=dict)  # partition -> orgs created

    def partition_dsn(self, index: int) -> str:
        return self.config.partitions[index]

    def client(self) -> costwarden.Client:
        return costwarden.Client(self.proxy_dsn)


def org_partition(conn: psycopg.Connection[tuple[object, ...]], org: str, partitions: int) -> int:
    row = conn.execute("select hashtext(%s)", (org,)).fetchone()
    assert row is not None
    return cl.partition_of(int(row[0]), partitions)


def orgs_by_partition(
    conn: psycopg.Connection[tuple[object, ...]], prefix: str, partitions: int, per: int
) -> dict[int, list[str]]:
    """``per`` org names for each partition, found by hashing candidates."""
    found: dict[int, list[str]] = {p: [] for p in range(partitions)}
    i = 0
    while any(len(v) < per for v in found.values()):
        name = f"{prefix}{i}"
        p = org_partition(conn, name, partitions)
        if len(found[p]) < per:
            found[p].append(name)
        i += 1
    return found


@pytest.fixture(scope="session")
def proxy_servers() -> Iterator[Servers]:
    base = Path(tempfile.mkdtemp(prefix="costwarden-proxy-"))
    base.chmod(0o755)
    clusters = [EmbeddedCluster(base / f"node{i}" / "pgdata", fast=True) for i in range(2)]
    try:
        dsns = []
        for c in clusters:
            c.data_dir.parent.mkdir(parents=True, exist_ok=True)
            c.data_dir.parent.chmod(0o755)
            dsn = c.start()
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("alter system set log_statement = 'all'")
                conn.execute("select pg_reload_conf()")
            dsns.append(dsn)
        yield Servers(clusters, dsns, base)
    finally:
        for c in clusters:
            with contextlib.suppress(Exception):  # a node a test stopped stays stopped
                c.stop()
        shutil.rmtree(base, ignore_errors=True)


def make_cluster(servers: Servers, name: str, partitions: int) -> Cluster:
    placement = [i % 2 for i in range(partitions)]
    dsns = [servers.create_database(placement[i], f"{name}_p{i}") for i in range(partitions)]
    proxy = servers.create_database(0, f"{name}_proxy")
    config = cl.ClusterConfig(name, tuple(dsns))
    cl.install(proxy, config, schedule=True)
    return Cluster(servers, config, proxy, placement)


def seed_catalogue(client: costwarden.Client) -> None:
    client.upsert_model(MODEL, platform_servable=True)
    client.upsert_model(BYOK_MODEL, platform_servable=False)
    client.set_pricing(MODEL, PRICES, None)
    client.set_pricing(BYOK_MODEL, PRICES, None)


def seed_org(client: costwarden.Client, org: str) -> None:
    client.upsert_org(org)
    client.upsert_workspace(org, "ws", MODEL)
    client.upsert_user(org, "alice")
    client.upsert_user(org, "bob")


Factory = Callable[[str, int], Cluster]
