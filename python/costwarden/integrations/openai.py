"""OpenAI SDK adapter: ``guard(openai_client, cw_client, ...)`` (SPEC §14).

The guarded client is used exactly like the ``OpenAI`` / ``AsyncOpenAI`` client
it wraps. Every method of ``chat.completions`` and ``responses`` (and of their
``beta`` twins) that sends a model request is reserved, metered and committed:
``create`` (plain and ``stream=True``), ``parse``, ``stream(...)``,
``responses.compact`` and the same methods under ``with_raw_response``. The
few that cannot be (``with_streaming_response``, ``with_raw_response`` with
``stream=True``, ``responses.connect``, background responses) raise
:class:`NotGuarded` before anything is sent, and so does any method of those
two resources this adapter does not know. The rest of the client passes
through unchanged. A streamed chat completion is sent with
``stream_options={"include_usage": True}`` so that its last chunk carries the
usage (the caller's own ``stream_options`` are kept; a chunk with no choices
and the usage then arrives last). See docs/integrations.md.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from ._common import count, field, given, mappings, provider_model
from ._resource import GuardedResource, Namespace
from ._saga import GuardConfig, NotGuarded, StreamAborted, Tracker, Usage, merge
from ._sizing import (
    PROMPT_TOKENS,
    Limits,
    ModelLimits,
    Plan,
    SizingError,
    default_limits,
    plan_call,
    utf8_len,
)

__all__ = ["NotGuarded", "SizingError", "StreamAborted", "guard", "usage_from_openai"]

#: The most tokens OpenAI bills for one image in a prompt (gpt-4o-mini, detail
#: "high", 8 tiles: 2,833 + 8 x 5,667). Pass ``image_tokens=`` for a smaller
#: model-specific bound (gpt-4o: 1,445).
DEFAULT_IMAGE_TOKENS = 48_169


def usage_from_openai(usage: Any) -> Usage:
    """Map an OpenAI usage object (chat completions or Responses) to SPEC §0 units.

    Chat completions: ``prompt_tokens`` includes the cached, cache-written and
    audio prompt tokens, ``completion_tokens`` the reasoning and audio output
    tokens; each is split out so that no token is counted twice. Responses:
    ``input_tokens`` includes the cached and cache-written tokens,
    ``output_tokens`` the reasoning tokens. Zero units are left out.
    """
    if field(usage, "prompt_tokens") is not None or field(usage, "completion_tokens") is not None:
        prompt, completion = count(usage, "prompt_tokens"), count(usage, "completion_tokens")
        pd, cd = "prompt_tokens_details", "completion_tokens_details"
    else:
        prompt, completion = count(usage, "input_tokens"), count(usage, "output_tokens")
        pd, cd = "input_tokens_details", "output_tokens_details"
    cached = count(usage, pd, "cached_tokens")
    written = count(usage, pd, "cache_write_tokens")
    audio_in = count(usage, pd, "audio_tokens")
    reasoning = count(usage, cd, "reasoning_tokens")
    audio_out = count(usage, cd, "audio_tokens")
    return merge(
        {
            "input_tokens": max(prompt - cached - written - audio_in, 0),
            "cached_input_tokens": cached,
            "cache_write_tokens": written,
            "audio_input_tokens": audio_in,
            "output_tokens": max(completion - reasoning - audio_out, 0),
            "reasoning_tokens": reasoning,
            "audio_output_tokens": audio_out,
        }
    )


def _usage_of(response: Any) -> Usage | None:
    usage = field(response, "usage")
    return None if usage is None else usage_from_openai(usage)


def _text_bytes(value: Any) -> int:
    return utf8_len(value) if isinstance(value, str) else 0


def _observe_chat(chunk: Any, tracker: Tracker) -> bool:
    usage = field(chunk, "usage")
    if usage is not None:
        tracker.final = usage_from_openai(usage)
    nbytes = 0
    for choice in field(chunk, "choices") or ():
        delta = field(choice, "delta")
        nbytes += _text_bytes(field(delta, "content")) + _text_bytes(field(delta, "refusal"))
        for call in field(delta, "tool_calls") or ():
            fn = field(call, "function")
            nbytes += _text_bytes(field(fn, "name")) + _text_bytes(field(fn, "arguments"))
        nbytes += _text_bytes(field(field(delta, "audio"), "transcript"))
    return tracker.add_output(nbytes) if nbytes else False


_FINAL_RESPONSE_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _observe_response(event: Any, tracker: Tracker) -> bool:
    kind = field(event, "type")
    if kind in _FINAL_RESPONSE_EVENTS:
        usage = field(field(event, "response"), "usage")
        if usage is not None:
            tracker.final = usage_from_openai(usage)
        return False
    if isinstance(kind, str) and kind.endswith(".delta"):
        nbytes = _text_bytes(field(event, "delta"))
        return tracker.add_output(nbytes) if nbytes else False
    return False


# -- sizing -------------------------------------------------------------------------------

#: Responses tools that run in the caller's code: the model reads only what requests
#: carry. Every other tool type (web and file search, code interpreter, MCP, image
#: generation, hosted shell or tool search, ...) runs on OpenAI's side and feeds the
#: model input the request cannot bound, in as many sampling turns as it needs.
_CLIENT_TOOLS = frozenset(
    {"function", "custom", "computer", "computer_use_preview", "local_shell", "apply_patch"}
)
#: Chat completions tools (all run in the caller's code).
_CHAT_TOOLS = frozenset({"function", "custom"})


def _client_tool(tool: Any, chat: bool) -> bool:
    kind = field(tool, "type")
    if chat:
        return kind in _CHAT_TOOLS
    if kind in _CLIENT_TOOLS:
        return True
    if kind == "namespace":
        return all(_client_tool(t, chat) for t in field(tool, "tools") or ())
    if kind == "shell":
        return field(field(tool, "environment"), "type") in (None, "local")
    if kind == "tool_search":
        return bool(field(tool, "execution") == "client")
    return False


def _server_side(kwargs: Mapping[str, Any], chat: bool) -> list[str]:
    """What of the call's prompt OpenAI adds from its side (empty: the request carries it all)."""
    found: list[str] = []
    if not chat:
        found += [k for k in ("previous_response_id", "conversation", "prompt") if given(kwargs, k)]
    elif given(kwargs, "web_search_options") is not None:
        found.append("web_search_options")
    tools = list(given(kwargs, "tools") or ())
    content = given(kwargs, "messages" if chat else "input")
    items = [] if chat or isinstance(content, str) else list(content or ())
    for item in items:
        kind = field(item, "type")
        if kind == "item_reference" or (
            kind is None and field(item, "id") and field(item, "role") is None
        ):
            found.append("item_reference")
        elif kind == "additional_tools":
            tools += list(field(item, "tools") or ())
    found += [f"{field(t, 'type')} tool" for t in tools if not _client_tool(t, chat)]
    for part in mappings(content):
        kind = part.get("type")
        if kind == "input_file" and not part.get("file_data"):
            found.append("input_file by id or URL")
        elif kind == "file" and not field(part.get("file"), "file_data"):
            found.append("file by id")
        elif part.get("role") == "assistant" and field(part.get("audio"), "id"):
            found.append("assistant audio by id")
    return found


