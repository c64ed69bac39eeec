"""Every SQL statement the Python package runs, in one place.

Each builder returns a :class:`Call`: one statement calling one costwarden
function with named arguments, its parameters, and how to turn the rows into
result objects. The sync and async clients only execute calls; neither
re-implements a rule the SQL enforces.
"""

from __future__ import annotations

import base64
import json
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Generic, TypeVar
from uuid import UUID

from psycopg.types.json import Jsonb

from . import types as t
from .errors import InvalidArgument

R = TypeVar("R")
Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Call(Generic[R]):
    sql: str
    params: Mapping[str, Any]
    parse: Callable[[Rows], R]
    #: §5: values sent before the statement through COPY costwarden.secret_input
    #: (never statement text, never a bind parameter, so never logged); each sets
    #: a transaction-local setting (secret -> costwarden.byok_secret, kek_new -> ...).
    staged: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: §5: the call needs the client's KEK (staged as costwarden.kek the same way).
    needs_kek: bool = False


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


def _json(value: Any, arg: str = "p_usage") -> Jsonb | None:
    """A jsonb parameter, encoded now (exactly, finite numbers only)."""
    if value is None:
        return None
    text = exact_json(value, arg)
    return Jsonb(value, dumps=lambda _obj: text)


#: The values of a SQL ``integer`` and a SQL ``bigint``.
INTEGER_RANGE = (-(2**31), 2**31 - 1)
BIGINT_RANGE = (-(2**63), 2**63 - 1)


def _int(value: Any, arg: str, *, bigint: bool = True) -> int | None:
    """An integer parameter of SQL type ``bigint`` (else ``integer``), checked before
    anything is sent: out of its type's range the server would answer with a bare
    22003 (numeric_value_out_of_range) or 42883 (no function takes a numeric), and SPEC
    §0 wants no input to surface as one. InvalidArgument names the argument, as the
    SQL's own messages do. None stays NULL (the function's own CW004 when it needs a
    value)."""
    if value is None:
        return None
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None:
        raise InvalidArgument(f"{arg} must be an integer, got {type(value).__name__}")
    low, high = BIGINT_RANGE if bigint else INTEGER_RANGE
    if not low <= number <= high:
        kind = "bigint" if bigint else "integer"
        raise InvalidArgument(f"{arg} must be between {low} and {high} ({kind}), got {number}")
    return number


# -- session context ---------------------------------------------------------

SET_CONTEXT = (
    "select set_config('costwarden.actor_org', coalesce(%(actor_org)s, ''), true), "
    "set_config('costwarden.actor_user', coalesce(%(actor_user)s, ''), true)"
)

#: a client's statement_timeout on a connection it did not open: for one transaction
SET_STATEMENT_TIMEOUT = "select set_config('statement_timeout', %(ms)s, true)"

# -- §1 tenancy and catalogue -------------------------------------------------


