"""The client's on_unavailable policy (SPEC §7, costwarden/spool.py): 'closed' raises;
'open' proceeds unenforced, spools every operation durably (meter ticks included) and
replays it exactly once, priced at call time -- nothing lost, nothing double-booked.
One test stops and restarts a real server mid-way (test_outage.py: under load)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import costwarden
from costwarden import migrate as cw_migrate
from costwarden import types as t
from costwarden.spool import Spool
from cwtest import Seeded

Conn = psycopg.Connection[Any]
CHAT = {"input_tokens": 1000, "output_tokens": 100}  # gpt-4o: 2 500 + 1 000 micros
CHAT_MICROS = 3_500


def closed_port_dsn() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"host=127.0.0.1 port={port} user=postgres dbname=nowhere connect_timeout=2"


def spend_reports(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "select workspace_id, amount_micros, source from costwarden._ledger "
        "where entry_type = 'spend_report' order by org_id, seq"
    ).fetchall()


def booked_by_workspace(conn: Conn) -> dict[str, int]:
    """The spend reports booked, summed per workspace (a call whose ticks were booked
    before its commit has several entries)."""
    rows = conn.execute(
        "select workspace_id, sum(amount_micros)::bigint from costwarden._ledger "
        "where entry_type = 'spend_report' group by workspace_id"
    ).fetchall()
    return {ws: int(n) for ws, n in rows}


def test_closed_raises_database_unavailable() -> None:
    with costwarden.Client(closed_port_dsn(), timeout=1) as c:
        with pytest.raises(costwarden.DatabaseUnavailable):
            c.reserve("acme", "ws", "openai/gpt-4o", CHAT)
        with pytest.raises(costwarden.DatabaseUnavailable):
            c.commit(__import__("uuid").uuid4(), CHAT)


def test_open_needs_a_spool_dir() -> None:
    with pytest.raises(ValueError, match="spool_dir"):
        costwarden.Client(closed_port_dsn(), on_unavailable="open")
    with pytest.raises(ValueError, match="'closed' or 'open'"):
        costwarden.Client(closed_port_dsn(), on_unavailable="maybe")


def test_open_spools_and_replay_books_exactly_once(
    tmp_path: Path, dsn: str, seeded: Seeded, admin_conn: Conn
) -> None:
    spool_dir = tmp_path / "spool"
    with costwarden.Client(
        closed_port_dsn(), on_unavailable="open", spool_dir=spool_dir, timeout=1
    ) as down:
        r = down.reserve("acme", seeded.ws_platform, seeded.platform_model, CHAT)
        assert isinstance(r, t.SpooledReservation) and r.spooled and r.status == "held"
        assert (r.amount_micros, r.reasons) == (0, ())
        assert down.meter(r.reservation_id, {"input_tokens": 10}).action == "continue"
        assert down.commit(r.reservation_id, CHAT).charged_micros == 0
        # a call that ran and was released after meter ticks: its metered usage is spooled
        with (
            pytest.raises(RuntimeError),
            down.reservation("acme", seeded.ws_vendor, seeded.vendor_model, CHAT) as h,
        ):
            h.meter({"input_tokens": 2000})
            raise RuntimeError("crash")
        # a call released without usage: nothing to book
        r3 = down.reserve("acme", seeded.ws_platform, seeded.platform_model, CHAT)
        down.release(r3.reservation_id)
        # and a call in the other org (a Decimal in the usage is written exactly)
        r4 = down.reserve("globex", seeded.other_ws, seeded.platform_model, CHAT)
        down.commit(r4.reservation_id, {"input_tokens": 1, "output_tokens": Decimal("3")})

    spool = Spool(spool_dir)
    records = [json.loads(line) for line in spool.path.read_text().splitlines()]
    # every operation: the meter ticks too (final: false), each with its call time
    assert [(r["kind"], r["final"]) for r in records] == [
        ("usage", False),
        ("usage", True),
        ("usage", False),
        ("usage", True),
        ("usage", True),
    ]
    assert all(r["called_at"] <= r["at"] for r in records)
    assert spool.pending() == 5
    assert spend_reports(admin_conn) == []

    with costwarden.Client(dsn, spool_dir=spool_dir, on_unavailable="closed") as up:
        report = up.replay_spool()
        assert (report.replayed, report.rejected, report.remaining) == (5, 0, 0)
        assert report.booked_micros == CHAT_MICROS + 6_000 + 33
        # a second replay of the same records books nothing (their ids are recorded)
        spool._save_state({"offset": 0})
        spool.path.write_text("".join(json.dumps(r) + "\n" for r in records))
        again = up.replay_spool()
        assert (again.replayed, again.booked_micros) == (5, 0)
    source = spool.source
    assert source.startswith("spool-")
    assert booked_by_workspace(admin_conn) == {
        seeded.ws_platform: CHAT_MICROS,
        seeded.ws_vendor: 6_000,
        seeded.other_ws: 33,
    }
    assert {r[2] for r in spend_reports(admin_conn)} == {source}
    assert spool.path.read_bytes() == b""  # everything replayed: the file is emptied


class Crash(BaseException):
    """The process dies right after the database booked a report."""


def test_a_replay_interrupted_after_booking_does_not_book_twice(
    tmp_path: Path, client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    spool = Spool(tmp_path)
    for n in (1, 2):
        spool.append(
            {
                "kind": "usage",
                "id": f"r{n}",
                "org_id": "acme",
                "workspace_id": seeded.ws_platform,
                "model": seeded.platform_model,
                "usage": CHAT,
                "approximate": False,
            }
        )
    calls = 0

    def crashing_run(call: Any) -> Any:
        nonlocal calls
        result = client._run(call)
        if "fn_replay_usage" in call.sql:
            calls += 1
            if calls == 2:
                raise Crash
        return result

    with pytest.raises(Crash):
        spool.replay(crashing_run)
    assert sum(r[1] for r in spend_reports(admin_conn)) == 2 * CHAT_MICROS  # both booked
    assert spool.pending() == 1  # ... but the second not recorded locally
    report = spool.replay(client._run)
    # sent again, found booked (its operation id is recorded in the database)
    assert (report.replayed, report.booked_micros, report.remaining) == (1, 0, 0)
    assert sum(r[1] for r in spend_reports(admin_conn)) == 2 * CHAT_MICROS


def test_records_that_cannot_be_booked_are_kept_aside(
    tmp_path: Path, client: costwarden.Client, seeded: Seeded
) -> None:
    spool = Spool(tmp_path)
    spool.append(
        {"kind": "usage", "org_id": "acme", "workspace_id": "gone", "model": "x/y", "usage": {}}
    )
    with open(spool.path, "ab") as f:
        f.write(b'{"kind": "usa')  # a writer died mid-line ...
    spool.append(
        {
            "kind": "usage",
            "org_id": "acme",
            "workspace_id": seeded.ws_platform,
            "model": seeded.platform_model,
            "usage": CHAT,
        }
    )  # ... and the next record still starts on its own line
    report = spool.replay(client._run)
    assert (report.replayed, report.rejected, report.remaining) == (1, 2, 0)
    errors = [r["error"] for r in spool.rejected()]
    assert errors[0].startswith("NotFound") and errors[1].startswith("JSONDecodeError")


# -- a real server, stopped and restarted mid-way -----------------------------------------


@pytest.fixture
def own_server() -> Iterator[Any]:
    from costwarden.embedded import EmbeddedCluster

    base = Path(tempfile.mkdtemp(prefix="costwarden-spool-"))
    base.chmod(0o755)
    cluster = EmbeddedCluster(base / "pgdata", fast=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def spooltest_database(server: Any) -> str:
    """A migrated database on ``server`` with acme/ws priced on openai/gpt-4o."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("create database spooltest")
    dsn: str = server.dsn_for("spooltest")
    cw_migrate.migrate(dsn, schedule=False)
    with costwarden.Client(dsn, on_unavailable="closed") as admin:
        admin.upsert_model("openai/gpt-4o", platform_servable=True)
        admin.set_pricing(
            "openai/gpt-4o",
            {"input_tokens": Decimal("0.0000025"), "output_tokens": Decimal("0.00001")},
        )
        admin.upsert_org("acme")
        admin.upsert_workspace("acme", "ws", model="openai/gpt-4o")
    return dsn


