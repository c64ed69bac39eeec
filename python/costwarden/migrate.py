"""The migration runner: applies costwarden's SQL under sql/ (docs/internals.md, "The runner").

The tree has two parts:

* ``sql/migrations/NNNN_name.sql`` -- history: tables, types, sequences, indexes,
  constraints and data. Each is applied once, in version order, and recorded in
  ``costwarden._migrations`` with its sha256 checksum. An applied migration whose file
  changed since is refused (MigrationError, nothing changed): a change needs a new file.
* ``sql/functions/NN_concern.sql`` -- source: functions, views, triggers and their
  grants, all ``CREATE OR REPLACE``. Their checksums are recorded in
  ``costwarden._repeatables``; whenever a migration is applied or any function file
  differs from what was recorded, every function file is applied again, in file-name
  order, and the routines, views and triggers of schema costwarden that none of them
  (re)created are dropped.

A run is one transaction: the bookkeeping tables, the lock, every pending migration,
the function files, the drops and the PUBLIC lockdown commit together or not at all.
Two migrators serialise on ``LOCK TABLE costwarden._migrations`` (a lock only the
owner of that private table can take, held to commit, which works through a pooler in
transaction mode): the second one waits, then finds nothing to do. A database that
holds a migration this package does not have was migrated by a newer costwarden: the
run refuses it (MigrationError, nothing changed) rather than put older function files
over the newer schema, and status() reports it (``unknown``, not up to date).

The server's WARNINGs and NOTICEs during a run (migration 0008 warns when a
non-superuser cannot set ``log_parameter_max_length = 0``) are passed on after the
commit, to ``migrate(warn=...)``, else to its ``progress``.

Installs made before the split (sql/0001-0010 in one directory) are recognised by
the exact checksums of those ten files (LEGACY_CHECKSUMS) and upgraded in one run.

Ownership (SPEC §12): before anything else a run refuses a schema ``costwarden`` that
costwarden did not create (SchemaNotOwned), creates the NOLOGIN role
``costwarden_owner`` and, at its end, makes that role the owner of the schema and of
every object in it (the members of extensions excepted), whoever ran the migration:
SECURITY DEFINER functions run as costwarden_owner, never as a superuser. A fresh
install and an upgraded one end the same.

pgcrypto (SPEC §12) is used where it is installed: when the extension already lives in
another schema (Supabase's ``extensions``, ``public``), the run creates in schema
costwarden thin wrappers with the names costwarden's SQL calls, each calling the
extension's function schema-qualified (PGCRYPTO_FUNCTIONS).

dblink (contrib) carries the audit link that records refused BYOK resolves
(audit_link.py): created in schema costwarden when absent and the run may create it,
used where it is otherwise (a ``costwarden.dblink_exec`` wrapper, DBLINK_FUNCTIONS).
Without it a run still succeeds and says so; refusals then leave numbered gaps.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from importlib import resources
from pathlib import Path

import psycopg
from psycopg import sql

from . import audit_link
from .errors import CostwardenError

MIGRATIONS_DIR = "migrations"
FUNCTIONS_DIR = "functions"

_MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_FUNCTION_RE = re.compile(r"^(\d{2})_([a-z0-9_]+)\.sql$")

#: The ten files of the layout before sql/ was split into migrations and functions
#: (version: (name, sha256 of the file as released)). An install whose _migrations rows
#: carry exactly these checksums has the tables, data and grants of the baseline
#: migrations 0001-0010 of the same names; the runner adopts those rows (records the
#: baseline checksums) and re-applies the function files. The files themselves are kept
#: in tests/fixtures/legacy_sql/ for the upgrade test.
LEGACY_CHECKSUMS: dict[int, tuple[str, str]] = {
    1: ("schema_roles", "b87bdecf83ee4f222324257797a7c18ab5e041b5515daf0909d44a6310c1e26d"),
    2: ("audit", "83d6b4a23c5184f99a1418a43af512b5e1b8acf71b05cff7897a0d1b3fdc2247"),
    3: ("settings", "8dfe348b737dca1b83fcc92d54e64abebc19bdbca83e1807765b8202abad03a7"),
    4: (
        "tenancy_catalogue",
        "78c0371b9d29f9da3b677205e8b40fb0b4b212f035363efab964ff44d27f0e66",
    ),
    5: ("pricing_quote", "df0494b27ece95e16e94da0e6c286c07d3b1892cdf6d5f93c9b96c10a8c3c0a1"),
    6: ("budgets", "d662112a7987a52d1a18179daf7a15030d0aaf0dc9629595ad79fe1fcfbcf810"),
    7: ("ledger", "5affd3867cbb7382aedbae39fbd8fceb247a8e8a38f74cc5b5fde607b257f497"),
    8: ("byok", "590ddfc29e65b4ed48661a77475005da729a90f10ad75abd622acc153e9dc11f"),
    9: ("guardrails", "71f636df72ee23bf457cb4d61ae301d030275f252ca4cbb8a26551567d9a7545"),
    10: ("saga", "3cf00aa406710f32c8e4ae8e7fd843e19cf4da14461afead2b8a8daccbd286c9"),
}

BOOKKEEPING = """
create schema if not exists costwarden authorization costwarden_owner;
create table if not exists costwarden._migrations (
    version integer primary key,
    name text not null,
    checksum text not null,
    applied_at timestamptz not null default now()
);
create table if not exists costwarden._repeatables (
    name text primary key,
    checksum text not null,
    applied_at timestamptz not null default now()
);
"""

#: Serialises migrators until commit. EXCLUSIVE conflicts with itself and with every
#: write, not with plain reads (status() keeps working). LOCK TABLE in this mode needs
#: UPDATE, DELETE or TRUNCATE on the table: only its owner (and superusers) can take it.
LOCK = "lock table costwarden._migrations in exclusive mode"

BOOKKEEPING_COMMENTS = """
comment on table costwarden._migrations is
    'Applied costwarden migrations (sql/migrations/NNNN_name.sql, sha256 checksum).';
