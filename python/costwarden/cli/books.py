"""`costwarden books check|repair`: do the books balance? (docs/operations.md,
"Checking the books").

``check`` runs, in one command usable in an operator's cron or CI:

1. the ledger verification: every org's chain recomputed in Python from the raw rows
   (``costwarden ledger verify``), and ``fn_ledger_verify`` inside the database;
2. the digest comparison: every ``--digest`` saved earlier must still be in the chain,
   unchanged, and each chain must end at the head ``fn_ledger_digest`` reports;
3. the reconciliation: ``fn_reconcile``, every pool's held and spent recomputed from
   the reservations and the ledger.

It exits 1 on any discrepancy (0: the books balance). ``--save-digest FILE`` writes the
heads just verified, for the next run's ``--digest``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import ledger as ledger_mod
from .. import types as t
from ._common import EXIT_ERROR, Context, echo_json, json_option, jsonable, pass_ctx, table


@click.group()
def books() -> None:
    """Check that the counters, the ledger and saved digests agree."""


def _drift_rows(drift: list[t.ReconcileDrift]) -> list[tuple[Any, ...]]:
    return [
        (
            d.org_id,
            d.pool_id,
            f"{d.pool_kind}:{d.scope_id}" if d.scope_id else d.pool_kind,
            d.measure,
            d.period or "",
            d.window_kind or "",
            d.metric,
            d.counter,
            d.recomputed,
            d.drift,
        )
        for d in drift
    ]


DRIFT_HEADERS = [
    "org",
    "pool",
    "scope",
    "measure",
    "period",
    "window",
    "metric",
    "counter",
    "recomputed",
    "drift",
]


@books.command("check")
@click.option("--org", "org_id", default=None, help="One org (default: every org).")
@click.option(
    "--digest",
    "digest_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A digest saved earlier (repeatable): its heads must be in the chain, unchanged.",
)
@click.option(
    "--save-digest",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the heads just verified to this file (when the books balance).",
)
@json_option
@pass_ctx
def check_cmd(
    ctx: Context,
    org_id: str | None,
    digest_files: tuple[Path, ...],
    save_digest: Path | None,
    as_json: bool,
) -> None:
    """Ledger verify + digest comparison + reconcile; exits 1 on any discrepancy."""
    digests = [ledger_mod.read_digest(p) for p in digest_files]
    with ctx.client() as c:
        report = ledger_mod.verify_database(c, org_id=org_id, digests=digests)
        sql_rows = c.ledger_verify(org_id)
        drift = c.reconcile(org_id)
        digest = ledger_mod.take_digest(c, org_id) if save_digest is not None else None
    ledger_ok = report.ok and all(r.ok for r in sql_rows)
    ok = ledger_ok and not drift
    if ok and digest is not None and save_digest is not None:
        ledger_mod.write_digest(digest, save_digest)
    if as_json:
        echo_json(
            {
                "ok": ok,
                "ledger": {
                    "ok": ledger_ok,
                    "rows": report.rows,
                    "chains": [{**jsonable(ch), "ok": ch.ok} for ch in report.chains],
                    "sql": sql_rows,
                    "digests": [d.label for d in report.digests],
                },
                "reconcile": {"ok": not drift, "drift": drift},
                "saved_digest": str(save_digest) if ok and save_digest is not None else None,
            }
        )
    else:
        click.echo(ledger_mod.format_report(report))
        bad_sql = [r for r in sql_rows if not r.ok]
        for r in bad_sql:
            click.echo(
                f"fn_ledger_verify: org {r.org_id}: FAILED at seq {r.first_bad_seq}: "
                f"{r.detail or ''}"
            )
        if drift:
            click.echo(f"reconcile: {len(drift)} finding(s) of drift")
            click.echo(table(_drift_rows(drift), DRIFT_HEADERS))
        else:
            click.echo(
                "reconcile: every pool's held and spent match the reservations and the ledger"
            )
        if ok and save_digest is not None:
            click.echo(f"digest written to {save_digest}")
        click.echo("the books balance" if ok else "DISCREPANCY: the books do not balance")
    if not ok:
        click.get_current_context().exit(EXIT_ERROR)


@books.command("repair")
@click.option("--org", "org_id", required=True)
@click.option("--pool", "pool_id", required=True, type=int, help="The pool reported drifting.")
@click.option("--reason", required=True, help="Why (kept in the audit trail).")
@json_option
@pass_ctx
def repair_cmd(ctx: Context, org_id: str, pool_id: int, reason: str, as_json: bool) -> None:
    """Apply the correction `books check` reports for one pool (audited)."""
    with ctx.client() as c:
        fixed = c.reconcile_repair(org_id, pool_id, reason)
    if as_json:
        echo_json({"corrected": fixed})
        return
    if not fixed:
        click.echo(f"pool {pool_id}: no drift, nothing corrected")
        return
    click.echo(f"pool {pool_id}: corrected {len(fixed)} finding(s) (audited)")
    click.echo(table(_drift_rows(fixed), DRIFT_HEADERS))
