"""`costwarden bench soak` (`make soak-bench`): memory under a long saga run. pgbench
runs reserve + commit pairs at N clients for M minutes while the server's backends'
resident memory (/proc/<pid>/status: VmRSS, and its private part RssAnon) is sampled;
a backend whose private memory grows with the calls it serves leaks per call.

The server must run on this machine (the embedded one, or a local --dsn)."""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from .._text import table
from .common import Echo, PgBench, recreate_database, workloads_dir
from .saga import setup_costwarden


@dataclass(frozen=True)
class BackendMemory:
    pid: int
    first_rss_kb: int
    last_rss_kb: int
    first_anon_kb: int
    last_anon_kb: int
    max_anon_kb: int
    samples: int


def _status_kb(pid: int) -> tuple[int, int] | None:
    """(VmRSS, RssAnon) in kB of a local process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "RssAnon"):
            values[name] = int(rest.split()[0])
    return values.get("VmRSS", 0), values.get("RssAnon", 0)


def run_soak(
    admin_dsn: str,
    *,
    bindir: Path | None = None,
    minutes: float = 10.0,
    clients: int = 8,
    orgs: int = 1000,
    interval: float = 10.0,
    warmup: float = 30.0,
    echo: Echo = print,
) -> tuple[list[BackendMemory], float]:
    """Runs the soak; returns each pgbench backend's memory and the pairs/s sustained.
    Growth is counted from the first sample after ``warmup`` seconds (a backend's
    caches of catalogue entries and plans fill during its first calls)."""
    dsn = recreate_database(admin_dsn, "cw_bench_soak")
    echo(f"preparing cw_bench_soak ({orgs:,} orgs) ...")
    setup_costwarden(dsn, orgs)
    pgb = PgBench(bindir)
    seconds = max(1, int(minutes * 60))
    argv = [
        pgb.binary, "-n", "-c", str(clients), "-j", "2", "-T", str(seconds), "-M", "prepared",
        "-f", str(workloads_dir() / "saga_pair.sql"), "-D", f"orgs={orgs}", dsn,
    ]  # fmt: skip
    samples: dict[int, list[tuple[int, int]]] = {}
    echo(f"saga pairs at {clients} clients for {minutes:g} min; sampling every {interval:g} s")
    with tempfile.TemporaryDirectory(prefix="costwarden-soak-") as tmp:
        proc = subprocess.Popen(
            argv, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            t0 = time.monotonic()
            while proc.poll() is None:
                pids = [
                    row[0]
                    for row in conn.execute(
                        "select pid from pg_stat_activity "
                        "where datname = 'cw_bench_soak' and application_name = 'pgbench'"
                    ).fetchall()
                ]
                elapsed = time.monotonic() - t0
                for pid in pids:
                    kb = _status_kb(pid)
                    if kb is not None and elapsed >= min(warmup, seconds / 5):
                        samples.setdefault(pid, []).append(kb)
                if samples:
                    anon = sorted(s[-1][1] for s in samples.values())
                    median = anon[len(anon) // 2]
                    echo(f"  {elapsed:6.0f} s: {len(pids)} backends, RssAnon median {median:,} kB")
                time.sleep(interval)
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed: {err.strip()[-2000:]}")
    tps = 0.0
    for line in out.splitlines():
        if line.startswith("tps = "):
            tps = float(line.split()[2])
    result = [
        BackendMemory(pid, s[0][0], s[-1][0], s[0][1], s[-1][1], max(x[1] for x in s), len(s))
        for pid, s in sorted(samples.items())
        if len(s) >= 2
    ]
    return result, tps


def report(memory: list[BackendMemory]) -> str:
    rows = [
        (
            str(m.pid),
            str(m.samples),
            f"{m.first_rss_kb:,}",
            f"{m.last_rss_kb:,}",
            f"{m.first_anon_kb:,}",
            f"{m.last_anon_kb:,}",
            f"{m.max_anon_kb:,}",
            f"{m.last_anon_kb - m.first_anon_kb:+,}",
        )
        for m in memory
    ]
    return table(
        rows,
        ["backend", "samples", "VmRSS first kB", "VmRSS last kB", "RssAnon first kB",
         "RssAnon last kB", "RssAnon max kB", "RssAnon growth kB"],
    )  # fmt: skip
