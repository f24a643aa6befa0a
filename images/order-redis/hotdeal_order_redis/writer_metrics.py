"""The writer's own metrics (one process: the default registry)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import Engine, func, select

from hotdeal.metrics import LATENCY_BUCKETS
from hotdeal.schema import order_history

PERSISTED = Counter(
    "hotdeal_writer_orders_persisted_total",
    "Orders the writer inserted into order_history (replays not counted).",
)
BATCH_SIZE = Histogram(
    "hotdeal_writer_batch_size",
    "Orders per writer batch.",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000),
)
BATCH_DURATION = Histogram(
    "hotdeal_writer_batch_duration_seconds",
    "Time to insert and acknowledge one batch.",
    buckets=LATENCY_BUCKETS,
)


def read_persisted(engine: Engine) -> Iterable[Metric]:
    """Units in order_history per product and design, from the database: the other side
    of the oversell alert (persisted above the initial stock). One GROUP BY per scrape."""
    family = GaugeMetricFamily(
        "hotdeal_orders_persisted",
        "Units sold per product and design, as stored in order_history.",
        labels=["product", "source"],
    )
    query = select(
        order_history.c.prod_id, order_history.c.source, func.sum(order_history.c.quantity)
    ).group_by(order_history.c.prod_id, order_history.c.source)
    with engine.connect() as conn:
        for prod_id, source, units in conn.execute(query):
            family.add_metric([str(prod_id), source], float(units))
    yield family
