"""The PL/Proxy layer on real servers (SPEC §15, docs/scale-out.md): two PostgreSQL
servers, four partitions, the proxy in its own database; the RPCs through the proxy
behave as on a single node."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb

import costwarden
from costwarden import cluster as cl
from costwarden._sql import refusal_receipt
from costwarden.cli.main import main as cli
from proxyharness import (  # noqa: F401 -- proxy_servers is a fixture
    BYOK_MODEL,
    MODEL,
    Cluster,
    Servers,
    make_cluster,
    orgs_by_partition,
    proxy_servers,
    seed_catalogue,
    seed_org,
)

USAGE = {"input_tokens": 1000, "output_tokens": 500}  # 10 500 micros at the test prices
COST = 10_500


@pytest.fixture(scope="module")
def cwp(proxy_servers: Servers) -> Cluster:  # noqa: F811
    c = make_cluster(proxy_servers, "cwp", 4)
    with psycopg.connect(c.proxy_dsn, autocommit=True) as conn:
        c.orgs = orgs_by_partition(conn, "org", 4, 2)
    with c.client() as client:
        seed_catalogue(client)
        for orgs in c.orgs.values():
            for org in orgs:
                seed_org(client, org)
    return c


def _rpcs(dsn: str, schema: str) -> dict[str, tuple[str, str, str]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid),"
            " coalesce(array_to_string(array(select r.rolname from pg_roles r where r.rolname"
            " like 'costwarden\\_%%' and exists (select from aclexplode(p.proacl) a"
            " where a.grantee = r.oid) order by 1), ','), '')"
            " from pg_proc p where p.pronamespace = %s::regnamespace and p.proname like 'fn\\_%%'"
            " and p.prosecdef and p.proconfig = '{\"search_path=pg_catalog, pg_temp\"}'",
            (schema,),
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def test_every_rpc_has_a_routing_decision_and_the_proxy_has_the_same_signatures(
    cwp: Cluster,
) -> None:
    rpcs = cl.catalogue(cwp.partition_dsn(0))
    assert cl.unrouted(rpcs) == []
    partition = _rpcs(cwp.partition_dsn(0), "costwarden")
    proxy = _rpcs(cwp.proxy_dsn, "costwarden")
    assert len(partition) >= 49
    # same names, arguments with defaults, result columns and grants
    assert proxy == partition


def test_a_new_rpc_without_a_routing_decision_is_refused(cwp: Cluster) -> None:
    rpcs = cl.catalogue(cwp.partition_dsn(0))
    extra = cl.Rpc("fn_not_routed_yet", "", "", "void", (), (), False, True, "void")
    assert cl.unrouted([*rpcs, extra]) == ["fn_not_routed_yet"]


def test_orgs_live_on_their_hash_partition(cwp: Cluster) -> None:
    for index, orgs in cwp.orgs.items():
        with psycopg.connect(cwp.partition_dsn(index), autocommit=True) as conn:
            here = {r[0] for r in conn.execute("select org_id from costwarden._orgs")}
        assert set(orgs) <= here
        others = {o for i, os_ in cwp.orgs.items() if i != index for o in os_}
        assert not here & others


def _partition_of_reservation(cwp: Cluster, rid: uuid.UUID) -> int:
    with psycopg.connect(cwp.proxy_dsn, autocommit=True) as conn:
        row = conn.execute("select costwarden_remote.reservation_hash(%s)", (rid,)).fetchone()
    assert row is not None
    return cl.partition_of(int(row[0]), 4)


def test_saga_budgets_and_ledger_through_the_proxy_with_the_python_client(cwp: Cluster) -> None:
    with cwp.client() as c:
        for index, orgs in cwp.orgs.items():
            org = orgs[0]
            c.set_budget(org, "workspace", "ws", "day", 2 * COST)
            r1 = c.reserve(org, "ws", MODEL, USAGE, user_id="alice")
            assert r1.status == "held"
            assert _partition_of_reservation(cwp, r1.reservation_id) == index
            tick = c.meter(r1.reservation_id, {"input_tokens": 500, "output_tokens": 100})
            assert tick.action == "continue"
            done = c.commit(r1.reservation_id, {"input_tokens": 800, "output_tokens": 400})
            assert done.charged_micros == 8_400 and done.released_micros == COST - 8_400
            assert c.commit(r1.reservation_id, {"input_tokens": 800, "output_tokens": 400}) == done
            r2 = c.reserve(org, "ws", MODEL, USAGE, idempotency_key="k1")
            assert c.reserve(org, "ws", MODEL, USAGE, idempotency_key="k1") == r2
            assert c.release(r2.reservation_id) == COST
            with c.reservation(org, "ws", MODEL, USAGE) as r:
                r.commit(USAGE)
            (st,) = c.budget_status(org, "workspace", "ws")
            assert (st.limit_value, st.spent, st.held) == (2 * COST, 8_400 + COST, 0)
            with pytest.raises(costwarden.BudgetExceeded):
                c.reserve(org, "ws", MODEL, USAGE)
            adj = c.ledger_adjust(org, "ws", -100, "refund")
            assert adj.entry_seq == 3
        verified = {v.org_id: v for v in c.ledger_verify()}
        for orgs in cwp.orgs.values():
            assert verified[orgs[0]].ok and verified[orgs[0]].entries == 3
        listed = c.reservations(limit=5)
        assert len(listed) == 5
        assert [x.created_at for x in listed] == sorted(
            (x.created_at for x in listed), reverse=True
        )


def test_ledger_verify_outside_the_database_through_the_proxy(cwp: Cluster) -> None:
    org = cwp.orgs[1][1]
    with cwp.client() as c:
        c.commit(c.reserve(org, "ws", MODEL, USAGE).reservation_id, USAGE)
    result = CliRunner().invoke(
        cli, ["--dsn", cwp.proxy_dsn, "ledger", "verify", "--org", org, "--json"]
    )
    assert result.exit_code == 0, result.output
    assert '"ok": true' in result.output


def test_128_concurrent_reservers_through_the_proxy_get_exactly_4(cwp: Cluster) -> None:
    # an org on the second server: 128 proxy sessions on one, 128 router sessions on the other
    org = cwp.orgs[3][1]
    with cwp.client() as c:
        c.set_budget(org, "org", None, "day", 4 * COST)
    statuses: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(128)
    errors: list[BaseException] = []
    conns = [psycopg.connect(cwp.proxy_dsn, autocommit=True) for _ in range(128)]

    def body(i: int) -> None:
        try:
            start.wait()
            row = (
                conns[i]
                .execute(
                    "select status from costwarden.fn_cost_reserve(p_org_id => %s, "
                    "p_workspace_id => 'ws', p_model => %s, p_usage => %s)",
                    (org, MODEL, Jsonb(USAGE)),
                )
                .fetchone()
            )
            assert row is not None
            with lock:
                statuses.append(str(row[0]))
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(128)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for conn in conns:
            conn.close()
    assert errors == []
    assert statuses.count("held") == 4 and statuses.count("denied") == 124
    with cwp.client() as c:
        (st,) = c.budget_status(org, "org")
    assert st.held == 4 * COST


def test_a_reservation_id_routed_to_a_partition_that_does_not_hold_it_is_cw002(
    cwp: Cluster,
) -> None:
    org = cwp.orgs[0][1]
    with cwp.client() as c:
        r = c.reserve(org, "ws", MODEL, USAGE)
        with psycopg.connect(cwp.proxy_dsn, autocommit=True) as conn:
            other = cwp.orgs[2][0]
            prefix = conn.execute("select to_hex(hashtext(%s))", (other,)).fetchone()
        assert prefix is not None
        forged = uuid.UUID(str(prefix[0]).rjust(8, "0") + r.reservation_id.hex[8:])
        for call in (
            lambda: c.commit(forged, USAGE),
            lambda: c.release(forged),
            lambda: c.meter(forged, USAGE),
        ):
            with pytest.raises(costwarden.NotFound):
                call()
        assert c.release(r.reservation_id) == COST


def _tenant_view(dsn: str, org: str, user: str, sql: str, params: tuple[Any, ...]) -> Any:
    """Rows (or the SQLSTATE) of a tenant call with claims, on a fresh session."""
    with psycopg.connect(dsn) as conn:
        try:
            conn.execute("set local role costwarden_tenant")
            conn.execute(
                "select set_config('request.jwt.claims', %s, true)",
                (json.dumps({"org_id": org, "sub": user}),),
            )
            rows = conn.execute(sql, params).fetchall()
            return [tuple(str(v) for v in r) for r in rows]
        except psycopg.Error as exc:
            return exc.sqlstate
        finally:
            conn.rollback()


def test_a_tenant_sees_through_the_proxy_exactly_what_it_sees_on_its_node(cwp: Cluster) -> None:
    org, other = cwp.orgs[2][1], cwp.orgs[1][1]
    with cwp.client() as c:
        c.reserve(org, "ws", MODEL, USAGE, user_id="alice")
        c.reserve(org, "ws", MODEL, USAGE, user_id="bob")
        c.set_budget(org, "user", "alice", "day", 10 * COST)
    node = cwp.partition_dsn(2)
    calls: list[tuple[str, tuple[Any, ...]]] = [
        ("select * from costwarden.fn_get_my_cost_reservations()", ()),
        ("select * from costwarden.fn_budget_status(%s, 'user', 'alice')", (org,)),
        ("select * from costwarden.fn_budget_status(%s, 'user', 'bob')", (org,)),
        ("select * from costwarden.fn_budget_status(%s, 'org')", (other,)),
        ("select * from costwarden.fn_cost_reserve(%s, 'ws', %s, '{}')", (org, MODEL)),
        ("select * from costwarden.fn_org_upsert(%s)", (org,)),
    ]
    for sql, params in calls:
        via_proxy = _tenant_view(cwp.proxy_dsn, org, "alice", sql, params)
        direct = _tenant_view(node, org, "alice", sql, params)
        assert via_proxy == direct, sql
    mine = _tenant_view(cwp.proxy_dsn, org, "alice", calls[0][0], ())
    assert isinstance(mine, list) and mine and all(r[3] == "alice" for r in mine)
    assert _tenant_view(cwp.proxy_dsn, org, "alice", *calls[3]) == "CW005"
    assert _tenant_view(cwp.proxy_dsn, org, "alice", *calls[4]) == "42501"


def test_byok_resolve_through_the_proxy_carries_the_kek_and_never_logs_it(
    cwp: Cluster,
    proxy_servers: Servers,  # noqa: F811
) -> None:
    kek = "proxy-kek-" + uuid.uuid4().hex
    secret = "sk-ant-proxy-" + uuid.uuid4().hex
    org = cwp.orgs[1][0]
    with costwarden.Client(cwp.proxy_dsn, kek=kek) as c:
        c.upsert_workspace(org, "byok", BYOK_MODEL)
        assert c.billing_mode(org, "byok").billing_mode == "byok"
        fingerprint = c.put_key(org, "byok", "anthropic", secret)
        with c.reservation(org, "byok", BYOK_MODEL, USAGE) as r:
            got = r.byok_key()
            assert got.secret == secret and got.fingerprint == fingerprint
            r.commit(USAGE)
        with pytest.raises(costwarden.Forbidden):
            c.resolve_key(r.id)  # committed: no longer held
    with costwarden.Client(cwp.proxy_dsn) as nokek:
        r2 = nokek.reserve(org, "byok", BYOK_MODEL, USAGE)
        with pytest.raises(costwarden.Forbidden):
            nokek.resolve_key(r2.reservation_id)  # no KEK in this transaction
        nokek.release(r2.reservation_id)
    logs = proxy_servers.logs()
    assert "fn_byok_key_resolve_v2" in logs  # statements are logged ...
    assert kek not in logs and secret not in logs  # ... the KEK and the secret never


def test_catalogue_wide_writes_leave_every_partition_identical(cwp: Cluster) -> None:
    with cwp.client() as c:
        c.upsert_model("acme-labs/new-1", platform_servable=True)
        snap = c.set_pricing("acme-labs/new-1", {"input_tokens": Decimal("0.000001")}, None)
        c.set_setting("default_ttl", "10 minutes")
        for _ in range(3):
            assert c.report_provider("acme-labs", False, "boom") == "closed"
        assert c.reset_circuit("acme-labs") == "closed"
        assert c.get_setting("default_ttl") == "10 minutes"
        assert c.pricing("acme-labs/new-1")[0].pricing_snapshot_id == snap
    digests = []
    for dsn in cwp.config.partitions:
        with psycopg.connect(dsn, autocommit=True) as conn:
            digests.append(
                conn.execute("select * from costwarden_px.catalogue_digest()").fetchall()
            )
            ids = conn.execute(
                "select snapshot_id from costwarden._pricing_snapshots "
                "where model = 'acme-labs/new-1'"
            ).fetchall()
            assert ids == [(snap,)]
    assert all(d == digests[0] for d in digests[1:])


def test_status_shows_each_partition_with_its_schema_and_jobs(cwp: Cluster, tmp_path: Any) -> None:
    path = tmp_path / "CLUSTER.toml"
    cl.write_config(path, cwp.config)
    result = CliRunner().invoke(
        cli, ["--dsn", cwp.proxy_dsn, "status", "--proxy", str(path), "--json"]
    )
    assert result.exit_code == 0, result.output
    st = json.loads(result.output)
    assert st["routed_partitions"] == 4 and st["catalogue_identical"] and st["healthy"]
    for p in st["partitions"]:
        assert p["reachable"] and p["up_to_date"] and p["version"] >= 10
        names = {j["name"].split("@")[0] for j in p["jobs"]}
        assert {"costwarden-expire", "costwarden-anomalies"} <= names
    # migrate --proxy again: nothing to do, the same RPCs
    result = CliRunner().invoke(
        cli, ["--dsn", cwp.proxy_dsn, "migrate", "--proxy", str(path), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert "fn_cost_reserve" in json.loads(result.output)["rpcs"]


def test_one_node_down_names_the_partition_and_leaves_other_orgs_alone(
    cwp: Cluster,
    proxy_servers: Servers,  # noqa: F811
) -> None:
    node = proxy_servers.clusters[1]  # partitions 1 and 3
    down_org, up_org = cwp.orgs[1][1], cwp.orgs[0][1]
    node.stop()
    try:
        with cwp.client() as c:
            r = c.reserve(up_org, "ws", MODEL, USAGE)
            c.commit(r.reservation_id, USAGE)
            with pytest.raises(costwarden.DatabaseUnavailable) as caught:
                c.reserve(down_org, "ws", MODEL, USAGE)
            assert "partition 1" in str(caught.value)
    finally:
        node.start()
    with cwp.client() as c:
        assert c.reserve(down_org, "ws", MODEL, USAGE).status == "held"


def test_the_documented_routing_table_is_the_routing_table() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "scale-out.md").read_text()
    documented = doc.split("<!-- routes:begin -->\n", 1)[1].split("\n<!-- routes:end -->", 1)[0]
    assert documented == cl.routing_table_markdown()


def _as_login(dsn: str, login: str, sql: str, forged_org: str | None = None) -> Any:
    dsn = psycopg.conninfo.make_conninfo(dsn, user=login)
    with psycopg.connect(dsn) as conn:
        try:
            if forged_org is not None:  # an untrusted session cannot name its actor
                conn.execute(
                    "select set_config('request.jwt.claims', %s, true)",
                    (json.dumps({"org_id": forged_org, "sub": "bob"}),),
                )
            return [tuple(str(v) for v in r) for r in conn.execute(sql).fetchall()]
        except psycopg.Error as exc:
            return exc.sqlstate
        finally:
            conn.rollback()


def test_a_bound_login_acts_through_the_proxy_as_on_its_node(
    cwp: Cluster,
    proxy_servers: Servers,  # noqa: F811
) -> None:
    login = "cw_px_tenant_login"
    for dsn in proxy_servers.dsns:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"drop role if exists {login}")
            conn.execute(f"create role {login} login in role costwarden_tenant")
    org, other = cwp.orgs[3][0], cwp.orgs[0][0]
    mine = "select * from costwarden.fn_get_my_cost_reservations()"
    with psycopg.connect(cwp.proxy_dsn, autocommit=True) as conn:
        # not bound yet: no actor, as on a node
        assert _as_login(cwp.proxy_dsn, login, mine) == "CW005"
        conn.execute("select costwarden.fn_tenant_login_bind(%s, %s, 'alice')", (login, org))
    with cwp.client() as c:
        c.reserve(org, "ws", MODEL, USAGE, user_id="alice", raise_on_denied=False)
    node = cwp.partition_dsn(3)
    via_proxy = _as_login(cwp.proxy_dsn, login, mine, forged_org=other)
    assert isinstance(via_proxy, list) and via_proxy
    assert all(r[1] == org and r[3] == "alice" for r in via_proxy)
    assert via_proxy == _as_login(node, login, mine, forged_org=other)
    # rebinding to an org on another partition removes the first binding
    with psycopg.connect(cwp.proxy_dsn, autocommit=True) as conn:
        conn.execute("select costwarden.fn_tenant_login_bind(%s, %s, 'alice')", (login, other))
    assert _as_login(node, login, mine) == "CW005"
    assert _as_login(cwp.proxy_dsn, login, mine) == _as_login(cwp.partition_dsn(0), login, mine)
    with psycopg.connect(cwp.proxy_dsn, autocommit=True) as conn:
        assert conn.execute(
            "select costwarden.fn_tenant_login_unbind(%s)", (login,)
        ).fetchone() == (True,)
    assert _as_login(cwp.proxy_dsn, login, mine) == "CW005"


def test_the_router_password_reaches_the_user_mapping_and_never_a_log(
    proxy_servers: Servers,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """$COSTWARDEN_ROUTER_PASSWORD goes into PL/Proxy's user mapping as COPY data, never
    as statement text: the servers log every statement (log_statement = 'all'), and
    neither the first password (install: add) nor the next (install again: set) is in
    their logs, nor their base64."""
    first, second = (f"router-{uuid.uuid4().hex}-é" for _ in range(2))
    monkeypatch.setenv("COSTWARDEN_ROUTER_PASSWORD", first)
    c = make_cluster(proxy_servers, "cwpw", 2)

    def mapping() -> list[str]:
        with psycopg.connect(c.proxy_dsn, autocommit=True) as conn:
            row = conn.execute(
                "select umoptions from pg_user_mappings where srvname = %s and umuser = 0",
                (c.config.name,),
            ).fetchone()
        assert row is not None
        return list(row[0])

    assert f"password={first}" in mapping()
    monkeypatch.setenv("COSTWARDEN_ROUTER_PASSWORD", second)
    cl.install(c.proxy_dsn, c.config, schedule=False, migrate_partitions=False)
    assert [o for o in mapping() if o.startswith("password=")] == [f"password={second}"]
    with c.client() as client:  # the proxy reaches its partitions with it
        seed_catalogue(client)
        assert client.pricing(MODEL)[0].model == MODEL
    # an ALTER that fails says why, without the CONTEXT that would quote it
    third = f"router-{uuid.uuid4().hex}"
    with (
        psycopg.connect(c.proxy_dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.UndefinedObject, match="no_such_cluster") as failed,
    ):
        cl.set_router_password(conn, "no_such_cluster", third)
    assert third not in str(failed.value) and third not in (failed.value.diag.context or "")
    logs = proxy_servers.logs()
    for password in (first, second, third):
        assert password not in logs
        assert base64.b64encode(password.encode()).decode() not in logs
    assert "copy pg_temp._costwarden_router_secret" in logs  # statements are logged


def _partition_state(cwp: Cluster, org: str) -> list[Any]:
    """What a refused call must leave as it was: on every partition, the catalogue-wide
    state and the audit trail; on ``org``'s, its budgets and its ledger head."""
    state: list[Any] = []
    for dsn in cwp.config.partitions:
        with psycopg.connect(dsn, autocommit=True) as conn:
            state.append(conn.execute("select * from costwarden_px.catalogue_digest()").fetchall())
            state.append(conn.execute("select max(audit_id) from costwarden._audit_log").fetchall())
            if conn.execute("select from costwarden._orgs where org_id = %s", (org,)).fetchone():
                state.append(
                    conn.execute("select * from costwarden.fn_budget_list(%s)", (org,)).fetchall()
                )
                state.append(
                    conn.execute("select * from costwarden.fn_ledger_digest(%s)", (org,)).fetchall()
                )
    return state