comment on table costwarden._repeatables is
    'costwarden function files (sql/functions/NN_concern.sql) as last applied, sha256 checksum.';
"""

#: Before the function files are applied again: the costwarden roles lose every
#: privilege on costwarden's own routines and views, so that what they hold afterwards
#: is exactly what the files grant (a grant removed from a file is gone). Grants to
#: other roles, and the members of extensions (pgcrypto), are left alone.
RESET_GRANTS = """
do $reset$
declare
    v_roles constant text :=
        'costwarden_admin, costwarden_service, costwarden_tenant, costwarden_auditor';
    v record;
begin
    for v in
        select format('revoke all on %s %s from %s',
                      case p.prokind when 'p' then 'procedure' else 'function' end,
                      p.oid::regprocedure, v_roles) as stmt
        from pg_catalog.pg_proc as p
        where p.pronamespace = 'costwarden'::regnamespace and p.proacl is not null
          and p.prokind in ('f', 'p')
          and not exists (select from pg_catalog.pg_depend as d
                          where d.classid = 'pg_catalog.pg_proc'::regclass and d.objid = p.oid
                            and d.deptype = 'e')
        union all
        select format('revoke all on table %s from %s', c.oid::regclass, v_roles)
        from pg_catalog.pg_class as c
        where c.relnamespace = 'costwarden'::regnamespace and c.relkind in ('v', 'm')
          and c.relacl is not null
    loop
        execute v.stmt;
    end loop;
end
$reset$;
"""

#: The routines, views and triggers of schema costwarden with the ctid of the catalog
#: row that CREATE OR REPLACE rewrites (pg_proc, the view's _RETURN rule, pg_trigger).
#: Taken just before the function files run and again after: every UPDATE writes a new
#: row version at a new ctid, and no space freed inside the running transaction is
#: reused, so an object whose row kept its ctid was not (re)created by any file: the
#: source no longer defines it. (xmin cannot tell: the grant reset already rewrote the
#: rows in this transaction.) Extension members and internal (constraint) triggers are
#: not costwarden's source.
SOURCE_OBJECTS = """
select 'trigger' as kind, format('%I on %s', t.tgname, t.tgrelid::regclass) as name, t.ctid::text
from pg_catalog.pg_trigger as t
join pg_catalog.pg_class as c on c.oid = t.tgrelid
where c.relnamespace = 'costwarden'::regnamespace and not t.tgisinternal
union all
select case c.relkind when 'm' then 'materialized view' else 'view' end,
       c.oid::regclass::text, r.ctid::text
from pg_catalog.pg_class as c
join pg_catalog.pg_rewrite as r on r.ev_class = c.oid and r.rulename = '_RETURN'
where c.relnamespace = 'costwarden'::regnamespace and c.relkind in ('v', 'm')
union all
select case p.prokind when 'p' then 'procedure' when 'a' then 'aggregate' else 'function' end,
       p.oid::regprocedure::text, p.ctid::text
from pg_catalog.pg_proc as p
where p.pronamespace = 'costwarden'::regnamespace
  and not exists (select from pg_catalog.pg_depend as d
                  where d.classid = 'pg_catalog.pg_proc'::regclass and d.objid = p.oid
                    and d.deptype = 'e')
