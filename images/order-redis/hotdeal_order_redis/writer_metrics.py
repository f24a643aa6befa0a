"""The writer's metrics (one process: the default registry), and the gauges it reads at
scrape time: the write-behind backlog (Redis) and the units persisted (the database)."""

from __future__ import annotations

from collections.abc import Iterable

import redis
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import Engine, func, select

from hotdeal.history import taken
from hotdeal.metrics import LATENCY_BUCKETS
from hotdeal.model import keys
from hotdeal.redis_client import Client
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
DATABASE_REFUSING = Gauge(
    "hotdeal_writer_database_refusing",
    "1 while the database refuses every write, a good canary row included (read-only, "
    "full): the writer keeps the orders and retries.",
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
        .where(taken())  # a released hold's units went back
        .group_by(order_history.c.prod_id, order_history.c.source)
    )
    with engine.connect() as conn:
        for prod_id, source, units in conn.execute(query):
            family.add_metric([str(prod_id), source], float(units))
    yield family


def read_backlog(client: Client) -> Iterable[Metric]:
    """Persisted entries are deleted from the stream, so its length is the backlog:
    `pending` (delivered to a writer, not yet acknowledged) and `unread`."""
    backlog = GaugeMetricFamily(
        "hotdeal_writer_backlog",
        "Orders in the stream not yet persisted, by state.",
        labels=["product", "state"],
    )
    oldest = GaugeMetricFamily(
        "hotdeal_writer_oldest_unpersisted_age_seconds",
        "Age of the oldest order not yet in order_history (0 when none).",
        labels=["product"],
    )
    now_s, now_us = client.time()
    now_ms = now_s * 1000 + now_us // 1000
    for pid in sorted(int(p) for p in client.smembers(keys.PRODUCTS)):
        stream = keys.orders_stream(pid)
        pipe = client.pipeline(transaction=False)
        pipe.xlen(stream)
        pipe.xpending(stream, keys.WRITER_GROUP)
        pipe.xrange(stream, count=1)
        try:
            length, pending, first = pipe.execute()
        except redis.ResponseError:  # no group yet: nothing was ever sold
            continue
        waiting = int(pending["pending"])
        backlog.add_metric([str(pid), "pending"], float(waiting))
        backlog.add_metric([str(pid), "unread"], float(max(length - waiting, 0)))
        age = (now_ms - int(first[0][0].split("-")[0])) / 1000 if first else 0.0
        oldest.add_metric([str(pid)], max(age, 0.0))
    yield from (backlog, oldest)
