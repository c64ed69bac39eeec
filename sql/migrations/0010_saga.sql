-- 0010: the spend saga's reservations (SPEC §3); the saga itself is in
-- sql/functions/14_saga.sql.

create table costwarden._reservations (
    reservation_id uuid primary key,        -- first 32 bits: hashtext(org_id) (SPEC §10)
    org_id text not null references costwarden._orgs (org_id),
    workspace_id text not null,
    user_id text,
    key_id text,
    model text not null,
    provider text not null,
    status text not null,                   -- see reservations_status_check
    billing_mode text,                      -- resolved at reserve (SPEC §5)
    pricing_snapshot_id bigint,             -- fixed for the reservation's whole life
    usage jsonb not null,                   -- the requested (maximum) usage
    quoted_micros bigint not null,          -- what the request was quoted at
    quoted_tokens bigint not null,
    amount_micros bigint not null,          -- the hold: quote plus meter-tick extensions
    tokens bigint not null,                 -- the token hold
    metered_usage jsonb,                    -- last cumulative usage from a meter tick
    metered_micros bigint not null default 0,
    metered_tokens bigint not null default 0,
    charged_micros bigint not null default 0,   -- booked in the ledger so far
    charged_tokens bigint not null default 0,
    pool_ids bigint[] not null default '{}',    -- pools the hold counts against
    reasons jsonb not null default '[]',
    idempotency_key text,
    request_fingerprint text not null,      -- md5 of the reserve arguments (CW007 check)
    ttl interval not null,
    metadata jsonb not null default '{}',
    commit_usage jsonb,                     -- the usage of the (first) commit
    commit_approximate boolean,
    commit_result jsonb,                    -- returned again by an identical repeat
    release_reason text,
    created_at timestamptz not null default now(),
    expires_at timestamptz,
    finished_at timestamptz,
    -- held: live hold; denied: refused, nothing held; committed: charged;
    -- released: freed (metered usage, if any, was charged); expired: swept
    -- after expires_at (metered usage charged as approximate, or released)
    constraint reservations_status_check
        check (status in ('held', 'denied', 'committed', 'released', 'expired')),
    constraint reservations_amounts_nonnegative
        check (amount_micros >= 0 and tokens >= 0 and charged_micros >= 0 and metered_micros >= 0),
    unique (org_id, idempotency_key)
);

create index _reservations_held_expiry on costwarden._reservations (expires_at) where status = 'held';
create index _reservations_org_created on costwarden._reservations (org_id, created_at desc);
create index _reservations_user_created on costwarden._reservations (org_id, user_id, created_at desc)
where user_id is not null;
