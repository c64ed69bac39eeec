"""The migration runner (SPEC §7): fresh install, re-run, status, edited files, concurrent
migrators, upgrade path == fresh install, pg_cron scheduling."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from costwarden import migrate as m
from cwtest import PgServer

Conn = psycopg.Connection[Any]


def copy_sql(target: Path, count: int | None = None) -> Path:
    """A snapshot of the first ``count`` migrations (all by default) in ``target``, with
    the function files when all migrations are copied (they need every table).

    Tests migrate from snapshots, so that a file edited while the suite runs cannot make
    two databases of one test differ.
    """
    (target / m.MIGRATIONS_DIR).mkdir(parents=True, exist_ok=True)
    for mig in m.load_migrations()[:count]:
        shutil.copy(mig.path, target / m.MIGRATIONS_DIR / mig.filename)
    if count is None:
        shutil.copytree(m.default_sql_dir() / m.FUNCTIONS_DIR, target / m.FUNCTIONS_DIR)
    return target


def schema_objects(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(dsn) as conn:
        return {
            "functions": conn.execute(
                "select oid::regprocedure::text, coalesce(proacl::text, '') from pg_proc "
                "where pronamespace = 'costwarden'::regnamespace order by 1"
            ).fetchall(),
            "relations": conn.execute(
                "select relname, relkind from pg_class "
                "where relnamespace = 'costwarden'::regnamespace order by 1"
            ).fetchall(),
            "migrations": conn.execute(
                "select version, name, checksum from costwarden._migrations order by 1"
            ).fetchall(),
            "settings": conn.execute(
                "select key from costwarden._setting_defs order by 1"
            ).fetchall(),
        }


def test_fresh_database_migrates_and_rerun_is_a_noop(
    fresh_database: Callable[[], str], tmp_path: Path
) -> None:
    sql_dir = copy_sql(tmp_path / "sql")
    migrations = m.load_migrations(sql_dir)
    dsn = fresh_database()
    before = m.status(dsn, sql_dir=sql_dir)
    assert before.version is None and before.applied == ()
    assert [p.version for p in before.pending] == [x.version for x in migrations]
    assert not before.up_to_date

    said: list[str] = []
    applied = m.migrate(dsn, schedule=False, progress=said.append, sql_dir=sql_dir)
    assert [a.version for a in applied] == [x.version for x in migrations]
    assert said == [f"applied {x.filename}" for x in migrations]

    after = m.status(dsn, sql_dir=sql_dir)
    assert after.version == migrations[-1].version and after.up_to_date
    assert after.pending == () and after.changed == ()
    assert [(a.version, a.name, a.checksum) for a in after.applied] == [
        (x.version, x.name, x.checksum) for x in migrations
    ]

    objects = schema_objects(dsn)
    assert m.migrate(dsn, schedule=False, sql_dir=sql_dir) == []
    assert schema_objects(dsn) == objects


def test_status_reports_pending_migrations(
    fresh_database: Callable[[], str], tmp_path: Path
) -> None:
    full = copy_sql(tmp_path / "full")
    migrations = m.load_migrations(full)
    dsn = fresh_database()
    m.migrate(dsn, schedule=False, sql_dir=copy_sql(tmp_path / "first2", 2))
    st = m.status(dsn, sql_dir=full)
    assert st.version == migrations[1].version
    assert [a.version for a in st.applied] == [x.version for x in migrations[:2]]
    assert [p.version for p in st.pending] == [x.version for x in migrations[2:]]
    assert not st.up_to_date
    applied = m.migrate(dsn, schedule=False, sql_dir=full)
    assert [a.version for a in applied] == [x.version for x in migrations[2:]]
    assert m.status(dsn, sql_dir=full).up_to_date


def test_an_edited_applied_migration_is_refused(
    fresh_database: Callable[[], str], tmp_path: Path
) -> None:
    dsn = fresh_database()
    sql_dir = copy_sql(tmp_path / "sql")
    third = m.load_migrations(sql_dir)[2]
    m.migrate(dsn, schedule=False, sql_dir=sql_dir)
    edited = sql_dir / m.MIGRATIONS_DIR / third.filename
    edited.write_text(edited.read_text() + "\n-- an innocent-looking edit\n")
    objects = schema_objects(dsn)
    with pytest.raises(m.MigrationError, match=re.escape(third.filename)):
        m.migrate(dsn, schedule=False, sql_dir=sql_dir)
    st = m.status(dsn, sql_dir=sql_dir)
    assert [c.filename for c in st.changed] == [third.filename]
    assert not st.up_to_date
    # even with a new migration pending, nothing is applied while a file is edited
    later = sql_dir / m.MIGRATIONS_DIR / "9999_later.sql"
    later.write_text("create table costwarden._later (x int);\n")
    with pytest.raises(m.MigrationError, match=re.escape(third.filename)):
        m.migrate(dsn, schedule=False, sql_dir=sql_dir)
    assert schema_objects(dsn) == objects


def test_a_failing_migration_is_rolled_back(
    fresh_database: Callable[[], str], tmp_path: Path
) -> None:
    dsn = fresh_database()
    sql_dir = copy_sql(tmp_path / "sql")
    m.migrate(dsn, schedule=False, sql_dir=sql_dir)
    (sql_dir / m.MIGRATIONS_DIR / "9999_broken.sql").write_text(
        "create table costwarden._half (x int);\nselect 1 / 0;\n"
    )
    with pytest.raises(m.MigrationError, match=re.escape("9999_broken.sql")):
        m.migrate(dsn, schedule=False, sql_dir=sql_dir)
    st = m.status(dsn, sql_dir=sql_dir)
    assert st.version == m.load_migrations(sql_dir)[-2].version
    assert [p.filename for p in st.pending] == ["9999_broken.sql"]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select to_regclass('costwarden._half')").fetchone() == (None,)


def test_a_run_is_one_transaction(fresh_database: Callable[[], str], tmp_path: Path) -> None:
    """A failing migration takes the whole run back: on a fresh database not even the
    schema or the bookkeeping tables remain."""
    dsn = fresh_database()
    sql_dir = copy_sql(tmp_path / "sql")
    (sql_dir / m.MIGRATIONS_DIR / "9999_broken.sql").write_text(
        "create table costwarden._half (x int);\nselect 1 / 0;\n"
    )
    with pytest.raises(m.MigrationError, match=re.escape("9999_broken.sql")):
        m.migrate(dsn, schedule=False, sql_dir=sql_dir)
    st = m.status(dsn, sql_dir=sql_dir)
    assert st.version is None and st.applied == ()
    assert len(st.pending) == len(m.load_migrations(sql_dir))
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select to_regnamespace('costwarden')").fetchone() == (None,)


def test_badly_named_migration_files_are_refused(tmp_path: Path) -> None:
    sql_dir = copy_sql(tmp_path / "sql", 1)
    (sql_dir / m.MIGRATIONS_DIR / "2_no_padding.sql").write_text("select 1;\n")
    with pytest.raises(m.MigrationError, match=re.escape("2_no_padding.sql")):
        m.load_migrations(sql_dir)


def _migrator_commands(dsn: str) -> list[list[str]]:
    cli = Path(sys.executable).with_name("costwarden")
    via_cli = (
        [str(cli), "--dsn", dsn, "migrate", "--no-schedule"]
        if cli.exists()
        else [sys.executable, "-m", "costwarden.cli", "--dsn", dsn, "migrate", "--no-schedule"]
    )
    via_python = [
        sys.executable,
        "-c",
        "import sys; from costwarden.migrate import migrate; migrate(sys.argv[1], schedule=False)",
        dsn,
    ]
    return [via_cli, via_python, via_cli]


def test_concurrent_migrators(fresh_database: Callable[[], str]) -> None:
    """Three OS processes migrate one fresh database at once: all succeed, every file is
    applied exactly once, and the schema is the one a single migrator builds."""
    target = fresh_database()
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in _migrator_commands(target)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        results.append((p.returncode, out, err))
    for rc, out, err in results:
        assert rc == 0, (out, err)
    reference = fresh_database()
    m.migrate(reference, schedule=False)
    migrations = m.load_migrations()
    with psycopg.connect(target) as conn:
        rows = conn.execute(
            "select version, count(*) from costwarden._migrations group by 1 order by 1"
        ).fetchall()
    assert rows == [(x.version, 1) for x in migrations]
    outputs = "".join(out for _rc, out, _err in results)
    for x in migrations:
        assert outputs.count(f"applied {x.filename}") <= 1
    assert schema_objects(target) == schema_objects(reference)


def _dump(pg_server: PgServer, dsn: str) -> str:
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    out = subprocess.run(
        [
            pg_server.binary("pg_dump"),
            "--schema-only",
            "--schema=costwarden",
            "--no-owner",
            "-h",
            pg_server.host,
            "-p",
            str(pg_server.port),
            "-U",
            pg_server.user,
            "-d",
            str(dbname),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    # pg_dump >= 15.14 frames its output with \restrict <random key>
    lines = [ln for ln in out.splitlines() if not re.match(r"^\\(un)?restrict\b", ln)]
    return "\n".join(lines)


def test_upgrade_path_builds_the_same_schema_as_a_fresh_install(
    pg_server: PgServer, fresh_database: Callable[[], str], tmp_path: Path
) -> None:
    """Migrating one release at a time (each file applied by a later run) gives the same
    pg_dump --schema-only of schema costwarden as migrating everything in one run."""
    full = copy_sql(tmp_path / "full")
    count = len(m.load_migrations(full))
    one_run = fresh_database()
    m.migrate(one_run, schedule=False, sql_dir=full)
    stepwise = fresh_database()
    for step in range(1, count + 1):
        step_dir = tmp_path / f"step{step}"
        (step_dir / m.MIGRATIONS_DIR).mkdir(parents=True)
        for mig in m.load_migrations(full)[:step]:
            shutil.copy(mig.path, step_dir / m.MIGRATIONS_DIR / mig.filename)
        if step == count:  # the function files need every table
            shutil.copytree(full / m.FUNCTIONS_DIR, step_dir / m.FUNCTIONS_DIR)
        applied = m.migrate(stepwise, schedule=False, sql_dir=step_dir)
        assert len(applied) == 1
    dumped = _dump(pg_server, one_run)
    assert "CREATE FUNCTION costwarden.fn_cost_quote" in dumped
    assert _dump(pg_server, stepwise) == dumped


def _jobs(jobs: tuple[tuple[str, str, str], ...], dbname: str) -> list[tuple[str, str, str]]:
    """(SPEC job name, schedule, database): a job is named as in the SPEC, or carries its
    database (``costwarden-expire@db``) when another database already has that name."""
    out = []
    for jobname, schedule, database in jobs:
        base = jobname.split("@", 1)[0]
        assert jobname in (base, f"{base}@{dbname}"), jobname
        out.append((base, schedule, database))
    return sorted(out)


def test_pg_cron_jobs_in_other_databases(fresh_database: Callable[[], str]) -> None:
    """Two costwarden databases, neither of them the cron database: each gets its own
    jobs, scheduled from the cron database with cron.schedule_in_database."""
    first, second = fresh_database(), fresh_database()
    if not m.cron_status(first).available:
        pytest.skip("pg_cron is not preloaded in this server")
    expected: dict[str, list[tuple[str, str, str]]] = {}
    for target in (first, second):
        dbname = str(psycopg.conninfo.conninfo_to_dict(target)["dbname"])
        m.migrate(target, schedule=False)
        with psycopg.connect(target, autocommit=True) as conn:
            present = {
                r[0]
                for r in conn.execute(
                    "select proname from pg_proc where pronamespace = 'costwarden'::regnamespace"
                ).fetchall()
            }
            if not any(fn in present for _n, _s, fn in m.CRON_JOBS):
                # the scheduling mechanism is tested even before the saga exists
                conn.execute(
                    "create function costwarden.fn_cost_expire_reservations() returns integer "
                    "language sql as 'select 0'"
                )
                present.add("fn_cost_expire_reservations")
        expected[target] = sorted(
            (name, schedule, dbname) for name, schedule, fn in m.CRON_JOBS if fn in present
        )
    try:
        for target in (first, second):
            dbname = str(psycopg.conninfo.conninfo_to_dict(target)["dbname"])
            st = m.schedule_jobs(target)
            assert st.available and st.database is not None and st.database != dbname
            assert _jobs(st.jobs, dbname) == expected[target]
        for target in (first, second):
            dbname = str(psycopg.conninfo.conninfo_to_dict(target)["dbname"])
            # idempotent: scheduling again (as every migrate does) keeps one job per name
            m.migrate(target, schedule=True)
            assert _jobs(m.cron_status(target).jobs, dbname) == expected[target]
            assert _jobs(m.status(target).cron.jobs, dbname) == expected[target]
            # the commands call costwarden's functions, in that database
            cron_dsn = psycopg.conninfo.make_conninfo(target, dbname=st.database)
            with psycopg.connect(cron_dsn) as cron:
                commands = cron.execute(
                    "select jobname, command, active from cron.job where database = %s",
                    (dbname,),
                ).fetchall()
            assert len(commands) == len(expected[target])
            for jobname, command, active in commands:
                fn = next(f for n, _s, f in m.CRON_JOBS if jobname.split("@")[0] == n)
                assert (command, active) == (f"select costwarden.{fn}()", True)
    finally:
        removed = {target: m.unschedule_jobs(target) for target in (first, second)}
    assert removed == {target: len(expected[target]) for target in (first, second)}
    for target in (first, second):
        assert m.cron_status(target).jobs == ()
        assert m.unschedule_jobs(target) == 0


def _function_names(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select oid::regprocedure::text from pg_proc "
            "where pronamespace = 'costwarden'::regnamespace"
        ).fetchall()
    return {str(r[0]) for r in rows}


def test_an_edited_function_file_is_applied_again(
    fresh_database: Callable[[], str], tmp_path: Path
) -> None:
    """Function files are source: an edit is applied by the next run (no new migration),
    and what the source no longer defines -- a function, a trigger, a view, a grant -- is
    gone after it."""
    dsn = fresh_database()
    sql_dir = copy_sql(tmp_path / "sql")
    m.migrate(dsn, schedule=False, sql_dir=sql_dir)
    settings = sql_dir / m.FUNCTIONS_DIR / "02_settings.sql"
    original = settings.read_text()

    settings.write_text(
        original + "\ncreate or replace function costwarden._probe() returns integer\n"
        "language sql immutable as $$ select 42 $$;\n"
    )
    st = m.status(dsn, sql_dir=sql_dir)
    assert st.functions_outdated == ("02_settings.sql",) and not st.up_to_date
    assert st.pending == () and st.changed == ()
    said: list[str] = []
    assert m.migrate(dsn, schedule=False, sql_dir=sql_dir, progress=said.append) == []
    assert said == [f"applied the {len(m.load_functions(sql_dir))} function files again"]
    assert "costwarden._probe()" in _function_names(dsn)
    assert m.status(dsn, sql_dir=sql_dir).up_to_date
    with psycopg.connect(dsn) as conn:
        # PUBLIC executes nothing, a new function included
        row = conn.execute(
            "select has_function_privilege('public', 'costwarden._probe()', 'execute')"
        ).fetchone()
        assert row == (False,)

    # removed from the source: the function, a trigger, a grant
    audit = sql_dir / m.FUNCTIONS_DIR / "01_audit.sql"
    audit_text = audit.read_text()
    triggers = (
        "select costwarden._append_only("
        "'costwarden._audit_log', '_audit_log_no_update_delete', 'update or delete');\n"
    )
    assert triggers in audit_text
    audit.write_text(audit_text.replace(triggers, ""))
    grant = "grant execute on function costwarden.fn_settings_list() to costwarden_admin;\n"
    assert grant in original
    settings.write_text(original.replace(grant, ""))
    said.clear()
    m.migrate(dsn, schedule=False, sql_dir=sql_dir, progress=said.append)
    assert "dropped function costwarden._probe() (no longer in sql/functions)" in said
    for name in ("_audit_log_no_update_delete", "_audit_log_no_truncate"):
        line = f"dropped trigger {name} on costwarden._audit_log (no longer in sql/functions)"
        assert line in said
    assert "costwarden._probe()" not in _function_names(dsn)
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select has_function_privilege('costwarden_admin', "
            "'costwarden.fn_settings_list()', 'execute'), "
            "has_function_privilege('costwarden_admin', "
            "'costwarden.fn_setting_set(text, jsonb)', 'execute'), "
            "exists (select from pg_trigger where tgrelid = 'costwarden._audit_log'::regclass)"
        ).fetchone()
        assert row == (False, True, False)

    # back to the original source: everything as a fresh install has it
    settings.write_text(original)
    audit.write_text(audit_text)
    m.migrate(dsn, schedule=False, sql_dir=sql_dir)
    reference = fresh_database()
    m.migrate(reference, schedule=False, sql_dir=sql_dir)
    assert schema_objects(dsn) == schema_objects(reference)


def test_a_removed_function_file_is_dropped_with_its_objects(
    fresh_database: Callable[[], str], tmp_path: Path
) -> None:
    dsn = fresh_database()
    sql_dir = copy_sql(tmp_path / "sql")
    m.migrate(dsn, schedule=False, sql_dir=sql_dir)
    (sql_dir / m.FUNCTIONS_DIR / "15_shadow_report.sql").unlink()
    assert m.status(dsn, sql_dir=sql_dir).functions_outdated == ("15_shadow_report.sql",)
    said: list[str] = []
    m.migrate(dsn, schedule=False, sql_dir=sql_dir, progress=said.append)
    assert [s for s in said if s.startswith("dropped ")] == [
        "dropped function costwarden.fn_shadow_report(text,timestamp with time zone,"
        "timestamp with time zone) (no longer in sql/functions)"
    ]
    assert not any(f.startswith("costwarden.fn_shadow_report(") for f in _function_names(dsn))
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select name from costwarden._repeatables order by 1").fetchall()
    assert [r[0] for r in rows] == [f.filename for f in m.load_functions(sql_dir)]


def test_a_failing_function_file_changes_nothing(
    fresh_database: Callable[[], str], tmp_path: Path
) -> None:
    dsn = fresh_database()
    sql_dir = copy_sql(tmp_path / "sql")
    m.migrate(dsn, schedule=False, sql_dir=sql_dir)
    objects = schema_objects(dsn)
    (sql_dir / m.FUNCTIONS_DIR / "99_broken.sql").write_text(
        "create or replace function costwarden._half() returns int language sql as 'select 1';\n"
        "select 1 / 0;\n"
    )
    (sql_dir / m.MIGRATIONS_DIR / "9999_later.sql").write_text(
        "create table costwarden._later (x int);\n"
    )
    with pytest.raises(m.MigrationError, match=re.escape("functions/99_broken.sql")):
        m.migrate(dsn, schedule=False, sql_dir=sql_dir)
    assert schema_objects(dsn) == objects
    st = m.status(dsn, sql_dir=sql_dir)
    assert [p.filename for p in st.pending] == ["9999_later.sql"]
    assert st.functions_outdated == ("99_broken.sql",)


def test_a_source_object_still_in_use_is_not_dropped(
    fresh_database: Callable[[], str], tmp_path: Path
) -> None:
    """The drop never cascades: a function the source no longer defines but a table
    still uses is refused, and nothing changes."""
    dsn = fresh_database()
    sql_dir = copy_sql(tmp_path / "sql")
    extra = sql_dir / m.FUNCTIONS_DIR / "99_extra.sql"
    extra.write_text(
        "create or replace function costwarden._seven() returns integer\n"
        "language sql immutable as $$ select 7 $$;\n"
    )
    m.migrate(dsn, schedule=False, sql_dir=sql_dir)
    (sql_dir / m.MIGRATIONS_DIR / "9999_uses.sql").write_text(
        "create table costwarden._uses (x int default costwarden._seven());\n"
    )
    m.migrate(dsn, schedule=False, sql_dir=sql_dir)
    objects = schema_objects(dsn)
    extra.unlink()
    with pytest.raises(m.MigrationError, match=re.escape("costwarden._seven()")):
        m.migrate(dsn, schedule=False, sql_dir=sql_dir)
    assert schema_objects(dsn) == objects


def test_only_the_owner_can_take_the_migration_lock(dsn: str) -> None:
    """The runner's lock is LOCK TABLE on a private table: a role that is not its owner
    cannot take it (nor hold migrations up), unlike a session advisory lock."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create role cw_plain_lock_test login")
        try:
            conn.execute("grant costwarden_admin to cw_plain_lock_test")
            for role in ("cw_plain_lock_test", "costwarden_admin", "costwarden_service"):
                with conn.transaction():
                    conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
                    with (
                        pytest.raises(psycopg.errors.InsufficientPrivilege),
                        conn.transaction(),
                    ):
                        conn.execute(m.LOCK)
        finally:
            conn.execute("drop role cw_plain_lock_test")


