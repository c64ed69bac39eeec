"""The batch RPCs fn_cost_reserve_many / fn_cost_commit_many: the same rules and results
as single calls, all or nothing, and no deadlock between batches that overlap in any order."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

import costwarden
from costwarden import InvalidArgument, NotFound
from cwtest import Seeded, expect_sqlstate, table_snapshot

USAGE = {"input_tokens": 1000, "output_tokens": 500}  # gpt-4o: 7500 micros
COST = 7500


def request(s: Seeded, **kw: Any) -> dict[str, Any]:
    return {
        "org_id": s.org,
        "workspace_id": s.ws_platform,
        "model": s.platform_model,
        "usage": USAGE,
        **kw,
    }


def test_a_batch_decides_like_single_calls_in_order(
    client: costwarden.Client, seeded: Seeded
) -> None:
    # room for exactly two holds: the third request is denied, as it would be alone
    client.set_budget(seeded.org, "workspace", seeded.ws_platform, "day", 2 * COST)
    out = client.reserve_many(
        [request(seeded), request(seeded, user_id="alice", key_id=seeded.key), request(seeded)]
    )
    assert [r.status for r in out] == ["held", "held", "denied"]
    assert [r.amount_micros for r in out] == [COST, COST, COST]
    assert out[2].reasons and out[2].reasons[0].code == "budget_exceeded"
    assert out[2].reasons[0].held == 2 * COST
    (st,) = client.budget_status(seeded.org, "workspace", seeded.ws_platform)
    assert (st.spent, st.held) == (0, 2 * COST)

    done = client.commit_many(
        [
            {"reservation_id": out[1].reservation_id, "usage": {"input_tokens": 1000}},
            {"reservation_id": out[0].reservation_id, "usage": USAGE, "approximate": True},
        ]
    )
    assert [d.charged_micros for d in done] == [2500, COST]
    assert [d.released_micros for d in done] == [5000, 0]
    assert [d.entry_seq for d in done] == [1, 2]  # booked in the order given
    (st,) = client.budget_status(seeded.org, "workspace", seeded.ws_platform)
    assert (st.spent, st.held) == (2500 + COST, 0)
    # a repeat of a commit returns its first result, as a single repeat does
    again = client.commit_many(
        [{"reservation_id": out[0].reservation_id, "usage": USAGE, "approximate": True}]
    )
    assert again == [done[1]]
    assert all(v.ok for v in client.ledger_verify(seeded.org))


def test_idempotency_keys_repeat_within_and_across_batches(
    client: costwarden.Client, seeded: Seeded
) -> None:
    first = client.reserve_many(
        [request(seeded, idempotency_key="k1"), request(seeded, idempotency_key="k1")]
    )
    assert first[0].reservation_id == first[1].reservation_id
    (again,) = client.reserve_many([request(seeded, idempotency_key="k1")])
    assert again.reservation_id == first[0].reservation_id
    (single,) = [
        client.reserve(
            seeded.org, seeded.ws_platform, seeded.platform_model, USAGE, idempotency_key="k1"
        )
    ]
    assert single.reservation_id == first[0].reservation_id


def test_an_error_fails_the_whole_batch_naming_the_element(
    client: costwarden.Client, seeded: Seeded, admin_conn: psycopg.Connection[Any]
) -> None:
    before = table_snapshot(admin_conn)
    with pytest.raises(InvalidArgument, match=r"p_requests\[1\]: p_usage.input_tokens"):
        client.reserve_many([request(seeded), request(seeded, usage={"input_tokens": -1})])
    with pytest.raises(InvalidArgument, match=r"p_requests\[0\]: unknown key 'modl'"):
        client.reserve_many([{"org_id": seeded.org, "modl": "x"}])
    with pytest.raises(InvalidArgument, match=r"p_requests\[0\]: invalid input syntax"):
        client.reserve_many([request(seeded, ttl="soon")])
    with pytest.raises(NotFound, match=r"p_commits\[0\]: p_reservation_id: unknown reservation"):
        client.commit_many(
            [{"reservation_id": "00000000-0000-0000-0000-000000000000", "usage": USAGE}]
        )
    assert table_snapshot(admin_conn) == before
    expect_sqlstate(
        admin_conn,
        "CW004",
        "select * from costwarden.fn_cost_reserve_many('[]')",
        match="p_requests must have 1 to 1000 elements",
    )
    expect_sqlstate(
        admin_conn,
        "CW004",
        "select * from costwarden.fn_cost_commit_many('{}')",
        match="p_commits must be a JSON array",
    )


def test_overlapping_batches_in_opposite_orders_never_deadlock(
    client: costwarden.Client, seeded: Seeded, dsn: str
) -> None:
    """Two gateways batch the same two orgs' calls in opposite orders, many times at
    once: every lock level is taken up front in order, so none waits in a cycle."""
    client.set_budget(seeded.org, "workspace", seeded.ws_platform, "day", 10**12)
    a = request(seeded)
    b = {
        "org_id": seeded.other_org,
        "workspace_id": seeded.other_ws,
        "model": seeded.platform_model,
        "usage": USAGE,
    }
    errors: list[BaseException] = []

    def gateway(order: list[dict[str, Any]]) -> None:
        try:
            with costwarden.Client(dsn, pool_size=1) as c:
                for _ in range(15):
                    held = c.reserve_many(order)
                    c.commit_many(
                        [
                            {"reservation_id": r.reservation_id, "usage": USAGE}
                            for r in reversed(held)
                        ]
                    )
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [
        threading.Thread(target=gateway, args=([a, b] if i % 2 else [b, a],)) for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for org in (seeded.org, seeded.other_org):
        assert all(v.ok for v in client.ledger_verify(org))
    (st,) = client.budget_status(seeded.org, "workspace", seeded.ws_platform)
    assert (st.spent, st.held) == (6 * 15 * COST, 0)
