-- 0003: runtime settings with defaults and validation (SPEC §6).
--
-- _setting_defs is the catalogue of known keys: type, default, constraints.
-- _settings holds only the values an operator changed. fn_setting_get returns
-- the changed value or the default; fn_setting_set validates and audits.

create table costwarden._setting_defs (
    key text primary key,
    value_type text not null,        -- 'boolean' | 'integer' | 'numeric' | 'interval' | 'enum'
    default_value jsonb not null,
    allowed text[],                  -- for value_type 'enum': the allowed strings
    min_value numeric,               -- for integer / numeric: inclusive lower bound
    description text not null,
    constraint setting_defs_type_check
    check (value_type in ('boolean', 'integer', 'numeric', 'interval', 'enum'))
);

create table costwarden._settings (
    key text primary key references costwarden._setting_defs (key),
    value jsonb not null,
    updated_at timestamptz not null default now()
);

insert into costwarden._setting_defs (key, value_type, default_value, allowed, min_value, description) values
(
    'billing_enforce', 'boolean', 'true', null, null,
    'false: no limit refuses; failures are returned with "enforced": false (shadow everywhere)'
),
(
    'byok_require_reservation', 'boolean', 'true', null, null,
    'true: BYOK secrets are released only to a live reservation; false allows the legacy call'
),
(
    'unpriced_policy', 'enum', '"reject"', array['reject', 'free'], null,
    'reject: a model without a pricing snapshot in force is CW006; free: it costs 0, reported'
),
(
    'platform_proxy_configured', 'boolean', 'true', null, null,
    'false for self-hosted deployments without a platform proxy: default billing mode is byok'
),
(
    'default_ttl', 'interval', '"5 minutes"', null, null,
    'lifetime of a reservation when fn_cost_reserve gets no p_ttl'
),
(
    'expire_action', 'enum', '"commit_metered"', array['commit_metered', 'release'], null,
    'what expiry does with metered usage: commit it as approximate, or release the hold'
),
(
    'credit_rate_usd', 'numeric', '0.01', null, 0.000001,
    'USD value of one credit (display); an org setting of the same name overrides it'
),
(
    'circuit_failure_threshold', 'integer', '5', null, 1,
    'consecutive provider failures that open its circuit'
),
(
    'circuit_cooldown', 'interval', '"30 seconds"', null, null,
    'how long an open circuit refuses before admitting one probe'
),
(
    'anomaly_sigma', 'numeric', '4', null, 0,
    'standard deviations above the trailing hourly mean that make an anomaly'
),
(
    'anomaly_min_micros', 'integer', '1000000', null, 0,
    'an hour below this spend is never an anomaly'
),
(
    'anomaly_freeze', 'boolean', 'false', null, null,
    'true: an anomaly freezes the workspace until fn_anomaly_ack'
);

-- Internal: validate a value for a key; returns the normalised jsonb.
create function costwarden._setting_validate(p_key text, p_value jsonb)
returns jsonb
language plpgsql
stable
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
        return to_jsonb(btrim(p_value #>> '{}'));  -- as written ("10 minutes"), like the defaults
    when 'enum' then
        if jsonb_typeof(p_value) <> 'string' or not (p_value #>> '{}') = any (v_def.allowed) then
            perform costwarden._raise('CW004', format('p_value: setting %s must be one of %s', p_key, array_to_string(v_def.allowed, ', ')));
        end if;
        return p_value;
    end case;
end
$$;

-- Internal, hot path: the value in force (changed value or default). No validation.
create function costwarden._setting(p_key text)
returns jsonb
language sql
stable
parallel safe
as $$
    select coalesce(
        (select s.value from costwarden._settings as s where s.key = p_key),
        (select d.default_value from costwarden._setting_defs as d where d.key = p_key)
    )
$$;

create function costwarden.fn_setting_set(p_key text, p_value jsonb)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_value jsonb := costwarden._setting_validate(p_key, p_value);
    v_before jsonb := costwarden._setting(p_key);
begin
    insert into costwarden._settings as s (key, value)
    values (p_key, v_value)
    on conflict (key) do update set value = excluded.value, updated_at = now();
    perform costwarden._audit(
        'setting_set', null, jsonb_build_object('key', p_key),
        jsonb_build_object('value', v_before), jsonb_build_object('value', v_value)
    );
end
$$;

create function costwarden.fn_setting_get(p_key text)
returns jsonb
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
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
create function costwarden.fn_settings_list()
returns table (key text, value jsonb, default_value jsonb, value_type text, changed boolean, description text)
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
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
