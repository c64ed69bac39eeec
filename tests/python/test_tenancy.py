"""Tenancy and catalogue (SPEC §1): orgs, workspaces, users, keys, models, pricing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

import costwarden
from cwtest import Seeded, expect_sqlstate, table_snapshot

Conn = psycopg.Connection[Any]


def refused(
    conn: Conn, sqlstate: str, query: str, params: Any = None, *, match: str | None = None
) -> psycopg.Error:
    """The call fails with ``sqlstate`` and leaves every costwarden table as it was."""
    before = table_snapshot(conn)
    err = expect_sqlstate(conn, sqlstate, query, params, match=match)
    assert table_snapshot(conn) == before, f"{query} wrote something before failing"
    return err


def one(conn: Conn, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0] if len(row) == 1 else row


BAD_IDS = [
    (None, "is required"),
    ("", "non-empty"),
    (" x", "surrounding blanks"),
    ("x ", "surrounding blanks"),
    ("x" * 201, "longer than 200"),
]


# -- orgs -------------------------------------------------------------------------------------


def test_org_upsert_creates_and_merges_settings(
    client: costwarden.Client, admin_conn: Conn
) -> None:
    client.upsert_org("acme")
    assert one(admin_conn, "select settings from costwarden._orgs where org_id = 'acme'") == {}
    client.upsert_org("acme", {"timezone": "Europe/Paris", "credit_rate_usd": 0.5})
    client.upsert_org("acme", {"group_resolution": "max"})
    assert one(admin_conn, "select settings from costwarden._orgs where org_id = 'acme'") == {
        "timezone": "Europe/Paris",
        "credit_rate_usd": Decimal("0.5"),
        "group_resolution": "max",
    }
    # a key given as JSON null is removed
    client.upsert_org("acme", {"timezone": None})
    settings = one(admin_conn, "select settings from costwarden._orgs where org_id = 'acme'")
    assert "timezone" not in settings and settings["group_resolution"] == "max"
    # the org pool exists
    assert (
        one(
            admin_conn,
            "select count(*) from costwarden._pools where org_id = 'acme' and kind = 'org'",
        )
        == 1
    )
    entries = client.audit(org_id="acme", action="org_upsert")
    assert len(entries) == 4
    assert entries[-1].before is None and entries[-1].after == {"settings": {}}
    assert entries[0].before is not None and "timezone" in entries[0].before["settings"]


def test_org_upsert_defaults_settings(admin_conn: Conn) -> None:
    admin_conn.execute("select costwarden.fn_org_upsert(p_org_id => 'acme')")
    assert one(admin_conn, "select settings from costwarden._orgs") == {}


def test_org_upsert_bad_id(admin_conn: Conn) -> None:
    for bad, says in BAD_IDS:
        refused(
            admin_conn,
            "CW004",
            "select costwarden.fn_org_upsert(p_org_id => %s)",
            (bad,),
            match=f"p_org_id.*{says}|p_org_id is required",
        )


BAD_ORG_SETTINGS = [
    (None, "p_settings must be a JSON object"),
    ("[]", "p_settings must be a JSON object"),
    ('"x"', "p_settings must be a JSON object"),
    ('{"timezone": "Mars/Olympus_Mons"}', "p_settings.timezone"),
    ('{"timezone": 5}', "p_settings.timezone"),
    ('{"timezone": ""}', "p_settings.timezone"),
    ('{"credit_rate_usd": 0}', "p_settings.credit_rate_usd"),
    ('{"credit_rate_usd": -1}', "p_settings.credit_rate_usd"),
    ('{"credit_rate_usd": "0.01"}', "p_settings.credit_rate_usd"),
    ('{"group_resolution": "avg"}', "p_settings.group_resolution"),
    ('{"group_resolution": true}', "p_settings.group_resolution"),
    ('{"colour": "blue"}', "p_settings: unknown org setting"),
    ('{"timezone": "UTC", "colour": "blue"}', "p_settings: unknown org setting"),
]


def test_org_settings_validation(admin_conn: Conn) -> None:
    admin_conn.execute("select costwarden.fn_org_upsert('acme', '{\"timezone\": \"UTC\"}')")
    for settings, says in BAD_ORG_SETTINGS:
        for org in ("acme", "newco"):  # an update leaves the org as it was; a new one is not made
            refused(
                admin_conn,
                "CW004",
                "select costwarden.fn_org_upsert(p_org_id => %s, p_settings => %s::jsonb)",
                (org, settings),
                match=says,
            )


def test_org_settings_accepted(admin_conn: Conn) -> None:
    for settings in (
        {"timezone": "America/New_York"},
        {"timezone": "UTC"},
        {"credit_rate_usd": 0.000001},
        {"credit_rate_usd": 25},
        {"group_resolution": "min"},
        {"group_resolution": "max"},
    ):
        admin_conn.execute(
            "select costwarden.fn_org_upsert('acme', %s::jsonb)", (json.dumps(settings),)
        )
        got = one(admin_conn, "select settings from costwarden._orgs where org_id = 'acme'")
        key, value = next(iter(settings.items()))
        assert got[key] == value


# -- workspaces -------------------------------------------------------------------------------


def _ws(conn: Conn, org: str, ws: str) -> tuple[str | None, str | None]:
    row = conn.execute(
        "select model, billing_override from costwarden._workspaces "
        "where org_id = %s and workspace_id = %s",
        (org, ws),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_workspace_upsert_model_and_override(
    client: costwarden.Client, admin_conn: Conn, seeded: Seeded
) -> None:
    org, ws = seeded.org, seeded.ws_platform
    assert _ws(admin_conn, org, ws) == (seeded.platform_model, None)
    # null model keeps the current one; an override is set
    client.upsert_workspace(org, ws, billing_override="byok")
    assert _ws(admin_conn, org, ws) == (seeded.platform_model, "byok")
    # null override keeps the current one; a new model replaces
    client.upsert_workspace(org, ws, model=seeded.vendor_model)
    assert _ws(admin_conn, org, ws) == (seeded.vendor_model, "byok")
    for override in ("disabled", "platform_managed"):
        client.upsert_workspace(org, ws, billing_override=override)
        assert _ws(admin_conn, org, ws) == (seeded.vendor_model, override)
    # 'none' clears the override
    client.upsert_workspace(org, ws, billing_override="none")
    assert _ws(admin_conn, org, ws) == (seeded.vendor_model, None)
    # a new workspace with 'none' has no override
    client.upsert_workspace(org, "ws-new", billing_override="none")
    assert _ws(admin_conn, org, "ws-new") == (None, None)
    assert (
        one(
            admin_conn,
            "select count(*) from costwarden._pools "
            "where org_id = %s and kind = 'workspace' and scope_id = 'ws-new'",
            (org,),
        )
        == 1
    )
    audit = client.audit(org_id=org, action="workspace_upsert")
    assert audit[0].target == {"org_id": org, "workspace_id": "ws-new"}
    assert audit[0].before is None
    assert audit[1].before == {"model": seeded.vendor_model, "billing_override": "platform_managed"}
    assert audit[1].after == {"model": seeded.vendor_model, "billing_override": None}


def test_workspace_upsert_errors(admin_conn: Conn, seeded: Seeded) -> None:
    for bad, says in BAD_IDS:
        refused(
            admin_conn,
            "CW004",
            "select costwarden.fn_workspace_upsert(p_org_id => 'acme', p_workspace_id => %s)",
            (bad,),
            match=f"p_workspace_id.*{says}|p_workspace_id is required",
        )
    q = (
        "select costwarden.fn_workspace_upsert(p_org_id => %s, p_workspace_id => %s, "
        "p_model => %s, p_billing_override => %s)"
    )
    refused(admin_conn, "CW004", q, (None, "w", None, None), match="p_org_id is required")
    refused(admin_conn, "CW002", q, ("nope", "w", None, None), match="p_org_id: unknown org")
    refused(admin_conn, "CW002", q, ("acme", "w", "x/nope", None), match="p_model: unknown")
    refused(admin_conn, "CW002", q, ("acme", "ws-platform", "x/nope", None), match="p_model")
    for bad in ("bogus", "", "NONE", "Byok"):
        refused(admin_conn, "CW004", q, ("acme", "w", None, bad), match="p_billing_override")


def test_workspace_seed_model(client: costwarden.Client, admin_conn: Conn, seeded: Seeded) -> None:
    org = seeded.org
    assert client.seed_workspace_model(org, seeded.ws_empty, seeded.vendor_model) is True
    assert _ws(admin_conn, org, seeded.ws_empty) == (seeded.vendor_model, None)
    # never overwrites a chosen model
    assert client.seed_workspace_model(org, seeded.ws_empty, seeded.platform_model) is False
    assert _ws(admin_conn, org, seeded.ws_empty) == (seeded.vendor_model, None)
    assert client.seed_workspace_model(org, seeded.ws_platform, seeded.vendor_model) is False
    assert _ws(admin_conn, org, seeded.ws_platform) == (seeded.platform_model, None)
    # audited only when it set the model
    (entry,) = client.audit(org_id=org, action="workspace_seed_model")
    assert entry.before == {"model": None} and entry.after == {"model": seeded.vendor_model}


def test_workspace_seed_model_errors(admin_conn: Conn, seeded: Seeded) -> None:
    q = (
        "select costwarden.fn_workspace_seed_model(p_org_id => %s, p_workspace_id => %s, "
        "p_model => %s)"
    )
    m = seeded.vendor_model
    refused(admin_conn, "CW004", q, (None, "ws-empty", m), match="p_org_id")
    refused(admin_conn, "CW004", q, ("acme", None, m), match="p_workspace_id")
    refused(admin_conn, "CW004", q, ("acme", "ws-empty", None), match="p_model")
    refused(admin_conn, "CW002", q, ("nope", "ws-empty", m), match="p_org_id")
    refused(admin_conn, "CW002", q, ("acme", "nope", m), match="p_workspace_id")
    refused(admin_conn, "CW002", q, ("globex", "ws-empty", m), match="p_workspace_id")
    refused(admin_conn, "CW002", q, ("acme", "ws-empty", "x/nope"), match="p_model")


# -- users ------------------------------------------------------------------------------------


def _groups(conn: Conn, org: str, user: str) -> list[str]:
    rows = conn.execute(
        "select group_id from costwarden._user_groups "
        "where org_id = %s and user_id = %s order by 1",
        (org, user),
    ).fetchall()
    return [r[0] for r in rows]


def test_user_upsert_replaces_groups(
    client: costwarden.Client, admin_conn: Conn, seeded: Seeded
) -> None:
    org = seeded.org
    assert _groups(admin_conn, org, "bob") == ["eng", "ops"]
    client.upsert_user(org, "bob", ["sales", "ops", "sales"])
    assert _groups(admin_conn, org, "bob") == ["ops", "sales"]
    # null keeps the membership
    client.upsert_user(org, "bob")
    assert _groups(admin_conn, org, "bob") == ["ops", "sales"]
    # an empty list clears it
    client.upsert_user(org, "bob", [])
    assert _groups(admin_conn, org, "bob") == []
    # another user's membership is untouched
    assert _groups(admin_conn, org, "alice") == ["eng"]
    # new user, pool created
    client.upsert_user(org, "carol")
    assert (
        one(
            admin_conn,
            "select count(*) from costwarden._pools "
            "where org_id = %s and kind = 'user' and scope_id = 'carol'",
            (org,),
        )
        == 1
    )
    audit = client.audit(org_id=org, action="user_upsert")
    assert audit[0].before is None and audit[0].after == {"groups": []}
    assert audit[1].before == {"groups": ["ops", "sales"]} and audit[1].after == {"groups": []}


def test_user_upsert_errors(admin_conn: Conn, seeded: Seeded) -> None:
    q = "select costwarden.fn_user_upsert(p_org_id => %s, p_user_id => %s, p_groups => %s)"
    for bad, says in BAD_IDS:
        refused(admin_conn, "CW004", q, ("acme", bad, None), match=f"p_user_id.*({says}|required)")
    refused(admin_conn, "CW004", q, (None, "u", None), match="p_org_id is required")
    refused(admin_conn, "CW002", q, ("nope", "u", None), match="p_org_id: unknown org")
    refused(admin_conn, "CW004", q, ("acme", "bob", ["a", None]), match=r"p_groups\[\]")
    refused(admin_conn, "CW004", q, ("acme", "bob", ["a", ""]), match=r"p_groups\[\]")
    refused(admin_conn, "CW004", q, ("acme", "bob", [" a"]), match=r"p_groups\[\]")
    refused(
        admin_conn,
        "CW004",
        "select costwarden.fn_user_upsert('acme', 'bob', array[['a'], ['b']])",
        match="p_groups must be a one-dimensional array",
    )


# -- keys -------------------------------------------------------------------------------------


def _key(conn: Conn, org: str, key: str) -> tuple[str | None, str | None]:
    row = conn.execute(
        "select workspace_id, user_id from costwarden._keys where org_id = %s and key_id = %s",
        (org, key),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_key_upsert(client: costwarden.Client, admin_conn: Conn, seeded: Seeded) -> None:
    org = seeded.org
    assert _key(admin_conn, org, seeded.key) == (seeded.ws_platform, "alice")
    client.upsert_key(org, seeded.key, workspace_id=seeded.ws_vendor, user_id="bob")
    assert _key(admin_conn, org, seeded.key) == (seeded.ws_vendor, "bob")
    client.upsert_key(org, seeded.key)
    assert _key(admin_conn, org, seeded.key) == (None, None)
    client.upsert_key(org, "key-2", user_id="alice")
    assert _key(admin_conn, org, "key-2") == (None, "alice")
    assert (
        one(
            admin_conn,
            "select count(*) from costwarden._pools where org_id = %s and kind = 'key'",
            (org,),
        )
        == 2
    )
    audit = client.audit(org_id=org, action="key_upsert")
    assert audit[0].before is None
    assert audit[1].before == {"workspace_id": seeded.ws_vendor, "user_id": "bob"}
    assert audit[1].after == {"workspace_id": None, "user_id": None}


def test_key_upsert_errors(admin_conn: Conn, seeded: Seeded) -> None:
    q = (
        "select costwarden.fn_key_upsert(p_org_id => %s, p_key_id => %s, "
        "p_workspace_id => %s, p_user_id => %s)"
    )
    for bad, says in BAD_IDS:
        refused(
            admin_conn, "CW004", q, ("acme", bad, None, None), match=f"p_key_id.*({says}|required)"
        )
    refused(admin_conn, "CW004", q, (None, "k", None, None), match="p_org_id is required")
    refused(admin_conn, "CW002", q, ("nope", "k", None, None), match="p_org_id")
    refused(admin_conn, "CW002", q, ("acme", "k", "nope", None), match="p_workspace_id")
    refused(admin_conn, "CW002", q, ("acme", "k", None, "nope"), match="p_user_id")
    # a workspace or user of another org is unknown in this one
    refused(admin_conn, "CW002", q, ("globex", "k", "ws-platform", None), match="p_workspace_id")
    refused(admin_conn, "CW002", q, ("globex", "k", None, "alice"), match="p_user_id")


# -- models -----------------------------------------------------------------------------------


VALID_MODELS = [
    ("openai/gpt-4o", "openai"),
    ("mistral/mistral-large-2411", "mistral"),
    ("Open.AI-x_1/gpt:4", "Open.AI-x_1"),
    ("bedrock/anthropic/claude-3", "bedrock"),
]


def test_model_upsert_valid(client: costwarden.Client, admin_conn: Conn) -> None:
    for model, provider in VALID_MODELS:
        client.upsert_model(model)
        assert one(
            admin_conn,
            "select provider, platform_servable from costwarden._models where model = %s",
            (model,),
        ) == (provider, False)
        client.upsert_model(model, platform_servable=True)
        (entry,) = client.pricing(model)
        assert (entry.provider, entry.platform_servable, entry.pricing_snapshot_id) == (
            provider,
            True,
            None,
        )
        audit = client.audit(action="model_upsert")
        assert audit[0].target == {"model": model}
        assert audit[0].before == {"platform_servable": False}
        assert audit[0].after == {"platform_servable": True}
        assert audit[1].before is None


def test_model_upsert_bad_format(admin_conn: Conn) -> None:
    for model in [
        "gpt-4o",
        "/gpt-4o",
        "openai/",
        "openai/gpt 4o",
        "open ai/gpt",
        "-x/y",
        "",
        " a/b",
    ]:
        refused(
            admin_conn,
            "CW004",
            "select costwarden.fn_model_upsert(p_model => %s)",
            (model,),
            match="p_model",
        )


def test_model_upsert_nulls(admin_conn: Conn) -> None:
    refused(
        admin_conn, "CW004", "select costwarden.fn_model_upsert(null)", match="p_model is required"
    )
    refused(
        admin_conn,
        "CW004",
        "select costwarden.fn_model_upsert('a/b', null)",
        match="p_platform_servable is required",
    )


# -- pricing ----------------------------------------------------------------------------------


def test_pricing_set_returns_snapshot_and_history(
    client: costwarden.Client, seeded: Seeded
) -> None:
    model = seeded.platform_model
    later = datetime(2024, 6, 1, tzinfo=UTC)
    sid = client.set_pricing(model, {"input_tokens": Decimal("0.000002")}, later)
    assert sid > seeded.snapshot_ids[model]
    history = client.pricing_history(model)
    assert [s.pricing_snapshot_id for s in history] == [seeded.snapshot_ids[model], sid]
    assert history[1].prices == {"input_tokens": Decimal("0.000002")}
    assert history[1].effective_from == later
    assert history[0].prices == seeded.prices[model]
    (entry,) = client.pricing(model)
    assert entry.pricing_snapshot_id == sid
    # at an earlier instant the earlier snapshot was in force; before both, none
    (early,) = client.pricing(model, at=datetime(2024, 3, 1, tzinfo=UTC))
    assert early.pricing_snapshot_id == seeded.snapshot_ids[model]
    (none,) = client.pricing(model, at=datetime(2020, 1, 1, tzinfo=UTC))
    assert none.pricing_snapshot_id is None and none.prices is None
    audit = client.audit(action="pricing_set")
    assert audit[0].target == {"model": model, "snapshot_id": sid}
    assert audit[0].before is None
    assert audit[0].after is not None and audit[0].after["prices"] == {
        "input_tokens": Decimal("0.000002")
    }


def test_pricing_list_all_models(client: costwarden.Client, seeded: Seeded) -> None:
    entries = {e.model: e for e in client.pricing()}
    assert set(entries) == {
        seeded.platform_model,
        seeded.vendor_model,
        seeded.realtime_model,
        seeded.unpriced_model,
    }
    assert entries[seeded.unpriced_model].pricing_snapshot_id is None
    assert entries[seeded.vendor_model].prices == seeded.prices[seeded.vendor_model]
    assert [e.model for e in client.pricing()] == sorted(entries)
    assert client.pricing("nope/none") == []


def test_future_snapshot_is_not_in_force_yet(
    client: costwarden.Client, admin_conn: Conn, seeded: Seeded
) -> None:
    model = seeded.platform_model
    future = datetime.now(UTC) + timedelta(days=30)
    future_id = client.set_pricing(model, {"input_tokens": Decimal("1")}, future)
    q = client.quote(seeded.org, seeded.ws_platform, model, {"input_tokens": 1000})
    assert q.pricing_snapshot_id == seeded.snapshot_ids[model]
    assert q.amount_micros == 2500
    (now_entry,) = client.pricing(model)
    assert now_entry.pricing_snapshot_id == seeded.snapshot_ids[model]
    (then_entry,) = client.pricing(model, at=future + timedelta(seconds=1))
    assert then_entry.pricing_snapshot_id == future_id
    # once its instant passes it is the one in force (seen from a transaction at that time:
    # simulate by a snapshot effective one second ago)
    past_id = client.set_pricing(
        model, {"input_tokens": Decimal("0.000001")}, datetime.now(UTC) - timedelta(seconds=1)
    )
    q = client.quote(seeded.org, seeded.ws_platform, model, {"input_tokens": 1000})
    assert (q.pricing_snapshot_id, q.amount_micros) == (past_id, 1000)


def test_pricing_snapshots_are_immutable_even_for_the_superuser(
    admin_conn: Conn, seeded: Seeded
) -> None:
    for statement in (
        "update costwarden._pricing_snapshots set prices = '{\"input_tokens\": 0}'",
        "update costwarden._pricing_snapshots set effective_from = now()",
        "delete from costwarden._pricing_snapshots",
        "truncate costwarden._pricing_snapshots cascade",
    ):
        refused(admin_conn, "CW001", statement, match="append-only")
    err = expect_sqlstate(
        admin_conn,
        "CW001",
        "delete from costwarden._pricing_snapshots where snapshot_id = %s",
        (seeded.snapshot_ids[seeded.platform_model],),
    )
    assert isinstance(costwarden.errors.translate(err), costwarden.AppendOnlyViolation)


def test_pricing_set_duplicate_effective_from(admin_conn: Conn, seeded: Seeded) -> None:
    refused(
        admin_conn,
        "CW004",
        "select costwarden.fn_pricing_set(p_model => %s, p_prices => '{\"input_tokens\": 1}', "
        "p_effective_from => %s)",
        (seeded.platform_model, datetime(2024, 1, 1, tzinfo=UTC)),
        match="p_effective_from.*immutable",
    )


BAD_PRICES = [
    (None, "p_prices must be a non-empty JSON object"),
    ("{}", "p_prices must be a non-empty JSON object"),
    ("[]", "p_prices must be a non-empty JSON object"),
    ("0.1", "p_prices must be a non-empty JSON object"),
    ('{"tokens": 0.1}', "p_prices: unknown usage unit"),
    ('{"input_tokens": -0.1}', "p_prices.input_tokens"),
    ('{"input_tokens": "0.1"}', "p_prices.input_tokens"),
    ('{"input_tokens": null}', "p_prices.input_tokens"),
    ('{"input_tokens": true}', "p_prices.input_tokens"),
    ('{"input_tokens": 1000001}', "p_prices.input_tokens"),
    ('{"input_tokens": 0.1, "output_tokens": [1]}', "p_prices.output_tokens"),
]


def test_pricing_set_bad_prices(admin_conn: Conn, seeded: Seeded) -> None:
    for prices, says in BAD_PRICES:
        refused(
            admin_conn,
            "CW004",
            "select costwarden.fn_pricing_set(p_model => %s, p_prices => %s::jsonb, "
            "p_effective_from => '2030-01-01')",
            (seeded.platform_model, prices),
            match=says,
        )


def test_pricing_set_other_errors(admin_conn: Conn, seeded: Seeded) -> None:
    q = "select costwarden.fn_pricing_set(p_model => %s, p_prices => %s, p_effective_from => %s)"
    prices = '{"input_tokens": 0.1}'
    refused(admin_conn, "CW004", q, (None, prices, "2030-01-01"), match="p_model is required")
    refused(admin_conn, "CW002", q, ("x/nope", prices, "2030-01-01"), match="p_model: unknown")
    refused(admin_conn, "CW004", q, (seeded.platform_model, prices, None), match="p_effective_from")


def test_pricing_set_keeps_exact_prices(client: costwarden.Client, seeded: Seeded) -> None:
    tiny = Decimal("0.000000000001")
    sid = client.set_pricing(
        seeded.unpriced_model, {"characters": tiny}, datetime(2024, 2, 1, tzinfo=UTC)
    )
    (snap,) = client.pricing_history(seeded.unpriced_model)
    assert snap.pricing_snapshot_id == sid and snap.prices == {"characters": tiny}


# -- billing mode ------------------------------------------------------------------------------


def test_billing_mode_errors(admin_conn: Conn, seeded: Seeded) -> None:
    q = "select * from costwarden.fn_workspace_billing_mode(p_org_id => %s, p_workspace_id => %s)"
    expect_sqlstate(admin_conn, "CW004", q, (None, "ws-platform"), match="p_org_id")
    expect_sqlstate(admin_conn, "CW004", q, ("acme", None), match="p_workspace_id")
    expect_sqlstate(admin_conn, "CW002", q, ("nope", "ws-platform"), match="p_org_id")
    expect_sqlstate(admin_conn, "CW002", q, ("acme", "nope"), match="p_workspace_id")


def test_client_errors_map_to_exceptions(client: costwarden.Client, seeded: Seeded) -> None:
    with pytest.raises(costwarden.NotFound, match="p_org_id"):
        client.upsert_workspace("nope", "w")
    with pytest.raises(costwarden.InvalidArgument, match="p_billing_override"):
        client.upsert_workspace(seeded.org, "w", billing_override="cheap")
    with pytest.raises(costwarden.NotFound, match="p_workspace_id"):
        client.billing_mode(seeded.org, "nope")


def test_client_sends_decimal_org_settings_exactly(
    client: costwarden.Client, admin_conn: Conn
) -> None:
    client.upsert_org("acme", {"credit_rate_usd": Decimal("0.0125")})
    # the exact literal reached the database (no binary float on the way)
    assert (
        one(admin_conn, "select settings ->> 'credit_rate_usd' from costwarden._orgs") == "0.0125"
    )
