-- The minimal reserve / commit design, a reference for the saga figures of `costwarden
-- bench` (docs/performance.md, "The minimal design"): what a correct reserve + commit
-- with two enforced limits costs in PL/pgSQL on the server of the run when it does
-- nothing else. Two accounts per call (org i: accounts 2i and 2i + 1, the org's and the
-- workspace's), each with a limit; a reserve locks them in ascending order, refuses a
-- request that would take either over its limit, holds the amount on both and records
-- the reservation; a commit locks the reservation and the accounts, moves the hold to
-- spent and closes the reservation. Zero overshoot under concurrency, like the saga; no
-- pricing, windows, ledger, idempotency, validation, alerts or circuits. Never used by
-- costwarden itself: the bench creates it beside the saga, in schema bench_minimal.
create schema if not exists bench_minimal;

create table if not exists bench_minimal.accounts (
    account_id bigint primary key,
    limit_micros bigint not null,
    spent_micros bigint not null default 0,
    held_micros bigint not null default 0
) with (fillfactor = 50);

create table if not exists bench_minimal.reservations (
    reservation_id uuid primary key,
    account_ids bigint[] not null,
    amount_micros bigint not null,
    status text not null default 'held',
    charged_micros bigint,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    finished_at timestamptz
);

-- what an expiry sweep would read
create index if not exists reservations_held_expiry
on bench_minimal.reservations (expires_at) where status = 'held';

-- Locks the accounts (ascending) and holds p_micros on each, or raises when that
-- would take one over its limit.
create or replace function bench_minimal.hold(p_accounts bigint[], p_micros bigint)
returns void
language plpgsql
as $$
declare
    v_held integer;
begin
    perform from bench_minimal.accounts as a
    where a.account_id = any (p_accounts) order by a.account_id for update;
    update bench_minimal.accounts as a
    set held_micros = a.held_micros + p_micros
    where a.account_id = any (p_accounts)
      and a.spent_micros + a.held_micros + p_micros <= a.limit_micros;
    get diagnostics v_held = row_count;
    if v_held < cardinality(p_accounts) then
        raise exception 'over the limit' using errcode = 'P0001';
    end if;
end
$$;

-- Locks the accounts (ascending) and moves p_held from held to p_micros spent.
create or replace function bench_minimal.settle(p_accounts bigint[], p_held bigint, p_micros bigint)
returns void
language plpgsql
as $$
begin
    perform from bench_minimal.accounts as a
    where a.account_id = any (p_accounts) order by a.account_id for update;
    update bench_minimal.accounts as a
    set held_micros = a.held_micros - p_held, spent_micros = a.spent_micros + p_micros
    where a.account_id = any (p_accounts);
end
$$;

-- The reservation row of a held reservation, locked; raises when it is not held.
create or replace function bench_minimal.held_reservation(p_reservation_id uuid)
returns bench_minimal.reservations
language plpgsql
as $$
declare
    v_r bench_minimal.reservations;
begin
    select * into v_r from bench_minimal.reservations as r
    where r.reservation_id = p_reservation_id for update;
    if not found or v_r.status <> 'held' then
        raise exception 'reservation % is not held', p_reservation_id using errcode = 'P0002';
    end if;
    return v_r;
end
$$;

-- Marks a reservation committed. (PL/pgSQL, as every helper here: its plan is cached
-- for the session, where a SQL function that cannot be inlined plans its body again in
-- every transaction.)
create or replace function bench_minimal.finish(p_reservation_id uuid, p_micros bigint)
returns void
language plpgsql
as $$
begin
    update bench_minimal.reservations as r
    set status = 'committed', charged_micros = p_micros, finished_at = now()
    where r.reservation_id = p_reservation_id;
end
$$;

-- Holds p_micros on org p_org's two accounts (org i: accounts 2i and 2i + 1).
create or replace function bench_minimal.reserve(p_org integer, p_micros bigint)
returns uuid
language plpgsql
as $$
declare
    v_accounts bigint[] := array[2 * p_org::bigint, 2 * p_org::bigint + 1];
    v_id uuid := gen_random_uuid();
begin
    perform bench_minimal.hold(v_accounts, p_micros);
    insert into bench_minimal.reservations (reservation_id, account_ids, amount_micros, expires_at)
    values (v_id, v_accounts, p_micros, now() + interval '5 minutes');
    return v_id;
end
$$;

-- Books p_micros for a held reservation and releases its hold.
create or replace function bench_minimal.commit(p_reservation_id uuid, p_micros bigint)
returns bigint
language plpgsql
as $$
declare
    v_r bench_minimal.reservations := bench_minimal.held_reservation(p_reservation_id);
begin
    perform bench_minimal.settle(v_r.account_ids, v_r.amount_micros, p_micros);
    perform bench_minimal.finish(p_reservation_id, p_micros);
    return p_micros;
end
$$;
