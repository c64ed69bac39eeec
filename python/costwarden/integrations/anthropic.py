"""Anthropic SDK adapter: ``guard(anthropic_client, cw_client, ...)`` (SPEC §14).

The guarded client is used exactly like the ``Anthropic`` / ``AsyncAnthropic``
client it wraps. ``messages.create`` (plain and ``stream=True``) and
``messages.stream(...)`` are reserved, metered and committed; everything else
passes through unchanged. A stream's usage comes from its ``message_start``
(input, cache reads and writes) and ``message_delta`` (cumulative output)
events. See docs/integrations.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._common import count, field, given, is_async, mappings, provider_model
from ._saga import (
    AsyncMeteredStream,
    AsyncSession,
    GuardConfig,
    MeteredStream,
    Passthrough,
    StreamAborted,
    SyncSession,
    Tracker,
    Usage,
    call_async,
    call_sync,
    merge,
)
from ._sizing import (
    PROMPT_TOKENS,
    Limits,
    Plan,
    SizingError,
    default_limits,
    plan_call,
    utf8_len,
)

__all__ = ["SizingError", "StreamAborted", "guard", "usage_from_anthropic"]

#: The most tokens Anthropic bills for one image in a prompt: about
#: width x height / 750 after the API's resizing, at most about 1,600 for the
#: standard resolution and 4,784 for the high-resolution models.
DEFAULT_IMAGE_TOKENS = 4_800

_INPUT_FIELDS = (
    ("input_tokens", "input_tokens"),
    ("cache_read_input_tokens", "cached_input_tokens"),
    ("cache_creation_input_tokens", "cache_write_tokens"),
)


def _input_side(usage: Any) -> Usage:
    return merge({unit: count(usage, name) for name, unit in _INPUT_FIELDS})


def usage_from_anthropic(usage: Any) -> Usage:
    """Map an Anthropic usage object (``Usage`` or ``MessageDeltaUsage``) to SPEC §0 units.

    Anthropic's ``input_tokens`` already excludes the cache reads
    (``cache_read_input_tokens`` -> ``cached_input_tokens``) and the cache writes
    (``cache_creation_input_tokens`` -> ``cache_write_tokens``); ``output_tokens``
    includes extended-thinking tokens, which Anthropic bills as output tokens.
    """
    return merge(_input_side(usage), {"output_tokens": count(usage, "output_tokens")})


def _usage_of(message: Any) -> Usage | None:
    usage = field(message, "usage")
    return None if usage is None else usage_from_anthropic(usage)


def _text_bytes(value: Any) -> int:
    return utf8_len(value) if isinstance(value, str) else 0


def _observe(event: Any, tracker: Tracker) -> bool:
    kind = field(event, "type")
    if kind == "message_start":
        usage = field(field(event, "message"), "usage")
        if usage is not None:
            tracker.input_exact = _input_side(usage)
            tracker.output_floor = count(usage, "output_tokens")
        return False
    if kind == "message_delta":
        usage = field(event, "usage")
        if usage is not None:
            # message_delta counts are cumulative; input fields are present only
            # when they changed since message_start
            inputs = _input_side(usage) if count(usage, "input_tokens") else None
            start = tracker.input_exact or {}
            tracker.final = merge(
                inputs if inputs is not None else start,
                {"output_tokens": count(usage, "output_tokens")},
            )
        return False
    if kind == "content_block_delta":
        delta = field(event, "delta")
        nbytes = sum(
            _text_bytes(field(delta, name)) for name in ("text", "partial_json", "thinking")
        )
        return tracker.add_output(nbytes) if nbytes else False
    return False


#: Anthropic-defined tools that run in the caller's code (bash, text editor, memory,
#: computer use): the model reads only what requests carry. Every other typed tool (web
#: search and fetch, code execution, tool search, ...) runs on Anthropic's side and feeds
#: the model input the request cannot bound, in as many sampling turns as it needs.
_CLIENT_TOOL_PREFIXES = ("bash_", "text_editor_", "memory_", "computer_")


def _server_side(kwargs: Mapping[str, Any]) -> list[str]:
    """What of the call's prompt Anthropic adds from its side (empty: the request has it all)."""
    found = ["container"] if given(kwargs, "container") else []
    for tool in given(kwargs, "tools") or ():
        kind = field(tool, "type")
        if kind not in (None, "custom") and not str(kind).startswith(_CLIENT_TOOL_PREFIXES):
            found.append(f"{kind} tool")
    for block in mappings([given(kwargs, "messages"), given(kwargs, "system")]):
        kind = block.get("type")
        if kind == "document" and field(block.get("source"), "type") in ("file", "url"):
            found.append("document by file id or URL")
        elif kind == "container_upload":
            found.append("container_upload")
    return found


