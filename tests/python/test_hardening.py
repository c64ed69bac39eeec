"""Adversarial tests of SPEC §12 (docs/threat-model.md): one per finding of the review
that reproduced them, each of which fails on the schema before §12, plus the hostile
object test. Every attacker here is a real database role with a real login."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import costwarden
from costwarden import migrate as cw_migrate
from costwarden.errors import Forbidden
from cwtest import Seeded, expect_sqlstate

Conn = psycopg.Connection[Any]
KEK = "hardening-kek-0123456789abcdefghijklmnop"
VENDOR_SECRET = "sk-ant-api03-hardening-0123456789"

MakeLogin = Callable[..., str]


@pytest.fixture
def make_login(dsn: str) -> Iterator[MakeLogin]:
    """``make_login(*roles, createrole=False)``: a fresh LOGIN role, member of
    ``roles``; dropped after the test (with what it owns in this test's database)."""
    made: list[str] = []

    def make(*roles: str, createrole: bool = False) -> str:
        name = f"cw_login_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("create role {} login {}").format(
                    sql.Identifier(name), sql.SQL("createrole" if createrole else "")
                )
            )
            for role in roles:
                conn.execute(
                    sql.SQL("grant {} to {}").format(sql.Identifier(role), sql.Identifier(name))
                )
        made.append(name)
        return name

    yield make
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in made:
            conn.execute(sql.SQL("drop owned by {} cascade").format(sql.Identifier(name)))
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as conn:
        for name in made:
            conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


def as_login(dsn: str, login: str) -> str:
    return make_conninfo(dsn, user=login)


# -- owner ------------------------------------------------------------------------------------


def test_costwarden_owner_owns_everything_and_is_no_superuser(admin_conn: Conn) -> None:
    """Finding: every SECURITY DEFINER function ran as whoever migrated (a superuser)."""
    assert admin_conn.execute(
        "select rolcanlogin, rolsuper from pg_roles where rolname = 'costwarden_owner'"
    ).fetchone() == (False, False)
    not_owned = admin_conn.execute(
        """
        select 'schema', nspname from pg_namespace
        where nspname = 'costwarden' and nspowner <> 'costwarden_owner'::regrole
        union all
        select 'relation', c.oid::regclass::text from pg_class c
        where c.relnamespace = 'costwarden'::regnamespace
          and c.relowner <> 'costwarden_owner'::regrole
          and not exists (select from pg_depend d where d.classid = 'pg_type'::regclass
                          and d.objid = c.reltype and d.deptype = 'e')  -- dblink's row type
        union all
        select 'function', p.oid::regprocedure::text from pg_proc p
        where p.pronamespace = 'costwarden'::regnamespace
          and p.proowner <> 'costwarden_owner'::regrole
          and not exists (select from pg_depend d where d.classid = 'pg_proc'::regclass
                          and d.objid = p.oid and d.deptype = 'e')
        """
    ).fetchall()
    assert not_owned == []
    definers = admin_conn.execute(
        "select count(*), count(*) filter (where proowner = 'costwarden_owner'::regrole) "
        "from pg_proc p where pronamespace = 'costwarden'::regnamespace and prosecdef "
        # dblink's own dblink_connect_u: superusers only (PUBLIC's EXECUTE is revoked)
        "and not exists (select from pg_depend d where d.classid = 'pg_proc'::regclass "
        "                and d.objid = p.oid and d.deptype = 'e')"
    ).fetchone()
    assert definers is not None and definers[0] > 50 and definers[0] == definers[1]


