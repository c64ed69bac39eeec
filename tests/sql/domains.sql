-- The rules of the saga's hot tables (migration 0017): the single-column CHECKs live on
-- domains; a direct INSERT or UPDATE by the owner that breaks one still fails with
-- check_violation (23514), nothing written. The one rule across two columns (only an
-- adjustment is signed) is _ledger_append's (CW004) and fn_ledger_verify's.
begin;
select plan(34);

do $setup$
declare
    v_id uuid;
begin
    perform costwarden.fn_model_upsert('openai/gpt-4o', true);
    perform costwarden.fn_pricing_set('openai/gpt-4o',
        '{"input_tokens": 0.0000025, "output_tokens": 0.00001}', '2024-01-01');
    perform costwarden.fn_org_upsert('acme');
    perform costwarden.fn_org_upsert('initech');  -- no chain: no head row yet
    perform costwarden.fn_workspace_upsert('acme', 'ws', 'openai/gpt-4o');
    select reservation_id into v_id from costwarden.fn_cost_reserve(
        'acme', 'ws', 'openai/gpt-4o', '{"input_tokens": 1000, "output_tokens": 10}');
    perform costwarden.fn_cost_commit(v_id, '{"input_tokens": 900, "output_tokens": 10}');
    perform costwarden.fn_cost_reserve('acme', 'ws', 'openai/gpt-4o', '{"input_tokens": 500}');
end
$setup$;

-- the columns and their domains
select col_type_is('costwarden', '_reservations', 'status', 'costwarden', 'reservation_status',
    '_reservations.status is a reservation_status');
select col_type_is('costwarden', '_reservations', c, 'costwarden', 'nonneg_bigint',
    '_reservations.' || c || ' is a nonneg_bigint')
from unnest(array['amount_micros', 'tokens', 'charged_micros', 'metered_micros']) as c;
select col_type_is('costwarden', '_pools', 'kind', 'costwarden', 'pool_kind', '_pools.kind is a pool_kind');
select col_type_is('costwarden', '_pools', c, 'costwarden', 'nonneg_bigint', '_pools.' || c || ' is a nonneg_bigint')
from unnest(array['held_micros', 'held_tokens']) as c;
select col_type_is('costwarden', '_ledger', 'entry_type', 'costwarden', 'ledger_entry_type',
    '_ledger.entry_type is a ledger_entry_type');
select col_type_is('costwarden', '_ledger', 'seq', 'costwarden', 'ledger_seq', '_ledger.seq is a ledger_seq');
select col_type_is('costwarden', '_ledger', c, 'costwarden', 'sha256_digest', '_ledger.' || c || ' is a sha256_digest')
from unnest(array['prev_hash', 'entry_hash']) as c;
select col_type_is('costwarden', '_ledger_heads', 'last_seq', 'costwarden', 'nonneg_bigint',
    '_ledger_heads.last_seq is a nonneg_bigint');
select col_type_is('costwarden', '_ledger_heads', 'last_hash', 'costwarden', 'sha256_digest',
    '_ledger_heads.last_hash is a sha256_digest');

-- _reservations
select throws_ok($$update costwarden._reservations set status = 'pending'$$, '23514',
    'value for domain costwarden.reservation_status violates check constraint "reservation_status_check"',
    'a status outside the five is refused');
select throws_ok(format('update costwarden._reservations set %I = -1', c), '23514',
    'value for domain costwarden.nonneg_bigint violates check constraint "nonneg_bigint_check"',
    'a negative _reservations.' || c || ' is refused')
from unnest(array['amount_micros', 'tokens', 'charged_micros', 'metered_micros']) as c;

-- _pools
select throws_ok($$update costwarden._pools set kind = 'team'$$, '23514',
    'value for domain costwarden.pool_kind violates check constraint "pool_kind_check"',
    'a pool kind outside the four is refused');
select throws_ok(format('update costwarden._pools set %I = %I - 1000000000', c, c), '23514',
    'value for domain costwarden.nonneg_bigint violates check constraint "nonneg_bigint_check"',
    'a negative _pools.' || c || ' is refused')
from unnest(array['held_micros', 'held_tokens']) as c;

