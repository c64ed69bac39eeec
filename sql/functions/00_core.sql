-- Core: the pieces several concerns use. Every other file in sql/functions/
-- may call what this file defines; this file calls nothing defined later.
--
--   errors and arguments   _raise, _require_text, _require_limit, _require_org, _optional_org,
--                          _require_workspace, _require_model, _require_provider
--   who is calling         _actor, _caller_is_privileged
--   audit                  _audit (the writer; the listing is 01_audit.sql)
--   alerts                 _alert_emit (the writer; fn_alert_get is 09_alerts.sql)
--   append-only tables     _forbid_mutation (the trigger function), _append_only
--   settings (hot path)    _setting
--   call context           _context_user
--   pools                  _pool_ensure, _context_pool_ids, _lock_pools, _pools_hold, _pools_unhold
--   lanes (at the end)     _lane_take, _lane_unhold, _lanes_lock, _lanes_reclaim, _lanes_carve,
--                          _lanes_retire, _pool_lane_grants, the lane_epoch triggers
--   locks (row locks)      _lock_key, _lock_stripe, _lock_named, _try_lock_named
--   reservation record     _reservation_id, _reservation_for_update, _reason
--
-- PUBLIC executes nothing here: per-schema default privileges cannot revoke
-- the global default EXECUTE on new functions, so the migration runner ends
-- its transaction with
--   revoke all on all functions / tables / sequences in schema costwarden from public
-- and each file grants EXECUTE per role explicitly.
--
-- Convention: every fn_* function is SECURITY DEFINER with
--   set search_path = pg_catalog, pg_temp
-- and schema-qualified bodies. Internal helpers (named _*) are SECURITY
-- INVOKER, executable by nobody but the owner, and carry no SET clause: they
-- run inside an fn_* caller's pinned search_path, and without the clause the
-- small SQL ones are inlined and the plpgsql ones skip a GUC save/restore on
-- every call of the hot path. Trigger functions keep the clause, since they
-- run in whatever session fires them. (The plan_cache_mode of the pool
-- helpers here (and _lane_take) and in 06_budgets.sql, _check_limits and
-- _user_effective_limits is the one exception, explained above _lock_pools.)
--
-- lock order: docs/internals.md#lock-order

-- Internal: raise a costwarden error. p_code is one of CW001..CW007 (SPEC §8).
create or replace function costwarden._raise(p_code text, p_message text, p_hint text default null)
returns void
language plpgsql volatile
as $$
begin
    if p_hint is null then
        raise exception using errcode = p_code, message = p_message;
    end if;
    raise exception using errcode = p_code, message = p_message, hint = p_hint;
end
$$;

-- Internal: a required text argument, trimmed of nothing, non-empty.
create or replace function costwarden._require_text(p_value text, p_arg text, p_max integer default 200)
returns text
language plpgsql immutable
as $$
begin
    if p_value is null then
        perform costwarden._raise('CW004', format('%s is required', p_arg));
    end if;
    if p_value = '' or p_value <> btrim(p_value) then
        perform costwarden._raise('CW004', format('%s must be a non-empty identifier without surrounding blanks', p_arg));
    end if;
    if length(p_value) > p_max then
        perform costwarden._raise('CW004', format('%s is longer than %s characters', p_arg, p_max));
    end if;
    return p_value;
end
$$;

-- Internal: a page or batch size argument p_arg, 1 to p_max (CW004 otherwise).
create or replace function costwarden._require_limit(
    p_limit integer, p_max integer default 100000, p_arg text default 'p_limit'
)
returns integer
language plpgsql stable
as $$
begin
    if p_limit is null or p_limit < 1 or p_limit > p_max then
        perform costwarden._raise('CW004', format('%s must be between 1 and %s', p_arg, p_max));
    end if;
    return p_limit;
end
$$;

-- Internal: blocks UPDATE / DELETE / TRUNCATE on append-only tables (CW001):
-- the audit log, pricing snapshots, the ledger and its heads, BYOK keys and
-- their resolve trail, circuit events, the orgs (delete).
create or replace function costwarden._forbid_mutation()
returns trigger
language plpgsql set search_path = pg_catalog, pg_temp
as $$
begin
    -- raised here, not through _raise: a role granted the table may not execute _raise
    raise exception using
        errcode = 'CW001',
        message = format('%s.%s is append-only: %s is not allowed', tg_table_schema, tg_table_name, lower(tg_op));
end
$$;

-- Internal: make a table append-only. Two triggers that raise CW001 through
-- _forbid_mutation: p_row_trigger before p_events (update or delete, or
-- delete alone) for each row, and <table>_no_truncate before truncate. The
-- function files that own the tables call it.
create or replace function costwarden._append_only(p_table regclass, p_row_trigger text, p_events text)
returns void
language plpgsql
as $$
begin
    -- the events are chosen from two literals, never interpolated
    if p_events = 'update or delete' then
        execute format('create or replace trigger %I before update or delete on %s '
                       'for each row execute function costwarden._forbid_mutation()', p_row_trigger, p_table);
    elsif p_events = 'delete' then
        execute format('create or replace trigger %I before delete on %s '
                       'for each row execute function costwarden._forbid_mutation()', p_row_trigger, p_table);
    else
        raise exception 'costwarden._append_only: p_events must be ''update or delete'' or ''delete''';
    end if;
    execute format('create or replace trigger %I before truncate on %s '
                   'for each statement execute function costwarden._forbid_mutation()',
                   (select c.relname from pg_catalog.pg_class as c where c.oid = p_table) || '_no_truncate',
                   p_table);
end
$$;

