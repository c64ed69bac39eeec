"""`python -m costwarden.embedded up|down|status|dsn|port|log|bindir --data-dir DIR`:
the embedded server for scripts (scripts/test.sh, the Makefile). Each command prints
one value on stdout; an error (the server's, or a data directory that cannot be created)
is one ``error: ...`` line on stderr and exit code 1.

``status`` prints ``running <dsn>`` (exit 0), ``stopped`` (exit 3) or ``absent``
(exit 4). People use ``costwarden up`` / ``costwarden down`` instead."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..embedded import EmbeddedCluster, EmbeddedError, default_data_dir

F = TypeVar("F", bound=Callable[..., Any])

EXIT_STOPPED = 3
EXIT_ABSENT = 4


def _cluster_command(fn: F) -> F:
    """--data-dir, and EmbeddedError or an OSError (a data directory that cannot be
    created or read) as ``error: ...`` with exit code 1."""

    @click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Data directory (default: $COSTWARDEN_DATA_DIR or ./.costwarden/pgdata).",
    )
    @functools.wraps(fn)
    def wrapper(*args: Any, data_dir: Path | None, **kwargs: Any) -> Any:
        try:
            return fn(*args, data_dir=data_dir or default_data_dir(), **kwargs)
        except EmbeddedError as exc:
            click.echo(f"error: {exc}", err=True)
            raise SystemExit(1) from exc
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"error: {where}{exc.strerror or exc}", err=True)
            raise SystemExit(1) from exc

    return wrapper  # type: ignore[return-value]


@click.group()
def main() -> None:
    """Manage an embedded local PostgreSQL cluster."""


@main.command()
@click.option(
    "--fast", is_flag=True, help="fsync, synchronous_commit and full_page_writes off (tests)."
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="TCP port (default: a free one)."
)
@_cluster_command
def up(data_dir: Path, fast: bool, port: int | None) -> None:
    """Create if needed, start, print the DSN."""
    click.echo(EmbeddedCluster(data_dir, port, fast=fast).start())


@main.command()
@_cluster_command
def down(data_dir: Path) -> None:
    """Stop the cluster."""
    EmbeddedCluster(data_dir).stop()


@main.command()
@_cluster_command
def status(data_dir: Path) -> None:
    """Print running <dsn> / stopped / absent; exit 0 / 3 / 4 accordingly."""
    cluster = EmbeddedCluster(data_dir)
    if not cluster.is_initialized():
        click.echo("absent")
        raise SystemExit(EXIT_ABSENT)
    if not cluster.is_running():
        click.echo("stopped")
        raise SystemExit(EXIT_STOPPED)
    click.echo(f"running {cluster.dsn}")


@main.command()
@click.option("--dbname", default="postgres", show_default=True)
@_cluster_command
def dsn(data_dir: Path, dbname: str) -> None:
    """Print the DSN of a database of the cluster."""
    click.echo(EmbeddedCluster(data_dir).dsn_for(dbname))


@main.command()
@_cluster_command
def port(data_dir: Path) -> None:
    """Print the TCP port."""
    cluster = EmbeddedCluster(data_dir)
    if cluster.port is None:
        raise EmbeddedError(f"the cluster at {cluster.data_dir} has never been started")
    click.echo(cluster.port)


@main.command()
@_cluster_command
def log(data_dir: Path) -> None:
    """Print the path of the current server log."""
    cluster = EmbeddedCluster(data_dir)
    path = cluster.log_file()
    if path is None:
        raise EmbeddedError(f"no server log under {cluster.data_dir}")
    click.echo(path)


@main.command()
@_cluster_command
def bindir(data_dir: Path) -> None:
    """Print the PostgreSQL binary directory."""
    click.echo(EmbeddedCluster(data_dir).bindir)


if __name__ == "__main__":  # run by `python -m costwarden.embedded`
    main(prog_name="python -m costwarden.embedded")
