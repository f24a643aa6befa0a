"""Inline mode's takes in flight: taken in Redis, their row inserted in the request.

The take script records each one in the product's inline hash (order id -> quantity,
time, buyer, Idempotency-Key) and counts its units in the books' `inline_pending`. It is
settled exactly once, by whoever gets there first:
- `done`: the row is committed (the request itself, a replay that finds the row, or
  the sweep): the units stay sold and the key may replay;
- `give_back`: the row is known not to be stored (the transaction rolled back, or the
  row is still absent INLINE_FINAL_S after the take): the units go back.
Each script settles only a take whose record it deletes, so a second settle (a retry, a
replay, the sweep racing the request) changes nothing. A rebuild from the database
(reset, repair) deletes every record with the books: it counted the committed rows.

Before, a settle lost to a Redis restart, a failover or a lost COMMIT reply left its
units in `inline_pending` for good: reconcile counted them twice and repair waited for
them forever. `sweep` settles such takes from the database: the admin listener runs it
every few seconds, and repair and `reconcile --wait` before they read the books.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib.resources import files

from sqlalchemy import Engine, select

from hotdeal import redis_keys
from hotdeal.redis_client import Client
from hotdeal.schema import order_history

# An inline take whose row is still not in the database this long after the take never
# committed: no transaction of ours stays open that long (hold + statement time).
INLINE_FINAL_S = 60.0
SWEEP_BATCH = 500


def _script(name: str) -> str:
    return files(__package__).joinpath(name).read_text()


@dataclass(frozen=True, slots=True)
class InlineTake:
    """An inline take to settle once its row's fate is known."""

    product_id: int
    order_id: str
    quantity: int
    user_id: str
    idempotency_key: str | None
    at_ms: int = 0


class InlineTakes:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.done_script = client.register_script(_script("inline_done.lua"))
        self.give_back_script = client.register_script(_script("inline_give_back.lua"))

    def _idem(self, take: InlineTake) -> tuple[str, str]:
        if take.idempotency_key:
            key = redis_keys.idempotency(take.product_id, take.user_id, take.idempotency_key)
            return key, "1"
        return redis_keys.idempotency_placeholder(take.product_id), "0"

    def done(self, take: InlineTake) -> None:
        """The row is committed: only now may its key replay."""
        pid = take.product_id
        idem, real = self._idem(take)
        self.done_script(
            keys=[redis_keys.books(pid), idem, redis_keys.inline_takes(pid)],
            args=[take.quantity, real, take.order_id],
        )

    def give_back(self, take: InlineTake) -> None:
        """The row is known not to be stored: nothing was sold, the units go back."""
        pid = take.product_id
        idem, real = self._idem(take)
        self.give_back_script(
            keys=[
                redis_keys.books(pid),
                redis_keys.buyers(pid),
                redis_keys.buyer_orders(pid),
                redis_keys.orders(pid),
                idem,
                redis_keys.inline_takes(pid),
            ],
            args=[take.quantity, take.user_id, take.order_id, real],
        )

    def open_takes(self, pid: int) -> list[InlineTake]:
        found = []
        for order_id, record in self.client.hgetall(redis_keys.inline_takes(pid)).items():
            quantity, at_ms, user, key = record.split(" ", 3)  # key: "" for none
            found.append(InlineTake(pid, order_id, int(quantity), user, key or None, int(at_ms)))
        return found

    def sweep(self, engine: Engine, pid: int, *, final_s: float = INLINE_FINAL_S) -> dict[str, int]:
        """Settle the product's inline takes whose fate the database tells: committed
        rows are done, rows absent for longer than `final_s` go back. What it settled,
        and how many stay open (they may still commit)."""
        takes = self.open_takes(pid)
        counts = {"done": 0, "given_back": 0, "open": 0}
        now_ms = time.time() * 1000
        for start in range(0, len(takes), SWEEP_BATCH):
            batch = takes[start : start + SWEEP_BATCH]
            with engine.connect() as conn:
                stored = set(
                    conn.execute(
                        select(order_history.c.order_id).where(
                            order_history.c.order_id.in_([t.order_id for t in batch])
                        )
                    ).scalars()
                )
            for take in batch:
                if take.order_id in stored:
                    self.done(take)
                    counts["done"] += 1
                elif now_ms - take.at_ms > final_s * 1000:
                    self.give_back(take)
                    counts["given_back"] += 1
                else:
                    counts["open"] += 1
        return counts
