-- The partition side of the PL/Proxy layer (docs/scale-out.md), installed into
-- every partition by `costwarden migrate --proxy` after the ordinary migration.
--
-- It lives in its own schema, costwarden_px, so that the migration runner (which
-- drops whatever sql/functions no longer defines in schema costwarden) leaves it
-- alone. costwarden.cluster generates one wrapper per RPC next to these helpers:
--
--     costwarden_px.fn_x(p_px jsonb, <the RPC's arguments>) -> the RPC's result
--
-- A wrapper is SECURITY INVOKER: it runs as the router login the proxy connects
-- with, re-establishes the caller of the proxy database from p_px (_enter: the
-- costwarden role, the claims or login binding, the KEK) and calls
-- costwarden.fn_x, which re-checks everything as on a single node. Only members
-- of costwarden_proxy (the router login) may execute anything here.
--
-- {{ROUTER}} is replaced by the router login's name.

create schema if not exists costwarden_px;
revoke all on schema costwarden_px from public;

do $roles$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = 'costwarden_proxy') then
        create role costwarden_proxy nologin;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'costwarden_authenticator') then
        create role costwarden_authenticator nologin;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = '{{ROUTER}}') then
        execute format('create role %I login', '{{ROUTER}}');
    end if;
    -- The router login may take the three costwarden roles (as PostgREST's
    -- authenticator does), names actors (costwarden_authenticator, SPEC §12)
    -- and runs the wrappers (costwarden_proxy). Its sessions never log bind
    -- parameters: the proxy's context (which carries the KEK of a BYOK call) is one.
    execute format('grant costwarden_proxy, costwarden_authenticator, costwarden_admin, '
                   'costwarden_service, costwarden_tenant to %I', '{{ROUTER}}');
    execute format('alter role %I set log_parameter_max_length = 0', '{{ROUTER}}');
    execute format('alter role %I set log_parameter_max_length_on_error = 0', '{{ROUTER}}');
end
$roles$;

grant usage on schema costwarden_px to costwarden_proxy;

-- Moves out of this partition (split): one row per org removed by org_evict.
create table if not exists costwarden_px.moved_orgs (
    org_id text primary key,
    moved_to integer not null,
    partitions integer not null,
    last_seq bigint not null,
    last_hash text,
    moved_at timestamptz not null default now()
);
revoke all on costwarden_px.moved_orgs from public;

-- The login binding of p_login on this partition (SPEC §12), read by _enter,
-- before an unbind, and by the proxy for a call that names no org
-- (costwarden_remote.actor_org). Nothing when
-- the schema has no bindings (before they existed, every session named its actor).
create or replace function costwarden_px._login_binding(p_login text)
returns table (org_id text, user_id text)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if to_regclass('costwarden._tenant_logins') is null then
        return;
    end if;
    return query execute
        'select b.org_id, b.user_id from costwarden._tenant_logins as b where b.login = $1'
        using p_login;
end
$$;

-- Every login binding on this partition, gathered by `migrate --proxy` into the
-- proxy's costwarden_remote.login_bindings.
create or replace function costwarden_px._login_bindings()
returns table (login text, org_id text, user_id text, bound_at timestamptz)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if to_regclass('costwarden._tenant_logins') is null then
        return;
    end if;
    return query execute
        'select b.login, b.org_id, b.user_id, b.bound_at from costwarden._tenant_logins as b';
end
$$;

-- Whether this schema decides identity by login bindings (SPEC §12).
create or replace function costwarden_px._bindings_exist()
returns boolean
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select to_regclass('costwarden._tenant_logins') is not null
$$;

