"""Refused BYOK resolves recorded by the server itself (issue 11, item 6; docs/byok.md,
"The audit link"): a refusal raises CW005 and rolls back, yet its row is in the resolve
trail -- written through a loopback dblink connection in a transaction of its own --
whoever called (plain SQL, psql, the Python client), exactly once. When the link cannot
run, the refusal is still CW005 and its attempt a visible, logged gap. The link's
password reaches no log, error or readable table."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg import sql

import costwarden
from costwarden import audit_link, errors
from costwarden import migrate as cw_migrate
from cwtest import PgServer, Seeded

Conn = psycopg.Connection[Any]
RESOLVE = "select * from costwarden.fn_byok_key_resolve_v2(%s)"
KEK = "refusal-audit-kek-0123456789abcdefghij"


@pytest.fixture
def released(dsn: str, seeded: Seeded) -> UUID:
    """A byok reservation of the seeded org, released (its resolve is refused)."""
    with costwarden.Client(dsn, kek=KEK) as c:
        c.put_key(
            seeded.org, seeded.ws_vendor, "anthropic", "sk-ant-api03-REFUSAL-AUDIT-0123456789"
        )
        r = c.reserve(seeded.org, seeded.ws_vendor, seeded.vendor_model, {"input_tokens": 1})
        assert r.status == "held", r
        c.release(r.reservation_id)
    return r.reservation_id


@pytest.fixture
def link(dsn: str) -> audit_link.LinkCheck:
    """The audit link works on this server (it needs the pg_hba rule the embedded server
    has; an external COSTWARDEN_TEST_DSN server may lack it)."""
    check = audit_link.check(dsn)
    if not check.ok:
        pytest.skip(f"the audit link does not work on this server: {check.problem}")
    return check


def _attempt(message: str) -> int:
    match = re.search(r"attempt (\d+)", message)
    assert match, message
    return int(match[1])


def _trail(conn: Conn, attempt: int) -> list[tuple[Any, ...]]:
    return conn.execute(
        "select outcome, reason, recorded_via, reservation_id "
        "from costwarden.fn_byok_resolve_audit() where attempt = %s",
        (attempt,),
    ).fetchall()


def _refuse_in_rolled_back_transaction(dsn: str, rid: UUID) -> psycopg.Error:
    """A plain driver (no costwarden client): BEGIN, the refused resolve, ROLLBACK."""
    with psycopg.connect(dsn) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(RESOLVE, (rid,))
        conn.rollback()
    assert info.value.sqlstate == "CW005"
    return info.value


def _log_offset(conn: Conn) -> tuple[str, int]:
    row = conn.execute("select f, (pg_stat_file(f)).size from pg_current_logfile() as f").fetchone()
    if row is None or row[0] is None:
        pytest.skip("the server has no log file to read")
    return str(row[0]), int(row[1])


def _log_since(conn: Conn, where: tuple[str, int], *, until: str = "", wait: float = 10.0) -> str:
    """The server log written since ``where``; with ``until``, read again (up to
    ``wait`` seconds) until it contains that text: the logging collector writes a
    backend's lines a little after they are emitted, later still on a busy machine."""
    name, offset = where
    deadline = time.monotonic() + wait
    while True:
        row = conn.execute(
            "select pg_read_file(%s, %s, (pg_stat_file(%s)).size - %s)",
            (name, offset, name, offset),
        ).fetchone()
        assert row is not None
        text = str(row[0])
        if until in text or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def test_a_refusal_from_plain_sql_rolled_back_is_in_the_trail(
    dsn: str, admin_conn: Conn, released: UUID, link: Any
) -> None:
    rid = released
    err = _refuse_in_rolled_back_transaction(dsn, rid)
    attempt = _attempt(err.diag.message_primary or "")
    assert _trail(admin_conn, attempt) == [("refused", "not_held", "server", rid)]
    unknown = uuid4()
    err = _refuse_in_rolled_back_transaction(dsn, unknown)
    assert _trail(admin_conn, _attempt(str(err))) == [
        ("refused", "unknown_reservation", "server", unknown)
    ]
    # the receipt in the hint still works, and finds the refusal recorded already
    assert admin_conn.execute(
        "select costwarden.fn_byok_resolve_refusal_record(%s)", (err.diag.message_hint,)
    ).fetchone() == (False,)


