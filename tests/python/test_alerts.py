"""Alerts on channel costwarden_alerts (docs/alerts.md), heard with a real LISTEN
connection, and `costwarden watch`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

import costwarden
from cwtest import Seeded, notifications_until_marker

Conn = psycopg.Connection[Any]
CHANNEL = "costwarden_alerts"
BUDGET_KEYS = {
    "kind",
    "org_id",
    "scope_kind",
    "scope_id",
    "period",
    "metric",
    "window",
    "window_slot",
    "threshold_percent",
    "level",
    "limit",
    "refused",
    "at",
}


@dataclass(frozen=True)
class Listener:
    """A session LISTENing on the alerts channel, and one that sends the end markers."""

    conn: Conn
    sender: Conn


@pytest.fixture
def listener(dsn: str) -> Iterator[Listener]:
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        psycopg.connect(dsn, autocommit=True) as sender,
    ):
        conn.execute(f"listen {CHANNEL}")
        yield Listener(conn, sender)


def drain(listener: Listener, sender: Conn | None = None) -> list[dict[str, Any]]:
    """The alerts committed so far and not yet read: those heard before a marker sent now
    (by ``sender``, the session that did the work, or else the listener's own sender).
    The marker orders them; no time window is involved. A notification carries only the
    alert's kind, id and level (SPEC §12); the alert is read with fn_alert_get."""
    notes = []
    for note in notifications_until_marker(listener.conn, sender or listener.sender, CHANNEL):
        assert note.channel == CHANNEL
        notes.append(json.loads(note.payload))
    out = []
    for announced in notes:
        assert set(announced) == {"kind", "alert_id", "level"}, announced
        row = listener.conn.execute(
            "select kind, level, payload from costwarden.fn_alert_get(%s)", (announced["alert_id"],)
        ).fetchone()
        assert row is not None and (row[0], row[1]) == (announced["kind"], announced["level"])
        out.append(row[2])
    return out


def brief(alerts: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(a["scope_kind"], a["threshold_percent"], a["level"], a["refused"]) for a in alerts]


def usage_for(micros: int) -> dict[str, int]:
    """gpt-4o output tokens at $0.00001: 10 micros each."""
    assert micros % 10 == 0
    return {"output_tokens": micros // 10}


def reserve(client: costwarden.Client, s: Seeded, micros: int) -> costwarden.types.Reservation:
    return client.reserve(
        s.org, s.ws_platform, s.platform_model, usage_for(micros), raise_on_denied=False
    )


def test_reserve_crossing_80_and_100_percent_once_per_window(
    client: costwarden.Client, seeded: Seeded, listener: Listener
) -> None:
    client.set_budget("acme", "workspace", seeded.ws_platform, "day", 10_000)
    drain(listener)
    reserve(client, seeded, 7_000)
    assert drain(listener) == []  # 70%
    reserve(client, seeded, 1_000)
    [a80] = drain(listener)
    assert set(a80) == BUDGET_KEYS
    assert (a80["kind"], a80["org_id"], a80["scope_id"], a80["period"], a80["metric"]) == (
        "budget",
        "acme",
        seeded.ws_platform,
        "day",
        "cost",
    )
    assert (a80["window"], a80["threshold_percent"], a80["level"], a80["limit"]) == (
        "rolling",
        80,
        8_000,
        10_000,
    )
    assert a80["refused"] is False
    r = reserve(client, seeded, 2_000)
    assert brief(drain(listener)) == [("workspace", 100, 10_000, False)]
    assert reserve(client, seeded, 10).status == "denied"
    assert drain(listener) == []  # already announced in this window
    client.release(r.reservation_id)
    reserve(client, seeded, 2_000)
    assert drain(listener) == []  # crossing again in the same window: no repeat


def test_a_refused_request_alerts_on_the_level_already_reached(
    client: costwarden.Client, seeded: Seeded, listener: Listener
) -> None:
    reserve(client, seeded, 8_500)  # no limit yet: nothing to announce
    client.set_budget("acme", "org", None, "hour", 10_000)
    assert reserve(client, seeded, 9_000).status == "denied"
    assert brief(drain(listener)) == [("org", 80, 8_500, True)]
    client.set_budget("acme", "org", None, "day", 20_000)
    assert reserve(client, seeded, 9_000).status == "denied"  # by the hour limit
    assert drain(listener) == []  # day: 8 500 held + 9 000 refused, the level stays at 42%


def test_shadow_limits_alert_on_the_level_the_call_reaches(
    client: costwarden.Client, seeded: Seeded, listener: Listener
) -> None:
    client.set_budget("acme", "workspace", seeded.ws_platform, "day", 1_000, mode="shadow")
    r = reserve(client, seeded, 5_000)
    assert r.status == "held"
    assert brief(drain(listener)) == [
        ("workspace", 80, 5_000, False),
        ("workspace", 100, 5_000, False),
    ]


def test_commit_overage_crossing_alerts(
    client: costwarden.Client, seeded: Seeded, listener: Listener
) -> None:
    client.set_budget("acme", "workspace", seeded.ws_platform, "week", 10_000)
    r = reserve(client, seeded, 5_000)
    assert drain(listener) == []
    result = client.commit(r.reservation_id, usage_for(12_000))
    assert result.overage_micros == 7_000
    alerts = drain(listener)
    assert brief(alerts) == [("workspace", 80, 12_000, False), ("workspace", 100, 12_000, False)]
    assert {a["period"] for a in alerts} == {"week"}


def test_spend_report_crossing_alerts(
    client: costwarden.Client, seeded: Seeded, listener: Listener
) -> None:
    client.set_budget("acme", "org", None, "month", 10_000, window="calendar")
    client.report_spend("acme", seeded.ws_platform, "edge", 8_500)
    [alert] = drain(listener)
    assert (alert["scope_kind"], alert["window"], alert["threshold_percent"], alert["level"]) == (
        "org",
        "calendar",
        80,
        8_500,
    )
    assert alert["window_slot"].startswith(time.strftime("%Y-%m-01", time.gmtime()))


def test_circuit_and_anomaly_events_are_announced(
    client: costwarden.Client, seeded: Seeded, listener: Listener
) -> None:
    client.set_setting("circuit_failure_threshold", 1)
    client.report_provider("openai", False, "timeout")
    [circuit] = drain(listener)
    assert circuit["kind"] == "circuit"
    assert (circuit["provider"], circuit["from_state"], circuit["to_state"]) == (
        "openai",
        "closed",
        "open",
    )
    assert (circuit["reason"], circuit["error"]) == ("failure_threshold", "timeout")
    client.report_spend("acme", seeded.ws_platform, "batch", 3_000_000)
    client.detect_spend_anomalies()
    [anomaly] = drain(listener)
    assert anomaly["kind"] == "anomaly"
    assert (anomaly["org_id"], anomaly["workspace_id"], anomaly["spent_micros"]) == (
        "acme",
        seeded.ws_platform,
        3_000_000,
    )
    assert anomaly["frozen"] is False


def test_an_alert_is_sent_only_when_the_transaction_commits(
    seeded: Seeded, listener: Listener, dsn: str, client: costwarden.Client
) -> None:
    client.set_budget("acme", "workspace", seeded.ws_platform, "day", 1_000)
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "select * from costwarden.fn_cost_reserve('acme', %s, %s, %s::jsonb)",
            (seeded.ws_platform, seeded.platform_model, '{"output_tokens": 90}'),
        )
        conn.rollback()
        # the marker comes from the session whose transaction was rolled back
        assert drain(listener, conn) == []
        # the same call, committed, does cross 80%: the rollback is what kept it quiet
        conn.execute(
            "select * from costwarden.fn_cost_reserve('acme', %s, %s, %s::jsonb)",
            (seeded.ws_platform, seeded.platform_model, '{"output_tokens": 90}'),
        )
        conn.commit()
        assert brief(drain(listener, conn)) == [("workspace", 80, 900, False)]


def test_costwarden_watch_prints_alerts_live(
    client: costwarden.Client, seeded: Seeded, dsn: str
) -> None:
    exe = Path(sys.executable).with_name("costwarden")
    proc = subprocess.Popen(
        [str(exe), "--dsn", dsn, "watch", "--count", "2", "--timeout", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert "listening on costwarden_alerts" in proc.stderr.readline()
        client.set_budget("acme", "workspace", seeded.ws_platform, "day", 1_000)
        reserve(client, seeded, 1_000)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(a["kind"], a["threshold_percent"]) for a in lines] == [("budget", 80), ("budget", 100)]


def test_watch_with_a_timeout_and_a_kind_filter(
    client: costwarden.Client, seeded: Seeded, dsn: str
) -> None:
    from click.testing import CliRunner

    from costwarden.cli import main

    client.set_budget("acme", "workspace", seeded.ws_platform, "day", 1_000)
    start = time.monotonic()
    result = CliRunner().invoke(
        main, ["--dsn", dsn, "watch", "--timeout", "0.5", "--kind", "anomaly"]
    )
    assert result.exit_code == 0, result.output
    assert time.monotonic() - start < 10
    assert result.stdout == ""


def test_client_reads_the_alert_a_notification_announces(
    client: costwarden.Client, seeded: Seeded, listener: Listener
) -> None:
    client.set_budget("acme", "workspace", seeded.ws_platform, "day", 10_000)
    drain(listener)
    reserve(client, seeded, 8_000)
    [note] = notifications_until_marker(listener.conn, listener.sender, CHANNEL)
    announced = json.loads(note.payload)
    alert = client.alert(announced["alert_id"])
    assert (alert.alert_id, alert.kind, alert.level) == (
        announced["alert_id"],
        announced["kind"],
        announced["level"],
    )
    assert alert.org_id == "acme"
    assert alert.payload["threshold_percent"] == 80
    assert alert.payload["scope_id"] == seeded.ws_platform
    with pytest.raises(costwarden.NotFound):
        client.alert(announced["alert_id"] + 1_000_000)
