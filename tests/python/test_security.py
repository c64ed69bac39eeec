"""Privileges and function hygiene (SPEC §0, §9), checked generically over pg_proc and
pg_class so that every function and table added later is covered too."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cwtest import ROLES, expect_sqlstate, run_as

Conn = psycopg.Connection[Any]

#: SPEC §9: the tenant role runs these and nothing else (fn_my_allocations: SPEC §13's
#: /v1/me/allocations, the tenant's own keys through fn_spend_summary).
TENANT_RPCS = frozenset(
    {"fn_get_my_cost_reservations", "fn_budget_status", "fn_spend_summary", "fn_my_allocations"}
)

#: SPEC §1, §2, §4, §5, §6: admin functions the service and tenant roles must not run.
ADMIN_ONLY = frozenset(
    {
        "fn_org_upsert",
        "fn_workspace_upsert",
        "fn_workspace_seed_model",
        "fn_user_upsert",
        "fn_key_upsert",
        "fn_model_upsert",
        "fn_pricing_set",
        "fn_budget_set",
        "fn_setting_set",
        "fn_settings_list",
        "fn_audit_list",
        "fn_byok_key_put",
        "fn_byok_key_revoke",
        "fn_ledger_adjust",
        "fn_anomaly_ack",
        "fn_reservations_list",
        "fn_spend_reports_quarantined",
        "fn_spend_report_resolve",
    }
)

#: Saga writes (SPEC §3, §6) the tenant role must not run.
SAGA_WRITES = frozenset(
    {
        "fn_cost_reserve",
        "fn_cost_meter_tick",
        "fn_cost_commit",
        "fn_cost_release",
        "fn_cost_expire_reservations",
        "fn_byok_key_resolve_v2",
        "fn_provider_report",
        "fn_spend_report_cumulative",
        "fn_detect_spend_anomalies",
    }
)

#: Write-only views of the API: callers may INSERT (COPY ... FROM STDIN) into them and do
#: nothing else. costwarden.secret_input is the unlogged input channel for BYOK secrets and
#: the KEK (sql/functions/10_byok_keys.sql); the tenant role has no use for it.
WRITE_ONLY_VIEWS: dict[str, frozenset[str]] = {
    "secret_input": frozenset({"costwarden_admin", "costwarden_service"}),
    "secret_input_base64": frozenset({"costwarden_admin", "costwarden_service"}),
}

PINNED = "search_path=pg_catalog, pg_temp"


@dataclass(frozen=True)
class Fn:
    oid: int
    signature: str  # regprocedure, e.g. costwarden.fn_org_upsert(text,jsonb)
    name: str
    arg_types: tuple[str, ...]
    arg_names: tuple[str, ...]  # of the input arguments
    security_definer: bool
    config: tuple[str, ...]
    strict: bool
    from_extension: bool
    kind: str  # f function, p procedure, a aggregate, w window

    def null_call(self) -> sql.Composable:
        """A call of this function with every argument NULL (for privilege checks)."""
        args = sql.SQL(", ").join(sql.SQL("null::{}").format(sql.SQL(t)) for t in self.arg_types)
        return sql.SQL("select costwarden.{}({})").format(sql.Identifier(self.name), args)


def functions(conn: Conn) -> list[Fn]:
    rows = conn.execute(
        """
        select p.oid, p.oid::regprocedure::text, p.proname,
               coalesce(array(select format_type(t, null) from unnest(p.proargtypes) as t), '{}'),
               coalesce(array(
                   select a.n from unnest(p.proargnames) with ordinality as a (n, i)
                   where coalesce(p.proargmodes[a.i], 'i') in ('i', 'b', 'v')
                   order by a.i), '{}'),
               p.prosecdef, coalesce(p.proconfig, '{}'),
               p.proisstrict,
               exists (select from pg_depend d
                       where d.classid = 'pg_proc'::regclass and d.objid = p.oid
                         and d.deptype = 'e'),
               p.prokind
        from pg_proc p
        where p.pronamespace = 'costwarden'::regnamespace
        order by p.proname, p.oid
        """
    ).fetchall()
    return [
        Fn(r[0], r[1], r[2], tuple(r[3]), tuple(r[4]), r[5], tuple(r[6]), r[7], r[8], r[9])
        for r in rows
    ]


def rpcs(conn: Conn) -> list[Fn]:
    return [f for f in functions(conn) if f.name.startswith("fn_") and not f.from_extension]


def can_execute(conn: Conn, role: str, fn: Fn) -> bool:
    row = conn.execute(
        "select has_function_privilege(%s, %s, 'execute')", (role, fn.oid)
    ).fetchone()
    return bool(row and row[0])


@pytest.fixture
def nobody(admin_conn: Conn) -> Iterator[str]:
    """A fresh login role with no grants at all (roles are cluster-wide: dropped after)."""
    name = f"cw_nobody_{os.getpid()}"
    admin_conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))
    admin_conn.execute(sql.SQL("create role {} login").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        admin_conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


def test_there_are_rpcs_to_check(admin_conn: Conn) -> None:
    names = {f.name for f in rpcs(admin_conn)}
    assert {"fn_org_upsert", "fn_cost_quote", "fn_setting_set"} <= names


def test_public_executes_nothing(admin_conn: Conn, nobody: str) -> None:
    every = functions(admin_conn)
    assert [f.signature for f in every if can_execute(admin_conn, "public", f)] == []
    assert [f.signature for f in every if can_execute(admin_conn, nobody, f)] == []
    for priv in ("usage", "create"):
        row = admin_conn.execute(
            "select has_schema_privilege('public', 'costwarden', %s), "
            "has_schema_privilege(%s, 'costwarden', %s)",
            (priv, nobody, priv),
        ).fetchone()
        assert row == (False, False), priv
    # and it really cannot call anything
    for fn in rpcs(admin_conn):
        expect_sqlstate(admin_conn, "42501", fn.null_call(), role=nobody)


def test_rpcs_are_security_definer_with_pinned_search_path(admin_conn: Conn) -> None:
    bad = [
        f.signature for f in rpcs(admin_conn) if not f.security_definer or PINNED not in f.config
    ]
    assert bad == []
    # any other SECURITY DEFINER function pins its search_path as well (dblink's own
    # dblink_connect_u excepted: superusers only, PUBLIC's EXECUTE revoked)
    unpinned = [
        f.signature
        for f in functions(admin_conn)
        if f.security_definer and PINNED not in f.config and not f.from_extension
    ]
    assert unpinned == []


def test_no_function_is_strict(admin_conn: Conn) -> None:
    strict = [f.signature for f in functions(admin_conn) if f.strict and not f.from_extension]
    assert strict == []


def test_rpc_arguments_are_named(admin_conn: Conn) -> None:
    """Every RPC accepts named arguments p_*."""
    bad = [
        f.signature
        for f in rpcs(admin_conn)
        if len(f.arg_names) != len(f.arg_types) or not all(n.startswith("p_") for n in f.arg_names)
    ]
    assert bad == []


def test_no_relation_is_granted(admin_conn: Conn) -> None:
    rels = admin_conn.execute(
        "select c.oid, c.relname, c.relkind from pg_class c "
        "where c.relnamespace = 'costwarden'::regnamespace "
        "and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S') order by 1"
    ).fetchall()
    assert rels, "no relations found"
    offenders = []
    for oid, name, kind in rels:
        for role in (*ROLES, "public"):
            if kind == "S":
                query = "select has_sequence_privilege(%s, %s, 'usage, select, update')"
                params: tuple[Any, ...] = (role, oid)
            else:
                writes_only = kind == "v" and role in WRITE_ONLY_VIEWS.get(name, ())
                privileges = "select, update, delete, truncate, references, trigger"
                columns = "select, update, references"
                if not writes_only:
                    privileges += ", insert"
                    columns += ", insert"
                query = (
                    f"select has_table_privilege(%s, %s, '{privileges}') "
                    f"or has_any_column_privilege(%s, %s, '{columns}')"
                )
                params = (role, oid, role, oid)
            row = admin_conn.execute(query, params).fetchone()
            if row and row[0]:
                offenders.append((role, name))
    assert offenders == []


def test_write_only_views_are_write_only(admin_conn: Conn) -> None:
    for view, roles in WRITE_ONLY_VIEWS.items():
        row = admin_conn.execute("select to_regclass(%s)", (f"costwarden.{view}",)).fetchone()
        if row is None or row[0] is None:
            continue
        for role in roles:
            expect_sqlstate(
                admin_conn,
                "42501",
                sql.SQL("select * from costwarden.{}").format(sql.Identifier(view)),
                role=role,
            )


def test_tables_are_not_readable_by_the_roles(admin_conn: Conn) -> None:
    for role in ROLES:
        expect_sqlstate(admin_conn, "42501", "select * from costwarden._orgs", role=role)
        expect_sqlstate(
            admin_conn, "42501", "select * from costwarden._pricing_snapshots", role=role
        )
        expect_sqlstate(
            admin_conn,
            "42501",
            "insert into costwarden._settings (key, value) values ('billing_enforce', 'false')",
            role=role,
        )


def test_tenant_executes_only_self_service(admin_conn: Conn) -> None:
    every = functions(admin_conn)
    allowed = {f.name for f in every if can_execute(admin_conn, "costwarden_tenant", f)}
    assert allowed <= TENANT_RPCS, allowed - TENANT_RPCS
    present = {f.name for f in every} & TENANT_RPCS
    assert allowed == present
    for fn in every:
        if fn.name not in TENANT_RPCS and fn.name.startswith("fn_"):
            expect_sqlstate(admin_conn, "42501", fn.null_call(), role="costwarden_tenant")
    assert not (allowed & (ADMIN_ONLY | SAGA_WRITES))


def test_service_cannot_run_admin_functions(admin_conn: Conn) -> None:
    admin_fns = [f for f in rpcs(admin_conn) if f.name in ADMIN_ONLY]
    assert len(admin_fns) >= 10
    for fn in admin_fns:
        assert not can_execute(admin_conn, "costwarden_service", fn), fn.signature
        assert can_execute(admin_conn, "costwarden_admin", fn), fn.signature
        expect_sqlstate(admin_conn, "42501", fn.null_call(), role="costwarden_service")


def test_admin_runs_everything_the_service_runs(admin_conn: Conn) -> None:
    every = rpcs(admin_conn)
    missing = [
        f.signature
        for f in every
        if can_execute(admin_conn, "costwarden_service", f)
        and not can_execute(admin_conn, "costwarden_admin", f)
    ]
    assert missing == []


def test_every_rpc_is_reachable_by_some_role(admin_conn: Conn) -> None:
    unreachable = [
        f.signature
        for f in rpcs(admin_conn)
        if not any(can_execute(admin_conn, r, f) for r in ROLES)
    ]
    assert unreachable == []


def test_internal_functions_are_not_granted(admin_conn: Conn) -> None:
    internal = [f for f in functions(admin_conn) if not f.name.startswith("fn_")]
    assert internal
    granted = [(r, f.signature) for f in internal for r in ROLES if can_execute(admin_conn, r, f)]
    assert granted == []


def test_roles(admin_conn: Conn) -> None:
    rows = admin_conn.execute(
        "select rolname, rolcanlogin, rolsuper, rolinherit from pg_roles "
        "where rolname = any(%s) order by 1",
        (list(ROLES),),
    ).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [(r, False, False) for r in sorted(ROLES)]

    def member(role: str, of: str) -> bool:
        row = admin_conn.execute("select pg_has_role(%s, %s, 'member')", (role, of)).fetchone()
        return bool(row and row[0])

    assert member("costwarden_admin", "costwarden_service")
    assert not member("costwarden_service", "costwarden_admin")
    assert not member("costwarden_tenant", "costwarden_service")
    assert not member("costwarden_tenant", "costwarden_admin")
    for role in ROLES:
        row = admin_conn.execute(
            "select has_schema_privilege(%s, 'costwarden', 'usage'), "
            "has_schema_privilege(%s, 'costwarden', 'create')",
            (role, role),
        ).fetchone()
        assert row == (True, False), role


def test_roles_really_run_what_they_are_granted(admin_conn: Conn) -> None:
    """Granted calls run (or get past the privilege check and fail on their arguments)."""
    for role in ("costwarden_admin", "costwarden_service"):
        assert run_as(
            admin_conn, role, "select costwarden.fn_setting_get(%s)", ("billing_enforce",)
        ) == [(True,)]
    assert run_as(
        admin_conn,
        "costwarden_tenant",
        "select current_user, has_function_privilege(current_user, "
        "'costwarden.fn_setting_get(text)', 'execute')",
    ) == [("costwarden_tenant", False)]
    admin_conn.execute("select costwarden.fn_org_upsert('acme')")
    admin_conn.execute("select costwarden.fn_workspace_upsert('acme', 'w')")
    expect_sqlstate(
        admin_conn,
        "CW004",
        "select costwarden.fn_setting_set('nope', 'true')",
        role="costwarden_admin",
    )
    expect_sqlstate(
        admin_conn,
        "CW002",
        "select * from costwarden.fn_cost_quote('acme', 'w', 'x/y', '{}')",
        role="costwarden_service",
    )
    expect_sqlstate(
        admin_conn,
        "CW002",
        "select * from costwarden.fn_cost_quote('acme', 'w', 'x/y', '{}')",
        role="costwarden_admin",
    )
