"""Runtime settings (SPEC §6): defaults, set/get, validation, audit."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import psycopg
import pytest

import costwarden
from cwtest import expect_sqlstate, table_snapshot

#: SPEC §6: every runtime setting and its default.
SPEC_DEFAULTS: dict[str, Any] = {
    "billing_enforce": True,
    "byok_require_reservation": True,
    "unpriced_policy": "reject",
    "platform_proxy_configured": True,
    "default_ttl": "5 minutes",
    "expire_action": "commit_metered",
    "credit_rate_usd": Decimal("0.01"),
    "circuit_failure_threshold": 5,
    "circuit_cooldown": "30 seconds",
    "anomaly_sigma": 4,
    "anomaly_min_micros": 1000000,
    "anomaly_freeze": False,
}

#: JSON values of the wrong type (or out of range) for each value type.
WRONG: dict[str, list[str]] = {
    "boolean": ['"true"', "1", "0", "null", "[]", "{}", '"yes"'],
    "integer": ["1.5", '"5"', "true", "null", "[5]", "1e400", "-1e400"],
    "numeric": ['"0.5"', "true", "null", "[1]", "{}"],
    "interval": ["5", '"abc"', '"-5 minutes"', '"0"', "true", "null", '["5 minutes"]'],
    "enum": ['"other"', "1", "true", "null", '["reject"]', '""'],
}


def _defs(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    cur = conn.execute(
        "select key, value_type, default_value, allowed, min_value, nullable "
        "from costwarden._setting_defs order by key"
    )
    cols = [d.name for d in cur.description or ()]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def _other_value(d: dict[str, Any]) -> Any:
    """A valid value of the setting that is not its default."""
    default = d["default_value"]
    match d["value_type"]:
        case "boolean":
            return not default
        case "integer":
            return int(default) + 7
        case "numeric":
            return Decimal(str(default)) + Decimal("0.5")
        case "interval":
            return "7 minutes"
        case "enum":
            return next(v for v in d["allowed"] if v != default)
    raise AssertionError(d["value_type"])


def _json(value: Any) -> str:
    return format(value, "f") if isinstance(value, Decimal) else json.dumps(value)


def test_every_spec_setting_has_its_default(client: costwarden.Client) -> None:
    listed = {s.key: s for s in client.settings()}
    assert set(SPEC_DEFAULTS) <= set(listed), set(SPEC_DEFAULTS) - set(listed)
    for key, expected in SPEC_DEFAULTS.items():
        got = client.get_setting(key)
        assert got == expected, (key, got)
        assert listed[key].value == expected
        assert listed[key].default_value == expected
        assert listed[key].changed is False
        assert listed[key].description


def test_settings_list_is_sorted_and_typed(client: costwarden.Client) -> None:
    rows = client.settings()
    assert [s.key for s in rows] == sorted(s.key for s in rows)
    assert {s.value_type for s in rows} <= {"boolean", "integer", "numeric", "interval", "enum"}


def test_set_get_round_trip_every_setting(admin_conn: psycopg.Connection[Any]) -> None:
    for d in _defs(admin_conn):
        key, value = d["key"], _other_value(d)
        admin_conn.execute("select costwarden.fn_setting_set(%s, %s::jsonb)", (key, _json(value)))
        row = admin_conn.execute("select costwarden.fn_setting_get(%s)", (key,)).fetchone()
        assert row is not None
        got = row[0]
        if d["value_type"] == "interval":
            same = admin_conn.execute("select %s::interval = %s::interval", (got, value)).fetchone()
            assert same == (True,), (key, got)
        elif d["value_type"] == "numeric":
            assert Decimal(str(got)) == value, key
        else:
            assert got == value, key
        listed = admin_conn.execute(
            "select changed from costwarden.fn_settings_list() where key = %s", (key,)
        ).fetchone()
        assert listed == (True,)


def test_set_again_overwrites(client: costwarden.Client) -> None:
    client.set_setting("circuit_failure_threshold", 9)
    client.set_setting("circuit_failure_threshold", 3)
    assert client.get_setting("circuit_failure_threshold") == 3
    client.set_setting("unpriced_policy", "free")
    assert client.get_setting("unpriced_policy") == "free"
    client.set_setting("unpriced_policy", "reject")
    assert client.get_setting("unpriced_policy") == "reject"


def test_interval_settings_are_kept_as_written(client: costwarden.Client) -> None:
    # validated as intervals, stored as written, like the defaults ("5 minutes")
    client.set_setting("default_ttl", " 90 seconds ")
    assert client.get_setting("default_ttl") == "90 seconds"


@pytest.mark.parametrize("key", ["default_ttl", "circuit_cooldown"])
def test_interval_settings_have_a_largest_value(
    client: costwarden.Client, admin_conn: psycopg.Connection[Any], key: str
) -> None:
    """A value that every later reserve (or circuit) could not use is refused when set."""
    client.set_setting(key, "7 days")
    before = table_snapshot(admin_conn)
    for bad in ("7 days 1 second", "8 days", "1 month", "300000 years"):
        with pytest.raises(costwarden.InvalidArgument, match=f"setting {key} must be at most"):
            client.set_setting(key, bad)
    assert table_snapshot(admin_conn) == before
    # the largest value still works: an open circuit's status
    client.upsert_model("openai/gpt-4o")
    client.set_setting("circuit_failure_threshold", 1)
    client.report_provider("openai", ok=False, error="down")
    assert {c.provider: c.state for c in client.circuits()}["openai"] == "open"


def test_wrong_types_are_cw004_and_write_nothing(admin_conn: psycopg.Connection[Any]) -> None:
    before = table_snapshot(admin_conn)
    for d in _defs(admin_conn):
        for bad in WRONG[d["value_type"]]:
            if bad == "null" and d["nullable"]:
                continue  # JSON null is this setting's "no bound" (test_nullable_setting)
            expect_sqlstate(
                admin_conn,
                "CW004",
                "select costwarden.fn_setting_set(%s, %s::jsonb)",
                (d["key"], bad),
                match="p_value",
            )
        expect_sqlstate(
            admin_conn,
            "CW004",
            "select costwarden.fn_setting_set(%s, null)",
            (d["key"],),
            match="p_value",
        )
    assert table_snapshot(admin_conn) == before


def test_range_limits(admin_conn: psycopg.Connection[Any]) -> None:
    """Bounds from the catalogue: a value below min_value is CW004, min_value itself is fine."""
    for d in _defs(admin_conn):
        if d["min_value"] is None:
            continue
        below = d["min_value"] - (1 if d["value_type"] == "integer" else Decimal("0.0000001"))
        expect_sqlstate(
            admin_conn,
            "CW004",
            "select costwarden.fn_setting_set(%s, %s::jsonb)",
            (d["key"], _json(below)),
            match=">=",
        )
        admin_conn.execute(
            "select costwarden.fn_setting_set(%s, %s::jsonb)", (d["key"], _json(d["min_value"]))
        )


def test_unknown_or_missing_key_is_cw004(admin_conn: psycopg.Connection[Any]) -> None:
    before = table_snapshot(admin_conn)
    for key in ("no_such_setting", "", "Billing_Enforce", " billing_enforce"):
        expect_sqlstate(
            admin_conn,
            "CW004",
            "select costwarden.fn_setting_set(%s, 'true')",
            (key,),
            match="p_key",
        )
        expect_sqlstate(
            admin_conn, "CW004", "select costwarden.fn_setting_get(%s)", (key,), match="p_key"
        )
    expect_sqlstate(
        admin_conn, "CW004", "select costwarden.fn_setting_set(null, 'true')", match="p_key"
    )
    expect_sqlstate(admin_conn, "CW004", "select costwarden.fn_setting_get(null)", match="p_key")
    assert table_snapshot(admin_conn) == before


def test_client_maps_bad_setting_to_invalid_argument(client: costwarden.Client) -> None:
    with pytest.raises(costwarden.InvalidArgument, match="p_key"):
        client.set_setting("nope", True)
    with pytest.raises(costwarden.InvalidArgument, match="p_value"):
        client.set_setting("billing_enforce", "yes")
    with pytest.raises(costwarden.InvalidArgument):
        client.get_setting("nope")


def test_every_change_is_audited(client: costwarden.Client) -> None:
    client.set_setting("anomaly_freeze", True)
    client.set_setting("anomaly_freeze", False)
    client.set_setting("default_ttl", "10 minutes")
    entries = client.audit(action="setting_set")
    assert len(entries) == 3
    newest, middle, oldest = entries
    assert oldest.target == {"key": "anomaly_freeze"}
    assert oldest.before == {"value": False} and oldest.after == {"value": True}
    assert middle.before == {"value": True} and middle.after == {"value": False}
    assert newest.target == {"key": "default_ttl"}
    assert newest.before == {"value": "5 minutes"} and newest.after == {"value": "10 minutes"}
    assert all(e.org_id is None and e.db_role == "postgres" for e in entries)
    assert newest.audit_id > middle.audit_id > oldest.audit_id


def test_audit_records_the_actor(dsn: str) -> None:
    with costwarden.Client(dsn, actor_user="carol") as c:
        c.set_setting("anomaly_sigma", 3)
        (entry,) = c.audit(action="setting_set")
    assert (entry.actor_org, entry.actor_user) == (None, "carol")


def test_an_actor_of_one_org_cannot_change_a_setting(dsn: str, client: costwarden.Client) -> None:
    """Settings are every org's: a caller confined to one org may not change them."""
    with (
        costwarden.Client(dsn, actor_org="ops", actor_user="carol") as c,
        pytest.raises(costwarden.Forbidden, match="every org shares"),
    ):
        c.set_setting("anomaly_sigma", 3)
    assert client.get_setting("anomaly_sigma") != 3
    assert client.audit(action="setting_set") == []


def test_failed_set_is_not_audited(client: costwarden.Client) -> None:
    with pytest.raises(costwarden.InvalidArgument):
        client.set_setting("anomaly_sigma", -1)
    assert client.audit(action="setting_set") == []


def test_client_sets_a_decimal_setting_exactly(client: costwarden.Client) -> None:
    client.set_setting("credit_rate_usd", Decimal("0.0125"))
    assert client.get_setting("credit_rate_usd") == Decimal("0.0125")


def test_nullable_setting(client: costwarden.Client) -> None:
    """spend_report_max_delta_micros: JSON null means no bound; SQL NULL is still CW004."""
    assert client.get_setting("spend_report_max_delta_micros") == 100_000_000
    client.set_setting("spend_report_max_delta_micros", None)
    assert client.get_setting("spend_report_max_delta_micros") is None
    client.set_setting("spend_report_max_delta_micros", 5)
    assert client.get_setting("spend_report_max_delta_micros") == 5
