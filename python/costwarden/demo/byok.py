"""BYOK in the demo (`costwarden demo`): billing modes side by side, the key-write
guard, and a provider key released only while a reservation is held.

The rules live in SQL (docs/byok.md); this module only tells the story through the
client.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from .._text import table
from ..client import Client
from ..errors import BudgetExceeded, Forbidden, readiness_told

Echo = Callable[[str], None]

ORG = "initech"
PLATFORM_WS = ("chat", "openai/gpt-4o-mini")  # platform-servable: the platform's proxy pays
BYOK_WS = ("research", "anthropic/claude-3-5-sonnet")  # a vendor model: the tenant's own key
USAGE = {"input_tokens": 2000, "output_tokens": 500}


def kek_file(data_dir: Path | None = None) -> Path:
    """Where the demo keeps its KEK: beside the embedded server's data directory
    ``data_dir`` (default: default_data_dir(), so .costwarden/demo-kek)."""
    if data_dir is None:
        from ..embedded import default_data_dir

        data_dir = default_data_dir()
    return data_dir.expanduser().absolute().parent / "demo-kek"


def demo_kek(echo: Echo, data_dir: Path | None = None) -> str:
    """COSTWARDEN_KEK when set; else a demo-only KEK, generated once and kept next to
    the embedded server's data directory in use (:func:`kek_file`, mode 0600) so a
    rerun can still decrypt the keys it stored. Never use it for anything real."""
    kek = os.environ.get("COSTWARDEN_KEK")
    if kek:
        echo("KEK: from COSTWARDEN_KEK")
        return kek
    path = kek_file(data_dir)
    try:
        kek = path.read_text(encoding="utf-8").strip()
    except OSError:
        kek = ""
    if len(kek) < 32:
        kek = secrets.token_urlsafe(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(kek + "\n")
    echo(f"KEK: DEMO ONLY, generated and kept in {_rel(path)} (set COSTWARDEN_KEK for real use)")
    return kek


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _fake_key() -> str:
    """A made-up Anthropic-style key: it opens nothing."""
    return "sk-ant-demo-" + secrets.token_hex(20)


def demo_section(dsn: str, echo: Echo = print, *, data_dir: Path | None = None) -> None:
    """Platform vs BYOK workspaces, the guard, and the reservation-bound release;
    ``data_dir``: the embedded server's data directory, beside which the demo's KEK is
    kept (:func:`demo_kek`)."""
    from ..pricing import load_catalogue, read_catalogue, sample_catalogue_path

    echo("== BYOK: bring your own key ==")
    kek = demo_kek(echo, data_dir)
    with Client(dsn, kek=kek, on_unavailable="closed") as client:
        load_catalogue(client, read_catalogue(sample_catalogue_path()))
        client.upsert_org(ORG)
        byok_ws, byok_model = BYOK_WS
        provider = byok_model.split("/", 1)[0]
        with readiness_told(lambda message: echo(f"readiness: {message}")):
            for ws, model in (PLATFORM_WS, BYOK_WS):
                client.upsert_workspace(ORG, ws, model, "none")
            client.revoke_key(ORG, byok_ws, provider)  # start from no key (a rerun)

        echo("")
        echo("Two workspaces side by side; the billing mode has one source of truth")
        echo("(override > model > deployment default):")
        rows = []
        for ws, model in (PLATFORM_WS, BYOK_WS):
            mode = client.billing_mode(ORG, ws)
            rows.append((f"{ORG}/{ws}", model, mode.billing_mode, mode.source))
        echo(table(rows, ["workspace", "model", "billing mode", "decided by"]))

        echo("")
        echo(f"Reserving in {ORG}/{byok_ws} before it has a key fails closed:")
        try:
            client.reserve(ORG, byok_ws, byok_model, USAGE)
        except BudgetExceeded as exc:
            echo(f"  denied: {', '.join(r.code for r in exc.reasons)}")

        echo("")
        echo(f"The key-write guard refuses a vendor key for {ORG}/{PLATFORM_WS[0]}:")
        try:
            client.put_key(ORG, PLATFORM_WS[0], "openai", "sk-" + secrets.token_hex(24))
        except Forbidden as exc:
            echo(f"  Forbidden [CW005]: {exc.message}")

        try:
            fingerprint = client.put_key(ORG, byok_ws, provider, _fake_key())
        except Forbidden as exc:  # the store is under another KEK (an earlier run, a real one)
            echo(f"  cannot store a key: {exc.message}")
            echo("  set COSTWARDEN_KEK to this database's KEK to run the rest of this part")
            return
        echo("")
        echo(f"A (made-up) {provider} key for {ORG}/{byok_ws} is stored envelope-encrypted;")
        echo(f"listings show only its fingerprint: {fingerprint}")

        echo("")
        echo("The key is released only to a held byok reservation:")
        with client.reservation(ORG, byok_ws, byok_model, USAGE) as r:
            key = r.byok_key()
            echo(
                f"  reservation {r.id} is held: resolve -> {key.provider} key {key.fingerprint} "
                f"({len(key.secret)} characters, not printed)"
            )
            r.commit(USAGE)
            echo(f"  committed: {r.result.charged_micros if r.result else 0} micro-USD charged")
        try:
            client.resolve_key(r.id)
        except Forbidden as exc:
            echo(f"  after commit: Forbidden [CW005]: {exc.message}")

        echo("")
        echo("Every resolve is audited, the refusal included (never the secret):")
        audit = client.resolve_audit(reservation_id=r.id, limit=10)
        echo(
            table(
                [(a.attempt, a.outcome, a.reason, a.db_role, a.fingerprint) for a in audit],
                ["attempt", "outcome", "reason", "role", "fingerprint"],
            )
        )
