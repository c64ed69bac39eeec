"""Upgrade from the layout before the split (sql/0001-0010 in one directory, kept in
tests/fixtures/legacy_sql/) ends in the same schema as a fresh install of sql/migrations
and sql/functions: pg_dump, every function, grant, trigger and owner."""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from costwarden import migrate as m
from cwtest import PgServer

LEGACY_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_sql"

# The runner of the layout before the split, as it was (minus its advisory lock): per
# file, one transaction with the bookkeeping row, the file and the PUBLIC lockdown.
_LEGACY_BOOKKEEPING = """
create schema if not exists costwarden;
create table if not exists costwarden._migrations (
    version integer primary key,
    name text not null,
    checksum text not null,
    applied_at timestamptz not null default now()
);
comment on table costwarden._migrations is
    'Applied costwarden migrations (one row per sql/NNNN_name.sql file, sha256 checksum).';
"""
_LEGACY_LOCKDOWN = """
revoke all on all functions in schema costwarden from public;
revoke all on all tables in schema costwarden from public;
revoke all on all sequences in schema costwarden from public;
"""


def install_legacy(dsn: str, count: int | None = None) -> None:
    """Install the first ``count`` legacy files (all by default) the way the old runner did."""
    files = sorted(LEGACY_DIR.glob("*.sql"))[:count]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for path in files:
            version, name = int(path.name[:4]), path.stem[5:]
            with conn.transaction():
                conn.execute("set local client_min_messages = warning")
                conn.execute(_LEGACY_BOOKKEEPING)
                conn.execute(
                    "insert into costwarden._migrations (version, name, checksum) "
                    "values (%s, %s, %s)",
                    (version, name, hashlib.sha256(path.read_bytes()).hexdigest()),
                )
                conn.execute(path.read_bytes())
                conn.execute(_LEGACY_LOCKDOWN)


def test_the_legacy_fixture_is_the_released_layout() -> None:
    """The fixture files are byte for byte the ones the checksum table knows."""
    files = sorted(LEGACY_DIR.glob("*.sql"))
    assert [(int(p.name[:4]), p.stem[5:]) for p in files] == [
        (v, name) for v, (name, _c) in sorted(m.LEGACY_CHECKSUMS.items())
    ]
    for path in files:
        name, checksum = m.LEGACY_CHECKSUMS[int(path.name[:4])]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == checksum, path.name
    # the baseline migrations keep the legacy versions and names
    baseline = {x.version: x.name for x in m.load_migrations()}
    for version, (name, _c) in m.LEGACY_CHECKSUMS.items():
        assert baseline[version] == name


