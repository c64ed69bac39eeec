"""The guarded SDK resources shared by the OpenAI and Anthropic adapters.

A guarded resource (``chat.completions``, ``responses``, ``messages``, ...) wraps the
SDK's own: every method that sends a model request is reserved, metered and committed
(:mod:`._saga`), the methods that send none are the SDK's own (``PASSTHROUGH``), the
methods that cannot be committed raise :class:`~._saga.NotGuarded` before anything is
sent, and any other name raises ``AttributeError`` rather than passing through
unreserved (a newer SDK's method the guard does not know). ``with_raw_response`` and
``with_streaming_response`` are guarded views of the same resource, and
:class:`Namespace` puts guarded resources in place of the SDK's in a client or a
namespace (``chat``, ``beta``) and under its raw / streaming views.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from ._common import given, is_async
from ._saga import (
    GuardConfig,
    NotGuarded,
    Observer,
    Passthrough,
    Usage,
    UsageOf,
    call_async,
    call_sync,
)
from ._sizing import PROMPT_TOKENS, Plan

#: makes the guarded twin of a sub-resource (``messages.batches``) from the SDK's
#: own, plain or one of its raw / streaming views
ChildFactory = Callable[[Any], Any]


def unknown(resource: str, name: str) -> AttributeError:
    return AttributeError(
        f"costwarden: {resource}.{name} is not known to the guard, so it is not sent "
        "unreserved; call it on the unguarded client if it sends no model request"
    )


class GuardedResource(Passthrough):
    """An SDK resource whose methods that send a model request are reserved and
    committed; the known others pass through, anything else is refused."""

    #: the methods that send no model request (stored objects, token counts)
    PASSTHROUGH: ClassVar[frozenset[str]] = frozenset()
    #: sub-resources guarded in turn (also under the raw / streaming views)
    CHILDREN: ClassVar[Mapping[str, ChildFactory]] = {}
    observe: Observer
    usage_of: UsageOf

    def __init__(self, inner: Any, cfg: GuardConfig, name: str, provider: str) -> None:
        super().__init__(inner)
        self._cfg = cfg
        self._name = name
        self._endpoint = f"{provider}.{name}"

    def __getattr__(self, name: str) -> Any:
        if name in self.CHILDREN:
            return self.CHILDREN[name](getattr(self._inner, name))
        if name.startswith("_") or name in self.PASSTHROUGH:
            return getattr(self._inner, name)
        raise unknown(self._name, name)

    def _plan(self, kwargs: Mapping[str, Any], bound: Any) -> Plan:
        raise NotImplementedError

    def _check(self, method: str, kwargs: Mapping[str, Any]) -> None:
        """Raise :class:`NotGuarded` for a call that cannot be committed (before sending)."""

    def _prepare(self, method: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], Plan]:
        """The SDK's keywords (``costwarden_prompt_tokens`` taken out) and the call's plan."""
        kwargs = dict(kwargs)
        bound = kwargs.pop(PROMPT_TOKENS, None)
        self._check(method, kwargs)
        return kwargs, self._plan(kwargs, bound)

    def _run(
        self,
        method: Callable[..., Any],
        kwargs: dict[str, Any],
        plan: Plan,
        *,
        stream: bool = False,
        usage_of: UsageOf | None = None,
        endpoint: str | None = None,
    ) -> Any:
        run = call_async if is_async(method) else call_sync
        return run(
            self._cfg,
            plan,
            endpoint or self._endpoint,
            lambda: method(**kwargs),
            stream=stream,
            usage_of=usage_of or self.usage_of,
            observe=self.observe,
        )

    def _stream_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The keywords a streamed ``create`` is sent with."""
        return kwargs

    def create(self, **kwargs: Any) -> Any:
        kwargs, plan = self._prepare("create", kwargs)
        stream = bool(given(kwargs, "stream"))
        if stream:
            kwargs = self._stream_kwargs(kwargs)
        return self._run(self._inner.create, kwargs, plan, stream=stream)

    def _body_usage_of(self, raw: Any) -> Usage | None:
        """The usage of a ``with_raw_response`` result: the ``usage`` of its JSON body, the
        same document the SDK parses (read without running the SDK's parser)."""
        try:
            body = raw.http_response.json()
        except ValueError:
            return None
        return self.usage_of(body)

    def _raw_sender(self, method: str) -> Callable[..., Any]:
        return getattr(self._inner.with_raw_response, method)  # type: ignore[no-any-return]

    def _raw(self, method: str, kwargs: dict[str, Any]) -> Any:
        """``with_raw_response.<method>``: the usage comes from the raw JSON body."""
        if given(kwargs, "stream"):
            raise NotGuarded(
                f"costwarden: {self._name}.with_raw_response.{method}(stream=True) is not "
                f"guarded: use {self._name}.create(stream=True), whose stream's .response "
                "is the raw HTTP response (status, headers)"
            )
        kwargs, plan = self._prepare(method, kwargs)
        endpoint = self._endpoint + (".compact" if method == "compact" else "")
        send = self._raw_sender(method)
        return self._run(send, kwargs, plan, usage_of=self._body_usage_of, endpoint=endpoint)

    def parse(self, **kwargs: Any) -> Any:
        """``parse``: sent as ``with_raw_response.parse`` and committed from the body, then
        parsed, so that a parsing error (a truncated or schema-mismatched reply) comes
        after the commit of a call the provider billed."""
        if given(kwargs, "stream"):
            raise NotGuarded(
                f"costwarden: {self._name}.parse(stream=True) is not guarded: use "
                f"{self._name}.stream(...), which parses as it streams"
            )
        raw = self._raw("parse", kwargs)
        if inspect.isawaitable(raw):
            return parse_async(raw)
        return raw.parse()

    @property
    def with_raw_response(self) -> RawView:
        return RawView(self)

    @property
    def with_streaming_response(self) -> StreamingResponseView:
        return StreamingResponseView(self)


