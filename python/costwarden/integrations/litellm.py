"""LiteLLM adapter: ``CostwardenHook``, a LiteLLM ``CustomLogger`` (SPEC §14).

One hook instance serves both places LiteLLM runs:

- **SDK / Router** (``litellm.acompletion``, ``Router.acompletion``): the hook's
  ``async_pre_call_deployment_hook`` runs after the deployment is chosen and
  before the request is sent; it reserves, and a denial raises
  ``costwarden.BudgetExceeded`` out of the LiteLLM call.
- **Proxy** (``config.yaml`` ``litellm_settings.callbacks``): ``async_pre_call_hook``
  reserves for the virtual key's org / workspace / user / key
  (:class:`VirtualKeyRule`) and rejects over budget.

Success events commit the response's usage (:func:`usage_from_litellm`);
failure events release. Calls are matched by LiteLLM's ``litellm_call_id``.

Synchronous calls (``litellm.completion``, ``Router.completion``, ...) cannot be
guarded: LiteLLM runs no hook before a synchronous request that can refuse it
(``log_pre_api_call`` logs and drops what it raises). So that they are not sent
unreserved and unrecorded, the hook stops them before the request is sent with
:class:`SyncCallRefused`, which derives from ``BaseException`` to get past those
handlers.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from litellm.integrations.custom_logger import CustomLogger
from litellm.types.utils import CallTypes

from ._common import count, field, given
from ._saga import merge
from ._sizing import Limits, Plan, default_limits, plan_call
from .openai import usage_from_openai

__all__ = [
    "CallContext",
    "CostwardenHook",
    "SyncCallRefused",
    "VirtualKeyRule",
    "usage_from_litellm",
]

_CALL_TYPES = frozenset(c.value for c in CallTypes)
#: LiteLLM's synchronous call types: those with an async twin ("completion" / "acompletion")
_SYNC_CALL_TYPES = frozenset(c for c in _CALL_TYPES if "a" + c in _CALL_TYPES)


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


@dataclass
class _Held:
    reservation_id: Any
    plan: Plan


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
        self._held: dict[str, _Held] = {}

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

    def _plan(self, kwargs: Mapping[str, Any]) -> Plan:
        model = self.model_id(kwargs)
        messages = list(given(kwargs, "messages") or ())
        return plan_call(
            model=model,
            limits=self.limits.get(model),
            messages=messages,
            tools=given(kwargs, "tools"),
            extra=[x for x in (given(kwargs, "response_format"),) if x is not None],
            message_count=len(messages),
            max_output=given(kwargs, "max_completion_tokens") or given(kwargs, "max_tokens"),
            choices=given(kwargs, "n") or 1,
            image_tokens=self.image_tokens,
        )

    async def _reserve(self, kwargs: Mapping[str, Any], ctx: CallContext) -> None:
        call_id = str(kwargs.get("litellm_call_id") or "")
        if call_id and call_id in self._held:
            return  # a retry of a call that holds a reservation already
        plan = self._plan(kwargs)
        r = await self._cw(
            "reserve",
            ctx.org_id,
            ctx.workspace_id,
            plan.model,
            plan.reserve_usage,
            user_id=ctx.user_id,
            key_id=ctx.key_id,
            metadata={"adapter": "litellm"},
        )  # a denial raises BudgetExceeded: LiteLLM does not send the request
        if call_id:
            self._held[call_id] = _Held(r.reservation_id, plan)

    # -- before the call
    async def async_pre_call_deployment_hook(
        self, kwargs: dict[str, Any], call_type: Any
    ) -> dict[str, Any] | None:
        """SDK / Router: reserve (raises ``BudgetExceeded`` on a denial)."""
        sync = _sync_call_type(call_type)
        if sync is not None:  # LiteLLM runs this hook for some synchronous calls too
            raise SyncCallRefused(sync)
        await self._reserve(kwargs, self.context(kwargs))
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
        try:
            ctx = self.context(data)
        except ValueError:
            ctx = self.key_rule.context(user_api_key_dict)
        await self._reserve(data, ctx)
        return data

    # -- after the call
    def _take(self, kwargs: Mapping[str, Any]) -> _Held | None:
        return self._held.pop(str(kwargs.get("litellm_call_id") or ""), None)

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
        held = self._take(kwargs)
        if held is not None:
            usage, approximate = self._usage(response_obj, held)
            await self._cw("commit", held.reservation_id, usage, approximate=approximate)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        held = self._take(kwargs)
        if held is not None:
            await self._cw("release", held.reservation_id, "litellm call failed")

    async def async_post_call_failure_hook(
        self, request_data: dict[str, Any], original_exception: Exception, *args: Any, **kw: Any
    ) -> None:
        """Proxy: a request that failed after the pre-call hook releases its hold."""
        held = self._take(request_data)
        if held is not None:
            await self._cw("release", held.reservation_id, "litellm call failed")