def org_upsert(org_id: str, settings: Mapping[str, Any] | None = None) -> Call[None]:
    return Call(
        "select costwarden.fn_org_upsert(p_org_id => %(org_id)s, p_settings => %(settings)s)",
        {"org_id": org_id, "settings": _json(dict(settings or {}), "p_settings")},
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


def exact_json(value: Any, path: str = "value") -> str:
    """JSON text in which Decimals are written as exact number literals.

    NaN and infinities are not JSON numbers: they raise InvalidArgument naming
    the offending field (SPEC §0), before anything is sent.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return json.dumps(value)
    if isinstance(value, Decimal | float):
        if not (value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)):
            raise InvalidArgument(f"{path} must be a finite number, got {value}")
        return format(value, "f") if isinstance(value, Decimal) else json.dumps(value)
    if isinstance(value, Mapping):
        items = (f"{json.dumps(str(k))}: {exact_json(v, f'{path}.{k}')}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(exact_json(v, f"{path}[{i}]") for i, v in enumerate(value)) + "]"
    return json.dumps(value)


def pricing_set(
    model: str, prices: Mapping[str, Any], effective_from: datetime | None
) -> Call[int]:
    return Call(
        "select costwarden.fn_pricing_set(p_model => %(model)s, p_prices => %(prices)s::jsonb, "
        "p_effective_from => coalesce(%(effective_from)s::timestamptz, now())) as snapshot_id",
        {
            "model": model,
            "prices": exact_json(prices, "p_prices"),
            "effective_from": effective_from,
        },
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
        # None is JSON null (a nullable setting's "no bound"), never SQL NULL
        {"key": key, "value": Jsonb(None) if value is None else _json(value, "p_value")},
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
        {
            "org_id": org_id,
            "action": action,
            "since": since,
            "limit": _int(limit, "p_limit", bigint=False),
        },
        _many(t.AuditEntry),
    )


# -- §3 the saga ----------------------------------------------------------------


def cost_quote(
    org_id: str, workspace_id: str, model: str, usage: Mapping[str, Any]
) -> Call[t.Quote]:
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
            "metadata": _json(dict(metadata or {}), "p_metadata"),
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


def _batch_element(element: Mapping[str, Any]) -> dict[str, Any]:
    """One element of a batch RPC as JSON values (UUIDs and intervals as text)."""
    out: dict[str, Any] = {}
    for key, value in element.items():
        if isinstance(value, UUID):
            value = str(value)
        elif isinstance(value, timedelta):
            value = f"{value.total_seconds()} seconds"
        out[key] = value
    return out


def cost_reserve_many(requests: Sequence[Mapping[str, Any]]) -> Call[list[t.Reservation]]:
    return Call(
        "select * from costwarden.fn_cost_reserve_many(p_requests => %(requests)s::jsonb)",
        {"requests": exact_json([_batch_element(r) for r in requests], "p_requests")},
        _many(t.Reservation),
    )


def cost_commit_many(commits: Sequence[Mapping[str, Any]]) -> Call[list[t.CommitResult]]:
    return Call(
        "select * from costwarden.fn_cost_commit_many(p_commits => %(commits)s::jsonb)",
        {"commits": exact_json([_batch_element(c) for c in commits], "p_commits")},
        _many(t.CommitResult),
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
        {"batch": _int(batch, "p_batch", bigint=False)},
        lambda rows: int(_scalar(rows)),
    )


def maintenance() -> Call[int]:
    return Call("select costwarden.fn_maintenance() as n", {}, lambda rows: int(_scalar(rows)))


def my_reservations(status: str | None, limit: int) -> Call[list[t.ReservationInfo]]:
    return Call(
        "select * from costwarden.fn_get_my_cost_reservations(p_status => %(status)s, "
        "p_limit => %(limit)s)",
        {"status": status, "limit": _int(limit, "p_limit", bigint=False)},
        _many(t.ReservationInfo),
    )


def reservations_list(
    org_id: str | None, status: str | None, limit: int
) -> Call[list[t.ReservationInfo]]:
    return Call(
        "select * from costwarden.fn_reservations_list(p_org_id => %(org_id)s, "
        "p_status => %(status)s, p_limit => %(limit)s)",
        {"org_id": org_id, "status": status, "limit": _int(limit, "p_limit", bigint=False)},
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
            "limit": _int(limit, "p_limit"),
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


# -- §4 ledger -------------------------------------------------------------------

#: First statement of a ledger snapshot: every read in the transaction sees one state
#: (export pages and heads agree).
LEDGER_SNAPSHOT = "set transaction isolation level repeatable read, read only"


def ledger_verify(org_id: str | None) -> Call[list[t.LedgerVerification]]:
    return Call(
        "select * from costwarden.fn_ledger_verify(p_org_id => %(org_id)s)",
        {"org_id": org_id},
        _many(t.LedgerVerification),
    )


def ledger_digest(org_id: str | None) -> Call[list[t.LedgerHead]]:
    return Call(
        "select * from costwarden.fn_ledger_digest(p_org_id => %(org_id)s)",
        {"org_id": org_id},
        _many(t.LedgerHead),
    )


def ledger_identity() -> Call[t.DatabaseIdentity]:
    return Call("select * from costwarden.fn_ledger_identity()", {}, _one(t.DatabaseIdentity))


def ledger_adjust(
    org_id: str, workspace_id: str, amount_micros: int, reason: str
) -> Call[t.LedgerAdjustment]:
    return Call(
        "select * from costwarden.fn_ledger_adjust(p_org_id => %(org_id)s, "
        "p_workspace_id => %(workspace_id)s, p_amount_micros => %(amount)s::bigint, "
        "p_reason => %(reason)s)",
        {
            "org_id": org_id,
            "workspace_id": workspace_id,
            "amount": _int(amount_micros, "p_amount_micros"),
            "reason": reason,
        },
        _one(t.LedgerAdjustment),
    )


def ledger_export(
    org_id: str | None, after_org_id: str | None, after_seq: int, limit: int
) -> Call[list[t.LedgerEntry]]:
    return Call(
        "select * from costwarden.fn_ledger_export(p_org_id => %(org_id)s, "
        "p_after_org_id => %(after_org_id)s, p_after_seq => %(after_seq)s::bigint, "
        "p_limit => %(limit)s::integer)",
        {
            "org_id": org_id,
            "after_org_id": after_org_id,
            "after_seq": _int(after_seq, "p_after_seq"),
            "limit": _int(limit, "p_limit", bigint=False),
        },
        _many(t.LedgerEntry),
    )


def ledger_export_raw(
    org_id: str | None, after_org_id: str | None, after_seq: int, limit: int
) -> Call[list[dict[str, Any]]]:
    """ledger_export's rows as plain dicts (bulk verification skips the dataclasses)."""
    call = ledger_export(org_id, after_org_id, after_seq, limit)
    return Call(call.sql, call.params, lambda rows: rows)


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
        {
            "rid": reservation_id,
            "provider": provider,
            "org_id": org_id,
            "workspace_id": workspace_id,
        },
        _one(t.ByokSecret),
        needs_kek=True,
    )


