"""`costwarden serve`'s routes (SPEC §13) in process: the saga, budgets, user limits,
BYOK keys, audit, anomalies, circuits, health and metrics; the SQLSTATE -> HTTP mapping,
402 denials, 422 bad input with the field named and nothing written, request ids."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import unquote_plus

import psycopg
import pytest
from fastapi.testclient import TestClient

from costwarden import Client
from costwarden import _sql as q
from costwarden.server import ServerConfig, create_app
from costwarden.server.auth import Identity
from costwarden.server.dashboard import csrf_token
from costwarden.server.db import Database
from cwtest import Seeded
from http_helpers import SECRET, auth, login_dsn, token

__all__ = ["login_dsn"]

USAGE = {"input_tokens": 1000, "output_tokens": 500}


@pytest.fixture
def api(login_dsn: str, seeded: Seeded) -> Iterator[TestClient]:
    app = create_app(
        ServerConfig(
            dsn=login_dsn, jwt_secret=SECRET, kek="test-kek-0123456789-0123456789-0123456789"
        )
    )
    with TestClient(app) as client:
        yield client


ADMIN = auth("costwarden_admin")
SERVICE = auth("costwarden_service", "acme")


def reserve_body(**extra: Any) -> dict[str, Any]:
    return {
        "org_id": "acme",
        "workspace_id": "ws-platform",
        "model": "openai/gpt-4o",
        "usage": USAGE,
        **extra,
    }


def test_quote_reserve_commit_and_read_back(api: TestClient) -> None:
    quote = api.post("/v1/quote", json=reserve_body(), headers=SERVICE)
    assert quote.status_code == 200, quote.text
    q = quote.json()
    assert q["amount_micros"] == 7500 and isinstance(q["amount_micros"], int)
    assert q["billing_mode"] == "platform_managed"

    held = api.post("/v1/reservations", json=reserve_body(user_id="alice"), headers=SERVICE)
    assert held.status_code == 201, held.text
    r = held.json()
    assert r["status"] == "held" and r["amount_micros"] == 7500 and r["reasons"] == []
    rid = r["reservation_id"]

    tick = api.post(
        f"/v1/reservations/{rid}/meter", json={"usage": {"input_tokens": 10}}, headers=SERVICE
    )
    assert tick.status_code == 200 and tick.json()["action"] == "continue"
    done = api.post(f"/v1/reservations/{rid}/commit", json={"usage": USAGE}, headers=SERVICE)
    assert done.status_code == 200, done.text
    assert done.json()["charged_micros"] == 7500 and done.json()["entry_seq"] == 1
    assert len(done.json()["entry_hash"]) == 64

    got = api.get(f"/v1/reservations/{rid}", headers=SERVICE)
    assert got.status_code == 200 and got.json()["status"] == "committed"
    assert got.json()["charged_micros"] == 7500
    assert got.json()["amount_micros"] == 7500  # the quoted amount, as fn_reservations_list says

    alice = auth("costwarden_tenant", "acme", "alice")
    mine = api.get("/v1/me/reservations", headers=alice)
    assert mine.status_code == 200 and [x["reservation_id"] for x in mine.json()] == [rid]
    # a tenant reads its reservations through /v1/me/reservations only
    assert api.get(f"/v1/reservations/{rid}", headers=alice).status_code == 403
    bob = auth("costwarden_tenant", "acme", "bob")
    assert api.get(f"/v1/reservations/{rid}", headers=bob).status_code == 403
    assert api.get("/v1/me/reservations", headers=bob).json() == []

    # a commit again with other usage: CW007 -> 409; release after commit: CW003 -> 409
    again = api.post(
        f"/v1/reservations/{rid}/commit", json={"usage": {"input_tokens": 1}}, headers=SERVICE
    )
    assert again.status_code == 409 and again.json()["sqlstate"] == "CW007"
    rel = api.post(f"/v1/reservations/{rid}/release", headers=SERVICE)
    assert rel.status_code == 409 and rel.json()["sqlstate"] == "CW003"


def test_release_and_ttl(api: TestClient) -> None:
    r = api.post("/v1/reservations", json=reserve_body(ttl_seconds=120), headers=SERVICE).json()
    rel = api.post(
        f"/v1/reservations/{r['reservation_id']}/release",
        json={"reason": "cancelled"},
        headers=SERVICE,
    )
    assert rel.status_code == 200 and rel.json() == {"released_micros": 7500}


def test_denied_reservation_is_402_with_reasons(api: TestClient) -> None:
    patch = api.patch(
        "/v1/orgs/acme/budgets/workspace/ws-platform",
        json={"period": "day", "limit": 5000},
        headers=ADMIN,
    )
    assert patch.status_code == 200, patch.text
    [status] = patch.json()
    assert status["limit_value"] == 5000 and status["period"] == "day"
    denied = api.post("/v1/reservations", json=reserve_body(), headers=SERVICE)
    assert denied.status_code == 402, denied.text
    body = denied.json()
    assert body["status"] == "denied"
    [reason] = body["reasons"]
    assert reason["code"] == "budget_exceeded" and reason["limit"] == 5000
    assert reason["requested"] == 7500 and reason["scope_kind"] == "workspace"
    # clearing the limit (null) admits it
    cleared = api.patch(
        "/v1/orgs/acme/budgets/workspace/ws-platform",
        json={"period": "day", "limit": None},
        headers=ADMIN,
    )
    assert cleared.status_code == 200 and cleared.json() == []
    assert api.post("/v1/reservations", json=reserve_body(), headers=SERVICE).status_code == 201


def test_budget_get_and_patch_errors(
    api: TestClient, admin_conn: psycopg.Connection[Any], table_snapshot: Callable[..., Any]
) -> None:
    ok = api.patch(
        "/v1/orgs/acme/budgets/org", json={"period": "month", "limit": 10_000_000}, headers=ADMIN
    )
    assert ok.status_code == 200
    got = api.get("/v1/orgs/acme/budgets/org", headers=SERVICE)
    assert got.status_code == 200
    [row] = got.json()
    assert row["limit_value"] == 10_000_000 and row["spent"] == 0 and row["remaining"] == 10_000_000

    before = table_snapshot(admin_conn)
    negative = api.patch(
        "/v1/orgs/acme/budgets/org", json={"period": "month", "limit": -1}, headers=ADMIN
    )
    assert negative.status_code == 400 and negative.json()["field"] == "limit", negative.text
    period = api.patch(
        "/v1/orgs/acme/budgets/org", json={"period": "fortnight", "limit": 1}, headers=ADMIN
    )
    assert period.status_code == 400 and period.json()["field"] == "period", period.text
    unknown = api.patch(
        "/v1/orgs/nope/budgets/org", json={"period": "day", "limit": 1}, headers=ADMIN
    )
    assert unknown.status_code == 404 and unknown.json()["sqlstate"] == "CW002"
    # the service role may not set budgets (no EXECUTE): 403
    service = api.patch(
        "/v1/orgs/acme/budgets/org", json={"period": "day", "limit": 1}, headers=SERVICE
    )
    assert service.status_code == 403
    assert table_snapshot(admin_conn) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"period": "day", "limit": 1.5}, "limit"),  # a float for micros
        ({"period": "day", "limit": 100.0}, "limit"),  # even an integral one
        ({"period": "day", "limit": "100"}, "limit"),  # a string
        ({"period": "day", "limit": True}, "limit"),  # a bool
        ({"period": "day", "limit": 1, "colour": "red"}, "colour"),  # unknown field
        ({"limit": 1}, "period"),  # missing field
        ({"period": "day", "limit": 1, "metric": "euros"}, "metric"),
    ],
)
def test_bad_budget_bodies_are_422_naming_the_field(
    api: TestClient,
    admin_conn: psycopg.Connection[Any],
    table_snapshot: Callable[..., Any],
    body: dict[str, Any],
    field: str,
) -> None:
    before = table_snapshot(admin_conn)
    r = api.patch("/v1/orgs/acme/budgets/org", json=body, headers=ADMIN)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert field in r.json()["message"]
    assert table_snapshot(admin_conn) == before


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"org_id": "acme", "workspace_id": ', "body"),  # malformed JSON
        (
            b'{"org_id": 1, "workspace_id": "ws-platform", "model": "openai/gpt-4o", "usage": {}}',
            "org_id",
        ),
        (
            b'{"org_id": "acme", "workspace_id": "ws-platform", "model": "openai/gpt-4o",'
            b' "usage": {"input_tokens": 1}, "ttl_seconds": 1.5}',
            "ttl_seconds",
        ),
        (
            b'{"org_id": "acme", "workspace_id": "ws-platform", "model": "openai/gpt-4o",'
            b' "usage": {"input_tokens": "1"}}',
            "usage.input_tokens",
        ),
        (
            b'{"org_id": "acme", "workspace_id": "ws-platform", "model": "openai/gpt-4o",'
            b' "usage": {"input_tokens": 1}, "amount_micros": 5}',
            "amount_micros",
        ),
        # the database's own check of usage (SPEC §0): CW004 names the unit
        (
            b'{"org_id": "acme", "workspace_id": "ws-platform", "model": "openai/gpt-4o",'
            b' "usage": {"input_tokens": 1.5}}',
            "usage",
        ),
        (
            b'{"org_id": "acme", "workspace_id": "ws-platform", "model": "openai/gpt-4o",'
            b' "usage": {"gold_bars": 1}}',
            "usage",
        ),
    ],
)
def test_bad_reserve_bodies_are_422_and_write_nothing(
    api: TestClient,
    admin_conn: psycopg.Connection[Any],
    table_snapshot: Callable[..., Any],
    raw: bytes,
    field: str,
) -> None:
    before = table_snapshot(admin_conn)
    r = api.post(
        "/v1/reservations", content=raw, headers={**SERVICE, "content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field, r.json()
    assert table_snapshot(admin_conn) == before


def test_unknown_reservation_and_bad_id(api: TestClient) -> None:
    r = api.post(
        "/v1/reservations/00000000-0000-0000-0000-000000000000/commit",
        json={"usage": USAGE},
        headers=SERVICE,
    )
    assert r.status_code == 404 and r.json()["sqlstate"] == "CW002"
    bad = api.post("/v1/reservations/not-a-uuid/commit", json={"usage": USAGE}, headers=SERVICE)
    assert bad.status_code == 422 and bad.json()["field"] == "reservation_id"


def test_unpriced_model_is_422(api: TestClient) -> None:
    r = api.post("/v1/quote", json=reserve_body(model="acme-labs/unpriced-1"), headers=SERVICE)
    assert r.status_code == 422 and r.json()["sqlstate"] == "CW006"


def test_user_limits_crud(api: TestClient) -> None:
    d = api.put(
        "/v1/orgs/acme/user-limits/default", json={"period": "day", "limit": 3000}, headers=ADMIN
    )
    assert d.status_code == 200 and d.json()[0]["limit_value"] == 3000
    g = api.put(
        "/v1/orgs/acme/user-limits/group/eng", json={"period": "day", "limit": 2000}, headers=ADMIN
    )
    assert g.status_code == 200, g.text
    u = api.put(
        "/v1/orgs/acme/user-limits/user/bob", json={"period": "day", "limit": 9000}, headers=ADMIN
    )
    assert u.status_code == 200
    alice = api.get("/v1/orgs/acme/user-limits/user/alice", headers=ADMIN).json()
    assert [(x["limit_value"], x["source"]) for x in alice] == [(2000, "group:eng")]
    bob = api.get("/v1/orgs/acme/user-limits/user/bob", headers=ADMIN).json()
    assert [(x["limit_value"], x["source"]) for x in bob] == [(9000, "user")]
    gone = api.delete("/v1/orgs/acme/user-limits/user/bob?period=day", headers=ADMIN)
    assert gone.status_code == 200
    bob = api.get("/v1/orgs/acme/user-limits/user/bob", headers=ADMIN).json()
    assert [x["source"] for x in bob] == ["group:eng"]
    assert (
        api.get("/v1/orgs/acme/user-limits/default", headers=ADMIN).json()[0]["limit_value"] == 3000
    )
    assert (
        api.put(
            "/v1/orgs/acme/user-limits/team/x", json={"period": "day", "limit": 1}, headers=ADMIN
        ).status_code
        == 422
    )
    # a denial through a user's effective limit
    r = api.post("/v1/reservations", json=reserve_body(user_id="alice"), headers=SERVICE)
    assert r.status_code == 402 and r.json()["reasons"][0]["scope_kind"] == "user"


def test_byok_keys_audit_anomalies_circuits(api: TestClient) -> None:
    put = api.put(
        "/v1/orgs/acme/workspaces/ws-vendor/keys/anthropic",
        json={"secret": "sk-ant-test-0123456789abcdef"},
        headers=ADMIN,
    )
    assert put.status_code == 200, put.text
    assert put.json()["fingerprint"].endswith("cdef")
    assert "0123456789" not in put.text
    forbidden = api.put(
        "/v1/orgs/acme/workspaces/ws-platform/keys/openai",
        json={"secret": "sk-x-123456789"},
        headers=ADMIN,
    )
    assert forbidden.status_code == 403 and forbidden.json()["sqlstate"] == "CW005"
    revoked = api.delete("/v1/orgs/acme/workspaces/ws-vendor/keys/anthropic", headers=ADMIN)
    assert revoked.status_code == 200 and revoked.json() == {"revoked": True}
    audit = api.get("/v1/orgs/acme/audit?limit=5", headers=ADMIN)
    assert audit.status_code == 200
    assert {"byok_key_put", "byok_key_revoke"} <= {a["action"] for a in audit.json()}
    assert "sk-ant" not in audit.text
    assert api.get("/v1/orgs/acme/anomalies", headers=ADMIN).json() == []
    assert api.post("/v1/anomalies/999/ack", headers=ADMIN).status_code == 404
    assert api.get("/v1/circuits", headers=SERVICE).status_code == 200


def test_request_ids(api: TestClient) -> None:
    r = api.get("/v1/circuits", headers={**SERVICE, "X-Request-ID": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42"
    fresh = api.get("/v1/circuits", headers={**SERVICE, "X-Request-ID": "bad id with spaces"})
    assert len(fresh.headers["x-request-id"]) == 32
    err = api.get("/v1/reservations/00000000-0000-0000-0000-000000000000", headers=SERVICE)
    assert err.json()["request_id"] == err.headers["x-request-id"]


def test_healthz_and_metrics(api: TestClient) -> None:
    h = api.get("/healthz")
    assert h.status_code == 200, h.text
    assert h.json() == {
        "ok": True,
        "database": True,
        "schema_up_to_date": True,
        "pending_migrations": [],
        "outdated_functions": [],
        "unknown_migrations": [],
    }
    api.patch("/v1/orgs/acme/budgets/org", json={"period": "month", "limit": 10000}, headers=ADMIN)
    api.post("/v1/reservations", json=reserve_body(), headers=SERVICE)
    api.post("/v1/reservations", json=reserve_body(), headers=SERVICE)  # 15000 > 10000: denied
    text = api.get("/metrics", headers=ADMIN).text
    assert "costwarden_reservations_held 1.0" in text
    assert 'costwarden_reservations_last_hour{org="acme",status="denied"} 1.0' in text
    assert 'costwarden_denials_last_hour{org="acme",reason="budget_exceeded"} 1.0' in text
    assert (
        'costwarden_limit_held_ratio{metric="cost",org="acme",period="month",scope_id="",'
        'scope_kind="org",window="rolling"} 0.75' in text
    )
    assert "# TYPE costwarden_circuit_state gauge" in text
    assert (
        'costwarden_http_request_seconds_bucket{le="0.001",method="POST",route="/v1/reservations"'
        in text
    )
    assert 'costwarden_http_reservations_total{status="held"} 1.0' in text
    assert (
        api.get("/metrics", headers=auth("costwarden_tenant", "acme", "alice")).status_code == 403
    )


def test_healthz_is_503_on_a_schema_newer_than_the_service(
    api: TestClient, admin_conn: psycopg.Connection[Any]
) -> None:
    """A migration this service does not ship was applied (a newer costwarden migrated
    the database): its code is older than the schema, so it is not healthy."""
    admin_conn.execute(
        "insert into costwarden._migrations (version, name, checksum) "
        "values (9999, '9999_from_a_newer_costwarden.sql', 'x')"
    )
    h = api.get("/healthz")
    assert h.status_code == 503
    assert h.json()["unknown_migrations"] == [9999] and h.json()["schema_up_to_date"] is False


def test_database_down_is_503(seeded: Seeded) -> None:
    app = create_app(
        ServerConfig(
            dsn="host=127.0.0.1 port=1 connect_timeout=1",
            jwt_secret=SECRET,
            pool_timeout=1.0,
            pool_min=0,
        )
    )
    with TestClient(app) as client:
        r = client.post("/v1/reservations", json=reserve_body(), headers=SERVICE)
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "database_unavailable"
        assert client.get("/healthz").status_code == 503


def test_spend_limits_and_allocations(api: TestClient, client: Any) -> None:
    api.patch(
        "/v1/orgs/acme/budgets/key/key-1",
        json={"period": "month", "limit": 50_000, "window": "calendar"},
        headers=ADMIN,
    )
    r = api.post(
        "/v1/reservations", json=reserve_body(user_id="alice", key_id="key-1"), headers=SERVICE
    ).json()
    api.post(
        f"/v1/reservations/{r['reservation_id']}/commit",
        json={"usage": {"input_tokens": 400}},
        headers=SERVICE,
    )
    api.post(
        "/v1/reservations",
        json=reserve_body(workspace_id="ws-vendor", model="anthropic/claude-3-5-sonnet"),
        headers=SERVICE,
    )

    rows = api.get("/v1/orgs/acme/spend?scope_kind=workspace", headers=SERVICE)
    assert rows.status_code == 200, rows.text
    expected = client.spend_summary("acme", "workspace")
    assert [(x["scope_id"], x["spent_micros"], x["held_micros"]) for x in rows.json()] == [
        (s.scope_id, s.spent_micros, s.held_micros) for s in expected
    ]
    assert {x["scope_id"]: x["spent_micros"] for x in rows.json()}["ws-platform"] == 1000
    org = api.get("/v1/orgs/acme/spend", headers=SERVICE).json()
    assert org[0]["scope_kind"] == "org" and org[0]["limit_micros"] is None
    bad = api.get("/v1/orgs/acme/spend?period=fortnight", headers=SERVICE)
    assert bad.status_code == 422 and bad.json()["field"] == "period"

    limits = api.get("/v1/orgs/acme/limits", headers=ADMIN).json()
    assert [(x["scope_kind"], x["scope_id"], x["limit_value"]) for x in limits] == [
        ("key", "key-1", 50_000)
    ]

    alice = auth("costwarden_tenant", "acme", "alice")
    [card] = api.get("/v1/me/allocations", headers=alice).json()
    assert card["key_id"] == "key-1" and card["limit_micros"] == 50_000
    assert card["spent_micros"] == 1000 and card["remaining_micros"] == 49_000
    assert (
        api.get("/v1/me/allocations", headers=auth("costwarden_tenant", "acme", "bob")).json() == []
    )
    # a tenant reads its own user scope's spend, not the org's nor another user's
    assert (
        api.get("/v1/orgs/acme/spend?scope_kind=user&scope_id=alice", headers=alice).status_code
        == 200
    )
    assert api.get("/v1/orgs/acme/spend", headers=alice).status_code == 403
    assert (
        api.get("/v1/orgs/acme/spend?scope_kind=user&scope_id=bob", headers=alice).status_code
        == 403
    )
    assert (
        api.get("/v1/orgs/globex/spend?scope_kind=user&scope_id=alice", headers=alice).status_code
        == 403
    )


def test_json_numbers_from_the_database_stay_exact(
    login_dsn: str, seeded: Seeded, client: Any
) -> None:
    """The pool sets the exact JSON loader once per connection (not per request): a
    number with a fraction read from the database comes back as a Decimal, request
    after request on the same connections."""
    client.set_setting("anomaly_sigma", Decimal("4.1"))
    db = Database(ServerConfig(dsn=login_dsn, jwt_secret=SECRET))
    admin = Identity(role="costwarden_admin", org_id=None, sub=None, claims={})

    async def read() -> list[Any]:
        await db.open()
        try:
            return [await db.run(admin, q.setting_get("anomaly_sigma")) for _ in range(4)]
        finally:
            await db.close()

    values = asyncio.run(read())
    assert all(type(v) is Decimal and v == Decimal("4.1") for v in values), values


def test_serve_runs_on_the_c_http_parser_and_event_loop(login_dsn: str) -> None:
    """The server extra installs httptools and uvloop; the configuration `costwarden
    serve` runs picks them over h11 and asyncio's own loop."""
    import uvloop
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from costwarden.cli.serve import uvicorn_config

    app = create_app(ServerConfig(dsn=login_dsn, jwt_secret=SECRET))
    config = uvicorn_config(app, "127.0.0.1", 0, "warning")
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol
    factory = config.get_loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_integers_out_of_range_are_refused_before_the_database(
    api: TestClient, admin_conn: psycopg.Connection[Any], table_snapshot: Callable[..., Any]
) -> None:
    """SPEC §0: no input surfaces as a bare PostgreSQL error (22003, 42883: a 500). A
    budget limit no bigint holds is 400 naming it, as a negative one (§13); a hold's
    ttl_seconds outside what fn_cost_reserve grants (1 s to 7 days) and an anomaly id no
    bigint holds are 422 naming them, as any other bad value of a body or path."""
    before = table_snapshot(admin_conn)
    for body in (
        {"period": "day", "limit": 100000000000000000000},
        {"period": "day", "limit": 2**63},
        {"period": "day", "limit": -(2**63) - 1},
    ):
        r = api.patch("/v1/orgs/acme/budgets/key/key-1", json=body, headers=ADMIN)
        assert r.status_code == 400, r.text
        assert r.json()["field"] == "limit" and r.json()["sqlstate"] == "CW004"
    r = api.put(
        "/v1/orgs/acme/user-limits/user/alice",
        json={"period": "day", "limit": 9223372036854775808},
        headers=ADMIN,
    )
    assert r.status_code == 400 and r.json()["field"] == "limit", r.text
    r = api.put(
        "/v1/orgs/acme/user-limits/default", json={"period": "day", "limit": 2**64}, headers=ADMIN
    )
    assert r.status_code == 400 and r.json()["field"] == "limit", r.text
    r = api.post("/v1/anomalies/100000000000000000000/ack", headers=ADMIN)
    assert r.status_code == 422 and r.json()["field"] == "anomaly_id", r.text
    for ttl in (10**20, 7 * 24 * 3600 + 1, 0, -1):
        r = api.post("/v1/reservations", json=reserve_body(ttl_seconds=ttl), headers=SERVICE)
        assert r.status_code == 422 and r.json()["field"] == "ttl_seconds", r.text
    assert table_snapshot(admin_conn) == before

    # the bounds themselves pass
    top = api.patch(
        "/v1/orgs/acme/budgets/key/key-1", json={"period": "day", "limit": 2**63 - 1}, headers=ADMIN
    )
    assert top.status_code == 200 and top.json()[0]["limit_value"] == 2**63 - 1, top.text
    assert api.post(f"/v1/anomalies/{2**63 - 1}/ack", headers=ADMIN).status_code == 404
    week = api.post(
        "/v1/reservations", json=reserve_body(ttl_seconds=7 * 24 * 3600), headers=SERVICE
    )
    assert week.status_code == 201, week.text

    # the dashboard's form: an amount no bigint of micros holds is said on the page
    raw = token("costwarden_admin")
    form = api.post(
        "/budgets",
        data={
            "csrf": csrf_token(raw),
            "org": "acme",
            "scope_kind": "org",
            "period": "day",
            "window": "calendar",
            "limit_usd": "100000000000000",
        },
        headers={"Authorization": f"Bearer {raw}"},
        follow_redirects=False,
    )
    assert form.status_code == 303, form.text
    assert "p_limit" in unquote_plus(form.headers["location"])
    assert api.get("/v1/orgs/acme/budgets/org", headers=ADMIN).json() == []


