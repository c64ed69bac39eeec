"""Pricing catalogue files (TOML) and loading them into costwarden.

A catalogue has one ``[[model]]`` table per model (``model``,
``platform_servable``) and one ``[[model.price]]`` per pricing snapshot:
``effective_from`` (RFC 3339) and usage units with decimal-string prices in
USD per unit. Loading is idempotent, by a rule that lives in SQL
(fn_pricing_set): the same snapshot again (model, effective_from and prices
equal as numbers) is already loaded and writes nothing; one with other prices is
CW004, because snapshots are immutable (add a new effective date instead).

A model may give ``max_output_tokens``, the most output tokens one call can
produce: the provider adapters size a reservation with it when a request sets
no ``max_tokens`` (docs/integrations.md).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any

from .client import Client
from .errors import CostwardenError, InvalidArgument


class CatalogueError(CostwardenError):
    """A catalogue file is malformed, or conflicts with the snapshots already loaded."""


@dataclass(frozen=True)
class PriceSnapshot:
    effective_from: datetime
    prices: dict[str, Decimal]


@dataclass(frozen=True)
class CatalogueModel:
    model: str
    platform_servable: bool
    snapshots: tuple[PriceSnapshot, ...]
    max_output_tokens: int | None = None


@dataclass(frozen=True)
class Catalogue:
    name: str
    sample: bool
    models: tuple[CatalogueModel, ...]


@dataclass(frozen=True)
class LoadReport:
    models: int
    snapshots_added: int
    snapshots_present: int


def sample_catalogue_path() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "pricing" / "sample_catalogue.toml"
        if candidate.is_file():
            return candidate
    return Path(str(resources.files("costwarden") / "pricing" / "sample_catalogue.toml"))


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise CatalogueError(f'{where}: prices are decimal strings such as "0.000003"')
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise CatalogueError(f"{where}: {value!r} is not a decimal number") from exc
    if not number.is_finite() or number < 0:
        raise CatalogueError(f"{where}: prices must be finite and non-negative")
    return number


def _instant(value: Any, where: str) -> datetime:
    if isinstance(value, datetime):
        instant = value
    elif isinstance(value, str):
        try:
            instant = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise CatalogueError(f"{where}: {value!r} is not an RFC 3339 instant") from exc
    else:
        raise CatalogueError(f"{where}: effective_from is required")
    if instant.tzinfo is None:
        raise CatalogueError(f"{where}: effective_from needs a time zone (e.g. Z)")
    return instant


def parse_catalogue(text: str, source: str = "<catalogue>") -> Catalogue:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{source}: {exc}") from exc
    head = data.get("catalogue", {})
    models: list[CatalogueModel] = []
    for i, entry in enumerate(data.get("model", [])):
        where = f"{source}: model[{i}]"
        name = entry.get("model")
        if not isinstance(name, str) or "/" not in name:
            raise CatalogueError(f"{where}: model must be 'provider/model'")
        snapshots = []
        for j, price in enumerate(entry.get("price", [])):
            pwhere = f"{where} ({name}) price[{j}]"
            effective = _instant(price.get("effective_from"), pwhere)
            prices = {
                k: _decimal(v, f"{pwhere}.{k}") for k, v in price.items() if k != "effective_from"
            }
            if not prices:
                raise CatalogueError(f"{pwhere}: no prices")
            snapshots.append(PriceSnapshot(effective, prices))
        cap = entry.get("max_output_tokens")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise CatalogueError(f"{where}: max_output_tokens must be a positive integer")
        models.append(
            CatalogueModel(name, bool(entry.get("platform_servable", False)), tuple(snapshots), cap)
        )
    if not models:
        raise CatalogueError(f"{source}: no [[model]] entries")
    return Catalogue(str(head.get("name", source)), bool(head.get("sample", False)), tuple(models))


def read_catalogue(path: Path) -> Catalogue:
    return parse_catalogue(path.read_text(encoding="utf-8"), str(path))


def load_catalogue(client: Client, catalogue: Catalogue) -> LoadReport:
    """Load every model and snapshot; a snapshot already loaded is counted as present."""
    added = present = 0
    for m in catalogue.models:
        client.upsert_model(m.model, m.platform_servable)
        known = {s.pricing_snapshot_id for s in client.pricing_history(m.model)}
        for snap in m.snapshots:
            try:
                snapshot_id = client.set_pricing(m.model, snap.prices, snap.effective_from)
            except InvalidArgument as exc:
                raise CatalogueError(
                    f"{m.model}: {exc.message}; give the new prices a new effective_from"
                ) from exc
            if snapshot_id in known:
                present += 1
            else:
                added += 1
    return LoadReport(len(catalogue.models), added, present)
