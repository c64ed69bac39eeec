-- Runtime settings (SPEC §6): defaults, set/get, validation (CW004), audit.
begin;
select plan(41);

-- Defaults.
select is(costwarden.fn_setting_get('billing_enforce'), 'true'::jsonb, 'billing_enforce defaults to true');
select is(costwarden.fn_setting_get('byok_require_reservation'), 'true'::jsonb,
    'byok_require_reservation defaults to true');
select is(costwarden.fn_setting_get('unpriced_policy'), '"reject"'::jsonb, 'unpriced_policy defaults to reject');
select is(costwarden.fn_setting_get('platform_proxy_configured'), 'true'::jsonb,
    'platform_proxy_configured defaults to true');
select is(costwarden.fn_setting_get('default_ttl'), '"5 minutes"'::jsonb, 'default_ttl defaults to 5 minutes');
select is(costwarden.fn_setting_get('expire_action'), '"commit_metered"'::jsonb,
    'expire_action defaults to commit_metered');
select is(costwarden.fn_setting_get('credit_rate_usd'), '0.01'::jsonb, 'credit_rate_usd defaults to 0.01');
select is(costwarden.fn_setting_get('circuit_failure_threshold'), '5'::jsonb,
    'circuit_failure_threshold defaults to 5');
select is(costwarden.fn_setting_get('circuit_cooldown'), '"30 seconds"'::jsonb,
    'circuit_cooldown defaults to 30 seconds');
select is(costwarden.fn_setting_get('anomaly_sigma'), '4'::jsonb, 'anomaly_sigma defaults to 4');
select is(costwarden.fn_setting_get('anomaly_min_micros'), '1000000'::jsonb,
    'anomaly_min_micros defaults to 1000000');
select is(costwarden.fn_setting_get('anomaly_freeze'), 'false'::jsonb, 'anomaly_freeze defaults to false');
select is_empty(
    $$ select key from costwarden.fn_settings_list() where changed or value <> default_value $$,
    'fn_settings_list: nothing changed on a fresh install'
);

-- Set / get.
select lives_ok($$ select costwarden.fn_setting_set('billing_enforce', 'false') $$, 'set a boolean');
select is(costwarden.fn_setting_get('billing_enforce'), 'false'::jsonb, 'get returns the new boolean');
select lives_ok($$ select costwarden.fn_setting_set(p_key => 'circuit_failure_threshold', p_value => '7') $$,
    'set an integer with named arguments');
select is(costwarden.fn_setting_get(p_key => 'circuit_failure_threshold'), '7'::jsonb, 'get returns 7');
select lives_ok($$ select costwarden.fn_setting_set('credit_rate_usd', '0.0125') $$, 'set a numeric');
select is(costwarden.fn_setting_get('credit_rate_usd'), '0.0125'::jsonb, 'the numeric stays exact');
select lives_ok($$ select costwarden.fn_setting_set('default_ttl', '"90 seconds"') $$, 'set an interval');
select is(costwarden.fn_setting_get('default_ttl'), '"90 seconds"'::jsonb, 'intervals are stored as written');
select lives_ok($$ select costwarden.fn_setting_set('unpriced_policy', '"free"') $$, 'set an enum');
select is(
    (select changed from costwarden.fn_settings_list() where key = 'unpriced_policy'), true,
    'fn_settings_list marks the changed setting'
);

-- Wrong types and unknown keys are CW004, and write nothing.
create temporary table settings_before on commit drop as
    select key, value from costwarden._settings;
create temporary table audit_before on commit drop as
    select count(*) as n from costwarden._audit_log;

select throws_ok($$ select costwarden.fn_setting_set('anomaly_freeze', '"true"') $$, 'CW004', null,
    'boolean: a string is CW004');
select throws_ok($$ select costwarden.fn_setting_set('anomaly_freeze', '1') $$, 'CW004', null,
    'boolean: a number is CW004');
select throws_ok($$ select costwarden.fn_setting_set('anomaly_min_micros', '1.5') $$, 'CW004', null,
    'integer: a fraction is CW004');
select throws_ok($$ select costwarden.fn_setting_set('anomaly_min_micros', '"5"') $$, 'CW004', null,
    'integer: a string is CW004');
select throws_ok($$ select costwarden.fn_setting_set('circuit_failure_threshold', '0') $$, 'CW004', null,
    'integer: below the minimum is CW004');
select throws_ok($$ select costwarden.fn_setting_set('anomaly_sigma', '"4"') $$, 'CW004', null,
    'numeric: a string is CW004');
select throws_ok($$ select costwarden.fn_setting_set('credit_rate_usd', '0') $$, 'CW004', null,
    'numeric: below the minimum is CW004');
select throws_ok($$ select costwarden.fn_setting_set('circuit_cooldown', '30') $$, 'CW004', null,
    'interval: a number is CW004');
select throws_ok($$ select costwarden.fn_setting_set('circuit_cooldown', '"soon"') $$, 'CW004', null,
    'interval: an unparsable string is CW004');
select throws_ok($$ select costwarden.fn_setting_set('circuit_cooldown', '"-5 seconds"') $$, 'CW004', null,
    'interval: a negative interval is CW004');
select throws_ok($$ select costwarden.fn_setting_set('expire_action', '"delete"') $$, 'CW004', null,
    'enum: a value outside the list is CW004');
select throws_ok($$ select costwarden.fn_setting_set('expire_action', 'null') $$, 'CW004',
    'p_value is required for setting expire_action', 'JSON null is CW004, naming p_value');
select throws_ok($$ select costwarden.fn_setting_set('expire_action', null) $$, 'CW004',
    'p_value is required for setting expire_action', 'SQL NULL is CW004, naming p_value');
select throws_ok($$ select costwarden.fn_setting_set('no_such_key', 'true') $$, 'CW004',
    'p_key: unknown setting ''no_such_key''', 'set: an unknown key is CW004, naming p_key');
select throws_ok($$ select costwarden.fn_setting_get('no_such_key') $$, 'CW004',
    'p_key: unknown setting ''no_such_key''', 'get: an unknown key is CW004');
select throws_ok($$ select costwarden.fn_setting_get(null) $$, 'CW004', 'p_key is required',
    'get: a NULL key is CW004');

select ok(
    (select count(*) from costwarden._audit_log) = (select n from audit_before)
    and not exists (select key, value from costwarden._settings
                    except select key, value from settings_before),
    'failed calls wrote nothing (settings, audit)'
);

-- Every change is audited with before and after.
select results_eq(
    $$ select target ->> 'key', before -> 'value', after -> 'value'
       from costwarden.fn_audit_list(p_action => 'setting_set') order by audit_id $$,
    $$ values ('billing_enforce', 'true'::jsonb, 'false'::jsonb),
              ('circuit_failure_threshold', '5'::jsonb, '7'::jsonb),
              ('credit_rate_usd', '0.01'::jsonb, '0.0125'::jsonb),
              ('default_ttl', '"5 minutes"'::jsonb, '"90 seconds"'::jsonb),
              ('unpriced_policy', '"reject"'::jsonb, '"free"'::jsonb) $$,
    'every setting change is in the audit trail with before and after'
);

select * from finish();
rollback;
