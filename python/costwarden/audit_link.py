"""The audit link: how a refused BYOK resolve reaches the audit trail although its
transaction rolls back (docs/byok.md, "Auditing every resolve, refusals included").

Before raising CW005, ``fn_byok_key_resolve_v2`` opens a loopback dblink connection and
records the refusal there, in a transaction of its own. dblink lets a role that is not a
superuser (resolve runs as costwarden_owner) connect only with a password the server
asked for, so the link logs in as a LOGIN role of its own:

* ``costwarden_auditor`` (NOLOGIN, migration 0014) may execute one function,
  ``costwarden._byok_refusal_append(receipt)``, which records a refusal from its signed
  receipt -- a forged one is CW004;
* its member ``costwarden_auditor_<database oid>`` is the login, one per database (roles
  are cluster-wide; two costwarden databases on one server never share a password);
* its password, 64 hex digits from :mod:`secrets`, is generated here, never printed,
  sent to the server only as COPY data (never logged) and as a SCRAM verifier computed
  by libpq, and kept in ``costwarden._byok_audit_link``, a table no caller can read.

The migration runner calls :func:`ensure` in its transaction (a no-op once the link has
a login that exists); ``costwarden audit-link rotate`` calls :func:`rotate`; ``costwarden
audit-link check`` calls :func:`check`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import psycopg
from psycopg import sql

GROUP = "costwarden_auditor"

#: The link's login (the database's own) and whether the link names a role that exists.
_STATE = """
select 'costwarden_auditor_' || d.oid as own_login,
       l.login,
       exists (select from pg_catalog.pg_roles as r where r.rolname = l.login) as login_exists
from pg_catalog.pg_database as d
left join costwarden._byok_audit_link as l on true
where d.datname = current_database()
"""

#: ALTER ROLE ... PASSWORD with the verifier from the temporary table: no secret is
#: statement text (log_statement = 'ddl' logs top-level statements only).
_SET_PASSWORD = """
do $password$
begin
    execute format('alter role %I login password %L',
                   (select login from costwarden._byok_audit_link),
                   (select verifier from pg_temp._costwarden_link_secret));
end
$password$
"""

Conn = psycopg.Connection[tuple[object, ...]]


@dataclass(frozen=True)
class LinkCheck:
    """What ``costwarden audit-link check`` reports (never the password)."""

    ok: bool
    login: str | None
    target: str | None  # host:port/dbname
    problem: str | None


def ensure(conn: Conn) -> None:
    """Give this database an audit link login when it has none (or its role is gone).
    Runs inside the migration's transaction."""
    if conn.execute("select to_regclass('costwarden._byok_audit_link')").fetchone() == (None,):
        return  # a run of the migrations before 0014 only
    row = conn.execute(_STATE).fetchone()
    assert row is not None
    own, login, login_exists = row
    if login is None or not login_exists:
        _new_password(conn, str(own))


def rotate(dsn: str) -> str:
    """A new password for this database's audit link login; returns the login.

    A database that shares its login with another (a copy made with CREATE DATABASE
    ... TEMPLATE, a restored dump) gets a login of its own instead, so the other keeps
    working.
    """
    with (
        psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn,
        conn.transaction(),
    ):
        conn.execute("set local client_min_messages = warning")
        row = conn.execute(_STATE).fetchone()
        assert row is not None
        own = str(row[0])
        _new_password(conn, own)
    return own


def check(dsn: str) -> LinkCheck:
    """Open the link once, as resolve does (as costwarden_owner, which is no superuser:
    dblink demands the password), running the append function on nothing. Needs a
    member of costwarden_owner (the migrating role) or a superuser."""
    with (
        psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn,
        conn.transaction(force_rollback=True),
    ):
        conn.execute("set local role costwarden_owner")
        row = conn.execute(
            "select ok, login, target, problem from costwarden._byok_audit_link_exec("
            "'do $link$ begin perform costwarden._byok_refusal_append(null); end $link$')"
        ).fetchone()
    assert row is not None
    ok, login, target, problem = row
    return LinkCheck(
        bool(ok),
        None if login is None else str(login),
        None if target is None else str(target),
        None if problem is None else str(problem),
    )


def _new_password(conn: Conn, login: str) -> None:
    """Create ``login`` when missing (a member of costwarden_auditor), give it a new
    password and record it in the link, keeping the link's host, port and dbname."""
    exists = conn.execute("select from pg_catalog.pg_roles where rolname = %s", (login,)).fetchone()
    if exists is None:
        conn.execute(sql.SQL("create role {} login").format(sql.Identifier(login)))
        conn.execute(
            sql.SQL("comment on role {} is {}").format(
                sql.Identifier(login),
                sql.Literal("costwarden: the audit link's login (docs/byok.md#the-audit-link)"),
            )
        )
    conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(GROUP), sql.Identifier(login)))
    password = secrets.token_hex(32)
    verifier = conn.pgconn.encrypt_password(password.encode(), login.encode(), b"scram-sha-256")
    conn.execute(
        "create temporary table _costwarden_link_secret (password text, verifier text) "
        "on commit drop"
    )
    with conn.cursor().copy(
        "copy pg_temp._costwarden_link_secret (password, verifier) from stdin"
    ) as copy:
        copy.write_row((password, verifier.decode()))
    del password, verifier
    conn.execute(
        "insert into costwarden._byok_audit_link (login, password) "
        "select %s, s.password from pg_temp._costwarden_link_secret as s "
        "on conflict (singleton) do update "
        "set login = excluded.login, password = excluded.password, changed_at = now()",
        (login,),
    )
    conn.execute(_SET_PASSWORD)
    conn.execute("drop table pg_temp._costwarden_link_secret")
