"""`costwarden bench adapters` runs end to end (a few calls): the bare and the guarded
OpenAI SDK call in the same run, and where the added time goes. The figures in
docs/performance.md come from a full run (`make bench`)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from costwarden.cli import main
from cwtest import PgServer


def test_adapters_bench_runs(pg_server: PgServer) -> None:
    result = CliRunner().invoke(
        main,
        ["--dsn", pg_server.dsn("postgres"), "bench", "adapters", "--calls", "6",
         "--warmup", "1", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["bare"]["n"] == doc["guarded"]["n"] == 6
    assert doc["bare"]["median_ms"] > 0 and doc["guarded"]["median_ms"] > 0
    assert doc["added_median_ms"] == doc["guarded"]["median_ms"] - doc["bare"]["median_ms"]
    assert set(doc["parts"]) == {
        "guarded, through a costwarden client that answers at once (no database)",
        "`reserve` + `commit` through costwarden.Client (2 round trips)",
        "the same pair, synchronous_commit=off",
        "sizing the request + mapping the usage (Python)",
    }
    assert all(p["n"] == 6 for p in doc["parts"].values())
    assert doc["parts"]["the same pair, synchronous_commit=off"]["median_ms"] > 0
    assert len(doc["load_before"]) == 3 and "PostgreSQL" in doc["server"]
    # the scratch database is gone
    import psycopg

    with psycopg.connect(pg_server.dsn("postgres")) as conn:
        row = conn.execute(
            "select count(*) from pg_database where datname = 'costwarden_adapters_bench'"
        ).fetchone()
    assert row == (0,)
