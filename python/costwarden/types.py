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
#: fn_anomalies_list kinds (SPEC §6): the hourly spend rate, or an outlier spend report.
ANOMALY_KINDS = frozenset({"spend_rate", "spend_report_outlier"})


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
        values: dict[str, Any] = {f.name: obj.get(f.name) for f in fields(cls)}
        return cls(**values)


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
        data: dict[str, Any] = {f.name: row.get(f.name) for f in fields(cls)}
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


# -- §6 guardrails -------------------------------------------------------------------

#: circuit states and circuit event reasons, kept in sync with 0009 by tests.
CIRCUIT_STATES = frozenset({"closed", "open", "half_open"})
CIRCUIT_EVENT_REASONS = frozenset(
    {
        "failure_threshold",
        "probe_admitted",
        "probe_retry",
        "probe_succeeded",
        "probe_failed",
        "reset",
    }
)


@dataclass(frozen=True)
class CircuitStatus(Row):
    provider: str
    state: str  # 'closed' | 'open' | 'half_open'
    consecutive_failures: int
    failure_threshold: int
    opened_at: datetime | None
    probe_at: datetime | None
    next_probe_at: datetime | None  # when a (new) probe may be admitted
    last_error: str | None
    last_failure_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class Alert(Row):
    """The alert behind a costwarden_alerts notification (fn_alert_get)."""

    alert_id: int
    at: datetime
    kind: str  # 'budget' | 'circuit' | 'anomaly' (docs/alerts.md)
    level: str
    org_id: str | None
    payload: dict[str, Any]


@dataclass(frozen=True)
class CircuitEvent(Row):
    event_id: int
    provider: str
    at: datetime
    from_state: str
    to_state: str
    reason: str
    consecutive_failures: int
    error: str | None


@dataclass(frozen=True)
class SpendSource(Row):
    org_id: str
    workspace_id: str
    source: str
    key_id: str | None
    user_id: str | None
    last_cumulative_micros: int | None
    reports: int
    resets: int
    booked_micros: int
    last_reported_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class Anomaly(Row):
    anomaly_id: int
    org_id: str
    workspace_id: str
    hour_start: datetime
    window_start: datetime
    window_end: datetime
    spent_micros: int
    mean_micros: Decimal | None  # null for a spend_report_outlier
    stddev_micros: Decimal | None
    threshold_micros: Decimal
    frozen: bool
    detected_at: datetime
    acked_at: datetime | None
    acked_by: str | None
    kind: str  # one of ANOMALY_KINDS


@dataclass(frozen=True)
class ShadowReportRow(Row):
    """One limit that shadow mode (or billing_enforce = false) did not enforce."""

    scope_kind: str
    scope_id: str | None
    period: str
    metric: str
    window_kind: str
    limit_value: int
    code: str  # 'budget_exceeded' | 'token_quota_exceeded'
    refusals: int  # reservations that would have been refused
    requested: Decimal  # sum of the refused requests in the limit's metric
    requested_micros: Decimal  # sum of those reservations' quoted amounts
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class SpooledReservation(Reservation):
    """A reservation made while the database was unreachable under
    ``on_unavailable='open'``: nothing was enforced, nothing is held, and its usage
    is spooled to local disk and replayed as spend reports (costwarden.spool)."""

    spooled: bool = True


# -- §4 ledger


@dataclass(frozen=True)
class LedgerVerification(Row):
    """One org's chain as fn_ledger_verify found it."""

    org_id: str
    entries: int
    ok: bool
    first_bad_seq: int | None  # the first seq at which the chain is wrong (a missing one included)
    detail: str | None  # why; None when ok


@dataclass(frozen=True)
class LedgerHead(Row):
    """The head of one org's chain (fn_ledger_digest); entry_hash in hex."""

    org_id: str
    seq: int
    entry_hash: str
    taken_at: datetime


@dataclass(frozen=True)
class LedgerAdjustment(Row):
    entry_seq: int
    entry_hash: str  # hex


@dataclass(frozen=True)
class LedgerEntry(Row):
    """One raw ledger row (fn_ledger_export): the hashes in hex, created_at as ISO 8601
    UTC text with microseconds, usage numbers exact (int or Decimal)."""

    org_id: str
    seq: int
    entry_type: str  # 'charge' | 'spend_report' | 'adjustment'
    reservation_id: UUID | None
    workspace_id: str | None
    user_id: str | None
    key_id: str | None
    model: str | None
    billing_mode: str | None
    usage: dict[str, Any] | None
    tokens: int
    amount_micros: int  # signed only for adjustments
    pricing_snapshot_id: int | None
    approximate: bool
    late: bool
    source: str | None
    reason: str | None
    created_at: str
    prev_hash: str
    entry_hash: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> LedgerEntry:
        return cls(**row)  # the columns are exactly the fields; exports are large: keep it fast


@dataclass(frozen=True)
class DatabaseIdentity(Row):
    """Which database a ledger digest belongs to."""

    system_identifier: str  # pg_control_system(): the cluster's identifier
    database_name: str


# -- §5 BYOK -------------------------------------------------------------------------


@dataclass(frozen=True)
class ByokKey(Row):
    """A stored BYOK key as listings show it: a fingerprint, never the secret."""

    org_id: str
    workspace_id: str
    provider: str
    fingerprint: str
    status: str  # 'live' | 'revoked'
    kek_id: int
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    revoked_by: str | None
    revoke_reason: str | None  # 'replaced' | 'revoked'


