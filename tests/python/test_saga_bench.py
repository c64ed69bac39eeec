"""`costwarden bench` (the saga's figures, `make bench`) runs end to end at tiny sizes
and reports every figure of the performance issue beside a baseline of the same run.
The figures themselves come from full runs (docs/performance.md); this only proves the
harness: every workload runs, every ratio is its value over its baseline, the floor and
minimal-design rows share the saga rows' baselines, and the ledger the bench wrote still
verifies."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import psycopg

from costwarden.bench.saga import MINIMAL
from cwtest import PgServer

COSTWARDEN = Path(sys.executable).parent / "costwarden"


def test_the_saga_bench_reports_every_figure_beside_its_baseline(
    pg_server: PgServer, tmp_path: Path
) -> None:
    out = subprocess.run(
        [str(COSTWARDEN), "--dsn", pg_server.dsn("postgres"), "bench", "--seconds", "1",
         "--rounds", "2", "--orgs", "20", "--ledger-rows", "3000", "--batch", "4",
         "--out", str(tmp_path / "bench.json"), "--json"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert json.loads((tmp_path / "bench.json").read_text()) == result
    figures = {f["name"]: f for f in result["figures"]}

    expected = [
        "[org + workspace] pairs/s, 8 clients, 20 orgs",
        "[floor: two one-row UPDATE transactions] pairs/s, 8 clients",
        f"{MINIMAL} pairs/s, 8 clients, 20 orgs",
        "[org + workspace] one hot workspace, reservations/s, 32 clients",
        "[workspace limit only] one hot workspace, reservations/s, 32 clients",
        f"{MINIMAL} one hot workspace, reservations/s, 32 clients",
        "[org + workspace] pair latency, 1 client",
        "[floor: two one-row UPDATE transactions] pair latency, 1 client",
        f"{MINIMAL} pair latency, 1 client",
        "[org + workspace] reserve latency p99, 8 clients",
        "[org, workspace, user, key] pairs/s, 8 clients, 20 orgs",
        "[org, workspace, user, key] one hot workspace, reservations/s, 32 clients",
        "[org, workspace, user, key] pair latency, 1 client",
        "[org, workspace, user, key] reserve latency p99, 8 clients",
        "batch 4: pairs/s (= calls/s of each batch RPC), 8 clients, 20 orgs",
        "[callers] pairs whose commit runs over the hold, 8 clients, 20 orgs",
        "[callers] one hot workspace, pairs with a tick that grows the hold, 32 clients",
        "[callers] one hot workspace, pairs whose call did not happen (reserve, release),"
        " 32 clients",
        "[callers] pairs in one org of 256 users (org, workspace, user limits), 8 clients",
        "[callers] refusals/s, 8 clients on a workspace whose limit fits no call",
        "[opt-in] pairs whose holds do not wait for their flush (the session's"
        " synchronous_commit off), 8 clients",
        "[opt-in] pair latency, holds not waiting for their flush, 1 client",
        "Python client ms per pair, 1 client",
    ]
    for name in expected:
        assert name in figures, sorted(figures)
        f = figures[name]
        assert f["value"] > 0 and f["baseline"] > 0, f
        if "p99" in name:  # one long run: p99 beside p50
            assert f["round_ratios"] == [] and f["ratio"] == f["value"] / f["baseline"], f
        else:  # baseline, then workload, in each of the 2 rounds: the median ratio
            assert len(f["round_ratios"]) == 2, f
            assert abs(f["ratio"] - statistics.median(f["round_ratios"])) < 1e-9, f
    assert result["meta"]["rounds"] == 2 and result["meta"]["seconds"] == 1
    # The saga through `costwarden serve` (the server extra is installed here), beside
    # the same saga through SQL in the same run.
    http, added = (
        figures["HTTP saga pairs/s, 8 clients"],
        figures["HTTP ms added per pair, 1 client"],
    )
    assert http["value"] > 0 and http["baseline"] > 0 and http["goal"] == ">= 0.5", http
    assert abs(http["ratio"] - http["value"] / http["baseline"]) < 1e-9, http
    assert added["baseline"] > 0 and added["goal"] == "<= 2 ms added", added

    # The ledger-size figure: two databases set up alike, one with a tenth of the
    # ledger, measured in alternating rounds (the small one's p50 the baseline).
    ledger = figures["reserve p50 with 3,000 ledger entries"]
    assert ledger["baseline_name"] == "reserve p50 with 300 entries (ms)", ledger
    assert ledger["goal"] == "<= 1.25" and len(ledger["round_ratios"]) == 2, ledger
    assert abs(ledger["ratio"] - statistics.median(ledger["round_ratios"])) < 1e-9, ledger
    for db, entries in (("cw_bench_ledger_small", 300), ("cw_bench_ledger_big", 3000)):
        with psycopg.connect(pg_server.dsn(db)) as conn:
            n, bad = conn.execute(
                "select sum(entries), count(*) filter (where not ok)"
                " from costwarden.fn_ledger_verify()"
            ).fetchone()  # type: ignore[misc]
            assert n >= entries and bad == 0, (db, n, bad)

    # The musts of the issue beside their figures; the reference rows carry no target.
    assert figures["[org + workspace] pairs/s, 8 clients, 20 orgs"]["goal"] == ">= 0.8"
    assert figures["[org + workspace] pair latency, 1 client"]["goal"] == "<= 0.85"
    for name in expected:
        if name.startswith(("[floor", MINIMAL)):
            assert figures[name]["goal"] == "" and figures[name]["met"] is None
    # The pairs and the floor share the same-run TPC-B baselines.
    assert (
        figures["[floor: two one-row UPDATE transactions] pairs/s, 8 clients"]["baseline"]
        == figures["[org + workspace] pairs/s, 8 clients, 20 orgs"]["baseline"]
    )
    assert (
        figures["[floor: two one-row UPDATE transactions] pair latency, 1 client"]["baseline"]
        == figures["[org + workspace] pair latency, 1 client"]["baseline"]
    )
    assert (
        figures[f"{MINIMAL} pairs/s, 8 clients, 20 orgs"]["baseline"]
        == figures["[org + workspace] pairs/s, 8 clients, 20 orgs"]["baseline"]
    )
    assert (
        figures[f"{MINIMAL} one hot workspace, reservations/s, 32 clients"]["baseline"]
        == figures["[org + workspace] one hot workspace, reservations/s, 32 clients"]["baseline"]
    )
    assert (
        figures[f"{MINIMAL} pair latency, 1 client"]["baseline"]
        == figures["[org + workspace] pair latency, 1 client"]["baseline"]
    )

    # Every floor pair released the hold it took: held is back to 0 on every row.
    with psycopg.connect(pg_server.dsn("cw_bench")) as conn:
        held, spent = conn.execute(
            "select sum(held), sum(spent) from public.bench_floor"
        ).fetchone()  # type: ignore[misc]
        assert held == 0 and spent > 0
        # The minimal design's pairs each committed what they reserved and released the
        # rest: only the hot org's reserves (org 0, never committed) still hold, and every
        # account stayed within its limit.
        rows = conn.execute(
            "select account_id / 2 = 0, sum(held_micros), sum(spent_micros),"
            " bool_and(spent_micros + held_micros <= limit_micros)"
            " from bench_minimal.accounts group by 1 order by 1"
        ).fetchall()
        (_, held, spent, within), (_, hot_held, _, hot_within) = rows
        assert held == 0 and spent > 0 and within, rows
        assert hot_held > 0 and hot_within, rows
        n_held, n_hot = conn.execute(
            "select count(*) filter (where status = 'held'),"
            " count(*) filter (where status = 'held' and account_ids[1] = 0)"
            " from bench_minimal.reservations"
        ).fetchone()  # type: ignore[misc]
        assert n_held == n_hot > 0
        # The ledger verifies after the run (the bench keeps the chain on).
        verified = conn.execute(
            "select count(*), count(*) filter (where not ok) from costwarden.fn_ledger_verify()"
        ).fetchone()
        assert verified is not None and verified[0] >= 20 and verified[1] == 0, verified
