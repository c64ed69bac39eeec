-- The proxy database's fixed part (docs/scale-out.md), installed by
-- `costwarden migrate --proxy CLUSTER.toml` before the generated RPCs.
--
--   schema costwarden          the RPCs, same names, arguments, defaults and results
--                              as on a partition (generated: costwarden.cluster)
--   schema costwarden_remote   the PL/Proxy functions the RPCs call, and these helpers;
--                              executable by nobody but their owner
--   foreign server {{CLUSTER}} PL/Proxy's cluster configuration (SQL/MED), generated
--                              from CLUSTER.toml
--   costwarden.secret_input*   the write-only input channels of a partition (SPEC §5:
--                              the client stages its KEK with COPY, never logged),
--                              copied from the partition's catalogue with their triggers
--
-- The proxy holds no money state: nothing here but routing, the caller's
-- context, and one row lock that serialises catalogue-wide writes.

create extension if not exists plproxy;
create schema if not exists costwarden;
create schema if not exists costwarden_remote;
revoke all on schema costwarden_remote from public;

do $roles$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = 'costwarden_tenant') then
        create role costwarden_tenant nologin;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'costwarden_service') then
        create role costwarden_service nologin;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'costwarden_admin') then
        create role costwarden_admin nologin;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'costwarden_authenticator') then
        create role costwarden_authenticator nologin;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'costwarden_owner') then
        create role costwarden_owner nologin;
    end if;
end
$roles$;
grant costwarden_service to costwarden_admin;
grant usage on schema costwarden to costwarden_admin, costwarden_service, costwarden_tenant;

-- What this proxy was generated from (status --proxy shows it).
create table if not exists costwarden_remote.proxy_meta (
    singleton boolean primary key default true check (singleton),
    cluster_name text not null,
    partitions integer not null,
    rpcs integer not null,
    catalogue_sha256 text not null,
    installed_at timestamptz not null default now()
);

-- One row whose lock serialises catalogue-wide writes (models, pricing,
-- settings, circuits, KEK rotation): every partition applies them in the same
-- order, so ids such as pricing snapshot ids stay equal everywhere.
create table if not exists costwarden_remote.catalogue_lock (
    singleton boolean primary key default true check (singleton)
);
insert into costwarden_remote.catalogue_lock values (true) on conflict do nothing;

-- The login bindings of the whole cluster (SPEC §12), as the proxy knows them:
-- written by its fn_tenant_login_bind / fn_tenant_login_unbind once the
-- partitions have, and gathered again from every partition by `migrate --proxy`.
-- ctx() reads the caller's here (no hop), so that a binding confines its login
-- on every partition, not only on the one that holds it.
create table if not exists costwarden_remote.login_bindings (
    login text primary key,
    org_id text not null,
    user_id text,
    bound_at timestamptz not null default now()
);

-- The hash of an org (SPEC §10); a missing org routes to partition 0, whose
-- copy of the RPC then refuses it exactly as a single node would.
create or replace function costwarden_remote.org_hash(p_org_id text)
returns integer
language sql
immutable
parallel safe
as $$
    select coalesce(pg_catalog.hashtext(p_org_id), 0)
$$;

-- The first 32 bits of a reservation id: hashtext(org_id) of its org (SPEC §10).
create or replace function costwarden_remote.reservation_hash(p_reservation_id uuid)
returns integer
language sql
immutable
parallel safe
as $$
    select coalesce(
        ('x' || pg_catalog.substr(pg_catalog.replace(p_reservation_id::text, '-', ''), 1, 8))::bit(32)::integer,
        0)
$$;

-- BYOK resolve: the reservation's partition, else (legacy, no reservation) the org's.
create or replace function costwarden_remote.resolve_hash(p_reservation_id uuid, p_org_id text)
returns integer
language sql
immutable
as $$
    select case when p_reservation_id is not null then costwarden_remote.reservation_hash(p_reservation_id)
                else costwarden_remote.org_hash(p_org_id) end
