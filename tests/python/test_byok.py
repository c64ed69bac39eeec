"""BYOK (SPEC §5): the key-write guard, envelope encryption under a caller-supplied KEK,
rotation, the release bound to a live reservation, its audit trail, fail-closed
reserve, bad input, roles, and the Python client."""

from __future__ import annotations

import asyncio
import itertools
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg import sql

import costwarden
from costwarden import errors
from cwtest import Seeded, table_snapshot

KEK = "byok-test-kek-0123456789abcdefghijklmnop"
NEW_KEK = "byok-test-new-kek-zyxwvutsrqponmlkjihgf"
SECRET = "sk-ant-api03-TESTSECRET-0123456789abcdef-9f2a"
OPENAI_SECRET = "sk-proj-TESTSECRET-openai-0123456789-77aa"
USAGE = {"input_tokens": 100, "output_tokens": 10}

PUT = "select costwarden.fn_byok_key_put(%s, %s, %s, %s)"
RESOLVE = "select * from costwarden.fn_byok_key_resolve_v2(%s, %s, %s, %s)"


# -- helpers ------------------------------------------------------------------------------


def call(
    conn: psycopg.Connection[Any],
    query: str,
    params: Sequence[Any] | None = None,
    *,
    kek: str | None = KEK,
    role: str | None = None,
    settings: Mapping[str, str] | None = None,
) -> list[tuple[Any, ...]]:
    """Run ``query`` in one committed transaction with costwarden.kek set (as ``role``)."""
    with conn.transaction():
        if role is not None:
            conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        if kek is not None:
            conn.execute("select set_config('costwarden.kek', %s, true)", [kek])
        for name, value in (settings or {}).items():
            conn.execute("select set_config(%s, %s, true)", [name, value])
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def refused(
    conn: psycopg.Connection[Any],
    sqlstate: str,
    query: str,
    params: Sequence[Any] | None = None,
    *,
    match: str | None = None,
    **kwargs: Any,
) -> psycopg.Error:
    """``query`` (as in :func:`call`) fails with ``sqlstate``; returns the error."""
    with pytest.raises(psycopg.Error) as info:
        call(conn, query, params, **kwargs)
    err = info.value
    message = err.diag.message_primary or ""
    assert err.sqlstate == sqlstate, f"expected {sqlstate}, got {err.sqlstate}: {message}"
    if match is not None:
        assert re.search(match, message), f"{message!r} does not match {match!r}"
    return err


@pytest.fixture
def kek_client(dsn: str) -> Iterator[costwarden.Client]:
    with costwarden.Client(dsn, kek=KEK) as c:
        yield c


@pytest.fixture
def vendor_key(kek_client: costwarden.Client, seeded: Seeded) -> str:
    """The org's vendor workspace holds an anthropic key."""
    return kek_client.put_key(seeded.org, seeded.ws_vendor, "anthropic", SECRET)


@pytest.fixture
def no_audit_link(admin_conn: psycopg.Connection[Any]) -> None:
    """The receipt path: this database has no audit link (as where dblink or the link's
    password rule is missing), so a refusal is recorded only by its receipt.
    tests/python/test_refusal_audit.py tests the link."""
    admin_conn.execute("delete from costwarden._byok_audit_link")


def reserve(client: costwarden.Client, seeded: Seeded, **kwargs: Any) -> UUID:
    r = client.reserve(seeded.org, seeded.ws_vendor, seeded.vendor_model, USAGE, **kwargs)
    assert r.status == "held" and r.billing_mode == "byok", r
    return r.reservation_id


def live_rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "select org_id, workspace_id, provider, kek_id from costwarden._byok_keys "
        "where revoked_at is null order by 1, 2, 3"
    ).fetchall()


# -- the key-write guard: every cell --------------------------------------------------------

MODEL_KINDS = ("servable", "vendor", "none")
OVERRIDES = (None, "platform_managed", "byok", "disabled")


def expected_guard(model: str, override: str | None, provider: str, proxy: bool) -> str | None:
    """SPEC §5 key-write guard, from the model first; None: accepted, else the rule."""
    own = {"servable": "openai", "vendor": "anthropic"}.get(model)
    if model == "servable" and proxy:
        return "A"  # a platform-servable model refuses any vendor key, whatever the override
    if own is not None:
        if override == "platform_managed":
            return "B"  # a vendor model with an explicit platform_managed override refuses
        return None if provider == own else "C"  # its own provider only
    # no model: follow the billing mode (accepted only when it resolves to byok)
    mode = override or ("platform_managed" if proxy else "byok")
    return None if mode == "byok" else "D"


@pytest.mark.parametrize("proxy", [True, False], ids=["proxy", "self-hosted"])
def test_key_write_guard_every_cell(
    client: costwarden.Client, seeded: Seeded, admin_conn: psycopg.Connection[Any], proxy: bool
) -> None:
    client.set_setting("platform_proxy_configured", proxy)
    models = {"servable": seeded.platform_model, "vendor": seeded.vendor_model, "none": None}
    wrong: list[str] = []
    cells = itertools.product(MODEL_KINDS, OVERRIDES, ("openai", "anthropic"))
    for i, (model, override, provider) in enumerate(cells):
        ws = f"guard-{i}"
        client.upsert_workspace(seeded.org, ws, models[model], override or "none")
        want = expected_guard(model, override, provider, proxy)
        cell = f"model={model} override={override} provider={provider}"
        try:
            (fingerprint,) = call(admin_conn, PUT, [seeded.org, ws, provider, SECRET])[0]
            if want is not None:
                wrong.append(f"{cell}: accepted ({fingerprint}), expected rule {want}")
        except psycopg.Error as exc:
            message = exc.diag.message_primary or ""
            if want is None or exc.sqlstate != "CW005" or f"rule {want} " not in message:
                wrong.append(f"{cell}: {exc.sqlstate} {message!r}, expected {want or 'accepted'}")
    assert not wrong, "\n".join(wrong)


