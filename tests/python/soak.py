"""`make soak`: the saga against its reference model (saga_model.py) for many
operations, with several connections at once and the server killed (SIGKILL of the
postmaster) at random points, then started again.

    .venv/bin/python tests/python/soak.py --ops 1000000 --workers 4 --kill-every 20

Each worker has an org of its own (a new one every --rotate operations) and its own
connection. What is checked when:

- every operation (saga_model.Driver, one query after the operation): each admission
  decision and each tick's answer is the model's, right after an admission every
  enforced limit has spent + held <= limit, the ledger entries the operation appended
  are the bookings the model predicted, and every pool's held is the sum of the
  model's held reservations;
- every --check-every operations (default 50), before every clock advance, after every
  reconnection (a kill and a restart) and at the end of every org: the full set of
  saga_model.Driver.check on top -- every pool's spent per period, window and metric
  against the model, fn_reconcile (the counters equal the ledger), the chain verifies,
  every reservation's status is the model's (--check-every 1: all of it after every
  operation, as the bounded test_saga_model does);
- at the end: fn_reconcile and fn_ledger_verify over the whole database.

An operation cut by a kill is repeated once the server is back: each is idempotent or
checks whether it happened, and its outcome must be the model's all the same. The server
is a durable cluster of its own (fsync, synchronous_commit and full_page_writes on): a
kill never loses an acknowledged commit; checkpoints every 30 s keep the WAL that a
restart replays short.

At the end (or at the first discrepancy) it prints operations, seconds, operations/s,
the kills and the time the server was down, and any counterexample: the failing
worker's seed and its operations, shrunk (greedily, one step at a time, replayed on
fresh orgs without kills, every check after every step) to a minimal sequence that
still fails. Exit status 1 on a discrepancy.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from costwarden import migrate
from costwarden.embedded import EmbeddedCluster
from costwarden.errors import is_unavailable
from saga_model import CLOCK_TABLE, Divergence, Driver, Step, apply, draw_step


class Server:
    """A durable embedded cluster that can be killed and started again."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="costwarden-soak-"))
        self.base.chmod(0o755)
        self.cluster = EmbeddedCluster(self.base / "pgdata", fast=False)
        self.cluster.start()
        self.up = threading.Event()
        self.up.set()
        self.kills = 0
        self.downtime = 0.0  # seconds from a kill until the server answers again
        with psycopg.connect(self.cluster.dsn, autocommit=True) as conn:
            conn.execute("create database soak")
            # durability as is (fsync, synchronous_commit, full_page_writes on); frequent
            # checkpoints keep the WAL that a restart after a kill replays short
            conn.execute("alter system set checkpoint_timeout = '30s'")
            conn.execute("select pg_reload_conf()")
        self.dsn = self.cluster.dsn_for("soak")
        migrate.migrate(self.dsn, schedule=False)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(CLOCK_TABLE)

    def kill(self) -> None:
        pid = int((self.cluster.data_dir / "postmaster.pid").read_text().split()[0])
        self.up.clear()
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        self.kills += 1
        deadline = time.monotonic() + 120
        proc = Path(f"/proc/{pid}")
        while proc.exists() and time.monotonic() < deadline:  # until the pid is reaped
            time.sleep(0.05)
        while True:  # the orphaned backends exit once they see the postmaster gone
            try:
                self.cluster.start()
                with psycopg.connect(self.cluster.dsn, connect_timeout=5):
                    pass
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self.up.set()
        self.downtime += time.monotonic() - killed

    def stop(self) -> None:
        self.cluster.stop(mode="immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def connector(server: Server) -> Any:
    def connect() -> psycopg.Connection[Any]:
        deadline = time.monotonic() + 120
        while True:
            try:
                return psycopg.connect(server.dsn, autocommit=True, connect_timeout=5)
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                server.up.wait(5)
                time.sleep(0.2)

    return connect


def retry(driver: Driver, fn: Any) -> Any:
    """Run fn; when the server went away under it, reconnect and run it again."""
    for _ in range(50):
        try:
            return fn()
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if not (is_unavailable(exc) or isinstance(exc, psycopg.InterfaceError)):
                raise
            driver.reconnect()
    raise RuntimeError("the server did not come back")


def whole_database_check(connect: Any) -> None:
    """At the end: every org's counters equal its ledger, every chain verifies."""
    with connect() as conn:
        drift = conn.execute("select * from costwarden.fn_reconcile()").fetchall()
        if drift:
            raise Divergence(f"fn_reconcile over the whole database: {drift[:5]}")
        [(ok,)] = conn.execute("select bool_and(ok) from costwarden.fn_ledger_verify()")
        if ok is False:
            raise Divergence("a ledger chain does not verify")


def shrink(connect: Any, steps: list[Step], budget_s: float) -> list[Step]:
    """Greedy one-step removal while the sequence still fails (fresh orgs, no kills)."""

    def fails(seq: list[Step]) -> bool:
        d = Driver(connect, f"shrink-{random.randrange(10**9)}")
        try:
            for s in seq:
                apply(d, s)
                d.check()
        except Divergence:
            return True
        finally:
            d.conn.close()
        return False

    deadline = time.monotonic() + budget_s
    if not fails(steps):
        return steps  # not reproducible without the concurrency and kills
    i = 0
    while i < len(steps) and time.monotonic() < deadline:
        candidate = steps[:i] + steps[i + 1 :]
        if fails(candidate):
            steps = candidate
        else:
            i += 1
    return steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--ops", type=int, default=20_000, help="operations in all (1000000: the full soak)"
    )
    ap.add_argument("--workers", type=int, default=4, help="connections working at once")
    ap.add_argument(
        "--kill-every", type=float, default=15.0, help="mean seconds between kills (0: none)"
    )
    ap.add_argument(
        "--check-every", type=int, default=50, help="operations between full checks (1: every)"
    )
    ap.add_argument("--rotate", type=int, default=1000, help="operations per org")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--shrink-seconds", type=float, default=300)
    args = ap.parse_args()

    server = Server()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on the way out
    try:
        return run(args, server)
    finally:
        server.stop()


