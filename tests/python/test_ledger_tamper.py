"""The tamper matrix: what a superuser with the triggers off can do to the ledger, and
that every change is caught by fn_ledger_verify (in SQL) and by the Python verifier (on
the live database and on an export), naming the first bad seq.

acme's chain (built by ledger_helpers.build_chains) has 6 entries; globex's 2 must
stay intact whatever happens to acme's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import costwarden
from costwarden import ledger
from cwtest import Seeded
from ledger_helpers import (
    ACME_ENTRIES,
    build_chains,
    export_file,
    file_verify,
    py_verify,
    sql_verify,
    tampering,
)

LAST = ACME_ENTRIES  # 6

# Insert a forged row: shift seq 4.. up by one, then a made-up entry at seq 4 whose
# prev_hash and entry_hash are computed correctly (a careful forger). The chain then
# breaks at seq 5, whose prev_hash still points at seq 3.
FORGE_INSERT = """
update costwarden._ledger set seq = seq + 1000 where org_id = 'acme' and seq >= 4;
update costwarden._ledger set seq = seq - 999 where org_id = 'acme' and seq >= 1004;
do $$
declare
    v costwarden._ledger;
begin
    select * into v from costwarden._ledger where org_id = 'acme' and seq = 3;
    v.prev_hash := v.entry_hash;
    v.seq := 4;
    v.amount_micros := 1;
    v.entry_hash := costwarden._ledger_hash(v.prev_hash, v);
    insert into costwarden._ledger select v.*;
end
$$;
"""

# Append a forged entry after the last one, correctly chained, without moving the head.
FORGE_APPEND = """
do $$
declare
    v costwarden._ledger;
begin
    select * into v from costwarden._ledger where org_id = 'acme' and seq = 6;
    v.prev_hash := v.entry_hash;
    v.seq := 7;
    v.entry_hash := costwarden._ledger_hash(v.prev_hash, v);
    insert into costwarden._ledger select v.*;
end
$$;
"""

# Append a charge with a negative amount after the last entry, correctly chained, and move
# the head to it: every hash holds, but only an adjustment is signed (migration 0017).
FORGE_NEGATIVE = """
do $$
declare
    v costwarden._ledger;
begin
    select * into v from costwarden._ledger where org_id = 'acme' and seq = 6;
    v.prev_hash := v.entry_hash;
    v.seq := 7;
    v.entry_type := 'charge';
    v.amount_micros := -1000;
    v.entry_hash := costwarden._ledger_hash(v.prev_hash, v);
    insert into costwarden._ledger select v.*;
    update costwarden._ledger_heads set last_seq = 7, last_hash = v.entry_hash
    where org_id = 'acme';
end
$$;
"""

# Truncate the whole ledger and rebuild it with acme's seq 2 cheaper, recomputing every
# hash (globex is put back as it was); {heads} also rewrites the heads.
REBUILD = """
create temp table saved as select * from costwarden._ledger;
truncate costwarden._ledger;
do $$
declare
    v costwarden._ledger;
    v_prev bytea := '\\x0000000000000000000000000000000000000000000000000000000000000000';
begin
    insert into costwarden._ledger select * from saved where org_id <> 'acme';
    for v in select * from saved where org_id = 'acme' order by seq loop
        if v.seq = 2 then
            v.amount_micros := v.amount_micros - 1000;
        end if;
        v.prev_hash := v_prev;
        v.entry_hash := costwarden._ledger_hash(v_prev, v);
        insert into costwarden._ledger select v.*;
        v_prev := v.entry_hash;
    end loop;
    if {heads} then
        update costwarden._ledger_heads set last_hash = v_prev where org_id = 'acme';
    end if;
