"""Anthropic SDK adapter: ``guard(anthropic_client, cw_client, ...)`` (SPEC §14).

The guarded client is used exactly like the ``Anthropic`` / ``AsyncAnthropic``
client it wraps. Every method of ``messages`` and ``beta.messages`` that sends a
model request is reserved, metered and committed: ``create`` (plain and
``stream=True``), ``parse``, ``stream(...)`` and ``with_raw_response.create`` /
``.parse``. ``count_tokens`` is free and passes through, and so do the batch
methods that send no model request (``retrieve``, ``list``, ``delete``, ``cancel``,
``results``). The methods that cannot be committed (``with_streaming_response``,
``with_raw_response`` with ``stream=True``, ``batches.create``, the beta
``tool_runner`` and ``thread``) and the requests billed at prices the reservation
does not cover (``fallbacks``, the advisor tool, ``speed="fast"``) raise
:class:`NotGuarded` before anything is sent, and so does any method of those
resources this adapter does not know. The rest of the client passes through
unchanged. A stream's usage comes from its ``message_start`` (input, cache reads
and writes) and ``message_delta`` (cumulative output) events. See
docs/integrations.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from ._common import count, field, given, is_async, mappings, provider_model
from ._resource import ChildFactory, GuardedResource, Namespace, unknown
from ._saga import (
    AsyncMeteredStream,
    AsyncSession,
    GuardConfig,
    MeteredStream,
    NotGuarded,
    Passthrough,
    StreamAborted,
    SyncSession,
    Tracker,
    Usage,
    merge,
)
from ._sizing import (
    Limits,
    ModelLimits,
    Plan,
    SizingError,
    default_limits,
    plan_call,
    utf8_len,
)

__all__ = ["NotGuarded", "SizingError", "StreamAborted", "guard", "usage_from_anthropic"]

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


def _compaction_side(usage: Any) -> Usage:
    """The tokens of the usage's ``compaction`` iterations (server-side summaries of the
    context, billed, and not included in the top-level counts)."""
    found: list[Usage] = []
    for step in field(usage, "iterations") or ():
        if field(step, "type") == "compaction":
            found.append(merge(_input_side(step), {"output_tokens": count(step, "output_tokens")}))
    return merge(*found)


def usage_from_anthropic(usage: Any) -> Usage:
    """Map an Anthropic usage object (``Usage`` or ``MessageDeltaUsage``, or their beta
    twins) to SPEC §0 units.

    Anthropic's ``input_tokens`` already excludes the cache reads
    (``cache_read_input_tokens`` -> ``cached_input_tokens``) and the cache writes
    (``cache_creation_input_tokens`` -> ``cache_write_tokens``); ``output_tokens``
    includes extended-thinking tokens, which Anthropic bills as output tokens. The
    ``compaction`` entries of ``iterations`` (beta), which the top-level counts leave
    out, are added.
    """
    return merge(
        _input_side(usage),
        {"output_tokens": count(usage, "output_tokens")},
        _compaction_side(usage),
    )


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
                _compaction_side(usage),
            )
        return False
    if kind == "content_block_delta":
        delta = field(event, "delta")
        nbytes = sum(
            _text_bytes(field(delta, name))
            for name in ("text", "partial_json", "thinking", "content")
        )
        return tracker.add_output(nbytes) if nbytes else False
    return False


# -- sizing -------------------------------------------------------------------------------

#: Anthropic-defined tools that run in the caller's code (bash, text editor, memory,
#: computer use): the model reads only what requests carry. Every other typed tool (web
#: search and fetch, code execution, tool search, MCP toolsets, ...) runs on Anthropic's
#: side and feeds the model input the request cannot bound, in as many sampling turns as
#: it needs.
_CLIENT_TOOL_PREFIXES = ("bash_", "text_editor_", "memory_", "computer_")


def _tool_param(tool: Any) -> Any:
    """A tool as the SDK sends it (a ``@beta_tool`` function or a builtin tool object is
    sent as its ``to_dict()``)."""
    if not isinstance(tool, Mapping) and callable(getattr(tool, "to_dict", None)):
        return tool.to_dict()
    return tool


def _server_side(kwargs: Mapping[str, Any]) -> list[str]:
    """What of the call's prompt Anthropic adds from its side (empty: the request has it all)."""
    found = ["container"] if given(kwargs, "container") else []
    if field(given(kwargs, "thread"), "type") == "continue":
        found.append("thread continued from previous_message_id")
    if given(kwargs, "mcp_servers"):
        found.append("mcp_servers")
    if given(kwargs, "compaction"):
        found.append("compaction")
    for edit in field(given(kwargs, "context_management"), "edits") or ():
        if str(field(edit, "type")).startswith("compact_"):
            found.append(f"{field(edit, 'type')} context edit")
    for tool in given(kwargs, "tools") or ():
        kind = field(_tool_param(tool), "type")
        if kind not in (None, "custom") and not str(kind).startswith(_CLIENT_TOOL_PREFIXES):
            found.append(f"{kind} tool")
    for block in mappings([given(kwargs, "messages"), given(kwargs, "system")]):
        kind = block.get("type")
        if kind == "document" and field(block.get("source"), "type") in ("file", "url"):
            found.append("document by file id or URL")
        elif kind == "container_upload":
            found.append("container_upload")
    return found


