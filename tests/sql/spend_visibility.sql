-- pgTAP: spend visibility and limit listings (SPEC §11), outlier spend reports
-- (SPEC §6), the v2 usage units (§0), unpriced reserves recorded as denied, the
-- per-org user-limit switch and workspace readiness. One transaction: now() is fixed.
BEGIN;
SELECT plan(74);

SET LOCAL client_min_messages = error;

-- fixtures -------------------------------------------------------------------
SELECT costwarden.fn_model_upsert('openai/gpt-4o', true);
SELECT costwarden.fn_model_upsert('anthropic/claude-3-5-sonnet', false);
SELECT costwarden.fn_model_upsert('acme/unpriced', true);
SELECT costwarden.fn_pricing_set('openai/gpt-4o',
    '{"input_tokens": 0.000001, "output_tokens": 0.00001, "audio_input_tokens": 0.00004, "audio_output_tokens": 0.00008}',
    '2024-01-01');
SELECT costwarden.fn_pricing_set('anthropic/claude-3-5-sonnet',
    '{"input_tokens": 0.000003, "cache_write_tokens": 0.00000375, "output_tokens": 0.000015}', '2024-01-01');
SELECT costwarden.fn_org_upsert('v-acme');
SELECT costwarden.fn_org_upsert('v-other');
SELECT costwarden.fn_workspace_upsert('v-acme', 'ws1', 'openai/gpt-4o');
SELECT costwarden.fn_workspace_upsert('v-acme', 'ws2', 'openai/gpt-4o');
SELECT costwarden.fn_workspace_upsert('v-acme', 'ws3', 'openai/gpt-4o');
SELECT costwarden.fn_workspace_upsert('v-other', 'ws1', 'openai/gpt-4o');
SELECT costwarden.fn_user_upsert('v-acme', 'alice', array['eng']);
SELECT costwarden.fn_user_upsert('v-acme', 'bob');
SELECT costwarden.fn_key_upsert('v-acme', 'k-alice', 'ws1', 'alice');
SELECT costwarden.fn_key_upsert('v-acme', 'k-bob', 'ws2', 'bob');

CREATE TEMP TABLE spent_log (label text, reservation_id uuid);
-- reserve and commit one call: usage input_tokens = p_in (1 micro each), output_tokens = p_out (10 micros each)
CREATE FUNCTION pg_temp.call(p_ws text, p_key text, p_in integer, p_out integer) RETURNS bigint LANGUAGE sql AS $$
    SELECT c.charged_micros
    FROM costwarden.fn_cost_reserve('v-acme', p_ws, 'openai/gpt-4o',
                                    jsonb_build_object('input_tokens', p_in, 'output_tokens', p_out),
                                    p_key_id => p_key) AS r
    CROSS JOIN LATERAL costwarden.fn_cost_commit(r.reservation_id,
                                                 jsonb_build_object('input_tokens', p_in, 'output_tokens', p_out)) AS c
$$;

-- the surface ------------------------------------------------------------------
SELECT ok(p.prosecdef AND NOT p.proisstrict AND p.proconfig @> array['search_path=pg_catalog, pg_temp'],
          p.oid::regprocedure::text || ' is SECURITY DEFINER, not STRICT, search_path pinned')
FROM pg_proc AS p
WHERE p.pronamespace = 'costwarden'::regnamespace
  AND p.proname IN ('fn_spend_summary', 'fn_budget_list', 'fn_spend_report_resolve',
                    'fn_spend_reports_quarantined', 'fn_workspace_readiness')
ORDER BY p.proname;
SELECT function_returns('costwarden', 'fn_spend_report_resolve', array['bigint', 'boolean'], 'bigint');
SELECT ok(has_function_privilege('costwarden_tenant',
              'costwarden.fn_spend_summary(text, text, text, text, text, timestamptz)', 'execute')
          AND NOT has_function_privilege('costwarden_tenant', 'costwarden.fn_budget_list(text, text)', 'execute')
          AND has_function_privilege('costwarden_service', 'costwarden.fn_budget_list(text, text)', 'execute')
          AND NOT has_function_privilege('costwarden_service',
              'costwarden.fn_spend_report_resolve(bigint, boolean)', 'execute'),
          'summary for every role, the list for admin and service, decisions for admin only');

