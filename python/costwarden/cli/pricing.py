"""`costwarden pricing load|show|import`: the model catalogue and its pricing snapshots."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import psycopg

from ..client import Client
from ._common import Context, echo_json, json_option, pass_ctx, table


@click.group()
def pricing() -> None:
    """The model catalogue and its pricing snapshots."""


@pricing.command("load")
@click.argument(
    "file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False
)
@click.option("--sample", is_flag=True, help="Load the bundled SAMPLE catalogue.")
@json_option
@pass_ctx
def pricing_load(ctx: Context, file: Path | None, sample: bool, as_json: bool) -> None:
    """Load a TOML pricing catalogue: idempotent, and all or nothing (one transaction)."""
    from ..pricing import load_catalogue, read_catalogue, sample_catalogue_path

    if file is None and not sample:
        raise click.UsageError("give a FILE or --sample")
    path = file or sample_catalogue_path()
    catalogue = read_catalogue(path)
    with psycopg.connect(ctx.dsn()) as conn, conn.transaction():
        report = load_catalogue(Client(conn, on_unavailable="closed"), catalogue)
    if as_json:
        echo_json({**_fields(report), "sample": catalogue.sample})
        return
    note = " (SAMPLE DATA: illustrative prices, not a price list)" if catalogue.sample else ""
    click.echo(
        f"{report.models} models; {report.snapshots_added} snapshot(s) added, "
        f"{report.snapshots_present} already present{note}"
    )


def _fields(report: Any) -> dict[str, Any]:
    return {
        "models": report.models,
        "snapshots_added": report.snapshots_added,
        "snapshots_present": report.snapshots_present,
    }


@pricing.command("show")
@click.option("--model", default=None)
@click.option("--history", is_flag=True, help="Every snapshot, not only the one in force.")
@json_option
@pass_ctx
def pricing_show(ctx: Context, model: str | None, history: bool, as_json: bool) -> None:
    """The catalogue with the prices in force (USD per unit, exact)."""
    with ctx.client() as c:
        if history:
            snaps = c.pricing_history(model)
            if as_json:
                echo_json(snaps)
                return
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
    if as_json:
        echo_json(entries)
        return
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


@pricing.command("import")
@click.option(
    "--from",
    "source",
    type=click.Choice(["litellm"]),
    required=True,
    help="The price feed: litellm = the price list shipped inside the litellm package.",
)
@click.option(
    "--provider",
    "providers",
    multiple=True,
    help="Only this provider's models (LiteLLM's litellm_provider, e.g. openai); repeatable.",
)
@click.option(
    "--file",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A price list in LiteLLM's JSON format instead of the shipped one.",
)
@click.option(
    "--effective-from",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
    default=None,
    help="When the imported prices take effect, UTC (default: now).",
)
@click.option("--apply", is_flag=True, help="Write the diff (all or nothing); default: dry run.")
@json_option
@pass_ctx
def pricing_import(
    ctx: Context,
    source: str,
    providers: tuple[str, ...],
    file: Path | None,
    effective_from: datetime | None,
    apply: bool,
    as_json: bool,
) -> None:
    """Import a third-party price list as pricing snapshots: the diff against the
    prices in force first (+ new model, ~ changed prices), then, with --apply, every
    new and changed snapshot in one transaction (on any error nothing is written)."""
    from ..integrations.price_feed import PriceFeedError, PriceImport, import_prices

    text = None
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise PriceFeedError(f"{file}: not UTF-8 text ({exc.reason})") from exc

    def show(plan: PriceImport) -> None:
        for line in plan.diff():
            click.echo(line)

    done = import_prices(
        ctx.dsn(),
        source=source,
        apply=apply,
        providers=providers or None,
        effective_from=effective_from.replace(tzinfo=UTC) if effective_from else None,
        text=text,
        preview=None if as_json else show,
    )
    if as_json:
        echo_json(
            {
                "source": source,
                "providers": list(providers) or None,
                "applied": apply,
                "new": done.count("new"),
                "changed": done.count("changed"),
                "unchanged": done.count("unchanged"),
                "snapshots_added": done.applied.snapshots_added if done.applied else 0,
                "changes": [
                    {"model": c.model, "kind": c.kind, "old": c.old, "new": c.new}
                    for c in done.changes
                    if c.kind != "unchanged"
                ],
            }
        )
        return
    if done.applied is None:
        click.echo("dry run: nothing written (--apply writes this diff in one transaction)")
    else:
        click.echo(f"applied: {done.applied.snapshots_added} snapshot(s) added, in one transaction")
