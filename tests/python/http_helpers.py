"""Shared by the test_server_*.py modules: a login role for `costwarden serve`, tokens,
and the application (in process, or as a real `costwarden serve` process)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from costwarden.bench.http import ServeProcess as _ServeProcess

SECRET = "test-secret-of-at-least-32-bytes-length!"
#: The login `costwarden serve` connects as: a member of costwarden_authenticator (when
#: the database has it) and of the three roles tokens may name, NOINHERIT (PostgREST's
#: authenticator pattern): without a SET ROLE it holds no privilege of its own.
LOGIN = "cw_serve_login"
ROLES = ("costwarden_admin", "costwarden_service", "costwarden_tenant")
REPO = Path(__file__).resolve().parents[2]


def ensure_login(admin_dsn: str) -> str:
    """Create (once per cluster) the login role; its DSN for the database of ``admin_dsn``."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_roles where rolname = %s", [LOGIN]).fetchone()
        if not exists:
            conn.execute(sql.SQL("create role {} login noinherit").format(sql.Identifier(LOGIN)))
        roles = [
            r
            for (r,) in conn.execute(
                "select rolname from pg_roles where rolname = any(%s)",
                [[*ROLES, "costwarden_authenticator"]],
            )
        ]
        for role in roles:
            conn.execute(
                sql.SQL("grant {} to {}").format(sql.Identifier(role), sql.Identifier(LOGIN))
            )
        conn.execute(
            sql.SQL("grant connect on database {} to {}").format(
                sql.Identifier(conn.info.dbname), sql.Identifier(LOGIN)
            )
        )
    info = conninfo_to_dict(admin_dsn)
    info["user"] = LOGIN
    info.pop("password", None)
    return make_conninfo("", **{k: v for k, v in info.items() if v is not None})


def token(
    role: str = "costwarden_admin",
    org_id: str | None = None,
    sub: str | None = None,
    *,
    expires_in: int = 6 * 3600,  # module-level tokens outlive a slow full run
    key: Any = SECRET,
    algorithm: str = "HS256",
    headers: Mapping[str, Any] | None = None,
    **claims: Any,
) -> str:
    now = int(time.time())
    body: dict[str, Any] = {"role": role, "iat": now, "exp": now + expires_in, **claims}
    if org_id is not None:
        body["org_id"] = org_id
    if sub is not None:
        body["sub"] = sub
    return jwt.encode(body, key, algorithm=algorithm, headers=dict(headers or {}))


def auth(
    role: str = "costwarden_admin", org_id: str | None = None, sub: str | None = None
) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(role, org_id, sub)}"}


class ServeProcess(_ServeProcess):
    """A real `costwarden serve` on 127.0.0.1 that verifies the tests' tokens (SECRET)."""

    def __init__(self, dsn: str, env: Mapping[str, str] | None = None) -> None:
        super().__init__(dsn, secret=SECRET, env=env)


@pytest.fixture
def login_dsn(dsn: str) -> str:
    return ensure_login(dsn)


@pytest.fixture
def serve_process(login_dsn: str) -> Iterator[ServeProcess]:
    process = ServeProcess(login_dsn)
    try:
        yield process
    finally:
        process.stop()