def test_a_budget_change_and_its_read_back_are_one_transaction(
    api: TestClient, admin_conn: psycopg.Connection[Any], table_snapshot: Callable[..., Any]
) -> None:
    """PATCH budgets and PUT / DELETE user-limits set a limit and answer the scope's
    status after it: one transaction, so a refused read-back (here: fn_budget_status no
    longer granted) rolls the write back instead of following it committed."""
    assert (
        api.put(
            "/v1/orgs/acme/user-limits/user/bob",
            json={"period": "day", "limit": 9000},
            headers=ADMIN,
        ).status_code
        == 200
    )
    admin_conn.execute(
        """
        do $$
        declare
            f regprocedure;
        begin
            for f in select p.oid::regprocedure from pg_proc as p
                     where p.proname = 'fn_budget_status'
                       and p.pronamespace = 'costwarden'::regnamespace loop
                execute format('revoke execute on function %s from public, costwarden_admin, '
                               'costwarden_service, costwarden_tenant', f);
            end loop;
        end
        $$
        """
    )
    assert api.get("/v1/orgs/acme/budgets/org", headers=ADMIN).status_code == 403
    before = table_snapshot(admin_conn)
    refused = [
        api.patch("/v1/orgs/acme/budgets/org", json={"period": "day", "limit": 1}, headers=ADMIN),
        api.put(
            "/v1/orgs/acme/user-limits/user/alice",
            json={"period": "day", "limit": 5},
            headers=ADMIN,
        ),
        api.put(
            "/v1/orgs/acme/user-limits/default", json={"period": "day", "limit": 7}, headers=ADMIN
        ),
        api.delete("/v1/orgs/acme/user-limits/user/bob?period=day", headers=ADMIN),
    ]
    assert [r.status_code for r in refused] == [403] * 4, [r.text for r in refused]
    assert table_snapshot(admin_conn) == before
    limits = Client(admin_conn, on_unavailable="closed").budget_list("acme")
    assert [(b.scope_kind, b.scope_id, b.limit_value) for b in limits] == [("user", "bob", 9000)]
