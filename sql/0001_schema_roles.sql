-- 0001: the costwarden schema, its extensions and the three caller roles.
--
-- Everything lives in schema costwarden. Tables are private (prefixed with _)
-- and granted to nobody; callers use the fn_* functions and the documented
-- views. The migration runner creates the schema and its bookkeeping table
-- (costwarden._migrations) before this file runs.

-- pgcrypto provides envelope encryption for BYOK secrets (sha256() for the
-- ledger chain is built in). It lives in the costwarden schema so that
-- function bodies can reference it with a fixed, schema-qualified name.
create extension if not exists pgcrypto with schema costwarden;

-- Roles are cluster-wide: create them once, keep them across databases.
do $roles$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = 'costwarden_tenant') then
        create role costwarden_tenant nologin;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'costwarden_service') then
        create role costwarden_service nologin;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'costwarden_admin') then
        create role costwarden_admin nologin;
    end if;
end
$roles$;

-- The admin role may run everything the service role may.
grant costwarden_service to costwarden_admin;

comment on role costwarden_admin is
'costwarden: tenancy, catalogue, budgets, settings, keys, adjustments, plus all of costwarden_service';
comment on role costwarden_service is
'costwarden: the saga (quote/reserve/meter/commit/release), key resolve, reports, status';
comment on role costwarden_tenant is
'costwarden: read-only self-service for one org/user (own reservations and budgets)';

revoke all on schema costwarden from public;
grant usage on schema costwarden to costwarden_admin, costwarden_service, costwarden_tenant;

-- PUBLIC executes nothing here: per-schema default privileges cannot revoke
-- the global default EXECUTE on new functions, so the migration runner ends
-- every migration's transaction with
--   revoke all on all functions / tables / sequences in schema costwarden from public
-- and each migration grants EXECUTE per role explicitly.

-- Convention: every fn_* function is SECURITY DEFINER with
--   set search_path = pg_catalog, pg_temp
-- and schema-qualified bodies. Internal helpers (named _*) are SECURITY
-- INVOKER, executable by nobody but the owner, and carry no SET clause: they
-- run inside an fn_* caller's pinned search_path, and without the clause the
-- small SQL ones are inlined and the plpgsql ones skip a GUC save/restore on
-- every call of the hot path. Trigger functions keep the clause, since they
-- run in whatever session fires them.

-- Internal: raise a costwarden error. p_code is one of CW001..CW007 (SPEC §8).
create function costwarden._raise(p_code text, p_message text, p_hint text default null)
returns void
language plpgsql
volatile
as $$
begin
    if p_hint is null then
        raise exception using errcode = p_code, message = p_message;
    end if;
    raise exception using errcode = p_code, message = p_message, hint = p_hint;
end
$$;

-- Internal: a required text argument, trimmed of nothing, non-empty.
create function costwarden._require_text(p_value text, p_arg text, p_max integer default 200)
returns text
language plpgsql
immutable
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

-- Internal: a page size argument, 1 to p_max (CW004 otherwise).
create function costwarden._require_limit(p_limit integer, p_max integer default 100000)
returns integer
language plpgsql
stable
as $$
begin
    if p_limit is null or p_limit < 1 or p_limit > p_max then
        perform costwarden._raise('CW004', format('p_limit must be between 1 and %s', p_max));
    end if;
    return p_limit;
end
$$;

-- Internal: blocks UPDATE / DELETE / TRUNCATE on append-only tables (CW001).
create function costwarden._forbid_mutation()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    -- raised here, not through _raise: a role granted the table may not execute _raise
    raise exception using
        errcode = 'CW001',
        message = format('%s.%s is append-only: %s is not allowed', tg_table_schema, tg_table_name, lower(tg_op));
end
$$;
