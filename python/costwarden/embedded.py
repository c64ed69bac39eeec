"""An embedded local PostgreSQL cluster: what `costwarden up` starts when no DSN is given.

The cluster is an ordinary PostgreSQL data directory (`initdb`) run with `pg_ctl`; nothing
here re-implements the server. The layout next to the data directory is::

    <parent>/                       e.g. ./.costwarden
        pgdata/                     the data directory (postgresql.conf, log/, ...)
        pgdata-socket/              the Unix socket directory (mode 0700)
        .pgdata.lock                serialises init/start/stop across processes
        costwarden.json             state: data_dir, port, dsn

Only loopback is listened on and `trust` authentication is limited to local and loopback
connections: this is a developer's cluster, not a production server. Every local account can
connect to it over TCP as the superuser `postgres`. The one exception, first in pg_hba.conf:
the audit link's logins (members of `costwarden_auditor`) must give their password on
loopback (`scram-sha-256`), as dblink requires of a connection opened by a role that is not a
superuser (docs/byok.md#the-audit-link).

PostgreSQL refuses to run as root. When the effective uid is 0 every server binary runs as
the `postgres` system user, the directories created here are chowned to it, and each path
component above the data directory is given the search bit it needs.

The settings costwarden manages live between two marker lines at the end of
postgresql.conf, rewritten at every start; everything outside the markers is left alone, but
the block comes last and so wins over it. To change one of those settings for good, use
ALTER SYSTEM (postgresql.auto.conf is read after postgresql.conf).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import CostwardenError

__all__ = [
    "DEFAULT_PG_BINDIR",
    "STATE_FILE_NAME",
    "EmbeddedCluster",
    "EmbeddedError",
    "default_data_dir",
    "pg_bindir",
    "resolve_dsn",
]

log = logging.getLogger(__name__)

DEFAULT_PG_BINDIR = Path("/usr/lib/postgresql/15/bin")
STATE_FILE_NAME = "costwarden.json"
SUPERUSER = "postgres"

#: pg_hba.conf's first lines: the audit link's logins give a password on loopback.
_HBA_AUDITOR = (
    "# costwarden: the audit link's logins must give their password (docs/byok.md)",
    "host all +costwarden_auditor 127.0.0.1/32 scram-sha-256",
    "host all +costwarden_auditor ::1/128 scram-sha-256",
)

_BLOCK_BEGIN = "# >>> costwarden: managed by costwarden.embedded, edits between markers are lost"
_BLOCK_END = "# <<< costwarden"
# sockaddr_un.sun_path is 108 bytes on Linux; keep well clear of it.
_MAX_SOCKET_PATH = 100
_START_TIMEOUT_S = 60
_PORT_CLASH = re.compile(
    r"could not bind|address already in use|could not create any TCP/IP sockets"
    r"|could not create lock file .*\.s\.PGSQL",
    re.IGNORECASE,
)


class EmbeddedError(CostwardenError):
    """The embedded cluster could not be found, created, started or stopped."""


def default_data_dir() -> Path:
    """`$COSTWARDEN_DATA_DIR`, else `./.costwarden/pgdata` under the working directory."""
    configured = os.environ.get("COSTWARDEN_DATA_DIR")
    path = Path(configured) if configured else Path(".costwarden") / "pgdata"
    return path.expanduser().absolute()


def pg_bindir() -> Path:
    """Where the PostgreSQL server binaries are.

    `$COSTWARDEN_PG_BINDIR`, else `pg_config --bindir` when pg_config is on PATH and that
    directory holds initdb, else /usr/lib/postgresql/15/bin.
    """
    configured = os.environ.get("COSTWARDEN_PG_BINDIR")
    if configured:
        return Path(configured)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=30
            ).stdout.strip()
            if out and (Path(out) / "initdb").exists():
                return Path(out)
    return DEFAULT_PG_BINDIR


def resolve_dsn(dsn: str | None, *, autostart: bool = True, data_dir: Path | None = None) -> str:
    """The DSN to use: `dsn`, else `$COSTWARDEN_DSN`, else the embedded cluster.

    The embedded cluster is the one at `data_dir` (default: `default_data_dir()`); it is
    started when stopped and `autostart` is true. A cluster that was never created is an
    `EmbeddedError`.
    """
    if dsn:
        return dsn
    from_env = os.environ.get("COSTWARDEN_DSN")
    if from_env:
        return from_env
    cluster = EmbeddedCluster(data_dir if data_dir is not None else default_data_dir())
    if not cluster.is_initialized():
        raise EmbeddedError(
            f"no database given and no embedded cluster at {cluster.data_dir}: "
            "run `costwarden up`, or pass --dsn / set COSTWARDEN_DSN"
        )
    if autostart:
        return cluster.start()
    if not cluster.is_running():
        raise EmbeddedError(
            f"the embedded cluster at {cluster.data_dir} is stopped: run `costwarden up`"
        )
    return cluster.dsn


@dataclass(frozen=True)
class _Account:
    """The unprivileged account the server runs as when we are root."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def _server_account() -> _Account | None:
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise EmbeddedError(
            "PostgreSQL refuses to run as root and there is no 'postgres' system user to run "
            "it as: create one (useradd --system postgres) or run as an unprivileged user"
        ) from None
    groups = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
    return _Account(pw.pw_name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # PostgreSQL sets SO_REUSEADDR too: sockets in TIME_WAIT do not make a port busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _tail(path: Path, lines: int, *, start: int = 0) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(start)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class EmbeddedCluster:
    """A local PostgreSQL cluster in `data_dir`.

    `port` pins the TCP port; without it a free port is picked on the first start and
    reused afterwards while it stays free. `fast` trades durability for speed (fsync,
    synchronous_commit and full_page_writes off): for throwaway test clusters only.
    """

    def __init__(self, data_dir: Path, port: int | None = None, *, fast: bool = False) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.fast = fast
        self._explicit_port = port
        self._port = port
        self._bindir: Path | None = None
        self._account_checked = False
        self._account_value: _Account | None = None

    def __repr__(self) -> str:
        return f"EmbeddedCluster({str(self.data_dir)!r}, port={self._port!r}, fast={self.fast})"

    # -- paths ------------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        """`costwarden.json` next to the data directory."""
        return self.data_dir.parent / STATE_FILE_NAME

    @property
    def socket_dir(self) -> Path:
        """The Unix socket directory: next to the data directory, or /tmp if that is too long."""
        preferred = self.data_dir.parent / f"{self.data_dir.name}-socket"
        if len(str(preferred / ".s.PGSQL.65535.lock")) < _MAX_SOCKET_PATH:
            return preferred
        return Path("/tmp")

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = pg_bindir()
        return self._bindir

    @property
    def _lock_file(self) -> Path:
        return self.data_dir.parent / f".{self.data_dir.name}.lock"

    @property
    def _startup_log(self) -> Path:
        # pg_ctl -l: what the postmaster says before its logging collector is up
        # (bad settings, a busy port).
        return self.data_dir / "log" / "startup.log"

    def log_file(self) -> Path | None:
        """The server log being written now (per current_logfiles), else the newest one."""
        with contextlib.suppress(OSError):
            for line in (self.data_dir / "current_logfiles").read_text().splitlines():
                kind, _, rel = line.partition(" ")
                if kind == "stderr" and rel:
                    return self.data_dir / rel
        with contextlib.suppress(OSError):
            logs = [p for p in (self.data_dir / "log").iterdir() if p.name != "startup.log"]
            if logs:
                return max(logs, key=lambda p: p.stat().st_mtime)
        return self._startup_log if self._startup_log.exists() else None

    # -- state ------------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        """The port the cluster runs on, or last ran on; None before the first start."""
        if self._port is None:
            self._port = self._recorded_port()
        return self._port

    @property
    def dsn(self) -> str:
        """`postgresql://postgres@localhost:PORT/postgres`."""
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        """The DSN of database `dbname` in this cluster."""
        port = self.port
        if port is None:
            raise EmbeddedError(f"the cluster at {self.data_dir} has never been started")
        return f"postgresql://{SUPERUSER}@localhost:{port}/{dbname}"

    def is_initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def is_running(self) -> bool:
        """`pg_ctl status` says a postmaster serves this data directory."""
        if not self.is_initialized():
            return False
        return self._pg_ctl("status").returncode == 0

    def _recorded_port(self) -> int | None:
        running = self._postmaster_port()
        if running is not None:
            return running
        state = self._read_state()
        if state is not None:
            return state
        configured = self._read_block().get("port")
        return int(configured) if configured and configured.isdigit() else None

    def _postmaster_port(self) -> int | None:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        # postmaster.pid: pid, data dir, start time, port, socket dir, listen addr, ...
        return int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None

    def _read_state(self) -> int | None:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or state.get("data_dir") != str(self.data_dir):
            return None  # another cluster's state file, in the same parent directory
        port = state.get("port")
        return port if isinstance(port, int) else None

    def _write_state(self) -> None:
        state = {"data_dir": str(self.data_dir), "port": self.port, "dsn": self.dsn}
        tmp = self.state_file.with_name(f".{STATE_FILE_NAME}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)

    # -- running binaries -------------------------------------------------------------------

    @property
    def _account(self) -> _Account | None:
        if not self._account_checked:
            self._account_value = _server_account()
            self._account_checked = True
        return self._account_value

    def _binary(self, name: str) -> Path:
        path = self.bindir / name
        if not path.exists():
            raise EmbeddedError(
                f"PostgreSQL server binary {name} not found in {self.bindir}: install "
                "postgresql-15 (scripts/bootstrap.sh does) or set COSTWARDEN_PG_BINDIR"
            )
        return path

    def _run(self, argv: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        account = self._account
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if account is not None:
            env.update(HOME=account.home, USER=account.name, LOGNAME=account.name)
        try:
            return subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                cwd="/",
                env=env,
                user=account.uid if account else None,
                group=account.gid if account else None,
                extra_groups=account.groups if account else None,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise EmbeddedError(f"could not run {argv[0]}: {exc}") from exc

    def _pg_ctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self._run(
            [str(self._binary("pg_ctl")), *args, "-D", str(self.data_dir)], timeout=timeout
        )

    def _log_tail(self, lines: int = 40, *, startup_from: int = 0) -> str:
        parts = []
        startup = _tail(self._startup_log, lines, start=startup_from)
        if startup:
            parts.append(f"--- {self._startup_log} ---\n{startup}")
        current = self.log_file()
        if current is not None and current != self._startup_log:
            text = _tail(current, lines)
            if text:
                parts.append(f"--- {current} ---\n{text}")
        return "\n".join(parts) or "(no server log)"

    # -- directories ------------------------------------------------------------------------

    def _make_dir(self, path: Path, mode: int) -> None:
        """Create `path` (and missing parents); what we create belongs to the server user."""
        account = self._account
        missing = [p for p in (path, *path.parents) if not p.exists()]
        for p in reversed(missing):
            p.mkdir(mode=0o755 if p != path else mode, exist_ok=True)
            if account is not None:
                os.chown(p, account.uid, account.gid)
        if path in missing:
            path.chmod(mode)  # mkdir's mode is filtered by the umask

    def _ensure_traversable(self, path: Path) -> None:
        """Give the server user the search bit on every component of `path` that lacks it."""
        account = self._account
        if account is None:
            return
        for p in (path, *path.parents):
            st = p.stat()
            if st.st_uid == account.uid:
                bit = stat.S_IXUSR
            elif st.st_gid in account.groups:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if not st.st_mode & bit:
                log.warning(
                    "adding the search bit to %s so that %s can reach %s",
                    p,
                    account.name,
                    self.data_dir,
                )
                p.chmod(stat.S_IMODE(st.st_mode) | bit)

    def _prepare_dirs(self) -> None:
        account = self._account
        self._make_dir(self.data_dir.parent, 0o755)
        self._ensure_traversable(self.data_dir.parent)
        if not self.data_dir.exists():
            self._make_dir(self.data_dir, 0o700)
        elif account is not None and not self.is_initialized():
            os.chown(self.data_dir, account.uid, account.gid)
            self.data_dir.chmod(0o700)
        sockets = self.socket_dir
        if sockets != Path("/tmp"):
            self._make_dir(sockets, 0o700)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive flock next to the data directory, so two `up`s do not race."""
        self._make_dir(self.data_dir.parent, 0o755)
        try:
            fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            try:
                fd = os.open(self._lock_file, os.O_RDONLY)
            except OSError:
                yield  # someone else's lock file we cannot even read: go unlocked
                return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- postgresql.conf --------------------------------------------------------------------

    def _settings(self) -> dict[str, str]:
        settings = {
            "listen_addresses": "'localhost'",
            "unix_socket_directories": _quote(str(self.socket_dir)),
            "max_connections": "200",
            "shared_buffers": "'256MB'",
            "work_mem": "'8MB'",
            "maintenance_work_mem": "'64MB'",
            "effective_cache_size": "'1GB'",
            "max_wal_size": "'1GB'",
            "timezone": "'UTC'",
            "log_timezone": "'UTC'",
            "log_destination": "'stderr'",
            "logging_collector": "on",
            "log_directory": "'log'",
            "log_filename": "'postgresql-%Y-%m-%d_%H%M%S.log'",
            "log_rotation_size": "'100MB'",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
        }
        if self.pg_cron_available():
            settings["shared_preload_libraries"] = "'pg_cron'"
            settings["cron.database_name"] = "'postgres'"
        if self.fast:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        return settings

    def pg_cron_available(self) -> bool:
        """Whether pg_cron.so is in this PostgreSQL's package library directory."""
        pkglibdir = self.bindir.parent / "lib"
        pg_config = self.bindir / "pg_config"
        if pg_config.exists():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(
                    [str(pg_config), "--pkglibdir"],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=30,
                ).stdout.strip()
                if out:
                    pkglibdir = Path(out)
        return (pkglibdir / "pg_cron.so").exists()

    @property
    def _conf(self) -> Path:
        return self.data_dir / "postgresql.conf"

    def _split_conf(self) -> tuple[list[str], dict[str, str]]:
        """postgresql.conf without the managed block, and the block's settings."""
        outside: list[str] = []
        block: dict[str, str] = {}
        inside = False
        for line in self._conf.read_text().splitlines():
            if line == _BLOCK_BEGIN:
                inside = True
            elif line == _BLOCK_END:
                inside = False
            elif inside:
                name, sep, value = line.partition("=")
                if sep:
                    block[name.strip()] = value.strip()
            else:
                outside.append(line)
        return outside, block

    def _read_block(self) -> dict[str, str]:
        try:
            return self._split_conf()[1]
        except OSError:
            return {}

    def _ensure_hba(self) -> None:
        """Put the audit link's password rules (_HBA_AUDITOR) before every other line of
        pg_hba.conf, once; read at the next start."""
        hba = self.data_dir / "pg_hba.conf"
        text = hba.read_text()
        if _HBA_AUDITOR[0] in text:
            return
        # Rewritten in place, so the file keeps its owner and mode.
        with hba.open("w") as fh:
            fh.write("\n".join(_HBA_AUDITOR) + "\n\n" + text)

    def _write_block(self, block: Mapping[str, str]) -> None:
        outside, _ = self._split_conf()
        while outside and not outside[-1].strip():
            outside.pop()
        lines = [*outside, "", _BLOCK_BEGIN]
        lines += [f"{name} = {value}" for name, value in block.items()]
        lines.append(_BLOCK_END)
        # Rewritten in place, so the file keeps its owner and mode.
        with self._conf.open("w") as fh:
            fh.write("\n".join(lines) + "\n")

    # -- lifecycle --------------------------------------------------------------------------

    def init(self) -> None:
        """Create the cluster if absent (initdb) and (re)write costwarden's settings.

        Settings take effect at the next start.
        """
        with self._locked():
            self._init()

    def _init(self) -> None:
        self._prepare_dirs()
        if not self.is_initialized():
            locale = "C.UTF-8" if Path("/usr/lib/locale/C.utf8").exists() else "C"
            argv = [
                str(self._binary("initdb")),
                "-D",
                str(self.data_dir),
                "--username",
                SUPERUSER,
                "--encoding",
                "UTF8",
                "--locale",
                locale,
                "--auth-local",
                "trust",
                "--auth-host",
                "trust",
                "--no-instructions",
            ]
            if self.fast:
                argv.append("--no-sync")
            result = self._run(argv, timeout=300)
            if result.returncode != 0:
                raise EmbeddedError(
                    f"initdb failed for {self.data_dir}:\n{result.stdout}{result.stderr}"
                )
        block = self._settings()
        previous = self._read_block().get("port")
        if previous:
            block["port"] = previous
        self._write_block(block)

    def start(self) -> str:
        """Start the cluster (creating it if absent) and return its DSN.

        A no-op when it already runs. Otherwise costwarden's settings are rewritten first (so
        `fast` is this object's choice), and the port is the one given to the constructor,
        else the one used last time if still free, else a free one.
        """
        with self._locked():
            if not self.is_initialized():
                self._init()
            else:
                self._prepare_dirs()
            if self.is_running():
                running = self._postmaster_port()
                if self._explicit_port is not None and running not in (None, self._explicit_port):
                    raise EmbeddedError(
                        f"the cluster at {self.data_dir} already runs on port {running}, "
                        f"not {self._explicit_port}: stop it first"
                    )
                self._port = running or self.port
                self._write_state()
                return self.dsn
            self._ensure_hba()
            self._make_dir(self._startup_log.parent, 0o700)
            attempts = 1 if self._explicit_port is not None else 3
            for attempt in range(attempts):
                port = self._choose_port(fresh=attempt > 0)
                block = self._settings()
                block["port"] = str(port)
                self._write_block(block)
                mark = self._startup_log.stat().st_size if self._startup_log.exists() else 0
                result = self._pg_ctl(
                    "start",
                    "-w",
                    "-s",
                    "-t",
                    str(_START_TIMEOUT_S),
                    "-l",
                    str(self._startup_log),
                    timeout=_START_TIMEOUT_S + 30,
                )
                if result.returncode == 0 or self.is_running():
                    self._port = self._postmaster_port() or port
                    self._write_state()
                    return self.dsn
                said = _tail(self._startup_log, 200, start=mark)
                if attempt + 1 < attempts and _PORT_CLASH.search(said):
                    log.info("port %d was taken while starting; trying another", port)
                    continue
                raise EmbeddedError(
                    f"PostgreSQL did not start in {self.data_dir} on port {port}:\n"
                    f"{(result.stdout + result.stderr).strip()}\n"
                    f"{self._log_tail(startup_from=mark)}"
                )
            raise AssertionError("unreachable")

    def _choose_port(self, *, fresh: bool) -> int:
        if self._explicit_port is not None:
            if not _port_is_free(self._explicit_port):
                raise EmbeddedError(f"port {self._explicit_port} is already in use")
            return self._explicit_port
        if not fresh:
            state = self._read_state()
            configured = self._read_block().get("port", "")
            for candidate in (state, int(configured) if configured.isdigit() else None):
                if candidate is not None and _port_is_free(candidate):
                    return candidate
        return _free_port()

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (``pg_ctl -m``: fast shutdown by default, ``immediate`` to
        drop every connection at once, as a crash would); a no-op when it is not running."""
        if not self.is_initialized():
            return
        with self._locked():
            if not self.is_running():
                return
            result = self._pg_ctl("stop", "-w", "-s", "-m", mode, "-t", "60", timeout=90)
            if result.returncode != 0 and self.is_running():
                raise EmbeddedError(
                    f"PostgreSQL in {self.data_dir} did not stop:\n"
                    f"{(result.stdout + result.stderr).strip()}\n{self._log_tail()}"
                )


# -- python -m costwarden.embedded ----------------------------------------------------------

if __name__ == "__main__":  # the commands are click commands: costwarden.cli.embedded
    import runpy

    runpy.run_module("costwarden.cli.embedded", run_name="__main__", alter_sys=True)
