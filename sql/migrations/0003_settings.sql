-- 0003: runtime settings with defaults and validation (SPEC §6).
--
-- _setting_defs is the catalogue of known keys: type, default, constraints.
-- _settings holds only the values an operator changed. The functions that
-- read and write them are in sql/functions/02_settings.sql.

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
