"""`costwarden ledger export|digest|verify|adjust` against a real database."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

import costwarden
from costwarden import ledger
from costwarden.cli import main
from cwtest import Seeded
from ledger_helpers import ACME_ENTRIES, GLOBEX_ENTRIES, build_chains, tampering


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_export_digest_verify_round_trip(
    client: costwarden.Client, seeded: Seeded, dsn: str, tmp_path: Path
) -> None:
    build_chains(client, seeded)
    export = tmp_path / "ledger.jsonl"
    r = cli("--dsn", dsn, "ledger", "export", "--out", str(export))
    assert r.exit_code == 0, r.output
    lines = export.read_text().splitlines()
    assert len(lines) == ACME_ENTRIES + GLOBEX_ENTRIES
    first = json.loads(lines[0])
    assert list(first) == list(ledger.EXPORT_FIELDS)
    assert (first["org_id"], first["seq"], first["prev_hash"]) == ("acme", 1, "0" * 64)

    r = cli("--dsn", dsn, "ledger", "export", "--org", "globex")  # to stdout
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == GLOBEX_ENTRIES

    digest = tmp_path / "digest.json"
    r = cli("--dsn", dsn, "ledger", "digest", "--out", str(digest))
    assert r.exit_code == 0, r.output
    doc = json.loads(digest.read_text())
    assert doc["format"] == ledger.DIGEST_FORMAT
    assert doc["database"]["database_name"] == client.ledger_identity().database_name
    assert [(c["org_id"], c["seq"]) for c in doc["chains"]] == [
        ("acme", ACME_ENTRIES),
        ("globex", GLOBEX_ENTRIES),
    ]

    r = cli("--dsn", dsn, "ledger", "verify", "--digest", str(digest), "--sql")
    assert r.exit_code == 0, r.output
    assert "ledger OK: 2 chain(s), 8 entries" in r.stdout
    assert "fn_ledger_verify" in r.stdout and "FAILED" not in r.stdout

    r = cli("ledger", "verify", "--from-export", str(export), "--digest", str(digest))
    assert r.exit_code == 0, r.output  # no --dsn needed: no database is touched
    assert "from an export file" in r.stdout


def test_verify_reports_the_first_bad_seq_and_fails(
    client: costwarden.Client, seeded: Seeded, dsn: str, tmp_path: Path
) -> None:
    build_chains(client, seeded)
    digest = tmp_path / "digest.json"
    assert cli("--dsn", dsn, "ledger", "digest", "--out", str(digest)).exit_code == 0
    with tampering(dsn) as conn:
        conn.execute(
            "update costwarden._ledger set amount_micros = 1 where org_id = 'acme' and seq = 4"
        )
    r = cli("--dsn", dsn, "ledger", "verify", "--digest", str(digest), "--sql")
    assert r.exit_code == 1
    python_row, sql_row = [line for line in r.stdout.splitlines() if line.startswith("acme")]
    for row in (python_row, sql_row):
        assert "FAILED" in row and " 4 " in row and "altered" in row
    assert "ledger verification FAILED: 1 of 2 chain(s) bad" in r.stdout

    r = cli("--dsn", dsn, "ledger", "verify", "--org", "globex")
    assert r.exit_code == 0 and "acme" not in r.stdout

    export = tmp_path / "ledger.jsonl"
    assert cli("--dsn", dsn, "ledger", "export", "--out", str(export)).exit_code == 0
    r = cli("ledger", "verify", "--from-export", str(export))
    assert r.exit_code == 1 and "FAILED" in r.stdout


def test_bad_digest_files_are_clear_errors(
    client: costwarden.Client, seeded: Seeded, dsn: str, tmp_path: Path, fresh_database: object
) -> None:
    build_chains(client, seeded)
    digest = tmp_path / "digest.json"
    assert cli("--dsn", dsn, "ledger", "digest", "--out", str(digest)).exit_code == 0
    good = json.loads(digest.read_text())

    def verify_with(doc: object, *extra: str) -> Result:
        path = tmp_path / "bad.json"
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return cli("--dsn", dsn, "ledger", "verify", "--digest", str(path), *extra)

    for doc, message in [
        ("{not json", "not JSON"),
        ({**good, "format": "something-else"}, '"format"'),
        ({**good, "chains": [{"org_id": "acme", "seq": "3", "entry_hash": "00"}]}, "seq"),
        ({**good, "chains": [{"org_id": "acme", "seq": 3, "entry_hash": "xyz"}]}, "entry_hash"),
        ({k: v for k, v in good.items() if k != "database"}, '"database"'),
    ]:
        r = verify_with(doc)
        assert r.exit_code != 0
        assert "malformed digest" in r.output or "not a digest" in r.output, r.output
        assert message in r.output

    other = {**good, "database": {**good["database"], "database_name": "someone_else"}}
    r = verify_with(other)
    assert r.exit_code != 0 and "not to this one" in r.output
    r = verify_with(other, "--ignore-identity")
    assert r.exit_code == 0, r.output


def test_adjust_command(client: costwarden.Client, seeded: Seeded, dsn: str) -> None:
    r = cli(
        "--dsn", dsn, "ledger", "adjust", "--org", seeded.org, "--workspace", seeded.ws_platform,
        "--amount-micros", "-2500", "--reason", "refund",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "seq 1" in r.stdout
    r = cli(
        "--dsn", dsn, "ledger", "adjust", "--org", seeded.org, "--workspace", seeded.ws_platform,
        "--amount-micros", "0", "--reason", "nothing",
    )  # fmt: skip
    assert r.exit_code != 0 and "InvalidArgument [CW004]" in r.output


def test_verify_shows_progress_on_long_runs(
    client: costwarden.Client, seeded: Seeded, tmp_path: Path
) -> None:
    build_chains(client, seeded)
    seen: list[tuple[int, int | None]] = []
    report = ledger.verify_database(
        client, progress=lambda n, total: seen.append((n, total)), progress_every=3
    )
    assert report.ok
    total = ACME_ENTRIES + GLOBEX_ENTRIES
    assert seen == [(3, total), (6, total), (total, total)]
