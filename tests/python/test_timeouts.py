"""Timeouts a user expects (docs/python.md, "Timeouts"): a call blocked on a lock held
elsewhere fails with StatementTimeout instead of hanging, on both clients and on a
connection the client did not open; waiting for a pooled connection is bounded."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import costwarden
from cwtest import Seeded

CHAT = {"input_tokens": 1000, "output_tokens": 100}


@pytest.fixture
def locked_pools(dsn: str, seeded: Seeded) -> Iterator[None]:
    """Another transaction holds every pool of the org (as a stuck admission would)."""
    with psycopg.connect(dsn) as other:
        other.execute(
            "select pool_id from costwarden._pools where org_id = %s for update", (seeded.org,)
        )
        yield
        other.rollback()


def test_a_call_blocked_on_a_lock_fails_with_a_clear_error(
    dsn: str, seeded: Seeded, locked_pools: None
) -> None:
    with costwarden.Client(dsn, on_unavailable="closed", statement_timeout=0.5) as c:
        start = time.monotonic()
        with pytest.raises(costwarden.StatementTimeout, match="timed out") as err:
            c.reserve(seeded.org, seeded.ws_platform, seeded.platform_model, CHAT)
        assert time.monotonic() - start < 5
        assert err.value.hint is not None and "lock" in err.value.hint
        assert not isinstance(err.value, costwarden.DatabaseUnavailable)  # never spooled

    async def main() -> None:
        async with costwarden.AsyncClient(
            dsn, on_unavailable="closed", statement_timeout=0.5
        ) as ac:
            with pytest.raises(costwarden.StatementTimeout):
                await ac.reserve(seeded.org, seeded.ws_platform, seeded.platform_model, CHAT)

    asyncio.run(main())


def test_statement_timeout_on_a_connection_the_client_did_not_open(
    dsn: str, seeded: Seeded, locked_pools: None
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        c = costwarden.Client(conn, on_unavailable="closed", statement_timeout=0.3)
        with pytest.raises(costwarden.StatementTimeout):
            c.reserve(seeded.org, seeded.ws_platform, seeded.platform_model, CHAT)
        # the timeout was set for that transaction only
        assert conn.execute("show statement_timeout").fetchone() == ("0",)


def test_a_fail_open_client_does_not_spool_a_timeout(
    dsn: str, seeded: Seeded, locked_pools: None, tmp_path: Any
) -> None:
    with costwarden.Client(
        dsn, on_unavailable="open", spool_dir=tmp_path, statement_timeout=0.3
    ) as c:
        with pytest.raises(costwarden.StatementTimeout):
            c.reserve(seeded.org, seeded.ws_platform, seeded.platform_model, CHAT)
        assert c.unavailable.spool is not None and c.unavailable.spool.pending() == 0


def test_waiting_for_a_pooled_connection_is_bounded(dsn: str, seeded: Seeded) -> None:
    with costwarden.Client(dsn, on_unavailable="closed", pool_size=1, timeout=0.5) as c:
        held = threading.Event()
        done = threading.Event()

        def hold_the_only_connection() -> None:
            with c.ledger_snapshot():
                held.set()
                done.wait(10)

        t = threading.Thread(target=hold_the_only_connection)
        t.start()
        try:
            assert held.wait(10)
            start = time.monotonic()
            with pytest.raises(costwarden.DatabaseUnavailable, match="couldn't get a connection"):
                c.quote(seeded.org, seeded.ws_platform, seeded.platform_model, CHAT)
            assert 0.4 < time.monotonic() - start < 5
        finally:
            done.set()
            t.join()


def test_bad_timeouts_are_refused() -> None:
    with pytest.raises(ValueError, match="statement_timeout"):
        costwarden.Client("host=127.0.0.1", on_unavailable="closed", statement_timeout=0)
