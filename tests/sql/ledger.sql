-- The ledger (SPEC §4): the RPCs' shape and grants, the canonical payload (the worked
-- example of docs/ledger.md, byte for byte), one gapless chain per org, append-only for
-- everyone, adjustments (signed, counted in budgets, audited, validated), verify /
-- digest / export, and tampering with the triggers off caught by fn_ledger_verify.
begin;
select plan(67);

do $setup$
declare
    v_id uuid;
begin
    perform costwarden.fn_model_upsert('openai/gpt-4o', true);
    perform costwarden.fn_pricing_set('openai/gpt-4o',
        '{"input_tokens": 0.0000025, "output_tokens": 0.00001}', '2024-01-01');
    perform costwarden.fn_org_upsert('acme');
    perform costwarden.fn_org_upsert('globex');
    perform costwarden.fn_workspace_upsert('acme', 'ws', 'openai/gpt-4o');
    perform costwarden.fn_workspace_upsert('globex', 'ws', 'openai/gpt-4o');
    for i in 1..3 loop
        select reservation_id into v_id from costwarden.fn_cost_reserve(
            'acme', 'ws', 'openai/gpt-4o', jsonb_build_object('input_tokens', 1000 * i, 'output_tokens', 10));
        perform costwarden.fn_cost_commit(v_id, jsonb_build_object('input_tokens', 900 * i, 'output_tokens', 10));
    end loop;
    select reservation_id into v_id from costwarden.fn_cost_reserve(
        'globex', 'ws', 'openai/gpt-4o', '{"input_tokens": 100}');
    perform costwarden.fn_cost_commit(v_id, '{"input_tokens": 100}');
end
$setup$;

create temp table rpcs (fn text, args text[]) on commit drop;
insert into rpcs values
    ('fn_ledger_verify', array['text']),
    ('fn_ledger_digest', array['text']),
    ('fn_ledger_adjust', array['text', 'text', 'bigint', 'text']),
    ('fn_ledger_export', array['text', 'text', 'bigint', 'integer']),
    ('fn_ledger_identity', array[]::text[]);

-- the RPCs: present, SECURITY DEFINER, pinned search_path, not STRICT
select has_function('costwarden', fn, args, fn || ' exists') from rpcs order by fn;
select is_definer('costwarden', fn, args, fn || ' is SECURITY DEFINER') from rpcs order by fn;
select results_eq(
    $$select p.proname::text collate "default", p.proconfig collate "default", p.proisstrict from pg_proc as p
      where p.pronamespace = 'costwarden'::regnamespace and p.proname like 'fn\_ledger\_%' order by 1$$,
    $$select fn, array['search_path=pg_catalog, pg_temp'], false from rpcs order by 1$$,
    'every ledger RPC pins search_path and is not STRICT');

-- EXECUTE per role: admin everything; service verify / digest / identity; tenant nothing
select results_eq(
    $$select r.rolname::text collate "default", p.proname::text collate "default",
             has_function_privilege(r.rolname, p.oid, 'execute')
      from pg_proc as p, pg_roles as r
      where p.pronamespace = 'costwarden'::regnamespace and p.proname like 'fn\_ledger\_%'
        and r.rolname in ('costwarden_admin', 'costwarden_service', 'costwarden_tenant')
      order by 1, 2$$,
    $$values ('costwarden_admin', 'fn_ledger_adjust', true), ('costwarden_admin', 'fn_ledger_digest', true),
             ('costwarden_admin', 'fn_ledger_export', true), ('costwarden_admin', 'fn_ledger_identity', true),
             ('costwarden_admin', 'fn_ledger_verify', true),
             ('costwarden_service', 'fn_ledger_adjust', false), ('costwarden_service', 'fn_ledger_digest', true),
             ('costwarden_service', 'fn_ledger_export', false), ('costwarden_service', 'fn_ledger_identity', true),
             ('costwarden_service', 'fn_ledger_verify', true),
             ('costwarden_tenant', 'fn_ledger_adjust', false), ('costwarden_tenant', 'fn_ledger_digest', false),
             ('costwarden_tenant', 'fn_ledger_export', false), ('costwarden_tenant', 'fn_ledger_identity', false),
             ('costwarden_tenant', 'fn_ledger_verify', false)$$,
    'EXECUTE on the ledger RPCs per role');
