-- 0008: BYOK provider keys (SPEC §5): the key-write guard, envelope encryption
-- under a caller-supplied key-encryption key (KEK), KEK rotation, and the
-- release of a secret bound to a live reservation, with every release and
-- every refusal audited. docs/byok.md explains the design, docs/threat-model.md
-- who can see what; docs/reference/fn_byok_*.md document each function.
--
-- The billing mode that decides whether a workspace needs a key is
-- costwarden._billing_mode (0005), the one source of truth: the guard below
-- consults it for workspaces without a model, reserve (0010) for every call.
--
-- Envelope encryption (pgcrypto, in schema costwarden):
--   secret_ciphertext = pgp_sym_encrypt(secret, hex(DEK))      DEK: 32 random bytes, one per secret
--   wrapped_dek       = pgp_sym_encrypt_bytea(DEK, KEK)        S2K iterated + salted (a KDF), AES-256
-- The KEK is never stored: the trusted caller supplies it per transaction in
-- the setting costwarden.kek (set_config(..., true), or unlogged through
-- COPY into costwarden.secret_input, which is what the Python client does).
-- A KEK generation (_byok_keks) keeps only a check blob, the constant
-- 'costwarden-kek-check-v1' encrypted under that KEK: a wrong KEK fails to
-- decrypt it (pgp_sym_decrypt raises), and each key row records the
-- generation that wraps its DEK, so that an interrupted rotation resumes.
--
-- Lock order: the KEK advisory lock (shared: put; exclusive: rotation), then
-- the per-(org, workspace, provider) advisory lock (put, revoke), then
-- _byok_keys rows. Resolve takes no advisory lock: it reads one key row and
-- FOR SHARE-locks its reservation row, so a commit / release cannot slip in
-- between the check and the release of the secret.

-- Limits, documented in docs/byok.md.
--   KEK: 32 .. 1024 characters (shorter / longer / missing / wrong: CW005)
--   secret: 8 characters .. 8192 bytes, no control characters, no
--           surrounding whitespace (otherwise CW004)

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

-- History is kept: a key row is revoked, never deleted.
create trigger _byok_keys_no_delete
before delete on costwarden._byok_keys
for each row execute function costwarden._forbid_mutation();

create trigger _byok_keys_no_truncate
before truncate on costwarden._byok_keys
for each statement execute function costwarden._forbid_mutation();

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

create trigger _byok_resolve_log_no_update_delete
before update or delete on costwarden._byok_resolve_log
for each row execute function costwarden._forbid_mutation();

create trigger _byok_resolve_log_no_truncate
before truncate on costwarden._byok_resolve_log
for each statement execute function costwarden._forbid_mutation();

-- The HMAC key that signs refusal receipts (not a secret of any tenant: it
-- only makes receipts unforgeable by callers, who cannot read this table).
create table costwarden._byok_receipt_key (
    singleton boolean primary key default true,
    hmac_key bytea not null,
    constraint byok_receipt_key_singleton check (singleton)
);

insert into costwarden._byok_receipt_key (hmac_key) values (costwarden.gen_random_bytes(32));

-- ---------------------------------------------------------------------------
-- The unlogged input channel: COPY costwarden.secret_input FROM STDIN.
--
-- With log_statement = 'all' the server logs every statement's text and its
-- bind parameters; COPY data is never logged. A row (name, value) sets the
-- transaction-local setting behind name: kek -> costwarden.kek,
-- kek_new -> costwarden.kek_new, secret -> costwarden.byok_secret. Other
-- names are ignored. The trigger never raises: an error during COPY would
-- quote the input line in its CONTEXT. The view is always empty.

create view costwarden.secret_input as
select
    null::text as name,
    null::text as value
where false;

comment on view costwarden.secret_input is
'Write-only: COPY costwarden.secret_input (name, value) FROM STDIN sets costwarden.kek / kek_new / '
'byok_secret for the transaction without logging them.';

create function costwarden._secret_input_set()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if new.value is not null then
        case new.name
        when 'kek' then perform set_config('costwarden.kek', new.value, true);
        when 'kek_new' then perform set_config('costwarden.kek_new', new.value, true);
        when 'secret' then perform set_config('costwarden.byok_secret', new.value, true);
        else null;
        end case;
    end if;
    return null;
end
$$;

create trigger secret_input_set
instead of insert on costwarden.secret_input
for each row execute function costwarden._secret_input_set();

-- ---------------------------------------------------------------------------
-- Internal helpers

-- Internal (reserve, hot path): does the workspace hold a live key for the provider?
create function costwarden._byok_usable(p_org_id text, p_workspace_id text, p_provider text)
returns boolean
language sql
stable
as $$
    select exists (
        select from costwarden._byok_keys as k
        where k.org_id = p_org_id and k.workspace_id = p_workspace_id
          and k.provider = p_provider and k.revoked_at is null
    )
$$;

