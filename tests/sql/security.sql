-- Privileges and function hygiene (SPEC §0, §9). The catalogue checks are generic
-- over pg_proc / pg_class, so functions and tables added later are covered too.
begin;
select plan(31);

-- PUBLIC executes nothing in schema costwarden, and has no USAGE on it.
select is_empty(
    $$ select p.oid::regprocedure from pg_proc p
       where p.pronamespace = 'costwarden'::regnamespace
         and has_function_privilege('public', p.oid, 'execute') $$,
    'PUBLIC executes no function in schema costwarden'
);
select ok(
    not has_schema_privilege('public', 'costwarden', 'usage')
    and not has_schema_privilege('public', 'costwarden', 'create'),
    'PUBLIC has no USAGE or CREATE on schema costwarden'
);

-- Every RPC is SECURITY DEFINER with a pinned search_path; no function is STRICT.
select is_empty(
    $$ select p.oid::regprocedure from pg_proc p
       where p.pronamespace = 'costwarden'::regnamespace and p.proname like 'fn\_%'
         and not (p.prosecdef
                  and 'search_path=pg_catalog, pg_temp' = any(coalesce(p.proconfig, '{}'))) $$,
    'every fn_* is SECURITY DEFINER with search_path = pg_catalog, pg_temp'
);
select is_empty(
    $$ select p.oid::regprocedure from pg_proc p
       where p.pronamespace = 'costwarden'::regnamespace and p.proisstrict
         and not exists (select from pg_depend d
                         where d.classid = 'pg_proc'::regclass and d.objid = p.oid
                           and d.deptype = 'e') $$,
    'no costwarden function is STRICT'
);
select is_empty(
    $$ select p.oid::regprocedure from pg_proc p
       where p.pronamespace = 'costwarden'::regnamespace and p.proname like 'fn\_%'
         and exists (select from unnest(coalesce(p.proargnames, '{}')) with ordinality as a (n, i)
                     where coalesce(p.proargmodes[a.i], 'i') in ('i', 'b', 'v')
                       and a.n not like 'p\_%') $$,
    'every RPC argument is named p_*'
);

-- No table, view or sequence is granted to a caller role (or PUBLIC). The one
-- exception is write-only: admin and service may INSERT (COPY) into the views
-- secret_input and secret_input_base64, the unlogged input channels for BYOK
-- secrets and the KEK.
select is_empty(
    $$ select r.rolname, c.relname from pg_class c
       cross join (values ('costwarden_admin'), ('costwarden_service'),
                          ('costwarden_tenant'), ('public')) as r (rolname)
       where c.relnamespace = 'costwarden'::regnamespace
         and c.relkind in ('r', 'p', 'v', 'm', 'f')
         and (has_table_privilege(r.rolname, c.oid,
                  'select, update, delete, truncate, references, trigger')
              or has_any_column_privilege(r.rolname, c.oid, 'select, update, references')
              or ((has_table_privilege(r.rolname, c.oid, 'insert')
                   or has_any_column_privilege(r.rolname, c.oid, 'insert'))
                  and not (c.relkind = 'v' and c.relname in ('secret_input', 'secret_input_base64')
                           and r.rolname in ('costwarden_admin', 'costwarden_service')))) $$,
    'no costwarden table or view is granted to a role (secret_input, secret_input_base64: INSERT only)'
);
select is_empty(
    $$ select r.rolname, c.relname from pg_class c
       cross join (values ('costwarden_admin'), ('costwarden_service'),
                          ('costwarden_tenant'), ('public')) as r (rolname)
       where c.relnamespace = 'costwarden'::regnamespace and c.relkind = 'S'
         and has_sequence_privilege(r.rolname, c.oid, 'usage, select, update') $$,
    'no costwarden sequence is granted to a role'
);

-- Internal functions are granted to nobody.
select is_empty(
    $$ select r.rolname, p.oid::regprocedure from pg_proc p
       cross join (values ('costwarden_admin'), ('costwarden_service'),
                          ('costwarden_tenant')) as r (rolname)
       where p.pronamespace = 'costwarden'::regnamespace and p.proname not like 'fn\_%'
         and has_function_privilege(r.rolname, p.oid, 'execute') $$,
    'internal functions are executable by no caller role'
);

-- The tenant role runs its self-service RPCs and nothing else.
select is_empty(
    $$ select p.oid::regprocedure from pg_proc p
       where p.pronamespace = 'costwarden'::regnamespace
         and has_function_privilege('costwarden_tenant', p.oid, 'execute')
         and p.proname not in ('fn_get_my_cost_reservations', 'fn_budget_status', 'fn_spend_summary',
                               'fn_my_allocations') $$,
    'costwarden_tenant executes only fn_get_my_cost_reservations, fn_budget_status, fn_spend_summary and fn_my_allocations'
);

