"""The migration runner: applies the ordered SQL files under sql/.

Each file runs in its own transaction together with its bookkeeping row in
``costwarden._migrations`` (version, name, sha256 checksum). The whole run
holds a session advisory lock, so two migrators started at once serialise: the
second one finds everything applied and does nothing. The bookkeeping row is
inserted first, so even without the lock a racing migrator fails on the
primary key before it runs any DDL, and treats that as "already applied".

An applied migration whose file changed since is refused (MigrationError):
migrations are history, a change needs a new file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

import psycopg
from psycopg import sql

# pg_advisory_lock key for the whole run: the first 8 bytes of sha256("costwarden.migrate").
MIGRATION_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"costwarden.migrate").digest()[:8], "big", signed=True
)

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

BOOKKEEPING = """
create schema if not exists costwarden;
create table if not exists costwarden._migrations (
    version integer primary key,
    name text not null,
    checksum text not null,
    applied_at timestamptz not null default now()
);
comment on table costwarden._migrations is
    'Applied costwarden migrations (one row per sql/NNNN_name.sql file, sha256 checksum).';
"""

#: Run after every migration, in its transaction. Per-schema default
#: privileges cannot take away the global default EXECUTE of PUBLIC on new
#: functions, so it is revoked explicitly: callers get EXECUTE only through
#: the grants to costwarden_admin / _service / _tenant in the migrations.
LOCKDOWN = """
revoke all on all functions in schema costwarden from public;
revoke all on all tables in schema costwarden from public;
revoke all on all sequences in schema costwarden from public;
"""

#: pg_cron jobs costwarden schedules: (name, schedule, function). A job is
#: scheduled only when its function exists in the migrated schema.
CRON_JOBS: tuple[tuple[str, str, str], ...] = (
    ("costwarden-expire", "* * * * *", "fn_cost_expire_reservations"),
    ("costwarden-anomalies", "*/5 * * * *", "fn_detect_spend_anomalies"),
    ("costwarden-maintenance", "17 * * * *", "fn_maintenance"),
)


class MigrationError(Exception):
    """A migration cannot be applied (edited file, missing directory, ...)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    checksum: str

    @property
    def filename(self) -> str:
        return self.path.name

    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str
    applied_at: datetime


@dataclass(frozen=True)
class CronStatus:
    available: bool  # pg_cron is preloaded in this server
    database: str | None  # cron.database_name
    jobs: tuple[tuple[str, str, str], ...]  # (jobname, schedule, database) of costwarden jobs


@dataclass(frozen=True)
class MigrationStatus:
    version: int | None
    applied: tuple[AppliedMigration, ...]
    pending: tuple[Migration, ...]
    changed: tuple[Migration, ...]
    cron: CronStatus

    @property
    def up_to_date(self) -> bool:
        return not self.pending and not self.changed


def default_sql_dir() -> Path:
    """sql/ of a source checkout, else the copy shipped inside the package."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "sql"
        if (candidate / "0001_schema_roles.sql").is_file():
            return candidate
    packaged = Path(str(resources.files("costwarden") / "sql"))
    if packaged.is_dir():
        return packaged
    raise MigrationError("cannot find the costwarden sql/ directory")


def load_migrations(sql_dir: Path | None = None) -> list[Migration]:
    directory = sql_dir or default_sql_dir()
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        checksum = hashlib.sha256(path.read_bytes()).hexdigest()
        found.append(Migration(int(match.group(1)), match.group(2), path, checksum))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


def _applied(conn: psycopg.Connection[tuple[object, ...]]) -> dict[int, AppliedMigration]:
    exists = conn.execute("select to_regclass('costwarden._migrations') is not null").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute(
        "select version, name, checksum, applied_at from costwarden._migrations order by version"
    ).fetchall()
    out: dict[int, AppliedMigration] = {}
    for version, name, checksum, applied_at in rows:
        assert isinstance(version, int) and isinstance(applied_at, datetime)
        out[version] = AppliedMigration(version, str(name), str(checksum), applied_at)
    return out


def _check_changed(migrations: list[Migration], applied: dict[int, AppliedMigration]) -> None:
    for m in migrations:
        done = applied.get(m.version)
        if done is not None and done.checksum != m.checksum:
            raise MigrationError(
                f"migration {m.filename} was applied with checksum {done.checksum[:12]}… "
                f"but the file now has {m.checksum[:12]}…: applied migrations must not be "
                "edited; put the change in a new migration file"
            )


def migrate(
    dsn: str,
    *,
    sql_dir: Path | None = None,
    schedule: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[Migration]:
    """Apply pending migrations; returns the ones this call applied."""
    migrations = load_migrations(sql_dir)
    say = progress or (lambda _msg: None)
    applied_now: list[Migration] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            with conn.transaction():
                conn.execute("set local client_min_messages = warning")
                conn.execute(BOOKKEEPING)
            applied = _applied(conn)
            _check_changed(migrations, applied)
            for m in migrations:
                if m.version in applied:
                    continue
                try:
                    with conn.transaction():
                        conn.execute("set local client_min_messages = warning")
                        conn.execute(
                            "insert into costwarden._migrations (version, name, checksum) "
                            "values (%s, %s, %s)",
                            (m.version, m.name, m.checksum),
                        )
                        conn.execute(m.sql().encode())
                        conn.execute(LOCKDOWN)
                except psycopg.errors.UniqueViolation:
                    # Another migrator applied it between our read and our insert.
                    say(f"{m.filename}: applied concurrently by another migrator")
                    continue
                except psycopg.Error as exc:
                    raise MigrationError(f"{m.filename}: {exc}") from exc
                applied_now.append(m)
                say(f"applied {m.filename}")
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    if schedule:
        schedule_jobs(dsn)
    return applied_now


def _cron_database(conn: psycopg.Connection[tuple[object, ...]]) -> str | None:
    """cron.database_name when pg_cron is loaded (its GUC exists only then).

    Readable by any role, unlike shared_preload_libraries.
    """
    row = conn.execute("select current_setting('cron.database_name', true)").fetchone()
    if not row or not row[0]:
        return None
    return str(row[0])


def _cron_conninfo(dsn: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, dbname=dbname)


def schedule_jobs(dsn: str) -> CronStatus:
    """Schedule costwarden's jobs with pg_cron when the server has it.

    pg_cron lives in one database per server (cron.database_name); when
    costwarden is installed elsewhere the jobs are scheduled there with
    cron.schedule_in_database. Without pg_cron nothing is scheduled and
    `costwarden worker` runs the same jobs.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        cron_db = _cron_database(conn)
        row = conn.execute("select current_database()").fetchone()
        here = str(row[0]) if row else ""
        wanted = [
            (name, schedule, f"select costwarden.{function}()")
            for name, schedule, function in CRON_JOBS
            if _function_exists(conn, function)
        ]
    if cron_db is None:
        return cron_status(dsn)
    with psycopg.connect(_cron_conninfo(dsn, cron_db), autocommit=True) as cron:
        cron.execute("set client_min_messages = warning")
        cron.execute("create extension if not exists pg_cron")
        for name, schedule, command in wanted:
            cron.execute(
                "select cron.schedule_in_database(%s, %s, %s, %s)",
                (_job_name(cron, name, here), schedule, command, here),
            )
    return cron_status(dsn)


