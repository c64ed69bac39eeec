-- BYOK and billing mode (SPEC §5): the billing-mode rules, the key-write guard
-- (every cell, with and without the platform proxy), envelope encryption, bad input,
-- the release bound to a live byok reservation, fail-closed reserve, revoke, KEK
-- rotation, the audit trail of resolves, roles, and the migration's log defence.
begin;
select plan(60);

do $setup$
begin
    perform costwarden.fn_model_upsert('openai/gpt-4o', true);
    perform costwarden.fn_model_upsert('anthropic/claude', false);
    perform costwarden.fn_pricing_set('openai/gpt-4o', '{"input_tokens": 0.0000025}', '2024-01-01');
    perform costwarden.fn_pricing_set('anthropic/claude', '{"input_tokens": 0.000003}', '2024-01-01');
    perform costwarden.fn_org_upsert('acme');
    perform costwarden.fn_workspace_upsert('acme', 'p', 'openai/gpt-4o');                  -- servable
    perform costwarden.fn_workspace_upsert('acme', 'v', 'anthropic/claude');               -- vendor
    perform costwarden.fn_workspace_upsert('acme', 'e');                                   -- no model
    perform costwarden.fn_workspace_upsert('acme', 'vpm', 'anthropic/claude', 'platform_managed');
    perform costwarden.fn_workspace_upsert('acme', 'pb', 'openai/gpt-4o', 'byok');
    perform costwarden.fn_workspace_upsert('acme', 'eb', null, 'byok');
    perform costwarden.fn_workspace_upsert('acme', 'ed', null, 'disabled');
    -- the KEK, for this transaction only (as the trusted caller supplies it)
    perform set_config('costwarden.kek', 'pgtap-kek-0123456789abcdefghijklmnop', true);
end
$setup$;

-- run p_sql with another KEK, then restore the transaction's KEK
create function pg_temp.with_kek(p_kek text, p_sql text)
returns void
language plpgsql as $$
declare
    v_saved text := current_setting('costwarden.kek', true);
begin
    perform set_config('costwarden.kek', p_kek, true);
    execute p_sql;
    perform set_config('costwarden.kek', v_saved, true);
end
$$;

-- the RPCs: present, SECURITY DEFINER
select has_function('costwarden', 'fn_byok_key_put', array['text', 'text', 'text', 'text'], 'fn_byok_key_put exists');
select has_function('costwarden', 'fn_byok_key_revoke', array['text', 'text', 'text'], 'fn_byok_key_revoke exists');
select has_function('costwarden', 'fn_byok_key_resolve_v2', array['uuid', 'text', 'text', 'text'],
    'fn_byok_key_resolve_v2 exists');
select has_function('costwarden', 'fn_workspace_billing_mode', array['text', 'text'], 'fn_workspace_billing_mode exists');
select is_definer('costwarden', 'fn_byok_key_put', array['text', 'text', 'text', 'text'], 'put is SECURITY DEFINER');
select is_definer('costwarden', 'fn_byok_key_resolve_v2', array['uuid', 'text', 'text', 'text'],
    'resolve is SECURITY DEFINER');

-- billing mode: the four rules, and which one decided
select results_eq($$select billing_mode, source from costwarden.fn_workspace_billing_mode('acme', 'p')$$,
    $$values ('platform_managed', 'model')$$, 'rule 2: a platform-servable model -> platform_managed');
select results_eq($$select billing_mode, source from costwarden.fn_workspace_billing_mode('acme', 'v')$$,
    $$values ('byok', 'model')$$, 'rule 3: a vendor model -> byok');
select results_eq($$select billing_mode, source from costwarden.fn_workspace_billing_mode('acme', 'e')$$,
    $$values ('platform_managed', 'deploy_default')$$, 'rule 4: no model -> the deployment default');
select results_eq($$select billing_mode, source from costwarden.fn_workspace_billing_mode('acme', 'vpm')$$,
    $$values ('platform_managed', 'override')$$, 'rule 1: an override wins over a vendor model');
