"""costwarden: the financial control plane for AI provider calls, inside PostgreSQL.

``import costwarden`` loads the library only (client, errors, types); the command
line (costwarden.cli), the demo (costwarden.demo) and the bench (costwarden.bench)
are loaded by the ``costwarden`` command when it needs them.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

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
    SpoolFull,
    StatementTimeout,
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
    "SpoolFull",
    "StatementTimeout",
    "UnpricedModel",
]

try:
    #: The installed distribution's version: pyproject.toml is its one source.
    __version__ = _version("costwarden")
except PackageNotFoundError:  # pragma: no cover - imported from a source tree, not installed
    __version__ = "0+unknown"