def test_stop_the_server_mid_way_then_replay(own_server: Any, tmp_path: Path) -> None:
    dsn = spooltest_database(own_server)
    spool_dir = tmp_path / "spool"
    app = costwarden.Client(dsn, on_unavailable="open", spool_dir=spool_dir, timeout=2)
    try:
        r1 = app.reserve("acme", "ws", "openai/gpt-4o", CHAT)
        app.commit(r1.reservation_id, CHAT)  # booked in the database
        r2 = app.reserve("acme", "ws", "openai/gpt-4o", CHAT)  # held in the database ...
        assert not isinstance(r2, t.SpooledReservation)

        own_server.stop()  # ---- the database goes away mid-call
        app.commit(r2.reservation_id, CHAT)  # ... its commit is spooled
        r3 = app.reserve("acme", "ws", "openai/gpt-4o", CHAT)  # proceeds unenforced
        assert isinstance(r3, t.SpooledReservation)
        app.commit(r3.reservation_id, {"input_tokens": 400, "output_tokens": 100})  # 2 000
        assert Spool(spool_dir).pending() == 2

        own_server.start()  # ---- back
        deadline = time.monotonic() + 60
        while True:
            report = app.replay_spool()
            if report.remaining == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert report.remaining == 0 and report.rejected == 0
        assert app.replay_spool().replayed == 0
    finally:
        app.close()
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select entry_type, reservation_id, amount_micros from costwarden._ledger order by seq"
        ).fetchall()
        status = conn.execute(
            "select status from costwarden._reservations where reservation_id = %s",
            (r2.reservation_id,),
        ).fetchone()
    assert rows == [
        ("charge", r1.reservation_id, CHAT_MICROS),
        ("charge", r2.reservation_id, CHAT_MICROS),
        ("spend_report", None, 2_000),
    ]
    assert status == ("committed",)


