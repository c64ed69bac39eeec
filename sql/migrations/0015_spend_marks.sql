-- 0015: cumulative spend marks replace the spend buckets (docs/internals.md,
-- "Spend marks"; docs/budgets.md, "How windows are counted").
--
-- Each pool keeps its all-time committed totals (spent_micros, spent_tokens)
-- and, in _spend_marks, one row per minute in which it received spend, holding
-- its totals just BEFORE the first spend of that minute. The spend of any
-- window is then a difference of two totals, each one index probe, whatever
-- the size of the ledger:
--
--   spend in [t0, now]  = pool.spent - (micros_before of the first mark at or
--                         after t0 floored to its slot; pool.spent when none)
--
-- Booking spend at p_at under the pool's row lock:
--   m := greatest(date_trunc('minute', p_at), last_mark_at)
--   if m > last_mark_at (or none): insert mark (pool, m, spent) and last_mark_at := m
--   spent += the amount
-- so marks are monotone in lock order (the ledger's seq order), and a replay of
-- the ledger reproduces them exactly (fn_reconcile).
--
-- fn_maintenance thins old marks, keeping the FIRST mark of each slot:
--   age <= 2 h: every minute; <= 26 h: 20 minutes; <= 32 days: 1 hour;
--   older: 12 hours, kept forever.
-- A window's start is floored to the slot of its age, so a window over-counts
-- at most the spend of one slot before its start (1/60 of its period or less)
-- and never under-counts.
--
-- Conversion: pool totals are the sum of the buckets used for the marks: the
-- 1-minute buckets from the first 12-hour boundary they cover, the 12-hour
-- buckets before that (fn_maintenance kept every resolution for the same 32
-- days, so in practice the minute buckets cover all but the oldest hours).

alter table costwarden._pools
    add column spent_micros bigint not null default 0,
    add column spent_tokens bigint not null default 0,
    add column last_mark_at timestamptz;

comment on column costwarden._pools.spent_micros is
'All-time committed spend of the pool (micro-USD); windows subtract a spend mark from it.';
comment on column costwarden._pools.last_mark_at is
'The latest row of _spend_marks for the pool (null: none yet); marks only move forward.';

create table costwarden._spend_marks (
    pool_id bigint not null references costwarden._pools (pool_id),
    mark_at timestamptz not null,      -- a minute in which the pool received spend
    micros_before bigint not null,     -- the pool's spent_micros just before that minute's first spend
    tokens_before bigint not null,
    -- the totals in the index: a window's probe is an index-only scan once vacuum
    -- has marked the pages all-visible (most of a pool's marks, all but the newest)
    primary key (pool_id, mark_at) include (micros_before, tokens_before)
);

comment on table costwarden._spend_marks is
'Cumulative committed spend per pool at the start of each minute with spend (thinned with age); '
'a window''s spend is the pool''s total minus one mark.';

with cover as (
    -- the first 12-hour boundary from which the pool's minute buckets are used
    select
        b.pool_id,
        date_bin(
            interval '12 hours', min(b.bucket_start) - interval '1 microsecond',
            timestamptz '2000-01-01 00:00:00+00'
        ) + interval '12 hours' as cut
    from costwarden._spend_buckets as b
    where b.res = 60
    group by b.pool_id
),

used as (
    select
        b.pool_id,
        b.bucket_start,
        b.micros,
        b.tokens
    from costwarden._spend_buckets as b
    left join cover as c on b.pool_id = c.pool_id
    where
        (b.res = 60 and b.bucket_start >= c.cut)
        or (b.res = 43200 and (c.cut is null or b.bucket_start < c.cut))
),

marks as (
    select
        u.pool_id,
        u.bucket_start,
        coalesce(sum(u.micros) over w, 0)::bigint as micros_before,
        coalesce(sum(u.tokens) over w, 0)::bigint as tokens_before
    from used as u
    window w as (
        partition by u.pool_id order by u.bucket_start
        rows between unbounded preceding and 1 preceding
    )
),

ins as (
    insert into costwarden._spend_marks (pool_id, mark_at, micros_before, tokens_before)
    select
        m.pool_id,
        m.bucket_start,
        m.micros_before,
        m.tokens_before
    from marks as m
)

update costwarden._pools as p
set spent_micros = t.micros, spent_tokens = t.tokens, last_mark_at = t.last_at
from (
    select
        u.pool_id,
        sum(u.micros)::bigint as micros,
        sum(u.tokens)::bigint as tokens,
        max(u.bucket_start) as last_at
    from used as u
    group by u.pool_id
) as t
where p.pool_id = t.pool_id;

drop table costwarden._spend_buckets;
