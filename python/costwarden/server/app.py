"""The ASGI application of `costwarden serve` (SPEC §13, docs/http.md).

Every route is a thin call of one costwarden function through :mod:`.db` under the
caller's verified identity; what a caller may do, and every budget rule, is decided
by the database. This module only translates: JSON bodies to function arguments,
result rows to JSON (money as integer micros), SQLSTATEs to HTTP statuses.
"""

import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

import psycopg
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import _sql as q
from .. import migrate as migrations
from .. import types as t
from ..errors import (
    AppendOnlyViolation,
    CostwardenError,
    DatabaseUnavailable,
    Forbidden,
    IdempotencyConflict,
    InvalidArgument,
    InvalidState,
    NotFound,
    UnpricedModel,
)
from . import models as m
from .auth import Identity, NotPermitted, TokenVerifier, Unauthenticated
from .config import ServerConfig
from .dashboard import mount_dashboard
from .db import Database
from .metrics import ServerMetrics
from .models import HTTPError

log = logging.getLogger("costwarden.server")

#: SPEC §13: SQLSTATE -> HTTP status.
STATUS: dict[type[CostwardenError], int] = {
    AppendOnlyViolation: 409,
    NotFound: 404,
    InvalidState: 409,
    InvalidArgument: 422,
    Forbidden: 403,
    UnpricedModel: 422,
    IdempotencyConflict: 409,
    DatabaseUnavailable: 503,
}
ERROR_NAMES: dict[int, str] = {
    400: "bad_request",
    401: "not_authenticated",
    402: "payment_required",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "payload_too_large",
    422: "invalid_argument",
    503: "database_unavailable",
}
_ARG = re.compile(r"^(?:p_)?([a-z_]+)\b")

#: Scope kinds of /v1/orgs/{org}/user-limits/{kind}/{id}.
UserLimitKind = Literal["user", "group"]
RunCall = Callable[..., Awaitable[Any]]

#: Cookie the dashboard keeps its token in (set by POST /login).
TOKEN_COOKIE = "costwarden_token"


# -- JSON ------------------------------------------------------------------------------


def _default(obj: Any) -> Any:
    if isinstance(obj, UUID):
        return str(obj)
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Decimal):
        return str(obj)  # exact (credits, ratios); money is always an int of micros
    if isinstance(obj, timedelta):
        return obj.total_seconds()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, default=_default, separators=(",", ":")).encode()


class Json(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


# -- errors ----------------------------------------------------------------------------


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "")


def error_response(request: Request, err: HTTPError) -> Response:
    body = {
        "error": ERROR_NAMES.get(err.status, "error"),
        "message": err.message,
        "field": err.field,
        "sqlstate": err.sqlstate,
        "request_id": _request_id(request),
    }
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return Json(body, status_code=err.status, headers=headers)


def from_costwarden(exc: CostwardenError, *, invalid_status: int = 422) -> HTTPError:
    status = STATUS.get(type(exc), 500)
    if isinstance(exc, InvalidArgument):
        status = invalid_status
    field = None
    if isinstance(exc, InvalidArgument | Forbidden | NotFound):
        match = _ARG.match(exc.message)
        if match and exc.message.startswith("p_"):
            field = match.group(1)
    if status == 503:
        return HTTPError(503, "the database is unavailable", sqlstate=None)
    return HTTPError(status, exc.message, field=field, sqlstate=exc.sqlstate)


def _validation_error(exc: RequestValidationError) -> HTTPError:
    """422 naming the field: the first error's location without its section
    (body, query, path), union branch tags or JSON positions."""
    parts: list[str] = []
    first_field = None
    for e in exc.errors():
        if e.get("type") == "json_invalid":
            name = "body"
        else:
            loc = [str(x) for x in e.get("loc", ()) if isinstance(x, str) and x not in _LOC_NOISE]
            name = ".".join(loc) or "body"
        first_field = first_field or name
        part = f"{name}: {e.get('msg', 'invalid')}"
        if part not in parts:
            parts.append(part)
    return HTTPError(422, "; ".join(parts) or "invalid request", field=first_field)


_LOC_NOISE = frozenset({"body", "query", "path", "header", "cookie", "int", "float"})