def _output_format(value: Any) -> Any:
    """An ``output_format`` type (``parse``, ``stream``) as the SDK sends it: its JSON
    schema (the request's bytes, not the type's name, are sized)."""
    if not isinstance(value, type):
        return value
    from anthropic.lib._parse._transform import to_json_output_format

    return to_json_output_format(value)


def messages_plan(
    kwargs: Mapping[str, Any], *, model: str, limits: ModelLimits, image_tokens: int, bound: Any
) -> Plan:
    """The plan of a Messages API request (``kwargs`` as the SDK takes them)."""
    messages = list(given(kwargs, "messages") or ())
    system = given(kwargs, "system")
    tools = [_tool_param(t) for t in given(kwargs, "tools") or ()]
    extra = [given(kwargs, k) for k in ("output_config", "context_management", "compaction")]
    extra += [system, _output_format(given(kwargs, "output_format"))]
    return plan_call(
        model=model,
        limits=limits,
        messages=messages,
        tools=tools,
        extra=[x for x in extra if x is not None],
        message_count=len(messages) + (1 if system else 0),
        max_output=given(kwargs, "max_tokens"),
        image_tokens=image_tokens,
        server_side=_server_side(kwargs),
        prompt_tokens=bound,
    )


def _plan(cfg: GuardConfig, kwargs: Mapping[str, Any], bound: Any = None) -> Plan:
    model = provider_model("anthropic", str(kwargs["model"]))
    limits = cfg.limits.get(model)
    return messages_plan(
        kwargs, model=model, limits=limits, image_tokens=cfg.image_tokens, bound=bound
    )


