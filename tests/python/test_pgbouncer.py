"""Poolers (SPEC §12, docs/python.md#poolers): the migration and the saga through a real
PgBouncer in transaction mode, started by this test on a free port in front of the
session's server. The client needs no setting for it: its own connections prepare no
statement on the server (prepare_threshold None unless the caller opts in), and a
prepared statement that does not match its connection fails closed, never as
DatabaseUnavailable."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import costwarden
from costwarden import errors
from costwarden import migrate as cw_migrate
from cwtest import PgServer, Seeded

KEK = "bouncer-kek-0123456789abcdefghijklmnopqr"
SECRET = "sk-ant-api03-bouncer-0123456789"
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def bouncer(pg_server: PgServer) -> Iterator[Callable[[str], str]]:
    """A PgBouncer (pool_mode = transaction); yields dsn -> the same DSN through it."""
    if not Path(PGBOUNCER).exists():
        pytest.fail("pgbouncer is not installed: run scripts/bootstrap.sh")
    base = Path(tempfile.mkdtemp(prefix="costwarden-bouncer-"))
    base.chmod(0o755)
    port = _free_port()
    (base / "users.txt").write_text(f'"{pg_server.user}" ""\n')
    (base / "pgbouncer.ini").write_text(
        "\n".join(
            [
                "[databases]",
                f"* = host={pg_server.host} port={pg_server.port}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {base / 'users.txt'}",
                "pool_mode = transaction",
                "default_pool_size = 4",
                "max_client_conn = 100",
                "server_reset_query =",
                "ignore_startup_parameters = extra_float_digits",
                f"logfile = {base / 'pgbouncer.log'}",
                f"pidfile = {base / 'pgbouncer.pid'}",
                "",
            ]
        )
    )
    for p in base.iterdir():
        p.chmod(0o644)
    command = [PGBOUNCER, str(base / "pgbouncer.ini")]
    if os.geteuid() == 0:  # pgbouncer does not run as root: it runs as postgres, like the server
        shutil.chown(base, "postgres")
        command[1:1] = ["-u", "postgres"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode() if proc.stdout else ""
                    pytest.fail(f"pgbouncer did not start: {out}")
                time.sleep(0.1)

        def through(dsn: str) -> str:
            info = conninfo_to_dict(dsn)
            return make_conninfo(dsn, host="127.0.0.1", port=str(port), dbname=info["dbname"])

        yield through
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def test_migration_and_saga_through_pgbouncer_in_transaction_mode(
    bouncer: Callable[[str], str],
    fresh_database: Callable[[], str],
    seeded_factory: Callable[[str], Seeded],
) -> None:
    direct = fresh_database()
    pooled = bouncer(direct)
    applied = cw_migrate.migrate(pooled, schedule=False)
    assert applied and cw_migrate.status(pooled).up_to_date
    assert cw_migrate.migrate(pooled, schedule=False) == []

    kwargs = {"application_name": "costwarden-bouncer-test"}  # nothing about prepared statements
    s = seeded_factory(direct)
    with costwarden.Client(pooled, kek=KEK, connect_kwargs=kwargs, pool_size=3) as c:
        c.set_budget("acme", "workspace", s.ws_platform, "day", 10_000_000)
        # more calls than psycopg's default prepare threshold, over several server connections
        for i in range(12):
            r = c.reserve(
                "acme",
                s.ws_platform,
                s.platform_model,
                {"input_tokens": 100},
                idempotency_key=f"b-{i}",
            )
            c.meter(r.reservation_id, {"input_tokens": 50})
            c.commit(r.reservation_id, {"input_tokens": 90})
        status = c.budget_status("acme", "workspace", s.ws_platform)
        assert any(b.spent and b.spent > 0 for b in status)
        # BYOK: the KEK and the secret go through COPY, inside each call's transaction
        c.put_key("acme", s.ws_vendor, "anthropic", SECRET)
        held = c.reserve("acme", s.ws_vendor, s.vendor_model, {"input_tokens": 1000})
        assert c.resolve_key(held.reservation_id).secret == SECRET
        c.release(held.reservation_id)
        assert c.ledger_verify("acme")[0].ok
    with psycopg.connect(direct) as conn:
        assert conn.execute(
            "select count(*) from costwarden._reservations where status = 'committed'"
        ).fetchone() == (12,)


THREADS, PAIRS = 4, 15


def _pairs_from_threads(client: costwarden.Client, s: Seeded) -> list[BaseException]:
    """THREADS threads, each PAIRS reserve + commit pairs on the one client; the errors."""
    failed: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def work() -> None:
        start.wait()
        for _ in range(PAIRS):
            try:
                r = client.reserve("acme", s.ws_platform, s.platform_model, {"input_tokens": 100})
                client.commit(r.reservation_id, {"input_tokens": 90})
            except Exception as exc:
                failed.append(exc)

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failed


def test_the_default_client_needs_no_setting_for_pgbouncer_in_transaction_mode(
    bouncer: Callable[[str], str], dsn: str, seeded: Seeded
) -> None:
    """SPEC §12: no reliance on server-side prepared statements. A client on its own pool
    prepares nothing unless asked to (prepare_threshold None), so threads sharing it
    through PgBouncer, whose transactions land on any server connection, see no error."""
    with costwarden.Client(bouncer(dsn), pool_size=THREADS, on_unavailable="closed") as c:
        failed = _pairs_from_threads(c, seeded)
    assert failed == []
    with psycopg.connect(dsn) as conn:
        assert conn.execute(
            "select count(*) from costwarden._reservations where status = 'committed'"
        ).fetchone() == (THREADS * PAIRS,)


def test_a_client_that_opts_into_prepared_statements_behind_pgbouncer_fails_closed(
    bouncer: Callable[[str], str], dsn: str, seeded: Seeded, tmp_path: Path
) -> None:
    """The same threads on a client that prepares statements (psycopg's 5) under
    on_unavailable='open': what fails, fails as the prepared statement mismatch it is,
    and no call goes through unenforced (nothing spooled), as it would if the Bind
    mismatch (a class 08 SQLSTATE) counted as the database being unavailable."""
    with costwarden.Client(
        bouncer(dsn),
        pool_size=THREADS,
        on_unavailable="open",
        spool_dir=tmp_path,
        connect_kwargs={"prepare_threshold": 5},
    ) as c:
        failed = _pairs_from_threads(c, seeded)
        assert c.unavailable.spool is not None and c.unavailable.spool.pending() == 0
    assert all(errors.is_prepared_statement_mismatch(e) for e in failed), failed
    with psycopg.connect(dsn) as conn:
        committed = conn.execute(
            "select count(*) from costwarden._reservations where status = 'committed'"
        ).fetchone()
    # a pair that failed failed once (a reserve refused leaves nothing to commit)
    assert committed == (THREADS * PAIRS - len(failed),)


def test_a_prepared_statement_mismatch_fails_closed(
    dsn: str, seeded: Seeded, tmp_path: Path
) -> None:
    """What a client that prepares statements meets behind a pooler in transaction mode,
    made here on one direct connection by changing its prepared statements behind
    psycopg's back: the statement missing (26000), its name taken (42P05), a Bind whose
    parameters do not fit (08P01, a class 08 SQLSTATE). Each is a configuration error,
    never DatabaseUnavailable: an on_unavailable='open' client raises it (with a note
    saying what to do) and spools nothing, instead of letting the call through."""
    s = seeded
    usage = {"input_tokens": 100}
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        c = costwarden.Client(conn, on_unavailable="open", spool_dir=tmp_path)
        # the name psycopg gives the first statement it prepares, taken first
        conn.execute("prepare _pg3_0 as select 1", prepare=False)
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement) as duplicate:
            c.reserve("acme", s.ws_platform, s.platform_model, usage)

        def prepared_reserve() -> sql.Identifier:
            """A reserve that works, prepared: the name of its prepared statement."""
            c.release(c.reserve("acme", s.ws_platform, s.platform_model, usage).reservation_id)
            row = conn.execute(
                "select name from pg_prepared_statements where statement like %s",
                ("%fn_cost_reserve(%",),
                prepare=False,
            ).fetchone()
            assert row is not None
            return sql.Identifier(row[0])

        conn.execute(sql.SQL("deallocate {}").format(prepared_reserve()), prepare=False)
        with pytest.raises(psycopg.errors.InvalidSqlStatementName) as missing:
            c.reserve("acme", s.ws_platform, s.platform_model, usage)
        reserve = prepared_reserve()
        conn.execute(sql.SQL("deallocate {}").format(reserve), prepare=False)
        conn.execute(sql.SQL("prepare {}(int) as select $1").format(reserve), prepare=False)
        with pytest.raises(psycopg.errors.ProtocolViolation, match="bind message") as bind:
            c.reserve("acme", s.ws_platform, s.platform_model, usage)
        for info in (duplicate, bind, missing):
            assert errors.is_prepared_statement_mismatch(info.value)
            assert not errors.is_unavailable(info.value)
            assert errors.PREPARED_STATEMENT_NOTE in info.value.__notes__
        assert c.unavailable.spool is not None and c.unavailable.spool.pending() == 0
        assert conn.execute(
            "select count(*) from costwarden._reservations", prepare=False
        ).fetchone() == (2,)
