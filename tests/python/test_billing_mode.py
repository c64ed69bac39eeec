"""The workspace billing mode (SPEC §5): one source of truth, four rules in order.

fn_workspace_billing_mode says which rule decided; quote, reserve, the ledger and the
BYOK key-write guard all ask the same function (costwarden._billing_mode).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import costwarden
from cwtest import Seeded

KEK = "billing-mode-test-kek-0123456789abcdef"
USAGE = {"input_tokens": 100, "output_tokens": 10}
OVERRIDES = (None, "platform_managed", "byok", "disabled")
MODELS = ("none", "servable", "vendor")


def expected(override: str | None, model: str, proxy: bool) -> tuple[str, str]:
    """SPEC §5, written out independently of the SQL: (billing_mode, source)."""
    if override is not None:  # 1. an explicit override wins
        return override, "override"
    if model == "servable":  # 2. platform-servable: platform_managed where the proxy exists
        return ("platform_managed" if proxy else "byok"), "model"
    if model == "vendor":  # 3. a vendor model: byok (choosing it is the signal)
        return "byok", "model"
    return ("platform_managed" if proxy else "byok"), "deploy_default"  # 4.


CELLS = list(itertools.product(OVERRIDES, MODELS))


@pytest.mark.parametrize("proxy", [True, False], ids=["proxy", "self-hosted"])
def test_precedence_matrix(client: costwarden.Client, seeded: Seeded, proxy: bool) -> None:
    """Every (override, model) cell, with and without the platform proxy: the mode and
    the rule that decided it; quote and reserve report the same mode."""
    client.set_setting("platform_proxy_configured", proxy)
    models = {"none": None, "servable": seeded.platform_model, "vendor": seeded.vendor_model}
    mismatches: list[str] = []
    for i, (override, model) in enumerate(CELLS):
        ws = f"matrix-{i}"
        client.upsert_workspace(seeded.org, ws, models[model], override or "none")
        want_mode, want_source = expected(override, model, proxy)
        got = client.billing_mode(seeded.org, ws)
        if (got.billing_mode, got.source) != (want_mode, want_source):
            mismatches.append(f"{override}/{model}: {got} != {(want_mode, want_source)}")
        # quote and reserve ask the same function (p_model is independent of the
        # workspace's model: use a priced one)
        quote = client.quote(seeded.org, ws, seeded.vendor_model, USAGE)
        r = client.reserve(seeded.org, ws, seeded.vendor_model, USAGE, raise_on_denied=False)
        if quote.billing_mode != want_mode or r.billing_mode != want_mode:
            mismatches.append(
                f"{override}/{model}: quote {quote.billing_mode}, reserve {r.billing_mode}"
            )
        codes = {reason.code for reason in r.reasons}
        if want_mode == "disabled":
            assert r.status == "denied" and "billing_disabled" in codes, (override, model)
        elif want_mode == "byok":  # no key stored: fail closed
            assert r.status == "denied" and "byok_credential_missing" in codes, (override, model)
        else:
            assert r.status == "held", (override, model, r.reasons)
            client.release(r.reservation_id)
    assert not mismatches, "\n".join(mismatches)


@pytest.fixture
def kek_client(dsn: str) -> Iterator[costwarden.Client]:
    with costwarden.Client(dsn, kek=KEK) as c:
        yield c


def test_byok_mode_with_a_key_is_held(
    client: costwarden.Client, kek_client: costwarden.Client, seeded: Seeded
) -> None:
    kek_client.put_key(seeded.org, seeded.ws_vendor, "anthropic", "sk-ant-test-0123456789abcdef")
    r = client.reserve(seeded.org, seeded.ws_vendor, seeded.vendor_model, USAGE)
    assert (r.status, r.billing_mode, r.reasons) == ("held", "byok", ())


def test_ledger_records_the_reservations_billing_mode(
    client: costwarden.Client,
    kek_client: costwarden.Client,
    seeded: Seeded,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """A charge carries the mode resolved at reserve (from the one function), even when
    the workspace's mode changes before the commit."""
    kek_client.put_key(seeded.org, seeded.ws_vendor, "anthropic", "sk-ant-test-0123456789abcdef")
    platform = client.reserve(seeded.org, seeded.ws_platform, seeded.platform_model, USAGE)
    byok = client.reserve(seeded.org, seeded.ws_vendor, seeded.vendor_model, USAGE)
    client.upsert_workspace(seeded.org, seeded.ws_vendor, billing_override="platform_managed")
    for r in (platform, byok):
        client.commit(r.reservation_id, USAGE)
    rows = dict(
        admin_conn.execute(
            "select reservation_id, billing_mode from costwarden._ledger "
            "where reservation_id = any(%s)",
            ([platform.reservation_id, byok.reservation_id],),
        ).fetchall()
    )
    assert rows == {platform.reservation_id: "platform_managed", byok.reservation_id: "byok"}


