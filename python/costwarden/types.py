"""Frozen result types mirroring the SQL functions' result columns."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

T = TypeVar("T", bound="Row")

#: billing modes (SPEC §5) and reservation statuses (SPEC §3), kept in sync
#: with the SQL by tests.
BILLING_MODES = frozenset({"platform_managed", "byok", "disabled"})
RESERVATION_STATUSES = frozenset({"held", "denied", "committed", "released", "expired"})
REASON_CODES = frozenset(
    {
        "budget_exceeded",
        "token_quota_exceeded",
        "circuit_open",
        "byok_credential_missing",
        "billing_disabled",
        "anomaly_freeze",
        "unpriced_model",
    }
)


class Row:
    """Build a frozen dataclass from a dict row by column name."""

    @classmethod
    def from_row(cls: type[T], row: dict[str, Any]) -> T:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclass(frozen=True)
class Quote(Row):
    amount_micros: int
    tokens: int
    pricing_snapshot_id: int | None
    billing_mode: str
    credits: Decimal


@dataclass(frozen=True)
class BillingMode(Row):
    billing_mode: str
    source: str  # 'override' | 'model' | 'deploy_default'


@dataclass(frozen=True)
class PricingEntry(Row):
    model: str
    provider: str
    platform_servable: bool
    pricing_snapshot_id: int | None
    prices: dict[str, Any] | None
    effective_from: datetime | None


@dataclass(frozen=True)
class Setting(Row):
    key: str
    value: Any
    default_value: Any
    value_type: str
    changed: bool
    description: str


@dataclass(frozen=True)
class AuditEntry(Row):
    audit_id: int
    at: datetime
    db_role: str
    actor_org: str | None
    actor_user: str | None
    action: str
    org_id: str | None
    target: dict[str, Any]
    before: dict[str, Any] | None
    after: dict[str, Any] | None


@dataclass(frozen=True)
class Reason:
    """One element of a reservation's ``reasons`` (SPEC §3): all eleven keys."""

    code: str
    scope_kind: str | None
    scope_id: str | None
    period: str | None
    metric: str | None
    window: str | None
    limit: int | None
    spent: int | None
    held: int | None
    requested: int | None
    enforced: bool | None

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Reason:
        return cls(**{f.name: obj.get(f.name) for f in fields(cls)})


def _reasons(value: Any) -> tuple[Reason, ...]:
    return tuple(Reason.from_json(r) for r in (value or []))


@dataclass(frozen=True)
class Reservation(Row):
    reservation_id: UUID
    status: str
    amount_micros: int
    tokens: int
    expires_at: datetime | None
    billing_mode: str | None
    reasons: tuple[Reason, ...]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Reservation:
        return cls(
            reservation_id=row["reservation_id"],
            status=row["status"],
            amount_micros=row["amount_micros"],
            tokens=row["tokens"],
            expires_at=row["expires_at"],
            billing_mode=row["billing_mode"],
            reasons=_reasons(row["reasons"]),
        )

    @property
    def held(self) -> bool:
        return self.status == "held"


@dataclass(frozen=True)
class MeterResult(Row):
    metered_micros: int
    amount_micros: int
    remaining_micros: int
    action: str  # 'continue' | 'abort'

    @property
    def abort(self) -> bool:
        return self.action == "abort"


@dataclass(frozen=True)
class CommitResult(Row):
    entry_seq: int | None
    charged_micros: int
    released_micros: int
    overage_micros: int
    entry_hash: str | None


@dataclass(frozen=True)
class ReservationInfo(Row):
    reservation_id: UUID
    org_id: str
    workspace_id: str
    user_id: str | None
    key_id: str | None
    model: str
    status: str
    amount_micros: int
    metered_micros: int
    charged_micros: int
    created_at: datetime
    expires_at: datetime | None
    reasons: tuple[Reason, ...]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ReservationInfo:
        data = {f.name: row.get(f.name) for f in fields(cls)}
        data["reasons"] = _reasons(row.get("reasons"))
        return cls(**data)


@dataclass(frozen=True)
class BudgetStatus(Row):
    period: str
    metric: str
    window_kind: str
    limit_value: int | None
    spent: int | None
    held: int | None
    remaining: int | None
    mode: str
    source: str | None


@dataclass(frozen=True)
class ByokSecret(Row):
    """A released BYOK secret. Its repr never shows the secret."""

    provider: str
    secret: str = field(repr=False)
    fingerprint: str


@dataclass(frozen=True)
class PricingSnapshot(Row):
    model: str
    pricing_snapshot_id: int
    prices: dict[str, Any]
    effective_from: datetime
    created_at: datetime