-- usage units (§0) ------------------------------------------------------------------
SELECT is((SELECT array_agg(unit ORDER BY unit) FROM costwarden._usage_units WHERE is_token AND integer_only
           AND unit IN ('cache_write_tokens', 'audio_input_tokens', 'audio_output_tokens')),
          array['audio_input_tokens', 'audio_output_tokens', 'cache_write_tokens'],
          'the three v2 units are integer token units');
SELECT is((SELECT row(q.amount_micros, q.tokens)::text
           FROM costwarden.fn_cost_quote('v-acme', 'ws1', 'openai/gpt-4o',
                                         '{"audio_input_tokens": 100, "audio_output_tokens": 10, "input_tokens": 5}') AS q),
          '(4805,115)', 'audio tokens are priced and counted as tokens');
SELECT throws_ok($$ SELECT * FROM costwarden.fn_cost_quote('v-acme', 'ws1', 'openai/gpt-4o',
                                                            '{"cache_write_tokens": 1.5}') $$,
                 'CW004', null, 'a fractional cache_write_tokens is CW004');

-- spend without a limit (§11) ---------------------------------------------------
SELECT is(pg_temp.call('ws1', 'k-alice', 1000, 100), 2000::bigint, 'ws1 spends 2000');
SELECT is(pg_temp.call('ws1', 'k-alice', 500, 0), 500::bigint, 'ws1 spends 500 more');
SELECT is(pg_temp.call('ws2', 'k-bob', 0, 400), 4000::bigint, 'ws2 spends 4000');
SELECT costwarden.fn_budget_set('v-acme', 'workspace', 'ws3', 'month', 0, p_window => 'calendar');
SELECT is((SELECT status FROM costwarden.fn_cost_reserve('v-acme', 'ws3', 'openai/gpt-4o', '{"input_tokens": 1}')),
          'denied', 'ws3 (limit 0) is denied');
SELECT is((SELECT status FROM costwarden.fn_cost_reserve('v-acme', 'ws2', 'openai/gpt-4o', '{"input_tokens": 7}')),
          'held', 'ws2 has a live hold of 7');

SELECT is((SELECT row(scope_kind, scope_id, period, window_kind, spent_micros, held_micros, spent_tokens, held_tokens,
                      calls, denied, limit_micros, remaining_micros)::text
           FROM costwarden.fn_spend_summary('v-acme')),
          '(org,,month,calendar,6500,7,2000,7,5,1,,)', 'the org: spent, held, calls, denied, no limit');
SELECT is((SELECT array_agg(row(scope_id, spent_micros, held_micros, calls, denied, limit_micros, remaining_micros)::text)
           FROM costwarden.fn_spend_summary('v-acme', 'workspace')),
          array['(ws2,4000,7,2,0,,)', '(ws1,2500,0,2,0,,)', '(ws3,0,0,1,1,0,0)'],
          'every workspace with spend, holds or a limit, largest spend first');
