"""LiteLLM adapter: ``CostwardenHook``, a LiteLLM ``CustomLogger`` (SPEC §14).

One hook instance serves both places LiteLLM runs:

- **SDK / Router** (``litellm.acompletion``, ``Router.acompletion``, ``aresponses``,
  ``atext_completion``, ``aembedding``, ``litellm.anthropic.messages.acreate``): the
  hook's ``async_pre_call_deployment_hook`` runs for every attempt, after the
  deployment is chosen and before its request is sent; it reserves, and a denial
  raises ``costwarden.BudgetExceeded`` out of the LiteLLM call.
- **Proxy** (``config.yaml`` ``litellm_settings.callbacks``): ``async_pre_call_hook``
  reserves for the virtual key's org / workspace / user / key
  (:class:`VirtualKeyRule`) and rejects over budget; the request's first attempt
  takes that reservation over.

Each call type is sized from the fields it sends (chat ``messages``, Responses
``input``, text completion ``prompt``, embedding ``input``, Anthropic ``messages`` and
``system``), never too small; an embedding has no output. A call whose prompt is
partly on the provider's side needs ``costwarden_prompt_tokens`` in its metadata.
Call types that send no model request (retrieving, listing, deleting or cancelling
stored objects, moderation) pass unreserved; any other is stopped with
:class:`NotGuarded` rather than sent unreserved.

Success events commit the response's usage (:func:`usage_from_litellm`);
failure events release. Calls are matched by LiteLLM's ``litellm_call_id``, which
the attempts of one call (Router retries and fallbacks, the proxy's request) share:
every attempt holds its own reservation, a success commits the latest one and a
failure releases the oldest, whatever order LiteLLM reports them in.

Synchronous calls (``litellm.completion``, ``Router.completion``, ...) cannot be
guarded: LiteLLM runs no hook before a synchronous request that can refuse it
(``log_pre_api_call`` logs and drops what it raises). So that they are not sent
unreserved and unrecorded, the hook stops them before the request is sent with
:class:`SyncCallRefused`, which derives from ``BaseException`` to get past those
handlers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from litellm.integrations.custom_logger import CustomLogger
from litellm.types.utils import CallTypes

from ._common import count, field, given
from ._saga import NotGuarded, merge
from ._sizing import PROMPT_TOKENS, Limits, ModelLimits, Plan, default_limits, plan_call
from .anthropic import messages_plan
from .openai import chat_plan, responses_plan, usage_from_openai

__all__ = [
    "CallContext",
    "CostwardenHook",
    "NotGuarded",
    "SyncCallRefused",
    "VirtualKeyRule",
    "usage_from_litellm",
]

_CALL_TYPES = frozenset(c.value for c in CallTypes)
#: LiteLLM's synchronous call types: those with an async twin ("completion" / "acompletion");
#: not "anthropic_messages", the call type of the async ``litellm.anthropic.messages.acreate``
_SYNC_CALL_TYPES = frozenset(c for c in _CALL_TYPES if "a" + c in _CALL_TYPES) - {
    "anthropic_messages"
}


class SyncCallRefused(BaseException):
    """A synchronous LiteLLM call, stopped before its request was sent: the hook can
    refuse only the async calls (``acompletion``, ``Router.acompletion``, the proxy).

    It derives from ``BaseException``, like ``KeyboardInterrupt``: LiteLLM logs and
    drops every ``Exception`` raised before a synchronous request, which would let the
    call through unreserved and unrecorded. Catch it by name.
    """

    def __init__(self, call_type: str) -> None:
        super().__init__(
            f"costwarden: CostwardenHook cannot reserve a synchronous LiteLLM call "
            f"({call_type}): LiteLLM runs no hook that can refuse a synchronous request, "
            "so it was stopped before it was sent; use the async API (litellm.acompletion, "
            "Router.acompletion), or guard the provider SDK's client with "
            "costwarden.integrations.openai.guard / costwarden.integrations.anthropic.guard"
        )
        self.call_type = call_type


def _sync_call_type(call_type: Any) -> str | None:
    """The call type's name when it is one of LiteLLM's synchronous ones."""
    name = str(getattr(call_type, "value", call_type))
    return name if name in _SYNC_CALL_TYPES else None


#: the proxy's names for call types that LiteLLM's SDK spells otherwise
_PROXY_NAMES = {"embeddings": "embedding", "aembeddings": "embedding"}


def _call_kind(call_type: Any) -> str:
    """A call type without its async ``a`` prefix: ``acompletion`` -> ``completion``."""
    name = str(getattr(call_type, "value", call_type) or "")
    name = _PROXY_NAMES.get(name, name)
    return name[1:] if name.startswith("a") and name[1:] in _CALL_TYPES else name


#: Call types that send no model request: stored objects retrieved, listed, deleted or
#: cancelled, files and videos downloaded, MCP tools listed or called, moderation (free).
_NO_MODEL_REQUEST = re.compile(
    r"(^|_)(retrieve|list|delete|cancel|get)(_|$)|"
    r"^(file_content|video_content|vector_store_file_content|call_mcp_tool|moderation)$"
)


def _sends_no_model_request(kind: str) -> bool:
    candidates = [kind, kind[1:]] if kind.startswith("a") else [kind]
    return any(_NO_MODEL_REQUEST.search(k) for k in candidates if k)


def _prompt_bound(kwargs: Mapping[str, Any]) -> Any:
    """``costwarden_prompt_tokens`` from the call's metadata (an integer, or its decimal
    string: the Responses API forwards ``metadata`` to OpenAI, which takes strings)."""
    for name in ("metadata", "litellm_metadata"):
        meta = given(kwargs, name)
        if isinstance(meta, Mapping) and meta.get(PROMPT_TOKENS) is not None:
            value = meta[PROMPT_TOKENS]
            if isinstance(value, str) and value.strip().isdigit():
                return int(value)
            return value
    return None


def _listed(value: Any) -> list[Any]:
    """A prompt / input field as a list of its items (a string, or a flat list of token
    ids, is one item)."""
    if value is None:
        return []
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [list(value)]
    return list(value)


@dataclass(frozen=True)
class CallContext:
    """Who a call is charged to."""

    org_id: str
    workspace_id: str
    user_id: str | None = None
    key_id: str | None = None


def metadata_context(kwargs: Mapping[str, Any]) -> CallContext:
    """The default ``context``: ``org_id``, ``workspace_id``, ``user_id``, ``key_id``
    from the call's ``metadata`` (``litellm.acompletion(..., metadata={...})``)."""
    meta = given(kwargs, "metadata") or given(kwargs, "litellm_metadata") or {}
    org, ws = meta.get("org_id"), meta.get("workspace_id")
    if not org or not ws:
        raise ValueError("costwarden: the call's metadata needs org_id and workspace_id")
    return CallContext(str(org), str(ws), meta.get("user_id"), meta.get("key_id"))


