"""The dashboard at ``/`` (SPEC §13, docs/dashboard.md): server-rendered HTML (Jinja2),
bars as inline SVG, no JavaScript framework, nothing fetched from elsewhere.

Every figure is read through the same SQL functions as the API, under the viewer's
token: an admin or service token sees an org (spend and holds against each limit,
spend per workspace, recent denials, anomalies, circuits, a budget form in USD); a
tenant token sees only its own scopes (its user limits and its keys, the allocation
card), with near-cap warnings at 80 % and 100 %. The browser keeps the token in an
HttpOnly, SameSite=Strict cookie set by the sign-in form; the budget form also carries
a token derived from it (CSRF)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from .. import _sql as q
from .. import types as t
from ..errors import InvalidArgument
from .auth import Identity, NotPermitted, TokenVerifier, Unauthenticated
from .models import HTTPError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

TOKEN_COOKIE = "costwarden_token"
MICROS_PER_USD = Decimal(1_000_000)
AMBER, RED = Decimal("0.8"), Decimal(1)

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def usd(micros: int | None) -> str:
    if micros is None:
        return "—"
    return f"${Decimal(micros) / MICROS_PER_USD:,.2f}"


_templates.filters["usd"] = usd


def micros_from_usd(text: str) -> int | None:
    """A limit typed in USD, as micros (None: empty, clears the limit). Raises
    ValueError for anything that is not a non-negative amount with at most six
    decimals (a micro-USD is the smallest unit)."""
    text = text.strip().replace(",", "").removeprefix("$")
    if not text:
        return None
    try:
        amount = Decimal(text)
    except InvalidOperation as exc:
        raise ValueError(f"not an amount in USD: {text!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise ValueError("the limit must be a non-negative amount in USD")
    micros = amount * MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise ValueError("at most six decimals: one micro-USD is the smallest unit")
    return int(micros)


@dataclass(frozen=True)
class Bar:
    """One limit's bar: spent and held against the limit (cost in micros, or tokens)."""

    scope_kind: str
    scope_id: str | None
    period: str
    window: str
    metric: str  # cost | tokens
    spent: int
    held: int
    limit: int

    @property
    def label(self) -> str:
        return self.scope_kind if self.scope_id is None else f"{self.scope_kind} {self.scope_id}"

    @property
    def ratio(self) -> Decimal:
        if self.limit <= 0:
            return RED if self.spent + self.held > 0 or self.limit == 0 else Decimal(0)
        return Decimal(self.spent + self.held) / Decimal(self.limit)

    @property
    def state(self) -> str:
        r = self.ratio
        return "red" if r >= RED else "amber" if r >= AMBER else "green"

    @property
    def percent(self) -> int:
        return int(self.ratio * 100)

    def width(self, part: int, total: int = 300) -> int:
        if self.limit <= 0:
            return total if part else 0
        return min(total, round(total * part / self.limit))

    def amount(self, value: int) -> str:
        return usd(value) if self.metric == "cost" else f"{value:,} tokens"


def csrf_token(token: str) -> str:
    return hashlib.sha256(b"costwarden-dashboard-csrf:" + token.encode()).hexdigest()[:32]


def bars_of(rows: list[t.SpendSummary]) -> list[Bar]:
    out = []
    for s in rows:
        for metric, spent, held, limit in (
            ("cost", s.spent_micros, s.held_micros, s.limit_micros),
            ("tokens", s.spent_tokens, s.held_tokens, s.limit_tokens),
        ):
            if limit is not None:
                out.append(
                    Bar(
                        s.scope_kind,
                        s.scope_id,
                        s.period,
                        s.window_kind,
                        metric,
                        spent,
                        held,
                        limit,
                    )
                )
    return out


