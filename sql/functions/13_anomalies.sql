-- Spend anomalies and workspace freezes (SPEC §6): detection (pg_cron job
-- costwarden-anomalies), the freeze check of reserve, acknowledgement, listing.
-- Every anomaly is also sent on channel 'costwarden_alerts' (docs/alerts.md).

-- Internal (reserve, hot path): is the workspace frozen by an unacknowledged anomaly?
-- (No SET clause, so that it is inlined into fn_cost_reserve, which pins
-- search_path; it is granted to nobody.)
create or replace function costwarden._workspace_frozen(p_org_id text, p_workspace_id text)
returns boolean
language plpgsql stable
as $$
begin
    -- PL/pgSQL so that the plan is cached (EXISTS keeps a SQL function from being inlined)
    return exists (
        select from costwarden._anomalies as a
        where a.org_id = p_org_id and a.workspace_id = p_workspace_id and a.frozen and a.acked_at is null
    );
end
$$;

-- Per workspace: the spend of the last 60 minutes (from the first spend mark
-- at or after the top of the minute 59 minutes ago, the current
-- minute included) against the 168 clock hours before the hour in which
-- that window starts (hourly sums between the spend marks, whose slots are
-- to the hour; an hour without spend counts as 0). It is an anomaly when
--   spent > mean + anomaly_sigma * stddev   and   spent >= anomaly_min_micros.
-- A workspace with an anomaly detected in the last hour is skipped (the same
-- spike is not reported twice, an acknowledged one does not re-freeze at
-- once), and at most one anomaly is recorded per workspace and clock hour.
-- Overlapping runs: the second does not wait and returns -1 ("did not run",
-- with a NOTICE); the lock is a row of the private table _locks, which no
-- other role can take.
create or replace function costwarden.fn_detect_spend_anomalies()
returns integer
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_now timestamptz := now();
    v_window_start timestamptz := date_trunc('minute', now()) - interval '59 minutes';
    v_base_end timestamptz := date_trunc('hour', date_trunc('minute', now()) - interval '59 minutes');
    v_sigma numeric := (costwarden._setting('anomaly_sigma'))::text::numeric;
    v_min bigint := (costwarden._setting('anomaly_min_micros'))::text::numeric::bigint;
    v_freeze boolean := (costwarden._setting('anomaly_freeze'))::boolean;
    v_c record;
    v_id bigint;
    v_n integer := 0;
begin
    if not costwarden._try_lock_named('detect_spend_anomalies') then
        raise notice 'costwarden: fn_detect_spend_anomalies did not run: another run is in progress';
        return -1;
    end if;
    for v_c in
        with active as (
            select p.pool_id, p.org_id, p.scope_id as workspace_id, p.spent_micros,
                   p.spent_micros - coalesce(w.micros_before, p.spent_micros) as spent
            from costwarden._pools as p
            left join lateral (
                -- the total before the window (a minute, 06_budgets.sql): the first mark since
                select k.micros_before
                from costwarden._spend_marks as k
                where k.pool_id = p.pool_id and k.mark_at >= v_window_start
                order by k.mark_at
                limit 1
            ) as w on true
            where p.kind = 'workspace'
              and p.spent_micros - coalesce(w.micros_before, p.spent_micros) > 0
              and p.spent_micros - coalesce(w.micros_before, p.spent_micros) >= v_min
              and not exists (
                  select from costwarden._anomalies as a
                  where a.org_id = p.org_id and a.workspace_id = p.scope_id and a.kind = 'spend_rate'
                    and a.detected_at > v_now - interval '1 hour')
        )
        select a.org_id, a.workspace_id, a.spent, s.mean, s.stddev,
               s.mean + v_sigma * s.stddev as bar
        from active as a
        cross join lateral (
            select coalesce(sum(h.x), 0) / 168 as mean,
                   sqrt(greatest(coalesce(sum(h.x * h.x), 0) / 168 - power(coalesce(sum(h.x), 0) / 168, 2), 0))
                       as stddev
            from (
                -- the spend booked from one mark to the next lies in the mark's
                -- slot (an hour or less at these ages, 06_budgets.sql): summed per hour
                select sum(k.after - k.micros_before)::numeric as x
                from (
                    select mk.mark_at, mk.micros_before,
                           lead(mk.micros_before, 1, a.spent_micros) over (order by mk.mark_at) as after
                    from costwarden._spend_marks as mk
                    where mk.pool_id = a.pool_id and mk.mark_at >= v_base_end - interval '168 hours'
                ) as k
                where k.mark_at < v_base_end
                group by date_bin(interval '1 hour', k.mark_at, timestamptz '2000-01-01 00:00:00+00')
            ) as h
        ) as s
        order by a.org_id, a.workspace_id
    loop
        continue when v_c.spent <= v_c.bar;
        insert into costwarden._anomalies (
            org_id, workspace_id, hour_start, window_start, window_end, spent_micros, mean_micros,
            stddev_micros, sigma, threshold_micros, frozen, detected_at
        ) values (
            v_c.org_id, v_c.workspace_id, date_trunc('hour', v_now), v_window_start, v_now, v_c.spent,
            round(v_c.mean, 3), round(v_c.stddev, 3), v_sigma, round(greatest(v_c.bar, v_min), 3),
            v_freeze, v_now
        )
        on conflict (org_id, workspace_id, hour_start) where kind = 'spend_rate' do nothing
        returning anomaly_id into v_id;
        continue when v_id is null;
        v_n := v_n + 1;
        perform costwarden._alert_emit('anomaly', case when v_freeze then 'critical' else 'warning' end,
            v_c.org_id, jsonb_build_object(
            'kind', 'anomaly', 'anomaly_id', v_id, 'org_id', v_c.org_id, 'workspace_id', v_c.workspace_id,
            'spent_micros', v_c.spent, 'mean_micros', round(v_c.mean, 3),
            'stddev_micros', round(v_c.stddev, 3), 'threshold_micros', round(greatest(v_c.bar, v_min), 3),
            'frozen', v_freeze, 'at', v_now));
        v_id := null;
    end loop;
    return v_n;