-- Internal: pgcrypto options of the KEK layer: AES-256, iterated + salted
-- S2K with SHA-256 and 2^20 bytes hashed per derivation (a KDF: ~2 ms).
create function costwarden._byok_kek_cipher()
returns text
language sql
immutable
as $$
    select 'cipher-algo=aes256, s2k-mode=3, s2k-digest-algo=sha256, s2k-count=1048576'::text
$$;

-- Internal: pgcrypto options of the DEK layer (the DEK is 32 random bytes:
-- salted S2K without iterations is enough).
create function costwarden._byok_dek_cipher()
returns text
language sql
immutable
as $$
    select 'cipher-algo=aes256, s2k-mode=1, s2k-digest-algo=sha256'::text
$$;

-- Internal: the KEK in a setting, or why it is not acceptable (never raises,
-- never quotes the value).
create function costwarden._byok_kek_read(p_setting text, out kek text, out problem text)
language plpgsql
stable
as $$
begin
    kek := nullif(current_setting(p_setting, true), '');
    if kek is null then
        problem := format('%s is not set: the trusted caller supplies the key-encryption key for the '
                          'transaction (set_config(%L, ..., true) or COPY costwarden.secret_input; '
                          'the Python client sends COSTWARDEN_KEK, and for a rotation the new KEK it is given)',
                          p_setting, p_setting);
    elsif length(kek) < 32 then
        problem := format('%s is too short: a key-encryption key has at least 32 characters', p_setting);
    elsif octet_length(kek) > 1024 then
        problem := format('%s is too long: a key-encryption key has at most 1024 bytes', p_setting);
    end if;
    if problem is not null then
        kek := null;
    end if;
end
$$;

-- Internal: the KEK in a setting; CW005 when missing, too short or too long.
create function costwarden._byok_kek(p_setting text default 'costwarden.kek')
returns text
language plpgsql
stable
as $$
declare
    v record;
begin
    v := costwarden._byok_kek_read(p_setting);
    if v.problem is not null then
        perform costwarden._raise('CW005', v.problem);
    end if;
    return v.kek;
end
$$;

-- Internal: does this KEK unlock a generation's check blob?
create function costwarden._byok_kek_unlocks(p_check_blob bytea, p_kek text)
returns boolean
language plpgsql
stable
as $$
begin
    return costwarden.pgp_sym_decrypt(p_check_blob, p_kek) = 'costwarden-kek-check-v1';
exception when others then
    return false;  -- 'Wrong key or corrupt data'
end
$$;

-- Internal: the advisory lock key that serialises puts (shared) against
-- rotations (exclusive).
create function costwarden._byok_kek_lock_key()
returns bigint
language sql
immutable
as $$
    select 1088459814054321208::bigint  -- the first 8 bytes of sha256('costwarden.byok.kek'), signed
$$;

-- Internal: the current KEK generation for writing under p_kek: creates the
-- first generation when none exists; CW005 when p_kek does not unlock it.
-- The caller holds the shared KEK lock.
create function costwarden._byok_kek_for_write(p_kek text)
returns integer
language plpgsql
as $$
declare
    v_gen costwarden._byok_keks;
begin
    select * into v_gen from costwarden._byok_keks as g where g.retired_at is null;
    if not found then
        insert into costwarden._byok_keks (check_blob)
        values (costwarden.pgp_sym_encrypt('costwarden-kek-check-v1', p_kek, costwarden._byok_kek_cipher()))
        on conflict ((true)) where retired_at is null do nothing;
        select * into v_gen from costwarden._byok_keks as g where g.retired_at is null;
    end if;
    if not costwarden._byok_kek_unlocks(v_gen.check_blob, p_kek) then
        perform costwarden._raise('CW005', format(
            'costwarden.kek is not the key-encryption key in use (KEK generation %s)', v_gen.kek_id),
            'supply the KEK the store was created or last rotated with; costwarden keys rotate-kek changes it');
    end if;
    return v_gen.kek_id;
end
$$;

-- Internal: validate a secret (CW004; the message never quotes it).
create function costwarden._byok_secret_check(p_secret text)
returns void
language plpgsql
immutable
as $$
begin
    if p_secret is null then
        perform costwarden._raise('CW004', 'p_secret is required');
    end if;
    if p_secret = '' then
        perform costwarden._raise('CW004', 'p_secret must not be empty');
    end if;
    if octet_length(p_secret) > 8192 then
        perform costwarden._raise('CW004', format('p_secret is %s bytes long: at most 8192 bytes (8 KiB)',
                                                  octet_length(p_secret)));
    end if;
    if length(p_secret) < 8 then
        perform costwarden._raise('CW004', 'p_secret is shorter than 8 characters: not a provider key');
    end if;
    if p_secret ~ '[[:cntrl:]]' or p_secret ~ '^\s' or p_secret ~ '\s$' then
        perform costwarden._raise('CW004',
            'p_secret must not contain control characters (a newline?) or surrounding whitespace');
    end if;
