"""costwarden's exceptions and the one place that maps SQLSTATEs to them (SPEC §8)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg


class CostwardenError(Exception):
    """Base class of every costwarden error."""

    sqlstate: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class AppendOnlyViolation(CostwardenError):
    """CW001: update, delete or truncate of the ledger or the audit log."""

    sqlstate = "CW001"


class NotFound(CostwardenError):
    """CW002: unknown org, workspace, user, key, model, reservation or anomaly."""

    sqlstate = "CW002"


class InvalidState(CostwardenError):
    """CW003: a transition the reservation's state does not allow."""

    sqlstate = "CW003"


class InvalidArgument(CostwardenError):
    """CW004: a bad argument or usage; the message names the argument."""

    sqlstate = "CW004"


class Forbidden(CostwardenError):
    """CW005: BYOK guard or binding refused, actor outside its org, missing KEK."""

    sqlstate = "CW005"


class UnpricedModel(CostwardenError):
    """CW006: no pricing snapshot in force and unpriced_policy = 'reject'."""

    sqlstate = "CW006"


class IdempotencyConflict(CostwardenError):
    """CW007: a repeated idempotency key or commit with other arguments."""

    sqlstate = "CW007"


class DatabaseUnavailable(CostwardenError):
    """The database cannot be reached (and the client's policy is 'closed')."""


class SpoolFull(DatabaseUnavailable):
    """Under on_unavailable='open': the database cannot be reached and the spool holds
    ``max_bytes`` of records not yet replayed, so the call cannot proceed unenforced."""


class StatementTimeout(CostwardenError):
    """The call ran longer than the client's ``statement_timeout`` (or the server's
    ``statement_timeout`` / ``lock_timeout``): typically it waited for a lock another
    transaction holds. Nothing it did was kept; the database answered, so this is not
    :class:`DatabaseUnavailable` and a fail-open client does not spool it."""


#: SQLSTATEs of a statement cancelled by a timeout: query_canceled, lock_not_available.
TIMEOUT_SQLSTATES = ("57014", "55P03")


#: SQLSTATE of the server warning behind ReadinessWarning.
READINESS_WARNING_SQLSTATE = "01CW0"


class ReadinessWarning(CostwardenError, UserWarning):
    """A change left a workspace unable to reserve (SQLSTATE ``01CW0``, a server
    WARNING): e.g. switched to byok with no key for its provider. Issued with
    ``warnings.warn`` -- never raised: the call succeeded. fn_workspace_readiness /
    ``Client.workspace_readiness`` lists the problems."""

    sqlstate = READINESS_WARNING_SQLSTATE