#: The unlogged input channel (sql/functions/10_byok_keys.sql): one line
#: ``name:base64(value)`` per staged value (stage_line), which no value can make COPY
#: reject -- a rejected COPY line would be quoted in the server log.
STAGE_SECRETS = "copy costwarden.secret_input_base64 (line) from stdin"


def stage_line(name: str, value: str) -> str:
    """One line of STAGE_SECRETS: ASCII only, no tab, no backslash."""
    encoded = base64.b64encode(value.encode("utf-8", "surrogatepass")).decode("ascii")
    return f"{name}:{encoded}"


#: How a refused resolve's CW005 hint starts: the rest is a signed receipt.
REFUSAL_RECEIPT_PREFIX = "costwarden-refusal-receipt:"


def refusal_receipt(hint: str | None) -> str | None:
    """The signed receipt in a refused resolve's hint, if any."""
    if not hint or not hint.startswith(REFUSAL_RECEIPT_PREFIX):
        return None
    return hint[len(REFUSAL_RECEIPT_PREFIX) :].strip() or None


def byok_key_put(org_id: str, workspace_id: str, provider: str, secret: str) -> Call[str]:
    return Call(
        "select costwarden.fn_byok_key_put(p_org_id => %(org_id)s, "
        "p_workspace_id => %(workspace_id)s, p_provider => %(provider)s, "
        "p_secret => current_setting('costwarden.byok_secret', true)) as fingerprint",
        {"org_id": org_id, "workspace_id": workspace_id, "provider": provider},
        lambda rows: str(_scalar(rows)),
        staged={"secret": secret},
        needs_kek=True,
    )


def byok_key_revoke(org_id: str, workspace_id: str, provider: str) -> Call[bool]:
    return Call(
        "select costwarden.fn_byok_key_revoke(p_org_id => %(org_id)s, "
        "p_workspace_id => %(workspace_id)s, p_provider => %(provider)s) as revoked",
        {"org_id": org_id, "workspace_id": workspace_id, "provider": provider},
        lambda rows: bool(_scalar(rows)),
    )


