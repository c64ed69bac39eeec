"""AsyncClient: the same calls and result types as Client, over psycopg's async API."""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

import costwarden
from costwarden import types as t
from costwarden.spool import ReplayReport, Spool
from cwtest import Seeded
from test_spool import (  # the sync client's spool tests, and their server
    CHAT,
    CHAT_MICROS,
    Conn,
    booked_by_workspace,
    closed_port_dsn,
    own_server,  # noqa: F401 -- a fixture, used by name
    spend_reports,
    spooltest_database,
)

#: Context managers: ``with`` on Client, ``async with`` on AsyncClient. Every other
#: public method of AsyncClient is a coroutine function. (No method is sync-only: the
#: sync client is generated from the async one, tests/python/test_client_surface.py.)
CONTEXT_MANAGERS = {"reservation", "ledger_snapshot"}


def test_every_client_method_has_an_async_twin() -> None:
    sync = {
        n
        for n, f in inspect.getmembers(costwarden.Client, inspect.isfunction)
        if not n.startswith("_")
    }
    asyn = {
        n
        for n, f in inspect.getmembers(costwarden.AsyncClient, inspect.isfunction)
        if not n.startswith("_")
    }
    assert sync == asyn
    for name in asyn - CONTEXT_MANAGERS:
        assert inspect.iscoroutinefunction(getattr(costwarden.AsyncClient, name)), name
    for name in CONTEXT_MANAGERS:
        wrapped = getattr(costwarden.AsyncClient, name).__wrapped__
        assert inspect.isasyncgenfunction(wrapped), name


def test_async_saga_end_to_end(dsn: str, client: costwarden.Client, seeded: Seeded) -> None:
    client.set_budget(seeded.org, "workspace", seeded.ws_platform, "day", 10_000)

    async def main() -> None:
        async with costwarden.AsyncClient(dsn) as ac:
            q = await ac.quote(
                seeded.org, seeded.ws_platform, seeded.platform_model, {"input_tokens": 1000}
            )
            assert q.amount_micros == 2500
            async with ac.reservation(
                seeded.org, seeded.ws_platform, seeded.platform_model, {"input_tokens": 1000}
            ) as r:
                tick = await r.meter({"input_tokens": 400})
                assert tick.action == "continue"
                await r.commit({"input_tokens": 800})
            assert r.result is not None and r.result.charged_micros == 2000
            (st,) = await ac.budget_status(seeded.org, "workspace", seeded.ws_platform)
            assert (st.spent, st.held) == (2000, 0)
            with pytest.raises(costwarden.BudgetExceeded):
                await ac.reserve(
                    seeded.org, seeded.ws_platform, seeded.platform_model, {"output_tokens": 1000}
                )
            mine = await ac.reservations(seeded.org)
            assert {m.status for m in mine} == {"committed", "denied"}
            with pytest.raises(costwarden.NotFound):
                await ac.upsert_key(seeded.org, "k9", workspace_id="nope")

    asyncio.run(main())


# -- what AsyncClient shares with Client since it is the source of both -----------------


def test_async_closed_raises_database_unavailable_within_its_timeout() -> None:
    async def main() -> None:
        async with costwarden.AsyncClient(closed_port_dsn(), timeout=1) as ac:
            started = time.monotonic()
            with pytest.raises(costwarden.DatabaseUnavailable):
                await ac.reserve("acme", "ws", "openai/gpt-4o", CHAT)
            assert time.monotonic() - started < 10  # the 1 s timeout, not the 30 s default
            with pytest.raises(costwarden.DatabaseUnavailable):
                await ac.commit(uuid.uuid4(), CHAT)
            assert await ac.replay_spool() == ReplayReport(0, 0, 0, 0)  # no spool

    asyncio.run(main())


def test_async_open_needs_a_spool_dir() -> None:
    with pytest.raises(ValueError, match="spool_dir"):
        costwarden.AsyncClient(closed_port_dsn(), on_unavailable="open")
    with pytest.raises(ValueError, match="'closed' or 'open'"):
        costwarden.AsyncClient(closed_port_dsn(), on_unavailable="maybe")


