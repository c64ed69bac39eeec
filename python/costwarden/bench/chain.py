"""A long ledger chain, real and verifiable, generated set-based in SQL: a recursive
CTE computes each entry's hash with the schema's own ``_ledger_hash`` and inserts the
rows in batches (the generation is never part of a timed figure)."""

from __future__ import annotations

import sys
import time

import click
import psycopg

from .common import scalar

# A deterministic, realistic entry for seq n of the generated chain.
GEN_ENTRY = """
create function pg_temp.bench_entry(p_org text, p_seq bigint, p_prev bytea)
returns costwarden._ledger
language sql
stable  -- inlined into the generating query
as $$
    select row(
        p_org, p_seq, 'charge', md5(p_seq::text)::uuid, 'ws-' || (p_seq % 7),
        case when p_seq % 3 = 0 then null else 'user-' || (p_seq % 50) end,
        null, 'openai/gpt-4o', 'platform_managed',
        jsonb_build_object('input_tokens', 100 + p_seq % 1000, 'output_tokens', p_seq % 97),
        100 + p_seq % 1000 + p_seq % 97, 2500 + p_seq % 10000, 1, p_seq % 11 = 0, false,
        null, null, timestamptz '2025-01-01 00:00:00+00' + p_seq * interval '1 millisecond',
        p_prev, null
    )::costwarden._ledger
$$
"""

GEN_BATCH = """
with recursive c (seq, prev, h) as (
    select %(first)s::bigint, %(prev)s::bytea,
           costwarden._ledger_hash(%(prev)s::bytea,
                                   pg_temp.bench_entry(%(org)s, %(first)s, %(prev)s))
    union all
    select c.seq + 1, c.h,
           costwarden._ledger_hash(c.h, pg_temp.bench_entry(%(org)s, c.seq + 1, c.h))
    from c
    where c.seq < %(last)s
),
ins as (
    insert into costwarden._ledger
    select (e).org_id, (e).seq, (e).entry_type, (e).reservation_id, (e).workspace_id,
           (e).user_id, (e).key_id, (e).model, (e).billing_mode, (e).usage, (e).tokens,
           (e).amount_micros, (e).pricing_snapshot_id, (e).approximate, (e).late, (e).source,
           (e).reason, (e).created_at, (e).prev_hash, c.h
    from c, lateral (select pg_temp.bench_entry(%(org)s, c.seq, c.prev) as e) as x
    returning 1
)
select (select count(*) from ins), (select h from c where seq = %(last)s)
"""


def generate_chain(dsn: str, org: str, entries: int, batch: int = 100_000) -> float:
    """Append ``entries`` entries to ``org``'s chain, set-based (a progress bar on
    stderr); returns the seconds it took."""
    t0 = time.monotonic()
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        click.progressbar(
            length=entries, label=f"generating {org}'s chain", file=sys.stderr, show_pos=True
        ) as bar,
    ):
        conn.execute("select costwarden.fn_org_upsert(%s)", (org,))
        conn.execute(GEN_ENTRY)
        prev = bytes(32)
        done = 0
        while done < entries:
            first, last = done + 1, min(done + batch, entries)
            row = conn.execute(
                GEN_BATCH, {"org": org, "first": first, "last": last, "prev": prev}
            ).fetchone()
            assert row is not None and row[0] == last - first + 1
            prev = bytes(row[1])
            bar.update(last - done)
            done = last
        conn.execute(
            "insert into costwarden._ledger_heads (org_id, last_seq, last_hash) "
            "values (%s, %s, %s)",
            (org, entries, prev),
        )
        conn.execute("vacuum analyze costwarden._ledger")
    return time.monotonic() - t0


def grow_ledger(dsn: str, rows: int) -> int:
    """Grow the ledger to about ``rows`` entries with one real, verifiable chain
    (org 'filler', generated set-based in SQL); returns the ledger's size."""
    have = scalar(dsn, "select count(*) from costwarden._ledger")
    filler = scalar(dsn, "select count(*) from costwarden._ledger_heads where org_id = 'filler'")
    if rows > have and not filler:
        generate_chain(dsn, "filler", rows - have)
    return scalar(dsn, "select count(*) from costwarden._ledger")