@dataclass(frozen=True)
class VirtualKeyRule:
    """Maps a LiteLLM proxy virtual key (``UserAPIKeyAuth``) to costwarden's tenancy.

    Each ``*_from`` names an attribute of the key's ``user_api_key_dict``;
    the ``default_*`` value is used when that attribute is empty. With the
    defaults: org = the key's ``org_id`` (else ``default_org``), workspace = its
    team (``team_id``), user = its ``user_id``, key = its ``key_alias``
    (else the hashed ``token``).
    """

    org_from: str = "org_id"
    workspace_from: str = "team_id"
    user_from: str = "user_id"
    key_from: str = "key_alias"
    default_org: str | None = None
    default_workspace: str | None = None

    def context(self, auth: Any) -> CallContext:
        org = field(auth, self.org_from) or self.default_org
        ws = field(auth, self.workspace_from) or self.default_workspace
        if not org or not ws:
            raise ValueError(
                f"costwarden: virtual key has no {self.org_from} / {self.workspace_from} "
                "and the rule sets no default"
            )
        key = field(auth, self.key_from) or field(auth, "token")
        user = field(auth, self.user_from)
        return CallContext(str(org), str(ws), str(user) if user else None, key and str(key))


def usage_from_litellm(usage: Any) -> dict[str, int]:
    """Map a LiteLLM ``Usage`` (OpenAI-shaped for every provider) to SPEC §0 units.

    As :func:`~costwarden.integrations.openai.usage_from_openai`, plus
    Anthropic's cache writes, which LiteLLM reports as
    ``cache_creation_input_tokens`` inside ``prompt_tokens``.
    """
    mapped = usage_from_openai(usage)
    written = count(usage, "cache_creation_input_tokens")
    if written and not mapped.get("cache_write_tokens"):
        mapped["input_tokens"] = max(mapped.get("input_tokens", 0) - written, 0)
        mapped["cache_write_tokens"] = written
    return merge(mapped)