select ok(not has_table_privilege('costwarden_admin', 'costwarden._ledger', 'select'),
    'the ledger table is private, even to the admin role');

-- the canonical payload: docs/ledger.md's worked example, entry 1, byte for byte
select is(
    costwarden._ledger_payload(row('acme', 1, 'charge', '91b0c06e-dd27-4a10-80df-bd38b2474f05', 'voice-ü', null,
        null, 'openai/gpt-4o-realtime', 'platform_managed',
        '{"input_tokens": 1200, "audio_seconds": 12.50, "output_tokens": 350}', 1550, 25500, 1, false, false,
        null, null, '2026-11-22 05:48:12.646908+00', null, null)::costwarden._ledger),
    E'costwarden-ledger-v1\norg_id="acme"\nseq=1\nentry_type="charge"\n'
    || E'reservation_id="91b0c06e-dd27-4a10-80df-bd38b2474f05"\nworkspace_id="voice-ü"\nuser_id=null\n'
    || E'key_id=null\nmodel="openai/gpt-4o-realtime"\nbilling_mode="platform_managed"\n'
    || E'usage={"audio_seconds":12.5,"input_tokens":1200,"output_tokens":350}\ntokens=1550\n'
    || E'amount_micros=25500\npricing_snapshot_id=1\napproximate=false\nlate=false\nsource=null\n'
    || E'reason=null\ncreated_at="2026-11-22T05:48:12.646908Z"\n',
    'the payload of the worked example''s first entry');
select is(
    encode(costwarden._ledger_hash('\x0000000000000000000000000000000000000000000000000000000000000000',
        row('acme', 1, 'charge', '91b0c06e-dd27-4a10-80df-bd38b2474f05', 'voice-ü', null, null,
            'openai/gpt-4o-realtime', 'platform_managed',
            '{"input_tokens": 1200, "audio_seconds": 12.50, "output_tokens": 350}', 1550, 25500, 1, false, false,
            null, null, '2026-11-22 05:48:12.646908+00', null, null)::costwarden._ledger), 'hex'),
    'a31e64baf080306a219bf4dfec6783af64a25b74675bbe43acb4e1863168db4d',
    'its entry_hash is the documented one');
select is(
    costwarden._ledger_payload(row('acme', 3, 'adjustment', null, 'voice-ü', null, null, null, null, null, 0,
        -1500, null, false, false, null, E'refund: "duplicate" call\nticket #42',
        '2026-11-22 05:48:12.669759+00', null, null)::costwarden._ledger),
    E'costwarden-ledger-v1\norg_id="acme"\nseq=3\nentry_type="adjustment"\nreservation_id=null\n'
    || E'workspace_id="voice-ü"\nuser_id=null\nkey_id=null\nmodel=null\nbilling_mode=null\n'
    || E'usage=null\ntokens=0\namount_micros=-1500\npricing_snapshot_id=null\napproximate=false\n'
    || E'late=false\nsource=null\nreason="refund: \\"duplicate\\" call\\nticket #42"\n'
    || E'created_at="2026-11-22T05:48:12.669759Z"\n',
    'a negative amount, nulls, and a reason with a quote and a newline');
select is(costwarden._canon_usage('{"requests": 1, "images": 2.000, "audio_seconds": 0.50}'),
    '{"audio_seconds":0.5,"images":2,"requests":1}', 'usage: units in byte order, trailing zeros trimmed');