-- The actor of a call (SPEC §9, §12). When the session user is a member of
-- costwarden_authenticator (an HTTP layer such as PostgREST or costwarden serve
-- that logs in and then SET ROLEs; superusers count as members):
-- request.jwt.claims (org_id, sub) when set, else costwarden.actor_org /
-- costwarden.actor_user. Any other session -- or a trusted one that names no
-- actor -- gets the login binding of its session user (fn_tenant_login_bind).
-- Settings made by an untrusted session are ignored. Both may be null.
create or replace function costwarden._actor(out org_id text, out user_id text)
language plpgsql stable
as $$
declare
    v_claims text;
    v_json jsonb;
begin
    if pg_has_role(session_user, 'costwarden_authenticator', 'MEMBER') then
        v_claims := nullif(current_setting('request.jwt.claims', true), '');
        if v_claims is not null then
            begin
                v_json := v_claims::jsonb;
            exception when others then
                perform costwarden._raise('CW005', 'request.jwt.claims is not valid JSON');
            end;
            org_id := nullif(v_json ->> 'org_id', '');
            user_id := nullif(v_json ->> 'sub', '');
        end if;
        org_id := coalesce(org_id, nullif(current_setting('costwarden.actor_org', true), ''));
        user_id := coalesce(user_id, nullif(current_setting('costwarden.actor_user', true), ''));
        if org_id is not null or user_id is not null then
            return;
        end if;
    end if;
    select b.org_id, b.user_id into org_id, user_id
    from costwarden._tenant_logins as b
    where b.login = session_user;
end
$$;

-- Internal: the current transaction's commit waits for its WAL flush whatever
-- the session's synchronous_commit: 'off' is raised to 'on' until the
-- transaction ends (stricter values, such as remote_apply, are kept). Called by
-- every write of a record that must outlive a crash once its caller has been
-- told of it: a ledger entry, an admin change, a key release's trail. A
-- reservation follows the session's setting (docs/saga.md#durability).
-- PL/pgSQL, not SQL: a SQL function that is not inlined is planned again in
-- every transaction (docs/performance.md, row 55).
create or replace function costwarden._durable_commit()
returns void
language plpgsql volatile
as $$
begin
    if current_setting('synchronous_commit') = 'off' then
        perform set_config('synchronous_commit', 'on', true);
    end if;
end
$$;

-- Internal: record one admin change.
create or replace function costwarden._audit(
    p_action text, p_org_id text, p_target jsonb, p_before jsonb, p_after jsonb
)
returns void
language plpgsql
as $$
declare
    v_actor record;
begin
    perform costwarden._durable_commit();
    select * into v_actor from costwarden._actor();
    insert into costwarden._audit_log (db_role, actor_org, actor_user, action, org_id, target, before, after)
    values (session_user, v_actor.org_id, v_actor.user_id, p_action, p_org_id, p_target, p_before, p_after);
end
$$;

-- Internal, hot path: the value in force (changed value or default). No validation.
-- PL/pgSQL, not SQL: a SQL function whose body has sub-selects is never inlined, and
-- PostgreSQL plans such a function's body again on every call (~35 us); PL/pgSQL
-- caches the plan for the session (docs/performance.md).
create or replace function costwarden._setting(p_key text)
returns jsonb
language plpgsql stable parallel safe
as $$
begin
    return coalesce(
        (select s.value from costwarden._settings as s where s.key = p_key),
        (select d.default_value from costwarden._setting_defs as d where d.key = p_key)
    );
end
$$;

-- Internal: existence checks raising CW002 with the argument's name.
create or replace function costwarden._require_org(p_org_id text)
returns text
language plpgsql stable
as $$
begin
    if p_org_id is null or p_org_id = '' then
        perform costwarden._raise('CW004', 'p_org_id is required');
    end if;
    if not exists (select from costwarden._orgs where org_id = p_org_id) then
        perform costwarden._raise('CW002', format('p_org_id: unknown org %L', p_org_id));
    end if;
    return p_org_id;
end
$$;

-- Internal: an optional org filter of a listing: null (every org) or a known org.
create or replace function costwarden._optional_org(p_org_id text)
returns text
language plpgsql stable
as $$
begin
    if p_org_id is not null then
        perform costwarden._require_org(p_org_id);
    end if;
    return p_org_id;
end
$$;

create or replace function costwarden._require_workspace(p_org_id text, p_workspace_id text)
returns costwarden._workspaces
language plpgsql stable
as $$
declare
    v_ws costwarden._workspaces;
begin
    perform costwarden._require_org(p_org_id);
    if p_workspace_id is null or p_workspace_id = '' then
        perform costwarden._raise('CW004', 'p_workspace_id is required');
    end if;
    select * into v_ws from costwarden._workspaces where org_id = p_org_id and workspace_id = p_workspace_id;
    if not found then
        perform costwarden._raise('CW002', format('p_workspace_id: unknown workspace %L in org %L', p_workspace_id, p_org_id));
    end if;
    return v_ws;
end
$$;

create or replace function costwarden._require_model(p_model text, p_arg text default 'p_model')
returns costwarden._models
language plpgsql stable
as $$
declare
    v_model costwarden._models;
begin
    if p_model is null or p_model = '' then
        perform costwarden._raise('CW004', format('%s is required', p_arg));
    end if;
    select * into v_model from costwarden._models where model = p_model;
    if not found then
        perform costwarden._raise('CW002', format('%s: unknown model %L', p_arg, p_model));
    end if;
    return v_model;
end
$$;

-- Internal: p_provider must name a provider of the catalogue (some model of
-- it): CW004 when missing, empty or longer than 100 characters, CW002 when
-- unknown, worded by p_unknown (a format with one %L, the provider) so that
-- each family of RPCs keeps its documented message.
create or replace function costwarden._require_provider(
    p_provider text,
    p_unknown text default 'p_provider: unknown provider %L (no model of it in the catalogue)'
)
returns text
language plpgsql stable
as $$
begin
    perform costwarden._require_text(p_provider, 'p_provider', 100);
    if not exists (select from costwarden._models as m where m.provider = p_provider) then
        perform costwarden._raise('CW002', format(p_unknown, p_provider));
    end if;
    return p_provider;