def test_a_login_binding_confines_its_caller_on_every_partition(
    cwp: Cluster,
    proxy_servers: Servers,  # noqa: F811
) -> None:
    """A login bound to an org is confined to it whatever its role, on the partition of
    its binding and on every other one: an admin login bound (through the proxy) to an
    org of partition 0 can neither write an org of partition 1 nor change the catalogue;
    nor can a trusted login (costwarden_authenticator) that names no actor, as on a node.
    Its own org still works through the proxy."""
    own, foreign = cwp.orgs[0][1], cwp.orgs[1][0]
    logins = {
        "cw_px_bound_admin": "costwarden_admin",
        "cw_px_bound_gateway": "costwarden_admin, costwarden_authenticator",
    }
    for dsn in proxy_servers.dsns:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for login, roles in logins.items():
                conn.execute(f"drop role if exists {login}")
                conn.execute(f"create role {login} login in role {roles}")
    with psycopg.connect(cwp.proxy_dsn, autocommit=True) as conn:
        for login in logins:
            conn.execute("select costwarden.fn_tenant_login_bind(%s, %s, 'alice')", (login, own))
    refused = [
        f"select costwarden.fn_budget_set('{foreign}', 'org', null, 'day', 1)",
        f"select * from costwarden.fn_ledger_adjust('{foreign}', 'ws', 1000000, 'gift')",
        "select costwarden.fn_setting_set('default_ttl', '\"1 minute\"')",
        "select * from costwarden.fn_ledger_verify()",
    ]
    before = _partition_state(cwp, foreign)
    for login in logins:
        for call in refused:
            assert _as_login(cwp.proxy_dsn, login, call) == "CW005", (login, call)
    assert _partition_state(cwp, foreign) == before
    for login in logins:
        assert _as_login(
            cwp.proxy_dsn,
            login,
            f"select costwarden.fn_budget_set('{own}', 'org', null, 'week', {1000 * COST})",
        ) == [("",)]
        verified = _as_login(
            cwp.proxy_dsn, login, f"select ok from costwarden.fn_ledger_verify('{own}')"
        )
        assert verified == [("True",)]
    with psycopg.connect(cwp.proxy_dsn, autocommit=True) as conn:
        for login in logins:
            conn.execute("select costwarden.fn_tenant_login_unbind(%s)", (login,))