end
$$;

-- Internal: the fingerprint of a secret: a short prefix such as 'sk-' (only
-- for secrets of 20+ characters) and the last 4 characters: 'sk-…9f2a'.
create function costwarden._byok_fingerprint(p_secret text)
returns text
language sql
immutable
as $$
    select case when length(p_secret) >= 20
                then coalesce(substring(p_secret from '^[A-Za-z][A-Za-z0-9]{0,5}[-_]'), '')
                else '' end
           || '…' || right(p_secret, case when length(p_secret) >= 12 then 4 else 2 end)
$$;

-- Internal: the key-write guard (SPEC §5). Null when a key for p_provider may
-- be stored in the workspace, else the refusal naming the rule.
--   A. a platform-servable model takes no vendor key, whatever the override;
--   B. a vendor model with an explicit platform_managed override takes none;
--   C. a vendor model takes a key for its own provider only;
--   D. no model: follow the billing mode: a key is accepted only when the
--      workspace resolves to byok.
-- Every mode question is asked of _billing_mode, the one source of truth:
-- "platform-servable" in A means what the model alone decides (the row with
-- its override cleared) is platform_managed. So without the platform proxy
-- (self-hosted, where SPEC §5 rule 2 makes such a model byok) there is no
-- platform to serve it, and it is guarded like a vendor model (B, C) instead
-- of being made unusable.
create function costwarden._byok_guard(p_ws costwarden._workspaces, p_provider text)
returns text
language plpgsql
stable
as $$
declare
    v_model costwarden._models;
    v_by_model costwarden._workspaces := p_ws;
    v_mode record;
begin
    if p_ws.model is not null then
        select * into v_model from costwarden._models as m where m.model = p_ws.model;
    end if;
    if v_model.model is not null then
        v_by_model.billing_override := null;
        v_mode := costwarden._billing_mode(v_by_model);
        if v_mode.billing_mode = 'platform_managed' then
            return format('key-write guard rule A (platform-servable model): workspace %L uses %L, which the '
                          'platform serves; it takes no vendor key, whatever its billing override',
                          p_ws.workspace_id, v_model.model);
        end if;
        if p_ws.billing_override = 'platform_managed' then
            return format('key-write guard rule B (vendor model, platform_managed override): workspace %L '
                          'is explicitly platform_managed; it takes no vendor key', p_ws.workspace_id);
        end if;
        if v_model.provider <> p_provider then
            return format('key-write guard rule C (own provider only): workspace %L uses %L; it takes a '
                          'key for provider %L only, not %L',
                          p_ws.workspace_id, v_model.model, v_model.provider, p_provider);
        end if;
        return null;
    end if;
    v_mode := costwarden._billing_mode(p_ws);
    if v_mode.billing_mode <> 'byok' then
        return format('key-write guard rule D (no model): workspace %L has no model and its billing mode '
                      'is %s (source %s); a key is accepted only when it resolves to byok',
                      p_ws.workspace_id, v_mode.billing_mode, v_mode.source);
    end if;
    return null;
end
$$;

-- Internal: p_provider must be the provider of some model in the catalogue.
create function costwarden._byok_require_provider(p_provider text)
returns void
language plpgsql
stable
as $$
begin
    perform costwarden._require_text(p_provider, 'p_provider', 100);
    if not exists (select from costwarden._models as m where m.provider = p_provider) then
        perform costwarden._raise('CW002', format('p_provider: no model of provider %L in the catalogue', p_provider));
    end if;
end
$$;

-- Internal: serialise writers of one (org, workspace, provider) key slot.
create function costwarden._byok_slot_lock(p_org_id text, p_workspace_id text, p_provider text)
returns void
language sql
as $$
    select pg_advisory_xact_lock(hashtextextended(
        'costwarden.byok' || chr(1) || p_org_id || chr(1) || p_workspace_id || chr(1) || p_provider, 0))
$$;

-- ---------------------------------------------------------------------------
-- RPCs (admin): put, revoke, list, KEK status and rotation

create function costwarden.fn_byok_key_put(
    p_org_id text, p_workspace_id text, p_provider text, p_secret text
)
returns text
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_ws costwarden._workspaces;
    v_refusal text;
    v_kek text;
    v_kek_id integer;
    v_dek bytea;
    v_fingerprint text;
    v_before costwarden._byok_keys;
    v_actor record;
