-- Tenancy and catalogue (SPEC §1): orgs, workspaces, users, keys, models, pricing.
begin;
select plan(58);

-- Models.
select lives_ok($$ select costwarden.fn_model_upsert('openai/gpt-4o', true) $$, 'a platform-servable model');
select lives_ok($$ select costwarden.fn_model_upsert(p_model => 'anthropic/claude-3-5-sonnet') $$,
    'a vendor model (platform_servable defaults to false)');
select is(
    (select array_agg(format('%s %s %s', model, provider, platform_servable) order by model)
     from costwarden.fn_pricing_list()),
    array['anthropic/claude-3-5-sonnet anthropic f', 'openai/gpt-4o openai t'],
    'the catalogue lists both, provider derived from the name'
);
select throws_ok($$ select costwarden.fn_model_upsert('gpt-4o') $$, 'CW004',
    'p_model must look like provider/model, got ''gpt-4o''', 'a model without a provider is CW004');
select throws_ok($$ select costwarden.fn_model_upsert('openai/gpt 4o') $$, 'CW004', null,
    'a model with blanks is CW004');
select throws_ok($$ select costwarden.fn_model_upsert(null) $$, 'CW004', 'p_model is required',
    'a NULL model is CW004');
select throws_ok($$ select costwarden.fn_model_upsert('a/b', null) $$, 'CW004',
    'p_platform_servable is required', 'a NULL platform_servable is CW004');

-- Orgs.
select lives_ok($$ select costwarden.fn_org_upsert('acme') $$, 'an org with default settings');
select lives_ok(
    $$ select costwarden.fn_org_upsert('globex',
           '{"timezone": "Europe/Paris", "credit_rate_usd": 0.001, "group_resolution": "max"}') $$,
    'an org with every setting');
select throws_ok($$ select costwarden.fn_org_upsert(null) $$, 'CW004', 'p_org_id is required',
    'a NULL org id is CW004');
select throws_ok($$ select costwarden.fn_org_upsert('') $$, 'CW004', null, 'an empty org id is CW004');
select throws_ok($$ select costwarden.fn_org_upsert('acme', '{"timezone": "Mars/Olympus"}') $$,
    'CW004', null, 'an unknown time zone is CW004');
select throws_ok($$ select costwarden.fn_org_upsert('acme', '{"credit_rate_usd": 0}') $$,
    'CW004', null, 'a credit rate of 0 is CW004');
select throws_ok($$ select costwarden.fn_org_upsert('acme', '{"group_resolution": "avg"}') $$,
    'CW004', null, 'an unknown group_resolution is CW004');
select throws_ok($$ select costwarden.fn_org_upsert('acme', '{"colour": "red"}') $$,
    'CW004', 'p_settings: unknown org setting ''colour''', 'an unknown org setting is CW004');
select throws_ok($$ select costwarden.fn_org_upsert('acme', '[]') $$,
    'CW004', 'p_settings must be a JSON object', 'settings that are not an object are CW004');
select is((select settings from costwarden._orgs where org_id = 'acme'), '{}'::jsonb,
    'the refused updates left the org as it was');

-- Workspaces.
select lives_ok($$ select costwarden.fn_workspace_upsert('acme', 'w1', 'openai/gpt-4o') $$,
    'a workspace with a model');
select lives_ok($$ select costwarden.fn_workspace_upsert('acme', 'w1', null, 'byok') $$,
    'an override; a NULL model keeps the current one');
select is((select format('%s %s', model, billing_override) from costwarden._workspaces
           where workspace_id = 'w1'), 'openai/gpt-4o byok', 'model kept, override set');
select lives_ok($$ select costwarden.fn_workspace_upsert('acme', 'w1', 'anthropic/claude-3-5-sonnet') $$,
    'a new model; a NULL override keeps the current one');
select is((select format('%s %s', model, billing_override) from costwarden._workspaces
           where workspace_id = 'w1'), 'anthropic/claude-3-5-sonnet byok', 'model changed, override kept');
select lives_ok($$ select costwarden.fn_workspace_upsert('acme', 'w1', p_billing_override => 'none') $$,
    '''none'' clears the override');
select is((select billing_override from costwarden._workspaces where workspace_id = 'w1'), null,
    'override cleared');
select throws_ok($$ select costwarden.fn_workspace_upsert('nope', 'w1') $$, 'CW002',
    'p_org_id: unknown org ''nope''', 'an unknown org is CW002');
select throws_ok($$ select costwarden.fn_workspace_upsert('acme', 'w2', 'x/unknown') $$, 'CW002',
    'p_model: unknown model ''x/unknown''', 'an unknown model is CW002');
select throws_ok($$ select costwarden.fn_workspace_upsert('acme', 'w2', null, 'free') $$, 'CW004', null,
    'an unknown override is CW004');
select throws_ok($$ select costwarden.fn_workspace_upsert('acme', null) $$, 'CW004',
    'p_workspace_id is required', 'a NULL workspace id is CW004');
select ok(not exists (select from costwarden._workspaces where workspace_id = 'w2'),
    'refused calls created no workspace');