def test_seed_model_fills_only_an_empty_model(client: costwarden.Client, seeded: Seeded) -> None:
    ws = seeded.ws_empty
    assert client.billing_mode(seeded.org, ws).source == "deploy_default"
    assert client.seed_workspace_model(seeded.org, ws, seeded.vendor_model) is True
    mode = client.billing_mode(seeded.org, ws)
    assert (mode.billing_mode, mode.source) == ("byok", "model")
    # never overwrites a chosen model
    assert client.seed_workspace_model(seeded.org, ws, seeded.platform_model) is False
    assert client.seed_workspace_model(seeded.org, seeded.ws_platform, seeded.vendor_model) is False
    assert client.billing_mode(seeded.org, ws).billing_mode == "byok"
    assert client.billing_mode(seeded.org, seeded.ws_platform).billing_mode == "platform_managed"
    # an override still wins over the seeded model
    client.upsert_workspace(seeded.org, ws, billing_override="platform_managed")
    mode = client.billing_mode(seeded.org, ws)
    assert (mode.billing_mode, mode.source) == ("platform_managed", "override")
    # 'none' clears the override: back to the model
    client.upsert_workspace(seeded.org, ws, billing_override="none")
    assert client.billing_mode(seeded.org, ws).source == "model"


def test_seed_model_errors(client: costwarden.Client, seeded: Seeded) -> None:
    with pytest.raises(costwarden.errors.NotFound):
        client.seed_workspace_model(seeded.org, "no-such-ws", seeded.vendor_model)
    with pytest.raises(costwarden.errors.NotFound):
        client.seed_workspace_model(seeded.org, seeded.ws_empty, "acme-labs/no-such-model")


def test_billing_mode_errors(client: costwarden.Client, seeded: Seeded) -> None:
    with pytest.raises(costwarden.errors.NotFound):
        client.billing_mode(seeded.org, "no-such-ws")
    with pytest.raises(costwarden.errors.NotFound):
        client.billing_mode("no-such-org", "ws")


def test_one_source_of_truth(admin_conn: psycopg.Connection[Any]) -> None:
    """Only costwarden._billing_mode reads the deployment's proxy setting: every other
    function (quote, reserve, the key-write guard, ...) asks it."""
    readers = [
        r[0]
        for r in admin_conn.execute(
            "select p.proname from pg_proc p "
            "where p.pronamespace = 'costwarden'::regnamespace "
            "and p.prosrc like '%platform_proxy_configured%' order by 1"
        ).fetchall()
    ]
    assert readers == ["_billing_mode"]
    callers = {
        r[0]
        for r in admin_conn.execute(
            "select p.proname from pg_proc p "
            "where p.pronamespace = 'costwarden'::regnamespace "
            "and p.prosrc like '%costwarden._billing_mode(%'"
        ).fetchall()
    }
    assert {
        "fn_workspace_billing_mode",
        "fn_cost_quote",
        "fn_cost_reserve",
        "_byok_guard",
    } <= callers


def test_billing_modes_synced(admin_conn: psycopg.Connection[Any]) -> None:
    """The Python enum and the SQL check constraint name the same modes."""
    definition = admin_conn.execute(
        "select pg_get_constraintdef(oid) from pg_constraint "
        "where conname = 'workspaces_override_check'"
    ).fetchone()
    assert definition is not None
    for mode in costwarden.types.BILLING_MODES:
        assert f"'{mode}'" in definition[0]