begin
    -- 1. arguments (nothing is written before every one is checked)
    v_ws := costwarden._require_workspace(p_org_id, p_workspace_id);
    perform costwarden._byok_require_provider(p_provider);
    perform costwarden._byok_secret_check(p_secret);
    -- 2. the key-write guard
    v_refusal := costwarden._byok_guard(v_ws, p_provider);
    if v_refusal is not null then
        perform costwarden._raise('CW005', v_refusal);
    end if;
    -- 3. the KEK (CW005 when missing, malformed or not the one in use)
    v_kek := costwarden._byok_kek('costwarden.kek');
    perform pg_advisory_xact_lock_shared(costwarden._byok_kek_lock_key());
    v_kek_id := costwarden._byok_kek_for_write(v_kek);
    -- 4. replace the live key of the slot (the old one is revoked and shredded)
    perform costwarden._byok_slot_lock(p_org_id, p_workspace_id, p_provider);
    select * into v_actor from costwarden._actor();
    update costwarden._byok_keys as k
    set revoked_at = now(), revoked_by = session_user, revoke_reason = 'replaced',
        secret_ciphertext = null, wrapped_dek = null
    where k.org_id = p_org_id and k.workspace_id = p_workspace_id and k.provider = p_provider
      and k.revoked_at is null
    returning * into v_before;
    v_dek := costwarden.gen_random_bytes(32);
    v_fingerprint := costwarden._byok_fingerprint(p_secret);
    insert into costwarden._byok_keys (
        org_id, workspace_id, provider, kek_id, secret_ciphertext, wrapped_dek, fingerprint, created_actor
    ) values (
        p_org_id, p_workspace_id, p_provider, v_kek_id,
        costwarden.pgp_sym_encrypt(p_secret, encode(v_dek, 'hex'), costwarden._byok_dek_cipher()),
        costwarden.pgp_sym_encrypt_bytea(v_dek, v_kek, costwarden._byok_kek_cipher()),
        v_fingerprint, v_actor.user_id
    );
    perform costwarden._audit(
        'byok_key_put', p_org_id,
        jsonb_build_object('org_id', p_org_id, 'workspace_id', p_workspace_id, 'provider', p_provider),
        case when v_before.byok_key_id is not null then
            jsonb_build_object('fingerprint', v_before.fingerprint, 'kek_id', v_before.kek_id) end,
        jsonb_build_object('fingerprint', v_fingerprint, 'kek_id', v_kek_id)
    );
    return v_fingerprint;
end
$$;

comment on function costwarden.fn_byok_key_put(text, text, text, text) is
'Store (replace) the BYOK key of (org, workspace, provider) under the KEK in costwarden.kek; '
'returns its fingerprint. Guard refusals are CW005.';

create function costwarden.fn_byok_key_revoke(p_org_id text, p_workspace_id text, p_provider text)
returns boolean
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_before costwarden._byok_keys;
begin
    perform costwarden._require_workspace(p_org_id, p_workspace_id);
    perform costwarden._byok_require_provider(p_provider);
    perform costwarden._byok_slot_lock(p_org_id, p_workspace_id, p_provider);
    update costwarden._byok_keys as k
    set revoked_at = now(), revoked_by = session_user, revoke_reason = 'revoked',
        secret_ciphertext = null, wrapped_dek = null
    where k.org_id = p_org_id and k.workspace_id = p_workspace_id and k.provider = p_provider
      and k.revoked_at is null
    returning * into v_before;
    if v_before.byok_key_id is null then
        return false;
    end if;
    perform costwarden._audit(
        'byok_key_revoke', p_org_id,
        jsonb_build_object('org_id', p_org_id, 'workspace_id', p_workspace_id, 'provider', p_provider),
        jsonb_build_object('fingerprint', v_before.fingerprint, 'kek_id', v_before.kek_id),
        null
    );
    return true;
end
$$;

comment on function costwarden.fn_byok_key_revoke(text, text, text) is
'Revoke the live BYOK key of (org, workspace, provider): its ciphertexts are destroyed, its record '
'kept. False when there was none.';

create function costwarden.fn_byok_key_list(
    p_org_id text default null, p_workspace_id text default null, p_include_revoked boolean default false
)
returns table (
    org_id text, workspace_id text, provider text, fingerprint text, status text, kek_id integer,
    created_at timestamptz, created_by text, revoked_at timestamptz, revoked_by text, revoke_reason text
)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_workspace_id is not null then
        perform costwarden._require_workspace(p_org_id, p_workspace_id);
    elsif p_org_id is not null then
        perform costwarden._require_org(p_org_id);
    end if;
    if p_include_revoked is null then
        perform costwarden._raise('CW004', 'p_include_revoked must be true or false');
    end if;
    return query
    select k.org_id, k.workspace_id, k.provider, k.fingerprint,
           case when k.revoked_at is null then 'live' else 'revoked' end,
           k.kek_id, k.created_at, k.created_by, k.revoked_at, k.revoked_by, k.revoke_reason
    from costwarden._byok_keys as k
    where (p_org_id is null or k.org_id = p_org_id)
      and (p_workspace_id is null or k.workspace_id = p_workspace_id)
      and (p_include_revoked or k.revoked_at is null)
    order by k.org_id, k.workspace_id, k.provider, k.created_at desc, k.byok_key_id desc;
