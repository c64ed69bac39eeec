"""`costwarden bench ledger` runs end to end (tiny sizes, a few seconds). The figures in
docs/ledger.md come from a full run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cwtest import PgServer

COSTWARDEN = Path(sys.executable).parent / "costwarden"


def test_ledger_bench_runs(pg_server: PgServer) -> None:
    out = subprocess.run(
        [str(COSTWARDEN), "--dsn", pg_server.dsn("postgres"), "bench", "ledger",
         "--entries", "3000", "--commits", "40", "--seconds", "1", "--orgs", "20",
         "--clients", "2"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| with chain |" in out.stdout
    assert "| fn_ledger_verify (SQL) |" in out.stdout
    assert "| Python, reading an export file |" in out.stdout
