"""The legacy order transaction, as the workshop ran it, plus the DBA's slot remedy."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, func, insert, select, update

from hotdeal import errors
from hotdeal.history import OrderRow
from hotdeal.schema import hotdeal_list, hotdeal_slot, order_history
from hotdeal.validation import OrderRequest


@dataclass(frozen=True)
class Placed:
    order_id: str
    remaining: int
    lock_wait_s: float
    lock_hold_s: float


def lock_product_row(product_id: int):  # noqa: ANN201 (SQLAlchemy Select)
    """The hot-row query: every buyer queues on this one row lock."""
    return (
        select(hotdeal_list.c.quantity, hotdeal_list.c.opens_at)
        .where(hotdeal_list.c.prod_id == product_id)
        .with_for_update()
    )


def lock_slot(product_id: int, slot: int, quantity: int, *, skip_locked: bool):  # noqa: ANN201
    """Locks the slot only if it still covers the order: a buyer never holds the lock of
    a slot it can't use while it waits for another (that could deadlock)."""
    return (
        select(hotdeal_slot.c.quantity)
        .where(
            hotdeal_slot.c.prod_id == product_id,
            hotdeal_slot.c.slot == slot,
            hotdeal_slot.c.quantity >= quantity,
        )
        .with_for_update(skip_locked=skip_locked)
    )


def _check_open(opens_at: datetime | None) -> None:
    if opens_at is None:
        return
    if opens_at.tzinfo is None:  # Oracle DATE/TIMESTAMP come back naive; we store UTC.
        opens_at = opens_at.replace(tzinfo=UTC)
    if datetime.now(UTC) < opens_at:
        raise errors.not_open(opens_at.isoformat())


class LegacyOrders:
    def __init__(self, engine: Engine, *, hold_ms: int, slots: int) -> None:
        self.engine = engine
        self.hold_s = hold_ms / 1000
        self.slots = slots
        self.source = "legacy" if slots == 1 else "legacy-slots"

    def place(self, order: OrderRequest) -> Placed:
        if self.slots == 1:
            return self._place_hot_row(order)
        return self._place_in_slot(order)

    def _finish(self, conn: Connection, order: OrderRequest) -> str:
        row = OrderRow.now(order.product_id, order.user_id, order.quantity, self.source)
        # A fresh UUID can't be stored yet: a plain INSERT, one round trip under the lock.
        conn.execute(insert(order_history), [row.as_params()])
        time.sleep(self.hold_s)  # the workshop's ~30 ms of work, done holding the lock
        return row.order_id

    def _place_hot_row(self, order: OrderRequest) -> Placed:
        with self.engine.begin() as conn:
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
            order_id = self._finish(conn, order)
            locked_at = started + waited
        return Placed(order_id, remaining, waited, time.perf_counter() - locked_at)

    def _place_in_slot(self, order: OrderRequest) -> Placed:
        pid, qty = order.product_id, order.quantity
        with self.engine.begin() as conn:
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
            taken = self._take_one_slot(conn, pid, qty, candidates)
            if taken is None:
                taken = self._take_across_slots(conn, pid, qty)
            waited = time.perf_counter() - started
            remaining = self._remaining(conn, pid)
            if taken is None:
                raise errors.sold_out(remaining)
            order_id = self._finish(conn, order)
            locked_at = started + waited
        return Placed(order_id, remaining, waited, time.perf_counter() - locked_at)

    def _take_one_slot(
        self, conn: Connection, pid: int, qty: int, candidates: list[int]
    ) -> int | None:
        """SKIP LOCKED over the candidates first, then wait on the ones that were busy."""
        busy: list[int] = []
        for slot in candidates:
            have = conn.execute(lock_slot(pid, slot, qty, skip_locked=True)).scalar()
            if have is not None:
                self._set_slot(conn, pid, slot, have - qty)
                return slot
            busy.append(slot)  # locked by another buyer, or emptied since we looked
        for slot in busy:
            have = conn.execute(lock_slot(pid, slot, qty, skip_locked=False)).scalar()
            if have is not None:
                self._set_slot(conn, pid, slot, have - qty)
                return slot
        return None

    def _take_across_slots(self, conn: Connection, pid: int, qty: int) -> int | None:
        """No single slot covers the order: lock every slot with stock, in slot order
        (a fixed order cannot deadlock), and take from several."""
        rows = conn.execute(
            select(hotdeal_slot.c.slot, hotdeal_slot.c.quantity)
            .where(hotdeal_slot.c.prod_id == pid, hotdeal_slot.c.quantity > 0)
            .order_by(hotdeal_slot.c.slot)
            .with_for_update()
        ).all()
        if sum(r.quantity for r in rows) < qty:
            return None
        need = qty
        for r in rows:
            take = min(need, r.quantity)
            self._set_slot(conn, pid, r.slot, r.quantity - take)
            need -= take
            if need == 0:
                return r.slot
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
