"""SPEC §8 errors and the Python enums, kept in sync with the SQL."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest

import costwarden
from costwarden import errors, types
from cwtest import Seeded

Conn = psycopg.Connection[Any]

#: SPEC §8.
SPEC_ERRORS = {
    "CW001": "AppendOnlyViolation",
    "CW002": "NotFound",
    "CW003": "InvalidState",
    "CW004": "InvalidArgument",
    "CW005": "Forbidden",
    "CW006": "UnpricedModel",
    "CW007": "IdempotencyConflict",
}

#: SPEC §3: the codes a reservation's reasons may carry.
SPEC_REASON_CODES = {
    "budget_exceeded",
    "token_quota_exceeded",
    "circuit_open",
    "byok_credential_missing",
    "billing_disabled",
    "anomaly_freeze",
    "unpriced_model",
}


def test_every_sqlstate_has_its_exception_class() -> None:
    mapping = {state: cls.__name__ for state, cls in errors.SQLSTATE_EXCEPTIONS.items()}
    assert mapping == SPEC_ERRORS
    for state, cls in errors.SQLSTATE_EXCEPTIONS.items():
        assert cls.sqlstate == state
        assert issubclass(cls, costwarden.CostwardenError)
        assert getattr(costwarden, cls.__name__) is cls  # exported from the package


def test_server_errors_translate_to_their_class(admin_conn: Conn) -> None:
    for state in sorted(SPEC_ERRORS):
        with pytest.raises(psycopg.Error) as info:
            admin_conn.execute(
                "select costwarden._raise(%s, 'p_thing: something is wrong', 'try again')",
                (state,),
            )
        assert info.value.sqlstate == state
        err = errors.translate(info.value)
        assert type(err).__name__ == SPEC_ERRORS[state]
        assert isinstance(err, costwarden.CostwardenError)
        assert err.message == "p_thing: something is wrong"
        assert err.hint == "try again"
        assert err.__cause__ is info.value
        with (
            pytest.raises(errors.SQLSTATE_EXCEPTIONS[state], match="p_thing") as raised,
            errors.wrap_errors(),
        ):
            admin_conn.execute("select costwarden._raise(%s, 'p_thing: again')", (state,))
        assert raised.value.hint is None


def test_other_errors_pass_through(admin_conn: Conn) -> None:
    with pytest.raises(psycopg.errors.DivisionByZero), errors.wrap_errors():
        admin_conn.execute("select 1 / 0")
    unavailable = errors.translate(psycopg.OperationalError("connection refused"))
    assert isinstance(unavailable, costwarden.DatabaseUnavailable)


def test_the_client_raises_mapped_exceptions(client: costwarden.Client, seeded: Seeded) -> None:
    with pytest.raises(costwarden.InvalidArgument, match="p_key"):
        client.get_setting("nope")
    with pytest.raises(costwarden.NotFound, match="p_org_id"):
        client.billing_mode("nope", "x")
    with pytest.raises(costwarden.UnpricedModel):
        client.quote(seeded.org, seeded.ws_empty, seeded.unpriced_model, {"input_tokens": 1})


def test_append_only_tables_raise_cw001(admin_conn: Conn, seeded: Seeded) -> None:
    with pytest.raises(costwarden.AppendOnlyViolation), errors.wrap_errors():
        admin_conn.execute("delete from costwarden._audit_log")
    with pytest.raises(costwarden.AppendOnlyViolation), errors.wrap_errors():
        admin_conn.execute("update costwarden._audit_log set action = 'x'")
    with pytest.raises(costwarden.AppendOnlyViolation), errors.wrap_errors():
        admin_conn.execute("truncate costwarden._audit_log")


def test_error_messages_name_the_argument(admin_conn: Conn, seeded: Seeded) -> None:
    """The message convention: it starts with the offending argument (p_*)."""
    cases = [
        "select costwarden.fn_org_upsert(null)",
        "select costwarden.fn_workspace_upsert('nope', 'w')",
        "select costwarden.fn_setting_set('billing_enforce', '1')",
        "select * from costwarden.fn_cost_quote('acme', 'ws-platform', 'openai/gpt-4o', '[]')",
        "select * from costwarden.fn_cost_quote('acme', 'ws-empty', 'acme-labs/unpriced-1', '{}')",
        "select costwarden.fn_pricing_set('openai/gpt-4o', '{\"x\": 1}')",
    ]
    for query in cases:
        with pytest.raises(psycopg.Error) as info:
            admin_conn.execute(query)
        message = info.value.diag.message_primary or ""
        assert re.match(r"^p_[a-z_]+", message), (query, message)


# -- enums in sync with the SQL check constraints ---------------------------------------------


def check_values(conn: Conn, table: str, column: str) -> set[str] | None:
    """The string literals allowed by the CHECK constraint(s) on ``table.column``, or None
    when the table does not exist (yet)."""
    exists = conn.execute("select to_regclass(%s)", (f"costwarden.{table}",)).fetchone()
    if not exists or exists[0] is None:
        return None
    rows = conn.execute(
        """
        select pg_get_constraintdef(c.oid)
        from pg_constraint c
        join pg_attribute a on a.attrelid = c.conrelid and a.attnum = any(c.conkey)
        where c.contype = 'c' and c.conrelid = %s::regclass and a.attname = %s
        """,
        (f"costwarden.{table}", column),
    ).fetchall()
    values: set[str] = set()
    for (definition,) in rows:
        values |= set(re.findall(r"'([^']*)'::text", definition))
    return values


def test_billing_modes_match_sql(admin_conn: Conn) -> None:
    values = check_values(admin_conn, "_workspaces", "billing_override")
    assert values is not None and frozenset(values) == types.BILLING_MODES


def test_reservation_statuses_match_sql(admin_conn: Conn) -> None:
    values = check_values(admin_conn, "_reservations", "status")
    if values is None:
        pytest.skip("no reservations table in this schema yet")
    assert frozenset(values) == types.RESERVATION_STATUSES


def test_reason_codes_match_spec() -> None:
    assert types.REASON_CODES == SPEC_REASON_CODES


def test_setting_value_types_match_sql(admin_conn: Conn) -> None:
    values = check_values(admin_conn, "_setting_defs", "value_type")
    assert values == {"boolean", "integer", "numeric", "interval", "enum"}
    used = {
        r[0] for r in admin_conn.execute("select distinct value_type from costwarden._setting_defs")
    }
    assert used <= values
