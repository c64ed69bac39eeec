"""A caller whose actor names an org is confined to it, whatever its role (SPEC §9, §12).

An admin or service token with an ``org_id`` (an HTTP layer's claims, the actor settings
of a trusted session, a login binding) reaches only that org: every RPC that names an
org, or reaches one through a reservation, an anomaly or a report, refuses another org
with CW005 and writes nothing; a call for every org, or a change every org shares
(settings, models, prices, circuits, the KEK), is refused to it. A privileged caller
with no actor is not restricted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

import costwarden
from cwtest import Seeded, table_snapshot
from test_hardening import make_login

__all__ = ["make_login"]

Conn = psycopg.Connection[Any]

USAGE = json.dumps({"input_tokens": 100, "output_tokens": 50})


@contextmanager
def acting(conn: Conn, role: str, org: str | None, user: str | None = "someone") -> Iterator[Conn]:
    """A transaction (rolled back) as ``role`` with ``org`` as the actor's org, the way
    an HTTP layer logged in as a member of costwarden_authenticator sets it."""
    with conn.transaction(force_rollback=True):
        conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        if org is not None:
            claims = {"org_id": org, "sub": user, "role": role}
            conn.execute("select set_config('request.jwt.claims', %s, true)", [json.dumps(claims)])
        yield conn


def refused_to(conn: Conn, role: str, org: str, query: str, params: Any, match: str) -> None:
    """``query`` as ``role`` acting for ``org`` is CW005 naming ``match`` and writes nothing."""
    before = table_snapshot(conn)
    with pytest.raises(psycopg.Error) as info, acting(conn, role, org):
        conn.execute(query, params)
    err = info.value
    assert err.sqlstate == "CW005", f"{query}: {err.sqlstate} {err.diag.message_primary}"
    assert match in (err.diag.message_primary or ""), err.diag.message_primary
    assert table_snapshot(conn) == before, f"{query} wrote something before it was refused"


@pytest.fixture
def held_in_other_org(client: costwarden.Client, seeded: Seeded) -> str:
    """A held reservation of the other org, made by a caller without an actor."""
    r = client.reserve(seeded.other_org, seeded.other_ws, seeded.platform_model, json.loads(USAGE))
    assert r.status == "held"
    return str(r.reservation_id)


# Calls of an admin acting for the seeded org that reach the other org ("globex").
ADMIN_ON_OTHER_ORG = [
    ("select costwarden.fn_budget_set('globex', 'org', null, 'day', 0)", None),
    ("select costwarden.fn_budget_set('globex', 'workspace', 'ws-main', 'month', 1)", None),
    ("select costwarden.fn_org_upsert('globex', '{\"timezone\": \"UTC\"}')", None),
    ("select costwarden.fn_workspace_upsert('globex', 'ws-main', null, 'byok')", None),
    ("select costwarden.fn_user_upsert('globex', 'mallory', array['eng'])", None),
    ("select costwarden.fn_key_upsert('globex', 'k-x', 'ws-main', null)", None),
    ("select costwarden.fn_byok_key_revoke('globex', 'ws-main', 'openai')", None),
    ("select * from costwarden.fn_byok_key_list('globex')", None),
    ("select costwarden.fn_ledger_adjust('globex', 'ws-main', 1000, 'credit')", None),
    ("select * from costwarden.fn_ledger_export('globex')", None),
    ("select costwarden.fn_tenant_login_bind('some_login', 'globex', 'mallory')", None),
    ("select * from costwarden.fn_audit_list('globex')", None),
    ("select * from costwarden.fn_reservations_list('globex')", None),
    ("select * from costwarden.fn_anomalies_list('globex')", None),
    ("select * from costwarden.fn_shadow_report('globex')", None),
    ("select costwarden.fn_spend_source_set('globex', 'ws-main', 'batch')", None),
    ("select * from costwarden.fn_reconcile('globex')", None),
]

# Calls of an admin acting for one org that name no org, or change what every org shares.
ADMIN_FOR_EVERY_ORG = [
    ("select * from costwarden.fn_audit_list(null)", "call for every org"),
    ("select * from costwarden.fn_ledger_export(null)", "call for every org"),
    ("select * from costwarden.fn_ledger_verify(null)", "call for every org"),
    ("select * from costwarden.fn_reconcile(null)", "call for every org"),
    ("select costwarden.fn_setting_set('billing_enforce', 'false')", "every org shares"),
    ("select costwarden.fn_model_upsert('acme-labs/other-1', true)", "every org shares"),
    (
        "select costwarden.fn_pricing_set('openai/gpt-4o', '{\"input_tokens\": 0}', now())",
        "every org shares",
    ),
    ("select costwarden.fn_circuit_reset('openai')", "every org shares"),
    ("select costwarden.fn_byok_kek_rotate()", "every org shares"),
]


@pytest.mark.parametrize(("query", "params"), ADMIN_ON_OTHER_ORG)
def test_an_admin_of_one_org_cannot_reach_another(
    admin_conn: Conn, seeded: Seeded, query: str, params: Any
) -> None:
    refused_to(admin_conn, "costwarden_admin", seeded.org, query, params, "p_org_id:")


@pytest.mark.parametrize(("query", "match"), ADMIN_FOR_EVERY_ORG)
def test_an_admin_of_one_org_cannot_act_for_every_org(
    admin_conn: Conn, seeded: Seeded, query: str, match: str
) -> None:
    refused_to(admin_conn, "costwarden_admin", seeded.org, query, None, match)


def test_a_service_of_one_org_cannot_spend_in_another(
    admin_conn: Conn, seeded: Seeded, held_in_other_org: str
) -> None:
    org = seeded.org
    for query in (
        "select * from costwarden.fn_cost_quote('globex', 'ws-main', 'openai/gpt-4o', %s)",
        "select * from costwarden.fn_cost_reserve('globex', 'ws-main', 'openai/gpt-4o', %s)",
        "select * from costwarden.fn_cost_reserve_many(jsonb_build_array(jsonb_build_object("
        "'org_id', 'globex', 'workspace_id', 'ws-main', 'model', 'openai/gpt-4o',"
        " 'usage', %s::jsonb)))",
        "select costwarden.fn_spend_report_cumulative('globex', 'ws-main', 'batch', 1)",
        "select * from costwarden.fn_workspace_readiness('globex', 'ws-main')",
        "select * from costwarden.fn_ledger_digest('globex')",
    ):
        params = [USAGE] if "%s" in query else None
        refused_to(admin_conn, "costwarden_service", org, query, params, "p_org_id:")
    rid = held_in_other_org
    for query, params in (
        ("select * from costwarden.fn_cost_meter_tick(%s, %s)", [rid, USAGE]),
        ("select * from costwarden.fn_cost_commit(%s, %s)", [rid, USAGE]),
        ("select * from costwarden.fn_cost_release(%s)", [rid]),
        ("select * from costwarden.fn_reservation_get(%s)", [rid]),
        (
            "select * from costwarden.fn_cost_commit_many(jsonb_build_array(jsonb_build_object("
            "'reservation_id', %s::text, 'usage', %s::jsonb)))",
            [rid, USAGE],
        ),
    ):
        refused_to(admin_conn, "costwarden_service", org, query, params, "p_reservation_id:")
    # the reservation is untouched, and its own org's caller can still commit it
    with acting(admin_conn, "costwarden_service", seeded.other_org) as conn:
        row = conn.execute(
            "select * from costwarden.fn_cost_commit(%s, %s)", [rid, USAGE]
        ).fetchone()
        assert row is not None and row[1] > 0


def test_anomalies_and_reports_are_their_orgs(admin_conn: Conn, seeded: Seeded) -> None:
    """Calls keyed by an anomaly's or a quarantined report's id check its org."""
    anomaly = admin_conn.execute(
        "insert into costwarden._anomalies (org_id, workspace_id, hour_start, window_start,"
        " window_end, spent_micros, threshold_micros, frozen) "
        "values ('globex', 'ws-main', date_trunc('hour', now()), now() - interval '1 hour', now(),"
        " 5000000, 1000, true) returning anomaly_id"
    ).fetchone()
    assert anomaly is not None
    refused_to(
        admin_conn,
        "costwarden_admin",
        seeded.org,
        "select costwarden.fn_anomaly_ack(%s)",
        [anomaly[0]],
        "p_anomaly_id:",
    )


def test_a_confined_caller_works_in_its_own_org(admin_conn: Conn, seeded: Seeded) -> None:
    with acting(admin_conn, "costwarden_admin", seeded.org) as conn:
        conn.execute(
            "select costwarden.fn_budget_set('acme', 'workspace', 'ws-platform', 'day', 5000000)"
        )
        rows = conn.execute(
            "select * from costwarden.fn_cost_reserve('acme', 'ws-platform', 'openai/gpt-4o', %s)",
            [USAGE],
        ).fetchall()
        assert rows[0][1] == "held"
        committed = conn.execute(
            "select * from costwarden.fn_cost_commit(%s, %s)", [rows[0][0], USAGE]
        ).fetchone()
        assert committed is not None and committed[1] > 0
        audit = conn.execute(
            "select org_id, actor_org from costwarden.fn_audit_list('acme')"
        ).fetchall()
        assert ("acme", "acme") in audit


def test_a_caller_without_an_actor_is_not_confined(admin_conn: Conn, seeded: Seeded) -> None:
    with acting(admin_conn, "costwarden_admin", None) as conn:
        conn.execute("select costwarden.fn_budget_set('globex', 'org', null, 'day', 1000)")
        conn.execute("select costwarden.fn_setting_set('billing_enforce', 'true')")
        assert conn.execute("select count(*) from costwarden.fn_audit_list(null)").fetchone()


def test_metrics_of_a_confined_caller_are_its_orgs(
    admin_conn: Conn, seeded: Seeded, client: costwarden.Client
) -> None:
    for org, ws in ((seeded.org, seeded.ws_platform), (seeded.other_org, seeded.other_ws)):
        client.set_budget(org, "workspace", ws, "day", 10_000_000)
        client.reserve(org, ws, seeded.platform_model, json.loads(USAGE))

    def orgs(actor: str | None) -> set[str]:
        with acting(admin_conn, "costwarden_service", actor) as conn:
            rows = conn.execute("select labels ->> 'org' from costwarden.fn_metrics()").fetchall()
        return {r[0] for r in rows if r[0] is not None}

    assert orgs(None) == {seeded.org, seeded.other_org}
    assert orgs(seeded.org) == {seeded.org}


# RPCs that reach no org's own rows, so an actor's org does not narrow them: the
# catalogue and its prices, settings, circuits, the KEK's state, the schema, the
# housekeeping jobs, and the two batch RPCs (each element goes through the single call).
NOT_ORG_KEYED = {
    "fn_byok_kek_status",
    "fn_byok_resolve_refusal_record",  # records the server's own signed receipt
    "fn_circuit_history",
    "fn_circuit_status",
    "fn_cost_commit_many",
    "fn_cost_expire_reservations",
    "fn_cost_reserve_many",
    "fn_detect_spend_anomalies",
    "fn_ledger_identity",
    "fn_maintenance",
    "fn_pricing_history",
    "fn_pricing_list",
    "fn_provider_report",
    "fn_schema_state",
    "fn_setting_get",
    "fn_settings_list",
}


def test_every_rpc_that_reaches_an_org_confines_an_actor(admin_conn: Conn) -> None:
    """Each RPC a caller role may run checks the actor's org (``_tenant_guard``), refuses
    a confined actor (``_shared_guard``), reads only the actor's own rows (``_actor``),
    or is listed above as reaching no org's rows."""
    rows = admin_conn.execute(
        """
        select p.proname, p.prosrc
        from pg_proc as p
        where p.pronamespace = 'costwarden'::regnamespace and p.proname like 'fn\\_%'
          and exists (
              select from aclexplode(p.proacl) as a
              where a.grantee in ('costwarden_admin'::regrole, 'costwarden_service'::regrole,
                                  'costwarden_tenant'::regrole)
          )
        """
    ).fetchall()
    assert len(rows) > 50
    unguarded = sorted(
        name
        for name, src in rows
        if name not in NOT_ORG_KEYED
        and not any(g in src for g in ("_tenant_guard(", "_shared_guard(", "_actor()"))
    )
    assert unguarded == []
    stale = sorted(NOT_ORG_KEYED - {name for name, _ in rows})
    assert stale == []