def test_guard_refusal_writes_nothing(admin_conn: psycopg.Connection[Any], seeded: Seeded) -> None:
    before = table_snapshot(admin_conn)
    err = refused(admin_conn, "CW005", PUT, [seeded.org, seeded.ws_platform, "openai", SECRET])
    assert "rule A (platform-servable model)" in (err.diag.message_primary or "")
    assert SECRET not in str(err)
    assert table_snapshot(admin_conn) == before


# -- put / replace / revoke / list ----------------------------------------------------------


def test_put_replaces_the_live_key_and_keeps_history(
    kek_client: costwarden.Client, seeded: Seeded, admin_conn: psycopg.Connection[Any]
) -> None:
    first = kek_client.put_key(seeded.org, seeded.ws_vendor, "anthropic", SECRET)
    assert first == "sk-…9f2a"
    second_secret = "sk-ant-api03-SECOND-abcdefghijklmnop-1b2c"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # replaced, never without a key: no readiness warning
        second = kek_client.put_key(seeded.org, seeded.ws_vendor, "anthropic", second_secret)
    assert second == "sk-…1b2c"
    live = kek_client.list_keys(seeded.org)
    assert [(k.provider, k.fingerprint, k.status) for k in live] == [("anthropic", second, "live")]
    history = kek_client.list_keys(seeded.org, seeded.ws_vendor, include_revoked=True)
    assert [(k.fingerprint, k.status, k.revoke_reason) for k in history] == [
        (second, "live", None),
        (first, "revoked", "replaced"),
    ]
    # the replaced key's ciphertexts are destroyed (crypto-shredded), its record kept
    shredded = admin_conn.execute(
        "select secret_ciphertext is null and wrapped_dek is null from costwarden._byok_keys "
        "where fingerprint = %s",
        [first],
    ).fetchone()
    assert shredded == (True,)
    audit = kek_client.audit(seeded.org, action="byok_key_put")
    assert [(a.before, (a.after or {})["fingerprint"]) for a in audit] == [
        ({"fingerprint": first, "kek_id": 1}, second),
        (None, first),
    ]
    # the new key is the one released
    rid = reserve(kek_client, seeded)
    assert kek_client.resolve_key(rid).secret == second_secret


def test_revoke(kek_client: costwarden.Client, seeded: Seeded, vendor_key: str) -> None:
    # the byok workspace is left without a key: said at once (01CW0), as a switch to
    # byok without one is (docs/byok.md)
    with pytest.warns(
        costwarden.ReadinessWarning, match="bills byok \\(model\\) but has no anthropic"
    ):
        assert kek_client.revoke_key(seeded.org, seeded.ws_vendor, "anthropic") is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing revoked: nothing to say
        assert kek_client.revoke_key(seeded.org, seeded.ws_vendor, "anthropic") is False
    assert kek_client.list_keys(seeded.org) == []
    (row,) = kek_client.list_keys(seeded.org, include_revoked=True)
    assert (row.fingerprint, row.status, row.revoke_reason) == (vendor_key, "revoked", "revoked")
    (entry,) = kek_client.audit(seeded.org, action="byok_key_revoke")
    assert entry.before == {"fingerprint": vendor_key, "kek_id": 1} and entry.after is None
    # fail closed again
    r = kek_client.reserve(
        seeded.org, seeded.ws_vendor, seeded.vendor_model, USAGE, raise_on_denied=False
    )
    assert r.status == "denied"
    assert [x.code for x in r.reasons] == ["byok_credential_missing"]


def test_revoke_and_list_errors(admin_conn: psycopg.Connection[Any], seeded: Seeded) -> None:
    revoke = "select costwarden.fn_byok_key_revoke(%s, %s, %s)"
    refused(admin_conn, "CW002", revoke, [seeded.org, "nope", "anthropic"], match="p_workspace_id")
    refused(admin_conn, "CW002", revoke, [seeded.org, seeded.ws_vendor, "nope"], match="p_provider")
    refused(admin_conn, "CW004", revoke, [seeded.org, seeded.ws_vendor, None], match="p_provider")
    listing = "select * from costwarden.fn_byok_key_list(%s, %s)"
    refused(admin_conn, "CW002", listing, ["nope", None], match="p_org_id")
    refused(admin_conn, "CW004", listing, [None, seeded.ws_vendor], match="p_org_id")