def byok_key_list(
    org_id: str | None, workspace_id: str | None, include_revoked: bool
) -> Call[list[t.ByokKey]]:
    return Call(
        "select * from costwarden.fn_byok_key_list(p_org_id => %(org_id)s, "
        "p_workspace_id => %(workspace_id)s, p_include_revoked => %(include_revoked)s)",
        {"org_id": org_id, "workspace_id": workspace_id, "include_revoked": include_revoked},
        _many(t.ByokKey),
    )


def byok_kek_status() -> Call[list[t.KekGeneration]]:
    return Call("select * from costwarden.fn_byok_kek_status()", {}, _many(t.KekGeneration))


def byok_kek_rotate(new_kek: str, batch: int) -> Call[t.KekRotateBatch]:
    return Call(
        "select * from costwarden.fn_byok_kek_rotate(p_batch => %(batch)s)",
        {"batch": _int(batch, "p_batch", bigint=False)},
        _one(t.KekRotateBatch),
        staged={"kek_new": new_kek},
        needs_kek=True,
    )


def byok_resolve_refusal_record(receipt: str) -> Call[bool]:
    return Call(
        "select costwarden.fn_byok_resolve_refusal_record(p_receipt => %(receipt)s) as recorded",
        {"receipt": receipt},
        lambda rows: bool(_scalar(rows)),
    )


def byok_resolve_audit(
    org_id: str | None, reservation_id: UUID | None, limit: int
) -> Call[list[t.ResolveAttempt]]:
    return Call(
        "select * from costwarden.fn_byok_resolve_audit(p_org_id => %(org_id)s, "
        "p_reservation_id => %(rid)s, p_limit => %(limit)s)",
        {"org_id": org_id, "rid": reservation_id, "limit": _int(limit, "p_limit", bigint=False)},
        _many(t.ResolveAttempt),
    )


def pricing_history(model: str | None) -> Call[list[t.PricingSnapshot]]:
    return Call(
        "select * from costwarden.fn_pricing_history(p_model => %(model)s)",
        {"model": model},
        _many(t.PricingSnapshot),
    )


# -- §6 guardrails --------------------------------------------------------------------


def provider_report(provider: str, ok: bool, error: str | None) -> Call[str]:
    return Call(
        "select costwarden.fn_provider_report(p_provider => %(provider)s, p_ok => %(ok)s, "
        "p_error => %(error)s) as state",
        {"provider": provider, "ok": ok, "error": error},
        lambda rows: str(_scalar(rows)),
    )


def alert_get(alert_id: int) -> Call[t.Alert]:
    return Call(
        "select * from costwarden.fn_alert_get(p_alert_id => %(alert_id)s)",
        {"alert_id": _int(alert_id, "p_alert_id")},
        _one(t.Alert),
    )


def circuit_status() -> Call[list[t.CircuitStatus]]:
    return Call("select * from costwarden.fn_circuit_status()", {}, _many(t.CircuitStatus))


def circuit_history(provider: str | None, limit: int) -> Call[list[t.CircuitEvent]]:
    return Call(
        "select * from costwarden.fn_circuit_history(p_provider => %(provider)s, "
        "p_limit => %(limit)s)",
        {"provider": provider, "limit": _int(limit, "p_limit", bigint=False)},
        _many(t.CircuitEvent),
    )


def circuit_reset(provider: str) -> Call[str]:
    return Call(
        "select costwarden.fn_circuit_reset(p_provider => %(provider)s) as state",
        {"provider": provider},
        lambda rows: str(_scalar(rows)),
    )


def spend_report_cumulative(
    org_id: str, workspace_id: str, source: str, cumulative_micros: int
) -> Call[int]:
    return Call(
        "select costwarden.fn_spend_report_cumulative(p_org_id => %(org_id)s, "
        "p_workspace_id => %(workspace_id)s, p_source => %(source)s, "
        "p_cumulative_micros => %(cumulative)s::bigint) as delta",
        {
            "org_id": org_id,
            "workspace_id": workspace_id,
            "source": source,
            "cumulative": _int(cumulative_micros, "p_cumulative_micros"),
        },
        lambda rows: int(_scalar(rows)),
    )