select is(costwarden._canon_usage('{"zz": 1e3, "Zz": 1, "é": 1.10, "input_tokens": 0.0}'),
    '{"Zz":1,"input_tokens":0,"zz":1000,"é":1.1}', 'usage with other keys: UTF-8 byte order, no exponent');
select is(costwarden._canon_usage(E'{"a\\"b\\u0001": 1}'), E'{"a\\"b\\u0001":1}', 'keys escaped as JSON strings');
select is(costwarden._canon_usage(null), 'null', 'no usage -> null');
select is(costwarden._canon_usage('{}'), '{}', 'an empty usage');
select ok(costwarden._canon_usage('{"images": "2"}') is null and costwarden._canon_usage('[1]') is null,
    'a usage that is not an object of numbers cannot be canonicalised');
select throws_ok($$select costwarden._ledger_append('acme', 'charge', 1, p_usage => '{"images": true}')$$,
    'CW004', null, 'and is not appended');

-- one gapless chain per org
select results_eq($$select org_id, array_agg(seq::bigint order by seq) from costwarden._ledger group by 1 order by 1$$,
    $$values ('acme', array[1, 2, 3]::bigint[]), ('globex', array[1]::bigint[])$$, 'seq 1..n per org');
select is((select count(*)::int from costwarden._ledger as l
           where l.prev_hash <> coalesce((select p.entry_hash from costwarden._ledger as p
                                          where p.org_id = l.org_id and p.seq = l.seq - 1),
                                         '\x0000000000000000000000000000000000000000000000000000000000000000')),
    0, 'each prev_hash is the previous entry_hash (32 zero bytes before seq 1)');
select is((select count(*)::int from costwarden._ledger as l
           where l.entry_hash <> sha256(l.prev_hash || convert_to(costwarden._ledger_payload(l), 'UTF8'))),
    0, 'each entry_hash = sha256(prev_hash || payload)');
select results_eq($$select h.org_id, h.last_seq::bigint, h.last_hash::bytea from costwarden._ledger_heads as h order by 1$$,
    $$select distinct on (l.org_id) l.org_id, l.seq::bigint, l.entry_hash::bytea from costwarden._ledger as l
      order by l.org_id, l.seq desc$$, 'the heads are each chain''s last entry');

-- append-only, whoever asks
select throws_ok('update costwarden._ledger set amount_micros = 0', 'CW001', null, 'ledger: update refused');
select throws_ok('delete from costwarden._ledger', 'CW001', null, 'ledger: delete refused');
select throws_ok('truncate costwarden._ledger', 'CW001', null, 'ledger: truncate refused');
select throws_ok('update costwarden._audit_log set action = action', 'CW001', null, 'audit log: update refused');
select throws_ok('delete from costwarden._audit_log', 'CW001', null, 'audit log: delete refused');
select throws_ok('truncate costwarden._audit_log', 'CW001', null, 'audit log: truncate refused');
select throws_ok('delete from costwarden._ledger_heads', 'CW001', null, 'heads: delete refused');
select throws_ok('truncate costwarden._ledger_heads', 'CW001', null, 'heads: truncate refused');
select throws_ok('update costwarden._ledger_heads set last_seq = last_seq - 1', 'CW001', null,
    'heads: a rewind is refused');
set local role costwarden_admin;
select throws_ok('update costwarden._ledger set amount_micros = 0', '42501', null,
    'the admin role has no privilege on the ledger table');
reset role;

-- verify and digest
select results_eq($$select org_id, entries, ok, first_bad_seq, detail from costwarden.fn_ledger_verify()$$,
    $$values ('acme', 3::bigint, true, null::bigint, null::text), ('globex', 1::bigint, true, null, null)$$,
    'fn_ledger_verify: every chain intact');
select results_eq($$select org_id, seq, entry_hash from costwarden.fn_ledger_digest()$$,
    $$select h.org_id, h.last_seq::bigint, encode(h.last_hash, 'hex') from costwarden._ledger_heads as h order by 1$$,
    'fn_ledger_digest: the heads, in hex');
