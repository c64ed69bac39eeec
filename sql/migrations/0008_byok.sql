-- 0008: BYOK provider keys (SPEC §5): key-encryption-key generations, the
-- envelope-encrypted keys, the resolve trail and the receipt key. The
-- functions are in sql/functions/10_byok_keys.sql and 11_byok_resolve.sql;
-- docs/byok.md explains the design.

create table costwarden._byok_keks (
    kek_id integer generated always as identity primary key,  -- the KEK generation
    check_blob bytea not null,          -- pgp_sym_encrypt('costwarden-kek-check-v1', KEK): verifies a KEK
    created_at timestamptz not null default now(),
    created_by text not null default session_user,
    retired_at timestamptz              -- null: the current generation; set when a rotation replaced it
);

comment on table costwarden._byok_keks is
'BYOK key-encryption-key generations: a check blob per generation (never the KEK); exactly one is current.';

create unique index _byok_keks_one_current on costwarden._byok_keks ((true)) where retired_at is null;

create table costwarden._byok_keys (
    byok_key_id bigint generated always as identity primary key,
    org_id text not null,
    workspace_id text not null,
    provider text not null,
    kek_id integer not null references costwarden._byok_keks (kek_id),  -- the generation wrapping the DEK
    secret_ciphertext bytea,           -- the secret under its DEK; null once revoked (crypto-shredded)
    wrapped_dek bytea,                 -- the DEK under the KEK; null once revoked (crypto-shredded)
    fingerprint text not null,         -- e.g. 'sk-…9f2a': the only thing listings show
    created_at timestamptz not null default now(),
    created_by text not null default session_user,
    created_actor text,                -- costwarden.actor_user / JWT sub, when set
    revoked_at timestamptz,            -- null: the live key of (org, workspace, provider)
    revoked_by text,
    revoke_reason text,                -- replaced: a newer put | revoked: fn_byok_key_revoke
    foreign key (org_id, workspace_id) references costwarden._workspaces (org_id, workspace_id),
    -- a live key has its ciphertexts; a revoked one has none (history keeps only the fingerprint)
    constraint byok_keys_live_has_secret
        check ((revoked_at is null) = (secret_ciphertext is not null and wrapped_dek is not null)),
    constraint byok_keys_revoked_shredded
        check (revoked_at is null or (secret_ciphertext is null and wrapped_dek is null)),
    constraint byok_keys_revoke_reason_check
        check ((revoked_at is null) = (revoke_reason is null) and revoke_reason in ('replaced', 'revoked'))
);

comment on table costwarden._byok_keys is
'BYOK provider keys, envelope-encrypted; revoked rows are kept (fingerprint, who, when) with the ciphertexts destroyed.';

create unique index _byok_keys_live on costwarden._byok_keys (org_id, workspace_id, provider)
where revoked_at is null;

create index _byok_keys_kek on costwarden._byok_keys (kek_id) where revoked_at is null;

-- Every resolve draws an attempt number first. Sequences are not
-- transactional: a resolve whose transaction rolls back (every refusal,
-- since a refusal raises CW005) leaves a gap that fn_byok_resolve_audit
-- reports. Each attempt also writes one LOG line to the server log (which
-- no rollback removes), and a refusal hands the caller a signed receipt
-- that fn_byok_resolve_refusal_record turns into a row (docs/byok.md).
create sequence costwarden._byok_resolve_attempt_seq;

create table costwarden._byok_resolve_log (
    attempt bigint primary key,        -- from _byok_resolve_attempt_seq
    at timestamptz not null,           -- when the resolve ran
    db_role text not null,             -- the login role (session_user) that called resolve
    actor_org text,
    actor_user text,
    reservation_id uuid,               -- null: a legacy call by org / workspace
    org_id text,
    workspace_id text,
    provider text,
    legacy boolean not null,
    outcome text not null,             -- granted: the secret was returned | refused: CW005
    reason text,                       -- the refusal code (null when granted)
    fingerprint text,                  -- the released key's fingerprint (granted only)
    recorded_via text not null,        -- inline: by resolve itself | receipt: fn_byok_resolve_refusal_record
    recorded_at timestamptz not null default clock_timestamp(),
    recorded_by text not null default session_user,
    constraint byok_resolve_outcome_check check (outcome in ('granted', 'refused')),
    constraint byok_resolve_reason_check check ((outcome = 'refused') = (reason is not null)),
    constraint byok_resolve_via_check check (recorded_via in ('inline', 'receipt'))
);

comment on table costwarden._byok_resolve_log is
'Append-only trail of BYOK resolves: who, which reservation, outcome, never the secret.';

create index _byok_resolve_log_org on costwarden._byok_resolve_log (org_id, attempt);
create index _byok_resolve_log_reservation on costwarden._byok_resolve_log (reservation_id)
where reservation_id is not null;

-- The HMAC key that signs refusal receipts (not a secret of any tenant: it
-- only makes receipts unforgeable by callers, who cannot read this table).
create table costwarden._byok_receipt_key (
    singleton boolean primary key default true,
    hmac_key bytea not null,
    constraint byok_receipt_key_singleton check (singleton)
);

insert into costwarden._byok_receipt_key (hmac_key) values (costwarden.gen_random_bytes(32));

-- Log defence: with log_statement = 'all' (or log_min_duration_statement)
-- PostgreSQL logs bind parameters, and p_secret travels as one when a client
-- calls fn_byok_key_put with a parameter. A superuser migration turns
-- parameter logging off for this database; otherwise it warns. (The Python
-- client never sends a secret or a KEK as statement text or a parameter: it
-- uses COPY costwarden.secret_input.) docs/threat-model.md has the details.
do $log_defence$
begin
    if exists (select from pg_catalog.pg_roles where rolname = current_user and rolsuper) then
        execute format('alter database %I set log_parameter_max_length = 0', current_database());
        execute format('alter database %I set log_parameter_max_length_on_error = 0', current_database());
    else
        raise warning 'costwarden: not a superuser, so log_parameter_max_length = 0 was not set on database %: '
                      'a client that passes a BYOK secret as a bind parameter may have it logged when '
                      'log_statement = all; ask a superuser to run: ALTER DATABASE % SET '
                      'log_parameter_max_length = 0', current_database(), quote_ident(current_database());
    end if;
end
$log_defence$;