select results_eq($$select billing_mode, source from costwarden.fn_workspace_billing_mode('acme', 'pb')$$,
    $$values ('byok', 'override')$$, 'rule 1: an override wins over a servable model');
select costwarden.fn_setting_set('platform_proxy_configured', 'false');
select results_eq($$select billing_mode, source from costwarden.fn_workspace_billing_mode('acme', 'p')$$,
    $$values ('byok', 'model')$$, 'self-hosted: a servable model -> byok (no proxy)');
select results_eq($$select billing_mode, source from costwarden.fn_workspace_billing_mode('acme', 'e')$$,
    $$values ('byok', 'deploy_default')$$, 'self-hosted: the deployment default is byok');
select costwarden.fn_setting_set('platform_proxy_configured', 'true');
select results_eq($$select billing_mode from costwarden.fn_cost_quote('acme', 'pb', 'openai/gpt-4o', '{"input_tokens": 1}')$$,
    $$values ('byok')$$, 'quote reports the same mode');

-- the key-write guard, decided from the model first
select throws_like($$select costwarden.fn_byok_key_put('acme', 'p', 'openai', 'sk-proj-0123456789abcdefghij')$$,
    '%rule A (platform-servable model)%', 'a servable model refuses a key for its own provider');
select throws_ok($$select costwarden.fn_byok_key_put('acme', 'pb', 'openai', 'sk-proj-0123456789abcdefghij')$$,
    'CW005', null, '... whatever the override says (byok): CW005');
select throws_like($$select costwarden.fn_byok_key_put('acme', 'vpm', 'anthropic', 'sk-ant-0123456789abcdefghij')$$,
    '%rule B (vendor model, platform_managed override)%', 'a vendor model overridden to platform_managed refuses');
select throws_like($$select costwarden.fn_byok_key_put('acme', 'v', 'openai', 'sk-proj-0123456789abcdefghij')$$,
    '%rule C (own provider only)%', 'a vendor model refuses another provider''s key');
select throws_like($$select costwarden.fn_byok_key_put('acme', 'e', 'openai', 'sk-proj-0123456789abcdefghij')$$,
    '%rule D (no model)%platform_managed%', 'no model: refused while the mode is platform_managed');
select throws_ok($$select costwarden.fn_byok_key_put('acme', 'ed', 'openai', 'sk-proj-0123456789abcdefghij')$$,
    'CW005', null, 'no model, disabled: refused');
select is(costwarden.fn_byok_key_put('acme', 'v', 'anthropic', 'sk-ant-api03-0123456789abcdefghij-9f2a'), 'sk-…9f2a',
    'a vendor model accepts a key for its own provider: the fingerprint');
select is(costwarden.fn_byok_key_put('acme', 'eb', 'openai', 'sk-proj-0123456789abcdefghij-77aa'), 'sk-…77aa',
    'no model, byok: any catalogued provider');

-- every cell, with and without the proxy: mismatches against SPEC §5
create function pg_temp.guard_mismatches(p_proxy boolean)
returns setof text
language plpgsql as $$
declare
    v_model text;
    v_override text;
    v_provider text;
    v_own text;
    v_want text;
    v_got text;
    i integer := 0;