$$;

-- The partition count of the cluster (the p0..pN-1 options of its server).
create or replace function costwarden_remote.partition_count()
returns integer
language sql
stable
as $$
    select count(*)::integer
    from pg_catalog.pg_foreign_server as s,
         pg_catalog.pg_options_to_table(s.srvoptions) as o
    where s.srvname = '{{CLUSTER}}' and o.option_name ~ '^p[0-9]+$'
$$;

-- The message of a hop that failed (a partition down): which partition, then
-- PL/Proxy's own words ("[<dbname>] PQconnectPoll: ...").
create or replace function costwarden_remote.unreachable_message(p_message text)
returns text
language plpgsql
stable
as $$
declare
    v_db text := substring(p_message from '^PL/Proxy function \S+: \[([^]]*)\]');
    v_partition text;
begin
    select string_agg(substr(o.option_name, 2), ', ' order by o.option_name) into v_partition
    from pg_catalog.pg_foreign_server as s,
         pg_catalog.pg_options_to_table(s.srvoptions) as o
    where s.srvname = '{{CLUSTER}}' and o.option_name ~ '^p[0-9]+$'
      and o.option_value ~ ('(^|\s)dbname=' || v_db || '(\s|$)');
    return format('costwarden proxy: partition %s (database %s) of cluster %s is unavailable: %s',
                  coalesce(v_partition, '?'), v_db, '{{CLUSTER}}',
                  regexp_replace(p_message, '^PL/Proxy function \S+: \[[^]]*\] ', ''));
end
$$;

-- Every partition (as hash values 0..N-1), or only the org's when one is named.
create or replace function costwarden_remote.org_hash_or_all(p_org_id text)
returns setof integer
language sql
stable
as $$
    select costwarden_remote.org_hash(p_org_id) where p_org_id is not null
    union all
    select g from pg_catalog.generate_series(0, costwarden_remote.partition_count() - 1) as g
    where p_org_id is null
$$;

-- A batch RPC (fn_cost_reserve_many, fn_cost_commit_many) runs on one partition: the
-- hash of its elements' orgs (p_key 'org_id') or reservations (p_key
-- 'reservation_id'), which must all fall on the same partition (CW004 otherwise;
-- a gateway batches per partition, e.g. per org). A malformed batch goes to the
-- first element's partition, whose RPC reports it.
create or replace function costwarden_remote.batch_hash(p_batch jsonb, p_key text)
returns integer
language plpgsql
stable
as $$
declare
    v_mask integer := costwarden_remote.partition_count() - 1;
    v_hashes integer[];
begin
    if pg_catalog.jsonb_typeof(p_batch) is distinct from 'array' then
        return 0;
    end if;
    select pg_catalog.array_agg(case when p_key = 'org_id'
                                     then costwarden_remote.org_hash(e.value ->> 'org_id')
                                     else costwarden_remote.reservation_hash((e.value ->> 'reservation_id')::uuid) end
                                order by e.n)
    into v_hashes
    from pg_catalog.jsonb_array_elements(p_batch) with ordinality as e (value, n)
    where pg_catalog.jsonb_typeof(e.value) = 'object';
    if v_hashes is null then
        return 0;
    end if;
    if exists (select from pg_catalog.unnest(v_hashes) as h where (h & v_mask) <> (v_hashes[1] & v_mask)) then
        raise exception using errcode = 'CW004', message = format(
            '%s: through the proxy, every element of a batch must belong to one partition (batch per org)',
            case when p_key = 'org_id' then 'p_requests' else 'p_commits' end);
    end if;
    return v_hashes[1];
exception when invalid_text_representation then
    return 0;
end
$$;