# -- ASGI middleware: request ids, body bound, CORS off, latency --------------------------

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class Envelope:
    """Pure ASGI middleware (no per-request task): gives every request an id (the
    caller's ``X-Request-ID`` when it is sane, else a new one), echoes it on the
    response, refuses bodies over ``max_body`` with 413 (by Content-Length, and by
    counting when the body streams), and observes the latency histogram."""

    def __init__(self, app: ASGIApp, max_body: int, metrics: ServerMetrics) -> None:
        self.app, self.max_body, self.metrics = app, max_body, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")
        if not _REQUEST_ID.match(rid):
            rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status_holder = [500]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_body:
                await self._too_large(rid, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        else:
            # no Content-Length (chunked): read the body up to the bound first
            messages: list[Message] = []
            received, more = 0, True
            while more:
                message = await receive()
                messages.append(message)
                if message["type"] != "http.request":
                    break
                received += len(message.get("body", b""))
                more = message.get("more_body", False)
                if received > self.max_body:
                    await self._too_large(rid, send_with_id)
                    break
            else:
                await self.app(scope, _replay(messages, receive), send_with_id)
        route = scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        self.metrics.observe(scope["method"], path, status_holder[0], time.perf_counter() - started)

    async def _too_large(self, rid: str, send: Send) -> None:
        body = dumps(
            {
                "error": "payload_too_large",
                "message": f"request body over {self.max_body} bytes",
                "field": None,
                "sqlstate": None,
                "request_id": rid,
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


# -- the application ---------------------------------------------------------------------

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": m.ErrorBody, "description": description}
    for status, description in (
        (401, "missing, expired or badly signed token"),
        (403, "the token's role or actor may not do this (CW005, or no privilege)"),
        (422, "invalid argument (CW004, CW006, a malformed body): `field` names it"),
        (503, "the database is unavailable"),
    )
}


def _errors(*extra: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "invalid limit or period",
        404: "unknown org, scope or reservation (CW002)",
        409: "the reservation's state does not allow it (CW003) or idempotency conflict (CW007)",
    }
    out = dict(ERRORS)
    for status in extra:
        out[status] = {"model": m.ErrorBody, "description": described[status]}
    return out


def create_app(config: ServerConfig) -> FastAPI:
    """The application for ``config`` (uvicorn runs it; tests drive it directly)."""
    db = Database(config)
    verifier = TokenVerifier(config)
    metrics = ServerMetrics(db, config)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await db.open()
        try:
            yield
        finally:
            await db.close()

    app = FastAPI(
        title="costwarden",
        summary="Budgets, the reserve/commit saga and spend of AI provider calls, over HTTP",
        description=(
            "Every route calls one costwarden SQL function as the token's role "
            "(SPEC §13). Money is integer micro-USD (1 USD = 1000000)."
        ),
        version=_version(),
        openapi_url=None,  # served below, behind a token like every route
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.db = db
    app.state.config = config
    app.state.verifier = verifier
    app.state.metrics = metrics
    bearer = HTTPBearer(auto_error=False, description="a JWT with claims role, org_id, sub")

    async def identity(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Identity:
        header = request.headers.get("authorization")
        if header is None and credentials is None:
            header = _cookie_token(request)
        return verifier.verify(header)

    Caller = Annotated[Identity, Depends(identity)]

    async def run(
        caller: Identity,
        call: q.Call[Any],
        *,
        invalid_status: int = 422,
        then: q.Call[Any] | None = None,
    ) -> Any:
        """``call`` as ``caller``; with ``then``, both in one transaction, answering
        what ``then`` returns (Database.run_then)."""
        try:
            if then is None:
                return await db.run(caller, call)
            return await db.run_then(caller, call, then)
        except CostwardenError as exc:
            raise from_costwarden(exc, invalid_status=invalid_status) from exc

    # -- error handlers
    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError) -> Response:
        return error_response(request, exc)

    @app.exception_handler(Unauthenticated)
    async def _unauthenticated(request: Request, exc: Unauthenticated) -> Response:
        return error_response(request, HTTPError(401, str(exc)))

    @app.exception_handler(NotPermitted)
    async def _not_permitted(request: Request, exc: NotPermitted) -> Response:
        return error_response(request, HTTPError(403, str(exc)))

    @app.exception_handler(CostwardenError)
    async def _costwarden(request: Request, exc: CostwardenError) -> Response:
        return error_response(request, from_costwarden(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return error_response(request, _validation_error(exc))

    @app.exception_handler(psycopg.Error)
    async def _database(request: Request, exc: psycopg.Error) -> Response:
        if exc.sqlstate == "42501":  # the role lacks EXECUTE, or the login may not SET it
            return error_response(request, HTTPError(403, "permission denied", sqlstate="42501"))
        log.exception("database error (request %s)", _request_id(request))
        return error_response(request, HTTPError(500, "internal error", sqlstate=exc.sqlstate))

    # -- §3 quote and the saga
    @app.post("/v1/quote", response_model=t.Quote, responses=_errors(404), tags=["saga"])
    async def quote(body: m.QuoteRequest, caller: Caller) -> Response:
        """Price a usage at the snapshot in force (fn_cost_quote)."""
        call = q.cost_quote(body.org_id, body.workspace_id, body.model, body.usage)
        return Json(await run(caller, call))

    @app.post(
        "/v1/reservations",
        status_code=201,
        response_model=t.Reservation,
        responses={
            **_errors(404, 409),
            402: {"model": t.Reservation, "description": "denied: `reasons` say why"},
        },
        tags=["saga"],
    )
    async def reserve(body: m.ReserveRequest, caller: Caller) -> Response:
        """Reserve (fn_cost_reserve): 201 held, 402 denied with its reasons."""
        ttl = None if body.ttl_seconds is None else timedelta(seconds=body.ttl_seconds)
        call = q.cost_reserve(
            body.org_id,
            body.workspace_id,
            body.model,
            body.usage,
            body.user_id,
            body.key_id,
            body.idempotency_key,
            ttl,
            body.metadata,
        )
        result: t.Reservation = await run(caller, call)
        metrics.reserved(result)
        return Json(result, status_code=201 if result.held else 402)

    @app.post(
        "/v1/reservations/{reservation_id}/meter",
        response_model=t.MeterResult,
        responses=_errors(404, 409),
        tags=["saga"],
    )
    async def meter(reservation_id: UUID, body: m.MeterRequest, caller: Caller) -> Response:
        """Record cumulative usage of a running call (fn_cost_meter_tick)."""
        return Json(await run(caller, q.cost_meter_tick(reservation_id, body.usage)))

    @app.post(
        "/v1/reservations/{reservation_id}/commit",
        response_model=t.CommitResult,
        responses=_errors(404, 409),
        tags=["saga"],
    )
    async def commit(reservation_id: UUID, body: m.CommitRequest, caller: Caller) -> Response:
        """Charge the actual usage (fn_cost_commit)."""
        call = q.cost_commit(reservation_id, body.usage, body.approximate)
        return Json(await run(caller, call))

    @app.post(
        "/v1/reservations/{reservation_id}/release",
        response_model=m.Released,
        responses=_errors(404, 409),
        tags=["saga"],
    )
    async def release(
        reservation_id: UUID, caller: Caller, body: m.ReleaseRequest | None = None
    ) -> Response:
        """Free the hold of a call that did not happen (fn_cost_release)."""
        reason = body.reason if body is not None else None
        released = await run(caller, q.cost_release(reservation_id, reason))
        return Json({"released_micros": released})

    @app.get(
        "/v1/reservations/{reservation_id}",
        response_model=t.ReservationInfo,
        responses=_errors(404),
        tags=["saga"],
    )
    async def get_reservation(reservation_id: UUID, caller: Caller) -> Response:
        """One reservation (fn_reservation_get): a tenant sees only its own."""
        return Json(await run(caller, q.reservation_get(reservation_id)))

    @app.get(
        "/v1/me/reservations",
        response_model=list[t.ReservationInfo],
        responses=_errors(),
        tags=["me"],
    )
    async def my_reservations(
        caller: Caller,
        status: Annotated[str | None, Query(description="held, denied, ...")] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 100,
    ) -> Response:
        """The caller's reservations, newest first (fn_get_my_cost_reservations)."""
        return Json(await run(caller, q.my_reservations(status, limit)))

    # -- §2 budgets
    async def budget_get(org: str, scope_kind: str, scope_id: str | None, caller: Identity) -> Any:
        return Json(await run(caller, q.budget_status(org, scope_kind, scope_id)))

    async def budget_write(
        caller: Identity,
        org: str,
        scope_kind: str,
        scope_id: str | None,
        period: str,
        limit: int | None,
        metric: str,
        window: str,
        mode: str,
    ) -> Any:
        """fn_budget_set, then the scope's fn_budget_status, in one transaction: a read
        refused rolls the write back. A bad limit (negative, or no bigint) or period
        is 400 (SPEC §13)."""
        try:
            call = q.budget_set(org, scope_kind, scope_id, period, limit, metric, window, mode)
        except InvalidArgument as exc:  # a limit no bigint holds: checked before sending
            raise from_costwarden(exc, invalid_status=400) from exc
        status = q.budget_status(org, scope_kind, scope_id)
        return Json(await run(caller, call, then=status, invalid_status=400))

    async def budget_patch(
        org: str, scope_kind: str, scope_id: str | None, body: m.BudgetPatch, caller: Identity
    ) -> Any:
        return await budget_write(
            caller,
            org,
            scope_kind,
            scope_id,
            body.period,
            body.limit,
            body.metric,
            body.window,
            body.mode,
        )

    budget_doc: dict[str, Any] = {
        "response_model": list[t.BudgetStatus],
        "responses": _errors(400, 404),
        "tags": ["budgets"],
    }

    @app.get("/v1/orgs/{org}/budgets/{scope_kind}", **budget_doc)
    async def get_budget(org: str, scope_kind: str, caller: Caller) -> Any:
        """Every period's limit, spent, held and remaining of a scope with no id
        (org, user_default) (fn_budget_status)."""
        return await budget_get(org, scope_kind, None, caller)

    @app.get("/v1/orgs/{org}/budgets/{scope_kind}/{scope_id}", **budget_doc)
    async def get_scope_budget(org: str, scope_kind: str, scope_id: str, caller: Caller) -> Any:
        """Every period's limit, spent, held and remaining of one scope (fn_budget_status)."""
        return await budget_get(org, scope_kind, scope_id, caller)

    @app.patch("/v1/orgs/{org}/budgets/{scope_kind}", **budget_doc)
    async def patch_budget(org: str, scope_kind: str, body: m.BudgetPatch, caller: Caller) -> Any:
        """Set (or, with limit null, clear) one limit of a scope with no id (fn_budget_set);
        a negative limit or an unknown period is 400. Returns the scope's status."""
        return await budget_patch(org, scope_kind, None, body, caller)

    @app.patch("/v1/orgs/{org}/budgets/{scope_kind}/{scope_id}", **budget_doc)
    async def patch_scope_budget(
        org: str, scope_kind: str, scope_id: str, body: m.BudgetPatch, caller: Caller
    ) -> Any:
        """Set (or clear) one limit of a scope (fn_budget_set); returns its status."""
        return await budget_patch(org, scope_kind, scope_id, body, caller)

    # -- user limits: per-user overrides, group limits, the org's default (SPEC §2)
    user_limit_doc: dict[str, Any] = {
        "response_model": list[t.BudgetStatus],
        "responses": _errors(400, 404),
        "tags": ["user limits"],
    }

    @app.get("/v1/orgs/{org}/user-limits/default", **user_limit_doc)
    async def get_user_default(org: str, caller: Caller) -> Any:
        """The org's per-member default limits (scope user_default)."""
        return await budget_get(org, "user_default", None, caller)

    @app.put("/v1/orgs/{org}/user-limits/default", **user_limit_doc)
    async def put_user_default(org: str, body: m.BudgetPatch, caller: Caller) -> Any:
        """Set or clear (limit null) one per-member default limit."""
        return await budget_patch(org, "user_default", None, body, caller)

    @app.get("/v1/orgs/{org}/user-limits/{kind}/{scope_id}", **user_limit_doc)
    async def get_user_limit(org: str, kind: UserLimitKind, scope_id: str, caller: Caller) -> Any:
        """A user's effective limits (kind user, with their source) or a group's limits."""
        return await budget_get(org, kind, scope_id, caller)

    @app.put("/v1/orgs/{org}/user-limits/{kind}/{scope_id}", **user_limit_doc)
    async def put_user_limit(
        org: str, kind: UserLimitKind, scope_id: str, body: m.BudgetPatch, caller: Caller
    ) -> Any:
        """Set or clear (limit null) a user's override or a group's per-member limit."""
        return await budget_patch(org, kind, scope_id, body, caller)

    @app.delete("/v1/orgs/{org}/user-limits/{kind}/{scope_id}", **user_limit_doc)
    async def delete_user_limit(
        org: str,
        kind: UserLimitKind,
        scope_id: str,
        caller: Caller,
        period: Annotated[str, Query()],
        metric: Annotated[str, Query()] = "cost",
        window: Annotated[str, Query()] = "rolling",
    ) -> Any:
        """Remove one limit of a user or group."""
        return await budget_write(
            caller, org, kind, scope_id, period, None, metric, window, "enforce"
        )

    # -- §11 spend visibility
    @app.get(
        "/v1/orgs/{org}/spend",
        response_model=list[t.SpendSummary],
        responses=_errors(404),
        tags=["spend"],
    )
    async def spend(
        org: str,
        caller: Caller,
        scope_kind: Annotated[str, Query(description="org, workspace, user or key")] = "org",
        scope_id: Annotated[str | None, Query(description="one scope; none: every scope")] = None,
        period: Annotated[str, Query(description="hour, day, week or month")] = "month",
        window: Annotated[str, Query(description="calendar or rolling")] = "calendar",
    ) -> Response:
        """Spend, holds and calls per scope in a window, with or without a limit
        (fn_spend_summary)."""
        call = q.spend_summary(org, scope_kind, scope_id, period, window, None)
        return Json(await run(caller, call))

    @app.get(
        "/v1/orgs/{org}/limits",
        response_model=list[t.BudgetLimit],
        responses=_errors(404),
        tags=["budgets"],
    )
    async def limits(
        org: str,
        caller: Caller,
        scope_kind: Annotated[str | None, Query(description="only this scope kind")] = None,
    ) -> Response:
        """Every limit configured in the org (fn_budget_list)."""
        return Json(await run(caller, q.budget_list(org, scope_kind)))

    @app.get(
        "/v1/me/allocations",
        response_model=list[t.Allocation],
        responses=_errors(),
        tags=["me"],
    )
    async def my_allocations(
        caller: Caller,
        period: Annotated[str, Query()] = "month",
        window: Annotated[str, Query()] = "calendar",
    ) -> Response:
        """Each key the caller owns, with its cap and cost used this month (fn_my_allocations)."""
        return Json(await run(caller, q.my_allocations(period, window)))

    # -- BYOK keys (admin; the KEK is the service's own configuration)
    @app.put(
        "/v1/orgs/{org}/workspaces/{workspace_id}/keys/{provider}",
        response_model=m.Fingerprint,
        responses=_errors(404),
        tags=["byok"],
    )
    async def put_key(
        org: str, workspace_id: str, provider: str, body: m.ByokKeyPut, caller: Caller
    ) -> Response:
        """Store a workspace's provider key (fn_byok_key_put); returns its fingerprint."""
        fingerprint = await run(caller, q.byok_key_put(org, workspace_id, provider, body.secret))
        return Json({"fingerprint": fingerprint})

    @app.delete(
        "/v1/orgs/{org}/workspaces/{workspace_id}/keys/{provider}",
        response_model=m.Revoked,
        responses=_errors(404),
        tags=["byok"],
    )
    async def revoke_key(org: str, workspace_id: str, provider: str, caller: Caller) -> Response:
        """Revoke a workspace's provider key (fn_byok_key_revoke)."""
        revoked = await run(caller, q.byok_key_revoke(org, workspace_id, provider))
        return Json({"revoked": bool(revoked)})

    # -- audit, anomalies, circuits
    @app.get(
        "/v1/orgs/{org}/audit",
        response_model=list[t.AuditEntry],
        responses=_errors(404),
        tags=["guardrails"],
    )
    async def audit(
        org: str,
        caller: Caller,
        action: str | None = None,
        since: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 100,
    ) -> Response:
        """The org's audit trail, newest first (fn_audit_list)."""
        return Json(await run(caller, q.audit_list(org, action, since, limit)))

    @app.get(
        "/v1/orgs/{org}/anomalies",
        response_model=list[t.Anomaly],
        responses=_errors(404),
        tags=["guardrails"],
    )
    async def anomalies(
        org: str,
        caller: Caller,
        open_only: bool = False,
        limit: Annotated[int, Query(ge=1, le=10000)] = 100,
    ) -> Response:
        """The org's spend anomalies (fn_anomalies_list)."""
        return Json(await run(caller, q.anomalies_list(org, open_only, limit)))

    @app.post(
        "/v1/anomalies/{anomaly_id}/ack",
        status_code=204,
        responses=_errors(404),
        tags=["guardrails"],
    )
    async def ack_anomaly(anomaly_id: m.BigintPath, caller: Caller) -> Response:
        """Acknowledge an anomaly, lifting its freeze (fn_anomaly_ack)."""
        await run(caller, q.anomaly_ack(anomaly_id))
        return Response(status_code=204)

    @app.get(
        "/v1/circuits",
        response_model=list[t.CircuitStatus],
        responses=_errors(),
        tags=["guardrails"],
    )
    async def circuits(caller: Caller) -> Response:
        """Every provider's circuit (fn_circuit_status)."""
        return Json(await run(caller, q.circuit_status()))

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(caller: Caller) -> Response:
        """The OpenAPI 3.1 document of this API."""
        return Json(app.openapi())

    # -- health and metrics
    @app.get(
        "/healthz", response_model=m.Health, responses={503: {"model": m.Health}}, tags=["ops"]
    )
    async def healthz() -> Response:
        """Database reachable and schema up to date (no token needed: it reveals nothing else)."""
        health = await check_health(db)
        return Json(health, status_code=200 if health["ok"] else 503)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}, **ERRORS},
        tags=["ops"],
    )
    async def metrics_route(caller: Caller) -> Response:
        """Prometheus text (admin or service token): docs/http.md#metrics."""
        try:
            text = await metrics.render(caller)
        except CostwardenError as exc:
            raise from_costwarden(exc) from exc
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    mount_dashboard(app, run, verifier)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
            allow_headers=["authorization", "content-type", "x-request-id"],
        )
    app.add_middleware(Envelope, max_body=config.max_body_bytes, metrics=metrics)
    return app


def _cookie_token(request: Request) -> str | None:
    token = request.cookies.get(TOKEN_COOKIE)
    return f"Bearer {token}" if token else None


async def check_health(db: Database) -> dict[str, Any]:
    """Reachable, and every migration and function file applied as shipped."""
    try:
        state: list[t.SchemaObject] = await db.run_as_service(q.schema_state())
    except (CostwardenError, psycopg.Error) as exc:
        log.warning("health check failed: %s", exc)
        return {
            "ok": False,
            "database": False,
            "schema_up_to_date": False,
            "pending_migrations": [],
            "outdated_functions": [],
            "unknown_migrations": [],
        }
    applied = {s.version: s.checksum for s in state if s.kind == "migration"}
    recorded = {s.name: s.checksum for s in state if s.kind == "function"}
    shipped = migrations.load_migrations()
    pending = [mig.filename for mig in shipped if mig.version not in applied]
    unknown = sorted(v for v in set(applied) - {mig.version for mig in shipped} if v is not None)
    outdated = list(migrations._outdated(migrations.load_functions(), recorded))
    up_to_date = not pending and not outdated and not unknown
    return {
        "ok": up_to_date,
        "database": True,
        "schema_up_to_date": up_to_date,
        "pending_migrations": pending,
        "outdated_functions": outdated,
        "unknown_migrations": unknown,
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("costwarden")
    except PackageNotFoundError:
        return "0"


__all__ = ["HTTPError", "create_app"]
