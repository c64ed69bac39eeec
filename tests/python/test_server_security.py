"""`costwarden serve`'s security (SPEC §12, §13): no route without a valid token; bad
tokens are 401 and foreign roles 403; a tenant token cannot read or change another org
or user (the SQL tenant matrix, through HTTP); bodies over the bound are 413; CORS is off
unless configured; RS256 / ES256 from a JWKS file, issuer and audience checks; a
verified token is reused until its exp (at most jwt_cache_seconds), a refused one never."""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from costwarden.cli.main import main as cli
from costwarden.server import ServerConfig, create_app
from costwarden.server.auth import NotPermitted, TokenVerifier, Unauthenticated
from cwtest import Seeded
from http_helpers import SECRET, auth, login_dsn, token

__all__ = ["login_dsn"]

#: Routes that answer without a token, and why: the health probe (up / schema up to
#: date, nothing else), the dashboard's sign-in form and sign-out (clears the cookie).
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),  # only clears the cookie
}


@pytest.fixture
def api(login_dsn: str, seeded: Seeded) -> Iterator[TestClient]:
    app = create_app(ServerConfig(dsn=login_dsn, jwt_secret=SECRET))
    with TestClient(app) as client:
        yield client


def routes(client: TestClient) -> list[tuple[str, str]]:
    out = []
    for route in client.app.routes:  # type: ignore[attr-defined]
        methods = getattr(route, "methods", None) or set()
        for method in sorted(methods - {"HEAD"}):
            out.append((method, route.path))
    return out


def concrete(path: str) -> str:
    values = {
        "reservation_id": "00000000-0000-0000-0000-000000000000",
        "anomaly_id": "1",
        "org": "acme",
    }
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "x"), path)


def test_every_route_but_the_public_ones_needs_a_valid_token(api: TestClient) -> None:
    checked = 0
    for method, path in routes(api):
        if (method, path) in PUBLIC:
            continue
        for headers in ({}, {"Authorization": "Bearer not.a.jwt"}, {"Authorization": "Basic eDp4"}):
            r = api.request(method, concrete(path), headers=headers, json={})
            assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
        checked += 1
    assert checked >= 20
    api_routes = {r.path for r in api.app.routes if isinstance(r, APIRoute)}  # type: ignore[attr-defined]
    assert {"/v1/reservations", "/metrics", "/"} <= api_routes


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda: token(expires_in=-30), 401),  # expired
        (lambda: token(key="another-secret-of-at-least-32-bytes!!"), 401),  # another key
        (
            lambda: jwt.encode({"role": "costwarden_admin", "exp": 2**31}, None, algorithm="none"),
            401,
        ),
        (lambda: token(role="postgres"), 403),  # not one of the three roles
        (lambda: token(role="costwarden_owner"), 403),
        (lambda: token(role=None), 401),  # no role claim: null is missing
        (
            lambda: jwt.encode({"role": "costwarden_admin"}, SECRET, algorithm="HS256"),
            401,
        ),  # no exp
    ],
    ids=["expired", "wrong-key", "alg-none", "role-postgres", "role-owner", "role-null", "no-exp"],
)
def test_bad_tokens(api: TestClient, make: Any, status: int) -> None:
    r = api.get("/v1/circuits", headers={"Authorization": f"Bearer {make()}"})
    assert r.status_code == status, r.text


def test_a_token_signed_with_the_secret_under_another_algorithm_is_refused(
    api: TestClient,
) -> None:
    """The server accepts the algorithm it is configured for (HS256) only: the same
    secret under HS512 is not a valid token."""
    header = jwt.get_unverified_header(token())
    assert header["alg"] == "HS256"
    with warnings.catch_warnings():  # the test secret is short for HS512, on purpose
        warnings.simplefilter("ignore")
        forged = jwt.encode({"role": "costwarden_admin", "exp": 2**31}, SECRET, algorithm="HS512")
    assert api.get("/v1/circuits", headers={"Authorization": f"Bearer {forged}"}).status_code == 401


