"""Gauges read from Redis at scrape time: stock of every product `reset` set up, and the
write-behind backlog of every order stream."""

from __future__ import annotations

from collections.abc import Iterable

import redis
from prometheus_client.core import GaugeMetricFamily, Metric

from hotdeal import redis_keys
from hotdeal.metrics import stock_families


def _products(client: redis.Redis) -> list[int]:
    return sorted(int(p) for p in client.smembers(redis_keys.PRODUCTS))


def read_stock(client: redis.Redis, service: str) -> Iterable[Metric]:
    remaining, initial = stock_families()
    paused = GaugeMetricFamily(
        "hotdeal_sales_paused",
        "1 while selling a product is paused (its Redis books went backwards; see "
        "hotdeal-ops repair).",
        labels=["service", "product"],
    )
    products = _products(client)
    pipe = client.pipeline(transaction=False)
    for pid in products:
        pipe.hmget(
            redis_keys.books(pid), redis_keys.QUANTITY, redis_keys.INITIAL, redis_keys.PAUSED
        )
    for pid, (left, first, why) in zip(products, pipe.execute(), strict=True):
        if left is None:
            continue
        remaining.add_metric([service, str(pid)], float(left))
        initial.add_metric([service, str(pid)], float(first or 0))
        paused.add_metric([service, str(pid)], 1.0 if why else 0.0)
    yield from (remaining, initial, paused)


def read_backlog(client: redis.Redis) -> Iterable[Metric]:
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
    for pid in _products(client):
        stream = redis_keys.orders_stream(pid)
        pipe = client.pipeline(transaction=False)
        pipe.xlen(stream)
        pipe.xpending(stream, redis_keys.WRITER_GROUP)
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
