-- 0004: tenancy (orgs, workspaces, users, groups, API keys) and the model
-- catalogue with immutable, dated pricing snapshots (SPEC §1).

create table costwarden._orgs (
    org_id text primary key,
    settings jsonb not null default '{}',  -- credit_rate_usd, timezone, group_resolution
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint orgs_settings_object check (jsonb_typeof(settings) = 'object')
);

create table costwarden._models (
    model text primary key,                -- 'provider/model'
    provider text not null,                -- the part before the first '/'
    platform_servable boolean not null default false,  -- the platform proxy can serve it
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint models_provider_prefix check (model like provider || '/%')
);

create table costwarden._workspaces (
    org_id text not null references costwarden._orgs (org_id),
    workspace_id text not null,
    model text references costwarden._models (model),   -- the workspace's chosen model
    billing_override text,                 -- null: derive the mode; else it wins (SPEC §5 rule 1)
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (org_id, workspace_id),
    constraint workspaces_override_check
        check (billing_override in ('platform_managed', 'byok', 'disabled'))
);

create table costwarden._users (
    org_id text not null references costwarden._orgs (org_id),
    user_id text not null,
    created_at timestamptz not null default now(),
    primary key (org_id, user_id)
);

create table costwarden._user_groups (
    org_id text not null,
    user_id text not null,
    group_id text not null,
    primary key (org_id, user_id, group_id),
    foreign key (org_id, user_id) references costwarden._users (org_id, user_id)
);

create index _user_groups_group on costwarden._user_groups (org_id, group_id);

create table costwarden._keys (
    org_id text not null references costwarden._orgs (org_id),
    key_id text not null,                  -- an API key / allocation of the host application
    workspace_id text,                     -- optional: the workspace the key belongs to
    user_id text,                          -- optional: the user the key belongs to
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (org_id, key_id),
    foreign key (org_id, workspace_id) references costwarden._workspaces (org_id, workspace_id),
    foreign key (org_id, user_id) references costwarden._users (org_id, user_id)
);

-- Pools: one row per (org, kind, scope) that spend can be counted against.
-- held_* are the live reservations' holds; committed spend lives in
-- _spend_buckets (see 0006). A pool row is also the lock that serialises the
-- admission decisions of its scope (lock order: org, workspace, key, user).
create table costwarden._pools (
    pool_id bigint generated always as identity primary key,
    org_id text not null references costwarden._orgs (org_id),
    kind text not null,                    -- 'org' | 'workspace' | 'key' | 'user'
    scope_id text not null,                -- '' for the org pool
    held_micros bigint not null default 0,
    held_tokens bigint not null default 0,
    constraint pools_kind_check check (kind in ('org', 'workspace', 'key', 'user')),
    constraint pools_held_nonnegative check (held_micros >= 0 and held_tokens >= 0),
    unique (org_id, kind, scope_id)
) with (fillfactor = 50);  -- held_* change on every reserve/commit: leave room for HOT updates

comment on table costwarden._pools is
'Spend pools (org, workspace, key, user) with the sum of their live holds; row lock = admission lock.';

create table costwarden._pricing_snapshots (
    snapshot_id bigint generated always as identity primary key,
    model text not null references costwarden._models (model),
    prices jsonb not null,                 -- {"input_tokens": 0.000003, ...} exact USD per unit
    effective_from timestamptz not null,
    created_at timestamptz not null default now(),
    unique (model, effective_from),
    constraint pricing_prices_object check (jsonb_typeof(prices) = 'object')
);

comment on table costwarden._pricing_snapshots is
'Immutable pricing snapshots; the one in force at t is the latest with effective_from <= t.';

create trigger _pricing_snapshots_immutable
before update or delete on costwarden._pricing_snapshots
for each row execute function costwarden._forbid_mutation();

create trigger _pricing_snapshots_no_truncate
before truncate on costwarden._pricing_snapshots
for each statement execute function costwarden._forbid_mutation();

-- Internal: existence checks raising CW002 with the argument's name.
create function costwarden._require_org(p_org_id text)
returns text
language plpgsql
stable
as $$
begin
    if p_org_id is null or p_org_id = '' then
        perform costwarden._raise('CW004', 'p_org_id is required');
    end if;
    if not exists (select from costwarden._orgs where org_id = p_org_id) then
        perform costwarden._raise('CW002', format('p_org_id: unknown org %L', p_org_id));
    end if;
    return p_org_id;