def test_fingerprints(kek_client: costwarden.Client, client: costwarden.Client) -> None:
    cases = {
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz-9f2a": "sk-…9f2a",
        "gsk_abcdefghijklmnopqrstuvwxyz0123": "gsk_…0123",
        "AIzaSyABCDEFGHIJKLMNOPQRSTUVWX": "…UVWX",
        "short-sk-123": "…-123",  # 12..19 characters: no prefix
        "12345678": "…78",  # 8..11 characters: 2 characters only
    }
    client.upsert_model("vendorx/m1")
    client.upsert_org("fp")
    for i, (secret, fingerprint) in enumerate(cases.items()):
        client.upsert_workspace("fp", f"ws{i}", "vendorx/m1")
        assert kek_client.put_key("fp", f"ws{i}", "vendorx", secret) == fingerprint


# -- envelope encryption and the KEK ------------------------------------------------------


def test_envelope_encryption_at_rest(
    kek_client: costwarden.Client,
    client: costwarden.Client,
    seeded: Seeded,
    admin_conn: psycopg.Connection[Any],
) -> None:
    kek_client.put_key(seeded.org, seeded.ws_vendor, "anthropic", SECRET)
    client.upsert_workspace(seeded.org, "ws-vendor-2", seeded.vendor_model)
    kek_client.put_key(seeded.org, "ws-vendor-2", "anthropic", SECRET)  # the same secret twice
    rows = admin_conn.execute(
        "select secret_ciphertext, wrapped_dek, kek_id from costwarden._byok_keys order by 1"
    ).fetchall()
    assert len(rows) == 2
    # each secret under its own random data key: nothing repeats
    assert rows[0][0] != rows[1][0] and rows[0][1] != rows[1][1]
    # the DEK unwraps with the KEK (and only with it); the secret decrypts with the DEK
    dek = admin_conn.execute(
        "select costwarden.pgp_sym_decrypt_bytea(%s, %s)", [rows[0][1], KEK]
    ).fetchone()
    assert dek is not None and len(dek[0]) == 32
    plain = admin_conn.execute(
        "select costwarden.pgp_sym_decrypt(%s, encode(%s, 'hex'))", [rows[0][0], dek[0]]
    ).fetchone()
    assert plain == (SECRET,)
    # neither the secret nor the KEK is anywhere in the schema's tables
    dump = repr(table_snapshot(admin_conn))
    assert SECRET not in dump and KEK not in dump
    # a generation stores a check blob, never the KEK or a fast hash of it
    blob = admin_conn.execute("select check_blob from costwarden._byok_keks").fetchone()
    assert blob is not None and KEK.encode() not in bytes(blob[0])


@pytest.mark.parametrize(
    ("kek", "match"),
    [
        (None, "costwarden.kek is not set"),
        ("", "costwarden.kek is not set"),
        ("k" * 31, "too short: a key-encryption key has at least 32 characters"),
        ("k" * 1025, "too long"),
        ("a-different-kek-of-32-characters-or-more", "not the key-encryption key in use"),
    ],
    ids=["missing", "empty", "short", "long", "wrong"],
)
def test_put_kek_problems_are_cw005(
    admin_conn: psycopg.Connection[Any],
    seeded: Seeded,
    kek_client: costwarden.Client,
    kek: str | None,
    match: str,
) -> None:
    kek_client.put_key(seeded.org, seeded.ws_vendor, "anthropic", SECRET)  # generation 1: KEK
    before = table_snapshot(admin_conn)
    err = refused(
        admin_conn,
        "CW005",
        PUT,
        [seeded.org, seeded.ws_vendor, "anthropic", SECRET],
        kek=kek,
        match=match,
    )
    assert kek is None or kek == "" or kek not in str(err)
    assert table_snapshot(admin_conn) == before


def test_first_put_fixes_the_kek(
    admin_conn: psycopg.Connection[Any], seeded: Seeded, client: costwarden.Client
) -> None:
    """The first key creates KEK generation 1; every later put needs that KEK."""
    call(admin_conn, PUT, [seeded.org, seeded.ws_vendor, "anthropic", SECRET])
    (gen,) = client.kek_status()
    assert (gen.kek_id, gen.current, gen.live_keys) == (1, True, 1)
    refused(
        admin_conn,
        "CW005",
        PUT,
        [seeded.org, seeded.ws_vendor, "anthropic", SECRET],
        kek=NEW_KEK,
        match="generation 1",
    )


# -- bad input: nothing written -------------------------------------------------------------


BAD_PUTS = [
    (("{org}", "{ws}", "anthropic", None), "CW004", "p_secret is required"),
    (("{org}", "{ws}", "anthropic", ""), "CW004", "p_secret must not be empty"),
    (("{org}", "{ws}", "anthropic", "s" * 8193), "CW004", "at most 8192 bytes"),
    (("{org}", "{ws}", "anthropic", "é" * 4097), "CW004", "at most 8192 bytes"),
    (("{org}", "{ws}", "anthropic", "short"), "CW004", "shorter than 8"),
    (("{org}", "{ws}", "anthropic", SECRET + "\n"), "CW004", "control characters"),
    (("{org}", "{ws}", "anthropic", " " + SECRET), "CW004", "surrounding whitespace"),
    (("{org}", "{ws}", "nope", SECRET), "CW002", "p_provider: no model of provider"),
    (("{org}", "{ws}", None, SECRET), "CW004", "p_provider is required"),
    (("{org}", "{ws}", "", SECRET), "CW004", "p_provider"),
    (("{org}", "no-such-ws", "anthropic", SECRET), "CW002", "p_workspace_id: unknown"),
    (("{org}", None, "anthropic", SECRET), "CW004", "p_workspace_id is required"),
    (("no-such-org", "{ws}", "anthropic", SECRET), "CW002", "p_org_id: unknown"),
    ((None, "{ws}", "anthropic", SECRET), "CW004", "p_org_id is required"),
]


