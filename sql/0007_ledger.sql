-- 0007: the append-only, hash-chained ledger (SPEC §4).
--
-- One chain per org: seq 1, 2, 3, ... with no gaps, and
--   entry_hash = sha256(prev_hash || canonical_payload)
-- where prev_hash of seq 1 is 32 zero bytes. The canonical payload is the
-- UTF-8 text built by _ledger_payload (documented byte for byte in
-- docs/ledger.md), so anyone can recompute the chain from an export.
--
-- _ledger_heads holds each org's last seq and hash; appending takes that
-- row's lock, so appends of one org are serialised (gapless seq) while
-- appends of different orgs never wait for each other.

create table costwarden._ledger_heads (
    org_id text primary key references costwarden._orgs (org_id),
    last_seq bigint not null default 0,
    last_hash bytea not null default '\x0000000000000000000000000000000000000000000000000000000000000000'
);

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
    amount_micros bigint not null,     -- signed only for adjustments
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

create trigger _ledger_no_update_delete
before update or delete on costwarden._ledger
for each row execute function costwarden._forbid_mutation();

create trigger _ledger_no_truncate
before truncate on costwarden._ledger
for each statement execute function costwarden._forbid_mutation();

create trigger _ledger_heads_no_delete
before delete on costwarden._ledger_heads
for each row execute function costwarden._forbid_mutation();

create trigger _ledger_heads_no_truncate
before truncate on costwarden._ledger_heads
for each statement execute function costwarden._forbid_mutation();

-- (The payload helpers are plpgsql, or inlinable SQL without a SET clause,
-- so that commit does not re-plan them on every call.)
-- Canonical encodings (docs/ledger.md):
--   text      JSON string (to_json), null -> null
--   integer   decimal digits, null -> null
--   boolean   true | false
--   uuid      JSON string of the lowercase hyphenated form
--   usage     JSON object, keys in byte order, no spaces, numbers without
--             exponent and without trailing fractional zeros (trim_scale)
--   timestamp JSON string "YYYY-MM-DDTHH:MM:SS.ffffffZ" in UTC
create function costwarden._canon_text(p_value text)
returns text
language sql
immutable
parallel safe
as $$
    select coalesce(to_json(p_value)::text, 'null')
$$;

create function costwarden._canon_usage(p_usage jsonb)
returns text
language plpgsql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
    return case
            when p_usage is null or jsonb_typeof(p_usage) = 'null' then 'null'
            else '{' || coalesce((
                select string_agg(to_json(u.key)::text || ':' || trim_scale((u.value::text)::numeric)::text,
                                  ',' order by u.key collate "C")
                from jsonb_each(p_usage) as u
            ), '') || '}'
        end;
end
$$;

create function costwarden._ledger_payload(p_entry costwarden._ledger)
returns text
language plpgsql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
    return 'costwarden-ledger-v1' || E'\n'
        || 'org_id=' || costwarden._canon_text(p_entry.org_id) || E'\n'
        || 'seq=' || p_entry.seq::text || E'\n'
        || 'entry_type=' || costwarden._canon_text(p_entry.entry_type) || E'\n'
        || 'reservation_id=' || costwarden._canon_text(p_entry.reservation_id::text) || E'\n'
        || 'workspace_id=' || costwarden._canon_text(p_entry.workspace_id) || E'\n'
        || 'user_id=' || costwarden._canon_text(p_entry.user_id) || E'\n'
        || 'key_id=' || costwarden._canon_text(p_entry.key_id) || E'\n'
        || 'model=' || costwarden._canon_text(p_entry.model) || E'\n'
        || 'billing_mode=' || costwarden._canon_text(p_entry.billing_mode) || E'\n'
        || 'usage=' || costwarden._canon_usage(p_entry.usage) || E'\n'
        || 'tokens=' || p_entry.tokens::text || E'\n'
        || 'amount_micros=' || p_entry.amount_micros::text || E'\n'
        || 'pricing_snapshot_id=' || coalesce(p_entry.pricing_snapshot_id::text, 'null') || E'\n'
        || 'approximate=' || p_entry.approximate::text || E'\n'
        || 'late=' || p_entry.late::text || E'\n'
        || 'source=' || costwarden._canon_text(p_entry.source) || E'\n'
        || 'reason=' || costwarden._canon_text(p_entry.reason) || E'\n'
        || 'created_at=' || to_json(to_char(p_entry.created_at at time zone 'UTC',
                                             'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text || E'\n';
end
$$;

create function costwarden._ledger_hash(p_prev_hash bytea, p_entry costwarden._ledger)
returns bytea
language plpgsql
immutable
parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
    return sha256(p_prev_hash || convert_to(costwarden._ledger_payload(p_entry), 'UTF8'));
end
$$;

-- Internal: append one entry to the org's chain; returns its seq and hash.
-- Takes the org's _ledger_heads row lock (after any pool locks: see
-- docs/internals.md for the lock order).
create function costwarden._ledger_append(
    p_org_id text,
    p_entry_type text,
    p_amount_micros bigint,
    p_reservation_id uuid default null,
    p_workspace_id text default null,
    p_user_id text default null,
    p_key_id text default null,
    p_model text default null,
    p_billing_mode text default null,
    p_usage jsonb default null,
    p_tokens bigint default 0,
    p_pricing_snapshot_id bigint default null,
    p_approximate boolean default false,
    p_late boolean default false,
    p_source text default null,
    p_reason text default null,
    out seq bigint,
    out entry_hash bytea
)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_entry costwarden._ledger;
    v_prev bytea;
begin
    update costwarden._ledger_heads as h
    set last_seq = h.last_seq + 1
    where h.org_id = p_org_id
    returning h.last_seq, h.last_hash into seq, v_prev;
    if not found then
        insert into costwarden._ledger_heads (org_id) values (p_org_id) on conflict do nothing;
        update costwarden._ledger_heads as h
        set last_seq = h.last_seq + 1
        where h.org_id = p_org_id
        returning h.last_seq, h.last_hash into seq, v_prev;
    end if;
    v_entry := row(
        p_org_id, seq, p_entry_type, p_reservation_id, p_workspace_id, p_user_id, p_key_id, p_model,
        p_billing_mode, p_usage, coalesce(p_tokens, 0), p_amount_micros, p_pricing_snapshot_id,
        coalesce(p_approximate, false), coalesce(p_late, false), p_source, p_reason, now(),
        v_prev, null
    )::costwarden._ledger;
    entry_hash := costwarden._ledger_hash(v_prev, v_entry);
    v_entry.entry_hash := entry_hash;
    insert into costwarden._ledger select v_entry.*;
    update costwarden._ledger_heads as h set last_hash = entry_hash where h.org_id = p_org_id;
end
$$;