def test_a_function_file_refers_only_to_files_before_it() -> None:
    """The declared order of sql/functions/ is a dependency order: a function a file
    calls is defined in that file or in one before it."""
    files = m.load_functions()
    defined: dict[str, int] = {}
    for index, f in enumerate(files):
        for name in re.findall(r"create or replace function costwarden\.(\w+)\(", f.sql()):
            assert name not in defined, f"{name} is defined twice"
            defined[name] = index
    assert len(defined) > 100
    for index, f in enumerate(files):
        for name in set(re.findall(r"costwarden\.(\w+)\(", f.sql())):
            if name in defined:  # (pgcrypto's functions live in the schema too)
                assert defined[name] <= index, f"{f.filename} calls {name}, defined later"


def test_the_gate_migration_gives_every_existing_pool_its_gate(
    fresh_database: Callable[[], str], tmp_path: Path
) -> None:
    """Migration 0018 adds a gate for each pool created before it (later pools get theirs
    from _pool_ensure)."""
    full = copy_sql(tmp_path / "full")
    names = [mig.filename for mig in m.load_migrations(full)]
    before = names.index("0018_pool_gates.sql")
    dsn = fresh_database()
    m.migrate(dsn, schedule=False, sql_dir=copy_sql(tmp_path / "before", before))
    with psycopg.connect(dsn) as conn:
        conn.execute("insert into costwarden._orgs (org_id) values ('o1'), ('o2')")
        conn.execute(
            "insert into costwarden._pools (org_id, kind, scope_id) values "
            "('o1', 'org', ''), ('o1', 'workspace', 'w'), ('o2', 'org', ''), ('o2', 'user', 'u')"
        )
    m.migrate(dsn, schedule=False, sql_dir=full)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select p.pool_id, g.pool_id from costwarden._pools p "
            "full join costwarden._pool_gates g using (pool_id) order by 1"
        ).fetchall()
    assert len(rows) == 4 and all(p == g for p, g in rows)