-- Enter the caller's identity for the rest of this (single-statement)
-- transaction: the settings first, the role last. A trusted caller's claims
-- and actor settings are taken as given. The login binding is the one the
-- proxy knows (p_px's 'binding', from costwarden_remote.login_bindings), sent
-- for an untrusted caller and for a trusted one whose session names no actor:
-- a caller bound to an org on another partition is confined to that org here
-- too. A binding this partition holds and the proxy does not know (made here,
-- not through the proxy) confines here as well; one that contradicts the
-- proxy's is refused until they agree again.
create or replace function costwarden_px._enter(p_px jsonb)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_role text := p_px ->> 'role';
    v_trusted boolean := coalesce((p_px ->> 'trusted')::boolean, false);
    v_binding jsonb := p_px -> 'binding';
    v_here record;
begin
    if not pg_has_role(session_user, 'costwarden_proxy', 'MEMBER') then
        raise exception using errcode = 'CW005',
            message = 'costwarden_px: only the proxy''s router login may call the partition wrappers';
    end if;
    if v_role is null or v_role not in ('costwarden_admin', 'costwarden_service', 'costwarden_tenant') then
        raise exception using errcode = 'CW005', message = 'costwarden_px: the caller holds no costwarden role';
    end if;
    if v_trusted or not costwarden_px._bindings_exist() then
        perform set_config('request.jwt.claims', coalesce(p_px ->> 'claims', ''), true);
        perform set_config('costwarden.actor_org', coalesce(p_px ->> 'actor_org', ''), true);
        perform set_config('costwarden.actor_user', coalesce(p_px ->> 'actor_user', ''), true);
    end if;
    if costwarden_px._bindings_exist() and (not v_trusted or p_px ? 'binding') then
        if pg_catalog.jsonb_typeof(v_binding) is distinct from 'object' then
            v_binding := null;
        end if;
        select b.org_id, b.user_id into v_here from costwarden_px._login_binding(p_px ->> 'login') as b;
        if v_here.org_id is not null and v_binding is not null
           and (v_here.org_id, v_here.user_id) is distinct from (v_binding ->> 'org_id', v_binding ->> 'user_id') then
            raise exception using errcode = 'CW005', message = format(
                'costwarden_px: the binding of login %s here (org %s) is not the one the proxy knows (org %s): '
                'bind it again through the proxy, or run costwarden migrate --proxy',
                p_px ->> 'login', v_here.org_id, v_binding ->> 'org_id');
        end if;
        if v_binding is null and v_here.org_id is not null then
            v_binding := pg_catalog.jsonb_build_object('org_id', v_here.org_id, 'user_id', v_here.user_id);
        end if;
        perform set_config('request.jwt.claims',
            case when v_binding is null then ''
                 else pg_catalog.jsonb_build_object('org_id', v_binding ->> 'org_id',
                                                    'sub', v_binding ->> 'user_id')::text
            end, true);
        perform set_config('costwarden.actor_org', '', true);
        perform set_config('costwarden.actor_user', '', true);
    end if;
    perform set_config('costwarden.kek', coalesce(p_px ->> 'kek', ''), true);
    perform set_config('costwarden.kek_new', coalesce(p_px ->> 'kek_new', ''), true);
    perform set_config('role', v_role, true);
end
$$;

-- Before bindings were carried in the context, the proxy asked for the org only.
drop function if exists costwarden_px._login_org(text);

-- Remove p_login's binding here unless it binds it to p_keep_org (the proxy's
-- fn_tenant_login_bind keeps one binding per login in the whole cluster).
-- Runs as the admin role, through fn_tenant_login_unbind (audited).
create or replace function costwarden_px._login_unbind_elsewhere(p_px jsonb, p_login text, p_keep_org text)
returns setof boolean
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_org text;
begin
    select b.org_id into v_org from costwarden_px._login_binding(p_login) as b;
    perform costwarden_px._enter(p_px);
    if v_org is null or v_org = p_keep_org then
        return next false;
        return;
    end if;
    return query execute 'select costwarden.fn_tenant_login_unbind(p_login => $1)' using p_login;
end
$$;

