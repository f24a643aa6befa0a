"""Writing order rows into `order_history`, idempotently (one code path for every store)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, insert, select

from hotdeal.schema import order_history

# Oracle caps an IN list at 1000 expressions.
MAX_IN_LIST = 1000


def new_order_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class OrderRow:
    order_id: str
    prod_id: int
    user_id: str
    quantity: int
    source: str
    ordered_at: datetime

    @classmethod
    def now(cls, prod_id: int, user_id: str, quantity: int, source: str) -> OrderRow:
        return cls(new_order_id(), prod_id, user_id, quantity, source, datetime.now(UTC))


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
        fresh.extend(asdict(r) for r in chunk if r.order_id not in stored)
    if fresh:
        conn.execute(insert(order_history), fresh)
    return len(fresh)
