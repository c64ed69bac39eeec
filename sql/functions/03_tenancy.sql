-- Tenancy and the model catalogue (SPEC §1): orgs, workspaces, users and
-- groups, API keys, models; the pricing snapshots' immutability triggers.

select costwarden._append_only('costwarden._pricing_snapshots', '_pricing_snapshots_immutable', 'update or delete');
-- an org is never deleted: its reservations and ledger entries name it without
-- a foreign key (migration 0022; docs/internals.md, "Keys to the org")
select costwarden._append_only('costwarden._orgs', '_orgs_no_delete', 'delete');

-- Internal: validate org settings and merge them into the current ones
-- (a key given as JSON null is removed).
create or replace function costwarden._org_settings_merge(p_current jsonb, p_settings jsonb)
returns jsonb
language plpgsql stable
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
        when 'user_limits_enabled' then
            if jsonb_typeof(v_value) <> 'boolean' then
                perform costwarden._raise('CW004', 'p_settings.user_limits_enabled must be true or false');
            end if;
        else
            perform costwarden._raise('CW004', format('p_settings: unknown org setting %L', v_key));
        end case;
        v_result := v_result || jsonb_build_object(v_key, v_value);
    end loop;
    return v_result;
end
$$;

create or replace function costwarden.fn_org_upsert(p_org_id text, p_settings jsonb default '{}')
returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_before jsonb;
    v_after jsonb;
begin
    perform costwarden._tenant_guard(p_org_id);
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

create or replace function costwarden.fn_workspace_upsert(
    p_org_id text,
    p_workspace_id text,
    p_model text default null,
    p_billing_override text default null
)
returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_before costwarden._workspaces;
    v_after costwarden._workspaces;
begin
    perform costwarden._tenant_guard(p_org_id);
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

create or replace function costwarden.fn_workspace_seed_model(p_org_id text, p_workspace_id text, p_model text)
returns boolean
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_set boolean;
begin
    perform costwarden._tenant_guard(p_org_id);
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

create or replace function costwarden.fn_user_upsert(p_org_id text, p_user_id text, p_groups text[] default null)
returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_group text;
    v_before text[];
    v_existed boolean;
begin
    perform costwarden._tenant_guard(p_org_id);
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

create or replace function costwarden.fn_key_upsert(
    p_org_id text, p_key_id text, p_workspace_id text default null, p_user_id text default null
)
returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_before costwarden._keys;
begin
    perform costwarden._tenant_guard(p_org_id);
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

create or replace function costwarden.fn_model_upsert(p_model text, p_platform_servable boolean default false)
returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_before costwarden._models;
begin
    perform costwarden._shared_guard();
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
