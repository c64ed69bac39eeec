-- The spend saga (SPEC §3): reserve -> meter -> commit | release, with
-- expiry, and the reservation listings. The quote is in 05_pricing.sql.
--
-- lock order: docs/internals.md#lock-order

-- Internal: book a charge of a reservation: the pools' spend (and marks) + one
-- ledger entry. p_settle (commit of a held reservation): the pools' locks are
-- taken here (lock order: docs/internals.md#lock-order), and the reservation's
-- hold, still on its pools, comes off in the same pool-row update that books
-- the spend (_pool_add_spend). Otherwise the caller holds the pools' locks.
drop function if exists costwarden._book_charge(costwarden._reservations, jsonb, bigint, bigint, boolean, boolean);
create or replace function costwarden._book_charge(
    p_r costwarden._reservations, p_usage jsonb, p_micros bigint, p_tokens bigint,
    p_approximate boolean, p_late boolean, p_settle boolean default false,
    out seq bigint, out entry_hash bytea
)
language plpgsql
as $$
declare
    v_entry record;
begin
    if p_settle then
        -- the gates: the pools' rows are locked by the booking's update below
        perform costwarden._lock_pool_gates(p_r.pool_ids);
        if p_r.lane is not null then
            -- spend beyond a lane hold that its lane has room for grows the hold there
            -- first, as a tick's does (a grant is headroom below every alert line): the
            -- booking is then within the hold, and no limit can have reached a line
            -- (docs/internals.md#lanes)
            if (p_micros > p_r.amount_micros or p_tokens > p_r.tokens)
               and current_setting('costwarden.lanes', true) is distinct from 'off'
               and costwarden._lane_take(p_r.org_id, p_r.pool_ids, greatest(p_micros - p_r.amount_micros, 0),
                                         greatest(p_tokens - p_r.tokens, 0), p_r.lane) is not null then
                p_r.amount_micros := greatest(p_r.amount_micros, p_micros);
                p_r.tokens := greatest(p_r.tokens, p_tokens);
            end if;
            perform costwarden._lane_unhold(p_r.org_id, p_r.pool_ids, p_r.lane, p_r.amount_micros, p_r.tokens);
        end if;
    end if;
    perform costwarden._pool_add_spend(p_r.pool_ids, p_micros, p_tokens, now(),
        case when p_settle then p_r.amount_micros else 0 end, case when p_settle then p_r.tokens else 0 end,
        p_org_id => p_r.org_id);
    if p_micros > p_r.amount_micros or p_tokens > p_r.tokens then
        -- spend grew past the hold (overage, late commit): it may cross an alert threshold (09_alerts.sql)
        perform costwarden._spend_alerts(p_r.org_id, p_r.workspace_id, p_r.key_id, p_r.user_id, p_r.pool_ids);
    end if;
    v_entry := costwarden._ledger_append(
        p_org_id => p_r.org_id, p_entry_type => 'charge', p_amount_micros => p_micros,
        p_reservation_id => p_r.reservation_id, p_workspace_id => p_r.workspace_id,
        p_user_id => p_r.user_id, p_key_id => p_r.key_id, p_model => p_r.model,
        p_billing_mode => p_r.billing_mode, p_usage => p_usage, p_tokens => p_tokens,
        p_pricing_snapshot_id => p_r.pricing_snapshot_id, p_approximate => p_approximate,
        p_late => p_late
    );
    seq := v_entry.seq;
    entry_hash := v_entry.entry_hash;
end
$$;

-- Internal (reserve, step 1): check every argument of a reservation, in the
-- order SPEC §8 reports them, and price its usage at the snapshot in force.
-- Nothing is written. fingerprint (only with p_keyed, a call with an
-- idempotency key: nothing else compares it): md5 of the arguments as given
-- (p_ttl, not the resolved default: a retry after a change of default_ttl is
-- still the same request); ws: the workspace row.
drop function if exists costwarden._reserve_validate(text, text, text, jsonb, text, text, interval, jsonb);
create or replace function costwarden._reserve_validate(
    p_org_id text, p_workspace_id text, p_model text, p_usage jsonb, p_user_id text, p_key_id text,
    p_ttl interval, p_metadata jsonb, p_keyed boolean,
    out ws costwarden._workspaces, out provider text, out user_id text, out ttl interval,
    out fingerprint text, out quoted_micros bigint, out quoted_tokens bigint, out snapshot_id bigint,
    out unpriced_units text[]
)
language plpgsql stable
as $$
-- the workspace row is one of the OUT values (read once, used by reserve's
-- billing mode): plpgsql_check's extra warning about a composite OUT value
-- among others is reviewed in docs/internals.md
-- @plpgsql_check_options: extra_warnings = off
declare
    v_q record;
begin
    select * into ws from costwarden._workspaces as w
    where w.org_id = p_org_id and w.workspace_id = p_workspace_id;
    if not found then
        perform costwarden._require_workspace(p_org_id, p_workspace_id);  -- raises the precise error
    end if;
    select m.provider into provider from costwarden._models as m where m.model = p_model;
    if not found then
        perform costwarden._require_model(p_model);
    end if;
    user_id := costwarden._context_user(p_org_id, p_workspace_id, p_user_id, p_key_id);
    ttl := coalesce(p_ttl, (costwarden._setting('default_ttl') #>> '{}')::interval);
    if ttl <= interval '0' or ttl > interval '7 days' then
        perform costwarden._raise('CW004', 'p_ttl must be positive and at most 7 days');
    end if;
    if p_metadata is null or jsonb_typeof(p_metadata) <> 'object' then
        perform costwarden._raise('CW004', 'p_metadata must be a JSON object');
    end if;
    v_q := costwarden._quote_price(p_model, p_usage);   -- validates the usage
    -- a hold is at most 2^53 - 1 micro-USD (and tokens): the pools' sums of holds and
    -- lanes stay far inside bigint
    if v_q.amount_micros > 9007199254740991 or v_q.tokens > 9007199254740991 then
        perform costwarden._raise('CW004', 'p_usage: a reservation holds at most 9007199254740991 micro-USD and as many tokens');
    end if;
    quoted_micros := v_q.amount_micros;
    quoted_tokens := v_q.tokens;
    snapshot_id := v_q.snapshot_id;
    unpriced_units := v_q.unpriced_units;
    if p_keyed then
        fingerprint := md5(jsonb_build_array(p_workspace_id, p_model, p_usage, p_user_id, p_key_id,
                                             p_ttl::text, p_metadata)::text);
    end if;
end
$$;

-- Internal (reserve, step 2): idempotency. The reservation made earlier with
-- p_idempotency_key in the org, or a row of nulls when there is none. Takes a
-- keyed lock on (org, key) first (a _lock_stripes row), so that a concurrent repeat
-- waits for the first call's decision (lock order: docs/internals.md#lock-order).
-- CW007 when the earlier reservation was made with other arguments.
create or replace function costwarden._reserve_repeat(
    p_org_id text, p_idempotency_key text, p_fingerprint text
)
returns costwarden._reservations
language plpgsql
as $$
declare
    v_prev costwarden._reservations;
begin
    perform costwarden._require_text(p_idempotency_key, 'p_idempotency_key', 255);
    perform costwarden._lock_stripe(costwarden._lock_key('costwarden.reserve', p_org_id, p_idempotency_key));
    select * into v_prev from costwarden._reservations as r
    where r.org_id = p_org_id and r.idempotency_key = p_idempotency_key;
    if found and v_prev.request_fingerprint <> p_fingerprint then
        perform costwarden._raise('CW007', format(
            'p_idempotency_key: %L was used for a reservation with other arguments', p_idempotency_key));
    end if;
    return v_prev;
end
$$;

-- Internal (reserve, step 6): admission. Locks the pools (ascending pool_id,
-- held until commit: lock order: docs/internals.md#lock-order) and checks
-- every applicable limit for the request: reasons has one element per limit
-- it would break (enforced unless the limit is shadow or billing_enforce is
-- false), refused is true when an enforced one refuses it, alerts lists the
-- limits it brings to >= 80% (09_alerts.sql; announced once decided).
-- A check that finds any of these with the lanes' unused grants counted gives
-- them back and checks again (docs/internals.md#lanes). lane_micros /
-- lane_tokens: the slice each lane of the set may be carved, the least
-- headroom below an alert line divided by twice _lane_count(), and at most
-- 1 024 requests of this size (1 024 requests when no limit of that metric
-- applies), under epoch, the org's lane_epoch read before the limits.
-- A refusal after a refusal takes no lock (docs/internals.md#pool-gates): when
-- the workspace's latest reservation was refused (a caller running into a
-- refusing budget again, as a loop that retries does), fn_cost_reserve first
-- calls this with p_probe, before anything is written: the limits are checked on
-- one snapshot without locks, and when an enforced limit refuses the request
-- there and no lane holds an unused grant on the pools (_pools.lanes_unused,
-- read in the same snapshot), that is the decision (refused true) -- the one a
-- check under the locks would have made at that moment, before any hold or spend
-- still to commit. Anything else returns refused null (undecided) and is decided
-- under the pools' locks (p_probe false), which are what an admission needs.
-- Such callers are refused in parallel instead of one at a time at the pools
-- (docs/performance.md, rows 46, 47 and 50).
drop function if exists costwarden._reserve_admit(text, text, text, text, bigint[], bigint, bigint);
drop function if exists costwarden._reserve_admit(text, text, text, text, bigint[], bigint, bigint, boolean);
create or replace function costwarden._reserve_admit(
    p_org_id text, p_workspace_id text, p_key_id text, p_user_id text, p_pool_ids bigint[],
    p_micros bigint, p_tokens bigint, p_probe boolean,
    out reasons jsonb, out refused boolean, out alerts jsonb,
    out lane_micros bigint, out lane_tokens bigint, out epoch bigint
)
language plpgsql
set plan_cache_mode = force_generic_plan
as $$
declare
    v_enforce boolean;      -- billing_enforce, read when a limit would refuse
    v_enforced boolean;
    v_c record;
    v_room numeric;
    v_reclaimed boolean := false;
    v_locked boolean := false;  -- the pools are locked
    v_unused boolean;       -- a lane holds an unused grant on a pool of the set
begin
    if not p_probe then
        perform costwarden._lock_pools(p_pool_ids);
        epoch := (select o.lane_epoch from costwarden._orgs as o where o.org_id = p_org_id);
        v_locked := true;
    end if;
    loop
        reasons := '[]'::jsonb;
        refused := false;
        alerts := '[]'::jsonb;
        lane_micros := null;
        lane_tokens := null;
        v_unused := false;
        for v_c in
            -- one snapshot: the limits, and whether the held amounts count unused grants
            select l.*, (select coalesce(bool_or(p.lanes_unused), false) from costwarden._pools as p
                         where p.pool_id = any (p_pool_ids)) as unused
            from costwarden._check_limits(p_org_id, p_workspace_id, p_key_id, p_user_id, p_micros, p_tokens) as l
        loop
            v_unused := v_c.unused;
            if v_c.fails then
                v_enforce := coalesce(v_enforce, (costwarden._setting('billing_enforce'))::boolean);
                v_enforced := v_enforce and v_c.mode = 'enforce';
                reasons := reasons || costwarden._limit_reason(
                    v_c.metric, v_c.scope_kind, v_c.scope_id, v_c.period, v_c.window_kind,
                    v_c.limit_value, v_c.spent, v_c.held, v_c.requested, v_enforced);
                refused := refused or v_enforced;
            end if;
            if v_c.limit_value > 0
               and (v_c.spent::numeric + v_c.held + v_c.requested) * 5 >= v_c.limit_value::numeric * 4 then
                alerts := alerts || jsonb_build_array(jsonb_build_array(v_c.scope_kind, v_c.scope_id,
                    v_c.period, v_c.metric, v_c.window_kind, v_c.limit_value, v_c.spent + v_c.held,
                    v_c.spent + v_c.held + v_c.requested));
            end if;
            -- the headroom below the alert line ((spent + held) * 5 < limit * 4)
            v_room := greatest(floor((v_c.limit_value::numeric * 4 - 1) / 5)
                               - (v_c.spent::numeric + v_c.held + v_c.requested), 0);
            if v_c.metric = 'cost' then
                lane_micros := least(coalesce(lane_micros, v_room), v_room);
            else
                lane_tokens := least(coalesce(lane_tokens, v_room), v_room);
            end if;
        end loop;
        if not v_locked then
            if not (refused and not v_unused) then
                refused := null;    -- undecided: the caller locks the pools
            end if;
            return;
        end if;
        exit when (reasons = '[]' and alerts = '[]') or v_reclaimed;
        v_reclaimed := true;
        exit when not costwarden._lanes_reclaim(p_pool_ids);
    end loop;
    -- a lane's slice: half of it over the lanes (a set's lanes are made as its
    -- callers need them: _lanes_carve), and no more than 1 024 requests of this
    -- size, so that the sets of one org share its pools' headroom; a metric that
    -- no limit counts: 1 024 requests; at most a hold's largest amount (_reserve_validate)
    lane_micros := least(lane_micros / (2 * costwarden._lane_count()), greatest(p_micros, 1) * 1024,
                         9007199254740991);
    lane_tokens := least(lane_tokens / (2 * costwarden._lane_count()), greatest(p_tokens, 1) * 1024,
                         9007199254740991);
end
$$;

create or replace function costwarden.fn_cost_reserve(
    p_org_id text,
    p_workspace_id text,
    p_model text,
    p_usage jsonb,
    p_user_id text default null,
    p_key_id text default null,
    p_idempotency_key text default null,
    p_ttl interval default null,
    p_metadata jsonb default '{}'
)
returns table (
    reservation_id uuid, status text, amount_micros bigint, tokens bigint,
    expires_at timestamptz, billing_mode text, reasons jsonb
)
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_call record;                          -- the validated call (_reserve_validate)
    v_prev costwarden._reservations;
    v_admit record;                         -- the admission decision (_reserve_admit)
    v_unpriced boolean;
    v_mode text;
    v_reasons jsonb := '[]'::jsonb;
    v_refused boolean := false;
    v_pool_ids bigint[] := '{}'::bigint[];
    v_lanes boolean := false;               -- lanes in use (costwarden.lanes is not 'off')
    v_lane smallint;                        -- the lane holding the request (docs/internals.md#lanes)
    v_id uuid;
    v_expires timestamptz;
begin
    perform costwarden._tenant_guard(p_org_id);
    -- 1. validate (nothing is written before every argument is checked)
    v_call := costwarden._reserve_validate(
        p_org_id, p_workspace_id, p_model, p_usage, p_user_id, p_key_id, p_ttl, p_metadata,
        p_idempotency_key is not null);

    -- 2. idempotency: a repeat returns the first call's row
    if p_idempotency_key is not null then
        v_prev := costwarden._reserve_repeat(p_org_id, p_idempotency_key, v_call.fingerprint);
        if v_prev.reservation_id is not null then
            return query select v_prev.reservation_id,
                case when v_prev.status = 'denied' then 'denied' else 'held' end,
                v_prev.quoted_micros, v_prev.quoted_tokens,
                case when v_prev.status = 'denied' then null else v_prev.created_at + v_prev.ttl end,
                v_prev.billing_mode, v_prev.reasons;
            return;
        end if;
    end if;

    -- 3. the quote's snapshot is fixed for the reservation's life; unpriced policy
    --    (incomplete price: unpriced_policy 'free' holds it at the partial price and
    --    says so; 'reject' records a denial, never CW006, which only the quote raises)
    v_unpriced := v_call.snapshot_id is null or cardinality(v_call.unpriced_units) > 0;
    v_mode := (costwarden._billing_mode(v_call.ws)).billing_mode;
    if v_unpriced then
        v_refused := costwarden._setting('unpriced_policy') <> '"free"';
        v_reasons := v_reasons || costwarden._reason('unpriced_model', 'workspace', p_workspace_id,
                                                     p_requested => v_call.quoted_micros, p_enforced => v_refused);
    end if;

    -- 4. refusals that no shadow mode lifts
    if v_mode = 'disabled' then
        v_reasons := v_reasons || costwarden._reason('billing_disabled', 'workspace', p_workspace_id,
                                                     p_requested => v_call.quoted_micros);
        v_refused := true;
    elsif v_mode = 'byok' and not costwarden._byok_usable(p_org_id, p_workspace_id, v_call.provider) then
        v_reasons := v_reasons || costwarden._reason('byok_credential_missing', 'workspace', p_workspace_id,
                                                     p_requested => v_call.quoted_micros);
        v_refused := true;
    end if;
    if costwarden._workspace_frozen(p_org_id, p_workspace_id) then
        v_reasons := v_reasons || costwarden._reason('anomaly_freeze', 'workspace', p_workspace_id,
                                                     p_requested => v_call.quoted_micros);
        v_refused := true;
    end if;

    -- 5. a lane of the call's pools that can hold the request and is free now
    --    admits it without the pools (docs/internals.md#lanes; not when the setting
    --    costwarden.lanes is 'off'); else the reservation is recorded first, so
    --    that the admission lock below is held as briefly as possible
    if not v_refused then
        v_pool_ids := costwarden._context_pool_ids(p_org_id, p_workspace_id, p_key_id, v_call.user_id);
        v_expires := now() + v_call.ttl;
        v_lanes := cardinality(v_pool_ids) > 0 and current_setting('costwarden.lanes', true) is distinct from 'off';
        -- a refusal after a refusal of the workspace (its latest reservation: the
        -- index of a workspace's reservations by creation) is decided without locks,
        -- before a lane is tried (its grants were given back by that refusal) and
        -- before anything is written: the denial is one insert (the circuit is not
        -- consulted for a refusal)
        if (select r.status = 'denied' from costwarden._reservations as r
            where r.org_id = p_org_id and r.workspace_id = p_workspace_id
            order by r.created_at desc limit 1) then
            v_admit := costwarden._reserve_admit(
                p_org_id, p_workspace_id, p_key_id, v_call.user_id, v_pool_ids,
                v_call.quoted_micros, v_call.quoted_tokens, true);
            if v_admit.refused then
                if v_admit.alerts <> '[]' then
                    perform costwarden._budget_alerts(p_org_id, v_admit.alerts, true);
                end if;
                v_reasons := v_reasons || v_admit.reasons;
                v_refused := true;
                v_expires := null;
                v_pool_ids := '{}';
            end if;
        end if;
        if v_lanes and not v_refused then
            v_lane := costwarden._lane_take(p_org_id, v_pool_ids, v_call.quoted_micros, v_call.quoted_tokens);
        end if;
    end if;
    v_id := costwarden._reservation_id(p_org_id);
    insert into costwarden._reservations (
        reservation_id, org_id, workspace_id, user_id, key_id, model, provider, status, billing_mode,
        pricing_snapshot_id, usage, quoted_micros, quoted_tokens, amount_micros, tokens, pool_ids,
        reasons, idempotency_key, request_fingerprint, ttl, metadata, expires_at, finished_at, lane
    ) values (
        v_id, p_org_id, p_workspace_id, v_call.user_id, p_key_id, p_model, v_call.provider,
        case when v_refused then 'denied' else 'held' end, v_mode,
        v_call.snapshot_id, p_usage, v_call.quoted_micros, v_call.quoted_tokens,
        case when v_refused then 0 else v_call.quoted_micros end,
        case when v_refused then 0 else v_call.quoted_tokens end,
        v_pool_ids, v_reasons, p_idempotency_key, v_call.fingerprint, v_call.ttl, p_metadata, v_expires,
        case when v_refused then now() end, v_lane
    );

    if not v_refused then
        -- 6. every applicable limit, under the pools' locks (a lane's grant is
        --    headroom below every alert line: nothing to report)
        if v_lane is null then
            v_admit := costwarden._reserve_admit(
                p_org_id, p_workspace_id, p_key_id, v_call.user_id, v_pool_ids,
                v_call.quoted_micros, v_call.quoted_tokens, false);
        else
            select '[]'::jsonb as reasons, false as refused, '[]'::jsonb as alerts,
                   null::bigint as lane_micros, null::bigint as lane_tokens, null::bigint as epoch
            into v_admit;
        end if;
        v_refused := v_admit.refused;

        -- 7. the provider's circuit, last: a half-open probe is only spent on a call that goes ahead
        if not v_refused and not costwarden._circuit_admit(v_call.provider) then
            v_admit.reasons := v_admit.reasons || costwarden._reason(
                'circuit_open', 'provider', v_call.provider, p_requested => v_call.quoted_micros);
            v_refused := true;
        end if;
        if v_admit.alerts <> '[]' then
            perform costwarden._budget_alerts(p_org_id, v_admit.alerts, v_refused);
        end if;

        -- 8. hold, or turn the record into a denial
        if v_refused then
            v_expires := null;
            if v_lane is not null then
                perform costwarden._lane_unhold(p_org_id, v_pool_ids, v_lane,
                                                v_call.quoted_micros, v_call.quoted_tokens, p_used => false);
            end if;
            update costwarden._reservations as r
            set status = 'denied', amount_micros = 0, tokens = 0, pool_ids = '{}', lane = null,
                reasons = v_reasons || v_admit.reasons, expires_at = null, finished_at = now()
            where r.reservation_id = v_id;
        elsif v_lane is null then
            perform costwarden._pools_hold(v_pool_ids, v_call.quoted_micros, v_call.quoted_tokens);
            if v_admit.reasons <> '[]' then
                update costwarden._reservations as r
                set reasons = v_reasons || v_admit.reasons where r.reservation_id = v_id;
            elsif v_lanes and v_admit.alerts = '[]'
                  and v_admit.lane_micros >= greatest(v_call.quoted_micros, 1)
                  and v_admit.lane_tokens >= greatest(v_call.quoted_tokens, 1) then
                -- 9. headroom for the lanes of the set, while the pools are locked
                perform costwarden._lanes_carve(p_org_id, v_pool_ids, v_admit.epoch,
                                                v_admit.lane_micros, v_admit.lane_tokens,
                                                v_call.quoted_micros, v_call.quoted_tokens);
            end if;
        end if;
        v_reasons := v_reasons || v_admit.reasons;
    end if;
    reservation_id := v_id;
    status := case when v_refused then 'denied' else 'held' end;
    amount_micros := v_call.quoted_micros;
    tokens := v_call.quoted_tokens;
    expires_at := v_expires;
    billing_mode := v_mode;
    reasons := v_reasons;
    return next;
end
$$;

-- Internal: the per-unit difference p_usage - p_less (units that differ only).
create or replace function costwarden._usage_minus(p_usage jsonb, p_less jsonb)
returns jsonb
language sql immutable
as $$
    select coalesce(jsonb_object_agg(u.key, (u.value::text)::numeric - coalesce((p_less ->> u.key)::numeric, 0)), '{}')
    from jsonb_each(p_usage) as u
    where (u.value::text)::numeric <> coalesce((p_less ->> u.key)::numeric, 0)
$$;

-- Internal: CW004 unless every unit of p_usage is >= the same unit of p_floor.
create or replace function costwarden._usage_not_below(p_usage jsonb, p_floor jsonb, p_message text)
returns void
language plpgsql stable
as $$
declare
    v_unit text;
begin
    select f.key into v_unit
    from jsonb_each(coalesce(p_floor, '{}')) as f
    where coalesce((p_usage ->> f.key)::numeric, 0) < (f.value::text)::numeric
    order by f.key
    limit 1;
    if v_unit is not null then
        perform costwarden._raise('CW004', format('p_usage.%s: %s', v_unit, p_message));
    end if;
end
$$;

create or replace function costwarden.fn_cost_meter_tick(p_reservation_id uuid, p_usage jsonb)
returns table (metered_micros bigint, amount_micros bigint, remaining_micros bigint, action text)
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_r costwarden._reservations;
    v_tokens bigint;
    v_cost bigint;
    v_extra bigint;
    v_extra_tokens bigint;
    v_action text := 'continue';
    v_enforce boolean;
    v_c record;
    v_shadow jsonb := '[]'::jsonb;
begin
    v_r := costwarden._reservation_for_update(p_reservation_id);
    perform costwarden._tenant_guard(v_r.org_id, p_arg => 'p_reservation_id');
    if v_r.status <> 'held' then
        perform costwarden._raise('CW003', format('reservation %s is %s, not held: it cannot be metered',
                                                  p_reservation_id, v_r.status));
    end if;
    if v_r.expires_at < now() then
        perform costwarden._raise('CW003', format('reservation %s expired at %s', p_reservation_id, v_r.expires_at));
    end if;
    select p.tokens, p.amount_micros into v_tokens, v_cost
    from costwarden._reservation_price(v_r.pricing_snapshot_id, p_usage) as p;
    perform costwarden._usage_not_below(p_usage, v_r.metered_usage,
        'usage is cumulative and must not go backwards');
    if v_cost > 9007199254740991 or v_tokens > 9007199254740991 then   -- as a reserve's (_reserve_validate)
        perform costwarden._raise('CW004', 'p_usage: a reservation holds at most 9007199254740991 micro-USD and as many tokens');
    end if;
    v_extra := greatest(v_cost - v_r.amount_micros, 0);
    v_extra_tokens := greatest(v_tokens - v_r.tokens, 0);
    if (v_extra > 0 or v_extra_tokens > 0) and v_r.lane is not null
       and current_setting('costwarden.lanes', true) is distinct from 'off'
       and costwarden._lane_take(v_r.org_id, v_r.pool_ids, v_extra, v_extra_tokens, v_r.lane) is not null then
        -- the hold grows on its lane, which had room for the shortfall: a grant is
        -- headroom below every alert line, so no limit would fail (docs/internals.md#lanes)
        v_r.amount_micros := v_r.amount_micros + v_extra;
        v_r.tokens := v_r.tokens + v_extra_tokens;
    elsif v_extra > 0 or v_extra_tokens > 0 then
        -- try to extend the hold by the shortfall under every applicable limit
        perform costwarden._lock_pools(v_r.pool_ids);
        if v_r.lane is not null then
            -- the hold leaves its lane for the pools, where it can grow (docs/internals.md#lanes)
            perform costwarden._lane_unhold(v_r.org_id, v_r.pool_ids, v_r.lane, v_r.amount_micros, v_r.tokens);
            v_r.lane := null;
        end if;
        -- a limit that fails with the lanes' unused grants counted is checked without
        -- them (none that fails with them counted: none without)
        if exists (select from costwarden._check_limits(v_r.org_id, v_r.workspace_id, v_r.key_id, v_r.user_id,
                                                        v_extra, v_extra_tokens) as l
                   where l.fails) then
            perform costwarden._lanes_reclaim(v_r.pool_ids);
            v_enforce := (costwarden._setting('billing_enforce'))::boolean;
            for v_c in
                select * from costwarden._check_limits(v_r.org_id, v_r.workspace_id, v_r.key_id, v_r.user_id,
                                                       v_extra, v_extra_tokens)
                where fails
            loop
                if v_enforce and v_c.mode = 'enforce' then
                    v_action := 'abort';
                else
                    v_shadow := v_shadow || costwarden._limit_reason(
                        v_c.metric, v_c.scope_kind, v_c.scope_id, v_c.period, v_c.window_kind,
                        v_c.limit_value, v_c.spent, v_c.held, v_c.requested, false);
                end if;
            end loop;
        end if;
        if v_action = 'continue' then
            perform costwarden._pools_hold(v_r.pool_ids, v_extra, v_extra_tokens);
            v_r.amount_micros := v_r.amount_micros + v_extra;
            v_r.tokens := v_r.tokens + v_extra_tokens;
            if v_shadow <> '[]' then
                v_r.tick_reasons := coalesce(v_r.tick_reasons, '[]'::jsonb) || v_shadow;
            end if;
        end if;
    end if;
    update costwarden._reservations as r
    set metered_usage = p_usage, metered_micros = v_cost, metered_tokens = v_tokens,
        amount_micros = v_r.amount_micros, tokens = v_r.tokens, tick_reasons = v_r.tick_reasons, lane = v_r.lane,
        expires_at = greatest(r.expires_at, now() + r.ttl)
    where r.reservation_id = v_r.reservation_id;
    return query select v_cost, v_r.amount_micros::bigint, greatest(v_r.amount_micros - v_cost, 0), v_action;
end
$$;

create or replace function costwarden.fn_cost_commit(
    p_reservation_id uuid, p_usage jsonb, p_approximate boolean default false
)
returns table (
    entry_seq bigint, charged_micros bigint, released_micros bigint, overage_micros bigint, entry_hash text
)
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_r costwarden._reservations;
    v_tokens bigint;
    v_cost bigint;
    v_charge bigint;
    v_charge_tokens bigint;
    v_released bigint;
    v_overage bigint;
    v_late boolean;
    v_price record;
    v_entry record;
    v_result jsonb;
begin
    if p_usage is null or jsonb_typeof(p_usage) <> 'object' then
        perform costwarden._raise('CW004', 'p_usage must be a JSON object of usage units');
    end if;
    if p_approximate is null then
        perform costwarden._raise('CW004', 'p_approximate must be true or false');
    end if;
    v_r := costwarden._reservation_for_update(p_reservation_id);
    perform costwarden._tenant_guard(v_r.org_id, p_arg => 'p_reservation_id');
    if v_r.commit_usage is not null then
        if v_r.commit_usage = p_usage and v_r.commit_approximate = p_approximate then
            return query select (v_r.commit_result ->> 'entry_seq')::bigint,
                (v_r.commit_result ->> 'charged_micros')::bigint,
                (v_r.commit_result ->> 'released_micros')::bigint,
                (v_r.commit_result ->> 'overage_micros')::bigint,
                v_r.commit_result ->> 'entry_hash';
            return;
        end if;
        perform costwarden._raise('CW007', format(
            'p_usage: reservation %s was already committed with other usage', p_reservation_id));
    end if;
    if v_r.status not in ('held', 'expired') then
        perform costwarden._raise('CW003', format('reservation %s is %s: it cannot be committed',
                                                  p_reservation_id, v_r.status));
    end if;
    v_price := costwarden._reservation_price(v_r.pricing_snapshot_id, p_usage);
    v_tokens := v_price.tokens;
    v_cost := v_price.amount_micros;
    if v_r.status = 'held' then
        -- the hold comes off in the update that books the charge (_book_charge below)
        v_charge := v_cost;
        v_charge_tokens := v_tokens;
        v_released := greatest(v_r.amount_micros - v_cost, 0);
        v_overage := greatest(v_cost - v_r.amount_micros, 0);
        v_late := now() > v_r.expires_at;
    else
        -- a late commit: the hold is gone; expiry may have charged metered usage
        if v_r.charged_micros > 0 or v_r.charged_tokens > 0 then
            perform costwarden._usage_not_below(p_usage, v_r.metered_usage,
                'the actual usage is below the metered usage that expiry already charged');
        end if;
        perform costwarden._lock_pools(v_r.pool_ids);
        v_charge := greatest(v_cost - v_r.charged_micros, 0);
        v_charge_tokens := greatest(v_tokens - v_r.charged_tokens, 0);
        v_released := 0;
        v_overage := v_charge;
        v_late := true;
    end if;
    -- a remainder entry records the usage beyond what expiry already charged
    v_entry := costwarden._book_charge(
        v_r,
        case when v_r.status = 'expired' and v_r.metered_usage is not null and v_r.charged_micros + v_r.charged_tokens > 0
             then costwarden._usage_minus(p_usage, v_r.metered_usage) else p_usage end,
        v_charge, v_charge_tokens, p_approximate, v_late, p_settle => v_r.status = 'held');
    v_result := jsonb_build_object('entry_seq', v_entry.seq, 'charged_micros', v_charge,
        'released_micros', v_released, 'overage_micros', v_overage,
        'entry_hash', encode(v_entry.entry_hash, 'hex'));
    update costwarden._reservations as r
    set status = 'committed', charged_micros = r.charged_micros + v_charge,
        charged_tokens = r.charged_tokens + v_charge_tokens,
        amount_micros = 0, tokens = 0,
        commit_usage = p_usage, commit_approximate = p_approximate, commit_result = v_result,
        finished_at = now()
    where r.reservation_id = v_r.reservation_id;
    entry_seq := v_entry.seq;
    charged_micros := v_charge;
    released_micros := v_released;
    overage_micros := v_overage;
    entry_hash := encode(v_entry.entry_hash, 'hex');
    return next;
end
$$;

create or replace function costwarden.fn_cost_release(p_reservation_id uuid, p_reason text default null)
returns table (released_micros bigint)
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_r costwarden._reservations;
    v_charge bigint := 0;
    v_ran boolean;          -- meter ticks recorded usage: the call ran
begin
    if p_reason is not null and length(p_reason) > 1000 then
        perform costwarden._raise('CW004', 'p_reason is longer than 1000 characters');
    end if;
    v_r := costwarden._reservation_for_update(p_reservation_id);
    perform costwarden._tenant_guard(v_r.org_id, p_arg => 'p_reservation_id');
    if v_r.status in ('released', 'expired') then
        return query select 0::bigint;
        return;
    end if;
    if v_r.status <> 'held' then
        perform costwarden._raise('CW003', format('reservation %s is %s: it cannot be released',
                                                  p_reservation_id, v_r.status));
    end if;
    v_ran := v_r.metered_usage is not null and (v_r.metered_micros > 0 or v_r.metered_tokens > 0);
    -- a lane hold of a call that did not run goes back to its lane, the pools neither
    -- locked nor written, while the lane has room (docs/internals.md#lanes)
    if v_r.lane is null or v_ran
       or not costwarden._lane_release(v_r.org_id, v_r.pool_ids, v_r.lane, v_r.amount_micros, v_r.tokens) then
        perform costwarden._pools_unhold(v_r.pool_ids, v_r.amount_micros, v_r.tokens);
        if v_r.lane is not null then
            perform costwarden._lane_unhold(v_r.org_id, v_r.pool_ids, v_r.lane, v_r.amount_micros, v_r.tokens);
        end if;
    end if;
    if v_ran then
        -- the call ran: what the meter ticks recorded is charged, approximately
        perform costwarden._book_charge(v_r, v_r.metered_usage, v_r.metered_micros, v_r.metered_tokens,
                                        true, false);
        v_charge := v_r.metered_micros;
    end if;
    update costwarden._reservations as r
    set status = 'released', release_reason = p_reason, charged_micros = v_charge,
        charged_tokens = case when v_charge > 0 or v_r.metered_tokens > 0 then v_r.metered_tokens else 0 end,
        amount_micros = 0, tokens = 0, finished_at = now()
    where r.reservation_id = v_r.reservation_id;
    return query select greatest(v_r.amount_micros - v_charge, 0);
end
$$;

create or replace function costwarden.fn_cost_expire_reservations(p_batch integer default 1000)
returns integer
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_ids uuid[];
    v_r costwarden._reservations;
    v_commit boolean := costwarden._setting('expire_action') = '"commit_metered"';
    v_n integer := 0;
    v_charged boolean;
begin
    perform costwarden._require_limit(p_batch, 100000, 'p_batch');
    -- overlapping runs skip each other's rows: nothing is processed twice
    select coalesce(array_agg(x.reservation_id), '{}') into v_ids
    from (
        select r.reservation_id from costwarden._reservations as r
        where r.status = 'held' and r.expires_at < now()
        order by r.expires_at
        limit p_batch
        for update skip locked
    ) as x;
    if cardinality(v_ids) = 0 then
        return 0;
    end if;
    perform costwarden._lock_pools(array(
        select distinct unnest(r.pool_ids) from costwarden._reservations as r
        where r.reservation_id = any (v_ids)
    ));
    -- then their lanes, in key order (lock order: docs/internals.md#lock-order)
    perform costwarden._lanes_lock(v_ids);
    for v_r in
        select * from costwarden._reservations as r
        where r.reservation_id = any (v_ids)
        order by r.org_id, r.expires_at
    loop
        perform costwarden._pools_unhold(v_r.pool_ids, v_r.amount_micros, v_r.tokens);
        if v_r.lane is not null then
            perform costwarden._lane_unhold(v_r.org_id, v_r.pool_ids, v_r.lane, v_r.amount_micros, v_r.tokens);
        end if;
        v_charged := v_commit and v_r.metered_usage is not null
                     and (v_r.metered_micros > 0 or v_r.metered_tokens > 0);
        if v_charged then
            perform costwarden._book_charge(v_r, v_r.metered_usage, v_r.metered_micros, v_r.metered_tokens,
                                            true, false);
        end if;
        update costwarden._reservations as r
        set status = 'expired', amount_micros = 0, tokens = 0, finished_at = now(),
            charged_micros = case when v_charged then v_r.metered_micros else 0 end,
            charged_tokens = case when v_charged then v_r.metered_tokens else 0 end
        where r.reservation_id = v_r.reservation_id;
        v_n := v_n + 1;
    end loop;
    return v_n;
end
$$;

-- Internal: reservations newest first, filtered (both listings below).
-- Checks p_status and p_limit (up to p_max).
create or replace function costwarden._reservations_page(
    p_org_id text, p_user_id text, p_status text, p_limit integer, p_max integer
)
returns table (
    reservation_id uuid, org_id text, workspace_id text, user_id text, key_id text, model text,
    status text, amount_micros bigint, metered_micros bigint, charged_micros bigint,
    created_at timestamptz, expires_at timestamptz, reasons jsonb
)
language plpgsql stable
as $$
begin
    if p_status is not null and p_status not in ('held', 'denied', 'committed', 'released', 'expired') then
        perform costwarden._raise('CW004', 'p_status must be held, denied, committed, released or expired');
    end if;
    perform costwarden._require_limit(p_limit, p_max);
    return query
    select r.reservation_id, r.org_id, r.workspace_id, r.user_id, r.key_id, r.model, r.status::text,
           r.quoted_micros, r.metered_micros::bigint, r.charged_micros::bigint, r.created_at, r.expires_at,
           r.reasons || coalesce(r.tick_reasons, '[]'::jsonb)
    from costwarden._reservations as r
    where (p_org_id is null or r.org_id = p_org_id)
      and (p_user_id is null or r.user_id = p_user_id)
      and (p_status is null or r.status = p_status)
    order by r.created_at desc, r.reservation_id
    limit p_limit;
end
$$;

create or replace function costwarden.fn_get_my_cost_reservations(p_status text default null, p_limit integer default 100)
returns table (
    reservation_id uuid, org_id text, workspace_id text, user_id text, key_id text, model text,
    status text, amount_micros bigint, metered_micros bigint, charged_micros bigint,
    created_at timestamptz, expires_at timestamptz, reasons jsonb
)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_actor record;
begin
    select * into v_actor from costwarden._actor();
    if v_actor.org_id is null then
        perform costwarden._raise('CW005', 'no actor: a costwarden_authenticator session sets request.jwt.claims or costwarden.actor_org / actor_user; another login needs a binding (fn_tenant_login_bind)');
    end if;
    if v_actor.user_id is null and not costwarden._caller_is_privileged() then
        perform costwarden._raise('CW005', 'a tenant actor needs a user (JWT sub or costwarden.actor_user)');
    end if;
    return query select * from costwarden._reservations_page(v_actor.org_id, v_actor.user_id, p_status, p_limit, 10000);
end
$$;

-- All reservations of an org (or all orgs), newest first (admin).
create or replace function costwarden.fn_reservations_list(
    p_org_id text default null, p_status text default null, p_limit integer default 100
)
returns table (
    reservation_id uuid, org_id text, workspace_id text, user_id text, key_id text, model text,
    status text, amount_micros bigint, metered_micros bigint, charged_micros bigint,
    created_at timestamptz, expires_at timestamptz, reasons jsonb
)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
begin
    perform costwarden._tenant_guard(p_org_id);
    perform costwarden._optional_org(p_org_id);
    return query select * from costwarden._reservations_page(p_org_id, null, p_status, p_limit, 100000);
end
$$;

grant execute on function
    costwarden.fn_cost_reserve(text, text, text, jsonb, text, text, text, interval, jsonb),
    costwarden.fn_cost_meter_tick(uuid, jsonb),
    costwarden.fn_cost_commit(uuid, jsonb, boolean),
    costwarden.fn_cost_release(uuid, text),
    costwarden.fn_cost_expire_reservations(integer)
to costwarden_service;
grant execute on function costwarden.fn_get_my_cost_reservations(text, integer)
to costwarden_service, costwarden_tenant;
grant execute on function costwarden.fn_reservations_list(text, text, integer) to costwarden_admin;