begin
    perform costwarden.fn_setting_set('platform_proxy_configured', to_jsonb(p_proxy));
    foreach v_model in array array['openai/gpt-4o', 'anthropic/claude', ''] loop
        foreach v_override in array array['none', 'platform_managed', 'byok', 'disabled'] loop
            foreach v_provider in array array['openai', 'anthropic'] loop
                i := i + 1;
                perform costwarden.fn_workspace_upsert('acme', format('cell-%s-%s', p_proxy, i),
                                                      nullif(v_model, ''), v_override);
                v_own := nullif(split_part(v_model, '/', 1), '');
                v_want := case
                    when v_model = 'openai/gpt-4o' and p_proxy then 'A'
                    when v_own is not null and v_override = 'platform_managed' then 'B'
                    when v_own is not null and v_own <> v_provider then 'C'
                    when v_own is not null then 'ok'
                    when coalesce(nullif(v_override, 'none'),
                                  case when p_proxy then 'platform_managed' else 'byok' end) = 'byok' then 'ok'
                    else 'D' end;
                begin
                    perform costwarden.fn_byok_key_put('acme', format('cell-%s-%s', p_proxy, i), v_provider,
                                                      'sk-test-0123456789abcdefghij');
                    v_got := 'ok';
                exception when sqlstate 'CW005' then
                    v_got := substring(sqlerrm from 'rule ([A-D]) ');
                end;
                if v_got is distinct from v_want then
                    return next format('%s/%s/%s: got %s, want %s', v_model, v_override, v_provider, v_got, v_want);
                end if;
            end loop;
        end loop;
    end loop;
    perform costwarden.fn_setting_set('platform_proxy_configured', 'true');
end
$$;

select is_empty($$select * from pg_temp.guard_mismatches(true)$$, 'the guard: all 24 cells with the proxy');
select is_empty($$select * from pg_temp.guard_mismatches(false)$$, 'the guard: all 24 cells self-hosted');

-- bad input: CW004 / CW002, named; a KEK problem: CW005
select throws_ok($$select costwarden.fn_byok_key_put('acme', 'v', 'anthropic', '')$$, 'CW004',
    'p_secret must not be empty', 'an empty secret');
select throws_ok($$select costwarden.fn_byok_key_put('acme', 'v', 'anthropic', null)$$, 'CW004',
    'p_secret is required', 'a null secret');
select throws_like($$select costwarden.fn_byok_key_put('acme', 'v', 'anthropic', repeat('x', 8193))$$,
    '%at most 8192 bytes%', 'an oversized secret');
select throws_ok($$select costwarden.fn_byok_key_put('acme', 'v', 'mistral', 'sk-0123456789abcdefghij')$$, 'CW002',
    'p_provider: no model of provider ''mistral'' in the catalogue', 'an unknown provider');
select throws_ok($$select costwarden.fn_byok_key_put('acme', 'nope', 'anthropic', 'sk-0123456789abcdefghij')$$,
    'CW002', null, 'an unknown workspace');
select throws_like($$select pg_temp.with_kek('too-short',
                            'select costwarden.fn_byok_key_put(''acme'', ''v'', ''anthropic'', ''sk-0123456789abcdefghij'')')$$,
    '%at least 32 characters%', 'a KEK shorter than 32 characters');
select throws_ok($$select pg_temp.with_kek('another-kek-0123456789abcdefghijklmn',
                          'select costwarden.fn_byok_key_put(''acme'', ''v'', ''anthropic'', ''sk-0123456789abcdefghij'')')$$,
    'CW005', format('costwarden.kek is not the key-encryption key in use (KEK generation %s)',
                    (select kek_id from costwarden.fn_byok_kek_status() where current)), 'a wrong KEK');

-- at rest: ciphertext only; listings show fingerprints
select is((select count(*) from costwarden._byok_keys
           where position(convert_to('sk-ant-api03-0123456789abcdefghij-9f2a', 'UTF8') in secret_ciphertext) > 0
              or position(convert_to('sk-ant-api03-0123456789abcdefghij-9f2a', 'UTF8') in wrapped_dek) > 0),
    0::bigint, 'the secret is not stored in clear');
select is((select count(*) from costwarden._byok_keks
           where position(convert_to('pgtap-kek-0123456789abcdefghijklmnop', 'UTF8') in check_blob) > 0),
    0::bigint, 'the KEK is not stored');
select results_eq($$select provider, fingerprint, status from costwarden.fn_byok_key_list('acme', 'v')$$,
    $$values ('anthropic', 'sk-…9f2a', 'live')$$, 'the listing shows the fingerprint');