def test_put_bad_input_writes_nothing(admin_conn: psycopg.Connection[Any], seeded: Seeded) -> None:
    """Empty / oversized / malformed secrets, unknown provider, workspace or org:
    CW004 / CW002 naming the argument, never quoting the secret, nothing written.
    (A KEK shorter than 32 characters: test_put_kek_problems_are_cw005.)"""
    before = table_snapshot(admin_conn)
    for args, sqlstate, match in BAD_PUTS:
        params = [a.format(org=seeded.org, ws=seeded.ws_vendor) if a else a for a in args]
        err = refused(admin_conn, sqlstate, PUT, params, match=match)
        assert SECRET not in (err.diag.message_primary or "")
        assert table_snapshot(admin_conn) == before, args


def test_put_maximum_size_is_accepted(kek_client: costwarden.Client, seeded: Seeded) -> None:
    big = "sk-" + "x" * (8192 - 3)
    assert kek_client.put_key(seeded.org, seeded.ws_vendor, "anthropic", big) == "sk-…xxxx"
    rid = reserve(kek_client, seeded)
    assert kek_client.resolve_key(rid).secret == big


# -- resolve: bound to a live byok reservation ------------------------------------------


def test_resolve_during_a_held_reservation(
    kek_client: costwarden.Client, seeded: Seeded, vendor_key: str
) -> None:
    rid = reserve(kek_client, seeded)
    for provider in (None, "anthropic"):
        key = kek_client.resolve_key(rid, provider)
        assert (key.provider, key.secret, key.fingerprint) == ("anthropic", SECRET, vendor_key)
    assert SECRET not in repr(key)
    # org / workspace, when given, must match the reservation's
    row = kek_client._run(  # the SQL names every argument
        costwarden._sql.byok_key_resolve(rid, "anthropic", seeded.org, seeded.ws_vendor)
    )
    assert row.secret == SECRET


def _rid_for(
    state: str, client: costwarden.Client, seeded: Seeded, admin_conn: psycopg.Connection[Any]
) -> UUID:
    """A reservation in the given state."""
    if state == "unknown":
        return uuid4()
    if state == "platform":
        r = client.reserve(seeded.org, seeded.ws_platform, seeded.platform_model, USAGE)
        return r.reservation_id
    if state == "denied":
        client.set_budget(seeded.org, "workspace", seeded.ws_vendor, "day", 0)
        r = client.reserve(
            seeded.org, seeded.ws_vendor, seeded.vendor_model, USAGE, raise_on_denied=False
        )
        assert r.status == "denied"
        return r.reservation_id
    rid = reserve(client, seeded)
    if state == "committed":
        client.commit(rid, USAGE)
    elif state == "released":
        client.release(rid)
    elif state == "expired-unswept":
        admin_conn.execute(
            "update costwarden._reservations set expires_at = now() - interval '1 second' "
            "where reservation_id = %s",
            [rid],
        )
    elif state == "expired":
        admin_conn.execute(
            "update costwarden._reservations set expires_at = now() - interval '1 second' "
            "where reservation_id = %s",
            [rid],
        )
        assert client.expire() == 1
    elif state == "revoked-key":
        client.revoke_key(seeded.org, seeded.ws_vendor, "anthropic")
    return rid


REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("committed", {}, "not_held"),
    ("released", {}, "not_held"),
    ("expired", {}, "not_held"),
    ("expired-unswept", {}, "expired"),
    ("platform", {}, "not_byok"),
    ("unknown", {}, "unknown_reservation"),
    ("held", {"provider": "openai"}, "provider_mismatch"),
    ("held", {"org_id": "globex"}, "org_mismatch"),
    ("held", {"workspace_id": "ws-platform"}, "workspace_mismatch"),
    ("held", {"kek": None}, "kek_missing"),
    ("held", {"kek": "k" * 31}, "kek_invalid"),
    ("held", {"kek": "a-different-kek-of-32-characters-or-more"}, "kek_wrong"),
    ("held", {"actor_org": "globex"}, "actor_org_mismatch"),
    ("revoked-key", {}, "no_live_key"),
    ("denied", {}, "not_held"),  # sets a 0 budget: last
]


def test_resolve_refusals_are_cw005_and_audited(
    dsn: str,
    client: costwarden.Client,
    seeded: Seeded,
    vendor_key: str,
    admin_conn: psycopg.Connection[Any],
    no_audit_link: None,
) -> None:
    """Every way a resolve is refused: CW005 naming the reason, never quoting a secret or
    the KEK; the refusal rolls back, and its signed receipt turns it into a row of the
    audit trail. (Order matters: the last cases deny or revoke.)"""
    for state, how, reason in REFUSALS:
        rid = _rid_for(state, client, seeded, admin_conn)
        kek = how.get("kek", KEK)
        with costwarden.Client(dsn, kek=kek, actor_org=how.get("actor_org")) as c:
            c.kek = kek  # None stays None (no COSTWARDEN_KEK fallback in this test)
            with pytest.raises(errors.Forbidden) as info:
                c._run(
                    costwarden._sql.byok_key_resolve(
                        rid, how.get("provider"), how.get("org_id"), how.get("workspace_id")
                    )
                )
        message = info.value.message
        assert f", {reason}): " in message, (state, how, message)
        assert SECRET not in message and KEK not in message
        receipt = costwarden._sql.refusal_receipt(info.value.hint)
        assert receipt is not None and SECRET not in receipt and KEK not in receipt
        assert client._run(costwarden._sql.byok_resolve_refusal_record(receipt)) is True
        latest = client.resolve_audit(limit=1)[0]
        assert (latest.outcome, latest.reason, latest.reservation_id, latest.recorded_via) == (
            "refused",
            reason,
            rid,
            "receipt",
        ), (state, how)


