-- BYOK resolve (SPEC §5): the secret, released only to a live byok
-- reservation, every release and every refusal audited (the resolve trail,
-- refusal receipts, the audit listing). docs/byok.md explains the design.
--
-- lock order: docs/internals.md#lock-order
-- Resolve takes no advisory lock: it reads one key row and FOR SHARE-locks
-- its reservation row, so a commit / release cannot slip in between the check
-- and the release of the secret.

select costwarden._append_only('costwarden._byok_resolve_log', '_byok_resolve_log_no_update_delete', 'update or delete');

-- Internal: record one resolve outcome in the server log (survives rollback).
create or replace function costwarden._byok_resolve_log_line(p_payload jsonb)
returns void
language plpgsql volatile
as $$
begin
    raise log 'costwarden.byok_resolve %', p_payload::text;
end
$$;

-- Internal: the HMAC that signs a refusal receipt's payload text, in hex.
create or replace function costwarden._byok_receipt_mac(p_text text)
returns text
language sql stable
as $$
    select encode(costwarden.hmac(convert_to(p_text, 'UTF8'), k.hmac_key, 'sha256'), 'hex')
    from costwarden._byok_receipt_key as k
$$;

-- Internal: a signed refusal receipt: base64(payload) '.' hex(hmac-sha256).
create or replace function costwarden._byok_receipt(p_payload jsonb)
returns text
language sql stable
as $$
    select translate(encode(convert_to(p_payload::text, 'UTF8'), 'base64'), E'\n', '')
           || '.' || costwarden._byok_receipt_mac(p_payload::text)
$$;

-- Internal: one row of the resolve trail from a resolve's payload (the payload
-- its log line and, for a refusal, its receipt carry). False when the attempt
-- already has a row.
create or replace function costwarden._byok_resolve_log_insert(p_payload jsonb, p_via text)
returns boolean
language plpgsql
as $$
begin
    perform costwarden._durable_commit();
    insert into costwarden._byok_resolve_log (
        attempt, at, db_role, actor_org, actor_user, reservation_id, org_id, workspace_id, provider,
        legacy, outcome, reason, fingerprint, recorded_via
    ) values (
        (p_payload ->> 'attempt')::bigint, (p_payload ->> 'at')::timestamptz, p_payload ->> 'db_role',
        p_payload ->> 'actor_org', p_payload ->> 'actor_user', (p_payload ->> 'reservation_id')::uuid,
        p_payload ->> 'org_id', p_payload ->> 'workspace_id', p_payload ->> 'provider',
        (p_payload ->> 'legacy')::boolean, p_payload ->> 'outcome', p_payload ->> 'reason',
        p_payload ->> 'fingerprint', p_via
    )
    on conflict (attempt) do nothing;
    return found;
end
$$;

-- Internal: the payload of a signed refusal receipt (with or without the
-- 'costwarden-refusal-receipt: ' prefix of the CW005 hint); CW004 when it is
-- not a refusal receipt this database issued.
create or replace function costwarden._byok_receipt_payload(p_receipt text)
returns jsonb
language plpgsql stable
as $$
declare
    v_receipt text := p_receipt;
    v_text text;
    v_payload jsonb;
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
    if costwarden._byok_receipt_mac(v_text) <> split_part(v_receipt, '.', 2)
       or v_payload ->> 'outcome' is distinct from 'refused' then
        perform costwarden._raise('CW004', 'p_receipt: the signature does not match (not issued by this database)');
    end if;
    return v_payload;
end
$$;

-- The one function the audit link's login may run (costwarden_auditor): record
-- a refusal from its signed receipt, recorded_via 'server'. A forged receipt is
-- CW004, so even the link's password lets nobody write anything else. Null
-- records nothing (`costwarden audit-link check` calls it so).
create or replace function costwarden._byok_refusal_append(p_receipt text)
returns boolean
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$
begin
    if p_receipt is null then
        return null;
    end if;
    return costwarden._byok_resolve_log_insert(costwarden._byok_receipt_payload(p_receipt), 'server');
