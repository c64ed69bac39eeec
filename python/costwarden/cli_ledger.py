"""CLI: `costwarden ledger export|digest|verify|adjust` (SPEC §4, docs/ledger.md)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from . import ledger as ledger_mod
from .cli import Context, handle_errors, pass_ctx, table, usd


def register(main: click.Group) -> None:
    main.add_command(ledger)


@click.group()
def ledger() -> None:
    """The hash-chained ledger: export, digest, verify (in Python), adjust."""


def _progress(label: str) -> ledger_mod.Progress:
    """Progress lines on stderr, at most one a second, so long runs show they move."""
    last = [time.monotonic()]

    def report(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] < 1.0:
            return
        last[0] = now
        of = f"/{total:,}" if total else ""
        click.echo(f"{label}: {done:,}{of} entries", err=True)

    return report


@ledger.command("export")
@click.option("--org", "org_id", default=None, help="One org's chain (default: every org).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSON Lines file to write (default: stdout).",
)
@pass_ctx
@handle_errors
def export_cmd(ctx: Context, org_id: str | None, out: Path | None) -> None:
    """Every raw ledger row as JSON Lines, one row per line, hashes in hex.

    The rows are read in one consistent snapshot, in (org_id, seq) order; numbers are
    written exactly. `costwarden ledger verify --from-export FILE` checks such a file
    without the database."""
    with ctx.client() as c:
        if out is None:
            n = ledger_mod.export(c, sys.stdout, org_id)
        else:
            with out.open("w", encoding="utf-8") as f:
                n = ledger_mod.export(c, f, org_id)
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
@handle_errors
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
@pass_ctx
@handle_errors
def verify_cmd(
    ctx: Context,
    org_id: str | None,
    digest_files: tuple[Path, ...],
    export_file: Path | None,
    ignore_identity: bool,
    also_sql: bool,
) -> None:
    """Recompute every hash in Python from the raw rows and check each chain.

    Checks seq 1..n without gaps, each prev_hash link, each entry_hash, the end of each
    chain against the head the database records, and every --digest. Exits 1 when any
    chain is bad, naming the first bad seq of each."""
    try:
        digests = [ledger_mod.read_digest(p) for p in digest_files]
        if export_file is not None:
            if also_sql:
                raise click.UsageError("--sql needs the database, not --from-export")
            report = ledger_mod.verify_export_file(
                export_file, org_id=org_id, digests=digests, progress=_progress("verified")
            )
        else:
            with ctx.client() as c:
                report = ledger_mod.verify_database(
                    c,
                    org_id=org_id,
                    digests=digests,
                    check_identity=not ignore_identity,
                    progress=_progress("verified"),
                )
                sql_rows = c.ledger_verify(org_id) if also_sql else []
    except (ledger_mod.DigestError, ledger_mod.LedgerFormatError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(ledger_mod.format_report(report))
    if digests and report.identity is None:
        click.echo("(database identity not checked: verifying an export file)")
    failed = not report.ok
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
        failed = failed or not all(r.ok for r in sql_rows)
    if failed:
        sys.exit(1)


@ledger.command("adjust")
@click.option("--org", "org_id", required=True)
@click.option("--workspace", "workspace_id", required=True)
@click.option(
    "--amount-micros",
    type=int,
    required=True,
    help="Signed micro-USD: positive charges more, negative refunds / credits.",
)
@click.option("--reason", required=True, help="Why (kept in the entry and the audit trail).")
@pass_ctx
@handle_errors
def adjust_cmd(
    ctx: Context, org_id: str, workspace_id: str, amount_micros: int, reason: str
) -> None:
    """Book a correction or refund as a signed adjustment entry (audited)."""
    with ctx.client() as c:
        adj = c.ledger_adjust(org_id, workspace_id, amount_micros, reason)
    click.echo(
        f"adjustment of {usd(amount_micros)} booked for {org_id}/{workspace_id}: "
        f"seq {adj.entry_seq}, entry_hash {adj.entry_hash}"
    )
