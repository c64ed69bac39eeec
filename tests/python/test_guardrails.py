"""The shadow report, the guardrail CLI commands and the guardrails demo section."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

import costwarden
from costwarden.cli import main
from cwtest import Seeded, expect_sqlstate, run_as, table_snapshot

Conn = psycopg.Connection[Any]


def usage_for(micros: int) -> dict[str, int]:
    return {"output_tokens": micros // 10}  # gpt-4o: 10 micros an output token


def cli(dsn: str, *args: str) -> Result:
    result = CliRunner().invoke(main, ["--dsn", dsn, *args])
    assert result.exit_code == 0, result.output
    return result


# -- shadow report ----------------------------------------------------------------------------


def test_the_shadow_report_lists_would_be_refusals(
    client: costwarden.Client, seeded: Seeded
) -> None:
    ws = seeded.ws_platform
    client.set_budget("acme", "workspace", ws, "day", 10_000, mode="shadow")
    client.set_budget("acme", "org", None, "hour", 1_000_000, metric="tokens", mode="shadow")
    client.set_budget("acme", "org", None, "hour", 1_000, metric="tokens", window="calendar")
    client.set_setting("billing_enforce", False)  # the enforce-mode token limit is shadowed too
    start = datetime.now(UTC)
    ids = []
    for _ in range(4):
        r = client.reserve("acme", ws, seeded.platform_model, usage_for(4_000))
        assert r.status == "held"
        ids.append(r.reservation_id)
    rows = client.shadow_report("acme")
    assert [
        (r.scope_kind, r.scope_id, r.period, r.metric, r.window_kind, r.limit_value) for r in rows
    ] == [
        ("org", None, "hour", "tokens", "calendar", 1_000),
        ("workspace", ws, "day", "cost", "rolling", 10_000),
    ]
    org, workspace = rows
    # 400 tokens each: the 3rd (1 200 > 1 000) and 4th would have been refused
    assert (org.code, org.refusals, org.requested, org.requested_micros) == (
        "token_quota_exceeded",
        2,
        Decimal(800),
        Decimal(8_000),
    )
    # 4 000 micros each: the 3rd (12 000 > 10 000) and 4th
    assert (
        workspace.code,
        workspace.refusals,
        workspace.requested,
        workspace.requested_micros,
    ) == (
        "budget_exceeded",
        2,
        Decimal(8_000),
        Decimal(8_000),
    )
    assert start <= workspace.first_seen <= workspace.last_seen
    # a meter tick that grows a hold past a shadow limit is counted on its reservation
    client.meter(ids[0], usage_for(9_000))
    again = {r.scope_kind: r for r in client.shadow_report("acme")}
    assert again["workspace"].refusals == 3
    assert again["workspace"].requested == 8_000 + 5_000
    # the time range is [from, to)
    assert (
        client.shadow_report("acme", start - timedelta(hours=2), start - timedelta(hours=1)) == []
    )
    assert client.shadow_report("globex") == []


@pytest.mark.parametrize(
    ("args", "sqlstate", "match"),
    [
        (("nope", None, None), "CW002", "p_org_id: unknown org"),
        ((None, None, None), "CW004", "p_org_id is required"),
        (("acme", "2024-02-01", "2024-01-01"), "CW004", "p_from must not be after p_to"),
    ],
)
def test_shadow_report_errors(
    admin_conn: Conn, seeded: Seeded, args: tuple[Any, ...], sqlstate: str, match: str
) -> None:
    before = table_snapshot(admin_conn)
    expect_sqlstate(
        admin_conn,
        sqlstate,
        "select * from costwarden.fn_shadow_report(%s, "
        "coalesce(%s::timestamptz, now() - interval '1 day'), coalesce(%s::timestamptz, now()))",
        args,
        match=match,
    )
    expect_sqlstate(
        admin_conn, "CW004", "select * from costwarden.fn_shadow_report('acme', null, now())"
    )
    assert table_snapshot(admin_conn) == before


def test_shadow_report_is_for_admins(admin_conn: Conn, seeded: Seeded) -> None:
    query = "select * from costwarden.fn_shadow_report('acme')"
    assert run_as(admin_conn, "costwarden_admin", query) == []
    expect_sqlstate(admin_conn, "42501", query, role="costwarden_service")


# -- the CLI ----------------------------------------------------------------------------------


def test_circuit_commands(dsn: str, client: costwarden.Client, seeded: Seeded) -> None:
    client.set_setting("circuit_failure_threshold", 2)
    assert cli(dsn, "circuits", "report", "openai", "--fail", "--error", "503").output == "closed\n"
    assert cli(dsn, "circuits", "report", "openai", "--fail").output == "open\n"
    status = cli(dsn, "circuits").output.splitlines()
    assert status[0].split() == [
        "provider",
        "state",
        "failures",
        "opened",
        "next",
        "probe",
        "last",
        "error",
    ]
    openai = next(line for line in status if line.startswith("openai"))
    assert " open " in openai and "2/2" in openai
    assert "failure_threshold" in cli(dsn, "circuits", "history").output
    assert cli(dsn, "circuits", "reset", "openai").output == "closed\n"
    result = CliRunner().invoke(main, ["--dsn", dsn, "circuits", "report", "nope", "--ok"])
    assert result.exit_code != 0 and "NotFound [CW002]" in result.output


def test_anomaly_commands(dsn: str, client: costwarden.Client, seeded: Seeded) -> None:
    client.report_spend("acme", seeded.ws_platform, "batch", 2_000_000)
    assert cli(dsn, "anomalies", "detect").output == "1 anomaly(ies) recorded\n"
    listing = cli(dsn, "anomalies", "list", "--org", "acme", "--open").output
    assert seeded.ws_platform in listing and "$2.000000" in listing
    [a] = client.anomalies()
    assert cli(dsn, "anomalies", "ack", str(a.anomaly_id)).output.startswith("anomaly")
    assert seeded.ws_platform not in cli(dsn, "anomalies", "list", "--open").output
    assert '"acked_by": "postgres"' in cli(dsn, "anomalies", "list", "--json").output
    result = CliRunner().invoke(main, ["--dsn", dsn, "anomalies", "ack", "99999"])
    assert result.exit_code != 0 and "NotFound [CW002]" in result.output


def test_shadow_report_command(dsn: str, client: costwarden.Client, seeded: Seeded) -> None:
    assert (
        cli(dsn, "shadow-report", "--org", "acme").output == "no would-be refusals in that range\n"
    )
    client.set_budget("acme", "workspace", seeded.ws_platform, "day", 100, mode="shadow")
    client.reserve("acme", seeded.ws_platform, seeded.platform_model, usage_for(1_000))
    out = cli(dsn, "shadow-report", "--org", "acme", "--since", "1h").output.splitlines()
    assert out[0].split()[:6] == ["scope", "id", "window", "limit", "code", "refusals"]
    assert "budget_exceeded" in out[2] and "$0.001000" in out[2]
    assert '"refusals": 1' in cli(dsn, "shadow-report", "--org", "acme", "--json").output


def test_spend_report_commands(dsn: str, seeded: Seeded) -> None:
    assert cli(
        dsn, "spend-report", "register", "acme", seeded.ws_platform, "gw", "--key", seeded.key
    )
    assert cli(dsn, "spend-report", "book", "acme", seeded.ws_platform, "gw", "1500").output == (
        "booked 1500 micros ($0.001500)\n"
    )
    sources = cli(dsn, "spend-report", "sources", "--org", "acme").output
    assert "gw" in sources and seeded.key in sources and "1500" in sources
    result = CliRunner().invoke(
        main, ["--dsn", dsn, "spend-report", "book", "acme", seeded.ws_platform, "gw", "--", "-5"]
    )
    assert result.exit_code != 0 and "InvalidArgument [CW004]" in result.output


# -- guardrail settings of the wrong type --------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("circuit_failure_threshold", '"5"'),
        ("circuit_failure_threshold", "0"),
        ("circuit_failure_threshold", "2.5"),
        ("circuit_cooldown", "30"),
        ("circuit_cooldown", '"soon"'),
        ("circuit_cooldown", '"-1 minute"'),
        ("anomaly_sigma", '"4"'),
        ("anomaly_sigma", "-1"),
        ("anomaly_min_micros", "1.5"),
        ("anomaly_min_micros", "-1"),
        ("anomaly_freeze", "1"),
        ("anomaly_freeze", '"true"'),
        ("anomaly_freeze", "null"),
    ],
)
def test_guardrail_settings_of_the_wrong_type_are_refused(
    admin_conn: Conn, key: str, value: str
) -> None:
    before = table_snapshot(admin_conn)
    expect_sqlstate(
        admin_conn,
        "CW004",
        "select costwarden.fn_setting_set(%s, %s::jsonb)",
        (key, value),
        match=f"setting {key}|p_value",
    )
    assert table_snapshot(admin_conn) == before
