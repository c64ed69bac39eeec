-- 0008: BYOK provider keys (SPEC §5).
--
-- Secrets are stored with envelope encryption (see fn_byok_key_put): each
-- secret under its own data key, the data key under the caller-supplied
-- key-encryption key. This file holds the key store; the billing mode that
-- decides whether a workspace needs a key is costwarden._billing_mode (0005).

create table costwarden._byok_keys (
    byok_key_id bigint generated always as identity primary key,
    org_id text not null,
    workspace_id text not null,
    provider text not null,
    secret_ciphertext bytea not null,  -- the secret, encrypted under its data key
    wrapped_dek bytea not null,        -- the data key, encrypted under the KEK
    fingerprint text not null,         -- e.g. 'sk-…9f2a': the only thing listings show
    created_at timestamptz not null default now(),
    revoked_at timestamptz,
    foreign key (org_id, workspace_id) references costwarden._workspaces (org_id, workspace_id)
);

create unique index _byok_keys_live on costwarden._byok_keys (org_id, workspace_id, provider)
where revoked_at is null;

-- Internal (reserve, hot path): does the workspace hold a live key for the provider?
create function costwarden._byok_usable(p_org_id text, p_workspace_id text, p_provider text)
returns boolean
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select exists (
        select from costwarden._byok_keys as k
        where k.org_id = p_org_id and k.workspace_id = p_workspace_id
          and k.provider = p_provider and k.revoked_at is null
    )
$$;