def test_a_providers_error_text_is_read_by_its_reporters_org_only(
    admin_conn: Conn, seeded: Seeded
) -> None:
    """A provider error can quote a fragment of the key of the call that failed: a caller
    confined to one org reads only the texts its own org's callers reported (circuits,
    their history, their alerts); a caller with no actor reads them all."""
    admin_conn.execute("select costwarden.fn_setting_set('circuit_failure_threshold', '1')")
    with admin_conn.transaction():
        admin_conn.execute("set local role costwarden_service")
        claims = {"org_id": "globex", "sub": "svc", "role": "costwarden_service"}
        admin_conn.execute(
            "select set_config('request.jwt.claims', %s, true)", [json.dumps(claims)]
        )
        admin_conn.execute(
            "select costwarden.fn_provider_report('openai', false, 'bad key sk-...9f3a')"
        )
    alert = admin_conn.execute(
        "select max(alert_id) from costwarden._alert_events where kind = 'circuit'"
    ).fetchone()
    assert alert is not None and alert[0] is not None

    def seen(role: str, org: str | None) -> tuple[Any, Any, Any]:
        with acting(admin_conn, role, org) as conn:
            status = conn.execute(
                "select last_error from costwarden.fn_circuit_status() where provider = 'openai'"
            ).fetchone()
            alert_error = conn.execute(
                "select payload -> 'error' from costwarden.fn_alert_get(%s)", [alert[0]]
            ).fetchone()
            history = None
            if role == "costwarden_admin":
                history = conn.execute(
                    "select error from costwarden.fn_circuit_history('openai', 1)"
                ).fetchone()
        assert status is not None and alert_error is not None
        return status[0], alert_error[0], None if history is None else history[0]

    text = "bad key sk-...9f3a"
    assert seen("costwarden_service", "globex") == (text, text, None)
    assert seen("costwarden_admin", "globex") == (text, text, text)
    assert seen("costwarden_admin", None) == (text, text, text)
    assert seen("costwarden_service", "acme") == (None, None, None)
    assert seen("costwarden_admin", "acme") == (None, None, None)


