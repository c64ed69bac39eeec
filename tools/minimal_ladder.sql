-- The minimal design with the contract's features added one at a time
-- (tools/minimal_ladder.py; docs/performance.md, "The minimal design, measured in
-- every run"). Built on the bench's schema bench_minimal
-- (python/costwarden/bench/minimal_design.sql) in a database set up like the bench's;
-- a measuring aid, never part of costwarden.
--
--   ledger:  bench_minimal.commit_ledger  -- the commit also appends a hash-chained
--            ledger entry (the org's head locked, sha256 over the previous hash and the
--            entry, the entry inserted with its key and a reservation index)
--   pricing: bench_minimal.reserve_priced, commit_priced -- the amounts priced from the
--            usage under the model's pricing snapshot (costwarden._usage_price), at
--            reserve and again at commit, the usage kept on the reservation
--   idempotency: bench_minimal.reserve_idempotent -- a request fingerprint (md5) and a
--            unique (org, key) index on the reservations
create table if not exists bench_minimal.heads (
    org integer primary key,
    last_seq bigint not null default 0,
    last_hash bytea not null default '\x00'
) with (fillfactor = 50);

create table if not exists bench_minimal.ledger (
    org integer not null,
    seq bigint not null,
    reservation_id uuid,
    amount_micros bigint not null,
    created_at timestamptz not null default now(),
    prev_hash bytea not null,
    entry_hash bytea not null,
    primary key (org, seq)
);

create index if not exists ledger_reservation on bench_minimal.ledger (reservation_id);

alter table bench_minimal.reservations
add column if not exists org integer,
add column if not exists usage jsonb,
add column if not exists idempotency_key text,
add column if not exists fingerprint text;

create unique index if not exists reservations_idempotency
on bench_minimal.reservations (org, idempotency_key);

insert into bench_minimal.heads (org)
select o from generate_series(0, (select max(account_id) / 2 from bench_minimal.accounts)) as o
on conflict do nothing;

create or replace function bench_minimal.commit_ledger(p_reservation_id uuid, p_micros bigint)
returns bigint
language plpgsql
as $$
declare
    v_r bench_minimal.reservations := bench_minimal.held_reservation(p_reservation_id);
    v_org integer := v_r.account_ids[1] / 2;
    v_seq bigint;
    v_prev bytea;
    v_hash bytea;
begin
    perform bench_minimal.settle(v_r.account_ids, v_r.amount_micros, p_micros);
    select h.last_seq + 1, h.last_hash into v_seq, v_prev
    from bench_minimal.heads as h where h.org = v_org for update;
    v_hash := sha256(v_prev || convert_to(
        concat_ws('|', v_org, v_seq, 'charge', p_reservation_id, p_micros, now()), 'UTF8'));
    insert into bench_minimal.ledger (org, seq, reservation_id, amount_micros, prev_hash, entry_hash)
    values (v_org, v_seq, p_reservation_id, p_micros, v_prev, v_hash);
    update bench_minimal.heads as h set last_seq = v_seq, last_hash = v_hash where h.org = v_org;
    perform bench_minimal.finish(p_reservation_id, p_micros);
    return v_seq;
end
$$;

create or replace function bench_minimal.price(p_usage jsonb)
returns bigint
language plpgsql
as $$
declare
    v_prices jsonb;
    v_micros bigint;
begin
    select ps.prices into v_prices from costwarden._pricing_snapshots as ps
    where ps.model = 'bench/model' and ps.effective_from <= now()
    order by ps.effective_from desc limit 1;
    select p.amount_micros into v_micros from costwarden._usage_price(p_usage, v_prices) as p;
    return v_micros;
end
$$;

create or replace function bench_minimal.reserve_priced(
    p_org integer, p_usage jsonb, p_idempotent boolean default false
)
returns uuid
language plpgsql
as $$
declare
    v_accounts bigint[] := array[2 * p_org::bigint, 2 * p_org::bigint + 1];
    v_id uuid := gen_random_uuid();
    v_fingerprint text;
    v_micros bigint;
begin
    if p_idempotent then
        v_fingerprint := md5(jsonb_build_array(p_org, 'bench/model', p_usage)::text);
    end if;
    v_micros := bench_minimal.price(p_usage);
    perform bench_minimal.hold(v_accounts, v_micros);
    insert into bench_minimal.reservations (
        reservation_id, account_ids, amount_micros, expires_at, org, usage, fingerprint
    )
    values (v_id, v_accounts, v_micros, now() + interval '5 minutes', p_org, p_usage, v_fingerprint);
    return v_id;
end
$$;

create or replace function bench_minimal.reserve_idempotent(p_org integer, p_usage jsonb)
returns uuid
language sql
as $$
    select bench_minimal.reserve_priced(p_org, p_usage, true)
$$;

create or replace function bench_minimal.commit_priced(p_reservation_id uuid, p_usage jsonb)
returns bigint
language sql
as $$
    select bench_minimal.commit_ledger(p_reservation_id, bench_minimal.price(p_usage))
$$;
