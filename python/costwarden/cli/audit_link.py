"""``costwarden audit-link``: the loopback connection through which the server records
refused BYOK resolves (docs/byok.md#the-audit-link). Run as the role that migrates (a
member of costwarden_owner) or a superuser. The password is never printed."""

from __future__ import annotations

import click

from .. import audit_link as link
from ._common import EXIT_ERROR, Context, echo_json, json_option, pass_ctx


@click.group("audit-link")
def audit_link() -> None:
    """The audit link that records refused BYOK resolves."""


@audit_link.command("check")
@json_option
@pass_ctx
def check(ctx: Context, as_json: bool) -> None:
    """Open the link once, as a refused resolve would. Exits 1 when it does not work."""
    result = link.check(ctx.dsn())
    if as_json:
        echo_json(result)
    elif result.ok:
        click.echo(f"audit link ok: {result.login} -> {result.target}")
    else:
        click.echo(
            f"audit link not working ({result.login or 'no login'} -> {result.target or '-'}): "
            f"{result.problem}"
        )
    if not result.ok:
        click.get_current_context().exit(EXIT_ERROR)


@audit_link.command("rotate")
@pass_ctx
def rotate(ctx: Context) -> None:
    """Give the link's login a new password (generated, stored, never printed)."""
    login = link.rotate(ctx.dsn())
    click.echo(f"rotated the password of {login}")
