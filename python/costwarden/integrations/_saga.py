"""The saga of one guarded provider call, shared by the adapters.

A call is reserved (:func:`costwarden.Client.reserve`: a denial raises
``BudgetExceeded`` before the request is sent), the request is sent, and then:

- a plain response: its usage is mapped and committed;
- a stream: it is wrapped; every ``meter_every`` estimated output tokens a
  meter tick reports the cumulative usage so far, and a tick that says
  ``abort`` closes the stream, commits what was metered (approximate) and
  raises :class:`StreamAborted`; the provider's final usage commits when the
  stream ends; a stream that ends (or fails, or is closed early) without it
  commits the metered estimate flagged approximate;
- an SDK exception before any output: the reservation is released and the
  exception re-raised.

The state machine (:class:`Tracker`) does no I/O; :class:`SyncSession` and
:class:`AsyncSession` drive it against ``costwarden.Client`` / ``AsyncClient``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from .. import types as t
from ..errors import CostwardenError
from ._sizing import Limits, Plan, estimate_tokens

Usage = dict[str, int]


class StreamAborted(CostwardenError):
    """A meter tick said abort: the stream was closed and its partial usage committed."""

    def __init__(self, reservation_id: UUID, commit: t.CommitResult | None) -> None:
        super().__init__(
            f"reservation {reservation_id}: the budget cannot cover more output; "
            "the stream was closed and its partial usage committed"
        )
        self.reservation_id = reservation_id
        self.commit = commit


class NotGuarded(CostwardenError, TypeError):
    """A call the guarded client cannot reserve and commit, refused before anything
    is sent; the message names what to use instead."""


@dataclass(frozen=True)
class GuardConfig:
    """Who a guarded client's calls are charged to and how they are metered."""

    cw: Any  # costwarden.Client or costwarden.AsyncClient
    org_id: str
    workspace_id: str
    user_id: str | None = None
    key_id: str | None = None
    limits: Limits = field(default_factory=Limits)
    meter_every: int = 256
    image_tokens: int = 0

    def __post_init__(self) -> None:
        if self.meter_every < 1:
            raise ValueError("meter_every must be at least 1 token")


def merge(*usages: Mapping[str, int] | None) -> Usage:
    out: Usage = {}
    for u in usages:
        for k, v in (u or {}).items():
            out[k] = out.get(k, 0) + int(v)
    return {k: v for k, v in out.items() if v}


class Tracker:
    """What a stream has shown so far; decides when to tick and what to commit."""

    def __init__(self, plan: Plan, every: int) -> None:
        self.plan = plan
        self.every = every
        self.output_estimate = 0
        self.last_tick_output = 0
        self.input_exact: Usage | None = None
        self.output_floor = 0
        self.final: Usage | None = None
        self.ticked: Usage | None = None

    def add_output(self, nbytes: int) -> bool:
        """Count a streamed piece; True when a meter tick is due."""
        self.output_estimate += estimate_tokens(nbytes)
        return self.output_estimate - self.last_tick_output >= self.every

    def metered(self) -> Usage:
        """The cumulative usage so far (an estimate where the provider gave none)."""
        inputs = (
            self.input_exact
            if self.input_exact is not None
            else {"input_tokens": self.plan.input_estimate}
        )
        out = max(self.output_estimate, self.output_floor)
        usage = merge(inputs, {"output_tokens": out}, self.plan.extra_units)
        if self.ticked:  # a tick never goes backwards (SPEC §3)
            usage = {k: max(v, usage.get(k, 0)) for k, v in self.ticked.items()} | {
                k: v for k, v in usage.items() if k not in self.ticked
            }
        return usage

    def tick_usage(self) -> Usage:
        usage = self.metered()
        self.ticked = usage
        self.last_tick_output = self.output_estimate
        return usage

    def outcome(self) -> tuple[Usage, bool]:
        """(usage to commit, approximate?)."""
        if self.final is not None:
            return merge(self.final, self.plan.extra_units), False
        return self.metered(), True


class _SessionBase:
    def __init__(self, cfg: GuardConfig, plan: Plan, endpoint: str) -> None:
        self.cfg = cfg
        self.plan = plan
        self.endpoint = endpoint
        self.tracker = Tracker(plan, cfg.meter_every)
        self.reservation: t.Reservation | None = None
        self.result: t.CommitResult | None = None
        self.released: int | None = None
        self.aborted = False

    @property
    def done(self) -> bool:
        return self.result is not None or self.released is not None

    @property
    def reservation_id(self) -> UUID:
        assert self.reservation is not None
        return self.reservation.reservation_id

    def _reserve_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        c = self.cfg
        return (c.org_id, c.workspace_id, self.plan.model, self.plan.reserve_usage), {
            "user_id": c.user_id,
            "key_id": c.key_id,
            "metadata": {"adapter": self.endpoint},
        }


class SyncSession(_SessionBase):
    def reserve(self) -> None:
        args, kwargs = self._reserve_args()
        self.reservation = self.cfg.cw.reserve(*args, **kwargs)

    def tick(self) -> bool:
        """Meter; True when the tick says abort."""
        res: t.MeterResult = self.cfg.cw.meter(self.reservation_id, self.tracker.tick_usage())
        return res.action == "abort"

    def commit(self, usage: Mapping[str, int], approximate: bool) -> t.CommitResult:
        self.result = self.cfg.cw.commit(self.reservation_id, usage, approximate=approximate)
        return self.result

    def settle(self) -> t.CommitResult | None:
        if self.done:
            return self.result
        usage, approximate = self.tracker.outcome()
        return self.commit(usage, approximate)

    def release(self, reason: str) -> None:
        if not self.done:
            self.released = self.cfg.cw.release(self.reservation_id, reason)