def _format_param(value: Any) -> Any:
    """A ``response_format`` / ``text_format`` given as a type (``parse``) as the SDK sends
    it: its strict JSON schema (the request's bytes, not the type's name, are sized)."""
    if not isinstance(value, type):
        return value
    from openai.lib._parsing import type_to_response_format_param

    return type_to_response_format_param(value)


def chat_plan(
    kwargs: Mapping[str, Any], *, model: str, limits: ModelLimits, image_tokens: int, bound: Any
) -> Plan:
    """The plan of a chat completion request (``kwargs`` as the SDK takes them)."""
    messages = list(given(kwargs, "messages") or ())
    cap = given(kwargs, "max_completion_tokens") or given(kwargs, "max_tokens")
    extra = [given(kwargs, k) for k in ("functions", "prediction", "audio")]
    extra.append(_format_param(given(kwargs, "response_format")))
    return plan_call(
        model=model,
        limits=limits,
        messages=messages,
        tools=given(kwargs, "tools"),
        extra=[x for x in extra if x is not None],
        message_count=len(messages),
        max_output=cap,
        choices=given(kwargs, "n") or 1,
        image_tokens=image_tokens,
        server_side=_server_side(kwargs, chat=True),
        prompt_tokens=bound,
    )


def responses_plan(
    kwargs: Mapping[str, Any], *, model: str, limits: ModelLimits, image_tokens: int, bound: Any
) -> Plan:
    """The plan of a Responses API request (``kwargs`` as the SDK takes them)."""
    items = given(kwargs, "input")
    messages = [items] if isinstance(items, str) else list(items or ())
    extra = [given(kwargs, k) for k in ("instructions", "text", "prompt")]
    extra.append(_format_param(given(kwargs, "text_format")))
    return plan_call(
        model=model,
        limits=limits,
        messages=messages,
        tools=given(kwargs, "tools"),
        extra=[x for x in extra if x is not None],
        message_count=len(messages) + (1 if given(kwargs, "instructions") else 0),
        max_output=given(kwargs, "max_output_tokens"),
        image_tokens=image_tokens,
        server_side=_server_side(kwargs, chat=False),
        prompt_tokens=bound,
    )