end
$$;

comment on function costwarden.fn_byok_key_list(text, text, boolean) is
'BYOK keys by fingerprint (never a secret): live ones, and with p_include_revoked the history.';

create function costwarden.fn_byok_kek_status()
returns table (kek_id integer, current boolean, created_at timestamptz, created_by text,
               retired_at timestamptz, live_keys bigint)
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    select g.kek_id, g.retired_at is null, g.created_at, g.created_by, g.retired_at,
           (select count(*) from costwarden._byok_keys as k where k.kek_id = g.kek_id and k.revoked_at is null)
    from costwarden._byok_keks as g
    order by g.kek_id
$$;

comment on function costwarden.fn_byok_kek_status() is
'KEK generations (check blobs only, never a KEK) and how many live keys each one wraps.';

-- Re-wrap up to p_batch data keys from the old KEK (costwarden.kek) to the
-- new one (costwarden.kek_new). The first call retires the current
-- generation and starts a new one; later calls (same transaction, or after
-- an interruption, with the same two KEKs) continue where the last stopped.
create function costwarden.fn_byok_kek_rotate(p_batch integer default 1000)
returns table (kek_id integer, rewrapped integer, remaining bigint)
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_old text;
    v_new text;
    v_cur costwarden._byok_keks;
    v_target integer;
    v_started boolean := false;
    v_sources integer[];
    v_key record;
    v_dek bytea;
    v_n integer := 0;
    v_left bigint;
begin
    if p_batch is null or p_batch < 1 or p_batch > 100000 then
        perform costwarden._raise('CW004', 'p_batch must be between 1 and 100000');
    end if;
    v_old := costwarden._byok_kek('costwarden.kek');
    v_new := costwarden._byok_kek('costwarden.kek_new');
    if v_old = v_new then
        perform costwarden._raise('CW005', 'costwarden.kek_new must differ from costwarden.kek');
    end if;
    perform pg_advisory_xact_lock(costwarden._byok_kek_lock_key());

    select * into v_cur from costwarden._byok_keks as g where g.retired_at is null;
    if not found then
        -- nothing was ever stored: the new KEK simply becomes the first generation
        insert into costwarden._byok_keks (check_blob)
        values (costwarden.pgp_sym_encrypt('costwarden-kek-check-v1', v_new, costwarden._byok_kek_cipher()))
        returning _byok_keks.kek_id into v_target;
        v_started := true;
    elsif costwarden._byok_kek_unlocks(v_cur.check_blob, v_new) then
        v_target := v_cur.kek_id;                       -- resuming (or already done)
    elsif costwarden._byok_kek_unlocks(v_cur.check_blob, v_old) then
        update costwarden._byok_keks as g set retired_at = now() where g.kek_id = v_cur.kek_id;
        insert into costwarden._byok_keks (check_blob)
        values (costwarden.pgp_sym_encrypt('costwarden-kek-check-v1', v_new, costwarden._byok_kek_cipher()))
        returning _byok_keks.kek_id into v_target;
        v_started := true;
    else
        perform costwarden._raise('CW005', format(
            'neither costwarden.kek nor costwarden.kek_new is the key-encryption key in use (KEK generation %s)',
            v_cur.kek_id));
    end if;

    -- the older generations that still wrap live keys and that the old KEK unlocks
    select coalesce(array_agg(g.kek_id order by g.kek_id), '{}') into v_sources
    from costwarden._byok_keks as g
    where g.kek_id <> v_target
      and exists (select from costwarden._byok_keys as k where k.kek_id = g.kek_id and k.revoked_at is null)
      and costwarden._byok_kek_unlocks(g.check_blob, v_old);

    for v_key in
        select k.byok_key_id, k.wrapped_dek from costwarden._byok_keys as k
        where k.revoked_at is null and k.kek_id = any (v_sources)
        order by k.byok_key_id
        limit p_batch
        for update
    loop
        begin
            v_dek := costwarden.pgp_sym_decrypt_bytea(v_key.wrapped_dek, v_old);
        exception when others then
            perform costwarden._raise('CW005', format(
                'BYOK key %s could not be unwrapped with costwarden.kek (corrupt data?)', v_key.byok_key_id));
        end;
        update costwarden._byok_keys as k
        set wrapped_dek = costwarden.pgp_sym_encrypt_bytea(v_dek, v_new, costwarden._byok_kek_cipher()),
            kek_id = v_target
        where k.byok_key_id = v_key.byok_key_id;
        v_n := v_n + 1;
    end loop;

    select count(*) into v_left from costwarden._byok_keys as k
    where k.revoked_at is null and k.kek_id <> v_target;
    if v_started or v_n > 0 then
        perform costwarden._audit(
            'byok_kek_rotate', null,
            jsonb_build_object('kek_id', v_target),
            case when v_started and v_cur.kek_id is not null then jsonb_build_object('kek_id', v_cur.kek_id) end,
            jsonb_build_object('kek_id', v_target, 'rewrapped', v_n, 'remaining', v_left)
        );
    end if;
    return query select v_target, v_n, v_left;
