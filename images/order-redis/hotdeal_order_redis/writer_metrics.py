"""The writer's own metrics (one process: the default registry)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import Engine, func, select

from hotdeal.metrics import LATENCY_BUCKETS
from hotdeal.schema import hotdeal_list, order_history

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


DEAD_LETTERS = Counter(
    "hotdeal_writer_dead_letters_total",
    "Orders moved to the dead-letter stream (malformed, or refused by the database).",
)
RETRIES = Counter(
    "hotdeal_writer_retries_total",
    "Batches retried after a failure, by exception class (database or Redis away).",
    ["error"],
)
PAUSED_SEEN = Counter(
    "hotdeal_writer_paused_books_seen_total",
    "Checks that found a product's Redis books paused (rolled back).",
)
REPAIRS = Counter("hotdeal_writer_repairs_total", "Products whose Redis books the writer rebuilt.")


def read_persisted(engine: Engine) -> Iterable[Metric]:
    """Units in order_history per product and design, from the database: the other side
    of the oversell alert (persisted above the initial stock). One GROUP BY per scrape."""
    family = GaugeMetricFamily(
        "hotdeal_orders_persisted",
        "Units sold per product and design, as stored in order_history.",
        labels=["product", "source"],
    )
    # The current event only: rows of an older generation are not this event's sales.
    query = (
        select(order_history.c.prod_id, order_history.c.source, func.sum(order_history.c.quantity))
        .join(
            hotdeal_list,
            (hotdeal_list.c.prod_id == order_history.c.prod_id)
            & (hotdeal_list.c.generation == order_history.c.generation),
        )
        .group_by(order_history.c.prod_id, order_history.c.source)
    )
    with engine.connect() as conn:
        for prod_id, source, units in conn.execute(query):
            family.add_metric([str(prod_id), source], float(units))
    yield family