def _bindings(cwp: Cluster, *logins: str) -> list[tuple[int, str, str]]:
    """(partition, login, org) of every binding of ``logins`` in the cluster."""
    found: list[tuple[int, str, str]] = []
    for index, dsn in enumerate(cwp.config.partitions):
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = conn.execute(
                "select login, org_id from costwarden._tenant_logins where login = any(%s) "
                "order by login",
                (list(logins),),
            ).fetchall()
        found.extend((index, str(login), str(org)) for login, org in rows)
    return found


def test_an_org_confined_admin_binds_and_unbinds_its_org_logins_through_the_proxy(
    cwp: Cluster,
    proxy_servers: Servers,  # noqa: F811
) -> None:
    """An admin confined to its org (a bound login) unbinds a login of its org through
    the proxy: true, and the binding is gone; again: false, nothing done; a login of
    another org: CW005, its binding kept -- as on a node."""
    admin, tenant, stranger = "cw_px_org_admin", "cw_px_org_tenant", "cw_px_org_stranger"
    for dsn in proxy_servers.dsns:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for login, role in ((admin, "admin"), (tenant, "tenant"), (stranger, "tenant")):
                conn.execute(f"drop role if exists {login}")
                conn.execute(f"create role {login} login in role costwarden_{role}")
    own, foreign = cwp.orgs[2][0], cwp.orgs[3][0]
    with psycopg.connect(cwp.proxy_dsn, autocommit=True) as conn:
        conn.execute("select costwarden.fn_tenant_login_bind(%s, %s)", (admin, own))
        conn.execute("select costwarden.fn_tenant_login_bind(%s, %s)", (stranger, foreign))
    bind = f"select costwarden.fn_tenant_login_bind('{tenant}', '{own}', 'alice')"
    unbind = "select costwarden.fn_tenant_login_unbind('{}')"
    assert _as_login(cwp.proxy_dsn, admin, bind) == [("",)]
    assert _bindings(cwp, tenant) == [(2, tenant, own)]
    assert _as_login(cwp.proxy_dsn, admin, unbind.format(tenant)) == [("True",)]
    assert _bindings(cwp, tenant) == []
    assert _as_login(cwp.proxy_dsn, admin, unbind.format(tenant)) == [("False",)]
    assert _as_login(cwp.proxy_dsn, admin, unbind.format(stranger)) == "CW005"
    assert _bindings(cwp, stranger) == [(3, stranger, foreign)]
    with psycopg.connect(cwp.proxy_dsn, autocommit=True) as conn:
        for login in (admin, stranger):
            conn.execute("select costwarden.fn_tenant_login_unbind(%s)", (login,))