end
$$;

-- Internal: check the user and key of a call context (SPEC §2) and return
-- the effective user: the given one, else the key's owner. An unknown user or
-- key is CW002; a key of another workspace or another user is CW004.
create or replace function costwarden._context_user(
    p_org_id text, p_workspace_id text, p_user_id text, p_key_id text
)
returns text
language plpgsql stable
as $$
declare
    v_key costwarden._keys;
begin
    if p_user_id is not null then  -- (nested: a call without a user runs no query here)
        if not exists (select from costwarden._users as u where u.org_id = p_org_id and u.user_id = p_user_id) then
            perform costwarden._raise('CW002', format('p_user_id: unknown user %L in org %L', p_user_id, p_org_id));
        end if;
    end if;
    if p_key_id is null then
        return p_user_id;
    end if;
    select * into v_key from costwarden._keys as k where k.org_id = p_org_id and k.key_id = p_key_id;
    if not found then
        perform costwarden._raise('CW002', format('p_key_id: unknown key %L in org %L', p_key_id, p_org_id));
    end if;
    if v_key.workspace_id is not null and v_key.workspace_id <> p_workspace_id then
        perform costwarden._raise('CW004', format('p_key_id: key %L belongs to workspace %L',
                                                  p_key_id, v_key.workspace_id));
    end if;
    if v_key.user_id is not null and p_user_id is not null and v_key.user_id <> p_user_id then
        perform costwarden._raise('CW004', format('p_key_id: key %L belongs to another user', p_key_id));
    end if;
    return coalesce(p_user_id, v_key.user_id);
end
$$;

-- Internal: ensure a pool row and its gate exist (idempotent; one statement,
-- so that no pool is ever without its gate: _lock_pools).
create or replace function costwarden._pool_ensure(p_org_id text, p_kind text, p_scope_id text)
returns void
language sql
as $$
    with created as (
        insert into costwarden._pools (org_id, kind, scope_id)
        values (p_org_id, p_kind, coalesce(p_scope_id, ''))
        on conflict (org_id, kind, scope_id) do nothing
        returning pool_id
    )
    insert into costwarden._pool_gates (pool_id)
    select c.pool_id from created as c
$$;

-- Internal: the pools a call's spend counts against, ascending: the org's, the
-- workspace's, and the key's and the user's when given (reserve, spend
-- reports, ledger adjustments). Pool ids never change: reading them needs no
-- lock; callers lock them with _lock_pools.
create or replace function costwarden._context_pool_ids(
    p_org_id text, p_workspace_id text, p_key_id text default null, p_user_id text default null
)
returns bigint[]
language plpgsql stable
as $$
begin
    -- PL/pgSQL so that the plan is cached (an aggregate keeps a SQL function
    -- from being inlined). One probe of the unique key per scope: a single
    -- `org_id = $1 and (kind, scope_id) in (...)` scan has a generic plan that
    -- reads every pool of the org when most orgs are small (docs/performance.md, row 38)
    return (
        select coalesce(array_agg(s.pool_id order by s.pool_id), '{}')
        from (
            select p.pool_id from costwarden._pools as p
            where p.org_id = p_org_id and p.kind = 'org' and p.scope_id = ''
            union all
            select p.pool_id from costwarden._pools as p
            where p.org_id = p_org_id and p.kind = 'workspace' and p.scope_id = p_workspace_id
            union all
            select p.pool_id from costwarden._pools as p
            where p.org_id = p_org_id and p.kind = 'key' and p.scope_id = p_key_id
            union all
            select p.pool_id from costwarden._pools as p
            where p.org_id = p_org_id and p.kind = 'user' and p.scope_id = p_user_id
        ) as s
    );
end
$$;

-- Internal: the key of a keyed lock (_lock_stripe): a namespace such as
-- 'costwarden.byok' and the parts that name what is locked, joined with
-- chr(1) (a null part counts as empty) and hashed to 64 bits. (No advisory
-- lock: any role can take one, SPEC §12.)
-- lock order: docs/internals.md#lock-order
create or replace function costwarden._lock_key(variadic p_parts text[])
returns bigint
language sql immutable parallel safe
as $$
    select hashtextextended(array_to_string(p_parts, chr(1), ''), 0)
$$;

-- Internal: is the caller (after SET ROLE, else the login role) a service or
-- admin caller, as opposed to a tenant-only one?
create or replace function costwarden._caller_is_privileged()
returns boolean
language sql stable
as $$
    select pg_has_role(
        case when current_setting('role') = 'none' then session_user else current_setting('role') end,
        'costwarden_service', 'MEMBER')
$$;

