"""What the sync and the async client share beyond their SQL (:mod:`costwarden._sql`):
the actor and KEK they send, how rows decode, the pool defaults. No I/O here."""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import set_json_loads

from . import _sql as q
from .errors import READINESS_WARNING_SQLSTATE, ReadinessWarning

_DECODER = json.JSONDecoder(parse_float=Decimal)


def exact_loads(data: str | bytes) -> Any:
    """JSON numbers with a fraction load as Decimal: prices and usage stay exact."""
    return _DECODER.decode(data.decode() if isinstance(data, bytes) else data)


def exact_json_connection(conn: psycopg.Connection[Any]) -> None:
    """The ``configure`` of a pool the client owns: its connections read JSON exactly
    (:func:`exact_loads`) once, instead of each call's cursor setting it. A connection or
    pool the caller passes in keeps its own loaders: the client sets them per cursor."""
    set_json_loads(exact_loads, conn)


async def exact_json_connection_async(conn: psycopg.AsyncConnection[Any]) -> None:
    """:func:`exact_json_connection` for an async pool."""
    set_json_loads(exact_loads, conn)


#: What PL/Proxy puts before a partition's notice it passes on (docs/scale-out.md):
#: ``costwarden_remote.fn_x(5): [partition_1] REMOTE WARNING: ``.
_REMOTE_NOTICE = re.compile(r"^\S+\(\d+\): \[[^\]]*\] REMOTE [A-Z]+:\s*")


def local_message(message: str) -> str:
    """A server notice's text as a single node says it (a partition's, reached through
    the PL/Proxy proxy, without the proxy's prefix)."""
    return _REMOTE_NOTICE.sub("", message, count=1)


class ServerWarnings:
    """Collects the costwarden warnings a call's server sends (a WARNING with SQLSTATE
    01CW0: a workspace left unable to reserve) and re-issues each, once the call
    succeeded, as a Python :class:`~costwarden.errors.ReadinessWarning`."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __call__(self, diag: psycopg.errors.Diagnostic) -> None:
        if diag.sqlstate == READINESS_WARNING_SQLSTATE and diag.message_primary:
            self.messages.append(local_message(diag.message_primary))

    @contextmanager
    def listening(
        self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]
    ) -> Iterator[None]:
        conn.add_notice_handler(self)
        try:
            yield
        finally:
            conn.remove_notice_handler(self)

    def emit(self) -> None:
        for message in self.messages:
            warnings.warn(ReadinessWarning(message), stacklevel=4)


def default_timeout(on_unavailable: str) -> float:
    """Seconds to wait for a pooled connection: a call on a database that is gone
    raises DatabaseUnavailable (or goes to the spool) within this."""
    return 5.0


#: psycopg_pool's ``reconnect_timeout`` of a client's own pool: how long the pool keeps
#: retrying a connection it failed to make (with its exponential backoff: 1 s, 2 s, 4 s,
#: ...) before it gives that connection up. Short, so that the pool never sits out a
#: long backoff after an outage: a connection it gave up is made again, at once, by the
#: next call that needs one (an empty pool grows on demand), and the probe of an 'open'
#: client has the pool reconnect as soon as the database answers (AsyncClient._reconnect).
RECONNECT_TIMEOUT = 1.0


#: psycopg's ``prepare_threshold`` of a client's own connections: None, no server-side
#: prepared statements (SPEC §12). psycopg's default (5: prepare a statement after its
#: fifth run on a connection) breaks behind a pooler in transaction mode, whose
#: transactions land on any server connection: a statement prepared on one is missing
#: on the next, or its name is another client's statement there. What it would save a
#: reserve + commit pair on a direct connection is measured in docs/python.md#poolers;
#: a caller opts in with ``connect_kwargs={"prepare_threshold": 5}``.
PREPARE_THRESHOLD: int | None = None


def connection_kwargs(
    connect_timeout: float,
    statement_timeout: float | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of a client's own connections: the caller's
    ``connect_kwargs``, then autocommit, libpq's ``connect_timeout`` (whole seconds, at
    least 2, as libpq counts them; the caller's wins), ``prepare_threshold`` (the
    caller's wins: :data:`PREPARE_THRESHOLD`) and the ``statement_timeout`` of every
    statement, set at connection start (no round trip; added to the caller's
    ``options``)."""
    kwargs: dict[str, Any] = {
        "connect_timeout": max(2, math.ceil(connect_timeout)),
        "prepare_threshold": PREPARE_THRESHOLD,
        **(extra or {}),
        "autocommit": True,
    }
    if statement_timeout is not None:
        options = f"-c statement_timeout={_millis(statement_timeout)}"
        kwargs["options"] = f"{kwargs['options']} {options}" if kwargs.get("options") else options
    return kwargs


def _millis(seconds: float) -> int:
    if seconds <= 0:
        raise ValueError(f"statement_timeout must be positive seconds, got {seconds!r}")
    return max(1, round(seconds * 1000))


class ClientBase:
    """The caller's identity and KEK, set per transaction by both clients."""

    def __init__(
        self,
        *,
        actor_org: str | None = None,
        actor_user: str | None = None,
        kek: str | None = None,
        statement_timeout: float | None = None,
        owns_connections: bool = False,
    ) -> None:
        self.statement_timeout = statement_timeout
        # on connections the client did not open, the timeout is set per call
        self._sets_timeout = statement_timeout is not None and not owns_connections
        self._timeout_setting = {
            "ms": str(_millis(statement_timeout)) if statement_timeout is not None else ""
        }
        self.actor_org = actor_org
        self.actor_user = actor_user
        self.kek = kek if kek is not None else os.environ.get("COSTWARDEN_KEK") or None

    @property
    def _needs_context(self) -> bool:
        return bool(self.actor_org or self.actor_user)

    @property
    def _context(self) -> dict[str, Any]:
        # §5: the KEK is not part of the context: _staged sends it, unlogged, only
        # with the calls that need it.
        return {"actor_org": self.actor_org, "actor_user": self.actor_user}

    def _staged(self, call: q.Call[Any]) -> dict[str, str]:
        """§5: the values to send through COPY costwarden.secret_input before ``call``."""
        staged = dict(call.staged)
        if call.needs_kek and self.kek:
            staged["kek"] = self.kek
        return staged

    def _needs_transaction(self, call: q.Call[Any]) -> bool:
        """One call is one statement: on an autocommit connection it is its own
        transaction (no BEGIN/COMMIT round trips), unless context (actor, staged
        values) must be set for it first."""
        return self._needs_context or self._sets_timeout or bool(self._staged(call))
