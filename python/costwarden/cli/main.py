"""The ``costwarden`` command: the root group and the explicit list of its commands.

Without ``--dsn`` / ``COSTWARDEN_DSN`` every command uses the embedded local
PostgreSQL that ``costwarden up`` created (starting it when it is stopped).
"""

from __future__ import annotations

from pathlib import Path

import click

from . import (
    audit_link,
    bench,
    books,
    cluster,
    demo,
    guardrails,
    keys,
    ledger,
    pricing,
    saga,
    serve,
    server,
    settings,
    spend,
    tenancy,
)
from ._common import Context, CostwardenGroup


@click.group(cls=CostwardenGroup)
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
    """costwarden: budgets, saga and ledger for AI provider calls, inside PostgreSQL.

    Exit codes: 0 success, 1 error (including `status` with migrations pending),
    2 usage error. Commands that print data take --json.
    """
    from_env = ctx.get_parameter_source("dsn") is click.core.ParameterSource.ENVIRONMENT
    ctx.obj = Context(dsn, data_dir, dsn_from="COSTWARDEN_DSN" if from_env else "--dsn")


#: Every command of ``costwarden``, by module, in the order of ``costwarden --help``'s
#: sections (click lists them alphabetically).
COMMANDS: tuple[click.Command, ...] = (
    # server and schema
    server.up,
    server.down,
    server.migrate,
    server.status,
    settings.settings,
    pricing.pricing,
    demo.demo,
    bench.bench,
    cluster.cluster,
    # tenants
    tenancy.orgs,
    tenancy.workspaces,
    tenancy.users,
    tenancy.apikeys,
    tenancy.models,
    # budgets and the saga
    saga.budgets,
    saga.reservations,
    saga.quote,
    saga.expire,
    saga.worker,
    spend.spend,
    # ledger and BYOK
    ledger.ledger,
    books.books,
    keys.keys,
    audit_link.audit_link,
    # guardrails
    guardrails.circuits,
    guardrails.anomalies,
    guardrails.shadow_report,
    guardrails.watch,
    guardrails.audit,
    guardrails.spend_report,
    # the HTTP service
    serve.serve,
    serve.metrics,
    serve.token,
)

for _command in COMMANDS:
    main.add_command(_command)
