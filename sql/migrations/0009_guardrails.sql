-- 0009: guardrails (SPEC §6): circuit breakers, budget alert de-duplication,
-- cumulative spend sources, spend anomalies. One function file per concern:
-- sql/functions/08_circuits.sql, 09_alerts.sql, 12_spend_reports.sql,
-- 13_anomalies.sql (the shadow report, 15_shadow_report.sql, reads
-- reservations only).

create table costwarden._circuits (
    provider text primary key,
    -- closed: reserves go ahead; open: reserves are refused (circuit_open)
    -- until circuit_cooldown has passed since opened_at; half_open: one probe
    -- was admitted at probe_at and its report decides (another probe is
    -- admitted if no report arrives within circuit_cooldown)
    state text not null default 'closed',
    consecutive_failures integer not null default 0,
    opened_at timestamptz,                  -- when it last opened
    probe_at timestamptz,                   -- when the current half-open probe was admitted
    last_error text,                        -- p_error of the last failure report
    last_failure_at timestamptz,
    updated_at timestamptz not null default now(),
    constraint circuits_state_check check (state in ('closed', 'open', 'half_open')),
    constraint circuits_failures_nonnegative check (consecutive_failures >= 0)
);

comment on table costwarden._circuits is
'Per-provider circuit breaker state (SPEC §6). Providers without a row are closed.';

-- Every state change of a circuit, and every probe admission: the history
-- shown by fn_circuit_history / `costwarden circuits history`.
create table costwarden._circuit_events (
    event_id bigint generated always as identity primary key,
    provider text not null,
    at timestamptz not null default now(),
    from_state text not null,
    to_state text not null,
    -- failure_threshold: closed -> open after circuit_failure_threshold consecutive failures
    -- probe_admitted:    open -> half_open, a reservation was admitted as the probe
    -- probe_retry:       half_open -> half_open, no report within circuit_cooldown of the
    --                    probe: the next reservation is admitted as a new probe
    -- probe_succeeded:   half_open -> closed on a success report
    -- probe_failed:      half_open -> open on a failure report
    -- reset:             an admin closed it (fn_circuit_reset)
    reason text not null,
    consecutive_failures integer not null,
    error text,
    constraint circuit_events_reason_check check (reason in (
        'failure_threshold', 'probe_admitted', 'probe_retry', 'probe_succeeded', 'probe_failed', 'reset'))
);

create index _circuit_events_provider_at on costwarden._circuit_events (provider, event_id desc);

-- When a scope's level (spent + held, plus the request when it is admitted)
-- reaches 80% or 100% of a limit, costwarden sends one NOTIFY on channel
-- 'costwarden_alerts' with a JSON payload (docs/alerts.md) -- once per
-- threshold, limit and window (a calendar window's start; for rolling
-- windows, the period-long slot since 2000-01-03, a Monday).
create table costwarden._alerts_sent (
    org_id text not null,
    scope_kind text not null,
    scope_id text not null,                 -- '' for the org
    period text not null,
    metric text not null,
    window_kind text not null,
    window_slot timestamptz not null,
    threshold integer not null,             -- 80 | 100 (percent of the limit)
    level bigint not null,                  -- the level that crossed it
    limit_value bigint not null,
    sent_at timestamptz not null default now(),
    primary key (org_id, scope_kind, scope_id, period, metric, window_kind, window_slot, threshold)
);

-- One row per (workspace, source) that reports a cumulative spend counter.
-- The row is created by the first report, or beforehand by fn_spend_source_set,
-- which binds the source to a key and/or user: its deltas then count toward
-- that key's and user's windows too. The row lock serialises the reports of
-- one source, so concurrent reports never book the same delta twice.
create table costwarden._spend_sources (
    org_id text not null,
    workspace_id text not null,
    source text not null,
    key_id text,                            -- spend counts toward this key's pool too
    user_id text,                           -- ... and this user's (a key's user applies when null)
    last_cumulative_micros bigint,          -- the counter at the last report (null: none yet)
    reports bigint not null default 0,
    resets bigint not null default 0,       -- reports whose counter went down
    booked_micros bigint not null default 0,    -- sum of the deltas booked
    last_reported_at timestamptz,
    created_at timestamptz not null default now(),
    primary key (org_id, workspace_id, source),
    foreign key (org_id, workspace_id) references costwarden._workspaces (org_id, workspace_id),
    foreign key (org_id, key_id) references costwarden._keys (org_id, key_id),
    foreign key (org_id, user_id) references costwarden._users (org_id, user_id),
    constraint spend_sources_counter_nonnegative check (last_cumulative_micros >= 0)
);

comment on table costwarden._spend_sources is
'Sources of cumulative spend reports (SPEC §6): last counter per (workspace, source), optional key/user context.';

create table costwarden._anomalies (
    anomaly_id bigint generated always as identity primary key,
    org_id text not null,
    workspace_id text not null,
    hour_start timestamptz not null,        -- the clock hour of detection: one anomaly per workspace and hour
    window_start timestamptz not null,      -- the 60 minutes whose spend was judged
    window_end timestamptz not null,
    spent_micros bigint not null,           -- spend in that window
    mean_micros numeric not null,           -- hourly mean of the 168 baseline hours
    stddev_micros numeric not null,         -- their (population) standard deviation
    sigma numeric not null,                 -- anomaly_sigma at detection
    threshold_micros numeric not null,      -- greatest(mean + sigma * stddev, anomaly_min_micros)
    frozen boolean not null,                -- anomaly_freeze was on: the workspace is frozen until acked
    detected_at timestamptz not null default now(),
    acked_at timestamptz,
    acked_by text,                          -- the actor user, else the login role
    unique (org_id, workspace_id, hour_start),
    foreign key (org_id, workspace_id) references costwarden._workspaces (org_id, workspace_id)
);

comment on table costwarden._anomalies is
'Spend anomalies found by fn_detect_spend_anomalies; frozen and not acked = reserves denied (anomaly_freeze).';

create index _anomalies_open_freeze on costwarden._anomalies (org_id, workspace_id)
where frozen and acked_at is null;

create index _anomalies_workspace_detected on costwarden._anomalies (org_id, workspace_id, detected_at desc);