end
$$;

-- Internal: a libpq connection-string value, quoted.
create or replace function costwarden._conninfo_quote(p_value text)
returns text
language sql immutable
as $$
    select '''' || replace(replace(p_value, '\', '\\'), '''', '\''') || ''''
$$;

-- Internal: run one statement (returning no rows: dblink_exec) through the
-- audit link -- a loopback dblink
-- connection as the link's login, in its own transaction, committed whatever
-- the caller's transaction does. Never raises: problem says why it did not run
-- (no link, dblink not installed, connection refused, the server did not ask
-- the login for its password, ...), with the password blanked out. The
-- connection string exists only in this function's variables: dblink's errors
-- quote libpq's message, never the string.
create or replace function costwarden._byok_audit_link_exec(
    p_sql text, out ok boolean, out login text, out target text, out problem text
)
language plpgsql volatile
as $$
declare
    v_link costwarden._byok_audit_link;
    v_conn text;
    v_detail text;
begin
    ok := false;
    select * into v_link from costwarden._byok_audit_link;
    if not found then
        problem := 'no audit link (costwarden migrate creates it)';
        return;
    end if;
    login := v_link.login;
    target := format('%s:%s/%s', coalesce(v_link.host, '127.0.0.1'),
                     coalesce(v_link.port, current_setting('port')::integer),
                     coalesce(v_link.dbname, current_database()));
    v_conn := concat_ws(' ',
        'host=' || costwarden._conninfo_quote(coalesce(v_link.host, '127.0.0.1')),
        'port=' || coalesce(v_link.port, current_setting('port')::integer),
        'dbname=' || costwarden._conninfo_quote(coalesce(v_link.dbname, current_database())),
        'user=' || costwarden._conninfo_quote(v_link.login),
        'password=' || costwarden._conninfo_quote(v_link.password),
        'application_name=costwarden_audit_link connect_timeout=5',
        'options=''-c statement_timeout=5000 -c lock_timeout=2000''');
    begin
        perform costwarden.dblink_exec(v_conn, p_sql);
        ok := true;
    exception when others then
        get stacked diagnostics v_detail = pg_exception_detail;
        problem := left(replace(concat_ws(': ', sqlstate, sqlerrm, nullif(btrim(v_detail), '')),
                                v_link.password, '[redacted]'), 500);
    end;
end
$$;

-- Internal (resolve, step 1): the binding -- which key slot (org, workspace,
-- provider) a resolve may open: the one of a held, unexpired byok reservation,
-- FOR SHARE-locked until commit so that no commit or release slips in before
-- the secret is released; or, with byok_require_reservation off, the one a
-- legacy call names by org and workspace. Never raises: a refusal is a reason
-- code and its detail. r_*: what the reservation names (for the audit).
create or replace function costwarden._byok_resolve_binding(
    p_reservation_id uuid, p_provider text, p_org_id text, p_workspace_id text,
    out org_id text, out workspace_id text, out provider text, out reason text, out detail text,
    out r_org text, out r_ws text, out r_provider text
)
language plpgsql
as $$
declare
    v_ws costwarden._workspaces;
    v_status text;
    v_expires timestamptz;
    v_mode text;
    v_hold bigint;