SELECT is((SELECT row(window_start, window_end)::text FROM costwarden.fn_spend_summary('v-acme')),
          row(date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
              (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC')::text,
          'the calendar month window');
SELECT is((SELECT row(window_start, window_end)::text
           FROM costwarden.fn_spend_summary('v-acme', p_period => 'day', p_window => 'rolling')),
          row(now() - interval '24 hours', now())::text, 'a rolling day ends at p_at');
SELECT is((SELECT spent_micros FROM costwarden.fn_spend_summary('v-acme', p_period => 'hour', p_window => 'rolling',
                                                               p_at => now() - interval '3 hours')),
          0::bigint, 'a window before the spend sees none of it');
SELECT is((SELECT row(spent_micros, calls)::text FROM costwarden.fn_spend_summary('v-acme', 'key', 'k-alice')),
          '(2500,2)', 'a key');
SELECT is((SELECT array_agg(scope_id) FROM costwarden.fn_spend_summary('v-acme', 'user')),
          array['bob', 'alice'], 'users with spend, largest first');
SELECT costwarden.fn_budget_set('v-acme', 'workspace', 'ws1', 'month', 10000, p_window => 'calendar');
SELECT is((SELECT spent_micros FROM costwarden.fn_spend_summary('v-acme', 'workspace', 'ws1')),
          (SELECT spent FROM costwarden.fn_budget_status('v-acme', 'workspace', 'ws1') LIMIT 1),
          'spent is the figure of the limit check');
SELECT is((SELECT row(limit_micros, remaining_micros, limit_tokens, remaining_tokens)::text
           FROM costwarden.fn_spend_summary('v-acme', 'workspace', 'ws1')),
          '(10000,7500,,)', 'an enforced limit and what remains');
SELECT costwarden.fn_budget_set('v-acme', 'workspace', 'ws1', 'month', 99, p_metric => 'tokens', p_window => 'calendar',
                                p_mode => 'shadow');
SELECT is((SELECT limit_tokens FROM costwarden.fn_spend_summary('v-acme', 'workspace', 'ws1')), null::bigint,
          'a shadow limit is not an enforced one');

-- fn_budget_list and the user-limit switch -----------------------------------------
SELECT costwarden.fn_budget_set('v-acme', 'user_default', null, 'month', 3000, p_window => 'calendar');
SELECT costwarden.fn_budget_set('v-acme', 'group', 'eng', 'month', 2000, p_window => 'calendar');
SELECT is((SELECT array_agg(row(scope_kind, scope_id, period, metric, limit_value, mode)::text)
           FROM costwarden.fn_budget_list('v-acme')),
          array['(workspace,ws1,month,cost,10000,enforce)', '(workspace,ws1,month,tokens,99,shadow)',
                '(workspace,ws3,month,cost,0,enforce)', '(group,eng,month,cost,2000,enforce)',
                '(user_default,,month,cost,3000,enforce)'],
          'every limit of the org, pools and templates');
SELECT is((SELECT count(*) FROM costwarden.fn_budget_list('v-acme', 'group')), 1::bigint, 'one kind');
SELECT is((SELECT array_agg(row(scope_id, limit_micros, remaining_micros)::text)
           FROM costwarden.fn_spend_summary('v-acme', 'user')),
          array['(bob,3000,0)', '(alice,2000,0)'], 'users: the effective limits (group, default)');
SELECT costwarden.fn_org_upsert('v-acme', '{"user_limits_enabled": false}');
SELECT is((SELECT array_agg(row(scope_id, limit_micros)::text) FROM costwarden.fn_spend_summary('v-acme', 'user')),
          array['(bob,)', '(alice,)'], 'user limits switched off: none applies');
SELECT is((SELECT count(*) FROM costwarden.fn_budget_list('v-acme')), 5::bigint, '... and none was deleted');
SELECT is((SELECT status FROM costwarden.fn_cost_reserve('v-acme', 'ws2', 'openai/gpt-4o', '{"input_tokens": 1}',
                                                         p_user_id => 'bob')),
          'held', 'bob is over his default, and it does not apply');
SELECT costwarden.fn_org_upsert('v-acme', '{"user_limits_enabled": true}');
SELECT is((SELECT reasons -> 0 ->> 'code' FROM costwarden.fn_cost_reserve('v-acme', 'ws2', 'openai/gpt-4o',
                                                   '{"input_tokens": 1}', p_user_id => 'bob')),
          'budget_exceeded', 'switched on again, it does');
SELECT throws_ok($$ SELECT costwarden.fn_org_upsert('v-acme', '{"user_limits_enabled": "no"}') $$, 'CW004',
                 'p_settings.user_limits_enabled must be true or false', 'the switch is a boolean');

-- bad input --------------------------------------------------------------------------
SELECT throws_ok($$ SELECT * FROM costwarden.fn_spend_summary('v-acme', 'group') $$, 'CW004',
                 'p_scope_kind must be org, workspace, user or key', 'p_scope_kind');
SELECT throws_ok($$ SELECT * FROM costwarden.fn_spend_summary('v-acme', 'org', 'x') $$, 'CW004',
                 'p_scope_id must be null for scope kind org', 'p_scope_id for org');
SELECT throws_ok($$ SELECT * FROM costwarden.fn_spend_summary('v-acme', p_period => 'year') $$, 'CW004',
                 'p_period must be hour, day, week or month', 'p_period');
SELECT throws_ok($$ SELECT * FROM costwarden.fn_spend_summary('v-acme', p_window => null) $$, 'CW004',
                 'p_window must be rolling or calendar', 'p_window');
SELECT throws_ok($$ SELECT * FROM costwarden.fn_spend_summary('v-acme', p_at => 'infinity') $$, 'CW004',
                 'p_at must be a finite timestamp', 'p_at');
SELECT throws_ok($$ SELECT * FROM costwarden.fn_spend_summary('nope') $$, 'CW002', null, 'unknown org');
SELECT throws_ok($$ SELECT * FROM costwarden.fn_spend_summary('v-acme', 'workspace', 'nope') $$, 'CW002', null,
                 'unknown workspace');
SELECT throws_ok($$ SELECT * FROM costwarden.fn_budget_list('v-acme', 'team') $$, 'CW004', null,
                 'fn_budget_list: p_scope_kind');
SELECT throws_ok($$ SELECT * FROM costwarden.fn_budget_list(null) $$, 'CW004', null, 'fn_budget_list: p_org_id');

-- tenants (SPEC §11 last bullet) ------------------------------------------------------
SELECT set_config('costwarden.actor_org', 'v-acme', true), set_config('costwarden.actor_user', 'alice', true);
SET LOCAL ROLE costwarden_tenant;
SELECT is((SELECT spent_micros FROM costwarden.fn_spend_summary('v-acme', 'user', 'alice')), 2500::bigint,
          'a tenant reads its own user scope');
SELECT is((SELECT spent_micros FROM costwarden.fn_spend_summary('v-acme', 'key', 'k-alice')), 2500::bigint,
          'and the keys it owns');
SELECT throws_ok($$ SELECT * FROM costwarden.fn_spend_summary('v-acme', 'user', 'bob') $$, 'CW005', null,
                 'not another user');
SELECT throws_ok($$ SELECT * FROM costwarden.fn_spend_summary('v-acme', 'key', 'k-bob') $$, 'CW005', null,
                 'not another user''s key');
SELECT throws_ok($$ SELECT * FROM costwarden.fn_spend_summary('v-acme') $$, 'CW005', null, 'not the org');
SELECT throws_ok($$ SELECT * FROM costwarden.fn_spend_summary('v-acme', 'workspace', 'ws1') $$, 'CW005', null,
                 'not a workspace');
SELECT throws_ok($$ SELECT * FROM costwarden.fn_spend_summary('v-acme', 'user') $$, 'CW005', null,
                 'not the list of users');
SELECT throws_ok($$ SELECT * FROM costwarden.fn_spend_summary('v-other', 'user', 'alice') $$, 'CW005', null,
                 'not another org');
RESET ROLE;
SELECT set_config('costwarden.actor_org', '', true), set_config('costwarden.actor_user', '', true);

-- outlier spend reports (§6) -------------------------------------------------------
SELECT costwarden.fn_setting_set('spend_report_max_delta_micros', '1000');
SELECT is(costwarden.fn_spend_report_cumulative('v-acme', 'ws1', 'agent', 800), 800::bigint, 'a normal report books');
SELECT is(costwarden.fn_spend_report_cumulative('v-acme', 'ws1', 'agent', 1000800), 0::bigint,
          'an outlier books nothing');
SELECT is((SELECT array_agg(row(workspace_id, source, delta_micros)::text)
           FROM costwarden.fn_spend_reports_quarantined('v-acme')),
          array['(ws1,agent,1000000)'], 'it is quarantined');
SELECT is((SELECT row(kind, spent_micros, threshold_micros, mean_micros)::text
           FROM costwarden.fn_anomalies_list('v-acme') LIMIT 1),
          '(spend_report_outlier,1000000,1000,)', 'with an anomaly of kind spend_report_outlier');
SELECT is(costwarden.fn_spend_report_cumulative('v-acme', 'ws1', 'agent', 1000900), 100::bigint,
          'the baseline moved: the next report books only its own delta');
SELECT is((SELECT count(*) FROM costwarden._ledger WHERE org_id = 'v-acme' AND entry_type = 'spend_report'),
          2::bigint, 'two spend_report entries so far');
SELECT is(costwarden.fn_spend_report_resolve(
              (SELECT report_id FROM costwarden.fn_spend_reports_quarantined('v-acme')), true),
          1000000::bigint, 'accepted: the delta is booked');
SELECT is((SELECT row(count(*), sum(amount_micros))::text FROM costwarden._ledger
           WHERE org_id = 'v-acme' AND entry_type = 'spend_report'),
          '(3,1000900)', 'once, in the ledger');
SELECT throws_ok(format('SELECT costwarden.fn_spend_report_resolve(%s, false)',
                        (SELECT max(report_id) FROM costwarden._spend_report_quarantine)),
                 'CW003', null, 'a second decision is CW003');
SELECT is((SELECT count(*) FROM costwarden.fn_spend_reports_quarantined('v-acme')), 0::bigint, 'nothing undecided');
SELECT is((SELECT count(*) FROM costwarden._audit_log WHERE action = 'spend_report_resolve'), 1::bigint, 'audited');
SELECT is(costwarden.fn_spend_report_cumulative('v-acme', 'ws2', 'agent', 5000), 0::bigint,
          'a first report over the bound is quarantined too');
SELECT is(costwarden.fn_spend_report_resolve(
              (SELECT report_id FROM costwarden.fn_spend_reports_quarantined('v-acme')), false),
          0::bigint, 'rejected: nothing booked');
SELECT throws_ok($$ SELECT costwarden.fn_spend_report_resolve(null, true) $$, 'CW004',
                 'p_report_id is required', 'p_report_id null');
SELECT throws_ok($$ SELECT costwarden.fn_spend_report_resolve(1, null) $$, 'CW004', null, 'p_accept null');
SELECT throws_ok($$ SELECT costwarden.fn_spend_report_resolve(-1, true) $$, 'CW002', null, 'unknown report');
SELECT costwarden.fn_setting_set('spend_report_max_delta_micros', 'null');
SELECT is(costwarden.fn_spend_report_cumulative('v-acme', 'ws2', 'agent', 5000000000), 4999995000::bigint,
          'JSON null: no bound');
SELECT throws_ok($$ SELECT costwarden.fn_setting_set('billing_enforce', 'null') $$, 'CW004', null,
                 'other settings still refuse null');

-- unpriced reserves, readiness ------------------------------------------------------
SELECT costwarden.fn_workspace_upsert('v-acme', 'ws-unpriced', 'acme/unpriced');
SELECT is((SELECT row(r.status, r.reasons -> 0 ->> 'code', r.reasons -> 0 ->> 'enforced')::text
           FROM costwarden.fn_cost_reserve('v-acme', 'ws-unpriced', 'acme/unpriced', '{"input_tokens": 1}') AS r),
          '(denied,unpriced_model,true)', 'an unpriced reserve is a recorded denial');
SELECT is((SELECT count(*) FROM costwarden._reservations WHERE workspace_id = 'ws-unpriced' AND status = 'denied'),
          1::bigint, 'recorded');
SELECT throws_ok($$ SELECT * FROM costwarden.fn_cost_quote('v-acme', 'ws-unpriced', 'acme/unpriced', '{}') $$,
                 'CW006', null, 'the quote still raises CW006');
SELECT costwarden.fn_workspace_upsert('v-acme', 'ws-vendor', 'anthropic/claude-3-5-sonnet');
SELECT is((SELECT array_agg(problem ORDER BY problem) FROM costwarden.fn_workspace_readiness('v-acme', 'ws-vendor')),
          array['byok_credential_missing'], 'byok without a key is a readiness problem');
SELECT is((SELECT array_agg(problem ORDER BY problem) FROM costwarden.fn_workspace_readiness('v-acme', 'ws-unpriced')),
          array['unpriced_model'], 'so is an unpriced model');
SELECT is_empty($$ SELECT * FROM costwarden.fn_workspace_readiness('v-acme', 'ws1') $$, 'a ready workspace');

SELECT * FROM finish();
ROLLBACK;
