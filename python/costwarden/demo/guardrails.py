"""Guardrails in the demo (SPEC §6): a provider outage opening and closing a circuit,
a spend spike freezing a workspace, and the shadow report of a shadow-mode org.

``demo_section(dsn, echo)`` is wired into ``costwarden demo``. It is safe to run
again on the same database: the spike uses a fresh workspace per run, and the
runtime settings it changes are put back as they were.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from .._text import table as _table
from .._text import usd
from ..client import Client
from ..errors import BudgetExceeded, CostwardenError

Echo = Callable[[str], None]

DEMO_ORG = "demo-guardrails"
SHADOW_ORG = "demo-shadow"
CIRCUIT_MODEL = "google/gemini-1.5-flash"
SPIKE_MODEL = "openai/gpt-4o-mini"
CHAT = {"input_tokens": 2000, "output_tokens": 500}


def _usd(micros: Any) -> str:
    return usd(micros, places=4)


@contextmanager
def _settings(client: Client, **values: Any) -> Iterator[None]:
    """Change runtime settings for the block; put the previous values back after."""
    before = {key: client.get_setting(key) for key in values}
    try:
        for key, value in values.items():
            client.set_setting(key, value)
        yield
    finally:
        for key, value in before.items():
            client.set_setting(key, value)


def _status(client: Client, org: str, ws: str, model: str) -> str:
    r = client.reserve(org, ws, model, CHAT, raise_on_denied=False)
    if r.status == "held":
        client.commit(r.reservation_id, CHAT)
        return "held (and committed)"
    return "denied: " + ", ".join(reason.code for reason in r.reasons)


# -- DEMO ONLY ------------------------------------------------------------------------------


def demo_backfill_quiet_week(
    dsn: str, org_id: str, workspace_id: str, micros_per_hour: int, *, hours: int = 168
) -> None:
    """DEMO ONLY -- writes synthetic history straight into the spend totals and marks.

    Gives a brand-new workspace a quiet past week (``micros_per_hour`` in each of
    the last ``hours`` hours before this one) so that the anomaly detector has a
    baseline to compare with. It calls the internal ``costwarden._pool_add_spend``
    with backdated instants, which only the schema owner / a superuser may run,
    and writes no ledger entries: the totals then count spend the ledger does not
    hold. Never use it on a database whose numbers matter."""
    top = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with psycopg.connect(dsn) as conn:
        pool_ids = [
            row[0]
            for row in conn.execute(
                "select pool_id from costwarden._pools where org_id = %s "
                "and ((kind = 'workspace' and scope_id = %s) or kind = 'org') order by pool_id",
                (org_id, workspace_id),
            )
        ]
        for h in range(2, hours + 2):
            conn.execute(
                "select costwarden._pool_add_spend(%s::bigint[], %s, 0, %s)",
                (pool_ids, micros_per_hour, top - timedelta(hours=h) + timedelta(minutes=30)),
            )


# -- the three stories ---------------------------------------------------------------------


def _circuit_story(client: Client, echo: Echo) -> None:
    org, ws = DEMO_ORG, "assistant"
    client.upsert_workspace(org, ws, model=CIRCUIT_MODEL)
    provider = CIRCUIT_MODEL.split("/")[0]
    if any(c.provider == provider and c.state != "closed" for c in client.circuits()):
        client.reset_circuit(provider)
    before = {e.event_id for e in client.circuit_history(provider, limit=1000)}
    echo(
        f"1. A provider outage. {provider} fails 3 times in a row (circuit_failure_threshold = 3):"
    )
    with _settings(client, circuit_failure_threshold=3, circuit_cooldown="2 seconds"):
        for i in range(3):
            state = client.report_provider(provider, False, f"HTTP 503 (call {i + 1})")
        echo(f"   circuit after the third failure: {state}")
        echo(f"   reserve now                    : {_status(client, org, ws, CIRCUIT_MODEL)}")
        echo("   ... circuit_cooldown (2 seconds) passes ...")
        time.sleep(2.2)
        probe = client.reserve(org, ws, CIRCUIT_MODEL, CHAT, raise_on_denied=False)
        echo(f"   first reserve after cooldown   : {probe.status} (the one half-open probe)")
        echo(f"   a second reserve meanwhile     : {_status(client, org, ws, CIRCUIT_MODEL)}")
        state = client.report_provider(provider, True)
        client.commit(probe.reservation_id, CHAT)
        echo(f"   the probe succeeds -> circuit  : {state}")
        echo(f"   reserve now                    : {_status(client, org, ws, CIRCUIT_MODEL)}")
    history = [e for e in client.circuit_history(provider, limit=10) if e.event_id not in before]
    echo(
        _table(
            [
                (e.at.strftime("%H:%M:%S"), e.from_state, e.to_state, e.reason)
                for e in reversed(history)
            ],
            ["at", "from", "to", "reason"],
        )
    )


def _anomaly_story(client: Client, dsn: str, echo: Echo) -> None:
    org = DEMO_ORG
    ws = "batch-" + datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    client.upsert_workspace(org, ws, model=SPIKE_MODEL)
    echo("")
    echo(f"2. A spend spike. Workspace {ws} had a quiet week (about $0.20 an hour) ...")
    try:
        demo_backfill_quiet_week(dsn, org, ws, 200_000)
        echo("   (DEMO ONLY: that week is synthetic history written straight into the spend marks)")
    except psycopg.Error as exc:
        echo(
            f"   (skipped the synthetic quiet week: {exc.diag.message_primary}; needs a superuser)"
        )
    echo("   ... then a runaway batch job reports $25 of spend within the hour:")
    delta = client.report_spend(org, ws, "batch-runner", 25_000_000)
    echo(f"   fn_spend_report_cumulative booked {_usd(delta)}")
    # anomaly_min_micros $10: the demo's other workspaces (a few dollars in the last hour,
    # no history) stay below the bar; anything else this run flags is lifted again below.
    with _settings(client, anomaly_freeze=True, anomaly_min_micros=10_000_000):
        known = {a.anomaly_id for a in client.anomalies(open_only=True, limit=10_000)}
        found = client.detect_spend_anomalies()
        echo(f"   fn_detect_spend_anomalies() -> {found} (anomaly_freeze = true, min $10)")
        new = [
            a for a in client.anomalies(open_only=True, limit=10_000) if a.anomaly_id not in known
        ]
        anomaly = next(a for a in new if a.org_id == org and a.workspace_id == ws)
        for other in new:
            if other is not anomaly:
                client.ack_anomaly(other.anomaly_id)  # the demo leaves nothing else frozen
                echo(f"   (also flagged: {other.org_id}/{other.workspace_id}; acknowledged)")
        mean, sd = _usd(anomaly.mean_micros), _usd(anomaly.stddev_micros)
        echo(
            f"   last hour {_usd(anomaly.spent_micros)} vs an hourly mean of {mean} (sd {sd}): "
            f"over the bar of {_usd(anomaly.threshold_micros)}"
        )
        echo(f"   reserve in the frozen workspace: {_status(client, org, ws, SPIKE_MODEL)}")
        client.ack_anomaly(anomaly.anomaly_id)
        echo(f"   an admin acknowledges anomaly {anomaly.anomaly_id} (audited)")
        echo(f"   reserve now                    : {_status(client, org, ws, SPIKE_MODEL)}")


def _shadow_story(client: Client, echo: Echo) -> None:
    org, ws = SHADOW_ORG, "support"
    client.upsert_org(org)
    client.upsert_workspace(org, ws, model=SPIKE_MODEL)
    client.set_budget(org, "workspace", ws, "day", 2_000, mode="shadow")
    client.set_budget(org, "org", None, "hour", 5_000, mode="shadow")
    echo("")
    echo(f"3. Shadow mode. Org {org} trials limits before enforcing them: workspace {ws}")
    echo("   $0.002 a day and the org $0.005 an hour, both in shadow mode. 12 calls go through:")
    since = datetime.now(UTC) - timedelta(seconds=1)
    held = 0
    for _ in range(12):
        try:
            r = client.reserve(org, ws, SPIKE_MODEL, CHAT)
        except BudgetExceeded:
            continue
        client.commit(r.reservation_id, CHAT)
        held += 1
    echo(f"   {held} of 12 held. What enforcement would have refused (costwarden shadow-report):")
    rows = client.shadow_report(org, since)
    echo(
        _table(
            [
                (
                    r.scope_kind,
                    r.scope_id or "-",
                    f"{r.period}/{r.window_kind}",
                    _usd(r.limit_value) if r.metric == "cost" else r.limit_value,
                    r.refusals,
                    _usd(r.requested_micros),
                    r.first_seen.strftime("%H:%M:%S"),
                    r.last_seen.strftime("%H:%M:%S"),
                )
                for r in rows
            ],
            ["scope", "id", "limit", "value", "would refuse", "requested", "first", "last"],
        )
    )


def demo_section(dsn: str, echo: Echo = print) -> None:
    """The guardrails part of ``costwarden demo``."""
    from ..pricing import load_catalogue, read_catalogue, sample_catalogue_path

    with Client(dsn, on_unavailable="closed") as client:
        load_catalogue(client, read_catalogue(sample_catalogue_path()))
        client.upsert_org(DEMO_ORG)
        echo("")
        echo("== Guardrails (SPEC §6) ==")
        try:
            _circuit_story(client, echo)
            _anomaly_story(client, dsn, echo)
            _shadow_story(client, echo)
        except CostwardenError as exc:
            echo(f"guardrails demo stopped: {type(exc).__name__}: {exc.message}")
            raise