-- Seeding a model.
select lives_ok($$ select costwarden.fn_workspace_upsert('acme', 'w3') $$, 'a workspace without a model');
select is(costwarden.fn_workspace_seed_model('acme', 'w3', 'openai/gpt-4o'), true,
    'seed_model fills an empty model');
select is(costwarden.fn_workspace_seed_model('acme', 'w3', 'anthropic/claude-3-5-sonnet'), false,
    'seed_model never overwrites a chosen model');
select is((select model from costwarden._workspaces where workspace_id = 'w3'), 'openai/gpt-4o',
    'the seeded model stays');
select throws_ok($$ select costwarden.fn_workspace_seed_model('acme', 'nope', 'openai/gpt-4o') $$,
    'CW002', null, 'seed_model on an unknown workspace is CW002');

-- Users and groups.
select lives_ok($$ select costwarden.fn_user_upsert('acme', 'alice', array['eng', 'ops']) $$,
    'a user with groups');
select lives_ok($$ select costwarden.fn_user_upsert('acme', 'alice', array['sales']) $$,
    'groups given again replace the membership');
select is((select array_agg(group_id order by group_id) from costwarden._user_groups
           where user_id = 'alice'), array['sales'], 'membership replaced');
select lives_ok($$ select costwarden.fn_user_upsert('acme', 'alice') $$, 'NULL groups keep the membership');
select is((select array_agg(group_id order by group_id) from costwarden._user_groups
           where user_id = 'alice'), array['sales'], 'membership kept');
select throws_ok($$ select costwarden.fn_user_upsert('acme', 'alice', array['ok', null]) $$, 'CW004',
    'p_groups[] is required', 'a NULL group is CW004');

-- Keys.
select lives_ok($$ select costwarden.fn_key_upsert('acme', 'k1', 'w1', 'alice') $$,
    'a key bound to a workspace and a user');
select throws_ok($$ select costwarden.fn_key_upsert('acme', 'k2', 'nope') $$, 'CW002',
    'p_workspace_id: unknown workspace ''nope'' in org ''acme''', 'a key on an unknown workspace is CW002');
select throws_ok($$ select costwarden.fn_key_upsert('acme', 'k2', null, 'bob') $$, 'CW002',
    'p_user_id: unknown user ''bob'' in org ''acme''', 'a key of an unknown user is CW002');
select throws_ok($$ select costwarden.fn_key_upsert('globex', 'k2', 'w1') $$, 'CW002', null,
    'another org''s workspace is unknown');

-- Pricing snapshots.
select ok(costwarden.fn_pricing_set('openai/gpt-4o', '{"input_tokens": 0.0000025, "output_tokens": 0.00001}',
          '2024-01-01') > 0, 'a pricing snapshot');
select throws_ok(
    $$ select costwarden.fn_pricing_set('openai/gpt-4o', '{"input_tokens": 1}', '2024-01-01') $$,
    'CW004', null, 'a second snapshot with the same effective_from is CW004');
select throws_ok(
    $$ select costwarden.fn_pricing_set('openai/gpt-4o', '{"input_tokens": -1}', '2024-02-01') $$,
    'CW004', null, 'a negative price is CW004');
select throws_ok(
    $$ select costwarden.fn_pricing_set('openai/gpt-4o', '{"words": 1}', '2024-02-01') $$,
    'CW004', 'p_prices: unknown usage unit ''words''', 'an unknown unit is CW004');
select lives_ok(
    $$ select costwarden.fn_pricing_set('openai/gpt-4o', '{"input_tokens": 1}', now() + interval '1 day') $$,
    'a snapshot effective tomorrow');
select is(
    (select prices from costwarden.fn_pricing_list('openai/gpt-4o')),
    '{"input_tokens": 0.0000025, "output_tokens": 0.00001}'::jsonb,
    'the snapshot in force is the latest with effective_from <= now, not the future one'
);
select throws_ok($$ update costwarden._pricing_snapshots set prices = '{"input_tokens": 0}' $$, 'CW001',
    null, 'UPDATE of a pricing snapshot is CW001, even for the superuser');
select throws_ok($$ delete from costwarden._pricing_snapshots $$, 'CW001', null,
    'DELETE of a pricing snapshot is CW001, even for the superuser');

-- An org is never deleted: its reservations and ledger entries name it without
-- a foreign key (migration 0022).
select throws_ok($$ delete from costwarden._orgs where org_id = 'globex' $$, 'CW001',
    'costwarden._orgs is append-only: delete is not allowed', 'DELETE of an org is CW001, even for the superuser');
select throws_ok($$ truncate costwarden._orgs cascade $$, 'CW001', null, 'TRUNCATE of the orgs is CW001');
select hasnt_fk('costwarden', '_reservations', 'a reservation names its org without a foreign key');
select hasnt_fk('costwarden', '_ledger', 'a ledger entry names its org without a foreign key');
select col_is_fk('costwarden', '_workspaces', 'org_id', 'a workspace keeps its key to the org');
select col_is_fk('costwarden', '_ledger_heads', 'org_id', 'a chain head keeps its key to the org');

select * from finish();
rollback;
