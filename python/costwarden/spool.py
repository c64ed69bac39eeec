"""The clients' ``on_unavailable`` policy (SPEC §7) and its durable local spool.

``Client(dsn, on_unavailable='closed')`` (the default; ``AsyncClient`` alike): when the
database cannot be reached (:func:`costwarden.errors.is_unavailable`), every call
raises :class:`~costwarden.errors.DatabaseUnavailable` -- within the client's
``connect_timeout`` / ``timeout`` (5 s each by default), never hanging. A client
constructed without ``on_unavailable`` uses 'closed' and warns once (docs/python.md
says why, and the risk of each choice).

``Client(dsn, on_unavailable='open', spool_dir=...)``: the call proceeds unenforced,
and every operation it could not send is spooled with what it carries:

- ``reserve`` returns a :class:`~costwarden.types.SpooledReservation` (status
  ``'held'``, ``spooled=True``, nothing held, no reasons) -- a *local call*, with its
  call time; its ``meter`` ticks answer ``continue`` and are spooled (``usage``
  records, ``final: false``); its ``commit``, or a ``release`` after meter ticks,
  spools the usage (``final: true``). A new local call is refused with
  :class:`~costwarden.errors.SpoolFull` once the spool holds ``max_bytes`` not yet
  replayed (records of calls already let through are always written);
- ``meter`` / ``commit`` / ``release`` of a reservation the database holds, when the
  database cannot be reached at that moment, are spooled (``meter`` / ``commit`` /
  ``release`` records): a release carries the usage the call's offline ticks
  metered, so the replay charges it as the online release would have; a release
  made once the database is back sends that metered usage along too.

Replay books each record exactly once: every record has an operation id, and the
database records the ids it has replayed (``fn_replay_reservation``,
``fn_replay_usage``, migration 0013), so a record sent twice -- a replay interrupted
after the database booked it, two processes replaying the same spool -- books
nothing the second time. A local call's usage is priced by the pricing snapshot in
force at its call time (``called_at``, the client's clock) and booked as a spend
report of the spool's source, with its model, usage and tokens, into the pools of
its (workspace, key, user); a reservation the database holds keeps the snapshot
fixed at reserve.

Replay starts as soon as the database answers again: after the first call that
succeeds (no timer), automatically; also :meth:`Spool.replay`,
``Client.replay_spool()``, ``await AsyncClient.replay_spool()`` and ``costwarden
spend-report replay``. While the database is down, one call every ``retry_after``
seconds (1 s by default) tries it -- the probe -- and the others go straight to
the spool.

The spool is a directory (one per process or shared by several):

``source``
    the spool's spend-report source name, ``spool-<uuid>``, created once;
``spool.jsonl``
    one JSON object per line, appended with ``O_APPEND`` and fsync'd before the
    call returns (a record is never acknowledged before it is on disk); emptied
    once everything in it was replayed;
``state.json``
    replay progress, replaced atomically (write, fsync, rename, fsync the
    directory): the byte offset of the next record;
``rejected.jsonl``
    records that replay could not book (unknown workspace, unpriced model, ...),
    with the error, for an operator: nothing is dropped silently.

Locks are files locked with :mod:`filelock` (``fcntl`` on POSIX, ``msvcrt`` on
Windows): released by the operating system when a process dies.

The replay is written once, without I/O to the database (:meth:`Spool.replay_steps`
yields the statements to run), so the sync and the async client drive the same code;
while another process replays, a replay waits in short steps (an async client's
event loop keeps running), and an automatic one does not wait at all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from filelock import FileLock
from filelock import Timeout as LockTimeout

from . import _sql as q
from . import types as t
from .errors import (
    CostwardenError,
    DatabaseUnavailable,
    InvalidState,
    SpoolFull,
    is_unavailable,
)

Runner = Callable[[q.Call[Any]], Any]

log = logging.getLogger("costwarden.spool")

POLICIES = ("closed", "open")

#: What a client does when no ``on_unavailable`` is given (docs/python.md, "When the
#: database is unavailable").
DEFAULT_POLICY = "closed"

#: Bytes of records not yet replayed past which no new local call is let through.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

#: The namespace of the operation ids derived for records written without one.
_OPERATION_NAMESPACE = uuid.UUID("5b0c3f6e-8a53-4f44-9d0e-2f1c8f4a7a10")


def resolve_policy(on_unavailable: str | None) -> str:
    """The policy in force: ``on_unavailable`` or, when None, :data:`DEFAULT_POLICY`
    with a warning (the choice should be the application's, made knowingly)."""
    if on_unavailable is None:
        warnings.warn(
            "on_unavailable not given: using 'closed' (every call raises "
            "DatabaseUnavailable while the database cannot be reached); pass "
            "on_unavailable='closed' or 'open' with a spool_dir (docs/python.md)",
            UserWarning,
            stacklevel=3,
        )
        return DEFAULT_POLICY
    return on_unavailable


@dataclass(frozen=True)
class Wait:
    """A replay step: another process holds the spool's replay lock; wait, then go on."""

    seconds: float


#: What a replay asks of its driver: run a statement (send back its result, or throw
#: its error in) or wait a moment.
Step = q.Call[Any] | Wait
ReplaySteps = Generator[Step, Any, "ReplayReport"]


def _unavailable(exc: BaseException) -> DatabaseUnavailable:
    if isinstance(exc, DatabaseUnavailable):
        return exc
    err = DatabaseUnavailable(str(exc))
    err.__cause__ = exc
    return err


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _dumps(record: Mapping[str, Any]) -> str:
    """One JSON line; Decimals (usage such as audio_seconds) are written exactly."""
    return q.exact_json(record)


def _loads(line: bytes) -> dict[str, Any]:
    record = json.loads(line, parse_float=Decimal)
    if not isinstance(record, dict) or "kind" not in record:
        raise ValueError("not a spool record")
    return record


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` anew, readable by its owner only (like the spool's records, whatever
    the directory's mode or the umask), and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_BINARY, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(text.encode())
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new file durable (POSIX; Windows cannot open a directory,
    and NTFS journals the rename itself)."""
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with FileLock(str(path)):
        yield


def drive(steps: ReplaySteps, run: Runner, sleep: Callable[[float], None] = time.sleep) -> Any:
    """Run a replay's steps synchronously: each statement through ``run`` (its result
    sent back, its error thrown in), each :class:`Wait` through ``sleep``."""
    try:
        step = next(steps)
        while True:
            if isinstance(step, Wait):
                sleep(step.seconds)
                step = steps.send(None)
                continue
            try:
                result = run(step)
            except Exception as exc:
                step = steps.throw(exc)
            else:
                step = steps.send(result)
    except StopIteration as stop:
        return stop.value
    finally:
        steps.close()


@dataclass(frozen=True)
class ReplayReport:
    replayed: int  # records sent (booked, or found already booked)
    booked_micros: int  # what the database booked in this replay
    rejected: int  # records moved to rejected.jsonl
    remaining: int  # records still to replay (the database went away again)


class Spool:
    """A durable, append-only spool directory (see the module docstring)."""

    def __init__(
        self, directory: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.directory / "spool.jsonl"
        self.state_path = self.directory / "state.json"
        self.rejected_path = self.directory / "rejected.jsonl"
        self.max_bytes = max_bytes
        self._append_lock = self.directory / ".append.lock"
        self._replay_lock = self.directory / ".replay.lock"
        self.source = self._source()

    def _source(self) -> str:
        path = self.directory / "source"
        with _locked(self._append_lock):
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                _write_private(tmp, f"spool-{uuid.uuid4()}\n")
                os.replace(tmp, path)
                _fsync_dir(self.directory)
            return path.read_text().strip()

    # -- writing ---------------------------------------------------------------------

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record and fsync it; returns only once it is on disk."""
        self._append_line(self.path, _dumps(record))

    def unreplayed_bytes(self) -> int:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return 0
        return max(size - int(self.state()["offset"]), 0)

    def check_room(self) -> None:
        """SpoolFull when the records not yet replayed reach ``max_bytes``."""
        used = self.unreplayed_bytes()
        if used >= self.max_bytes:
            raise SpoolFull(
                f"the spool {self.directory} is full: {used} bytes not yet replayed, "
                f"limit {self.max_bytes} (max_bytes); no call proceeds unenforced until "
                "the database is back and the spool is replayed"
            )

    def _append_line(self, path: Path, line: str) -> None:
        data = line.encode() + b"\n"
        with _locked(self._append_lock):
            created = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _O_BINARY, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size:
                    # a torn last line (a writer died mid-write) stays a line of its own
                    with open(path, "rb") as f:
                        f.seek(size - 1)
                        if f.read(1) != b"\n":
                            data = b"\n" + data
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.directory)

    # -- replay state ------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            state = {}
        return {
            "offset": int(state.get("offset", 0)),
            # a spend report in flight, written by the spool format before 0013
            "pending": state.get("pending"),
            "cumulative": dict(state.get("cumulative", {})),
        }

    def _save_state(self, state: Mapping[str, Any]) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        _write_private(tmp, json.dumps(state, sort_keys=True))
        os.replace(tmp, self.state_path)
        _fsync_dir(self.directory)

    def _records(self, offset: int) -> Iterator[tuple[int, bytes]]:
        """(offset after the line, line) for every complete line from offset."""
        try:
            with open(self.path, "rb") as f:
                f.seek(offset)
                for line in f:
                    if not line.endswith(b"\n"):
                        return  # being written right now: not yet a record
                    offset += len(line)
                    yield offset, line
        except FileNotFoundError:
            return

    def pending(self) -> int:
        """Records not replayed yet."""
        state = self.state()
        return sum(1 for _ in self._records(int(state["offset"]))) + (1 if state["pending"] else 0)

    def has_pending(self) -> bool:
        """Cheap check (a stat and a small read): is anything left to replay?"""
        return bool(self.state()["pending"]) or self.unreplayed_bytes() > 0

    def rejected(self) -> list[dict[str, Any]]:
        try:
            lines = self.rejected_path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    # -- replay ----------------------------------------------------------------------------

    def replay(self, run: Runner) -> ReplayReport:
        """Book every spooled record; stops quietly when the database goes away again.

        ``run`` executes one :class:`~costwarden._sql.Call` (``Client._run``)."""
        report: ReplayReport = drive(self.replay_steps(), run)
        return report

    def replay_steps(self, *, wait: bool = True) -> ReplaySteps:
        """The replay written once, free of I/O to the database: a generator that
        yields each statement to run (and :class:`Wait` while another process
        replays; with ``wait=False`` it returns at once instead) and returns the
        :class:`ReplayReport`. :meth:`replay` and the sync client drive it with
        blocking calls, the AsyncClient with awaits."""
        replayed = booked = rejected = 0
        lock = FileLock(str(self._replay_lock))
        while True:
            try:
                lock.acquire(timeout=0)
                break
            except LockTimeout:
                if not wait:
                    return ReplayReport(0, 0, 0, self.pending())
                yield Wait(0.05)
        try:
            state = self.state()
            try:
                if state["pending"]:
                    booked += yield from self._send_legacy_report(state)
                    replayed += 1
                for end, line in self._records(state["offset"]):
                    try:
                        record = _loads(line)
                    except ValueError as exc:
                        self._reject(state, end, line.decode(errors="replace"), exc)
                        rejected += 1
                        continue
                    try:
                        booked += yield from self._replay_one(record, end - len(line))
                        replayed += 1
                    except (CostwardenError, KeyError, TypeError, ValueError) as exc:
                        if is_unavailable(exc):
                            raise  # paused below: the record stays for the next replay
                        self._reject(state, end, record, exc)
                        rejected += 1
                        continue
                    state["offset"] = end
                    self._save_state(state)
                self._compact(state)
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                log.info("spool replay paused: the database is unavailable (%s)", exc)
        finally:
            lock.release()
        return ReplayReport(replayed, booked, rejected, self.pending())

    def _operation_id(self, record: Mapping[str, Any], key: str, start: int) -> UUID:
        value = record.get(key)
        if value:
            try:
                return UUID(str(value))
            except ValueError:
                return uuid.uuid5(_OPERATION_NAMESPACE, f"{self.source}/{value}")
        return uuid.uuid5(_OPERATION_NAMESPACE, f"{self.source}@{start}")

    def _replay_one(self, record: dict[str, Any], start: int) -> Generator[Step, Any, int]:
        kind = record["kind"]
        if kind == "usage":
            used: t.ReplayedUsage = yield q.replay_usage(
                self._operation_id(record, "id", start),
                record["org_id"],
                record["workspace_id"],
                record["model"],
                record["usage"],
                record.get("called_at") or record.get("at") or _now(),
                self.source,
                record.get("user_id"),
                record.get("key_id"),
                bool(record.get("approximate", False)),
                bool(record.get("final", True)),
            )
            return used.booked_micros
        if kind not in ("meter", "commit", "release"):
            raise ValueError(f"unknown spool record kind {kind!r}")
        usage = record.get("metered_usage") if kind == "release" else record["usage"]
        done: t.ReplayedOperation = yield q.replay_reservation(
            self._operation_id(record, "op", start),
            kind,
            UUID(record["reservation_id"]),
            usage,
            bool(record.get("approximate", False)),
            record.get("reason"),
            record.get("at"),
        )
        return done.booked_micros

    def _send_legacy_report(self, state: dict[str, Any]) -> Generator[Step, Any, int]:
        """Finish a cumulative spend report left in flight by the spool format before
        0013 (its counter was written ahead, so re-sending books it at most once)."""
        p = state["pending"]
        delta: int = yield q.spend_report_cumulative(
            p["org_id"], p["workspace_id"], self.source, p["cumulative"]
        )
        state["offset"] = max(int(state["offset"]), int(p["offset"]))
        state["pending"] = None
        self._save_state(state)
        return delta

    def _compact(self, state: dict[str, Any]) -> None:
        """Everything replayed: empty spool.jsonl. The offset is reset first, so a
        crash in between replays the records again -- and the database books none."""
        with _locked(self._append_lock):
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                return
            if size == 0 or size != int(state["offset"]):
                return
            state["offset"] = 0
            self._save_state(state)
            with open(self.path, "r+b") as f:
                f.truncate(0)
                f.flush()
                os.fsync(f.fileno())

    def _reject(self, state: dict[str, Any], end: int, record: Any, exc: BaseException) -> None:
        log.warning("spool record rejected: %s", exc)
        self._append_line(
            self.rejected_path,
            _dumps(
                {
                    "record": record,
                    "error": f"{type(exc).__name__}: {exc}",
                    "sqlstate": getattr(exc, "sqlstate", None),
                    "at": _now(),
                }
            ),
        )
        state["offset"] = end
        self._save_state(state)


_O_BINARY: int = getattr(os, "O_BINARY", 0)


@dataclass
class _LocalCall:
    """A reservation the client let through unenforced."""

    org_id: str
    workspace_id: str
    model: str
    user_id: str | None
    key_id: str | None
    called_at: str = field(default_factory=_now)
    metered: dict[str, Any] | None = None


class UnavailablePolicy:
    """What a client does when the database cannot be reached: ``'closed'`` raises
    DatabaseUnavailable, ``'open'`` proceeds unenforced and spools (see the module
    docstring). It holds the decisions and the local state, never a connection:
    the sync and the async client ask it the same questions around their own I/O.

    While the database is down, one call every ``retry_after`` seconds tries it (the
    probe); the others go straight to the spool. The first call that succeeds
    starts a replay of the spool when it holds anything."""

    def __init__(
        self,
        mode: str,
        spool_dir: str | os.PathLike[str] | None,
        *,
        retry_after: float = 1.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if mode not in POLICIES:
            raise ValueError(f"on_unavailable must be 'closed' or 'open', got {mode!r}")
        if mode == "open" and spool_dir is None:
            raise ValueError("on_unavailable='open' needs a spool_dir")
        self.mode = mode
        self.spool = Spool(spool_dir, max_bytes=max_bytes) if spool_dir is not None else None
        self._retry_after = retry_after
        self._lock = threading.Lock()
        self._local: dict[UUID, _LocalCall] = {}
        # usage metered by ticks the database did not see, per reservation it holds
        self._remote_metered: dict[UUID, dict[str, Any]] = {}
        self._down_until = 0.0
        self._appended = 0  # records appended by this process (replay bookkeeping)
        self._replayed_upto = -1 if self.spool is not None and self.spool.has_pending() else 0
        self._replaying = False
        self._replay_generation = 0
        self._replay_not_before = 0.0

    @property
    def is_open(self) -> bool:
        return self.mode == "open"

    # -- around database calls ---------------------------------------------------------

    def check(self) -> bool:
        """Before a guarded call, under 'open': while the database is known to be down,
        raise DatabaseUnavailable at once (the call goes to the spool), except for one
        call every ``retry_after`` seconds, which tries the database: True for that
        call (the probe), False for a call made while the database is not known down."""
        if not self.is_open:
            return False
        with self._lock:
            now = time.monotonic()
            if now < self._down_until:
                raise DatabaseUnavailable("database unavailable (retrying shortly)")
            if self._down_until:
                self._down_until = now + self._retry_after  # this call is the probe
                return True
            return False

    def failed(self, exc: BaseException) -> DatabaseUnavailable | None:
        """After a guarded call raised ``exc``: the DatabaseUnavailable to hand to the
        fallback when ``exc`` means the database cannot be reached, else None (the
        error is the caller's to see)."""
        if not is_unavailable(exc):
            return None
        with self._lock:
            self._down_until = time.monotonic() + self._retry_after
        return _unavailable(exc)

    def succeeded(self) -> bool:
        """After a guarded call succeeded: should this call replay the spool now? True
        at most once at a time per process, when records may be waiting."""
        with self._lock:
            self._down_until = 0.0
            if (
                self.spool is None
                or self._replaying
                or self._replayed_upto == self._appended
                or time.monotonic() < self._replay_not_before
            ):
                return False
            self._replaying = True
            self._replay_generation = self._appended
            return True

    def replayed(self, report: ReplayReport | None) -> None:
        """After an automatic replay (None: it failed). The spool is up to date when
        nothing remained and nothing was appended meanwhile; after a failure the next
        attempt waits ``retry_after``."""
        with self._lock:
            self._replaying = False
            if report is None:
                self._replay_not_before = time.monotonic() + self._retry_after
            elif report.remaining == 0:
                self._replayed_upto = self._replay_generation

    def replay_steps(self, *, wait: bool = True) -> ReplaySteps | None:
        """The steps of a replay of the spool (None without a spool)."""
        return self.spool.replay_steps(wait=wait) if self.spool is not None else None

    def _append(self, record: Mapping[str, Any]) -> None:
        assert self.spool is not None
        self.spool.append(record)
        with self._lock:
            self._appended += 1

    # -- calls that proceed unenforced ---------------------------------------------------

    def owns(self, reservation_id: UUID) -> bool:
        with self._lock:
            return reservation_id in self._local

    def reserve(
        self,
        exc: DatabaseUnavailable,
        org_id: str,
        workspace_id: str,
        model: str,
        usage: Mapping[str, Any],
        user_id: str | None,
        key_id: str | None,
    ) -> t.SpooledReservation:
        if not self.is_open:
            raise exc
        assert self.spool is not None
        self.spool.check_room()
        rid = uuid.uuid4()
        with self._lock:
            self._local[rid] = _LocalCall(org_id, workspace_id, model, user_id, key_id)
        log.warning("database unavailable: reservation %s proceeds unenforced (%s)", rid, exc)
        return t.SpooledReservation(
            reservation_id=rid,
            status="held",
            amount_micros=0,
            tokens=0,
            expires_at=None,
            billing_mode=None,
            reasons=(),
        )

    def _take(self, reservation_id: UUID) -> _LocalCall:
        with self._lock:
            call = self._local.get(reservation_id)
            if call is None:
                raise InvalidState(f"spooled reservation {reservation_id} is already finished")
            return call

    def meter(self, reservation_id: UUID, usage: Mapping[str, Any]) -> t.MeterResult:
        call = self._take(reservation_id)
        call.metered = dict(usage)
        if self._has_room():  # the final record carries the usage in any case
            self._spool_usage(reservation_id, call, usage, True, final=False)
        return t.MeterResult(0, 0, 0, "continue")

    def commit(
        self, reservation_id: UUID, usage: Mapping[str, Any], approximate: bool
    ) -> t.CommitResult:
        call = self._take(reservation_id)
        self._spool_usage(reservation_id, call, usage, approximate, final=True)
        self._finish(reservation_id)
        return t.CommitResult(None, 0, 0, 0, None)

    def release(self, reservation_id: UUID, reason: str | None) -> int:
        call = self._take(reservation_id)
        if call.metered and any(v for v in call.metered.values()):
            # like fn_cost_release: a call that ran is charged what was metered
            self._spool_usage(reservation_id, call, call.metered, True, final=True)
        self._finish(reservation_id)
        return 0

    def _has_room(self) -> bool:
        assert self.spool is not None
        try:
            self.spool.check_room()
        except SpoolFull:
            return False
        return True

    def _spool_usage(
        self,
        rid: UUID,
        call: _LocalCall,
        usage: Mapping[str, Any],
        approximate: bool,
        *,
        final: bool,
    ) -> None:
        self._append(
            {
                "kind": "usage",
                "id": str(rid),
                "org_id": call.org_id,
                "workspace_id": call.workspace_id,
                "model": call.model,
                "user_id": call.user_id,
                "key_id": call.key_id,
                "usage": dict(usage),
                "approximate": approximate,
                "final": final,
                "called_at": call.called_at,
                "at": _now(),
            }
        )

    def _finish(self, reservation_id: UUID) -> None:
        with self._lock:
            self._local.pop(reservation_id, None)

    # -- database reservations when the database went away -----------------------------

    def offline_metered(self, reservation_id: UUID) -> dict[str, Any] | None:
        """The usage metered by ticks of a database reservation that the database
        did not see (None: none): a release sends it along."""
        with self._lock:
            return self._remote_metered.get(reservation_id)

    def settled(self, reservation_id: UUID) -> None:
        """The database saw a later tick, a commit or a release of the reservation."""
        with self._lock:
            self._remote_metered.pop(reservation_id, None)

    def meter_unreachable(
        self, exc: DatabaseUnavailable, reservation_id: UUID, usage: Mapping[str, Any]
    ) -> t.MeterResult:
        if not self.is_open:
            raise exc
        with self._lock:
            self._remote_metered[reservation_id] = dict(usage)
        if self._has_room():  # the release record carries the usage in any case
            self._append(
                {
                    "kind": "meter",
                    "op": str(uuid.uuid4()),
                    "reservation_id": str(reservation_id),
                    "usage": dict(usage),
                    "at": _now(),
                }
            )
        return t.MeterResult(0, 0, 0, "continue")

    def commit_unreachable(
        self,
        exc: DatabaseUnavailable,
        reservation_id: UUID,
        usage: Mapping[str, Any],
        approximate: bool,
    ) -> t.CommitResult:
        if not self.is_open:
            raise exc
        self._append(
            {
                "kind": "commit",
                "op": str(uuid.uuid4()),
                "reservation_id": str(reservation_id),
                "usage": dict(usage),
                "approximate": approximate,
                "at": _now(),
            }
        )
        self.settled(reservation_id)
        return t.CommitResult(None, 0, 0, 0, None)

    def release_unreachable(
        self, exc: DatabaseUnavailable, reservation_id: UUID, reason: str | None
    ) -> int:
        if not self.is_open:
            raise exc
        self._append(
            {
                "kind": "release",
                "op": str(uuid.uuid4()),
                "reservation_id": str(reservation_id),
                "reason": reason,
                "metered_usage": self.offline_metered(reservation_id),
                "at": _now(),
            }
        )
        self.settled(reservation_id)
        return 0
