-- The append-only, hash-chained ledger (SPEC §4).
--
-- One chain per org: seq 1, 2, 3, ... with no gaps, and
--   entry_hash = sha256(prev_hash || canonical_payload)
-- where prev_hash of seq 1 is 32 zero bytes. The canonical payload is the
-- UTF-8 text built by _ledger_payload (documented byte for byte in
-- docs/ledger.md), so anyone can recompute the chain from an export.
--
-- _ledger_heads holds each org's last seq and hash; appending takes that
-- row's lock, so appends of one org are serialised (gapless seq) while
-- appends of different orgs never wait for each other.
--
-- lock order: docs/internals.md#lock-order
--
-- What each check catches (docs/ledger.md, "Threat model"):
--   * triggers: UPDATE / DELETE / TRUNCATE by anyone, superuser included,
--     unless a superuser disables the triggers;
--   * fn_ledger_verify: any change made with triggers disabled that does not
--     also recompute every later hash and the head (altered field, deleted,
--     inserted or reordered row, seq gap, broken link, head mismatch);
--   * a digest saved outside the database (`costwarden ledger digest`) and
--     `costwarden ledger verify --digest`: a rewrite that recomputed the
--     whole chain and its head.
--
-- RPCs: fn_ledger_verify, fn_ledger_digest, fn_ledger_adjust,
-- fn_ledger_export (raw rows for the out-of-database verifier),
-- fn_ledger_identity (which database a digest belongs to).

select costwarden._append_only('costwarden._ledger', '_ledger_no_update_delete', 'update or delete');

select costwarden._append_only('costwarden._ledger_heads', '_ledger_heads_no_delete', 'delete');

-- Internal: a head only moves forward, one entry at a time (CW001 otherwise).
create or replace function costwarden._ledger_head_forward_only()
returns trigger
language plpgsql set search_path = pg_catalog, pg_temp
as $$
begin
    if new.org_id is distinct from old.org_id or new.last_seq <> old.last_seq + 1 then
        raise exception using errcode = 'CW001', message = format(
            'costwarden._ledger_heads is append-only: a head moves forward one entry at a time (org %L: seq %s -> %s)',
            old.org_id, old.last_seq, new.last_seq);
    end if;
    return new;
end
$$;

create or replace trigger _ledger_heads_forward_only
before update on costwarden._ledger_heads
for each row execute function costwarden._ledger_head_forward_only();

-- Canonical encodings (docs/ledger.md, "Canonical payload"):
--   text      JSON string as to_json writes it ("\"", "\\", \b \f \n \r \t,
--             other controls below U+0020 as \u00XX, everything else as is);
--             null -> null
--   integer   decimal digits with a leading '-' when negative; null -> null
--   boolean   true | false
--   uuid      JSON string of the lowercase hyphenated form; null -> null
--   usage     null, or a JSON object: keys as JSON strings in UTF-8 byte
--             order, no spaces, numbers without exponent and without
--             trailing fractional zeros (trim_scale)
--   timestamp JSON string "YYYY-MM-DDTHH:MM:SS.ffffffZ" in UTC
--
-- The payload functions are PL/pgSQL rather than SQL on purpose: a SQL
-- function that the planner cannot inline starts an executor per call
-- (~100x slower); PL/pgSQL evaluates these as simple expressions.