"""

#: Drop order: triggers before the functions they execute, views before functions.
_DROP_ORDER = ("trigger", "materialized view", "view", "procedure", "aggregate", "function")

#: Run at the end of every run, in its transaction. Per-schema default privileges
#: cannot take away the global default EXECUTE of PUBLIC on new functions, so it is
#: revoked explicitly: callers get EXECUTE only through the grants to
#: costwarden_admin / _service / _tenant in the function files. A non-superuser cannot
#: revoke on the members of an extension it does not own (pgcrypto, a trusted extension,
#: created in schema costwarden by a database owner: its functions belong to the
#: bootstrap superuser), and the server says "no privileges could be revoked" for each of
#: them at every run; those functions keep the PUBLIC EXECUTE of every pgcrypto install,
#: so the revoke runs with client_min_messages = error, and the run passes on no such
#: WARNING (the run's other server messages are passed on, see migrate()).
LOCKDOWN = """
set local client_min_messages = error;
revoke all on all functions in schema costwarden from public;
revoke all on all tables in schema costwarden from public;
revoke all on all sequences in schema costwarden from public;
set local client_min_messages = warning;
"""

#: pg_cron jobs costwarden schedules: (name, schedule, function). A job is
#: scheduled only when its function exists in the migrated schema.
CRON_JOBS: tuple[tuple[str, str, str], ...] = (
    ("costwarden-expire", "* * * * *", "fn_cost_expire_reservations"),
    ("costwarden-anomalies", "*/5 * * * *", "fn_detect_spend_anomalies"),
    ("costwarden-maintenance", "17 * * * *", "fn_maintenance"),
    # counters against the reservations and the ledger; drift is recorded and logged
    ("costwarden-reconcile", "41 3 * * *", "fn_reconcile"),
)

#: How often a run is retried when its first statements raced another migrator that
#: was creating the schema or the bookkeeping tables at the same moment.
_BOOKKEEPING_ATTEMPTS = 5
_CREATE_RACES = (
    psycopg.errors.UniqueViolation,
    psycopg.errors.DuplicateSchema,
    psycopg.errors.DuplicateTable,
    psycopg.errors.DuplicateObject,
)


class MigrationError(CostwardenError):
    """A migration cannot be applied (edited file, missing directory, failing SQL, ...)."""


class SchemaNotOwned(MigrationError):
    """Schema costwarden exists but was not created by costwarden: nothing is installed."""


#: The role that owns every costwarden object (SPEC §12).
OWNER = "costwarden_owner"

#: Is schema costwarden ours? Its owner; whether that owner is costwarden_owner, a
#: superuser or the migrating role itself (a pre-§12 install made by it); whether
#: costwarden's bookkeeping table is in it; the other roles that own something in it.
SCHEMA_CHECK = """
select n.nspowner::regrole::text as owner,
       r.rolname in ('costwarden_owner', current_user) or r.rolsuper as trusted_owner,
       exists (select from pg_catalog.pg_class as c
               where c.relnamespace = n.oid and c.relname = '_migrations' and c.relkind = 'r')
           as has_bookkeeping,
       (select string_agg(distinct o.rolname, ', ')
        from pg_catalog.pg_class as c
        join pg_catalog.pg_roles as o on o.oid = c.relowner
        where c.relnamespace = n.oid and c.relowner <> n.nspowner
          and o.rolname <> 'costwarden_owner' and not o.rolsuper) as foreign_owners
from pg_catalog.pg_namespace as n
join pg_catalog.pg_roles as r on r.oid = n.nspowner
where n.nspname = 'costwarden'
"""

#: The owner role: created when missing; refused when it could log in or is a superuser.
OWNER_ROLE = """
do $owner$
declare
    v_role record;
begin
    select * into v_role from pg_catalog.pg_roles where rolname = 'costwarden_owner';
    if not found then
        create role costwarden_owner nologin;
        comment on role costwarden_owner is
            'costwarden: owns every object of schema costwarden; '
            'SECURITY DEFINER functions run as it';
    elsif v_role.rolcanlogin or v_role.rolsuper then
        raise exception using errcode = '42501', message =
            'role costwarden_owner exists but can log in or is a superuser: '
            'costwarden needs it NOLOGIN and not superuser';
    end if;
    if not (select rolsuper from pg_catalog.pg_roles where rolname = current_user)
       and not pg_catalog.pg_has_role(current_user, 'costwarden_owner', 'USAGE') then
        -- a non-superuser migrator (a managed database's owner with CREATEROLE) hands
        -- its objects over to costwarden_owner and keeps managing them as a member
        execute format('grant costwarden_owner to %I', current_user);
    end if;
end
$owner$;
"""

#: Every object of schema costwarden not owned by costwarden_owner, as the ALTER that
#: hands it over (extension members stay with their extension; a table's indexes,
#: its identity sequences and row type follow the table).
SCHEMA_OWNERSHIP = """
select n.nspowner <> 'costwarden_owner'::regrole
from pg_catalog.pg_namespace as n where n.nspname = 'costwarden'
"""

OWNERSHIP = """
select format('alter %s %s owner to costwarden_owner',
              case c.relkind when 'S' then 'sequence' when 'v' then 'view'
                             when 'm' then 'materialized view' else 'table' end,
              c.oid::regclass)
from pg_catalog.pg_class as c
where c.relnamespace = 'costwarden'::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'S')
  and c.relowner <> 'costwarden_owner'::regrole
  and not exists (select from pg_catalog.pg_depend as d
                  where d.classid = 'pg_catalog.pg_class'::regclass and d.objid = c.oid
                    and d.deptype in ('e', 'a', 'i'))
