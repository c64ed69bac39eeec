-- BYOK key store (SPEC §5): the key-write guard, envelope encryption under a
-- caller-supplied key-encryption key (KEK), KEK rotation, the unlogged input
-- channel. Resolve is 11_byok_resolve.sql. docs/byok.md explains the design,
-- docs/threat-model.md who can see what; docs/reference/fn_byok_*.md
-- document each function.
--
-- The billing mode that decides whether a workspace needs a key is
-- costwarden._billing_mode (04_billing_mode.sql), the one source of truth:
-- the guard below consults it for workspaces without a model, reserve for
-- every call.
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
-- lock order: docs/internals.md#lock-order
--
-- Limits, documented in docs/byok.md.
--   KEK: 32 .. 1024 characters (shorter / longer / missing / wrong: CW005)
--   secret: 8 characters .. 8192 bytes, no control characters, no
--           surrounding whitespace (otherwise CW004)

-- History is kept: a key row is revoked, never deleted.
select costwarden._append_only('costwarden._byok_keys', '_byok_keys_no_delete', 'delete');

-- ---------------------------------------------------------------------------
-- The unlogged input channel: COPY costwarden.secret_input FROM STDIN.
--
-- With log_statement = 'all' the server logs every statement's text and its
-- bind parameters; COPY data is never logged. A row (name, value) sets the
-- transaction-local setting behind name: kek -> costwarden.kek,
-- kek_new -> costwarden.kek_new, secret -> costwarden.byok_secret. Other
-- names are ignored. The trigger never raises: an error during COPY would
-- quote the input line in its CONTEXT. The view is always empty.

create or replace view costwarden.secret_input as
select
    null::text as name,
    null::text as value
where false;

comment on view costwarden.secret_input is
'Write-only: COPY costwarden.secret_input (name, value) FROM STDIN sets costwarden.kek / kek_new / '
'byok_secret for the transaction without logging them.';

create or replace function costwarden._secret_input_set()
returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
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

create or replace trigger secret_input_set
instead of insert on costwarden.secret_input
for each row execute function costwarden._secret_input_set();

