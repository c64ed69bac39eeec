-- Batch RPCs of the saga for gateways: fn_cost_reserve_many and
-- fn_cost_commit_many. One transaction (one durable commit) for N calls, with
-- the same rules and the same results as N single calls made one after the
-- other: each element is handed to fn_cost_reserve / fn_cost_commit itself,
-- in the order given, and one row per element comes back in that order.
--
-- All or nothing: an element that a single call would refuse with an error
-- fails the whole batch (nothing is written); the error keeps its SQLSTATE
-- and its message is prefixed with the element, e.g. 'p_requests[3]: p_usage ...'.
--
-- No deadlock between batches, nor with single calls: before the first
-- element runs, a batch takes every lock of the level that its elements would
-- take one by one, level by level in the documented order, each level sorted
-- (docs/internals.md#lock-order): reserve -- the idempotency keys' keyed
-- locks (their _lock_stripes rows), then every pool; its elements then take
-- lanes as single calls do (docs/internals.md#lanes: with SKIP LOCKED, and the
-- batch holds the pools of every set it takes a lane of); commit -- every
-- reservation row, then every pool, then the lanes of their holds, then every
-- org's ledger head. The single calls then find their locks held.
--
-- lock order: docs/internals.md#lock-order

-- Internal: CW004 unless p_batch is a JSON array of 1..1000 objects whose keys
-- are among p_keys; returns the number of elements.
create or replace function costwarden._batch_check(p_batch jsonb, p_arg text, p_keys text[])
returns integer
language plpgsql
immutable
as $$
declare
    v_bad record;
begin
    if p_batch is null or jsonb_typeof(p_batch) <> 'array' then
        perform costwarden._raise('CW004', format('%s must be a JSON array of objects', p_arg));
    end if;
    if jsonb_array_length(p_batch) < 1 or jsonb_array_length(p_batch) > 1000 then
        perform costwarden._raise('CW004', format('%s must have 1 to 1000 elements', p_arg));
    end if;
    select e.n - 1 as i, jsonb_typeof(e.value) as json_type,
           (select k from jsonb_object_keys(case when jsonb_typeof(e.value) = 'object' then e.value end) as k
            where k <> all (p_keys) order by k limit 1) as unknown_key
    into v_bad
    from jsonb_array_elements(p_batch) with ordinality as e (value, n)
    where jsonb_typeof(e.value) <> 'object'
       or exists (select from jsonb_object_keys(e.value) as k where k <> all (p_keys))
    order by e.n
    limit 1;
    if found then
        if v_bad.json_type <> 'object' then
            perform costwarden._raise('CW004', format('%s[%s] must be a JSON object', p_arg, v_bad.i));
        end if;
        perform costwarden._raise('CW004', format('%s[%s]: unknown key %L (known: %s)',
                                                  p_arg, v_bad.i, v_bad.unknown_key, array_to_string(p_keys, ', ')));
    end if;
    return jsonb_array_length(p_batch);
end
$$;

-- Internal: re-raise an error of element p_i of a batch p_arg: the same
-- SQLSTATE (a data error of the element, such as a ttl that is not an
-- interval, becomes CW004), the message prefixed with the element.
create or replace function costwarden._batch_reraise(
    p_arg text, p_i integer, p_state text, p_message text, p_hint text
)
returns void
language plpgsql
as $$
declare
    v_state text := case when left(p_state, 2) = '22' then 'CW004' else p_state end;
    v_message text := case when p_i is null then format('%s: %s', p_arg, p_message)
                           else format('%s[%s]: %s', p_arg, p_i, p_message) end;
begin
    if p_hint is null or p_hint = '' then
        raise exception using errcode = v_state, message = v_message;
    end if;
    raise exception using errcode = v_state, message = v_message, hint = p_hint;
end
$$;

-- N reservations in one transaction (SPEC §3, fn_cost_reserve for each
-- element). p_requests: [{"org_id", "workspace_id", "model", "usage",
-- "user_id", "key_id", "idempotency_key", "ttl", "metadata"}, ...] with the
-- meaning and defaults of fn_cost_reserve's arguments; one row per element,
-- in order.
create or replace function costwarden.fn_cost_reserve_many(p_requests jsonb)
returns table (
    reservation_id uuid, status text, amount_micros bigint, tokens bigint,
    expires_at timestamptz, billing_mode text, reasons jsonb
)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_q jsonb;
    v_i integer;
    v_state text;
    v_message text;
    v_hint text;
begin
    perform costwarden._batch_check(p_requests, 'p_requests', array[
        'org_id', 'workspace_id', 'model', 'usage', 'user_id', 'key_id', 'idempotency_key', 'ttl', 'metadata']);
    begin
        -- 1. the idempotency keys' keyed locks (the stripes _reserve_repeat takes), ascending stripe
        perform null from (
            select s.stripe from costwarden._lock_stripes as s
            where s.stripe in (
                select (costwarden._lock_key('costwarden.reserve', e ->> 'org_id', e ->> 'idempotency_key') & 4095)::integer
                from jsonb_array_elements(p_requests) as e
                where e ->> 'idempotency_key' is not null)
            order by s.stripe
            for update
        ) as locked;
        -- 2. every pool of every element, ascending (the user of a key-only call is its owner)
        perform costwarden._lock_pools(array(
            select p.pool_id
            from jsonb_array_elements(p_requests) as e
            cross join lateral unnest(costwarden._context_pool_ids(
                e ->> 'org_id', e ->> 'workspace_id', e ->> 'key_id',
                coalesce(e ->> 'user_id', (select k.user_id from costwarden._keys as k
                                           where k.org_id = e ->> 'org_id' and k.key_id = e ->> 'key_id'))
            )) as p (pool_id)
        ));
        -- 3. each element, in order, as a single call: one may hold on a lane of its set,
        --    whose pools this batch holds (docs/internals.md#lock-order, level 4b)
        v_i := 0;
        for v_q in select e.value from jsonb_array_elements(p_requests) with ordinality as e (value, n) order by e.n loop
            return query select * from costwarden.fn_cost_reserve(
                p_org_id => v_q ->> 'org_id', p_workspace_id => v_q ->> 'workspace_id',
                p_model => v_q ->> 'model', p_usage => v_q -> 'usage',
                p_user_id => v_q ->> 'user_id', p_key_id => v_q ->> 'key_id',
                p_idempotency_key => v_q ->> 'idempotency_key', p_ttl => (v_q ->> 'ttl')::interval,
                p_metadata => coalesce(v_q -> 'metadata', '{}'::jsonb));
            v_i := v_i + 1;
        end loop;
    exception when others then
        get stacked diagnostics v_state = returned_sqlstate, v_message = message_text, v_hint = pg_exception_hint;
        perform costwarden._batch_reraise('p_requests', v_i, v_state, v_message, v_hint);
    end;
end
$$;

-- N commits in one transaction (SPEC §3, fn_cost_commit for each element).
-- p_commits: [{"reservation_id", "usage", "approximate"}, ...] with the
-- meaning and defaults of fn_cost_commit's arguments; one row per element,
-- in order.
create or replace function costwarden.fn_cost_commit_many(p_commits jsonb)
returns table (
    entry_seq bigint, charged_micros bigint, released_micros bigint, overage_micros bigint, entry_hash text
)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_ids uuid[];
    v_q jsonb;
    v_i integer;
    v_state text;
    v_message text;
    v_hint text;
begin
    perform costwarden._batch_check(p_commits, 'p_commits', array['reservation_id', 'usage', 'approximate']);
    begin
        v_ids := array(select (e ->> 'reservation_id')::uuid from jsonb_array_elements(p_commits) as e);
        -- 1. the reservation rows, ascending id
        perform null from (
            select r.reservation_id from costwarden._reservations as r
            where r.reservation_id = any (v_ids)
            order by r.reservation_id
            for update
        ) as locked;
        -- 2. their pools, ascending
        perform costwarden._lock_pools(array(
            select unnest(r.pool_ids) from costwarden._reservations as r where r.reservation_id = any (v_ids)
        ));
        -- 2b. the lanes of their holds, in key order
        perform costwarden._lanes_lock(v_ids);
        -- 3. their orgs' ledger heads, ascending org_id (an org without one gets it at its first entry)
        perform null from (
            select h.org_id from costwarden._ledger_heads as h
            where h.org_id in (select r.org_id from costwarden._reservations as r where r.reservation_id = any (v_ids))
            order by h.org_id
            for update
        ) as locked;
        -- 4. each element, in order, as a single call
        v_i := 0;
        for v_q in select e.value from jsonb_array_elements(p_commits) with ordinality as e (value, n) order by e.n loop
            return query select * from costwarden.fn_cost_commit(
                p_reservation_id => (v_q ->> 'reservation_id')::uuid, p_usage => v_q -> 'usage',
                p_approximate => coalesce((v_q -> 'approximate')::boolean, false));
            v_i := v_i + 1;
        end loop;
    exception when others then
        get stacked diagnostics v_state = returned_sqlstate, v_message = message_text, v_hint = pg_exception_hint;
        perform costwarden._batch_reraise('p_commits', v_i, v_state, v_message, v_hint);
    end;
end
$$;

grant execute on function
    costwarden.fn_cost_reserve_many(jsonb),
    costwarden.fn_cost_commit_many(jsonb)
to costwarden_service;
