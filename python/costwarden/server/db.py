"""The database side of `costwarden serve`: one pool logged in as a member of
``costwarden_authenticator``, and per request one transaction that takes the
token's role and claims, then runs one costwarden function (the PostgREST
convention, SPEC §12/§13)::

    BEGIN;
    SELECT set_config('role', <claim role>, true),            -- SET LOCAL ROLE
           set_config('request.jwt.claims', <claims>, true);  -- the actor (§9, §12)
    SELECT * FROM costwarden.fn_...(p_... => ...);            -- a costwarden._sql Call
    COMMIT;                                                   -- (implicit)

sent as one simple-protocol query (one round trip, one implicit transaction) when
nothing has to be staged; a call that sends a secret first (BYOK key put) runs in an
explicit transaction with the COPY in between. The
statements are the :mod:`costwarden._sql` calls the Python clients run: no rule is
re-implemented here. Errors leave as the exceptions of :mod:`costwarden.errors`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
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
            kwargs={"autocommit": True},
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
        identity_params = {"cw_role": identity.role, "cw_claims": identity.claims_json()}
        staged = self._secrets._staged(call)
        with wrap_errors():
            async with self._connection() as conn:
                if staged:
                    rows = await self._run_staged(conn, identity_params, staged, call)
                else:
                    # one simple-protocol message: the two statements are one implicit
                    # transaction, so set_config(..., true) holds for the call and no
                    # longer; parameters are bound client-side (ClientCursor).
                    async with psycopg.AsyncClientCursor(conn, row_factory=dict_row) as cur:
                        await cur.execute(
                            f"{SET_IDENTITY}; {call.sql}", {**call.params, **identity_params}
                        )
                        cur.nextset()
                        rows = await cur.fetchall()
        return call.parse(rows)

    async def _run_staged(
        self,
        conn: psycopg.AsyncConnection[Any],
        identity_params: dict[str, str],
        staged: dict[str, str],
        call: q.Call[Any],
    ) -> list[dict[str, Any]]:
        """A call with secrets sent first through COPY: an explicit transaction."""
        async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(SET_IDENTITY, identity_params)
            async with cur.copy(q.STAGE_SECRETS) as copy:
                for name, value in staged.items():
                    await copy.write_row((q.stage_line(name, value),))
            await cur.execute(call.sql, call.params)
            return await cur.fetchall()

    async def run_as_service(self, call: q.Call[R]) -> R:
        """``call`` under costwarden_service without claims (health checks)."""
        identity = Identity(role="costwarden_service", org_id=None, sub=None, claims={})
        return await self.run(identity, call)
