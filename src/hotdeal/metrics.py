"""Prometheus metrics of the services and the writer.

Under gunicorn every worker is a process: the gunicorn configs point
PROMETHEUS_MULTIPROC_DIR at a fresh directory *before* prometheus_client is imported,
and a scrape of any worker aggregates all of them. Gauges that describe the world
(stock remaining, database lock waits, backend up) are not kept per process: a
collector reads them from the store of record at scrape time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hotdeal.errors import METRIC_RESULTS

log = logging.getLogger(__name__)

# From a 1 ms Redis round trip to a 100 s queue on the hot row.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0,
)  # fmt: skip

ORDERS = Counter(
    "hotdeal_orders_total",
    f"Order requests by outcome: {', '.join(METRIC_RESULTS)} (bad input, an unknown "
    "product, a refused token).",
    ["service", "product", "result"],
)
DECREMENTS = Counter(
    "hotdeal_stock_decrements_total", "Units taken from stock.", ["service", "product"]
)
AUTH_REFUSED = Counter(
    "hotdeal_auth_refused_total",
    "Requests refused for their token (401), by reason: missing, malformed, too_large, "
    "algorithm, unknown_key, signature, expired, claims, buyer.",
    ["service", "reason"],
)
JWKS_REFRESHES = Counter(
    "hotdeal_auth_jwks_refreshes_total",
    "JWKS fetches, by result (ok, failed).",
    ["service", "result"],
)
ROOM_TICKETS = Counter(
    "hotdeal_room_tickets_total",
    "Waiting-room requests by result: joined, polled, refused (a ticket forged, expired, "
    "another buyer's or of an earlier event).",
    ["service", "result"],
)
ROOM_PASSES = Counter(
    "hotdeal_room_passes_total",
    "Waiting-room passes by result: issued (an admitted poll), used (an order got past the "
    "room with one), expired, refused (forged, another buyer's, product or event).",
    ["service", "result"],
)
ROOM_WAIT = Histogram(
    "hotdeal_room_wait_seconds",
    "Waiting-room time from a buyer's ticket to its first admitted poll.",
    ["service"],
    buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0),
)
HOLDS_SETTLED = Counter(
    "hotdeal_holds_settled_total",
    "Holds settled, each once by whoever got there first, by result: confirmed, "
    "cancelled, expired (the sweeps count expired; the pods confirmed, cancelled and the "
    "holds a confirm or cancel found expired).",
    ["service", "result"],
)
HOLD_EXPIRY_LAG = Histogram(
    "hotdeal_hold_expiry_lag_seconds",
    "How long after its deadline a sweep released an expired hold (a confirm or cancel "
    "that finds the deadline passed releases it at once).",
    ["service"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
)
ORDER_DURATION = Histogram(
    "hotdeal_order_duration_seconds",
    "Order request latency, as the service saw it.",
    ["service"],
    buckets=LATENCY_BUCKETS,
)
LOCK_WAIT = Histogram(
    "hotdeal_lock_wait_seconds",
    "legacy: time an order waited for its stock row lock (SELECT ... FOR UPDATE).",
    ["service", "design"],
    buckets=LATENCY_BUCKETS,
)
LOCK_HOLD = Histogram(
    "hotdeal_lock_hold_seconds",
    "legacy: time an order held its stock row lock (lock to commit).",
    ["service", "design"],
    buckets=LATENCY_BUCKETS,
)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class ScrapeCollector(Collector):
    """Runs `read` on every scrape; a failing backend yields no sample, not an error."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        try:
            yield from self.read()
        except Exception as exc:  # a scrape must not fail because a backend is down
            log.warning("scrape reader failed: %s: %s", exc.__class__.__name__, exc)
            return

    def describe(self) -> Iterable[Metric]:
        return []  # don't run `read` at registration time


def stock_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
    """(remaining, initial): what each design reads from its store of record."""
    labels = ["service", "product"]
    return (
        GaugeMetricFamily(
            "hotdeal_stock_remaining", "Units left, read from the store of record.", labels=labels
        ),
        GaugeMetricFamily(
            "hotdeal_stock_initial",
            "Units the event started with (hotdeal-ops reset).",
            labels=labels,
        ),
    )


def backend_up(service: str, checks: dict[str, Callable[[], None]]) -> Iterable[Metric]:
    family = GaugeMetricFamily(
        "hotdeal_backend_up",
        "1 if the service reaches this backend.",
        labels=["service", "backend"],
    )
    for name, check in checks.items():
        try:
            check()
            up = 1.0
        except Exception:
            up = 0.0
        family.add_metric([service, name], up)
    yield family


def scrape_registry(*collectors: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    """The registry /metrics serves: every worker's samples plus the scrape-time readers."""
    if multiprocess_enabled():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Default())
    for read in collectors:
        registry.register(ScrapeCollector(read))
    return registry


class _Default(Collector):
    """The process-local default registry (no gunicorn, e.g. the writer or tests)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()
