"""A maintained price feed: LiteLLM's price list as costwarden pricing snapshots.

LiteLLM ships ``model_prices_and_context_window_backup.json`` inside its
package (:func:`litellm_price_file`; the ``litellm`` extra installs it, and it
is read as a file: LiteLLM itself is not imported). :func:`catalogue_from_litellm`
maps it to a :class:`costwarden.pricing.Catalogue`; every price is parsed
from the JSON text as a ``Decimal`` (never through a binary float), so
``1.5e-07`` is exactly ``0.00000015``. :func:`plan_import` diffs it against
the prices in force in the database (a dry run: nothing is written) and
:func:`apply_import` loads the new and changed snapshots in one transaction:
on any error nothing is changed. :func:`import_prices` is the whole flow, for
the ``costwarden pricing import --from litellm`` command.

Mapping (LiteLLM key -> costwarden unit): ``input_cost_per_token`` ->
``input_tokens``; ``cache_read_input_token_cost`` -> ``cached_input_tokens``;
``cache_creation_input_token_cost`` -> ``cache_write_tokens``;
``output_cost_per_token`` -> ``output_tokens``; ``output_cost_per_reasoning_token``
-> ``reasoning_tokens``; ``input_cost_per_audio_token`` -> ``audio_input_tokens``;
``output_cost_per_audio_token`` -> ``audio_output_tokens``; ``output_cost_per_image``
-> ``images``. A token model that lists no price for cached, cache-write or
reasoning tokens gets the input (cached, cache-write) or output (reasoning)
price for them, which is how those providers bill them, so that every unit
the adapters report is priced. The model id is ``litellm_provider/name``.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from ..client import Client
from ..errors import CostwardenError
from ..pricing import Catalogue, CatalogueModel, LoadReport, PriceSnapshot, load_catalogue

__all__ = [
    "PriceChange",
    "PriceFeedError",
    "PriceImport",
    "apply_import",
    "catalogue_from_litellm",
    "import_prices",
    "litellm_price_file",
    "plan_import",
]

TOKEN_MODES = frozenset({"chat", "completion", "responses"})
IMAGE_MODES = frozenset({"image_generation"})

UNIT_KEYS = {
    "input_cost_per_token": "input_tokens",
    "cache_read_input_token_cost": "cached_input_tokens",
    "cache_creation_input_token_cost": "cache_write_tokens",
    "output_cost_per_token": "output_tokens",
    "output_cost_per_reasoning_token": "reasoning_tokens",
    "input_cost_per_audio_token": "audio_input_tokens",
    "output_cost_per_audio_token": "audio_output_tokens",
    "output_cost_per_image": "images",
}
MAX_PRICE = Decimal(1_000_000)  # fn_pricing_set refuses more USD per unit


class PriceFeedError(CostwardenError, ValueError):
    """The price list cannot be read or mapped; nothing was changed."""


def litellm_price_file() -> Path:
    """The price list shipped inside the installed ``litellm`` package."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        raise PriceFeedError("litellm is not installed: pip install 'costwarden[litellm]'")
    path = Path(spec.origin).parent / "model_prices_and_context_window_backup.json"
    if not path.is_file():
        raise PriceFeedError(f"{path}: litellm's price list is not where it is expected")
    return path


def _price(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal):
        raise PriceFeedError(f"{where}: {value!r} is not a number")
    if not value.is_finite() or value < 0 or value > MAX_PRICE:
        raise PriceFeedError(f"{where}: {value} is not a price in USD per unit")
    return value.normalize() if value else Decimal(0)


