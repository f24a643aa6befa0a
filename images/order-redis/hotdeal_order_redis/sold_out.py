"""Sold out, remembered: after the last unit, orders are answered without the take script.

A worker whose take answered `sold_out` with nothing left remembers it for
HOTDEAL_SOLD_OUT_RECHECK_MS. Meanwhile it answers 409 sold_out for that product from
memory; the first order after that runs the take again. So:
- a unit that comes back (a give-back, a repair, a reset) is refused by a worker for at
  most the recheck period, and sold by the next take after it. Each mark lasts a random
  half to all of the period: workers that learnt sold out in the same millisecond (warm
  ones do, at the last unit) would otherwise recheck in step, and a returned unit would
  wait ~half the period for all of them instead of the first of many (measured: 204 ms
  p50 in step, against ~16 ms for the workers of one pod out of step);
- while sold out, a worker sends the take at most once per period per product, whatever
  the load (each worker learns on its own: one take each, no shared state to go stale);
- an order with an Idempotency-Key may be the retry of a take that sold: it costs one
  EXISTS on its key (hotdeal_order_redis.stock), and a key that exists gets the take.

The order route checks the mark right after it has read the order (its caller, key and
body), before a waiting-room pass or the take; the route runs without Flask
(hotdeal.web.OrderRoutes), so after the last unit an answer costs little more than a
bare WSGI route.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class SoldOutMarks:
    """Per product, until when this worker answers sold out without asking Redis."""

    __slots__ = ("_clock", "_recheck_s", "_spread", "_until")

    def __init__(
        self,
        recheck_ms: int,
        clock: Callable[[], float] = time.monotonic,
        spread: Callable[[], float] = random.random,
    ) -> None:
        self._recheck_s = recheck_ms / 1000
        self._clock = clock
        self._spread = spread  # in [0, 1): how much of the period's second half to skip
        self._until: dict[int, float] = {}

    def known(self, product_id: int) -> bool:
        """Sold out, as a take said less than the recheck period ago."""
        until = self._until.get(product_id)
        if until is None:
            return False
        if self._clock() < until:
            return True
        self._until.pop(product_id, None)  # the next take finds out again (threads: pop)
        return False

    def learn(self, product_id: int, remaining: int) -> None:
        """A take answered sold_out: remember it when nothing at all is left (an order
        for fewer units could still be sold otherwise)."""
        if remaining <= 0 and self._recheck_s > 0:
            lasts = self._recheck_s * (1 - self._spread() / 2)
            self._until[product_id] = self._clock() + lasts
