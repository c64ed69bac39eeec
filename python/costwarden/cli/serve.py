"""`costwarden serve|metrics|token`: the HTTP service (SPEC §13, docs/http.md)."""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from ._common import Context, pass_ctx

if TYPE_CHECKING:
    import uvicorn

_EXTRA = "the HTTP service needs the server extra: pip install 'costwarden[server]'"


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8787, show_default=True)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@pass_ctx
def serve(ctx: Context, host: str, port: int, log_level: str) -> None:
    """Serve the RPCs over HTTP, the dashboard at / and /metrics.

    Tokens are verified with COSTWARDEN_JWT_SECRET (HS256) or COSTWARDEN_JWKS (a JWKS
    file or URL: RS256 / ES256); COSTWARDEN_JWT_ISSUER / _AUDIENCE are checked when
    set. The database login must be a member of costwarden_authenticator and of the
    roles tokens name (docs/http.md)."""
    try:
        import uvicorn

        from ..server import ServerConfig, create_app
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise click.ClickException(_EXTRA) from exc
    try:
        config = ServerConfig.from_env(ctx.dsn())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    uvicorn.Server(uvicorn_config(create_app(config), host, port, log_level)).run()


def uvicorn_config(app: Any, host: str, port: int, log_level: str) -> uvicorn.Config:
    """What `costwarden serve` runs: uvicorn's defaults pick its C HTTP parser
    (httptools) and libuv event loop (uvloop), which the server extra installs."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=log_level == "debug",
        server_header=False,
    )


@click.command()
@click.option(
    "--spool-dir",
    envvar="COSTWARDEN_SPOOL_DIR",
    type=click.Path(file_okay=False),
    help="Also report this spool's pending calls.",
)
@pass_ctx
def metrics(ctx: Context, spool_dir: str | None) -> None:
    """Print the database's Prometheus metrics once (for cron-driven scrapes)."""
    import psycopg
    from psycopg.rows import dict_row

    from .. import _sql as q
    from ..errors import wrap_errors

    try:
        from ..server.metrics import render_database
    except ImportError as exc:  # pragma: no cover
        raise click.ClickException(_EXTRA) from exc
    call = q.metrics()
    with wrap_errors(), psycopg.connect(ctx.dsn(), autocommit=True) as conn:
        rows = conn.cursor(row_factory=dict_row).execute(call.sql, call.params).fetchall()
    sys.stdout.write(render_database(call.parse(rows), spool_dir).decode())


@click.command()
@click.option(
    "--role",
    type=click.Choice(["costwarden_admin", "costwarden_service", "costwarden_tenant"]),
    required=True,
)
@click.option("--org", "org_id", help="Claim org_id.")
@click.option("--sub", help="Claim sub (the user).")
@click.option("--ttl", type=click.IntRange(1), default=3600, show_default=True, help="Seconds.")
def token(role: str, org_id: str | None, sub: str | None, ttl: int) -> None:
    """Print an HS256 token signed with COSTWARDEN_JWT_SECRET (for tests and scripts)."""
    try:
        import jwt
    except ImportError as exc:  # pragma: no cover
        raise click.ClickException(_EXTRA) from exc
    secret = os.environ.get("COSTWARDEN_JWT_SECRET")
    if not secret:
        raise click.ClickException("COSTWARDEN_JWT_SECRET is not set")
    now = int(time.time())
    claims: dict[str, object] = {"role": role, "iat": now, "exp": now + ttl}
    for name, value in (
        ("org_id", org_id),
        ("sub", sub),
        ("iss", os.environ.get("COSTWARDEN_JWT_ISSUER")),
        ("aud", os.environ.get("COSTWARDEN_JWT_AUDIENCE")),
    ):
        if value:
            claims[name] = value
    click.echo(jwt.encode(claims, secret, algorithm="HS256"))
