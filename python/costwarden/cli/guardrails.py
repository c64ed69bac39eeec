"""`costwarden circuits|anomalies|shadow-report|watch|audit|spend-report` (SPEC §6)."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from ..errors import is_unavailable
from ._common import Context, echo_json, json_option, pass_ctx, table, usd

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(value: str | None) -> datetime | None:
    """'7d', '24h', '30m' (that long ago) or an ISO 8601 instant (UTC when naive)."""
    if value is None:
        return None
    m = _DURATION.match(value)
    if m:
        return datetime.now(UTC) - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: give 7d / 24h / 30m or an ISO 8601 instant") from exc
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _ts(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


# -- circuits --------------------------------------------------------------------------------


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def circuits(click_ctx: click.Context, as_json: bool) -> None:
    """Provider circuit breakers: state (default), history, report, reset."""
    if click_ctx.invoked_subcommand is None:
        click_ctx.invoke(circuits_status, as_json=as_json)


@circuits.command("status")
@json_option
@pass_ctx
def circuits_status(ctx: Context, as_json: bool) -> None:
    """Every provider's circuit."""
    with ctx.client() as c:
        rows = c.circuits()
    if as_json:
        echo_json(rows)
        return
    click.echo(
        table(
            [
                (
                    s.provider,
                    s.state,
                    f"{s.consecutive_failures}/{s.failure_threshold}",
                    _ts(s.opened_at),
                    _ts(s.next_probe_at),
                    s.last_error,
                )
                for s in rows
            ],
            ["provider", "state", "failures", "opened", "next probe", "last error"],
        )
    )


@circuits.command("history")
@click.option("--provider", default=None)
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@json_option
@pass_ctx
def circuits_history(ctx: Context, provider: str | None, limit: int, as_json: bool) -> None:
    """Circuit transitions and probe admissions, newest first."""
    with ctx.client() as c:
        rows = c.circuit_history(provider, limit)
    if as_json:
        echo_json(rows)
        return
    click.echo(
        table(
            [
                (
                    _ts(e.at),
                    e.provider,
                    e.from_state,
                    e.to_state,
                    e.reason,
                    e.consecutive_failures,
                    e.error,
                )
                for e in rows
            ],
            ["at", "provider", "from", "to", "reason", "failures", "error"],
        )
    )


@circuits.command("report")
@click.argument("provider")
@click.option("--ok/--fail", "ok", required=True, help="The call succeeded / failed.")
@click.option("--error", default=None, help="The failure's error text.")
@json_option
@pass_ctx
def circuits_report(
    ctx: Context, provider: str, ok: bool, error: str | None, as_json: bool
) -> None:
    """Report one provider call's outcome (fn_provider_report); prints the state."""
    with ctx.client() as c:
        state = c.report_provider(provider, ok, error)
    if as_json:
        echo_json({"provider": provider, "state": state})
    else:
        click.echo(state)


@circuits.command("reset")
@click.argument("provider")
@json_option
@pass_ctx
def circuits_reset(ctx: Context, provider: str, as_json: bool) -> None:
    """Close a provider's circuit by hand (audited)."""
    with ctx.client() as c:
        state = c.reset_circuit(provider)
    if as_json:
        echo_json({"provider": provider, "state": state})
    else:
        click.echo(state)


# -- anomalies -------------------------------------------------------------------------------


@click.group()
def anomalies() -> None:
    """Spend anomalies and workspace freezes."""


@anomalies.command("list")
@click.option("--org", default=None)
@click.option("--open", "open_only", is_flag=True, help="Only unacknowledged ones.")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@json_option
@pass_ctx
def anomalies_list(
    ctx: Context, org: str | None, open_only: bool, limit: int, as_json: bool
) -> None:
    with ctx.client() as c:
        rows = c.anomalies(org, open_only=open_only, limit=limit)
    if as_json:
        echo_json(rows)
        return
    click.echo(
        table(
            [
                (
                    a.anomaly_id,
                    a.org_id,
                    a.workspace_id,
                    _ts(a.detected_at),
                    usd(a.spent_micros),
                    usd(int(a.threshold_micros)),
                    "yes" if a.frozen and a.acked_at is None else ("lifted" if a.frozen else "no"),
                    f"{_ts(a.acked_at)} by {a.acked_by}" if a.acked_at else "-",
                )
                for a in rows
            ],
            ["id", "org", "workspace", "detected", "last hour", "bar", "frozen", "acked"],
        )
    )


@anomalies.command("ack")
@click.argument("anomaly_id", type=click.IntRange(1))
@pass_ctx
def anomalies_ack(ctx: Context, anomaly_id: int) -> None:
    """Acknowledge an anomaly: lifts its workspace's freeze (audited)."""
    with ctx.client() as c:
        c.ack_anomaly(anomaly_id)
    click.echo(f"anomaly {anomaly_id} acknowledged")


