"""What a caller has been told outlives a crash, whatever the session's
``synchronous_commit`` (docs/saga.md#durability): a ledger entry, an admin change and a
key release's trail are flushed before the commit of their transaction returns. A
reservation follows the session's setting: a gateway that sets ``synchronous_commit``
off on its connection lets its holds go without waiting for their flush (the opt-in,
with its risk), and its commits stay durable."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

import costwarden
from cwtest import Seeded
from test_byok import KEK, RESOLVE, kek_client, vendor_key  # noqa: F401 (fixtures)
from test_outage import durable_server  # noqa: F401 (fixture)
from test_spool import spooltest_database

USAGE = {"input_tokens": 1000, "output_tokens": 500}
RESERVE = (
    "select reservation_id from costwarden.fn_cost_reserve("
    "p_org_id => %s, p_workspace_id => %s, p_model => %s, p_usage => %s)"
)
COMMIT = "select entry_seq from costwarden.fn_cost_commit(%s, %s)"


def ends_with(conn: psycopg.Connection[Any], query: str, params: Any = ()) -> tuple[Any, str]:
    """Run ``query`` in a transaction of its own; its first value and the transaction's
    ``synchronous_commit`` at its end (what its commit will do)."""
    with conn.transaction():
        row = conn.execute(query, params).fetchone()
        (setting,) = conn.execute("show synchronous_commit").fetchone() or ("",)
    return (row[0] if row else None), setting


def test_ledger_and_admin_writes_wait_for_their_flush_whatever_the_session_says(
    dsn: str, seeded: Seeded
) -> None:
    args = (seeded.org, seeded.ws_platform, seeded.platform_model, Jsonb(USAGE))
    with psycopg.connect(dsn, autocommit=True, options="-c synchronous_commit=off") as conn:
        rid, setting = ends_with(conn, RESERVE, args)
        assert setting == "off"  # the hold: as the session chose
        seq, setting = ends_with(conn, COMMIT, (rid, Jsonb(USAGE)))
        assert seq is not None and setting == "on"  # the ledger entry: flushed
        assert conn.execute("show synchronous_commit").fetchone() == (
            "off",
        )  # for that commit only
        release = "select costwarden.fn_cost_release(%s)"
        rid, _ = ends_with(conn, RESERVE, args)
        assert ends_with(conn, release, (rid,))[1] == "off"  # nothing booked: the session's
        _, setting = ends_with(
            conn, "select costwarden.fn_setting_set('anomaly_sigma', '5'::jsonb)"
        )
        assert setting == "on"  # an admin change and its audit row

    # a stricter setting is kept as it is
    with psycopg.connect(
        dsn, autocommit=True, options="-c synchronous_commit=remote_apply"
    ) as conn:
        rid, _ = ends_with(conn, RESERVE, args)
        assert ends_with(conn, COMMIT, (rid, Jsonb(USAGE)))[1] == "remote_apply"


def test_the_client_opts_in_through_its_connect_kwargs(dsn: str, seeded: Seeded) -> None:
    """The example of docs/python.md: the pool's connections run with the setting off,
    and the saga works through them."""
    with costwarden.Client(
        dsn, on_unavailable="closed", connect_kwargs={"options": "-c synchronous_commit=off"}
    ) as client:
        r = client.reserve(seeded.org, seeded.ws_platform, seeded.platform_model, USAGE)
        committed = client.commit(r.reservation_id, USAGE)
        assert r.status == "held" and (committed.entry_seq or 0) > 0
        assert client._pool is not None
        with client._pool.connection() as conn:
            assert conn.execute("show synchronous_commit").fetchone() == ("off",)


def test_a_key_release_trail_waits_for_its_flush(
    kek_client: costwarden.Client,  # noqa: F811
    admin_conn: psycopg.Connection[Any],
    seeded: Seeded,
    vendor_key: str,  # noqa: F811
) -> None:
    r = kek_client.reserve(seeded.org, seeded.ws_vendor, seeded.vendor_model, USAGE)
    admin_conn.execute("set synchronous_commit = off")
    with admin_conn.transaction():
        admin_conn.execute("select set_config('costwarden.kek', %s, true)", [KEK])
        row = admin_conn.execute(RESOLVE, (r.reservation_id, None, None, None)).fetchone()
        assert row is not None and row[0] == "anthropic"
        assert admin_conn.execute("show synchronous_commit").fetchone() == ("on",)
    logged = admin_conn.execute(
        "select count(*) from costwarden._byok_resolve_log where reservation_id = %s",
        (r.reservation_id,),
    ).fetchone()
    assert logged == (1,)


def test_every_entry_a_caller_was_told_of_outlives_a_crash(
    durable_server: Any,  # noqa: F811
) -> None:
    """A durable server, a session with ``synchronous_commit`` off, pairs, and then the
    postmaster killed in immediate mode (SIGQUIT: every backend dropped, no checkpoint)
    right after the last commit returned. Every entry number a commit returned is in the
    ledger after crash recovery, and the chain verifies. (Before the ledger's writes
    raised the setting, such a run lost the last one to three entries it had reported.)"""
    dsn = spooltest_database(durable_server)
    told: list[int] = []
    conn = psycopg.connect(dsn, autocommit=True, options="-c synchronous_commit=off")
    try:
        for _ in range(300):
            row = conn.execute(RESERVE, ("acme", "ws", "openai/gpt-4o", Jsonb(USAGE))).fetchone()
            assert row is not None
            (seq,) = conn.execute(COMMIT, (row[0], Jsonb(USAGE))).fetchone() or (None,)
            told.append(seq)
        pid = int((durable_server.data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGQUIT)
    finally:
        conn.close()
    deadline = time.monotonic() + 60
    while durable_server.is_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    durable_server.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        have = {
            seq
            for (seq,) in conn.execute("select seq from costwarden._ledger where org_id = 'acme'")
        }
        assert [seq for seq in told if seq not in have] == []
        (ok,) = conn.execute(
            "select bool_and(ok) from costwarden.fn_ledger_verify('acme')"
        ).fetchone() or (None,)
        assert ok is True
