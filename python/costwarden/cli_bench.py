"""CLI: `costwarden bench`."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import click

from .cli import Context, handle_errors, pass_ctx


def register(main: click.Group) -> None:
    main.add_command(bench)


@click.command()
@click.option("--seconds", type=int, default=15, help="Duration of each pgbench run.")
@click.option("--orgs", type=int, default=1000)
@click.option("--ledger-rows", type=int, default=10_000_000, help="Ledger size for figure 4.")
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path(".costwarden/bench-results.json")
)
@pass_ctx
@handle_errors
def bench(ctx: Context, seconds: int, orgs: int, ledger_rows: int, out: Path) -> None:
    """pgbench workloads, each beside a baseline measured in the same run.

    Without --dsn a dedicated embedded server is used (.costwarden/bench-pg).
    """
    from .benchmark import report, run_bench, save
    from .embedded import EmbeddedCluster

    bindir = None
    if ctx.has_dsn():
        dsn = ctx.dsn()
    else:
        cluster = EmbeddedCluster(Path(".costwarden/bench-pg/pgdata").resolve())
        dsn = cluster.start()
        bindir = cluster.bindir
    figures = run_bench(
        dsn, bindir=bindir, seconds=seconds, orgs=orgs, ledger_rows=ledger_rows, echo=click.echo
    )
    click.echo("")
    click.echo(report(figures))
    save(
        figures,
        out,
        {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": platform.node(),
            "seconds": seconds,
            "orgs": orgs,
            "ledger_rows": ledger_rows,
        },
    )
    click.echo(f"\nsaved {out}")