def run(args: argparse.Namespace, server: Server) -> int:
    connect = connector(server)
    stop = threading.Event()
    done = [0] * args.workers
    failure: list[tuple[int, int, list[Step], BaseException]] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            work(n)
        except BaseException as exc:
            with lock:
                failure.append((n, args.seed * 1000 + n, [], exc))
            stop.set()

    def work(n: int) -> None:
        seed = args.seed * 1000 + n
        rng = random.Random(seed)
        per_worker = args.ops // args.workers + (1 if n < args.ops % args.workers else 0)
        generation = 0
        while done[n] < per_worker and not stop.is_set():
            org = f"soak-{args.seed}-{n}-{generation}"
            d = retry_new_driver(connect, org)
            steps: list[Step] = []
            unchecked = 0  # operations since the last full check
            try:
                while d.ops < args.rotate and done[n] < per_worker and not stop.is_set():
                    step = draw_step(rng)
                    steps.append(step)
                    if step[0] == "advance" and unchecked:
                        d.check()  # before time moves on, which could hide a wrong bucket
                        unchecked = 0
                    before = d.ops
                    apply(d, step)  # with the checks of every step (Driver.after)
                    done[n] += d.ops - before
                    unchecked += d.ops - before
                    if unchecked >= args.check_every or d.reconnected:
                        d.check()  # the full set; at once after a kill and a restart
                        unchecked, d.reconnected = 0, False
                d.check()
            except BaseException as exc:
                exc.add_note(f"org {org}, last operations: {d.log[-5:]}")
                with lock:
                    failure.append((n, seed, steps, exc))
                stop.set()
                return
            finally:
                d.conn.close()
            generation += 1

    def retry_new_driver(connect: Any, org: str) -> Driver:
        for _ in range(50):
            try:
                return Driver(connect, org, retry=retry)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                time.sleep(0.5)  # killed during the setup: the upserts are idempotent
        raise RuntimeError("no driver")

    def killer() -> None:
        rng = random.Random(args.seed)
        while not stop.wait(rng.expovariate(1 / args.kill_every)):
            server.kill()

    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.workers)]
    for t in threads:
        t.start()
    k = threading.Thread(target=killer, daemon=True) if args.kill_every > 0 else None
    if k is not None:
        k.start()
    last = start
    while any(t.is_alive() for t in threads):
        time.sleep(1)
        if time.monotonic() - last >= 30:
            last = time.monotonic()
            ops = sum(done)
            print(
                f"  {ops} operations, {ops / (last - start):.0f}/s, {server.kills} kills",
                flush=True,
            )
    for t in threads:
        t.join()
    stop.set()
    seconds = time.monotonic() - start
    if not failure:
        try:
            whole_database_check(connect)
        except BaseException as err:
            failure.append((-1, args.seed, [], err))
    ops = sum(done)
    print(
        f"soak: {ops} operations in {seconds:.0f} s ({ops / seconds:.0f} operations/s), "
        f"{args.workers} connections, {server.kills} kill -9 of the server "
        f"(down {server.downtime:.0f} s in all), seed {args.seed}, "
        f"{'a discrepancy' if failure else 'zero discrepancies'}"
    )
    status = 0
    if failure:
        n, seed, steps, exc = failure[0]
        who = f"worker {n} (seed {seed})" if n >= 0 else "the whole-database check"
        print(f"{who} failed after {len(steps)} steps: {exc!r}")
        for note in getattr(exc, "__notes__", []):
            print(f"  {note}")
        if isinstance(exc, Divergence):
            minimal = shrink(connect, steps, args.shrink_seconds)
            print(f"counterexample ({len(minimal)} steps):")
            for name, a in minimal:
                print(f"  {name}{a}")
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
