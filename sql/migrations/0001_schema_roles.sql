-- 0001: the costwarden schema, its extensions and the three caller roles.
--
-- Everything lives in schema costwarden. Tables are private (prefixed with _)
-- and granted to nobody; callers use the fn_* functions and the documented
-- views. The migration runner creates the schema and its bookkeeping tables
-- (costwarden._migrations, costwarden._repeatables) before this file runs.
--
-- Migrations (sql/migrations/) hold what is history: tables, types,
-- sequences, indexes, constraints and data. Functions, views, triggers and
-- their grants are source, in sql/functions/ (docs/internals.md).

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
