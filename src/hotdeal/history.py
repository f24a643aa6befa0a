"""Writing order rows into `order_history`, idempotently (one code path for every store)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Connection, bindparam, insert, or_, select, update

from hotdeal.model.states import HoldState
from hotdeal.schema import order_history

# Oracle caps an IN list at 1000 expressions.
MAX_IN_LIST = 1000


class _RandomHex:
    """os.urandom read a block at a time, as hex: uuid4() makes a getrandom syscall and
    runs uuid.UUID's checks for every id, ~15 us of a worker's CPU between its Redis
    round trips (measured; ~2 us in a tight loop, but a request runs with cold caches).
    Forgotten in a forked child, so two workers never hand out the same bytes."""

    BLOCK = 4096

    def __init__(self) -> None:
        self._forget()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        # A new lock too: another thread may have held the old one at the fork.
        self._lock = threading.Lock()  # gthread workers take ids concurrently
        self._hex, self._at = "", 0

    def take32(self) -> str:
        """32 random hex digits (128 bits)."""
        with self._lock:
            if self._at >= len(self._hex):
                self._hex, self._at = os.urandom(self.BLOCK).hex(), 0
            hex_, at = self._hex, self._at
            self._at = at + 32
        return hex_[at : at + 32]


_random = _RandomHex()
# A UUID's variant digit is 10xx in binary: 8, 9, a or b (RFC 9562).
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def taken() -> ColumnElement[bool]:
    """The rows whose units are taken: every order but a released hold (its units went
    back, and may be in another order now)."""
    state = order_history.c.state
    return or_(state.is_(None), state.not_in(sorted(HoldState.RELEASED)))


def new_order_id(product_id: int) -> str:
    """ "<product>-<uuid4>": unguessable (122 random bits), and it says which product's
    books hold it."""
    h = _random.take32()
    return f"{product_id}-{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


@dataclass(frozen=True)
class OrderRow:
    order_id: str
    prod_id: int
    generation: int
    user_id: str
    quantity: int
    source: str
    ordered_at: datetime
    take_epoch: int | None = None
    take_seq: int | None = None
    idempotency_key: str | None = None
    # Reservations (hotdeal.model.records.HoldState); None for an outright sale.
    state: str | None = None
    expires_at: datetime | None = None
    settled_at: datetime | None = None
    change_epoch: int | None = None
    change_seq: int | None = None

    def as_params(self) -> dict[str, object]:
        # dataclasses.asdict deep-copies every value: too slow for the writer's batches.
        return {
            "order_id": self.order_id,
            "prod_id": self.prod_id,
            "generation": self.generation,
            "user_id": self.user_id,
            "quantity": self.quantity,
            "source": self.source,
            "ordered_at": self.ordered_at,
            "take_epoch": self.take_epoch,
            "take_seq": self.take_seq,
            "idempotency_key": self.idempotency_key,
            "state": self.state,
            "expires_at": self.expires_at,
            "settled_at": self.settled_at,
            "change_epoch": self.change_epoch,
            "change_seq": self.change_seq,
        }

    @classmethod
    def now(
        cls, prod_id: int, generation: int, user_id: str, quantity: int, source: str
    ) -> OrderRow:
        return cls(
            new_order_id(prod_id), prod_id, generation, user_id, quantity, source, datetime.now(UTC)
        )


def insert_new(conn: Connection, rows: Sequence[OrderRow]) -> int:
    """Insert the rows whose order_id is not stored yet; returns how many were inserted.

    A plain SELECT-then-INSERT keeps one portable code path (no ON CONFLICT / MERGE);
    two writers racing on the same ids hit the primary key, roll back and retry.
    """
    fresh: list[dict[str, object]] = []
    for start in range(0, len(rows), MAX_IN_LIST):
        chunk = rows[start : start + MAX_IN_LIST]
        ids = [r.order_id for r in chunk]
        stored = set(
            conn.execute(
                select(order_history.c.order_id).where(order_history.c.order_id.in_(ids))
            ).scalars()
        )
        fresh.extend(r.as_params() for r in chunk if r.order_id not in stored)
    if fresh:
        conn.execute(insert(order_history), fresh)
    return len(fresh)


def apply_changes(conn: Connection, rows: Sequence[OrderRow]) -> None:
    """Holds' changes (a confirm or a release, hotdeal.model.records): the stored hold,
    still "reserved", takes its new state; an order whose take never reached the
    database (dead-lettered) is stored in its new state. A change stored before (a
    replayed batch) changes nothing: a hold settles once."""
    if not rows:
        return
    stored: dict[str, str | None] = {}
    for start in range(0, len(rows), MAX_IN_LIST):
        ids = [r.order_id for r in rows[start : start + MAX_IN_LIST]]
        found = conn.execute(
            select(order_history.c.order_id, order_history.c.state).where(
                order_history.c.order_id.in_(ids)
            )
        )
        stored.update((r.order_id, r.state) for r in found)
    insert_new(conn, [r for r in rows if r.order_id not in stored])
    held = [r for r in rows if r.order_id in stored and stored[r.order_id] == HoldState.RESERVED]
    if held:
        c = order_history.c
        conn.execute(
            update(order_history)
            .where(c.order_id == bindparam("oid"), c.state == HoldState.RESERVED)
            .values(
                state=bindparam("new_state"),
                settled_at=bindparam("new_settled_at"),
                change_epoch=bindparam("new_change_epoch"),
                change_seq=bindparam("new_change_seq"),
            ),
            [
                {
                    "oid": r.order_id,
                    "new_state": r.state,
                    "new_settled_at": r.settled_at,
                    "new_change_epoch": r.change_epoch,
                    "new_change_seq": r.change_seq,
                }
                for r in held
            ],
        )