-- fn_pricing_set through the proxy (costwarden_remote.pricing_pin): this
-- partition's pricing snapshots of p_model, and the id its next snapshot
-- would get (past every id handed out or present).
create or replace function costwarden_px._pricing_state(p_model text)
returns table (next_id bigint, snapshots jsonb)
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    select greatest(case when q.is_called then q.last_value else q.last_value - 1 end,
                    coalesce((select max(p.snapshot_id) from costwarden._pricing_snapshots as p), 0)) + 1,
           coalesce((select jsonb_agg(jsonb_build_object('id', s.snapshot_id, 'prices', s.prices,
                                                         'effective_from', s.effective_from)
                                      order by s.effective_from)
                     from costwarden._pricing_snapshots as s where s.model = p_model), '[]')
    from costwarden._pricing_snapshots_snapshot_id_seq as q
$$;

-- Before fn_pricing_set through the proxy: the snapshot it inserts here, if it
-- is not here yet, gets the id the proxy chose for it (p_px's
-- 'pricing_snapshot_id', the same on every partition), whatever ids an earlier
-- failed write drew here.
create or replace function costwarden_px._pricing_pin(p_px jsonb, p_model text, p_effective_from timestamptz)
returns void
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_px ->> 'pricing_snapshot_id' is null or exists (
        select from costwarden._pricing_snapshots as s
        where s.model = p_model and s.effective_from = p_effective_from
    ) then
        return;
    end if;
    perform setval('costwarden._pricing_snapshots_snapshot_id_seq', (p_px ->> 'pricing_snapshot_id')::bigint, false);
end
$$;

-- A digest of the catalogue-wide state that must be identical on every
-- partition: models, pricing snapshots (ids included), settings, circuits.
-- (KEK generations are per partition: a partition creates its first one at its
-- first key put, with a random check blob; rotation runs on all.) Compared by `costwarden status --proxy` and tests.
create or replace function costwarden_px.catalogue_digest()
returns table (part text, digest text)
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    select 'models', md5(coalesce(string_agg(format('%s|%s|%s', m.model, m.provider, m.platform_servable), ';' order by m.model), ''))
    from costwarden._models as m
    union all
    select 'pricing', md5(coalesce(string_agg(format('%s|%s|%s|%s', p.snapshot_id, p.model, p.prices, p.effective_from), ';' order by p.snapshot_id), ''))
    from costwarden._pricing_snapshots as p
    union all
    select 'settings', md5(coalesce(string_agg(format('%s|%s', s.key, s.value), ';' order by s.key), ''))
    from costwarden._settings as s
    union all
    select 'circuits', md5(coalesce(string_agg(format('%s|%s|%s', c.provider, c.state, c.consecutive_failures), ';' order by c.provider), ''))
    from costwarden._circuits as c
$$;

-- The only path that removes an org's rows from a partition (split: the org
-- moved to its new partition, where its chain verified against p_last_hash).
-- Superuser only: it sets session_replication_role = replica for its
-- transaction, which skips the append-only triggers (CW001) and the foreign
-- keys for exactly these deletes. It refuses unless the org no longer routes
-- here under p_partitions partitions, and unless its ledger head here is the
-- digest that was verified on the new partition. It records the move in
-- moved_orgs and in the audit log (org_moved_out), both kept on this partition.
create or replace function costwarden_px.org_evict(
    p_org_id text, p_partition integer, p_partitions integer, p_moved_to integer,
    p_last_seq bigint, p_last_hash text
)
returns integer
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_seq bigint;
    v_hash text;
    v_rows integer := 0;
    v_n integer;
    v_table record;
