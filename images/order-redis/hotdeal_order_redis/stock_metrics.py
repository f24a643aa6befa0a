"""Gauges order-redis reads from Redis at scrape time: the stock of every product
`reset` set up, whether selling it is paused, and its waiting room."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from hotdeal import room
from hotdeal.metrics import stock_families
from hotdeal.model import keys
from hotdeal.redis_client import Client, memory

# A hold this long past its deadline should have been released by a sweep (they run
# every 250 ms in every pod and writer): alert HotdealHoldsOverdue.
OVERDUE_S = 5


def _products(client: Client) -> list[int]:
    return sorted(int(p) for p in client.smembers(keys.PRODUCTS))


def read_stock(client: Client, service: str) -> Iterable[Metric]:
    remaining, initial = stock_families()
    paused = GaugeMetricFamily(
        "hotdeal_sales_paused",
        "1 while selling a product is paused (its Redis books went backwards; see "
        "hotdeal-ops repair).",
        labels=["service", "product"],
    )
    held = GaugeMetricFamily(
        "hotdeal_stock_held",
        "Units taken by holds not confirmed yet (reservations): they may come back.",
        labels=["service", "product"],
    )
    overdue = GaugeMetricFamily(
        "hotdeal_holds_overdue",
        f"Holds still unreleased {OVERDUE_S} s past their deadline (Redis's clock): the "
        "deadline sweeps are late or not running.",
        labels=["service", "product"],
    )
    products = _products(client)
    seconds, micros = client.time()
    late_ms = int(seconds) * 1000 + int(micros) // 1000 - OVERDUE_S * 1000
    pipe = client.pipeline(transaction=False)
    for pid in products:
        pipe.hmget(keys.books(pid), keys.QUANTITY, keys.INITIAL, keys.PAUSED, keys.HELD)
        pipe.zcount(keys.deadlines(pid), "-inf", late_ms)
    replies = pipe.execute()
    for pid, (left, first, why, holding), late in zip(
        products, replies[::2], replies[1::2], strict=True
    ):
        if left is None:
            continue
        at = [service, str(pid)]
        remaining.add_metric(at, float(left))
        initial.add_metric(at, float(first or 0))
        paused.add_metric(at, 1.0 if why else 0.0)
        held.add_metric(at, float(holding or 0))
        overdue.add_metric(at, float(late))
    used = GaugeMetricFamily(
        "hotdeal_redis_memory_used_bytes",
        "Memory Redis uses, per primary (INFO memory used_memory).",
        labels=["service", "node"],
    )
    limit = GaugeMetricFamily(
        "hotdeal_redis_memory_max_bytes",
        "Redis's maxmemory per primary (0: no limit). At the limit it refuses writes.",
        labels=["service", "node"],
    )
    for n, (in_use, most) in enumerate(memory(client)):
        used.add_metric([service, str(n)], float(in_use))
        limit.add_metric([service, str(n)], float(most))
    yield from (remaining, initial, paused, held, overdue, used, limit)
    yield from _rooms(client, service, products)


def _rooms(client: Client, service: str, products: list[int]) -> Iterable[Metric]:
    labels = ["service", "product"]
    on = GaugeMetricFamily(
        "hotdeal_room_open", "1 while the product sells through its waiting room.", labels=labels
    )
    waiting = GaugeMetricFamily(
        "hotdeal_room_waiting", "Places in the waiting room's line not admitted yet.", labels=labels
    )
    admitted = CounterMetricFamily(
        "hotdeal_room_admitted",
        "Places admitted in this event's room (rate(): admitted per second).",
        labels=labels,
    )
    rate = GaugeMetricFamily(
        "hotdeal_room_admit_rate",
        "The room's admission rate, places per second (hotdeal-ops room --rate; automatic "
        "with --auto-target-ms).",
        labels=labels,
    )
    for state in room.read_states(client, products):
        at = [service, str(state.product)]
        on.add_metric(at, 1.0 if state.on else 0.0)  # (off: the rest reads 0)
        waiting.add_metric(at, float(state.waiting))
        admitted.add_metric(at, float(state.admitted))
        rate.add_metric(at, state.rate)
    yield from (on, waiting, admitted, rate)