select is(costwarden.fn_byok_key_put('acme', 'v', 'anthropic', 'sk-ant-api03-0123456789abcdefghij-1b2c'), 'sk-…1b2c',
    'a second put replaces the live key');
select results_eq($$select fingerprint, status, revoke_reason from costwarden.fn_byok_key_list('acme', 'v', true)$$,
    $$values ('sk-…1b2c', 'live', null), ('sk-…9f2a', 'revoked', 'replaced')$$, '... and keeps the history');
select is((select secret_ciphertext is null and wrapped_dek is null from costwarden._byok_keys
           where fingerprint = 'sk-…9f2a'), true, 'a replaced key''s ciphertexts are destroyed');

-- the release bound to a held byok reservation (here without the audit link,
-- which tests/python/test_refusal_audit.py covers: refusals leave gaps)
delete from costwarden._byok_audit_link;
create temporary table r (name text primary key, id uuid);
insert into r select 'v1', reservation_id
from costwarden.fn_cost_reserve('acme', 'v', 'anthropic/claude', '{"input_tokens": 10}');
insert into r select 'p1', reservation_id
from costwarden.fn_cost_reserve('acme', 'p', 'openai/gpt-4o', '{"input_tokens": 10}');
create function pg_temp.id(p_name text) returns uuid language sql as $$ select id from r where name = p_name $$;

select results_eq($$select provider, secret, fingerprint from costwarden.fn_byok_key_resolve_v2(pg_temp.id('v1'))$$,
    $$values ('anthropic', 'sk-ant-api03-0123456789abcdefghij-1b2c', 'sk-…1b2c')$$,
    'resolve during a held byok reservation returns the secret');
select results_eq($$select secret from costwarden.fn_byok_key_resolve_v2(pg_temp.id('v1'), 'anthropic', 'acme', 'v')$$,
    $$values ('sk-ant-api03-0123456789abcdefghij-1b2c')$$, '... with matching provider, org and workspace');
select throws_like($$select * from costwarden.fn_byok_key_resolve_v2(pg_temp.id('v1'), 'openai')$$,
    '%provider_mismatch%', 'another provider: CW005');
select throws_ok($$select * from costwarden.fn_byok_key_resolve_v2(pg_temp.id('p1'))$$, 'CW005', null,
    'a platform_managed reservation: CW005');
select throws_like($$select * from costwarden.fn_byok_key_resolve_v2(gen_random_uuid())$$,
    '%unknown_reservation%', 'an unknown reservation: CW005');
select throws_like($$select * from costwarden.fn_byok_key_resolve_v2(null, null, 'acme', 'v')$$,
    '%reservation_required%', 'no reservation while byok_require_reservation: CW005');
select throws_like($$select pg_temp.with_kek('another-kek-0123456789abcdefghijklmn',
                            format('select * from costwarden.fn_byok_key_resolve_v2(%L)', pg_temp.id('v1')))$$,
    '%kek_wrong%', 'a wrong KEK: CW005');
select costwarden.fn_cost_release(pg_temp.id('v1'));
select throws_like($$select * from costwarden.fn_byok_key_resolve_v2(pg_temp.id('v1'))$$,
    '%not_held%', 'after release: CW005');
select costwarden.fn_setting_set('byok_require_reservation', 'false');
select results_eq($$select secret from costwarden.fn_byok_key_resolve_v2(null, null, 'acme', 'v')$$,
    $$values ('sk-ant-api03-0123456789abcdefghij-1b2c')$$, 'legacy: allowed by org / workspace when the setting is off');
select costwarden.fn_setting_set('byok_require_reservation', 'true');

-- the audit trail: grants are rows; refusals rolled back, so their attempts are gaps
select results_eq($$select outcome, legacy from costwarden.fn_byok_resolve_audit('acme') order by attempt$$,
    $$values ('granted', false), ('granted', false), ('granted', true)$$, 'every grant is audited (legacy marked)');
