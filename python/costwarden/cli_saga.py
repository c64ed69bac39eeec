"""CLI: budgets, reservations, expiry and the worker (SPEC §2, §3)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import click

from .cli import Context, handle_errors, pass_ctx, table, usd


def register(main: click.Group) -> None:
    main.add_command(budgets)
    main.add_command(reservations)
    main.add_command(expire)
    main.add_command(worker)
    main.add_command(quote)


@click.group()
def budgets() -> None:
    """Limits per scope, period, metric and window."""


@budgets.command("set")
@click.argument("org")
@click.argument(
    "scope_kind", type=click.Choice(["org", "workspace", "key", "user", "group", "user_default"])
)
@click.argument("scope_id", required=False)
@click.option("--period", type=click.Choice(["hour", "day", "week", "month"]), required=True)
@click.option(
    "--limit", "limit", type=str, required=True, help="micro-USD or tokens; 'none' removes"
)
@click.option("--metric", type=click.Choice(["cost", "tokens"]), default="cost")
@click.option("--window", type=click.Choice(["rolling", "calendar"]), default="rolling")
@click.option("--mode", type=click.Choice(["enforce", "shadow"]), default="enforce")
@pass_ctx
@handle_errors
def budgets_set(
    ctx: Context,
    org: str,
    scope_kind: str,
    scope_id: str | None,
    period: str,
    limit: str,
    metric: str,
    window: str,
    mode: str,
) -> None:
    """Set (or with --limit none remove) one limit."""
    value: int | None
    if limit.lower() in ("none", "null"):
        value = None
    else:
        try:
            value = int(limit.replace("_", ""))
        except ValueError as exc:
            raise click.BadParameter("an integer, or none", param_hint="--limit") from exc
    with ctx.client() as c:
        c.set_budget(
            org, scope_kind, scope_id, period, value, metric=metric, window=window, mode=mode
        )
    what = "removed" if value is None else f"= {value}"
    click.echo(f"{org} {scope_kind} {scope_id or ''} {period}/{metric}/{window} {what} ({mode})")


@budgets.command("show")
@click.argument("org")
@click.argument(
    "scope_kind", type=click.Choice(["org", "workspace", "key", "user", "group", "user_default"])
)
@click.argument("scope_id", required=False)
@pass_ctx
@handle_errors
def budgets_show(ctx: Context, org: str, scope_kind: str, scope_id: str | None) -> None:
    """Limits with spent, held and remaining in the current windows."""
    with ctx.client() as c:
        rows = c.budget_status(org, scope_kind, scope_id)
    if not rows:
        click.echo("no limits")
        return
    click.echo(
        table(
            [
                (
                    r.period,
                    r.metric,
                    r.window_kind,
                    r.limit_value,
                    r.spent,
                    r.held,
                    r.remaining,
                    r.mode,
                    r.source,
                )
                for r in rows
            ],
            ["period", "metric", "window", "limit", "spent", "held", "remaining", "mode", "source"],
        )
    )


@click.group()
def reservations() -> None:
    """Reservations (the saga's records)."""


@reservations.command("list")
@click.option("--org", default=None)
@click.option(
    "--status",
    type=click.Choice(["held", "denied", "committed", "released", "expired"]),
    default=None,
)
@click.option("--limit", type=int, default=50)
@click.option("--mine", is_flag=True, help="Only the actor's (COSTWARDEN_ACTOR_ORG / _USER).")
@click.option("--actor-org", envvar="COSTWARDEN_ACTOR_ORG", default=None)
@click.option("--actor-user", envvar="COSTWARDEN_ACTOR_USER", default=None)
@pass_ctx
@handle_errors
def reservations_list(
    ctx: Context,
    org: str | None,
    status: str | None,
    limit: int,
    mine: bool,
    actor_org: str | None,
    actor_user: str | None,
) -> None:
    from .client import Client

    with Client(ctx.dsn(), actor_org=actor_org, actor_user=actor_user) as c:
        rows = c.my_reservations(status, limit) if mine else c.reservations(org, status, limit)
    click.echo(
        table(
            [
                (
                    str(r.reservation_id),
                    r.org_id,
                    r.workspace_id,
                    r.user_id,
                    r.model,
                    r.status,
                    r.amount_micros,
                    r.charged_micros,
                    f"{r.created_at:%Y-%m-%d %H:%M:%S}",
                    ",".join(x.code for x in r.reasons) or "",
                )
                for r in rows
            ],
            [
                "reservation",
                "org",
                "workspace",
                "user",
                "model",
                "status",
                "quoted",
                "charged",
                "created",
                "reasons",
            ],
        )
    )


@click.command()
@click.option("--batch", type=int, default=1000)
@pass_ctx
@handle_errors
def expire(ctx: Context, batch: int) -> None:
    """Sweep expired reservations once."""
    with ctx.client() as c:
        n = c.expire(batch)
    click.echo(f"expired {n} reservation(s)")


@click.command()
@click.option("--once", is_flag=True, help="Run every job once and exit.")
@click.option("--iterations", type=int, default=None, hidden=True)
@pass_ctx
@handle_errors
def worker(ctx: Context, once: bool, iterations: int | None) -> None:
    """Run scheduled jobs (expiry, anomalies, housekeeping) where pg_cron is absent."""
    from .worker import run_forever, run_once

    with ctx.client() as c:
        if once:
            for name, n in run_once(c).items():
                click.echo(f"{name}: {n}")
            return
        click.echo("costwarden worker: Ctrl-C to stop", err=True)
        try:
            run_forever(c, echo=click.echo, iterations=iterations)
        except KeyboardInterrupt:
            click.echo("stopped", err=True)


@click.command()
@click.argument("org")
@click.argument("workspace")
@click.argument("model")
@click.argument("usage", nargs=-1, required=True)
@pass_ctx
@handle_errors
def quote(ctx: Context, org: str, workspace: str, model: str, usage: tuple[str, ...]) -> None:
    """Price a usage: costwarden quote ORG WS MODEL input_tokens=1000 output_tokens=200."""
    parsed: dict[str, Any] = {}
    for item in usage:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: expected unit=number", param_hint="USAGE")
        parsed[key] = Decimal(value) if "." in value else int(value)
    with ctx.client() as c:
        q = c.quote(org, workspace, model, parsed)
    click.echo(
        f"{usd(q.amount_micros)} ({q.amount_micros} micros, {q.tokens} tokens, "
        f"{q.credits} credits, billing {q.billing_mode}, snapshot {q.pricing_snapshot_id})"
    )