end
$$;
"""


@dataclass(frozen=True)
class Case:
    sql: str
    in_sql: int | None  # fn_ledger_verify's first_bad_seq (None: it cannot see it)
    in_python: int  # the Python verifier on the database, with a digest taken before
    from_export: int | None  # the Python verifier on an export, with that digest


CASES: dict[str, Case] = {
    "change an amount": Case(
        "update costwarden._ledger set amount_micros = amount_micros + 1 "
        "where org_id = 'acme' and seq = 3",
        3, 3, 3,
    ),
    "change a usage": Case(
        "update costwarden._ledger set usage = usage || '{\"output_tokens\": 1}' "
        "where org_id = 'acme' and seq = 2",
        2, 2, 2,
    ),
    "change a model": Case(
        "update costwarden._ledger set model = 'openai/gpt-4o-mini' "
        "where org_id = 'acme' and seq = 4",
        4, 4, 4,
    ),
    "delete a row": Case(
        "delete from costwarden._ledger where org_id = 'acme' and seq = 3", 3, 3, 3
    ),
    "delete the last row": Case(
        "delete from costwarden._ledger where org_id = 'acme' and seq = 6", LAST, LAST, LAST
    ),
    "insert a forged row": Case(FORGE_INSERT, 5, 5, 5),
    # chained correctly after the end: only the head (in the database) shows it
    "append a forged row": Case(FORGE_APPEND, LAST + 1, LAST + 1, None),
    "append a negative charge with the head": Case(FORGE_NEGATIVE, LAST + 1, LAST + 1, LAST + 1),
    "swap two rows' seqs": Case(
        "update costwarden._ledger set seq = seq + 1000 where org_id = 'acme' and seq in (2, 3); "
        "update costwarden._ledger set seq = 1005 - seq where org_id = 'acme' and seq > 1000",
        2, 2, 2,
    ),
    # to_char's YYYY has no era: the same date BC would print as the entry did
    "move a created_at to the same date BC": Case(
        "update costwarden._ledger set created_at ="
        " (created_at at time zone 'UTC' - interval '4051 years') at time zone 'UTC' "
        "where org_id = 'acme' and seq = 2",
        2, 2, 2,
    ),
    "corrupt a usage's type": Case(
        "update costwarden._ledger set usage = '{\"input_tokens\": \"many\"}' "
        "where org_id = 'acme' and seq = 1",
        1, 1, 1,
    ),
    "truncate and rebuild (head untouched)": Case(REBUILD.format(heads="false"), LAST, LAST, LAST),
    # a perfect rewrite: nothing inside the database can tell; the saved digest can
    "truncate and rebuild with the head": Case(REBUILD.format(heads="true"), None, LAST, LAST),
}  # fmt: skip


@pytest.fixture
def chains(client: costwarden.Client, seeded: Seeded, tmp_path: Path) -> ledger.Digest:
    """Build the chains, check they verify, and save a digest (to a file and back)."""
    build_chains(client, seeded)
    assert all(v.ok for v in client.ledger_verify())
    report = ledger.verify_database(client)
    assert report.ok and report.rows == ACME_ENTRIES + 2
    path = tmp_path / "digest.json"
    ledger.write_digest(ledger.take_digest(client), path)
    return ledger.read_digest(path)


@pytest.mark.parametrize("name", list(CASES))
def test_tampering_is_caught(
    client: costwarden.Client, dsn: str, chains: ledger.Digest, tmp_path: Path, name: str
) -> None:
    case = CASES[name]
    with tampering(dsn) as conn:
        conn.execute(case.sql)  # type: ignore[arg-type]

    in_sql = sql_verify(client)
    assert in_sql["globex"].ok
    if case.in_sql is None:
        assert in_sql["acme"].ok  # the limit of any check inside the database
    else:
        assert not in_sql["acme"].ok
        assert in_sql["acme"].first_bad_seq == case.in_sql, in_sql["acme"].detail

    live = py_verify(client, (chains,))
    assert live["globex"].ok
    assert live["acme"].first_bad_seq == case.in_python, live["acme"].detail

    exported = file_verify(export_file(client, tmp_path / "ledger.jsonl"), (chains,))
    assert exported["globex"].ok
    assert exported["acme"].first_bad_seq == case.from_export, exported["acme"].detail


def test_a_perfect_rewrite_is_only_caught_by_the_digest(
    client: costwarden.Client, dsn: str, chains: ledger.Digest
) -> None:
    with tampering(dsn) as conn:
        conn.execute(REBUILD.format(heads="true"))  # type: ignore[arg-type]
    assert py_verify(client)["acme"].ok  # consistent by itself...
    result = py_verify(client, (chains,))["acme"]
    assert result.first_bad_seq == LAST  # ...but not the history the digest saw
    assert result.detail is not None and "digest" in result.detail
    assert "rewritten" in result.detail


def test_several_digests_narrow_a_rewrite_down(
    client: costwarden.Client, seeded: Seeded, dsn: str, chains: ledger.Digest
) -> None:
    """A digest taken after each batch of entries bounds where history changed."""
    client.ledger_adjust(seeded.org, seeded.ws_platform, 100, "later entry")
    later = ledger.take_digest(client)  # acme at seq 7
    with tampering(dsn) as conn:
        conn.execute(REBUILD.format(heads="true"))  # type: ignore[arg-type]
    result = py_verify(client, (later, chains))["acme"]
    assert result.first_bad_seq == LAST  # the earliest digest that disagrees


def test_a_tampered_export_line_is_caught_and_the_export_itself_is_intact(
    client: costwarden.Client, chains: ledger.Digest, tmp_path: Path
) -> None:
    path = export_file(client, tmp_path / "ledger.jsonl")
    assert all(c.ok for c in file_verify(path, (chains,)).values())
    lines = path.read_text().splitlines()

    def rewrite(i: int, change: Callable[[dict[str, Any]], None]) -> Path:
        row = ledger.loads_row(lines[i])
        change(row)
        out = tmp_path / f"tampered-{i}.jsonl"
        out.write_text("\n".join([*lines[:i], ledger.dumps_row(row), *lines[i + 1 :]]) + "\n")
        return out

    def bump(row: dict[str, Any]) -> None:
        row["amount_micros"] += 1

    assert file_verify(rewrite(3, bump))["acme"].first_bad_seq == 4
    # lines out of order
    swapped = [*lines[:1], lines[2], lines[1], *lines[3:]]
    out = tmp_path / "swapped.jsonl"
    out.write_text("\n".join(swapped) + "\n")
    result = file_verify(out)["acme"]
    assert result.first_bad_seq == 2 and result.detail is not None
    assert "out of order" in result.detail
    # a line dropped
    out.write_text("\n".join([*lines[:2], *lines[3:]]) + "\n")
    result = file_verify(out)["acme"]
    assert result.first_bad_seq == 3 and result.detail is not None and "missing" in result.detail