def spend_source_set(
    org_id: str, workspace_id: str, source: str, key_id: str | None, user_id: str | None
) -> Call[None]:
    return Call(
        "select costwarden.fn_spend_source_set(p_org_id => %(org_id)s, "
        "p_workspace_id => %(workspace_id)s, p_source => %(source)s, p_key_id => %(key_id)s, "
        "p_user_id => %(user_id)s)",
        {
            "org_id": org_id,
            "workspace_id": workspace_id,
            "source": source,
            "key_id": key_id,
            "user_id": user_id,
        },
        _none,
    )


def spend_sources_list(org_id: str | None) -> Call[list[t.SpendSource]]:
    return Call(
        "select * from costwarden.fn_spend_sources_list(p_org_id => %(org_id)s)",
        {"org_id": org_id},
        _many(t.SpendSource),
    )


def detect_spend_anomalies() -> Call[int]:
    return Call(
        "select costwarden.fn_detect_spend_anomalies() as n", {}, lambda rows: int(_scalar(rows))
    )


def anomaly_ack(anomaly_id: int) -> Call[None]:
    return Call(
        "select costwarden.fn_anomaly_ack(p_anomaly_id => %(anomaly_id)s::bigint)",
        {"anomaly_id": _int(anomaly_id, "p_anomaly_id")},
        _none,
    )


def anomalies_list(org_id: str | None, open_only: bool, limit: int) -> Call[list[t.Anomaly]]:
    return Call(
        "select * from costwarden.fn_anomalies_list(p_org_id => %(org_id)s, "
        "p_open_only => %(open_only)s, p_limit => %(limit)s)",
        {"org_id": org_id, "open_only": open_only, "limit": _int(limit, "p_limit", bigint=False)},
        _many(t.Anomaly),
    )


def shadow_report(
    org_id: str, from_: datetime | None, to: datetime | None
) -> Call[list[t.ShadowReportRow]]:
    return Call(
        "select * from costwarden.fn_shadow_report(p_org_id => %(org_id)s, "
        "p_from => coalesce(%(from_)s::timestamptz, now() - interval '30 days'), "
        "p_to => coalesce(%(to)s::timestamptz, now()))",
        {"org_id": org_id, "from_": from_, "to": to},
        _many(t.ShadowReportRow),
    )


# -- money correctness under faults (sql/functions/18_reconcile.sql) ------------


def reconcile(org_id: str | None) -> Call[list[t.ReconcileDrift]]:
    return Call(
        "select * from costwarden.fn_reconcile(p_org_id => %(org_id)s)",
        {"org_id": org_id},
        _many(t.ReconcileDrift),
    )


def reconcile_repair(org_id: str, pool_id: int, reason: str) -> Call[list[t.ReconcileDrift]]:
    return Call(
        "select * from costwarden.fn_reconcile_repair(p_org_id => %(org_id)s, "
        "p_pool_id => %(pool_id)s, p_reason => %(reason)s)",
        {"org_id": org_id, "pool_id": _int(pool_id, "p_pool_id"), "reason": reason},
        _many(t.ReconcileDrift),
    )


def replay_reservation(
    operation_id: UUID,
    kind: str,
    reservation_id: UUID,
    usage: Mapping[str, Any] | None,
    approximate: bool,
    reason: str | None,
    called_at: datetime | str | None,
) -> Call[t.ReplayedOperation]:
    return Call(
        "select * from costwarden.fn_replay_reservation(p_operation_id => %(op)s, "
        "p_kind => %(kind)s, p_reservation_id => %(rid)s, p_usage => %(usage)s, "
        "p_approximate => %(approximate)s, p_reason => %(reason)s, "
        "p_called_at => %(called_at)s::timestamptz)",
        {
            "op": operation_id,
            "kind": kind,
            "rid": reservation_id,
            "usage": _json(usage),
            "approximate": approximate,
            "reason": reason,
            "called_at": called_at,
        },
        _one(t.ReplayedOperation),
    )