end
$$;

comment on function costwarden.fn_byok_kek_rotate(integer) is
'Re-wrap up to p_batch data keys from costwarden.kek to costwarden.kek_new; call until remaining = 0 (resumable).';

-- ---------------------------------------------------------------------------
-- Resolve (service): the secret, bound to a live byok reservation

-- Internal: record one resolve outcome in the server log (survives rollback).
create function costwarden._byok_resolve_log_line(p_payload jsonb)
returns void
language plpgsql
volatile
as $$
begin
    raise log 'costwarden.byok_resolve %', p_payload::text;
end
$$;

-- Internal: a signed refusal receipt: base64(payload) '.' hex(hmac-sha256).
create function costwarden._byok_receipt(p_payload jsonb)
returns text
language sql
stable
as $$
    select translate(encode(convert_to(p_payload::text, 'UTF8'), 'base64'), E'\n', '')
           || '.' || encode(costwarden.hmac(convert_to(p_payload::text, 'UTF8'), k.hmac_key, 'sha256'), 'hex')
    from costwarden._byok_receipt_key as k
$$;

create function costwarden.fn_byok_key_resolve_v2(
    p_reservation_id uuid,
    p_provider text default null,
    p_org_id text default null,
    p_workspace_id text default null
)
returns table (provider text, secret text, fingerprint text)
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_attempt bigint := nextval('costwarden._byok_resolve_attempt_seq');
    v_at timestamptz := clock_timestamp();
    v_legacy boolean := p_reservation_id is null;
    v_actor_org text;
    v_actor_user text;
    v_reason text;
    v_detail text;
    v_org text;
    v_ws text;
    v_provider text;
    v_r_org text;
    v_r_ws text;
    v_r_provider text;
    v_r_status text;
    v_r_expires timestamptz;
    v_r_mode text;
    v_ws_row costwarden._workspaces;
    v_key_kek_id integer;
    v_key_secret bytea;
    v_key_dek bytea;
    v_fingerprint text;
    v_kek record;
    v_dek bytea;
    v_secret text;
    v_payload jsonb;