@anomalies.command("detect")
@json_option
@pass_ctx
def anomalies_detect(ctx: Context, as_json: bool) -> None:
    """Run the detector once (pg_cron runs it every 5 minutes).

    When another run is in progress it does not wait and says so: "did not run
    (another run is in progress)" (--json: "recorded" holds that sentence)."""
    from ..worker import DID_NOT_RUN, describe

    with ctx.client() as c:
        found = describe(c.detect_spend_anomalies())
    if as_json:
        echo_json({"recorded": found})
    elif found == DID_NOT_RUN:
        click.echo(DID_NOT_RUN)
    else:
        click.echo(f"{found} anomaly(ies) recorded")


# -- shadow report ---------------------------------------------------------------------------


@click.command("shadow-report")
@click.option("--org", required=True)
@click.option("--since", "since", default="30d", show_default=True, help="7d, 24h or ISO instant.")
@click.option("--until", "until", default=None, help="End (exclusive); default now.")
@json_option
@pass_ctx
def shadow_report(ctx: Context, org: str, since: str, until: str | None, as_json: bool) -> None:
    """What shadow mode (or billing_enforce=false) would have refused, per scope and limit."""
    with ctx.client() as c:
        rows = c.shadow_report(org, parse_when(since), parse_when(until))
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no would-be refusals in that range")
        return
    click.echo(
        table(
            [
                (
                    r.scope_kind,
                    r.scope_id,
                    f"{r.period} {r.window_kind}",
                    usd(r.limit_value) if r.metric == "cost" else f"{r.limit_value} tokens",
                    r.code,
                    r.refusals,
                    usd(int(r.requested_micros)),
                    _ts(r.first_seen),
                    _ts(r.last_seen),
                )
                for r in rows
            ],
            ["scope", "id", "window", "limit", "code", "refusals", "requested", "first", "last"],
        )
    )


# -- watch -----------------------------------------------------------------------------------


@click.command()
@click.option("--count", type=click.IntRange(1), default=None, help="Stop after N alerts.")
@click.option(
    "--timeout", type=click.FloatRange(0, min_open=True), default=None, help="Stop after SECONDS."
)
@click.option("--kind", type=click.Choice(["budget", "anomaly", "circuit"]), default=None)
@pass_ctx
def watch(ctx: Context, count: int | None, timeout: float | None, kind: str | None) -> None:
    """Print alerts live (LISTEN costwarden_alerts), one JSON alert a line; Ctrl-C stops.

    A notification carries only the alert's kind, id and level; the alert itself is
    read with fn_alert_get on a second connection. LISTEN needs a session connection
    (not a pooler in transaction mode)."""
    import psycopg

    seen = 0
    try:
        with (
            psycopg.connect(ctx.dsn(), autocommit=True) as conn,
            psycopg.connect(ctx.dsn(), autocommit=True) as reader,
        ):
            conn.execute("listen costwarden_alerts")
            click.echo("listening on costwarden_alerts (Ctrl-C to stop)", err=True)
            for note in conn.notifies(timeout=timeout):
                try:
                    announced = json.loads(note.payload)
                except ValueError:
                    continue
                if kind is not None and announced.get("kind") != kind:
                    continue
                row = reader.execute(
                    "select payload::text from costwarden.fn_alert_get(%s)",
                    (announced.get("alert_id"),),
                ).fetchone()
                click.echo(row[0] if row else note.payload)
                sys.stdout.flush()
                seen += 1
                if count is not None and seen >= count:
                    break
    except KeyboardInterrupt:
        pass
    except psycopg.Error as exc:
        if not is_unavailable(exc):
            raise
        raise click.ClickException(f"cannot listen: {exc}") from exc


# -- audit -----------------------------------------------------------------------------------


@click.command()
@click.option("--org", default=None)
@click.option("--action", default=None, help="e.g. budget_set, setting_set, anomaly_ack.")
@click.option("--since", default=None, help="7d, 24h or ISO instant.")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@json_option
@pass_ctx
def audit(
    ctx: Context, org: str | None, action: str | None, since: str | None, limit: int, as_json: bool
) -> None:
    """The append-only admin audit trail, newest first."""
    with ctx.client() as c:
        rows = c.audit(org, action, parse_when(since), limit)
    if as_json:
        echo_json(rows)
        return
    click.echo(
        table(
            [
                (
                    a.audit_id,
                    _ts(a.at),
                    a.db_role
                    + (f" ({a.actor_org}/{a.actor_user})" if a.actor_org or a.actor_user else ""),
                    a.action,
                    a.org_id,
                    json.dumps(a.target, default=str, sort_keys=True),
                    json.dumps(a.before, default=str, sort_keys=True)
                    if a.before is not None
                    else "-",
                    json.dumps(a.after, default=str, sort_keys=True)
                    if a.after is not None
                    else "-",
                )
                for a in rows
            ],
            ["id", "at", "who", "action", "org", "target", "before", "after"],
        )
    )


# -- spend reports ---------------------------------------------------------------------------


