-- 0016: each pool's total before the current calendar month (docs/budgets.md,
-- "Spend marks"), so that a month-to-date figure is the pool's total minus a
-- column of its own row: fn_spend_summary's default window (month, calendar)
-- reads no spend mark at all, for one scope or for a listing of thousands.
--
--   month_start        the calendar month (in the org's time zone when it was
--                      set) of the pool's latest booking; null: none yet
--   month_base_micros  the pool's totals before the first booking at or after
--   month_base_tokens  month_start floored to the hour (= what a probe of the
--                      marks for the month's window start reads, _mark_probe)
--
-- Booking spend in a later month sets month_start and reads the base from the
-- marks once (one probe per pool and month); booking into a minute before
-- month_start (rare: a backdated booking) adds to the base as it adds to the
-- later marks. fn_reconcile checks the base against the marks (which it checks
-- against the ledger), fn_reconcile_repair rebuilds it.

alter table costwarden._pools
    add column month_start timestamptz,
    add column month_base_micros bigint not null default 0,
    add column month_base_tokens bigint not null default 0;

comment on column costwarden._pools.month_start is
'The calendar month (org time zone) of the latest booking; month_base_* are the totals before it.';

-- the current month for every pool (the org's time zone), then its base read
-- from the marks
update costwarden._pools as p
set month_start = s.month_start
from (
    select
        o.org_id,
        date_trunc('month', now() at time zone coalesce(o.settings ->> 'timezone', 'UTC'))
        at time zone coalesce(o.settings ->> 'timezone', 'UTC') as month_start
    from costwarden._orgs as o
) as s
where p.org_id = s.org_id;

update costwarden._pools as p
set
    month_base_micros = coalesce((
        select k.micros_before
        from costwarden._spend_marks as k
        where
            k.pool_id = p.pool_id
            and k.mark_at >= date_bin(interval '1 hour', p.month_start, timestamptz '2000-01-01 00:00:00+00')
        order by k.mark_at
        limit 1
    ), p.spent_micros),
    month_base_tokens = coalesce((
        select k.tokens_before
        from costwarden._spend_marks as k
        where
            k.pool_id = p.pool_id
            and k.mark_at >= date_bin(interval '1 hour', p.month_start, timestamptz '2000-01-01 00:00:00+00')
        order by k.mark_at
        limit 1
    ), p.spent_tokens)
where p.month_start is not null;
