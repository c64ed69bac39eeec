"""`costwarden bench adapters`: what costwarden.integrations.openai adds to one
non-streaming chat completion (sizing + reserve + commit + usage mapping), beside the
bare openai SDK call, in the same run, at 1 client.

Both sides make the same call with the same ``openai.OpenAI`` client (one keep-alive
HTTP connection) to a local fake of the OpenAI API (costwarden.integrations.testing)
on 127.0.0.1 that answers every request with the same recorded-shape completion, so
the SDK's own work and the fake server's latency appear on both sides and cancel in
the difference. The guarded side charges a workspace with an enforced daily budget
in a scratch database (the sample catalogue, gpt-4o-mini).

To say where the added time goes, the same loop also times: the guarded call through a
costwarden client that answers at once with no database (minus the bare call: the
adapter's own work, i.e. dispatch, sizing, usage mapping); the reserve +
commit pair through ``costwarden.Client`` (the saga's two round trips, each one
autocommit statement and one durable WAL flush), the same pair on a connection with
``synchronous_commit=off`` (what the flushes cost; not a setting for money), and the
adapter's pure-Python work (sizing the request, mapping the usage). Every iteration
runs each side once, in a rotating order, so that a change of load on the shared
machine hits all sides alike; the load average is reported before and after.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from .. import types as t
from ..client import Client
from ..migrate import migrate
from ..pricing import load_catalogue, read_catalogue, sample_catalogue_path
from .common import percentile, scratch_database, server_facts

Echo = Callable[[str], None]

DBNAME = "costwarden_adapters_bench"
ORG, WS, MODEL = "bench", "ws", "gpt-4o-mini"
#: A typical short chat request: a system prompt and a question (about 300 bytes).
MESSAGES = [
    {"role": "system", "content": "You are a support assistant for an online bookshop. " * 3},
    {"role": "user", "content": "Where is my order 12345? It was due on Monday."},
]
MAX_TOKENS = 256
GOAL_MS = 2.0


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: median and p90 of ``n`` calls."""

    n: int
    median_ms: float
    p90_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        ms = [s * 1000.0 for s in seconds]
        return cls(len(ms), statistics.median(ms), percentile(ms, 90))


@dataclass(frozen=True)
class AdapterFigures:
    bare: Timing
    guarded: Timing
    #: the same iterations' differences (guarded i - bare i)
    added: Timing
    #: the same iterations' differences (guarded i - bare i - pair i): the adapter's own
    #: work and its dispatch, with the noise of three timings
    own: Timing
    parts: dict[str, Timing] = field(default_factory=dict)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    server: str = ""
    sdk: str = ""

    @property
    def added_median_ms(self) -> float:
        return self.guarded.median_ms - self.bare.median_ms

    @property
    def adapter_alone_ms(self) -> float:
        """The adapter's own work: guarded through the instant client minus bare (medians)."""
        instant = self.parts.get(LABELS[SIDES[2]])
        return instant.median_ms - self.bare.median_ms if instant else 0.0

    @property
    def added_p90_ms(self) -> float:
        return self.guarded.p90_ms - self.bare.p90_ms

    def markdown(self) -> str:
        rows = [
            f"| bare `sdk.chat.completions.create` | {self.bare.median_ms:.2f} "
            f"| {self.bare.p90_ms:.2f} |",
            f"| guarded (`guard(sdk, costwarden.Client(dsn), ...)`) | {self.guarded.median_ms:.2f} "
            f"| {self.guarded.p90_ms:.2f} |",
            f"| **added by the adapter** (guarded − bare) | **{self.added_median_ms:.2f}** "
            f"| {self.added_p90_ms:.2f} |",
            f"| added, median of the per-iteration differences | {self.added.median_ms:.2f} "
            f"| {self.added.p90_ms:.2f} |",
        ]
        parts = [
            f"| {name} | {t.median_ms:.3f} | {t.p90_ms:.3f} |" for name, t in self.parts.items()
        ]
        parts.append(
            "| the adapter beyond the pair: guarded − bare − pair, per iteration "
            f"| {self.own.median_ms:.3f} | {self.own.p90_ms:.3f} |"
        )
        verdict = "within" if self.added_median_ms <= GOAL_MS else "over"
        return "\n".join(
            [
                f"One non-streaming chat completion, 1 client, {self.bare.n} calls a side "
                f"(interleaved), against the local fake OpenAI API; {self.sdk}.",
                "",
                "| call | median ms | p90 ms |",
                "|---|---:|---:|",
                *rows,
                "",
                "Where it goes (each timed alone in the same loop):",
                "",
                "| part | median ms | p90 ms |",
                "|---|---:|---:|",
                *parts,
                "",
                f"Added per call: {self.added_median_ms:.2f} ms median ({verdict} the "
                f"{GOAL_MS:g} ms goal). The adapter's own work (guarded through the instant "
                f"client − bare, medians): {self.adapter_alone_ms:.2f} ms; the rest is the "
                "reserve + commit pair.",
                f"Load average before {_load(self.load_before)}, after {_load(self.load_after)} "
                f"({os.cpu_count()} CPUs). {self.server}.",
            ]
        )


def _load(avg: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in avg)


