"""`costwarden worker`: runs costwarden's scheduled jobs where pg_cron is absent.

The same functions pg_cron would call (see migrate.CRON_JOBS): expiry every
minute, anomaly detection every five minutes, housekeeping every hour, the
reconciliation of the counters against the ledger every day (it reports the
number of drift findings; `costwarden books check` shows them). Each
job is safe to run concurrently with itself (SKIP LOCKED / row locks),
so a worker beside pg_cron does no harm. Correctness never waits for the
timer: an expired hold that is not yet swept can only refuse early.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from .client import Client
from .errors import CostwardenError

Echo = Callable[[str], None]

log = logging.getLogger("costwarden.worker")


@dataclass
class Job:
    name: str
    every_seconds: float
    run: Callable[[Client], int]
    next_at: float = 0.0


def _anomalies(client: Client) -> int:
    detect = getattr(client, "detect_spend_anomalies", None)
    return int(detect()) if detect is not None else 0


def _reconcile(client: Client) -> int:
    drift = client.reconcile()
    for d in drift:
        log.warning(
            "reconcile: org %s pool %s (%s %s) %s %s %s %s: counter %s, recomputed %s",
            d.org_id,
            d.pool_id,
            d.pool_kind,
            d.scope_id,
            d.measure,
            d.period or "-",
            d.window_kind or "-",
            d.metric,
            d.counter,
            d.recomputed,
        )
    return len(drift)


def default_jobs() -> list[Job]:
    return [
        Job("costwarden-expire", 60, lambda c: c.expire()),
        Job("costwarden-anomalies", 300, _anomalies),
        Job("costwarden-maintenance", 3600, lambda c: c.maintenance()),
        Job("costwarden-reconcile", 86400, _reconcile),
    ]


def run_once(client: Client, jobs: list[Job] | None = None) -> dict[str, int]:
    """Run every job once; returns what each did."""
    return {job.name: job.run(client) for job in (jobs or default_jobs())}


def run_forever(
    client: Client,
    *,
    echo: Echo = print,
    tick: float = 1.0,
    iterations: int | None = None,
    jobs: list[Job] | None = None,
) -> None:
    """Loop over the jobs on their schedules; `iterations` bounds the loop (tests)."""
    jobs = jobs or default_jobs()
    done = 0
    while iterations is None or done < iterations:
        now = time.monotonic()
        for job in jobs:
            if now < job.next_at:
                continue
            job.next_at = now + job.every_seconds
            try:
                n = job.run(client)
            except (CostwardenError, psycopg.Error) as exc:
                echo(f"{job.name}: failed: {exc}")
                continue
            if n < 0:  # the job could not run (e.g. another anomaly run holds its lock)
                echo(f"{job.name}: did not run (another run is in progress)")
            elif n:
                echo(f"{job.name}: {n}")
        done += 1
        if iterations is None or done < iterations:
            time.sleep(tick)
