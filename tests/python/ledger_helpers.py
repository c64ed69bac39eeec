"""Helpers of the ledger tests (test_ledger*.py): building chains through the saga,
tampering as a superuser with triggers off, and verifying both ways."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

import costwarden
from costwarden import ledger
from costwarden import types as t
from cwtest import Seeded

Conn = psycopg.Connection[Any]

#: Usages charged by build_chains, in order (acme: 5 charges then 1 adjustment).
ACME_USAGES: tuple[dict[str, int], ...] = (
    {"input_tokens": 1200, "output_tokens": 300},
    {"input_tokens": 800, "cached_input_tokens": 400, "output_tokens": 120},
    {"input_tokens": 50, "output_tokens": 10},
    {"input_tokens": 2000, "output_tokens": 900},
    {"input_tokens": 10, "output_tokens": 1},
)
ACME_ENTRIES = len(ACME_USAGES) + 1
GLOBEX_ENTRIES = 2


def charge(
    client: costwarden.Client,
    org: str,
    workspace: str,
    model: str,
    usage: Mapping[str, Any],
    **kwargs: Any,
) -> t.CommitResult:
    """reserve + commit of exactly ``usage``."""
    r = client.reserve(org, workspace, model, usage, **kwargs)
    return client.commit(r.reservation_id, usage)


def build_chains(client: costwarden.Client, s: Seeded) -> None:
    """acme: 5 charges (one with the user's key) and a refund; globex: 2 charges."""
    for i, usage in enumerate(ACME_USAGES):
        kwargs: dict[str, Any] = {"key_id": s.key} if i == 1 else {}
        charge(client, s.org, s.ws_platform, s.platform_model, usage, **kwargs)
    client.ledger_adjust(s.org, s.ws_platform, -1500, "refund: duplicate call")
    for _ in range(GLOBEX_ENTRIES):
        charge(client, s.other_org, s.other_ws, s.platform_model, {"input_tokens": 100})


@contextmanager
def tampering(dsn: str) -> Iterator[Conn]:
    """A superuser transaction with every user trigger off (session_replication_role =
    replica): what an attacker with superuser rights can do. Commits on exit."""
    with psycopg.connect(dsn) as conn:
        conn.execute("set session_replication_role = replica")
        yield conn
        conn.commit()


def sql_verify(client: costwarden.Client) -> dict[str, t.LedgerVerification]:
    return {v.org_id: v for v in client.ledger_verify()}


def py_verify(
    client: costwarden.Client, digests: tuple[ledger.Digest, ...] = ()
) -> dict[str, ledger.ChainResult]:
    report = ledger.verify_database(client, digests=digests)
    return {c.org_id: c for c in report.chains}


def export_file(client: costwarden.Client, path: Path, org_id: str | None = None) -> Path:
    with path.open("w", encoding="utf-8") as f:
        ledger.export(client, f, org_id)
    return path


def file_verify(
    path: Path, digests: tuple[ledger.Digest, ...] = ()
) -> dict[str, ledger.ChainResult]:
    report = ledger.verify_export_file(path, digests=digests)
    return {c.org_id: c for c in report.chains}


def one(conn: Conn, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0] if len(row) == 1 else row