def test_a_refusal_from_psql_is_in_the_trail(
    dsn: str, admin_conn: Conn, pg_server: PgServer, link: Any
) -> None:
    rid = uuid4()
    result = subprocess.run(
        [
            pg_server.binary("psql"),
            "-X",
            "-d",
            dsn,
            "-c",
            f"begin; select * from costwarden.fn_byok_key_resolve_v2('{rid}'); rollback",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 and "BYOK resolve refused" in result.stderr, result
    assert _trail(admin_conn, _attempt(result.stderr)) == [
        ("refused", "unknown_reservation", "server", rid)
    ]


def test_one_row_per_refusal_when_the_client_posts_its_receipt(
    dsn: str, admin_conn: Conn, released: UUID, link: Any
) -> None:
    """The Python client records its refusals itself as well: the receipt finds the
    server's row (ON CONFLICT on the attempt), so there is one row, recorded_via
    'server'."""
    with (
        costwarden.Client(dsn, kek=KEK) as c,
        pytest.raises(errors.Forbidden, match="not_held") as info,
    ):
        c.resolve_key(released)
    attempt = _attempt(info.value.message)
    assert admin_conn.execute(
        "select count(*), min(recorded_via) from costwarden._byok_resolve_log where attempt = %s",
        (attempt,),
    ).fetchone() == (1, "server")


@pytest.mark.parametrize("breakage", ["connection refused", "no password asked", "no dblink"])
def test_without_the_link_a_refusal_is_still_cw005_and_a_logged_gap(
    dsn: str, admin_conn: Conn, link: Any, breakage: str
) -> None:
    if breakage == "connection refused":
        admin_conn.execute("update costwarden._byok_audit_link set port = 1")
        expect = "08001"
    elif breakage == "no password asked":  # the Unix socket: `local ... trust`
        admin_conn.execute(
            "update costwarden._byok_audit_link "
            "set host = split_part(current_setting('unix_socket_directories'), ',', 1)"
        )
        expect = "password is required"
    else:
        admin_conn.execute("drop extension dblink")
        expect = "42883"
    where = _log_offset(admin_conn)
    rid = uuid4()
    err = _refuse_in_rolled_back_transaction(dsn, rid)
    attempt = _attempt(str(err))
    assert _trail(admin_conn, attempt) == [("unrecorded", None, None, None)]
    log = _log_since(admin_conn, where, until="costwarden.byok_resolve_unrecorded")
    refused = [
        line
        for line in log.splitlines()
        if 'costwarden.byok_resolve {"at": ' in line and f'"attempt": {attempt},' in line
    ]
    assert len(refused) == 1 and '"reason": "unknown_reservation"' in refused[0], log
    gap = [line for line in log.splitlines() if "costwarden.byok_resolve_unrecorded" in line]
    assert len(gap) == 1 and f'"attempt": {attempt},' in gap[0] and expect in gap[0], log
    check = audit_link.check(dsn)
    assert not check.ok and check.problem is not None and expect in check.problem


@pytest.fixture
def logging_database(
    fresh_database: Callable[[], str], pg_server: PgServer
) -> Iterator[tuple[str, Conn]]:
    """A fresh database whose sessions log every statement at debug1, migrated with that
    logging on (the link's login and password are made while the log listens)."""
    dsn = fresh_database()
    with psycopg.connect(dsn, autocommit=True) as conn:
        dbname = conn.info.dbname
        for setting, value in (
            ("log_statement", "all"),
            ("log_min_messages", "debug1"),
            ("log_min_error_statement", "debug1"),
        ):
            conn.execute(
                sql.SQL("alter database {} set {} = {}").format(
                    sql.Identifier(dbname), sql.Identifier(setting), sql.Literal(value)
                )
            )
        yield dsn, conn


def test_the_link_password_reaches_no_log_error_or_readable_table(
    logging_database: tuple[str, Conn], pg_server: PgServer
) -> None:
    dsn, admin = logging_database
    where = _log_offset(admin)
    cw_migrate.migrate(dsn, schedule=False)
    passwords = []
    row = admin.execute("select login, password from costwarden._byok_audit_link").fetchone()
    assert row is not None
    login, password = row
    passwords.append(password)
    assert re.fullmatch(r"[0-9a-f]{64}", password) and login.startswith("costwarden_auditor_")
    if not audit_link.check(dsn).ok:
        pytest.skip("the audit link does not work on this server")

    messages = []
    err = _refuse_in_rolled_back_transaction(dsn, uuid4())  # recorded through the link
    messages.append(str(err))
    assert _trail(admin, _attempt(str(err)))[0][2] == "server"
    assert audit_link.rotate(dsn) == login  # same login, a new password
    (password,) = admin.execute("select password from costwarden._byok_audit_link").fetchone()  # type: ignore[misc]
    passwords.append(password)
    assert passwords[0] != passwords[1]
    err = _refuse_in_rolled_back_transaction(dsn, uuid4())
    assert _trail(admin, _attempt(str(err)))[0][2] == "server"
    # a wrong password: the failure is reported (blanked), never the password
    admin.execute("update costwarden._byok_audit_link set password = password || 'x'")
    err = _refuse_in_rolled_back_transaction(dsn, uuid4())
    messages.append(f"{err} {err.diag.message_hint} {err.diag.message_detail}")
    problem = audit_link.check(dsn).problem
    assert problem is not None and "password authentication failed" in problem
    messages.append(problem)
    admin.execute("update costwarden._byok_audit_link set password = %s", (password,))

    log = _log_since(admin, where, until="costwarden._byok_refusal_append")
    assert "costwarden.byok_resolve_unrecorded" in log
    assert "costwarden._byok_refusal_append" in log  # the link's own statements are logged
    for secret in passwords:
        assert secret not in log
        assert all(secret not in m for m in messages)
    # no caller reads the link
    for role in ("costwarden_admin", "costwarden_service", "costwarden_tenant", login):
        with admin.transaction(force_rollback=True):
            admin.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                admin.execute("select password from costwarden._byok_audit_link")


def test_the_auditor_may_execute_one_function_and_read_nothing(admin_conn: Conn) -> None:
    """costwarden_auditor (and so the link's login) runs _byok_refusal_append and nothing
    else of costwarden's; it can read no table."""
    routines = admin_conn.execute(
        "select p.oid::regprocedure::text from pg_proc as p "
        "where p.pronamespace = 'costwarden'::regnamespace "
        "and has_function_privilege('costwarden_auditor', p.oid, 'EXECUTE')"
    ).fetchall()
    assert routines == [("costwarden._byok_refusal_append(text)",)]
    readable = admin_conn.execute(
        "select c.oid::regclass::text from pg_class as c "
        "where c.relnamespace = 'costwarden'::regnamespace and c.relkind in ('r', 'v', 'm', 'S') "
        "and (has_table_privilege('costwarden_auditor', c.oid, 'SELECT') "
        "     or has_table_privilege('costwarden_auditor', c.oid, 'INSERT'))"
    ).fetchall()
    assert readable == []
    # a forged receipt is refused even through the link's own function
    with admin_conn.transaction(force_rollback=True):
        admin_conn.execute("set local role costwarden_auditor")
        with pytest.raises(psycopg.Error) as info:
            admin_conn.execute("select costwarden._byok_refusal_append('eyJ9.' || repeat('0', 64))")
        assert info.value.sqlstate == "CW004"