#: the call types (without the async prefix) the hook sizes
_SIZED = frozenset(
    {"completion", "text_completion", "responses", "compact_responses", "embedding"}
    | {"anthropic_messages"}
)


@dataclass
class _Held:
    reservation_id: Any
    plan: Plan
    #: False while a reservation the proxy's pre-call hook made waits for the attempt
    #: (the Router's deployment hook) that sends the request
    attempt: bool = True


class CostwardenHook(CustomLogger):
    """Reserve before a LiteLLM call, commit on success, release on failure.

    ``cw_client``: ``costwarden.AsyncClient`` (or ``Client``: its calls then
    run in a worker thread). ``context(kwargs)`` returns the call's
    :class:`CallContext` (default :func:`metadata_context`); ``key_rule`` maps
    proxy virtual keys. ``limits`` / ``image_tokens`` size the reservation as
    the SDK adapters do.
    """

    def __init__(
        self,
        cw_client: Any,
        *,
        context: Callable[[Mapping[str, Any]], CallContext] = metadata_context,
        key_rule: VirtualKeyRule | None = None,
        limits: Limits | None = None,
        image_tokens: int = 48_169,
    ) -> None:
        super().__init__()
        self.cw = cw_client
        self.context = context
        self.key_rule = key_rule or VirtualKeyRule()
        self.limits = limits if limits is not None else default_limits()
        self.image_tokens = image_tokens
        self._held: dict[str, list[_Held]] = {}

    # -- costwarden calls, whichever client was given
    async def _cw(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self.cw, name)
        if inspect.iscoroutinefunction(method):
            return await method(*args, **kwargs)
        return await asyncio.to_thread(method, *args, **kwargs)

    @staticmethod
    def model_id(kwargs: Mapping[str, Any]) -> str:
        model = str(kwargs.get("model"))
        provider = given(kwargs, "custom_llm_provider")
        if "/" in model or not provider:
            return model
        return f"{provider}/{model}"

    def _plan(self, kwargs: Mapping[str, Any], kind: str) -> Plan:
        """Size a call from the fields its call type sends (``kind``: the call type
        without its async prefix)."""
        model = self.model_id(kwargs)
        limits = self.limits.get(model)
        bound = _prompt_bound(kwargs)
        sized = {
            "model": model,
            "limits": limits,
            "image_tokens": self.image_tokens,
            "bound": bound,
        }
        if kind in ("responses", "compact_responses"):
            if given(kwargs, "background"):
                raise NotGuarded(
                    f"costwarden: a LiteLLM {kind} call with background=True is not guarded: "
                    "a background response runs and is billed after the call returns, so its "
                    "usage cannot be committed; use a foreground call (stream=True for a long one)"
                )
            return responses_plan(kwargs, **sized)
        if kind == "anthropic_messages":
            return messages_plan(kwargs, **sized)
        if kind == "text_completion":
            return self._text_plan(kwargs, model, limits, bound)
        if kind == "embedding":
            return self._embedding_plan(kwargs, model, limits, bound)
        return chat_plan(kwargs, **sized)

    def _text_plan(
        self, kwargs: Mapping[str, Any], model: str, limits: ModelLimits, bound: Any
    ) -> Plan:
        prompts = _listed(given(kwargs, "prompt"))
        suffix = given(kwargs, "suffix")
        # best_of completions are generated (and billed) server-side, n of them returned
        choices = max(int(given(kwargs, "n") or 1), int(given(kwargs, "best_of") or 1))
        return plan_call(
            model=model,
            limits=limits,
            messages=prompts,
            extra=[suffix] if suffix is not None else [],
            message_count=len(prompts),
            max_output=given(kwargs, "max_tokens"),
            choices=choices,
            image_tokens=self.image_tokens,
            prompt_tokens=bound,
        )

    def _embedding_plan(
        self, kwargs: Mapping[str, Any], model: str, limits: ModelLimits, bound: Any
    ) -> Plan:
        items = _listed(given(kwargs, "input"))
        plan = plan_call(
            model=model,
            limits=limits,
            messages=items,
            message_count=len(items),
            max_output=0,  # an embedding has no output tokens
            image_tokens=self.image_tokens,
            prompt_tokens=bound,
        )
        usage = {unit: n for unit, n in plan.reserve_usage.items() if n}
        return dataclasses.replace(plan, reserve_usage=usage)

    async def _reserve(
        self,
        kwargs: Mapping[str, Any],
        call_type: Any,
        ctx: Callable[[], CallContext],
        *,
        attempt: bool,
    ) -> None:
        """Reserve for one attempt (``attempt``) or for the proxy's request, which its first
        attempt takes over."""
        kind = _call_kind(call_type)
        if kind not in _SIZED:
            if _sends_no_model_request(kind):
                return
            raise NotGuarded(
                f"costwarden: CostwardenHook cannot size a LiteLLM {kind or 'untyped'} call "
                "(it sizes completion, text_completion, responses, embedding and "
                "anthropic_messages calls), so it was stopped before it was sent rather than "
                "sent unreserved; make the call where the hook is not installed, or guard the "
                "provider SDK's client (costwarden.integrations.openai.guard / .anthropic.guard)"
            )
        call_id = str(kwargs.get("litellm_call_id") or "")
        held = self._held.get(call_id, []) if call_id else []
        if attempt:
            waiting = next((h for h in held if not h.attempt), None)
            if waiting is not None:  # the proxy's reservation: this attempt sends it
                waiting.attempt = True
                return
        context = ctx()
        plan = self._plan(kwargs, kind)
        r = await self._cw(
            "reserve",
            context.org_id,
            context.workspace_id,
            plan.model,
            plan.reserve_usage,
            user_id=context.user_id,
            key_id=context.key_id,
            metadata={"adapter": "litellm"},
        )  # a denial raises BudgetExceeded: LiteLLM does not send the request
        if call_id:
            self._held.setdefault(call_id, []).append(_Held(r.reservation_id, plan, attempt))

    # -- before the call
    async def async_pre_call_deployment_hook(
        self, kwargs: dict[str, Any], call_type: Any
    ) -> dict[str, Any] | None:
        """SDK / Router, every attempt: reserve (raises ``BudgetExceeded`` on a denial)."""
        sync = _sync_call_type(call_type)
        if sync is not None:  # LiteLLM runs this hook for some synchronous calls too
            raise SyncCallRefused(sync)
        await self._reserve(kwargs, call_type, lambda: self.context(kwargs), attempt=True)
        return None

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: dict[str, Any]) -> None:
        """Every call, just before its request is sent: a synchronous one is stopped
        (:class:`SyncCallRefused`); an async one was reserved by the hooks above."""
        sync = _sync_call_type(kwargs.get("call_type"))
        if sync is not None:
            raise SyncCallRefused(sync)

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        """Proxy: reserve for the virtual key's tenancy (raises on a denial)."""

        def ctx() -> CallContext:
            try:
                return self.context(data)
            except ValueError:
                return self.key_rule.context(user_api_key_dict)

        await self._reserve(data, call_type, ctx, attempt=False)
        return data

    # -- after the call
    def _take(self, kwargs: Mapping[str, Any], *, latest: bool) -> _Held | None:
        """The reservation an outcome settles: a success is the call's latest attempt (no
        attempt follows one that succeeded); a failure its oldest attempt still held."""
        call_id = str(kwargs.get("litellm_call_id") or "")
        held = self._held.get(call_id)
        if not held:
            return None
        started = [h for h in held if h.attempt] or held
        taken = started[-1] if latest else started[0]
        held.remove(taken)
        if not held:
            del self._held[call_id]
        return taken

    @staticmethod
    def _usage(response_obj: Any, held: _Held) -> tuple[dict[str, int], bool]:
        usage = field(response_obj, "usage")
        if usage is None:
            # no usage: charge the prompt estimate, flagged approximate
            return merge({"input_tokens": held.plan.input_estimate}, held.plan.extra_units), True
        return merge(usage_from_litellm(usage), held.plan.extra_units), False

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        held = self._take(kwargs, latest=True)
        if held is not None:
            usage, approximate = self._usage(response_obj, held)
            await self._cw("commit", held.reservation_id, usage, approximate=approximate)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        held = self._take(kwargs, latest=False)
        if held is not None:
            await self._cw("release", held.reservation_id, "litellm call failed")

    async def async_post_call_failure_hook(
        self, request_data: dict[str, Any], original_exception: Exception, *args: Any, **kw: Any
    ) -> None:
        """Proxy: the request failed for good; every hold it still has is released."""
        while (held := self._take(request_data, latest=False)) is not None:
            await self._cw("release", held.reservation_id, "litellm call failed")