def _materialized(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``messages`` and ``tools`` given as one-shot iterables, as lists: sizing reads them
    and the SDK must still send them whole."""
    for name in ("messages", "tools"):
        value = given(kwargs, name)
        if value is not None and not isinstance(value, list | tuple):
            kwargs[name] = list(value)
    return kwargs


# -- streams ------------------------------------------------------------------------------


def _request_attr(manager: Any, resource: str) -> str:
    """The SDK stream manager's (name-mangled) attribute holding the unsent request."""
    for name in vars(manager):
        if str(name).endswith("__api_request"):
            return str(name)
    raise NotGuarded(
        f"costwarden: this anthropic SDK's {type(manager).__name__} is not known to the "
        f"guard, so {resource}.stream is not sent unreserved; use "
        f"{resource}.create(stream=True)"
    )


class _StreamManager:
    """``messages.stream(...)``: reserves on enter; the SDK's MessageStream reads a
    metered raw stream, so every way of reading it (iteration, ``text_stream``,
    ``get_final_message()``) is metered; leaving it commits what was read."""

    def __init__(self, manager: Any, session: SyncSession, attr: str) -> None:
        self._manager = manager
        self._session = session
        self._attr = attr

    @property
    def costwarden(self) -> SyncSession:
        """The call's session (reservation, tracker, commit result)."""
        return self._session

    def __enter__(self) -> Any:
        session = self._session
        session.reserve()
        request = getattr(self._manager, self._attr)
        setattr(self._manager, self._attr, lambda: MeteredStream(request(), session, _observe))
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
    def __init__(self, manager: Any, session: AsyncSession, attr: str) -> None:
        self._manager = manager
        self._session = session
        self._attr = attr

    @property
    def costwarden(self) -> AsyncSession:
        return self._session

    async def __aenter__(self) -> Any:
        session = self._session
        request = getattr(self._manager, self._attr)
        try:
            await session.reserve()
        except BaseException:
            request.close()  # the request coroutine is never sent
            raise

        async def metered() -> AsyncMeteredStream:
            return AsyncMeteredStream(await request, session, _observe)

        setattr(self._manager, self._attr, metered())
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


# -- the guarded resources ----------------------------------------------------------------


class _Batches(Passthrough):
    """``messages.batches``: a batch is processed and billed after the call returns, so
    ``create`` is refused; the methods that send no model request pass through."""

    PASSTHROUGH = frozenset({"retrieve", "list", "delete", "cancel", "results"})

    def __init__(self, inner: Any, name: str) -> None:
        super().__init__(inner)
        self._name = name

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in self.PASSTHROUGH:
            return getattr(self._inner, name)
        raise unknown(self._name, name)

    def create(self, *args: Any, **kwargs: Any) -> Any:
        raise NotGuarded(
            f"costwarden: {self._name}.create is not guarded: a message batch is processed "
            "and billed after the call returns, so its usage cannot be committed from the "
            "call; send the requests with messages.create (guarded one by one), or create "
            "the batch on the unguarded client and account for it from its results"
        )

    @property
    def with_raw_response(self) -> _Batches:
        return _Batches(self._inner.with_raw_response, self._name)

    @property
    def with_streaming_response(self) -> _Batches:
        return _Batches(self._inner.with_streaming_response, self._name)


class _Messages(GuardedResource):
    """``messages``: ``create``, ``parse``, ``stream`` and ``with_raw_response.create`` are
    reserved and committed; ``count_tokens`` (free) passes through."""

    PASSTHROUGH = frozenset({"count_tokens"})
    CHILDREN: ClassVar[Mapping[str, ChildFactory]] = {
        "batches": lambda inner: _Batches(inner, "messages.batches")
    }
    observe = staticmethod(_observe)
    usage_of = staticmethod(_usage_of)

    def __init__(self, inner: Any, cfg: GuardConfig, name: str = "messages") -> None:
        super().__init__(inner, cfg, name, "anthropic")

    def _plan(self, kwargs: Mapping[str, Any], bound: Any) -> Plan:
        return _plan(self._cfg, kwargs, bound)

    def _check(self, method: str, kwargs: Mapping[str, Any]) -> None:
        refused = None
        if given(kwargs, "fallbacks") is not None:
            refused = (
                "fallbacks=...: a fallback model can serve the call and bill it at its own "
                "prices, which the reservation does not cover; send it without fallbacks "
                "and retry a refusal with a guarded call to the other model"
            )
        elif any(
            str(field(_tool_param(t), "type")).startswith("advisor_")
            for t in given(kwargs, "tools") or ()
        ):
            refused = (
                "the advisor tool: it runs a second model, billed at that model's prices, "
                "which the reservation does not cover"
            )
        elif given(kwargs, "speed") == "fast":
            refused = (
                'speed="fast": it is billed at a premium over the model\'s catalogue '
                "prices, which the reservation does not cover"
            )
        if refused is not None:
            raise NotGuarded(f"costwarden: {self._name}.{method} with {refused}")

    def _prepare(self, method: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], Plan]:
        return super()._prepare(method, _materialized(dict(kwargs)))

    def _raw_sender(self, method: str) -> Callable[..., Any]:
        send = getattr(self._inner.with_raw_response, method, None)
        if send is None and method == "parse":
            # messages.parse has no with_raw_response twin in this SDK: wrap it the way
            # the SDK wraps its raw methods (the body is read, parse() runs the parser)
            from anthropic._response import async_to_raw_response_wrapper, to_raw_response_wrapper

            parse = self._inner.parse
            wrap = async_to_raw_response_wrapper if is_async(parse) else to_raw_response_wrapper
            return wrap(parse)
        if send is None:
            raise AttributeError(f"{type(self._inner).__name__}.with_raw_response has no {method}")
        return send  # type: ignore[no-any-return]

    def stream(self, **kwargs: Any) -> Any:
        """``stream(...)``: the SDK's helper; its request is reserved when the context
        manager is entered, read through a metered stream and committed when left."""
        kwargs, plan = self._prepare("stream", kwargs)
        manager = self._inner.stream(**kwargs)
        attr = _request_attr(manager, self._name)
        endpoint = self._endpoint + ".stream"
        if hasattr(manager, "__aenter__"):
            return _AsyncStreamManager(manager, AsyncSession(self._cfg, plan, endpoint), attr)
        return _StreamManager(manager, SyncSession(self._cfg, plan, endpoint), attr)


class _BetaMessages(_Messages):
    """``beta.messages``: as ``messages``; the helpers that send their requests through the
    unguarded client (``tool_runner``, ``thread``) are refused."""

    CHILDREN: ClassVar[Mapping[str, ChildFactory]] = {
        "batches": lambda inner: _Batches(inner, "beta.messages.batches")
    }

    def __init__(self, inner: Any, cfg: GuardConfig) -> None:
        super().__init__(inner, cfg, "beta.messages")

    def _refuse_helper(self, helper: str) -> NotGuarded:
        return NotGuarded(
            f"costwarden: beta.messages.{helper} is not guarded: it sends its requests "
            "through the unguarded client; call beta.messages.create (or stream) turn by "
            "turn, with costwarden_prompt_tokens=N for a turn that continues a thread"
        )

    def tool_runner(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse_helper("tool_runner")

    def thread(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse_helper("thread")


class GuardedAnthropic(Namespace):
    """An ``Anthropic`` / ``AsyncAnthropic`` client whose calls are reserved and committed."""

    def __init__(self, inner: Any, cfg: GuardConfig) -> None:
        members: dict[str, Any] = {"messages": _Messages(inner.messages, cfg)}
        beta = getattr(inner, "beta", None)
        if beta is not None and getattr(beta, "messages", None) is not None:
            members["beta"] = Namespace(beta, {"messages": _BetaMessages(beta.messages, cfg)})
        super().__init__(inner, members)
        self.costwarden = cfg

    def with_options(self, **kwargs: Any) -> GuardedAnthropic:
        return GuardedAnthropic(self._inner.with_options(**kwargs), self.costwarden)

    copy = with_options


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
    ``costwarden_prompt_tokens=N`` (required with server tools, a ``container``, a
    document by file id or URL, a continued ``thread``, ``mcp_servers`` or compaction)."""
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
