-- 0007: the append-only, hash-chained ledger (SPEC §4): its two tables. The
-- chain rules, the append and the verification are in
-- sql/functions/07_ledger.sql and docs/ledger.md.

create table costwarden._ledger_heads (
    org_id text primary key references costwarden._orgs (org_id),
    last_seq bigint not null default 0,           -- seq of the org's last entry (0: none yet)
    last_hash bytea not null default '\x0000000000000000000000000000000000000000000000000000000000000000',
    constraint ledger_heads_seq_nonnegative check (last_seq >= 0),
    constraint ledger_heads_hash_length check (octet_length(last_hash) = 32)
) with (fillfactor = 50);  -- updated by every append: room for HOT updates

comment on table costwarden._ledger_heads is
'Each org''s chain head (last seq and entry_hash). Its row lock serialises the org''s appends; it only moves forward.';

create table costwarden._ledger (
    org_id text not null references costwarden._orgs (org_id),
    seq bigint not null,
    entry_type text not null,          -- charge | spend_report | adjustment
    reservation_id uuid,               -- the reservation charged (charge entries)
    workspace_id text,
    user_id text,
    key_id text,
    model text,
    billing_mode text,                 -- platform_managed | byok (as resolved at reserve)
    usage jsonb,                       -- the usage charged (charge entries)
    tokens bigint not null default 0,
    amount_micros bigint not null,     -- signed only for adjustments (negative: refund / credit)
    pricing_snapshot_id bigint,
    approximate boolean not null default false,  -- charged from metered usage (expiry, release)
    late boolean not null default false,         -- committed after the reservation expired
    source text,                       -- spend_report: the reporting source
    reason text,                       -- adjustment: why
    created_at timestamptz not null,
    prev_hash bytea not null,
    entry_hash bytea not null,
    primary key (org_id, seq),
    constraint ledger_entry_type_check check (entry_type in ('charge', 'spend_report', 'adjustment')),
    constraint ledger_seq_positive check (seq >= 1),
    constraint ledger_amount_sign check (entry_type = 'adjustment' or amount_micros >= 0),
    constraint ledger_hash_length check (octet_length(prev_hash) = 32 and octet_length(entry_hash) = 32)
);

comment on table costwarden._ledger is
'Append-only, per-org sha256 chain of every charge, spend report and adjustment. UPDATE/DELETE/TRUNCATE raise CW001.';

create index _ledger_reservation on costwarden._ledger (reservation_id) where reservation_id is not null;
