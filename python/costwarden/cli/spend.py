"""`costwarden spend`: spend per scope in a window, with or without limits (SPEC §11)."""

from __future__ import annotations

import click

from ._common import Context, echo_json, json_option, pass_ctx, table, usd


@click.command("spend")
@click.argument("org")
@click.option(
    "--by",
    "by",
    type=click.Choice(["org", "workspace", "user", "key"]),
    default="workspace",
    show_default=True,
    help="One row per scope of this kind that has spend, holds or a limit.",
)
@click.option("--scope-id", default=None, help="Only this workspace / user / key.")
@click.option(
    "--period",
    type=click.Choice(["hour", "day", "week", "month"]),
    default="month",
    show_default=True,
)
@click.option(
    "--window", type=click.Choice(["calendar", "rolling"]), default="calendar", show_default=True
)
@json_option
@pass_ctx
def spend(
    ctx: Context,
    org: str,
    by: str,
    scope_id: str | None,
    period: str,
    window: str,
    as_json: bool,
) -> None:
    """What ORG spent in the current window, largest first: spent and held in USD and
    micro-USD, tokens, calls and denied calls, and the enforced limit if there is one."""
    with ctx.client() as c:
        rows = c.spend_summary(org, by, scope_id, period=period, window=window)
    if as_json:
        echo_json(rows)
        return
    if rows:
        click.echo(f"{org} {period} ({window}) from {rows[0].window_start:%Y-%m-%d %H:%M %Z}")
    click.echo(
        table(
            [
                (
                    r.scope_id if by != "org" else org,
                    usd(r.spent_micros),
                    r.spent_micros,
                    usd(r.held_micros),
                    r.spent_tokens,
                    r.calls,
                    r.denied,
                    usd(r.limit_micros),
                    usd(r.remaining_micros),
                )
                for r in rows
            ],
            [by, "spent", "spent_micros", "held", "tokens", "calls", "denied", "limit", "left"],
        )
    )
