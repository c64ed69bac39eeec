-- 0006: budgets over hourly / daily / weekly / monthly windows (SPEC §2).
--
-- Limits live in _budgets, one row per (scope, period, metric, window).
-- Committed spend is counted in _spend_buckets: per pool, at four
-- resolutions (one per period), so that checking a window sums at most ~61
-- small rows whatever the size of the ledger:
--
--   period   window length   bucket      buckets per window
--   hour     1 h             1 minute    <= 61
--   day      24 h            20 minutes  <= 73
--   week     7 d             2 hours     <= 85
--   month    30 d / calendar 12 hours    <= 63
--
-- Every bucket is at most 1/60 of its period. A window [start, now] counts
-- every bucket whose span overlaps it (bucket_start > start - bucket): the
-- check over-counts by at most one bucket and never under-counts.
-- Live reservations are counted by _pools.held_* in every window.

create table costwarden._budgets (
    org_id text not null references costwarden._orgs (org_id),
    scope_kind text not null,      -- org | workspace | key | user | group | user_default
    scope_id text not null,        -- '' for org and user_default
    period text not null,          -- hour | day | week | month
    metric text not null,          -- cost (micro-USD) | tokens
    window_kind text not null,     -- rolling (last 1h/24h/7d/30d) | calendar (from the top of the period)
    limit_value bigint not null,   -- 0 blocks everything
    mode text not null,            -- enforce | shadow (report, never refuse)
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (org_id, scope_kind, scope_id, period, metric, window_kind),
    constraint budgets_scope_kind_check
        check (scope_kind in ('org', 'workspace', 'key', 'user', 'group', 'user_default')),
    constraint budgets_period_check check (period in ('hour', 'day', 'week', 'month')),
    constraint budgets_metric_check check (metric in ('cost', 'tokens')),
    constraint budgets_window_check check (window_kind in ('rolling', 'calendar')),
    constraint budgets_mode_check check (mode in ('enforce', 'shadow')),
    constraint budgets_limit_nonnegative check (limit_value >= 0)
);

create table costwarden._spend_buckets (
    pool_id bigint not null references costwarden._pools (pool_id),
    res integer not null,          -- bucket length in seconds: 60 | 1200 | 7200 | 43200
    bucket_start timestamptz not null,
    micros bigint not null default 0,
    tokens bigint not null default 0,
    primary key (pool_id, res, bucket_start)
) with (fillfactor = 70);  -- the current buckets are updated by every commit: room for HOT updates

comment on table costwarden._spend_buckets is
'Committed spend per pool and time bucket, at four resolutions; windows sum these, never the ledger.';
