"""The Python side of the ledger without a database: the canonical encoders, the
streaming verifier's head and digest checks, and digest files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from costwarden import ledger
from costwarden import types as t


def make_chain(n: int, org: str = "acme") -> list[dict[str, Any]]:
    rows = []
    prev = ledger.ZERO_HASH
    for seq in range(1, n + 1):
        raw: dict[str, Any] = {
            "org_id": org, "seq": seq, "entry_type": "charge",
            "reservation_id": "91b0c06e-dd27-4a10-80df-bd38b2474f05", "workspace_id": "ws",
            "user_id": None, "key_id": None, "model": "openai/gpt-4o",
            "billing_mode": "platform_managed", "usage": {"input_tokens": seq},
            "tokens": seq, "amount_micros": 10 * seq, "pricing_snapshot_id": 1,
            "approximate": False, "late": False, "source": None, "reason": None,
            "created_at": "2026-01-01T00:00:00.000000Z", "prev_hash": prev.hex(),
        }  # fmt: skip
        prev = ledger.compute_hash(prev, raw)
        raw["entry_hash"] = prev.hex()
        rows.append(raw)
    return rows


def verify(
    rows: list[dict[str, Any]],
    heads: dict[str, tuple[int, str]] | None = None,
    digests: tuple[ledger.Digest, ...] = (),
) -> ledger.ChainResult:
    v = ledger.ChainVerifier(digests)
    for r in rows:
        v.add(r)
    (result,) = v.results(heads)
    return result


@pytest.mark.parametrize(
    "value,expected",
    [
        (7, "7"),
        (-3, "-3"),
        (Decimal("12.50"), "12.5"),
        (Decimal("1E+3"), "1000"),
        (Decimal("0.000"), "0"),
        (Decimal("-0"), "0"),
        (Decimal("-0.50"), "-0.5"),
        (Decimal("0.0000001"), "0.0000001"),
        (Decimal("100"), "100"),
    ],
)
def test_canon_number(value: Any, expected: str) -> None:
    assert ledger.canon_number(value) == expected


@pytest.mark.parametrize("value", [True, 1.5, Decimal("NaN"), Decimal("Infinity"), "1", None])
def test_canon_number_refuses_inexact_values(value: Any) -> None:
    with pytest.raises(ledger.LedgerFormatError):
        ledger.canon_number(value)


def test_canon_text_and_usage() -> None:
    assert ledger.canon_text('a"b\\c\n\r\t\b\f\x01\x1f\x7fé/') == (
        '"a\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001f\x7fé/"'
    )
    assert ledger.canon_text(None) == "null"
    usage = {"é": 1, "zz": Decimal("2.50"), "Zz": 3, "input_tokens": 4, "😀": 5, "\uffff": 6}
    assert ledger.canon_usage(usage) == (
        '{"Zz":3,"input_tokens":4,"zz":2.5,"é":1,"\uffff":6,"😀":5}'
    )  # UTF-8 byte order: U+FFFF (ef bf bf) before U+1F600 (f0 9f 98 80)
    assert ledger.canon_usage({}) == "{}"
    assert ledger.canon_usage(None) == "null"


def test_canon_timestamp_is_utc_with_microseconds() -> None:
    assert ledger.canon_timestamp("2026-01-01T01:30:00+01:30") == '"2026-01-01T00:00:00.000000Z"'
    assert ledger.canon_timestamp("2026-01-01T00:00:00.5Z") == '"2026-01-01T00:00:00.500000Z"'
    assert (
        ledger.canon_timestamp(datetime(2026, 1, 1, 0, 0, 0, 7, tzinfo=UTC))
        == '"2026-01-01T00:00:00.000007Z"'
    )
    for bad in ("2026-01-01T00:00:00", "yesterday", 5):
        with pytest.raises(ledger.LedgerFormatError):
            ledger.canon_timestamp(bad)


def test_payload_errors_name_the_field() -> None:
    (row,) = make_chain(1)
    fast = ledger.canonical_payload(row)
    assert fast == ledger._canonical_payload_slowly(row)
    assert [line.split("=")[0] for line in fast.decode().splitlines()[1:]] == [
        name for name, _ in ledger.FIELDS
    ]
    with pytest.raises(ledger.LedgerFormatError, match="field late is missing"):
        ledger.canonical_payload({k: v for k, v in row.items() if k != "late"})
    with pytest.raises(ledger.LedgerFormatError, match=r"^usage: "):
        ledger.canonical_payload({**row, "usage": {"images": "2"}})
    with pytest.raises(ledger.LedgerFormatError, match=r"^reservation_id: "):
        ledger.canonical_payload({**row, "reservation_id": "not-a-uuid"})
    # a lone surrogate has no UTF-8 form: a format error naming the field, not a crash
    with pytest.raises(ledger.LedgerFormatError, match=r"^workspace_id: "):
        ledger.canonical_payload({**row, "workspace_id": "w\ud800"})


def test_export_lines_round_trip_exactly() -> None:
    (row,) = make_chain(1)
    row["usage"] = {"audio_seconds": Decimal("12.50"), "input_tokens": 3}
    row["reason"] = 'quote " and é'
    line = ledger.dumps_row(row)
    assert line.isascii() and '"audio_seconds":12.50' in line
    assert list(json.loads(line)) == list(ledger.EXPORT_FIELDS)
    assert ledger.loads_row(line) == row
    with pytest.raises(ledger.LedgerFormatError):
        ledger.loads_row('{"amount_micros": NaN}')
    with pytest.raises(ledger.LedgerFormatError):
        ledger.loads_row("[1]")


def test_an_export_line_is_read_one_way_only() -> None:
    """A field named twice (which a reader could take either way), a field the export
    does not have, or a number Python will not read is a format error, never a verdict
    or a crash."""
    (row,) = make_chain(1)
    line = ledger.dumps_row(row)
    twice = '{"amount_micros":999999999,' + line[1:]
    with pytest.raises(ledger.LedgerFormatError, match="field amount_micros appears twice"):
        ledger.loads_row(twice)
    nested = line.replace('"usage":{', '"usage":{"input_tokens":1,', 1)
    with pytest.raises(ledger.LedgerFormatError, match="appears twice"):
        ledger.loads_row(nested)
    with pytest.raises(ledger.LedgerFormatError, match="unknown field note"):
        ledger.loads_row('{"note":"forged",' + line[1:])
    with pytest.raises(ledger.LedgerFormatError, match="not readable"):
        ledger.loads_row(line.replace('"tokens":', '"tokens":' + "9" * 5000 + ',"x":', 1))


def test_head_checks() -> None:
    rows = make_chain(4)
    last = rows[-1]["entry_hash"]
    assert verify(rows, {"acme": (4, last)}).ok
    assert verify(rows, {"acme": (3, rows[2]["entry_hash"])}).first_bad_seq == 4
    assert verify(rows[:3], {"acme": (4, last)}).first_bad_seq == 4
    assert verify(rows, {"acme": (4, "0" * 64)}).first_bad_seq == 4
    assert verify(rows, {}).first_bad_seq == 1  # no head record
    assert verify(rows).ok  # no heads (an export file): not checked


def test_chain_checks_on_a_stream() -> None:
    rows = make_chain(5)
    bad = [dict(r) for r in rows]
    bad[2]["prev_hash"] = "f" * 64
    r = verify(bad)
    assert r.first_bad_seq == 3 and r.detail is not None and "broken link" in r.detail
    bad = [dict(r) for r in rows]
    bad[0]["prev_hash"] = "f" * 64
    assert verify(bad).detail == "prev_hash of seq 1 is not 32 zero bytes"
    r = verify([rows[0], rows[1], rows[1], rows[2]])
    assert r.first_bad_seq == 2 and r.detail is not None and "more than once" in r.detail
    r = verify([*rows[:2], {**rows[2], "entry_hash": "XYZ"}])
    assert r.first_bad_seq == 3 and r.detail is not None and "entry_hash" in r.detail


def digest_of(heads: dict[str, tuple[int, str]], name: str = "db") -> ledger.Digest:
    return ledger.Digest("123", name, datetime(2026, 1, 1, tzinfo=UTC), heads)


def test_digest_checks() -> None:
    rows = make_chain(5)
    pinned = digest_of({"acme": (3, rows[2]["entry_hash"])})
    assert verify(rows, digests=(pinned,)).ok
    assert verify(rows[:2], digests=(pinned,)).first_bad_seq == 3  # removed since
    rewritten = digest_of({"acme": (3, "a" * 64)})
    r = verify(rows, digests=(rewritten,))
    assert r.first_bad_seq == 3 and r.detail is not None and "rewritten" in r.detail
    missing = digest_of({"other": (2, "b" * 64)})
    v = ledger.ChainVerifier((missing,))
    for row in rows:
        v.add(row)
    results = {c.org_id: c for c in v.results()}
    assert results["acme"].ok
    assert results["other"].entries == 0 and results["other"].first_bad_seq == 1


def test_digest_files(tmp_path: Path) -> None:
    d = digest_of({"acme": (3, "c" * 64), "b": (0, "0" * 64)})
    path = tmp_path / "d.json"
    ledger.write_digest(d, path)
    back = ledger.read_digest(path)
    assert (back.system_identifier, back.database_name, back.taken_at, dict(back.heads)) == (
        "123", "db", d.taken_at, dict(d.heads),
    )  # fmt: skip
    back.check_identity(t.DatabaseIdentity(system_identifier="123", database_name="db"))
    with pytest.raises(ledger.DigestError, match="not to this one"):
        back.check_identity(t.DatabaseIdentity(system_identifier="123", database_name="x"))
    doc = json.loads(path.read_text())
    doc["chains"].append(dict(doc["chains"][0]))
    path.write_text(json.dumps(doc))
    with pytest.raises(ledger.DigestError, match="appears twice"):
        ledger.read_digest(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ledger.DigestError):
        ledger.read_digest(path)