def test_costwarden_spend_report_replay(
    tmp_path: Path, dsn: str, seeded: Seeded, admin_conn: Conn
) -> None:
    Spool(tmp_path).append(
        {
            "kind": "usage",
            "org_id": "acme",
            "workspace_id": seeded.ws_platform,
            "model": seeded.platform_model,
            "usage": CHAT,
        }
    )
    runner = CliRunner()
    from costwarden.cli import main

    result = runner.invoke(
        main, ["--dsn", dsn, "spend-report", "replay", "--spool-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "replayed 1 record(s), booked $0.003500, rejected 0, remaining 0" in result.output
    assert [r[1] for r in spend_reports(admin_conn)] == [CHAT_MICROS]


def test_the_spool_is_portable() -> None:
    """No POSIX-only locking: the locks are filelock's (msvcrt on Windows, fcntl on
    POSIX), and a directory is fsync'd only where the platform can open one."""
    import inspect

    from costwarden import spool

    source = inspect.getsource(spool)
    assert "import fcntl" not in source and "fcntl." not in source
    assert "from filelock import FileLock" in source


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
def test_the_spool_files_are_its_owners_alone(tmp_path: Path) -> None:
    """Records, state and source are 0600 whatever the umask and the directory's mode
    (an existing directory keeps its own)."""
    directory = tmp_path / "shared"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    old = os.umask(0o022)
    try:
        spool = Spool(directory)
        spool.append({"kind": "usage", "org_id": "acme", "workspace_id": "ws", "final": True})
        spool._save_state({"offset": 0})
    finally:
        os.umask(old)
    files = sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
    assert files == ["source", "spool.jsonl", "state.json"]
    for name in files:
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name


def test_a_release_sends_the_ticks_the_database_did_not_see(
    tmp_path: Path, dsn: str, seeded: Seeded, admin_conn: Conn
) -> None:
    """A reservation the database holds, metered while the database was away, then
    released once it is back: the release charges the offline ticks' usage."""
    with costwarden.Client(dsn, on_unavailable="open", spool_dir=tmp_path) as c:
        r = c.reserve("acme", seeded.ws_platform, seeded.platform_model, CHAT)
        away = costwarden.DatabaseUnavailable("the database went away")
        tick = c.unavailable.meter_unreachable(away, r.reservation_id, {"input_tokens": 800})
        assert tick.action == "continue"
        assert [json.loads(x)["kind"] for x in Spool(tmp_path).path.read_text().splitlines()] == [
            "meter"
        ]
        assert c.release(r.reservation_id) == CHAT_MICROS - 2_000
        assert c.unavailable.offline_metered(r.reservation_id) is None
        # the spooled tick, replayed after the release, books nothing more
        assert c.replay_spool().booked_micros == 0
    rows = admin_conn.execute(
        "select amount_micros, approximate from costwarden._ledger where reservation_id = %s",
        (r.reservation_id,),
    ).fetchall()
    assert rows == [(2_000, True)]
