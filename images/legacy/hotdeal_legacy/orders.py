"""The legacy order transaction, as the workshop ran it, plus the DBA's slot remedy."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy.exc
from sqlalchemy import Connection, Engine, func, insert, select, update

from hotdeal import errors
from hotdeal.db import transaction
from hotdeal.designs import Design
from hotdeal.history import OrderRow
from hotdeal.schema import hotdeal_list, hotdeal_slot, order_history
from hotdeal.validation import OrderRequest

# A transaction the database rolled back (deadlock victim, serialization failure) or
# that gave up a slot it could not use is run again, for at most this long.
RETRY_FOR_S = 30.0


@dataclass(frozen=True)
class Placed:
    order_id: str
    remaining: int
    lock_wait_s: float
    lock_hold_s: float


class _Again(Exception):
    """Roll back (releasing every lock) and run the transaction again."""


def lock_product_row(product_id: int):  # noqa: ANN201 (SQLAlchemy Select)
    """The hot-row query: every buyer queues on this one row lock."""
    return (
        select(hotdeal_list.c.quantity, hotdeal_list.c.opens_at, hotdeal_list.c.generation)
        .where(hotdeal_list.c.prod_id == product_id)
        .with_for_update()
    )


def lock_slot(product_id: int, slot: int, quantity: int, *, skip_locked: bool):  # noqa: ANN201
    """Locks the slot if it still covers the order. A row that was waited on and then
    fails `quantity >= :q` can stay locked (PostgreSQL keeps the tuple lock), so a caller
    that gets no row while waiting must roll back before it waits for anything else."""
    return (
        select(hotdeal_slot.c.quantity, hotdeal_slot.c.generation)
        .where(
            hotdeal_slot.c.prod_id == product_id,
            hotdeal_slot.c.slot == slot,
            hotdeal_slot.c.quantity >= quantity,
        )
        .with_for_update(skip_locked=skip_locked)
    )


def _check_open(opens_at: datetime | None) -> None:
    if opens_at is not None and datetime.now(UTC) < opens_at:
        raise errors.not_open(opens_at.isoformat())


class LegacyOrders:
    def __init__(self, engine: Engine, *, hold_ms: int, slots: int) -> None:
        self.engine = engine
        self.hold_s = hold_ms / 1000
        self.slots = slots
        self.source = Design.of_legacy(slots)

    def place(self, order: OrderRequest) -> Placed:
        attempt = self._place_hot_row if self.slots == 1 else self._place_in_slot
        give_up = time.monotonic() + RETRY_FOR_S
        tries = 0
        while True:
            tries += 1
            try:
                return attempt(order)
            except _Again:
                if time.monotonic() > give_up:
                    raise errors.unavailable() from None
            except sqlalchemy.exc.DBAPIError as exc:
                if not errors.is_retryable_transaction(exc) or time.monotonic() > give_up:
                    raise
            # Jitter, so the transactions that collided don't collide again in step.
            time.sleep(random.uniform(0, min(0.002 * tries, 0.05)))

    def _finish(self, conn: Connection, order: OrderRequest, generation: int) -> str:
        row = OrderRow.now(order.product_id, generation, order.user_id, order.quantity, self.source)
        # A fresh UUID can't be stored yet: a plain INSERT, one round trip under the lock.
        conn.execute(insert(order_history), [row.as_params()])
        time.sleep(self.hold_s)  # the workshop's ~30 ms of work, done holding the lock
        return row.order_id

    def _place_hot_row(self, order: OrderRequest) -> Placed:
        with transaction(self.engine) as conn:
            started = time.perf_counter()
            row = conn.execute(lock_product_row(order.product_id)).first()
            waited = time.perf_counter() - started
            if row is None:
                raise errors.unknown_product(order.product_id)
            _check_open(row.opens_at)
            if row.quantity < order.quantity:
                raise errors.sold_out(row.quantity)
            remaining = row.quantity - order.quantity
            conn.execute(
                update(hotdeal_list)
                .where(hotdeal_list.c.prod_id == order.product_id)
                .values(quantity=remaining)
            )
            order_id = self._finish(conn, order, row.generation)
            locked_at = started + waited
        return Placed(order_id, remaining, waited, time.perf_counter() - locked_at)

    def _place_in_slot(self, order: OrderRequest) -> Placed:
        """Lock order rules, so no two buyers can wait on each other in a cycle:
        1. SKIP LOCKED over the slots that cover the order (never waits);
        2. else wait on one such slot while holding nothing; if it no longer covers the
           order once we have it, roll back and start again;
        3. else (no single slot covers it) lock the slots with stock one by one in slot
           order: everyone who holds several slots took them in that same order."""
        pid, qty = order.product_id, order.quantity
        with transaction(self.engine) as conn:
            head = conn.execute(
                select(hotdeal_list.c.opens_at).where(hotdeal_list.c.prod_id == pid)
            ).first()
            if head is None:
                raise errors.unknown_product(pid)
            _check_open(head.opens_at)
            # A slot's quantity only goes down, so this unlocked read can't hide stock.
            candidates = list(
                conn.execute(
                    select(hotdeal_slot.c.slot).where(
                        hotdeal_slot.c.prod_id == pid, hotdeal_slot.c.quantity >= qty
                    )
                ).scalars()
            )
            random.shuffle(candidates)  # spread buyers over the slots
            started = time.perf_counter()
            generation = self._take_one_slot(conn, pid, qty, candidates)
            if generation is None:
                generation = self._take_across_slots(conn, pid, qty)
            waited = time.perf_counter() - started
            remaining = self._remaining(conn, pid)
            if generation is None:
                raise errors.sold_out(remaining)
            order_id = self._finish(conn, order, generation)
            locked_at = started + waited
        return Placed(order_id, remaining, waited, time.perf_counter() - locked_at)

    def _take_one_slot(
        self, conn: Connection, pid: int, qty: int, candidates: list[int]
    ) -> int | None:
        for slot in candidates:
            row = conn.execute(lock_slot(pid, slot, qty, skip_locked=True)).first()
            if row is not None:
                self._set_slot(conn, pid, slot, row.quantity - qty)
                return row.generation
        if not candidates:
            return None
        # All busy: queue on one, holding no other lock while we wait.
        row = conn.execute(lock_slot(pid, candidates[0], qty, skip_locked=False)).first()
        if row is None:
            raise _Again  # it ran low meanwhile, and we may hold its lock: release it
        self._set_slot(conn, pid, candidates[0], row.quantity - qty)
        return row.generation

    def _take_across_slots(self, conn: Connection, pid: int, qty: int) -> int | None:
        """No single slot covers the order: lock each slot with stock in slot order and
        take from several."""
        slots = conn.execute(
            select(hotdeal_slot.c.slot)
            .where(hotdeal_slot.c.prod_id == pid, hotdeal_slot.c.quantity > 0)
            .order_by(hotdeal_slot.c.slot)
        ).scalars()
        held: list[tuple[int, int, int]] = []
        for slot in slots:
            row = conn.execute(lock_slot(pid, slot, 1, skip_locked=False)).first()
            if row is not None:
                held.append((slot, row.quantity, row.generation))
        if sum(q for _, q, _ in held) < qty:
            return None
        need = qty
        for slot, have, generation in held:
            take = min(need, have)
            self._set_slot(conn, pid, slot, have - take)
            need -= take
            if need == 0:
                return generation
        return None

    @staticmethod
    def _set_slot(conn: Connection, pid: int, slot: int, quantity: int) -> None:
        conn.execute(
            update(hotdeal_slot)
            .where(hotdeal_slot.c.prod_id == pid, hotdeal_slot.c.slot == slot)
            .values(quantity=quantity)
        )

    @staticmethod
    def _remaining(conn: Connection, pid: int) -> int:
        total = conn.execute(
            select(func.coalesce(func.sum(hotdeal_slot.c.quantity), 0)).where(
                hotdeal_slot.c.prod_id == pid
            )
        ).scalar()
        return int(total or 0)


def order_record(row) -> dict[str, object]:  # noqa: ANN001 (a Row of order_history)
    record: dict[str, object] = {
        "order_id": row.order_id,
        "product_id": row.prod_id,
        "user_id": row.user_id,
        "quantity": row.quantity,
        "ordered_at": row.ordered_at.isoformat(),
    }
    if row.state is not None:  # an order-redis hold, as stored (a helper's find)
        expires = row.expires_at.isoformat() if row.expires_at is not None else None
        record.update(state=row.state, expires_at=expires)
    return record


def find_order(engine: Engine, order_id: str) -> dict[str, object]:
    with engine.connect() as conn:
        row = conn.execute(
            select(order_history).where(order_history.c.order_id == order_id)
        ).first()
    if row is None:
        raise errors.unknown_order()
    return order_record(row)


def user_orders(engine: Engine, product_id: int, user_id: str) -> list[dict[str, object]]:
    """The user's orders in the product's current event (generation)."""
    current = (
        select(hotdeal_list.c.generation)
        .where(hotdeal_list.c.prod_id == product_id)
        .scalar_subquery()
    )
    with engine.connect() as conn:
        rows = conn.execute(
            select(order_history)
            .where(
                order_history.c.prod_id == product_id,
                order_history.c.user_id == user_id,
                order_history.c.generation == current,
            )
            .order_by(order_history.c.seq)
        ).all()
    return [order_record(r) for r in rows]
