"""`costwarden orgs|workspaces|users|apikeys|models`: the tenants of SPEC §1."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import click

from ..errors import readiness_told
from ._common import Context, DecimalParam, echo_json, json_option, pass_ctx, warn_readiness


@click.group()
def orgs() -> None:
    """Orgs and their settings."""


@orgs.command("set")
@click.argument("org")
@click.option("--timezone", default=None, help="Time zone of calendar windows, e.g. Europe/Berlin.")
@click.option(
    "--credit-rate", type=DecimalParam(), default=None, help="USD value of one credit, e.g. 0.01."
)
@click.option("--group-resolution", type=click.Choice(["min", "max"]), default=None)
@click.option(
    "--user-limits",
    type=click.Choice(["on", "off"]),
    default=None,
    help="off: no per-user limit applies (overrides, groups, default kept).",
)
@pass_ctx
def orgs_set(
    ctx: Context,
    org: str,
    timezone: str | None,
    credit_rate: Decimal | None,
    group_resolution: str | None,
    user_limits: str | None,
) -> None:
    """Create an org or merge settings into it."""
    settings: dict[str, Any] = {}
    if timezone is not None:
        settings["timezone"] = timezone
    if credit_rate is not None:
        settings["credit_rate_usd"] = credit_rate
    if group_resolution is not None:
        settings["group_resolution"] = group_resolution
    if user_limits is not None:
        settings["user_limits_enabled"] = user_limits == "on"
    with ctx.client() as c:
        c.upsert_org(org, settings)
    click.echo(f"org {org}")


@click.group()
def workspaces() -> None:
    """Workspaces: their model and billing override."""


@workspaces.command("set")
@click.argument("org")
@click.argument("workspace")
@click.option("--model", default=None, help="provider/model (kept when omitted)")
@click.option(
    "--billing-override",
    type=click.Choice(["platform_managed", "byok", "disabled", "none"]),
    default=None,
    help="'none' clears it",
)
@json_option
@pass_ctx
def workspaces_set(
    ctx: Context,
    org: str,
    workspace: str,
    model: str | None,
    billing_override: str | None,
    as_json: bool,
) -> None:
    """Create a workspace or change its model / billing override; prints the billing
    mode it resolves to."""
    # e.g. byok without a key for its provider: every reserve will be refused
    with ctx.client() as c, readiness_told(warn_readiness):
        c.upsert_workspace(org, workspace, model, billing_override)
        mode = c.billing_mode(org, workspace)
    if as_json:
        echo_json(mode)
        return
    click.echo(f"workspace {org}/{workspace}: billing {mode.billing_mode} (by {mode.source})")


@click.group()
def users() -> None:
    """Users and their groups."""


@users.command("set")
@click.argument("org")
@click.argument("user")
@click.option("--group", "groups", multiple=True, help="Replaces the membership (repeatable).")
@pass_ctx
def users_set(ctx: Context, org: str, user: str, groups: tuple[str, ...]) -> None:
    """Create a user; with --group, replace the user's groups."""
    with ctx.client() as c:
        c.upsert_user(org, user, list(groups) if groups else None)
    click.echo(f"user {org}/{user}" + (f" in {', '.join(groups)}" if groups else ""))


@click.group()
def apikeys() -> None:
    """API keys / allocations of the host application (budget pools)."""


@apikeys.command("set")
@click.argument("org")
@click.argument("key")
@click.option("--workspace", default=None)
@click.option("--user", default=None)
@pass_ctx
def apikeys_set(ctx: Context, org: str, key: str, workspace: str | None, user: str | None) -> None:
    """Create or rebind an API key."""
    with ctx.client() as c:
        c.upsert_key(org, key, workspace, user)
    click.echo(f"key {org}/{key}")


@click.group()
def models() -> None:
    """The model catalogue (prices: `costwarden pricing`)."""


@models.command("set")
@click.argument("model")
@click.option("--platform-servable/--vendor", default=False)
@pass_ctx
def models_set(ctx: Context, model: str, platform_servable: bool) -> None:
    """Add a model or mark it platform-servable."""
    with ctx.client() as c:
        c.upsert_model(model, platform_servable)
    click.echo(f"model {model}: {'platform-servable' if platform_servable else 'vendor'}")
