-- Runtime settings (SPEC §6): validation, get, set (audited), listing. The
-- hot-path reader costwarden._setting is in 00_core.sql.

-- Internal: validate a value for a key; returns the normalised jsonb.
create or replace function costwarden._setting_validate(p_key text, p_value jsonb)
returns jsonb
language plpgsql stable
as $$
declare
    v_def costwarden._setting_defs;
    v_num numeric;
    v_interval interval;
begin
    if p_key is null then
        perform costwarden._raise('CW004', 'p_key is required');
    end if;
    select * into v_def from costwarden._setting_defs where key = p_key;
    if not found then
        perform costwarden._raise('CW004', format('p_key: unknown setting %L', p_key));
    end if;
    if p_value is not null and jsonb_typeof(p_value) = 'null' and v_def.nullable then
        return p_value;                     -- JSON null: this setting's "no bound"
    end if;
    if p_value is null or jsonb_typeof(p_value) = 'null' then
        perform costwarden._raise('CW004', format('p_value is required for setting %s', p_key));
    end if;
    case v_def.value_type
    when 'boolean' then
        if jsonb_typeof(p_value) <> 'boolean' then
            perform costwarden._raise('CW004', format('p_value: setting %s must be a JSON boolean', p_key));
        end if;
        return p_value;
    when 'integer', 'numeric' then
        if jsonb_typeof(p_value) <> 'number' then
            perform costwarden._raise('CW004', format('p_value: setting %s must be a JSON number', p_key));
        end if;
        v_num := p_value::text::numeric;
        if v_def.value_type = 'integer' and (v_num <> trunc(v_num) or abs(v_num) > 9223372036854775807) then
            perform costwarden._raise('CW004', format('p_value: setting %s must be an integer', p_key));
        end if;
        if v_def.min_value is not null and v_num < v_def.min_value then
            perform costwarden._raise('CW004', format('p_value: setting %s must be >= %s', p_key, v_def.min_value));
        end if;
        return p_value;
    when 'interval' then
        if jsonb_typeof(p_value) <> 'string' then
            perform costwarden._raise('CW004', format('p_value: setting %s must be an interval string such as "5 minutes"', p_key));
        end if;
        begin
            v_interval := (p_value #>> '{}')::interval;
        exception when others then
            perform costwarden._raise('CW004', format('p_value: setting %s is not a valid interval', p_key));
        end;
        if v_interval <= interval '0' then
            perform costwarden._raise('CW004', format('p_value: setting %s must be a positive interval', p_key));
        end if;
        if v_interval > v_def.max_interval then
            perform costwarden._raise('CW004', format('p_value: setting %s must be at most %s', p_key, v_def.max_interval));
        end if;
        return to_jsonb(btrim(p_value #>> '{}'));  -- as written ("10 minutes"), like the defaults
    when 'enum' then
        if jsonb_typeof(p_value) <> 'string' or not (p_value #>> '{}') = any (v_def.allowed) then
            perform costwarden._raise('CW004', format('p_value: setting %s must be one of %s', p_key, array_to_string(v_def.allowed, ', ')));
        end if;
        return p_value;
    else
        -- not reached: setting_defs_type_check admits only the types above
        raise exception 'costwarden: setting %s has an unknown value_type %L', p_key, v_def.value_type;
    end case;
end
$$;

create or replace function costwarden.fn_setting_set(p_key text, p_value jsonb)
returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_value jsonb := costwarden._setting_validate(p_key, p_value);
    v_before jsonb := costwarden._setting(p_key);
begin
    perform costwarden._shared_guard();
    insert into costwarden._settings as s (key, value)
    values (p_key, v_value)
    on conflict (key) do update set value = excluded.value, updated_at = now();
    perform costwarden._audit(
        'setting_set', null, jsonb_build_object('key', p_key),
        jsonb_build_object('value', v_before), jsonb_build_object('value', v_value)
    );
end
$$;

create or replace function costwarden.fn_setting_get(p_key text)
returns jsonb
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
begin
    if p_key is null then
        perform costwarden._raise('CW004', 'p_key is required');
    end if;
    if not exists (select from costwarden._setting_defs where key = p_key) then
        perform costwarden._raise('CW004', format('p_key: unknown setting %L', p_key));
    end if;
    return costwarden._setting(p_key);
end
$$;

-- Every setting with its value in force, default and description (admin).
create or replace function costwarden.fn_settings_list()
returns table (key text, value jsonb, default_value jsonb, value_type text, changed boolean, description text)
language sql stable security definer set search_path = pg_catalog, pg_temp
as $$
    select d.key, coalesce(s.value, d.default_value), d.default_value, d.value_type,
           s.key is not null, d.description
    from costwarden._setting_defs as d
    left join costwarden._settings as s on s.key = d.key
    order by d.key
$$;

grant execute on function costwarden.fn_setting_set(text, jsonb) to costwarden_admin;
grant execute on function costwarden.fn_setting_get(text) to costwarden_admin, costwarden_service;
grant execute on function costwarden.fn_settings_list() to costwarden_admin;