def test_async_open_spools_and_replay_books_exactly_once(
    tmp_path: Path, dsn: str, seeded: Seeded, admin_conn: Conn
) -> None:
    spool_dir = tmp_path / "spool"

    async def spool_while_down() -> None:
        async with costwarden.AsyncClient(
            closed_port_dsn(), on_unavailable="open", spool_dir=spool_dir, timeout=1
        ) as down:
            r = await down.reserve("acme", seeded.ws_platform, seeded.platform_model, CHAT)
            assert isinstance(r, t.SpooledReservation) and r.spooled and r.status == "held"
            assert (r.amount_micros, r.reasons) == (0, ())
            tick = await down.meter(r.reservation_id, {"input_tokens": 10})
            assert tick.action == "continue"
            assert (await down.commit(r.reservation_id, CHAT)).charged_micros == 0
            # released after meter ticks: the metered usage is spooled
            with pytest.raises(RuntimeError):
                async with down.reservation(
                    "acme", seeded.ws_vendor, seeded.vendor_model, CHAT
                ) as h:
                    await h.meter({"input_tokens": 2000})
                    assert h.last_meter is not None and h.last_meter.action == "continue"
                    raise RuntimeError("crash")
            # released without usage: nothing to book
            r3 = await down.reserve("acme", seeded.ws_platform, seeded.platform_model, CHAT)
            assert await down.release(r3.reservation_id) == 0
            r4 = await down.reserve("globex", seeded.other_ws, seeded.platform_model, CHAT)
            await down.commit(r4.reservation_id, {"input_tokens": 1, "output_tokens": Decimal("3")})

    asyncio.run(spool_while_down())
    spool = Spool(spool_dir)
    records = [json.loads(line) for line in spool.path.read_text().splitlines()]
    assert [(r["kind"], r["final"]) for r in records] == [
        ("usage", False),
        ("usage", True),
        ("usage", False),
        ("usage", True),
        ("usage", True),
    ]
    assert spool.pending() == 5
    assert spend_reports(admin_conn) == []

    async def replay() -> tuple[ReplayReport, ReplayReport]:
        async with costwarden.AsyncClient(dsn, spool_dir=spool_dir) as up:
            first = await up.replay_spool()
            # a second replay of the same records books nothing (their ids are recorded)
            spool._save_state({"offset": 0})
            spool.path.write_text("".join(json.dumps(r) + "\n" for r in records))
            return first, await up.replay_spool()

    report, again = asyncio.run(replay())
    assert (report.replayed, report.rejected, report.remaining) == (5, 0, 0)
    assert report.booked_micros == CHAT_MICROS + 6_000 + 33
    assert (again.replayed, again.rejected, again.remaining) == (5, 0, 0)
    assert again.booked_micros == 0
    assert booked_by_workspace(admin_conn) == {
        seeded.ws_platform: CHAT_MICROS,
        seeded.ws_vendor: 6_000,
        seeded.other_ws: 33,
    }
    assert {r[2] for r in spend_reports(admin_conn)} == {spool.source}


def test_async_replay_waits_for_a_replay_in_another_process(
    tmp_path: Path, dsn: str, seeded: Seeded, admin_conn: Conn
) -> None:
    """The replay lock is a file lock: while another process holds it, the async
    replay waits without blocking the event loop, then books each record once."""
    spool = Spool(tmp_path)
    spool.append(
        {
            "kind": "usage",
            "org_id": "acme",
            "workspace_id": seeded.ws_platform,
            "model": seeded.platform_model,
            "usage": CHAT,
        }
    )
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from filelock import FileLock\n"
            "lock = FileLock(sys.argv[1])\n"
            "lock.acquire()\n"
            "print('locked', flush=True)\n"
            "time.sleep(float(sys.argv[2]))\n",
            str(tmp_path / ".replay.lock"),
            "1.5",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"

        async def main() -> tuple[ReplayReport, int]:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.1)
                    ticks += 1

            async with costwarden.AsyncClient(dsn, spool_dir=tmp_path) as ac:
                task = asyncio.create_task(ticker())
                report = await ac.replay_spool()
                task.cancel()
                return report, ticks

        report, ticks = asyncio.run(main())
    finally:
        holder.wait(timeout=30)
    assert (report.replayed, report.booked_micros, report.remaining) == (1, CHAT_MICROS, 0)
    assert ticks >= 3  # the loop kept running while the replay waited for the lock
    assert [r[1] for r in spend_reports(admin_conn)] == [CHAT_MICROS]


