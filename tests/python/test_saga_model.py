"""The saga against a small reference model (saga_model.py), by hypothesis: random
sequences of reserve / tick / commit / release / expire / late commit / spend report /
adjustment / budget change / clock advance, every invariant checked after every step,
and a failing sequence shrunk to a minimal one. Bounded here (a few hundred steps in
seconds); `make soak` runs the same model for a million operations, with several
connections and the server killed at random points."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from saga_model import COST_LIMITS, METRICS, SCOPES, TOKEN_LIMITS, WINDOWS, Driver

EXAMPLES = int(os.environ.get("COSTWARDEN_MODEL_EXAMPLES", "12"))
STEPS = int(os.environ.get("COSTWARDEN_MODEL_STEPS", "30"))

small = st.integers(min_value=0, max_value=63)
_orgs = itertools.count()


def machine(connect: Callable[[], psycopg.Connection[Any]]) -> type[RuleBasedStateMachine]:
    class SagaMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.d = Driver(connect, f"model-{os.getpid()}-{next(_orgs)}")

        def teardown(self) -> None:
            self.d.conn.close()

        @rule(
            scope=st.integers(0, len(SCOPES) - 1),
            window=st.integers(0, len(WINDOWS) - 1),
            metric=st.sampled_from(METRICS),
            n=st.integers(0, 4),
        )
        def set_budget(self, scope: int, window: int, metric: str, n: int) -> None:
            limits = COST_LIMITS if metric == "cost" else TOKEN_LIMITS
            self.d.set_budget(scope, window, metric, limits[n % len(limits)])

        @rule(context=small, inp=st.integers(0, 2500), out=st.integers(0, 400))
        def reserve(self, context: int, inp: int, out: int) -> None:
            self.d.reserve(context, inp, out)

        @rule(n=small, add_in=st.integers(0, 1500), add_out=st.integers(0, 200))
        def meter(self, n: int, add_in: int, add_out: int) -> None:
            self.d.meter(n, add_in, add_out)

        @rule(n=small, inp=st.integers(0, 2500), out=st.integers(0, 400))
        def commit(self, n: int, inp: int, out: int) -> None:
            self.d.commit(n, inp, out)

        @rule(n=small)
        def release(self, n: int) -> None:
            self.d.release(n)

        @rule(n=small)
        def expire(self, n: int) -> None:
            self.d.expire(n)

        @rule(n=small, add_in=st.integers(0, 500), add_out=st.integers(0, 50))
        def late_commit(self, n: int, add_in: int, add_out: int) -> None:
            self.d.late_commit(n, add_in, add_out)

        @rule(ws=st.integers(0, 1), add=st.integers(0, 20_000))
        def spend_report(self, ws: int, add: int) -> None:
            self.d.spend_report(ws, add)

        @rule(ws=st.integers(0, 1), amount=st.integers(-5_000, 5_000))
        def adjust(self, ws: int, amount: int) -> None:
            self.d.adjust(ws, amount)

        @rule(n=st.integers(0, 1))
        def advance(self, n: int) -> None:
            self.d.advance(n)

        @invariant()
        def books_balance(self) -> None:
            self.d.check()

    return SagaMachine


def test_the_saga_matches_its_model(dsn: str) -> None:
    Machine = machine(lambda: psycopg.connect(dsn, autocommit=True))
    Machine.TestCase.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    Machine.TestCase().runTest()


@pytest.mark.parametrize("seed", [1, 2])
def test_a_seeded_random_run_matches_its_model(dsn: str, seed: int) -> None:
    """The soak's driver (saga_model.random_step), a short run."""
    import random

    from saga_model import random_step

    rng = random.Random(seed)
    d = Driver(lambda: psycopg.connect(dsn, autocommit=True), f"seeded-{seed}")
    done: dict[str, int] = {}
    for _ in range(150):
        name = random_step(d, rng)
        done[name] = done.get(name, 0) + 1
        d.check()
    assert done.get("reserve", 0) > 20 and len(done) >= 8, done
    statuses = {r.status for r in d.model.reservations.values()}
    assert {"denied", "committed"} <= statuses, statuses
    assert done.get("expire", 0) + done.get("late_commit", 0) > 0, done
    assert any(b.micros < 0 for b in d.model.bookings)  # an adjustment (a refund)


def test_the_model_catches_a_counter_that_drifts(dsn: str) -> None:
    import random

    from saga_model import Divergence, random_step

    d = Driver(lambda: psycopg.connect(dsn, autocommit=True), "drifting")
    rng = random.Random(7)
    while not any(b.micros > 0 for b in d.model.bookings):
        random_step(d, rng)
    d.check()
    d.sql(
        "update costwarden._pools set spent_micros = spent_micros + 1 "
        "where org_id = 'drifting' and kind = 'org'"
    )
    with pytest.raises(Divergence, match="spent of org hour"):
        d.check()