def _plan(cfg: GuardConfig, kwargs: Mapping[str, Any], bound: Any = None) -> Plan:
    model = provider_model("anthropic", str(kwargs["model"]))
    messages = list(given(kwargs, "messages") or ())
    system = given(kwargs, "system")
    extra = [x for x in (system, given(kwargs, "output_config")) if x is not None]
    return plan_call(
        model=model,
        limits=cfg.limits.get(model),
        messages=messages,
        tools=given(kwargs, "tools"),
        extra=extra,
        message_count=len(messages) + (1 if system else 0),
        max_output=given(kwargs, "max_tokens"),
        image_tokens=cfg.image_tokens,
        server_side=_server_side(kwargs),
        prompt_tokens=bound,
    )


_API_REQUEST = "_MessageStreamManager__api_request"
_ASYNC_API_REQUEST = "_AsyncMessageStreamManager__api_request"


class _StreamManager:
    """``messages.stream(...)``: reserves on enter; the SDK's MessageStream reads a
    metered raw stream, so every way of reading it (iteration, ``text_stream``,
    ``get_final_message()``) is metered."""

    def __init__(self, manager: Any, cfg: GuardConfig, plan: Plan) -> None:
        self._manager = manager
        self._session = SyncSession(cfg, plan, "anthropic.messages.stream")
        if not hasattr(manager, _API_REQUEST):
            raise TypeError("this anthropic SDK's MessageStreamManager is not supported")

    def __enter__(self) -> Any:
        session = self._session
        session.reserve()
        request = getattr(self._manager, _API_REQUEST)
        setattr(self._manager, _API_REQUEST, lambda: MeteredStream(request(), session, _observe))
        try:
            return self._manager.__enter__()
        except BaseException:
            session.release("provider call failed")
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            self._manager.__exit__(*exc)
        finally:
            if not self._session.done and self._session.reservation is not None:
                self._session.settle()


class _AsyncStreamManager:
    def __init__(self, manager: Any, cfg: GuardConfig, plan: Plan) -> None:
        self._manager = manager
        self._session = AsyncSession(cfg, plan, "anthropic.messages.stream")
        if not hasattr(manager, _ASYNC_API_REQUEST):
            raise TypeError("this anthropic SDK's AsyncMessageStreamManager is not supported")

    async def __aenter__(self) -> Any:
        session = self._session
        request = getattr(self._manager, _ASYNC_API_REQUEST)
        try:
            await session.reserve()
        except BaseException:
            request.close()  # the request coroutine is never sent
            raise

        async def metered() -> AsyncMeteredStream:
            return AsyncMeteredStream(await request, session, _observe)

        setattr(self._manager, _ASYNC_API_REQUEST, metered())
        try:
            return await self._manager.__aenter__()
        except BaseException:
            await session.release("provider call failed")
            raise

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self._manager.__aexit__(*exc)
        finally:
            if not self._session.done and self._session.reservation is not None:
                await self._session.settle()


class _Messages(Passthrough):
    def __init__(self, inner: Any, cfg: GuardConfig) -> None:
        super().__init__(inner)
        self._cfg = cfg

    def create(self, **kwargs: Any) -> Any:
        bound = kwargs.pop(PROMPT_TOKENS, None)
        plan = _plan(self._cfg, kwargs, bound)
        inner_create = self._inner.create
        run = call_async if is_async(inner_create) else call_sync
        return run(
            self._cfg,
            plan,
            "anthropic.messages",
            lambda: inner_create(**kwargs),
            stream=bool(given(kwargs, "stream")),
            usage_of=_usage_of,
            observe=_observe,
        )

    def stream(self, **kwargs: Any) -> Any:
        bound = kwargs.pop(PROMPT_TOKENS, None)
        plan = _plan(self._cfg, kwargs, bound)
        manager = self._inner.stream(**kwargs)
        if hasattr(manager, "__aenter__"):
            return _AsyncStreamManager(manager, self._cfg, plan)
        return _StreamManager(manager, self._cfg, plan)


class GuardedAnthropic(Passthrough):
    """An ``Anthropic`` / ``AsyncAnthropic`` client whose calls are reserved and committed."""

    def __init__(self, inner: Any, cfg: GuardConfig) -> None:
        super().__init__(inner)
        self.costwarden = cfg
        self.messages = _Messages(inner.messages, cfg)

    def with_options(self, **kwargs: Any) -> GuardedAnthropic:
        return GuardedAnthropic(self._inner.with_options(**kwargs), self.costwarden)


def guard(
    anthropic_client: Any,
    cw_client: Any,
    *,
    org_id: str,
    workspace_id: str,
    user_id: str | None = None,
    key_id: str | None = None,
    limits: Limits | None = None,
    meter_every: int = 256,
    image_tokens: int = DEFAULT_IMAGE_TOKENS,
) -> Any:
    """Wrap an ``Anthropic`` (with ``costwarden.Client``) or ``AsyncAnthropic`` (with
    ``costwarden.AsyncClient``) client; the keywords are those of
    :func:`costwarden.integrations.openai.guard`, and so is the per-call
    ``costwarden_prompt_tokens=N`` (required with server tools, a ``container``, or a
    document by file id or URL)."""
    cfg = GuardConfig(
        cw_client,
        org_id,
        workspace_id,
        user_id,
        key_id,
        limits if limits is not None else default_limits(),
        meter_every,
        image_tokens,
    )
    return GuardedAnthropic(anthropic_client, cfg)
