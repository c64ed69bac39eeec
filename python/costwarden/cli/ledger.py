"""`costwarden ledger export|digest|verify|adjust` (SPEC §4, docs/ledger.md)."""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path

import click

from .. import ledger as ledger_mod
from ._common import (
    EXIT_ERROR,
    Context,
    DecimalParam,
    ProgressBar,
    echo_json,
    json_option,
    jsonable,
    money_micros,
    pass_ctx,
    table,
    usd,
)


@click.group()
def ledger() -> None:
    """The hash-chained ledger: export, digest, verify (in Python), adjust."""


@ledger.command("export")
@click.option("--org", "org_id", default=None, help="One org's chain (default: every org).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSON Lines file to write (default: stdout).",
)
@pass_ctx
def export_cmd(ctx: Context, org_id: str | None, out: Path | None) -> None:
    """Every raw ledger row as JSON Lines, one row per line, hashes in hex.

    The rows are read in one consistent snapshot, in (org_id, seq) order; numbers are
    written exactly. `costwarden ledger verify --from-export FILE` checks such a file
    without the database."""
    with ctx.client() as c, ProgressBar("exporting ledger entries", enabled=out is not None) as bar:
        if out is None:
            n = ledger_mod.export(c, sys.stdout, org_id)
        else:
            with out.open("w", encoding="utf-8") as f:
                n = ledger_mod.export(c, f, org_id, progress=bar)
    click.echo(f"exported {n:,} ledger entries" + (f" to {out}" if out else ""), err=True)


@ledger.command("digest")
@click.option("--org", "org_id", default=None, help="One org's head (default: every org).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File to write the digest to (default: stdout). Keep it outside the database.",
)
@pass_ctx
def digest_cmd(ctx: Context, org_id: str | None, out: Path | None) -> None:
    """Save each org's chain head (seq, entry_hash) and the database's identity.

    A later `costwarden ledger verify --digest FILE` requires every saved head to be
    present, unchanged, in the chain: that catches a rewrite of history even when the
    rewriter recomputed every hash."""
    with ctx.client() as c:
        digest = ledger_mod.take_digest(c, org_id)
    if out is None:
        click.echo(digest.to_json(), nl=False)
        return
    ledger_mod.write_digest(digest, out)
    click.echo(
        f"digest of {len(digest.heads)} chain head(s) of database {digest.database_name!r} "
        f"(system {digest.system_identifier}) written to {out}"
    )


@ledger.command("verify")
@click.option("--org", "org_id", default=None, help="One org's chain (default: every org).")
@click.option(
    "--digest",
    "digest_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A digest saved earlier (repeatable): its heads must be in the chain, unchanged.",
)
@click.option(
    "--from-export",
    "export_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Verify a JSON Lines export instead of the database (no connection needed).",
)
@click.option(
    "--ignore-identity",
    is_flag=True,
    help="Accept a digest of another database (e.g. when checking a restored backup).",
)
@click.option("--sql", "also_sql", is_flag=True, help="Also show fn_ledger_verify's verdict.")
@json_option
@pass_ctx
def verify_cmd(
    ctx: Context,
    org_id: str | None,
    digest_files: tuple[Path, ...],
    export_file: Path | None,
    ignore_identity: bool,
    also_sql: bool,
    as_json: bool,
) -> None:
    """Recompute every hash in Python from the raw rows and check each chain.

    Checks seq 1..n without gaps, each prev_hash link, each entry_hash, the end of each
    chain against the head the database records, and every --digest. Exits 1 when any
    chain is bad, naming the first bad seq of each."""
    if export_file is not None and also_sql:
        raise click.UsageError("--sql needs the database, not --from-export")
    digests = [ledger_mod.read_digest(p) for p in digest_files]
    sql_rows = []
    with ProgressBar("verifying ledger entries", enabled=not as_json) as bar:
        if export_file is not None:
            total = _count_lines(export_file)
            report = ledger_mod.verify_export_file(
                export_file,
                org_id=org_id,
                digests=digests,
                progress=lambda done, _total: bar(done, total),
            )
        else:
            with ctx.client() as c:
                report = ledger_mod.verify_database(
                    c,
                    org_id=org_id,
                    digests=digests,
                    check_identity=not ignore_identity,
                    progress=bar,
                )
                sql_rows = c.ledger_verify(org_id) if also_sql else []
    failed = not report.ok or not all(r.ok for r in sql_rows)
    if as_json:
        echo_json(
            {
                "ok": not failed,
                "rows": report.rows,
                "seconds": report.seconds,
                "source": "export" if report.identity is None else "database",
                "identity": report.identity,
                "chains": [{**jsonable(c), "ok": c.ok} for c in report.chains],
                "digests": [d.label for d in report.digests],
                "sql": sql_rows if also_sql else None,
            }
        )
    else:
        click.echo(ledger_mod.format_report(report))
        if digests and report.identity is None:
            click.echo("(database identity not checked: verifying an export file)")
        if also_sql:
            click.echo("fn_ledger_verify (inside the database):")
            click.echo(
                table(
                    [
                        (
                            r.org_id,
                            r.entries,
                            "ok" if r.ok else "FAILED",
                            r.first_bad_seq,
                            r.detail or "",
                        )
                        for r in sql_rows
                    ],
                    ["org", "entries", "chain", "first bad seq", "detail"],
                )
            )
    if failed:
        click.get_current_context().exit(EXIT_ERROR)


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for _ in f)


@ledger.command("adjust")
@click.option("--org", "org_id", required=True)
@click.option("--workspace", "workspace_id", required=True)
@click.option(
    "--amount-micros",
    type=int,
    default=None,
    help="Signed micro-USD: positive charges more, negative refunds / credits.",
)
@click.option(
    "--amount-usd",
    type=DecimalParam(),
    default=None,
    help="The same in US dollars, exactly (-2.5; at most 6 decimals).",
)
@click.option("--reason", required=True, help="Why (kept in the entry and the audit trail).")
@json_option
@pass_ctx
def adjust_cmd(
    ctx: Context,
    org_id: str,
    workspace_id: str,
    amount_micros: int | None,
    amount_usd: Decimal | None,
    reason: str,
    as_json: bool,
) -> None:
    """Book a correction or refund as a signed adjustment entry (audited)."""
    amount = money_micros(
        amount_micros, amount_usd, micros_flag="--amount-micros", usd_flag="--amount-usd"
    )
    if amount is None:
        raise click.UsageError("give --amount-micros or --amount-usd")
    with ctx.client() as c:
        adj = c.ledger_adjust(org_id, workspace_id, amount, reason)
    if as_json:
        echo_json(adj)
        return
    click.echo(
        f"adjustment of {usd(amount)} booked for {org_id}/{workspace_id}: "
        f"seq {adj.entry_seq}, entry_hash {adj.entry_hash}"
    )
