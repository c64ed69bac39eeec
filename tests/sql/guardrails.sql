-- pgTAP: guardrails (SPEC §6) -- circuit breaker, spend reports, anomalies and
-- freezes, shadow report, alerts, audit, roles. Runs in one transaction: now() is
-- fixed, so cooldowns and baselines are moved in time by writing the private
-- tables directly (as the superuser running the tests).
BEGIN;
SELECT plan(65);

SET LOCAL client_min_messages = warning;

-- fixtures -------------------------------------------------------------------
SELECT costwarden.fn_model_upsert('openai/gpt-4o', true);
SELECT costwarden.fn_model_upsert('anthropic/claude-3-5-sonnet', false);
SELECT costwarden.fn_pricing_set('openai/gpt-4o', '{"input_tokens": 0.0000025, "output_tokens": 0.00001}',
                                 '2024-01-01');
SELECT costwarden.fn_org_upsert('t-acme');
SELECT costwarden.fn_workspace_upsert('t-acme', 'ws', 'openai/gpt-4o');
SELECT costwarden.fn_workspace_upsert('t-acme', 'ws2', 'openai/gpt-4o');
SELECT costwarden.fn_user_upsert('t-acme', 'alice');
SELECT costwarden.fn_key_upsert('t-acme', 'k1', 'ws', 'alice');

CREATE TEMP TABLE reserve_status (label text primary key, status text, reasons jsonb);
CREATE FUNCTION pg_temp.try(p_label text, p_ws text DEFAULT 'ws') RETURNS text LANGUAGE sql AS $$
    INSERT INTO reserve_status
    SELECT p_label, r.status, r.reasons
    FROM costwarden.fn_cost_reserve('t-acme', p_ws, 'openai/gpt-4o', '{"output_tokens": 100}') AS r
    RETURNING status || coalesce(':' || (reasons -> 0 ->> 'code'), '')
$$;

-- the surface -------------------------------------------------------------------
SELECT ok(p.prosecdef AND NOT p.proisstrict
          AND p.proconfig @> array['search_path=pg_catalog, pg_temp'],
          p.oid::regprocedure::text || ' is SECURITY DEFINER, not STRICT, search_path pinned')
FROM pg_proc AS p
WHERE p.pronamespace = 'costwarden'::regnamespace
  AND p.proname IN ('fn_provider_report', 'fn_spend_report_cumulative', 'fn_detect_spend_anomalies',
                    'fn_anomaly_ack', 'fn_shadow_report', 'fn_circuit_status', 'fn_circuit_history',
                    'fn_circuit_reset', 'fn_spend_source_set', 'fn_spend_sources_list', 'fn_anomalies_list')
ORDER BY p.proname;

SELECT function_returns('costwarden', 'fn_provider_report', array['text', 'boolean', 'text'], 'text');
SELECT function_returns('costwarden', 'fn_spend_report_cumulative',
                        array['text', 'text', 'text', 'bigint'], 'bigint');
SELECT function_returns('costwarden', 'fn_detect_spend_anomalies', array[]::text[], 'integer');
SELECT function_returns('costwarden', 'fn_anomaly_ack', array['bigint'], 'void');

SELECT ok(has_function_privilege('costwarden_service', 'costwarden.fn_provider_report(text, boolean, text)', 'execute')
          AND has_function_privilege('costwarden_service',
              'costwarden.fn_spend_report_cumulative(text, text, text, bigint)', 'execute')
          AND has_function_privilege('costwarden_service', 'costwarden.fn_detect_spend_anomalies()', 'execute'),
          'the service role reports and detects');
SELECT ok(NOT has_function_privilege('costwarden_service', 'costwarden.fn_anomaly_ack(bigint)', 'execute')
          AND NOT has_function_privilege('costwarden_service',
              'costwarden.fn_shadow_report(text, timestamptz, timestamptz)', 'execute')
          AND NOT has_function_privilege('costwarden_service', 'costwarden.fn_circuit_reset(text)', 'execute'),
          'acks, resets and the shadow report are admin only');
SELECT ok(NOT has_function_privilege('costwarden_tenant', 'costwarden.fn_provider_report(text, boolean, text)', 'execute')
          AND NOT has_function_privilege('public', 'costwarden.fn_detect_spend_anomalies()', 'execute'),
          'tenants and PUBLIC run none of it');

