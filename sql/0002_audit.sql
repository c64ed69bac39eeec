-- 0002: who is calling, and the append-only admin audit trail (SPEC §6, §9).

-- The actor of a call: request.jwt.claims (org_id, sub) when set, so the schema
-- works unchanged behind PostgREST / Supabase; else costwarden.actor_org /
-- costwarden.actor_user set by the trusted caller. Both may be null.
create function costwarden._actor(out org_id text, out user_id text)
language plpgsql
stable
as $$
declare
    v_claims text := nullif(current_setting('request.jwt.claims', true), '');
    v_json jsonb;
begin
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
end
$$;

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

create trigger _audit_log_no_update_delete
before update or delete on costwarden._audit_log
for each row execute function costwarden._forbid_mutation();

create trigger _audit_log_no_truncate
before truncate on costwarden._audit_log
for each statement execute function costwarden._forbid_mutation();

-- Internal: record one admin change.
create function costwarden._audit(
    p_action text, p_org_id text, p_target jsonb, p_before jsonb, p_after jsonb
)
returns void
language plpgsql
as $$
declare
    v_actor record;
begin
    select * into v_actor from costwarden._actor();
    insert into costwarden._audit_log (db_role, actor_org, actor_user, action, org_id, target, before, after)
    values (session_user, v_actor.org_id, v_actor.user_id, p_action, p_org_id, p_target, p_before, p_after);
end
$$;

-- The audit trail, newest first (admin).
create function costwarden.fn_audit_list(
    p_org_id text default null,
    p_action text default null,
    p_since timestamptz default null,
    p_limit integer default 100
)
returns table (
    audit_id bigint, at timestamptz, db_role text, actor_org text, actor_user text,
    action text, org_id text, target jsonb, before jsonb, after jsonb
)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform costwarden._require_limit(p_limit);
    return query
    select a.audit_id, a.at, a.db_role, a.actor_org, a.actor_user, a.action, a.org_id,
           a.target, a.before, a.after
    from costwarden._audit_log as a
    where (p_org_id is null or a.org_id = p_org_id)
      and (p_action is null or a.action = p_action)
      and (p_since is null or a.at >= p_since)
    order by a.audit_id desc
    limit p_limit;
end
$$;

grant execute on function costwarden.fn_audit_list(text, text, timestamptz, integer) to costwarden_admin;
