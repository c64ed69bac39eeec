"""Proof that BYOK secrets and key-encryption keys do not leak (SPEC §5, docs/threat-model.md).

A dedicated server logs everything: log_statement = 'all', log_min_duration_statement = 0
(which logs bind parameters too), log_min_error_statement = 'error'. Keys are put,
resolved and rotated, and every refusal is triggered, both through the Python client and
by a plain driver that passes the secret and the KEK as bind parameters. Afterwards the
secrets and KEKs occur nowhere: not in any row of any table or view, not in the server
log, not in any error message or notice, not in any file of the data directory (heap,
WAL). A positive control proves the scan would see a leak: in a database where the
migration's log defence (log_parameter_max_length = 0) was removed, a bind parameter
does reach the log.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import costwarden
from costwarden import errors
from costwarden import migrate as cw_migrate

SECRETS = {
    "anthropic": "sk-ant-api03-LEAKCANARY-anthropic-4f1c2d9e8b7a6f5e",
    "openai": "sk-proj-LEAKCANARY-openai-0a9b8c7d6e5f4a3b",
    "replacement": "sk-ant-api03-LEAKCANARY-replacement-77e1c0d2",
    "bindparam": "sk-ant-api03-LEAKCANARY-bindparam-51f0aa93c2",
}
KEK = "LEAKCANARY-kek-0123456789abcdefghijklmnopq"
NEW_KEK = "LEAKCANARY-newkek-zyxwvutsrqponmlkjihgfe"
WRONG_KEK = "LEAKCANARY-wrongkek-aaaaaaaaaaaaaaaaaaaaa"
SHORT_KEK = "LEAKCANARY-shortkek-1234"  # < 32 characters
BAD_SECRETS = {
    "newline": SECRETS["anthropic"] + "\n",
    "oversized": SECRETS["anthropic"] + "x" * 8200,
}
#: Nothing below may appear anywhere.
FORBIDDEN = [*SECRETS.values(), KEK, NEW_KEK, WRONG_KEK, SHORT_KEK]
#: Positive control: passed as a bind parameter where parameter logging is back on.
CONTROL_SECRET = "sk-ant-api03-CONTROLCANARY-must-be-logged-42"
USAGE = {"input_tokens": 100, "output_tokens": 10}
MODELS = (("openai/gpt-4o", True), ("anthropic/claude-3-5-sonnet", False))
PRICES = {"input_tokens": Decimal("0.000003"), "output_tokens": Decimal("0.000015")}


class Server:
    def __init__(self, cluster: Any, dsn: str) -> None:
        self.cluster = cluster
        self.dsn = dsn

    def db(self, name: str) -> str:
        return make_conninfo(self.dsn, dbname=name)

    @property
    def data_dir(self) -> Path:
        return Path(self.cluster.data_dir)

    def log_text(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted((self.data_dir / "log").glob("*"))
        )


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    from costwarden.embedded import EmbeddedCluster

    base = Path(tempfile.mkdtemp(prefix="costwarden-leak-"))
    base.chmod(0o755)  # the server runs as the postgres user when we are root
    cluster = EmbeddedCluster(base / "pgdata", fast=True)
    try:
        dsn = cluster.start()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("alter system set log_statement = 'all'")
            conn.execute("alter system set log_min_duration_statement = 0")
            conn.execute("alter system set log_min_error_statement = 'error'")
            conn.execute("select pg_reload_conf()")
        yield Server(cluster, dsn)
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def _database(server: Server, name: str, *, defence: bool) -> str:
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    dsn = server.db(name)
    cw_migrate.migrate(dsn, schedule=False)
    if not defence:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for setting in ("log_parameter_max_length", "log_parameter_max_length_on_error"):
                conn.execute(
                    sql.SQL("alter database {} reset {}").format(
                        sql.Identifier(name), sql.Identifier(setting)
                    )
                )
    with costwarden.Client(dsn) as c:
        for model, servable in MODELS:
            c.upsert_model(model, servable)
            c.set_pricing(model, PRICES)
        c.upsert_org("acme")
        c.upsert_workspace("acme", "platform", "openai/gpt-4o")
        c.upsert_workspace("acme", "vendor", "anthropic/claude-3-5-sonnet")
        c.upsert_workspace("acme", "empty")
        c.upsert_workspace("acme", "open", billing_override="byok")
    return dsn


Messages = list[str]


def _collect(exc: BaseException, into: Messages) -> None:
    into.append(str(exc))
    for attr in ("message", "hint"):
        value = getattr(exc, attr, None)
        if value:
            into.append(str(value))
    cause = exc.__cause__
    if isinstance(cause, psycopg.Error):
        diag = cause.diag
        into.extend(
            str(x)
            for x in (diag.message_primary, diag.message_detail, diag.message_hint, diag.context)
            if x
        )


def _expect(into: Messages, exc_type: type[BaseException], fn: Callable[[], Any]) -> None:
    with pytest.raises(exc_type) as info:
        fn()
    _collect(info.value, into)


def _python_client_story(dsn: str, into: Messages) -> None:
    """Everything through costwarden.Client: put, replace, resolve, rotate, and every
    refusal (guard rules, bad input, KEK problems, resolve bindings)."""
    with costwarden.Client(dsn, kek=KEK) as c:
        c.put_key("acme", "vendor", "anthropic", SECRETS["anthropic"])
        c.put_key("acme", "open", "openai", SECRETS["openai"])
        c.put_key("acme", "vendor", "anthropic", SECRETS["replacement"])  # replaces
        # guard refusals (rules A, C, D) and bad input, all carrying a real secret
        _expect(
            into,
            errors.Forbidden,
            lambda: c.put_key("acme", "platform", "openai", SECRETS["openai"]),
        )
        _expect(
            into, errors.Forbidden, lambda: c.put_key("acme", "vendor", "openai", SECRETS["openai"])
        )
        _expect(
            into, errors.Forbidden, lambda: c.put_key("acme", "empty", "openai", SECRETS["openai"])
        )
        for bad in BAD_SECRETS.values():
            _expect(
                into,
                errors.InvalidArgument,
                partial(c.put_key, "acme", "vendor", "anthropic", bad),
            )
        _expect(
            into, errors.NotFound, lambda: c.put_key("acme", "vendor", "nope", SECRETS["anthropic"])
        )
        _expect(
            into,
            errors.NotFound,
            lambda: c.put_key("acme", "nope", "anthropic", SECRETS["anthropic"]),
        )
        # the binding: granted while held, refused after
        with c.reservation("acme", "vendor", "anthropic/claude-3-5-sonnet", USAGE) as r:
            assert r.byok_key().secret == SECRETS["replacement"]
            _expect(into, errors.Forbidden, lambda: r.byok_key("openai"))
            r.commit(USAGE)
        _expect(into, errors.Forbidden, lambda: c.resolve_key(r.id))
        platform = c.reserve("acme", "platform", "openai/gpt-4o", USAGE)
        _expect(into, errors.Forbidden, lambda: c.resolve_key(platform.reservation_id))
        c.release(platform.reservation_id)
        _expect(
            into,
            errors.Forbidden,
            lambda: c.resolve_key(None, org_id="acme", workspace_id="vendor"),
        )
        held = c.reserve("acme", "vendor", "anthropic/claude-3-5-sonnet", USAGE)
    for kek in (WRONG_KEK, SHORT_KEK, None):
        with costwarden.Client(dsn, kek=kek or "") as other:
            other.kek = kek
            _expect(
                into,
                errors.Forbidden,
                partial(other.put_key, "acme", "vendor", "anthropic", SECRETS["anthropic"]),
            )
            _expect(into, errors.Forbidden, partial(other.resolve_key, held.reservation_id))
    # rotation: refused with a wrong old KEK or the same KEK, then done
    with costwarden.Client(dsn, kek=WRONG_KEK) as wrong:
        _expect(into, errors.Forbidden, lambda: wrong.rotate_kek(NEW_KEK))
    with costwarden.Client(dsn, kek=KEK) as c:
        _expect(into, errors.Forbidden, lambda: c.rotate_kek(KEK))
        assert c.rotate_kek(NEW_KEK, batch=1).remaining == 0
    with costwarden.Client(dsn, kek=NEW_KEK) as c:
        assert c.resolve_key(held.reservation_id).secret == SECRETS["replacement"]
        c.release(held.reservation_id)
        assert c.revoke_key("acme", "open", "openai") is True
        # listings and the audit trail are readable, and show fingerprints only
        into.extend(repr(x) for x in c.list_keys(include_revoked=True))
        into.extend(repr(x) for x in c.resolve_audit())
        into.extend(repr(x) for x in c.audit())


def _plain_driver_story(dsn: str, into: Messages) -> None:
    """A client that is not costwarden's: the KEK and the secret travel as bind
    parameters (and one refusal as a literal KEK would be the caller's own fault, so
    none here). The migration's log_parameter_max_length = 0 keeps them out of the log."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.add_notice_handler(
            lambda d: into.append(f"{d.severity}: {d.message_primary} {d.context}")
        )
        conn.execute("set client_min_messages = debug5")  # every notice and LOG line, too

        def run(kek: str | None, query: str, params: list[Any]) -> list[Any]:
            with conn.transaction():
                if kek is not None:
                    conn.execute("select set_config('costwarden.kek', %s, true)", [kek])
                return conn.execute(query, params).fetchall()

        put = "select costwarden.fn_byok_key_put(%s, %s, %s, %s)"
        run(NEW_KEK, put, ["acme", "open", "anthropic", SECRETS["bindparam"]])
        for kek, args in (
            (NEW_KEK, ["acme", "platform", "openai", SECRETS["bindparam"]]),  # guard
            (WRONG_KEK, ["acme", "open", "anthropic", SECRETS["bindparam"]]),  # wrong KEK
            (SHORT_KEK, ["acme", "open", "anthropic", SECRETS["bindparam"]]),  # short KEK
            (NEW_KEK, ["acme", "open", "anthropic", SECRETS["bindparam"] + "\t"]),  # bad input
        ):
            with pytest.raises(psycopg.Error) as info:
                run(kek, put, args)
            _collect(info.value, into)
        with costwarden.Client(dsn) as c:
            rid = c.reserve("acme", "open", "anthropic/claude-3-5-sonnet", USAGE).reservation_id
        resolve = "select * from costwarden.fn_byok_key_resolve_v2(%s)"
        assert run(NEW_KEK, resolve, [rid])[0][1] == SECRETS["bindparam"]
        with pytest.raises(psycopg.Error) as info:
            run(WRONG_KEK, resolve, [rid])
        _collect(info.value, into)


