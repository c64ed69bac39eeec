"""An outage under load, with a real server (docs/python.md, "When the database is
unavailable"): 8 threads on a Client and 8 asyncio tasks on an AsyncClient, sharing one
spool, run reserve -> commit in a loop; the server is stopped in immediate mode (every
connection dropped at once), kept down, and started again.

- on_unavailable='open': every call's usage is booked exactly once -- a reservation
  the database holds is committed once, a call made without it is booked once, priced
  by the snapshot in force at its call time (a new price takes effect mid-outage) --
  and the saga works again (a reservation held by the database) within 5 s of the
  restart, the spool being replayed as soon as the database answers;
- on_unavailable='closed': every call made while the server is down raises
  DatabaseUnavailable within the connect timeout (5 s by default): nothing hangs.

The outage lasts COSTWARDEN_OUTAGE_SECONDS (default 8; `make soak` runs 30): long enough
for every worker to go through the probe, the spool and the pool's reconnect backoff
several times, which is what a longer outage repeats."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

import costwarden
from costwarden import types as t
from test_spool import spooltest_database

OUTAGE_S = float(os.environ.get("COSTWARDEN_OUTAGE_SECONDS", "8"))
PACE_S = 0.02  # between two calls of one worker
MODEL = "openai/gpt-4o"


@pytest.fixture
def durable_server() -> Iterator[Any]:
    """A server of its own with durable commits (not the test clusters' fsync=off,
    synchronous_commit=off): an immediate stop must not lose an acknowledged commit."""
    from costwarden.embedded import EmbeddedCluster

    base = Path(tempfile.mkdtemp(prefix="costwarden-outage-"))
    base.chmod(0o755)
    cluster = EmbeddedCluster(base / "pgdata", fast=False)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Calls:
    lock: threading.Lock = field(default_factory=threading.Lock)
    # reservation id -> (spooled?, usage)
    made: dict[UUID, tuple[bool, dict[str, int]]] = field(default_factory=dict)
    # client ('sync', 'async') -> when it first had a reservation held by the database
    # after the restart began
    first_held_after: dict[str, float] = field(default_factory=dict)
    closed_latencies: list[float] = field(default_factory=list)
    closed_errors: list[BaseException] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def record(self, r: t.Reservation, usage: dict[str, int]) -> None:
        with self.lock:
            self.made[r.reservation_id] = (isinstance(r, t.SpooledReservation), usage)


def usage_of(rng: random.Random) -> dict[str, int]:
    return {"input_tokens": rng.randint(1, 5000), "output_tokens": rng.randint(0, 500)}


def test_outage_under_load_books_every_call_once_priced_at_call_time(
    durable_server: Any,
    tmp_path: Path,
) -> None:
    own_server = durable_server
    dsn = spooltest_database(own_server)
    spool_dir = tmp_path / "spool"
    calls = Calls()
    stop = threading.Event()
    down = threading.Event()  # the server is stopped
    restart_began: list[float] = []  # when the server was told to start again
    server_ready: list[float] = []  # when it accepted connections again
    now = datetime.now(UTC)
    # a new price takes effect in the middle of the outage
    price_change = now + timedelta(seconds=4 + OUTAGE_S / 2)
    with costwarden.Client(dsn, on_unavailable="closed") as admin:
        new_snapshot = admin.set_pricing(
            MODEL,
            {"input_tokens": Decimal("0.000005"), "output_tokens": Decimal("0.00002")},
            effective_from=price_change,
        )

    def after_restart(client: str, r: t.Reservation) -> None:
        if restart_began and not isinstance(r, t.SpooledReservation):
            with calls.lock:
                calls.first_held_after.setdefault(client, time.monotonic())

    sync_client = costwarden.Client(
        dsn, on_unavailable="open", spool_dir=spool_dir, pool_size=8, timeout=2
    )

    def sync_worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                usage = usage_of(rng)
                r = sync_client.reserve("acme", "ws", MODEL, usage)
                calls.record(r, usage)
                after_restart("sync", r)
                sync_client.commit(r.reservation_id, usage)
                time.sleep(PACE_S)
        except BaseException as exc:
            calls.errors.append(exc)

    async def async_workers() -> None:
        async with costwarden.AsyncClient(
            dsn, on_unavailable="open", spool_dir=spool_dir, pool_size=8, timeout=2
        ) as ac:

            async def worker(seed: int) -> None:
                rng = random.Random(seed)
                while not stop.is_set():
                    usage = usage_of(rng)
                    r = await ac.reserve("acme", "ws", MODEL, usage)
                    calls.record(r, usage)
                    after_restart("async", r)
                    await ac.commit(r.reservation_id, usage)
                    await asyncio.sleep(PACE_S)

            try:
                await asyncio.gather(*(worker(100 + n) for n in range(8)))
            except BaseException as exc:
                calls.errors.append(exc)

    def closed_worker() -> None:
        """on_unavailable='closed' with the default timeouts: measured while down."""
        with costwarden.Client(dsn, on_unavailable="closed") as closed:
            while not stop.is_set():
                if not down.is_set():
                    time.sleep(0.05)
                    continue
                start = time.monotonic()
                try:
                    closed.reserve("acme", "ws", MODEL, {"input_tokens": 1})
                except costwarden.DatabaseUnavailable:
                    if down.is_set():
                        calls.closed_latencies.append(time.monotonic() - start)
                except BaseException as exc:
                    if down.is_set():
                        calls.closed_errors.append(exc)

    threads = [threading.Thread(target=sync_worker, args=(n,)) for n in range(8)]
    threads.append(threading.Thread(target=lambda: asyncio.run(async_workers())))
    threads += [threading.Thread(target=closed_worker) for _ in range(2)]
    for th in threads:
        th.start()
    try:
        time.sleep(2)  # load with the database up
        own_server.stop(mode="immediate")
        down.set()
        time.sleep(OUTAGE_S)
        down.clear()
        restart_began.append(time.monotonic())
        own_server.start()
        server_ready.append(time.monotonic())
        deadline = time.monotonic() + 30
        while len(calls.first_held_after) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(3)  # load with the database back
    finally:
        stop.set()
        for th in threads:
            th.join(60)
    assert not calls.errors, calls.errors
    sync_client.replay_spool()  # whatever the automatic replays left (none, normally)
    sync_client.close()

    # the saga works again within 5 s of the restart, in both clients: from the moment
    # the restarted server accepts connections (its own start, crash recovery included,
    # is the server's: measured apart) to each client's first reservation held by the
    # database. The probe (one call a second) finds the database back and has the pool
    # reconnect at once, whatever the pool's reconnect backoff reached during the outage.
    assert set(calls.first_held_after) == {"sync", "async"}, calls.first_held_after
    startup = server_ready[0] - restart_began[0]
    recovery = {c: max(0.0, at - server_ready[0]) for c, at in calls.first_held_after.items()}
    for client, seconds in recovery.items():
        assert seconds < 5, f"{client}: saga back {seconds:.2f} s after the restart"

    # closed: every call during the outage raised DatabaseUnavailable, within the timeout
    assert not calls.closed_errors, calls.closed_errors[:3]
    assert calls.closed_latencies, "no closed call was made during the outage"
    assert max(calls.closed_latencies) <= 5.5, max(calls.closed_latencies)

    spooled = {rid: u for rid, (s, u) in calls.made.items() if s}
    held = {rid: u for rid, (s, u) in calls.made.items() if not s}
    assert len(spooled) > 50 and len(held) > 50, (len(spooled), len(held))
    with psycopg.connect(dsn) as conn:
        price = lambda snapshot, usage: conn.execute(  # noqa: E731
            "select amount_micros from costwarden._reservation_price(%s, %s::jsonb)",
            (snapshot, psycopg.types.json.Jsonb(usage)),
        ).fetchone()[0]
        # reservations the database held: committed once, at their snapshot
        rows = conn.execute(
            "select r.reservation_id, r.status, r.pricing_snapshot_id, r.commit_usage, "
            "  r.charged_micros, count(l.seq), coalesce(sum(l.amount_micros), 0) "
            "from costwarden._reservations r "
            "left join costwarden._ledger l on l.reservation_id = r.reservation_id "
            "group by r.reservation_id"
        ).fetchall()
        assert set(held) <= {r[0] for r in rows}
        for rid, status, snapshot, commit_usage, charged, entries, booked in rows:
            if rid not in held:
                # reserved by the server as it went down, the answer lost: the client
                # went on with a call of its own (spooled); this hold books nothing
                assert status in ("held", "expired") and entries == 0, rid
                continue
            assert (status, commit_usage, entries) == ("committed", held[rid], 1), rid
            assert charged == booked == price(snapshot, held[rid]), rid
        # calls made without the database: booked once, priced at their call time
        ops = conn.execute(
            "select operation_id, called_at, pricing_snapshot_id, booked_micros, usage "
            "from costwarden._replayed_operations where kind = 'usage'"
        ).fetchall()
        assert {o[0] for o in ops} == set(spooled)
        snapshots = set()
        for rid, called_at, snapshot, booked, usage in ops:
            expected = new_snapshot if called_at >= price_change else new_snapshot - 1
            assert snapshot == expected, (rid, called_at)
            assert usage == spooled[rid] and booked == price(snapshot, usage), rid
            snapshots.add(snapshot)
        assert snapshots == {new_snapshot - 1, new_snapshot}  # both prices were in force
        total_reports = conn.execute(
            "select coalesce(sum(amount_micros), 0) from costwarden._ledger "
            "where entry_type = 'spend_report'"
        ).fetchone()[0]
        assert total_reports == sum(o[3] for o in ops)
        assert conn.execute("select count(*) from costwarden.fn_reconcile()").fetchone() == (0,)
        assert conn.execute(
            "select bool_and(ok) from costwarden.fn_ledger_verify()"
        ).fetchone() == (True,)
    print(
        f"outage {OUTAGE_S:.0f} s: {len(held)} reservations held by the database, "
        f"{len(spooled)} calls spooled; the server started in {startup:.2f} s, the saga "
        f"back {recovery['sync']:.2f} s (Client) and {recovery['async']:.2f} s "
        "(AsyncClient) after it; "
        f"closed calls failed within {max(calls.closed_latencies):.2f} s"
    )


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-s", "-q"])