@dataclass(frozen=True)
class KekGeneration(Row):
    """A key-encryption-key generation (only its check blob is stored)."""

    kek_id: int
    current: bool
    created_at: datetime
    created_by: str
    retired_at: datetime | None
    live_keys: int


@dataclass(frozen=True)
class KekRotateBatch(Row):
    """One fn_byok_kek_rotate call: data keys re-wrapped now, and still to do."""

    kek_id: int
    rewrapped: int
    remaining: int


@dataclass(frozen=True)
class KekRotation:
    """A whole rotation (Client.rotate_kek)."""

    kek_id: int
    rewrapped: int
    remaining: int  # > 0: keys under a generation the old KEK does not unlock
    batches: int


@dataclass(frozen=True)
class ResolveAttempt(Row):
    """One BYOK resolve attempt (fn_byok_resolve_audit); outcome 'unrecorded' is a gap."""

    attempt: int
    at: datetime | None
    outcome: str  # 'granted' | 'refused' | 'unrecorded'
    reason: str | None
    legacy: bool | None
    db_role: str | None
    actor_org: str | None
    actor_user: str | None
    reservation_id: UUID | None
    org_id: str | None
    workspace_id: str | None
    provider: str | None
    fingerprint: str | None
    recorded_via: str | None  # 'inline' | 'receipt'


# -- money correctness under faults (sql/functions/18_reconcile.sql)


@dataclass(frozen=True)
class ReconcileDrift(Row):
    """One finding of fn_reconcile / fn_reconcile_repair: a pool's counter that the
    reservations (``measure='held'``) or the ledger (``'spent'``, per period and
    window: ``rolling``, ``calendar`` or the whole ``horizon`` kept) do not match."""

    org_id: str
    pool_id: int
    pool_kind: str  # 'org' | 'workspace' | 'key' | 'user'
    scope_id: str
    measure: str  # 'held' | 'spent'
    period: str | None  # spent: 'hour' | 'day' | 'week' | 'month'
    window_kind: str | None  # spent: 'rolling' | 'calendar' | 'horizon'
    metric: str  # 'cost' (micro-USD) | 'tokens'
    counter: int  # what the counters say
    recomputed: int  # what the reservations / the ledger say
    drift: int  # counter - recomputed


@dataclass(frozen=True)
class ReplayedOperation(Row):
    """fn_replay_reservation: a spooled commit, release or meter tick of a
    reservation the database holds, replayed (``applied`` false: already replayed)."""

    applied: bool
    booked_micros: int
    released_micros: int
    status: str | None


@dataclass(frozen=True)
class ReplayedUsage(Row):
    """fn_replay_usage: the usage of a call made without the database, booked
    (only what it costs beyond what the call already booked)."""

    applied: bool
    booked_micros: int
    booked_tokens: int
    pricing_snapshot_id: int | None


# -- §11 spend visibility, §6 outlier reports, workspace readiness ------------------


@dataclass(frozen=True)
class SpendSummary(Row):
    """One scope's spend in a window (fn_spend_summary). Money in micro-USD; the
    ``limit_*`` / ``remaining_*`` fields are None when no enforced limit exists."""

    scope_kind: str
    scope_id: str | None
    period: str
    window_kind: str
    window_start: datetime
    window_end: datetime
    spent_micros: int
    held_micros: int
    spent_tokens: int
    held_tokens: int
    calls: int
    denied: int
    limit_micros: int | None
    limit_tokens: int | None
    remaining_micros: int | None
    remaining_tokens: int | None


@dataclass(frozen=True)
class BudgetLimit(Row):
    """One configured limit of an org (fn_budget_list)."""

    scope_kind: str
    scope_id: str | None
    period: str
    metric: str
    window_kind: str
    limit_value: int
    mode: str
    updated_at: datetime


@dataclass(frozen=True)
class QuarantinedSpendReport(Row):
    """A cumulative spend report over spend_report_max_delta_micros, undecided."""

    report_id: int
    org_id: str
    workspace_id: str
    source: str
    delta_micros: int
    reported_at: datetime


@dataclass(frozen=True)
class ReadinessProblem(Row):
    """What would refuse every reserve of a workspace (fn_workspace_readiness);
    ``problem`` is the reason code the reserve records."""

    problem: str
    detail: str


# -- §13 the HTTP service ----------------------------------------------------------


@dataclass(frozen=True)
class MetricSample(Row):
    """One Prometheus sample of fn_metrics (docs/http.md#metrics)."""

    metric: str
    labels: dict[str, Any]
    value: Decimal


@dataclass(frozen=True)
class SchemaObject(Row):
    """An applied migration (``version`` set) or function file, with its checksum."""

    kind: str  # 'migration' | 'function'
    version: int | None
    name: str
    checksum: str


@dataclass(frozen=True)
class Allocation(Row):
    """One of the caller's keys with its cap and spend in the window (fn_my_allocations)."""

    key_id: str
    workspace_id: str | None
    period: str
    window_kind: str
    window_start: datetime
    window_end: datetime
    spent_micros: int
    held_micros: int
    limit_micros: int | None
    remaining_micros: int | None