def _setup(dsn: str) -> None:
    migrate(dsn, schedule=False)
    with Client(dsn, on_unavailable="closed") as cw:
        load_catalogue(cw, read_catalogue(sample_catalogue_path()))
        cw.upsert_org(ORG)
        cw.upsert_workspace(ORG, WS)
        cw.set_budget(ORG, "workspace", WS, "day", 10**12)  # enforced, never reached


#: the sides of the loop, in the order of the report
SIDES = (
    "bare",
    "guarded",
    "guarded, instant costwarden",
    "pair",
    "pair, synchronous_commit=off",
    "size+map",
)
LABELS = {
    "guarded, instant costwarden": "guarded, through a costwarden client that answers at "
    "once (no database)",
    "pair": "`reserve` + `commit` through costwarden.Client (2 round trips)",
    "pair, synchronous_commit=off": "the same pair, synchronous_commit=off",
    "size+map": "sizing the request + mapping the usage (Python)",
}


class _InstantClient:
    """A stand-in for costwarden.Client that answers reserve and commit at once, with no
    database: timing a guarded call through it leaves only the adapter's own work
    (dispatch, sizing, usage mapping), measured beside the bare call."""

    _reservation = t.Reservation(UUID(int=1), "held", 1, 1, None, None, ())
    _commit = t.CommitResult(1, 1, 0, 0, None)

    def reserve(self, *args: Any, **kwargs: Any) -> t.Reservation:
        return self._reservation

    def commit(self, *args: Any, **kwargs: Any) -> t.CommitResult:
        return self._commit


def run_adapters_bench(
    admin_dsn: str,
    *,
    calls: int = 1000,
    warmup: int = 100,
    keep: bool = False,
    echo: Echo = print,
) -> AdapterFigures:
    """Time ``calls`` iterations of every side (after ``warmup`` untimed ones), each
    iteration in a rotating order. Needs the openai SDK."""
    try:
        import openai
    except ImportError as exc:
        raise RuntimeError(
            "the adapters bench needs the openai SDK: pip install 'costwarden[openai]'"
        ) from exc

    from ..integrations.openai import _chat_plan, guard, usage_from_openai
    from ..integrations.testing import Reply, chat_completion, fake_provider, openai_usage

    reply = Reply(body=chat_completion(openai_usage(60, 40)))
    load_before = os.getloadavg()
    with (
        scratch_database(admin_dsn, DBNAME, keep=keep) as dsn,
        fake_provider(reply, record=False) as fake,
    ):
        echo(f"setting up {DBNAME} ...")
        _setup(dsn)
        server = server_facts(dsn)
        sdk = openai.OpenAI(base_url=fake.url + "/v1", api_key="sk-bench", max_retries=0)
        async_off = {"options": "-c synchronous_commit=off"}
        with (
            Client(dsn, on_unavailable="closed") as cw,
            Client(dsn, connect_kwargs=async_off, on_unavailable="closed") as cw_off,
        ):
            guarded = guard(sdk, cw, org_id=ORG, workspace_id=WS)
            instant = guard(sdk, _InstantClient(), org_id=ORG, workspace_id=WS)
            kwargs: dict[str, Any] = {
                "model": MODEL,
                "messages": MESSAGES,
                "max_tokens": MAX_TOKENS,
            }
            cfg = guarded.costwarden
            plan = _chat_plan(cfg, kwargs)
            usage = sdk.chat.completions.create(**kwargs).usage

            def pair(client: Client) -> None:
                held = client.reserve(ORG, WS, plan.model, plan.reserve_usage)
                client.commit(held.reservation_id, usage_from_openai(usage))

            def size_and_map() -> None:
                _chat_plan(cfg, kwargs)
                usage_from_openai(usage)

            sides: dict[str, Callable[[], Any]] = {
                "bare": lambda: sdk.chat.completions.create(**kwargs),
                "guarded": lambda: guarded.chat.completions.create(**kwargs),
                "guarded, instant costwarden": lambda: instant.chat.completions.create(**kwargs),
                "pair": lambda: pair(cw),
                "pair, synchronous_commit=off": lambda: pair(cw_off),
                "size+map": size_and_map,
            }
            for _ in range(warmup):
                for fn in sides.values():
                    fn()
            echo(f"timing {calls} iterations of {len(sides)} sides, rotating ...")
            times: dict[str, list[float]] = {k: [] for k in sides}
            order = list(sides)
            clock = time.perf_counter
            for i in range(calls):
                k = i % len(order)
                for name in order[k:] + order[:k]:
                    fn = sides[name]
                    t0 = clock()
                    fn()
                    times[name].append(clock() - t0)
    added = [g - b for g, b in zip(times["guarded"], times["bare"], strict=True)]
    own = [a - p for a, p in zip(added, times["pair"], strict=True)]
    return AdapterFigures(
        bare=Timing.of(times["bare"]),
        guarded=Timing.of(times["guarded"]),
        added=Timing.of(added),
        own=Timing.of(own),
        parts={LABELS[k]: Timing.of(times[k]) for k in SIDES[2:]},
        load_before=load_before,
        load_after=os.getloadavg(),
        server=server,
        sdk=f"openai {openai.__version__}",
    )
