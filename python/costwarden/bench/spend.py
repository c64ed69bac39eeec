"""`costwarden bench spend`: fn_spend_summary for one org with 1,000 workspaces, with
a small and a large ledger (issue: the answer must not grow with the ledger).

Each size gets its own scratch database. The org, its workspaces, users and keys are
created through the RPCs; the history is written set-based and backdated over the
last 30 days, as the saga and fn_maintenance would have left it: ``entries`` ledger
entries (charges, spread over the workspaces), the pools' totals and the spend marks
they add up to (thinned: the first mark of each slot of its age), and a fixed number
of reservations in the window (their count is held constant: ``calls`` are counted from
the reservations, not the ledger, see docs/budgets.md "Spend without a limit"). The
hash chain of these rows is not valid (nothing here verifies it). Then each query is
timed ``repeat`` times on a warm cache and the median is reported, with the ratio
large / small.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from ..migrate import migrate
from .common import scratch_database, server_facts

#: The queries timed (name, SQL): the per-workspace listing, one workspace, the org.
_SUMMARY = "select * from costwarden.fn_spend_summary"
QUERIES: tuple[tuple[str, str], ...] = (
    ("listing of 1,000 workspaces", f"{_SUMMARY}('bench', 'workspace')"),
    ("one workspace", f"{_SUMMARY}('bench', 'workspace', 'ws-7')"),
    ("the org", f"{_SUMMARY}('bench')"),
    ("one workspace, rolling day", f"{_SUMMARY}('bench', 'workspace', 'ws-7', 'day', 'rolling')"),
)

SETUP = """
select costwarden.fn_model_upsert('bench/model', true);
select costwarden.fn_pricing_set('bench/model', '{"input_tokens": 0.000001}', '2024-01-01');
select costwarden.fn_org_upsert('bench');
select costwarden.fn_workspace_upsert('bench', 'ws-' || i, 'bench/model')
from generate_series(1, %(workspaces)s) as i;
select costwarden.fn_user_upsert('bench', 'u-' || i) from generate_series(1, 50) as i;
select costwarden.fn_key_upsert('bench', 'k-' || i, 'ws-' || i, 'u-' || (i %% 50 + 1))
from generate_series(1, 200) as i;
"""

#: entries backdated over 30 days: entry i at now() - i * (30 days / entries), workspace i % n
HISTORY = """
set work_mem = '256MB';
insert into costwarden._ledger (
    org_id, seq, entry_type, workspace_id, model, billing_mode, usage,
    tokens, amount_micros, pricing_snapshot_id, created_at, prev_hash, entry_hash
)
select 'bench', i, 'charge', 'ws-' || (i %% %(workspaces)s + 1), 'bench/model', 'platform_managed',
       jsonb_build_object('input_tokens', 100), 100, 100, 1,
       now() - i * (interval '30 days' / %(entries)s),
       sha256(int8send(i - 1)), sha256(int8send(i))
from generate_series(1, %(entries)s) as i;
update costwarden._ledger_heads set last_seq = %(entries)s where org_id = 'bench';
analyze costwarden._ledger;
create temp table slots as
select x.pool_id,
       min(date_bin(interval '1 minute', x.created_at, timestamptz '2000-01-01')) as mark_at,
       sum(x.amount_micros)::bigint as micros, sum(x.tokens)::bigint as tokens
from (
    select p.pool_id, l.created_at, l.amount_micros, l.tokens
    from costwarden._ledger as l
    join costwarden._pools as p
      on p.org_id = l.org_id and p.kind = 'workspace' and p.scope_id = l.workspace_id
    where l.org_id = 'bench'
    union all
    select p.pool_id, l.created_at, l.amount_micros, l.tokens
    from costwarden._ledger as l
    join costwarden._pools as p on p.org_id = l.org_id and p.kind = 'org'
    where l.org_id = 'bench'
) as x
group by x.pool_id,
         date_bin(costwarden._mark_slot(x.created_at, now()), x.created_at,
                  timestamptz '2000-01-01');
insert into costwarden._spend_marks (pool_id, mark_at, micros_before, tokens_before)
select g.pool_id, g.mark_at, coalesce(sum(g.micros) over w, 0), coalesce(sum(g.tokens) over w, 0)
from slots as g
window w as (partition by g.pool_id order by g.mark_at
             rows between unbounded preceding and 1 preceding);
update costwarden._pools as p
set spent_micros = t.micros, spent_tokens = t.tokens, last_mark_at = t.last_at
from (
    select g.pool_id, sum(g.micros)::bigint as micros, sum(g.tokens)::bigint as tokens,
           max(g.mark_at) as last_at
    from slots as g
    group by g.pool_id
) as t
where p.pool_id = t.pool_id;
-- each pool's base for the month now running (migration 0016), as booking sets it
update costwarden._pools as p
set month_start = m.month_start,
    month_base_micros = coalesce((select k.micros_before from costwarden._spend_marks as k
                                  where k.pool_id = p.pool_id and k.mark_at >= m.month_start
                                  order by k.mark_at limit 1), p.spent_micros),
    month_base_tokens = coalesce((select k.tokens_before from costwarden._spend_marks as k
                                  where k.pool_id = p.pool_id and k.mark_at >= m.month_start
                                  order by k.mark_at limit 1), p.spent_tokens)