def test_a_partition_error_reaches_the_caller_without_the_proxy_prefixes(cwp: Cluster) -> None:
    """A refused BYOK resolve through the proxy: its CW005 reads as on a node -- message
    and hint without PL/Proxy's prefixes; the hint starts with the refusal receipt, which
    the clients take from it and record (here the server had recorded it already)."""
    org = cwp.orgs[1][1]
    with cwp.client() as c:
        r = c.reserve(org, "ws", MODEL, USAGE)
    with psycopg.connect(cwp.proxy_dsn) as conn, pytest.raises(psycopg.Error) as caught:
        conn.execute("select * from costwarden.fn_byok_key_resolve_v2(%s)", (r.reservation_id,))
    diag = caught.value.diag
    assert caught.value.sqlstate == "CW005"
    assert (diag.message_primary or "").startswith("BYOK resolve refused (attempt ")
    receipt = refusal_receipt(diag.message_hint)
    assert receipt is not None, diag.message_hint
    with psycopg.connect(cwp.proxy_dsn, autocommit=True) as conn:
        row = conn.execute(
            "select costwarden.fn_byok_resolve_refusal_record(%s)", (receipt,)
        ).fetchone()
    assert row == (False,)
    with cwp.client() as c:
        (attempt,) = c.resolve_audit(org, reservation_id=r.reservation_id)
        assert attempt.outcome == "refused"
        c.release(r.reservation_id)


