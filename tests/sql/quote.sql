-- fn_cost_quote (SPEC §3, §0, §5): exact arithmetic, every CW004 / CW006 case,
-- billing mode, credits.
begin;
select plan(49);

do $setup$
begin
    perform costwarden.fn_model_upsert('openai/gpt-4o', true);
    perform costwarden.fn_model_upsert('anthropic/claude-3-5-sonnet', false);
    perform costwarden.fn_model_upsert('openai/gpt-4o-realtime', false);
    perform costwarden.fn_model_upsert('tiny/model', true);
    perform costwarden.fn_model_upsert('acme-labs/unpriced-1', true);
    perform costwarden.fn_pricing_set('openai/gpt-4o',
        '{"input_tokens": 0.0000025, "cached_input_tokens": 0.00000125, "output_tokens": 0.00001}', '2024-01-01');
    perform costwarden.fn_pricing_set('anthropic/claude-3-5-sonnet',
        '{"input_tokens": 0.000003, "output_tokens": 0.000015}', '2024-01-01');
    perform costwarden.fn_pricing_set('openai/gpt-4o-realtime',
        '{"input_tokens": 0.000005, "output_tokens": 0.00002, "audio_seconds": 0.001}', '2024-01-01');
    perform costwarden.fn_pricing_set('tiny/model',
        '{"input_tokens": 0.0000001, "output_tokens": 0.0000001, "images": 0.000000000001}', '2024-01-01');
    perform costwarden.fn_org_upsert('acme');
    perform costwarden.fn_org_upsert('globex', '{"credit_rate_usd": 0.001}');
    perform costwarden.fn_workspace_upsert('acme', 'w-platform', 'openai/gpt-4o');
    perform costwarden.fn_workspace_upsert('acme', 'w-vendor', 'anthropic/claude-3-5-sonnet');
    perform costwarden.fn_workspace_upsert('acme', 'w-empty');
    perform costwarden.fn_workspace_upsert('globex', 'w', 'openai/gpt-4o');
end
$setup$;

create function pg_temp.amount(p_model text, p_usage jsonb) returns bigint
language sql as $$
    select amount_micros from costwarden.fn_cost_quote('acme', 'w-platform', p_model, p_usage)
$$;

-- Exact arithmetic: ceil(sum(units * price) * 1e6), rounded up once.
select is(pg_temp.amount('openai/gpt-4o', '{"input_tokens": 1000, "output_tokens": 500}'), 7500::bigint,
    '1000 in + 500 out = 2500 + 5000 micros');
select is(pg_temp.amount('openai/gpt-4o', '{"input_tokens": 3}'), 8::bigint, '7.5 micros round up to 8');
select is(pg_temp.amount('openai/gpt-4o', '{"input_tokens": 123456789, "cached_input_tokens": 7}'),
    308641982::bigint, '308641972.5 + 8.75 micros round up to 308641982');
select is(pg_temp.amount('tiny/model', '{"input_tokens": 3}'), 1::bigint,
    '3 x 0.1 micro = 0.3 -> 1 micro, not 3 (rounded once)');
select is(pg_temp.amount('tiny/model', '{"input_tokens": 1, "output_tokens": 1}'), 1::bigint,
    'rounding happens once across units');
select is(pg_temp.amount('tiny/model', '{"input_tokens": 10}'), 1::bigint, 'exactly 1 micro stays 1');
select is(pg_temp.amount('tiny/model', '{"input_tokens": 11}'), 2::bigint, '1.1 micros round up to 2');
select is(pg_temp.amount('tiny/model', '{"images": 1}'), 1::bigint, 'a 1e-12 USD price still costs 1 micro');
select is(pg_temp.amount('tiny/model', '{"images": 0}'), 0::bigint, 'nothing used costs 0');
select is(pg_temp.amount('openai/gpt-4o-realtime', '{"audio_seconds": 1.234567}'), 1235::bigint,
    'fractional audio seconds are exact (1234.567 -> 1235)');
select is(pg_temp.amount('openai/gpt-4o', '{"input_tokens": 4e2}'), 1000::bigint,
    'an integral exponent form is an integer');