def test_async_stop_the_server_mid_way_then_replay(
    own_server: Any,  # noqa: F811 -- the fixture imported from test_spool
    tmp_path: Path,
) -> None:
    dsn = spooltest_database(own_server)
    spool_dir = tmp_path / "spool"

    async def main() -> tuple[UUID, UUID, ReplayReport]:
        async with costwarden.AsyncClient(
            dsn, on_unavailable="open", spool_dir=spool_dir, timeout=2
        ) as app:
            r1 = await app.reserve("acme", "ws", "openai/gpt-4o", CHAT)
            await app.commit(r1.reservation_id, CHAT)  # booked in the database
            r2 = await app.reserve("acme", "ws", "openai/gpt-4o", CHAT)  # held there ...
            assert not isinstance(r2, t.SpooledReservation)

            own_server.stop()  # ---- the database goes away mid-call
            await app.commit(r2.reservation_id, CHAT)  # ... its commit is spooled
            r3 = await app.reserve("acme", "ws", "openai/gpt-4o", CHAT)  # unenforced
            assert isinstance(r3, t.SpooledReservation)
            await app.commit(r3.reservation_id, {"input_tokens": 400, "output_tokens": 100})
            assert Spool(spool_dir).pending() == 2

            own_server.start()  # ---- back
            deadline = time.monotonic() + 60
            while True:
                report = await app.replay_spool()
                if report.remaining == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert (await app.replay_spool()).replayed == 0
            return r1.reservation_id, r2.reservation_id, report

    r1, r2, report = asyncio.run(main())
    assert report.remaining == 0 and report.rejected == 0
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select entry_type, reservation_id, amount_micros from costwarden._ledger order by seq"
        ).fetchall()
        status = conn.execute(
            "select status from costwarden._reservations where reservation_id = %s", (r2,)
        ).fetchone()
    assert rows == [
        ("charge", r1, CHAT_MICROS),
        ("charge", r2, CHAT_MICROS),
        ("spend_report", None, 2_000),
    ]
    assert status == ("committed",)


def test_async_ledger_snapshot_on_a_pool_and_on_one_connection(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    with client.reservation(seeded.org, seeded.ws_platform, seeded.platform_model, CHAT) as r:
        r.commit(CHAT)

    def heads(digest: list[t.LedgerHead]) -> list[tuple[str, int, str]]:
        return [(h.org_id, h.seq, h.entry_hash) for h in digest]  # without taken_at

    with client.ledger_snapshot() as snap:
        expected = (heads(snap.ledger_digest(seeded.org)), snap.ledger_export_rows(seeded.org))

    async def main() -> None:
        async with costwarden.AsyncClient(dsn) as ac, ac.ledger_snapshot() as snap:
            assert isinstance(snap, costwarden.AsyncClient)
            digest = heads(await snap.ledger_digest(seeded.org))
            assert (digest, await snap.ledger_export_rows(seeded.org)) == expected
        conn = await psycopg.AsyncConnection.connect(dsn)
        try:
            async with conn.transaction():
                one = costwarden.AsyncClient(conn)
                async with one.ledger_snapshot() as snap:  # the caller's transaction
                    assert heads(await snap.ledger_digest(seeded.org)) == expected[0]
                assert heads(await one.ledger_digest(seeded.org)) == expected[0]
        finally:
            await conn.close()

    asyncio.run(main())


def test_async_rotate_kek(dsn: str, seeded: Seeded) -> None:
    old, new = "async-test-kek-0123456789abcdefghijklmnop", "async-test-new-kek-zyxwvutsrqponmlkjih"

    async def main() -> None:
        async with costwarden.AsyncClient(dsn, kek=old) as ac:
            await ac.put_key(seeded.org, seeded.ws_vendor, "anthropic", "sk-ant-async-0001")
            steps: list[t.KekRotateBatch] = []
            result = await ac.rotate_kek(new, batch=1, progress=steps.append)
            assert (result.rewrapped, result.remaining) == (1, 0)
            assert [(s.rewrapped, s.remaining) for s in steps] == [(1, 0)]
            gens = await ac.kek_status()
            assert [(g.current, g.live_keys) for g in gens] == [(False, 0), (True, 1)]
        async with (
            costwarden.AsyncClient(dsn, kek=new) as ac,
            ac.reservation(
                seeded.org, seeded.ws_vendor, seeded.vendor_model, {"input_tokens": 10}
            ) as r,
        ):
            assert (await r.byok_key("anthropic")).secret == "sk-ant-async-0001"

    asyncio.run(main())
