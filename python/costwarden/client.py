"""Sync and async clients: one method per costwarden function.

Both clients share the statements and result types of :mod:`costwarden._sql`;
only the I/O differs. Each call runs in its own transaction; the actor
(``costwarden.actor_org`` / ``costwarden.actor_user``) and the BYOK
key-encryption key (``costwarden.kek``, read from ``COSTWARDEN_KEK``) are set
for that transaction only, with ``set_config(..., true)``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from . import _sql as q
from . import types as t
from .errors import BudgetExceeded, wrap_errors

R = TypeVar("R")


def _exact_loads(data: str | bytes) -> Any:
    """JSON numbers with a fraction load as Decimal: prices and usage stay exact."""
    return json.loads(data, parse_float=Decimal)


def _context_params(actor_org: str | None, actor_user: str | None, kek: str | None) -> dict[str, Any]:
    return {"actor_org": actor_org, "actor_user": actor_user, "kek": kek}


class _Base:
    def __init__(
        self,
        *,
        actor_org: str | None = None,
        actor_user: str | None = None,
        kek: str | None = None,
    ) -> None:
        self.actor_org = actor_org
        self.actor_user = actor_user
        self.kek = kek if kek is not None else os.environ.get("COSTWARDEN_KEK") or None

    @property
    def _needs_context(self) -> bool:
        return bool(self.actor_org or self.actor_user or self.kek)

    @property
    def _context(self) -> dict[str, Any]:
        return _context_params(self.actor_org, self.actor_user, self.kek)


class Client(_Base):
    """Synchronous client. ``dsn_or_pool``: a DSN, a ConnectionPool or a Connection."""

    def __init__(
        self,
        dsn_or_pool: str | ConnectionPool | psycopg.Connection[Any],
        *,
        actor_org: str | None = None,
        actor_user: str | None = None,
        kek: str | None = None,
        pool_size: int = 4,
    ) -> None:
        super().__init__(actor_org=actor_org, actor_user=actor_user, kek=kek)
        self._owned_pool: ConnectionPool | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._conn_lock = threading.Lock()
        if isinstance(dsn_or_pool, str):
            self._owned_pool = ConnectionPool(
                dsn_or_pool, min_size=1, max_size=pool_size, open=True, name="costwarden"
            )
            self._pool: ConnectionPool | None = self._owned_pool
        elif isinstance(dsn_or_pool, ConnectionPool):
            self._pool = dsn_or_pool
        else:
            self._pool = None
            self._conn = dsn_or_pool

    def close(self) -> None:
        if self._owned_pool is not None:
            self._owned_pool.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        if self._pool is not None:
            with self._pool.connection() as conn:
                yield conn
            return
        assert self._conn is not None
        with self._conn_lock, self._conn.transaction():
            yield self._conn

    def _run(self, call: q.Call[R]) -> R:
        with wrap_errors(), self._connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            set_json_loads(_exact_loads, cur)
            if self._needs_context:
                cur.execute(q.SET_CONTEXT, self._context)
            cur.execute(call.sql, call.params)  # type: ignore[arg-type]
            rows = cur.fetchall() if cur.description else []
        return call.parse(rows)

    # -- §1 tenancy and catalogue
    def upsert_org(self, org_id: str, settings: Mapping[str, Any] | None = None) -> None:
        self._run(q.org_upsert(org_id, settings))

    def upsert_workspace(
        self,
        org_id: str,
        workspace_id: str,
        model: str | None = None,
        billing_override: str | None = None,
    ) -> None:
        self._run(q.workspace_upsert(org_id, workspace_id, model, billing_override))

    def seed_workspace_model(self, org_id: str, workspace_id: str, model: str) -> bool:
        return self._run(q.workspace_seed_model(org_id, workspace_id, model))

    def upsert_user(self, org_id: str, user_id: str, groups: list[str] | None = None) -> None:
        self._run(q.user_upsert(org_id, user_id, groups))

    def upsert_key(
        self, org_id: str, key_id: str, workspace_id: str | None = None, user_id: str | None = None
    ) -> None:
        self._run(q.key_upsert(org_id, key_id, workspace_id, user_id))

    def upsert_model(self, model: str, platform_servable: bool = False) -> None:
        self._run(q.model_upsert(model, platform_servable))

    def set_pricing(
        self, model: str, prices: Mapping[str, Any], effective_from: datetime | None = None
    ) -> int:
        return self._run(q.pricing_set(model, prices, effective_from))

    def pricing(self, model: str | None = None, at: datetime | None = None) -> list[t.PricingEntry]:
        return self._run(q.pricing_list(model, at))

    def pricing_history(self, model: str | None = None) -> list[t.PricingSnapshot]:
        return self._run(q.pricing_history(model))

    def billing_mode(self, org_id: str, workspace_id: str) -> t.BillingMode:
        return self._run(q.workspace_billing_mode(org_id, workspace_id))

    # -- §6 settings and audit
    def set_setting(self, key: str, value: Any) -> None:
        self._run(q.setting_set(key, value))

    def get_setting(self, key: str) -> Any:
        return self._run(q.setting_get(key))

    def settings(self) -> list[t.Setting]:
        return self._run(q.settings_list())

    def audit(
        self,
        org_id: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[t.AuditEntry]:
        return self._run(q.audit_list(org_id, action, since, limit))

    # -- §2 budgets
    def set_budget(
        self,
        org_id: str,
        scope_kind: str,
        scope_id: str | None,
        period: str,
        limit: int | None,
        *,
        metric: str = "cost",
        window: str = "rolling",
        mode: str = "enforce",
    ) -> None:
        self._run(q.budget_set(org_id, scope_kind, scope_id, period, limit, metric, window, mode))

    def budget_status(
        self, org_id: str, scope_kind: str, scope_id: str | None = None
    ) -> list[t.BudgetStatus]:
        return self._run(q.budget_status(org_id, scope_kind, scope_id))

    # -- §3 the saga
    def quote(
        self, org_id: str, workspace_id: str, model: str, usage: Mapping[str, Any]
    ) -> t.Quote:
        return self._run(q.cost_quote(org_id, workspace_id, model, usage))

    def reserve(
        self,
        org_id: str,
        workspace_id: str,
        model: str,
        usage: Mapping[str, Any],
        *,
        user_id: str | None = None,
        key_id: str | None = None,
        idempotency_key: str | None = None,
        ttl: timedelta | None = None,
        metadata: Mapping[str, Any] | None = None,
        raise_on_denied: bool = True,
    ) -> t.Reservation:
        """Reserve; a denied reservation raises BudgetExceeded unless raise_on_denied=False."""
        r = self._run(
            q.cost_reserve(
                org_id, workspace_id, model, usage, user_id, key_id, idempotency_key, ttl, metadata
            )
        )
        if raise_on_denied and r.status == "denied":
            raise BudgetExceeded(r)
        return r

    def meter(self, reservation_id: UUID, usage: Mapping[str, Any]) -> t.MeterResult:
        return self._run(q.cost_meter_tick(reservation_id, usage))

    def commit(
        self, reservation_id: UUID, usage: Mapping[str, Any], *, approximate: bool = False
    ) -> t.CommitResult:
        return self._run(q.cost_commit(reservation_id, usage, approximate))

    def release(self, reservation_id: UUID, reason: str | None = None) -> int:
        return self._run(q.cost_release(reservation_id, reason))

    def expire(self, batch: int = 1000) -> int:
        return self._run(q.cost_expire(batch))

    def maintenance(self) -> int:
        """Drop spend buckets no window can reach any more; returns how many."""
        return self._run(q.maintenance())

    def my_reservations(self, status: str | None = None, limit: int = 100) -> list[t.ReservationInfo]:
        return self._run(q.my_reservations(status, limit))

    def reservations(
        self, org_id: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[t.ReservationInfo]:
        return self._run(q.reservations_list(org_id, status, limit))

    # -- §5 BYOK
    def resolve_key(self, reservation_id: UUID, provider: str | None = None) -> t.ByokSecret:
        """The plaintext provider key for a live byok reservation (needs the KEK)."""
        return self._run(q.byok_key_resolve(reservation_id, provider))

    @contextmanager
    def reservation(
        self,
        org_id: str,
        workspace_id: str,
        model: str,
        usage: Mapping[str, Any],
        **kwargs: Any,
    ) -> Iterator[ReservationHandle]:
        """Reserve for the block. Leaving without commit commits what was metered, or
        releases when nothing was; an exception releases (the SQL books any metered
        usage) and re-raises. A denied reservation raises BudgetExceeded."""
        r = self.reserve(org_id, workspace_id, model, usage, **kwargs)
        handle = ReservationHandle(self, r)
        try:
            yield handle
        except BaseException:
            if handle.open:
                handle.release("exception in reservation block")
            raise
        if handle.open:
            if handle.metered_usage is not None:
                handle.commit(handle.metered_usage)
            else:
                handle.release("left without commit")


class ReservationHandle:
    """A live reservation inside ``with client.reservation(...) as r``."""

    def __init__(self, client: Client, reservation: t.Reservation) -> None:
        self._client = client
        self.reservation = reservation
        self.metered_usage: Mapping[str, Any] | None = None
        self.last_meter: t.MeterResult | None = None
        self.result: t.CommitResult | None = None
        self.released_micros: int | None = None

    @property
    def id(self) -> UUID:
        return self.reservation.reservation_id

    @property
    def open(self) -> bool:
        return self.result is None and self.released_micros is None

    def meter(self, usage: Mapping[str, Any]) -> t.MeterResult:
        self.last_meter = self._client.meter(self.id, usage)
        self.metered_usage = dict(usage)
        return self.last_meter

    def commit(self, usage: Mapping[str, Any], *, approximate: bool = False) -> t.CommitResult:
        self.result = self._client.commit(self.id, usage, approximate=approximate)
        return self.result

    def release(self, reason: str | None = None) -> int:
        self.released_micros = self._client.release(self.id, reason)
        return self.released_micros

    def byok_key(self, provider: str | None = None) -> t.ByokSecret:
        return self._client.resolve_key(self.id, provider)


class AsyncClient(_Base):
    """Asynchronous client; same calls and result types as :class:`Client`."""

    def __init__(
        self,
        dsn_or_pool: str | AsyncConnectionPool,
        *,
        actor_org: str | None = None,
        actor_user: str | None = None,
        kek: str | None = None,
        pool_size: int = 4,
    ) -> None:
        super().__init__(actor_org=actor_org, actor_user=actor_user, kek=kek)
        if isinstance(dsn_or_pool, str):
            self._pool = AsyncConnectionPool(
                dsn_or_pool, min_size=1, max_size=pool_size, open=False, name="costwarden-async"
            )
            self._owned = True
        else:
            self._pool = dsn_or_pool
            self._owned = False
        self._opened = False

    async def close(self) -> None:
        if self._owned:
            await self._pool.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, call: q.Call[R]) -> R:
        if self._owned and not self._opened:
            await self._pool.open()
            self._opened = True
        with wrap_errors():
            async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                set_json_loads(_exact_loads, cur)
                if self._needs_context:
                    await cur.execute(q.SET_CONTEXT, self._context)
                await cur.execute(call.sql, call.params)  # type: ignore[arg-type]
                rows = await cur.fetchall() if cur.description else []
        return call.parse(rows)

    async def upsert_org(self, org_id: str, settings: Mapping[str, Any] | None = None) -> None:
        await self._run(q.org_upsert(org_id, settings))

    async def upsert_workspace(
        self,
        org_id: str,
        workspace_id: str,
        model: str | None = None,
        billing_override: str | None = None,
    ) -> None:
        await self._run(q.workspace_upsert(org_id, workspace_id, model, billing_override))

    async def upsert_model(self, model: str, platform_servable: bool = False) -> None:
        await self._run(q.model_upsert(model, platform_servable))

    async def set_pricing(
        self, model: str, prices: Mapping[str, Any], effective_from: datetime | None = None
    ) -> int:
        return await self._run(q.pricing_set(model, prices, effective_from))

    async def set_budget(
        self,
        org_id: str,
        scope_kind: str,
        scope_id: str | None,
        period: str,
        limit: int | None,
        *,
        metric: str = "cost",
        window: str = "rolling",
        mode: str = "enforce",
    ) -> None:
        await self._run(
            q.budget_set(org_id, scope_kind, scope_id, period, limit, metric, window, mode)
        )

    async def budget_status(
        self, org_id: str, scope_kind: str, scope_id: str | None = None
    ) -> list[t.BudgetStatus]:
        return await self._run(q.budget_status(org_id, scope_kind, scope_id))

    async def quote(
        self, org_id: str, workspace_id: str, model: str, usage: Mapping[str, Any]
    ) -> t.Quote:
        return await self._run(q.cost_quote(org_id, workspace_id, model, usage))

    async def reserve(
        self,
        org_id: str,
        workspace_id: str,
        model: str,
        usage: Mapping[str, Any],
        *,
        user_id: str | None = None,
        key_id: str | None = None,
        idempotency_key: str | None = None,
        ttl: timedelta | None = None,
        metadata: Mapping[str, Any] | None = None,
        raise_on_denied: bool = True,
    ) -> t.Reservation:
        r = await self._run(
            q.cost_reserve(
                org_id, workspace_id, model, usage, user_id, key_id, idempotency_key, ttl, metadata
            )
        )
        if raise_on_denied and r.status == "denied":
            raise BudgetExceeded(r)
        return r

    async def meter(self, reservation_id: UUID, usage: Mapping[str, Any]) -> t.MeterResult:
        return await self._run(q.cost_meter_tick(reservation_id, usage))

    async def commit(
        self, reservation_id: UUID, usage: Mapping[str, Any], *, approximate: bool = False
    ) -> t.CommitResult:
        return await self._run(q.cost_commit(reservation_id, usage, approximate))

    async def release(self, reservation_id: UUID, reason: str | None = None) -> int:
        return await self._run(q.cost_release(reservation_id, reason))

    async def expire(self, batch: int = 1000) -> int:
        return await self._run(q.cost_expire(batch))

    async def get_setting(self, key: str) -> Any:
        return await self._run(q.setting_get(key))

    async def set_setting(self, key: str, value: Any) -> None:
        await self._run(q.setting_set(key, value))

    @asynccontextmanager
    async def reservation(
        self,
        org_id: str,
        workspace_id: str,
        model: str,
        usage: Mapping[str, Any],
        **kwargs: Any,
    ) -> AsyncIterator[AsyncReservationHandle]:
        r = await self.reserve(org_id, workspace_id, model, usage, **kwargs)
        handle = AsyncReservationHandle(self, r)
        try:
            yield handle
        except BaseException:
            if handle.open:
                await handle.release("exception in reservation block")
            raise
        if handle.open:
            if handle.metered_usage is not None:
                await handle.commit(handle.metered_usage)
            else:
                await handle.release("left without commit")


class AsyncReservationHandle:
    def __init__(self, client: AsyncClient, reservation: t.Reservation) -> None:
        self._client = client
        self.reservation = reservation
        self.metered_usage: Mapping[str, Any] | None = None
        self.result: t.CommitResult | None = None
        self.released_micros: int | None = None

    @property
    def id(self) -> UUID:
        return self.reservation.reservation_id

    @property
    def open(self) -> bool:
        return self.result is None and self.released_micros is None

    async def meter(self, usage: Mapping[str, Any]) -> t.MeterResult:
        result = await self._client.meter(self.id, usage)
        self.metered_usage = dict(usage)
        return result

    async def commit(self, usage: Mapping[str, Any], *, approximate: bool = False) -> t.CommitResult:
        self.result = await self._client.commit(self.id, usage, approximate=approximate)
        return self.result

    async def release(self, reason: str | None = None) -> int:
        self.released_micros = await self._client.release(self.id, reason)
        return self.released_micros
