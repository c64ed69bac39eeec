"""SPEC §8 errors and the Python enums and result types, kept in sync with the SQL.

The Python side is compared with what the installed schema says, read from the
database catalogue: the SQLSTATEs its functions raise, the reason codes they build,
the CHECK constraints of its tables and every RPC's result columns."""

from __future__ import annotations

import dataclasses
import re
import types as pytypes
import typing
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

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


#: The costwarden schema's own functions (not those of extensions installed in it).
OWN_FUNCTIONS = """
    select p.oid, p.proname, p.prosrc
    from pg_proc p
    where p.pronamespace = 'costwarden'::regnamespace
      and not exists (
        select from pg_depend d
        where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e'
      )
    order by p.proname, p.oid
"""


def own_functions(conn: Conn) -> list[tuple[int, str, str]]:
    rows = conn.execute(OWN_FUNCTIONS).fetchall()
    assert rows, "no costwarden functions installed"
    return rows


def without_comments(source: str) -> str:
    return re.sub(r"--[^\n]*", "", source)


def test_every_sqlstate_has_its_exception_class() -> None:
    mapping = {state: cls.__name__ for state, cls in errors.SQLSTATE_EXCEPTIONS.items()}
    assert mapping == SPEC_ERRORS
    for state, cls in errors.SQLSTATE_EXCEPTIONS.items():
        assert cls.sqlstate == state
        assert issubclass(cls, costwarden.CostwardenError)
        assert getattr(costwarden, cls.__name__) is cls  # exported from the package