def _scan_rows(dsn: str) -> str:
    """Every row of every table and view of the schema, plus the catalogue's tables, as text."""
    out: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        relations = conn.execute(
            "select n.nspname, c.relname from pg_class c "
            "join pg_namespace n on n.oid = c.relnamespace "
            "where (n.nspname = 'costwarden' and c.relkind in ('r', 'p', 'v', 'm')) "
            "   or (n.nspname = 'pg_catalog' and c.relkind = 'r') order by 1, 2"
        ).fetchall()
        assert any(r == ("costwarden", "_byok_keys") for r in relations)
        for schema, name in relations:
            rows = conn.execute(
                sql.SQL("select t::text from {}.{} as t").format(
                    sql.Identifier(schema), sql.Identifier(name)
                )
            ).fetchall()
            out.extend(r[0] for r in rows)
    return "\n".join(out)


def _scan_files(root: Path, needles: list[str]) -> list[str]:
    """Files under root that contain any needle (raw bytes)."""
    encoded = [n.encode() for n in needles]
    hits: list[str] = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            hits.extend(f"{path}: {n!r}" for n in encoded if n in data)
    return hits


def test_no_secret_or_kek_leaks_anywhere(server: Server) -> None:
    messages: Messages = []
    dsn = _database(server, "leakproof", defence=True)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("show log_parameter_max_length").fetchone() == ("0",)
        assert conn.execute("show log_statement").fetchone() == ("all",)
    _python_client_story(dsn, messages)
    _plain_driver_story(dsn, messages)

    # the Python client alone is enough: no database-level defence here
    nodef = _database(server, "nodefence", defence=False)
    with psycopg.connect(nodef) as conn:
        assert conn.execute("show log_parameter_max_length").fetchone() == ("-1",)
    _python_client_story(nodef, messages)
    # positive control: a bind parameter does reach the log where the defence is off
    with psycopg.connect(nodef) as conn, conn.transaction():
        conn.execute(
            "select set_config('costwarden.kek', %s, true)",
            ["CONTROLCANARY-kek-0123456789abcdefghijklmn"],
        )
        with pytest.raises(psycopg.Error):
            conn.execute(
                "select costwarden.fn_byok_key_put(%s, %s, %s, %s)",
                ["acme", "platform", "openai", CONTROL_SECRET],
            )

    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("checkpoint")
        conn.execute("select pg_switch_wal()")
    log = server.log_text()

    # the log really logged everything, and the scan would see a leak
    assert "statement: " in log and "execute <unnamed>: " in log
    assert "COPY costwarden.secret_input" in log or "copy costwarden.secret_input" in log
    assert "fn_byok_key_put" in log and "fn_byok_key_resolve_v2" in log
    assert CONTROL_SECRET in log, "positive control: parameter logging should show it"
    # every resolve attempt has its server-log line, refusals included
    assert '"outcome": "granted"' in log and '"outcome": "refused"' in log
    assert '"reason": "kek_wrong"' in log and '"reason": "not_held"' in log

    for needle in FORBIDDEN:
        assert needle not in log, f"server log leaks {needle[:24]}..."
        for db in (dsn, nodef):
            assert needle not in _scan_rows(db), f"a table or view leaks {needle[:24]}..."
        leaking = [m for m in messages if needle in m]
        assert not leaking, f"an error message or notice leaks {needle[:24]}...: {leaking[:1]}"
    assert len(messages) > 30
    # not on disk either: heap, indexes, WAL, everything in the data directory (the
    # scanner does see what is there: catalogue names in heap and WAL, the control in
    # the log)
    assert _scan_files(server.data_dir, FORBIDDEN) == []
    assert _scan_files(server.data_dir / "base", ["fn_byok_key_put"])
    assert _scan_files(server.data_dir / "pg_wal", ["_byok_resolve_log"])
    assert _scan_files(server.data_dir / "log", [CONTROL_SECRET])