def test_the_resolve_trail_counts_unrecorded_attempts_along_the_stride(cwp: Cluster) -> None:
    """A partition's attempt numbers are 4096 apart: fn_byok_resolve_audit() reports as
    unrecorded only the numbers the partition handed out without a row, on the partition
    and through the proxy, where the unrecorded ones come after the recorded ones."""
    org = cwp.orgs[3][0]
    with cwp.client() as c:
        c.upsert_workspace(org, "trail", MODEL)
        r = c.reserve(org, "trail", MODEL, USAGE)
        for _ in range(2):
            with pytest.raises(costwarden.Forbidden):
                c.resolve_key(r.reservation_id)  # refused (a platform workspace), recorded
        with psycopg.connect(cwp.partition_dsn(3), autocommit=True) as conn:
            # an attempt whose transaction rolled back: a number without a row
            row = conn.execute("select nextval('costwarden._byok_resolve_attempt_seq')").fetchone()
            assert row is not None
            lost = int(row[0])
            with pytest.raises(costwarden.Forbidden):
                c.resolve_key(r.reservation_id)
            direct = conn.execute(
                "select attempt, outcome from costwarden.fn_byok_resolve_audit()"
            ).fetchall()
        c.release(r.reservation_id)
    assert all(a % cl.SEQUENCE_STRIDE == 3 for a, _ in direct)
    assert [o for _, o in direct[:4]] == ["refused", "unrecorded", "refused", "refused"]
    assert [a for a, o in direct if o == "unrecorded"] == [lost]
    with psycopg.connect(cwp.proxy_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select attempt, at, outcome from costwarden.fn_byok_resolve_audit()"
        ).fetchall()
    assert [a for a, _, o in rows if o == "unrecorded"] == [lost]
    assert rows[-1][0] == lost and all(at is not None for _, at, _ in rows[:-1])
    assert {a for a, _, _ in rows} >= {a for a, _ in direct}