def test_a_costwarden_schema_created_by_another_role_is_refused(
    fresh_database: Callable[[], str], make_login: MakeLogin
) -> None:
    """Finding: the migration installed into a schema another role created first; as its
    owner, that role could then replace functions and capture the KEK."""
    dsn = fresh_database()
    intruder = make_login()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("grant create on database {} to {}").format(
                sql.Identifier(conn.info.dbname), sql.Identifier(intruder)
            )
        )
    with psycopg.connect(as_login(dsn, intruder), autocommit=True) as conn:
        conn.execute("create schema costwarden")
        conn.execute(  # even costwarden's bookkeeping table does not make it costwarden's
            "create table costwarden._migrations (version integer primary key, name text, "
            "checksum text, applied_at timestamptz)"
        )
    with pytest.raises(cw_migrate.SchemaNotOwned, match="not created by costwarden") as info:
        cw_migrate.migrate(dsn, schedule=False)
    assert intruder in str(info.value) and "nothing was changed" in str(info.value)
    with psycopg.connect(dsn) as conn:
        assert conn.execute(
            "select nspowner::regrole::text from pg_namespace where nspname = 'costwarden'"
        ).fetchone() == (intruder,)
        assert conn.execute(
            "select array_agg(relname::text) from pg_class "
            "where relnamespace = 'costwarden'::regnamespace and relkind = 'r'"
        ).fetchone() == (["_migrations"],)
        assert conn.execute("select count(*) from costwarden._migrations").fetchone() == (0,)
    with psycopg.connect(as_login(dsn, intruder), autocommit=True) as conn:
        conn.execute("drop schema costwarden cascade")
    # a schema without costwarden's bookkeeping, even a superuser's, is not costwarden's
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create schema costwarden")
    with pytest.raises(cw_migrate.SchemaNotOwned, match=r"holds no costwarden\._migrations"):
        cw_migrate.migrate(dsn, schedule=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("drop schema costwarden")
    assert cw_migrate.migrate(dsn, schedule=False)  # then a normal install


# -- trusted identity ---------------------------------------------------------------------------


def _claims(org: str, sub: str) -> str:
    return json.dumps({"org_id": org, "sub": sub})


def test_a_direct_tenant_login_cannot_name_its_actor(
    dsn: str, admin_conn: Conn, seeded: Seeded, make_login: MakeLogin
) -> None:
    """Finding: a tenant login connecting directly set request.jwt.claims and read any
    org's budgets."""
    tenant = make_login("costwarden_tenant")
    status = "select * from costwarden.fn_budget_status(%s, 'org')"
    with psycopg.connect(as_login(dsn, tenant), autocommit=True) as conn:
        for setting, value in (
            ("request.jwt.claims", _claims("globex", "mallory")),
            ("costwarden.actor_org", "globex"),
        ):
            with conn.transaction():
                conn.execute("select set_config(%s, %s, true)", (setting, value))
                with pytest.raises(psycopg.Error) as info:
                    conn.execute(status, ("globex",))
                assert info.value.sqlstate == "CW005"
                assert "no actor" in str(info.value)

    # a login binding names the actor: its own org only, whatever the settings say
    admin_conn.execute("select costwarden.fn_tenant_login_bind(%s, 'acme', 'alice')", (tenant,))
    with psycopg.connect(as_login(dsn, tenant), autocommit=True) as conn:
        assert conn.execute(status, ("acme",)).fetchall() is not None
        with conn.transaction():
            conn.execute(
                "select set_config('request.jwt.claims', %s, true)", (_claims("globex", "x"),)
            )
            expect_sqlstate(conn, "CW005", status, ("globex",), match="another org")
        rows = conn.execute(
            "select count(*) from costwarden.fn_budget_status('acme', 'user', 'alice')"
        ).fetchone()
        assert rows is not None
        expect_sqlstate(
            conn, "CW005", "select * from costwarden.fn_budget_status('acme', 'user', 'bob')"
        )
    assert admin_conn.execute(
        "select costwarden.fn_tenant_login_unbind(%s)", (tenant,)
    ).fetchone() == (True,)
    with psycopg.connect(as_login(dsn, tenant), autocommit=True) as conn:
        expect_sqlstate(conn, "CW005", status, ("acme",), match="no actor")
    actions = admin_conn.execute(
        "select action, target ->> 'login' from costwarden._audit_log "
        "where action like 'tenant_login_%' order by audit_id"
    ).fetchall()
    assert actions == [("tenant_login_bind", tenant), ("tenant_login_unbind", tenant)]

    # an authenticator's sessions (PostgREST, costwarden serve) do name the actor
    gateway = make_login("costwarden_authenticator", "costwarden_tenant")
    with psycopg.connect(as_login(dsn, gateway), autocommit=True) as conn, conn.transaction():
        conn.execute(
            "select set_config('request.jwt.claims', %s, true)", (_claims("acme", "alice"),)
        )
        conn.execute("select * from costwarden.fn_budget_status('acme', 'user', 'alice')")
        expect_sqlstate(conn, "CW005", status, ("globex",), match="another org")


# -- nothing another role can block -------------------------------------------------------------


def test_advisory_locks_of_other_roles_gate_nothing(
    dsn: str, admin_conn: Conn, seeded: Seeded, make_login: MakeLogin
) -> None:
    """Finding: any role could take costwarden's advisory locks (fixed keys, or keys
    derived from public names) and so switch off anomaly detection or hang key puts,
    KEK rotation and idempotent reserves."""
    plain = make_login()
    keys = [
        "hashtextextended('costwarden.fn_detect_spend_anomalies', 0)",  # anomaly detection
        "1088459814054321208",  # the KEK lock of puts and rotations
        "hashtextextended('costwarden.byok' || chr(1) || 'acme' || chr(1) || 'ws-vendor'"
        " || chr(1) || 'anthropic', 0)",  # the key slot
        "hashtextextended('acme' || chr(1) || 'idem-1', 0)",  # a reserve idempotency key
    ]
    admin_conn.execute(
        "select costwarden.fn_spend_report_cumulative('acme', 'ws-platform', 'batch', 2000000)"
    )
    with psycopg.connect(as_login(dsn, plain)) as squatter:
        for key in keys:
            squatter.execute(f"select pg_advisory_lock({key})")
        with psycopg.connect(dsn) as conn, conn.transaction():
            conn.execute("set local lock_timeout = '3s'")
            assert conn.execute("select costwarden.fn_detect_spend_anomalies()").fetchone() == (1,)
            conn.execute("select set_config('costwarden.kek', %s, true)", (KEK,))
            conn.execute(
                "select costwarden.fn_byok_key_put('acme', 'ws-vendor', 'anthropic', %s)",
                (VENDOR_SECRET,),
            )
            conn.execute("select set_config('costwarden.kek_new', %s, true)", ("n" * 40,))
            conn.execute("select * from costwarden.fn_byok_kek_rotate()")
            row = conn.execute(
                "select status from costwarden.fn_cost_reserve('acme', 'ws-platform', "
                "'openai/gpt-4o', '{\"input_tokens\": 10}', p_idempotency_key => 'idem-1')"
            ).fetchone()
            assert row == ("held",)


def test_alert_notifications_tell_a_listener_ids_and_levels_only(
    dsn: str, client: costwarden.Client, seeded: Seeded, make_login: MakeLogin
) -> None:
    """Finding: any role could LISTEN on costwarden_alerts and hear every org's alerts,
    provider error texts that may carry a key fragment included."""
    plain = make_login()
    fragment = "sk-proj-FRAGMENT9f2a"
    with psycopg.connect(as_login(dsn, plain), autocommit=True) as ear:
        ear.execute("listen costwarden_alerts")
        client.set_budget("globex", "workspace", seeded.other_ws, "day", 1_000)
        client.reserve(
            "globex",
            seeded.other_ws,
            seeded.platform_model,
            {"output_tokens": 90},
            raise_on_denied=False,
        )
        for _ in range(5):
            client.report_provider("openai", False, f"HTTP 401 invalid api key {fragment}")
        heard = [note.payload for note in ear.notifies(timeout=0.5)]
        assert len(heard) >= 2
        for payload in heard:
            alert = json.loads(payload)
            assert set(alert) == {"kind", "alert_id", "level"}
            assert alert["level"] in ("info", "warning", "critical")
            assert fragment not in payload and "globex" not in payload
        # and the listener cannot read the alerts behind them
        expect_sqlstate(
            ear,
            "42501",
            "select * from costwarden.fn_alert_get(%s)",
            (json.loads(heard[-1])["alert_id"],),
        )


# -- BYOK ---------------------------------------------------------------------------------------


def test_resolve_rechecks_mode_freeze_and_hold(dsn: str, admin_conn: Conn, seeded: Seeded) -> None:
    """Finding: resolve trusted the billing mode stored on the reservation (a workspace
    switched to disabled still released its key), released a key to a reservation that
    held 0, and ignored a freeze."""
    usage = {"input_tokens": 1000}
    with costwarden.Client(dsn, kek=KEK) as c:
        c.put_key("acme", seeded.ws_vendor, "anthropic", VENDOR_SECRET)
        r = c.reserve("acme", seeded.ws_vendor, seeded.vendor_model, usage)
        assert c.resolve_key(r.reservation_id).secret == VENDOR_SECRET

        c.upsert_workspace(
            "acme", seeded.ws_vendor, model=seeded.vendor_model, billing_override="disabled"
        )
        with pytest.raises(Forbidden, match="not_byok"):
            c.resolve_key(r.reservation_id)
        c.upsert_workspace(
            "acme", seeded.ws_vendor, model=seeded.vendor_model, billing_override="none"
        )
        assert c.resolve_key(r.reservation_id).secret == VENDOR_SECRET

        zero = c.reserve("acme", seeded.ws_vendor, seeded.vendor_model, {"input_tokens": 0})
        assert zero.status == "held" and zero.amount_micros == 0
        with pytest.raises(Forbidden, match="zero_hold"):
            c.resolve_key(zero.reservation_id)

        c.set_setting("anomaly_freeze", True)
        c.report_spend("acme", seeded.ws_vendor, "batch", 5_000_000)
        assert c.detect_spend_anomalies() == 1
        with pytest.raises(Forbidden, match="workspace_frozen"):
            c.resolve_key(r.reservation_id)
    refused = admin_conn.execute(
        "select reason from costwarden._byok_resolve_log where outcome = 'refused' order by attempt"
    ).fetchall()
    assert [x for (x,) in refused] == ["not_byok", "zero_hold", "workspace_frozen"]


@pytest.mark.parametrize("schema", ["extensions", "public"])
def test_pgcrypto_is_used_where_it_already_is(
    fresh_database: Callable[[], str], seeded_factory: Callable[[str], Seeded], schema: str
) -> None:
    """Finding: a pgcrypto already installed in another schema (Supabase's extensions,
    public) broke the migration."""
    dsn = fresh_database()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(schema)))
        conn.execute(
            sql.SQL("create extension pgcrypto with schema {}").format(sql.Identifier(schema))
        )
    cw_migrate.migrate(dsn, schedule=False)
    with psycopg.connect(dsn) as conn:
        body = conn.execute(
            "select prosrc from pg_proc where oid = 'costwarden.pgp_sym_decrypt(bytea, text)'"
            "::regprocedure"
        ).fetchone()
        assert body is not None and f'"{schema}".pgp_sym_decrypt(' in body[0]
        assert conn.execute(
            "select n.nspname from pg_extension e join pg_namespace n on n.oid = e.extnamespace "
            "where e.extname = 'pgcrypto'"
        ).fetchone() == (schema,)
    s = seeded_factory(dsn)
    with costwarden.Client(dsn, kek=KEK) as c:
        c.put_key("acme", s.ws_vendor, "anthropic", VENDOR_SECRET)
        r = c.reserve("acme", s.ws_vendor, s.vendor_model, {"input_tokens": 1000})
        assert c.resolve_key(r.reservation_id).secret == VENDOR_SECRET
    assert cw_migrate.migrate(dsn, schedule=False) == []  # and again, nothing to do
    assert cw_migrate.status(dsn).up_to_date
