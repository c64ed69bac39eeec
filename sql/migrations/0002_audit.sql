-- 0002: the append-only admin audit trail (SPEC §6, §9). Its triggers and
-- writer are in sql/functions/00_core.sql, its listing in 01_audit.sql.

create table costwarden._audit_log (
    audit_id bigint generated always as identity primary key,
    at timestamptz not null default clock_timestamp(),
    db_role text not null,          -- the login role (session_user) that made the change
    actor_org text,                 -- costwarden.actor_org / JWT org_id, when set
    actor_user text,                -- costwarden.actor_user / JWT sub, when set
    action text not null,           -- e.g. 'budget_set', 'pricing_set', 'setting_set'
    org_id text,                    -- the org the change concerns (null: deployment-wide)
    target jsonb not null,          -- what was changed (identifying arguments)
    before jsonb,                   -- the state before (null: created)
    after jsonb                     -- the state after (null: removed)
);

comment on table costwarden._audit_log is
'Append-only trail of every admin change: who, what, before and after. UPDATE/DELETE/TRUNCATE raise CW001.';

create index _audit_log_org_at on costwarden._audit_log (org_id, at);
