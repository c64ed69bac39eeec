"""Spend anomalies and workspace freezes (SPEC §6).

The history is synthetic: a week of hourly spend written into the spend totals and marks
with the internal ``costwarden._pool_add_spend`` (superuser), backdated. The spike
goes through ``fn_spend_report_cumulative`` and the detection is the real
``fn_detect_spend_anomalies``."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import psycopg
import pytest

import costwarden
from cwtest import Seeded, expect_sqlstate, run_as, table_snapshot

Conn = psycopg.Connection[Any]
CHAT = {"input_tokens": 100}


def backfill(conn: Conn, workspace_id: str, per_hour: list[int], org: str = "acme") -> None:
    """per_hour[k - 1] micro-USD in the k-th clock hour before the detector's window."""
    conn.execute(
        "select costwarden._pool_add_spend("
        "  array[(select pool_id from costwarden._pools"
        "         where org_id = %s and kind = 'workspace' and scope_id = %s)],"
        "  x.m, 0,"
        "  date_trunc('hour', date_trunc('minute', now()) - interval '59 minutes')"
        "  - make_interval(hours => x.k::integer) + interval '10 minutes')"
        "from unnest(%s::bigint[]) with ordinality as x (m, k)",
        (org, workspace_id, per_hour),
    )


def reserve_codes(client: costwarden.Client, s: Seeded, ws: str) -> list[str] | str:
    r = client.reserve(s.org, ws, s.platform_model, CHAT, raise_on_denied=False)
    return r.status if r.status == "held" else [x.code for x in r.reasons]


def test_a_spike_after_a_quiet_week_freezes_until_acknowledged(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    client.set_setting("anomaly_freeze", True)
    backfill(admin_conn, seeded.ws_platform, [100_000] * 168)
    backfill(admin_conn, seeded.ws_empty, [100_000] * 168)
    assert client.detect_spend_anomalies() == 0  # a quiet week is not an anomaly
    client.report_spend("acme", seeded.ws_platform, "batch", 5_000_000)
    client.report_spend("acme", seeded.ws_empty, "batch", 400_000)  # below min_micros

    assert client.detect_spend_anomalies() == 1
    [a] = client.anomalies("acme")
    assert (a.workspace_id, a.spent_micros, a.frozen, a.acked_at) == (
        seeded.ws_platform,
        5_000_000,
        True,
        None,
    )
    assert a.mean_micros == Decimal("100000.000")
    assert a.stddev_micros == 0
    assert a.threshold_micros == 1_000_000  # mean + 4 sd < anomaly_min_micros
    assert a.window_end > a.window_start
    assert a.hour_start == a.detected_at.replace(minute=0, second=0, microsecond=0)

    denied = client.reserve(
        "acme", seeded.ws_platform, seeded.platform_model, CHAT, raise_on_denied=False
    )
    assert denied.status == "denied"
    [reason] = denied.reasons
    assert (reason.code, reason.scope_kind, reason.scope_id, reason.enforced) == (
        "anomaly_freeze",
        "workspace",
        seeded.ws_platform,
        True,
    )
    assert reserve_codes(client, seeded, seeded.ws_empty) == "held"  # per workspace
    # the same spike is not reported again
    assert client.detect_spend_anomalies() == 0

    client.ack_anomaly(a.anomaly_id)
    assert reserve_codes(client, seeded, seeded.ws_platform) == "held"
    [entry] = client.audit(action="anomaly_ack")
    assert entry.org_id == "acme"
    assert entry.target == {"anomaly_id": a.anomaly_id, "workspace_id": seeded.ws_platform}
    assert entry.before == {"acked_at": None, "frozen": True}
    assert entry.after is not None and entry.after["frozen"] is False
    [acked] = client.anomalies("acme")
    assert acked.acked_at is not None and acked.acked_by == "postgres"
    assert client.anomalies("acme", open_only=True) == []
    # an acknowledged spike does not re-freeze at once, and a second ack is a no-op
    assert client.detect_spend_anomalies() == 0
    client.ack_anomaly(a.anomaly_id)
    assert len(client.audit(action="anomaly_ack")) == 1


def test_without_anomaly_freeze_it_is_recorded_but_not_frozen(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    backfill(admin_conn, seeded.ws_platform, [0] * 168)  # a workspace with no history
    client.report_spend("acme", seeded.ws_platform, "batch", 2_000_000)
    assert client.detect_spend_anomalies() == 1
    [a] = client.anomalies()
    assert a.frozen is False
    assert reserve_codes(client, seeded, seeded.ws_platform) == "held"


def test_noisy_but_normal_history_is_no_anomaly(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    client.set_setting("anomaly_freeze", True)
    rng = random.Random(20240611)
    week = [rng.randint(500_000, 3_000_000) for _ in range(168)]
    backfill(admin_conn, seeded.ws_platform, week)
    client.report_spend("acme", seeded.ws_platform, "svc", max(week))  # a busy, normal hour
    assert client.detect_spend_anomalies() == 0
    assert reserve_codes(client, seeded, seeded.ws_platform) == "held"
    # with anomaly_sigma = 0 the same hour is above the mean: an anomaly
    client.set_setting("anomaly_sigma", 0)
    assert client.detect_spend_anomalies() == 1


def test_a_running_detection_makes_a_second_one_return_at_once(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn, dsn: str
) -> None:
    client.report_spend("acme", seeded.ws_platform, "batch", 2_000_000)
    # "at once": a detection that waited for the lock would fail here instead of hanging
    with (
        costwarden.Client(
            dsn, statement_timeout=2, connect_kwargs={"options": "-c lock_timeout=2s"}
        ) as impatient,
        psycopg.connect(dsn) as other,
    ):
        # what a running detection holds: the row lock of its _locks row
        other.execute(
            "select from costwarden._locks where lock_name = 'detect_spend_anomalies' for update"
        )
        assert impatient.detect_spend_anomalies() == -1  # did not run, and says so
    assert client.detect_spend_anomalies() == 1


@pytest.mark.parametrize(
    ("anomaly_id", "sqlstate", "match"),
    [(424242, "CW002", "p_anomaly_id: unknown anomaly 424242"), (None, "CW004", "p_anomaly_id")],
)
def test_bad_acks_write_nothing(
    admin_conn: Conn, seeded: Seeded, anomaly_id: int | None, sqlstate: str, match: str
) -> None:
    before = table_snapshot(admin_conn)
    expect_sqlstate(
        admin_conn,
        sqlstate,
        "select costwarden.fn_anomaly_ack(p_anomaly_id => %s::bigint)",
        (anomaly_id,),
        match=match,
    )
    assert table_snapshot(admin_conn) == before


def test_roles(admin_conn: Conn, seeded: Seeded) -> None:
    detect = "select costwarden.fn_detect_spend_anomalies()"
    assert run_as(admin_conn, "costwarden_service", detect) == [(0,)]
    expect_sqlstate(admin_conn, "42501", detect, role="costwarden_tenant")
    for query in (
        "select costwarden.fn_anomaly_ack(1)",
        "select * from costwarden.fn_anomalies_list()",
    ):
        expect_sqlstate(admin_conn, "42501", query, role="costwarden_service")


def test_the_pg_cron_job_is_declared(admin_conn: Conn) -> None:
    from costwarden.migrate import CRON_JOBS

    assert ("costwarden-anomalies", "*/5 * * * *", "fn_detect_spend_anomalies") in CRON_JOBS
    assert admin_conn.execute(
        "select to_regprocedure('costwarden.fn_detect_spend_anomalies()') is not null"
    ).fetchone() == (True,)