-- Internal: canonical text of a usage object; NULL when it cannot be
-- canonicalised (not an object, or a value that is not a number), which the
-- append refuses (CW004) and the verifier reports.
create or replace function costwarden._canon_usage(p_usage jsonb)
returns text
language plpgsql immutable parallel safe
as $$
begin
    if p_usage is null or jsonb_typeof(p_usage) = 'null' then
        return 'null';
    end if;
    if jsonb_typeof(p_usage) <> 'object'
       or jsonb_path_exists(p_usage, 'strict $.* ? (@.type() != "number")') then
        return null;
    end if;
    -- fast path: only the usage units of SPEC §0, listed in byte order;
    -- concat_ws skips the units that are absent
    if p_usage - '{audio_seconds,cached_input_tokens,characters,images,input_tokens,output_tokens,pages,reasoning_tokens,requests}'::text[]
       = '{}'::jsonb then
        return '{' || concat_ws(',',
            '"audio_seconds":' || trim_scale((p_usage ->> 'audio_seconds')::numeric)::text,
            '"cached_input_tokens":' || trim_scale((p_usage ->> 'cached_input_tokens')::numeric)::text,
            '"characters":' || trim_scale((p_usage ->> 'characters')::numeric)::text,
            '"images":' || trim_scale((p_usage ->> 'images')::numeric)::text,
            '"input_tokens":' || trim_scale((p_usage ->> 'input_tokens')::numeric)::text,
            '"output_tokens":' || trim_scale((p_usage ->> 'output_tokens')::numeric)::text,
            '"pages":' || trim_scale((p_usage ->> 'pages')::numeric)::text,
            '"reasoning_tokens":' || trim_scale((p_usage ->> 'reasoning_tokens')::numeric)::text,
            '"requests":' || trim_scale((p_usage ->> 'requests')::numeric)::text
        ) || '}';
    end if;
    -- any other keys: the same encoding, in general
    return '{' || coalesce((
        select string_agg(to_json(u.key)::text || ':' || trim_scale((u.value::text)::numeric)::text,
                          ',' order by convert_to(u.key, 'UTF8'))
        from jsonb_each(p_usage) as u
    ), '') || '}';
end
$$;

