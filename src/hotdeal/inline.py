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

Absence is never taken on trust (a transaction can stay open past any timeout: a lock,
a stalled disk; a helper's attack sold a unit twice that way). To give a take back for
want of its row, `void` first stores a row of its own under the take's order id
(source "void", quantity 0): the primary key then decides. Either the void row is
stored, and the take's own INSERT can never be (the request finds the id taken, stores
nothing and answers 503: nothing sold), or the take's row committed first, and the take
is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files

from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from hotdeal.designs import Design
from hotdeal.history import OrderRow, insert_new
from hotdeal.model import keys
from hotdeal.model.records import InlineRecord
from hotdeal.redis_client import Client, node_client
from hotdeal.schema import order_history
from hotdeal.validation import OrderRequest

# An inline take whose row is still not in the database this long after the take is
# voided (its id fenced, its units given back): a request that slow fails (503).
INLINE_FINAL_S = 60.0
SWEEP_BATCH = 500
# How long a void waits for a take's own transaction that holds the id (PostgreSQL's
# lock_timeout); past it the take stays open, for the next sweep.
VOID_LOCK_TIMEOUT_MS = 2000


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

    @classmethod
    def of(cls, order: OrderRequest, order_id: str, idempotency_key: str | None) -> InlineTake:
        return cls(order.product_id, order_id, order.quantity, order.user_id, idempotency_key)

    @classmethod
    def of_record(cls, product_id: int, r: InlineRecord) -> InlineTake:
        return cls(product_id, r.order_id, r.quantity, r.user_id, r.idempotency_key, r.at_ms)


class InlineTakes:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.done_script = client.register_script(_script("inline_done.lua"))
        self.give_back_script = client.register_script(_script("inline_give_back.lua"))

    def _idem(self, take: InlineTake) -> tuple[str, str]:
        if take.idempotency_key:
            key = keys.idempotency(take.product_id, take.user_id, take.idempotency_key)
            return key, "1"
        return keys.idempotency_placeholder(take.product_id), "0"

    def done(self, take: InlineTake) -> None:
        """The row is committed: only now may its key replay."""
        pid = take.product_id
        idem, real = self._idem(take)
        self.done_script(
            keys=[keys.books(pid), idem, keys.inline_takes(pid)],
            args=[take.quantity, real, take.order_id],
        )

    def give_back(self, take: InlineTake) -> None:
        """The row is known not to be stored: nothing was sold, the units go back."""
        pid = take.product_id
        idem, real = self._idem(take)
        self.give_back_script(
            keys=[
                keys.books(pid),
                keys.buyers(pid),
                keys.buyer_orders(pid),
                keys.orders(pid),
                idem,
                keys.inline_takes(pid),
            ],
            args=[take.quantity, take.user_id, take.order_id, real],
        )

    def void(self, engine: Engine, take: InlineTake) -> bool | None:
        """Fence the take's order id in the database: True if the void row is stored
        (the take's row never will be: give it back), False if the take's row is there
        (it sold), None if its transaction still holds the id (decide later). The void
        row belongs to no event (generation 0): no books count it."""
        row = OrderRow(
            take.order_id, take.product_id, 0, take.user_id, 0, Design.VOID, datetime.now(UTC)
        )
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text(f"SET LOCAL lock_timeout = {VOID_LOCK_TIMEOUT_MS}"))
                stored = insert_new(conn, [row])
        except IntegrityError:
            stored = 0  # another transaction stored the id first: read whose row it is
        except OperationalError as exc:
            if "lock" in str(exc.orig).lower():
                return None
            raise
        if stored:
            return True
        # The id was taken: by the take's own row (sold), or by another sweeper's or
        # replay's void (given back). A helper's attack: reading it as "ours" or as
        # "sold" blindly gave back a stored order, or marked a voided one done.
        holder = committed(engine, take.order_id)
        return None if holder is None else not holder

    def open_takes(self, pid: int) -> list[InlineTake]:
        records = self.client.hgetall(keys.inline_takes(pid))
        return [InlineTake.of_record(pid, InlineRecord.parse(*item)) for item in records.items()]

    def sweep(self, engine: Engine, pid: int, *, final_s: float = INLINE_FINAL_S) -> dict[str, int]:
        """Settle the product's inline takes whose fate the database tells: committed
        rows are done; takes older than `final_s` (Redis's clock) are voided and given
        back, unless their row wins the race. What it settled, and how many stay open."""
        takes = self.open_takes(pid)
        counts = {"done": 0, "given_back": 0, "open": 0}
        if not takes:
            return counts
        now_ms = redis_now_ms(self.client, pid)
        for start in range(0, len(takes), SWEEP_BATCH):
            batch = takes[start : start + SWEEP_BATCH]
            rows = fates(engine, [t.order_id for t in batch])
            for take in batch:
                fate = rows.get(take.order_id)
                if fate is None and now_ms - take.at_ms > final_s * 1000:
                    voided = self.void(engine, take)
                    fate = None if voided is None else not voided
                if fate is True:
                    self.done(take)
                    counts["done"] += 1
                elif fate is False:
                    self.give_back(take)
                    counts["given_back"] += 1
                else:
                    counts["open"] += 1
        return counts


def fates(engine: Engine, order_ids: list[str]) -> dict[str, bool]:
    """Per order id the database knows: True if its row is an order, False if voided."""
    with engine.connect() as conn:
        found = conn.execute(
            select(order_history.c.order_id, order_history.c.source).where(
                order_history.c.order_id.in_(order_ids)
            )
        ).all()
    return {r.order_id: r.source != Design.VOID for r in found}


def committed(engine: Engine, order_id: str) -> bool | None:
    """True: the take's row is stored; False: it was voided; None: neither (yet)."""
    return fates(engine, [order_id]).get(order_id)


def redis_now_ms(client: Client, pid: int) -> int:
    """Redis's clock (the takes' times are its own): a pod's clock ahead of it would
    void takes early."""
    seconds, micros = node_client(client, keys.books(pid)).time()
    return int(seconds) * 1000 + int(micros) // 1000
