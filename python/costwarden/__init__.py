"""costwarden: the financial control plane for AI provider calls, inside PostgreSQL."""

from .client import AsyncClient, Client, ReservationHandle
from .errors import (
    AppendOnlyViolation,
    BudgetExceeded,
    CostwardenError,
    DatabaseUnavailable,
    Forbidden,
    IdempotencyConflict,
    InvalidArgument,
    InvalidState,
    NotFound,
    ReadinessWarning,
    UnpricedModel,
)

__all__ = [
    "AppendOnlyViolation",
    "AsyncClient",
    "BudgetExceeded",
    "Client",
    "CostwardenError",
    "DatabaseUnavailable",
    "Forbidden",
    "IdempotencyConflict",
    "InvalidArgument",
    "InvalidState",
    "NotFound",
    "ReadinessWarning",
    "ReservationHandle",
    "UnpricedModel",
]
__version__ = "0.1.0"