-- Internal: the canonical payload of an entry (all columns but the two
-- hashes, one `name=value` line each, in column order, after a header line).
-- NULL when the entry cannot be canonicalised (see _canon_usage; created_at
-- +/-infinity).
create or replace function costwarden._ledger_payload(p_entry costwarden._ledger)
returns text
language plpgsql immutable parallel safe
as $$
begin
    return 'costwarden-ledger-v1' || E'\n'
        || 'org_id=' || coalesce(to_json(p_entry.org_id)::text, 'null') || E'\n'
        || 'seq=' || p_entry.seq::text || E'\n'
        || 'entry_type=' || coalesce(to_json(p_entry.entry_type)::text, 'null') || E'\n'
        || 'reservation_id=' || coalesce(to_json(p_entry.reservation_id::text)::text, 'null') || E'\n'
        || 'workspace_id=' || coalesce(to_json(p_entry.workspace_id)::text, 'null') || E'\n'
        || 'user_id=' || coalesce(to_json(p_entry.user_id)::text, 'null') || E'\n'
        || 'key_id=' || coalesce(to_json(p_entry.key_id)::text, 'null') || E'\n'
        || 'model=' || coalesce(to_json(p_entry.model)::text, 'null') || E'\n'
        || 'billing_mode=' || coalesce(to_json(p_entry.billing_mode)::text, 'null') || E'\n'
        || 'usage=' || costwarden._canon_usage(p_entry.usage) || E'\n'
        || 'tokens=' || p_entry.tokens::text || E'\n'
        || 'amount_micros=' || p_entry.amount_micros::text || E'\n'
        || 'pricing_snapshot_id=' || coalesce(p_entry.pricing_snapshot_id::text, 'null') || E'\n'
        || 'approximate=' || p_entry.approximate::text || E'\n'
        || 'late=' || p_entry.late::text || E'\n'
        || 'source=' || coalesce(to_json(p_entry.source)::text, 'null') || E'\n'
        || 'reason=' || coalesce(to_json(p_entry.reason)::text, 'null') || E'\n'
        -- years 0001-9999: to_char's YYYY has no era, so an instant outside them has no
        -- canonical form (null: it can never hash as the entry did when appended)
        || 'created_at=' || case when p_entry.created_at >= timestamptz '0001-01-01 00:00:00+00'
                                      and p_entry.created_at < timestamptz '10000-01-01 00:00:00+00'
                                 then to_json(to_char(p_entry.created_at at time zone 'UTC',
                                                      'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text
                                 else 'null' end || E'\n';
end
$$;

-- Internal: sha256(prev_hash || UTF-8 bytes of the canonical payload).
create or replace function costwarden._ledger_hash(p_prev_hash bytea, p_entry costwarden._ledger)
returns bytea
language plpgsql immutable parallel safe
as $$
begin
    return sha256(p_prev_hash || convert_to(costwarden._ledger_payload(p_entry), 'UTF8'));
end
$$;

-- Internal: append one entry to the org's chain; returns its seq and hash.
-- Takes the org's _ledger_heads row lock; callers that lock pools take
-- those first (lock order: docs/internals.md#lock-order). created_at is the
-- transaction's now(). The only writer of _ledger, so it holds the one rule
-- of an entry that spans two columns (migration 0017): only an adjustment
-- is signed.
create or replace function costwarden._ledger_append(
    p_org_id text,
    p_entry_type text,
    p_amount_micros bigint,
    p_reservation_id uuid default null,
    p_workspace_id text default null,
    p_user_id text default null,
    p_key_id text default null,
    p_model text default null,
    p_billing_mode text default null,
    p_usage jsonb default null,
    p_tokens bigint default 0,
    p_pricing_snapshot_id bigint default null,
    p_approximate boolean default false,
    p_late boolean default false,
    p_source text default null,
    p_reason text default null,
    out seq bigint,
    out entry_hash bytea
)
language plpgsql
as $$
declare
    v_head costwarden._ledger_heads;
    v_entry costwarden._ledger;
begin
    if p_amount_micros < 0 and p_entry_type is distinct from 'adjustment' then
        perform costwarden._raise('CW004', format(
            'p_amount_micros must not be negative for a %s entry: only adjustments are signed', p_entry_type));
    end if;
    perform costwarden._durable_commit();
    select * into v_head from costwarden._ledger_heads as h where h.org_id = p_org_id for update;
    if not found then
        insert into costwarden._ledger_heads (org_id) values (p_org_id) on conflict (org_id) do nothing;
        select * into v_head from costwarden._ledger_heads as h where h.org_id = p_org_id for update;
    end if;
    seq := v_head.last_seq + 1;
    v_entry := row(
        p_org_id, seq, p_entry_type, p_reservation_id, p_workspace_id, p_user_id, p_key_id, p_model,
        p_billing_mode, p_usage, coalesce(p_tokens, 0), p_amount_micros, p_pricing_snapshot_id,
        coalesce(p_approximate, false), coalesce(p_late, false), p_source, p_reason, now(),
        v_head.last_hash, null
    )::costwarden._ledger;
    entry_hash := costwarden._ledger_hash(v_head.last_hash, v_entry);
    if entry_hash is null then
        perform costwarden._raise('CW004', 'p_usage must be a JSON object of numbers to be booked in the ledger');
    end if;
    v_entry.entry_hash := entry_hash;
    -- the entry and the head's move in one statement (one executor instead of
    -- two: docs/performance.md, row 31)
    with appended as (
        insert into costwarden._ledger select v_entry.*
    )
    update costwarden._ledger_heads as h
    set last_seq = v_entry.seq, last_hash = v_entry.entry_hash
    where h.org_id = p_org_id;
end
$$;

-- Internal: the orgs that have a chain (a head row or entries), in order.
-- The entries' orgs come from a loose index scan of the primary key, so
-- listing them costs O(orgs), not O(entries).
create or replace function costwarden._ledger_orgs()
returns setof text
language sql stable
as $$
    with recursive e (org_id) as (
        select min(l.org_id) from costwarden._ledger as l
        union all
        select (select min(l.org_id) from costwarden._ledger as l where l.org_id > e.org_id)
        from e
        where e.org_id is not null
    )
    select e.org_id from e where e.org_id is not null
    union
    select h.org_id from costwarden._ledger_heads as h
    order by 1
$$;

-- Verify every org's chain (or one org's) from the stored rows: recomputes
-- each entry_hash, checks seq 1..n without gap or duplicate, each prev_hash
-- against the previous entry_hash (zero bytes before seq 1), and the last
-- entry against the head in _ledger_heads, and that only adjustments have a
-- negative amount. first_bad_seq is the first seq at which the chain is wrong
-- (for a missing entry: its seq); detail says why.
create or replace function costwarden.fn_ledger_verify(p_org_id text default null)
returns table (org_id text, entries bigint, ok boolean, first_bad_seq bigint, detail text)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_zero constant bytea := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
    v_org text;
    v_bad record;
    v_n bigint;
    v_last_seq bigint;
    v_last_hash bytea;
    v_head_seq bigint;
    v_head_hash bytea;
    v_head_found boolean;
begin
    perform costwarden._tenant_guard(p_org_id);
    perform costwarden._optional_org(p_org_id);
    for v_org in
        select o.org_id from costwarden._ledger_orgs() as o (org_id)
        where p_org_id is null or o.org_id = p_org_id
        union
        select p_org_id where p_org_id is not null
        order by 1
    loop
        org_id := v_org;
        ok := true;
        first_bad_seq := null;
        detail := null;
        select count(*) into v_n from costwarden._ledger as l where l.org_id = v_org;
        entries := v_n;

        -- the first entry (in seq order) that breaks the chain
        select x.seq, x.rn, x.computed, x.prev_hash = x.expected_prev as linked,
               x.computed = x.entry_hash as hash_ok, x.entry_type, x.amount_micros
        into v_bad
        from (
            select l.seq, row_number() over w as rn, l.prev_hash, l.entry_hash, l.entry_type, l.amount_micros,
                   coalesce(lag(l.entry_hash) over w, v_zero) as expected_prev,
                   costwarden._ledger_hash(l.prev_hash, l) as computed
            from costwarden._ledger as l
            where l.org_id = v_org
            window w as (order by l.seq)
        ) as x
        where x.seq <> x.rn
           or x.prev_hash <> x.expected_prev
           or x.computed is null
           or x.computed <> x.entry_hash
           or (x.entry_type <> 'adjustment' and x.amount_micros < 0)
        order by x.rn
        limit 1;

        if found then
            ok := false;
            if v_bad.seq > v_bad.rn then
                first_bad_seq := v_bad.rn;
                detail := format('seq %s is missing: the entry after seq %s has seq %s',
                                 v_bad.rn, v_bad.rn - 1, v_bad.seq);
            elsif v_bad.seq < v_bad.rn then
                first_bad_seq := v_bad.seq;
                detail := format('seq %s appears more than once', v_bad.seq);
            elsif not v_bad.linked then
                first_bad_seq := v_bad.seq;
                detail := case when v_bad.seq = 1
                    then 'prev_hash of seq 1 is not 32 zero bytes'
                    else format('prev_hash of seq %s does not match the entry_hash of seq %s (broken link)',
                                v_bad.seq, v_bad.seq - 1) end;
            elsif v_bad.computed is null then
                first_bad_seq := v_bad.seq;
                detail := format('seq %s cannot be canonicalised (usage is not an object of numbers, '
                                 'or created_at is not finite)', v_bad.seq);
            elsif not v_bad.hash_ok then
                first_bad_seq := v_bad.seq;
                detail := format('entry_hash of seq %s does not match sha256(prev_hash || payload): '
                                 'the entry was altered', v_bad.seq);
            else
                first_bad_seq := v_bad.seq;
                detail := format('seq %s is a %s with a negative amount_micros: only adjustments are signed',
                                 v_bad.seq, v_bad.entry_type);
            end if;
            return next;
            continue;
        end if;

        -- the chain is 1..n and intact: its end must be the recorded head
        select l.seq, l.entry_hash into v_last_seq, v_last_hash
        from costwarden._ledger as l where l.org_id = v_org order by l.seq desc limit 1;
        v_last_seq := coalesce(v_last_seq, 0);
        v_last_hash := coalesce(v_last_hash, v_zero);
        select h.last_seq, h.last_hash into v_head_seq, v_head_hash
        from costwarden._ledger_heads as h where h.org_id = v_org;
        v_head_found := found;
        if not v_head_found then
            v_head_seq := 0;
            v_head_hash := v_zero;
        end if;
        if v_head_seq < v_last_seq then
            ok := false;
            first_bad_seq := v_head_seq + 1;
            detail := case when v_head_found
                then format('entries beyond the recorded head: the head is seq %s, the chain ends at seq %s',
                            v_head_seq, v_last_seq)
                else format('no head record for a chain of %s entries', v_last_seq) end;
        elsif v_head_seq > v_last_seq then
            ok := false;
            first_bad_seq := v_last_seq + 1;
            detail := format('entries missing at the end: the head is seq %s, the chain ends at seq %s',
                             v_head_seq, v_last_seq);
        elsif v_head_hash <> v_last_hash then
            ok := false;
            first_bad_seq := v_last_seq;
            detail := format('the head''s hash does not match the entry_hash of seq %s', v_last_seq);
        end if;
        return next;
    end loop;
end
$$;

-- The head of each org's chain (or one org's: seq 0 and the zero hash when it
-- has no entries yet), as recorded in _ledger_heads. Saved outside the
-- database (`costwarden ledger digest`), it pins the history up to there.
create or replace function costwarden.fn_ledger_digest(p_org_id text default null)
returns table (org_id text, seq bigint, entry_hash text, taken_at timestamptz)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
begin
    perform costwarden._tenant_guard(p_org_id);
    if p_org_id is not null then
        perform costwarden._require_org(p_org_id);
        return query
        select p_org_id, coalesce(h.last_seq, 0),
               encode(coalesce(h.last_hash, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea), 'hex'),
               now()
        from (select) as one
        left join costwarden._ledger_heads as h on h.org_id = p_org_id;
        return;
    end if;
    return query
    select h.org_id, h.last_seq::bigint, encode(h.last_hash, 'hex'), now()
    from costwarden._ledger_heads as h
    where h.last_seq > 0
    order by h.org_id;