@click.group("spend-report")
def spend_report() -> None:
    """Cumulative spend reports and the client spool's replay."""


@spend_report.command("book")
@click.argument("org")
@click.argument("workspace")
@click.argument("source")
@click.argument("cumulative_micros", type=int)
@json_option
@pass_ctx
def spend_report_book(
    ctx: Context, org: str, workspace: str, source: str, cumulative_micros: int, as_json: bool
) -> None:
    """Report SOURCE's cumulative spend counter; prints the delta booked."""
    with ctx.client() as c:
        delta = c.report_spend(org, workspace, source, cumulative_micros)
    if as_json:
        echo_json({"booked_micros": delta})
        return
    click.echo(f"booked {delta} micros ({usd(delta)})")


@spend_report.command("register")
@click.argument("org")
@click.argument("workspace")
@click.argument("source")
@click.option("--key", "key_id", default=None, help="Count the source's spend toward this key.")
@click.option("--user", "user_id", default=None, help="... and toward this user.")
@pass_ctx
def spend_report_register(
    ctx: Context, org: str, workspace: str, source: str, key_id: str | None, user_id: str | None
) -> None:
    """Bind a spend source to a key and/or user (audited)."""
    with ctx.client() as c:
        c.set_spend_source(org, workspace, source, key_id=key_id, user_id=user_id)
    click.echo(f"source {source} of {org}/{workspace}: key={key_id or '-'} user={user_id or '-'}")


@spend_report.command("sources")
@click.option("--org", default=None)
@json_option
@pass_ctx
def spend_report_sources(ctx: Context, org: str | None, as_json: bool) -> None:
    """The spend sources and their last counters."""
    with ctx.client() as c:
        rows = c.spend_sources(org)
    if as_json:
        echo_json(rows)
        return
    click.echo(
        table(
            [
                (
                    s.org_id,
                    s.workspace_id,
                    s.source,
                    s.key_id,
                    s.user_id,
                    s.last_cumulative_micros,
                    s.reports,
                    s.resets,
                    usd(s.booked_micros),
                    _ts(s.last_reported_at),
                )
                for s in rows
            ],
            [
                "org",
                "workspace",
                "source",
                "key",
                "user",
                "counter",
                "reports",
                "resets",
                "booked",
                "last",
            ],
        )
    )


@spend_report.command("quarantined")
@click.argument("org")
@json_option
@pass_ctx
def spend_report_quarantined(ctx: Context, org: str, as_json: bool) -> None:
    """Reports whose delta exceeded spend_report_max_delta_micros, not yet decided:
    nothing of them is booked until accepted."""
    with ctx.client() as c:
        rows = c.quarantined_spend_reports(org)
    if as_json:
        echo_json(rows)
        return
    click.echo(
        table(
            [
                (
                    q.report_id,
                    q.workspace_id,
                    q.source,
                    usd(q.delta_micros),
                    q.delta_micros,
                    _ts(q.reported_at),
                )
                for q in rows
            ],
            ["report", "workspace", "source", "delta", "delta_micros", "reported"],
        )
    )


def _resolve(ctx: Context, report_id: int, accept: bool, as_json: bool) -> None:
    with ctx.client() as c:
        booked = c.resolve_spend_report(report_id, accept)
    if as_json:
        echo_json({"report_id": report_id, "accepted": accept, "booked_micros": booked})
        return
    verb = "accepted" if accept else "rejected"
    click.echo(f"report {report_id} {verb}: booked {booked} micros ({usd(booked)})")


@spend_report.command("accept")
@click.argument("report_id", type=int)
@json_option
@pass_ctx
def spend_report_accept(ctx: Context, report_id: int, as_json: bool) -> None:
    """Book a quarantined report's delta now (once; audited)."""
    _resolve(ctx, report_id, True, as_json)


@spend_report.command("reject")
@click.argument("report_id", type=int)
@json_option
@pass_ctx
def spend_report_reject(ctx: Context, report_id: int, as_json: bool) -> None:
    """Book nothing of a quarantined report (once; audited)."""
    _resolve(ctx, report_id, False, as_json)


@spend_report.command("replay")
@click.option(
    "--spool-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The spool_dir of a Client(on_unavailable='open').",
)
@json_option
@pass_ctx
def spend_report_replay(ctx: Context, spool_dir: Path, as_json: bool) -> None:
    """Replay a client spool (usage spooled while the database was unreachable).

    Exits 1 when records remain (the database went away during the replay)."""
    with ctx.client(spool_dir=spool_dir) as c:
        report = c.replay_spool()
    if as_json:
        echo_json(report)
        if report.remaining:
            click.get_current_context().exit(1)
        return
    click.echo(
        f"replayed {report.replayed} record(s), booked {usd(report.booked_micros)}, "
        f"rejected {report.rejected}, remaining {report.remaining}"
    )
    if report.remaining:
        raise click.ClickException("the database went away during the replay; run it again")