def test_client_records_refusals_itself(
    kek_client: costwarden.Client, seeded: Seeded, vendor_key: str, no_audit_link: None
) -> None:
    """Through the Python client a refused resolve is in the audit trail after the call
    failed, even without the audit link: r.byok_key() works while held, is refused after
    commit."""
    with kek_client.reservation(seeded.org, seeded.ws_vendor, seeded.vendor_model, USAGE) as r:
        assert r.byok_key().secret == SECRET
        r.commit(USAGE)
    with pytest.raises(errors.Forbidden, match="not_held"):
        kek_client.resolve_key(r.id)
    trail = kek_client.resolve_audit(reservation_id=r.id)
    assert [(a.outcome, a.reason, a.recorded_via, a.fingerprint) for a in trail] == [
        ("refused", "not_held", "receipt", None),
        ("granted", None, "inline", vendor_key),
    ]
    assert all(a.db_role == "postgres" for a in trail)
    assert kek_client.resolve_audit(org_id=seeded.org) == trail


def test_unrecorded_refusals_leave_a_visible_gap(
    admin_conn: psycopg.Connection[Any],
    client: costwarden.Client,
    seeded: Seeded,
    vendor_key: str,
    no_audit_link: None,
) -> None:
    """Without the audit link, a raw SQL caller that drops the receipt: the attempt number
    is still a gap in the trail (sequences are not transactional), until the receipt is
    recorded."""
    rid = reserve(client, seeded)
    call(admin_conn, RESOLVE, [rid, None, None, None])  # attempt 1: granted
    client.release(rid)
    err = refused(admin_conn, "CW005", RESOLVE, [rid, None, None, None])  # attempt 2
    attempt = int(re.search(r"attempt (\d+)", err.diag.message_primary or "")[1])  # type: ignore[index]
    trail = client.resolve_audit()
    assert [(a.attempt, a.outcome) for a in trail] == [(attempt, "unrecorded"), (1, "granted")]
    hint = err.diag.message_hint or ""
    assert hint.startswith("costwarden-refusal-receipt: ")
    record = "select costwarden.fn_byok_resolve_refusal_record(%s)"
    assert call(admin_conn, record, [hint], kek=None) == [(True,)]
    assert call(admin_conn, record, [hint], kek=None) == [(False,)]  # idempotent
    trail = client.resolve_audit()
    assert [(a.attempt, a.outcome, a.reason) for a in trail] == [
        (attempt, "refused", "not_held"),
        (1, "granted", None),
    ]
    # receipts cannot be forged
    body, mac = hint.split(": ", 1)[1].split(".")
    forged = body[:-4] + ("AAAA" if body[-4:] != "AAAA" else "BBBB") + "." + mac
    refused(admin_conn, "CW004", record, [forged], kek=None, match="p_receipt")
    refused(admin_conn, "CW004", record, [body + "." + "0" * 64], kek=None, match="signature")
    refused(admin_conn, "CW004", record, ["not a receipt"], kek=None, match="p_receipt")
    refused(admin_conn, "CW004", record, [None], kek=None, match="p_receipt is required")


def test_legacy_resolve(
    kek_client: costwarden.Client,
    seeded: Seeded,
    vendor_key: str,
    admin_conn: psycopg.Connection[Any],
) -> None:
    legacy = [None, None, seeded.org, seeded.ws_vendor]
    refused(admin_conn, "CW005", RESOLVE, legacy, match="reservation_required")
    kek_client.set_setting("byok_require_reservation", False)
    assert call(admin_conn, RESOLVE, legacy) == [("anthropic", SECRET, vendor_key)]
    key = kek_client.resolve_key(
        None, "anthropic", org_id=seeded.org, workspace_id=seeded.ws_vendor
    )
    assert key.secret == SECRET
    granted = [a for a in kek_client.resolve_audit() if a.outcome == "granted"]
    assert [(a.legacy, a.reservation_id, a.workspace_id) for a in granted] == [
        (True, None, seeded.ws_vendor)
    ] * 2
    refused(admin_conn, "CW005", RESOLVE, [None, None, seeded.org, None], match="legacy_arguments")
    refused(
        admin_conn, "CW005", RESOLVE, [None, None, seeded.org, "nope"], match="unknown_workspace"
    )
    refused(
        admin_conn, "CW005", RESOLVE, [None, None, seeded.org, seeded.ws_platform], match="not_byok"
    )
    refused(
        admin_conn,
        "CW005",
        RESOLVE,
        [None, "openai", seeded.org, seeded.ws_vendor],
        match="no_live_key",
    )
    # a reservation still binds as usual
    rid = reserve(kek_client, seeded)
    assert kek_client.resolve_key(rid).secret == SECRET