select is(
    (select tokens from costwarden.fn_cost_quote('acme', 'w-platform', 'openai/gpt-4o-realtime',
        '{"input_tokens": 10, "output_tokens": 20, "audio_seconds": 30}')),
    30::bigint, 'tokens count the *_tokens units only');
select is(
    (select pricing_snapshot_id from costwarden.fn_cost_quote('acme', 'w-platform', 'openai/gpt-4o', '{}')),
    (select pricing_snapshot_id from costwarden.fn_pricing_list('openai/gpt-4o')),
    'the quote names the snapshot in force');

-- Every bad usage (SPEC §0) is CW004, naming p_usage.
create function pg_temp.q(p_usage jsonb) returns text
language sql as $$
    select format('select * from costwarden.fn_cost_quote(''acme'', ''w-platform'', ''openai/gpt-4o'', %L::jsonb)',
                  p_usage)
$$;
select throws_ok(pg_temp.q('{"tokens": 1}'), 'CW004', 'p_usage: unknown usage unit ''tokens''', 'unknown unit');
select throws_ok(pg_temp.q('{"input_tokens": -1}'), 'CW004', 'p_usage.input_tokens must not be negative',
    'negative value');
select throws_ok(pg_temp.q('{"input_tokens": "5"}'), 'CW004', 'p_usage.input_tokens must be a number',
    'a string');
select throws_ok(pg_temp.q('{"input_tokens": true}'), 'CW004', 'p_usage.input_tokens must be a number',
    'a boolean');
select throws_ok(pg_temp.q('{"input_tokens": [1]}'), 'CW004', 'p_usage.input_tokens must be a number',
    'an array');
select throws_ok(pg_temp.q('{"input_tokens": null}'), 'CW004', 'p_usage.input_tokens must be a number',
    'a JSON null value');
select throws_ok(pg_temp.q('{"input_tokens": 1.5}'), 'CW004', 'p_usage.input_tokens must be an integer',
    'a fraction for an integer unit');
select throws_ok(pg_temp.q('{"images": 1e-400}'), 'CW004', 'p_usage.images must be an integer',
    'a tiny fraction for an integer unit');
select throws_ok(pg_temp.q('{"input_tokens": 9223372036854775808}'), 'CW004',
    'p_usage.input_tokens is out of range', 'beyond bigint');
select throws_ok(pg_temp.q('{"audio_seconds": 1e400}'), 'CW004',
    'p_usage.audio_seconds is out of range', 'a huge number');
select throws_ok(pg_temp.q('{"input_tokens": 9223372036854775807, "output_tokens": 1}'), 'CW004',
    'p_usage: token count is out of range', 'a token count beyond bigint');
select throws_ok(pg_temp.q('{"input_tokens": 9223372036854775807}'), 'CW004', null,
    'a cost beyond bigint micros');
select throws_ok(pg_temp.q('null'), 'CW004', 'p_usage must be a JSON object of usage units', 'JSON null');
select throws_ok(pg_temp.q('[]'), 'CW004', 'p_usage must be a JSON object of usage units', 'an array');
select throws_ok(pg_temp.q('"input_tokens"'), 'CW004', 'p_usage must be a JSON object of usage units',
    'a string');
select throws_ok(pg_temp.q('42'), 'CW004', 'p_usage must be a JSON object of usage units', 'a number');
select throws_ok(
    $$ select * from costwarden.fn_cost_quote('acme', 'w-platform', 'openai/gpt-4o', null) $$,
    'CW004', 'p_usage must be a JSON object of usage units', 'SQL NULL usage');

-- Bad identifiers.
select throws_ok($$ select * from costwarden.fn_cost_quote(null, 'w-platform', 'openai/gpt-4o', '{}') $$,
    'CW004', 'p_org_id is required', 'NULL org');
select throws_ok($$ select * from costwarden.fn_cost_quote('acme', 'w-platform', null, '{}') $$,
    'CW004', 'p_model is required', 'NULL model');
select throws_ok($$ select * from costwarden.fn_cost_quote('acme', 'nope', 'openai/gpt-4o', '{}') $$,
    'CW002', 'p_workspace_id: unknown workspace ''nope'' in org ''acme''', 'unknown workspace');