TENANT = auth("costwarden_tenant", "acme", "alice")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/orgs/globex/budgets/org", None),  # another org
        ("GET", "/v1/orgs/acme/budgets/user/bob", None),  # another user
        ("GET", "/v1/orgs/globex/budgets/user/alice", None),  # itself, in another org
        ("GET", "/v1/orgs/acme/budgets/key/key-2", None),  # a key it does not own
        ("PATCH", "/v1/orgs/acme/budgets/user/alice", {"period": "day", "limit": 10**12}),
        ("PATCH", "/v1/orgs/globex/budgets/org", {"period": "day", "limit": None}),
        ("PUT", "/v1/orgs/acme/user-limits/user/alice", {"period": "day", "limit": 10**12}),
        ("DELETE", "/v1/orgs/acme/user-limits/group/eng?period=day", None),
        (
            "POST",
            "/v1/reservations",
            {
                "org_id": "acme",
                "workspace_id": "ws-platform",
                "model": "openai/gpt-4o",
                "usage": {"input_tokens": 1},
                "user_id": "alice",
            },
        ),
        (
            "POST",
            "/v1/quote",
            {
                "org_id": "globex",
                "workspace_id": "ws-main",
                "model": "openai/gpt-4o",
                "usage": {"input_tokens": 1},
            },
        ),
        (
            "PUT",
            "/v1/orgs/acme/workspaces/ws-vendor/keys/anthropic",
            {"secret": "sk-ant-123456789"},
        ),
        ("DELETE", "/v1/orgs/acme/workspaces/ws-vendor/keys/anthropic", None),
        ("GET", "/v1/orgs/acme/audit", None),
        ("GET", "/v1/orgs/globex/anomalies", None),
        ("POST", "/v1/anomalies/1/ack", None),
        ("GET", "/metrics", None),
    ],
)
def test_a_tenant_cannot_reach_another_org_or_user(
    api: TestClient, method: str, path: str, body: Any
) -> None:
    r = api.request(method, path, headers=TENANT, json=body)
    assert r.status_code == 403, (r.status_code, r.text)


def test_a_tenant_reads_its_own(api: TestClient, seeded: Seeded) -> None:
    admin = auth("costwarden_admin")
    api.patch(
        "/v1/orgs/acme/budgets/user/alice", json={"period": "day", "limit": 5000}, headers=admin
    )
    own = api.get("/v1/orgs/acme/budgets/user/alice", headers=TENANT)
    assert own.status_code == 200 and own.json()[0]["limit_value"] == 5000
    key = api.get("/v1/orgs/acme/budgets/key/key-1", headers=TENANT)  # alice owns key-1
    assert key.status_code == 200
    # a token for another org's user cannot reach acme's reservations
    svc = auth("costwarden_service", "acme")
    rid = api.post(
        "/v1/reservations",
        json={
            "org_id": "acme",
            "workspace_id": "ws-platform",
            "model": "openai/gpt-4o",
            "usage": {"input_tokens": 1},
            "user_id": "alice",
        },
        headers=svc,
    ).json()["reservation_id"]
    globex = auth("costwarden_tenant", "globex", "alice")
    assert api.get(f"/v1/reservations/{rid}", headers=globex).status_code == 403
    assert api.get("/v1/me/reservations", headers=globex).json() == []
    assert api.get(f"/v1/reservations/{rid}", headers=TENANT).status_code == 403  # no EXECUTE
    # a service token bound to another org cannot act on acme
    other_service = auth("costwarden_service", "globex")
    assert api.get("/v1/orgs/acme/budgets/org", headers=other_service).status_code == 403


def test_an_org_scoped_admin_or_service_token_cannot_change_another_org(
    api: TestClient, seeded: Seeded
) -> None:
    """A token with an org_id is held to that org on writes as on reads: 403 and
    nothing changed (the SQL guard: test_actor_confinement.py)."""
    acme_admin = auth("costwarden_admin", "acme", "ops")
    unscoped = auth("costwarden_admin")

    def globex_state() -> tuple[Any, ...]:
        return (
            api.get("/v1/orgs/globex/budgets/org", headers=unscoped).json(),
            api.get("/v1/orgs/globex/audit", headers=unscoped).json(),
        )

    before = globex_state()
    for method, path, body in (
        ("PATCH", "/v1/orgs/globex/budgets/org", {"period": "day", "limit": 0}),
        ("PUT", "/v1/orgs/globex/user-limits/default", {"period": "day", "limit": 0}),
        ("DELETE", "/v1/orgs/globex/workspaces/ws-main/keys/openai", None),
        ("GET", "/v1/orgs/globex/audit", None),
    ):
        r = api.request(method, path, headers=acme_admin, json=body)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
    assert globex_state() == before
    # a service token of acme can neither reserve in globex nor commit globex's holds
    acme_service = auth("costwarden_service", "acme")
    call = {
        "org_id": "globex",
        "workspace_id": "ws-main",
        "model": "openai/gpt-4o",
        "usage": {"input_tokens": 1},
    }
    assert api.post("/v1/reservations", json=call, headers=acme_service).status_code == 403
    held = api.post("/v1/reservations", json=call, headers=auth("costwarden_service"))
    rid = held.json()["reservation_id"]
    commit = {"usage": {"input_tokens": 1}}
    r = api.post(f"/v1/reservations/{rid}/commit", json=commit, headers=acme_service)
    assert r.status_code == 403
    assert api.get(f"/v1/reservations/{rid}", headers=unscoped).json()["status"] == "held"
    # its own org it still runs
    ok = api.patch(
        "/v1/orgs/acme/budgets/org", json={"period": "day", "limit": 10**9}, headers=acme_admin
    )
    assert ok.status_code == 200 and ok.json()[0]["limit_value"] == 10**9


