"""`costwarden settings list|get|set`: runtime settings."""

from __future__ import annotations

import json
from typing import Any

import click

from ._common import Context, echo_json, json_option, pass_ctx, table


@click.group()
def settings() -> None:
    """Runtime settings."""


@settings.command("list")
@json_option
@pass_ctx
def settings_list(ctx: Context, as_json: bool) -> None:
    """Every setting, its value and what it means."""
    with ctx.client() as c:
        rows = c.settings()
    if as_json:
        echo_json(rows)
        return
    click.echo(
        table(
            [
                (s.key, json.dumps(s.value, default=str), "yes" if s.changed else "", s.description)
                for s in rows
            ],
            ["key", "value", "changed", "meaning"],
        )
    )


@settings.command("get")
@click.argument("key")
@pass_ctx
def settings_get(ctx: Context, key: str) -> None:
    """Print one setting's value (JSON)."""
    with ctx.client() as c:
        click.echo(json.dumps(c.get_setting(key), default=str))


@settings.command("set")
@click.argument("key")
@click.argument("value")
@pass_ctx
def settings_set(ctx: Context, key: str, value: str) -> None:
    """VALUE is JSON: true, 5, '"10 minutes"'; a bare word is taken as a string."""
    try:
        parsed: Any = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    with ctx.client() as c:
        c.set_setting(key, parsed)
    click.echo(f"{key} = {json.dumps(parsed)}")
