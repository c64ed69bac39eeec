"""The costwarden command line (click).

Without ``--dsn`` / ``COSTWARDEN_DSN`` every command uses the embedded local
PostgreSQL that ``costwarden up`` created (starting it when it is stopped).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg

from . import migrate as migrations
from .client import Client
from .errors import CostwardenError, translate

F = TypeVar("F", bound=Callable[..., Any])


class Context:
    def __init__(self, dsn: str | None, data_dir: Path | None) -> None:
        self._dsn = dsn
        self.data_dir = data_dir

    def has_dsn(self) -> bool:
        return bool(self._dsn)

    def dsn(self) -> str:
        if self._dsn:
            return self._dsn
        from .embedded import EmbeddedError, resolve_dsn

        try:
            self._dsn = resolve_dsn(None, data_dir=self.data_dir)
        except EmbeddedError as exc:
            raise click.ClickException(str(exc)) from exc
        return self._dsn

    @contextmanager
    def client(self) -> Iterator[Client]:
        with Client(self.dsn()) as client:
            yield client


pass_ctx = click.make_pass_decorator(Context)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain text table, right-aligning numbers."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [
        all(isinstance(r[i], int | float) or r[i] is None for r in rows) and bool(rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def usd(micros: int | None) -> str:
    return "-" if micros is None else f"${micros / 1_000_000:,.6f}"


def handle_errors(fn: F) -> F:
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CostwardenError as exc:
            name = type(exc).__name__
            code = f" [{exc.sqlstate}]" if exc.sqlstate else ""
            raise click.ClickException(f"{name}{code}: {exc.message}") from exc
        except migrations.MigrationError as exc:
            raise click.ClickException(str(exc)) from exc
        except psycopg.Error as exc:
            translated = translate(exc)
            if isinstance(translated, CostwardenError):
                raise click.ClickException(f"{type(translated).__name__}: {translated}") from exc
            raise click.ClickException(f"database error: {exc}") from exc

    return wrapper  # type: ignore[return-value]


@click.group()
@click.option(
    "--dsn", envvar="COSTWARDEN_DSN", help="PostgreSQL DSN (default: the embedded server)."
)
@click.option(
    "--data-dir",
    envvar="COSTWARDEN_DATA_DIR",
    type=click.Path(path_type=Path),
    help="Embedded server data directory (default: ./.costwarden/pgdata).",
)
@click.version_option(package_name="costwarden")
@click.pass_context
def main(ctx: click.Context, dsn: str | None, data_dir: Path | None) -> None:
    """costwarden: budgets, saga and ledger for AI provider calls, inside PostgreSQL."""
    ctx.obj = Context(dsn, data_dir)


# -- embedded server ------------------------------------------------------------------


@main.command()
@click.option("--port", type=int, default=None, help="TCP port (default: a free one).")
@click.option("--fast", is_flag=True, help="fsync off: for throwaway test clusters only.")
@click.option("--migrate/--no-migrate", "do_migrate", default=True, help="Migrate after start.")
@pass_ctx
@handle_errors
def up(ctx: Context, port: int | None, fast: bool, do_migrate: bool) -> None:
    """Create (first time) and start the embedded PostgreSQL; print its DSN."""
    from .embedded import EmbeddedCluster, EmbeddedError, default_data_dir

    cluster = EmbeddedCluster(ctx.data_dir or default_data_dir(), port=port, fast=fast)
    try:
        dsn = cluster.start()
    except EmbeddedError as exc:
        raise click.ClickException(str(exc)) from exc
    if do_migrate:
        applied = migrations.migrate(dsn)
        if applied:
            click.echo(f"applied {len(applied)} migration(s)", err=True)
    click.echo(dsn)


@main.command()
@pass_ctx
@handle_errors
def down(ctx: Context) -> None:
    """Stop the embedded PostgreSQL (its data stays)."""
    from .embedded import EmbeddedCluster, default_data_dir

    cluster = EmbeddedCluster(ctx.data_dir or default_data_dir())
    if cluster.is_running():
        cluster.stop()
        click.echo("stopped")
    else:
        click.echo("not running")


# -- migrations -----------------------------------------------------------------------


@main.command()
@click.option(
    "--schedule/--no-schedule", default=True, help="Schedule pg_cron jobs when available."
)
@pass_ctx
@handle_errors
def migrate(ctx: Context, schedule: bool) -> None:
    """Apply pending migrations (a no-op when up to date)."""
    applied = migrations.migrate(ctx.dsn(), schedule=schedule, progress=click.echo)
    if not applied:
        click.echo("schema is up to date")


@main.command()
@pass_ctx
@handle_errors
def status(ctx: Context) -> None:
    """Schema version, applied and pending migrations, pg_cron."""
    st = migrations.status(ctx.dsn())
    click.echo(f"database: {_safe_dsn(ctx.dsn())}")
    click.echo(f"schema version: {st.version if st.version is not None else 'not installed'}")
    click.echo(f"state: {'up to date' if st.up_to_date else 'migrations pending'}")
    for a in st.applied:
        click.echo(f"  applied  {a.version:04d}_{a.name}  {a.applied_at:%Y-%m-%d %H:%M:%S%z}")
    for p in st.pending:
        click.echo(f"  pending  {p.filename}")
    for c in st.changed:
        click.echo(f"  CHANGED  {c.filename} (edited after it was applied)")
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


def _safe_dsn(dsn: str) -> str:
    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **{k: v for k, v in info.items() if v is not None})


# -- settings ----------------------------------------------------------------------------


@main.group()
def settings() -> None:
    """Runtime settings."""


@settings.command("list")
@pass_ctx
@handle_errors
def settings_list(ctx: Context) -> None:
    with ctx.client() as c:
        rows = c.settings()
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
@handle_errors
def settings_get(ctx: Context, key: str) -> None:
    with ctx.client() as c:
        click.echo(json.dumps(c.get_setting(key), default=str))


@settings.command("set")
@click.argument("key")
@click.argument("value")
@pass_ctx
@handle_errors
def settings_set(ctx: Context, key: str, value: str) -> None:
    """VALUE is JSON: true, 5, '"10 minutes"'; a bare word is taken as a string."""
    try:
        parsed: Any = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    with ctx.client() as c:
        c.set_setting(key, parsed)
    click.echo(f"{key} = {json.dumps(parsed)}")


# -- pricing -------------------------------------------------------------------------------


@main.group()
def pricing() -> None:
    """The model catalogue and its pricing snapshots."""


@pricing.command("load")
@click.argument(
    "file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False
)
@click.option("--sample", is_flag=True, help="Load the bundled SAMPLE catalogue.")
@pass_ctx
@handle_errors
def pricing_load(ctx: Context, file: Path | None, sample: bool) -> None:
    """Load a TOML pricing catalogue: idempotent, and all or nothing (one transaction)."""
    from .pricing import CatalogueError, load_catalogue, read_catalogue, sample_catalogue_path

    if file is None and not sample:
        raise click.UsageError("give a FILE or --sample")
    path = file or sample_catalogue_path()
    try:
        catalogue = read_catalogue(path)
        with psycopg.connect(ctx.dsn()) as conn, conn.transaction():
            report = load_catalogue(Client(conn), catalogue)
    except CatalogueError as exc:
        raise click.ClickException(str(exc)) from exc
    note = " (SAMPLE DATA: illustrative prices, not a price list)" if catalogue.sample else ""
    click.echo(
        f"{report.models} models; {report.snapshots_added} snapshot(s) added, "
        f"{report.snapshots_present} already present{note}"
    )


@pricing.command("show")
@click.option("--model", default=None)
@click.option("--history", is_flag=True, help="Every snapshot, not only the one in force.")
@pass_ctx
@handle_errors
def pricing_show(ctx: Context, model: str | None, history: bool) -> None:
    with ctx.client() as c:
        if history:
            snaps = c.pricing_history(model)
            rows: list[tuple[Any, ...]] = [
                (
                    s.model,
                    s.pricing_snapshot_id,
                    f"{s.effective_from:%Y-%m-%d %H:%M}",
                    _prices(s.prices),
                )
                for s in snaps
            ]
            click.echo(table(rows, ["model", "snapshot", "effective from", "USD per unit"]))
            return
        entries = c.pricing(model)
    rows = [
        (
            e.model,
            "yes" if e.platform_servable else "no",
            e.pricing_snapshot_id,
            f"{e.effective_from:%Y-%m-%d}" if e.effective_from else "-",
            _prices(e.prices) if e.prices else "UNPRICED",
        )
        for e in entries
    ]
    click.echo(table(rows, ["model", "servable", "snapshot", "since", "USD per unit"]))


def _prices(prices: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={_num(v)}" for k, v in sorted((prices or {}).items()))


def _num(value: Any) -> str:
    return format(value, "f") if isinstance(value, Decimal) else str(value)


# -- demo ------------------------------------------------------------------------------------


@main.command()
@pass_ctx
@handle_errors
def demo(ctx: Context) -> None:
    """Start the embedded server, migrate, load the sample catalogue, tell the story."""
    from .demo import run_demo

    if ctx.has_dsn():
        dsn = ctx.dsn()
    else:
        # the embedded server: created the first time, reused (started) after
        from .embedded import EmbeddedCluster, EmbeddedError, default_data_dir

        cluster = EmbeddedCluster(ctx.data_dir or default_data_dir())
        try:
            dsn = cluster.start()
        except EmbeddedError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"embedded PostgreSQL: {dsn}")
    migrations.migrate(dsn)
    run_demo(dsn, echo=click.echo)


def _register_extensions() -> None:
    """Command groups that live in their own modules: every costwarden/cli_*.py
    defines ``register(main)``."""
    import importlib

    for path in sorted(Path(__file__).parent.glob("cli_*.py")):
        module = importlib.import_module(f"costwarden.{path.stem}")
        module.register(main)


_register_extensions()


def run() -> None:  # pragma: no cover
    main(prog_name="costwarden")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