def test_a_binding_made_on_a_partition_confines_everywhere_after_migrate_proxy(
    cwp: Cluster,
    proxy_servers: Servers,  # noqa: F811
) -> None:
    """The proxy carries the bindings it knows (those made through it, and those it
    gathered from every partition at `migrate --proxy`). One made directly on a
    partition confines its login there at once, and on every partition once
    `migrate --proxy` has run; one that contradicts the proxy's is refused."""
    login = "cw_px_direct_admin"
    for dsn in proxy_servers.dsns:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"drop role if exists {login}")
            conn.execute(f"create role {login} login in role costwarden_admin")
    own, foreign = cwp.orgs[2][1], cwp.orgs[0][1]
    with psycopg.connect(cwp.partition_dsn(2), autocommit=True) as conn:
        conn.execute("select costwarden.fn_tenant_login_bind(%s, %s)", (login, own))
    ledger = "select ok from costwarden.fn_ledger_verify('{}')"
    assert _as_login(cwp.proxy_dsn, login, ledger.format(own)) == [("True",)]
    assert _as_login(cwp.proxy_dsn, login, "select * from costwarden.fn_ledger_verify()") == "CW005"
    cl.install(cwp.proxy_dsn, cwp.config, schedule=False, migrate_partitions=False)
    assert _as_login(cwp.proxy_dsn, login, ledger.format(foreign)) == "CW005"
    assert _as_login(cwp.proxy_dsn, login, ledger.format(own)) == [("True",)]
    # bound again on its partition, to another org there: refused until they agree
    other = cwp.orgs[2][0]
    with psycopg.connect(cwp.partition_dsn(2), autocommit=True) as conn:
        conn.execute("select costwarden.fn_tenant_login_bind(%s, %s)", (login, other))
    assert _as_login(cwp.proxy_dsn, login, ledger.format(other)) == "CW005"
    with psycopg.connect(cwp.proxy_dsn, autocommit=True) as conn:
        conn.execute("select costwarden.fn_tenant_login_bind(%s, %s)", (login, other))
    assert _as_login(cwp.proxy_dsn, login, ledger.format(other)) == [("True",)]
    assert _as_login(cwp.proxy_dsn, login, ledger.format(own)) == "CW005"
    with psycopg.connect(cwp.proxy_dsn, autocommit=True) as conn:
        assert conn.execute(
            "select costwarden.fn_tenant_login_unbind(%s)", (login,)
        ).fetchone() == (True,)