def test_resolve_holds_the_reservation_against_commit(
    dsn: str, kek_client: costwarden.Client, seeded: Seeded, vendor_key: str
) -> None:
    """Resolve share-locks the reservation: a commit waits until the resolve's
    transaction ends, so a secret is never released to a reservation that is gone."""
    rid = reserve(kek_client, seeded)
    with psycopg.connect(dsn) as a, psycopg.connect(dsn, autocommit=True) as b:
        call(a, "select 1")  # warm up
        with a.transaction():
            a.execute("select set_config('costwarden.kek', %s, true)", [KEK])
            assert a.execute(RESOLVE, [rid, None, None, None]).fetchone() is not None
            b.execute("set lock_timeout = '200ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                b.execute(
                    "select * from costwarden.fn_cost_commit(%s, %s)",
                    [rid, psycopg.types.json.Jsonb(USAGE)],
                )
    kek_client.commit(rid, USAGE)


# -- fail closed ------------------------------------------------------------------------------


def test_reserve_fails_closed_without_a_usable_key(
    client: costwarden.Client, kek_client: costwarden.Client, seeded: Seeded
) -> None:
    """byok_credential_missing is enforced even in shadow mode and with billing_enforce
    off; a key for another provider does not help."""
    client.set_budget(
        seeded.org, "workspace", seeded.ws_vendor, "day", 1_000_000_000, mode="shadow"
    )
    client.set_setting("billing_enforce", False)
    client.upsert_workspace(seeded.org, seeded.ws_vendor, billing_override="byok")
    client.upsert_workspace(seeded.org, "ws-any", billing_override="byok")
    kek_client.put_key(seeded.org, "ws-any", "openai", OPENAI_SECRET)  # no model: any provider
    for ws in (seeded.ws_vendor, "ws-any"):
        r = client.reserve(seeded.org, ws, seeded.vendor_model, USAGE, raise_on_denied=False)
        assert r.status == "denied", ws
        (reason,) = r.reasons
        assert (reason.code, reason.scope_kind, reason.scope_id, reason.enforced) == (
            "byok_credential_missing",
            "workspace",
            ws,
            True,
        )
        with pytest.raises(errors.BudgetExceeded):
            client.reserve(seeded.org, ws, seeded.vendor_model, USAGE)
    kek_client.put_key(seeded.org, seeded.ws_vendor, "anthropic", SECRET)
    assert reserve(client, seeded)


# -- rotation -----------------------------------------------------------------------------------


@pytest.fixture
def three_keys(
    client: costwarden.Client, kek_client: costwarden.Client, seeded: Seeded
) -> list[str]:
    workspaces = [seeded.ws_vendor, "ws-v2", "ws-v3"]
    for ws in workspaces[1:]:
        client.upsert_workspace(seeded.org, ws, seeded.vendor_model)
    for i, ws in enumerate(workspaces):
        kek_client.put_key(seeded.org, ws, "anthropic", f"{SECRET}-{i}")
    return workspaces


def test_rotate_kek_in_one_transaction(
    dsn: str,
    kek_client: costwarden.Client,
    seeded: Seeded,
    three_keys: list[str],
    admin_conn: psycopg.Connection[Any],
) -> None:
    steps: list[costwarden.types.KekRotateBatch] = []
    result = kek_client.rotate_kek(NEW_KEK, batch=2, progress=steps.append)
    assert (result.kek_id, result.rewrapped, result.remaining, result.batches) == (2, 3, 0, 2)
    assert [(s.rewrapped, s.remaining) for s in steps] == [(2, 1), (1, 0)]
    assert {row[3] for row in live_rows(admin_conn)} == {2}
    gens = kek_client.kek_status()
    assert [(g.kek_id, g.current, g.live_keys) for g in gens] == [(1, False, 0), (2, True, 3)]
    rid = reserve(kek_client, seeded)
    with pytest.raises(errors.Forbidden, match="kek_wrong"):
        kek_client.resolve_key(rid)  # the old KEK no longer opens anything
    with costwarden.Client(dsn, kek=NEW_KEK) as new:
        assert new.resolve_key(rid).secret == f"{SECRET}-0"
        assert new.put_key(seeded.org, "ws-v2", "anthropic", SECRET) == "sk-…9f2a"
    with pytest.raises(errors.Forbidden, match="not the key-encryption key in use"):
        kek_client.put_key(seeded.org, "ws-v2", "anthropic", SECRET)
    dump = repr(table_snapshot(admin_conn))
    assert KEK not in dump and NEW_KEK not in dump
    assert [a.after for a in kek_client.audit(action="byok_kek_rotate")] == [
        {"kek_id": 2, "rewrapped": 1, "remaining": 0},
        {"kek_id": 2, "rewrapped": 2, "remaining": 1},
    ]


class Interrupted(Exception):
    pass


def test_rotate_kek_interrupted_single_transaction_changes_nothing(
    kek_client: costwarden.Client, three_keys: list[str], admin_conn: psycopg.Connection[Any]
) -> None:
    before = table_snapshot(admin_conn)

    def stop(_step: Any) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        kek_client.rotate_kek(NEW_KEK, batch=1, progress=stop)
    assert table_snapshot(admin_conn) == before


