"""Poolers (SPEC §12, docs/python.md#poolers): the migration and the saga through a real
PgBouncer in transaction mode, started by this test on a free port in front of the
session's server. The client connects with prepare_threshold=None (no server-side
prepared statements) and an application_name, passed through ``connect_kwargs``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import costwarden
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

    kwargs = {"prepare_threshold": None, "application_name": "costwarden-bouncer-test"}
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
