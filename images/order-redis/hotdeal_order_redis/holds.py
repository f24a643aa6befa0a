"""Reservations' deadlines: holds not confirmed in time are released by a sweep that
every order-redis pod's admin listener and every writer runs (any of them may die; a
hold is released once, by whichever gets there first: hold.lua). A confirm or cancel
that finds the deadline passed releases the hold itself, so the sweep's lag delays
only when the units can be sold again, never lets a late payment through."""

from __future__ import annotations

import logging
import threading
import time
from functools import cache
from typing import Any

from hotdeal import fence, metrics
from hotdeal.model import keys
from hotdeal.model.states import HoldState
from hotdeal.redis_client import Client
from hotdeal_order_redis.stock import HOLD_SCRIPT, Settled, hold_keys

log = logging.getLogger(__name__)
# Holds released per script run: a run of 50 took at most 4.8 ms of Redis's time with
# a sale going on, on 2 cores (make bench-holds; 200 took 11-14 ms), so a take waits
# at most that behind it.
EXPIRE_BATCH = 50
# How often each sweeper looks; with several pods the lag is at most about this.
EXPIRE_EVERY_S = 0.25


@cache
def _counter(service: str, result: str) -> Any:
    return metrics.HOLDS_SETTLED.labels(service, result)


def init_metrics(service: str) -> None:
    """Every result's series from the start (a dashboard shows 0, not "no data")."""
    for result in (HoldState.CONFIRMED, HoldState.CANCELLED, HoldState.EXPIRED):
        _counter(service, result)


def count(settled: Settled, service: str = "order-redis") -> None:
    """A confirm or cancel that changed a hold (a replay changed nothing)."""
    if settled.changed:
        _counter(service, settled.state).inc()


class Expirer:
    def __init__(self, client: Client, service: str) -> None:
        self.client = client
        self.service = service
        self._script = client.register_script(HOLD_SCRIPT)
        self._lag = metrics.HOLD_EXPIRY_LAG.labels(service)
        init_metrics(service)

    def expire(self, pid: int, *, batch: int = EXPIRE_BATCH) -> int:
        """Release the product's holds past their deadline; how many."""
        released = 0
        server = fence.run_id(self.client, pid)  # hold.lua acts only on checked books
        names = hold_keys(pid, keys.instance_placeholder(pid))  # (no books: nothing due)
        while True:
            args = ["expire", batch, server, 0, 0, pid, keys.idempotency_prefix(pid), "0"]
            reply = self._script(keys=names, args=args)
            if reply[0] != "expired_batch":
                return released  # paused, unvalidated, no books: nothing is released
            count_, lag_ms = int(reply[1]), int(reply[2])
            if count_:
                released += count_
                _counter(self.service, HoldState.EXPIRED).inc(count_)
                self._lag.observe(lag_ms / 1000)
            if count_ < batch:
                return released

    def sweep(self) -> int:
        """Every product's expired holds (products without a payment window have none)."""
        released = 0
        for pid in sorted(int(p) for p in self.client.smembers(keys.PRODUCTS)):
            if self.client.zcard(keys.deadlines(pid)):
                released += self.expire(pid)
        return released


def start_expirer(client: Client, service: str, every_s: float = EXPIRE_EVERY_S) -> None:
    """The sweep on a thread of its own, for the life of the process."""
    expirer = Expirer(client, service)

    def run() -> None:
        while True:
            time.sleep(every_s)
            try:
                expirer.sweep()
            except Exception as exc:  # a Redis away: the next round tries again
                log.warning("hold expiry sweep failed: %s", exc.__class__.__name__)

    threading.Thread(target=run, name="hold-expirer", daemon=True).start()
