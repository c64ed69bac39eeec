-- The shadow report (SPEC §6): what shadow mode let through, from the
-- reasons kept on the reservation rows.

-- What shadow mode (or billing_enforce = false) let through that an enforced
-- limit would have refused, per scope and limit, over reservations created
-- in [p_from, p_to): from the reasons with "enforced": false kept on the
-- reservation rows (by reserve, and by meter ticks that extended a hold).
--   refusals          reservations that would have been refused
--   requested         sum of the refused requests, in the limit's metric
--                     (micro-USD for cost limits, tokens for token limits)
--   requested_micros  sum of those reservations' quoted amounts (micro-USD)
create or replace function costwarden.fn_shadow_report(
    p_org_id text, p_from timestamptz default now() - interval '30 days', p_to timestamptz default now()
)
returns table (
    scope_kind text, scope_id text, period text, metric text, window_kind text, limit_value bigint,
    code text, refusals bigint, requested numeric, requested_micros numeric,
    first_seen timestamptz, last_seen timestamptz
)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
begin
    perform costwarden._tenant_guard(p_org_id);
    perform costwarden._require_org(p_org_id);
    if p_from is null or p_to is null then
        perform costwarden._raise('CW004', 'p_from and p_to are required');
    end if;
    if p_from > p_to then
        perform costwarden._raise('CW004', 'p_from must not be after p_to');
    end if;
    return query
    with per_reservation as (
        select e ->> 'scope_kind' as scope_kind, e ->> 'scope_id' as scope_id, e ->> 'period' as period,
               e ->> 'metric' as metric, e ->> 'window' as window_kind, (e ->> 'limit')::bigint as limit_value,
               e ->> 'code' as code, r.reservation_id,
               sum((e ->> 'requested')::numeric) as requested,
               max(r.quoted_micros) as quoted_micros, min(r.created_at) as created_at
        from costwarden._reservations as r
        cross join lateral jsonb_array_elements(r.reasons || coalesce(r.tick_reasons, '[]'::jsonb)) as e
        where r.org_id = p_org_id and r.created_at >= p_from and r.created_at < p_to
          and e ->> 'enforced' = 'false'
          and e ->> 'code' in ('budget_exceeded', 'token_quota_exceeded')
        group by 1, 2, 3, 4, 5, 6, 7, 8
    )
    select pr.scope_kind, pr.scope_id, pr.period, pr.metric, pr.window_kind, pr.limit_value, pr.code,
           count(*), sum(pr.requested), sum(pr.quoted_micros), min(pr.created_at), max(pr.created_at)
    from per_reservation as pr
    group by 1, 2, 3, 4, 5, 6, 7
    order by 1, 2 nulls first, 3, 4, 5, 6, 7;
end
$$;

grant execute on function costwarden.fn_shadow_report(text, timestamptz, timestamptz) to costwarden_admin;