async def parse_async(raw: Any) -> Any:
    parsed = (await raw).parse()
    return (await parsed) if inspect.isawaitable(parsed) else parsed


class RawView(Passthrough):
    """``<resource>.with_raw_response``: its model-calling methods are reserved and
    committed (from the usage in the response body); ``parse()`` of the raw response
    gives what the plain method returns."""

    VIEW = "with_raw_response"

    def __init__(self, owner: GuardedResource) -> None:
        super().__init__(getattr(owner._inner, self.VIEW))
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        owner = self._owner
        if name in owner.CHILDREN:
            return owner.CHILDREN[name](getattr(self._inner, name))
        if name.startswith("_") or name in owner.PASSTHROUGH:
            return getattr(self._inner, name)
        raise unknown(f"{owner._name}.{self.VIEW}", name)

    def create(self, **kwargs: Any) -> Any:
        return self._owner._raw("create", kwargs)

    def parse(self, **kwargs: Any) -> Any:
        return self._owner._raw("parse", kwargs)

    def compact(self, **kwargs: Any) -> Any:
        return self._owner._raw("compact", kwargs)


class StreamingResponseView(RawView):
    """``<resource>.with_streaming_response``: it leaves the body unread, so there is no
    usage to commit; its model-calling methods are refused."""

    VIEW = "with_streaming_response"

    def _refuse(self, method: str) -> NotGuarded:
        name = self._owner._name
        return NotGuarded(
            f"costwarden: {name}.with_streaming_response.{method} is not guarded: it leaves "
            f"the response body, and so the usage, unread; use {name}.with_raw_response."
            f"{method} (the raw HTTP response, body read) or {name}.create(stream=True)"
        )

    def create(self, **kwargs: Any) -> Any:
        raise self._refuse("create")

    def parse(self, **kwargs: Any) -> Any:
        raise self._refuse("parse")

    def compact(self, **kwargs: Any) -> Any:
        raise self._refuse("compact")


class View(Passthrough):
    """An SDK namespace with some members replaced by guarded ones."""

    def __init__(self, inner: Any, members: Mapping[str, Any]) -> None:
        super().__init__(inner)
        vars(self).update(members)


class Namespace(Passthrough):
    """An SDK namespace (a client, ``chat``, ``beta``) whose model-calling resources are
    guarded, under ``with_raw_response`` / ``with_streaming_response`` too."""

    def __init__(self, inner: Any, children: Mapping[str, Any]) -> None:
        super().__init__(inner)
        self._children = dict(children)
        vars(self).update(self._children)

    @property
    def with_raw_response(self) -> View:
        kids = {n: c.with_raw_response for n, c in self._children.items()}
        return View(self._inner.with_raw_response, kids)

    @property
    def with_streaming_response(self) -> View:
        kids = {n: c.with_streaming_response for n, c in self._children.items()}
        return View(self._inner.with_streaming_response, kids)
