"""`costwarden worker`: runs costwarden's scheduled jobs where pg_cron is absent.

The same functions pg_cron would call (see migrate.CRON_JOBS): expiry every
minute, anomaly detection every five minutes, housekeeping every hour, the
reconciliation of the counters against the ledger every day (it reports the
number of drift findings; `costwarden books check` shows them). Each
job is safe to run concurrently with itself (SKIP LOCKED / row locks),
so a worker beside pg_cron does no harm. Correctness never waits for the
timer: an expired hold that is not yet swept can only refuse early.

A job that fails is reported and the others still run, in the loop and in
``run_once`` alike; an anomaly run that finds another one running returns -1,
shown as "did not run (another run is in progress)" (:data:`DID_NOT_RUN`).
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


#: How a job whose function did not run (returned -1: fn_detect_spend_anomalies when
#: another run holds its lock) is shown, by the loop, ``worker --once`` (its JSON too)
#: and ``anomalies detect``.
DID_NOT_RUN = "did not run (another run is in progress)"


def describe(n: int) -> int | str:
    """A job's result as the command line shows it: the count, or DID_NOT_RUN for -1."""
    return DID_NOT_RUN if n < 0 else n


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


@dataclass(frozen=True)
class Outcome:
    """What one run of a job did: its function's result, or the error it failed with."""

    result: int | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def shown(self) -> int | str:
        """As ``worker`` prints it: the count, DID_NOT_RUN, or ``failed: <error>``."""
        if self.error is not None or self.result is None:
            return f"failed: {self.error}"
        return describe(self.result)


def run_job(client: Client, job: Job) -> Outcome:
    """Run ``job`` once; an error of the database is its outcome (its first line: the
    message without the server's LINE and HINT), not raised."""
    try:
        return Outcome(result=job.run(client))
    except (CostwardenError, psycopg.Error) as exc:
        return Outcome(error=(str(exc).splitlines() or [type(exc).__name__])[0])


def run_once(client: Client, jobs: list[Job] | None = None) -> dict[str, Outcome]:
    """Run every job once, in order, each even when one before it failed; returns what
    each did."""
    return {job.name: run_job(client, job) for job in (jobs or default_jobs())}


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
            outcome = run_job(client, job)
            if outcome.result != 0:  # said when it did something, did not run or failed
                echo(f"{job.name}: {outcome.shown()}")
        done += 1
        if iterations is None or done < iterations:
            time.sleep(tick)
