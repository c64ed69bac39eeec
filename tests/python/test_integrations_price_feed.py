"""costwarden.integrations.price_feed: LiteLLM's shipped price list as exact snapshots,
dry-run diff first, all or nothing (real PostgreSQL)."""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest

import costwarden
from costwarden.integrations.price_feed import (
    PriceFeedError,
    apply_import,
    catalogue_from_litellm,
    import_prices,
    litellm_price_file,
    plan_import,
)
from costwarden.pricing import CatalogueError

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 2, 1, tzinfo=UTC)

FEED = {
    "sample_spec": {"input_cost_per_token": 0, "litellm_provider": "x", "mode": "chat"},
    "gpt-x": {
        "litellm_provider": "openai",
        "mode": "chat",
        "max_output_tokens": 32768,
        "input_cost_per_token": 1.1e-07,  # not exact as a binary float
        "output_cost_per_token": 4.4e-07,
        "cache_read_input_token_cost": 2.75e-08,
    },
    "claude-x": {
        "litellm_provider": "anthropic",
        "mode": "chat",
        "max_output_tokens": 8192,
        "input_cost_per_token": 3e-06,
        "output_cost_per_token": 1.5e-05,
        "cache_read_input_token_cost": 3e-07,
        "cache_creation_input_token_cost": 3.75e-06,
    },
    "img-x": {
        "litellm_provider": "openai",
        "mode": "image_generation",
        "output_cost_per_image": 0.04,
    },
    "embed-x": {"litellm_provider": "openai", "mode": "embedding", "input_cost_per_token": 1e-08},
}


def text(feed: dict[str, Any]) -> str:
    return json.dumps(feed)


