"""The story of `costwarden demo` / `make demo` on a live database.

Everything goes through the public :class:`~costwarden.client.Client` API. Each run
works on orgs of its own (``acme-<n>``, ``globex-<n>``, ``hooli-<n>``, where ``n``
is the first run number whose ``acme-<n>`` does not exist yet), so running the
demo again on the same database tells the same story. The pricing catalogue is
shared and loaded idempotently.

The sections:

1. catalogue and quotes (exact micro-USD, the billing mode of each workspace);
2. layered budgets (org, workspace, group, user_default, user, key, tokens);
3. six agents spending concurrently until refused, with a watcher checking that
   spent + held never exceeds an enforced limit;
4. the same load against the same limits in shadow mode;
5. a streaming call aborted by a meter tick;
6. an expired reservation and a late commit;
7. spend per scope and window;
8. spend without any limit: a per-workspace table of an org that has none;

then the sections it is given: ``costwarden demo`` passes
:data:`costwarden.demo.SECTIONS` (BYOK, guardrails, the ledger), in that order.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from uuid import UUID

from .._text import table as _table
from .._text import usd as _usd
from ..client import Client
from ..errors import BudgetExceeded, NotFound, readiness_told
from ..pricing import load_catalogue, read_catalogue, sample_catalogue_path
from ..types import Reason, ReservationInfo

Echo = Callable[[str], None]
#: A section told after the story: ``section(dsn, echo)``.
Section = Callable[[str, Echo], object]

ORGS: dict[str, dict[str, Any]] = {
    "acme": {"timezone": "Europe/Berlin"},
    "globex": {"timezone": "America/New_York", "credit_rate_usd": 0.001},
}
WORKSPACES = [
    ("acme", "support-bot", "openai/gpt-4o-mini", None),
    ("acme", "research", "anthropic/claude-3-5-sonnet", None),
    ("acme", "assistant", "openai/gpt-4o", None),
    ("acme", "legacy", None, "disabled"),
    ("globex", "voice", "openai/gpt-4o-realtime-preview", None),
    ("globex", "designer", "openai/dall-e-3", None),
    ("globex", "chat", "openai/gpt-4o", None),
]
QUOTES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("acme", "support-bot", "openai/gpt-4o-mini", {"input_tokens": 1200, "output_tokens": 400}),
    (
        "acme",
        "support-bot",
        "openai/gpt-4o",
        {"input_tokens": 1200, "cached_input_tokens": 800, "output_tokens": 400},
    ),
    (
        "acme",
        "research",
        "anthropic/claude-3-5-sonnet",
        {"input_tokens": 20000, "output_tokens": 4000},
    ),
    (
        "acme",
        "research",
        "anthropic/claude-3-5-sonnet",
        {"input_tokens": 2000, "cache_write_tokens": 18000, "output_tokens": 4000},
    ),
    (
        "acme",
        "research",
        "openai/o1",
        {"input_tokens": 5000, "output_tokens": 1000, "reasoning_tokens": 8000},
    ),
    ("acme", "legacy", "openai/gpt-4o-mini", {"input_tokens": 1, "output_tokens": 1}),
    (
        "globex",
        "voice",
        "openai/gpt-4o-realtime-preview",
        {"audio_seconds": 90.5, "output_tokens": 300},
    ),
    (
        "globex",
        "voice",
        "openai/gpt-4o-realtime-preview",
        {"audio_input_tokens": 6000, "audio_output_tokens": 2000, "output_tokens": 300},
    ),
    ("globex", "designer", "openai/dall-e-3", {"images": 4}),
    ("globex", "designer", "openai/tts-1", {"characters": 12000}),
]

#: short unit names for the quote table
UNIT_ABBREV = {
    "input_tokens": "in",
    "cached_input_tokens": "cached",
    "output_tokens": "out",
    "reasoning_tokens": "reasoning",
    "cache_write_tokens": "cache_w",
    "audio_input_tokens": "audio_in",
    "audio_output_tokens": "audio_out",
    "audio_seconds": "audio_s",
    "characters": "chars",
}

MODEL = "openai/gpt-4o"  # the agents' model: $2.50 / M input, $10 / M output (sample prices)
WS = "assistant"
GLOBEX_WS = "chat"
#: What an agent reserves: its prompt plus max_tokens = 5,000 + 10,000 = 15,000 micros.
ASK = {"input_tokens": 2000, "output_tokens": 1000}
MAX_CALLS = 25  # calls an agent attempts at most
MAX_DENIALS = 3  # refusals after which an agent gives up
CALL_SECONDS = 0.01  # the "provider call" between reserve and commit

#: (scope_kind, scope_id, period, limit, metric, window) of the layered org (acme, hooli)
LAYERS: list[tuple[str, str | None, str, int, str, str]] = [
    ("org", None, "month", 2_000_000, "cost", "calendar"),
    ("workspace", WS, "day", 600_000, "cost", "rolling"),
    ("user_default", None, "day", 100_000, "cost", "rolling"),
    ("group", "interns", "day", 60_000, "cost", "rolling"),
    ("user", "alice", "day", 150_000, "cost", "rolling"),
    ("key", "ci-key", "day", 200_000, "cost", "rolling"),
    ("key", "ci-key", "hour", 20_000, "tokens", "rolling"),
]
USERS = {"alice": ["interns"], "bob": ["interns"], "carol": []}
GLOBEX_LAYERS: list[tuple[str, str | None, str, int, str, str]] = [
    ("org", None, "hour", 120_000, "cost", "rolling"),
    ("workspace", GLOBEX_WS, "day", 1_000_000, "cost", "rolling"),
]


def _scope(kind: str, scope_id: str | None) -> str:
    return f"{kind}:{scope_id}" if scope_id else kind


def _heading(echo: Echo, title: str, *intro: str) -> None:
    echo("")
    echo(f"== {title} ==")
    for line in intro:
        echo(line)


# -- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """The orgs of one demo run."""

    n: int

    def org(self, base: str) -> str:
        return f"{base}-{self.n}"

    @property
    def acme(self) -> str:
        return self.org("acme")

    @property
    def globex(self) -> str:
        return self.org("globex")

    @property
    def hooli(self) -> str:
        return self.org("hooli")


def next_run(client: Client) -> Run:
    """The first run number whose org ``acme-<n>`` does not exist yet."""
    n = 1
    while True:
        try:
            client.budget_status(f"acme-{n}", "org")
        except NotFound:
            return Run(n)
        n += 1


@dataclass
class DemoSummary:
    """Key facts of one run (what the tests check)."""

    run: int = 0
    admitted: int = 0
    denied: int = 0
    denial_codes: Counter[str] = field(default_factory=Counter)
    refused_by: dict[str, str] = field(default_factory=dict)  # agent -> scope of 1st refusal
    overage_micros: int = 0  # charged past the holds in section 3: 0
    overshoot: int = 0  # max of spent + held - limit over enforced limits (<= 0)
    limits_checked: int = 0
    watch_samples: int = 0
    shadow_admitted: int = 0
    shadow_denied: int = 0
    shadow_would_refuse: int = 0
    stream_ticks: int = 0
    stream_aborted: bool = False
    stream_overage_micros: int = 0
    expired_status: str = ""
    expiry_charged_micros: int = 0
    late_charged_micros: int = 0
    closing_held: int = 0  # held in every scope of the closing table: 0
    #: 8. (workspace, spent_micros, calls) of the org without limits, largest spend first
    spend_rows: list[tuple[str, int, int]] = field(default_factory=list)
    hooks_run: list[str] = field(default_factory=list)


# -- 1. catalogue and quotes -----------------------------------------------------------------


def setup_tenants(client: Client, run: Run, echo: Echo) -> None:
    load_catalogue(client, read_catalogue(sample_catalogue_path()))
    for base, settings in ORGS.items():
        client.upsert_org(run.org(base), settings)
    with readiness_told(lambda message: echo(f"readiness: {message}")):
        for base, ws, model, override in WORKSPACES:
            client.upsert_workspace(run.org(base), ws, model, override or "none")


def quote_table(client: Client, run: Run, echo: Echo) -> None:
    rows = []
    for base, ws, model, usage in QUOTES:
        q = client.quote(run.org(base), ws, model, usage)
        units = " ".join(f"{UNIT_ABBREV.get(k, k)}={v}" for k, v in usage.items())
        rows.append(
            (
                run.org(base),
                ws,
                model,
                units,
                q.amount_micros,
                _usd(q.amount_micros),
                q.credits,
                q.billing_mode,
            )
        )
    echo(
        _table(rows, ["org", "workspace", "model", "usage", "micros", "usd", "credits", "billing"])
    )


# -- 2. layered budgets ----------------------------------------------------------------------


def setup_layers(client: Client, org: str, mode: str) -> None:
    client.upsert_org(org, ORGS["acme"])
    client.upsert_workspace(org, WS, MODEL)
    for user, groups in USERS.items():
        client.upsert_user(org, user, groups)
    client.upsert_key(org, "ci-key", workspace_id=WS)
    for kind, sid, period, limit, metric, window in LAYERS:
        client.set_budget(org, kind, sid, period, limit, metric=metric, window=window, mode=mode)


def _layer_scopes(org: str) -> list[tuple[str, str, str | None]]:
    return [
        (org, "org", None),
        (org, "workspace", WS),
        (org, "group", "interns"),
        (org, "user_default", None),
        *((org, "user", u) for u in USERS),
        (org, "key", "ci-key"),
    ]


def budgets_table(client: Client, run: Run, echo: Echo) -> None:
    rows = []
    for org, kind, sid in _layer_scopes(run.acme):
        for st in client.budget_status(org, kind, sid):
            unit = "micros" if st.metric == "cost" else "tokens"
            rows.append(
                (
                    _scope(kind, sid),
                    st.period,
                    st.window_kind,
                    st.limit_value,
                    unit,
                    st.mode,
                    st.source,
                )
            )
    echo(_table(rows, ["scope", "period", "window", "limit", "unit", "mode", "source"]))


# -- 3. agents spending concurrently ------------------------------------------------------------


@dataclass(frozen=True)
class Agent:
    name: str
    org: str
    workspace: str
    user: str | None
    key: str | None
    seed: int
    call_seconds: float = CALL_SECONDS  # how long its provider calls take

    @property
    def via(self) -> str:
        return f"key {self.key}" if self.key else f"user {self.user}"


@dataclass
class AgentStats:
    agent: Agent
    admitted: int = 0
    denied: int = 0
    charged: int = 0
    overage: int = 0
    first_denial: Reason | None = None
    codes: Counter[str] = field(default_factory=Counter)


def _actual(rng: random.Random) -> dict[str, int]:
    """What a call really used: the prompt and up to max_tokens of output."""
    return {"input_tokens": ASK["input_tokens"], "output_tokens": rng.randint(200, 1000)}


def run_agent(client: Client, agent: Agent, run: Run) -> AgentStats:
    stats = AgentStats(agent)
    rng = random.Random(agent.seed)
    for _ in range(MAX_CALLS):
        if stats.denied >= MAX_DENIALS:
            break
        actual = _actual(rng)
        try:
            with client.reservation(
                agent.org,
                agent.workspace,
                MODEL,
                ASK,
                user_id=agent.user,
                key_id=agent.key,
                metadata={"agent": agent.name, "demo_run": run.n},
            ) as r:
                time.sleep(agent.call_seconds)  # the provider call
                result = r.commit(actual)
        except BudgetExceeded as exc:
            stats.denied += 1
            enforced = [x for x in exc.reasons if x.enforced]
            stats.codes.update(x.code for x in enforced)
            if stats.first_denial is None and enforced:
                stats.first_denial = enforced[0]
            time.sleep(0.01)  # back off: a hold elsewhere may be released meanwhile
            continue
        stats.admitted += 1
        stats.charged += result.charged_micros
        stats.overage += result.overage_micros
    return stats


class Watcher:
    """Samples budget_status of the given scopes while the agents run and keeps the
    worst ``spent + held - limit`` over their enforced limits (the guarantee: <= 0)."""

    def __init__(self, client: Client, scopes: Sequence[tuple[str, str, str | None]]) -> None:
        self.client = client
        self.scopes = scopes
        self.samples = 0
        self.worst: int | None = None
        self.limits = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-watcher", daemon=True)

    def check(self) -> None:
        limits = 0
        for org, kind, sid in self.scopes:
            for st in self.client.budget_status(org, kind, sid):
                if st.mode != "enforce" or st.limit_value is None:
                    continue
                limits += 1
                over = (st.spent or 0) + (st.held or 0) - st.limit_value
                self.worst = over if self.worst is None else max(self.worst, over)
        self.samples += 1
        self.limits = limits

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self.check()
                self._stop.wait(0.005)
        except BaseException as exc:  # handed to the main thread by __exit__
            self.error = exc

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise self.error
        self.check()  # and once more at the end


def run_agents(client: Client, agents: Sequence[Agent], run: Run) -> list[AgentStats]:
    with ThreadPoolExecutor(max_workers=len(agents), thread_name_prefix="agent") as pool:
        futures = [pool.submit(run_agent, client, a, run) for a in agents]
        return [f.result() for f in futures]


def acme_agents(org: str) -> list[Agent]:
    return [
        Agent("alice", org, WS, "alice", None, 1),
        Agent("bob", org, WS, "bob", None, 2),
        Agent("carol", org, WS, "carol", None, 3),
        Agent("ci-bot", org, WS, None, "ci-key", 4),
    ]


def agents_section(client: Client, run: Run, echo: Echo, summary: DemoSummary) -> None:
    org, gx = run.acme, run.globex
    for user in ("dave", "erin"):
        client.upsert_user(gx, user)
    for kind, sid, period, limit, metric, window in GLOBEX_LAYERS:
        client.set_budget(gx, kind, sid, period, limit, metric=metric, window=window)
    agents = [
        *acme_agents(org),
        # longer calls: the two hold the shared org pool at the same time
        Agent("dave", gx, GLOBEX_WS, "dave", None, 5, 0.03),
        Agent("erin", gx, GLOBEX_WS, "erin", None, 6, 0.03),
    ]
    scopes = [
        *(s for s in _layer_scopes(org) if s[1] not in ("group", "user_default")),
        (gx, "org", None),
        (gx, "workspace", GLOBEX_WS),
    ]
    started = time.monotonic()
    with Watcher(client, scopes) as watcher:
        stats = run_agents(client, agents, run)
    elapsed = time.monotonic() - started

    rows = []
    for s in stats:
        stop = s.first_denial
        rows.append(
            (
                s.agent.name,
                s.agent.org,
                s.agent.via,
                s.admitted,
                s.denied,
                s.charged,
                s.overage,
                f"{stop.code} @ {_scope(stop.scope_kind or '-', stop.scope_id)}" if stop else "-",
            )
        )
    echo(
        f"{len(agents)} agents, {len(agents)} threads sharing one Client, {elapsed:.1f} s; each "
        f"reserves {ASK['input_tokens']} prompt + {ASK['output_tokens']} max tokens"
    )
    ask_micros = client.quote(org, WS, MODEL, ASK).amount_micros
    echo(
        f"({_usd(ask_micros)}), commits what it used, and gives up after {MAX_DENIALS} refusals "
        f"(at most {MAX_CALLS} calls):"
    )
    echo(
        _table(
            rows,
            ["agent", "org", "via", "admitted", "denied", "charged", "overage", "refused by"],
        )
    )
    echo("Each agent's first refusal, as the reservation's reasons give it:")
    deny_rows = [
        (
            s.agent.name,
            d.code,
            _scope(d.scope_kind or "-", d.scope_id),
            f"{d.period}/{d.window}",
            d.limit,
            d.spent,
            d.held,
            d.requested,
        )
        for s in stats
        if (d := s.first_denial) is not None
    ]
    echo(
        _table(
            deny_rows, ["agent", "code", "scope", "window", "limit", "spent", "held", "requested"]
        )
    )
    recorded = sum(len(client.reservations(o, "denied", limit=10_000)) for o in (org, gx))
    echo(
        f"Refusals are results, not errors: {recorded} denied reservations are recorded, each "
        "holding nothing."
    )
    worst = watcher.worst if watcher.worst is not None else 0
    echo(
        f"Watcher: {watcher.samples} samples of {watcher.limits} enforced limits during the run; "
        f"max(spent + held - limit) = {worst}"
    )
    echo(
        "-> "
        + (
            "spend + held never exceeded an enforced limit."
            if worst <= 0
            else "OVERSHOOT: an enforced limit was exceeded!"
        )
    )
    summary.admitted = sum(s.admitted for s in stats)
    summary.denied = sum(s.denied for s in stats)
    for s in stats:
        summary.denial_codes.update(s.codes)
        if s.first_denial is not None:
            d = s.first_denial
            summary.refused_by[s.agent.name] = _scope(d.scope_kind or "-", d.scope_id)
    summary.overage_micros = sum(s.overage for s in stats)
    summary.overshoot = worst
    summary.limits_checked = watcher.limits
    summary.watch_samples = watcher.samples


# -- 4. shadow mode --------------------------------------------------------------------------


def shadow_section(client: Client, run: Run, echo: Echo, summary: DemoSummary) -> None:
    org = run.hooli
    setup_layers(client, org, "shadow")
    stats = run_agents(client, acme_agents(org), run)
    summary.shadow_admitted = sum(s.admitted for s in stats)
    summary.shadow_denied = sum(s.denied for s in stats)
    would: Counter[tuple[str, str | None, str, str]] = Counter()
    reservations = client.reservations(org, limit=10_000)
    flagged = 0
    for info in reservations:
        shadow = [x for x in info.reasons if x.enforced is False]
        flagged += bool(shadow)
        for x in shadow:
            would[(x.scope_kind or "-", x.scope_id, x.period or "-", x.metric or "-")] += 1
    summary.shadow_would_refuse = flagged
    echo(
        f"{len(reservations)} reservations: {summary.shadow_admitted} held, "
        f"{summary.shadow_denied} denied; {flagged} carry would-be refusals "
        '("enforced": false):'
    )
    rows = []
    for org_, kind, sid in _layer_scopes(org):
        if kind in ("group", "user_default"):
            continue
        for st in client.budget_status(org_, kind, sid):
            key = (kind, sid, st.period, st.metric)
            rows.append(
                (
                    _scope(kind, sid),
                    f"{st.period}/{st.window_kind}",
                    st.metric,
                    st.limit_value,
                    st.spent,
                    st.mode,
                    would.get(key, 0),
                )
            )
    echo(_table(rows, ["scope", "window", "metric", "limit", "spent", "mode", "would refuse"]))


# -- 5. a streaming call aborted by a meter tick --------------------------------------------


def streaming_section(client: Client, run: Run, echo: Echo, summary: DemoSummary) -> None:
    org = run.acme
    client.upsert_user(org, "dana")
    client.set_budget(org, "user", "dana", "hour", 20_000)
    ask = {"input_tokens": 1000, "output_tokens": 500}
    echo(
        f"dana may spend {_usd(20_000)} an hour. She streams a long answer, reserving "
        f"{ask['output_tokens']} max tokens"
    )
    echo("and meters cumulative usage every 300 tokens; costwarden extends the hold while it can.")
    rows: list[tuple[Any, ...]] = []
    used: dict[str, int] = dict(ask)
    with client.reservation(org, WS, MODEL, ask, user_id="dana") as r:
        hold0 = r.reservation.amount_micros
        rows.append(("reserve", "-", "-", hold0, "-", "held"))
        for tick in range(1, 20):
            used = {"input_tokens": 1000, "output_tokens": 300 * tick}
            m = r.meter(used)
            rows.append(
                (
                    f"tick {tick}",
                    used["output_tokens"],
                    m.metered_micros,
                    m.amount_micros,
                    m.remaining_micros,
                    m.action,
                )
            )
            summary.stream_ticks = tick
            if m.abort:
                summary.stream_aborted = True
                break
        result = r.commit(used)  # the tokens already streamed happened: charge them
    summary.stream_overage_micros = result.overage_micros
    echo(_table(rows, ["step", "output", "metered", "hold", "remaining", "action"]))
    echo(
        f"On abort dana stops the stream and commits what was streamed: charged "
        f"{result.charged_micros},"
    )
    echo(
        f"overage {result.overage_micros} (at most one tick's worth, recorded in full: the "
        f"tokens were delivered)."
    )
    nxt = client.reserve(org, WS, MODEL, ask, user_id="dana", raise_on_denied=False)
    why = ", ".join(f"{x.code} @ {_scope(x.scope_kind or '-', x.scope_id)}" for x in nxt.reasons)
    echo(f"Her next reserve: {nxt.status} ({why or 'no reasons'}).")


# -- 6. an expired reservation -----------------------------------------------------------------


def _find(client: Client, org: str, rid: UUID) -> ReservationInfo:
    return next(i for i in client.reservations(org, limit=10_000) if i.reservation_id == rid)


def expiry_section(client: Client, run: Run, echo: Echo, summary: DemoSummary) -> None:
    org = run.acme
    client.upsert_user(org, "frank")
    ask = {"input_tokens": 3000, "output_tokens": 2000}
    metered = {"input_tokens": 3000, "output_tokens": 800}
    actual = {"input_tokens": 3000, "output_tokens": 1100}
    rows: list[tuple[Any, ...]] = []
    with client.reservation(org, WS, MODEL, ask, user_id="frank", ttl=timedelta(seconds=1)) as r:
        rows.append(("reserve, ttl 1 s", "held", r.reservation.amount_micros, 0, 0))
        m = r.meter(metered)
        rows.append(("meter 800 output tokens", "held", m.amount_micros, m.metered_micros, 0))
        time.sleep(1.3)  # frank's worker hangs past the ttl ...
        swept = client.expire()
        info = _find(client, org, r.id)
        rows.append(
            (f"expire() swept {swept}", info.status, 0, info.metered_micros, info.charged_micros)
        )
        summary.expired_status = info.status
        summary.expiry_charged_micros = info.charged_micros
        # ... and reports back late with the real usage
        result = r.commit(actual)
        summary.late_charged_micros = result.charged_micros
        info = _find(client, org, r.id)
        rows.append(
            ("late commit, 1100 output", info.status, 0, info.metered_micros, info.charged_micros)
        )
    echo(_table(rows, ["step", "status", "hold", "metered", "charged"]))
    total = client.quote(org, WS, MODEL, actual).amount_micros
    echo(
        f"The expiry charged the metered {summary.expiry_charged_micros} as approximate; the "
        f"late commit booked only the remainder"
    )
    echo(
        f"{result.charged_micros} (a second, late ledger entry): {info.charged_micros} in all = "
        f"the real usage's {total}."
    )


# -- 7. spend per scope and window -------------------------------------------------------------


def closing_section(client: Client, run: Run, echo: Echo, summary: DemoSummary) -> None:
    scopes: list[tuple[str, str, str | None]] = [
        *(s for s in _layer_scopes(run.acme) if s[1] not in ("group", "user_default")),
        (run.acme, "user", "dana"),
        (run.acme, "user", "frank"),
        (run.globex, "org", None),
        (run.globex, "workspace", GLOBEX_WS),
    ]
    rows = []
    for org, kind, sid in scopes:
        for st in client.budget_status(org, kind, sid):
            summary.closing_held += st.held or 0
            rows.append(
                (
                    org,
                    _scope(kind, sid),
                    f"{st.period}/{st.window_kind}",
                    st.metric,
                    st.limit_value,
                    st.spent,
                    st.held,
                    st.remaining,
                    st.mode,
                    st.source,
                )
            )
    echo(
        _table(
            rows,
            [
                "org",
                "scope",
                "window",
                "metric",
                "limit",
                "spent",
                "held",
                "remaining",
                "mode",
                "source",
            ],
        )
    )


# -- 8. spend without any limit ---------------------------------------------------------------

#: (workspace, model, usage of each committed call, calls) of the org without limits
INITECH: list[tuple[str, str, dict[str, int], int]] = [
    ("helpdesk", "openai/gpt-4o-mini", {"input_tokens": 3000, "output_tokens": 600}, 5),
    ("search", "openai/gpt-4o", {"input_tokens": 8000, "cached_input_tokens": 4000}, 3),
    ("notes", "openai/gpt-4o", {"input_tokens": 500, "output_tokens": 100}, 1),
]


def spend_section(client: Client, run: Run, echo: Echo, summary: DemoSummary) -> None:
    org = run.org("initech")
    client.upsert_org(org)
    for ws, model, usage, calls in INITECH:
        client.upsert_workspace(org, ws, model, "platform_managed")
        for _ in range(calls):
            r = client.reserve(org, ws, model, usage)
            client.commit(r.reservation_id, usage)
    held = client.reserve(org, "notes", "openai/gpt-4o", {"input_tokens": 1000})
    rows = client.spend_summary(org, "workspace")
    summary.spend_rows = [(r.scope_id or "", r.spent_micros, r.calls) for r in rows]
    echo(
        _table(
            [
                (
                    r.scope_id,
                    _usd(r.spent_micros),
                    r.spent_micros,
                    _usd(r.held_micros),
                    r.spent_tokens,
                    r.calls,
                    _usd(r.limit_micros),
                )
                for r in rows
            ],
            ["workspace", "spent", "micros", "held", "tokens", "calls", "limit"],
        )
    )
    client.release(held.reservation_id)


# -- the sections after the story --------------------------------------------------------------


def run_sections(dsn: str, echo: Echo, sections: Sequence[tuple[str, Section]]) -> list[str]:
    """Tell each ``(name, section)`` in order; returns the names told."""
    told = []
    for name, section in sections:
        section(dsn, echo)
        told.append(name)
    return told


# -- the story ---------------------------------------------------------------------------------


def run_story(
    dsn: str, echo: Echo = print, *, sections: Sequence[tuple[str, Section]] = ()
) -> DemoSummary:
    """The story (sections 1-7), then each of ``sections`` in order."""
    summary = DemoSummary()
    started = time.monotonic()
    with Client(dsn, pool_size=8, on_unavailable="closed") as client:
        run = next_run(client)
        summary.run = run.n
        echo(f"== costwarden demo (run {run.n}: orgs {run.acme}, {run.globex}, {run.hooli}) ==")
        echo("All amounts are integer micro-USD (1 USD = 1,000,000) unless the unit says tokens.")

        _heading(
            echo,
            "1. Catalogue and quotes",
            "The SAMPLE pricing catalogue (illustrative prices). A quote is exact, rounded up",
            "once, with the billing mode each workspace resolves to (override > model > default).",
            "Usage: in / cached / cache_w (cache writes) / out / reasoning / audio_in / audio_out",
            "= tokens, audio_s = seconds, chars = characters.",
        )
        setup_tenants(client, run, echo)
        quote_table(client, run, echo)

        _heading(
            echo,
            f"2. Layered budgets ({run.acme})",
            "A call must fit every limit that applies: org, workspace, key, and the user's",
            "effective limit (own override, else the tightest group, else user_default).",
        )
        setup_layers(client, run.acme, "enforce")
        budgets_table(client, run, echo)

        _heading(echo, "3. Agents spending concurrently")
        agents_section(client, run, echo, summary)

        _heading(
            echo,
            f"4. Shadow mode ({run.hooli}: the same limits in mode 'shadow', the same load)",
        )
        shadow_section(client, run, echo, summary)

        _heading(echo, "5. A streaming call aborted by a meter tick")
        streaming_section(client, run, echo, summary)

        _heading(echo, "6. An expired reservation, then a late commit")
        expiry_section(client, run, echo, summary)

        _heading(echo, "7. Spend per scope and window (budget_status)")
        closing_section(client, run, echo, summary)

        _heading(
            echo,
            f"8. Spend without any limit ({run.org('initech')}: spend_summary per workspace)",
            "Spend, holds and calls this calendar month, whether or not a limit exists.",
        )
        spend_section(client, run, echo, summary)
        echo(f"(the story took {time.monotonic() - started:.1f} s)")
        echo("")
    summary.hooks_run = run_sections(dsn, echo, sections)
    return summary