select throws_ok($$ select * from costwarden.fn_cost_quote('acme', 'w-platform', 'x/y', '{}') $$,
    'CW002', 'p_model: unknown model ''x/y''', 'unknown model');

-- Unpriced (CW006), and unpriced_policy = 'free'.
select throws_ok(
    $$ select * from costwarden.fn_cost_quote('acme', 'w-platform', 'acme-labs/unpriced-1', '{"input_tokens": 1}') $$,
    'CW006', 'p_model: no pricing snapshot in force for model ''acme-labs/unpriced-1''',
    'a model without a snapshot is CW006');
select throws_ok(
    $$ select * from costwarden.fn_cost_quote('acme', 'w-platform', 'openai/gpt-4o', '{"images": 2}') $$,
    'CW006', null, 'a used unit without a price is CW006');
select is(pg_temp.amount('openai/gpt-4o', '{"images": 0, "input_tokens": 2}'), 5::bigint,
    'an unpriced unit that was not used is fine');
do $$ begin perform costwarden.fn_setting_set('unpriced_policy', '"free"'); end $$;
select is(pg_temp.amount('acme-labs/unpriced-1', '{"input_tokens": 1000000}'), 0::bigint,
    'free: an unpriced model costs 0');
select is(
    (select pricing_snapshot_id from costwarden.fn_cost_quote('acme', 'w-platform', 'acme-labs/unpriced-1', '{}')),
    null, 'free: no snapshot');
select is(pg_temp.amount('openai/gpt-4o', '{"images": 2, "input_tokens": 1000}'), 2500::bigint,
    'free: an unpriced unit costs 0, the priced ones are charged');
do $$ begin perform costwarden.fn_setting_set('unpriced_policy', '"reject"'); end $$;

-- Billing mode (SPEC §5).
create function pg_temp.mode(p_ws text) returns text
language sql as $$
    select billing_mode || ' ' || (select source from costwarden.fn_workspace_billing_mode('acme', p_ws))
    from costwarden.fn_cost_quote('acme', p_ws, 'openai/gpt-4o', '{}')
$$;
select is(pg_temp.mode('w-platform'), 'platform_managed model', 'rule 2: platform-servable model');
select is(pg_temp.mode('w-vendor'), 'byok model', 'rule 3: vendor model');
select is(pg_temp.mode('w-empty'), 'platform_managed deploy_default', 'rule 4: no model, proxy configured');
do $$ begin perform costwarden.fn_setting_set('platform_proxy_configured', 'false'); end $$;
select is(pg_temp.mode('w-platform'), 'byok model', 'rule 2 without a proxy: byok');
select is(pg_temp.mode('w-empty'), 'byok deploy_default', 'rule 4 without a proxy: byok');
do $$ begin perform costwarden.fn_workspace_upsert('acme', 'w-vendor', null, 'platform_managed'); end $$;
do $$ begin perform costwarden.fn_workspace_upsert('acme', 'w-platform', null, 'disabled'); end $$;
select is(pg_temp.mode('w-vendor') || ', ' || pg_temp.mode('w-platform'),
    'platform_managed override, disabled override', 'rule 1: an override wins');
do $$ begin perform costwarden.fn_setting_set('platform_proxy_configured', 'true'); end $$;

-- Credits: amount / 1e6 / credit_rate_usd (the org's, else the runtime setting).
select is((select credits from costwarden.fn_cost_quote('acme', 'w-vendor', 'openai/gpt-4o',
          '{"input_tokens": 1000, "output_tokens": 500}')), 0.75, 'acme: 7500 micros at 0.01 USD = 0.75');
select is((select credits from costwarden.fn_cost_quote('globex', 'w', 'openai/gpt-4o',
          '{"input_tokens": 1000, "output_tokens": 500}')), 7.5, 'globex: its own rate 0.001 = 7.5');
do $$ begin perform costwarden.fn_setting_set('credit_rate_usd', '0.03'); end $$;
select is((select credits from costwarden.fn_cost_quote('acme', 'w-vendor', 'openai/gpt-4o',
          '{"input_tokens": 1000, "output_tokens": 500}')), 0.25, 'acme follows the runtime setting');

select * from finish();
rollback;