begin
    if p_reservation_id is null then
        if (costwarden._setting('byok_require_reservation'))::boolean then
            reason := 'reservation_required';
            detail := 'p_reservation_id is required: secrets are released only to a live reservation '
                      '(byok_require_reservation is true)';
        elsif p_org_id is null or p_workspace_id is null then
            reason := 'legacy_arguments';
            detail := 'a legacy resolve (p_reservation_id null) needs p_org_id and p_workspace_id';
        else
            select * into v_ws from costwarden._workspaces as w
            where w.org_id = p_org_id and w.workspace_id = p_workspace_id;
            if not found then
                reason := 'unknown_workspace';
                detail := format('p_workspace_id: unknown workspace %L in org %L',
                                 left(p_workspace_id, 200), left(p_org_id, 200));
            elsif (costwarden._billing_mode(v_ws)).billing_mode <> 'byok' then
                reason := 'not_byok';
                detail := format('workspace %L does not resolve to byok billing', p_workspace_id);
            else
                org_id := p_org_id;
                workspace_id := p_workspace_id;
                provider := coalesce(p_provider,
                    (select m.provider from costwarden._models as m where m.model = v_ws.model));
                if provider is null then
                    reason := 'provider_required';
                    detail := format('p_provider is required: workspace %L has no model', p_workspace_id);
                end if;
            end if;
        end if;
        return;
    end if;
    select r.org_id, r.workspace_id, r.provider, r.status, r.expires_at, r.billing_mode, r.amount_micros
    into r_org, r_ws, r_provider, v_status, v_expires, v_mode, v_hold
    from costwarden._reservations as r
    where r.reservation_id = p_reservation_id
    for share;
    if not found then
        reason := 'unknown_reservation';
        detail := format('p_reservation_id: unknown reservation %s', p_reservation_id);
    elsif v_status <> 'held' then
        reason := 'not_held';
        detail := format('reservation %s is %s, not held', p_reservation_id, v_status);
    elsif v_expires is null or v_expires <= clock_timestamp() then
        reason := 'expired';
        detail := format('reservation %s expired at %s', p_reservation_id, v_expires);
    elsif v_mode is distinct from 'byok' then
        reason := 'not_byok';
        detail := format('reservation %s is billed %s, not byok', p_reservation_id, v_mode);
    elsif coalesce(v_hold, 0) <= 0 then
        -- SPEC §12: a reservation that holds nothing never gets a key
        reason := 'zero_hold';
        detail := format('reservation %s holds 0', p_reservation_id);
    elsif p_provider is not null and p_provider <> r_provider then
        reason := 'provider_mismatch';
        detail := format('p_provider %L is not the provider of reservation %s (%L)',
                         left(p_provider, 100), p_reservation_id, r_provider);
    elsif p_org_id is not null and p_org_id <> r_org then
        reason := 'org_mismatch';
        detail := format('p_org_id does not match the org of reservation %s', p_reservation_id);
    elsif p_workspace_id is not null and p_workspace_id <> r_ws then
        reason := 'workspace_mismatch';
        detail := format('p_workspace_id does not match the workspace of reservation %s', p_reservation_id);
    else
        org_id := r_org;
        workspace_id := r_ws;
        provider := r_provider;
    end if;
end
$$;

-- Internal (resolve, step 2): the secret of a slot's live key, decrypted with
-- the KEK in costwarden.kek. Never raises: a refusal is a reason code
-- (no_live_key, kek_missing, kek_invalid, kek_wrong) and its detail.
create or replace function costwarden._byok_resolve_secret(
    p_org_id text, p_workspace_id text, p_provider text,
    out secret text, out fingerprint text, out reason text, out detail text
)
language plpgsql stable
as $$
declare
    v_key costwarden._byok_keys;
    v_kek record;
    v_dek bytea;
begin
    select * into v_key from costwarden._byok_keys as k
    where k.org_id = p_org_id and k.workspace_id = p_workspace_id and k.provider = p_provider
      and k.revoked_at is null;
    if not found then
        reason := 'no_live_key';
        detail := format('workspace %L has no live key for provider %L', p_workspace_id, p_provider);
        return;
    end if;
    v_kek := costwarden._byok_kek_read('costwarden.kek');
    if v_kek.problem is not null then
        reason := case when coalesce(current_setting('costwarden.kek', true), '') = '' then 'kek_missing'
                       else 'kek_invalid' end;
        detail := v_kek.problem;
        return;
    end if;
    begin
        v_dek := costwarden.pgp_sym_decrypt_bytea(v_key.wrapped_dek, v_kek.kek);
    exception when others then
        reason := 'kek_wrong';
        detail := format('costwarden.kek does not unlock this key (KEK generation %s)', v_key.kek_id);
        return;
    end;
    fingerprint := v_key.fingerprint;
    secret := costwarden.pgp_sym_decrypt(v_key.secret_ciphertext, encode(v_dek, 'hex'));
