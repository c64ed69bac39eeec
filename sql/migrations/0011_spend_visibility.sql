-- 0011: spend visibility and outlier reports (SPEC v2 §0, §6, §11). The
-- functions are in sql/functions/16_spend_visibility.sql; the quarantine of
-- outlier reports is decided in sql/functions/12_spend_reports.sql.

-- SPEC v2 §0: three more usage units, all counted as tokens.
insert into costwarden._usage_units (unit, integer_only, is_token, description) values
('cache_write_tokens', true, true, 'prompt tokens written to a provider cache (billed at their own price)'),
('audio_input_tokens', true, true, 'audio tokens in (realtime / audio models)'),
('audio_output_tokens', true, true, 'audio tokens out');

-- A setting may accept JSON null (meaning "no bound") when nullable.
alter table costwarden._setting_defs add column nullable boolean not null default false;

insert into costwarden._setting_defs (key, value_type, default_value, allowed, min_value, nullable, description)
values (
    'spend_report_max_delta_micros', 'integer', '100000000', null, 0, true,
    'a cumulative spend report whose delta exceeds this is quarantined, not booked; null: no bound'
);

-- Anomalies have a kind: spend_rate (fn_detect_spend_anomalies: the last hour
-- against the trailing week) or spend_report_outlier (a cumulative spend report
-- over spend_report_max_delta_micros, quarantined). An outlier has no baseline
-- statistics: mean, stddev and sigma are null for it.
alter table costwarden._anomalies
add column kind text not null default 'spend_rate',
add constraint anomalies_kind_check check (kind in ('spend_rate', 'spend_report_outlier')),
alter column mean_micros drop not null,
alter column stddev_micros drop not null,
alter column sigma drop not null;

-- At most one spend_rate anomaly per workspace and clock hour; every outlier
-- report has its own.
alter table costwarden._anomalies drop constraint _anomalies_org_id_workspace_id_hour_start_key;
create unique index _anomalies_rate_hour on costwarden._anomalies (org_id, workspace_id, hour_start)
where kind = 'spend_rate';

-- Cumulative spend reports whose delta exceeded spend_report_max_delta_micros:
-- nothing was booked, the source's counter moved to the reported value, and an
-- admin accepts (the delta is booked then) or rejects (nothing is booked) each
-- one, once (fn_spend_report_resolve).
create table costwarden._spend_report_quarantine (
    report_id bigint generated always as identity primary key,
    org_id text not null,
    workspace_id text not null,
    source text not null,
    previous_cumulative_micros bigint,      -- the source's counter before the report (null: first report)
    cumulative_micros bigint not null,      -- the reported counter
    delta_micros bigint not null,           -- what would have been booked
    max_delta_micros bigint not null,       -- spend_report_max_delta_micros at the time
    anomaly_id bigint not null references costwarden._anomalies (anomaly_id),
    reported_at timestamptz not null default now(),
    -- null: undecided; true: accepted (booked_micros = delta_micros, ledger_seq its
    -- entry); false: rejected (nothing booked)
    accepted boolean,
    decided_at timestamptz,
    decided_by text,                        -- the actor user, else the login role
    booked_micros bigint not null default 0,
    ledger_seq bigint,
    foreign key (org_id, workspace_id, source)
    references costwarden._spend_sources (org_id, workspace_id, source),
    constraint spend_report_quarantine_delta_positive check (delta_micros > 0),
    constraint spend_report_quarantine_decision_check check (
        (accepted is null and decided_at is null and booked_micros = 0)
        or (accepted and decided_at is not null and booked_micros = delta_micros)
        or (not accepted and decided_at is not null and booked_micros = 0)
    )
);

create index _spend_report_quarantine_open on costwarden._spend_report_quarantine (org_id, report_id)
where accepted is null;

comment on table costwarden._spend_report_quarantine is
'Outlier cumulative spend reports (SPEC §6): booked only if an admin accepts them.';

-- fn_spend_summary counts the calls of a scope in a window from the
-- reservations (never the ledger): one index range per scope kind.
-- (org: _reservations_org_created; user: _reservations_user_created.)
create index _reservations_workspace_created on costwarden._reservations (org_id, workspace_id, created_at);
create index _reservations_key_created on costwarden._reservations (org_id, key_id, created_at)
where key_id is not null;
