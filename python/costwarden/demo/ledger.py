"""The ledger in the demo (`costwarden demo`): every chain verified in SQL and in
Python, a digest saved, and a tampered copy of an export caught. The database is not
modified. The rules are in costwarden.ledger (the verifier) and docs/ledger.md."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from .. import ledger
from .._text import table
from ..client import Client

Echo = Callable[[str], None]


def demo_section(client_or_dsn: Client | str, echo: Echo = print) -> bool:
    """`costwarden demo`: verify every chain (in SQL and in Python), save a digest, then
    show that a tampered copy of an export is caught. The database is not modified.
    Returns True when the real ledger verified and the tampered copy was caught."""
    client = (
        Client(client_or_dsn, on_unavailable="closed")
        if isinstance(client_or_dsn, str)
        else client_or_dsn
    )
    try:
        return _demo(client, echo)
    finally:
        if isinstance(client_or_dsn, str):
            client.close()


def _demo(client: Client, echo: Echo) -> bool:
    echo("== the ledger: one sha256 chain per org ==")
    in_sql = client.ledger_verify()
    if not in_sql:
        echo("The ledger is empty: nothing to verify yet.")
        return True
    with tempfile.TemporaryDirectory(prefix="costwarden-ledger-demo-") as tmp:
        digest = ledger.take_digest(client)
        digest_path = Path(tmp) / "digest.json"
        ledger.write_digest(digest, digest_path)
        digest = ledger.read_digest(digest_path)
        in_python = {c.org_id: c for c in ledger.verify_database(client, digests=[digest]).chains}
        echo(
            table(
                [
                    (
                        v.org_id,
                        v.entries,
                        "ok" if v.ok else f"FAILED at seq {v.first_bad_seq}",
                        "ok"
                        if in_python[v.org_id].ok
                        else f"FAILED at seq {in_python[v.org_id].first_bad_seq}",
                    )
                    for v in in_sql
                    if v.org_id in in_python
                ],
                ["org", "entries", "fn_ledger_verify (SQL)", "Python verifier"],
            )
        )
        intact = all(v.ok for v in in_sql) and all(c.ok for c in in_python.values())
        echo(
            f"Saved a digest of {len(digest.heads)} chain head(s) outside the database "
            "(a temporary file here; keep yours somewhere a database superuser cannot reach)."
        )

        export_path = Path(tmp) / "ledger.jsonl"
        with export_path.open("w", encoding="utf-8") as f:
            n = ledger.export(client, f)
        lines = export_path.read_text(encoding="utf-8").splitlines()
        rows = [ledger.loads_row(line) for line in lines]
        victim = next((i for i, r in enumerate(rows) if r["entry_type"] == "charge"), 0)
        row = rows[victim]
        old = row["amount_micros"]
        row["amount_micros"] = old + 1_000_000 if old >= 0 else old - 1_000_000
        lines[victim] = ledger.dumps_row(row)
        tampered = Path(tmp) / "ledger-tampered.jsonl"
        tampered.write_text("\n".join(lines) + "\n", encoding="utf-8")
        echo(
            f"Exported {n} entries to JSON Lines, then changed a copy: org {row['org_id']!r}, "
            f"seq {row['seq']}, amount_micros {old} -> {row['amount_micros']}."
        )
        report = ledger.verify_export_file(tampered, digests=[digest])
        caught = [c for c in report.chains if not c.ok]
        for c in caught:
            echo(f"  caught: org {c.org_id!r}, first bad seq {c.first_bad_seq}: {c.detail}")
        if not caught:
            echo("  NOT caught: the verifier accepted the tampered copy")
        echo("(`costwarden ledger digest --out FILE` and `costwarden ledger verify --digest FILE`")
        echo(" do the same on your data; nothing in the database was changed.)")
        return intact and bool(caught)
