"""tools/minimal_ladder.py's rungs (docs/performance.md, "The minimal design, measured in
every run") run under pgbench exactly as the tool runs them, and each keeps its books:
every pair commits what it reserved and releases the rest, no account goes over its
limit, a limit refuses what would pass it, the ledger rung's entries form a sha256 chain
per org that recomputes from the rows, and the saga's rung leaves a ledger that
verifies."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import psycopg
import pytest

from costwarden.bench.common import PgBench
from costwarden.bench.saga import setup_costwarden

TOOL = Path(__file__).resolve().parents[2] / "tools" / "minimal_ladder.py"
ORGS = 5


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("minimal_ladder", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_rung_runs_under_pgbench_and_keeps_its_books(
    fresh_database: Callable[[], str], tmp_path: Path
) -> None:
    ladder = _load_tool()
    dsn = fresh_database()
    setup_costwarden(dsn, ORGS)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(ladder.LADDER_SQL.read_text())
        before = conn.execute("select count(*) from costwarden._ledger").fetchone()
    scripts = ladder.rung_scripts(tmp_path)
    assert len(scripts) == len(ladder.RUNGS) == 5
    pgb = PgBench()
    for script in scripts:  # pgbench raises on an aborted client
        assert (
            pgb.run(dsn, clients=2, seconds=1, script=script, defines={"orgs": str(ORGS)}).tps > 0
        )

    with psycopg.connect(dsn, autocommit=True) as conn:
        # Every pair of every rung committed: nothing holds, everything spent is in range.
        held, spent, within = conn.execute(
            "select sum(held_micros), sum(spent_micros),"
            " bool_and(spent_micros + held_micros <= limit_micros) from bench_minimal.accounts"
        ).fetchone()  # type: ignore[misc]
        assert held == 0 and spent > 0 and within
        statuses: dict[str, int] = dict(
            conn.execute(
                "select status, count(*) from bench_minimal.reservations group by status"
            ).fetchall()
        )
        assert set(statuses) == {"committed"}, statuses
        # The priced rungs priced: 400 in + 200 out tokens at the bench's prices is 4 200
        # micros held, 400 in + 120 out is 3 000 charged.
        assert conn.execute(
            "select bool_and(amount_micros = 4200 and charged_micros = 3000)"
            " from bench_minimal.reservations where usage is not null"
        ).fetchone() == (True,)
        # The idempotency rung fingerprinted its requests; the others did not.
        n_fp = conn.execute(
            "select count(*) from bench_minimal.reservations where fingerprint is not null"
        ).fetchone()
        assert n_fp is not None and n_fp[0] > 0
        # The ledger rung's chain: gapless per org from 1, each entry's prev_hash the
        # entry before it's hash, and each hash recomputes from the row.
        rows = conn.execute(
            """
            select l.org, l.seq, l.prev_hash = coalesce(lag(l.entry_hash) over w, '\\x00'),
                   l.entry_hash = sha256(l.prev_hash || convert_to(concat_ws('|', l.org, l.seq,
                       'charge', l.reservation_id, l.amount_micros, l.created_at), 'UTF8')),
                   l.seq = row_number() over w
            from bench_minimal.ledger as l
            window w as (partition by l.org order by l.seq)
            """
        ).fetchall()
        assert rows and all(linked and hashed and gapless for *_, linked, hashed, gapless in rows)
        heads = conn.execute(
            "select bool_and(h.last_seq = coalesce((select max(l.seq) from bench_minimal.ledger l"
            " where l.org = h.org), 0)) from bench_minimal.heads h"
        ).fetchone()
        assert heads == (True,)
        # The last rung is the saga itself: it booked into costwarden's ledger, which
        # verifies.
        after = conn.execute("select count(*) from costwarden._ledger").fetchone()
        assert before is not None and after is not None and after[0] > before[0]
        assert conn.execute(
            "select bool_and(ok) from costwarden.fn_ledger_verify()"
        ).fetchone() == (True,)

        # A limit refuses what would take an account over it, and changes nothing.
        conn.execute("update bench_minimal.accounts set limit_micros = spent_micros + 5000")
        rid = conn.execute("select bench_minimal.reserve(1, 4200)").fetchone()
        assert rid is not None
        with pytest.raises(psycopg.errors.RaiseException, match="over the limit"):
            conn.execute("select bench_minimal.reserve_priced(1, '{\"input_tokens\": 400}')")
        held_1 = conn.execute(
            "select array_agg(held_micros order by account_id) from bench_minimal.accounts"
            " where account_id in (2, 3)"
        ).fetchone()
        assert held_1 == ([4200, 4200],)