def test_rotate_kek_resumes_after_an_interruption(
    dsn: str,
    kek_client: costwarden.Client,
    seeded: Seeded,
    three_keys: list[str],
    admin_conn: psycopg.Connection[Any],
) -> None:
    def stop(_step: Any) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        kek_client.rotate_kek(NEW_KEK, batch=1, commit_every_batch=True, progress=stop)
    # one batch committed: a mixed store, each row says which generation wraps it
    assert sorted(row[3] for row in live_rows(admin_conn)) == [1, 1, 2]
    # a new put needs the new KEK now
    with pytest.raises(errors.Forbidden):
        kek_client.put_key(seeded.org, "ws-v2", "anthropic", SECRET)
    # rerunning with the same two KEKs finishes the job
    result = kek_client.rotate_kek(NEW_KEK, batch=1, commit_every_batch=True)
    assert (result.kek_id, result.rewrapped, result.remaining) == (2, 2, 0)
    assert {row[3] for row in live_rows(admin_conn)} == {2}
    with costwarden.Client(dsn, kek=NEW_KEK) as new:
        for i, ws in enumerate(three_keys):
            r = new.reserve(seeded.org, ws, seeded.vendor_model, USAGE)
            assert new.resolve_key(r.reservation_id).secret == f"{SECRET}-{i}"
        # a rerun when everything is done is a no-op
        again = kek_client.rotate_kek(NEW_KEK)
        assert (again.rewrapped, again.remaining) == (0, 0)


def test_rotate_kek_refusals(
    kek_client: costwarden.Client,
    three_keys: list[str],
    admin_conn: psycopg.Connection[Any],
) -> None:
    rotate = "select * from costwarden.fn_byok_kek_rotate(10)"
    other = "yet-another-kek-0123456789abcdefghijkl"
    before = table_snapshot(admin_conn)
    refused(
        admin_conn,
        "CW005",
        rotate,
        kek=other,
        settings={"costwarden.kek_new": NEW_KEK},
        match="neither costwarden.kek nor costwarden.kek_new",
    )
    refused(admin_conn, "CW005", rotate, settings={"costwarden.kek_new": KEK}, match="must differ")
    refused(admin_conn, "CW005", rotate, match="costwarden.kek_new is not set")
    refused(
        admin_conn, "CW005", rotate, settings={"costwarden.kek_new": "short"}, match="too short"
    )
    refused(
        admin_conn,
        "CW004",
        "select * from costwarden.fn_byok_kek_rotate(0)",
        settings={"costwarden.kek_new": NEW_KEK},
        match="p_batch",
    )
    assert table_snapshot(admin_conn) == before


def test_rotate_kek_on_an_empty_store(kek_client: costwarden.Client) -> None:
    result = kek_client.rotate_kek(NEW_KEK)
    assert (result.kek_id, result.rewrapped, result.remaining) == (1, 0, 0)
    assert [g.current for g in kek_client.kek_status()] == [True]


# -- the unlogged input channel -----------------------------------------------------------------


def test_secret_input_channel(admin_conn: psycopg.Connection[Any]) -> None:
    with admin_conn.transaction():
        admin_conn.execute("set local role costwarden_service")
        with admin_conn.cursor().copy(
            "copy costwarden.secret_input (name, value) from stdin"
        ) as copy:
            copy.write_row(("kek", KEK))
            copy.write_row(("secret", "tab\there"))
            copy.write_row(("unknown", "ignored"))
            copy.write_row(("kek_new", None))
        got = admin_conn.execute(
            "select current_setting('costwarden.kek'), current_setting('costwarden.byok_secret'), "
            "current_setting('costwarden.kek_new', true)"
        ).fetchone()
        assert got == (KEK, "tab\there", None)
    assert admin_conn.execute("select count(*) from costwarden.secret_input").fetchone() == (0,)
    # transaction-local: gone after the transaction
    assert admin_conn.execute("select current_setting('costwarden.kek', true)").fetchone() in [
        ("",),
        (None,),
    ]


def test_framed_secret_input_channel(admin_conn: psycopg.Connection[Any]) -> None:
    """The client's channel: one line name:base64(value); any value, even one with a
    tab or a backslash, goes through exactly; a line that does not decode (bad base64,
    a NUL) sets nothing and raises nothing."""
    with admin_conn.transaction():
        admin_conn.execute("set local role costwarden_service")
        with admin_conn.cursor().copy(costwarden._sql.STAGE_SECRETS) as copy:
            copy.write_row((costwarden._sql.stage_line("kek", KEK),))
            copy.write_row((costwarden._sql.stage_line("secret", "tab\there \\N"),))
            copy.write_row((costwarden._sql.stage_line("kek_new", "nul\x00byte"),))
            copy.write_row(("unknown:" + "aWdub3JlZA==",))
            copy.write_row(("kek_new:not base64!",))
        got = admin_conn.execute(
            "select current_setting('costwarden.kek'), current_setting('costwarden.byok_secret'), "
            "current_setting('costwarden.kek_new', true)"
        ).fetchone()
        assert got == (KEK, "tab\there \\N", None)
    assert admin_conn.execute("select count(*) from costwarden.secret_input_base64").fetchone() == (
        0,
    )


# -- roles and function properties ------------------------------------------------------------

ADMIN_ONLY = [
    "fn_byok_key_put(text,text,text,text)",
    "fn_byok_key_revoke(text,text,text)",
    "fn_byok_key_list(text,text,boolean)",
    "fn_byok_kek_status()",
    "fn_byok_kek_rotate(integer)",
    "fn_byok_resolve_audit(text,uuid,integer)",
]
SERVICE = ["fn_byok_key_resolve_v2(uuid,text,text,text)", "fn_byok_resolve_refusal_record(text)"]


