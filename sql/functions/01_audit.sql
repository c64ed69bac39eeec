-- The admin audit trail (SPEC §6, §9): its append-only triggers and its
-- listing. The writer, costwarden._audit, is in 00_core.sql.

select costwarden._append_only('costwarden._audit_log', '_audit_log_no_update_delete', 'update or delete');

-- The audit trail, newest first (admin).
create or replace function costwarden.fn_audit_list(
    p_org_id text default null,
    p_action text default null,
    p_since timestamptz default null,
    p_limit integer default 100
)
returns table (
    audit_id bigint, at timestamptz, db_role text, actor_org text, actor_user text,
    action text, org_id text, target jsonb, before jsonb, after jsonb
)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
begin
    perform costwarden._tenant_guard(p_org_id);
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
