"""`hotdeal-ops reset`: the workshop's @purge plus `set prod-001-quantity`, for both stores.

Safe at any moment, also while orders are sold or a writer drains a backlog: reset starts
a new *generation* of the product (hotdeal_list.generation). Every order row carries the
generation it was sold in and every book counts only its own, so an order of the old
event that lands after the reset (a writer's batch read before it, a legacy transaction
that held the row lock) stays in the old event and is purged by the next reset.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime

import redis
from sqlalchemy import Engine, delete, func, insert, select, update

from hotdeal import fence
from hotdeal.model import keys, product
from hotdeal.redis_client import Client
from hotdeal.schema import hotdeal_list, hotdeal_slot, order_history


def split(stock: int, slots: int) -> list[int]:
    """Stock per slot, as even as possible (the first slots take the remainder)."""
    base, extra = divmod(stock, slots)
    return [base + (1 if i < extra else 0) for i in range(slots)]


class ResetRefused(RuntimeError):
    """The reset would destroy the current event's orders and was not told to."""


@dataclass(frozen=True)
class Fresh:
    """What a reset starts: the event's generation and the books' first epoch."""

    generation: int
    epoch: int


def redis_marks(client: Client | None, product_id: int) -> tuple[int, int]:
    """(generation, epoch) Redis's books are at, 0 when it has none."""
    if client is None:
        return 0, 0
    gen, epoch = client.hmget(keys.books(product_id), keys.GENERATION, keys.EPOCH)
    return int(gen or 0), int(epoch or 0)


def reset_database(
    engine: Engine,
    product_id: int,
    stock: int,
    *,
    slots: int,
    opens_at: datetime | None,
    at_least: tuple[int, int] = (0, 0),
    discard_orders: bool = False,
    payment_window_s: int | None = None,
) -> Fresh:
    """New generation and epoch, above both the database's and `at_least` (Redis's).
    Refuses (ResetRefused) if the current event has orders, unless `discard_orders`."""
    with engine.begin() as conn:
        head = conn.execute(
            select(hotdeal_list.c.generation, hotdeal_list.c.fence_epoch)
            .where(hotdeal_list.c.prod_id == product_id)
            .with_for_update()
        ).first()
        if head and not discard_orders:
            held = conn.execute(
                select(func.count()).where(
                    order_history.c.prod_id == product_id,
                    order_history.c.generation == head.generation,
                )
            ).scalar_one()
            if held:
                raise ResetRefused(
                    f"product {product_id}'s current event (generation {head.generation}) "
                    f"holds {held} orders; a reset deletes them: pass --discard-orders to "
                    "start a new event anyway (a Redis that lost its books needs "
                    "`hotdeal-ops repair`, not a reset)"
                )
        fresh = Fresh(
            max(head.generation if head else 0, at_least[0]) + 1,
            max(head.fence_epoch if head else 0, at_least[1]) + 1,
        )
        values = {
            "quantity": stock,
            "initial_quantity": stock,
            "opens_at": opens_at,
            "generation": fresh.generation,
            "fence_epoch": fresh.epoch,
            "payment_window_s": payment_window_s,
        }
        if head:
            conn.execute(
                update(hotdeal_list).where(hotdeal_list.c.prod_id == product_id).values(values)
            )
        else:
            conn.execute(insert(hotdeal_list).values(prod_id=product_id, **values))
        conn.execute(delete(order_history).where(order_history.c.prod_id == product_id))
        conn.execute(delete(hotdeal_slot).where(hotdeal_slot.c.prod_id == product_id))
        conn.execute(
            insert(hotdeal_slot),
            [
                {"prod_id": product_id, "slot": i, "quantity": q, "generation": fresh.generation}
                for i, q in enumerate(split(stock, slots))
            ],
        )
    return fresh


def _rebuilt_meanwhile(client: Client, product_id: int, fresh: Fresh) -> bool:
    """fence.validate rebuilt this event's books from the database after the database's
    reset (a Redis that restarted meanwhile): they may hold this event's sales already."""
    generation = client.hget(keys.books(product_id), keys.GENERATION)
    return int(generation or 0) >= fresh.generation