from (select costwarden._org_month_start('bench', now()) as month_start) as m
where p.org_id = 'bench';
insert into costwarden._reservations (
    reservation_id, org_id, workspace_id, model, provider, status, usage,
    quoted_micros, quoted_tokens, amount_micros, tokens,
    request_fingerprint, ttl, created_at, finished_at
)
select costwarden._reservation_id('bench'), 'bench', 'ws-' || (i %% %(workspaces)s + 1),
       'bench/model',
       'bench', case when i %% 10 = 0 then 'denied' else 'committed' end, '{}', 100, 100, 0, 0,
       md5(i::text), interval '5 minutes', now() - i * (interval '30 days' / %(calls)s), now()
from generate_series(1, %(calls)s) as i;
vacuum analyze;
"""


@dataclass(frozen=True)
class SpendBench:
    workspaces: int
    small: int
    large: int
    calls: int
    #: query -> (median ms with the small ledger, median ms with the large one)
    timings: dict[str, tuple[float, float]]
    server: str
    #: query -> (mean server CPU ms per call, small, large): the backend's utime + stime
    #: (/proc, a server on this machine; empty otherwise) -- steady on a busy machine,
    #: where wall-clock medians wander with the load
    cpu: dict[str, tuple[float, float]] = field(default_factory=dict)

    def markdown(self) -> str:
        lines = [
            f"fn_spend_summary, 1 org, {self.workspaces:,} workspaces, "
            f"{self.calls:,} reservations; {self.server}",
            "",
            f"| query | {self.small:,} entries (ms) | {self.large:,} entries (ms) | ratio |",
            "|---|---:|---:|---:|",
        ]
        for name, (a, b) in self.timings.items():
            lines.append(f"| {name} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
        if self.cpu:
            lines += [
                "",
                f"| query | server CPU, {self.small:,} (ms) | {self.large:,} (ms) | ratio |",
                "|---|---:|---:|---:|",
            ]
            for name, (a, b) in self.cpu.items():
                ratio = f"{b / a:.2f}" if a else "-"
                lines.append(f"| {name} | {a:.2f} | {b:.2f} | {ratio} |")
        return "\n".join(lines)


def _build(dsn: str, workspaces: int, entries: int, calls: int) -> None:
    migrate(dsn, schedule=False)
    params = {"workspaces": workspaces, "entries": entries, "calls": calls}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("set client_min_messages = error")
        for statement in (SETUP + HISTORY).split(";\n"):
            if statement.strip():
                conn.execute(statement, params)


def _backend_cpu_ms(pid: int) -> float | None:
    """utime + stime of a local backend (ms), or None when /proc does not show it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def _time(dsn: str, repeat: int) -> tuple[dict[str, float], dict[str, float]]:
    out: dict[str, float] = {}
    cpu: dict[str, float] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select pg_backend_pid()").fetchone()
        pid = int(row[0]) if row else 0
        for name, query in QUERIES:
            for _ in range(3):  # warm the cache and the plan
                conn.execute(query).fetchall()
            samples = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                conn.execute(query).fetchall()
                samples.append((time.perf_counter() - t0) * 1000)
            out[name] = statistics.median(samples)
            # server CPU over enough calls for ~0.5 s of wall clock (the kernel counts
            # CPU in ticks of 10 ms)
            calls = max(repeat, int(500 / max(out[name], 0.05)))
            cpu0 = _backend_cpu_ms(pid)
            for _ in range(calls):
                conn.execute(query).fetchall()
            cpu1 = _backend_cpu_ms(pid)
            if cpu0 is not None and cpu1 is not None:
                cpu[name] = (cpu1 - cpu0) / calls
    return out, cpu


def run_spend_bench(
    admin_dsn: str,
    *,
    workspaces: int = 1000,
    small: int = 10_000,
    large: int = 10_000_000,
    calls: int = 10_000,
    repeat: int = 50,
    keep: bool = False,
    echo: Callable[[str], None] = print,
) -> SpendBench:
    """Time fn_spend_summary with ``small`` and then ``large`` ledger entries."""
    results: dict[int, dict[str, float]] = {}
    cpu: dict[int, dict[str, float]] = {}
    for entries in (small, large):
        with scratch_database(admin_dsn, f"costwarden_spend_bench_{entries}", keep=keep) as dsn:
            echo(f"building {workspaces} workspaces, {entries:,} ledger entries ...")
            t0 = time.monotonic()
            _build(dsn, workspaces, entries, calls)
            echo(f"  built in {time.monotonic() - t0:.0f} s; timing ...")
            results[entries], cpu[entries] = _time(dsn, repeat)
    timings = {name: (results[small][name], results[large][name]) for name, _ in QUERIES}
    cpu_ms = {
        name: (cpu[small][name], cpu[large][name])
        for name, _ in QUERIES
        if name in cpu[small] and name in cpu[large]
    }
    return SpendBench(workspaces, small, large, calls, timings, server_facts(admin_dsn), cpu_ms)
