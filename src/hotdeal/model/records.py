"""Codecs of the Redis order model's records (hotdeal.model): one place that says how
each record is laid out, for the Lua scripts' Python readers and rebuilders."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from hotdeal.designs import Design
from hotdeal.history import OrderRow
from hotdeal.model.states import HoldState

# The Idempotency-Key record's `state`: the take is durable in the stream ("done"), or
# an inline take whose row is not known committed yet ("pending").
DONE, PENDING = "done", "pending"


def at_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def from_ms(ms: int | str) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


def iso_ms(ms: int | str | None) -> str | None:
    """An answer's time (ISO 8601, UTC) of Redis's epoch milliseconds."""
    return None if ms is None else from_ms(ms).isoformat()


@dataclass(frozen=True, slots=True)
class Sale:
    """An answered order: what the take recorded, and what repair rebuilds from
    order_history, a dead letter or a stream entry. `state` and `expires_ms`: a hold's
    (HoldState; None for an outright sale)."""

    order_id: str
    user_id: str
    quantity: int
    at_ms: int
    idempotency_key: str | None
    state: str | None = None
    expires_ms: int | None = None
    take: tuple[int, int] = (0, 0)  # the take's (epoch, seq), for a hold's changes

    @property
    def counts(self) -> bool:
        """Its units are taken (sold or held), not given back."""
        return self.state not in HoldState.RELEASED

    def index_record(self) -> str:
        """The order index's value (keys.orders): "user quantity ordered_at_ms", and for a
        hold " state expires_ms"."""
        base = f"{self.user_id} {self.quantity} {self.at_ms}"
        return base if self.state is None else f"{base} {self.state} {self.expires_ms}"

    def hold_record(self) -> str:
        """A hold's record in keys.holds: "quantity expires_ms user take_epoch take_seq
        key" (key "" for none), the take's (epoch, seq) for its change entries."""
        epoch, seq = self.take
        key = self.idempotency_key or ""
        return f"{self.quantity} {self.expires_ms} {self.user_id} {epoch} {seq} {key}"

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
    user_id, quantity, ordered_at, *hold = raw.split(" ")
    state, expires = hold if hold else (None, None)
    return Sale(
        order_id,
        user_id,
        int(quantity),
        int(ordered_at),
        None,
        state,
        int(expires) if expires is not None else None,
    )


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """An entry for the writers (keys.orders_stream), as take_stock.lua and hold.lua
    write it; dead letters carry the same fields and a `reason`.

    A take (`change` False) is a new order, `state` "reserved" for a hold. A change
    (hold.lua: a confirm or a release) carries the whole order too, in its new state,
    with the change's own place in the books (`change_epoch`, `change_seq`) and when it
    happened: the writer updates the stored hold, or stores the order in that state if
    its take never reached the database."""

    order_id: str
    product_id: int
    generation: int
    user_id: str
    quantity: int
    at_ms: int
    epoch: int
    seq: int
    idempotency_key: str | None
    state: str | None = None
    expires_ms: int | None = None
    change: bool = False
    change_epoch: int | None = None
    change_seq: int | None = None
    settled_ms: int | None = None

    @classmethod
    def parse(cls, fields: Mapping[str, str]) -> StreamEntry:
        """KeyError or ValueError for an entry the scripts did not write."""
        state = fields.get("state") or None
        if state is not None and state not in HoldState.ALL:
            raise ValueError(f"state {state!r}")
        change = fields.get("kind") == "change"
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
            state,
            int(fields["expires_at"]) if state is not None else None,
            change,
            int(fields["change_epoch"]) if change else None,
            int(fields["change_seq"]) if change else None,
            int(fields["settled_at"]) if change else None,
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
            state=self.state,
            expires_at=from_ms(self.expires_ms) if self.expires_ms is not None else None,
            settled_at=from_ms(self.settled_ms) if self.settled_ms is not None else None,
            change_epoch=self.change_epoch,
            change_seq=self.change_seq,
        )

    def sale(self) -> Sale:
        return Sale(
            self.order_id,
            self.user_id,
            self.quantity,
            self.at_ms,
            self.idempotency_key,
            self.state,
            self.expires_ms,
            (self.epoch, self.seq),
        )


def change_entry(
    sale: Sale, product_id: int, generation: int, marks: tuple[int, int], at: int
) -> dict[str, str | int]:
    """A hold's change as hold.lua enqueues it (StreamEntry with `change`): the whole
    order in `sale.state`, the change's place in the books (`marks`) and time (`at`, ms)."""
    take_epoch, take_seq = sale.take
    return {
        "kind": "change",
        "order_id": sale.order_id,
        "product_id": product_id,
        "generation": generation,
        "user_id": sale.user_id,
        "quantity": sale.quantity,
        "ordered_at": sale.at_ms,
        "epoch": take_epoch,
        "seq": take_seq,
        "idem": sale.idempotency_key or "",
        "state": sale.state or "",
        "expires_at": sale.expires_ms if sale.expires_ms is not None else "",
        "change_epoch": marks[0],
        "change_seq": marks[1],
        "settled_at": at,
    }


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