def test_every_sqlstate_the_sql_raises_has_its_exception_class(admin_conn: Conn) -> None:
    """The CWxxx codes written anywhere in the installed functions' source (raised
    directly or through _raise) are exactly those the Python side maps."""
    raised: dict[str, set[str]] = {}
    for _oid, name, source in own_functions(admin_conn):
        for state in re.findall(r"\bCW\d{3}\b", without_comments(source)):
            raised.setdefault(state, set()).add(name)
    assert set(raised) == set(errors.SQLSTATE_EXCEPTIONS), {
        state: sorted(names)
        for state, names in raised.items()
        if state not in errors.SQLSTATE_EXCEPTIONS
    }


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
    """The string literals allowed by the CHECK constraint(s) on ``table.column`` -- on the
    table, or on the column's domain (migration 0017) --, or None when the table does not
    exist (yet)."""
    exists = conn.execute("select to_regclass(%s)", (f"costwarden.{table}",)).fetchone()
    if not exists or exists[0] is None:
        return None
    rows = conn.execute(
        """
        select pg_get_constraintdef(c.oid)
        from pg_constraint c
        join pg_attribute a on a.attrelid = c.conrelid and a.attnum = any(c.conkey)
        where c.contype = 'c' and c.conrelid = %s::regclass and a.attname = %s
        union all
        select pg_get_constraintdef(c.oid)
        from pg_constraint c
        join pg_attribute a on a.atttypid = c.contypid
        where c.contype = 'c' and a.attrelid = %s::regclass and a.attname = %s
        """,
        (f"costwarden.{table}", column, f"costwarden.{table}", column),
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
    assert values is not None and frozenset(values) == types.RESERVATION_STATUSES


def test_reason_codes_match_spec() -> None:
    assert types.REASON_CODES == SPEC_REASON_CODES


def first_argument(source: str, start: int) -> str:
    """The text of the first argument of the call whose "(" ends at ``start``."""
    depth = 0
    i = start
    while i < len(source):
        ch = source[i]
        if ch == "'":  # a string literal ('' inside it is an escaped quote)
            i = source.index("'", i + 1)
            while source.startswith("''", i):
                i = source.index("'", i + 2)
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif ch in ",)" and depth == 0:
            return source[start:i]
        i += 1
    raise AssertionError(f"unterminated call at {source[start - 20 : start + 40]!r}")


def sql_reason_codes(conn: Conn) -> dict[str, set[str]]:
    """The reason codes the installed functions can put in a reservation's reasons,
    by function: the first argument of every ``_reason(...)`` call, a literal or a
    ``case`` whose branches are literals. A call whose code cannot be read this way
    fails: the test must then learn the new form rather than miss a code."""
    found: dict[str, set[str]] = {}
    for _oid, name, source in own_functions(conn):
        text = without_comments(source)
        for call in re.finditer(r"\b_reason\s*\(", text):
            argument = first_argument(text, call.end()).strip()
            codes = re.findall(r"(?:^|\bthen|\belse)\s*'([a-z_]+)'", argument)
            assert codes, f"{name}: cannot read the code of _reason({argument}, ...)"
            found.setdefault(name, set()).update(codes)
    return found


def test_reason_codes_match_sql(admin_conn: Conn) -> None:
    by_function = sql_reason_codes(admin_conn)
    produced = set().union(*by_function.values())
    assert produced == types.REASON_CODES, by_function


def test_reason_keys_match_sql(admin_conn: Conn) -> None:
    """types.Reason has one field per key _reason builds (its arguments, minus p_)."""
    rows = admin_conn.execute(
        "select p.proargnames from pg_proc p "
        "where p.pronamespace = 'costwarden'::regnamespace and p.proname = '_reason'"
    ).fetchall()
    assert len(rows) == 1, rows
    keys = [name.removeprefix("p_") for name in rows[0][0]]
    assert [f.name for f in dataclasses.fields(types.Reason)] == keys


# -- RPC result columns and the frozen result types ---------------------------------------

#: Which result type the client builds from each RPC's rows.
RESULT_TYPES: dict[str, type[Any]] = {
    "fn_alert_get": types.Alert,
    "fn_anomalies_list": types.Anomaly,
    "fn_audit_list": types.AuditEntry,
    "fn_budget_status": types.BudgetStatus,
    "fn_budget_list": types.BudgetLimit,
    "fn_spend_summary": types.SpendSummary,
    "fn_spend_reports_quarantined": types.QuarantinedSpendReport,
    "fn_workspace_readiness": types.ReadinessProblem,
    "fn_byok_kek_rotate": types.KekRotateBatch,
    "fn_byok_kek_status": types.KekGeneration,
    "fn_byok_key_list": types.ByokKey,
    "fn_byok_key_resolve_v2": types.ByokSecret,
    "fn_byok_resolve_audit": types.ResolveAttempt,
    "fn_circuit_history": types.CircuitEvent,
    "fn_circuit_status": types.CircuitStatus,
    "fn_cost_commit": types.CommitResult,
    "fn_cost_commit_many": types.CommitResult,
    "fn_cost_meter_tick": types.MeterResult,
    "fn_cost_quote": types.Quote,
    "fn_cost_reserve": types.Reservation,
    "fn_cost_reserve_many": types.Reservation,
    "fn_get_my_cost_reservations": types.ReservationInfo,
    "fn_reservation_get": types.ReservationInfo,
    "fn_metrics": types.MetricSample,
    "fn_schema_state": types.SchemaObject,
    "fn_my_allocations": types.Allocation,
    "fn_reservations_list": types.ReservationInfo,
    "fn_ledger_adjust": types.LedgerAdjustment,
    "fn_ledger_digest": types.LedgerHead,
    "fn_ledger_export": types.LedgerEntry,
    "fn_ledger_identity": types.DatabaseIdentity,
    "fn_ledger_verify": types.LedgerVerification,
    "fn_pricing_history": types.PricingSnapshot,
    "fn_reconcile": types.ReconcileDrift,
    "fn_reconcile_repair": types.ReconcileDrift,
    "fn_replay_reservation": types.ReplayedOperation,
    "fn_replay_usage": types.ReplayedUsage,
    "fn_pricing_list": types.PricingEntry,
    "fn_settings_list": types.Setting,
    "fn_shadow_report": types.ShadowReportRow,
    "fn_spend_sources_list": types.SpendSource,
    "fn_workspace_billing_mode": types.BillingMode,
}
#: RPCs with result columns that the client reads as a plain value.
SCALAR_RESULTS = {"fn_cost_release"}  # released_micros: int
#: Result types built in Python, not from one RPC's row.
PYTHON_ONLY_TYPES = {types.SpooledReservation, types.KekRotation, types.Reason}

#: The Python type of each SQL result type (jsonb columns are decoded per field).
PY_TYPES: dict[str, type[Any]] = {
    "smallint": int,
    "integer": int,
    "bigint": int,
    "numeric": Decimal,
    "text": str,
    "boolean": bool,
    "uuid": UUID,
    "timestamp with time zone": datetime,
}


def rpc_result_columns(conn: Conn) -> dict[str, list[tuple[str, str]]]:
    """Every RPC (fn_*) with result columns (RETURNS TABLE or OUT parameters):
    [(column, SQL type), ...] in order."""
    rows = conn.execute(
        """
        select p.proname, a.name, format_type(a.type, null)
        from pg_proc p
        cross join lateral unnest(p.proargnames, p.proargmodes, p.proallargtypes)
            with ordinality as a(name, mode, type, n)
        where p.pronamespace = 'costwarden'::regnamespace and p.proname like 'fn\\_%%'
          and a.mode in ('t', 'o')
        order by p.proname, a.n
        """
    ).fetchall()
    out: dict[str, list[tuple[str, str]]] = {}
    for name, column, sql_type in rows:
        out.setdefault(name, []).append((column, sql_type))
    return out


def python_type(annotation: Any) -> Any:
    """``X | None`` -> X; other annotations unchanged."""
    if isinstance(annotation, pytypes.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def test_every_rpc_with_result_columns_has_its_result_type(admin_conn: Conn) -> None:
    rpcs = rpc_result_columns(admin_conn)
    assert set(rpcs) == set(RESULT_TYPES) | SCALAR_RESULTS
    assert all(len(rpcs[name]) == 1 for name in SCALAR_RESULTS), {
        n: rpcs[n] for n in SCALAR_RESULTS
    }
    # every frozen result type of costwarden.types is one of them or built in Python
    declared = {
        obj
        for obj in vars(types).values()
        if isinstance(obj, type)
        and dataclasses.is_dataclass(obj)
        and obj.__module__ == types.__name__
    }
    assert declared == set(RESULT_TYPES.values()) | PYTHON_ONLY_TYPES


@pytest.mark.parametrize("rpc", sorted(RESULT_TYPES))
def test_result_type_fields_match_the_rpc_columns(admin_conn: Conn, rpc: str) -> None:
    columns = rpc_result_columns(admin_conn).get(rpc)
    assert columns is not None, f"{rpc} has no result columns"
    cls = RESULT_TYPES[rpc]
    params = getattr(cls, "__dataclass_params__", None)
    assert params is not None and params.frozen, f"{cls.__name__} is not a frozen dataclass"
    assert [f.name for f in dataclasses.fields(cls)] == [name for name, _ in columns]
    hints = typing.get_type_hints(cls)
    for name, sql_type in columns:
        if sql_type == "jsonb":
            continue  # decoded by the client (a dict, a tuple of Reason, any JSON value)
        assert sql_type in PY_TYPES, f"{rpc}.{name}: no Python type for {sql_type}"
        assert python_type(hints[name]) is PY_TYPES[sql_type], (rpc, name, sql_type, hints[name])


def test_setting_value_types_match_sql(admin_conn: Conn) -> None:
    values = check_values(admin_conn, "_setting_defs", "value_type")
    assert values == {"boolean", "integer", "numeric", "interval", "enum"}
    used = {
        r[0] for r in admin_conn.execute("select distinct value_type from costwarden._setting_defs")
    }
    assert used <= values