-- _ledger: a direct insert of an otherwise valid entry (into initech, which has no
-- chain to verify here), one column wrong
create function pg_temp.ledger_insert(
    p_seq text, p_entry_type text, p_prev_hash text, p_entry_hash text
) returns text
language sql as $$
    select format(
        'insert into costwarden._ledger (org_id, seq, entry_type, amount_micros, created_at, prev_hash, entry_hash) '
        'values (%L, %s, %L, 1, now(), %L::bytea, %L::bytea)',
        'initech', p_seq, p_entry_type, p_prev_hash, p_entry_hash)
$$;
create function pg_temp.zeros(p_bytes integer) returns text
language sql as $$ select '\x' || repeat('00', p_bytes) $$;

select lives_ok(pg_temp.ledger_insert('1000', 'charge', pg_temp.zeros(32), pg_temp.zeros(32)),
    'the control insert (every column valid) is accepted');
select throws_ok(pg_temp.ledger_insert('0', 'charge', pg_temp.zeros(32), pg_temp.zeros(32)), '23514',
    'value for domain costwarden.ledger_seq violates check constraint "ledger_seq_check"',
    'a seq below 1 is refused');
select throws_ok(pg_temp.ledger_insert('1001', 'refund', pg_temp.zeros(32), pg_temp.zeros(32)), '23514',
    'value for domain costwarden.ledger_entry_type violates check constraint "ledger_entry_type_check"',
    'an entry type outside the three is refused');
select throws_ok(pg_temp.ledger_insert('1001', 'charge', pg_temp.zeros(31), pg_temp.zeros(32)), '23514',
    'value for domain costwarden.sha256_digest violates check constraint "sha256_digest_check"',
    'a prev_hash of 31 bytes is refused');
select throws_ok(pg_temp.ledger_insert('1001', 'charge', pg_temp.zeros(32), pg_temp.zeros(33)), '23514',
    'value for domain costwarden.sha256_digest violates check constraint "sha256_digest_check"',
    'an entry_hash of 33 bytes is refused');

-- _ledger_heads
select throws_ok($$insert into costwarden._ledger_heads (org_id, last_seq) values ('initech', -1)$$, '23514',
    'value for domain costwarden.nonneg_bigint violates check constraint "nonneg_bigint_check"',
    'a negative head seq is refused');
select throws_ok(format('insert into costwarden._ledger_heads (org_id, last_hash) values (%L, %L::bytea)',
                        'initech', pg_temp.zeros(16)), '23514',
    'value for domain costwarden.sha256_digest violates check constraint "sha256_digest_check"',
    'a head hash of 16 bytes is refused');

-- only an adjustment is signed: _ledger_append refuses the rest, naming the argument
create temp table head_before as select * from costwarden._ledger_heads where org_id = 'acme';
select throws_ok($$select costwarden._ledger_append('acme', 'charge', -1)$$, 'CW004',
    'p_amount_micros must not be negative for a charge entry: only adjustments are signed',
    'a negative charge is refused');
select throws_ok($$select costwarden._ledger_append('acme', 'spend_report', -5, p_source => 's')$$, 'CW004',
    'p_amount_micros must not be negative for a spend_report entry: only adjustments are signed',
    'a negative spend report is refused');
select results_eq($$select last_seq::bigint, last_hash::bytea from costwarden._ledger_heads where org_id = 'acme'$$,
    $$select last_seq::bigint, last_hash::bytea from head_before$$, 'nothing was appended');
select lives_ok($$select costwarden._ledger_append('acme', 'adjustment', -5, p_reason => 'refund')$$,
    'a negative adjustment is appended');

-- ... and fn_ledger_verify reports a stored negative charge, correctly chained
do $forge$
declare
    v costwarden._ledger;
begin
    select * into v from costwarden._ledger
    where org_id = 'acme' and seq = (select last_seq from costwarden._ledger_heads where org_id = 'acme');
    v.prev_hash := v.entry_hash;
    v.seq := v.seq + 1;
    v.entry_type := 'charge';
    v.amount_micros := -1000;
    v.entry_hash := costwarden._ledger_hash(v.prev_hash, v);
    insert into costwarden._ledger select v.*;
    update costwarden._ledger_heads set last_seq = v.seq, last_hash = v.entry_hash where org_id = 'acme';
end
$forge$;
select results_eq(
    $$select ok, first_bad_seq, detail from costwarden.fn_ledger_verify('acme')$$,
    $$select false, last_seq::bigint,
             format('seq %s is a charge with a negative amount_micros: only adjustments are signed', last_seq)
      from costwarden._ledger_heads where org_id = 'acme'$$,
    'a negative charge in the chain: its seq, and why');

select * from finish();
rollback;