end
$$;

create function costwarden._require_workspace(p_org_id text, p_workspace_id text)
returns costwarden._workspaces
language plpgsql
stable
as $$
declare
    v_ws costwarden._workspaces;
begin
    perform costwarden._require_org(p_org_id);
    if p_workspace_id is null or p_workspace_id = '' then
        perform costwarden._raise('CW004', 'p_workspace_id is required');
    end if;
    select * into v_ws from costwarden._workspaces where org_id = p_org_id and workspace_id = p_workspace_id;
    if not found then
        perform costwarden._raise('CW002', format('p_workspace_id: unknown workspace %L in org %L', p_workspace_id, p_org_id));
    end if;
    return v_ws;
end
$$;

create function costwarden._require_model(p_model text, p_arg text default 'p_model')
returns costwarden._models
language plpgsql
stable
as $$
declare
    v_model costwarden._models;
begin
    if p_model is null or p_model = '' then
        perform costwarden._raise('CW004', format('%s is required', p_arg));
    end if;
    select * into v_model from costwarden._models where model = p_model;
    if not found then
        perform costwarden._raise('CW002', format('%s: unknown model %L', p_arg, p_model));
    end if;
    return v_model;
end
$$;

-- Internal: check the user and key of a call context (SPEC §2) and return
-- the effective user: the given one, else the key's owner. An unknown user or
-- key is CW002; a key of another workspace or another user is CW004.
create function costwarden._context_user(
    p_org_id text, p_workspace_id text, p_user_id text, p_key_id text
)
returns text
language plpgsql
stable
as $$
declare
    v_key costwarden._keys;
begin
    if p_user_id is not null
       and not exists (select from costwarden._users as u where u.org_id = p_org_id and u.user_id = p_user_id) then
        perform costwarden._raise('CW002', format('p_user_id: unknown user %L in org %L', p_user_id, p_org_id));
    end if;
    if p_key_id is null then
        return p_user_id;
    end if;
    select * into v_key from costwarden._keys as k where k.org_id = p_org_id and k.key_id = p_key_id;
    if not found then
        perform costwarden._raise('CW002', format('p_key_id: unknown key %L in org %L', p_key_id, p_org_id));
    end if;
    if v_key.workspace_id is not null and v_key.workspace_id <> p_workspace_id then
        perform costwarden._raise('CW004', format('p_key_id: key %L belongs to workspace %L',
                                                  p_key_id, v_key.workspace_id));
    end if;
    if v_key.user_id is not null and p_user_id is not null and v_key.user_id <> p_user_id then
        perform costwarden._raise('CW004', format('p_key_id: key %L belongs to another user', p_key_id));
    end if;
    return coalesce(p_user_id, v_key.user_id);
end
$$;

-- Internal: ensure a pool row exists (idempotent).
create function costwarden._pool_ensure(p_org_id text, p_kind text, p_scope_id text)
returns void
language sql
as $$
    insert into costwarden._pools (org_id, kind, scope_id)
    values (p_org_id, p_kind, coalesce(p_scope_id, ''))
    on conflict (org_id, kind, scope_id) do nothing
$$;

-- Internal: validate org settings and merge them into the current ones
-- (a key given as JSON null is removed).
create function costwarden._org_settings_merge(p_current jsonb, p_settings jsonb)
returns jsonb
language plpgsql
stable
as $$
declare
    v_key text;
    v_value jsonb;
    v_result jsonb := coalesce(p_current, '{}');
