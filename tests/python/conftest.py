"""The shared test harness: one real PostgreSQL per session, one migrated template
database per session, a fresh clone of it per test.

- ``pg_server`` (session): an embedded cluster (``costwarden.embedded``, pg_cron
  preloaded, fsync off) in a fresh directory under /tmp, stopped at the end. Set
  ``COSTWARDEN_TEST_DSN`` to a superuser DSN to use a running server instead.
- ``costwarden_noproc`` (session): pytest-postgresql's no-process fixture on that
  server; its loader runs ``costwarden.migrate.migrate(schedule=False)`` once into the
  template database ``cw_template_tmpl``.
- ``db`` (per test): a psycopg connection to ``cw_template``, a fresh
  ``CREATE DATABASE ... TEMPLATE cw_template_tmpl`` clone, dropped after the test.
- ``dsn``, ``admin_conn``, ``client``, ``seeded``, ``expect_sqlstate``, ``run_as``,
  ``fresh_database``: conveniences on top.

No test fakes the database: everything runs against the real server.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_postgresql import factories

import costwarden
from costwarden import migrate as cw_migrate
from cwtest import (
    SEED_EFFECTIVE,
    SUPERUSER,
    PgServer,
    Seeded,
    expect_sqlstate,
    run_as,
    table_snapshot,
)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    external = os.environ.get("COSTWARDEN_TEST_DSN")
    if external:
        info = conninfo_to_dict(external)
        yield PgServer(
            host=str(info.get("host") or "localhost"),
            port=int(info.get("port") or 5432),
            user=str(info.get("user") or SUPERUSER),
            password=info.get("password"),  # type: ignore[arg-type]
            options="",
            dbname=str(info.get("dbname") or "postgres"),
        )
        return

    from costwarden.embedded import EmbeddedCluster

    base = Path(tempfile.mkdtemp(prefix="costwarden-test-"))
    base.chmod(0o755)  # the server runs as the postgres user when we are root
    cluster = EmbeddedCluster(base / "pgdata", fast=True)
    try:
        dsn = cluster.start()
        info = conninfo_to_dict(dsn)
        yield PgServer(
            host=str(info.get("host") or "localhost"),
            port=int(info["port"]),  # type: ignore[arg-type]
            user=str(info.get("user") or SUPERUSER),
            password=None,
            options="",
            dbname=str(info.get("dbname") or "postgres"),
            bindir=cluster.bindir,
        )
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def _migrate(
    host: str, port: int, user: str, dbname: str, password: str | None, **_kw: Any
) -> None:
    """pytest-postgresql loader: migrate the template database once per session."""
    dsn = make_conninfo(
        host=host,
        port=str(port),
        user=user,
        dbname=dbname,
        **({"password": password} if password else {}),
    )
    cw_migrate.migrate(dsn, schedule=False)


costwarden_noproc = factories.postgresql_noproc(
    depends_on="pg_server", dbname="cw_template", load=[_migrate]
)
db = factories.postgresql("costwarden_noproc")


# -- per-test conveniences ------------------------------------------------------------------


@pytest.fixture
def dsn(db: psycopg.Connection[Any]) -> str:
    """The DSN of this test's fresh database."""
    info = db.info
    return make_conninfo(
        host=info.host,
        port=str(info.port),
        user=info.user,
        dbname=info.dbname,
        **({"password": info.password} if info.password else {}),
    )


@pytest.fixture
def admin_conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit superuser connection to this test's database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def client(dsn: str) -> Iterator[costwarden.Client]:
    c = costwarden.Client(dsn)
    try:
        yield c
    finally:
        c.close()


_names = itertools.count()


@pytest.fixture
def fresh_database(pg_server: PgServer) -> Iterator[Callable[[], str]]:
    """A factory of empty databases (not cloned from the template); dropped after the test."""
    created: list[str] = []

    def make() -> str:
        name = f"cw_fresh_{os.getpid()}_{next(_names)}"
        with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        created.append(name)
        return pg_server.dsn(name)

    yield make
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        for name in created:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


@pytest.fixture(name="expect_sqlstate")
def expect_sqlstate_fixture() -> Callable[..., psycopg.Error]:
    """``expect_sqlstate(conn, "CW004", sql, params, role=..., match=...)``."""
    return expect_sqlstate


@pytest.fixture(name="run_as")
def run_as_fixture() -> Callable[..., list[tuple[Any, ...]]]:
    """``run_as(conn, "costwarden_tenant", sql, params)`` -> rows (rolled back)."""
    return run_as


# -- a seeded catalogue and tenancy ---------------------------------------------------------


@pytest.fixture
def seeded(client: costwarden.Client) -> Seeded:
    return seed(client)


@pytest.fixture
def seeded_factory() -> Callable[[str], Seeded]:
    """``seeded_factory(dsn)``: what ``seeded`` creates, in another database."""

    def make(dsn: str) -> Seeded:
        with costwarden.Client(dsn) as c:
            return seed(c)

    return make


def seed(client: costwarden.Client) -> Seeded:
    """The catalogue and tenancy of ``seeded``, created through ``client``."""
    prices = {
        "openai/gpt-4o": {
            "input_tokens": Decimal("0.0000025"),
            "cached_input_tokens": Decimal("0.00000125"),
            "output_tokens": Decimal("0.00001"),
        },
        "anthropic/claude-3-5-sonnet": {
            "input_tokens": Decimal("0.000003"),
            "output_tokens": Decimal("0.000015"),
        },
        "openai/gpt-4o-realtime": {
            "input_tokens": Decimal("0.000005"),
            "output_tokens": Decimal("0.00002"),
            "audio_seconds": Decimal("0.001"),
        },
    }
    client.upsert_model("openai/gpt-4o", platform_servable=True)
    client.upsert_model("anthropic/claude-3-5-sonnet", platform_servable=False)
    client.upsert_model("openai/gpt-4o-realtime", platform_servable=False)
    client.upsert_model("acme-labs/unpriced-1", platform_servable=True)
    snapshot_ids = {m: client.set_pricing(m, p, SEED_EFFECTIVE) for m, p in prices.items()}

    client.upsert_org("acme")
    client.upsert_org(
        "globex",
        {"credit_rate_usd": 0.001, "timezone": "Europe/Paris", "group_resolution": "max"},
    )
    client.upsert_workspace("acme", "ws-platform", model="openai/gpt-4o")
    client.upsert_workspace("acme", "ws-vendor", model="anthropic/claude-3-5-sonnet")
    client.upsert_workspace("acme", "ws-empty")
    client.upsert_workspace("globex", "ws-main", model="openai/gpt-4o")
    users = {"alice": ("eng",), "bob": ("eng", "ops")}
    for user, groups in users.items():
        client.upsert_user("acme", user, list(groups))
    client.upsert_key("acme", "key-1", workspace_id="ws-platform", user_id="alice")
    return Seeded(
        platform_model="openai/gpt-4o",
        vendor_model="anthropic/claude-3-5-sonnet",
        realtime_model="openai/gpt-4o-realtime",
        unpriced_model="acme-labs/unpriced-1",
        prices=prices,
        snapshot_ids=snapshot_ids,
        org="acme",
        other_org="globex",
        ws_platform="ws-platform",
        ws_vendor="ws-vendor",
        ws_empty="ws-empty",
        other_ws="ws-main",
        users=users,
        key="key-1",
    )


# -- schema introspection shared by several test modules -----------------------------------


@pytest.fixture(name="table_snapshot")
def table_snapshot_fixture() -> Callable[[psycopg.Connection[Any]], dict[str, Any]]:
    return table_snapshot