select results_eq($$select seq, entry_hash from costwarden.fn_ledger_digest('globex')$$,
    $$values (1::bigint, (select encode(last_hash, 'hex') from costwarden._ledger_heads where org_id = 'globex'))$$,
    'fn_ledger_digest of one org');
select throws_ok($$select * from costwarden.fn_ledger_verify('nope')$$, 'CW002', null, 'verify: unknown org');
select throws_ok($$select * from costwarden.fn_ledger_digest('nope')$$, 'CW002', null, 'digest: unknown org');
select is((select database_name from costwarden.fn_ledger_identity()), current_database()::text,
    'fn_ledger_identity names this database');

-- export: raw rows in (org_id, seq) order, keyset pages
select results_eq($$select org_id, seq, prev_hash, entry_hash from costwarden.fn_ledger_export()$$,
    $$select org_id, seq::bigint, encode(prev_hash, 'hex'), encode(entry_hash, 'hex') from costwarden._ledger
      order by org_id, seq$$, 'fn_ledger_export: every row, hashes in hex');
select results_eq(
    $$select org_id, seq from costwarden.fn_ledger_export(p_after_org_id => 'acme', p_after_seq => 2, p_limit => 2)$$,
    $$values ('acme', 3::bigint), ('globex', 1::bigint)$$, 'the next page after (acme, 2)');
select results_eq($$select seq from costwarden.fn_ledger_export(p_org_id => 'acme', p_after_seq => 1)$$,
    $$values (2::bigint), (3::bigint)$$, 'one org, after seq 1');
