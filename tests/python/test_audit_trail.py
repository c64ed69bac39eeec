"""The admin audit trail (SPEC §6): every admin change records who, what, before and
after, append-only -- checked generically over every admin function -- and
`costwarden audit` lists it."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from click.testing import CliRunner

import costwarden
from costwarden.cli import main
from cwtest import Seeded, expect_sqlstate

Conn = psycopg.Connection[Any]
KEK = "k" * 40
PUT = "select costwarden.fn_byok_key_put('acme', 'ws-vendor', 'anthropic', 'sk-ant-0123456789ab')"

#: One call of every admin function that changes something, with what it needs
#: first. A new admin function without a sample here fails the generic test.
SAMPLES: dict[str, tuple[str, str]] = {
    "fn_setting_set": ("", "select costwarden.fn_setting_set('anomaly_freeze', 'true')"),
    "fn_org_upsert": ("", "select costwarden.fn_org_upsert('acme', '{\"timezone\": \"UTC\"}')"),
    "fn_workspace_upsert": ("", "select costwarden.fn_workspace_upsert('acme', 'ws-new')"),
    "fn_workspace_seed_model": (
        "",
        "select costwarden.fn_workspace_seed_model('acme', 'ws-empty', 'openai/gpt-4o')",
    ),
    "fn_user_upsert": ("", "select costwarden.fn_user_upsert('acme', 'carol', array['eng'])"),
    "fn_key_upsert": ("", "select costwarden.fn_key_upsert('acme', 'key-2', 'ws-platform')"),
    "fn_model_upsert": ("", "select costwarden.fn_model_upsert('openai/gpt-5', true)"),
    "fn_pricing_set": (
        "",
        "select costwarden.fn_pricing_set('openai/gpt-4o', '{\"input_tokens\": 0.000001}')",
    ),
    "fn_budget_set": ("", "select costwarden.fn_budget_set('acme', 'org', null, 'day', 1000)"),
    "fn_ledger_adjust": (
        "",
        "select * from costwarden.fn_ledger_adjust('acme', 'ws-platform', -100, 'refund')",
    ),
    "fn_byok_key_put": ("", PUT),
    "fn_byok_key_revoke": (
        PUT,
        "select costwarden.fn_byok_key_revoke('acme', 'ws-vendor', 'anthropic')",
    ),
    "fn_byok_kek_rotate": (
        PUT,
        "select * from costwarden.fn_byok_kek_rotate()",
    ),
    "fn_circuit_reset": ("", "select costwarden.fn_circuit_reset('openai')"),
    "fn_reconcile_repair": (
        "update costwarden._pools set held_micros = held_micros + 5 "
        "where org_id = 'acme' and kind = 'org'",
        "select * from costwarden.fn_reconcile_repair('acme', (select d.pool_id from "
        "costwarden.fn_reconcile('acme') as d limit 1), 'a hold leaked')",
    ),
    "fn_tenant_login_bind": (
        # a tenant login (an actor of one org binds only those); rolled back with the rest
        "create role cw_audit_portal login in role costwarden_tenant",
        "select costwarden.fn_tenant_login_bind('cw_audit_portal', 'acme', 'alice')",
    ),
    "fn_tenant_login_unbind": (
        "create role cw_audit_portal login in role costwarden_tenant;"
        "select costwarden.fn_tenant_login_bind('cw_audit_portal', 'acme', 'alice')",
        "select costwarden.fn_tenant_login_unbind('cw_audit_portal')",
    ),
    "fn_spend_source_set": (
        "",
        "select costwarden.fn_spend_source_set('acme', 'ws-platform', 'gw', 'key-1')",
    ),
    "fn_spend_report_resolve": (
        "select costwarden.fn_setting_set('spend_report_max_delta_micros', '10');"
        "select costwarden.fn_spend_report_cumulative('acme', 'ws-platform', 'o', 5000)",
        "select costwarden.fn_spend_report_resolve(q.report_id, true)"
        " from costwarden.fn_spend_reports_quarantined('acme') as q",
    ),
    "fn_anomaly_ack": (
        "select costwarden.fn_spend_report_cumulative('acme', 'ws-platform', 'b', 5000000);"
        "select costwarden.fn_detect_spend_anomalies()",
        "select costwarden.fn_anomaly_ack(a.anomaly_id)"
        " from costwarden.fn_anomalies_list('acme') as a",
    ),
}

#: The admin changes that every org shares (no org of their own).
SHARED = {
    "fn_byok_kek_rotate",
    "fn_circuit_reset",
    "fn_model_upsert",
    "fn_pricing_set",
    "fn_setting_set",
}


def admin_changers(conn: Conn) -> set[str]:
    """Volatile functions only the admin role may run: the admin changes."""
    rows = conn.execute(
        "select p.proname from pg_proc p where p.pronamespace = 'costwarden'::regnamespace "
        "and p.proname like 'fn\\_%' and p.provolatile = 'v' "
        "and has_function_privilege('costwarden_admin', p.oid, 'execute') "
        "and not has_function_privilege('costwarden_service', p.oid, 'execute')"
    ).fetchall()
    return {r[0] for r in rows}


def test_every_admin_change_is_audited(admin_conn: Conn, seeded: Seeded) -> None:
    functions = admin_changers(admin_conn)
    assert "fn_anomaly_ack" in functions and "fn_budget_set" in functions
    missing = functions - set(SAMPLES)
    assert not missing, f"add a sample call for {sorted(missing)} to SAMPLES"
    problems = []
    for name in sorted(functions):
        setup, call = SAMPLES[name]
        with admin_conn.transaction(force_rollback=True):
            admin_conn.execute(
                "select set_config('costwarden.kek', %s, true), "
                "set_config('costwarden.kek_new', %s, true)",
                (KEK, "n" * 40),
            )
            for statement in filter(None, setup.split(";")):
                admin_conn.execute(statement)
            # a change every org shares is made by an actor of no org (an actor of one
            # org is confined to it: test_actor_confinement.py)
            admin_conn.execute(
                "select set_config('costwarden.actor_org', %s, true), "
                "set_config('costwarden.actor_user', 'ops-alice', true)",
                ("" if name in SHARED else "acme",),
            )
            before = admin_conn.execute(
                "select coalesce(max(audit_id), 0) from costwarden._audit_log"
            )
            last = before.fetchone()[0]  # type: ignore[index]
            admin_conn.execute("set local role costwarden_admin")
            admin_conn.execute(call)
            admin_conn.execute("reset role")
            rows = admin_conn.execute(
                "select db_role, actor_org, actor_user, action, target, before, after "
                "from costwarden._audit_log where audit_id > %s order by audit_id",
                (last,),
            ).fetchall()
        if not rows:
            problems.append(f"{name}: no audit row")
            continue
        db_role, actor_org, actor_user, action, target, _before, after = rows[-1]
        org = None if name in SHARED else "acme"
        if (db_role, actor_org, actor_user) != ("postgres", org, "ops-alice"):
            problems.append(f"{name}: who = {(db_role, actor_org, actor_user)}")
        if not action or not target:
            problems.append(f"{name}: what = {(action, target)}")
        if after is None and "revoke" not in name:
            problems.append(f"{name}: no after state")
    assert not problems, problems


def test_the_audit_log_is_append_only(
    admin_conn: Conn, client: costwarden.Client, seeded: Seeded
) -> None:
    for statement in (
        "update costwarden._audit_log set action = 'x'",
        "delete from costwarden._audit_log",
        "truncate costwarden._audit_log",
    ):
        expect_sqlstate(admin_conn, "CW001", statement, match="append-only")
    client.reset_circuit("openai")  # a circuit event: its history is append-only too
    for statement in (
        "delete from costwarden._circuit_events",
        "truncate costwarden._circuit_events",
    ):
        expect_sqlstate(admin_conn, "CW001", statement)


def test_the_audit_list_filters(client: costwarden.Client, seeded: Seeded) -> None:
    client.set_budget("acme", "workspace", seeded.ws_platform, "day", 500)
    client.set_budget("acme", "workspace", seeded.ws_platform, "day", 700)
    [latest, first] = client.audit(org_id="acme", action="budget_set")
    assert (first.before, first.after) == (None, {"limit": 500, "mode": "enforce"})
    assert (latest.before, latest.after) == (
        {"limit": 500, "mode": "enforce"},
        {"limit": 700, "mode": "enforce"},
    )
    assert len(client.audit(limit=1)) == 1
    assert client.audit(org_id="globex", action="budget_set") == []


def test_costwarden_audit_command(client: costwarden.Client, seeded: Seeded, dsn: str) -> None:
    client.set_budget("acme", "workspace", seeded.ws_platform, "day", 500)
    runner = CliRunner()
    result = runner.invoke(
        main, ["--dsn", dsn, "audit", "--org", "acme", "--action", "budget_set", "--since", "1h"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:5] == ["id", "at", "who", "action", "org"]
    assert len(lines) == 3 and "budget_set" in lines[2] and '"limit": 500' in lines[2]
    result = runner.invoke(main, ["--dsn", dsn, "audit", "--json", "--limit", "2"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)) == 2
    result = runner.invoke(main, ["--dsn", dsn, "audit", "--since", "tomorrow"])
    assert result.exit_code != 0 and "7d / 24h / 30m" in result.output
