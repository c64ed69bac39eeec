"""Property: for random entries, the chain PostgreSQL computes is the chain the Python
verifier recomputes from the export (two independent implementations of the canonical
payload, docs/ledger.md)."""

from __future__ import annotations

import itertools
import json
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import costwarden
from costwarden import ledger
from costwarden._sql import exact_json
from ledger_helpers import Conn

UNITS = (
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "images",
    "audio_seconds",
    "characters",
    "pages",
    "requests",
)
TRICKY = ['"', "\\", "\n", "\r", "\t", "\b", "\f", "\x01", "\x1f", "\x7f", "é", "ß", "€", "😀",
          "\u2028", "'", "=", "{", "}", " "]  # fmt: skip

_chars = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
text = st.text(st.one_of(_chars, st.sampled_from(TRICKY)), max_size=12)
identifier = text.filter(lambda s: s != "" and s == s.strip(" "))
number = st.one_of(
    st.integers(min_value=0, max_value=2**63 - 1),
    st.integers(min_value=-(10**6), max_value=0),
    st.decimals(min_value=-(10**12), max_value=10**15, allow_nan=False, places=6),
    st.decimals(min_value=0, max_value=10**6, allow_nan=False, places=12),
    st.sampled_from([Decimal("1.500"), Decimal("0.000"), Decimal("1E+3"), Decimal("100")]),
)
usage = st.one_of(
    st.none(),
    st.dictionaries(st.one_of(st.sampled_from(UNITS), text), number, max_size=6),
)
append = st.fixed_dictionaries(
    {
        "p_entry_type": st.sampled_from(["charge", "spend_report", "adjustment"]),
        "p_amount_micros": st.integers(min_value=0, max_value=2**62),
        "p_reservation_id": st.one_of(st.none(), st.uuids()),
        "p_workspace_id": st.one_of(st.none(), text),
        "p_user_id": st.one_of(st.none(), text),
        "p_key_id": st.one_of(st.none(), text),
        "p_model": st.one_of(st.none(), text),
        "p_billing_mode": st.one_of(st.none(), st.sampled_from(["platform_managed", "byok"])),
        "p_usage": usage,
        "p_tokens": st.integers(min_value=0, max_value=2**63 - 1),
        "p_pricing_snapshot_id": st.one_of(st.none(), st.integers(1, 2**63 - 1)),
        "p_approximate": st.booleans(),
        "p_late": st.booleans(),
        "p_source": st.one_of(st.none(), text),
        "p_reason": st.one_of(st.none(), text),
    }
)
adjust = st.fixed_dictionaries(
    {
        "workspace": identifier,
        "amount": st.integers(min_value=-(10**15), max_value=10**15).filter(bool),
        "reason": text.filter(lambda s: s.strip() != ""),
    }
)
entry = st.one_of(st.tuples(st.just("append"), append), st.tuples(st.just("adjust"), adjust))
_orgs = itertools.count()


def _append(conn: Conn, org: str, args: dict[str, Any]) -> None:
    args = {**args, "p_org_id": org}
    if args["p_entry_type"] == "adjustment":
        args["p_amount_micros"] = -args["p_amount_micros"]
    args["p_usage"] = None if args["p_usage"] is None else exact_json(args["p_usage"])
    names = ", ".join(f"{k} => %({k})s" for k in args)
    conn.execute(
        f"select costwarden._ledger_append({names})".replace(
            "p_usage => %(p_usage)s", "p_usage => %(p_usage)s::jsonb"
        ),
        args,
    )


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(org=identifier, entries=st.lists(entry, min_size=1, max_size=6))
def test_sql_chain_equals_python_chain(
    admin_conn: Conn,
    client: costwarden.Client,
    org: str,
    entries: list[tuple[str, dict[str, Any]]],
) -> None:
    org = f"{org}#{next(_orgs)}"  # one fresh chain per example, in the same database
    admin_conn.execute("select costwarden.fn_org_upsert(p_org_id => %s)", (org,))
    for kind, args in entries:
        if kind == "append":
            _append(admin_conn, org, args)
        else:
            admin_conn.execute(
                "select costwarden.fn_workspace_upsert(p_org_id => %s, p_workspace_id => %s)",
                (org, args["workspace"]),
            )
            admin_conn.execute(
                "select * from costwarden.fn_ledger_adjust(p_org_id => %s, "
                "p_workspace_id => %s, p_amount_micros => %s::bigint, p_reason => %s)",
                (org, args["workspace"], args["amount"], args["reason"]),
            )

    entries_sql = client.ledger_export_rows(org)
    assert [e.seq for e in entries_sql] == list(range(1, len(entries) + 1))
    prev = ledger.ZERO_HASH
    for e in entries_sql:
        raw = ledger.entry_to_raw(e)
        # through a JSON Lines line and back, as `costwarden ledger export` writes it
        raw = ledger.loads_row(ledger.dumps_row(raw))
        assert raw["prev_hash"] == prev.hex()
        assert ledger.canonical_payload(raw) == ledger._canonical_payload_slowly(raw)
        computed = ledger.compute_hash(prev, raw)
        assert computed.hex() == e.entry_hash, ledger.canonical_payload(raw)
        prev = computed
    (verdict,) = client.ledger_verify(org)
    assert verdict.ok and verdict.entries == len(entries)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=st.one_of(text, st.none()))
def test_canon_text_is_what_to_json_writes(admin_conn: Conn, value: str | None) -> None:
    row = admin_conn.execute(
        "select coalesce(to_json(%s::text)::text, 'null')", (value,)
    ).fetchone()
    assert row is not None and ledger.canon_text(value) == row[0]
    if value is not None:
        assert json.loads(ledger.canon_text(value)) == value
