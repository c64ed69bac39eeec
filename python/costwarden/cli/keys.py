"""`costwarden keys put|revoke|list|rotate-kek|audit|keks` (SPEC §5, docs/byok.md).

No secret and no key-encryption key is ever read from the command line (argv is
visible to every local user in ``ps`` and lands in shell history): a provider key
comes from a hidden prompt, from stdin or from an environment variable named by
``--secret-env``; the KEK from ``COSTWARDEN_KEK`` or a hidden prompt, the new KEK of
a rotation from ``COSTWARDEN_NEW_KEK`` (or the variable named by ``--new-kek-env``)
or a hidden prompt. The client sends both through COPY, which the server never logs.
"""

from __future__ import annotations

import os
import sys
from uuid import UUID

import click

from ..client import Client
from ..errors import readiness_told
from ..types import KekRotateBatch
from ._common import Context, ProgressBar, echo_json, json_option, pass_ctx, table, warn_readiness

KEK_ENV = "COSTWARDEN_KEK"
NEW_KEK_ENV = "COSTWARDEN_NEW_KEK"


def _kek(prompt: str = "Key-encryption key") -> str:
    """The KEK from COSTWARDEN_KEK, else a hidden prompt."""
    value = os.environ.get(KEK_ENV)
    if value:
        return value
    entered: str = click.prompt(f"{prompt} ({KEK_ENV} is not set)", hide_input=True)
    return entered


def _client(ctx: Context, kek: str | None = None) -> Client:
    return Client(ctx.dsn(), kek=kek, on_unavailable="closed")


@click.group()
def keys() -> None:
    """BYOK provider keys: stored encrypted, released only to a live reservation."""


@keys.command("put")
@click.argument("org_id")
@click.argument("workspace_id")
@click.argument("provider")
@click.option(
    "--secret-env",
    metavar="NAME",
    help="Read the provider key from the environment variable NAME (not its value!).",
)
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the provider key from stdin.")
@json_option
@pass_ctx
def keys_put(
    ctx: Context,
    org_id: str,
    workspace_id: str,
    provider: str,
    secret_env: str | None,
    from_stdin: bool,
    as_json: bool,
) -> None:
    """Store (replace) the key of WORKSPACE_ID for PROVIDER; prints its fingerprint.

    The key is read from a hidden prompt unless --secret-env or --stdin is given;
    the KEK from COSTWARDEN_KEK or a hidden prompt.
    """
    if secret_env and from_stdin:
        raise click.UsageError("give --secret-env or --stdin, not both")
    if secret_env:
        secret = os.environ.get(secret_env)
        if secret is None:
            raise click.UsageError(f"environment variable {secret_env} is not set")
    elif from_stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
    else:
        secret = click.prompt(f"{provider} key for {org_id}/{workspace_id}", hide_input=True)
    with _client(ctx, _kek()) as c:
        fingerprint = c.put_key(org_id, workspace_id, provider, secret)
    if as_json:
        echo_json(
            {
                "org_id": org_id,
                "workspace_id": workspace_id,
                "provider": provider,
                "fingerprint": fingerprint,
            }
        )
        return
    click.echo(f"stored {provider} key {fingerprint} for {org_id}/{workspace_id}")


@keys.command("revoke")
@click.argument("org_id")
@click.argument("workspace_id")
@click.argument("provider")
@pass_ctx
def keys_revoke(ctx: Context, org_id: str, workspace_id: str, provider: str) -> None:
    """Revoke the live key of WORKSPACE_ID for PROVIDER (its ciphertext is destroyed)."""
    # a byok workspace left without a key for its provider: every reserve will be refused
    with _client(ctx) as c, readiness_told(warn_readiness):
        revoked = c.revoke_key(org_id, workspace_id, provider)
    if revoked:
        click.echo(f"revoked the {provider} key of {org_id}/{workspace_id}")
    else:
        click.echo(f"{org_id}/{workspace_id} has no live {provider} key")


@keys.command("list")
@click.option("--org", "org_id", default=None)
@click.option("--workspace", "workspace_id", default=None, help="Needs --org.")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys (history).")
@json_option
@pass_ctx
def keys_list(
    ctx: Context,
    org_id: str | None,
    workspace_id: str | None,
    include_revoked: bool,
    as_json: bool,
) -> None:
    """Stored keys by fingerprint (a secret is never shown)."""
    if workspace_id and not org_id:
        raise click.UsageError("--workspace needs --org")
    with _client(ctx) as c:
        rows = c.list_keys(org_id, workspace_id, include_revoked=include_revoked)
    if as_json:
        echo_json(rows)
        return
    click.echo(
        table(
            [
                (
                    k.org_id,
                    k.workspace_id,
                    k.provider,
                    k.fingerprint,
                    k.status if k.status == "live" else f"{k.status} ({k.revoke_reason})",
                    k.kek_id,
                    f"{k.created_at:%Y-%m-%d %H:%M}",
                    f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else None,
                )
                for k in rows
            ],
            ["org", "workspace", "provider", "fingerprint", "status", "kek", "created", "revoked"],
        )
    )