def test_grants(admin_conn: psycopg.Connection[Any]) -> None:
    for fn in ADMIN_ONLY + SERVICE:
        for role, allowed in (
            ("costwarden_admin", True),
            ("costwarden_service", fn in SERVICE),
            ("costwarden_tenant", False),
            ("public", False),
        ):
            row = admin_conn.execute(
                "select has_function_privilege(%s, %s, 'execute')", [role, f"costwarden.{fn}"]
            ).fetchone()
            assert row == (allowed,), (fn, role)
    for role, allowed in (
        ("costwarden_admin", True),
        ("costwarden_service", True),
        ("costwarden_tenant", False),
    ):
        assert admin_conn.execute(
            "select has_table_privilege(%s, 'costwarden.secret_input', 'insert'), "
            "has_table_privilege(%s, 'costwarden.secret_input', 'select')",
            [role, role],
        ).fetchone() == (allowed, False)
    for table in ("_byok_keys", "_byok_keks", "_byok_resolve_log", "_byok_receipt_key"):
        for role in ("costwarden_admin", "costwarden_service", "costwarden_tenant"):
            assert admin_conn.execute(
                "select has_table_privilege(%s, %s, 'select')", [role, f"costwarden.{table}"]
            ).fetchone() == (False,)


def test_function_properties(admin_conn: psycopg.Connection[Any]) -> None:
    rows = admin_conn.execute(
        "select p.proname, p.prosecdef, p.proisstrict, p.proconfig from pg_proc p "
        "where p.pronamespace = 'costwarden'::regnamespace "
        "and (p.proname like 'fn\\_byok\\_%' or p.proname = '_secret_input_set')"
    ).fetchall()
    assert len(rows) == 9
    for name, secdef, strict, config in rows:
        assert secdef and not strict, name
        assert config == ["search_path=pg_catalog, pg_temp"], name


def test_roles_in_action(
    admin_conn: psycopg.Connection[Any], client: costwarden.Client, seeded: Seeded
) -> None:
    put = [seeded.org, seeded.ws_vendor, "anthropic", SECRET]
    refused(admin_conn, "42501", PUT, put, role="costwarden_service")
    refused(admin_conn, "42501", PUT, put, role="costwarden_tenant")
    assert call(admin_conn, PUT, put, role="costwarden_admin") == [("sk-…9f2a",)]
    rid = reserve(client, seeded)
    resolve = [rid, None, None, None]
    refused(admin_conn, "42501", RESOLVE, resolve, role="costwarden_tenant")
    assert call(admin_conn, RESOLVE, resolve, role="costwarden_service")[0][1] == SECRET
    assert call(admin_conn, RESOLVE, resolve, role="costwarden_admin")[0][1] == SECRET
    refused(
        admin_conn,
        "42501",
        "select * from costwarden.fn_byok_key_list()",
        role="costwarden_service",
    )


# -- the Python client -------------------------------------------------------------------------


def test_client_reads_the_kek_from_the_environment(
    dsn: str, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COSTWARDEN_KEK", KEK)
    with costwarden.Client(dsn) as c:
        assert c.put_key(seeded.org, seeded.ws_vendor, "anthropic", SECRET) == "sk-…9f2a"
        with c.reservation(seeded.org, seeded.ws_vendor, seeded.vendor_model, USAGE) as r:
            key = r.byok_key()
            assert key.secret == SECRET and "secret" not in repr(key)
    monkeypatch.delenv("COSTWARDEN_KEK")
    with costwarden.Client(dsn) as c:
        with pytest.raises(errors.Forbidden, match=r"costwarden\.kek is not set"):
            c.put_key(seeded.org, seeded.ws_vendor, "anthropic", SECRET)
        with (
            c.reservation(seeded.org, seeded.ws_vendor, seeded.vendor_model, USAGE) as r,
            pytest.raises(errors.Forbidden, match="kek_missing"),
        ):
            r.byok_key()


def test_call_repr_hides_staged_values() -> None:
    c = costwarden._sql.byok_key_put("o", "w", "anthropic", SECRET)
    assert SECRET not in repr(c) and SECRET not in repr(c.params)
    r = costwarden._sql.byok_kek_rotate(NEW_KEK, 10)
    assert NEW_KEK not in repr(r)


def test_async_client(dsn: str, seeded: Seeded) -> None:
    async def main() -> None:
        async with costwarden.AsyncClient(dsn, kek=KEK) as c:
            assert await c.put_key(seeded.org, seeded.ws_vendor, "anthropic", SECRET) == "sk-…9f2a"
            async with c.reservation(
                seeded.org, seeded.ws_vendor, seeded.vendor_model, USAGE, ttl=timedelta(minutes=1)
            ) as r:
                assert (await r.byok_key()).secret == SECRET
                rid = r.id
            with pytest.raises(errors.Forbidden, match="not_held"):
                await c.resolve_key(rid)
            assert [k.fingerprint for k in await c.list_keys(seeded.org)] == ["sk-…9f2a"]
            assert await c.revoke_key(seeded.org, seeded.ws_vendor, "anthropic") is True

    asyncio.run(main())