def _snapshots(cwp: Cluster, model: str) -> list[list[tuple[Any, ...]]]:
    out = []
    for dsn in cwp.config.partitions:
        with psycopg.connect(dsn, autocommit=True) as conn:
            out.append(
                conn.execute(
                    "select snapshot_id, prices, effective_from from costwarden._pricing_snapshots "
                    "where model = %s order by snapshot_id",
                    (model,),
                ).fetchall()
            )
    return out


def test_a_pricing_write_that_failed_on_one_partition_converges_when_run_again(
    cwp: Cluster,
) -> None:
    """PL/Proxy has no two-phase commit: a price set that fails on one partition (here
    after drawing its snapshot id) has committed on the others. The same call again
    completes that snapshot -- same effective time, same id -- on the partition that
    lacks it, and later writes agree everywhere."""
    model = "acme-labs/retry-1"
    first, second, third = ({"input_tokens": Decimal(f"0.00000{i}")} for i in (1, 2, 3))
    with cwp.client() as c:
        c.upsert_model(model, platform_servable=True)
        c.set_pricing(model, first, None)
    with psycopg.connect(cwp.partition_dsn(1), autocommit=True) as conn:
        conn.execute(
            "create function public.cw_test_refuse() returns trigger language plpgsql as "
            "$$ begin perform pg_sleep(0.5); raise exception 'no space left (test)'; end $$"
        )
        conn.execute(
            "create trigger cw_test_refuse before insert on costwarden._pricing_snapshots "
            f"for each row when (new.model = '{model}') execute function public.cw_test_refuse()"
        )
    try:
        with psycopg.connect(cwp.proxy_dsn, autocommit=True) as conn, pytest.raises(psycopg.Error):
            conn.execute(
                "select costwarden.fn_pricing_set(%s, %s::jsonb, now())",
                (model, '{"input_tokens": 0.000002}'),
            )
    finally:
        with psycopg.connect(cwp.partition_dsn(1), autocommit=True) as conn:
            conn.execute("drop trigger cw_test_refuse on costwarden._pricing_snapshots")
            conn.execute("drop function public.cw_test_refuse()")
    diverged = _snapshots(cwp, model)
    assert [len(s) for s in diverged] == [2, 1, 2, 2]
    with cwp.client() as c:
        snap = c.set_pricing(model, second, None)  # the same call again
        assert snap == diverged[0][1][0]
        later = c.set_pricing(model, third, None)
        assert c.pricing(model)[0].pricing_snapshot_id == later
    converged = _snapshots(cwp, model)
    assert converged[0][:2] == diverged[0] and len(converged[0]) == 3
    assert all(s == converged[0] for s in converged[1:])
    digests = []
    for dsn in cwp.config.partitions:
        with psycopg.connect(dsn, autocommit=True) as conn:
            digests.append(
                conn.execute("select * from costwarden_px.catalogue_digest()").fetchall()
            )
    assert all(d == digests[0] for d in digests[1:])