union all
select format('alter %s %s owner to costwarden_owner',
              case p.prokind when 'p' then 'procedure' when 'a' then 'aggregate'
                             else 'function' end,
              p.oid::regprocedure)
from pg_catalog.pg_proc as p
where p.pronamespace = 'costwarden'::regnamespace and p.proowner <> 'costwarden_owner'::regrole
  and not exists (select from pg_catalog.pg_depend as d
                  where d.classid = 'pg_catalog.pg_proc'::regclass and d.objid = p.oid
                    and d.deptype = 'e')
union all
select format('alter type %s owner to costwarden_owner', t.oid::regtype)
from pg_catalog.pg_type as t
where t.typnamespace = 'costwarden'::regnamespace and t.typowner <> 'costwarden_owner'::regrole
  and t.typtype in ('c', 'd', 'e', 'r', 'm') and t.typelem = 0
  and (t.typrelid = 0
       or (select c.relkind from pg_catalog.pg_class as c where c.oid = t.typrelid) = 'c')
  and not exists (select from pg_catalog.pg_depend as d
                  where d.classid = 'pg_catalog.pg_type'::regclass and d.objid = t.oid
                    and d.deptype = 'e')
"""

#: The pgcrypto functions costwarden's SQL calls as ``costwarden.<name>``:
#: (name, argument types, result, volatility).
PGCRYPTO_FUNCTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("gen_random_bytes", "integer", "bytea", "volatile"),
    ("hmac", "bytea, bytea, text", "bytea", "immutable"),
    ("pgp_sym_encrypt", "text, text, text", "bytea", "volatile"),
    ("pgp_sym_encrypt_bytea", "bytea, text, text", "bytea", "volatile"),
    ("pgp_sym_decrypt", "bytea, text", "text", "immutable"),
    ("pgp_sym_decrypt_bytea", "bytea, text", "bytea", "immutable"),
)

#: dblink's function the audit link calls as ``costwarden.dblink_exec``.
DBLINK_FUNCTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("dblink_exec", "text, text", "text", "volatile"),
)


class _SqlFile:
    """A file of the package's sql/ tree: its name and its text."""

    path: Path

    @property
    def filename(self) -> str:
        return self.path.name

    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class Migration(_SqlFile):
    version: int
    name: str
    path: Path
    checksum: str


@dataclass(frozen=True)
class FunctionFile(_SqlFile):
    """One file of sql/functions/: re-applied as a whole, in file-name order."""

    order: int
    name: str
    path: Path
    checksum: str


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
    #: function files that differ from what was last applied, are new, or were removed
    #: (by file name); the next migrate applies them all again
    functions_outdated: tuple[str, ...] = ()
    #: applied with the layout before the split; the next migrate upgrades it
    legacy: bool = False
    #: applied migrations this package does not have: a newer costwarden migrated the
    #: database (migrate refuses it; upgrade the package)
    unknown: tuple[AppliedMigration, ...] = ()

    @property
    def up_to_date(self) -> bool:
        return not (self.pending or self.changed or self.functions_outdated or self.unknown)