def snapshots(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select count(*) from costwarden._pricing_snapshots").fetchone()
    assert row is not None
    return int(row[0])


def test_prices_are_exact_decimals_from_the_json_text() -> None:
    cat = catalogue_from_litellm(text(FEED), effective_from=T0)
    by = {m.model: m for m in cat.models}
    assert set(by) == {"openai/gpt-x", "anthropic/claude-x", "openai/img-x"}
    gpt = by["openai/gpt-x"]
    assert gpt.max_output_tokens == 32768
    assert gpt.snapshots[0].effective_from == T0
    assert gpt.snapshots[0].prices == {
        "input_tokens": Decimal("0.00000011"),
        "output_tokens": Decimal("0.00000044"),
        "cached_input_tokens": Decimal("0.0000000275"),
        "cache_write_tokens": Decimal("0.00000011"),  # OpenAI: writes at the input price
        "reasoning_tokens": Decimal("0.00000044"),  # billed as output
    }
    float_price = 1.1e-07
    assert Decimal(float_price) != Decimal("0.00000011")  # what a float would have given
    assert by["anthropic/claude-x"].snapshots[0].prices["cache_write_tokens"] == Decimal(
        "0.00000375"
    )
    assert by["openai/img-x"].snapshots[0].prices == {"images": Decimal("0.04")}
    only = catalogue_from_litellm(text(FEED), providers=["anthropic"], effective_from=T0)
    assert [m.model for m in only.models] == ["anthropic/claude-x"]


def test_the_shipped_litellm_price_list_maps() -> None:
    assert litellm_price_file().name == "model_prices_and_context_window_backup.json"
    cat = catalogue_from_litellm(providers=["openai", "anthropic"], effective_from=T0)
    by = {m.model: m for m in cat.models}
    mini = by["openai/gpt-4o-mini"]
    assert mini.max_output_tokens == 16384
    assert mini.snapshots[0].prices["input_tokens"] == Decimal("0.00000015")
    assert all(p >= 0 for m in cat.models for p in m.snapshots[0].prices.values())


@pytest.mark.parametrize(
    ("feed", "match"),
    [
        ("{not json", "not JSON"),
        ("[]", "not a JSON object"),
        (
            text(
                {
                    "m": {
                        "litellm_provider": "p",
                        "mode": "chat",
                        "input_cost_per_token": "x",
                        "output_cost_per_token": 1,
                    }
                }
            ),
            "not a number",
        ),
        (
            text(
                {
                    "m": {
                        "litellm_provider": "p",
                        "mode": "chat",
                        "input_cost_per_token": -1,
                        "output_cost_per_token": 1,
                    }
                }
            ),
            "not a price",
        ),
        (text({"e": {"litellm_provider": "p", "mode": "embedding"}}), "no priced models"),
    ],
)
def test_bad_feeds_are_refused(feed: str, match: str) -> None:
    with pytest.raises(PriceFeedError, match=match):
        catalogue_from_litellm(feed)


def test_dry_run_diff_then_apply_then_nothing_to_do(
    client: costwarden.Client, dsn: str, admin_conn: psycopg.Connection[Any]
) -> None:
    before = snapshots(admin_conn)
    plan = import_prices(dsn, text=text(FEED), effective_from=T0)  # dry run
    assert snapshots(admin_conn) == before and plan.applied is None
    diff = plan.diff()
    assert (
        "+ openai/gpt-x: cache_write_tokens=0.00000011, cached_input_tokens=0.0000000275, "
        "input_tokens=0.00000011, output_tokens=0.00000044, reasoning_tokens=0.00000044" in diff
    )
    assert diff[-1] == "3 new, 0 changed, 0 unchanged"

    done = import_prices(dsn, text=text(FEED), effective_from=T0, apply=True)
    assert done.applied is not None and done.applied.snapshots_added == 3
    assert snapshots(admin_conn) == before + 3
    (entry,) = client.pricing("openai/gpt-x")
    assert Decimal(str(entry.prices["input_tokens"])) == Decimal("0.00000011")

    again = import_prices(dsn, text=text(FEED), effective_from=T1)
    assert again.diff() == ["0 new, 0 changed, 3 unchanged"]

    feed = json.loads(text(FEED))
    feed["gpt-x"]["output_cost_per_token"] = 5e-07
    changed = import_prices(dsn, text=json.dumps(feed), effective_from=T1, apply=True)
    assert changed.diff() == [
        "~ openai/gpt-x: output_tokens 0.00000044 -> 0.0000005, "
        "reasoning_tokens 0.00000044 -> 0.0000005",
        "0 new, 1 changed, 2 unchanged",
    ]
    assert changed.applied is not None and changed.applied.snapshots_added == 1
    assert len(client.pricing_history("openai/gpt-x")) == 2


def test_an_error_while_applying_changes_nothing(
    client: costwarden.Client, dsn: str, admin_conn: psycopg.Connection[Any]
) -> None:
    # z-model already has a snapshot at T0 with other prices: loading it must fail, and
    # the models loaded before it in the same import must be rolled back
    client.upsert_model("openai/z-model")
    client.set_pricing("openai/z-model", {"input_tokens": Decimal("1"), "output_tokens": 1}, T0)
    feed = json.loads(text(FEED))
    feed["z-model"] = {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 2,
        "output_cost_per_token": 2,
    }
    before = snapshots(admin_conn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        plan = plan_import(
            costwarden.Client(conn), catalogue_from_litellm(json.dumps(feed), effective_from=T0)
        )
        assert plan.count("new") == 3 and plan.count("changed") == 1
        with pytest.raises(CatalogueError, match="immutable"):
            apply_import(conn, plan)
    assert snapshots(admin_conn) == before
    assert client.pricing("openai/gpt-x") == []


def test_unknown_source(dsn: str) -> None:
    with pytest.raises(PriceFeedError, match="unknown price feed"):
        import_prices(dsn, source="nope")


def test_an_import_chooses_its_own_outage_policy(dsn: str) -> None:
    """The import opens its own client on its own connection: the warning that asks an
    application to choose an outage policy (on_unavailable) is not the caller's to see."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        import_prices(dsn, text=text(FEED), effective_from=T0)  # dry run: a plan
        done = import_prices(dsn, text=text(FEED), effective_from=T0, apply=True)
    assert done.applied is not None