def mount_dashboard(
    app: FastAPI, run: Callable[..., Awaitable[Any]], verifier: TokenVerifier
) -> None:
    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        response = HTMLResponse(_templates.get_template(name).render(**context), status)
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cache-Control"] = "no-store"
        return response

    def sign_in(message: str | None, status: int) -> HTMLResponse:
        response = page("login.html", status, message=message)
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    def viewer(request: Request) -> tuple[Identity, str]:
        header = request.headers.get("authorization")
        if header:
            return verifier.verify(header), header.partition(" ")[2].strip()
        raw = request.cookies.get(TOKEN_COOKIE)
        return verifier.verify(f"Bearer {raw}" if raw else None), raw or ""

    async def optional(caller: Identity, call: q.Call[Any]) -> tuple[Any, str | None]:
        """A section's rows, or the reason it cannot be shown to this viewer."""
        try:
            return await run(caller, call), None
        except HTTPError as exc:
            if exc.status in (403, 404):
                return None, exc.message
            raise

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_form() -> HTMLResponse:
        return sign_in(None, 200)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request, token: str = Form(...)) -> Response:
        try:
            verifier.verify_token(token.strip())
        except (Unauthenticated, NotPermitted) as exc:
            return sign_in(str(exc), 401 if isinstance(exc, Unauthenticated) else 403)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            TOKEN_COOKIE,
            token.strip(),
            httponly=True,
            samesite="strict",
            path="/",
            # sent back over https only when it came over https (behind a TLS proxy,
            # uvicorn's proxy headers tell the scheme); plain http on 127.0.0.1 works
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/logout", include_in_schema=False)
    async def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(TOKEN_COOKIE, path="/")
        return response

    @app.get("/", response_class=HTMLResponse, summary="The dashboard (HTML)", tags=["dashboard"])
    async def dashboard(
        request: Request,
        org: str | None = None,
        period: str = "month",
        window: str = "calendar",
        message: str | None = None,
        error: str | None = None,
    ) -> HTMLResponse:
        """Spend against limits, spend per workspace, denials, anomalies and circuits of
        an org; for a tenant, its own scopes. Needs a token (header or sign-in cookie)."""
        try:
            caller, raw = viewer(request)
        except Unauthenticated as exc:
            return sign_in(str(exc), 401)
        except NotPermitted as exc:
            return sign_in(str(exc), 403)
        org_id = caller.org_id or org
        common: dict[str, Any] = {
            "caller": caller,
            "org": org_id,
            "period": period,
            "window": window,
            "message": message,
            "error": error,
            "csrf": csrf_token(raw),
            "periods": ("hour", "day", "week", "month"),
            "windows": ("calendar", "rolling"),
        }
        if caller.role == "costwarden_tenant":
            return await tenant_view(caller, common)
        if org_id is None:
            return page("dashboard.html", **common, bars=[], workspaces=[], need_org=True)
        try:
            limits: list[t.BudgetLimit] = await run(caller, q.budget_list(org_id, None))
        except HTTPError as exc:
            return page(
                "dashboard.html",
                200 if exc.status != 404 else 404,
                **common,
                bars=[],
                workspaces=[],
                error=exc.message,
            )
        scopes = sorted(
            {
                (b.scope_kind, b.scope_id)
                for b in limits
                if b.scope_kind in ("org", "workspace", "key", "user")
                and b.mode == "enforce"
                and b.period == period
                and b.window_kind == window
            },
            key=lambda s: (("org", "workspace", "user", "key").index(s[0]), s[1] or ""),
        )
        rows: list[t.SpendSummary] = []
        for kind, scope_id in scopes:
            rows += await run(caller, q.spend_summary(org_id, kind, scope_id, period, window, None))
        bars = bars_of(rows)
        workspaces = await run(
            caller, q.spend_summary(org_id, "workspace", None, period, window, None)
        )
        denials, denials_note = await optional(caller, q.reservations_list(org_id, "denied", 15))
        anomalies, anomalies_note = await optional(caller, q.anomalies_list(org_id, False, 15))
        circuits, circuits_note = await optional(caller, q.circuit_status())
        return page(
            "dashboard.html",
            **common,
            bars=bars,
            workspaces=workspaces,
            alerts=[b for b in bars if b.state != "green"],
            denials=denials,
            denials_note=denials_note,
            anomalies=anomalies,
            anomalies_note=anomalies_note,
            circuits=circuits,
            circuits_note=circuits_note,
            limits=limits,
            can_edit=caller.role == "costwarden_admin",
            need_org=False,
        )

    async def tenant_view(caller: Identity, common: dict[str, Any]) -> HTMLResponse:
        period, window = common["period"], common["window"]
        if caller.org_id is None or caller.sub is None:
            return sign_in("a tenant token needs org_id and sub", 403)
        own, own_note = await optional(
            caller, q.spend_summary(caller.org_id, "user", caller.sub, period, window, None)
        )
        allocations: list[t.Allocation] = await run(caller, q.my_allocations(period, window))
        cards = [
            Bar(
                "key",
                a.key_id,
                a.period,
                a.window_kind,
                "cost",
                a.spent_micros,
                a.held_micros,
                a.limit_micros,
            )
            for a in allocations
            if a.limit_micros is not None
        ]
        bars = bars_of(own or []) + cards
        denied = await run(caller, q.my_reservations("denied", 10))
        return page(
            "tenant.html",
            **common,
            bars=bars,
            allocations=allocations,
            own_note=own_note,
            alerts=[b for b in bars if b.state != "green"],
            denials=denied,
        )

    @app.post("/budgets", include_in_schema=False)
    async def budget_form(request: Request) -> Response:
        try:
            caller, raw = viewer(request)
        except (Unauthenticated, NotPermitted) as exc:
            return sign_in(str(exc), 401)
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        if not hmac.compare_digest(form.get("csrf", ""), csrf_token(raw)):
            return sign_in("the form expired: sign in again", 403)
        org = form.get("org", "")
        scope_kind, scope_id = form.get("scope_kind", ""), form.get("scope_id", "")
        period, window = form.get("period", ""), form.get("window", "calendar")
        limit_usd = form.get("limit_usd", "")
        back = {"org": org, "period": period, "window": window}
        try:
            limit = micros_from_usd(limit_usd)
            call = q.budget_set(
                org, scope_kind, scope_id or None, period, limit, "cost", window, "enforce"
            )
        except (ValueError, InvalidArgument) as exc:  # not an amount, or none a bigint holds
            return RedirectResponse("/?" + urlencode({**back, "error": str(exc)}), 303)
        try:
            await run(caller, call)
        except HTTPError as exc:
            return RedirectResponse("/?" + urlencode({**back, "error": exc.message}), 303)
        scope = scope_kind if not scope_id else f"{scope_kind} {scope_id}"
        done = (
            f"{scope} {period} ({window}) limit removed"
            if limit is None
            else f"{scope} {period} ({window}) limit set to {usd(limit)} = {limit:,} micros"
        )
        return RedirectResponse("/?" + urlencode({**back, "message": done}), 303)
