-- 0013: spooled operations replayed exactly once, and the record of the
-- reconciliation runs. The functions are in sql/functions/18_reconcile.sql.

-- One row per operation a client spooled while the database was unreachable
-- and replayed since: its id makes a replay idempotent (a second replay of the
-- same operation books nothing). For a call that never reached the database
-- ('usage'), every record of the call (its meter ticks, its commit or release)
-- carries the call's id, and the row keeps what was booked so far, so that
-- only the difference is ever booked.
create table costwarden._replayed_operations (
    operation_id uuid primary key,
    org_id text not null references costwarden._orgs (org_id),
    kind text not null,                     -- meter | commit | release | usage
    reservation_id uuid,                    -- meter, commit, release: the reservation the database holds
    called_at timestamptz,                  -- when the client made the call (its clock)
    pricing_snapshot_id bigint,             -- usage: the snapshot in force at called_at
    usage jsonb,                            -- usage: the usage booked so far
    booked_micros bigint not null default 0,
    booked_tokens bigint not null default 0,
    result jsonb,
    first_replayed_at timestamptz not null default now(),
    last_replayed_at timestamptz not null default now(),
    constraint replayed_operations_kind_check check (kind in ('meter', 'commit', 'release', 'usage')),
    constraint replayed_operations_booked_nonnegative check (booked_micros >= 0 and booked_tokens >= 0)
);

comment on table costwarden._replayed_operations is
'Spooled client operations already replayed (idempotency of replay) and what they booked.';

-- One row per fn_reconcile run: what it found (no silent fixes: a repair is
-- fn_reconcile_repair, audited).
create table costwarden._reconcile_runs (
    run_id bigint generated always as identity primary key,
    org_id text,                            -- null: every org
    ran_at timestamptz not null default now(),
    findings integer not null,
    drift jsonb not null default '[]'
);
