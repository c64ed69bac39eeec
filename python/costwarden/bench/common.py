"""What both benches share: pgbench, the one percentile function, scratch databases."""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

Echo = Callable[[str], None]


def workloads_dir() -> Path:
    """The pgbench scripts shipped beside this module."""
    return Path(str(resources.files(__package__ or "costwarden.bench") / "workloads"))


def percentile(values: Sequence[float], p: int) -> float:
    """The ``p``-th percentile (1..99) of ``values``: ``statistics.quantiles`` with the
    inclusive method (linear interpolation between closest ranks); NaN when empty."""
    if not 1 <= p <= 99:
        raise ValueError(f"percentile {p}: give 1..99")
    if not values:
        return math.nan
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


@dataclass(frozen=True)
class PgBenchResult:
    tps: float  # excluding connection time
    latency_ms: float  # pgbench's "latency average"
    latencies_ms: list[float] = field(default_factory=list)  # per transaction, when logged


class PgBench:
    """Runs the pgbench of the server (its bin directory) or of the PATH."""

    def __init__(self, bindir: Path | None = None) -> None:
        own = bindir / "pgbench" if bindir is not None else None
        binary = str(own) if own is not None and own.exists() else shutil.which("pgbench")
        if not binary:
            raise RuntimeError("pgbench not found (Debian package postgresql-15)")
        self.binary = binary

    def init(self, dsn: str, scale: int) -> None:
        """pgbench -i: the TPC-B tables at ``scale`` in the database of ``dsn``."""
        out = subprocess.run(
            [self.binary, "-i", "-q", "-s", str(scale), dsn],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"pgbench -i failed: {out.stderr.strip()[-2000:]}")

    def run(
        self,
        dsn: str,
        *,
        clients: int,
        seconds: int,
        script: Path | None = None,
        builtin: str | None = None,
        defines: dict[str, str] | None = None,
        log_latencies: bool = False,
    ) -> PgBenchResult:
        """One timed run of ``script`` (or a built-in) in the database of ``dsn``."""
        argv = [
            self.binary,
            "-n",
            "-c",
            str(clients),
            "-j",
            str(max(1, min(clients, os.cpu_count() or 1, 4))),
            "-T",
            str(seconds),
            "-M",
            "prepared",
        ]
        if script is not None:
            argv += ["-f", str(script)]
        if builtin is not None:
            argv += ["-b", builtin]
        for key, value in (defines or {}).items():
            argv += ["-D", f"{key}={value}"]
        with tempfile.TemporaryDirectory(prefix="costwarden-pgbench-") as tmp:
            if log_latencies:
                argv += ["-l", "--log-prefix", str(Path(tmp) / "pgbench_log")]
            argv.append(dsn)
            out = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=tmp)
            if out.returncode != 0:
                raise RuntimeError(f"pgbench failed: {out.stderr.strip()[-2000:]}")
            latencies: list[float] = []
            for path in Path(tmp).glob("pgbench_log*"):
                for line in path.read_text().splitlines():
                    parts = line.split()
                    if len(parts) >= 3:
                        latencies.append(int(parts[2]) / 1000.0)
        tps = re.search(
            r"tps = ([0-9.]+) \((?:without initial connection time|excluding)", out.stdout
        )
        lat = re.search(r"latency average = ([0-9.]+) ms", out.stdout)
        if tps is None or lat is None:
            raise RuntimeError(f"cannot read pgbench's output:\n{out.stdout}")
        return PgBenchResult(float(tps.group(1)), float(lat.group(1)), latencies)


def database_dsn(dsn: str, dbname: str) -> str:
    """``dsn`` with its database replaced by ``dbname``."""
    return make_conninfo(dsn, dbname=dbname)


def recreate_database(admin_dsn: str, dbname: str) -> str:
    """Drop (if there) and create ``dbname``; returns its DSN."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname))
        )
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))
    return database_dsn(admin_dsn, dbname)


@contextmanager
def scratch_database(admin_dsn: str, dbname: str, *, keep: bool = False) -> Iterator[str]:
    """A fresh database for the block, dropped after it unless ``keep``."""
    dsn = recreate_database(admin_dsn, dbname)
    try:
        yield dsn
    finally:
        if not keep:
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("drop database if exists {} with (force)").format(
                        sql.Identifier(dbname)
                    )
                )


def server_facts(dsn: str) -> str:
    """One line: the server version and the settings that move the figures."""
    with psycopg.connect(dsn) as conn:
        settings: dict[str, str] = dict(
            conn.execute(
                "select name, setting from pg_settings where name in "
                "('server_version', 'fsync', 'synchronous_commit', 'shared_buffers', 'jit')"
            ).fetchall()
        )
    return (
        f"PostgreSQL {settings['server_version']}, fsync={settings['fsync']}, "
        f"synchronous_commit={settings['synchronous_commit']}, jit={settings['jit']}; "
        f"{os.cpu_count()} CPU(s), Python {platform.python_version()}"
    )


def scalar(dsn: str, query: str) -> int:
    """An integer a one-row, one-column query returns."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])