@keys.command("keks")
@json_option
@pass_ctx
def keys_keks(ctx: Context, as_json: bool) -> None:
    """Key-encryption-key generations and the live keys each one wraps."""
    with _client(ctx) as c:
        rows = c.kek_status()
    if as_json:
        echo_json(rows)
        return
    click.echo(
        table(
            [
                (
                    g.kek_id,
                    "current" if g.current else "retired",
                    f"{g.created_at:%Y-%m-%d %H:%M}",
                    f"{g.retired_at:%Y-%m-%d %H:%M}" if g.retired_at else None,
                    g.live_keys,
                )
                for g in rows
            ],
            ["kek", "state", "created", "retired", "live keys"],
        )
    )


@keys.command("rotate-kek")
@click.option(
    "--new-kek-env",
    metavar="NAME",
    default=NEW_KEK_ENV,
    show_default=True,
    help="Environment variable holding the new KEK (else a hidden prompt).",
)
@click.option("--batch", type=click.IntRange(1, 100_000), default=500, show_default=True)
@click.option(
    "--commit-every-batch",
    is_flag=True,
    help="Commit each batch (resumable: rerun with the same two KEKs) instead of "
    "one all-or-nothing transaction.",
)
@json_option
@pass_ctx
def keys_rotate_kek(
    ctx: Context, new_kek_env: str, batch: int, commit_every_batch: bool, as_json: bool
) -> None:
    """Re-encrypt every data key under a new KEK.

    The current KEK comes from COSTWARDEN_KEK (or a prompt), the new one from
    COSTWARDEN_NEW_KEK (or a prompt). When it is done, give every service the new KEK.
    """
    old = _kek("Current key-encryption key")
    new = os.environ.get(new_kek_env) or click.prompt(
        f"New key-encryption key ({new_kek_env} is not set)",
        hide_input=True,
        confirmation_prompt=True,
    )
    done = 0
    mode = "one batch per transaction" if commit_every_batch else "one transaction"
    with ProgressBar(f"re-wrapping data keys ({mode})", enabled=not as_json) as bar:

        def progress(step: KekRotateBatch) -> None:
            nonlocal done
            done += step.rewrapped
            bar(
                done,
                done + step.remaining,
                f"KEK generation {step.kek_id}: {done} data key(s) re-wrapped, "
                f"{step.remaining} to go",
            )

        with _client(ctx, old) as c:
            result = c.rotate_kek(
                new, batch=batch, commit_every_batch=commit_every_batch, progress=progress
            )
    if as_json:
        echo_json(result)
    if result.remaining:
        raise click.ClickException(
            f"{result.remaining} key(s) are under an older KEK generation that the current "
            "KEK does not unlock (an earlier rotation was left unfinished): finish that one "
            "first with its own two KEKs (costwarden keys keks shows the generations)"
        )
    if not as_json:
        click.echo(
            f"done: {result.rewrapped} data key(s) re-wrapped; every live key is under KEK "
            f"generation {result.kek_id}. Set {KEK_ENV} to the new KEK everywhere."
        )


@keys.command("audit")
@click.option("--org", "org_id", default=None)
@click.option("--reservation", "reservation_id", type=click.UUID, default=None)
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@json_option
@pass_ctx
def keys_audit(
    ctx: Context, org_id: str | None, reservation_id: UUID | None, limit: int, as_json: bool
) -> None:
    """Resolve attempts, newest first: granted, refused, and unrecorded gaps."""
    with _client(ctx) as c:
        rows = c.resolve_audit(org_id, reservation_id, limit)
    if as_json:
        echo_json(rows)
        return
    click.echo(
        table(
            [
                (
                    a.attempt,
                    f"{a.at:%Y-%m-%d %H:%M:%S}" if a.at else None,
                    a.outcome,
                    a.reason,
                    a.db_role,
                    str(a.reservation_id) if a.reservation_id else ("legacy" if a.legacy else None),
                    "/".join(x for x in (a.org_id, a.workspace_id) if x) or None,
                    a.provider,
                    a.fingerprint,
                )
                for a in rows
            ],
            [
                "attempt",
                "at",
                "outcome",
                "reason",
                "role",
                "reservation",
                "workspace",
                "provider",
                "fingerprint",
            ],
        )
    )
    if any(a.outcome == "unrecorded" for a in rows):
        click.echo(
            "unrecorded: the attempt's transaction rolled back (or is running); the server "
            "log has a 'costwarden.byok_resolve' line for it",
            err=True,
        )