def test_body_over_the_bound_is_413(login_dsn: str, seeded: Seeded) -> None:
    app = create_app(ServerConfig(dsn=login_dsn, jwt_secret=SECRET, max_body_bytes=1024))
    with TestClient(app) as client:
        big = {
            "org_id": "acme",
            "workspace_id": "ws-platform",
            "model": "openai/gpt-4o",
            "usage": {"input_tokens": 1},
            "metadata": {"pad": "x" * 2000},
        }
        r = client.post("/v1/reservations", json=big, headers=auth("costwarden_service"))
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
            yield json.dumps(big).encode()[:900]
            yield json.dumps(big).encode()[900:]

        streamed = client.post(
            "/v1/reservations",
            content=chunks(),
            headers={**auth("costwarden_service"), "content-type": "application/json"},
        )
        assert streamed.status_code == 413
        # nothing was reserved
        mine = client.get("/v1/orgs/acme/budgets/workspace/ws-platform", headers=auth())
        assert mine.status_code == 200


def test_cors_is_off_by_default(api: TestClient, login_dsn: str) -> None:
    pre = api.options(
        "/v1/reservations",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in pre.headers
    got = api.get("/v1/circuits", headers={**auth(), "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in got.headers
    app = create_app(
        ServerConfig(dsn=login_dsn, jwt_secret=SECRET, cors_origins=("https://app.example",))
    )
    with TestClient(app) as client:
        ok = client.get("/v1/circuits", headers={**auth(), "Origin": "https://app.example"})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        evil = client.get("/v1/circuits", headers={**auth(), "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in evil.headers


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_jwks_file_issuer_and_audience(
    login_dsn: str, seeded: Seeded, tmp_path: Path, alg: str
) -> None:
    key: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if alg == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    other: Any = ec.generate_private_key(ec.SECP256R1())
    algo = jwt.get_algorithm_by_name(alg)
    jwk = json.loads(algo.to_jwk(key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": alg, "use": "sig"}]}))
    config = ServerConfig(
        dsn=login_dsn, jwks=str(jwks), issuer="https://id.example", audience="costwarden"
    )
    good = {"iss": "https://id.example", "aud": "costwarden"}
    with TestClient(create_app(config)) as client:

        def status(key_: Any, claims: dict[str, Any], kid: str = "k1", a: str = alg) -> int:
            t = token(key=key_, algorithm=a, headers={"kid": kid}, **claims)
            return client.get("/v1/circuits", headers={"Authorization": f"Bearer {t}"}).status_code

        assert status(key, good) == 200
        assert status(other, good, a="ES256") == 401  # another key, same kid
        assert status(key, good, kid="k2") == 401  # unknown kid
        assert status(key, {**good, "iss": "https://evil.example"}) == 401
        assert status(key, {**good, "aud": "other"}) == 401
        assert status(key, {"iss": "https://id.example"}) == 401  # no audience
        assert status(SECRET, good, a="HS256") == 401  # HS256 is not accepted with a JWKS


class CountingDecode:
    """jwt.decode, counted: how many tokens the verifier really verified."""

    def __init__(self) -> None:
        self.calls = 0
        self._decode = jwt.decode

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._decode(*args, **kwargs)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> CountingDecode:
    counting = CountingDecode()
    monkeypatch.setattr("costwarden.server.auth.jwt.decode", counting)
    return counting


def test_a_verified_token_is_reused_until_its_exp_and_no_longer(decodes: CountingDecode) -> None:
    verifier = TokenVerifier(ServerConfig(dsn="unused", jwt_secret=SECRET, jwt_cache_seconds=60))
    t = token("costwarden_tenant", "acme", "alice", expires_in=2)
    first = verifier.verify(f"Bearer {t}")
    assert verifier.verify(f"Bearer {t}") == first
    assert (first.role, first.org_id, first.sub, decodes.calls) == (
        "costwarden_tenant",
        "acme",
        "alice",
        1,
    )
    # the same claims under another signature are other bytes: verified, and refused
    forged = t.rsplit(".", 1)[0] + "." + token(key="x" * 32).rsplit(".", 1)[1]
    with pytest.raises(Unauthenticated):
        verifier.verify(f"Bearer {forged}")
    time.sleep(max(0.0, jwt.decode(t, options={"verify_signature": False})["exp"] - time.time()))
    time.sleep(0.1)
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(f"Bearer {t}")


def test_the_token_cache_keeps_an_identity_at_most_jwt_cache_seconds(
    decodes: CountingDecode,
) -> None:
    t = f"Bearer {token('costwarden_service')}"
    off = TokenVerifier(ServerConfig(dsn="unused", jwt_secret=SECRET, jwt_cache_seconds=0))
    off.verify(t)
    off.verify(t)
    assert decodes.calls == 2  # 0: every request verifies its token
    short = TokenVerifier(ServerConfig(dsn="unused", jwt_secret=SECRET, jwt_cache_seconds=1))
    short.verify(t)
    short.verify(t)
    assert decodes.calls == 3
    time.sleep(1.1)
    short.verify(t)
    assert decodes.calls == 4
    with pytest.raises(ValueError, match="jwt_cache_seconds"):
        ServerConfig(dsn="unused", jwt_secret=SECRET, jwt_cache_seconds=-1)
    env = {"COSTWARDEN_JWT_SECRET": SECRET, "COSTWARDEN_JWT_CACHE_SECONDS": "5"}
    assert ServerConfig.from_env("unused", env).jwt_cache_seconds == 5


def test_a_refused_token_is_not_kept(decodes: CountingDecode) -> None:
    verifier = TokenVerifier(ServerConfig(dsn="unused", jwt_secret=SECRET))
    foreign = f"Bearer {token('postgres')}"  # verified, then refused for its role: 403
    for _ in range(2):
        with pytest.raises(NotPermitted):
            verifier.verify(foreign)
    assert decodes.calls == 2


def test_an_hs256_secret_shorter_than_32_bytes_is_refused_at_startup() -> None:
    """docs/http.md: an HS256 secret of 32 bytes or more. A shorter one is refused when
    the service starts (ServerConfig, so `costwarden serve` exits at once), by a message
    that says what is wrong without the secret."""
    short = "hunter2-is-a-weak-jwt-secret!!"  # 30 bytes
    with pytest.raises(ValueError, match="at least 32 bytes") as refused:
        ServerConfig(dsn="unused", jwt_secret=short)
    assert short not in str(refused.value)
    with pytest.raises(ValueError, match="COSTWARDEN_JWT_SECRET is too short"):
        ServerConfig.from_env("unused", {"COSTWARDEN_JWT_SECRET": short})
    # bytes, not characters: 16 two-byte characters are enough
    assert ServerConfig(dsn="unused", jwt_secret="é" * 16).jwt_secret == "é" * 16
    assert ServerConfig(dsn="unused", jwt_secret="x" * 32).jwt_secret == "x" * 32
    with pytest.raises(ValueError, match="at least 32 bytes"):
        ServerConfig(dsn="unused", jwt_secret="é" * 15 + "x")

    result = CliRunner().invoke(
        cli,
        ["--dsn", "host=/nonexistent", "serve", "--port", "1"],
        env={"COSTWARDEN_JWT_SECRET": short, "COSTWARDEN_JWKS": ""},
    )
    assert result.exit_code != 0
    assert "at least 32 bytes" in result.output and short not in result.output


@pytest.mark.parametrize(
    ("base_url", "secure"), [("https://cw.example", True), ("http://127.0.0.1", False)]
)
def test_the_dashboard_cookie_is_secure_when_signed_in_over_https(
    login_dsn: str, base_url: str, secure: bool
) -> None:
    app = create_app(ServerConfig(dsn=login_dsn, jwt_secret=SECRET))
    with TestClient(app, base_url=base_url) as client:
        r = client.post("/login", data={"token": token("costwarden_admin")}, follow_redirects=False)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert ("; secure" in cookie) is secure
