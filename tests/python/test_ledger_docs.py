"""docs/ledger.md's worked example stays true: its hashes recompute from its payloads
(with the page's own shell and Python snippets), costwarden's Python encoder builds
those payloads from the page's export lines, and PostgreSQL builds them too."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from costwarden import ledger
from ledger_helpers import Conn

DOC = Path(__file__).resolve().parents[2] / "docs" / "ledger.md"


def _block(text: str, marker: str, lang: str) -> str:
    m = re.search(
        rf"<!-- ledger-example:{re.escape(marker)} -->\n```{lang}\n(.*?)\n```", text, re.DOTALL
    )
    assert m, f"docs/ledger.md: no ```{lang} block after <!-- ledger-example:{marker} -->"
    return m.group(1)


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    text = DOC.read_text(encoding="utf-8")
    export = [ledger.loads_row(line) for line in _block(text, "export", "jsonl").splitlines()]
    payloads = [_block(text, f"payload {i}", "text") + "\n" for i in (1, 2, 3)]
    table = text.split("<!-- ledger-example:hashes -->", 1)[1].split("\n\n", 1)[0]
    hashes = [
        (int(seq), prev, h)
        for seq, prev, h in re.findall(
            r"\| (\d+) \| `([0-9a-f]{64})` \| `([0-9a-f]{64})` \|", table
        )
    ]
    return {
        "text": text,
        "export": export,
        "payloads": payloads,
        "hashes": hashes,
        "shell": _block(text, "shell", "sh"),
        "python": _block(text, "python", "python"),
    }


def test_the_hashes_recompute_from_the_payloads(example: dict[str, Any]) -> None:
    assert [seq for seq, _p, _h in example["hashes"]] == [1, 2, 3]
    prev = bytes(32)
    for payload, (_seq, prev_hex, hash_hex) in zip(
        example["payloads"], example["hashes"], strict=True
    ):
        assert prev.hex() == prev_hex
        prev = hashlib.sha256(prev + payload.encode("utf-8")).digest()
        assert prev.hex() == hash_hex


def test_the_python_encoder_builds_the_payloads_from_the_export(example: dict[str, Any]) -> None:
    for raw, payload, (seq, prev_hex, hash_hex) in zip(
        example["export"], example["payloads"], example["hashes"], strict=True
    ):
        assert raw["seq"] == seq and raw["prev_hash"] == prev_hex and raw["entry_hash"] == hash_hex
        assert ledger.canonical_payload(raw).decode("utf-8") == payload
    verifier = ledger.ChainVerifier()
    for raw in example["export"]:
        verifier.add(raw)
    (result,) = verifier.results()
    assert result.ok and result.entries == 3


def _write_payloads(example: dict[str, Any], tmp: Path) -> list[str]:
    for i, payload in enumerate(example["payloads"], start=1):
        (tmp / f"e{i}.txt").write_bytes(payload.encode("utf-8"))
    return [h for _s, _p, h in example["hashes"]]


def test_the_python_snippet(example: dict[str, Any], tmp_path: Path) -> None:
    expected = _write_payloads(example, tmp_path)
    assert len(example["python"].splitlines()) == 3  # "three lines of any language"
    out = subprocess.run(
        [sys.executable, "-c", example["python"]],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.split() == expected


def test_the_shell_snippet(example: dict[str, Any], tmp_path: Path) -> None:
    if not (shutil.which("xxd") and shutil.which("sha256sum") and shutil.which("bash")):
        pytest.skip("xxd / sha256sum not installed")
    expected = _write_payloads(example, tmp_path)
    out = subprocess.run(
        ["bash", "-c", example["shell"]], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == expected


def test_postgres_builds_the_same_payloads(example: dict[str, Any], admin_conn: Conn) -> None:
    admin_conn.execute("select costwarden.fn_org_upsert(p_org_id => 'acme')")
    for raw in example["export"]:
        admin_conn.execute(
            "insert into costwarden._ledger values (%(org_id)s, %(seq)s, %(entry_type)s, "
            "%(reservation_id)s, %(workspace_id)s, %(user_id)s, %(key_id)s, %(model)s, "
            "%(billing_mode)s, %(usage)s::jsonb, %(tokens)s, %(amount_micros)s, "
            "%(pricing_snapshot_id)s, %(approximate)s, %(late)s, %(source)s, %(reason)s, "
            "%(created_at)s, decode(%(prev_hash)s, 'hex'), decode(%(entry_hash)s, 'hex'))",
            {**raw, "usage": None if raw["usage"] is None else ledger._json(raw["usage"])},
        )
    last = example["export"][-1]
    admin_conn.execute(
        "insert into costwarden._ledger_heads values ('acme', %s, decode(%s, 'hex'))",
        (last["seq"], last["entry_hash"]),
    )
    payloads = [
        r[0]
        for r in admin_conn.execute(
            "select costwarden._ledger_payload(l) from costwarden._ledger as l order by seq"
        ).fetchall()
    ]
    assert payloads == example["payloads"]
    row = admin_conn.execute(
        "select ok, entries from costwarden.fn_ledger_verify(p_org_id => 'acme')"
    ).fetchone()
    assert row == (True, 3)
