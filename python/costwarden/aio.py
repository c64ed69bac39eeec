"""The client, written once: :class:`AsyncClient` here, and its sync twin
:class:`~costwarden.client.Client` generated from this file.

Why generated rather than a shared core: the two clients differ only in I/O
(``await``, ``async with``, AsyncConnectionPool against ConnectionPool), and a shared
core would still leave two hand-kept lists of ~50 method signatures, docstrings and
the saga's fallback logic -- exactly what drifted before. So, as psycopg does for its
own sync and async classes, this file is the only source: ``tools/async_to_sync.py``
turns it into ``_client_sync.py`` by an AST transform (``async def`` -> ``def``,
``await x`` -> ``x``, ``async with`` -> ``with``, and the names in its table:
AsyncClient -> Client, AsyncConnectionPool -> ConnectionPool, asyncio.Lock ->
threading.Lock, ...). The generated file is committed, so a reader and a type checker
see plain code, and tests/python/test_client_surface.py fails when it is not what
the tool makes of this file. Edit here, then run ``.venv/bin/python
tools/async_to_sync.py``.

Both clients share the statements and result types of :mod:`costwarden._sql`: every
method builds one :class:`~costwarden._sql.Call` and runs it. Each call runs in its
own transaction; the actor (``costwarden.actor_org`` / ``costwarden.actor_user``) is
set for that transaction only, with ``set_config(..., true)``. The BYOK
key-encryption key (``costwarden.kek``, read from ``COSTWARDEN_KEK``) and a secret
being stored are sent only with the calls that need them, through ``COPY
costwarden.secret_input_base64`` (never statement text or a bind parameter, and
base64-framed so that no value can make COPY quote it in an error: never in a server
log, docs/byok.md).

``on_unavailable`` (SPEC §7, :mod:`costwarden.spool`): ``'closed'`` raises
DatabaseUnavailable when the database cannot be reached; ``'open'`` lets the call
proceed unenforced and spools it durably to ``spool_dir`` (local file writes, done
synchronously: each is a short append and fsync), to be replayed as soon as the
database answers again. No policy given: 'closed', with a warning.

Timeouts: ``connect_timeout`` (a new connection, 5 s), ``timeout`` (waiting for a
pooled connection, 5 s) and ``statement_timeout`` (each call, the server's default
when None): a call never hangs on a database that is gone or on a lock held
elsewhere (StatementTimeout).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext, suppress
from datetime import datetime, timedelta
from os import PathLike
from typing import Any, TypeVar
from uuid import UUID, uuid4

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from . import _sql as q
from . import types as t
from ._client_core import (
    RECONNECT_TIMEOUT,
    ClientBase,
    ServerWarnings,
    connection_kwargs,
    default_timeout,
    exact_json_connection_async,
    exact_loads,
)
from .errors import BudgetExceeded, CostwardenError, DatabaseUnavailable, Forbidden, wrap_errors
from .spool import DEFAULT_MAX_BYTES, ReplayReport, UnavailablePolicy, Wait, resolve_policy

R = TypeVar("R")

log = logging.getLogger("costwarden.client")


class AsyncClient(ClientBase):
    """Asynchronous client. ``dsn_or_pool``: a DSN, a pool (AsyncConnectionPool) or
    one connection (AsyncConnection; its transaction then holds every call).

    ``on_unavailable``: ``'closed'`` (the default, with a warning when not given) or
    ``'open'`` with a ``spool_dir`` (SPEC §7, costwarden.spool; ``spool_max_bytes``
    bounds it). ``timeout``: seconds to wait for a pooled connection (5);
    ``connect_timeout``: seconds to open one (5); ``statement_timeout``: seconds
    each call may run (None: the server's setting). ``connect_kwargs``: passed to
    every connection of the pool the client opens for a DSN, e.g.
    ``application_name``. The client's own connections prepare no statement on the
    server (``prepare_threshold`` None: safe behind a pooler in transaction mode,
    SPEC §12); ``connect_kwargs={"prepare_threshold": 5}`` opts in on a direct
    connection (docs/python.md#poolers)."""

    def __init__(
        self,
        dsn_or_pool: str | AsyncConnectionPool | psycopg.AsyncConnection[Any],
        *,
        actor_org: str | None = None,
        actor_user: str | None = None,
        kek: str | None = None,
        pool_size: int = 4,
        on_unavailable: str | None = None,
        spool_dir: str | PathLike[str] | None = None,
        timeout: float | None = None,
        connect_timeout: float = 5.0,
        statement_timeout: float | None = None,
        spool_max_bytes: int = DEFAULT_MAX_BYTES,
        connect_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        on_unavailable = resolve_policy(on_unavailable)
        super().__init__(
            actor_org=actor_org,
            actor_user=actor_user,
            kek=kek,
            statement_timeout=statement_timeout,
            owns_connections=isinstance(dsn_or_pool, str),
        )
        self._owned_pool: AsyncConnectionPool | None = None
        self._opened = False
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._conn_lock = asyncio.Lock()
        # SPEC §7: 'closed' raises DatabaseUnavailable; 'open' proceeds and spools (spool.py)
        self.unavailable = UnavailablePolicy(on_unavailable, spool_dir, max_bytes=spool_max_bytes)
        self._pool: AsyncConnectionPool | None
        # the DSN and keyword arguments of the probe's own connections (_reconnect)
        self._probe_connect: tuple[str, dict[str, Any]] | None = None
        if isinstance(dsn_or_pool, str):
            kwargs = connection_kwargs(connect_timeout, statement_timeout, connect_kwargs)
            self._probe_connect = (dsn_or_pool, dict(kwargs))
            # opened on first use (an async pool needs a running event loop)
            self._owned_pool = AsyncConnectionPool(
                dsn_or_pool,
                min_size=1,
                max_size=pool_size,
                open=False,
                name="costwarden",
                kwargs=kwargs,
                configure=exact_json_connection_async,
                timeout=timeout if timeout is not None else default_timeout(on_unavailable),
                reconnect_timeout=RECONNECT_TIMEOUT,
            )
            self._pool = self._owned_pool
        elif isinstance(dsn_or_pool, AsyncConnectionPool):
            self._pool = dsn_or_pool
        else:
            self._pool = None
            self._conn = dsn_or_pool

    async def close(self) -> None:
        if self._owned_pool is not None:
            await self._owned_pool.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _transaction(
        self, conn: psycopg.AsyncConnection[Any], call: q.Call[Any]
    ) -> AbstractAsyncContextManager[Any]:
        if conn.autocommit and self._needs_transaction(call):
            return conn.transaction()
        return nullcontext()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._pool is not None:
            if not self._opened and self._owned_pool is not None:
                await self._owned_pool.open()
                self._opened = True
            async with self._pool.connection() as conn:
                yield conn
            return
        assert self._conn is not None
        async with self._conn_lock, self._conn.transaction():
            yield self._conn

    async def _run(self, call: q.Call[R]) -> R:
        warned = ServerWarnings()
        with wrap_errors():
            async with self._connection() as conn:
                with warned.listening(conn):
                    async with (
                        self._transaction(conn, call),
                        conn.cursor(row_factory=dict_row) as cur,
                    ):
                        # a pool the client owns reads JSON exactly already
                        if self._owned_pool is None:
                            set_json_loads(exact_loads, cur)
                        if self._needs_context:
                            await cur.execute(q.SET_CONTEXT, self._context)
                        if self._sets_timeout:
                            await cur.execute(q.SET_STATEMENT_TIMEOUT, self._timeout_setting)
                        await self._stage(cur, call)
                        await cur.execute(call.sql, call.params)
                        rows = await cur.fetchall() if cur.description else []
        warned.emit()  # server warnings (ReadinessWarning), once the call succeeded
        return call.parse(rows)

    async def _guarded(self, call: q.Call[R]) -> R:
        """:meth:`_run` under the on_unavailable policy: raises DatabaseUnavailable
        (at once, while the database is known to be down under 'open') for the
        caller's fallback; after a success, replays the spool when that is due."""
        probe = self.unavailable.check()
        try:
            if probe:
                await self._reconnect()
            result = await self._run(call)
        except Exception as exc:
            unavailable = self.unavailable.failed(exc)
            if unavailable is None or unavailable is exc:
                raise
            raise unavailable from exc
        if self.unavailable.succeeded():
            # the database answers again: replay now (never waiting for another replayer)
            report: ReplayReport | None = None
            try:
                report = await self.replay_spool(wait=False)
            except Exception:  # never fail the caller's call because of a replay
                log.exception("automatic spool replay failed")
            self.unavailable.replayed(report)
        return result

    async def _reconnect(self) -> None:
        """The probe of an 'open' client, while the database is known to be down. It
        tries the database with a connection of its own: a refused one fails at once
        (waiting for the pool would keep the caller ``timeout`` seconds). Once the
        database answers, the pool drops the idle connections the outage broke and
        connects again at once (psycopg_pool's ``check()``; RECONNECT_TIMEOUT keeps the
        pool's own reconnect backoff short), so the saga works again within about a
        second of a restart. A pool passed in is used as it is."""
        if self._probe_connect is None or self._owned_pool is None or not self._opened:
            return
        dsn, kwargs = self._probe_connect
        with wrap_errors():
            conn = await psycopg.AsyncConnection.connect(dsn, **kwargs)
            await conn.close()
            await self._owned_pool.check()

    # -- §1 tenancy and catalogue
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

    async def workspace_readiness(self, org_id: str, workspace_id: str) -> list[t.ReadinessProblem]:
        """What would refuse every reserve of the workspace (empty: ready)."""
        return await self._run(q.workspace_readiness(org_id, workspace_id))

    async def seed_workspace_model(self, org_id: str, workspace_id: str, model: str) -> bool:
        return await self._run(q.workspace_seed_model(org_id, workspace_id, model))

    async def upsert_user(self, org_id: str, user_id: str, groups: list[str] | None = None) -> None:
        await self._run(q.user_upsert(org_id, user_id, groups))

    async def upsert_key(
        self, org_id: str, key_id: str, workspace_id: str | None = None, user_id: str | None = None
    ) -> None:
        await self._run(q.key_upsert(org_id, key_id, workspace_id, user_id))

    async def upsert_model(self, model: str, platform_servable: bool = False) -> None:
        await self._run(q.model_upsert(model, platform_servable))

    async def set_pricing(
        self, model: str, prices: Mapping[str, Any], effective_from: datetime | None = None
    ) -> int:
        return await self._run(q.pricing_set(model, prices, effective_from))

    async def pricing(
        self, model: str | None = None, at: datetime | None = None
    ) -> list[t.PricingEntry]:
        return await self._run(q.pricing_list(model, at))

    async def pricing_history(self, model: str | None = None) -> list[t.PricingSnapshot]:
        return await self._run(q.pricing_history(model))

    async def billing_mode(self, org_id: str, workspace_id: str) -> t.BillingMode:
        return await self._run(q.workspace_billing_mode(org_id, workspace_id))

    # -- §6 settings and audit
    async def set_setting(self, key: str, value: Any) -> None:
        await self._run(q.setting_set(key, value))

    async def get_setting(self, key: str) -> Any:
        return await self._run(q.setting_get(key))

    async def settings(self) -> list[t.Setting]:
        return await self._run(q.settings_list())

    async def audit(
        self,
        org_id: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[t.AuditEntry]:
        return await self._run(q.audit_list(org_id, action, since, limit))

    # -- §2 budgets
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

    # -- §3 the saga
    async def budget_list(self, org_id: str, scope_kind: str | None = None) -> list[t.BudgetLimit]:
        """Every limit configured in the org (SPEC §11), optionally of one scope kind."""
        return await self._run(q.budget_list(org_id, scope_kind))

    async def spend_summary(
        self,
        org_id: str,
        scope_kind: str = "org",
        scope_id: str | None = None,
        *,
        period: str = "month",
        window: str = "calendar",
        at: datetime | None = None,
    ) -> list[t.SpendSummary]:
        """Spend, holds, calls and limits in a window, with or without a limit
        (SPEC §11): one row for a scope, or one per scope of the kind (scope_id None)
        that has spend, holds or a limit, largest spend first."""
        return await self._run(q.spend_summary(org_id, scope_kind, scope_id, period, window, at))

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
        """Reserve; a denied reservation raises BudgetExceeded unless raise_on_denied=False.

        When the database cannot be reached: DatabaseUnavailable under
        on_unavailable='closed', a SpooledReservation under 'open'."""
        call = q.cost_reserve(
            org_id, workspace_id, model, usage, user_id, key_id, idempotency_key, ttl, metadata
        )
        try:
            r = await self._guarded(call)
        except DatabaseUnavailable as exc:
            r = self.unavailable.reserve(exc, org_id, workspace_id, model, usage, user_id, key_id)
        if raise_on_denied and r.status == "denied":
            raise BudgetExceeded(r)
        return r

    async def meter(self, reservation_id: UUID, usage: Mapping[str, Any]) -> t.MeterResult:
        if self.unavailable.owns(reservation_id):
            return self.unavailable.meter(reservation_id, usage)
        try:
            tick = await self._guarded(q.cost_meter_tick(reservation_id, usage))
        except DatabaseUnavailable as exc:
            return self.unavailable.meter_unreachable(exc, reservation_id, usage)
        self.unavailable.settled(reservation_id)
        return tick

    async def commit(
        self, reservation_id: UUID, usage: Mapping[str, Any], *, approximate: bool = False
    ) -> t.CommitResult:
        if self.unavailable.owns(reservation_id):
            return self.unavailable.commit(reservation_id, usage, approximate)
        try:
            result = await self._guarded(q.cost_commit(reservation_id, usage, approximate))
        except DatabaseUnavailable as exc:
            return self.unavailable.commit_unreachable(exc, reservation_id, usage, approximate)
        self.unavailable.settled(reservation_id)
        return result

    async def reserve_many(self, requests: Sequence[Mapping[str, Any]]) -> list[t.Reservation]:
        """Reserve N times in one transaction (fn_cost_reserve_many): each request a
        mapping of reserve's arguments (org_id, workspace_id, model, usage, user_id,
        key_id, idempotency_key, ttl, metadata); one Reservation per request, in order,
        denied ones included. An error in any request fails the whole batch."""
        return await self._run(q.cost_reserve_many(requests))

    async def commit_many(self, commits: Sequence[Mapping[str, Any]]) -> list[t.CommitResult]:
        """Commit N reservations in one transaction (fn_cost_commit_many): each a
        mapping of reservation_id, usage and optionally approximate; results in order."""
        return await self._run(q.cost_commit_many(commits))

    async def release(self, reservation_id: UUID, reason: str | None = None) -> int:
        if self.unavailable.owns(reservation_id):
            return self.unavailable.release(reservation_id, reason)
        metered = self.unavailable.offline_metered(reservation_id)
        try:
            if metered is None:
                released = await self._guarded(q.cost_release(reservation_id, reason))
            else:
                # ticks the database did not see: the release charges their usage
                done = await self._guarded(
                    q.replay_reservation(
                        uuid4(), "release", reservation_id, metered, True, reason, None
                    )
                )
                released = done.released_micros
        except DatabaseUnavailable as exc:
            return self.unavailable.release_unreachable(exc, reservation_id, reason)
        self.unavailable.settled(reservation_id)
        return released

    async def expire(self, batch: int = 1000) -> int:
        return await self._run(q.cost_expire(batch))

    async def maintenance(self) -> int:
        """Thin the spend marks to the slots of their age; returns how many were dropped."""
        return await self._run(q.maintenance())

    async def my_reservations(
        self, status: str | None = None, limit: int = 100
    ) -> list[t.ReservationInfo]:
        return await self._run(q.my_reservations(status, limit))

    async def reservations(
        self, org_id: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[t.ReservationInfo]:
        return await self._run(q.reservations_list(org_id, status, limit))

    # -- §6 guardrails
    async def report_provider(self, provider: str, ok: bool, error: str | None = None) -> str:
        """Report a provider call's outcome; returns the circuit state after it."""
        return await self._run(q.provider_report(provider, ok, error))

    async def alert(self, alert_id: int) -> t.Alert:
        """The alert a costwarden_alerts notification announced (its ``alert_id``)."""
        return await self._run(q.alert_get(alert_id))

    async def circuits(self) -> list[t.CircuitStatus]:
        return await self._run(q.circuit_status())

    async def circuit_history(
        self, provider: str | None = None, limit: int = 100
    ) -> list[t.CircuitEvent]:
        return await self._run(q.circuit_history(provider, limit))

    async def reset_circuit(self, provider: str) -> str:
        return await self._run(q.circuit_reset(provider))

    async def report_spend(
        self, org_id: str, workspace_id: str, source: str, cumulative_micros: int
    ) -> int:
        """Book a cumulative spend counter; returns the delta booked."""
        return await self._run(
            q.spend_report_cumulative(org_id, workspace_id, source, cumulative_micros)
        )

    async def set_spend_source(
        self,
        org_id: str,
        workspace_id: str,
        source: str,
        *,
        key_id: str | None = None,
        user_id: str | None = None,
    ) -> None:
        await self._run(q.spend_source_set(org_id, workspace_id, source, key_id, user_id))

    async def spend_sources(self, org_id: str | None = None) -> list[t.SpendSource]:
        return await self._run(q.spend_sources_list(org_id))

    async def quarantined_spend_reports(self, org_id: str) -> list[t.QuarantinedSpendReport]:
        """Spend reports over spend_report_max_delta_micros not yet decided (SPEC §6)."""
        return await self._run(q.spend_reports_quarantined(org_id))

    async def resolve_spend_report(self, report_id: int, accept: bool) -> int:
        """Accept (book the delta now) or reject (book nothing) a quarantined report,
        once; returns the micros booked. A second decision raises InvalidState."""
        return await self._run(q.spend_report_resolve(report_id, accept))

    async def detect_spend_anomalies(self) -> int:
        return await self._run(q.detect_spend_anomalies())

    async def ack_anomaly(self, anomaly_id: int) -> None:
        await self._run(q.anomaly_ack(anomaly_id))

    async def anomalies(
        self, org_id: str | None = None, *, open_only: bool = False, limit: int = 100
    ) -> list[t.Anomaly]:
        return await self._run(q.anomalies_list(org_id, open_only, limit))

    async def shadow_report(
        self, org_id: str, from_: datetime | None = None, to: datetime | None = None
    ) -> list[t.ShadowReportRow]:
        return await self._run(q.shadow_report(org_id, from_, to))

    async def replay_spool(self, *, wait: bool = True) -> ReplayReport:
        """Book what the on_unavailable='open' spool holds (see costwarden.spool);
        ``wait=False``: return at once when another process is replaying it."""
        steps = self.unavailable.replay_steps(wait=wait)
        if steps is None:
            return ReplayReport(0, 0, 0, 0)
        try:
            step = next(steps)
            while True:
                if isinstance(step, Wait):
                    await asyncio.sleep(step.seconds)
                    step = steps.send(None)
                    continue
                try:
                    result = await self._run(step)
                except Exception as exc:
                    step = steps.throw(exc)
                else:
                    step = steps.send(result)
        except StopIteration as stop:
            report: ReplayReport = stop.value
            return report
        finally:
            steps.close()

    # -- reconciliation (sql/functions/18_reconcile.sql)
    async def reconcile(self, org_id: str | None = None) -> list[t.ReconcileDrift]:
        """fn_reconcile: every pool's held and spent recomputed from the reservations
        and the ledger; one row per drift found (none: the books balance)."""
        return await self._run(q.reconcile(org_id))

    async def reconcile_repair(
        self, org_id: str, pool_id: int, reason: str
    ) -> list[t.ReconcileDrift]:
        """fn_reconcile_repair (admin; audited): apply the correction fn_reconcile
        reports for one pool; returns the drift corrected."""
        return await self._run(q.reconcile_repair(org_id, pool_id, reason))

    # -- §4 ledger
    async def ledger_verify(self, org_id: str | None = None) -> list[t.LedgerVerification]:
        """fn_ledger_verify: every org's chain (or one org's), checked inside the database."""
        return await self._run(q.ledger_verify(org_id))

    async def ledger_digest(self, org_id: str | None = None) -> list[t.LedgerHead]:
        """fn_ledger_digest: the head (seq, entry_hash) of every org's chain."""
        return await self._run(q.ledger_digest(org_id))

    async def ledger_identity(self) -> t.DatabaseIdentity:
        return await self._run(q.ledger_identity())

    async def ledger_adjust(
        self, org_id: str, workspace_id: str, amount_micros: int, reason: str
    ) -> t.LedgerAdjustment:
        """A signed correction or refund (negative) of a workspace's spend; audited."""
        return await self._run(q.ledger_adjust(org_id, workspace_id, amount_micros, reason))

    async def ledger_export_rows(
        self,
        org_id: str | None = None,
        *,
        after_org_id: str | None = None,
        after_seq: int = 0,
        limit: int = 10000,
    ) -> list[t.LedgerEntry]:
        """One keyset page of raw ledger rows in (org_id, seq) order (costwarden.ledger
        pages through them inside :meth:`ledger_snapshot`)."""
        return await self._run(q.ledger_export(org_id, after_org_id, after_seq, limit))

    async def ledger_export_dicts(
        self, org_id: str | None, after_org_id: str | None, after_seq: int, limit: int
    ) -> list[dict[str, Any]]:
        """:meth:`ledger_export_rows` as plain dicts: faster for millions of rows."""
        return await self._run(q.ledger_export_raw(org_id, after_org_id, after_seq, limit))

    @asynccontextmanager
    async def ledger_snapshot(self) -> AsyncIterator[AsyncClient]:
        """A client on one connection inside a read-only REPEATABLE READ transaction:
        every call made through it (export pages, digest, identity) sees the same state."""
        outer = self._conn is not None and (
            self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
        )
        with wrap_errors():
            async with self._connection() as conn:
                if not outer:  # else the caller's transaction decides
                    await conn.execute(q.LEDGER_SNAPSHOT)
                yield AsyncClient(
                    conn,
                    actor_org=self.actor_org,
                    actor_user=self.actor_user,
                    kek=self.kek,
                    on_unavailable="closed",
                )

    # -- §5 BYOK
    async def _stage(self, cur: psycopg.AsyncCursor[Any], call: q.Call[Any]) -> None:
        """Send the KEK / secrets of ``call`` as COPY data: never logged by the server."""
        staged = self._staged(call)
        if staged:
            async with cur.copy(q.STAGE_SECRETS) as copy:
                for name, value in staged.items():
                    await copy.write_row((q.stage_line(name, value),))

    async def resolve_key(
        self,
        reservation_id: UUID | None,
        provider: str | None = None,
        *,
        org_id: str | None = None,
        workspace_id: str | None = None,
    ) -> t.ByokSecret:
        """The plaintext provider key for a live byok reservation (needs the KEK).

        A refusal raises Forbidden; its signed receipt is recorded first (in its own
        transaction), so the refusal stays in the resolve audit trail."""
        try:
            return await self._run(
                q.byok_key_resolve(reservation_id, provider, org_id, workspace_id)
            )
        except Forbidden as exc:
            receipt = q.refusal_receipt(exc.hint)
            if receipt is not None:
                with suppress(CostwardenError, psycopg.Error):
                    await self._run(q.byok_resolve_refusal_record(receipt))
            raise

    async def put_key(self, org_id: str, workspace_id: str, provider: str, secret: str) -> str:
        """Store (replace) a workspace's provider key under the KEK; returns its fingerprint."""
        return await self._run(q.byok_key_put(org_id, workspace_id, provider, secret))

    async def revoke_key(self, org_id: str, workspace_id: str, provider: str) -> bool:
        return await self._run(q.byok_key_revoke(org_id, workspace_id, provider))

    async def list_keys(
        self,
        org_id: str | None = None,
        workspace_id: str | None = None,
        *,
        include_revoked: bool = False,
    ) -> list[t.ByokKey]:
        return await self._run(q.byok_key_list(org_id, workspace_id, include_revoked))

    async def kek_status(self) -> list[t.KekGeneration]:
        return await self._run(q.byok_kek_status())

    async def resolve_audit(
        self, org_id: str | None = None, reservation_id: UUID | None = None, limit: int = 100
    ) -> list[t.ResolveAttempt]:
        return await self._run(q.byok_resolve_audit(org_id, reservation_id, limit))

    async def rotate_kek(
        self,
        new_kek: str,
        *,
        batch: int = 1000,
        commit_every_batch: bool = False,
        progress: Callable[[t.KekRotateBatch], None] | None = None,
    ) -> t.KekRotation:
        """Re-wrap every data key from this client's KEK to ``new_kek``.

        By default all batches run in one transaction: every key moves, or none. With
        ``commit_every_batch`` each batch commits; an interrupted run is finished by
        running again with the same two KEKs. (With a Connection instead of a pool the
        caller's transaction decides.)"""
        call = q.byok_kek_rotate(new_kek, batch)
        rewrapped = batches = 0
        with wrap_errors():
            async with self._connection() as conn:
                outer = nullcontext() if commit_every_batch else conn.transaction()
                async with outer:
                    while True:
                        async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                            if self._needs_context:
                                await cur.execute(q.SET_CONTEXT, self._context)
                            await self._stage(cur, call)
                            await cur.execute(call.sql, call.params)
                            step = call.parse(await cur.fetchall())
                        batches += 1
                        rewrapped += step.rewrapped
                        if progress is not None:
                            progress(step)
                        if step.remaining == 0 or step.rewrapped == 0:
                            break
        return t.KekRotation(step.kek_id, rewrapped, step.remaining, batches)

    @asynccontextmanager
    async def reservation(
        self,
        org_id: str,
        workspace_id: str,
        model: str,
        usage: Mapping[str, Any],
        **kwargs: Any,
    ) -> AsyncIterator[AsyncReservationHandle]:
        """Reserve for the block. Leaving without commit commits what was metered, or
        releases when nothing was; an exception releases (the SQL books any metered
        usage) and re-raises. A denied reservation raises BudgetExceeded."""
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
                # the last tick is a measurement, not the final usage: approximate
                await handle.commit(handle.metered_usage, approximate=True)
            else:
                await handle.release("left without commit")


class AsyncReservationHandle:
    """A live reservation inside ``async with client.reservation(...) as r``."""

    def __init__(self, client: AsyncClient, reservation: t.Reservation) -> None:
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

    async def meter(self, usage: Mapping[str, Any]) -> t.MeterResult:
        self.last_meter = await self._client.meter(self.id, usage)
        self.metered_usage = dict(usage)
        return self.last_meter

    async def commit(
        self, usage: Mapping[str, Any], *, approximate: bool = False
    ) -> t.CommitResult:
        self.result = await self._client.commit(self.id, usage, approximate=approximate)
        return self.result

    async def release(self, reason: str | None = None) -> int:
        self.released_micros = await self._client.release(self.id, reason)
        return self.released_micros

    async def byok_key(self, provider: str | None = None) -> t.ByokSecret:
        return await self._client.resolve_key(self.id, provider)
