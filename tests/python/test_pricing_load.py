"""The pricing loader's rule, which lives in SQL: fn_pricing_set is idempotent for the
same snapshot (prices equal as numbers) and CW004 for other prices at the same instant;
load_catalogue only counts."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest

import costwarden
from costwarden.errors import CostwardenError, InvalidArgument
from costwarden.pricing import CatalogueError, load_catalogue, parse_catalogue

Conn = psycopg.Connection[Any]
WHEN = datetime(2024, 10, 1, tzinfo=UTC)


def _audit_rows(conn: Conn) -> int:
    row = conn.execute(
        "select count(*) from costwarden._audit_log where action = 'pricing_set'"
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_the_same_snapshot_again_is_already_loaded(
    client: costwarden.Client, admin_conn: Conn
) -> None:
    client.upsert_model("openai/gpt-4o")
    first = client.set_pricing("openai/gpt-4o", {"input_tokens": Decimal("0.0000025")}, WHEN)
    audited = _audit_rows(admin_conn)
    # equal as numbers, written differently: the same snapshot, nothing written
    again = client.set_pricing("openai/gpt-4o", {"input_tokens": Decimal("0.00000250")}, WHEN)
    assert again == first
    assert _audit_rows(admin_conn) == audited
    row = admin_conn.execute("select count(*) from costwarden._pricing_snapshots").fetchone()
    assert row == (1,)


def test_other_prices_at_the_same_instant_are_cw004(
    client: costwarden.Client, admin_conn: Conn
) -> None:
    client.upsert_model("openai/gpt-4o")
    client.set_pricing("openai/gpt-4o", {"input_tokens": Decimal("0.0000025")}, WHEN)
    for other in ({"input_tokens": Decimal("0.000003")}, {"output_tokens": Decimal("0.0000025")}):
        with pytest.raises(InvalidArgument, match="p_effective_from") as info:
            client.set_pricing("openai/gpt-4o", other, WHEN)
        assert info.value.sqlstate == "CW004"
    row = admin_conn.execute("select count(*) from costwarden._pricing_snapshots").fetchone()
    assert row == (1,)


CATALOGUE = """
[[model]]
model = "openai/gpt-4o"
platform_servable = true
[[model.price]]
effective_from = "2024-10-01T00:00:00Z"
input_tokens = "{price}"
"""


def test_load_catalogue_counts_and_refuses_a_conflict(client: costwarden.Client) -> None:
    first = load_catalogue(client, parse_catalogue(CATALOGUE.format(price="0.0000025")))
    assert (first.snapshots_added, first.snapshots_present) == (1, 0)
    again = load_catalogue(client, parse_catalogue(CATALOGUE.format(price="0.00000250")))
    assert (again.snapshots_added, again.snapshots_present) == (0, 1)
    with pytest.raises(CatalogueError, match="openai/gpt-4o: p_effective_from") as info:
        load_catalogue(client, parse_catalogue(CATALOGUE.format(price="0.000003")))
    assert isinstance(info.value, CostwardenError)
