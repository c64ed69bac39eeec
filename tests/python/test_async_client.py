"""AsyncClient: the same calls and result types as Client, over psycopg's async API."""

from __future__ import annotations

import asyncio
import inspect

import pytest

import costwarden
from cwtest import Seeded

#: Client methods that are sync-only by design (multi-step admin operations and the
#: on_unavailable spool, whose replay runs from a worker or the CLI).
SYNC_ONLY = {"replay_spool", "ledger_snapshot", "rotate_kek", "close"}


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
    assert sync - asyn - SYNC_ONLY == set()
    for name in sync & asyn - {"reservation", "close"}:
        assert inspect.iscoroutinefunction(getattr(costwarden.AsyncClient, name)), name


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
