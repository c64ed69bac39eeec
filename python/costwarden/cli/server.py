"""`costwarden up|down|migrate|status`: the embedded server and the schema."""

from __future__ import annotations

from pathlib import Path

import click

from .. import migrate as migrations
from ._common import EXIT_ERROR, Context, echo_json, json_option, pass_ctx, safe_dsn

_PROXY_OPTION = click.option(
    "--proxy",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CLUSTER.toml: the DSN is a PL/Proxy proxy database over these partitions.",
)


def _to_stderr(line: str) -> None:
    click.echo(line, err=True)


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="TCP port.")
@click.option("--fast", is_flag=True, help="fsync off: for throwaway test clusters only.")
@click.option("--migrate/--no-migrate", "do_migrate", default=True, help="Migrate after start.")
@pass_ctx
def up(ctx: Context, port: int | None, fast: bool, do_migrate: bool) -> None:
    """Create (first time) and start the embedded PostgreSQL; print its DSN."""
    from ..embedded import EmbeddedCluster

    dsn = EmbeddedCluster(ctx.embedded_data_dir(), port=port, fast=fast).start()
    if do_migrate:
        applied = migrations.migrate(dsn, warn=_to_stderr)
        if applied:
            click.echo(f"applied {len(applied)} migration(s)", err=True)
    click.echo(dsn)


@click.command()
@pass_ctx
def down(ctx: Context) -> None:
    """Stop the embedded PostgreSQL (its data stays)."""
    from ..embedded import EmbeddedCluster

    cluster = EmbeddedCluster(ctx.embedded_data_dir())
    if cluster.is_running():
        cluster.stop()
        click.echo("stopped")
    else:
        click.echo("not running")


@click.command()
@click.option(
    "--schedule/--no-schedule", default=True, help="Schedule pg_cron jobs when available."
)
@_PROXY_OPTION
@json_option
@pass_ctx
def migrate(ctx: Context, schedule: bool, proxy: Path | None, as_json: bool) -> None:
    """Apply pending migrations (a no-op when up to date).

    With --proxy CLUSTER.toml the DSN is the proxy database: every partition is
    migrated and the PL/Proxy layer installed (docs/scale-out.md)."""
    if proxy is not None:
        from .cluster import proxy_migrate

        proxy_migrate(ctx, proxy, schedule=schedule, as_json=as_json)
        return
    # what the run did on stdout, the server's warnings on stderr; with --json, stdout
    # holds the JSON document alone and every note goes to stderr
    applied = migrations.migrate(
        ctx.dsn(),
        schedule=schedule,
        progress=_to_stderr if as_json else click.echo,
        warn=_to_stderr,
    )
    if as_json:
        echo_json({"applied": [m.filename for m in applied]})
    elif not applied:
        click.echo("schema is up to date")


@click.command()
@_PROXY_OPTION
@json_option
@pass_ctx
def status(ctx: Context, proxy: Path | None, as_json: bool) -> None:
    """Schema version, applied and pending migrations, function files, pg_cron.

    Exits 1 while migrations are pending, an applied file changed, a function file
    is not yet applied or the database holds a migration this package does not have
    (a newer costwarden migrated it), so that it can gate a deploy. With --proxy
    CLUSTER.toml: each partition's schema version and jobs, and the proxy's routing."""
    if proxy is not None:
        from .cluster import proxy_status

        proxy_status(ctx, proxy, as_json=as_json)
        return
    st = migrations.status(ctx.dsn())
    if as_json:
        echo_json(
            {
                "database": safe_dsn(ctx.dsn()),
                "version": st.version,
                "up_to_date": st.up_to_date,
                "applied": [
                    {"version": a.version, "name": a.name, "applied_at": a.applied_at}
                    for a in st.applied
                ],
                "pending": [p.filename for p in st.pending],
                "changed": [c.filename for c in st.changed],
                "unknown": [
                    {"version": u.version, "name": u.name, "applied_at": u.applied_at}
                    for u in st.unknown
                ],
                "functions_outdated": list(st.functions_outdated),
                "legacy_layout": st.legacy,
                "cron": {
                    "available": st.cron.available,
                    "database": st.cron.database,
                    "jobs": [
                        {"name": name, "schedule": schedule, "database": db}
                        for name, schedule, db in st.cron.jobs
                    ],
                },
            }
        )
    else:
        _print_status(ctx, st)
    if not st.up_to_date:
        click.get_current_context().exit(EXIT_ERROR)


def _print_status(ctx: Context, st: migrations.MigrationStatus) -> None:
    click.echo(f"database: {safe_dsn(ctx.dsn())}")
    click.echo(f"schema version: {st.version if st.version is not None else 'not installed'}")
    if st.unknown:
        state = "newer than this package (upgrade costwarden; migrate refuses)"
    else:
        state = "up to date" if st.up_to_date else "migrations pending"
    click.echo(f"state: {state}")
    if st.legacy:
        click.echo("  layout   installed before the split of sql/ (the next migrate adopts it)")
    unknown = {u.version for u in st.unknown}
    for a in st.applied:
        when = f"{a.applied_at:%Y-%m-%d %H:%M:%S%z}"
        if a.version in unknown:
            click.echo(
                f"  UNKNOWN  {a.version:04d}_{a.name}  {when} "
                "(not in this package: applied by a newer costwarden)"
            )
        else:
            click.echo(f"  applied  {a.version:04d}_{a.name}  {when}")
    for p in st.pending:
        click.echo(f"  pending  {p.filename}")
    for c in st.changed:
        click.echo(f"  CHANGED  {c.filename} (edited after it was applied)")
    for name in st.functions_outdated:
        click.echo(f"  outdated {name} (function file changed: `costwarden migrate` applies it)")
    if not st.cron.available:
        click.echo("pg_cron: not available (run `costwarden worker` for scheduled jobs)")
    elif not st.cron.jobs:
        click.echo(
            f"pg_cron: available in database {st.cron.database}; no costwarden jobs scheduled"
        )
    else:
        click.echo(f"pg_cron: jobs run from database {st.cron.database}")
        for name, schedule, db in st.cron.jobs:
            click.echo(f"  {name:28} {schedule:12} on {db}")
