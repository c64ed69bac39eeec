-- Cumulative spend reports (SPEC §6): sources bound to a key / user, the
-- report that books the delta (pools, spend totals, ledger, alerts), the listing.
--
-- lock order: docs/internals.md#lock-order

-- Internal: the row of a spend source, created when absent, locked until
-- commit: it serialises the source's reports and bindings
-- (lock order: docs/internals.md#lock-order).
create or replace function costwarden._spend_source_lock(p_org_id text, p_workspace_id text, p_source text)
returns costwarden._spend_sources
language plpgsql
as $$
declare
    v_s costwarden._spend_sources;
begin
    insert into costwarden._spend_sources (org_id, workspace_id, source)
    values (p_org_id, p_workspace_id, p_source)
    on conflict (org_id, workspace_id, source) do nothing;
    select * into v_s from costwarden._spend_sources as s
    where s.org_id = p_org_id and s.workspace_id = p_workspace_id and s.source = p_source
    for update;
    return v_s;
end
$$;

-- Bind a spend source to a key and/or user (admin; audited). Later reports of
-- the source count toward those scopes' windows as well.
-- Bind a spend source to a key and/or user (admin; audited). Later reports of
-- the source count toward those scopes' windows as well.
create or replace function costwarden.fn_spend_source_set(
    p_org_id text, p_workspace_id text, p_source text,
    p_key_id text default null, p_user_id text default null
)
returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_before costwarden._spend_sources;
begin
    perform costwarden._tenant_guard(p_org_id);
    perform costwarden._require_workspace(p_org_id, p_workspace_id);
    perform costwarden._require_text(p_source, 'p_source');
    perform costwarden._context_user(p_org_id, p_workspace_id, p_user_id, p_key_id);
    v_before := costwarden._spend_source_lock(p_org_id, p_workspace_id, p_source);
    update costwarden._spend_sources as s
    set key_id = p_key_id, user_id = p_user_id
    where s.org_id = p_org_id and s.workspace_id = p_workspace_id and s.source = p_source;
    perform costwarden._audit(
        'spend_source_set', p_org_id,
        jsonb_build_object('workspace_id', p_workspace_id, 'source', p_source),
        case when v_before.reports > 0 or v_before.key_id is not null or v_before.user_id is not null
             then jsonb_build_object('key_id', v_before.key_id, 'user_id', v_before.user_id) end,
        jsonb_build_object('key_id', p_key_id, 'user_id', p_user_id)
    );
end
$$;

-- Internal: book a delta of a spend source: its pools (ascending) -> spend
-- totals -> ledger head, then the budget alerts. The caller holds the
-- source's row lock. Returns the ledger entry's seq.
create or replace function costwarden._spend_report_book(p_s costwarden._spend_sources, p_delta bigint)
returns bigint
language plpgsql
as $$
declare
    v_user_id text;
    v_pool_ids bigint[];
    v_seq bigint;
begin
    v_user_id := coalesce(p_s.user_id,
        (select k.user_id from costwarden._keys as k where k.org_id = p_s.org_id and k.key_id = p_s.key_id));
    v_pool_ids := costwarden._context_pool_ids(p_s.org_id, p_s.workspace_id, p_s.key_id, v_user_id);
    perform costwarden._lock_pools(v_pool_ids);
    perform costwarden._pool_add_spend(v_pool_ids, p_delta, 0, now(), p_org_id => p_s.org_id);
    select a.seq into v_seq
    from costwarden._ledger_append(
        p_org_id => p_s.org_id, p_entry_type => 'spend_report', p_amount_micros => p_delta,
        p_workspace_id => p_s.workspace_id, p_user_id => v_user_id, p_key_id => p_s.key_id,
        p_billing_mode => (costwarden._billing_mode(
            costwarden._require_workspace(p_s.org_id, p_s.workspace_id))).billing_mode,
        p_source => p_s.source) as a;
    perform costwarden._spend_alerts(p_s.org_id, p_s.workspace_id, p_s.key_id, v_user_id, v_pool_ids);
    return v_seq;
end
$$;

create or replace function costwarden.fn_spend_report_cumulative(
    p_org_id text, p_workspace_id text, p_source text, p_cumulative_micros bigint
)
returns bigint
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_s costwarden._spend_sources;
    v_delta bigint;
    v_reset boolean;
    v_max jsonb;
    v_anomaly_id bigint;
    v_freeze boolean;
begin
    perform costwarden._tenant_guard(p_org_id);
    perform costwarden._require_workspace(p_org_id, p_workspace_id);
    perform costwarden._require_text(p_source, 'p_source');
    if p_cumulative_micros is null then
        perform costwarden._raise('CW004', 'p_cumulative_micros is required');
    end if;
    if p_cumulative_micros < 0 then
        perform costwarden._raise('CW004', format('p_cumulative_micros must not be negative, got %s',
                                                  p_cumulative_micros));
    end if;

    -- 1. the source's row lock: reports of one source are serialised
    v_s := costwarden._spend_source_lock(p_org_id, p_workspace_id, p_source);

    -- 2. the delta: against the previous counter; a counter that went down was reset
    v_reset := p_cumulative_micros < coalesce(v_s.last_cumulative_micros, 0);
    v_delta := case when v_reset then p_cumulative_micros
                    else p_cumulative_micros - coalesce(v_s.last_cumulative_micros, 0) end;

    -- 3. an outlier (delta over spend_report_max_delta_micros; JSON null: no bound)
    --    books nothing: it is quarantined with an anomaly, for an admin to accept
    --    or reject (fn_spend_report_resolve); the counter still moves to the
    --    reported value, so no later report books it again
    v_max := costwarden._setting('spend_report_max_delta_micros');
    if v_delta > 0 and jsonb_typeof(v_max) = 'number' and v_delta > (v_max #>> '{}')::numeric then
        v_freeze := (costwarden._setting('anomaly_freeze'))::boolean;
        insert into costwarden._anomalies (
            org_id, workspace_id, kind, hour_start, window_start, window_end, spent_micros,
            threshold_micros, frozen, detected_at
        ) values (
            p_org_id, p_workspace_id, 'spend_report_outlier', date_trunc('hour', now()),
            coalesce(v_s.last_reported_at, now()), now(), v_delta, (v_max #>> '{}')::numeric, v_freeze, now()
        )
        returning anomaly_id into v_anomaly_id;
        insert into costwarden._spend_report_quarantine (
            org_id, workspace_id, source, previous_cumulative_micros, cumulative_micros, delta_micros,
            max_delta_micros, anomaly_id
        ) values (
            p_org_id, p_workspace_id, p_source, v_s.last_cumulative_micros, p_cumulative_micros, v_delta,
            (v_max #>> '{}')::bigint, v_anomaly_id
        );
        -- announced like every anomaly: ids and level on the channel, the rest in the alert
        perform costwarden._alert_emit('anomaly', case when v_freeze then 'critical' else 'warning' end,
            p_org_id, jsonb_build_object(
            'kind', 'anomaly', 'anomaly_kind', 'spend_report_outlier', 'anomaly_id', v_anomaly_id,
            'org_id', p_org_id, 'workspace_id', p_workspace_id, 'source', p_source, 'delta_micros', v_delta,
            'threshold_micros', (v_max #>> '{}')::numeric, 'frozen', v_freeze, 'at', now()));
        v_delta := 0;
    end if;

    -- 4. book it: pools (ascending) -> spend totals -> ledger head
    if v_delta > 0 then
        perform costwarden._spend_report_book(v_s, v_delta);
    end if;

    update costwarden._spend_sources as s
    set last_cumulative_micros = p_cumulative_micros, reports = s.reports + 1,
        resets = s.resets + case when v_reset then 1 else 0 end,
        booked_micros = s.booked_micros + v_delta, last_reported_at = now()
    where s.org_id = p_org_id and s.workspace_id = p_workspace_id and s.source = p_source;
    return v_delta;
end
$$;

-- The spend sources and their counters (admin).
create or replace function costwarden.fn_spend_sources_list(p_org_id text default null)
returns table (
    org_id text, workspace_id text, source text, key_id text, user_id text,
    last_cumulative_micros bigint, reports bigint, resets bigint, booked_micros bigint,
    last_reported_at timestamptz, created_at timestamptz
)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
begin
    perform costwarden._tenant_guard(p_org_id);
    perform costwarden._optional_org(p_org_id);
    return query
    select s.org_id, s.workspace_id, s.source, s.key_id, s.user_id, s.last_cumulative_micros, s.reports,
           s.resets, s.booked_micros, s.last_reported_at, s.created_at
    from costwarden._spend_sources as s
    where p_org_id is null or s.org_id = p_org_id
    order by s.org_id, s.workspace_id, s.source;
end
$$;

grant execute on function costwarden.fn_spend_report_cumulative(text, text, text, bigint) to costwarden_service;
grant execute on function
    costwarden.fn_spend_source_set(text, text, text, text, text),
    costwarden.fn_spend_sources_list(text)
to costwarden_admin;
