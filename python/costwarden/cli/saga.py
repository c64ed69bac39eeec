"""`costwarden budgets|reservations|quote|expire|worker` (SPEC §2, §3)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import click

from ._common import (
    EXIT_ERROR,
    Context,
    DecimalParam,
    echo_json,
    json_option,
    pass_ctx,
    table,
    usd,
    usd_to_micros,
)

SCOPE_KINDS = click.Choice(["org", "workspace", "key", "user", "group", "user_default"])
_NONE = ("none", "null")


@click.group()
def budgets() -> None:
    """Limits per scope, period, metric and window."""


@budgets.command("set")
@click.argument("org")
@click.argument("scope_kind", type=SCOPE_KINDS)
@click.argument("scope_id", required=False)
@click.option("--period", type=click.Choice(["hour", "day", "week", "month"]), required=True)
@click.option(
    "--limit", "limit", type=str, default=None, help="micro-USD or tokens; 'none' removes"
)
@click.option(
    "--limit-usd",
    type=str,
    default=None,
    help="USD, exactly (5, 0.25; at most 6 decimals); 'none' removes. Cost limits only.",
)
@click.option("--metric", type=click.Choice(["cost", "tokens"]), default="cost")
@click.option("--window", type=click.Choice(["rolling", "calendar"]), default="rolling")
@click.option("--mode", type=click.Choice(["enforce", "shadow"]), default="enforce")
@pass_ctx
def budgets_set(
    ctx: Context,
    org: str,
    scope_kind: str,
    scope_id: str | None,
    period: str,
    limit: str | None,
    limit_usd: str | None,
    metric: str,
    window: str,
    mode: str,
) -> None:
    """Set (or with --limit none remove) one limit: --limit in micro-USD (or tokens
    with --metric tokens), or --limit-usd in US dollars."""
    value = _limit_value(limit, limit_usd, metric)
    with ctx.client() as c:
        c.set_budget(
            org, scope_kind, scope_id, period, value, metric=metric, window=window, mode=mode
        )
    what = "removed" if value is None else f"= {value}"
    click.echo(f"{org} {scope_kind} {scope_id or ''} {period}/{metric}/{window} {what} ({mode})")


def _limit_value(limit: str | None, limit_usd: str | None, metric: str) -> int | None:
    """The limit of --limit / --limit-usd (exactly one of them), None to remove it."""
    if (limit is None) == (limit_usd is None):
        raise click.UsageError("give --limit (micro-USD or tokens) or --limit-usd, one of them")
    if limit is not None:
        if limit.strip().lower() in _NONE:
            return None
        try:
            return int(limit.replace("_", ""))
        except ValueError as exc:
            raise click.BadParameter("an integer, or none", param_hint="--limit") from exc
    assert limit_usd is not None
    if limit_usd.strip().lower() in _NONE:
        return None
    if metric != "cost":
        raise click.UsageError("--limit-usd is for cost limits; a token limit takes --limit")
    dollars = DecimalParam().convert(limit_usd, None, None)
    try:
        return usd_to_micros(dollars)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--limit-usd") from exc


@budgets.command("show")
@click.argument("org")
@click.argument("scope_kind", type=SCOPE_KINDS)
@click.argument("scope_id", required=False)
@json_option
@pass_ctx
def budgets_show(
    ctx: Context, org: str, scope_kind: str, scope_id: str | None, as_json: bool
) -> None:
    """Limits with spent, held and remaining in the current windows."""
    with ctx.client() as c:
        rows = c.budget_status(org, scope_kind, scope_id)
    if as_json:
        echo_json(rows)
        return
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
@click.option("--limit", type=click.IntRange(1), default=50)
@click.option("--mine", is_flag=True, help="Only the actor's (COSTWARDEN_ACTOR_ORG / _USER).")
@click.option("--actor-org", envvar="COSTWARDEN_ACTOR_ORG", default=None)
@click.option("--actor-user", envvar="COSTWARDEN_ACTOR_USER", default=None)
@json_option
@pass_ctx
def reservations_list(
    ctx: Context,
    org: str | None,
    status: str | None,
    limit: int,
    mine: bool,
    actor_org: str | None,
    actor_user: str | None,
    as_json: bool,
) -> None:
    """Reservations, newest first (amounts in micro-USD)."""
    with ctx.client(actor_org=actor_org, actor_user=actor_user) as c:
        rows = c.my_reservations(status, limit) if mine else c.reservations(org, status, limit)
    if as_json:
        echo_json(rows)
        return
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
@click.option("--batch", type=click.IntRange(1), default=1000)
@json_option
@pass_ctx
def expire(ctx: Context, batch: int, as_json: bool) -> None:
    """Sweep expired reservations once."""
    with ctx.client() as c:
        n = c.expire(batch)
    if as_json:
        echo_json({"expired": n})
        return
    click.echo(f"expired {n} reservation(s)")


@click.command()
@click.option("--once", is_flag=True, help="Run every job once and exit.")
@click.option("--iterations", type=click.IntRange(1), default=None, hidden=True)
@json_option
@pass_ctx
def worker(ctx: Context, once: bool, iterations: int | None, as_json: bool) -> None:
    """Run scheduled jobs (expiry, anomalies, housekeeping, reconciliation) where
    pg_cron is absent.

    --once runs each job once, each even when one before it failed, and exits 1 when
    one failed; --json (with --once) prints what each job did: a count, or the
    sentence saying why it did not (did not run (another run is in progress),
    failed: ...)."""
    from ..worker import run_forever, run_once

    if as_json and not once:
        raise click.UsageError("--json goes with --once")
    with ctx.client() as c:
        if once:
            done = run_once(c)
            if as_json:
                echo_json({name: outcome.shown() for name, outcome in done.items()})
            else:
                for name, outcome in done.items():
                    click.echo(f"{name}: {outcome.shown()}", err=outcome.failed)
            if any(outcome.failed for outcome in done.values()):
                click.get_current_context().exit(EXIT_ERROR)
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
@json_option
@pass_ctx
def quote(
    ctx: Context, org: str, workspace: str, model: str, usage: tuple[str, ...], as_json: bool
) -> None:
    """Price a usage: costwarden quote ORG WS MODEL input_tokens=1000 output_tokens=200."""
    parsed = parse_usage(usage)
    with ctx.client() as c:
        q = c.quote(org, workspace, model, parsed)
    if as_json:
        echo_json(q)
        return
    click.echo(
        f"{usd(q.amount_micros)} ({q.amount_micros} micros, {q.tokens} tokens, "
        f"{q.credits} credits, billing {q.billing_mode}, snapshot {q.pricing_snapshot_id})"
    )


def parse_usage(items: tuple[str, ...]) -> dict[str, Any]:
    """``unit=number`` words -> a usage object (integers stay integers, decimals exact)."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep or not key:
                raise click.BadParameter("")
            number: Decimal = DecimalParam().convert(value, None, None)
        except click.BadParameter as exc:
            raise click.BadParameter(f"{item!r}: expected unit=number", param_hint="USAGE") from exc
        integral = "." not in value and number == number.to_integral_value()
        parsed[key] = int(number) if integral else number
    return parsed