def _chat_plan(cfg: GuardConfig, kwargs: Mapping[str, Any], bound: Any = None) -> Plan:
    model = provider_model("openai", str(kwargs["model"]))
    limits = cfg.limits.get(model)
    return chat_plan(kwargs, model=model, limits=limits, image_tokens=cfg.image_tokens, bound=bound)


def _responses_plan(cfg: GuardConfig, kwargs: Mapping[str, Any], bound: Any = None) -> Plan:
    model = provider_model("openai", str(kwargs["model"]))
    limits = cfg.limits.get(model)
    return responses_plan(
        kwargs, model=model, limits=limits, image_tokens=cfg.image_tokens, bound=bound
    )


def _with_usage_option(kwargs: dict[str, Any]) -> dict[str, Any]:
    options = dict(given(kwargs, "stream_options") or {})
    options["include_usage"] = True
    return {**kwargs, "stream_options": options}


# -- the guarded resources ----------------------------------------------------------------


class _Resource(GuardedResource):
    """``chat.completions`` or ``responses``: the methods that send a model request are
    reserved and committed, the known others pass through, anything else is refused."""

    usage_of = staticmethod(_usage_of)

    def __init__(self, inner: Any, cfg: GuardConfig, name: str) -> None:
        super().__init__(inner, cfg, name, "openai")

    def _check(self, method: str, kwargs: Mapping[str, Any]) -> None:
        if given(kwargs, "background"):
            raise NotGuarded(
                f"costwarden: {self._name}.{method}(background=True) is not guarded: a "
                "background response runs and is billed after the call returns, so its "
                "usage cannot be committed; use a foreground call instead (stream=True "
                "for a long one)"
            )

    def stream(self, **kwargs: Any) -> Any:
        """``stream(...)``: the SDK's helper, sending its request through the guarded
        ``create``; its context manager commits when left."""
        bound = kwargs.pop(PROMPT_TOKENS, None)
        request = _StreamRequest(self, bound)
        manager = type(self._inner).stream(request, **kwargs)
        if hasattr(manager, "__aenter__"):
            return _AsyncStreamManager(manager, request)
        return _StreamManager(manager, request)


class _ChatCompletions(_Resource):
    PASSTHROUGH = frozenset({"retrieve", "update", "list", "delete", "messages"})
    observe = staticmethod(_observe_chat)

    def __init__(self, inner: Any, cfg: GuardConfig) -> None:
        super().__init__(inner, cfg, "chat.completions")

    def _plan(self, kwargs: Mapping[str, Any], bound: Any) -> Plan:
        return _chat_plan(self._cfg, kwargs, bound)

    def _stream_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return _with_usage_option(kwargs)


class _Responses(_Resource):
    PASSTHROUGH = frozenset({"retrieve", "delete", "cancel", "input_items", "input_tokens"})
    observe = staticmethod(_observe_response)

    def __init__(self, inner: Any, cfg: GuardConfig) -> None:
        super().__init__(inner, cfg, "responses")

    def _plan(self, kwargs: Mapping[str, Any], bound: Any) -> Plan:
        return _responses_plan(self._cfg, kwargs, bound)

    def compact(self, **kwargs: Any) -> Any:
        kwargs, plan = self._prepare("compact", kwargs)
        return self._run(self._inner.compact, kwargs, plan, endpoint="openai.responses.compact")

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        raise NotGuarded(
            "costwarden: responses.connect (the Responses WebSocket) is not guarded: "
            "use responses.create(stream=True)"
        )