end
$$;

-- Which database this is, so that a digest cannot be checked against
-- another one by mistake: the cluster's system identifier and the database.
create or replace function costwarden.fn_ledger_identity()
returns table (system_identifier text, database_name text)
language sql stable security definer set search_path = pg_catalog, pg_temp
as $$
    select c.system_identifier::text, current_database()::text from pg_catalog.pg_control_system() as c
$$;

-- Raw ledger rows for verification outside the database, in (org_id, seq)
-- order, hashes in hex, created_at as ISO 8601 UTC text with microseconds.
-- Keyset pages: pass the last row's org_id and seq as p_after_org_id /
-- p_after_seq to get the next page (with p_org_id, p_after_seq alone).
create or replace function costwarden.fn_ledger_export(
    p_org_id text default null,
    p_after_org_id text default null,
    p_after_seq bigint default 0,
    p_limit integer default 10000
)
returns table (
    org_id text, seq bigint, entry_type text, reservation_id uuid, workspace_id text,
    user_id text, key_id text, model text, billing_mode text, usage jsonb, tokens bigint,
    amount_micros bigint, pricing_snapshot_id bigint, approximate boolean, late boolean,
    source text, reason text, created_at text, prev_hash text, entry_hash text
)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
begin
    perform costwarden._tenant_guard(p_org_id);
    perform costwarden._optional_org(p_org_id);
    if p_after_seq is null or p_after_seq < 0 then
        perform costwarden._raise('CW004', 'p_after_seq must be 0 or more');
    end if;
    perform costwarden._require_limit(p_limit);
    if p_org_id is not null and p_after_org_id is not null and p_after_org_id <> p_org_id then
        perform costwarden._raise('CW004', 'p_after_org_id must be null or p_org_id when p_org_id is given');
    end if;
    -- one select list; the page's keyset condition is chosen here, so that each
    -- form is planned on its own (index range scans on the primary key). The
    -- result of dynamic SQL is opaque to plpgsql_check (docs/internals.md):
    -- @plpgsql_check_options: extra_warnings = off
    return query execute
        'select l.org_id, l.seq::bigint, l.entry_type::text, l.reservation_id, l.workspace_id, l.user_id, l.key_id,
                l.model, l.billing_mode, l.usage, l.tokens, l.amount_micros, l.pricing_snapshot_id,
                l.approximate, l.late, l.source, l.reason,
                case when l.created_at >= timestamptz ''0001-01-01 00:00:00+00''
                          and l.created_at < timestamptz ''10000-01-01 00:00:00+00''
                     then to_char(l.created_at at time zone ''UTC'', ''YYYY-MM-DD"T"HH24:MI:SS.US"Z"'') end,
                encode(l.prev_hash, ''hex''), encode(l.entry_hash, ''hex'')
         from costwarden._ledger as l
         where ' || case when p_org_id is not null then 'l.org_id = $1 and l.seq > $3'
                         when p_after_org_id is null then 'true'
                         else '(l.org_id, l.seq) > ($2, $3)' end || '
         order by l.org_id, l.seq
         limit $4'
    using p_org_id, p_after_org_id, p_after_seq, p_limit;