-- circuit breaker ------------------------------------------------------------------
SELECT costwarden.fn_setting_set('circuit_failure_threshold', '2');
SELECT is(costwarden.fn_provider_report('openai', false, 'HTTP 500'), 'closed', 'one failure: closed');
SELECT is(costwarden.fn_provider_report('openai', true), 'closed', 'a success resets the count');
SELECT is(costwarden.fn_provider_report('openai', false, 'HTTP 500'), 'closed', 'failure 1 of 2');
SELECT is(costwarden.fn_provider_report('openai', false, 'HTTP 503'), 'open', 'failure 2 of 2 opens it');
SELECT is(pg_temp.try('open'), 'denied:circuit_open', 'an open circuit refuses the reserve');
SELECT is((SELECT reasons -> 0 ->> 'scope_id' FROM reserve_status WHERE label = 'open'), 'openai',
          'the reason names the provider');
SELECT is((SELECT state FROM costwarden.fn_circuit_status() WHERE provider = 'anthropic'), 'closed',
          'other providers stay closed');
UPDATE costwarden._circuits SET opened_at = now() - interval '1 hour' WHERE provider = 'openai';
SELECT is(pg_temp.try('probe'), 'held', 'after the cooldown one probe is admitted');
SELECT is(pg_temp.try('second'), 'denied:circuit_open', 'and only one');
SELECT is((SELECT state FROM costwarden.fn_circuit_status() WHERE provider = 'openai'), 'half_open',
          'the circuit is half-open');
UPDATE costwarden._circuits SET probe_at = now() - interval '1 hour' WHERE provider = 'openai';
SELECT is(pg_temp.try('retry'), 'held', 'a probe without a report is replaced after the cooldown');
SELECT is(costwarden.fn_provider_report('openai', false, 'still down'), 'open', 'a failed probe reopens');
UPDATE costwarden._circuits SET opened_at = now() - interval '1 hour' WHERE provider = 'openai';
SELECT is(pg_temp.try('probe2'), 'held', 'cooled down again: a new probe');
SELECT is(costwarden.fn_provider_report('openai', true), 'closed', 'a successful probe closes it');
SELECT is(pg_temp.try('closed'), 'held', 'closed: reserves go ahead');
SELECT results_eq(
    $$SELECT reason FROM costwarden.fn_circuit_history('openai') ORDER BY event_id$$,
    array['failure_threshold', 'probe_admitted', 'probe_retry', 'probe_failed', 'probe_admitted',
          'probe_succeeded'],
    'the history records every transition');
SELECT costwarden.fn_setting_set('billing_enforce', 'false');
SELECT costwarden.fn_provider_report('openai', false, 'x');
SELECT costwarden.fn_provider_report('openai', false, 'x');
SELECT is(pg_temp.try('shadow'), 'denied:circuit_open', 'the circuit is enforced with billing_enforce off');
SELECT costwarden.fn_setting_set('billing_enforce', 'true');
SELECT is(costwarden.fn_circuit_reset('openai'), 'closed', 'an admin can close it');
SELECT is((SELECT count(*)::integer FROM costwarden._audit_log WHERE action = 'circuit_reset'), 1,
          'the reset is audited');
SELECT throws_ok($$SELECT costwarden.fn_provider_report('nope', false)$$, 'CW002',
                 'p_provider: unknown provider ''nope'' (no model of it in the catalogue)',
                 'an unknown provider is CW002');
SELECT throws_ok($$SELECT costwarden.fn_provider_report('openai', null)$$, 'CW004', NULL,
                 'p_ok null is CW004');
SELECT is((SELECT count(*)::integer FROM costwarden._circuits WHERE provider = 'nope'), 0,
          'nothing written for an unknown provider');

-- spend reports ---------------------------------------------------------------------
SELECT is(costwarden.fn_spend_report_cumulative('t-acme', 'ws', 'edge', 1000), 1000::bigint, 'first report');
SELECT is(costwarden.fn_spend_report_cumulative('t-acme', 'ws', 'edge', 1600), 600::bigint, 'the delta');
SELECT is(costwarden.fn_spend_report_cumulative('t-acme', 'ws', 'edge', 1600), 0::bigint, 'a repeat books 0');
SELECT is(costwarden.fn_spend_report_cumulative('t-acme', 'ws', 'edge', 250), 250::bigint,
          'a counter that went down is a reset');
SELECT is((SELECT count(*)::integer FROM costwarden._ledger WHERE org_id = 't-acme' AND entry_type = 'spend_report'),
          3, 'one spend_report ledger entry per non-zero delta');
SELECT is((SELECT sum(amount_micros)::bigint FROM costwarden._ledger WHERE source = 'edge'), 1850::bigint,
          'the ledger holds the deltas');
SELECT costwarden.fn_spend_source_set('t-acme', 'ws', 'gw', p_key_id => 'k1');
SELECT costwarden.fn_budget_set('t-acme', 'user', 'alice', 'day', 1000000);
SELECT costwarden.fn_spend_report_cumulative('t-acme', 'ws', 'gw', 700);
SELECT is((SELECT spent FROM costwarden.fn_budget_status('t-acme', 'user', 'alice')), 700::bigint,
          'a source bound to a key counts toward the key''s user');
