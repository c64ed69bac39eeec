"""Helpers shared by the tests (the fixtures that use them live in conftest.py)."""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

SUPERUSER = "postgres"
#: The caller roles of SPEC §9.
ROLES = ("costwarden_admin", "costwarden_service", "costwarden_tenant")


@dataclass(frozen=True)
class PgServer:
    """Connection details of the session's server, in the shape pytest-postgresql's
    ``postgresql_noproc(depends_on=...)`` reads from its base fixture."""

    host: str
    port: int
    user: str
    password: str | None
    options: str
    dbname: str
    maintenance_dbname: str = "postgres"
    template_dbname: str | None = None
    bindir: Path | None = None

    def dsn(self, dbname: str | None = None) -> str:
        return make_conninfo(
            host=self.host,
            port=str(self.port),
            user=self.user,
            dbname=dbname or self.dbname,
            **({"password": self.password} if self.password else {}),
        )

    def binary(self, name: str) -> str:
        """A PostgreSQL client binary of the server's version (pg_dump, ...)."""
        if self.bindir is not None and (self.bindir / name).exists():
            return str(self.bindir / name)
        found = shutil.which(name)
        if found is None:
            pytest.skip(f"{name} not found")
        return found


# -- calling as a role, expecting a SQLSTATE ------------------------------------------------


def _set_role(conn: psycopg.Connection[Any], role: str | None) -> None:
    if role is not None:
        conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))


def run_as(
    conn: psycopg.Connection[Any],
    role: str | None,
    query: str | sql.Composable,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
) -> list[tuple[Any, ...]]:
    """Run ``query`` in its own transaction (or savepoint) as ``role``; return its rows.

    The transaction is rolled back: nothing the call writes survives.
    """
    with conn.transaction(force_rollback=True):
        _set_role(conn, role)
        cur = conn.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def expect_sqlstate(
    conn: psycopg.Connection[Any],
    sqlstate: str,
    query: str | sql.Composable,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    role: str | None = None,
    match: str | None = None,
) -> psycopg.Error:
    """Run ``query`` (as ``role``) and assert it fails with ``sqlstate``.

    ``match`` is a regular expression the primary message must contain. Returns the
    error; the transaction (or savepoint) is rolled back.
    """
    with pytest.raises(psycopg.Error) as info, conn.transaction():
        _set_role(conn, role)
        conn.execute(query, params)  # type: ignore[arg-type]
    err = info.value
    message = err.diag.message_primary or str(err)
    assert err.sqlstate == sqlstate, f"expected SQLSTATE {sqlstate}, got {err.sqlstate}: {message}"
    if match is not None:
        assert re.search(match, message), f"message {message!r} does not match {match!r}"
    return err


# -- what the seeded fixture creates -----

#: When the seeded pricing snapshots take effect: in the past, so they are in force.
SEED_EFFECTIVE = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Seeded:
    """What ``seeded`` created (all through the Client)."""

    platform_model: str  # platform-servable, priced
    vendor_model: str  # not platform-servable, priced
    realtime_model: str  # priced per token and per audio second
    unpriced_model: str  # in the catalogue, no pricing snapshot
    prices: Mapping[str, Mapping[str, Decimal]]
    snapshot_ids: Mapping[str, int]
    org: str  # default settings
    other_org: str  # credit_rate_usd 0.001, timezone Europe/Paris, group_resolution max
    ws_platform: str  # org's workspace on platform_model
    ws_vendor: str  # org's workspace on vendor_model
    ws_empty: str  # org's workspace without a model
    other_ws: str  # other_org's workspace on platform_model
    users: Mapping[str, tuple[str, ...]]  # org's users and their groups
    key: str  # org's key, bound to ws_platform and the first user


# -- introspection -----


def table_snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table in schema costwarden, to prove a failed call wrote nothing."""
    tables = conn.execute(
        "select c.relname from pg_class c "
        "where c.relnamespace = 'costwarden'::regnamespace and c.relkind in ('r', 'p') "
        "order by 1"
    ).fetchall()
    out: dict[str, list[tuple[Any, ...]]] = {}
    for (name,) in tables:
        rows = conn.execute(
            sql.SQL("select t::text from costwarden.{} as t order by 1").format(
                sql.Identifier(name)
            )
        ).fetchall()
        out[name] = rows
    return out


# -- notifications, read up to a marker -----


def notifications_until_marker(
    listener: psycopg.Connection[Any],
    sender: psycopg.Connection[Any],
    channel: str,
    *,
    timeout: float = 60.0,
) -> list[psycopg.Notify]:
    """Every notification on ``channel`` that ``listener`` (LISTENing on it) receives
    before a marker that ``sender`` sends now, on that channel, in a transaction of its own.

    PostgreSQL delivers notifications in the order their transactions committed, so the
    result holds exactly what was committed before the call, whatever the machine's load:
    an empty list is a definite "nothing was sent". ``sender`` may be the session that did
    the work (its transaction must have ended) or any other session. ``timeout`` only
    bounds the wait for the marker; reaching it fails the test.
    """
    assert sender.info.transaction_status == psycopg.pq.TransactionStatus.IDLE, (
        "the sender's transaction must have ended before the marker is sent"
    )
    marker = f"cwtest-marker:{uuid.uuid4()}"
    with sender.transaction():
        sender.execute("select pg_notify(%s, %s)", (channel, marker))
    received: list[psycopg.Notify] = []
    for note in listener.notifies(timeout=timeout):
        if note.channel == channel and note.payload == marker:
            return received
        received.append(note)
    raise AssertionError(f"the marker on {channel} did not arrive within {timeout} s")