def test_a_schema_migrated_by_a_newer_costwarden_is_refused(dsn: str) -> None:
    """A newer costwarden's migration and function, then this (older) package: migrate
    refuses, names the version and changes nothing (it would put its older function
    files over the newer schema and drop the newer function); status reports it, not
    up to date."""
    from click.testing import CliRunner

    from costwarden.cli import main

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "insert into costwarden._migrations (version, name, checksum) "
            "values (9999, 'from_the_future', repeat('f', 64))"
        )
        # what that newer release also installed: a function of its own, and its own
        # function files' checksums
        conn.execute(
            "create function costwarden.fn_from_the_future() returns int language sql as 'select 1'"
        )
        conn.execute("update costwarden._repeatables set checksum = repeat('e', 64)")
    objects = schema_objects(dsn)
    with pytest.raises(m.MigrationError, match=r"migration\(s\) 9999_from_the_future applied"):
        m.migrate(dsn, schedule=False)
    assert schema_objects(dsn) == objects
    assert "costwarden.fn_from_the_future()" in [name for name, _acl in objects["functions"]]

    st = m.status(dsn)
    assert [(u.version, u.name) for u in st.unknown] == [(9999, "from_the_future")]
    assert st.version == 9999 and not st.up_to_date

    result = CliRunner().invoke(main, ["--dsn", dsn, "migrate", "--no-schedule"])
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: the database has migration(s) 9999_from_the_future applied")
    assert "nothing was changed" in line and "schema is up to date" not in result.output
    result = CliRunner().invoke(main, ["--dsn", dsn, "status"])
    assert result.exit_code == 1
    assert "state: newer than this package (upgrade costwarden; migrate refuses)" in result.stdout
    assert "  UNKNOWN  9999_from_the_future  " in result.stdout
    result = CliRunner().invoke(main, ["--dsn", dsn, "status", "--json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["up_to_date"] is False
    assert [(u["version"], u["name"]) for u in doc["unknown"]] == [(9999, "from_the_future")]
    assert schema_objects(dsn) == objects