begin
    begin
        select a.org_id, a.user_id into v_actor_org, v_actor_user from costwarden._actor() as a;
    exception when others then
        v_reason := 'invalid_actor';
        v_detail := 'request.jwt.claims is not valid JSON';
    end;

    -- 1. the binding: a live byok reservation (or, when allowed, a legacy call)
    if v_reason is not null then
        null;
    elsif v_legacy then
        if (costwarden._setting('byok_require_reservation'))::boolean then
            v_reason := 'reservation_required';
            v_detail := 'p_reservation_id is required: secrets are released only to a live reservation '
                        '(byok_require_reservation is true)';
        elsif p_org_id is null or p_workspace_id is null then
            v_reason := 'legacy_arguments';
            v_detail := 'a legacy resolve (p_reservation_id null) needs p_org_id and p_workspace_id';
        else
            select * into v_ws_row from costwarden._workspaces as w
            where w.org_id = p_org_id and w.workspace_id = p_workspace_id;
            if not found then
                v_reason := 'unknown_workspace';
                v_detail := format('p_workspace_id: unknown workspace %L in org %L',
                                   left(p_workspace_id, 200), left(p_org_id, 200));
            elsif (costwarden._billing_mode(v_ws_row)).billing_mode <> 'byok' then
                v_reason := 'not_byok';
                v_detail := format('workspace %L does not resolve to byok billing', p_workspace_id);
            else
                v_org := p_org_id;
                v_ws := p_workspace_id;
                v_provider := coalesce(p_provider,
                    (select m.provider from costwarden._models as m where m.model = v_ws_row.model));
                if v_provider is null then
                    v_reason := 'provider_required';
                    v_detail := format('p_provider is required: workspace %L has no model', p_workspace_id);
                end if;
            end if;
        end if;
    else
        select r.org_id, r.workspace_id, r.provider, r.status, r.expires_at, r.billing_mode
        into v_r_org, v_r_ws, v_r_provider, v_r_status, v_r_expires, v_r_mode
        from costwarden._reservations as r
        where r.reservation_id = p_reservation_id
        for share;
        if not found then
            v_reason := 'unknown_reservation';
            v_detail := format('p_reservation_id: unknown reservation %s', p_reservation_id);
        elsif v_r_status <> 'held' then
            v_reason := 'not_held';
            v_detail := format('reservation %s is %s, not held', p_reservation_id, v_r_status);
        elsif v_r_expires is null or v_r_expires <= clock_timestamp() then
            v_reason := 'expired';
            v_detail := format('reservation %s expired at %s', p_reservation_id, v_r_expires);
        elsif v_r_mode is distinct from 'byok' then
            v_reason := 'not_byok';
            v_detail := format('reservation %s is billed %s, not byok', p_reservation_id, v_r_mode);
        elsif p_provider is not null and p_provider <> v_r_provider then
            v_reason := 'provider_mismatch';
            v_detail := format('p_provider %L is not the provider of reservation %s (%L)',
                               left(p_provider, 100), p_reservation_id, v_r_provider);
        elsif p_org_id is not null and p_org_id <> v_r_org then
            v_reason := 'org_mismatch';
            v_detail := format('p_org_id does not match the org of reservation %s', p_reservation_id);
        elsif p_workspace_id is not null and p_workspace_id <> v_r_ws then
            v_reason := 'workspace_mismatch';
            v_detail := format('p_workspace_id does not match the workspace of reservation %s', p_reservation_id);
        else
            v_org := v_r_org;
            v_ws := v_r_ws;
            v_provider := v_r_provider;
        end if;
    end if;
    if v_reason is null and v_actor_org is not null and v_actor_org <> v_org then
        v_reason := 'actor_org_mismatch';
        v_detail := 'the actor belongs to another org';
    end if;

    -- 2. the live key and the KEK
    if v_reason is null then
        select k.kek_id, k.secret_ciphertext, k.wrapped_dek, k.fingerprint
        into v_key_kek_id, v_key_secret, v_key_dek, v_fingerprint
        from costwarden._byok_keys as k
        where k.org_id = v_org and k.workspace_id = v_ws and k.provider = v_provider and k.revoked_at is null;
        if not found then
            v_reason := 'no_live_key';
            v_detail := format('workspace %L has no live key for provider %L', v_ws, v_provider);
        end if;
    end if;
    if v_reason is null then
        v_kek := costwarden._byok_kek_read('costwarden.kek');
        if v_kek.problem is not null then
            v_reason := case when current_setting('costwarden.kek', true) is null
                               or current_setting('costwarden.kek', true) = '' then 'kek_missing'
                             else 'kek_invalid' end;
            v_detail := v_kek.problem;
        else
            begin
                v_dek := costwarden.pgp_sym_decrypt_bytea(v_key_dek, v_kek.kek);
            exception when others then
                v_reason := 'kek_wrong';
                v_detail := format('costwarden.kek does not unlock this key (KEK generation %s)', v_key_kek_id);
            end;
        end if;
    end if;
    if v_reason is null then
        v_secret := costwarden.pgp_sym_decrypt(v_key_secret, encode(v_dek, 'hex'));
    end if;

    v_payload := jsonb_build_object(
        'attempt', v_attempt, 'at', v_at, 'db_role', session_user::text,
        'actor_org', v_actor_org, 'actor_user', v_actor_user,
        'reservation_id', p_reservation_id, 'org_id', coalesce(v_org, v_r_org, left(p_org_id, 200)),
        'workspace_id', coalesce(v_ws, v_r_ws, left(p_workspace_id, 200)),
        'provider', coalesce(v_provider, v_r_provider, left(p_provider, 100)), 'legacy', v_legacy,
        'outcome', case when v_reason is null then 'granted' else 'refused' end, 'reason', v_reason,
        'fingerprint', case when v_reason is null then v_fingerprint end
    );
    perform costwarden._byok_resolve_log_line(v_payload);

    -- 3. a refusal: CW005 with a signed receipt (the transaction rolls back)
    if v_reason is not null then
        perform costwarden._raise('CW005',
            format('BYOK resolve refused (attempt %s, %s): %s', v_attempt, v_reason, v_detail),
            'costwarden-refusal-receipt: ' || costwarden._byok_receipt(v_payload));
    end if;

    -- 4. granted: audited, then released
    insert into costwarden._byok_resolve_log (
        attempt, at, db_role, actor_org, actor_user, reservation_id, org_id, workspace_id, provider,
        legacy, outcome, reason, fingerprint, recorded_via
    ) values (
        v_attempt, v_at, session_user, v_actor_org, v_actor_user, p_reservation_id, v_org, v_ws, v_provider,
        v_legacy, 'granted', null, v_fingerprint, 'inline'
    );
    return query select v_provider, v_secret, v_fingerprint;
end
$$;

comment on function costwarden.fn_byok_key_resolve_v2(uuid, text, text, text) is
'The plaintext BYOK key for a held, unexpired byok reservation (needs costwarden.kek). Anything else '
'is CW005. Every attempt is audited.';

-- Record a refused resolve from the receipt its CW005 carried (the refusal
-- itself rolled back). True when recorded now, false when already recorded.
create function costwarden.fn_byok_resolve_refusal_record(p_receipt text)
returns boolean
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_receipt text := p_receipt;
    v_text text;
    v_payload jsonb;
    v_mac text;