class AsyncSession(_SessionBase):
    async def reserve(self) -> None:
        args, kwargs = self._reserve_args()
        self.reservation = await self.cfg.cw.reserve(*args, **kwargs)

    async def tick(self) -> bool:
        res: t.MeterResult = await self.cfg.cw.meter(self.reservation_id, self.tracker.tick_usage())
        return res.action == "abort"

    async def commit(self, usage: Mapping[str, int], approximate: bool) -> t.CommitResult:
        self.result = await self.cfg.cw.commit(self.reservation_id, usage, approximate=approximate)
        return self.result

    async def settle(self) -> t.CommitResult | None:
        if self.done:
            return self.result
        usage, approximate = self.tracker.outcome()
        return await self.commit(usage, approximate)

    async def release(self, reason: str) -> None:
        if not self.done:
            self.released = await self.cfg.cw.release(self.reservation_id, reason)


#: observe(event, tracker) -> True when a meter tick is due
Observer = Callable[[Any, Tracker], bool]
#: usage_of(response) -> the response's mapped usage, or None
UsageOf = Callable[[Any], Usage | None]


def _fail_or_settle_sync(session: SyncSession) -> None:
    """After an error mid-call: commit what was seen, or release if nothing was."""
    if session.tracker.output_estimate or session.tracker.input_exact or session.tracker.ticked:
        session.settle()
    else:
        session.release("provider call failed")


class MeteredStream:
    """A synchronous SDK stream, metered. Iterate it like the SDK's stream."""

    def __init__(self, inner: Any, session: SyncSession, observe: Observer) -> None:
        self._inner = inner
        self._it: Iterator[Any] = iter(inner)
        self._session = session
        self._observe = observe

    @property
    def costwarden(self) -> SyncSession:
        """The call's reservation, tracker and commit result."""
        return self._session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __iter__(self) -> MeteredStream:
        return self

    def __next__(self) -> Any:
        s = self._session
        if s.done:
            raise StopIteration
        try:
            event = next(self._it)
        except StopIteration:
            s.settle()
            raise
        except BaseException:
            _fail_or_settle_sync(s)
            raise
        if self._observe(event, s.tracker) and s.tick():
            s.aborted = True
            self._inner.close()
            raise StreamAborted(s.reservation_id, s.settle())
        return event

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._session.settle()

    def __enter__(self) -> MeteredStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _fail_or_settle_async(session: AsyncSession) -> None:
    if session.tracker.output_estimate or session.tracker.input_exact or session.tracker.ticked:
        await session.settle()
    else:
        await session.release("provider call failed")


class AsyncMeteredStream:
    """An asynchronous SDK stream, metered. ``async for`` it like the SDK's stream."""

    def __init__(self, inner: Any, session: AsyncSession, observe: Observer) -> None:
        self._inner = inner
        self._it: AsyncIterator[Any] = inner.__aiter__()
        self._session = session
        self._observe = observe

    @property
    def costwarden(self) -> AsyncSession:
        return self._session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __aiter__(self) -> AsyncMeteredStream:
        return self

    async def __anext__(self) -> Any:
        s = self._session
        if s.done:
            raise StopAsyncIteration
        try:
            event = await self._it.__anext__()
        except StopAsyncIteration:
            await s.settle()
            raise
        except BaseException:
            await _fail_or_settle_async(s)
            raise
        if self._observe(event, s.tracker) and await s.tick():
            s.aborted = True
            await self._inner.close()
            raise StreamAborted(s.reservation_id, await s.settle())
        return event

    async def close(self) -> None:
        try:
            await self._inner.close()
        finally:
            await self._session.settle()

    async def aclose(self) -> None:
        await self.close()

    async def __aenter__(self) -> AsyncMeteredStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def call_sync(
    cfg: GuardConfig,
    plan: Plan,
    endpoint: str,
    send: Callable[[], Any],
    *,
    stream: bool,
    usage_of: UsageOf,
    observe: Observer,
) -> Any:
    session = SyncSession(cfg, plan, endpoint)
    session.reserve()
    try:
        result = send()
    except BaseException:
        session.release("provider call failed")
        raise
    if stream:
        return MeteredStream(result, session, observe)
    usage = usage_of(result)
    if usage is None:
        session.settle()
    else:
        session.commit(merge(usage, plan.extra_units), False)
    return result


async def call_async(
    cfg: GuardConfig,
    plan: Plan,
    endpoint: str,
    send: Callable[[], Any],
    *,
    stream: bool,
    usage_of: UsageOf,
    observe: Observer,
) -> Any:
    session = AsyncSession(cfg, plan, endpoint)
    await session.reserve()
    try:
        result = await send()
    except BaseException:
        await session.release("provider call failed")
        raise
    if stream:
        return AsyncMeteredStream(result, session, observe)
    usage = usage_of(result)
    if usage is None:
        await session.settle()
    else:
        await session.commit(merge(usage, plan.extra_units), False)
    return result


class Passthrough:
    """Forwards every attribute to the wrapped SDK object."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"<costwarden guard of {self._inner!r}>"
