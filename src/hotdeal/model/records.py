"""Codecs of the Redis order model's records (hotdeal.model): one place that says how
each record is laid out, for the Lua scripts' Python readers and rebuilders."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from hotdeal.designs import Design
from hotdeal.history import OrderRow

# The Idempotency-Key record's `state`: the take is durable in the stream ("done"), or
# an inline take whose row is not known committed yet ("pending").
DONE, PENDING = "done", "pending"


def at_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def from_ms(ms: int | str) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


@dataclass(frozen=True, slots=True)
class Sale:
    """An answered order: what the take recorded, and what repair rebuilds from
    order_history, a dead letter or a stream entry."""

    order_id: str
    user_id: str
    quantity: int
    at_ms: int
    idempotency_key: str | None

    def index_record(self) -> str:
        """The order index's value (keys.orders): "user quantity ordered_at_ms"."""
        return f"{self.user_id} {self.quantity} {self.at_ms}"

    def idempotency_record(self, remaining: int) -> dict[str, object]:
        """The Idempotency-Key record of a take that is durable (keys.idempotency)."""
        return {
            "quantity": self.quantity,
            "remaining": remaining,
            "order_id": self.order_id,
            "ordered_at": self.at_ms,
            "state": DONE,
        }


def parse_index_record(order_id: str, raw: str) -> Sale:
    user_id, quantity, ordered_at = raw.split(" ")
    return Sale(order_id, user_id, int(quantity), int(ordered_at), None)


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """An order enqueued for the writers (keys.orders_stream), as take_stock.lua writes
    it; dead letters carry the same fields and a `reason`."""

    order_id: str
    product_id: int
    generation: int
    user_id: str
    quantity: int
    at_ms: int
    epoch: int
    seq: int
    idempotency_key: str | None

    @classmethod
    def parse(cls, fields: Mapping[str, str]) -> StreamEntry:
        """KeyError or ValueError for an entry the take script did not write."""
        return cls(
            fields["order_id"],
            int(fields["product_id"]),
            int(fields["generation"]),
            fields["user_id"],
            int(fields["quantity"]),
            int(fields["ordered_at"]),
            int(fields["epoch"]),
            int(fields["seq"]),
            fields.get("idem") or None,
        )

    def row(self) -> OrderRow:
        return OrderRow(
            order_id=self.order_id,
            prod_id=self.product_id,
            generation=self.generation,
            user_id=self.user_id,
            quantity=self.quantity,
            source=Design.REDIS,
            ordered_at=from_ms(self.at_ms),
            take_epoch=self.epoch,
            take_seq=self.seq,
            idempotency_key=self.idempotency_key,
        )

    def sale(self) -> Sale:
        return Sale(self.order_id, self.user_id, self.quantity, self.at_ms, self.idempotency_key)


@dataclass(frozen=True, slots=True)
class InlineRecord:
    """An inline take not settled yet (keys.inline_takes): "quantity at_ms user key"."""

    order_id: str
    quantity: int
    at_ms: int
    user_id: str
    idempotency_key: str | None

    @classmethod
    def parse(cls, order_id: str, raw: str) -> InlineRecord:
        quantity, at, user, key = raw.split(" ", 3)  # key: "" for none
        return cls(order_id, int(quantity), int(at), user, key or None)