class _StreamRequest:
    """The resource as the SDK's ``stream(...)`` helper sees it: the request it sends goes
    through the guarded ``create`` (reserved when sent, metered, committed)."""

    def __init__(self, owner: _Resource, bound: Any) -> None:
        self._owner = owner
        self._bound = bound
        self.sent: Any = None  # the metered stream, once the request is sent

    def create(self, **kwargs: Any) -> Any:
        if self._bound is not None:
            kwargs[PROMPT_TOKENS] = self._bound
        result = self._owner.create(**kwargs)
        if inspect.isawaitable(result):
            return self._sent_async(result)
        self.sent = result
        return result

    async def _sent_async(self, pending: Any) -> Any:
        self.sent = await pending
        return self.sent

    def retrieve(self, *args: Any, **kwargs: Any) -> Any:
        # stream(response_id=...): resuming an existing response sends no new model request
        return self._owner._inner.retrieve(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        owner = self._owner._name
        raise NotGuarded(
            f"costwarden: this openai SDK's {owner}.stream helper uses {name}, which the "
            f"guard does not know; use {owner}.create(stream=True)"
        )


class _StreamManager:
    """``stream(...)``'s context manager: the SDK's own, whose stream reads the metered one;
    leaving it commits what was read when the stream was not read to its end."""

    def __init__(self, manager: Any, request: _StreamRequest) -> None:
        self._manager = manager
        self._request = request

    @property
    def costwarden(self) -> Any:
        """The call's session (reservation, tracker, commit result), once sent."""
        sent = self._request.sent
        return None if sent is None else sent.costwarden

    def __enter__(self) -> Any:
        try:
            return self._manager.__enter__()
        except BaseException:
            self._settle()
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            self._manager.__exit__(*exc)
        finally:
            self._settle()

    def _settle(self) -> None:
        if self._request.sent is not None:
            self._request.sent.close()


class _AsyncStreamManager:
    def __init__(self, manager: Any, request: _StreamRequest) -> None:
        self._manager = manager
        self._request = request

    @property
    def costwarden(self) -> Any:
        sent = self._request.sent
        return None if sent is None else sent.costwarden

    async def __aenter__(self) -> Any:
        try:
            return await self._manager.__aenter__()
        except BaseException:
            await self._settle()
            raise

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self._manager.__aexit__(*exc)
        finally:
            await self._settle()

    async def _settle(self) -> None:
        if self._request.sent is not None:
            await self._request.sent.close()


# -- namespaces ---------------------------------------------------------------------------


def _guarded_members(inner: Any, cfg: GuardConfig) -> dict[str, Any]:
    """``chat.completions`` and ``responses`` of a client or of its ``beta``, guarded."""
    members: dict[str, Any] = {}
    chat = getattr(inner, "chat", None)
    if chat is not None:
        members["chat"] = Namespace(chat, {"completions": _ChatCompletions(chat.completions, cfg)})
    responses = getattr(inner, "responses", None)
    if responses is not None:
        members["responses"] = _Responses(responses, cfg)
    return members


class GuardedOpenAI(Namespace):
    """An ``OpenAI`` / ``AsyncOpenAI`` client whose calls are reserved and committed."""

    def __init__(self, inner: Any, cfg: GuardConfig) -> None:
        members = _guarded_members(inner, cfg)
        beta = getattr(inner, "beta", None)
        if beta is not None:
            members["beta"] = Namespace(beta, _guarded_members(beta, cfg))
        super().__init__(inner, members)
        self.costwarden = cfg

    def with_options(self, **kwargs: Any) -> GuardedOpenAI:
        return GuardedOpenAI(self._inner.with_options(**kwargs), self.costwarden)

    copy = with_options


def guard(
    openai_client: Any,
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
    """Wrap an ``OpenAI`` (with ``costwarden.Client``) or ``AsyncOpenAI`` (with
    ``costwarden.AsyncClient``) client.

    ``limits``: the models' ``max_output_tokens`` and prices (default: the
    sample pricing catalogue; pass ``Limits.from_file(path)`` for your own).
    ``meter_every``: a stream is metered every this many (estimated) output
    tokens. ``image_tokens``: the tokens reserved per prompt image.

    Every guarded method also takes ``costwarden_prompt_tokens=N``: a bound on the
    call's whole prompt, required when part of it is on OpenAI's side
    (``previous_response_id``, ``conversation``, a stored ``prompt``, server-side
    tools, files by id); see docs/integrations.md.
    """
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
    return GuardedOpenAI(openai_client, cfg)