end
$$;

create or replace function costwarden.fn_anomaly_ack(p_anomaly_id bigint)
returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_a costwarden._anomalies;
    v_by text;
begin
    if p_anomaly_id is null then
        perform costwarden._raise('CW004', 'p_anomaly_id is required');
    end if;
    select * into v_a from costwarden._anomalies as a where a.anomaly_id = p_anomaly_id for update;
    if not found then
        perform costwarden._raise('CW002', format('p_anomaly_id: unknown anomaly %s', p_anomaly_id));
    end if;
    perform costwarden._tenant_guard(v_a.org_id, p_arg => 'p_anomaly_id');
    if v_a.acked_at is not null then
        return;                             -- already acknowledged: nothing to do, nothing written
    end if;
    v_by := coalesce((select a.user_id from costwarden._actor() as a), session_user::text);
    update costwarden._anomalies as a
    set acked_at = now(), acked_by = v_by
    where a.anomaly_id = p_anomaly_id;
    perform costwarden._audit(
        'anomaly_ack', v_a.org_id,
        jsonb_build_object('anomaly_id', p_anomaly_id, 'workspace_id', v_a.workspace_id),
        jsonb_build_object('acked_at', null, 'frozen', v_a.frozen),
        jsonb_build_object('acked_at', now(), 'acked_by', v_by, 'frozen', false)
    );
end
$$;

-- Anomalies, newest first (admin). p_open_only: only unacknowledged ones.
-- kind: spend_rate | spend_report_outlier (mean, stddev null for an outlier).
drop function if exists costwarden.fn_anomalies_list(text, boolean, integer);
create function costwarden.fn_anomalies_list(
    p_org_id text default null, p_open_only boolean default false, p_limit integer default 100
)
returns table (
    anomaly_id bigint, org_id text, workspace_id text, hour_start timestamptz, window_start timestamptz,
    window_end timestamptz, spent_micros bigint, mean_micros numeric, stddev_micros numeric,
    threshold_micros numeric, frozen boolean, detected_at timestamptz, acked_at timestamptz, acked_by text,
    kind text
)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
begin
    perform costwarden._tenant_guard(p_org_id);
    perform costwarden._optional_org(p_org_id);
    if p_open_only is null then
        perform costwarden._raise('CW004', 'p_open_only must be true or false');
    end if;
    perform costwarden._require_limit(p_limit);
    return query
    select a.anomaly_id, a.org_id, a.workspace_id, a.hour_start, a.window_start, a.window_end, a.spent_micros,
           a.mean_micros, a.stddev_micros, a.threshold_micros, a.frozen, a.detected_at, a.acked_at, a.acked_by,
           a.kind
    from costwarden._anomalies as a
    where (p_org_id is null or a.org_id = p_org_id)
      and (not p_open_only or a.acked_at is null)
    order by a.anomaly_id desc
    limit p_limit;
end
$$;

grant execute on function costwarden.fn_detect_spend_anomalies() to costwarden_service;
grant execute on function
    costwarden.fn_anomaly_ack(bigint),
    costwarden.fn_anomalies_list(text, boolean, integer)
to costwarden_admin;
