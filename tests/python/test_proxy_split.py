"""Growing a PL/Proxy cluster from 2 to 4 partitions under load (docs/scale-out.md,
"Splitting"): moved orgs keep their chains, held reservations and budgets; orgs that do
not move keep working during the split; no charge is lost or doubled."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import costwarden
from costwarden import cluster as cl
from costwarden.cli.main import main as cli
from proxyharness import (  # noqa: F401 -- proxy_servers is a fixture
    MODEL,
    Servers,
    make_cluster,
    org_partition,
    orgs_by_partition,
    proxy_servers,
    seed_catalogue,
    seed_org,
)

USAGE = {"input_tokens": 1000, "output_tokens": 500}
COST = 10_500


def _ledger_rows(dsn: str, org: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "select seq, entry_hash, amount_micros from costwarden._ledger where org_id = %s "
            "order by seq",
            (org,),
        ).fetchall()


def test_split_two_partitions_into_four_under_load(
    proxy_servers: Servers,  # noqa: F811
    tmp_path: Any,
) -> None:
    c = make_cluster(proxy_servers, "cws", 2)
    with psycopg.connect(c.proxy_dsn, autocommit=True) as conn:
        by4 = orgs_by_partition(conn, "s", 4, 2)
    # partitions 2 and 3 of 4 are split off 0 and 1: their orgs move, the others stay
    staying = by4[0] + by4[1]
    moving = by4[2] + by4[3]
    held: dict[str, Any] = {}
    with c.client() as client:
        seed_catalogue(client)
        _open_and_reset(client)  # circuit events, copied to the new partitions with their ids
        for org in staying + moving:
            seed_org(client, org)
            client.set_budget(org, "org", None, "day", 1_000 * COST)
            client.commit(client.reserve(org, "ws", MODEL, USAGE).reservation_id, USAGE)
            client.ledger_adjust(org, "ws", 50, "credit")
        for org in moving:
            held[org] = client.reserve(org, "ws", MODEL, USAGE, user_id="alice")
    before = {org: _ledger_rows(c.partition_dsn(org_partition_2(org, by4)), org) for org in moving}

    # load on the orgs that do not move, through the proxy, during the split
    stop = threading.Event()
    committed: dict[str, int] = {org: 0 for org in staying}
    failures: list[BaseException] = []

    def load(org: str) -> None:
        try:
            with costwarden.Client(c.proxy_dsn) as lc:
                while not stop.is_set():
                    r = lc.reserve(org, "ws", MODEL, USAGE)
                    lc.commit(r.reservation_id, USAGE)
                    committed[org] += 1
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=load, args=(org,)) for org in staying]
    for t in threads:
        t.start()
    try:
        new = [proxy_servers.create_database(i % 2, f"cws_p{i}") for i in (2, 3)]
        path = tmp_path / "CLUSTER.toml"
        cl.write_config(path, c.config)
        result = CliRunner().invoke(
            cli,
            [
                "--dsn",
                c.proxy_dsn,
                "cluster",
                "split",
                str(path),
                "--new-partition",
                new[0],
                "--new-partition",
                new[1],
                "--json",
            ],
        )
        assert result.exit_code == 0, result.output
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert all(n > 0 for n in committed.values())
    grown = cl.load_config(path)
    assert len(grown.partitions) == 4 and cl.proxy_config(c.proxy_dsn) == ("cws", 4)

    # each moved org lives only on its new partition, chain and all
    with psycopg.connect(c.proxy_dsn, autocommit=True) as conn:
        for org in moving:
            target = org_partition(conn, org, 4)
            assert target in (2, 3)
            assert _ledger_rows(grown.partitions[target], org) == before[org]
            assert _ledger_rows(grown.partitions[target - 2], org) == []
    with c.client() as client:
        verified = {v.org_id: v for v in client.ledger_verify()}
        for org in staying + moving:
            assert verified[org].ok, org
        for org in staying:
            # one charge and one credit before, then every charge of the load: none lost
            # or doubled
            entries = 2 + committed[org]
            assert verified[org].entries == entries
            (st,) = client.budget_status(org, "org")
            assert st.spent == COST * (1 + committed[org]) + 50  # the adjustment counts
            assert st.held == 0
        # the moved orgs' held reservations carried over: commit them through the proxy
        for org, r in held.items():
            (st,) = client.budget_status(org, "org")
            assert st.held == COST
            done = client.commit(r.reservation_id, USAGE)
            assert done.entry_seq == 3
            (st,) = client.budget_status(org, "org")
            assert st.held == 0
            assert client.reserve(org, "ws", MODEL, USAGE).status == "held"
        for v in client.ledger_verify():
            assert v.ok
    # ids on the new partitions go on above the copied rows, with their own residue:
    # the newest audit row of a moved org is listed first
    with c.client() as client, psycopg.connect(c.proxy_dsn, autocommit=True) as conn:
        for org in moving:
            target = org_partition(conn, org, 4)
            client.set_budget(org, "org", None, "week", 7 * COST)
            (newest,) = conn.execute(
                "select audit_id, action, target from costwarden.fn_audit_list(%s, p_limit => 1)",
                (org,),
            ).fetchall()
            assert newest[1] == "budget_set" and newest[2]["period"] == "week", newest
            assert newest[0] % cl.SEQUENCE_STRIDE == target
        # the catalogue-wide writes after the split hand out the same ids everywhere
        _open_and_reset(client)
    events, digests = [], []
    for dsn in grown.partitions:
        with psycopg.connect(dsn, autocommit=True) as conn:
            events.append(
                conn.execute(
                    "select event_id, provider, from_state, to_state "
                    "from costwarden._circuit_events order by event_id"
                ).fetchall()
            )
            digests.append(
                conn.execute("select * from costwarden_px.catalogue_digest()").fetchall()
            )
    assert len(events[0]) == 4 and all(e == events[0] for e in events[1:])
    assert all(d == digests[0] for d in digests[1:])
    # the old partitions recorded the move, audited
    with psycopg.connect(grown.partitions[0], autocommit=True) as conn:
        moved = conn.execute("select org_id from costwarden_px.moved_orgs order by 1").fetchall()
        audit = conn.execute(
            "select org_id from costwarden._audit_log where action = 'org_moved_out' order by 1"
        ).fetchall()
    assert moved == audit == sorted((o,) for o in by4[2])
    # the append-only triggers still refuse everybody else
    with psycopg.connect(grown.partitions[0]) as conn, pytest.raises(psycopg.Error) as caught:
        conn.execute("delete from costwarden._ledger where org_id = %s", (staying[0],))
    assert caught.value.sqlstate == "CW001"


def _open_and_reset(client: costwarden.Client) -> None:
    """Two circuit events on every partition: the circuit opens, then is reset."""
    states = [client.report_provider("anthropic", False, "boom") for _ in range(5)]
    assert states[-1] == "open"
    assert client.reset_circuit("anthropic") == "closed"


def org_partition_2(org: str, by4: dict[int, list[str]]) -> int:
    """The partition of ``org`` while there are 2: its partition of 4, without bit 1."""
    for p, orgs in by4.items():
        if org in orgs:
            return p & 1
    raise AssertionError(org)