def reset_redis(
    client: Client,
    product_id: int,
    stock: int,
    *,
    opens_at: datetime | None,
    fresh: Fresh,
    payment_window_s: int | None = None,
) -> None:
    server = fence.run_id(client, product_id)
    if _rebuilt_meanwhile(client, product_id, fresh):
        return
    # The books stay until the transaction below replaces them: a take meanwhile gets the
    # old event's answer, never "unknown product".
    keep = keys.books(product_id)
    stale = [k for k in client.scan_iter(match=keys.all_of(product_id), count=1000) if k != keep]
    for start in range(0, len(stale), 500):
        client.delete(*stale[start : start + 500])
    stream = keys.orders_stream(product_id)
    books = product.fresh(
        remaining=stock,
        initial=stock,
        sold=0,
        seq=0,
        epoch=fresh.epoch,
        generation=fresh.generation,
        opens_at=opens_at,
        server=server,
        window_s=payment_window_s,
    )
    # The registries are global keys, outside the product's slot (a cluster allows a
    # transaction within one slot only): registered first, so a writer finds the stream.
    client.sadd(keys.STREAMS, stream)
    client.sadd(keys.PRODUCTS, product_id)
    # A take or a writer's check may change the books between WATCH and EXEC (a reset
    # in the middle of a sale): the transaction did nothing then, and is tried again.
    for _ in range(RESET_ATTEMPTS - 1):
        with contextlib.suppress(redis.WatchError):
            _replace_books(client, product_id, fresh, books)
            return
    _replace_books(client, product_id, fresh, books)


# Transactions a reset tries before it gives up (each lost to a take in between).
RESET_ATTEMPTS = 50


def _replace_books(client: Client, product_id: int, fresh: Fresh, books: dict) -> None:
    stream = keys.orders_stream(product_id)
    pipe = client.pipeline(transaction=True)
    pipe.watch(keys.books(product_id))
    if _rebuilt_meanwhile(pipe, product_id, fresh):
        pipe.reset()
        return
    pipe.multi()
    # Again inside the transaction: a writer or a take may have recreated some meanwhile.
    pipe.delete(stream, keys.books(product_id), *product.derived(product_id))
    pipe.hset(keys.books(product_id), mapping=books)
    # The group starts at id 0 so writers read every order, even ones enqueued
    # before any writer was running.
    pipe.xgroup_create(stream, keys.WRITER_GROUP, id="0", mkstream=True)
    pipe.execute()


def reset(
    engine: Engine,
    client: Client | None,
    product_id: int,
    stock: int,
    *,
    slots: int,
    opens_at: datetime | None,
    discard_orders: bool = False,
    payment_window_s: int | None = None,
) -> Fresh:
    """Both stores: the database first (it decides the generation), then Redis; then
    every product's books are checked on this Redis server (hotdeal.fence.validate_all,
    without repairs), so a take of an unknown product answers 404."""
    if client is not None and not discard_orders:
        waiting = client.xlen(keys.orders_stream(product_id)) + client.xlen(
            keys.dead_letter(product_id)
        )
        if waiting:
            raise ResetRefused(
                f"product {product_id} has {waiting} answered orders in Redis not stored yet "
                "(the stream, the dead letters); a reset deletes them: pass "
                "--discard-orders to start a new event anyway"
            )
    fresh = reset_database(
        engine,
        product_id,
        stock,
        slots=slots,
        opens_at=opens_at,
        at_least=redis_marks(client, product_id),
        discard_orders=discard_orders,
        payment_window_s=payment_window_s,
    )
    if client is not None:
        reset_redis(
            client,
            product_id,
            stock,
            opens_at=opens_at,
            fresh=fresh,
            payment_window_s=payment_window_s,
        )
        fence.validate_all(engine, client, auto_repair=False)
    return fresh