def unschedule_jobs(dsn: str) -> int:
    """Remove this database's costwarden jobs from pg_cron; returns how many."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cron_db = _cron_database(conn)
        row = conn.execute("select current_database()").fetchone()
        here = str(row[0]) if row else ""
    if cron_db is None:
        return 0
    with psycopg.connect(_cron_conninfo(dsn, cron_db), autocommit=True) as cron:
        if not _has_cron_extension(cron):
            return 0
        rows = cron.execute(
            "select cron.unschedule(jobid) from cron.job where database = %s and jobname like %s",
            (here, "costwarden-%"),
        ).fetchall()
    return len(rows)


def _job_name(cron: psycopg.Connection[tuple[object, ...]], name: str, database: str) -> str:
    """The SPEC's job name (costwarden-expire, ...), unless a job of that name
    already runs for another database on this server: then the name carries
    this database (costwarden-expire@db), so that one costwarden database
    never takes over another's jobs."""
    row = cron.execute(
        "select database from cron.job where jobname = %s and username = current_user", (name,)
    ).fetchone()
    if row is None or row[0] == database:
        return name
    return f"{name}@{database}"


def _function_exists(conn: psycopg.Connection[tuple[object, ...]], function: str) -> bool:
    row = conn.execute(
        "select exists (select from pg_proc where pronamespace = 'costwarden'::regnamespace "
        "and proname = %s)",
        (function,),
    ).fetchone()
    return bool(row and row[0])


def _has_cron_extension(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    row = conn.execute(
        "select exists (select from pg_extension where extname = 'pg_cron')"
    ).fetchone()
    return bool(row and row[0])


def cron_status(dsn: str) -> CronStatus:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cron_db = _cron_database(conn)
        row = conn.execute("select current_database()").fetchone()
        here = str(row[0]) if row else ""
    if cron_db is None:
        return CronStatus(False, None, ())
    with psycopg.connect(_cron_conninfo(dsn, cron_db), autocommit=True) as cron:
        if not _has_cron_extension(cron):
            return CronStatus(True, cron_db, ())
        rows = cron.execute(
            "select jobname, schedule, database from cron.job "
            "where database = %s and jobname like 'costwarden-%%' order by jobname",
            (here,),
        ).fetchall()
    return CronStatus(True, cron_db, tuple((str(a), str(b), str(c)) for a, b, c in rows))


def status(dsn: str, *, sql_dir: Path | None = None) -> MigrationStatus:
    migrations = load_migrations(sql_dir)
    with psycopg.connect(dsn, autocommit=True) as conn:
        applied = _applied(conn)
    changed = tuple(
        m for m in migrations if m.version in applied and applied[m.version].checksum != m.checksum
    )
    pending = tuple(m for m in migrations if m.version not in applied)
    version = max(applied) if applied else None
    return MigrationStatus(
        version=version,
        applied=tuple(applied[v] for v in sorted(applied)),
        pending=pending,
        changed=changed,
        cron=cron_status(dsn),
    )


def drop_schema(dsn: str) -> None:
    """Remove costwarden from a database (its jobs, then the schema)."""
    unschedule_jobs(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop schema if exists costwarden cascade"))
