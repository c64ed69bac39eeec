-- The saga and budgets (SPEC §2, §3): holds, denials with reasons, commit,
-- release, meter ticks, expiry, idempotency, invalid transitions, roles.
begin;
select plan(47);

do $setup$
begin
    perform costwarden.fn_model_upsert('openai/gpt-4o', true);
    perform costwarden.fn_pricing_set('openai/gpt-4o',
        '{"input_tokens": 0.0000025, "output_tokens": 0.00001}', '2024-01-01');
    perform costwarden.fn_org_upsert('acme');
    perform costwarden.fn_workspace_upsert('acme', 'w', 'openai/gpt-4o');
    perform costwarden.fn_user_upsert('acme', 'alice', array['eng']);
    perform costwarden.fn_key_upsert('acme', 'k1', 'w', 'alice');
    perform costwarden.fn_budget_set('acme', 'workspace', 'w', 'day', 20000);
end
$setup$;

create temporary table r (name text primary key, id uuid);

create function pg_temp.res(p_name text, p_usage jsonb, p_key text default null, p_idem text default null)
returns text
language plpgsql as $$
declare
    v_id uuid;
    v_status text;
begin
    select reservation_id, status into v_id, v_status
    from costwarden.fn_cost_reserve(p_org_id => 'acme', p_workspace_id => 'w', p_model => 'openai/gpt-4o',
                                    p_usage => p_usage, p_key_id => p_key, p_idempotency_key => p_idem);
    insert into r values (p_name, v_id) on conflict (name) do update set id = excluded.id;
    return v_status;
end
$$;

create function pg_temp.id(p_name text) returns uuid language sql as $$ select id from r where name = p_name $$;

create function pg_temp.ws() returns table (spent bigint, held bigint, remaining bigint)
language sql as $$ select spent, held, remaining from costwarden.fn_budget_status('acme', 'workspace', 'w') $$;

-- reserve: 1000 in + 500 out = 7500 micros
select is(pg_temp.res('a', '{"input_tokens": 1000, "output_tokens": 500}'), 'held', 'a is held');
select is(pg_temp.res('b', '{"input_tokens": 1000, "output_tokens": 500}'), 'held', 'b is held');
select results_eq('select * from pg_temp.ws()', $$values (0::bigint, 15000::bigint, 5000::bigint)$$,
    'two holds count against the workspace');
select is(pg_temp.res('c', '{"input_tokens": 1000, "output_tokens": 500}'), 'denied', 'c would exceed the limit');
select is((select reasons -> 0 ->> 'code' from costwarden._reservations where reservation_id = pg_temp.id('c')),
    'budget_exceeded', 'the denial says why');
select is((select jsonb_object_keys_count from (select count(*) as jsonb_object_keys_count
           from jsonb_object_keys((select reasons -> 0 from costwarden._reservations
                                   where reservation_id = pg_temp.id('c')))) as k), 11::bigint,
    'a reason has all eleven keys');
select is((select held from pg_temp.ws()), 15000::bigint, 'a denial holds nothing');
select is(left(pg_temp.id('a')::text, 8), lpad(to_hex(hashtext('acme')), 8, '0'),
    'the reservation id starts with hashtext(org_id)');

-- commit, repeat, conflicting repeat
select results_eq(
    $$select charged_micros, released_micros, overage_micros, entry_seq
      from costwarden.fn_cost_commit(pg_temp.id('a'), '{"input_tokens": 1000, "output_tokens": 100}')$$,
    $$values (3500::bigint, 4000::bigint, 0::bigint, 1::bigint)$$, 'commit charges the actual usage');
select results_eq(
    $$select charged_micros, entry_seq
      from costwarden.fn_cost_commit(pg_temp.id('a'), '{"input_tokens": 1000, "output_tokens": 100}')$$,
    $$values (3500::bigint, 1::bigint)$$, 'a repeated commit returns the first result');
select throws_ok($$select * from costwarden.fn_cost_commit(pg_temp.id('a'), '{"input_tokens": 1}')$$,
    'CW007', null, 'a commit with other usage is CW007');
select is((select count(*) from costwarden._ledger), 1::bigint, 'one ledger entry');
select results_eq('select * from pg_temp.ws()', $$values (3500::bigint, 7500::bigint, 9000::bigint)$$,
    'spent moved from held to spent');
select throws_ok($$select * from costwarden.fn_cost_release(pg_temp.id('a'))$$, 'CW003', null,
    'release after commit is CW003');

-- release
select is((select released_micros from costwarden.fn_cost_release(pg_temp.id('b'), 'not needed')),
    7500::bigint, 'release frees the hold');
select is((select released_micros from costwarden.fn_cost_release(pg_temp.id('b'))), 0::bigint,
    'a repeated release is a no-op');
select throws_ok($$select * from costwarden.fn_cost_commit(pg_temp.id('b'), '{}')$$, 'CW003', null,
    'commit after release is CW003');
select throws_ok($$select * from costwarden.fn_cost_commit(pg_temp.id('c'), '{}')$$, 'CW003', null,
    'commit of a denied reservation is CW003');
select throws_ok($$select * from costwarden.fn_cost_release(pg_temp.id('c'))$$, 'CW003', null,
    'release of a denied reservation is CW003');