@contextmanager
def readiness_told(tell: Callable[[str], None]) -> Iterator[None]:
    """Run the block with its :class:`ReadinessWarning` s handed to ``tell`` (their
    text), once the block is done, instead of to the warnings machinery: for a command
    line or a story that says them in its own words. Other warnings are issued again
    as they came."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if issubclass(w.category, ReadinessWarning):
            tell(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


class BudgetExceeded(CostwardenError):
    """A reservation was refused (status 'denied'); ``reasons`` says why."""

    def __init__(self, reservation: Any) -> None:
        self.reservation = reservation
        self.reasons: tuple[Any, ...] = tuple(getattr(reservation, "reasons", ()))
        codes = ", ".join(sorted({str(r.code) for r in self.reasons})) or "denied"
        super().__init__(
            f"reservation {getattr(reservation, 'reservation_id', '?')} denied: {codes}"
        )


#: SQLSTATE -> exception class: the single mapping (SPEC §8).
SQLSTATE_EXCEPTIONS: dict[str, type[CostwardenError]] = {
    cls.sqlstate: cls
    for cls in (
        AppendOnlyViolation,
        NotFound,
        InvalidState,
        InvalidArgument,
        Forbidden,
        UnpricedModel,
        IdempotencyConflict,
    )
    if cls.sqlstate is not None
}


#: SQLSTATEs of an OperationalError that mean "the server is not there" rather than
#: "the call was wrong": connection exceptions (class 08) and admin / crash shutdown
#: or a server still starting (57P01..57P03).
UNAVAILABLE_SQLSTATES = ("57P01", "57P02", "57P03")


#: SQLSTATEs of a statement that names a server-side prepared statement its connection
#: does not have (invalid_sql_statement_name) or prepares one under a name the
#: connection already has (duplicate_prepared_statement).
PREPARED_STATEMENT_SQLSTATES = ("26000", "42P05")

#: What the note on such an error says to do.
PREPARED_STATEMENT_NOTE = (
    "costwarden: the connection's server-side prepared statements are not the ones "
    "psycopg prepared on it, typically a pooler in transaction mode with "
    "prepare_threshold set: leave it None, the client's default, or have the pooler "
    "track prepared statements (docs/python.md#poolers)"
)


def is_prepared_statement_mismatch(exc: BaseException) -> bool:
    """Does this error mean the server-side prepared statements of the connection are not
    the ones the client prepared? A prepared statement missing (SQLSTATE 26000), its
    name taken (42P05), or a Bind whose parameters do not fit the statement under that
    name ("bind message supplies 3 parameters, but prepared statement "_pg3_0" requires
    9": a protocol_violation, 08P01, told from a pooler's own 08P01 errors by the server
    routine that raised it, never by its message, which the server may translate): what
    a client that prepares statements meets behind a pooler in transaction mode. A
    configuration error, never :func:`is_unavailable`: the database answered, and a
    client under on_unavailable='open' fails closed on it instead of letting the call
    through unenforced."""
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state in PREPARED_STATEMENT_SQLSTATES:
        return True
    return state == "08P01" and exc.diag.source_function == "exec_bind_message"


def is_unavailable(exc: BaseException) -> bool:
    """Does this error mean the database cannot be reached?

    The one classifier of "database unavailable": :func:`translate` turns exactly
    these errors into :class:`DatabaseUnavailable`, and the clients'
    ``on_unavailable`` policy (costwarden.spool) spools exactly on them. True for a
    :class:`DatabaseUnavailable` itself and for a ``psycopg.OperationalError`` with no
    SQLSTATE (refused connection, timeout, psycopg_pool.PoolTimeout), a class 08
    SQLSTATE or one of :data:`UNAVAILABLE_SQLSTATES`, unless it is a
    :func:`is_prepared_statement_mismatch` (a class 08 protocol violation)."""
    if isinstance(exc, DatabaseUnavailable):
        return True
    if isinstance(exc, psycopg.OperationalError) and not is_prepared_statement_mismatch(exc):
        state = exc.sqlstate
        return state is None or state.startswith("08") or state in UNAVAILABLE_SQLSTATES
    return False


def translate(exc: psycopg.Error) -> Exception:
    """The costwarden exception for a database error, or the error itself."""
    state = exc.sqlstate
    if state in SQLSTATE_EXCEPTIONS:
        diag = exc.diag
        err = SQLSTATE_EXCEPTIONS[state](diag.message_primary or str(exc), hint=diag.message_hint)
        err.__cause__ = exc
        return err
    if state in TIMEOUT_SQLSTATES:
        timeout = StatementTimeout(
            f"the call timed out: {exc.diag.message_primary or exc}",
            hint="statement_timeout / lock_timeout: it may have waited for a lock held by "
            "another transaction",
        )
        timeout.__cause__ = exc
        return timeout
    if is_prepared_statement_mismatch(exc):
        if PREPARED_STATEMENT_NOTE not in getattr(exc, "__notes__", ()):
            exc.add_note(PREPARED_STATEMENT_NOTE)
        return exc
    if is_unavailable(exc):
        unavailable = DatabaseUnavailable(str(exc))
        unavailable.__cause__ = exc
        return unavailable
    return exc


@contextmanager
def wrap_errors() -> Iterator[None]:
    """Re-raise database errors as costwarden exceptions."""
    try:
        yield
    except psycopg.Error as exc:
        translated = translate(exc)
        if translated is exc:
            raise
        raise translated from exc
