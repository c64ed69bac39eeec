"""`costwarden demo` / `make demo`: the story of costwarden on a live database."""

from __future__ import annotations

from collections.abc import Callable

from .client import Client
from .pricing import load_catalogue, read_catalogue, sample_catalogue_path

Echo = Callable[[str], None]

ORGS = {
    "acme": {"timezone": "Europe/Berlin"},
    "globex": {"timezone": "America/New_York", "credit_rate_usd": 0.001},
}
WORKSPACES = [
    ("acme", "support-bot", "openai/gpt-4o-mini", None),
    ("acme", "research", "anthropic/claude-3-5-sonnet", None),
    ("acme", "legacy", None, "disabled"),
    ("globex", "voice", "openai/gpt-4o-realtime-preview", None),
    ("globex", "designer", "openai/dall-e-3", None),
]
QUOTES = [
    ("acme", "support-bot", "openai/gpt-4o-mini", {"input_tokens": 1200, "output_tokens": 400}),
    ("acme", "support-bot", "openai/gpt-4o", {"input_tokens": 1200, "cached_input_tokens": 800, "output_tokens": 400}),
    ("acme", "research", "anthropic/claude-3-5-sonnet", {"input_tokens": 20000, "output_tokens": 4000}),
    ("acme", "research", "openai/o1", {"input_tokens": 5000, "output_tokens": 1000, "reasoning_tokens": 8000}),
    ("acme", "legacy", "openai/gpt-4o-mini", {"input_tokens": 1, "output_tokens": 1}),
    ("globex", "voice", "openai/gpt-4o-realtime-preview", {"audio_seconds": 90.5, "output_tokens": 300}),
    ("globex", "designer", "openai/dall-e-3", {"images": 4}),
    ("globex", "designer", "openai/tts-1", {"characters": 12000}),
]


def setup_tenants(client: Client) -> None:
    load_catalogue(client, read_catalogue(sample_catalogue_path()))
    for org, settings in ORGS.items():
        client.upsert_org(org, settings)
    for org, ws, model, override in WORKSPACES:
        client.upsert_workspace(org, ws, model, override or "none")


def quote_table(client: Client, echo: Echo) -> None:
    from .cli import table

    rows = []
    for org, ws, model, usage in QUOTES:
        q = client.quote(org, ws, model, usage)
        units = ", ".join(f"{k}={v}" for k, v in usage.items())
        rows.append((org, ws, model, units, q.amount_micros, f"${q.amount_micros / 1e6:.6f}",
                     q.credits, q.billing_mode, q.pricing_snapshot_id))
    echo(table(rows, ["org", "workspace", "model", "usage", "micros", "usd", "credits",
                      "billing", "snapshot"]))


def run_demo(dsn: str, echo: Echo = print) -> None:
    with Client(dsn) as client:
        echo("== costwarden demo ==")
        echo("Loading the SAMPLE pricing catalogue (illustrative prices) and two orgs ...")
        setup_tenants(client)
        echo("")
        echo("Quotes: exact micro-USD, rounded up once, with the billing mode each workspace")
        echo("resolves to (one source of truth: override > model > deployment default).")
        quote_table(client, echo)