-- The framed input channel: COPY costwarden.secret_input_base64 FROM STDIN,
-- one column, each line 'name:' || base64(value) (kek, kek_new, secret).
-- A malformed line of a COPY is quoted in the error's CONTEXT, and that reaches
-- the server log at the default log level: a two-column row typed with spaces
-- instead of a tab, a stray backslash, a byte that is not UTF-8. Base64 text
-- has none of these (no tab, no backslash, ASCII only), so a line produced by
-- an encoder -- the Python client, or psql's
--   \copy costwarden.secret_input_base64 from program 'echo kek:$(printf %s "$(cat kek.txt)" | base64 -w0)'
-- -- never makes COPY fail, whatever the KEK file holds. The trigger never
-- raises: a line it cannot decode (no name, bad base64, not UTF-8, a NUL)
-- sets nothing, and the call that needs the KEK then reports it missing.
-- The value is taken exactly as decoded (docs/byok.md shows the psql command
-- that drops a KEK file's trailing newline before encoding).

create or replace view costwarden.secret_input_base64 as
select null::text as line
where false;

comment on view costwarden.secret_input_base64 is
'Write-only: COPY costwarden.secret_input_base64 FROM STDIN, lines name:base64(value), sets '
'costwarden.kek / kek_new / byok_secret for the transaction; no input can make COPY fail.';

create or replace function costwarden._secret_input_base64_set()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_name text;
    v_value text;
begin
    v_name := split_part(new.line, ':', 1);
    if new.line is null or v_name not in ('kek', 'kek_new', 'secret') then
        return null;
    end if;
    begin
        v_value := convert_from(decode(substr(new.line, length(v_name) + 2), 'base64'), 'UTF8');
    exception when others then
        return null;  -- never quote the input: it may be the KEK
    end;
    perform set_config(case v_name when 'kek' then 'costwarden.kek'
                                   when 'kek_new' then 'costwarden.kek_new'
                                   else 'costwarden.byok_secret' end, v_value, true);
    return null;
end
$$;

create or replace trigger secret_input_base64_set
instead of insert on costwarden.secret_input_base64
for each row execute function costwarden._secret_input_base64_set();

-- ---------------------------------------------------------------------------
-- Internal helpers

-- Internal (reserve, hot path): does the workspace hold a live key for the provider?
create or replace function costwarden._byok_usable(p_org_id text, p_workspace_id text, p_provider text)
returns boolean
language plpgsql stable
as $$
begin
    -- PL/pgSQL so that the plan is cached (EXISTS keeps a SQL function from being inlined)
    return exists (
        select from costwarden._byok_keys as k
        where k.org_id = p_org_id and k.workspace_id = p_workspace_id
          and k.provider = p_provider and k.revoked_at is null
    );
end
$$;

-- Internal: pgcrypto options of the KEK layer: AES-256, iterated + salted
-- S2K with SHA-256 and 2^20 bytes hashed per derivation (a KDF: ~2 ms).
create or replace function costwarden._byok_kek_cipher()
returns text
language sql immutable
as $$
    select 'cipher-algo=aes256, s2k-mode=3, s2k-digest-algo=sha256, s2k-count=1048576'::text
$$;

-- Internal: pgcrypto options of the DEK layer (the DEK is 32 random bytes:
-- salted S2K without iterations is enough).
create or replace function costwarden._byok_dek_cipher()
returns text
language sql immutable
as $$
    select 'cipher-algo=aes256, s2k-mode=1, s2k-digest-algo=sha256'::text
$$;

-- Internal: the KEK in a setting, or why it is not acceptable (never raises,
-- never quotes the value).
create or replace function costwarden._byok_kek_read(p_setting text, out kek text, out problem text)
language plpgsql stable
as $$
begin
    kek := nullif(current_setting(p_setting, true), '');
    if kek is null then
        problem := format('%s is not set: the trusted caller supplies the key-encryption key for the '
                          'transaction (set_config(%L, ..., true) or COPY costwarden.secret_input_base64; '
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
create or replace function costwarden._byok_kek(p_setting text default 'costwarden.kek')
returns text
language plpgsql stable
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
create or replace function costwarden._byok_kek_unlocks(p_check_blob bytea, p_kek text)
returns boolean
language plpgsql stable
as $$
begin
    return costwarden.pgp_sym_decrypt(p_check_blob, p_kek) = 'costwarden-kek-check-v1';
exception when others then
    return false;  -- 'Wrong key or corrupt data'
end
$$;

-- Internal: the current KEK generation for writing under p_kek: creates the
-- first generation when none exists; CW005 when p_kek does not unlock it.
-- The caller holds the shared KEK lock.
create or replace function costwarden._byok_kek_for_write(p_kek text)
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
create or replace function costwarden._byok_secret_check(p_secret text)
returns void
language plpgsql immutable
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
create or replace function costwarden._byok_fingerprint(p_secret text)
returns text
language sql immutable
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
create or replace function costwarden._byok_guard(p_ws costwarden._workspaces, p_provider text)
returns text
language plpgsql stable
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

-- Internal: serialise writers of one (org, workspace, provider) key slot
-- (a row lock of _lock_stripes, which no other role can take).
create or replace function costwarden._byok_slot_lock(p_org_id text, p_workspace_id text, p_provider text)
returns void
language sql
as $$
    select costwarden._lock_stripe(costwarden._lock_key('costwarden.byok', p_org_id, p_workspace_id, p_provider))
$$;

-- ---------------------------------------------------------------------------
-- RPCs (admin): put, revoke, list, KEK status and rotation

create or replace function costwarden.fn_byok_key_put(
    p_org_id text, p_workspace_id text, p_provider text, p_secret text
)
returns text
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
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
    perform costwarden._tenant_guard(p_org_id);
    -- 1. arguments (nothing is written before every one is checked)
    v_ws := costwarden._require_workspace(p_org_id, p_workspace_id);
    perform costwarden._require_provider(p_provider, 'p_provider: no model of provider %L in the catalogue');
    perform costwarden._byok_secret_check(p_secret);
    -- 2. the key-write guard
    v_refusal := costwarden._byok_guard(v_ws, p_provider);
    if v_refusal is not null then
        perform costwarden._raise('CW005', v_refusal);
    end if;
    -- 3. the KEK (CW005 when missing, malformed or not the one in use)
    v_kek := costwarden._byok_kek('costwarden.kek');
    perform costwarden._lock_named('byok_kek', true);
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

create or replace function costwarden.fn_byok_key_revoke(p_org_id text, p_workspace_id text, p_provider text)
returns boolean
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_before costwarden._byok_keys;
begin
    perform costwarden._tenant_guard(p_org_id);
    perform costwarden._require_workspace(p_org_id, p_workspace_id);
    perform costwarden._require_provider(p_provider, 'p_provider: no model of provider %L in the catalogue');
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
'kept. False when there was none. A workspace left in byok without a key for its provider is '
'reported with a WARNING (SQLSTATE 01CW0).';

create or replace function costwarden.fn_byok_key_list(
    p_org_id text default null, p_workspace_id text default null, p_include_revoked boolean default false
)
returns table (
    org_id text, workspace_id text, provider text, fingerprint text, status text, kek_id integer,
    created_at timestamptz, created_by text, revoked_at timestamptz, revoked_by text, revoke_reason text
)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
begin
    perform costwarden._tenant_guard(p_org_id);
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

create or replace function costwarden.fn_byok_kek_status()
returns table (kek_id integer, current boolean, created_at timestamptz, created_by text,
               retired_at timestamptz, live_keys bigint)
language sql stable security definer set search_path = pg_catalog, pg_temp
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
create or replace function costwarden.fn_byok_kek_rotate(p_batch integer default 1000)
returns table (kek_id integer, rewrapped integer, remaining bigint)
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
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
    perform costwarden._shared_guard();
    perform costwarden._require_limit(p_batch, 100000, 'p_batch');
    v_old := costwarden._byok_kek('costwarden.kek');
    v_new := costwarden._byok_kek('costwarden.kek_new');
    if v_old = v_new then
        perform costwarden._raise('CW005', 'costwarden.kek_new must differ from costwarden.kek');
    end if;
    perform costwarden._lock_named('byok_kek');

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

grant insert on costwarden.secret_input, costwarden.secret_input_base64
to costwarden_admin, costwarden_service;
grant execute on function
    costwarden.fn_byok_key_put(text, text, text, text),
    costwarden.fn_byok_key_revoke(text, text, text),
    costwarden.fn_byok_key_list(text, text, boolean),
    costwarden.fn_byok_kek_status(),
    costwarden.fn_byok_kek_rotate(integer)
to costwarden_admin;
