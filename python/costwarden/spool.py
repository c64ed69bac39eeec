"""The clients' ``on_unavailable`` policy (SPEC §7) and its durable local spool.

``Client(dsn, on_unavailable='closed')`` (the default; ``AsyncClient`` alike): when the
database cannot be reached (:func:`costwarden.errors.is_unavailable`), every call
raises :class:`~costwarden.errors.DatabaseUnavailable`.

``Client(dsn, on_unavailable='open', spool_dir=...)``: the call proceeds unenforced.

- ``reserve`` returns a :class:`~costwarden.types.SpooledReservation` (status
  ``'held'``, ``spooled=True``, nothing held, no reasons); its ``meter`` ticks are
  kept in memory and always answer ``continue``; its ``commit`` appends the usage to
  the spool (and a ``release`` after meter ticks spools the metered usage, as the
  SQL release does);
- ``commit`` / ``release`` of a reservation the database holds, when the database
  cannot be reached at that moment, are spooled as they are and replayed later
  with the same arguments: both are idempotent in SQL, so nothing is booked twice
  (a commit that arrives after the reservation expired is a late commit and books
  only what expiry did not charge);
- a ``meter`` tick of such a reservation answers ``continue`` unenforced.

The spool is a directory (one per process or shared; appends and replays lock it):

``source``
    the spool's spend-report source name, ``spool-<uuid>``, created once;
``spool.jsonl``
    one JSON object per line, appended with ``O_APPEND`` and fsync'd before the
    call returns (a record is never acknowledged before it is on disk);
``state.json``
    replay progress, replaced atomically (write, fsync, rename, fsync the
    directory): the byte offset of the next record, the cumulative micro-USD the
    spool has reported per (org, workspace), and the report in flight;
``rejected.jsonl``
    records that replay could not book (unknown workspace, unpriced model, ...),
    with the error, for an operator: nothing is dropped silently.

Replay (:meth:`Spool.replay`, ``Client.replay_spool()``, ``await
AsyncClient.replay_spool()``, ``costwarden spend-report replay``, and automatically
after the first successful call once the database is back) prices each ``usage``
record with ``fn_cost_quote`` (the pricing in force at replay time) and books it with
``fn_spend_report_cumulative(org, workspace, <source>, <new cumulative>)``. The new
cumulative counter is written to ``state.json`` *before* it is sent, so a replay
interrupted at any point re-sends the same counter and the database books a delta
of 0: nothing is lost and nothing is double-booked.

The replay is written once, without I/O to the database (:meth:`Spool.replay_steps`
yields the statements to run), so the sync and the async client drive the same code.
Its lock is a file lock taken without blocking: while another process replays, the
replay waits in short steps (an async client's event loop keeps running).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from . import _sql as q
from . import types as t
from .errors import CostwardenError, DatabaseUnavailable, InvalidState, is_unavailable

Runner = Callable[[q.Call[Any]], Any]

log = logging.getLogger("costwarden.spool")

POLICIES = ("closed", "open")


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


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
    replayed: int  # records booked (or found already booked)
    booked_micros: int  # delta the spend reports booked in this replay
    rejected: int  # records moved to rejected.jsonl
    remaining: int  # records still to replay (the database went away again)


class Spool:
    """A durable, append-only spool directory (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.directory / "spool.jsonl"
        self.state_path = self.directory / "state.json"
        self.rejected_path = self.directory / "rejected.jsonl"
        self._append_lock = self.directory / ".append.lock"
        self._replay_lock = self.directory / ".replay.lock"
        self.source = self._source()

    def _source(self) -> str:
        path = self.directory / "source"
        with _flock(self._append_lock):
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                tmp.write_text(f"spool-{uuid.uuid4()}\n")
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, path)
                _fsync_dir(self.directory)
            return path.read_text().strip()

    # -- writing ---------------------------------------------------------------------

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record and fsync it; returns only once it is on disk."""
        self._append_line(self.path, _dumps(record))

    def _append_line(self, path: Path, line: str) -> None:
        data = line.encode() + b"\n"
        with _flock(self._append_lock):
            created = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
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
            "cumulative": dict(state.get("cumulative", {})),
            "pending": state.get("pending"),
        }

    def _save_state(self, state: Mapping[str, Any]) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
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
        offset = int(state["pending"]["offset"]) if state["pending"] else int(state["offset"])
        return sum(1 for _ in self._records(offset)) + (1 if state["pending"] else 0)

    def has_pending(self) -> bool:
        """Cheap check (a stat and a small read): is anything left to replay?"""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return False
        state = self.state()
        return bool(state["pending"]) or size > int(state["offset"])

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

    def replay_steps(self) -> ReplaySteps:
        """The replay written once, free of I/O to the database: a generator that
        yields each statement to run (and :class:`Wait` while another process
        replays) and returns the :class:`ReplayReport`. :meth:`replay` and the sync
        client drive it with blocking calls, the AsyncClient with awaits."""
        replayed = booked = rejected = 0
        fd = os.open(self._replay_lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while not _try_flock(fd):
                yield Wait(0.05)
            state = self.state()
            try:
                if state["pending"]:
                    booked += yield from self._send_report(state)
                    replayed += 1
                for end, line in self._records(state["offset"]):
                    try:
                        record = _loads(line)
                    except ValueError as exc:
                        self._reject(state, end, line.decode(errors="replace"), exc)
                        rejected += 1
                        continue
                    try:
                        booked += yield from self._replay_one(state, end, record)
                        replayed += 1
                    except (CostwardenError, KeyError, TypeError, ValueError) as exc:
                        if is_unavailable(exc):
                            raise  # paused below: the record stays for the next replay
                        state["pending"] = None
                        self._reject(state, end, record, exc)
                        rejected += 1
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                log.info("spool replay paused: the database is unavailable (%s)", exc)
        finally:
            os.close(fd)  # closing releases the lock
        return ReplayReport(replayed, booked, rejected, self.pending())

    def _replay_one(
        self, state: dict[str, Any], end: int, record: dict[str, Any]
    ) -> Generator[Step, Any, int]:
        kind = record["kind"]
        if kind == "usage":
            quote: t.Quote = yield q.cost_quote(
                record["org_id"], record["workspace_id"], record["model"], record["usage"]
            )
            key = f"{record['org_id']}\x1f{record['workspace_id']}"
            cumulative = int(state["cumulative"].get(key, 0)) + quote.amount_micros
            # write-ahead: the counter about to be reported, so a retry re-sends it
            state["pending"] = {
                "org_id": record["org_id"],
                "workspace_id": record["workspace_id"],
                "cumulative": cumulative,
                "offset": end,
                "id": record.get("id"),
            }
            self._save_state(state)
            return (yield from self._send_report(state))
        if kind == "commit":
            yield q.cost_commit(
                UUID(record["reservation_id"]), record["usage"], bool(record["approximate"])
            )
        elif kind == "release":
            yield q.cost_release(UUID(record["reservation_id"]), record.get("reason"))
        else:
            raise ValueError(f"unknown spool record kind {kind!r}")
        state["offset"] = end
        self._save_state(state)
        return 0

    def _send_report(self, state: dict[str, Any]) -> Generator[Step, Any, int]:
        p = state["pending"]
        delta: int = yield q.spend_report_cumulative(
            p["org_id"], p["workspace_id"], self.source, p["cumulative"]
        )
        state["cumulative"][f"{p['org_id']}\x1f{p['workspace_id']}"] = p["cumulative"]
        state["offset"] = p["offset"]
        state["pending"] = None
        self._save_state(state)
        return delta

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


@dataclass
class _LocalCall:
    """A reservation the client let through unenforced."""

    org_id: str
    workspace_id: str
    model: str
    user_id: str | None
    key_id: str | None
    metered: dict[str, Any] | None = None
    done: bool = False


class UnavailablePolicy:
    """What a client does when the database cannot be reached: ``'closed'`` raises
    DatabaseUnavailable, ``'open'`` proceeds unenforced and spools (see the module
    docstring). It holds the decisions and the local state, never a connection:
    the sync and the async client ask it the same questions around their own I/O.

    After a failure the database is not tried again for ``retry_after`` seconds
    (calls go straight to the spool); ``replay_every`` seconds at most between
    automatic replays."""

    def __init__(
        self,
        mode: str,
        spool_dir: str | os.PathLike[str] | None,
        *,
        retry_after: float = 5.0,
        replay_every: float = 30.0,
    ) -> None:
        if mode not in POLICIES:
            raise ValueError(f"on_unavailable must be 'closed' or 'open', got {mode!r}")
        if mode == "open" and spool_dir is None:
            raise ValueError("on_unavailable='open' needs a spool_dir")
        self.mode = mode
        self.spool = Spool(spool_dir) if spool_dir is not None else None
        self._retry_after = retry_after
        self._replay_every = replay_every
        self._lock = threading.Lock()
        self._local: dict[UUID, _LocalCall] = {}
        self._down_until = 0.0
        self._next_replay = 0.0

    @property
    def is_open(self) -> bool:
        return self.mode == "open"

    # -- around database calls ---------------------------------------------------------

    def check(self) -> None:
        """Before a guarded call: under 'open', raise DatabaseUnavailable at once while
        the database failed less than ``retry_after`` seconds ago (the call goes
        straight to the spool)."""
        if self.is_open and time.monotonic() < self._down_until:
            raise DatabaseUnavailable("database unavailable (retrying shortly)")

    def failed(self, exc: BaseException) -> DatabaseUnavailable | None:
        """After a guarded call raised ``exc``: the DatabaseUnavailable to hand to the
        fallback when ``exc`` means the database cannot be reached, else None (the
        error is the caller's to see)."""
        if not is_unavailable(exc):
            return None
        self._down_until = time.monotonic() + self._retry_after
        return _unavailable(exc)

    def succeeded(self) -> bool:
        """After a guarded call succeeded: is an automatic replay of the spool due?"""
        self._down_until = 0.0
        if self.spool is None or time.monotonic() < self._next_replay:
            return False
        self._next_replay = time.monotonic() + self._replay_every
        return self.spool.has_pending()

    def replayed(self, report: ReplayReport | None) -> None:
        """After an automatic replay (None: it failed): when records remain, try
        again after ``retry_after`` rather than ``replay_every``."""
        if report is not None and report.remaining:
            self._next_replay = time.monotonic() + self._retry_after

    def replay_steps(self) -> ReplaySteps | None:
        """The steps of a replay of the spool (None without a spool)."""
        return self.spool.replay_steps() if self.spool is not None else None

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
            call = self._local[reservation_id]
            if call.done:
                raise InvalidState(f"spooled reservation {reservation_id} is already finished")
            return call

    def meter(self, reservation_id: UUID, usage: Mapping[str, Any]) -> t.MeterResult:
        call = self._take(reservation_id)
        call.metered = dict(usage)
        return t.MeterResult(0, 0, 0, "continue")

    def commit(
        self, reservation_id: UUID, usage: Mapping[str, Any], approximate: bool
    ) -> t.CommitResult:
        call = self._take(reservation_id)
        self._spool_usage(reservation_id, call, usage, approximate)
        self._finish(reservation_id)
        return t.CommitResult(None, 0, 0, 0, None)

    def release(self, reservation_id: UUID, reason: str | None) -> int:
        call = self._take(reservation_id)
        if call.metered and any(v for v in call.metered.values()):
            # like fn_cost_release: a call that ran is charged what was metered
            self._spool_usage(reservation_id, call, call.metered, True)
        self._finish(reservation_id)
        return 0

    def _spool_usage(
        self, rid: UUID, call: _LocalCall, usage: Mapping[str, Any], approximate: bool
    ) -> None:
        assert self.spool is not None
        self.spool.append(
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
                "at": _now(),
            }
        )

    def _finish(self, reservation_id: UUID) -> None:
        with self._lock:
            self._local.pop(reservation_id, None)

    # -- database reservations when the database went away -----------------------------

    def meter_unreachable(
        self, exc: DatabaseUnavailable, reservation_id: UUID, usage: Mapping[str, Any]
    ) -> t.MeterResult:
        if not self.is_open:
            raise exc
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
        assert self.spool is not None
        self.spool.append(
            {
                "kind": "commit",
                "reservation_id": str(reservation_id),
                "usage": dict(usage),
                "approximate": approximate,
                "at": _now(),
            }
        )
        return t.CommitResult(None, 0, 0, 0, None)

    def release_unreachable(
        self, exc: DatabaseUnavailable, reservation_id: UUID, reason: str | None
    ) -> int:
        if not self.is_open:
            raise exc
        assert self.spool is not None
        self.spool.append(
            {
                "kind": "release",
                "reservation_id": str(reservation_id),
                "reason": reason,
                "at": _now(),
            }
        )
        return 0