-- A refusal receipt names its org in its payload (base64 before the '.').
create or replace function costwarden_remote.receipt_hash(p_receipt text)
returns integer
language plpgsql
immutable
as $$
begin
    return costwarden_remote.org_hash(
        pg_catalog.convert_from(pg_catalog.decode(pg_catalog.split_part(
            pg_catalog.regexp_replace(pg_catalog.btrim(p_receipt), '^costwarden-refusal-receipt:\s*', ''),
            '.', 1), 'base64'), 'UTF8')::jsonb ->> 'org_id');
exception when others then
    return 0;
end
$$;

-- The caller, carried to the partition (docs/scale-out.md, "Identity across the
-- hop"): the costwarden role it acts as there, its login, whether its session
-- may name the actor (SPEC §12: a member of costwarden_authenticator, superusers
-- included), the claims and actor settings, the login binding of its session
-- user (login_bindings; only when the session names no actor: an untrusted
-- one, or a trusted one without claims or actor settings, which a single
-- node's _actor() also resolves by the binding), and -- for BYOK calls only --
-- the KEKs of its transaction. Runs inside the SECURITY DEFINER RPC:
-- session_user and the role setting are still the caller's.
create or replace function costwarden_remote.ctx(p_kek boolean default false)
returns jsonb
language plpgsql
stable
as $$
declare
    v_who text := case when pg_catalog.current_setting('role') = 'none' then session_user::text
                       else pg_catalog.current_setting('role') end;
    v_trusted boolean := pg_catalog.pg_has_role(session_user, 'costwarden_authenticator', 'MEMBER');
    v_role text;
    v_ctx jsonb;
    v_binding record;
begin
    v_role := case
        when pg_catalog.pg_has_role(v_who, 'costwarden_admin', 'MEMBER') then 'costwarden_admin'
        when pg_catalog.pg_has_role(v_who, 'costwarden_service', 'MEMBER') then 'costwarden_service'
        when pg_catalog.pg_has_role(v_who, 'costwarden_tenant', 'MEMBER') then 'costwarden_tenant'
    end;
    v_ctx := pg_catalog.jsonb_build_object(
        'role', v_role,
        'login', session_user::text,
        'trusted', v_trusted,
        'claims', pg_catalog.current_setting('request.jwt.claims', true),
        'actor_org', pg_catalog.current_setting('costwarden.actor_org', true),
        'actor_user', pg_catalog.current_setting('costwarden.actor_user', true));
    if not v_trusted or costwarden_remote.names_no_actor(v_ctx) then
        select b.org_id, b.user_id into v_binding
        from costwarden_remote.login_bindings as b
        where b.login = session_user;
        v_ctx := v_ctx || pg_catalog.jsonb_build_object('binding',
            case when v_binding.org_id is not null then
                pg_catalog.jsonb_build_object('org_id', v_binding.org_id, 'user_id', v_binding.user_id) end);
    end if;
    if p_kek then
        v_ctx := v_ctx || pg_catalog.jsonb_build_object(
            'kek', nullif(pg_catalog.current_setting('costwarden.kek', true), ''),
            'kek_new', nullif(pg_catalog.current_setting('costwarden.kek_new', true), ''));
    end if;
    return v_ctx;
end
$$;

-- Whether a trusted session's claims and actor settings name no actor (neither
-- an org nor a user), so that a node's _actor() falls back to the login binding.
-- Claims that are not JSON name none here: the partition refuses them (CW005).
create or replace function costwarden_remote.names_no_actor(p_ctx jsonb)
returns boolean
language plpgsql
immutable
as $$
declare
    v_claims jsonb;
begin
    begin
        v_claims := nullif(p_ctx ->> 'claims', '')::jsonb;
    exception when others then
        return false;  -- invalid claims: the partition raises CW005 as a single node does
    end;
    return nullif(v_claims ->> 'org_id', '') is null and nullif(v_claims ->> 'sub', '') is null
       and nullif(p_ctx ->> 'actor_org', '') is null and nullif(p_ctx ->> 'actor_user', '') is null;
end
$$;

-- The org a call that names none acts for (fn_get_my_cost_reservations): from
-- the claims or actor settings of a trusted session, else the login binding of
-- the session user that ctx() found, else the one a partition holds (a binding
-- made there, not through the proxy), asked of every partition. The RPC
-- computes it into its context before the PL/Proxy call (PL/Proxy calls cannot
-- nest).
create or replace function costwarden_remote.actor_org(p_ctx jsonb)
returns text
language plpgsql
stable
as $$
declare
    v_org text;
begin
    if (p_ctx ->> 'trusted')::boolean then
        begin
            v_org := nullif(nullif(p_ctx ->> 'claims', '')::jsonb ->> 'org_id', '');
        exception when others then
            v_org := null;  -- invalid claims: the partition raises CW005 as a single node does
        end;
        v_org := coalesce(v_org, nullif(p_ctx ->> 'actor_org', ''));
    end if;
    v_org := coalesce(v_org, p_ctx #>> '{binding,org_id}');
    if v_org is null and p_ctx ? 'binding' then
        select b.org_id into v_org
        from costwarden_remote.login_binding_lookup(p_ctx ->> 'login') as b
        order by b.org_id
        limit 1;
    end if;
    return v_org;
end
$$;

create or replace function costwarden_remote.actor_hash(p_ctx jsonb)
returns integer
language sql
immutable
as $$
    select costwarden_remote.org_hash(p_ctx ->> 'route_org')
$$;

-- Before bindings were carried in the context, the proxy asked for the org only.
drop function if exists costwarden_remote.login_org(text);

-- fn_pricing_set through the proxy: the effective time and the snapshot id it
-- writes on every partition. A write that failed on some partitions (PL/Proxy
-- has no two-phase commit) left the model's newest snapshot on the others
-- only; the same call again, effective now (the default), completes that
-- snapshot -- its effective time, its id -- when its prices are these, instead
-- of adding another. A snapshot that exists for that time keeps its id; a new
-- one gets the next id of the partition furthest on, so ids stay equal on every
-- partition whatever ids a failed write drew (costwarden_px._pricing_pin).
create or replace function costwarden_remote.pricing_pin(
    p_model text, p_prices jsonb, p_effective_from timestamptz,
    out effective_from timestamptz, out snapshot_id bigint
)
language plpgsql
volatile
as $$
declare
    v_parts integer;
    v_next bigint;
    v_all jsonb;
    v_pending timestamptz;
    v_ids bigint[];
begin
    select count(*), max(r.next_id), jsonb_agg(r.snapshots) into v_parts, v_next, v_all
    from costwarden_remote.pricing_state(p_model) as r;
    effective_from := p_effective_from;
    if p_effective_from = now() then
        select s.at into v_pending
        from (
            select (x.value ->> 'effective_from')::timestamptz as at, x.value -> 'prices' as prices, p.n
            from jsonb_array_elements(v_all) with ordinality as p (snaps, n),
                 jsonb_array_elements(p.snaps) as x (value)
        ) as s
        group by s.at
        having count(distinct s.n) < v_parts and bool_and(s.prices = p_prices)
           and s.at = (select max((x.value ->> 'effective_from')::timestamptz)
                       from jsonb_array_elements(v_all) as p (snaps), jsonb_array_elements(p.snaps) as x (value));
        if v_pending <= now() then
            effective_from := v_pending;
        end if;
    end if;
    select array_agg(distinct (x.value ->> 'id')::bigint) into v_ids
    from jsonb_array_elements(v_all) as p (snaps), jsonb_array_elements(p.snaps) as x (value)
    where (x.value ->> 'effective_from')::timestamptz = effective_from;
    if cardinality(v_ids) > 1 then
        raise exception using errcode = 'CW003', message = format(
            'fn_pricing_set: the partitions hold different snapshot ids (%s) for model %s effective from %s: '
            'they must be repaired by hand (docs/scale-out.md, "Routing")',
            array_to_string(v_ids, ', '), p_model, effective_from);
    end if;
    snapshot_id := coalesce(v_ids[1], v_next);
end
$$;
