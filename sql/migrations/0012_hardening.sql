-- 0012: identity, ownership and deployment (SPEC §12, docs/threat-model.md).
--
-- The runner creates the NOLOGIN role costwarden_owner before any migration
-- runs and, at the end of every run, makes it the owner of the schema and of
-- every object in it (migrate.py, "Ownership"): SECURITY DEFINER functions run
-- as costwarden_owner, never as the superuser who migrated.
--
-- This migration adds:
--   costwarden_authenticator   the NOLOGIN role whose members' sessions may name
--                              the actor in request.jwt.claims /
--                              costwarden.actor_org / costwarden.actor_user
--   _tenant_logins             login bindings: a database login -> its org (user)
--   _locks, _lock_stripes      private rows whose row locks serialise
--                              costwarden's own work (no advisory lock anybody
--                              else can take)
--   _alert_events              what a NOTIFY on costwarden_alerts announces;
--                              the payload carries only its id and level

do $roles$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = 'costwarden_authenticator') then
        create role costwarden_authenticator nologin;
    end if;
end
$roles$;

comment on role costwarden_authenticator is
'costwarden: sessions of its members (an HTTP layer such as PostgREST or costwarden serve) name '
'the actor in request.jwt.claims or costwarden.actor_org / actor_user';

-- A database login and the org (and user) its tenant calls act for, when the
-- session is not a costwarden_authenticator member (SPEC §12).
create table costwarden._tenant_logins (
    login text primary key,
    org_id text not null references costwarden._orgs (org_id),
    user_id text,
    bound_at timestamptz not null default now(),
    foreign key (org_id, user_id) references costwarden._users (org_id, user_id)
);

comment on table costwarden._tenant_logins is
'Login bindings (fn_tenant_login_bind): the actor of a tenant call from a login that is not '
'a costwarden_authenticator member.';

-- Named locks: FOR UPDATE (exclusive) / FOR SHARE on one row. The table is
-- private, so no other role can lock its rows.
create table costwarden._locks (
    lock_name text primary key
);

comment on table costwarden._locks is
'One row per named lock (row locks only; docs/internals.md#lock-order).';

insert into costwarden._locks (lock_name) values
('detect_spend_anomalies'),   -- one anomaly run at a time; another run skips
('byok_kek');                 -- key puts (FOR SHARE) against KEK rotation (FOR UPDATE)

-- Keyed locks: a key (reserve idempotency key, BYOK key slot) hashes to one
-- of 4096 stripes; two keys in one stripe merely wait for each other.
create table costwarden._lock_stripes (
    stripe integer primary key
);

comment on table costwarden._lock_stripes is
'4096 rows whose row locks serialise the work on one key (hash of the key mod 4096).';

insert into costwarden._lock_stripes (stripe)
select s from generate_series(0, 4095) as s;

-- Alerts (docs/alerts.md): the full alert, readable through fn_alert_get by
-- the roles allowed to see it; NOTIFY carries {"kind", "alert_id", "level"}.
create table costwarden._alert_events (
    alert_id bigint generated always as identity primary key,
    at timestamptz not null default now(),
    kind text not null,
    level text not null,
    org_id text,
    payload jsonb not null,
    constraint alert_events_kind_check check (kind in ('budget', 'anomaly', 'circuit')),
    constraint alert_events_level_check check (level in ('info', 'warning', 'critical'))
);

create index alert_events_org_at on costwarden._alert_events (org_id, at);

comment on table costwarden._alert_events is
'Alerts announced on costwarden_alerts; the notification carries the alert_id only.';
