"""Realtime and long calls (docs/realtime.md): a session is a reservation ticked with
cumulative audio_seconds (and tokens). When committed spend plus the in-flight cost
would pass a limit the tick answers 'abort'; whichever way the session ends --
commit, release by a crashing client, expiry -- the accrued usage is charged."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import psycopg
import pytest

import costwarden
from cwtest import Seeded

Conn = psycopg.Connection[Any]
WS = "ws-voice"
LIMIT = 60_000  # micro-USD a day on the workspace: one minute of audio at $0.001/s


@pytest.fixture
def voice(client: costwarden.Client, seeded: Seeded) -> Seeded:
    client.upsert_workspace(
        "acme", WS, model=seeded.realtime_model, billing_override="platform_managed"
    )
    client.set_budget("acme", "workspace", WS, "day", LIMIT)
    return seeded


def ledger(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "select entry_type, amount_micros, tokens, approximate, late, usage "
        "from costwarden._ledger where org_id = 'acme' order by seq"
    ).fetchall()


def held(conn: Conn) -> int:
    row = conn.execute(
        "select held_micros - g.unused_micros from costwarden._pools,"
        " costwarden._pool_lane_grants(pool_id) as g where org_id = 'acme' and scope_id = %s",
        (WS,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def session(client: costwarden.Client, s: Seeded) -> costwarden.types.Reservation:
    """A realtime session: committed spend 10 000 before it; ticks until abort."""
    client.report_spend("acme", WS, "earlier-calls", 10_000)  # committed spend in the window
    r = client.reserve("acme", WS, s.realtime_model, {"audio_seconds": 10})
    assert r.amount_micros == 10_000
    rid = r.reservation_id
    t1 = client.meter(rid, {"audio_seconds": Decimal("20.5"), "output_tokens": 50})
    assert (t1.metered_micros, t1.amount_micros, t1.action) == (21_500, 21_500, "continue")
    t2 = client.meter(rid, {"audio_seconds": 45, "output_tokens": 100})
    assert (t2.metered_micros, t2.amount_micros, t2.action) == (47_000, 47_000, "continue")
    # 10 000 committed + 51 000 in flight > 60 000: the hold cannot grow
    t3 = client.meter(rid, {"audio_seconds": 49, "output_tokens": 100})
    assert (t3.metered_micros, t3.amount_micros, t3.remaining_micros, t3.action) == (
        51_000,
        47_000,
        0,
        "abort",
    )
    return r


ACCRUED = {"audio_seconds": 49, "output_tokens": 100}


def test_commit_charges_the_actual_usage(
    client: costwarden.Client, voice: Seeded, admin_conn: Conn
) -> None:
    r = session(client, voice)
    result = client.commit(r.reservation_id, ACCRUED)
    assert (result.charged_micros, result.released_micros, result.overage_micros) == (
        51_000,
        0,
        4_000,
    )
    assert ledger(admin_conn)[-1] == ("charge", 51_000, 100, False, False, ACCRUED)
    assert held(admin_conn) == 0
    [status] = client.budget_status("acme", "workspace", WS)
    assert status.spent == 61_000  # overage is recorded in full ...
    refused = client.reserve(
        "acme", WS, voice.realtime_model, {"audio_seconds": 1}, raise_on_denied=False
    )
    assert refused.status == "denied"  # ... and the next reserve refuses


def test_a_crashing_client_releases_and_the_metered_usage_is_charged(
    client: costwarden.Client, voice: Seeded, admin_conn: Conn
) -> None:
    r = session(client, voice)
    assert client.release(r.reservation_id, "websocket dropped") == 0
    assert ledger(admin_conn)[-1] == ("charge", 51_000, 100, True, False, ACCRUED)
    assert held(admin_conn) == 0
    [status] = client.budget_status("acme", "workspace", WS)
    assert status.spent == 61_000


def test_the_client_context_manager_releases_on_an_exception(
    client: costwarden.Client, voice: Seeded, admin_conn: Conn
) -> None:
    with (
        pytest.raises(ConnectionError),
        client.reservation("acme", WS, voice.realtime_model, {"audio_seconds": 30}) as r,
    ):
        assert r.meter({"audio_seconds": 12}).action == "continue"
        raise ConnectionError("socket closed")
    assert ledger(admin_conn)[-1] == ("charge", 12_000, 0, True, False, {"audio_seconds": 12})
    assert held(admin_conn) == 0


def test_expiry_charges_the_metered_usage_and_a_late_commit_books_the_rest(
    client: costwarden.Client, voice: Seeded, admin_conn: Conn
) -> None:
    r = session(client, voice)
    admin_conn.execute(
        "update costwarden._reservations set expires_at = now() - interval '1 second' "
        "where reservation_id = %s",
        (r.reservation_id,),
    )
    assert client.expire() == 1
    assert ledger(admin_conn)[-1] == ("charge", 51_000, 100, True, False, ACCRUED)
    assert held(admin_conn) == 0
    # the client comes back late with the final usage: only the remainder is booked
    late = client.commit(r.reservation_id, {"audio_seconds": 50, "output_tokens": 100})
    assert (late.charged_micros, late.overage_micros) == (1_000, 1_000)
    assert ledger(admin_conn)[-1][:5] == ("charge", 1_000, 0, False, True)
    [status] = client.budget_status("acme", "workspace", WS)
    assert status.spent == 62_000


def test_expiry_with_expire_action_release_charges_nothing(
    client: costwarden.Client, voice: Seeded, admin_conn: Conn
) -> None:
    client.set_setting("expire_action", "release")
    r = session(client, voice)
    admin_conn.execute(
        "update costwarden._reservations set expires_at = now() - interval '1 second' "
        "where reservation_id = %s",
        (r.reservation_id,),
    )
    assert client.expire() == 1
    assert [e[0] for e in ledger(admin_conn)] == ["spend_report"]
    assert held(admin_conn) == 0


def test_a_token_quota_aborts_a_session_too(
    client: costwarden.Client, voice: Seeded, admin_conn: Conn
) -> None:
    client.set_budget("acme", "workspace", WS, "hour", 150, metric="tokens")
    r = client.reserve("acme", WS, voice.realtime_model, {"audio_seconds": 5, "output_tokens": 100})
    assert client.meter(r.reservation_id, {"audio_seconds": 6, "output_tokens": 150}).action == (
        "continue"
    )
    tick = client.meter(r.reservation_id, {"audio_seconds": 7, "output_tokens": 151})
    assert tick.action == "abort"
    client.commit(r.reservation_id, {"audio_seconds": 7, "output_tokens": 151})
    assert ledger(admin_conn)[-1][:3] == ("charge", 10_020, 151)


def test_ticks_extend_the_expiry(
    client: costwarden.Client, voice: Seeded, admin_conn: Conn
) -> None:
    from datetime import timedelta

    r = client.reserve(
        "acme", WS, voice.realtime_model, {"audio_seconds": 5}, ttl=timedelta(seconds=30)
    )
    admin_conn.execute(
        "update costwarden._reservations set expires_at = now() + interval '5 seconds' "
        "where reservation_id = %s",
        (r.reservation_id,),
    )
    client.meter(r.reservation_id, {"audio_seconds": 3})
    row = admin_conn.execute(
        "select expires_at - now() > interval '25 seconds' from costwarden._reservations "
        "where reservation_id = %s",
        (r.reservation_id,),
    ).fetchone()
    assert row == (True,)
