"""What every command module shares: the click Context object, the error handling of
the root group (exit codes), text and JSON output, money options and progress bars.

Exit codes (docs/operations.md, "Exit codes"): 0 success; 1 an error (the database
refused, a file is bad, a check failed, `status` found the schema not up to date);
2 a usage error (an unknown option, a malformed value). No input prints a traceback:
anything unexpected is reported in one line (``COSTWARDEN_DEBUG=1`` re-raises it).
Output cut short by a closed pipe ends quietly (exit code 1, no message).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from uuid import UUID

import click
import psycopg

from .._text import safe_dsn, table, usd
from ..client import Client
from ..errors import CostwardenError, translate

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_USAGE",
    "Context",
    "CostwardenGroup",
    "DecimalParam",
    "ProgressBar",
    "echo_json",
    "error_message",
    "json_option",
    "jsonable",
    "money_micros",
    "pass_ctx",
    "safe_dsn",
    "table",
    "usd",
    "usd_to_micros",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

F = TypeVar("F", bound=Callable[..., Any])


# -- the Context object ----------------------------------------------------------------------


class Context:
    """``ctx.obj`` of every command: where the database is (``dsn_from``: who named it,
    ``--dsn`` or ``COSTWARDEN_DSN``)."""

    def __init__(self, dsn: str | None, data_dir: Path | None, *, dsn_from: str = "--dsn") -> None:
        self._dsn = dsn
        self.data_dir = data_dir
        self.dsn_from = dsn_from

    def has_dsn(self) -> bool:
        return bool(self._dsn)

    def dsn(self) -> str:
        """--dsn / COSTWARDEN_DSN, else the embedded server's (started when stopped)."""
        if self._dsn:
            return self._dsn
        from ..embedded import resolve_dsn

        self._dsn = resolve_dsn(None, data_dir=self.data_dir)
        return self._dsn

    def embedded_data_dir(self) -> Path:
        from ..embedded import default_data_dir

        return self.data_dir or default_data_dir()

    @contextmanager
    def client(self, **options: Any) -> Iterator[Client]:
        options.setdefault("on_unavailable", "closed")  # a command never proceeds unenforced
        with Client(self.dsn(), **options) as client:
            yield client


pass_ctx = click.make_pass_decorator(Context)


# -- errors and exit codes -------------------------------------------------------------------

#: Errors whose message says it all (no class name in front).
_PLAIN = frozenset(
    {"EmbeddedError", "MigrationError", "CatalogueError", "LedgerFormatError", "DigestError"}
)


def error_message(exc: BaseException) -> str | None:
    """The one-line message of an error a command may meet, or None when unexpected."""
    if isinstance(exc, psycopg.Error):
        translated = translate(exc)
        if translated is exc:
            return f"database error: {exc}"
        exc = translated
    if isinstance(exc, CostwardenError):
        name = type(exc).__name__
        if exc.sqlstate:
            return f"{name} [{exc.sqlstate}]: {exc.message}"
        if name in _PLAIN:
            return str(exc)
        return f"{name}: {exc}"
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    return None


class CostwardenGroup(click.Group):
    """The root group: every error a command raises ends here, as one line on stderr
    and exit code 1 (click's own usage errors exit 2). Output whose reader went away
    (``costwarden status | head -3``) is not an error to report: click ends the command
    quietly with exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (
            click.exceptions.ClickException,
            click.exceptions.Exit,
            click.Abort,
            BrokenPipeError,  # click's main: no message, exit code 1
        ):
            raise
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as exc:
            message = error_message(exc)
            if message is None:
                if os.environ.get("COSTWARDEN_DEBUG"):
                    raise
                message = (
                    f"unexpected {type(exc).__name__}: {exc} "
                    "(COSTWARDEN_DEBUG=1 shows the traceback)"
                )
            raise click.ClickException(message) from exc


# -- JSON output -----------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """A value as the CLI's JSON shows it (docs/python.md, "JSON output"): integers
    (micro-USD, tokens, counts) as JSON numbers, exact decimals (prices, credits,
    statistics) as strings, instants in ISO 8601, ids as strings, hashes in hex."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, UUID | Path):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return str(value)


def warn_readiness(message: str) -> None:
    """A change left a workspace unable to reserve (a ReadinessWarning): on stderr, the
    command itself having succeeded (``with readiness_told(warn_readiness): ...``)."""
    click.echo(f"warning: {message}", err=True)


def echo_json(value: Any) -> None:
    """Print ``value`` as JSON on stdout (one document)."""
    click.echo(json.dumps(jsonable(value), indent=2, ensure_ascii=False))


def json_option(fn: F) -> F:
    """``--json``: print the data as JSON instead of a table or a sentence."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (money in integer micro-USD)."
    )(fn)


# -- values ----------------------------------------------------------------------------------


class DecimalParam(click.ParamType):  # type: ignore[type-arg]
    """An exact decimal number (no float on the way): 0.0125, 5, 1e-3."""

    name = "decimal"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, Decimal):
            return value
        try:
            number = Decimal(str(value).strip().replace("_", ""))
        except InvalidOperation:
            self.fail(f"{value!r} is not a decimal number", param, ctx)
        if not number.is_finite():
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def usd_to_micros(value: Decimal) -> int:
    """USD -> integer micro-USD, exactly; ValueError for a fraction of a micro."""
    micros = value.scaleb(6)
    if micros != micros.to_integral_value():
        raise ValueError(f"{value} USD is not a whole number of micro-USD (6 decimals at most)")
    return int(micros)


def money_micros(
    micros: int | None, dollars: Decimal | None, *, micros_flag: str, usd_flag: str
) -> int | None:
    """The amount of a ``--X-micros`` / ``--X-usd`` pair (mutually exclusive); None
    when neither is given."""
    if micros is not None and dollars is not None:
        raise click.UsageError(f"give {micros_flag} or {usd_flag}, not both")
    if dollars is None:
        return micros
    try:
        return usd_to_micros(dollars)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=usd_flag) from exc


# -- progress --------------------------------------------------------------------------------


class ProgressBar:
    """A click progress bar on stderr fed by ``(done, total)`` callbacks, the shape of
    :data:`costwarden.ledger.Progress`; it appears at the first callback, when the
    total is known. ``label`` changes the text beside the bar (where stderr is not a
    terminal, each new label is printed as a line). Use as a context manager;
    ``enabled=False`` shows nothing."""

    def __init__(self, label: str, *, enabled: bool = True) -> None:
        self.label = label
        self.enabled = enabled
        self._bar: Any = None
        self._done = 0

    def __call__(self, done: int, total: int | None, label: str | None = None) -> None:
        if not self.enabled:
            return
        if label is not None:
            self.label = label
        if self._bar is None:
            self._bar = click.progressbar(
                length=max(total or 0, done, 1),
                label=self.label,
                file=sys.stderr,
                show_pos=True,
            )
            self._bar.__enter__()
        if total is not None and total > self._bar.length:
            self._bar.length = total
        self._bar.label = self.label
        self._bar.update(max(done - self._done, 0))
        self._done = max(done, self._done)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
            self._bar = None