end
$$;

create or replace function costwarden.fn_byok_key_resolve_v2(
    p_reservation_id uuid,
    p_provider text default null,
    p_org_id text default null,
    p_workspace_id text default null
)
returns table (provider text, secret text, fingerprint text)
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_attempt bigint := nextval('costwarden._byok_resolve_attempt_seq');
    v_at timestamptz := clock_timestamp();
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
    v_secret text;
    v_fingerprint text;
    v_payload jsonb;
    v_problem text;
begin
    begin
        select a.org_id, a.user_id into v_actor_org, v_actor_user from costwarden._actor() as a;
    exception when others then
        v_reason := 'invalid_actor';
        v_detail := 'request.jwt.claims is not valid JSON';
    end;

    -- 1. the binding: a live byok reservation (or, when allowed, a legacy call)
    if v_reason is null then
        select b.org_id, b.workspace_id, b.provider, b.reason, b.detail, b.r_org, b.r_ws, b.r_provider
        into v_org, v_ws, v_provider, v_reason, v_detail, v_r_org, v_r_ws, v_r_provider
        from costwarden._byok_resolve_binding(p_reservation_id, p_provider, p_org_id, p_workspace_id) as b;
    end if;
    -- the workspace as it is now (SPEC §12): its current billing mode, not the one
    -- stored on the reservation, and no freeze
    if v_reason is null and p_reservation_id is not null and (
        select (costwarden._billing_mode(w)).billing_mode from costwarden._workspaces as w
        where w.org_id = v_org and w.workspace_id = v_ws
    ) is distinct from 'byok' then
        v_reason := 'not_byok';
        v_detail := format('workspace %L no longer resolves to byok billing', v_ws);
    end if;
    if v_reason is null and exists (  -- frozen: an unacknowledged freezing anomaly
        select from costwarden._anomalies as a
        where a.org_id = v_org and a.workspace_id = v_ws and a.frozen and a.acked_at is null
    ) then
        v_reason := 'workspace_frozen';
        v_detail := format('workspace %L is frozen by an unacknowledged anomaly', v_ws);
    end if;
    if v_reason is null and v_actor_org is not null and v_actor_org <> v_org then
        v_reason := 'actor_org_mismatch';
        v_detail := 'the actor belongs to another org';
    end if;

    -- 2. the live key and the KEK
    if v_reason is null then
        select s.secret, s.fingerprint, s.reason, s.detail into v_secret, v_fingerprint, v_reason, v_detail
        from costwarden._byok_resolve_secret(v_org, v_ws, v_provider) as s;
    end if;

    v_payload := jsonb_build_object(
        'attempt', v_attempt, 'at', v_at, 'db_role', session_user::text,
        'actor_org', v_actor_org, 'actor_user', v_actor_user,
        'reservation_id', p_reservation_id, 'org_id', coalesce(v_org, v_r_org, left(p_org_id, 200)),
        'workspace_id', coalesce(v_ws, v_r_ws, left(p_workspace_id, 200)),
        'provider', coalesce(v_provider, v_r_provider, left(p_provider, 100)),
        'legacy', p_reservation_id is null,
        'outcome', case when v_reason is null then 'granted' else 'refused' end, 'reason', v_reason,
        'fingerprint', case when v_reason is null then v_fingerprint end
    );
    perform costwarden._byok_resolve_log_line(v_payload);

    -- 3. a refusal: recorded through the audit link (committed whatever the
    -- caller does), then CW005 with a signed receipt (the transaction rolls back)
    if v_reason is not null then
        select l.problem into v_problem
        from costwarden._byok_audit_link_exec(
            format('do $link$ begin perform costwarden._byok_refusal_append(%L); end $link$',
                   costwarden._byok_receipt(v_payload))
        ) as l;
        if v_problem is not null then
            raise log 'costwarden.byok_resolve_unrecorded %',
                jsonb_build_object('attempt', v_attempt, 'problem', v_problem)::text;
        end if;
        perform costwarden._raise('CW005',
            format('BYOK resolve refused (attempt %s, %s): %s', v_attempt, v_reason, v_detail),
            'costwarden-refusal-receipt: ' || costwarden._byok_receipt(v_payload));
    end if;

    -- 4. granted: audited, then released
    perform costwarden._byok_resolve_log_insert(v_payload, 'inline');
    return query select v_provider, v_secret, v_fingerprint;
