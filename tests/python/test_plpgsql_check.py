"""plpgsql_check over every PL/pgSQL function of a migrated costwarden: no errors and no
warnings (the same query as `make lint`, scripts/plpgsql_check.sql)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from costwarden import migrate as m

QUERY = (Path(__file__).resolve().parents[2] / "scripts" / "plpgsql_check.sql").read_text()


def _findings(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(QUERY.encode()).fetchall()


def test_every_plpgsql_function_passes_plpgsql_check(fresh_database: Callable[[], str]) -> None:
    dsn = fresh_database()
    m.migrate(dsn, schedule=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create extension plpgsql_check")
        row = conn.execute(
            "select count(*) from pg_proc as p join pg_language as l on l.oid = p.prolang "
            "where l.lanname = 'plpgsql' and p.pronamespace = 'costwarden'::regnamespace"
        ).fetchone()
        assert row is not None and row[0] > 50
        assert _findings(conn) == []

        # the check is not vacuous: a function that names a missing column is an error
        conn.execute(
            "create function costwarden._lint_probe() returns bigint language plpgsql as $$ "
            "begin return (select o.no_such_column from costwarden._orgs as o limit 1); end $$"
        )
        found = _findings(conn)
        assert [(f[0], f[1]) for f in found] == [("costwarden._lint_probe()", "error")]
        assert "no_such_column" in found[0][4]