def _dump(pg_server: PgServer, dsn: str) -> list[str]:
    """pg_dump --schema-only of schema costwarden, owners and grants included,
    normalised: no \\restrict framing, no blank lines."""
    dbname = str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])
    out = subprocess.run(
        [
            pg_server.binary("pg_dump"),
            "--schema-only",
            "--schema=costwarden",
            "-h",
            pg_server.host,
            "-p",
            str(pg_server.port),
            "-U",
            pg_server.user,
            "-d",
            dbname,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return [
        ln
        for ln in out.splitlines()
        if ln.strip() and not re.match(r"^\\(un)?restrict\b", ln) and not ln.startswith("-- Dumped")
    ]


CATALOGUE_QUERIES = {
    "functions": """
        select p.oid::regprocedure::text, pg_get_functiondef(p.oid), p.proconfig::text,
               p.prosecdef, p.provolatile, p.proacl::text, p.proowner::regrole::text,
               obj_description(p.oid, 'pg_proc')
        from pg_proc as p
        where p.pronamespace = 'costwarden'::regnamespace and p.prokind = 'f'
        order by 1
    """,
    "relations": """
        select c.relname, c.relkind, c.relacl::text, c.relowner::regrole::text,
               c.reloptions::text, obj_description(c.oid, 'pg_class')
        from pg_class as c
        where c.relnamespace = 'costwarden'::regnamespace
        order by 1
    """,
    "columns": """
        select a.attrelid::regclass::text, a.attnum, a.attname,
               format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attacl::text
        from pg_attribute as a
        join pg_class as c on c.oid = a.attrelid
        left join pg_attrdef as d on d.adrelid = a.attrelid and d.adnum = a.attnum
        where c.relnamespace = 'costwarden'::regnamespace and a.attnum > 0 and not a.attisdropped
        order by 1, 2
    """,
    "constraints": """
        select conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        from pg_constraint where connamespace = 'costwarden'::regnamespace order by 1, 2
    """,
    "triggers": """
        select t.tgrelid::regclass::text, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
        from pg_trigger as t
        join pg_class as c on c.oid = t.tgrelid
        where c.relnamespace = 'costwarden'::regnamespace and not t.tgisinternal
        order by 1, 2
    """,
    "schema": """
        select nspname, nspowner::regrole::text, nspacl::text
        from pg_namespace where nspname = 'costwarden'
    """,
    "types": """
        select t.typname, t.typowner::regrole::text, t.typacl::text
        from pg_type as t where t.typnamespace = 'costwarden'::regnamespace order by 1
    """,
    "extensions": """
        select e.extname, e.extnamespace::regnamespace::text from pg_extension as e order by 1
    """,
    "migrations": "select version, name, checksum from costwarden._migrations order by 1",
    "repeatables": "select name, checksum from costwarden._repeatables order by 1",
    "settings": "select * from costwarden._setting_defs order by key",
    "units": "select * from costwarden._usage_units order by unit",
}


def catalogue(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(dsn) as conn:
        return {name: conn.execute(q).fetchall() for name, q in CATALOGUE_QUERIES.items()}


def _after_split() -> tuple[m.Migration, ...]:
    """The migrations written after the layout split (not part of the legacy files)."""
    return tuple(x for x in m.load_migrations() if x.version not in m.LEGACY_CHECKSUMS)


def test_upgrade_from_the_legacy_layout_equals_a_fresh_install(
    pg_server: PgServer, fresh_database: Callable[[], str]
) -> None:
    fresh = fresh_database()
    assert m.migrate(fresh, schedule=False)

    upgraded = fresh_database()
    install_legacy(upgraded)
    before = m.status(upgraded)
    # pending: only the migrations written after the split
    assert before.legacy and before.changed == () and before.pending == _after_split()
    assert not before.up_to_date
    assert len(before.functions_outdated) == len(m.load_functions())

    said: list[str] = []
    assert m.migrate(upgraded, schedule=False, progress=said.append) == list(_after_split())
    adopted = [line for line in said if line.startswith("adopted ")]
    assert len(adopted) == len(m.LEGACY_CHECKSUMS)
    after = m.status(upgraded)
    assert after.up_to_date and not after.legacy

    expected, got = catalogue(fresh), catalogue(upgraded)
    for name in CATALOGUE_QUERIES:
        assert got[name] == expected[name], name
    assert _dump(pg_server, upgraded) == _dump(pg_server, fresh)

    # what the upgrade dropped is exactly what the legacy files defined and the
    # source no longer does
    dropped = [line for line in said if line.startswith("dropped ")]
    with psycopg.connect(fresh) as conn:
        for line in dropped:
            name = line.split(" ")[2]
            assert conn.execute(
                "select count(*) from pg_proc where oid::regprocedure::text = %s", (name,)
            ).fetchone() == (0,)

    # and a second run has nothing to do
    assert m.migrate(upgraded, schedule=False) == []
    assert catalogue(upgraded) == got


def test_a_partial_legacy_install_is_completed(
    pg_server: PgServer, fresh_database: Callable[[], str]
) -> None:
    """An install that stopped after legacy 0005 adopts 1-5, applies the baseline
    migrations 6-10 and the function files: the same schema again."""
    fresh = fresh_database()
    m.migrate(fresh, schedule=False)
    partial = fresh_database()
    install_legacy(partial, 5)
    st = m.status(partial)
    later = [x.version for x in _after_split()]
    assert st.legacy and [p.version for p in st.pending] == [6, 7, 8, 9, 10, *later]
    applied = m.migrate(partial, schedule=False)
    assert [x.version for x in applied] == [6, 7, 8, 9, 10, *later]
    assert catalogue(partial) == catalogue(fresh)
    assert _dump(pg_server, partial) == _dump(pg_server, fresh)


def test_an_edited_legacy_file_is_not_adopted(fresh_database: Callable[[], str]) -> None:
    """Only the exact released checksums are recognised: another checksum on a legacy
    row is an edited migration, refused with nothing changed."""
    dsn = fresh_database()
    install_legacy(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "update costwarden._migrations set checksum = 'x' || checksum where version = 3"
        )
    st = m.status(dsn)
    assert [c.version for c in st.changed] == [3]
    with pytest.raises(m.MigrationError, match=re.escape("0003_settings.sql")):
        m.migrate(dsn, schedule=False)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select to_regclass('costwarden._repeatables')").fetchone() == (None,)
        rows = conn.execute("select version, checksum from costwarden._migrations").fetchall()
    assert {v: c for v, c in rows if v != 3} == {
        v: c for v, (_n, c) in m.LEGACY_CHECKSUMS.items() if v != 3
    }
