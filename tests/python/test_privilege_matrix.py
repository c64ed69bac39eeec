"""The privilege matrix (SPEC §9, §12): every costwarden routine against every role,
generated from the catalogue by tools/privilege_matrix.py, proved cell by cell with a
real call, and checked against the table in docs/threat-model.md (one source: the test
fails when the document drifts; `python tools/privilege_matrix.py` rewrites it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import privilege_matrix as pm

Conn = psycopg.Connection[Any]


def _null_call(conn: Conn, oid: int) -> sql.Composable:
    row = conn.execute(
        "select p.proname, coalesce(array(select format_type(t, null) "
        "from unnest(p.proargtypes) as t), '{}'), p.provariadic <> 0 "
        "from pg_proc p where p.oid = %s",
        (oid,),
    ).fetchone()
    assert row is not None
    name, types, variadic = row
    args = sql.SQL(", ").join(
        sql.SQL("{}null::{}").format(
            sql.SQL("variadic " if variadic and i == len(types) - 1 else ""), sql.SQL(t)
        )
        for i, t in enumerate(types)
    )
    return sql.SQL("select costwarden.{}({})").format(sql.Identifier(name), args)


def test_the_documented_matrix_is_the_catalogue(admin_conn: Conn) -> None:
    rows = pm.matrix(admin_conn)
    assert len(rows) > 100
    assert pm.documented() == pm.render(rows), (
        "docs/threat-model.md's privilege matrix is out of date: "
        "run .venv/bin/python tools/privilege_matrix.py"
    )


def test_every_cell_holds_for_a_real_call(admin_conn: Conn) -> None:
    rows = pm.matrix(admin_conn)
    public_probe = "cw_matrix_public_probe"  # no grants, no memberships: PUBLIC's rights
    wrong = []
    with admin_conn.transaction(force_rollback=True):
        admin_conn.execute(f"create role {pm.PLAIN_LOGIN} login")
        admin_conn.execute(f"create role {public_probe} nologin")
        admin_conn.execute("set local statement_timeout = '5s'")
        for oid, signature, allowed in rows:
            call = _null_call(admin_conn, oid)
            for column, role in pm.ROLES:
                as_role = public_probe if role == "public" else role
                state = None
                try:
                    with admin_conn.transaction():
                        admin_conn.execute(
                            sql.SQL("set local role {}").format(sql.Identifier(as_role))
                        )
                        admin_conn.execute(call)
                except psycopg.Error as exc:
                    state = exc.sqlstate
                if allowed[column] == (state == "42501"):
                    wrong.append(
                        f"{signature} as {column}: documented "
                        f"{'allowed' if allowed[column] else '42501'}, got {state}"
                    )
    assert not wrong, wrong[:10]


def test_the_matrix_separates_the_roles(admin_conn: Conn) -> None:
    """What the matrix must show: nobody but the owner runs an internal routine; no RPC
    is open to PUBLIC, a plain login or the authenticator by itself; the owner runs
    everything."""
    for _oid, signature, allowed in pm.matrix(admin_conn):
        assert allowed["owner"], signature
        assert not (allowed["PUBLIC"] or allowed["plain login"] or allowed["authenticator"]), (
            signature
        )
        if signature.startswith("_"):
            assert not any(allowed[c] for c in ("admin", "service", "tenant")), signature