-- Internal: who may reach an org (SPEC §9, §12; docs/operations.md#roles-and-the-actor).
-- A caller whose actor names an org -- a token's org_id, the actor settings of a
-- trusted session, a login binding -- is confined to that org whatever its role:
-- every RPC that names an org, or reaches one through a reservation, an anomaly or a
-- report, calls this first with that org, and a call that names none (p_org_id
-- null: every org) is refused to it. A privileged caller (service, admin) with no
-- actor is not restricted. A tenant may only reach its own org, its own user scope
-- and its own keys.
-- p_arg names the argument the org came from (a reservation's, an anomaly's id).
drop function if exists costwarden._tenant_guard(text, text, text);
create or replace function costwarden._tenant_guard(
    p_org_id text, p_scope_kind text default null, p_scope_id text default null, p_arg text default 'p_org_id'
)
returns void
language plpgsql stable
as $$
declare
    v_actor record;
begin
    v_actor := costwarden._actor();
    if v_actor.org_id is null then
        if costwarden._caller_is_privileged() then
            return;
        end if;
        perform costwarden._raise('CW005', 'no actor: a costwarden_authenticator session sets request.jwt.claims or costwarden.actor_org / actor_user; another login needs a binding (fn_tenant_login_bind)');
    end if;
    if p_org_id is null then
        perform costwarden._raise('CW005', format(
            '%s: the actor belongs to one org, and a call for every org needs a caller without an actor', p_arg));
    end if;
    if p_org_id <> v_actor.org_id then
        perform costwarden._raise('CW005', format('%s: the actor belongs to another org', p_arg));
    end if;
    if p_scope_kind not in ('user', 'key') or costwarden._caller_is_privileged() then
        return;
    end if;
    if v_actor.user_id is null then
        perform costwarden._raise('CW005', 'a tenant actor needs a user (JWT sub or costwarden.actor_user)');
    end if;
    if p_scope_kind = 'user' and p_scope_id is distinct from v_actor.user_id then
        perform costwarden._raise('CW005', 'p_scope_id: a tenant may only read its own user scope');
    end if;
    if p_scope_kind = 'key' and not exists (
        select from costwarden._keys as k
        where k.org_id = p_org_id and k.key_id = p_scope_id and k.user_id = v_actor.user_id
    ) then
        perform costwarden._raise('CW005', 'p_scope_id: a tenant may only read its own keys');
    end if;
end
$$;

-- Internal: a change that every org shares (a setting, a model, a price, a
-- circuit, the KEK) is refused to a caller confined to one org (_tenant_guard).
create or replace function costwarden._shared_guard()
returns void
language plpgsql stable
as $$
begin
    if (costwarden._actor()).org_id is not null then
        perform costwarden._raise('CW005', 'the actor belongs to one org: a change every org shares needs a caller without an actor');
    end if;
end
$$;

-- Internal: a named lock (a row of the private table _locks; no other role
-- can lock it): exclusive (FOR UPDATE) or shared (FOR SHARE), held to the end
-- of the transaction.
create or replace function costwarden._lock_named(p_name text, p_shared boolean default false)
returns void
language plpgsql
as $$
begin
    if p_shared then
        perform from costwarden._locks as l where l.lock_name = p_name for share;
    else
        perform from costwarden._locks as l where l.lock_name = p_name for update;
    end if;
    if not found then
        raise exception 'costwarden: no lock named %', p_name;
    end if;
end
$$;

-- Internal: take the named lock exclusively if nobody holds it; false at once otherwise.
create or replace function costwarden._try_lock_named(p_name text)
returns boolean
language plpgsql
as $$
begin
    perform from costwarden._locks as l where l.lock_name = p_name for update skip locked;
    return found;
end
$$;

-- Internal: the exclusive lock of one key (_lock_key), held to the end of the
-- transaction: the row lock of its stripe of the private table _lock_stripes
-- (the key mod 4096), which no other role can take.
create or replace function costwarden._lock_stripe(p_key bigint)
returns void
language plpgsql
as $$
begin
    perform from costwarden._lock_stripes as s
    where s.stripe = (p_key & 4095)::integer
    for update;
end
$$;

-- Internal: record an alert (budget, anomaly, circuit) and announce it on
-- channel costwarden_alerts. Any role can LISTEN, so the notification carries
-- only {"kind", "alert_id", "level"} (SPEC §12); fn_alert_get (09_alerts.sql)
-- reads the alert.
create or replace function costwarden._alert_emit(p_kind text, p_level text, p_org_id text, p_payload jsonb)
returns bigint
language plpgsql
volatile
as $$
declare
    v_id bigint;
begin
    insert into costwarden._alert_events (kind, level, org_id, payload)
    values (p_kind, p_level, p_org_id, p_payload)
    returning alert_id into v_id;
    perform pg_notify('costwarden_alerts',
        jsonb_build_object('kind', p_kind, 'alert_id', v_id, 'level', p_level)::text);
    return v_id;
end
$$;

-- The pool helpers below carry SET plan_cache_mode = force_generic_plan
-- (as do _lane_take below, and _pool_add_spend, _check_limits and
-- _user_effective_limits, 06_budgets.sql; no other internal helper has a SET
-- clause): a statement on `pool_id = any
-- (array)` has custom plans that look cheaper than its generic one (they know
-- the array's length), so without it PL/pgSQL plans it again on every call
-- (18-110 us, pg_stat_statements.track_planning); its generic plan is the right
-- one, an index scan on the primary key (docs/performance.md).

-- Internal: lock pools in the documented order: their gates, ascending
-- pool_id, then the pools, ascending pool_id (docs/internals.md#pool-gates).
-- The gate is where the callers queue: it is never updated, so they wait on
-- one row version, in arrival order (a pool row is updated by every holder and
-- would send its waiters chasing each new version). The pool row's lock is
-- what the decisions rest on; nobody waits for it behind the gate, and it
-- keeps a pool serialised even for a caller that did not come through a gate
-- (a call still running the previous version of this function while
-- migration 0018 commits).
--
-- _lock_pool_gates takes the gates alone, for a caller whose next statement on
-- the pools is the update that writes them (a commit's booking: the update
-- locks the rows it writes, behind gates nobody else holds), so that their rows
-- are not locked twice; _lock_pools takes the gates, then the rows, for the
-- callers that read the pools before they write them (the limit checks).
create or replace function costwarden._lock_pool_gates(p_pool_ids bigint[])
returns void
language plpgsql
set plan_cache_mode = force_generic_plan
as $$
begin
    perform null from (
            select g.pool_id from costwarden._pool_gates as g
            where g.pool_id = any (p_pool_ids)
            order by g.pool_id
            for update
        ) as gated;
end
$$;

create or replace function costwarden._lock_pools(p_pool_ids bigint[])
returns void
language plpgsql
set plan_cache_mode = force_generic_plan
as $$
begin
    perform costwarden._lock_pool_gates(p_pool_ids);
    perform null from (
            select p.pool_id from costwarden._pools as p
            where p.pool_id = any (p_pool_ids)
            order by p.pool_id
            for update
        ) as locked;
end
$$;

-- Internal: add a hold to pools whose locks the caller holds (reserve, tick).
create or replace function costwarden._pools_hold(p_pool_ids bigint[], p_micros bigint, p_tokens bigint)
returns void
language plpgsql
set plan_cache_mode = force_generic_plan
as $$
begin
    update costwarden._pools as p
    set held_micros = p.held_micros + p_micros, held_tokens = p.held_tokens + p_tokens
    where p.pool_id = any (p_pool_ids) and (p_micros <> 0 or p_tokens <> 0);
end
$$;

-- Internal: move a reservation's hold off its pools (taking their locks in order).
create or replace function costwarden._pools_unhold(p_pool_ids bigint[], p_micros bigint, p_tokens bigint)
returns void
language plpgsql
set plan_cache_mode = force_generic_plan
as $$
begin
    -- locks the pools in the documented order (ascending pool_id), then updates them: two
    -- statements, so that each has a good generic plan (an index scan on the primary key;
    -- the one-statement form, a join with a locking sub-select, gets a hash join over the
    -- whole table)
    perform costwarden._lock_pools(p_pool_ids);
    update costwarden._pools as p
    set held_micros = p.held_micros - p_micros, held_tokens = p.held_tokens - p_tokens
    where p.pool_id = any (p_pool_ids) and (p_micros <> 0 or p_tokens <> 0);
end
$$;

-- Internal: a reservation id whose first 32 bits are hashtext(org_id).
create or replace function costwarden._reservation_id(p_org_id text)
returns uuid
language sql volatile
as $$
    select overlay(gen_random_uuid()::text placing lpad(to_hex(hashtext(p_org_id)), 8, '0') from 1 for 8)::uuid
$$;

-- Internal: the reservation row, locked; CW002 when unknown.
create or replace function costwarden._reservation_for_update(p_reservation_id uuid)
returns costwarden._reservations
language plpgsql
as $$
declare
    v_r costwarden._reservations;
begin
    if p_reservation_id is null then
        perform costwarden._raise('CW004', 'p_reservation_id is required');
    end if;
    select * into v_r from costwarden._reservations as r where r.reservation_id = p_reservation_id for update;
    if not found then
        perform costwarden._raise('CW002', format('p_reservation_id: unknown reservation %s', p_reservation_id));
    end if;
    return v_r;
end
$$;

-- Internal: one element of a reservation's reasons (SPEC §3): all eleven keys.
create or replace function costwarden._reason(
    p_code text, p_scope_kind text default null, p_scope_id text default null,
    p_period text default null, p_metric text default null, p_window text default null,
    p_limit bigint default null, p_spent bigint default null, p_held bigint default null,
    p_requested bigint default null, p_enforced boolean default true
)
returns jsonb
language sql immutable parallel safe
as $$
    select jsonb_build_object(
        'code', p_code, 'scope_kind', p_scope_kind, 'scope_id', p_scope_id, 'period', p_period,
        'metric', p_metric, 'window', p_window, 'limit', p_limit, 'spent', p_spent,
        'held', p_held, 'requested', p_requested, 'enforced', p_enforced
    )
$$;

-- ---------------------------------------------------------------------------
-- Lanes (migration 0019, docs/internals.md#lanes): slices of the headroom of a
-- set of pools, counted in the pools' held amounts, that a reservation of that
-- set holds against without locking the pools.
--
-- The rules that keep every decision what it would be without lanes:
-- * a grant is carved only by an admission that holds the pools' locks, from
--   the headroom below every limit's 80 % alert line (enforced and shadow
--   limits alike), and is counted in each pool's held amount: a reservation a
--   lane admits breaks no limit, reaches no alert line and takes headroom that
--   nobody else could take;
-- * a limit check that would refuse, name a shadow limit or raise an alert with
--   unused grants counted gives them back (_lanes_reclaim) and checks again, so
--   that what it decides is decided on the holds alone;
-- * spend beyond a hold (an overage, a late commit, a spend report, a repair)
--   is followed by the limits' check of _spend_alerts: at or past an alert
--   line (grants counted), the grants on the booked pools are given back; below
--   every line, whatever the lanes admit still reaches none;
-- * a ledger adjustment that adds spend (_lanes_retire) and a change of what an
--   org's limits are (budgets, user groups, settings: triggers) bump its
--   lane_epoch: a lane of an older epoch admits nothing until carved anew, and
--   its grants stay counted until a check gives them back or a carve replaces
--   them.
--
-- Lock order (docs/internals.md#lock-order): a lane is taken without waiting
-- (SKIP LOCKED) by a caller that holds no pool lock and then waits for nothing
-- else; everyone else locks lanes only after the pools of their sets, and
-- several lanes in (org_id, pool_ids, lane) order.

-- Internal: how many lanes a set of pools has (a constant, inlined where used).
create or replace function costwarden._lane_count()
returns integer
language sql immutable parallel safe
as $$
    select 32
$$;

-- Internal (reserve): hold p_micros / p_tokens on a lane of the call's set of
-- pools that can take them and is not locked; its number, or null (no lane of
-- the current epoch with room is free: the caller locks the pools).
-- p_lane (a tick that grows a hold on its lane): that lane only.
drop function if exists costwarden._lane_take(text, bigint[], bigint, bigint);
create or replace function costwarden._lane_take(
    p_org_id text, p_pool_ids bigint[], p_micros bigint, p_tokens bigint, p_lane smallint default null
)
returns smallint
language plpgsql
set plan_cache_mode = force_generic_plan
as $$
declare
    -- where the look starts: the lane the caller names (a tick growing its hold
    -- on its own lane), else the backend's own lane, its pid modulo 32
    v_own smallint := coalesce(p_lane, (pg_backend_pid() % costwarden._lane_count())::smallint);
    v_lane smallint;
begin
    -- The first lane of the set that can hold the request, from the own lane
    -- down (an index scan of the set's lanes from v_own backwards, which stops
    -- at the first free one with room), then, when none of those is, from the
    -- own lane up: concurrent callers rarely skip each other, a set's lanes are
    -- numbered from 0 as they are made (one, doubled as its callers collide), so
    -- a set of one lane finds it first, and a busy set of 32 reads the own lane
    -- alone (docs/performance.md, rows 51 and 63).
    -- A lane whose row changed since the statement began is locked, read again and
    -- skipped when it has no room left (FOR UPDATE re-checks the latest version),
    -- and its lock is kept: a call that found no lane gives such locks back (the
    -- block's subtransaction) before it waits for the pools.
    update costwarden._lanes as l
    set held_micros = l.held_micros + p_micros, held_tokens = l.held_tokens + p_tokens
    where (l.org_id, l.pool_ids, l.lane) = (
        select f.org_id, f.pool_ids, f.lane
        from costwarden._lanes as f
        where f.org_id = p_org_id and f.pool_ids = p_pool_ids and f.lane <= v_own
          and (p_lane is null or f.lane = p_lane)
          and f.epoch = (select o.lane_epoch from costwarden._orgs as o where o.org_id = p_org_id)
          and f.cap_micros - f.held_micros >= p_micros and f.cap_tokens - f.held_tokens >= p_tokens
        order by f.lane desc
        limit 1
        for update skip locked)
    returning l.lane into v_lane;
    if v_lane is null and p_lane is null then
        update costwarden._lanes as l
        set held_micros = l.held_micros + p_micros, held_tokens = l.held_tokens + p_tokens
        where (l.org_id, l.pool_ids, l.lane) = (
            select f.org_id, f.pool_ids, f.lane
            from costwarden._lanes as f
            where f.org_id = p_org_id and f.pool_ids = p_pool_ids and f.lane > v_own
              and f.epoch = (select o.lane_epoch from costwarden._orgs as o where o.org_id = p_org_id)
              and f.cap_micros - f.held_micros >= p_micros and f.cap_tokens - f.held_tokens >= p_tokens
            order by f.lane
            limit 1
            for update skip locked)
        returning l.lane into v_lane;
    end if;
    if v_lane is null then
        raise exception using errcode = 'CWX00';   -- no lane: undo, locks included
    end if;
    return v_lane;
exception when sqlstate 'CWX00' then
    return null;
end
$$;

-- Internal: take a reservation's hold off its lane (commit, release, expiry,
-- and a tick, which moves the hold onto the pools). The grants shrink by the
-- hold as well (used_*: one figure for every pool of the set), so each pool's
-- held amount, which counts the grants, loses the hold in the caller's own
-- pool update (or keeps it, for a tick). The caller holds the pools' locks.
-- p_used false: undo a take that a later step refused (the provider's
-- circuit, in the same reserve): the grants stay as they were.
create or replace function costwarden._lane_unhold(
    p_org_id text, p_pool_ids bigint[], p_lane smallint, p_micros bigint, p_tokens bigint,
    p_used boolean default true
)
returns void
language plpgsql
as $$
declare
    v_used_micros bigint := case when p_used then p_micros else 0 end;
    v_used_tokens bigint := case when p_used then p_tokens else 0 end;
begin
    update costwarden._lanes as l
    set held_micros = l.held_micros - p_micros, held_tokens = l.held_tokens - p_tokens,
        used_micros = l.used_micros + v_used_micros, used_tokens = l.used_tokens + v_used_tokens,
        cap_micros = l.cap_micros - v_used_micros, cap_tokens = l.cap_tokens - v_used_tokens
    where l.org_id = p_org_id and l.pool_ids = p_pool_ids and l.lane = p_lane;
end
$$;

-- Internal: give a hold back to its lane (a release whose call did not run),
-- without the pools: only while the lane has room (cap above held, in either
-- metric). Room on a lane means an unused grant on every pool of its set, so
-- each of them is flagged lanes_unused (set by the carve that made the room;
-- a give-back clears a flag only after it has locked and emptied every such
-- lane), and the grant that grows here is one that a give-back will find.
-- Returns false, locks given back, when the lane has no room (its grants were
-- given back since the hold was taken: the caller then ends the hold under the
-- pools' locks, _pools_unhold and _lane_unhold). A lane whose row changed since
-- the statement began is locked and read again (FOR UPDATE's re-check), and a
-- failed re-check keeps that lock: the block's subtransaction gives it back, so
-- that the caller may wait for the pools (docs/internals.md#lock-order).
create or replace function costwarden._lane_release(
    p_org_id text, p_pool_ids bigint[], p_lane smallint, p_micros bigint, p_tokens bigint
)
returns boolean
language plpgsql
as $$
begin
    update costwarden._lanes as l
    set held_micros = l.held_micros - p_micros, held_tokens = l.held_tokens - p_tokens
    where l.org_id = p_org_id and l.pool_ids = p_pool_ids and l.lane = p_lane
      and (l.cap_micros > l.held_micros or l.cap_tokens > l.held_tokens);
    if not found then
        raise exception using errcode = 'CWX00';   -- no room: undo, locks included
    end if;
    return true;
exception when sqlstate 'CWX00' then
    return false;
end
$$;

-- Internal: lock the lanes that the held reservations p_reservation_ids hold
-- on, in key order (expiry, a batch of commits: several holds ended in one
-- transaction). The caller holds their pools' locks.
create or replace function costwarden._lanes_lock(p_reservation_ids uuid[])
returns void
language plpgsql
as $$
begin
    perform null from (
        select l.lane from costwarden._lanes as l
        where (l.org_id, l.pool_ids, l.lane) in (
            select r.org_id, r.pool_ids, r.lane from costwarden._reservations as r
            where r.reservation_id = any (p_reservation_ids) and r.status = 'held' and r.lane is not null)
        order by l.org_id, l.pool_ids, l.lane
        for update
    ) as locked;
end
$$;

-- Internal: give back the unused grants that lanes hold on any of p_pool_ids
-- (each such grant set to what the lane holds; the pool's held amount loses
-- the difference). The caller holds the locks of p_pool_ids; the lanes are
-- locked in key order. Returns whether anything was given back.
create or replace function costwarden._lanes_reclaim(p_pool_ids bigint[])
returns boolean
language plpgsql
as $$
declare
    v_back record;
    v_any boolean := false;
    v_pools bigint[];
begin
    -- only the pools some lane may hold an unused grant on (_pools.lanes_unused,
    -- migration 0023): a pool whose grants were given back has none until the
    -- next carve, and the org's pool is in every set of the org. Their flags are
    -- cleared here, under the pools' locks, for the grants given back below: each
    -- then is what its lane holds, and stays used up until a carve sets the flag
    -- again under the same locks (a release gives a hold back to its lane only
    -- while the lane has room, so only while its pools are flagged: _lane_release).
    with cleared as (
        update costwarden._pools as p set lanes_unused = false
        where p.pool_id = any (p_pool_ids) and p.lanes_unused
        returning p.pool_id
    )
    select coalesce(array_agg(c.pool_id), '{}') into v_pools from cleared as c;
    if cardinality(v_pools) = 0 then
        return false;
    end if;
    for v_back in
        -- the lanes' latest versions, locked (a row locked after a wait is read
        -- again). Found through the pools they hold grants on (the GIN index of
        -- pool_ids; a pool is of one org), not by reading every lane of the org.
        with lanes as (
            select l.*
            from costwarden._lanes as l
            where l.pool_ids && v_pools
              and exists (select from unnest(l.pool_ids, l.grant_micros, l.grant_tokens) as u (pool_id, gm, gt)
                          where u.pool_id = any (v_pools)
                            and (u.gm - l.used_micros > l.held_micros or u.gt - l.used_tokens > l.held_tokens))
            order by l.org_id, l.pool_ids, l.lane
            for update
        ),
        given as (
            update costwarden._lanes as l
            set grant_micros = n.gm, grant_tokens = n.gt,
                cap_micros = (select min(x) from unnest(n.gm) as x) - o.used_micros,
                cap_tokens = (select min(x) from unnest(n.gt) as x) - o.used_tokens
            from lanes as o
            cross join lateral (
                select array_agg(case when u.pool_id = any (v_pools) then o.held_micros + o.used_micros
                                      else u.gm end order by u.i) as gm,
                       array_agg(case when u.pool_id = any (v_pools) then o.held_tokens + o.used_tokens
                                      else u.gt end order by u.i) as gt
                from unnest(o.pool_ids, o.grant_micros, o.grant_tokens) with ordinality as u (pool_id, gm, gt, i)
            ) as n
            where (l.org_id, l.pool_ids, l.lane) = (o.org_id, o.pool_ids, o.lane)
        )
        select u.pool_id, sum(u.gm - o.used_micros - o.held_micros)::bigint as micros,
               sum(u.gt - o.used_tokens - o.held_tokens)::bigint as tokens
        from lanes as o
        cross join lateral unnest(o.pool_ids, o.grant_micros, o.grant_tokens) as u (pool_id, gm, gt)
        where u.pool_id = any (v_pools)
        group by u.pool_id
    loop
        update costwarden._pools as p
        set held_micros = p.held_micros - v_back.micros, held_tokens = p.held_tokens - v_back.tokens
        where p.pool_id = v_back.pool_id and (v_back.micros <> 0 or v_back.tokens <> 0);
        v_any := true;
    end loop;
    return v_any;
end
$$;

-- Internal (reserve, after an admission under the pools' locks): carve every
-- lane of the set that is free now and needs it (of an older epoch, or with
-- less than half a slice of room) to hold exactly p_micros / p_tokens more
-- than it holds, under p_epoch (the org's lane_epoch read before the limits
-- were). Each pool's held amount moves by what its grants moved. The caller
-- holds the locks of p_pool_ids and has checked that _lane_count() such slices
-- fit in half the headroom below every alert line of every pool of the set.
-- A set's lanes are made as its callers need them (docs/internals.md#lanes):
-- one at its first carve; twice as many (up to _lane_count()) when this
-- admission came to the pools although a lane of the current epoch had room
-- for its request (p_request_micros / p_request_tokens), that is, while every
-- such lane was held by another transaction -- so a set one caller uses at a
-- time (a user's, a key's) keeps one lane, and a busy one grows to all of them.
drop function if exists costwarden._lanes_carve(text, bigint[], bigint, bigint, bigint);
create or replace function costwarden._lanes_carve(
    p_org_id text, p_pool_ids bigint[], p_epoch bigint, p_micros bigint, p_tokens bigint,
    p_request_micros bigint, p_request_tokens bigint
)
returns void
language plpgsql
as $$
declare
    v_moved record;
    v_lanes integer;        -- the set's lanes so far
    v_grow integer := 0;    -- how many to add
begin
    v_lanes := (select count(*) from costwarden._lanes as l where l.org_id = p_org_id and l.pool_ids = p_pool_ids);
    if v_lanes = 0 then
        v_grow := 1;
    elsif v_lanes < costwarden._lane_count() and exists (
        select from costwarden._lanes as l
        where l.org_id = p_org_id and l.pool_ids = p_pool_ids and l.epoch = p_epoch
          and l.cap_micros - l.held_micros >= p_request_micros
          and l.cap_tokens - l.held_tokens >= p_request_tokens
    ) then
        v_grow := least(v_lanes, costwarden._lane_count() - v_lanes);
    end if;
    if v_grow > 0 then
        insert into costwarden._lanes (org_id, pool_ids, lane, epoch, grant_micros, grant_tokens, cap_micros, cap_tokens)
        select p_org_id, p_pool_ids, g::smallint, p_epoch,
               array_fill(0::bigint, array[cardinality(p_pool_ids)]),
               array_fill(0::bigint, array[cardinality(p_pool_ids)]), 0, 0
        from generate_series(v_lanes, v_lanes + v_grow - 1) as g
        on conflict do nothing;
    end if;
    for v_moved in
        -- the lanes nobody holds now, their latest versions, locked
        with lanes as (
            select l.*
            from costwarden._lanes as l
            where l.org_id = p_org_id and l.pool_ids = p_pool_ids
              and (l.epoch <> p_epoch or l.cap_micros - l.held_micros < p_micros / 2
                   or l.cap_tokens - l.held_tokens < p_tokens / 2)
            order by l.lane
            for update skip locked
        ),
        carved as (
            update costwarden._lanes as l
            set epoch = p_epoch,
                grant_micros = array_fill(o.held_micros + p_micros, array[cardinality(o.pool_ids)]),
                grant_tokens = array_fill(o.held_tokens + p_tokens, array[cardinality(o.pool_ids)]),
                used_micros = 0, used_tokens = 0,
                cap_micros = o.held_micros + p_micros, cap_tokens = o.held_tokens + p_tokens
            from lanes as o
            where (l.org_id, l.pool_ids, l.lane) = (o.org_id, o.pool_ids, o.lane)
        )
        select u.pool_id, sum(o.held_micros + p_micros - (u.gm - o.used_micros))::bigint as micros,
               sum(o.held_tokens + p_tokens - (u.gt - o.used_tokens))::bigint as tokens
        from lanes as o
        cross join lateral unnest(o.pool_ids, o.grant_micros, o.grant_tokens) as u (pool_id, gm, gt)
        group by u.pool_id
    loop
        update costwarden._pools as p
        set held_micros = p.held_micros + v_moved.micros, held_tokens = p.held_tokens + v_moved.tokens,
            lanes_unused = true
        where p.pool_id = v_moved.pool_id
          and (v_moved.micros <> 0 or v_moved.tokens <> 0 or not p.lanes_unused);
    end loop;
end
$$;

-- Internal: spend was booked on p_pool_ids beyond any hold by a caller that
-- does not check the limits after it (a ledger adjustment; a charge, a spend
-- report and a repair run _spend_alerts instead): a grant carved before it may
-- now reach past an alert line or a limit, so the org's lanes admit nothing
-- more until an admission carves them again under the new totals (their grants
-- stay counted until then). The caller holds the pools' locks; the org row is
-- locked last.
create or replace function costwarden._lanes_retire(p_org_id text, p_pool_ids bigint[])
returns void
language plpgsql
as $$
begin
    -- the lanes of the org's current epoch (index _lanes_epoch_org, migrations
    -- 0023 and 0024), not every lane of the org: after a retirement none until a carve
    if exists (
        select from costwarden._lanes as l
        where l.org_id = p_org_id
          and l.epoch = (select o.lane_epoch from costwarden._orgs as o where o.org_id = p_org_id)
          and (l.cap_micros > l.held_micros or l.cap_tokens > l.held_tokens)
          and exists (select from unnest(l.pool_ids) as u (pool_id) where u.pool_id = any (p_pool_ids))
    ) then
        update costwarden._orgs as o set lane_epoch = o.lane_epoch + 1 where o.org_id = p_org_id;
    end if;
end
$$;

-- Internal (readers): what the lanes of a pool were granted and hold. A pool's
-- held amount counts its lanes' grants; what is held on it is that amount
-- less the grants' unused part (fn_budget_status, fn_spend_summary, ...).
create or replace function costwarden._pool_lane_grants(p_pool_id bigint)
returns table (granted_micros bigint, granted_tokens bigint, unused_micros bigint, unused_tokens bigint)
language sql stable
as $$
    select coalesce(sum(u.gm - l.used_micros), 0)::bigint, coalesce(sum(u.gt - l.used_tokens), 0)::bigint,
           coalesce(sum(u.gm - l.used_micros - l.held_micros), 0)::bigint,
           coalesce(sum(u.gt - l.used_tokens - l.held_tokens), 0)::bigint
    from costwarden._lanes as l
    cross join lateral unnest(l.pool_ids, l.grant_micros, l.grant_tokens) as u (pool_id, gm, gt)
    -- the lanes of the sets the pool is in (the GIN index of pool_ids, migration 0023)
    where l.pool_ids @> array[p_pool_id] and u.pool_id = p_pool_id
$$;

-- A change of what an org's limits are bumps its lane_epoch: the lanes carved
-- before it admit nothing until an admission carves them again under the new
-- limits (their grants stay counted, and are given back as the rules above say).
create or replace function costwarden._lanes_epoch_bump()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_table_name = '_orgs' then
        if new.settings is distinct from old.settings then
            new.lane_epoch := old.lane_epoch + 1;
        end if;
        return new;
    end if;
    update costwarden._orgs as o
    set lane_epoch = o.lane_epoch + 1
    where o.org_id = case when tg_op = 'DELETE' then old.org_id else new.org_id end;
    if tg_op = 'UPDATE' and old.org_id is distinct from new.org_id then
        update costwarden._orgs as o set lane_epoch = o.lane_epoch + 1 where o.org_id = old.org_id;
    end if;
    return null;
end
$$;

create or replace trigger _orgs_lanes_epoch
before update on costwarden._orgs
for each row execute function costwarden._lanes_epoch_bump();

create or replace trigger _budgets_lanes_epoch
after insert or update or delete on costwarden._budgets
for each row execute function costwarden._lanes_epoch_bump();

create or replace trigger _user_groups_lanes_epoch
after insert or update or delete on costwarden._user_groups
for each row execute function costwarden._lanes_epoch_bump();