-- The service role runs no admin function.
select is_empty(
    $$ select p.oid::regprocedure from pg_proc p
       where p.pronamespace = 'costwarden'::regnamespace
         and has_function_privilege('costwarden_service', p.oid, 'execute')
         and p.proname in ('fn_org_upsert', 'fn_workspace_upsert', 'fn_workspace_seed_model',
                           'fn_user_upsert', 'fn_key_upsert', 'fn_model_upsert',
                           'fn_pricing_set', 'fn_budget_set', 'fn_setting_set',
                           'fn_settings_list', 'fn_audit_list', 'fn_byok_key_put',
                           'fn_byok_key_revoke', 'fn_ledger_adjust', 'fn_anomaly_ack',
                           'fn_spend_reports_quarantined', 'fn_spend_report_resolve') $$,
    'costwarden_service executes no admin function'
);

-- The admin role runs everything the service role runs.
select is_empty(
    $$ select p.oid::regprocedure from pg_proc p
       where p.pronamespace = 'costwarden'::regnamespace
         and has_function_privilege('costwarden_service', p.oid, 'execute')
         and not has_function_privilege('costwarden_admin', p.oid, 'execute') $$,
    'costwarden_admin executes everything costwarden_service executes'
);

-- The roles: NOLOGIN, USAGE on the schema, admin is a member of service.
-- (SPEC §12 adds two more NOLOGIN roles: the owner and the authenticator; the
-- audit link adds the NOLOGIN group costwarden_auditor, whose members
-- costwarden_auditor_<database oid> are the link's logins: docs/byok.md.)
select is(
    (select array_agg(format('%s login=%s super=%s', rolname, rolcanlogin, rolsuper) order by rolname)
     from pg_roles where rolname like 'costwarden\_%' and rolname !~ '^costwarden_auditor_[0-9]+$'),
    array['costwarden_admin login=f super=f', 'costwarden_auditor login=f super=f',
          'costwarden_authenticator login=f super=f',
          'costwarden_owner login=f super=f', 'costwarden_service login=f super=f',
          'costwarden_tenant login=f super=f'],
    'three NOLOGIN, non-superuser caller roles, the NOLOGIN owner, authenticator and auditor group'
);
select ok(
    has_schema_privilege('costwarden_admin', 'costwarden', 'usage')
    and has_schema_privilege('costwarden_service', 'costwarden', 'usage')
    and has_schema_privilege('costwarden_tenant', 'costwarden', 'usage')
    and not has_schema_privilege('costwarden_tenant', 'costwarden', 'create'),
    'each role has USAGE (not CREATE) on schema costwarden'
);
select ok(
    pg_has_role('costwarden_admin', 'costwarden_service', 'member')
    and not pg_has_role('costwarden_service', 'costwarden_admin', 'member')
    and not pg_has_role('costwarden_tenant', 'costwarden_service', 'member'),
    'admin is a member of service; tenant of neither'
);

-- Calls as the tenant role.
set local role costwarden_tenant;
select throws_ok($$ select costwarden.fn_org_upsert('evil') $$, '42501', null,
    'tenant: fn_org_upsert is refused');
select throws_ok($$ select costwarden.fn_setting_set('billing_enforce', 'false') $$, '42501', null,
    'tenant: fn_setting_set is refused');
select throws_ok($$ select costwarden.fn_pricing_set('a/b', '{"input_tokens": 0}') $$, '42501', null,
    'tenant: fn_pricing_set is refused');
select throws_ok($$ select * from costwarden.fn_cost_quote('o', 'w', 'a/b', '{}') $$, '42501', null,
    'tenant: fn_cost_quote is refused');
select throws_ok($$ select costwarden.fn_setting_get('billing_enforce') $$, '42501', null,
    'tenant: fn_setting_get is refused');
select throws_ok($$ select * from costwarden._orgs $$, '42501', null,
    'tenant: tables are private');
select throws_ok($$ select costwarden._raise('CW001', 'x') $$, '42501', null,
    'tenant: internal functions are refused');
reset role;

-- Calls as the service role.
set local role costwarden_service;
select throws_ok($$ select costwarden.fn_org_upsert('evil') $$, '42501', null,
    'service: fn_org_upsert is refused');
select throws_ok($$ select costwarden.fn_setting_set('billing_enforce', 'false') $$, '42501', null,
    'service: fn_setting_set is refused');
select throws_ok($$ select costwarden.fn_pricing_set('a/b', '{"input_tokens": 0}') $$, '42501', null,
    'service: fn_pricing_set is refused');
select throws_ok($$ select costwarden.fn_model_upsert('a/b') $$, '42501', null,
    'service: fn_model_upsert is refused');
select throws_ok($$ select * from costwarden._settings $$, '42501', null,
    'service: tables are private');
select is(costwarden.fn_setting_get('billing_enforce'), 'true'::jsonb,
    'service: fn_setting_get runs');
select throws_ok($$ select * from costwarden.fn_cost_quote('nope', 'w', 'a/b', '{}') $$, 'CW002', null,
    'service: fn_cost_quote runs (and finds no org)');
reset role;

-- Calls as the admin role.
set local role costwarden_admin;
select lives_ok($$ select costwarden.fn_org_upsert('acme') $$, 'admin: fn_org_upsert runs');
select throws_ok($$ select * from costwarden._orgs $$, '42501', null,
    'admin: tables are private to it too');
select throws_ok($$ select * from costwarden.fn_cost_quote('acme', 'w', 'a/b', '{}') $$, 'CW002', null,
    'admin: runs the service RPCs (fn_cost_quote finds no workspace)');
reset role;

select * from finish();
rollback;