begin
    if not (select r.rolsuper from pg_catalog.pg_roles as r where r.rolname = current_user) then
        raise exception using errcode = 'CW005', message = 'org_evict: superuser only';
    end if;
    if (hashtext(p_org_id) & (p_partitions - 1)) <> p_moved_to or p_moved_to = p_partition then
        raise exception using errcode = 'CW004',
            message = format('org_evict: org %L does not route to partition %s of %s', p_org_id, p_moved_to, p_partitions);
    end if;
    select h.last_seq, encode(h.last_hash, 'hex') into v_seq, v_hash
    from costwarden._ledger_heads as h where h.org_id = p_org_id;
    v_seq := coalesce(v_seq, 0);
    v_hash := coalesce(v_hash, repeat('0', 64));
    if v_seq <> coalesce(p_last_seq, 0) or v_hash is distinct from p_last_hash then
        raise exception using errcode = 'CW004',
            message = format('org_evict: org %L has ledger head %s here, not the verified %s', p_org_id, v_seq, p_last_seq);
    end if;
    perform set_config('session_replication_role', 'replica', true);
    -- rows keyed by pool (spend buckets), then every table with an org_id column
    for v_table in
        select c.oid::regclass as rel
        from pg_catalog.pg_class as c
        where c.relnamespace = 'costwarden'::regnamespace and c.relkind = 'r'
          and exists (select from pg_catalog.pg_attribute as a where a.attrelid = c.oid and a.attname = 'pool_id' and not a.attisdropped)
          and not exists (select from pg_catalog.pg_attribute as a where a.attrelid = c.oid and a.attname = 'org_id' and not a.attisdropped)
    loop
        execute format('delete from %s where pool_id in (select p.pool_id from costwarden._pools as p where p.org_id = $1)', v_table.rel)
        using p_org_id;
        get diagnostics v_n = row_count;
        v_rows := v_rows + v_n;
    end loop;
    for v_table in
        select c.oid::regclass as rel
        from pg_catalog.pg_class as c
        where c.relnamespace = 'costwarden'::regnamespace and c.relkind = 'r' and c.relname <> '_orgs'
          and exists (select from pg_catalog.pg_attribute as a where a.attrelid = c.oid and a.attname = 'org_id' and not a.attisdropped)
    loop
        execute format('delete from %s where org_id = $1', v_table.rel) using p_org_id;
        get diagnostics v_n = row_count;
        v_rows := v_rows + v_n;
    end loop;
    delete from costwarden._orgs where org_id = p_org_id;
    get diagnostics v_n = row_count;
    v_rows := v_rows + v_n;
    perform set_config('session_replication_role', 'origin', true);
    insert into costwarden_px.moved_orgs (org_id, moved_to, partitions, last_seq, last_hash)
    values (p_org_id, p_moved_to, p_partitions, coalesce(p_last_seq, 0), p_last_hash)
    on conflict (org_id) do update set moved_to = excluded.moved_to, partitions = excluded.partitions,
        last_seq = excluded.last_seq, last_hash = excluded.last_hash, moved_at = now();
    insert into costwarden._audit_log (db_role, actor_org, actor_user, action, org_id, target, before, after)
    values (session_user, null, null, 'org_moved_out', p_org_id,
            pg_catalog.jsonb_build_object('partition', p_partition, 'moved_to', p_moved_to, 'partitions', p_partitions),
            pg_catalog.jsonb_build_object('rows', v_rows, 'last_seq', p_last_seq, 'last_hash', p_last_hash), null);
    return v_rows;
end
$$;

revoke all on all functions in schema costwarden_px from public;
grant execute on function
    costwarden_px._enter(jsonb),
    costwarden_px._login_binding(text),
    costwarden_px._login_bindings(),
    costwarden_px._bindings_exist(),
    costwarden_px._login_unbind_elsewhere(jsonb, text, text),
    costwarden_px._pricing_state(text),
    costwarden_px._pricing_pin(jsonb, text, timestamptz),
    costwarden_px.catalogue_digest()
to costwarden_proxy;

-- SECURITY DEFINER functions run as costwarden_owner (SPEC §12), the owner of
-- the tables they read, never as the superuser who installed them.
do $owner$
begin
    if exists (select from pg_catalog.pg_roles where rolname = 'costwarden_owner') then
        alter function costwarden_px._login_binding(text) owner to costwarden_owner;
        alter function costwarden_px._login_bindings() owner to costwarden_owner;
        alter function costwarden_px.catalogue_digest() owner to costwarden_owner;
        alter function costwarden_px._pricing_state(text) owner to costwarden_owner;
        alter function costwarden_px._pricing_pin(jsonb, text, timestamptz) owner to costwarden_owner;
    end if;
end
$owner$;
