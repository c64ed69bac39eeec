"""Every SQL statement the Python package runs, in one place.

Each builder returns a :class:`Call`: one statement calling one costwarden
function with named arguments, its parameters, and how to turn the rows into
result objects. The sync and async clients only execute calls; neither
re-implements a rule the SQL enforces.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Generic, TypeVar
from uuid import UUID

from psycopg.types.json import Jsonb

from . import types as t

R = TypeVar("R")
Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Call(Generic[R]):
    sql: str
    params: Mapping[str, Any]
    parse: Callable[[Rows], R]


def _none(_rows: Rows) -> None:
    return None


def _scalar(rows: Rows) -> Any:
    return next(iter(rows[0].values())) if rows else None


def _one(cls: type[Any]) -> Callable[[Rows], Any]:
    def parse(rows: Rows) -> Any:
        return cls.from_row(rows[0])

    return parse


def _many(cls: type[Any]) -> Callable[[Rows], Any]:
    def parse(rows: Rows) -> Any:
        return [cls.from_row(r) for r in rows]

    return parse


def _json(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value, dumps=exact_json)


# -- session context ---------------------------------------------------------

SET_CONTEXT = (
    "select set_config('costwarden.actor_org', coalesce(%(actor_org)s, ''), true), "
    "set_config('costwarden.actor_user', coalesce(%(actor_user)s, ''), true), "
    "set_config('costwarden.kek', coalesce(%(kek)s, ''), true)"
)

# -- §1 tenancy and catalogue -------------------------------------------------


def org_upsert(org_id: str, settings: Mapping[str, Any] | None = None) -> Call[None]:
    return Call(
        "select costwarden.fn_org_upsert(p_org_id => %(org_id)s, p_settings => %(settings)s)",
        {"org_id": org_id, "settings": Jsonb(dict(settings or {}))},
        _none,
    )


def workspace_upsert(
    org_id: str, workspace_id: str, model: str | None, billing_override: str | None
) -> Call[None]:
    return Call(
        "select costwarden.fn_workspace_upsert(p_org_id => %(org_id)s, "
        "p_workspace_id => %(workspace_id)s, p_model => %(model)s, "
        "p_billing_override => %(billing_override)s)",
        {
            "org_id": org_id,
            "workspace_id": workspace_id,
            "model": model,
            "billing_override": billing_override,
        },
        _none,
    )


def workspace_seed_model(org_id: str, workspace_id: str, model: str) -> Call[bool]:
    return Call(
        "select costwarden.fn_workspace_seed_model(p_org_id => %(org_id)s, "
        "p_workspace_id => %(workspace_id)s, p_model => %(model)s) as seeded",
        {"org_id": org_id, "workspace_id": workspace_id, "model": model},
        lambda rows: bool(_scalar(rows)),
    )


def user_upsert(org_id: str, user_id: str, groups: list[str] | None) -> Call[None]:
    return Call(
        "select costwarden.fn_user_upsert(p_org_id => %(org_id)s, p_user_id => %(user_id)s, "
        "p_groups => %(groups)s::text[])",
        {"org_id": org_id, "user_id": user_id, "groups": groups},
        _none,
    )


def key_upsert(
    org_id: str, key_id: str, workspace_id: str | None, user_id: str | None
) -> Call[None]:
    return Call(
        "select costwarden.fn_key_upsert(p_org_id => %(org_id)s, p_key_id => %(key_id)s, "
        "p_workspace_id => %(workspace_id)s, p_user_id => %(user_id)s)",
        {"org_id": org_id, "key_id": key_id, "workspace_id": workspace_id, "user_id": user_id},
        _none,
    )


def model_upsert(model: str, platform_servable: bool) -> Call[None]:
    return Call(
        "select costwarden.fn_model_upsert(p_model => %(model)s, "
        "p_platform_servable => %(platform_servable)s)",
        {"model": model, "platform_servable": platform_servable},
        _none,
    )


def exact_json(value: Any) -> str:
    """JSON text in which Decimals are written as exact number literals."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"not a finite number: {value}")
        return format(value, "f")
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {exact_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(exact_json(v) for v in value) + "]"
    return json.dumps(value)


def pricing_set(model: str, prices: Mapping[str, Any], effective_from: datetime | None) -> Call[int]:
    return Call(
        "select costwarden.fn_pricing_set(p_model => %(model)s, p_prices => %(prices)s::jsonb, "
        "p_effective_from => coalesce(%(effective_from)s::timestamptz, now())) as snapshot_id",
        {"model": model, "prices": exact_json(prices), "effective_from": effective_from},
        lambda rows: int(_scalar(rows)),
    )


def pricing_list(model: str | None, at: datetime | None) -> Call[list[t.PricingEntry]]:
    return Call(
        "select * from costwarden.fn_pricing_list(p_model => %(model)s, "
        "p_at => coalesce(%(at)s::timestamptz, now()))",
        {"model": model, "at": at},
        _many(t.PricingEntry),
    )


def workspace_billing_mode(org_id: str, workspace_id: str) -> Call[t.BillingMode]:
    return Call(
        "select * from costwarden.fn_workspace_billing_mode(p_org_id => %(org_id)s, "
        "p_workspace_id => %(workspace_id)s)",
        {"org_id": org_id, "workspace_id": workspace_id},
        _one(t.BillingMode),
    )


# -- §6 settings and audit -------------------------------------------------------


def setting_set(key: str, value: Any) -> Call[None]:
    return Call(
        "select costwarden.fn_setting_set(p_key => %(key)s, p_value => %(value)s)",
        {"key": key, "value": Jsonb(value)},
        _none,
    )


def setting_get(key: str) -> Call[Any]:
    return Call(
        "select costwarden.fn_setting_get(p_key => %(key)s) as value",
        {"key": key},
        _scalar,
    )


def settings_list() -> Call[list[t.Setting]]:
    return Call("select * from costwarden.fn_settings_list()", {}, _many(t.Setting))


def audit_list(
    org_id: str | None, action: str | None, since: datetime | None, limit: int
) -> Call[list[t.AuditEntry]]:
    return Call(
        "select * from costwarden.fn_audit_list(p_org_id => %(org_id)s, p_action => %(action)s, "
        "p_since => %(since)s, p_limit => %(limit)s)",
        {"org_id": org_id, "action": action, "since": since, "limit": limit},
        _many(t.AuditEntry),
    )


# -- §3 the saga ----------------------------------------------------------------


def cost_quote(org_id: str, workspace_id: str, model: str, usage: Mapping[str, Any]) -> Call[t.Quote]:
    return Call(
        "select * from costwarden.fn_cost_quote(p_org_id => %(org_id)s, "
        "p_workspace_id => %(workspace_id)s, p_model => %(model)s, p_usage => %(usage)s)",
        {"org_id": org_id, "workspace_id": workspace_id, "model": model, "usage": _json(usage)},
        _one(t.Quote),
    )


def cost_reserve(
    org_id: str,
    workspace_id: str,
    model: str,
    usage: Mapping[str, Any],
    user_id: str | None,
    key_id: str | None,
    idempotency_key: str | None,
    ttl: timedelta | None,
    metadata: Mapping[str, Any] | None,
) -> Call[t.Reservation]:
    return Call(
        "select * from costwarden.fn_cost_reserve(p_org_id => %(org_id)s, "
        "p_workspace_id => %(workspace_id)s, p_model => %(model)s, p_usage => %(usage)s, "
        "p_user_id => %(user_id)s, p_key_id => %(key_id)s, "
        "p_idempotency_key => %(idempotency_key)s, p_ttl => %(ttl)s::interval, "
        "p_metadata => %(metadata)s)",
        {
            "org_id": org_id,
            "workspace_id": workspace_id,
            "model": model,
            "usage": _json(usage),
            "user_id": user_id,
            "key_id": key_id,
            "idempotency_key": idempotency_key,
            "ttl": ttl,
            "metadata": Jsonb(dict(metadata or {})),
        },
        _one(t.Reservation),
    )


def cost_meter_tick(reservation_id: UUID, usage: Mapping[str, Any]) -> Call[t.MeterResult]:
    return Call(
        "select * from costwarden.fn_cost_meter_tick(p_reservation_id => %(rid)s, "
        "p_usage => %(usage)s)",
        {"rid": reservation_id, "usage": _json(usage)},
        _one(t.MeterResult),
    )


def cost_commit(
    reservation_id: UUID, usage: Mapping[str, Any], approximate: bool
) -> Call[t.CommitResult]:
    return Call(
        "select * from costwarden.fn_cost_commit(p_reservation_id => %(rid)s, "
        "p_usage => %(usage)s, p_approximate => %(approximate)s)",
        {"rid": reservation_id, "usage": _json(usage), "approximate": approximate},
        _one(t.CommitResult),
    )


def cost_release(reservation_id: UUID, reason: str | None) -> Call[int]:
    return Call(
        "select released_micros from costwarden.fn_cost_release(p_reservation_id => %(rid)s, "
        "p_reason => %(reason)s)",
        {"rid": reservation_id, "reason": reason},
        lambda rows: int(_scalar(rows)),
    )


def cost_expire(batch: int) -> Call[int]:
    return Call(
        "select costwarden.fn_cost_expire_reservations(p_batch => %(batch)s) as n",
        {"batch": batch},
        lambda rows: int(_scalar(rows)),
    )


def maintenance() -> Call[int]:
    return Call("select costwarden.fn_maintenance() as n", {}, lambda rows: int(_scalar(rows)))


def my_reservations(status: str | None, limit: int) -> Call[list[t.ReservationInfo]]:
    return Call(
        "select * from costwarden.fn_get_my_cost_reservations(p_status => %(status)s, "
        "p_limit => %(limit)s)",
        {"status": status, "limit": limit},
        _many(t.ReservationInfo),
    )


def reservations_list(
    org_id: str | None, status: str | None, limit: int
) -> Call[list[t.ReservationInfo]]:
    return Call(
        "select * from costwarden.fn_reservations_list(p_org_id => %(org_id)s, "
        "p_status => %(status)s, p_limit => %(limit)s)",
        {"org_id": org_id, "status": status, "limit": limit},
        _many(t.ReservationInfo),
    )


# -- §2 budgets -------------------------------------------------------------------


def budget_set(
    org_id: str,
    scope_kind: str,
    scope_id: str | None,
    period: str,
    limit: int | None,
    metric: str,
    window: str,
    mode: str,
) -> Call[None]:
    return Call(
        "select costwarden.fn_budget_set(p_org_id => %(org_id)s, p_scope_kind => %(scope_kind)s, "
        "p_scope_id => %(scope_id)s, p_period => %(period)s, p_limit => %(limit)s::bigint, "
        "p_metric => %(metric)s, p_window => %(window)s, p_mode => %(mode)s)",
        {
            "org_id": org_id,
            "scope_kind": scope_kind,
            "scope_id": scope_id,
            "period": period,
            "limit": limit,
            "metric": metric,
            "window": window,
            "mode": mode,
        },
        _none,
    )


def budget_status(org_id: str, scope_kind: str, scope_id: str | None) -> Call[list[t.BudgetStatus]]:
    return Call(
        "select * from costwarden.fn_budget_status(p_org_id => %(org_id)s, "
        "p_scope_kind => %(scope_kind)s, p_scope_id => %(scope_id)s)",
        {"org_id": org_id, "scope_kind": scope_kind, "scope_id": scope_id},
        _many(t.BudgetStatus),
    )


# -- §5 BYOK ---------------------------------------------------------------------


def byok_key_resolve(
    reservation_id: UUID | None,
    provider: str | None,
    org_id: str | None = None,
    workspace_id: str | None = None,
) -> Call[t.ByokSecret]:
    return Call(
        "select * from costwarden.fn_byok_key_resolve_v2(p_reservation_id => %(rid)s, "
        "p_provider => %(provider)s, p_org_id => %(org_id)s, p_workspace_id => %(workspace_id)s)",
        {"rid": reservation_id, "provider": provider, "org_id": org_id, "workspace_id": workspace_id},
        _one(t.ByokSecret),
    )


def pricing_history(model: str | None) -> Call[list[t.PricingSnapshot]]:
    return Call(
        "select * from costwarden.fn_pricing_history(p_model => %(model)s)",
        {"model": model},
        _many(t.PricingSnapshot),
    )
