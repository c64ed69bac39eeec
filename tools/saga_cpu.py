"""Server CPU per reserve and per commit, two SQL trees side by side on one server.

For each tree (``--sql-dir``, repeatable; e.g. the current sql/ and an older one from
``git archive``), a scratch database is set up as the saga bench sets it up (1,000
orgs, python/costwarden/bench/saga.py setup_costwarden), with ``_check_limits`` planned
generically in both, then filled with 1,000 pairs, analyzed and warmed up with 100
more (so that plans are cached on tables of a realistic size). Then one connection, per
round: N reserves (orgs round-robin, workspace ws; with --four also user u and key k),
then their N commits; the backend's utime + stime is read from /proc/<pid>/stat around
each phase (the server must run on this machine). Rounds alternate between the trees.
Prints microseconds of server CPU per call, the median of the rounds.

With ``--in-server`` each round is one ``DO`` block instead, run by the scratch
database's backend: N pairs, each call its own transaction (the block commits after
it), timed with ``clock_timestamp()`` around each call, ``synchronous_commit`` off for
that session and again for each commit's transaction after the ledger's write raised
it (what is measured is the work, not the WAL flush it waits for). No
protocol, no client and no clock tick in the figure: the rounds of one tree spread by
3-5 % and one tree against itself in two databases gave medians 2-7 % apart, so it
tells apart a change of about 5 %, not of 1 %. It reads about a third lower than the
first mode, which adds the protocol and the cost of a backend the client wakes for
each call (its caches cold).

    .venv/bin/python tools/saga_cpu.py --dsn postgresql://postgres@localhost:PORT/postgres \\
        --sql-dir /tmp/before/sql --sql-dir sql [--four] [--calls 1500] [--rounds 3] \\
        [--in-server]
"""

from __future__ import annotations

import argparse
import os
import statistics
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg

from costwarden.bench.common import scratch_database
from costwarden.bench.saga import setup_costwarden

RESERVE = (
    "select reservation_id from costwarden.fn_cost_reserve(p_org_id => %s, "
    "p_workspace_id => 'ws', p_model => 'bench/model', "
    'p_usage => \'{"input_tokens": 400, "output_tokens": 200}\', '
    "p_user_id => %s, p_key_id => %s)"
)
COMMIT = (
    "select 1 from costwarden.fn_cost_commit(p_reservation_id => %s, "
    'p_usage => \'{"input_tokens": 400, "output_tokens": 120}\')'
)
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def one_round(
    conn: psycopg.Connection[Any], pid: int, calls: int, four: bool
) -> tuple[float, float]:
    user, key = ("u", "k") if four else (None, None)
    t0 = cpu_seconds(pid)
    rids = []
    for i in range(calls):
        row = conn.execute(RESERVE, (f"org{i % 1000 + 1}", user, key), prepare=True).fetchone()
        assert row is not None
        rids.append(row[0])
    t1 = cpu_seconds(pid)
    for rid in rids:
        conn.execute(COMMIT, (rid,), prepare=True).fetchone()
    t2 = cpu_seconds(pid)
    return (t1 - t0) / calls * 1e6, (t2 - t1) / calls * 1e6


IN_SERVER = """
do $do$
declare
    t0 timestamptz;
    t_reserve interval := '0';
    t_commit interval := '0';
    v_id uuid;
begin
    for i in 1..%(calls)s loop
        t0 := clock_timestamp();
        select r.reservation_id into v_id from costwarden.fn_cost_reserve(
            p_org_id => 'org' || (i %% 1000 + 1), p_workspace_id => 'ws',
            p_model => 'bench/model', p_usage => '{"input_tokens": 400, "output_tokens": 200}',
            p_user_id => %(user)s, p_key_id => %(key)s) as r;
        commit;
        t_reserve := t_reserve + (clock_timestamp() - t0);
        t0 := clock_timestamp();
        perform costwarden.fn_cost_commit(
            p_reservation_id => v_id, p_usage => '{"input_tokens": 400, "output_tokens": 120}');
        -- the ledger's write raised it for this transaction: off again (not the flush)
        perform set_config('synchronous_commit', 'off', true);
        commit;
        t_commit := t_commit + (clock_timestamp() - t0);
    end loop;
    perform set_config('saga_cpu.result',
        extract(epoch from t_reserve)::text || ' ' || extract(epoch from t_commit)::text, false);
end
$do$
"""


def in_server_round(conn: psycopg.Connection[Any], calls: int, four: bool) -> tuple[float, float]:
    """One DO block of ``calls`` pairs in the backend; microseconds per reserve, per commit."""
    user, key = ("'u'", "'k'") if four else ("null", "null")
    conn.execute("set synchronous_commit = off")
    conn.execute(IN_SERVER % {"calls": int(calls), "user": user, "key": key})  # type: ignore[arg-type]
    row = conn.execute("select current_setting('saga_cpu.result')").fetchone()
    assert row is not None
    reserve, commit = (float(x) for x in row[0].split())
    return reserve / calls * 1e6, commit / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", required=True, help="admin DSN of a server on this machine")
    ap.add_argument("--sql-dir", action="append", type=Path, required=True)
    ap.add_argument("--calls", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--four", action="store_true", help="org, workspace, user and key limits")
    ap.add_argument(
        "--in-server", action="store_true", help="time each call inside the backend (a DO loop)"
    )
    args = ap.parse_args()
    with ExitStack() as stack:
        conns = []
        for n, sql_dir in enumerate(args.sql_dir):
            dsn = stack.enter_context(scratch_database(args.dsn, f"costwarden_saga_cpu_{n}"))
            setup_costwarden(dsn, 1000, sql_dir=sql_dir.resolve())
            conn = stack.enter_context(psycopg.connect(dsn, autocommit=True))
            conn.execute(
                "alter function costwarden._check_limits(text, text, text, text, bigint, bigint) "
                "set plan_cache_mode = force_generic_plan"
            )
            pid = conn.execute("select pg_backend_pid()").fetchone()[0]  # type: ignore[index]
            # Plans cached while the tables are nearly empty (a sequential scan of
            # _reservations for its primary key, say) would stay until autovacuum's
            # analyze invalidates them, at a random round: fill the tables first,
            # analyze, then warm the caches and the plans.
            one_round(conn, pid, 1000, args.four)
            conn.execute("vacuum analyze")
            one_round(conn, pid, 100, args.four)
            conns.append((sql_dir, conn, pid))
        results: dict[Path, list[tuple[float, float]]] = {d: [] for d in args.sql_dir}
        for _ in range(args.rounds):
            for sql_dir, conn, pid in conns:
                results[sql_dir].append(
                    in_server_round(conn, args.calls, args.four)
                    if args.in_server
                    else one_round(conn, pid, args.calls, args.four)
                )
        what = "in the backend" if args.in_server else "server CPU"
        print(f"{what}, us per call, median of {args.rounds} rounds of {args.calls}:")
        for sql_dir, rounds in results.items():
            reserve = statistics.median(r for r, _c in rounds)
            commit = statistics.median(c for _r, c in rounds)
            shown = [(round(r), round(c)) for r, c in rounds]
            print(f"  {sql_dir}: reserve {reserve:.0f}, commit {commit:.0f}  rounds {shown}")


if __name__ == "__main__":
    main()