def replay_usage(
    operation_id: UUID,
    org_id: str,
    workspace_id: str,
    model: str,
    usage: Mapping[str, Any],
    called_at: datetime | str,
    source: str,
    user_id: str | None,
    key_id: str | None,
    approximate: bool,
    final: bool,
) -> Call[t.ReplayedUsage]:
    return Call(
        "select * from costwarden.fn_replay_usage(p_operation_id => %(op)s, "
        "p_org_id => %(org_id)s, p_workspace_id => %(workspace_id)s, p_model => %(model)s, "
        "p_usage => %(usage)s, p_called_at => %(called_at)s::timestamptz, "
        "p_source => %(source)s, p_user_id => %(user_id)s, p_key_id => %(key_id)s, "
        "p_approximate => %(approximate)s, p_final => %(final)s)",
        {
            "op": operation_id,
            "org_id": org_id,
            "workspace_id": workspace_id,
            "model": model,
            "usage": _json(usage),
            "called_at": called_at,
            "source": source,
            "user_id": user_id,
            "key_id": key_id,
            "approximate": approximate,
            "final": final,
        },
        _one(t.ReplayedUsage),
    )


# -- §11 spend visibility, §6 outlier reports, workspace readiness --------------------


def spend_summary(
    org_id: str,
    scope_kind: str,
    scope_id: str | None,
    period: str,
    window: str,
    at: datetime | None,
) -> Call[list[t.SpendSummary]]:
    return Call(
        "select * from costwarden.fn_spend_summary(p_org_id => %(org_id)s, "
        "p_scope_kind => %(scope_kind)s, p_scope_id => %(scope_id)s, p_period => %(period)s, "
        "p_window => %(window)s, p_at => coalesce(%(at)s::timestamptz, now()))",
        {
            "org_id": org_id,
            "scope_kind": scope_kind,
            "scope_id": scope_id,
            "period": period,
            "window": window,
            "at": at,
        },
        _many(t.SpendSummary),
    )


def budget_list(org_id: str, scope_kind: str | None) -> Call[list[t.BudgetLimit]]:
    return Call(
        "select * from costwarden.fn_budget_list(p_org_id => %(org_id)s, "
        "p_scope_kind => %(scope_kind)s)",
        {"org_id": org_id, "scope_kind": scope_kind},
        _many(t.BudgetLimit),
    )


def spend_reports_quarantined(org_id: str) -> Call[list[t.QuarantinedSpendReport]]:
    return Call(
        "select * from costwarden.fn_spend_reports_quarantined(p_org_id => %(org_id)s)",
        {"org_id": org_id},
        _many(t.QuarantinedSpendReport),
    )


def spend_report_resolve(report_id: int, accept: bool) -> Call[int]:
    return Call(
        "select costwarden.fn_spend_report_resolve(p_report_id => %(report_id)s::bigint, "
        "p_accept => %(accept)s) as booked",
        {"report_id": _int(report_id, "p_report_id"), "accept": accept},
        lambda rows: int(_scalar(rows)),
    )


def workspace_readiness(org_id: str, workspace_id: str) -> Call[list[t.ReadinessProblem]]:
    return Call(
        "select * from costwarden.fn_workspace_readiness(p_org_id => %(org_id)s, "
        "p_workspace_id => %(workspace_id)s)",
        {"org_id": org_id, "workspace_id": workspace_id},
        _many(t.ReadinessProblem),
    )


# -- §13 the HTTP service --------------------------------------------------------------


def reservation_get(reservation_id: UUID) -> Call[t.ReservationInfo]:
    return Call(
        "select * from costwarden.fn_reservation_get(p_reservation_id => %(rid)s)",
        {"rid": reservation_id},
        _one(t.ReservationInfo),
    )


def metrics() -> Call[list[t.MetricSample]]:
    return Call("select * from costwarden.fn_metrics()", {}, _many(t.MetricSample))


def schema_state() -> Call[list[t.SchemaObject]]:
    return Call("select * from costwarden.fn_schema_state()", {}, _many(t.SchemaObject))


def my_allocations(period: str, window: str) -> Call[list[t.Allocation]]:
    return Call(
        "select * from costwarden.fn_my_allocations(p_period => %(period)s, "
        "p_window => %(window)s)",
        {"period": period, "window": window},
        _many(t.Allocation),
    )