-- meter ticks
select is(pg_temp.res('d', '{"input_tokens": 1000, "output_tokens": 500}'), 'held', 'd is held');
select results_eq(
    $$select metered_micros, amount_micros, action
      from costwarden.fn_cost_meter_tick(pg_temp.id('d'), '{"input_tokens": 1000, "output_tokens": 900}')$$,
    $$values (11500::bigint, 11500::bigint, 'continue')$$, 'a tick extends the hold within the limit');
select results_eq(
    $$select metered_micros, amount_micros, action
      from costwarden.fn_cost_meter_tick(pg_temp.id('d'), '{"input_tokens": 1000, "output_tokens": 2000}')$$,
    $$values (22500::bigint, 11500::bigint, 'abort')$$, 'a tick past the limit answers abort');
select throws_ok($$select * from costwarden.fn_cost_meter_tick(pg_temp.id('d'), '{"input_tokens": 1}')$$,
    'CW004', null, 'usage going backwards is CW004');
select throws_ok($$select * from costwarden.fn_cost_meter_tick(pg_temp.id('c'), '{}')$$, 'CW003', null,
    'a tick on a denied reservation is CW003');
select is((select overage_micros from costwarden.fn_cost_commit(pg_temp.id('d'),
    '{"input_tokens": 1000, "output_tokens": 2000}')), 11000::bigint, 'overage is recorded in full');

-- expiry: metered usage is committed as approximate; overlapping runs skip locked rows
select costwarden.fn_budget_set('acme', 'workspace', 'w', 'day', null);
select is(pg_temp.res('e', '{"input_tokens": 1000}'), 'held', 'e is held');
select lives_ok($$select * from costwarden.fn_cost_meter_tick(pg_temp.id('e'), '{"input_tokens": 400}')$$,
    'e is metered');
select is(pg_temp.res('f', '{"input_tokens": 1000}'), 'held', 'f is held');
update costwarden._reservations set expires_at = now() - interval '1 second'
where reservation_id in (pg_temp.id('e'), pg_temp.id('f'));
select is(costwarden.fn_cost_expire_reservations(), 2, 'two reservations expire');
select is(costwarden.fn_cost_expire_reservations(), 0, 'and only once');
select is((select charged_micros::bigint from costwarden._reservations where reservation_id = pg_temp.id('e')),
    1000::bigint, 'expiry charged the metered usage');
select is((select approximate from costwarden._ledger where reservation_id = pg_temp.id('e')), true,
    'as an approximate entry');
select is((select released_micros from costwarden.fn_cost_release(pg_temp.id('f'))), 0::bigint,
    'release of an expired reservation is a no-op');
select throws_ok($$select * from costwarden.fn_cost_commit(pg_temp.id('e'), '{"input_tokens": 100}')$$,
    'CW004', null, 'a late commit below the metered usage is CW004');
select results_eq(
    $$select charged_micros, overage_micros from costwarden.fn_cost_commit(pg_temp.id('e'), '{"input_tokens": 1000}')$$,
    $$values (1500::bigint, 1500::bigint)$$, 'a late commit books only the remainder');

-- idempotency
select is(pg_temp.res('g1', '{"input_tokens": 10}', null, 'req-1'), 'held', 'first call with a key');
select is(pg_temp.res('g2', '{"input_tokens": 10}', null, 'req-1'), 'held', 'repeat with the same key');
select is(pg_temp.id('g1'), pg_temp.id('g2'), 'returns the same reservation');
select throws_ok($$select pg_temp.res('g3', '{"input_tokens": 11}', null, 'req-1')$$, 'CW007', null,
    'the same key with other arguments is CW007');
select isnt((select request_fingerprint from costwarden._reservations where reservation_id = pg_temp.id('g1')),
    null, 'a keyed request keeps its fingerprint');
select is((select count(*) from costwarden._reservations
           where idempotency_key is null and request_fingerprint is not null), 0::bigint,
    'a request without a key has no fingerprint: nothing compares it');
select is((select i.indisunique and pg_get_expr(i.indpred, i.indrelid) = '(idempotency_key IS NOT NULL)'
           from pg_index as i where i.indexrelid = 'costwarden._reservations_org_idempotency_key'::regclass),
    true, 'a key is unique in its org; the index holds keyed reservations only (migration 0021)');

-- bad input and unknown references
select throws_ok($$select * from costwarden.fn_cost_reserve('acme', 'w', 'openai/gpt-4o', '{"input_tokens": -1}')$$,
    'CW004', null, 'negative usage is CW004');
select throws_ok($$select * from costwarden.fn_cost_reserve('acme', 'nope', 'openai/gpt-4o', '{}')$$,
    'CW002', null, 'unknown workspace is CW002');
select throws_ok($$select * from costwarden.fn_cost_commit(gen_random_uuid(), '{}')$$, 'CW002', null,
    'unknown reservation is CW002');

-- roles
set local role costwarden_tenant;
select throws_ok($$select * from costwarden.fn_cost_reserve('acme', 'w', 'openai/gpt-4o', '{}')$$,
    '42501', null, 'a tenant cannot reserve');
reset role;
set local role costwarden_service;
select throws_ok($$select costwarden.fn_budget_set('acme', 'org', null, 'day', 1)$$, '42501', null,
    'the service role cannot set budgets');
reset role;

select * from finish();
rollback;