end
$$;

-- A correction or refund: one signed `adjustment` entry for a workspace
-- (negative: a refund / credit). It counts in the org's and the workspace's
-- budget windows at the time it is booked (a negative amount lowers their
-- spend), and it is audited.
create or replace function costwarden.fn_ledger_adjust(
    p_org_id text, p_workspace_id text, p_amount_micros bigint, p_reason text
)
returns table (entry_seq bigint, entry_hash text)
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_pool_ids bigint[];
    v_entry record;
begin
    perform costwarden._tenant_guard(p_org_id);
    -- 1. validate: nothing is written before every argument is checked
    perform costwarden._require_workspace(p_org_id, p_workspace_id);
    if p_amount_micros is null then
        perform costwarden._raise('CW004', 'p_amount_micros is required');
    end if;
    if p_amount_micros = 0 then
        perform costwarden._raise('CW004', 'p_amount_micros must not be 0 (negative: a refund or credit)');
    end if;
    if abs(p_amount_micros::numeric) > 1000000000000000 then
        perform costwarden._raise('CW004', 'p_amount_micros must be between -10^15 and 10^15 micros');
    end if;
    if p_reason is null or btrim(p_reason) = '' then
        perform costwarden._raise('CW004', 'p_reason is required: say why the ledger is adjusted');
    end if;
    if length(p_reason) > 1000 then
        perform costwarden._raise('CW004', 'p_reason is longer than 1000 characters');
    end if;

    -- 2. the org's and the workspace's pools, locked before the ledger head
    --    (lock order: docs/internals.md#lock-order)
    perform costwarden._pool_ensure(p_org_id, 'org', '');
    perform costwarden._pool_ensure(p_org_id, 'workspace', p_workspace_id);
    v_pool_ids := costwarden._context_pool_ids(p_org_id, p_workspace_id);
    perform costwarden._lock_pools(v_pool_ids);
    perform costwarden._pool_add_spend(v_pool_ids, p_amount_micros, 0, now(), p_org_id => p_org_id);
    if p_amount_micros > 0 then
        -- spend without a hold: the lanes' grants may now reach past a line (docs/internals.md#lanes)
        perform costwarden._lanes_retire(p_org_id, v_pool_ids);
    end if;

    -- 3. the entry, then the audit record
    select a.seq, a.entry_hash into v_entry
    from costwarden._ledger_append(
        p_org_id => p_org_id, p_entry_type => 'adjustment', p_amount_micros => p_amount_micros,
        p_workspace_id => p_workspace_id, p_reason => p_reason
    ) as a;
    perform costwarden._audit(
        'ledger_adjust', p_org_id,
        jsonb_build_object('org_id', p_org_id, 'workspace_id', p_workspace_id),
        null,
        jsonb_build_object('entry_seq', v_entry.seq, 'amount_micros', p_amount_micros,
                           'reason', p_reason, 'entry_hash', encode(v_entry.entry_hash, 'hex'))
    );
    return query select v_entry.seq, encode(v_entry.entry_hash, 'hex');
end
$$;

grant execute on function
    costwarden.fn_ledger_verify(text),
    costwarden.fn_ledger_digest(text),
    costwarden.fn_ledger_identity()
to costwarden_admin, costwarden_service;
grant execute on function
    costwarden.fn_ledger_export(text, text, bigint, integer),
    costwarden.fn_ledger_adjust(text, text, bigint, text)
to costwarden_admin;