end
$$;

comment on function costwarden.fn_byok_key_resolve_v2(uuid, text, text, text) is
'The plaintext BYOK key for a held, unexpired byok reservation (needs costwarden.kek). Anything else '
'is CW005. Every attempt is audited.';

-- Record a refused resolve from the receipt its CW005 carried (the refusal
-- itself rolled back). True when recorded now, false when already recorded
-- (by an earlier call, or by the server through the audit link).
create or replace function costwarden.fn_byok_resolve_refusal_record(p_receipt text)
returns boolean
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
as $$
begin
    return costwarden._byok_resolve_log_insert(costwarden._byok_receipt_payload(p_receipt), 'receipt');
end
$$;

comment on function costwarden.fn_byok_resolve_refusal_record(text) is
'Record a refused BYOK resolve from the signed receipt in its CW005 hint (the Python client does this itself).';

-- The resolve trail, newest attempt first (admin). Without filters the
-- latest p_limit attempt numbers are listed, and a number with no row is
-- reported as outcome 'unrecorded': its transaction rolled back (a refusal
-- nobody recorded, or a grant the caller rolled back) or is still running;
-- the server log has a 'costwarden.byok_resolve' line for every attempt.
-- The numbers are those the attempt sequence hands out: from its start, by
-- its increment (1 on a single node; on a partition of a cluster, 4096 from
-- the partition's residue, docs/scale-out.md), and every recorded attempt
-- (after a split, those copied from the partition it split from).
create or replace function costwarden.fn_byok_resolve_audit(
    p_org_id text default null, p_reservation_id uuid default null, p_limit integer default 100
)
returns table (
    attempt bigint, at timestamptz, outcome text, reason text, legacy boolean, db_role text,
    actor_org text, actor_user text, reservation_id uuid, org_id text, workspace_id text,
    provider text, fingerprint text, recorded_via text
)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_last bigint;
    v_step bigint;
    v_first bigint;
begin
    perform costwarden._tenant_guard(p_org_id);
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
    select case when s.is_called then s.last_value end into v_last
    from costwarden._byok_resolve_attempt_seq as s;
    select q.seqincrement, q.seqstart into v_step, v_first
    from pg_catalog.pg_sequence as q
    where q.seqrelid = 'costwarden._byok_resolve_attempt_seq'::regclass;
    return query
    select n.n, l.at, coalesce(l.outcome, 'unrecorded'), l.reason, l.legacy, l.db_role, l.actor_org,
           l.actor_user, l.reservation_id, l.org_id, l.workspace_id, l.provider, l.fingerprint, l.recorded_via
    from (
        select g.n
        from generate_series(v_last, greatest(v_last - (p_limit - 1) * v_step, v_first), -v_step) as g (n)
        union
        (select r.attempt from costwarden._byok_resolve_log as r order by r.attempt desc limit p_limit)
        order by 1 desc
        limit p_limit
    ) as n (n)
    left join costwarden._byok_resolve_log as l on l.attempt = n.n
    order by n.n desc;
end
$$;

comment on function costwarden.fn_byok_resolve_audit(text, uuid, integer) is
'BYOK resolve attempts (granted, refused, and unrecorded gaps), newest first; never a secret.';

grant execute on function costwarden.fn_byok_resolve_audit(text, uuid, integer) to costwarden_admin;
grant execute on function costwarden._byok_refusal_append(text) to costwarden_auditor;
grant execute on function
    costwarden.fn_byok_key_resolve_v2(uuid, text, text, text),
    costwarden.fn_byok_resolve_refusal_record(text)
to costwarden_service;
