"""The database side of `costwarden serve`: one pool logged in as a member of
``costwarden_authenticator``, and per request one transaction that takes the
token's role and claims, then runs one costwarden function (the PostgREST
convention, SPEC §12/§13), or a write and its read-back (``run_then``: a budget
change and the scope's status after it)::

    BEGIN;
    SELECT set_config('role', <claim role>, true),            -- SET LOCAL ROLE
           set_config('request.jwt.claims', <claims>, true);  -- the actor (§9, §12)
    SELECT * FROM costwarden.fn_...(p_... => ...);            -- a costwarden._sql Call
    COMMIT;                                                   -- (implicit)

sent as one simple-protocol query (one round trip, one implicit transaction) when
nothing has to be staged; a call that sends a secret first (BYOK key put) runs in an
explicit transaction with the COPY in between. No statement is prepared on the server
(``prepare_threshold`` None): the service works through a pooler in transaction mode. The
statements are the :mod:`costwarden._sql` calls the Python clients run: no rule is
re-implemented here. Errors leave as the exceptions of :mod:`costwarden.errors`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from .. import _sql as q
from .._client_core import ClientBase, exact_loads
from ..errors import DatabaseUnavailable, is_unavailable, wrap_errors
from .auth import Identity
from .config import ServerConfig

R = TypeVar("R")

SET_IDENTITY = (
    "select set_config('role', %(cw_role)s, true), "
    "set_config('request.jwt.claims', %(cw_claims)s, true)"
)


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    """Once per pooled connection: JSON results load with exact numbers (Decimal)."""
    set_json_loads(exact_loads, conn)


class Database:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._secrets = ClientBase(kek=config.kek or "")
        self.pool = AsyncConnectionPool(
            config.dsn,
            min_size=config.pool_min,
            max_size=config.pool_max,
            timeout=config.pool_timeout,
            open=False,
            name="costwarden-serve",
            # no server-side prepared statements (SPEC §12: behind a pooler in
            # transaction mode too); most calls are client-side bound anyway
            kwargs={"autocommit": True, "prepare_threshold": None},
            configure=_configure,
        )

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        try:
            async with self.pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            if is_unavailable(exc):
                raise DatabaseUnavailable(str(exc)) from exc
            raise
        except Exception as exc:  # psycopg_pool.PoolTimeout: no connection to be had
            if is_unavailable(exc) or type(exc).__name__ == "PoolTimeout":
                raise DatabaseUnavailable(str(exc)) from exc
            raise

    async def run(self, identity: Identity, call: q.Call[R]) -> R:
        """Run ``call`` as ``identity``, in its own transaction."""
        [rows] = await self._rows(identity, (call,))
        return call.parse(rows)

    async def run_then(self, identity: Identity, first: q.Call[Any], then: q.Call[R]) -> R:
        """Run ``first``, then ``then``, as ``identity`` in one transaction (one round
        trip when nothing is staged): a write and its read-back, so that a refused read
        never follows a committed write (the write rolls back with it) and the read sees
        the write and nothing committed after it. Returns what ``then`` returns."""
        first_rows, then_rows = await self._rows(identity, (first, then))
        first.parse(first_rows)
        return then.parse(then_rows)

    async def _rows(
        self, identity: Identity, calls: Sequence[q.Call[Any]]
    ) -> list[list[dict[str, Any]]]:
        """The rows of each of ``calls``, run in order in one transaction."""
        identity_params = {"cw_role": identity.role, "cw_claims": identity.claims_json()}
        staged: dict[str, str] = {}
        for call in calls:
            staged.update(self._secrets._staged(call))
        with wrap_errors():
            async with self._connection() as conn:
                if staged:
                    return await self._run_staged(conn, identity_params, staged, calls)
                # one simple-protocol message: its statements are one implicit
                # transaction, so set_config(..., true) holds for the calls and no
                # longer, and an error in any statement rolls back every one;
                # parameters are bound client-side (ClientCursor), each statement's own.
                async with psycopg.AsyncClientCursor(conn, row_factory=dict_row) as cur:
                    statements = [cur.mogrify(SET_IDENTITY, identity_params)]
                    statements += [cur.mogrify(call.sql, call.params) for call in calls]
                    await cur.execute("; ".join(statements))
                    results = []
                    for _call in calls:
                        cur.nextset()
                        results.append(await cur.fetchall())
                    return results

    async def _run_staged(
        self,
        conn: psycopg.AsyncConnection[Any],
        identity_params: dict[str, str],
        staged: dict[str, str],
        calls: Sequence[q.Call[Any]],
    ) -> list[list[dict[str, Any]]]:
        """Calls with secrets sent first through COPY: an explicit transaction."""
        async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(SET_IDENTITY, identity_params)
            async with cur.copy(q.STAGE_SECRETS) as copy:
                for name, value in staged.items():
                    await copy.write_row((q.stage_line(name, value),))
            results = []
            for call in calls:
                await cur.execute(call.sql, call.params)
                results.append(await cur.fetchall())
            return results

    async def run_as_service(self, call: q.Call[R]) -> R:
        """``call`` under costwarden_service without claims (health checks)."""
        identity = Identity(role="costwarden_service", org_id=None, sub=None, claims={})
        return await self.run(identity, call)