begin
    if p_settings is null or jsonb_typeof(p_settings) <> 'object' then
        perform costwarden._raise('CW004', 'p_settings must be a JSON object');
    end if;
    for v_key, v_value in select * from jsonb_each(p_settings) loop
        if jsonb_typeof(v_value) = 'null' then
            v_result := v_result - v_key;
            continue;
        end if;
        case v_key
        when 'credit_rate_usd' then
            if jsonb_typeof(v_value) <> 'number' or (v_value::text)::numeric <= 0 then
                perform costwarden._raise('CW004', 'p_settings.credit_rate_usd must be a positive number');
            end if;
        when 'timezone' then
            if jsonb_typeof(v_value) <> 'string' then
                perform costwarden._raise('CW004', 'p_settings.timezone must be a time zone name');
            end if;
            begin
                perform now() at time zone (v_value #>> '{}');
            exception when others then
                perform costwarden._raise('CW004', format('p_settings.timezone: unknown time zone %s', v_value));
            end;
        when 'group_resolution' then
            if v_value not in ('"min"'::jsonb, '"max"'::jsonb) then
                perform costwarden._raise('CW004', 'p_settings.group_resolution must be "min" or "max"');
            end if;
        else
            perform costwarden._raise('CW004', format('p_settings: unknown org setting %L', v_key));
        end case;
        v_result := v_result || jsonb_build_object(v_key, v_value);
    end loop;
    return v_result;
end
$$;

create function costwarden.fn_org_upsert(p_org_id text, p_settings jsonb default '{}')
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_before jsonb;
    v_after jsonb;
begin
    perform costwarden._require_text(p_org_id, 'p_org_id');
    select settings into v_before from costwarden._orgs where org_id = p_org_id for no key update;
    v_after := costwarden._org_settings_merge(v_before, p_settings);
    insert into costwarden._orgs as o (org_id, settings)
    values (p_org_id, v_after)
    on conflict (org_id) do update set settings = excluded.settings, updated_at = now();
    perform costwarden._pool_ensure(p_org_id, 'org', '');
    perform costwarden._audit(
        'org_upsert', p_org_id, jsonb_build_object('org_id', p_org_id),
        case when v_before is null then null else jsonb_build_object('settings', v_before) end,
        jsonb_build_object('settings', v_after)
    );
end
$$;

create function costwarden.fn_workspace_upsert(
    p_org_id text,
    p_workspace_id text,
    p_model text default null,
    p_billing_override text default null
)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_before costwarden._workspaces;
    v_after costwarden._workspaces;
begin
    perform costwarden._require_org(p_org_id);
    perform costwarden._require_text(p_workspace_id, 'p_workspace_id');
    if p_model is not null then
        perform costwarden._require_model(p_model);
    end if;
    if p_billing_override is not null
       and p_billing_override not in ('platform_managed', 'byok', 'disabled', 'none') then
        perform costwarden._raise('CW004',
            'p_billing_override must be platform_managed, byok, disabled or none');
    end if;
    select * into v_before from costwarden._workspaces
    where org_id = p_org_id and workspace_id = p_workspace_id for no key update;

    insert into costwarden._workspaces as w (org_id, workspace_id, model, billing_override)
    values (p_org_id, p_workspace_id, p_model, nullif(p_billing_override, 'none'))
    on conflict (org_id, workspace_id) do update set
        model = coalesce(excluded.model, w.model),
        billing_override = case
            when p_billing_override is null then w.billing_override
            else excluded.billing_override
        end,
        updated_at = now()
    returning * into v_after;
    perform costwarden._pool_ensure(p_org_id, 'workspace', p_workspace_id);
    perform costwarden._audit(
        'workspace_upsert', p_org_id,
        jsonb_build_object('org_id', p_org_id, 'workspace_id', p_workspace_id),
        case when v_before.workspace_id is null then null
             else jsonb_build_object('model', v_before.model, 'billing_override', v_before.billing_override) end,
        jsonb_build_object('model', v_after.model, 'billing_override', v_after.billing_override)
    );
end
$$;

create function costwarden.fn_workspace_seed_model(p_org_id text, p_workspace_id text, p_model text)
returns boolean
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_set boolean;
begin
    perform costwarden._require_workspace(p_org_id, p_workspace_id);
    perform costwarden._require_model(p_model);
    update costwarden._workspaces
    set model = p_model, updated_at = now()
    where org_id = p_org_id and workspace_id = p_workspace_id and model is null;
    v_set := found;
    if v_set then
        perform costwarden._audit(
            'workspace_seed_model', p_org_id,
            jsonb_build_object('org_id', p_org_id, 'workspace_id', p_workspace_id),
            jsonb_build_object('model', null), jsonb_build_object('model', p_model)
        );
    end if;
    return v_set;
end
$$;

create function costwarden.fn_user_upsert(p_org_id text, p_user_id text, p_groups text[] default null)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_group text;
    v_before text[];
    v_existed boolean;
begin
    perform costwarden._require_org(p_org_id);
    perform costwarden._require_text(p_user_id, 'p_user_id');
    if p_groups is not null then
        if array_ndims(p_groups) > 1 then
            perform costwarden._raise('CW004', 'p_groups must be a one-dimensional array');
        end if;
        foreach v_group in array p_groups loop
            perform costwarden._require_text(v_group, 'p_groups[]');
        end loop;
    end if;
    v_existed := exists (select from costwarden._users where org_id = p_org_id and user_id = p_user_id);
    select coalesce(array_agg(group_id order by group_id), '{}') into v_before
    from costwarden._user_groups where org_id = p_org_id and user_id = p_user_id;

    insert into costwarden._users (org_id, user_id) values (p_org_id, p_user_id)
    on conflict do nothing;
    perform costwarden._pool_ensure(p_org_id, 'user', p_user_id);
    if p_groups is not null then
        delete from costwarden._user_groups where org_id = p_org_id and user_id = p_user_id;
        insert into costwarden._user_groups (org_id, user_id, group_id)
        select distinct p_org_id, p_user_id, g from unnest(p_groups) as g;
    end if;
    perform costwarden._audit(
        'user_upsert', p_org_id, jsonb_build_object('org_id', p_org_id, 'user_id', p_user_id),
        case when v_existed then jsonb_build_object('groups', v_before) end,
        jsonb_build_object('groups', (
            select coalesce(array_agg(group_id order by group_id), '{}')
            from costwarden._user_groups where org_id = p_org_id and user_id = p_user_id
        ))
    );
end
$$;

create function costwarden.fn_key_upsert(
    p_org_id text, p_key_id text, p_workspace_id text default null, p_user_id text default null
)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_before costwarden._keys;
begin
    perform costwarden._require_org(p_org_id);
    perform costwarden._require_text(p_key_id, 'p_key_id');
    if p_workspace_id is not null then
        perform costwarden._require_workspace(p_org_id, p_workspace_id);
    end if;
    if p_user_id is not null
       and not exists (select from costwarden._users where org_id = p_org_id and user_id = p_user_id) then
        perform costwarden._raise('CW002', format('p_user_id: unknown user %L in org %L', p_user_id, p_org_id));
    end if;
    select * into v_before from costwarden._keys where org_id = p_org_id and key_id = p_key_id for no key update;
    insert into costwarden._keys as k (org_id, key_id, workspace_id, user_id)
    values (p_org_id, p_key_id, p_workspace_id, p_user_id)
    on conflict (org_id, key_id) do update set
        workspace_id = excluded.workspace_id, user_id = excluded.user_id, updated_at = now();
    perform costwarden._pool_ensure(p_org_id, 'key', p_key_id);
    perform costwarden._audit(
        'key_upsert', p_org_id, jsonb_build_object('org_id', p_org_id, 'key_id', p_key_id),
        case when v_before.key_id is not null then
            jsonb_build_object('workspace_id', v_before.workspace_id, 'user_id', v_before.user_id) end,
        jsonb_build_object('workspace_id', p_workspace_id, 'user_id', p_user_id)
    );
end
$$;

create function costwarden.fn_model_upsert(p_model text, p_platform_servable boolean default false)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_before costwarden._models;
begin
    perform costwarden._require_text(p_model, 'p_model');
    if p_model !~ '^[A-Za-z0-9][A-Za-z0-9_.-]*/[^[:space:]]+$' then
        perform costwarden._raise('CW004', format('p_model must look like provider/model, got %L', p_model));
    end if;
    if p_platform_servable is null then
        perform costwarden._raise('CW004', 'p_platform_servable is required');
    end if;
    select * into v_before from costwarden._models where model = p_model for no key update;
    insert into costwarden._models as m (model, provider, platform_servable)
    values (p_model, split_part(p_model, '/', 1), p_platform_servable)
    on conflict (model) do update set platform_servable = excluded.platform_servable, updated_at = now();
    perform costwarden._audit(
        'model_upsert', null, jsonb_build_object('model', p_model),
        case when v_before.model is not null then
            jsonb_build_object('platform_servable', v_before.platform_servable) end,
        jsonb_build_object('platform_servable', p_platform_servable)
    );
end
$$;

grant execute on function
    costwarden.fn_org_upsert(text, jsonb),
    costwarden.fn_workspace_upsert(text, text, text, text),
    costwarden.fn_workspace_seed_model(text, text, text),
    costwarden.fn_user_upsert(text, text, text[]),
    costwarden.fn_key_upsert(text, text, text, text),
    costwarden.fn_model_upsert(text, boolean)
to costwarden_admin;
