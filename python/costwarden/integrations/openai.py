"""OpenAI SDK adapter: ``guard(openai_client, cw_client, ...)`` (SPEC §14).

The guarded client is used exactly like the ``OpenAI`` / ``AsyncOpenAI`` client
it wraps. ``chat.completions.create`` and ``responses.create`` (plain and
``stream=True``) are reserved, metered and committed; everything else passes
through unchanged. A streamed chat completion is sent with
``stream_options={"include_usage": True}`` so that its last chunk carries the
usage (the caller's own ``stream_options`` are kept; a chunk with no choices
and the usage then arrives last). See docs/integrations.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._common import count, field, given, is_async, provider_model
from ._saga import (
    GuardConfig,
    Passthrough,
    StreamAborted,
    Tracker,
    Usage,
    call_async,
    call_sync,
    merge,
)
from ._sizing import Limits, Plan, SizingError, default_limits, plan_call, utf8_len

__all__ = ["SizingError", "StreamAborted", "guard", "usage_from_openai"]

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


def _chat_plan(cfg: GuardConfig, kwargs: Mapping[str, Any]) -> Plan:
    model = provider_model("openai", str(kwargs["model"]))
    messages = list(given(kwargs, "messages") or ())
    cap = given(kwargs, "max_completion_tokens") or given(kwargs, "max_tokens")
    extra = [given(kwargs, k) for k in ("functions", "response_format", "prediction", "audio")]
    return plan_call(
        model=model,
        limits=cfg.limits.get(model),
        messages=messages,
        tools=given(kwargs, "tools"),
        extra=[x for x in extra if x is not None],
        message_count=len(messages),
        max_output=cap,
        choices=given(kwargs, "n") or 1,
        image_tokens=cfg.image_tokens,
    )


def _responses_plan(cfg: GuardConfig, kwargs: Mapping[str, Any]) -> Plan:
    model = provider_model("openai", str(kwargs["model"]))
    items = given(kwargs, "input")
    messages = [items] if isinstance(items, str) else list(items or ())
    extra = [given(kwargs, k) for k in ("instructions", "text", "prompt")]
    return plan_call(
        model=model,
        limits=cfg.limits.get(model),
        messages=messages,
        tools=given(kwargs, "tools"),
        extra=[x for x in extra if x is not None],
        message_count=len(messages) + (1 if given(kwargs, "instructions") else 0),
        max_output=given(kwargs, "max_output_tokens"),
        image_tokens=cfg.image_tokens,
    )


def _with_usage_option(kwargs: dict[str, Any]) -> dict[str, Any]:
    options = dict(given(kwargs, "stream_options") or {})
    options["include_usage"] = True
    return {**kwargs, "stream_options": options}


class _Create(Passthrough):
    """A resource (chat.completions or responses) whose ``create`` is guarded."""

    def __init__(self, inner: Any, cfg: GuardConfig, endpoint: str) -> None:
        super().__init__(inner)
        self._cfg = cfg
        self._endpoint = endpoint

    def create(self, **kwargs: Any) -> Any:
        chat = self._endpoint == "openai.chat.completions"
        stream = bool(given(kwargs, "stream"))
        plan = _chat_plan(self._cfg, kwargs) if chat else _responses_plan(self._cfg, kwargs)
        if chat and stream:
            kwargs = _with_usage_option(kwargs)
        inner_create = self._inner.create
        run = call_async if is_async(inner_create) else call_sync
        return run(
            self._cfg,
            plan,
            self._endpoint,
            lambda: inner_create(**kwargs),
            stream=stream,
            usage_of=_usage_of,
            observe=_observe_chat if chat else _observe_response,
        )


class _Chat(Passthrough):
    def __init__(self, inner: Any, cfg: GuardConfig) -> None:
        super().__init__(inner)
        self.completions = _Create(inner.completions, cfg, "openai.chat.completions")


class GuardedOpenAI(Passthrough):
    """An ``OpenAI`` / ``AsyncOpenAI`` client whose calls are reserved and committed."""

    def __init__(self, inner: Any, cfg: GuardConfig) -> None:
        super().__init__(inner)
        self.costwarden = cfg
        self.chat = _Chat(inner.chat, cfg)
        self.responses = _Create(inner.responses, cfg, "openai.responses")

    def with_options(self, **kwargs: Any) -> GuardedOpenAI:
        return GuardedOpenAI(self._inner.with_options(**kwargs), self.costwarden)


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
