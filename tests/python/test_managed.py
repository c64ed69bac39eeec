"""Managed PostgreSQL (SPEC §12, docs/operations.md#managed-postgresql): the migration run
by a database owner that is not a superuser but has CREATEROLE (what Supabase, Amazon RDS
and Cloud SQL hand out), with pgcrypto pre-installed in a schema `extensions` and
without pg_cron (the jobs then run in `costwarden worker`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import costwarden
from costwarden import migrate as cw_migrate
from costwarden import worker
from costwarden.cli import main
from cwtest import PgServer, Seeded

KEK = "managed-kek-0123456789abcdefghijklmnopqr"
SECRET = "sk-ant-api03-managed-0123456789"


@contextmanager
def managed_database(pg_server: PgServer, *, platform_pgcrypto: bool = True) -> Iterator[str]:
    """A database owned by a CREATEROLE, non-superuser login; with ``platform_pgcrypto``
    pgcrypto in `extensions` (installed by the platform, as on Supabase), else none (the
    first migration creates it). Yields that login's DSN."""
    suffix = uuid.uuid4().hex[:8]
    owner, db = f"cw_dbowner_{suffix}", f"cw_managed_{suffix}"
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("create role {} login createrole nosuperuser").format(sql.Identifier(owner))
        )
        conn.execute(
            sql.SQL("create database {} owner {}").format(sql.Identifier(db), sql.Identifier(owner))
        )
    if platform_pgcrypto:
        with psycopg.connect(pg_server.dsn(db), autocommit=True) as conn:
            conn.execute("create schema extensions")
            conn.execute("create extension pgcrypto with schema extensions")
            conn.execute("grant usage on schema extensions to public")
    try:
        yield make_conninfo(pg_server.dsn(db), user=owner)
    finally:
        with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(db)))
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(owner)))


@pytest.fixture
def managed(pg_server: PgServer) -> Iterator[str]:
    """:func:`managed_database` with pgcrypto in `extensions`."""
    with managed_database(pg_server) as dsn:
        yield dsn


def test_a_non_superuser_database_owner_migrates_and_runs_everything(
    managed: str, seeded_factory: Callable[[str], Seeded]
) -> None:
    with psycopg.connect(managed) as conn:
        assert conn.execute(
            "select rolsuper, rolcreaterole from pg_roles where rolname = current_user"
        ).fetchone() == (False, True)
    said: list[str] = []
    applied = cw_migrate.migrate(managed, schedule=False, progress=said.append)
    assert applied and cw_migrate.status(managed).up_to_date
    # the server's WARNING of migration 0008 is passed on, not dropped
    dbname = conninfo_to_dict(managed)["dbname"]
    assert (
        "warning: costwarden: not a superuser, so log_parameter_max_length = 0 was not set on "
        f"database {dbname}: "
    ) in "\n".join(said)
    assert f"ALTER DATABASE {dbname} SET log_parameter_max_length = 0" in "\n".join(said)

    with psycopg.connect(managed, autocommit=True) as conn:
        owners = conn.execute(
            "select distinct pg_get_userbyid(relowner) from pg_class "
            "where relnamespace = 'costwarden'::regnamespace"
        ).fetchall()
        assert owners == [("costwarden_owner",)]
        assert conn.execute(
            "select count(*) from pg_proc where pronamespace = 'costwarden'::regnamespace "
            "and prosecdef and proowner <> 'costwarden_owner'::regrole"
        ).fetchone() == (0,)
        # pgcrypto stays where the platform put it
        assert conn.execute(
            "select extnamespace::regnamespace::text from pg_extension where extname = 'pgcrypto'"
        ).fetchone() == ("extensions",)
        # the database owner grants itself the admin role, as an operator would
        conn.execute("select current_user").fetchone()
        conn.execute(sql.SQL("grant costwarden_admin to {}").format(sql.Identifier(conn.info.user)))

    s = seeded_factory(managed)
    with costwarden.Client(managed, kek=KEK) as c:
        c.put_key("acme", s.ws_vendor, "anthropic", SECRET)
        r = c.reserve("acme", s.ws_vendor, s.vendor_model, {"input_tokens": 1000})
        assert c.resolve_key(r.reservation_id).secret == SECRET
        c.commit(r.reservation_id, {"input_tokens": 900})
        # no pg_cron here: the worker runs the same jobs
        done = worker.run_once(c)
        assert set(done) == {
            "costwarden-expire",
            "costwarden-anomalies",
            "costwarden-maintenance",
            "costwarden-reconcile",
        }
        assert not any(outcome.failed for outcome in done.values())
        assert (done["costwarden-anomalies"].result or 0) >= 0
        assert c.ledger_verify("acme")[0].ok

    # a second run, by the same login, has nothing to do
    assert cw_migrate.migrate(managed, schedule=False) == []


def test_without_pg_cron_status_says_so(managed: str, pg_server: PgServer) -> None:
    # the default migrate schedules when it can; here it cannot, and does not fail
    assert cw_migrate.migrate(managed)
    st = cw_migrate.status(managed)
    assert st.up_to_date
    assert st.cron == cw_migrate.CronStatus(available=False, database=None, jobs=())
    # nothing was scheduled for this database, as a superuser (who sees pg_cron) finds
    as_superuser = pg_server.dsn(str(conninfo_to_dict(managed)["dbname"]))
    assert cw_migrate.cron_status(as_superuser).jobs == ()

    result = CliRunner().invoke(main, ["--dsn", managed, "status"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "pg_cron: not available (run `costwarden worker` for scheduled jobs)" in (
        result.stdout.splitlines()
    )


@pytest.mark.parametrize("as_json", [False, True])
def test_migrate_passes_the_servers_warning_on_to_stderr(managed: str, as_json: bool) -> None:
    """`costwarden migrate` as a non-superuser: migration 0008's WARNING (it could not
    set log_parameter_max_length = 0) is on stderr; with --json the notes go there too,
    and stdout holds the JSON document alone."""
    dbname = conninfo_to_dict(managed)["dbname"]
    warning = (
        "warning: costwarden: not a superuser, so log_parameter_max_length = 0 was not set on "
        f"database {dbname}: "
    )
    args = ["--dsn", managed, "migrate", "--no-schedule", *(["--json"] if as_json else [])]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert warning in result.stderr and warning not in result.stdout
    if as_json:
        assert "0008_byok.sql" in json.loads(result.stdout)["applied"]
        assert "applied 0008_byok.sql" in result.stderr.splitlines()
    else:
        assert "applied 0008_byok.sql" in result.stdout.splitlines()


def test_migrate_says_only_what_needs_saying(pg_server: PgServer) -> None:
    """pgcrypto created by the migrating database owner (a trusted extension, whose
    functions the bootstrap superuser owns): the lockdown's revoke on them is not a
    warning at every run. The first run says 0008's warning alone, the next nothing."""
    with managed_database(pg_server, platform_pgcrypto=False) as dsn:
        first = CliRunner().invoke(main, ["--dsn", dsn, "migrate", "--no-schedule"])
        assert first.exit_code == 0, first.output
        [warning] = first.stderr.splitlines()
        assert warning.startswith("warning: costwarden: not a superuser, so ")
        again = CliRunner().invoke(main, ["--dsn", dsn, "migrate", "--no-schedule"])
        assert again.exit_code == 0, again.output
        assert again.stderr == ""
        assert "schema is up to date" in again.stdout