def test_an_admin_of_one_org_binds_only_its_own_tenants_logins(
    admin_conn: Conn, seeded: Seeded, make_login: Any
) -> None:
    """A login bound to another org is not taken over, and a login that serves every org
    (service, admin, authenticator) is not confined, by an admin of one org."""
    other_tenant = make_login("costwarden_tenant")
    admin_conn.execute("select costwarden.fn_tenant_login_bind(%s, 'globex', null)", [other_tenant])
    bind = "select costwarden.fn_tenant_login_bind(%s, 'acme', null)"
    refused_to(admin_conn, "costwarden_admin", seeded.org, bind, [other_tenant], "p_login:")
    for roles in (("costwarden_service",), ("costwarden_admin",), ("costwarden_authenticator",)):
        login = make_login(*roles)
        refused_to(admin_conn, "costwarden_admin", seeded.org, bind, [login], "serves every org")
    own = make_login("costwarden_tenant")
    with acting(admin_conn, "costwarden_admin", seeded.org) as conn:
        conn.execute(bind, [own])
        conn.execute("reset role")
        bound = conn.execute(
            "select org_id from costwarden._tenant_logins where login = %s", [own]
        ).fetchone()
        assert bound == ("acme",)
    # a caller with no actor (the platform's operator) may rebind any login
    with acting(admin_conn, "costwarden_admin", None) as conn:
        conn.execute(bind, [other_tenant])