def catalogue_from_litellm(
    text: str | None = None,
    *,
    providers: Iterable[str] | None = None,
    effective_from: datetime | None = None,
) -> Catalogue:
    """Map LiteLLM's price list (``text``; default: the shipped file) to a catalogue.

    ``providers``: keep only these ``litellm_provider`` values (e.g. ``openai``,
    ``anthropic``). Each model gets one snapshot effective from ``effective_from``
    (default: now) and the list's ``max_output_tokens``.
    """
    raw = text if text is not None else litellm_price_file().read_text(encoding="utf-8")
    try:
        data = json.loads(raw, parse_float=Decimal, parse_int=Decimal)
    except json.JSONDecodeError as exc:
        raise PriceFeedError(f"the price list is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PriceFeedError("the price list is not a JSON object of models")
    wanted = set(providers) if providers is not None else None
    when = effective_from or datetime.now(UTC).replace(microsecond=0)
    models: dict[str, CatalogueModel] = {}
    for name, entry in sorted(data.items()):
        if name == "sample_spec" or not isinstance(entry, dict):
            continue
        provider, mode = entry.get("litellm_provider"), entry.get("mode")
        if not isinstance(provider, str) or (wanted is not None and provider not in wanted):
            continue
        if mode not in TOKEN_MODES | IMAGE_MODES:
            continue
        where = f"{name}"
        prices = {
            unit: _price(entry[key], f"{where}.{key}")
            for key, unit in UNIT_KEYS.items()
            if key in entry and entry[key] is not None
        }
        if mode in TOKEN_MODES:
            if "input_tokens" not in prices or "output_tokens" not in prices:
                continue
            prices.setdefault("cached_input_tokens", prices["input_tokens"])
            prices.setdefault("cache_write_tokens", prices["input_tokens"])
            prices.setdefault("reasoning_tokens", prices["output_tokens"])
        elif "images" not in prices:
            continue
        model_id = name if name.startswith(provider + "/") else f"{provider}/{name}"
        cap = entry.get("max_output_tokens")
        max_out = int(cap) if isinstance(cap, Decimal) and cap == int(cap) and cap > 0 else None
        if model_id in models:  # two names for one id: keep the first, as sorted
            continue
        models[model_id] = CatalogueModel(
            model_id,
            False,
            (PriceSnapshot(when, prices),),
            max_out if mode in TOKEN_MODES else None,
        )
    if not models:
        raise PriceFeedError("no priced models in the price list (check --provider)")
    return Catalogue("litellm", False, tuple(models.values()))


@dataclass(frozen=True)
class PriceChange:
    model: str
    kind: str  # 'new' | 'changed' | 'unchanged'
    old: Mapping[str, Decimal] | None
    new: Mapping[str, Decimal]

    def describe(self) -> str:
        if self.kind == "new":
            return f"+ {self.model}: " + _fmt(self.new)
        if self.kind == "unchanged":
            return f"= {self.model}"
        old = self.old or {}
        diff = [
            f"{u} {_num(old.get(u))} -> {_num(self.new.get(u))}"
            for u in sorted(set(old) | set(self.new))
            if old.get(u) != self.new.get(u)
        ]
        return f"~ {self.model}: " + ", ".join(diff)


def _num(price: Decimal | None) -> str:
    return "-" if price is None else format(price, "f")


def _fmt(prices: Mapping[str, Decimal]) -> str:
    return ", ".join(f"{u}={format(p, 'f')}" for u, p in sorted(prices.items()))


@dataclass(frozen=True)
class PriceImport:
    """A dry-run diff of a price feed against the database."""

    catalogue: Catalogue
    changes: tuple[PriceChange, ...]
    applied: LoadReport | None = None

    def count(self, kind: str) -> int:
        return sum(1 for c in self.changes if c.kind == kind)

    def diff(self) -> list[str]:
        """One line per new (+) or changed (~) model, then a summary line."""
        lines = [c.describe() for c in self.changes if c.kind != "unchanged"]
        lines.append(
            f"{self.count('new')} new, {self.count('changed')} changed, "
            f"{self.count('unchanged')} unchanged"
        )
        return lines


def plan_import(client: Client, catalogue: Catalogue) -> PriceImport:
    """Diff ``catalogue`` against the prices in force now. Reads only."""
    current = {
        e.model: {k: Decimal(str(v)) for k, v in e.prices.items()}
        for e in client.pricing()
        if e.prices is not None
    }
    changes = []
    for m in catalogue.models:
        new = m.snapshots[-1].prices
        old = current.get(m.model)
        kind = "new" if old is None else ("unchanged" if old == new else "changed")
        changes.append(PriceChange(m.model, kind, old, new))
    return PriceImport(catalogue, tuple(changes))


def apply_import(conn: psycopg.Connection[Any], plan: PriceImport) -> PriceImport:
    """Load the new and changed snapshots of ``plan`` in one transaction on ``conn``:
    an error rolls everything back."""
    keep = {c.model for c in plan.changes if c.kind != "unchanged"}
    subset = Catalogue(
        plan.catalogue.name,
        plan.catalogue.sample,
        tuple(m for m in plan.catalogue.models if m.model in keep),
    )
    if not subset.models:
        return PriceImport(plan.catalogue, plan.changes, LoadReport(0, 0, 0))
    with conn.transaction():
        report = load_catalogue(Client(conn, on_unavailable="closed"), subset)
    return PriceImport(plan.catalogue, plan.changes, report)


def import_prices(
    dsn: str,
    *,
    source: str = "litellm",
    apply: bool = False,
    providers: Iterable[str] | None = None,
    effective_from: datetime | None = None,
    text: str | None = None,
    preview: Callable[[PriceImport], None] | None = None,
) -> PriceImport:
    """``costwarden pricing import --from litellm [--provider P ...] [--apply]``.

    Always diffs first (the returned :class:`PriceImport`'s ``diff()``; ``preview``,
    when given, is called with the diff before anything is written); writes only
    with ``apply=True``, exactly the diff shown, all or nothing. ``text``: a price
    list in LiteLLM's JSON format (default: the one shipped in the package)."""
    if source != "litellm":
        raise PriceFeedError(f"unknown price feed {source!r} (known: litellm)")
    catalogue = catalogue_from_litellm(text, providers=providers, effective_from=effective_from)
    with psycopg.connect(dsn, autocommit=True) as conn:
        plan = plan_import(Client(conn, on_unavailable="closed"), catalogue)
        if preview is not None:
            preview(plan)
        return apply_import(conn, plan) if apply else plan
