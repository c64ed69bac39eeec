"""The costwarden side of the adapter tests: a catalogue, a tenant, ledger readers.

The fake provider server itself is costwarden.integrations.testing (the demo and
the bench use it too).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AUDIO_CATALOGUE",
    "ORG",
    "WS",
    "ledger",
    "limits",
    "reservation_states",
    "setup_costwarden",
]


# -- costwarden side of the adapter tests ---------------------------------------------------

ORG, WS = "acme", "ws-ai"

#: A test-only catalogue entry: an audio chat model pricing every audio unit.
AUDIO_CATALOGUE = """
[[model]]
model = "openai/gpt-4o-audio-preview"
max_output_tokens = 16384
[[model.price]]
effective_from = "2024-12-17T00:00:00Z"
input_tokens = "0.0000025"
cached_input_tokens = "0.00000125"
cache_write_tokens = "0.0000025"
output_tokens = "0.00001"
audio_input_tokens = "0.00004"
audio_output_tokens = "0.00008"
"""


def setup_costwarden(client: Any, budget_micros: int | None = 10_000_000) -> None:
    """The sample catalogue (+ the audio model), one org and workspace, a daily budget."""
    from costwarden.pricing import (
        load_catalogue,
        parse_catalogue,
        read_catalogue,
        sample_catalogue_path,
    )

    load_catalogue(client, read_catalogue(sample_catalogue_path()))
    load_catalogue(client, parse_catalogue(AUDIO_CATALOGUE, "audio"))
    client.upsert_org(ORG)
    client.upsert_workspace(ORG, WS)
    if budget_micros is not None:
        client.set_budget(ORG, "workspace", WS, "day", budget_micros)


def limits() -> Any:
    """The adapters' limits for the catalogue of :func:`setup_costwarden`."""
    from costwarden.integrations import Limits
    from costwarden.pricing import parse_catalogue, read_catalogue, sample_catalogue_path

    sample = read_catalogue(sample_catalogue_path())
    audio = parse_catalogue(AUDIO_CATALOGUE, "audio")
    return Limits({**Limits.from_catalogue(sample).models, **Limits.from_catalogue(audio).models})


def ledger(conn: Any) -> list[dict[str, Any]]:
    """Every charge entry, oldest first: reservation, model, usage, amount, approximate."""
    rows = conn.execute(
        "select reservation_id, model, usage, amount_micros, approximate from costwarden._ledger"
        " where entry_type = 'charge' order by seq"
    ).fetchall()
    keys = ("reservation_id", "model", "usage", "amount_micros", "approximate")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def reservation_states(client: Any) -> list[tuple[str, int, int]]:
    """(status, amount_micros, charged_micros) of every reservation, oldest first."""
    rows = sorted(client.reservations(ORG, limit=1000), key=lambda r: r.created_at)
    return [(r.status, r.amount_micros, r.charged_micros) for r in rows]