select cmp_ok((select count(*) from costwarden.fn_byok_resolve_audit() as a
               where a.outcome = 'unrecorded'
                 and a.attempt between (select min(attempt) from costwarden.fn_byok_resolve_audit('acme'))
                                   and (select max(attempt) from costwarden.fn_byok_resolve_audit('acme'))),
    '=', 6::bigint, 'each refused attempt (rolled back here) is a visible gap');

-- fail closed: no usable key, even in shadow mode and with billing_enforce off
select costwarden.fn_budget_set('acme', 'workspace', 'eb', 'day', 1000000, p_mode => 'shadow');
select costwarden.fn_setting_set('billing_enforce', 'false');
insert into r select 'eb1', reservation_id
from costwarden.fn_cost_reserve('acme', 'eb', 'anthropic/claude', '{"input_tokens": 10}');
select is((select status from costwarden._reservations where reservation_id = pg_temp.id('eb1')), 'denied',
    'byok without a key for the provider: denied');
select is((select reasons -> 0 ->> 'code' from costwarden._reservations where reservation_id = pg_temp.id('eb1')),
    'byok_credential_missing', '... byok_credential_missing');
select costwarden.fn_setting_set('billing_enforce', 'true');

-- revoke
select is(costwarden.fn_byok_key_revoke('acme', 'v', 'anthropic'), true, 'revoke: true');
select is(costwarden.fn_byok_key_revoke('acme', 'v', 'anthropic'), false, 'revoke again: false');
select is((select status from costwarden.fn_cost_reserve('acme', 'v', 'anthropic/claude', '{"input_tokens": 10}')),
    'denied', 'a revoked key no longer admits reservations');

-- roles
set local role costwarden_service;
select throws_ok($$select costwarden.fn_byok_key_put('acme', 'v', 'anthropic', 'sk-0123456789abcdefghij')$$,
    '42501', null, 'the service role cannot put keys');
reset role;
set local role costwarden_tenant;
select throws_ok($$select * from costwarden.fn_byok_key_resolve_v2(gen_random_uuid())$$,
    '42501', null, 'the tenant role cannot resolve');
reset role;

-- KEK rotation
select is(costwarden.fn_byok_key_put('acme', 'v', 'anthropic', 'sk-ant-api03-0123456789abcdefghij-3c4d'), 'sk-…3c4d',
    'a key to rotate');
select set_config('costwarden.kek_new', 'pgtap-new-kek-zyxwvutsrqponmlkjihgf', true);
select results_eq($$select rewrapped::bigint, remaining from costwarden.fn_byok_kek_rotate()$$,
    $$select count(*), 0::bigint from costwarden._byok_keys where revoked_at is null$$,
    'rotation re-wraps every live data key');
select results_eq($$select current, live_keys from costwarden.fn_byok_kek_status() order by kek_id desc limit 2$$,
    $$values (true, (select count(*) from costwarden._byok_keys where revoked_at is null)), (false, 0::bigint)$$,
    'a new generation is current and wraps them all');
select set_config('costwarden.kek', 'pgtap-new-kek-zyxwvutsrqponmlkjihgf', true);
insert into r select 'v2', reservation_id
from costwarden.fn_cost_reserve('acme', 'v', 'anthropic/claude', '{"input_tokens": 10}');
select results_eq($$select secret from costwarden.fn_byok_key_resolve_v2(pg_temp.id('v2'))$$,
    $$values ('sk-ant-api03-0123456789abcdefghij-3c4d')$$, 'the new KEK opens the key');

-- the log defence set by the (superuser) migration
select ok((select setconfig @> array['log_parameter_max_length=0'] from pg_db_role_setting
           where setdatabase = (select oid from pg_database where datname = current_database()) and setrole = 0),
    'the database does not log bind parameters');

select * from finish();
rollback;
