"""Helpers shared by the provider adapters: reading SDK objects and dicts alike."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from typing import Any

#: The SDKs' "not given" sentinels have these class names; treat them as absent.
_NOT_GIVEN = frozenset({"NotGiven", "Omit"})


def field(obj: Any, name: str) -> Any:
    """``obj.name`` or ``obj[name]``; None when absent (SDK objects and dicts alike)."""
    if obj is None:
        return None
    value = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
    if type(value).__name__ in _NOT_GIVEN:
        return None
    return value


def count(obj: Any, *path: str) -> int:
    """An integer count at ``path`` (0 when any step is absent)."""
    for name in path:
        obj = field(obj, name)
    return int(obj) if isinstance(obj, int | float) and not isinstance(obj, bool) else 0


def given(kwargs: Mapping[str, Any], name: str) -> Any:
    value = kwargs.get(name)
    return None if type(value).__name__ in _NOT_GIVEN else value


def mappings(value: Any) -> Iterator[Mapping[str, Any]]:
    """Every mapping in ``value``, itself included, however deeply nested in mappings
    and lists (an SDK object counts as its ``model_dump()``)."""
    if hasattr(value, "model_dump") and not isinstance(value, type):
        value = value.model_dump()
    if isinstance(value, Mapping):
        yield value
        for item in value.values():
            yield from mappings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from mappings(item)


def is_async(method: Any) -> bool:
    """Whether an SDK method is a coroutine function (under its decorators)."""
    return inspect.iscoroutinefunction(inspect.unwrap(method))


def provider_model(provider: str, model: str) -> str:
    """costwarden's model id: ``provider/model`` (a model already so prefixed is kept)."""
    return model if model.startswith(provider + "/") else f"{provider}/{model}"