select throws_ok($$select * from costwarden.fn_ledger_export(p_limit => 0)$$, 'CW004', null, 'export: bad p_limit');
select is((select created_at from costwarden.fn_ledger_export('globex')),
    (select to_char(created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') from costwarden._ledger
     where org_id = 'globex'), 'created_at exported as ISO 8601 UTC text');

-- adjustments: signed entries, in the org's and workspace's windows, audited
create temp table spent0 on commit drop as
    select p.kind, p.spent_micros::numeric as micros
    from costwarden._pools as p
    where p.org_id = 'acme' and p.kind in ('org', 'workspace');
select results_eq($$select entry_seq from costwarden.fn_ledger_adjust('acme', 'ws', -2500, 'refund')$$,
    $$values (4::bigint)$$, 'a refund is the next entry of the org''s chain');
select results_eq($$select entry_type::text, amount_micros, workspace_id, reason, usage, tokens from costwarden._ledger
                    where org_id = 'acme' and seq = 4$$,
    $$values ('adjustment', -2500::bigint, 'ws', 'refund', null::jsonb, 0::bigint)$$,
    'stored as a signed adjustment');
select results_eq($$select p.kind::text, p.spent_micros - s.micros
                    from costwarden._pools as p
                    join spent0 as s on s.kind = p.kind
                    where p.org_id = 'acme' and p.kind in ('org', 'workspace') order by 1$$,
    $$values ('org', -2500::numeric), ('workspace', -2500::numeric)$$,
    'it lowers the org''s and the workspace''s spend');
select results_eq($$select action, target, after ->> 'amount_micros', after ->> 'entry_seq'
                    from costwarden._audit_log where action = 'ledger_adjust'$$,
    $$values ('ledger_adjust', '{"org_id": "acme", "workspace_id": "ws"}'::jsonb, '-2500', '4')$$,
    'and it is audited');
create temp table before_bad on commit drop as
    select (select count(*) from costwarden._ledger) as entries, (select count(*) from costwarden._audit_log) as audits;
select throws_ok($$select * from costwarden.fn_ledger_adjust('acme', 'ws', 0, 'x')$$, 'CW004', null, 'zero amount');
select throws_ok($$select * from costwarden.fn_ledger_adjust('acme', 'ws', null, 'x')$$, 'CW004', null, 'null amount');
select throws_ok($$select * from costwarden.fn_ledger_adjust('acme', 'ws', 5, null)$$, 'CW004', null, 'null reason');
select throws_ok($$select * from costwarden.fn_ledger_adjust('acme', 'ws', 5, '  ')$$, 'CW004', null, 'blank reason');
select throws_ok($$select * from costwarden.fn_ledger_adjust('nope', 'ws', 5, 'x')$$, 'CW002', null, 'unknown org');
select throws_ok($$select * from costwarden.fn_ledger_adjust('acme', 'nope', 5, 'x')$$, 'CW002', null,
    'unknown workspace');
select results_eq($$select (select count(*) from costwarden._ledger), (select count(*) from costwarden._audit_log)$$,
    $$select entries, audits from before_bad$$, 'a refused adjustment writes nothing');
set local role costwarden_service;
select throws_ok($$select * from costwarden.fn_ledger_adjust('acme', 'ws', 5, 'x')$$, '42501', null,
    'the service role cannot adjust');
reset role;

-- tampering with the triggers off: fn_ledger_verify names the first bad seq
create temp table saved on commit drop as select * from costwarden._ledger where org_id = 'acme';
set local session_replication_role = replica;
update costwarden._ledger set amount_micros = amount_micros + 1 where org_id = 'acme' and seq = 2;
select results_eq($$select ok, first_bad_seq from costwarden.fn_ledger_verify('acme')$$,
    $$values (false, 2::bigint)$$, 'a changed amount: seq 2');
update costwarden._ledger set amount_micros = amount_micros - 1 where org_id = 'acme' and seq = 2;
delete from costwarden._ledger where org_id = 'acme' and seq = 3;
select results_eq($$select ok, first_bad_seq, detail like '%missing%' from costwarden.fn_ledger_verify('acme')$$,
    $$values (false, 3::bigint, true)$$, 'a deleted row: seq 3 is missing');
insert into costwarden._ledger select * from saved where seq = 3;
delete from costwarden._ledger where org_id = 'acme' and seq = 4;
select results_eq($$select ok, first_bad_seq, detail like '%head%' from costwarden.fn_ledger_verify('acme')$$,
    $$values (false, 4::bigint, true)$$, 'the last row deleted: the head shows it');
insert into costwarden._ledger select * from saved where seq = 4;
update costwarden._ledger set seq = seq + 100 where org_id = 'acme' and seq in (1, 2);
update costwarden._ledger set seq = 103 - seq where org_id = 'acme' and seq > 100;
select results_eq($$select ok, first_bad_seq from costwarden.fn_ledger_verify('acme')$$,
    $$values (false, 1::bigint)$$, 'two rows swapped: seq 1');
update costwarden._ledger set seq = seq + 100 where org_id = 'acme' and seq in (1, 2);
update costwarden._ledger set seq = 103 - seq where org_id = 'acme' and seq > 100;
update costwarden._ledger set usage = '{"input_tokens": "lots"}' where org_id = 'acme' and seq = 1;
select results_eq($$select ok, first_bad_seq, detail like '%canonicalised%' from costwarden.fn_ledger_verify('acme')$$,
    $$values (false, 1::bigint, true)$$, 'a usage that is no longer numbers: seq 1, reported, no error');
update costwarden._ledger as l set usage = s.usage from saved as s where l.org_id = 'acme' and l.seq = 1 and s.seq = 1;
update costwarden._ledger_heads set last_seq = 9 where org_id = 'acme';
select results_eq($$select ok, first_bad_seq from costwarden.fn_ledger_verify('acme')$$,
    $$values (false, 5::bigint)$$, 'a head beyond the chain: the first missing seq');
update costwarden._ledger_heads set last_seq = 4 where org_id = 'acme';
set local session_replication_role = origin;
select results_eq($$select org_id, ok from costwarden.fn_ledger_verify()$$,
    $$values ('acme', true), ('globex', true)$$, 'restored: every chain intact again');

select * from finish();
rollback;
