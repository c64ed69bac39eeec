"""The KEK input path of docs/byok.md against a server that logs as much as it can
(log_min_messages = debug1, log_statement = 'all', log_min_error_statement = debug1):
the documented psql command, fed KEK files with every kind of malformed content,
never lets the KEK reach the server log, the WAL or a heap file. A positive control
shows the old two-column example (spaces for a tab) does put its KEK in the log."""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

import costwarden
from costwarden import migrate as cw_migrate

CANARY = "KEKCANARY"
#: KEK files (bytes) a human might feed the documented command: each is malformed for
#: a plain two-column COPY in some way.
KEK_FILES: dict[str, bytes] = {
    "good": b"KEKCANARY-good-0123456789abcdefghijklmnopq\n",
    "spaces": b"KEKCANARY spaces 0123456789 abcdefghijklmnopq",
    "tab": b"KEKCANARY-tab\t0123456789abcdefghijklmnopq\n",
    "backslash": b"KEKCANARY-backslash\\N\\.\\x41-0123456789abcdefghij\n",
    "end-marker": b"\\.\nKEKCANARY-endmarker-0123456789abcdefghij\n",
    "not-utf8": b"KEKCANARY-notutf8-\xff\xfe-0123456789abcdefghijklm\n",
    "nul": b"KEKCANARY-nul-\x00-0123456789abcdefghijklmnopqrs\n",
    "crlf": b"KEKCANARY-crlf-0123456789abcdefghijklmnopq\r\n\r\n",
    "quote": b"KEKCANARY-quote-'\"-0123456789abcdefghijklmnopq\n",
    "long": b"KEKCANARY-long-" + b"x" * 3000 + b"\n",
}
#: The documented command (docs/byok.md): the KEK file is encoded before COPY sees it.
DOCUMENTED = (
    "\\copy costwarden.secret_input_base64 from program "
    "'echo kek:$(printf %s \"$(cat {path})\" | base64 -w0)'"
)


def _needles() -> list[bytes]:
    """What must not appear: each KEK's distinctive part, raw and base64-encoded."""
    out = []
    for content in KEK_FILES.values():
        core = content.split(b"-", 2)[-1][:20] if b"-" in content else content[:24]
        out.append(core)
        out.append(base64.b64encode(content.rstrip(b"\r\n"))[4:28])
    return out


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Any, str]]:
    from costwarden.embedded import EmbeddedCluster

    base = Path(tempfile.mkdtemp(prefix="costwarden-kek-"))
    base.chmod(0o755)
    cluster = EmbeddedCluster(base / "pgdata", fast=True)
    try:
        dsn = cluster.start()
        with psycopg.connect(dsn, autocommit=True) as conn:
            for setting, value in (
                ("log_min_messages", "debug1"),
                ("log_statement", "all"),
                ("log_min_error_statement", "debug1"),
                ("log_min_duration_statement", "0"),
            ):
                conn.execute(f"alter system set {setting} = '{value}'")
            conn.execute("select pg_reload_conf()")
            conn.execute("create database kekinput")
        db = make_conninfo(dsn, dbname="kekinput")
        cw_migrate.migrate(db, schedule=False)
        with costwarden.Client(db) as c:
            c.upsert_model("anthropic/claude-3-5-sonnet", False)
            c.upsert_org("acme")
            c.upsert_workspace("acme", "vendor", "anthropic/claude-3-5-sonnet")
        yield cluster, db
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def _psql(cluster: Any, dsn: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(cluster.bindir) / "psql"), dsn, "-X", "-q", "-v", "ON_ERROR_STOP=0"],
        input=script,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        check=False,
    )


def _scan(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            hits.extend(f"{path.relative_to(root)}: {n!r}" for n in needles if n in data)
    return hits


def test_no_kek_file_reaches_the_log_wal_or_heap(server: tuple[Any, str], tmp_path: Path) -> None:
    cluster, dsn = server
    outcomes = {}
    for name, content in KEK_FILES.items():
        path = tmp_path / f"{name}.kek"
        path.write_bytes(content)
        script = "\n".join(
            [
                "begin;",
                DOCUMENTED.format(path=path),
                "select costwarden.fn_byok_key_put('acme', 'vendor', 'anthropic', "
                "'sk-ant-api03-kekinput-0123456789');",
                "rollback;",
                "",
            ]
        )
        done = _psql(cluster, dsn, script)
        assert "CONTEXT:  COPY" not in done.stderr  # COPY itself never rejects the line
        outcomes[name] = "stored" if "ERROR" not in done.stderr else done.stderr.strip()
        assert CANARY not in done.stderr
    # the well-formed ones were accepted, the others refused without quoting them
    assert outcomes["good"] == "stored" and outcomes["spaces"] == "stored"
    assert "CW005" in outcomes["long"] or "longer" in outcomes["long"]
    assert "kek" in outcomes["not-utf8"]  # undecodable: reported as a KEK problem

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("checkpoint")
        conn.execute("select pg_switch_wal()")
    data_dir = Path(cluster.data_dir)
    log = "\n".join(p.read_text(errors="replace") for p in sorted((data_dir / "log").glob("*")))
    assert "secret_input_base64" in log and "fn_byok_key_put" in log  # it did log
    assert _scan(data_dir, _needles()) == []


def test_control_the_old_two_column_example_leaks(server: tuple[Any, str]) -> None:
    """Why the channel changed: the old documented example, typed with spaces, makes
    COPY fail and the server log the line -- KEK included -- at the default level."""
    cluster, dsn = server
    control = "CONTROLKEK-0123456789abcdefghijklmnopq"
    done = _psql(
        cluster,
        dsn,
        f"begin;\ncopy costwarden.secret_input (name, value) from stdin;\nkek {control}\n\\.\n"
        "rollback;\n",
    )
    assert "missing data" in done.stderr
    data_dir = Path(cluster.data_dir)
    assert _scan(data_dir / "log", [control.encode()]) != []
