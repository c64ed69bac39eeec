"""The embedded cluster manager, against real PostgreSQL servers (one cluster per module)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from costwarden.embedded import (
    STATE_FILE_NAME,
    EmbeddedCluster,
    EmbeddedError,
    default_data_dir,
    resolve_dsn,
)


@pytest.fixture(scope="module")
def base_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: /tmp/pytest-of-root is 0700 and the server user must reach it.
    path = Path(tempfile.mkdtemp(prefix="cw-embedded-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(base_dir: Path) -> Iterator[EmbeddedCluster]:
    cluster = EmbeddedCluster(base_dir / "pgdata", fast=True)
    cluster.init()
    yield cluster
    cluster.stop()


@pytest.fixture
def running(cluster: EmbeddedCluster) -> EmbeddedCluster:
    cluster.start()
    return cluster


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("COSTWARDEN_DSN", raising=False)
    monkeypatch.delenv("COSTWARDEN_DATA_DIR", raising=False)
    return monkeypatch


def _scalar(dsn: str, sql: str) -> object:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def test_start_returns_a_dsn_that_connects(running: EmbeddedCluster) -> None:
    dsn = running.start()
    assert dsn == f"postgresql://postgres@localhost:{running.port}/postgres"
    assert dsn == running.dsn
    assert _scalar(dsn, "SELECT current_user") == "postgres"
    assert int(str(_scalar(dsn, "SHOW server_version_num"))) >= 150000
    assert str(_scalar(dsn, "SHOW server_encoding")) == "UTF8"
    assert running.is_running()


def test_settings(running: EmbeddedCluster) -> None:
    dsn = running.dsn
    assert _scalar(dsn, "SHOW listen_addresses") == "localhost"
    assert _scalar(dsn, "SHOW max_connections") == "200"
    assert _scalar(dsn, "SHOW shared_buffers") == "256MB"
    assert _scalar(dsn, "SHOW logging_collector") == "on"
    assert _scalar(dsn, "SHOW unix_socket_directories") == str(running.socket_dir)
    for name in ("fsync", "synchronous_commit", "full_page_writes"):
        assert _scalar(dsn, f"SHOW {name}") == "off", name  # fast=True


def test_pg_cron_is_preloaded(running: EmbeddedCluster) -> None:
    if not running.pg_cron_available():
        pytest.fail("pg_cron is not installed (scripts/bootstrap.sh installs postgresql-15-cron)")
    assert "pg_cron" in str(_scalar(running.dsn, "SHOW shared_preload_libraries"))
    assert _scalar(running.dsn, "SHOW cron.database_name") == "postgres"
    with psycopg.connect(running.dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        row = conn.execute("SELECT count(*) FROM cron.job").fetchone()
    assert row is not None


def test_log_file_is_in_the_data_dir(running: EmbeddedCluster) -> None:
    log = running.log_file()
    assert log is not None
    assert log.parent == running.data_dir / "log"
    assert "database system is ready to accept connections" in log.read_text()


def test_state_file(running: EmbeddedCluster) -> None:
    state = json.loads((running.data_dir.parent / STATE_FILE_NAME).read_text())
    assert state == {"data_dir": str(running.data_dir), "port": running.port, "dsn": running.dsn}


def test_second_start_is_a_noop_on_the_same_port(running: EmbeddedCluster) -> None:
    pid_before = (running.data_dir / "postmaster.pid").read_text().split()[0]
    assert running.start() == running.dsn
    # A fresh object (another process, say) finds the same server through the state.
    other = EmbeddedCluster(running.data_dir)
    assert other.is_running()
    assert other.start() == running.dsn
    assert (running.data_dir / "postmaster.pid").read_text().split()[0] == pid_before


def test_stop_then_restart_reuses_cluster_and_port(running: EmbeddedCluster) -> None:
    port = running.port
    with psycopg.connect(running.dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS survives_restart")
        conn.execute("CREATE TABLE survives_restart AS SELECT 42 AS answer")
    running.stop()
    assert not running.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(running.dsn, connect_timeout=3)
    running.stop()  # stopping a stopped cluster is a no-op

    again = EmbeddedCluster(running.data_dir)
    assert again.start() == f"postgresql://postgres@localhost:{port}/postgres"
    assert _scalar(again.dsn, "SELECT answer FROM survives_restart") == 42


def test_restart_moves_off_a_port_someone_took(running: EmbeddedCluster) -> None:
    old_port = running.port
    assert old_port is not None
    running.stop()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        # The old server's closed connections may sit in TIME_WAIT on that port.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        dsn = EmbeddedCluster(running.data_dir).start()
    new_cluster = EmbeddedCluster(running.data_dir)
    assert new_cluster.port != old_port
    assert dsn == new_cluster.dsn
    assert _scalar(dsn, "SELECT 1") == 1
    assert json.loads(new_cluster.state_file.read_text())["port"] == new_cluster.port


def test_explicit_port_in_use_is_refused(running: EmbeddedCluster) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        with pytest.raises(EmbeddedError, match="already runs on port"):
            EmbeddedCluster(running.data_dir, port=busy).start()
        running.stop()
        try:
            with pytest.raises(EmbeddedError, match=f"port {busy} is already in use"):
                EmbeddedCluster(running.data_dir, port=busy).start()
        finally:
            running.start()


def test_failed_start_reports_the_server_log(running: EmbeddedCluster) -> None:
    auto_conf = running.data_dir / "postgresql.auto.conf"
    original = auto_conf.read_text()
    running.stop()
    try:
        with auto_conf.open("a") as fh:
            fh.write("shared_buffers = 'a lot'\n")
        with pytest.raises(EmbeddedError) as excinfo:
            running.start()
        message = str(excinfo.value)
        assert "did not start" in message
        assert "shared_buffers" in message  # the postmaster's own complaint, from the log
    finally:
        with auto_conf.open("w") as fh:
            fh.write(original)
    assert running.start() == running.dsn


def test_resolve_dsn_precedence(running: EmbeddedCluster, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("COSTWARDEN_DATA_DIR", str(running.data_dir))
    assert resolve_dsn(None) == running.dsn  # the state file
    assert resolve_dsn(None, autostart=False) == running.dsn
    clean_env.setenv("COSTWARDEN_DSN", "postgresql://env@example/db")
    assert resolve_dsn(None) == "postgresql://env@example/db"
    assert resolve_dsn("postgresql://arg@example/db") == "postgresql://arg@example/db"


def test_start_applies_the_starting_objects_settings(running: EmbeddedCluster) -> None:
    running.stop()
    durable = EmbeddedCluster(running.data_dir)  # fast=False
    try:
        assert durable.start() == running.dsn
        assert _scalar(running.dsn, "SHOW fsync") == "on"
    finally:
        durable.stop()
        running.start()
    assert _scalar(running.dsn, "SHOW fsync") == "off"


def test_resolve_dsn_with_an_explicit_data_dir(
    running: EmbeddedCluster, clean_env: pytest.MonkeyPatch, base_dir: Path
) -> None:
    clean_env.setenv("COSTWARDEN_DATA_DIR", str(base_dir / "never-created"))
    assert resolve_dsn(None, data_dir=running.data_dir) == running.dsn
    clean_env.setenv("COSTWARDEN_DSN", "postgresql://env@example/db")
    assert resolve_dsn(None, data_dir=running.data_dir) == "postgresql://env@example/db"


def test_resolve_dsn_autostarts_a_stopped_cluster(
    running: EmbeddedCluster, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("COSTWARDEN_DATA_DIR", str(running.data_dir))
    running.stop()
    with pytest.raises(EmbeddedError, match="stopped"):
        resolve_dsn(None, autostart=False)
    assert resolve_dsn(None) == running.dsn
    assert running.is_running()


def test_resolve_dsn_without_a_cluster(base_dir: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("COSTWARDEN_DATA_DIR", str(base_dir / "never-created"))
    with pytest.raises(EmbeddedError, match="costwarden up"):
        resolve_dsn(None)
    assert not (base_dir / "never-created").exists()


def test_default_data_dir(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.chdir(tmp_path)
    assert default_data_dir() == tmp_path / ".costwarden" / "pgdata"
    clean_env.setenv("COSTWARDEN_DATA_DIR", "relative/dir")
    assert default_data_dir() == tmp_path / "relative" / "dir"
    assert default_data_dir().is_absolute()


def test_dsn_before_first_start(base_dir: Path) -> None:
    fresh = EmbeddedCluster(base_dir / "not-started")
    assert fresh.port is None
    assert not fresh.is_initialized()
    assert not fresh.is_running()
    with pytest.raises(EmbeddedError, match="never been started"):
        _ = fresh.dsn


def test_long_paths_put_the_socket_in_tmp(base_dir: Path) -> None:
    deep = base_dir / ("d" * 120) / "pgdata"
    assert EmbeddedCluster(deep).socket_dir == Path("/tmp")
    assert EmbeddedCluster(base_dir / "pgdata").socket_dir == base_dir / "pgdata-socket"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root chmods path components")
def test_root_makes_a_private_parent_traversable(base_dir: Path) -> None:
    private = base_dir / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    cluster = EmbeddedCluster(private / "nested" / "pgdata", fast=True)
    cluster.init()
    assert cluster.is_initialized()
    assert private.stat().st_mode & 0o001
    assert (private / "nested").stat().st_uid == cluster.data_dir.stat().st_uid != 0


def test_module_cli(running: EmbeddedCluster) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "costwarden.embedded",
                *args,
                "--data-dir",
                str(running.data_dir),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    assert cli("status").stdout.strip() == f"running {running.dsn}"
    assert cli("up", "--fast").stdout.strip() == running.dsn
    assert cli("dsn", "--dbname", "other").stdout.strip() == running.dsn_for("other")
    assert cli("port").stdout.strip() == str(running.port)
    assert Path(cli("log").stdout.strip()) == running.log_file()


def test_module_cli_reports_an_unusable_data_dir_in_one_line(base_dir: Path) -> None:
    """A data directory under a regular file cannot be created: one ``error:`` line and
    exit code 1, never a traceback."""
    (base_dir / "a-file").write_text("not a directory\n")
    data_dir = base_dir / "a-file" / "pgdata"
    done = subprocess.run(
        [sys.executable, "-m", "costwarden.embedded", "up", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Not a directory" in done.stderr and "Traceback" not in done.stderr
