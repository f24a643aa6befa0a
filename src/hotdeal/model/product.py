"""A product's books and what hangs on them (hotdeal.model): made new by reset, rebuilt
from the database's sales by repair, read in one consistent picture by reconcile."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hotdeal.model import keys
from hotdeal.model.records import HoldState, Sale, at_ms
from hotdeal.redis_client import Client


def fresh(
    *,
    remaining: int,
    initial: int,
    sold: int,
    seq: int,
    epoch: int,
    generation: int,
    opens_at: datetime | None,
    server: str,
    window_s: int | None = None,
    held: int = 0,
    released: int = 0,
) -> dict[str, Any]:
    """The books' fields as reset and repair write them, checked on `server` (made from
    the database just now). `paused` is not among them: the caller deletes it.
    `window_s`: the payment window under reservations (None: outright sales); `held`:
    the units of holds not settled yet (counted in `sold`); `released`: the units
    released holds gave back."""
    fields: dict[str, Any] = {
        keys.QUANTITY: remaining,
        keys.INITIAL: initial,
        keys.SOLD: sold,
        keys.SEQ: seq,
        keys.EPOCH: epoch,
        keys.GENERATION: generation,
        keys.INLINE_PENDING: 0,
        keys.VALIDATED: server,
        keys.WINDOW: (window_s or 0) * 1000,
        keys.HELD: held,
        keys.RELEASED: released,
    }
    if opens_at is not None:
        fields[keys.OPENS_AT] = at_ms(opens_at)
    return fields


def derived(pid: int) -> tuple[str, ...]:
    """The keys a rebuild replaces with the books: what the takes recorded beside them
    (the buyers' counts and orders, the order index, the inline takes, the holds)."""
    return (
        keys.buyers(pid),
        keys.buyer_orders(pid),
        keys.orders(pid),
        keys.inline_takes(pid),
        keys.holds(pid),
        keys.deadlines(pid),
    )


@dataclass(frozen=True)
class Units:
    """What `sales` did to the stock."""

    taken: int  # sold or held now (released holds gave theirs back)
    held: int
    released: int


def units_of(sales: Sequence[Sale]) -> Units:
    return Units(
        sum(s.quantity for s in sales if s.counts),
        sum(s.quantity for s in sales if s.state == HoldState.RESERVED),
        sum(s.quantity for s in sales if not s.counts),
    )


def rebuild(pipe: Any, pid: int, sales: Sequence[Sale], remaining: int, ttl_s: int) -> None:
    """The buyers, the order index, the holds and the Idempotency-Keys of `sales`,
    queued on `pipe` (a transaction that deleted `derived` first). A key replays for
    what is left of `ttl_s` since its take; older ones, and those of released holds (a
    retry is a new order), are not rebuilt. A hold keeps its deadline."""
    buyers: dict[str, int] = {}
    listed: dict[str, list[str]] = {}
    index: dict[str, str] = {}
    holds: dict[str, str] = {}
    deadlines: dict[str, int] = {}
    now = at_ms(datetime.now(UTC))
    for sale in sales:
        if sale.user_id != "workshop":
            listed.setdefault(sale.user_id, []).append(sale.order_id)
        index[sale.order_id] = sale.index_record()
        if not sale.counts:
            continue
        buyers[sale.user_id] = buyers.get(sale.user_id, 0) + sale.quantity
        if sale.state == HoldState.RESERVED and sale.expires_ms is not None:
            holds[sale.order_id] = sale.hold_record()
            deadlines[sale.order_id] = sale.expires_ms
        if sale.idempotency_key:
            ttl = ttl_s - (now - sale.at_ms) // 1000
            if ttl > 0:
                key = keys.idempotency(pid, sale.user_id, sale.idempotency_key)
                pipe.hset(key, mapping=sale.idempotency_record(remaining))
                pipe.expire(key, ttl)
    if buyers:
        pipe.hset(keys.buyers(pid), mapping=buyers)
    if listed:
        pipe.hset(keys.buyer_orders(pid), mapping={u: " ".join(i) for u, i in listed.items()})
    if index:
        pipe.hset(keys.orders(pid), mapping=index)
    if holds:
        pipe.hset(keys.holds(pid), mapping=holds)
        pipe.zadd(keys.deadlines(pid), deadlines)


@dataclass(frozen=True)
class Picture:
    """One product's Redis state read in one transaction (reconcile's audit)."""

    books: Mapping[str, str]
    buyers: Mapping[str, str]
    last_id: str | None  # the stream's last entry at that moment
    dead_letters: list[dict[str, str]]


def picture(client: Client, pid: int) -> Picture:
    pipe = client.pipeline(transaction=True)
    pipe.hgetall(keys.books(pid))
    pipe.hgetall(keys.buyers(pid))
    pipe.xrevrange(keys.orders_stream(pid), count=1)
    pipe.xrange(keys.dead_letter(pid))
    books, buyers, last, dead = pipe.execute()
    return Picture(books, buyers, last[0][0] if last else None, [f for _, f in dead])


def in_stream(client: Client, pid: int, last_id: str | None) -> list[dict[str, str]]:
    """Entries up to `last_id` still in the stream (persisted ones are deleted)."""
    if last_id is None:
        return []
    stream = keys.orders_stream(pid)
    entries: list[dict[str, str]] = []
    start = "-"
    while True:
        batch = client.xrange(stream, min=start, max=last_id, count=5000)
        if not batch:
            return entries
        entries.extend(fields for _, fields in batch)
        start = "(" + batch[-1][0]
