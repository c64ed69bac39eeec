"""Prometheus metrics of `costwarden serve` and `costwarden metrics` (SPEC §13).

Two sources, one text: the database's figures (``fn_metrics``: holds, reservations
and denials of the last hour, enforced limits as a ratio of the limit, circuit
states), read at scrape time under the caller's role, and this process's own
(request latency histograms, reservations by status and denials by reason since
start, the spool depth of ``COSTWARDEN_SPOOL_DIR`` when one is configured)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import _sql as q
from .. import types as t

if TYPE_CHECKING:
    from .auth import Identity
    from .config import ServerConfig
    from .db import Database

#: HELP text of each fn_metrics metric.
DATABASE_METRICS = {
    "costwarden_reservations_held": "Reservations currently held (live holds).",
    "costwarden_reservations_last_hour": "Reservations created in the last hour, by status.",
    "costwarden_denials_last_hour": "Refusing reasons of denied reservations of the last hour.",
    "costwarden_limit_spent_ratio": "Spent / limit of each enforced limit (1 = at the limit).",
    "costwarden_limit_held_ratio": "Held / limit of each enforced limit.",
    "costwarden_circuit_state": "1 for each provider's current circuit state.",
}


def database_families(samples: Iterable[t.MetricSample]) -> list[Metric]:
    """fn_metrics rows as gauge families, every documented family present."""
    families: dict[str, GaugeMetricFamily] = {}
    labels_of: dict[str, list[str]] = {}
    rows = list(samples)
    for s in rows:
        labels_of.setdefault(s.metric, sorted(s.labels))
    for name, help_text in DATABASE_METRICS.items():
        families[name] = GaugeMetricFamily(name, help_text, labels=labels_of.get(name, []))
    for s in rows:
        family = families.get(s.metric)
        if family is None:
            family = families[s.metric] = GaugeMetricFamily(
                s.metric, s.metric, labels=labels_of[s.metric]
            )
        family.add_metric([str(s.labels[k]) for k in labels_of[s.metric]], float(s.value))
    return list(families.values())


def render_database(samples: Iterable[t.MetricSample], spool_dir: str | None = None) -> bytes:
    """The text ``costwarden metrics`` prints: the database's figures (and spool depth)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Static(database_families(samples) + _spool_family(spool_dir)))
    return generate_latest(registry)


def _spool_family(spool_dir: str | None) -> list[Metric]:
    if not spool_dir:
        return []
    from ..spool import Spool

    family = GaugeMetricFamily(
        "costwarden_spool_pending", "Spooled calls not yet replayed (on_unavailable='open')."
    )
    family.add_metric([], float(Spool(spool_dir).pending()))
    return [family]


class _Static(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class ServerMetrics:
    def __init__(self, db: Database | None, config: ServerConfig | None) -> None:
        self._db = db
        self._spool_dir = config.spool_dir if config is not None else None
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = Histogram(
            "costwarden_http_request_seconds",
            "HTTP request latency by method, route and status.",
            ["method", "route", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.reservations = Counter(
            "costwarden_http_reservations",
            "Reservations made through this process, by status.",
            ["status"],
            registry=self.registry,
        )
        self.denials = Counter(
            "costwarden_http_denials",
            "Refusing reasons of reservations denied through this process.",
            ["reason"],
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.latency.labels(method, route, str(status)).observe(seconds)

    def reserved(self, reservation: t.Reservation) -> None:
        self.reservations.labels(reservation.status).inc()
        if not reservation.held:
            for reason in reservation.reasons:
                if reason.enforced is not False:
                    self.denials.labels(reason.code).inc()

    async def render(self, caller: Identity) -> bytes:
        assert self._db is not None
        samples: list[t.MetricSample] = await self._db.run(caller, q.metrics())
        return render_database(samples, self._spool_dir) + generate_latest(self.registry)


__all__: list[Any] = ["ServerMetrics", "render_database"]
