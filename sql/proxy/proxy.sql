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
-- included), the claims and actor settings, and -- for BYOK calls only -- the
-- KEKs of its transaction. Runs inside the SECURITY DEFINER RPC: session_user
-- and the role setting are still the caller's.
create or replace function costwarden_remote.ctx(p_kek boolean default false)
returns jsonb
language plpgsql
stable
as $$
declare
    v_who text := case when pg_catalog.current_setting('role') = 'none' then session_user::text
                       else pg_catalog.current_setting('role') end;
    v_role text;
    v_ctx jsonb;
begin
    v_role := case
        when pg_catalog.pg_has_role(v_who, 'costwarden_admin', 'MEMBER') then 'costwarden_admin'
        when pg_catalog.pg_has_role(v_who, 'costwarden_service', 'MEMBER') then 'costwarden_service'
        when pg_catalog.pg_has_role(v_who, 'costwarden_tenant', 'MEMBER') then 'costwarden_tenant'
    end;
    v_ctx := pg_catalog.jsonb_build_object(
        'role', v_role,
        'login', session_user::text,
        'trusted', pg_catalog.pg_has_role(session_user, 'costwarden_authenticator', 'MEMBER'),
        'claims', pg_catalog.current_setting('request.jwt.claims', true),
        'actor_org', pg_catalog.current_setting('costwarden.actor_org', true),
        'actor_user', pg_catalog.current_setting('costwarden.actor_user', true));
    if p_kek then
        v_ctx := v_ctx || pg_catalog.jsonb_build_object(
            'kek', nullif(pg_catalog.current_setting('costwarden.kek', true), ''),
            'kek_new', nullif(pg_catalog.current_setting('costwarden.kek_new', true), ''));
    end if;
    return v_ctx;
end
$$;

-- The org a call that names none acts for (fn_get_my_cost_reservations): from
-- the claims or actor settings of a trusted session, else the login binding of
-- the session user, wherever in the cluster it lives. The RPC computes it into
-- its context before the PL/Proxy call (PL/Proxy calls cannot nest).
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
    if v_org is null then
        select o into v_org from costwarden_remote.login_org(p_ctx ->> 'login') as o limit 1;
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