begin
    if v_receipt is null then
        perform costwarden._raise('CW004', 'p_receipt is required');
    end if;
    v_receipt := regexp_replace(btrim(v_receipt), '^costwarden-refusal-receipt:\s*', '');
    if length(v_receipt) > 8000 or v_receipt !~ '^[A-Za-z0-9+/=]+\.[0-9a-f]{64}$' then
        perform costwarden._raise('CW004', 'p_receipt is not a costwarden refusal receipt');
    end if;
    begin
        v_text := convert_from(decode(split_part(v_receipt, '.', 1), 'base64'), 'UTF8');
        v_payload := v_text::jsonb;
    exception when others then
        perform costwarden._raise('CW004', 'p_receipt is not a costwarden refusal receipt');
    end;
    select encode(costwarden.hmac(convert_to(v_text, 'UTF8'), k.hmac_key, 'sha256'), 'hex') into v_mac
    from costwarden._byok_receipt_key as k;
    if v_mac <> split_part(v_receipt, '.', 2) or v_payload ->> 'outcome' is distinct from 'refused' then
        perform costwarden._raise('CW004', 'p_receipt: the signature does not match (not issued by this database)');
    end if;
    insert into costwarden._byok_resolve_log (
        attempt, at, db_role, actor_org, actor_user, reservation_id, org_id, workspace_id, provider,
        legacy, outcome, reason, fingerprint, recorded_via
    ) values (
        (v_payload ->> 'attempt')::bigint, (v_payload ->> 'at')::timestamptz, v_payload ->> 'db_role',
        v_payload ->> 'actor_org', v_payload ->> 'actor_user', (v_payload ->> 'reservation_id')::uuid,
        v_payload ->> 'org_id', v_payload ->> 'workspace_id', v_payload ->> 'provider',
        (v_payload ->> 'legacy')::boolean, 'refused', v_payload ->> 'reason', null, 'receipt'
    )
    on conflict (attempt) do nothing;
    return found;
end
$$;

comment on function costwarden.fn_byok_resolve_refusal_record(text) is
'Record a refused BYOK resolve from the signed receipt in its CW005 hint (the Python client does this itself).';

-- The resolve trail, newest attempt first (admin). Without filters the
-- latest p_limit attempt numbers are listed, and a number with no row is
-- reported as outcome 'unrecorded': its transaction rolled back (a refusal
-- nobody recorded, or a grant the caller rolled back) or is still running;
-- the server log has a 'costwarden.byok_resolve' line for every attempt.
create function costwarden.fn_byok_resolve_audit(
    p_org_id text default null, p_reservation_id uuid default null, p_limit integer default 100
)
returns table (
    attempt bigint, at timestamptz, outcome text, reason text, legacy boolean, db_role text,
    actor_org text, actor_user text, reservation_id uuid, org_id text, workspace_id text,
    provider text, fingerprint text, recorded_via text
)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_last bigint;
begin
    perform costwarden._require_limit(p_limit);
    if p_org_id is not null or p_reservation_id is not null then
        return query
        select l.attempt, l.at, l.outcome, l.reason, l.legacy, l.db_role, l.actor_org, l.actor_user,
               l.reservation_id, l.org_id, l.workspace_id, l.provider, l.fingerprint, l.recorded_via
        from costwarden._byok_resolve_log as l
        where (p_org_id is null or l.org_id = p_org_id)
          and (p_reservation_id is null or l.reservation_id = p_reservation_id)
        order by l.attempt desc
        limit p_limit;
        return;
    end if;
    select case when s.is_called then s.last_value else 0 end into v_last
    from costwarden._byok_resolve_attempt_seq as s;
    return query
    select n.n, l.at, coalesce(l.outcome, 'unrecorded'), l.reason, l.legacy, l.db_role, l.actor_org,
           l.actor_user, l.reservation_id, l.org_id, l.workspace_id, l.provider, l.fingerprint, l.recorded_via
    from generate_series(v_last, greatest(v_last - p_limit + 1, 1), -1) as n (n)
    left join costwarden._byok_resolve_log as l on l.attempt = n.n
    order by n.n desc;
end
$$;

comment on function costwarden.fn_byok_resolve_audit(text, uuid, integer) is
'BYOK resolve attempts (granted, refused, and unrecorded gaps), newest first; never a secret.';

-- ---------------------------------------------------------------------------
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

grant insert on costwarden.secret_input to costwarden_admin, costwarden_service;
grant execute on function
    costwarden.fn_byok_key_put(text, text, text, text),
    costwarden.fn_byok_key_revoke(text, text, text),
    costwarden.fn_byok_key_list(text, text, boolean),
    costwarden.fn_byok_kek_status(),
    costwarden.fn_byok_kek_rotate(integer),
    costwarden.fn_byok_resolve_audit(text, uuid, integer)
to costwarden_admin;
grant execute on function
    costwarden.fn_byok_key_resolve_v2(uuid, text, text, text),
    costwarden.fn_byok_resolve_refusal_record(text)
to costwarden_service;
