"""Hostile objects (SPEC §0, §12; docs/threat-model.md): a role that may create objects in
schema public and in its own pg_temp shadows built-in functions and operators that
costwarden's SQL uses, then drives costwarden from a session whose search_path puts
its shadows first. Every shadow raises; nothing costwarden runs may call one. A control
proves the shadows do fire for the session's own unqualified SQL."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from cwtest import Seeded

Conn = psycopg.Connection[Any]
KEK = "hostile-kek-0123456789abcdefghijklmnopqrs"

#: (name, argument types, result): built-ins costwarden's functions call.
SHADOWED_FUNCTIONS = (
    ("btrim", "text", "text"),
    ("length", "text", "integer"),
    ("lower", "text", "text"),
    ("left", "text, integer", "text"),
    ("format", "text, text", "text"),
    ("now", "", "timestamptz"),
    ("clock_timestamp", "", "timestamptz"),
    ("md5", "text", "text"),
    ("sha256", "bytea", "bytea"),
    ("encode", "bytea, text", "text"),
    ("decode", "text, text", "bytea"),
    ("convert_to", "text, name", "bytea"),
    ("convert_from", "bytea, name", "text"),
    ("hashtext", "text", "integer"),
    ("hashtextextended", "text, bigint", "bigint"),
    ("to_hex", "integer", "text"),
    ("gen_random_uuid", "", "uuid"),
    ("jsonb_typeof", "jsonb", "text"),
    ("jsonb_build_object", "text, text", "jsonb"),
    ("jsonb_build_array", "text", "jsonb"),
    ("set_config", "text, text, boolean", "text"),
    ("current_setting", "text, boolean", "text"),
    ("current_setting", "text", "text"),
    ("pg_notify", "text, text", "void"),
    ("pg_has_role", "name, text, text", "boolean"),
    ("date_trunc", "text, timestamptz", "timestamptz"),
    ("gen_random_bytes", "integer", "bytea"),
    ("hmac", "bytea, bytea, text", "bytea"),
    ("pgp_sym_encrypt", "text, text, text", "bytea"),
    ("pgp_sym_encrypt_bytea", "bytea, text, text", "bytea"),
    ("pgp_sym_decrypt", "bytea, text", "text"),
    ("pgp_sym_decrypt_bytea", "bytea, text", "bytea"),
)
#: (operator, left, right, result)
SHADOWED_OPERATORS = (
    ("=", "text", "text", "boolean"),
    ("<>", "text", "text", "boolean"),
    ("||", "text", "text", "text"),
    ("+", "bigint", "bigint", "bigint"),
    ("<=", "timestamptz", "timestamptz", "boolean"),
    ("->>", "jsonb", "text", "text"),
)


@pytest.fixture
def hostile(dsn: str, admin_conn: Conn) -> Iterator[str]:
    """A login with admin and service rights that may create objects in public."""
    name = f"cw_hostile_{uuid.uuid4().hex[:8]}"
    admin_conn.execute(sql.SQL("create role {} login").format(sql.Identifier(name)))
    admin_conn.execute(
        sql.SQL("grant costwarden_admin, costwarden_authenticator to {}").format(
            sql.Identifier(name)
        )
    )
    admin_conn.execute(sql.SQL("grant create on schema public to {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        admin_conn.execute(sql.SQL("drop owned by {} cascade").format(sql.Identifier(name)))
        admin_conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


def _shadow(conn: Conn, schema: str) -> int:
    made = 0
    for i, (name, args, result) in enumerate(SHADOWED_FUNCTIONS):
        params = ", ".join(f"a{j} {t}" for j, t in enumerate(filter(None, args.split(", "))))
        conn.execute(
            f"create function {schema}.{name}({params}) returns {result} language plpgsql "
            f"as $$begin raise exception 'hijacked: {schema}.{name}({args}) #{i}'; end$$"
        )
        made += 1
    for i, (op, left, right, result) in enumerate(SHADOWED_OPERATORS):
        fn = f"{schema}.hijack_op_{i}"
        conn.execute(
            f"create function {fn}(a {left}, b {right}) returns {result} language plpgsql "
            f"as $$begin raise exception 'hijacked: operator {op}({left}, {right})'; end$$"
        )
        conn.execute(
            f"create operator {schema}.{op} (leftarg = {left}, rightarg = {right}, function = {fn})"
        )
        made += 1
    return made


WORKLOAD = [
    "select costwarden.fn_org_upsert('hostile-org')",
    "select costwarden.fn_workspace_upsert('acme', 'ws-h', 'anthropic/claude-3-5-sonnet')",
    "select costwarden.fn_user_upsert('acme', 'carol', array['eng'])",
    "select costwarden.fn_budget_set('acme', 'workspace', 'ws-platform', 'day', 100000000)",
    "select * from costwarden.fn_cost_quote('acme', 'ws-platform', 'openai/gpt-4o', "
    "'{\"input_tokens\": 100}')",
    "select * from costwarden.fn_budget_status('acme', 'workspace', 'ws-platform')",
    "select costwarden.fn_spend_report_cumulative('acme', 'ws-platform', 'h', 2000000)",
    "select costwarden.fn_provider_report('openai', false, 'HTTP 500')",
    "select costwarden.fn_provider_report('openai', true)",
    "select costwarden.fn_detect_spend_anomalies()",
    "select * from costwarden.fn_ledger_verify()",
    "select * from costwarden.fn_audit_list('acme')",
    "select costwarden.fn_setting_set('anomaly_sigma', '5')",
    "select costwarden.fn_cost_expire_reservations()",
    "select costwarden.fn_maintenance()",
]


def _saga(conn: Conn) -> None:
    row = conn.execute(
        "select reservation_id, status from costwarden.fn_cost_reserve('acme', 'ws-platform', "
        "'openai/gpt-4o', '{\"input_tokens\": 100, \"output_tokens\": 10}', "
        "p_user_id => 'alice', p_idempotency_key => 'h-1')"
    ).fetchone()
    assert row is not None and row[1] == "held"
    conn.execute(
        "select * from costwarden.fn_cost_meter_tick(%s, '{\"input_tokens\": 50}')", (row[0],)
    )
    conn.execute(
        'select * from costwarden.fn_cost_commit(%s, \'{"input_tokens": 100, '
        '"output_tokens": 5}\')',
        (row[0],),
    )
    # BYOK: put, reserve, resolve, rotate (the KEK through the framed channel)
    with conn.transaction():
        with conn.cursor().copy("copy costwarden.secret_input_base64 (line) from stdin") as cp:
            cp.write_row(("kek:" + base64.b64encode(KEK.encode()).decode(),))
        conn.execute(
            "select costwarden.fn_byok_key_put('acme', 'ws-vendor', 'anthropic', "
            "'sk-ant-api03-hostile-0123456789')"
        )
        r = conn.execute(
            "select reservation_id from costwarden.fn_cost_reserve('acme', 'ws-vendor', "
            "'anthropic/claude-3-5-sonnet', '{\"input_tokens\": 100}')"
        ).fetchone()
        assert r is not None
        got = conn.execute(
            "select secret from costwarden.fn_byok_key_resolve_v2(%s)", (r[0],)
        ).fetchone()
        assert got == ("sk-ant-api03-hostile-0123456789",)
        conn.execute("select costwarden.fn_cost_release(%s)", (r[0],))


def test_nothing_in_costwarden_calls_a_shadowing_object(
    dsn: str, seeded: Seeded, hostile: str
) -> None:
    with psycopg.connect(make_conninfo(dsn, user=hostile), autocommit=True) as conn:
        assert _shadow(conn, "public") == len(SHADOWED_FUNCTIONS) + len(SHADOWED_OPERATORS)
        conn.execute("create temp table _setup_pg_temp (x int)")  # this session's pg_temp
        made = _shadow(conn, "pg_temp")
        assert made == len(SHADOWED_FUNCTIONS) + len(SHADOWED_OPERATORS)
        conn.execute("set search_path = pg_temp, public, pg_catalog")

        # control: the shadows in public do fire for this session's unqualified SQL
        for probe in ("select btrim('x')", "select 'a'::text = 'b'::text", "select now()"):
            with pytest.raises(psycopg.Error, match="hijacked"), conn.transaction():
                conn.execute(probe)

        failures = []
        for statement in WORKLOAD:
            try:
                with conn.transaction():
                    conn.execute(statement)
            except psycopg.Error as exc:
                failures.append(f"{statement}: {exc}")
        try:
            _saga(conn)
        except psycopg.Error as exc:
            failures.append(f"saga: {exc}")
        assert not failures, failures
