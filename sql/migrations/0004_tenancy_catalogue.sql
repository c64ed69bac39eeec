-- 0004: tenancy (orgs, workspaces, users, groups, API keys) and the model
-- catalogue with immutable, dated pricing snapshots (SPEC §1).

create table costwarden._orgs (
    org_id text primary key,
    settings jsonb not null default '{}',  -- credit_rate_usd, timezone, group_resolution
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint orgs_settings_object check (jsonb_typeof(settings) = 'object')
);

create table costwarden._models (
    model text primary key,                -- 'provider/model'
    provider text not null,                -- the part before the first '/'
    platform_servable boolean not null default false,  -- the platform proxy can serve it
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint models_provider_prefix check (model like provider || '/%')
);

create table costwarden._workspaces (
    org_id text not null references costwarden._orgs (org_id),
    workspace_id text not null,
    model text references costwarden._models (model),   -- the workspace's chosen model
    billing_override text,                 -- null: derive the mode; else it wins (SPEC §5 rule 1)
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (org_id, workspace_id),
    constraint workspaces_override_check
        check (billing_override in ('platform_managed', 'byok', 'disabled'))
);

create table costwarden._users (
    org_id text not null references costwarden._orgs (org_id),
    user_id text not null,
    created_at timestamptz not null default now(),
    primary key (org_id, user_id)
);

create table costwarden._user_groups (
    org_id text not null,
    user_id text not null,
    group_id text not null,
    primary key (org_id, user_id, group_id),
    foreign key (org_id, user_id) references costwarden._users (org_id, user_id)
);

create index _user_groups_group on costwarden._user_groups (org_id, group_id);

create table costwarden._keys (
    org_id text not null references costwarden._orgs (org_id),
    key_id text not null,                  -- an API key / allocation of the host application
    workspace_id text,                     -- optional: the workspace the key belongs to
    user_id text,                          -- optional: the user the key belongs to
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (org_id, key_id),
    foreign key (org_id, workspace_id) references costwarden._workspaces (org_id, workspace_id),
    foreign key (org_id, user_id) references costwarden._users (org_id, user_id)
);

-- Pools: one row per (org, kind, scope) that spend can be counted against.
-- held_* are the live reservations' holds; committed spend lives in
-- _spend_buckets (see 0006). A pool row is also the lock that serialises the
-- admission decisions of its scope (lock order: docs/internals.md#lock-order).
create table costwarden._pools (
    pool_id bigint generated always as identity primary key,
    org_id text not null references costwarden._orgs (org_id),
    kind text not null,                    -- 'org' | 'workspace' | 'key' | 'user'
    scope_id text not null,                -- '' for the org pool
    held_micros bigint not null default 0,
    held_tokens bigint not null default 0,
    constraint pools_kind_check check (kind in ('org', 'workspace', 'key', 'user')),
    constraint pools_held_nonnegative check (held_micros >= 0 and held_tokens >= 0),
    unique (org_id, kind, scope_id)
) with (fillfactor = 50);  -- held_* change on every reserve/commit: leave room for HOT updates

comment on table costwarden._pools is
'Spend pools (org, workspace, key, user) with the sum of their live holds; row lock = admission lock.';

create table costwarden._pricing_snapshots (
    snapshot_id bigint generated always as identity primary key,
    model text not null references costwarden._models (model),
    prices jsonb not null,                 -- {"input_tokens": 0.000003, ...} exact USD per unit
    effective_from timestamptz not null,
    created_at timestamptz not null default now(),
    unique (model, effective_from),
    constraint pricing_prices_object check (jsonb_typeof(prices) = 'object')
);

comment on table costwarden._pricing_snapshots is
'Immutable pricing snapshots; the one in force at t is the latest with effective_from <= t.';
