"""`costwarden demo` (`make demo`): the story of costwarden on a live database.

The demo writes into the database it runs on: sample orgs, a sample catalogue (the
models' platform_servable flags included), synthetic spend marks; it resets open
circuits, changes deployment-wide settings for a while and acknowledges the anomalies
its run flags. So it runs on the embedded server it starts, and on the database of
--dsn / COSTWARDEN_DSN only when asked with --scratch (that database is disposable).
"""

from __future__ import annotations

import click

from .. import migrate as migrations
from ._common import EXIT_USAGE, Context, pass_ctx, safe_dsn


@click.command()
@click.option(
    "--scratch",
    is_flag=True,
    help="Run on the database of --dsn / COSTWARDEN_DSN, which is disposable: the demo "
    "writes sample data into it and changes its settings for a while.",
)
@pass_ctx
def demo(ctx: Context, scratch: bool) -> None:
    """Start the embedded server, migrate, load the sample catalogue, tell the story.

    Without --dsn / COSTWARDEN_DSN it runs on the embedded server (created the first
    time). On another database only with --scratch: the demo is not for a database
    whose data matters (it resets open circuits, re-flags models, changes settings,
    writes synthetic spend marks)."""
    from ..demo import run_demo  # the demo package is loaded for this command only

    if ctx.has_dsn():
        if not scratch:
            # a usage error (exit code 2), said in one line
            click.echo(
                f"Error: the demo writes sample data into the database it runs on, and "
                f"{ctx.dsn_from} names one ({safe_dsn(ctx.dsn())}): run it without "
                f"{ctx.dsn_from} for the embedded server, or add --scratch if that database "
                "is disposable",
                err=True,
            )
            click.get_current_context().exit(EXIT_USAGE)
        dsn = ctx.dsn()
        click.echo(f"scratch database (the demo writes into it): {safe_dsn(dsn)}")
    else:
        # the embedded server: created the first time, reused (started) after
        from ..embedded import EmbeddedCluster

        dsn = EmbeddedCluster(ctx.embedded_data_dir()).start()
        click.echo(f"embedded PostgreSQL: {dsn}")
    migrations.migrate(dsn, warn=lambda line: click.echo(line, err=True))
    run_demo(dsn, echo=click.echo, data_dir=ctx.embedded_data_dir())
