-- The workspace billing mode (SPEC §5): costwarden._billing_mode is the one
-- source of truth, asked by the quote, reserve, the BYOK key-write guard and
-- resolve.

-- Internal: the billing mode of a workspace row (SPEC §5, rules 1-4, in order).
create or replace function costwarden._billing_mode(p_ws costwarden._workspaces, out billing_mode text, out source text)
language plpgsql stable
as $$
declare
    v_proxy boolean := (costwarden._setting('platform_proxy_configured'))::boolean;
    v_servable boolean;
begin
    -- 1. an explicit override wins
    if p_ws.billing_override is not null then
        billing_mode := p_ws.billing_override;
        source := 'override';
        return;
    end if;
    select m.platform_servable into v_servable from costwarden._models as m where m.model = p_ws.model;
    if found then
        -- 2. platform-servable model: platform_managed where the proxy exists, else byok
        -- 3. vendor model: byok (choosing it is the signal)
        billing_mode := case when v_servable and v_proxy then 'platform_managed' else 'byok' end;
        source := 'model';
        return;
    end if;
    -- 4. no model or an unknown one: the deployment default
    billing_mode := case when v_proxy then 'platform_managed' else 'byok' end;
    source := 'deploy_default';
end
$$;

create or replace function costwarden.fn_workspace_billing_mode(p_org_id text, p_workspace_id text)
returns table (billing_mode text, source text)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
begin
    perform costwarden._tenant_guard(p_org_id);
    return query select b.billing_mode, b.source
    from costwarden._billing_mode(costwarden._require_workspace(p_org_id, p_workspace_id)) as b;
end
$$;

grant execute on function costwarden.fn_workspace_billing_mode(text, text) to costwarden_admin, costwarden_service;
