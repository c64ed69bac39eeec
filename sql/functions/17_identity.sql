-- Trusted identity (SPEC §12): login bindings. A session whose user is not a
-- member of costwarden_authenticator cannot name its actor with settings;
-- its tenant calls act for the org (and user) its login is bound to here.
-- costwarden._actor (00_core.sql) reads the bindings; docs/threat-model.md.

create or replace function costwarden.fn_tenant_login_bind(
    p_login text, p_org_id text, p_user_id text default null
)
returns void
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_role pg_catalog.pg_roles;
    v_before costwarden._tenant_logins;
begin
    perform costwarden._tenant_guard(p_org_id);
    perform costwarden._require_text(p_login, 'p_login', 63);
    select * into v_role from pg_catalog.pg_roles as r where r.rolname = p_login;
    if not found then
        perform costwarden._raise('CW002', format('p_login: unknown role %L', p_login));
    end if;
    if not v_role.rolcanlogin then
        perform costwarden._raise('CW004', format('p_login: role %L cannot log in', p_login));
    end if;
    perform costwarden._require_org(p_org_id);
    if p_user_id is not null and not exists (
        select from costwarden._users as u where u.org_id = p_org_id and u.user_id = p_user_id
    ) then
        perform costwarden._raise('CW002', format('p_user_id: unknown user %L in org %L', p_user_id, p_org_id));
    end if;
    select * into v_before from costwarden._tenant_logins as b where b.login = p_login for update;
    -- a caller confined to an org (_tenant_guard) binds only its own tenants' logins:
    -- not one bound to another org, nor one that serves every org (a service, admin or
    -- authenticator login, whose calls a binding would confine)
    if v_before.org_id is not null and v_before.org_id <> p_org_id then
        perform costwarden._tenant_guard(v_before.org_id, p_arg => 'p_login');
    end if;
    if (costwarden._actor()).org_id is not null
       and (pg_has_role(p_login, 'costwarden_service', 'MEMBER')
            or pg_has_role(p_login, 'costwarden_authenticator', 'MEMBER')) then
        perform costwarden._raise('CW005', format(
            'p_login: %L serves every org (a service, admin or authenticator login); an actor of one org binds tenant logins only',
            p_login));
    end if;
    insert into costwarden._tenant_logins as b (login, org_id, user_id)
    values (p_login, p_org_id, p_user_id)
    on conflict (login) do update set org_id = excluded.org_id, user_id = excluded.user_id, bound_at = now();
    perform costwarden._audit(
        'tenant_login_bind', p_org_id, jsonb_build_object('login', p_login),
        case when v_before.login is not null then
            jsonb_build_object('org_id', v_before.org_id, 'user_id', v_before.user_id) end,
        jsonb_build_object('org_id', p_org_id, 'user_id', p_user_id)
    );
end
$$;

comment on function costwarden.fn_tenant_login_bind(text, text, text) is
'Bind a database login to an org (and user): the actor of its tenant calls (SPEC §12). Audited.';

create or replace function costwarden.fn_tenant_login_unbind(p_login text)
returns boolean
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_org text;
    v_before costwarden._tenant_logins;
begin
    perform costwarden._require_text(p_login, 'p_login', 63);
    select b.org_id into v_org from costwarden._tenant_logins as b where b.login = p_login for update;
    if not found then
        -- no binding: nothing to check, nothing done (through the proxy, the partitions
        -- that do not hold the binding answer so; docs/scale-out.md)
        return false;
    end if;
    perform costwarden._tenant_guard(v_org, p_arg => 'p_login');
    delete from costwarden._tenant_logins as b where b.login = p_login returning * into v_before;
    perform costwarden._audit(
        'tenant_login_unbind', v_before.org_id, jsonb_build_object('login', p_login),
        jsonb_build_object('org_id', v_before.org_id, 'user_id', v_before.user_id),
        jsonb_build_object('bound', false)
    );
    return true;
end
$$;

comment on function costwarden.fn_tenant_login_unbind(text) is
'Remove a login binding; true when there was one. Audited.';

grant execute on function
    costwarden.fn_tenant_login_bind(text, text, text),
    costwarden.fn_tenant_login_unbind(text)
to costwarden_admin;
