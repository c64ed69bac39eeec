"""`costwarden demo` (`make demo`): the story of costwarden on a live database."""

from __future__ import annotations

import click

from .. import migrate as migrations
from ._common import Context, pass_ctx


@click.command()
@pass_ctx
def demo(ctx: Context) -> None:
    """Start the embedded server, migrate, load the sample catalogue, tell the story."""
    from ..demo import run_demo  # the demo package is loaded for this command only

    if ctx.has_dsn():
        dsn = ctx.dsn()
    else:
        # the embedded server: created the first time, reused (started) after
        from ..embedded import EmbeddedCluster

        dsn = EmbeddedCluster(ctx.embedded_data_dir()).start()
        click.echo(f"embedded PostgreSQL: {dsn}")
    migrations.migrate(dsn)
    run_demo(dsn, echo=click.echo)