def default_sql_dir() -> Path:
    """sql/ of a source checkout, else the copy shipped inside the package."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "sql"
        if (candidate / MIGRATIONS_DIR / "0001_schema_roles.sql").is_file():
            return candidate
    packaged = Path(str(resources.files("costwarden") / "sql"))
    if (packaged / MIGRATIONS_DIR).is_dir():
        return packaged
    raise MigrationError("cannot find the costwarden sql/ directory")


def _checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_migrations(sql_dir: Path | None = None) -> list[Migration]:
    """The migrations of ``sql_dir/migrations`` (default: default_sql_dir()), in order."""
    directory = (sql_dir or default_sql_dir()) / MIGRATIONS_DIR
    if not directory.is_dir():
        raise MigrationError(f"{directory}: no migrations directory")
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_RE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path, _checksum(path)))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


def load_functions(sql_dir: Path | None = None) -> list[FunctionFile]:
    """The function files of ``sql_dir/functions``, in the order they are applied."""
    directory = (sql_dir or default_sql_dir()) / FUNCTIONS_DIR
    if not directory.is_dir():
        return []
    found: list[FunctionFile] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FUNCTION_RE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: function files are named NN_concern.sql")
        found.append(FunctionFile(int(match.group(1)), match.group(2), path, _checksum(path)))
    orders = [f.order for f in found]
    if len(set(orders)) != len(orders):
        raise MigrationError("two function files share an order number")
    return found


Conn = psycopg.Connection[tuple[object, ...]]


def _exists(conn: Conn, relation: str) -> bool:
    row = conn.execute("select to_regclass(%s) is not null", (relation,)).fetchone()
    return bool(row and row[0])


def _applied(conn: Conn) -> dict[int, AppliedMigration]:
    if not _exists(conn, "costwarden._migrations"):
        return {}
    rows = conn.execute(
        "select version, name, checksum, applied_at from costwarden._migrations order by version"
    ).fetchall()
    out: dict[int, AppliedMigration] = {}
    for version, name, checksum, applied_at in rows:
        assert isinstance(version, int) and isinstance(applied_at, datetime)
        out[version] = AppliedMigration(version, str(name), str(checksum), applied_at)
    return out


def _recorded_functions(conn: Conn) -> dict[str, str]:
    if not _exists(conn, "costwarden._repeatables"):
        return {}
    rows = conn.execute("select name, checksum from costwarden._repeatables").fetchall()
    return {str(name): str(checksum) for name, checksum in rows}


def _is_legacy(m: Migration, done: AppliedMigration) -> bool:
    """An applied row of the layout before the split, for the baseline file ``m``."""
    known = LEGACY_CHECKSUMS.get(m.version)
    return known is not None and known == (done.name, done.checksum) and m.name == done.name


def _changed(migrations: list[Migration], applied: dict[int, AppliedMigration]) -> list[Migration]:
    out = []
    for m in migrations:
        done = applied.get(m.version)
        if done is not None and done.checksum != m.checksum and not _is_legacy(m, done):
            out.append(m)
    return out


def _unknown(
    migrations: list[Migration], applied: dict[int, AppliedMigration]
) -> list[AppliedMigration]:
    """The applied migrations that ``migrations`` does not have (a newer costwarden's)."""
    known = {m.version for m in migrations}
    return [applied[v] for v in sorted(applied) if v not in known]


def _label(m: Migration | AppliedMigration) -> str:
    return f"{m.version:04d}_{m.name}"


def _outdated(functions: list[FunctionFile], recorded: dict[str, str]) -> tuple[str, ...]:
    current = {f.filename: f.checksum for f in functions}
    names = sorted(set(current) | set(recorded))
    return tuple(n for n in names if current.get(n) != recorded.get(n))


def migrate(
    dsn: str,
    *,
    sql_dir: Path | None = None,
    schedule: bool = True,
    progress: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[Migration]:
    """Apply pending migrations and changed function files, in one transaction.

    Returns the migrations this call applied. ``progress`` hears, after the commit, one
    line per applied migration, and otherwise what else the run did (adopted legacy
    rows, function files applied again, objects dropped). ``warn`` (default:
    ``progress``) hears, after the commit too, each WARNING or NOTICE the server sent
    during the run, as ``warning: <message>`` / ``notice: <message>`` (migration 0008
    warns when a non-superuser cannot set log_parameter_max_length = 0).

    A database migrated by a newer costwarden (a version in ``_migrations`` that
    ``sql_dir`` does not have) is refused: MigrationError, nothing changed.
    """
    migrations = load_migrations(sql_dir)
    functions = load_functions(sql_dir)
    say = progress or (lambda _msg: None)
    tell = warn or say
    for attempt in range(_BOOKKEEPING_ATTEMPTS):
        heard: list[str] = []
        try:
            # no server-side prepared statements: they would outlive the transaction on a
            # pooled (PgBouncer transaction mode) server connection
            with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
                conn.add_notice_handler(partial(_hear, heard))
                with conn.transaction():
                    applied_now, said = _run(conn, migrations, functions)
            break
        except _BookkeepingRace:
            if attempt == _BOOKKEEPING_ATTEMPTS - 1:
                raise MigrationError(
                    "could not create costwarden's bookkeeping tables: another migrator "
                    "kept racing this one"
                ) from None
    for line in said:
        say(line)
    for line in heard:
        tell(line)
    if schedule:
        schedule_jobs(dsn)
    return applied_now


#: The server messages a run passes on (its ``client_min_messages`` is ``warning``, so
#: a NOTICE arrives only from a statement that raises the level itself).
_HEARD_SEVERITIES = frozenset({"WARNING", "NOTICE"})


def _hear(heard: list[str], diag: psycopg.errors.Diagnostic) -> None:
    """The run's notice handler: keep a WARNING or NOTICE as ``warning: <message>`` /
    ``notice: <message>`` (psycopg drops the messages of a connection without one)."""
    severity = diag.severity_nonlocalized or diag.severity or ""
    if severity not in _HEARD_SEVERITIES:
        return
    line = f"{severity.lower()}: {diag.message_primary}"
    if diag.message_hint:
        line += f" (hint: {diag.message_hint})"
    heard.append(line)


class _BookkeepingRace(MigrationError):
    """Another migrator created the schema or a bookkeeping table at the same time."""


def _run(
    conn: Conn, migrations: list[Migration], functions: list[FunctionFile]
) -> tuple[list[Migration], list[str]]:
    """One run, inside the caller's transaction (see the module docstring)."""
    said: list[str] = []
    conn.execute("set local client_min_messages = warning")
    _check_schema(conn)
    try:
        conn.execute(OWNER_ROLE)
        conn.execute(BOOKKEEPING)
    except _CREATE_RACES as exc:
        raise _BookkeepingRace("another migrator created the bookkeeping at the same time") from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise MigrationError(str(exc)) from exc
    conn.execute(LOCK)
    applied = _applied(conn)
    unknown = _unknown(migrations, applied)
    if unknown:
        raise MigrationError(
            f"the database has migration(s) {', '.join(_label(a) for a in unknown)} "
            "applied that this costwarden does not have (its newest is "
            f"{_label(migrations[-1]) if migrations else 'none'}): a newer costwarden "
            "migrated it, and this older one would put its older functions over the newer "
            "schema. Refusing, nothing was changed: upgrade the costwarden package "
            "(docs/operations.md#upgrading)"
        )
    said.extend(_create_dblink(conn))
    _pgcrypto_wrappers(conn)
    conn.execute(BOOKKEEPING_COMMENTS)

    changed = _changed(migrations, applied)
    if changed:
        m = changed[0]
        raise MigrationError(
            f"migration {m.filename} was applied with checksum "
            f"{applied[m.version].checksum[:12]}… but the file now has {m.checksum[:12]}…: "
            "applied migrations must not be edited; put the change in a new migration file"
        )
    adopted = [m for m in migrations if m.version in applied and _is_legacy(m, applied[m.version])]
    for m in adopted:
        conn.execute(
            "update costwarden._migrations set checksum = %s where version = %s",
            (m.checksum, m.version),
        )
        said.append(f"adopted {m.filename} (installed by the layout before the split)")

    applied_now: list[Migration] = []
    for m in migrations:
        if m.version in applied:
            continue
        conn.execute(
            "insert into costwarden._migrations (version, name, checksum) values (%s, %s, %s)",
            (m.version, m.name, m.checksum),
        )
        try:
            conn.execute(m.sql().encode())
        except psycopg.Error as exc:
            raise MigrationError(f"{m.filename}: {exc}") from exc
        applied_now.append(m)
        said.append(f"applied {m.filename}")

    outdated = _outdated(functions, _recorded_functions(conn))
    if applied_now or adopted or outdated:
        dropped = _apply_functions(conn, functions)
        if not applied_now:
            said.append(f"applied the {len(functions)} function files again")
        said.extend(f"dropped {kind} {name} (no longer in sql/functions)" for kind, name in dropped)
    audit_link.ensure(conn)
    _hand_over(conn)
    conn.execute(LOCKDOWN)
    said.extend(_grant_pgcrypto(conn))
    return applied_now, said


def _check_schema(conn: Conn) -> None:
    """SchemaNotOwned unless schema costwarden is absent or costwarden's own."""
    row = conn.execute(SCHEMA_CHECK).fetchone()
    if row is None:
        return
    owner, trusted_owner, has_bookkeeping, foreign_owners = row
    problems = []
    if not trusted_owner:
        problems.append(f"it is owned by {owner}")
    if not has_bookkeeping:
        problems.append("it holds no costwarden._migrations")
    if foreign_owners:
        problems.append(f"objects in it are owned by {foreign_owners}")
    if problems:
        raise SchemaNotOwned(
            "schema costwarden exists but was not created by costwarden ("
            + "; ".join(problems)
            + "): refusing to install into it, nothing was changed. Its owner could replace "
            "costwarden's functions. Drop or rename that schema, or migrate as its owner "
            "if it is an earlier costwarden install (docs/operations.md#migrations)."
        )


def _pgcrypto_schema(conn: Conn, extension: str = "pgcrypto") -> str | None:
    row = conn.execute(
        "select n.nspname from pg_catalog.pg_extension as e "
        "join pg_catalog.pg_namespace as n on n.oid = e.extnamespace where e.extname = %s",
        (extension,),
    ).fetchone()
    return str(row[0]) if row else None


def _create_dblink(conn: Conn) -> list[str]:
    """Create dblink in schema costwarden when it is absent, available and this role
    may (a superuser; dblink is not a trusted extension). PUBLIC's EXECUTE on its
    functions is revoked with the lockdown: only costwarden_owner may use it."""
    if _pgcrypto_schema(conn, "dblink") is not None:
        return []
    row = conn.execute(
        "select exists (select from pg_catalog.pg_available_extensions where name = 'dblink')"
    ).fetchone()
    if row and row[0]:
        try:
            with conn.transaction():
                conn.execute("create extension dblink with schema costwarden")
            return []
        except psycopg.errors.InsufficientPrivilege:
            pass
    return [
        "dblink is not installed (and this role may not create it): refused BYOK resolves "
        "are recorded only by the callers' receipts (docs/operations.md#the-audit-link)"
    ]


def _pgcrypto_wrappers(conn: Conn) -> None:
    """When pgcrypto (dblink) lives outside schema costwarden, (re)create costwarden.<name>
    wrappers that call it schema-qualified (PGCRYPTO_FUNCTIONS, DBLINK_FUNCTIONS)."""
    _wrappers(conn, "pgcrypto", PGCRYPTO_FUNCTIONS, "parallel safe")
    _wrappers(conn, "dblink", DBLINK_FUNCTIONS, "parallel unsafe")


def _wrappers(
    conn: Conn,
    extension: str,
    functions: tuple[tuple[str, str, str, str], ...],
    parallel: str,
) -> None:
    schema = _pgcrypto_schema(conn, extension)
    if schema is None or schema == "costwarden":
        return
    for name, args, result, volatility in functions:
        params = ", ".join(f"${i + 1}" for i in range(len(args.split(","))))
        conn.execute(
            sql.SQL(
                "create or replace function costwarden.{name}({args}) returns {result} "
                "language sql {volatility} strict {parallel} "
                "set search_path = pg_catalog, pg_temp "
                "as {body}"
            ).format(
                name=sql.Identifier(name),
                args=sql.SQL(args),
                result=sql.SQL(result),
                volatility=sql.SQL(volatility),
                parallel=sql.SQL(parallel),
                body=sql.Literal(
                    f"select {sql.Identifier(schema).as_string(conn)}.{name}({params})"
                ),
            )
        )
        conn.execute(
            sql.SQL("comment on function costwarden.{}({}) is {}").format(
                sql.Identifier(name),
                sql.SQL(args),
                sql.Literal(f"costwarden: {extension}'s {name} of schema {schema}"),
            )
        )


def _grant_pgcrypto(conn: Conn) -> list[str]:
    """costwarden_owner may use pgcrypto and dblink where they are (the lockdown revoked
    PUBLIC's EXECUTE on the extensions' functions when they live in schema costwarden).
    A dblink costwarden_owner may not use only costs the audit link: said, not raised."""
    _grant_extension(conn, "pgcrypto", PGCRYPTO_FUNCTIONS)
    try:
        with conn.transaction():
            _grant_extension(conn, "dblink", DBLINK_FUNCTIONS)
    except MigrationError as exc:
        return [f"{exc}; until then refused BYOK resolves are recorded only by receipts"]
    return []


def _grant_extension(
    conn: Conn, extension: str, functions: tuple[tuple[str, str, str, str], ...]
) -> None:
    schema = _pgcrypto_schema(conn, extension)
    if schema is None:
        return
    names = [name for name, *_ in functions]
    rows = conn.execute(
        "select p.oid::regprocedure::text from pg_catalog.pg_proc as p "
        "join pg_catalog.pg_depend as d on d.classid = 'pg_catalog.pg_proc'::regclass "
        "  and d.objid = p.oid and d.deptype = 'e' "
        "join pg_catalog.pg_extension as e on e.oid = d.refobjid and e.extname = %s "
        "where p.proname = any(%s) "
        "  and not pg_catalog.has_function_privilege('costwarden_owner', p.oid, 'EXECUTE') "
        "order by 1",
        (extension, names),
    ).fetchall()
    try:
        if not conn.execute(
            "select pg_catalog.has_schema_privilege('costwarden_owner', %s, 'USAGE')", (schema,)
        ).fetchone()[0]:  # type: ignore[index]
            conn.execute(
                sql.SQL("grant usage on schema {} to costwarden_owner").format(
                    sql.Identifier(schema)
                )
            )
        for (signature,) in rows:
            conn.execute(f"grant execute on function {signature} to costwarden_owner".encode())
    except psycopg.errors.InsufficientPrivilege as exc:
        raise MigrationError(
            f"{extension} is installed in schema {schema}, and costwarden_owner may not use "
            f"it: {exc}. Grant USAGE on that schema and EXECUTE on {extension}'s functions to "
            "costwarden_owner (docs/operations.md#managed-postgresql)"
        ) from exc


def _hand_over(conn: Conn) -> None:
    """Make costwarden_owner the owner of the schema and everything in it."""
    row = conn.execute(SCHEMA_OWNERSHIP).fetchone()
    if row and row[0]:
        try:
            with conn.transaction():
                conn.execute("alter schema costwarden owner to costwarden_owner")
        except psycopg.errors.InsufficientPrivilege as exc:
            raise MigrationError(
                f"cannot make costwarden_owner the owner of schema costwarden: {exc}. "
                "Run this migration once as a superuser, or grant CREATE on the database "
                "to costwarden_owner (docs/operations.md#managed-postgresql)"
            ) from exc
    for (stmt,) in conn.execute(OWNERSHIP).fetchall():
        conn.execute(str(stmt).encode())


def _apply_functions(conn: Conn, functions: list[FunctionFile]) -> list[tuple[str, str]]:
    """Apply every function file in order, then drop what none of them (re)created.

    Returns the (kind, name) of the dropped objects.
    """
    conn.execute(RESET_GRANTS)
    before = {(k, n): x for k, n, x in conn.execute(SOURCE_OBJECTS).fetchall()}
    for f in functions:
        try:
            conn.execute(f.sql().encode())
        except psycopg.Error as exc:
            raise MigrationError(f"{FUNCTIONS_DIR}/{f.filename}: {exc}") from exc
    _pgcrypto_wrappers(conn)
    after = {(k, n): x for k, n, x in conn.execute(SOURCE_OBJECTS).fetchall()}
    stale = [key for key, ctid in after.items() if before.get(key) == ctid]
    stale.sort(key=lambda kn: (_DROP_ORDER.index(str(kn[0])), str(kn[1])))
    dropped: list[tuple[str, str]] = []
    for kind, name in stale:
        try:
            conn.execute(f"drop {kind} {name}".encode())
        except psycopg.Error as exc:
            raise MigrationError(
                f"{kind} {name} is no longer defined in sql/functions but cannot be dropped: {exc}"
            ) from exc
        dropped.append((str(kind), str(name)))
    conn.execute("delete from costwarden._repeatables")
    for f in functions:
        conn.execute(
            "insert into costwarden._repeatables (name, checksum) values (%s, %s)",
            (f.filename, f.checksum),
        )
    return dropped


def _cron_database(conn: psycopg.Connection[tuple[object, ...]]) -> str | None:
    """cron.database_name when pg_cron is loaded (its GUC exists only then) and this
    role may read it (None otherwise)."""
    try:
        row = conn.execute("select current_setting('cron.database_name', true)").fetchone()
    except psycopg.errors.InsufficientPrivilege:
        # pg_cron keeps the setting from non-superusers (a managed database's owner):
        # no jobs can be scheduled from here; `costwarden worker` runs them
        return None
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
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
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
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
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
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
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
    """What migrate would do: pending and edited migrations, outdated function files,
    and applied migrations this package does not have (then migrate refuses)."""
    migrations = load_migrations(sql_dir)
    functions = load_functions(sql_dir)
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        applied = _applied(conn)
        recorded = _recorded_functions(conn)
    by_version = {m.version: m for m in migrations}
    legacy = any(
        _is_legacy(by_version[v], a) and a.checksum != by_version[v].checksum
        for v, a in applied.items()
        if v in by_version
    )
    pending = tuple(m for m in migrations if m.version not in applied)
    version = max(applied) if applied else None
    return MigrationStatus(
        version=version,
        applied=tuple(applied[v] for v in sorted(applied)),
        pending=pending,
        changed=tuple(_changed(migrations, applied)),
        cron=cron_status(dsn),
        functions_outdated=_outdated(functions, recorded),
        legacy=legacy,
        unknown=tuple(_unknown(migrations, applied)),
    )


def drop_schema(dsn: str) -> None:
    """Remove costwarden from a database (its jobs, then the schema)."""
    unschedule_jobs(dsn)
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        conn.execute(sql.SQL("drop schema if exists costwarden cascade"))