SELECT throws_ok($$SELECT costwarden.fn_spend_report_cumulative('t-acme', 'ws', 'edge', -1)$$, 'CW004',
                 'p_cumulative_micros must not be negative, got -1', 'a negative counter is CW004');
SELECT throws_ok($$SELECT costwarden.fn_spend_report_cumulative('t-acme', 'nope', 'edge', 1)$$, 'CW002', NULL,
                 'an unknown workspace is CW002');
SELECT is((SELECT last_cumulative_micros FROM costwarden._spend_sources WHERE source = 'edge'), 250::bigint,
          'a refused report leaves the counter as it was');

-- alerts ------------------------------------------------------------------------------
SELECT costwarden.fn_budget_set('t-acme', 'workspace', 'ws2', 'day', 1000);
SELECT pg_temp.try('alert80', 'ws2');   -- 1 000 micros: 100%
SELECT is((SELECT array_agg(threshold ORDER BY threshold) FROM costwarden._alerts_sent
           WHERE scope_kind = 'workspace' AND scope_id = 'ws2'), array[80, 100],
          'crossing 80% and 100% is recorded once each');
SELECT pg_temp.try('alert-again', 'ws2');
SELECT is((SELECT count(*)::integer FROM costwarden._alerts_sent WHERE scope_id = 'ws2'), 2,
          'not again in the same window');

-- anomalies ------------------------------------------------------------------------------
SELECT costwarden.fn_setting_set('anomaly_freeze', 'true');
SELECT costwarden._pool_add_spend(
    array[(SELECT pool_id FROM costwarden._pools WHERE org_id = 't-acme' AND kind = 'workspace' AND scope_id = 'ws')],
    50000, 0, date_trunc('hour', date_trunc('minute', now()) - interval '59 minutes')
              - make_interval(hours => h) + interval '5 minutes')
FROM generate_series(1, 168) AS h;
SELECT is(costwarden.fn_detect_spend_anomalies(), 0, 'a quiet week is no anomaly');
SELECT costwarden.fn_spend_report_cumulative('t-acme', 'ws', 'runaway', 3000000);
SELECT is(costwarden.fn_detect_spend_anomalies(), 1, 'a spike is one anomaly');
SELECT is(costwarden.fn_detect_spend_anomalies(), 0, 'and only one');
SELECT is((SELECT mean_micros FROM costwarden._anomalies), 50000.000, 'the baseline is the hourly mean');
SELECT is(pg_temp.try('frozen'), 'denied:anomaly_freeze', 'the frozen workspace refuses reserves');
SELECT is(pg_temp.try('other-ws', 'ws2'), 'denied:budget_exceeded', 'other workspaces are not frozen');
SELECT throws_ok($$SELECT costwarden.fn_anomaly_ack(987654)$$, 'CW002', 'p_anomaly_id: unknown anomaly 987654',
                 'acknowledging an unknown anomaly is CW002');
SELECT throws_ok($$SELECT costwarden.fn_anomaly_ack(null)$$, 'CW004', NULL, 'a null id is CW004');
SELECT lives_ok($$SELECT costwarden.fn_anomaly_ack((SELECT anomaly_id FROM costwarden._anomalies))$$,
                'an admin acknowledges it');
SELECT is(pg_temp.try('thawed'), 'held', 'the acknowledgement lifts the freeze');
SELECT is((SELECT count(*)::integer FROM costwarden._audit_log WHERE action = 'anomaly_ack'), 1,
          'the acknowledgement is audited');

-- shadow report ----------------------------------------------------------------------------
SELECT costwarden.fn_budget_set('t-acme', 'workspace', 'ws2', 'day', 1000, p_mode => 'shadow');
SELECT pg_temp.try('shadow1', 'ws2');
SELECT pg_temp.try('shadow2', 'ws2');
SELECT results_eq(
    $$SELECT scope_kind, scope_id, code, refusals, requested::bigint
      FROM costwarden.fn_shadow_report('t-acme', now() - interval '1 hour', now() + interval '1 hour')$$,
    $$VALUES ('workspace', 'ws2', 'budget_exceeded', 2::bigint, 2000::bigint)$$,
    'the shadow report counts what shadow mode let through');
SELECT throws_ok($$SELECT * FROM costwarden.fn_shadow_report('t-acme', now(), now() - interval '1 day')$$,
                 'CW004', NULL, 'p_from after p_to is CW004');

SELECT * FROM finish();
ROLLBACK;
