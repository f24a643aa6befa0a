"""`hotdeal-ops reset`: the workshop's @purge plus `set prod-001-quantity`, for both stores."""

from __future__ import annotations

from datetime import datetime

import redis
from sqlalchemy import Engine, delete, insert

from hotdeal import redis_keys
from hotdeal.schema import hotdeal_list, hotdeal_slot, order_history


def split(stock: int, slots: int) -> list[int]:
    """Stock per slot, as even as possible (the first slots take the remainder)."""
    base, extra = divmod(stock, slots)
    return [base + (1 if i < extra else 0) for i in range(slots)]


def reset_database(
    engine: Engine, product_id: int, stock: int, *, slots: int, opens_at: datetime | None
) -> None:
    with engine.begin() as conn:
        conn.execute(delete(order_history).where(order_history.c.prod_id == product_id))
        conn.execute(delete(hotdeal_slot).where(hotdeal_slot.c.prod_id == product_id))
        conn.execute(delete(hotdeal_list).where(hotdeal_list.c.prod_id == product_id))
        conn.execute(
            insert(hotdeal_list).values(
                prod_id=product_id, quantity=stock, initial_quantity=stock, opens_at=opens_at
            )
        )
        conn.execute(
            insert(hotdeal_slot),
            [
                {"prod_id": product_id, "slot": i, "quantity": q}
                for i, q in enumerate(split(stock, slots))
            ],
        )


def reset_redis(
    client: redis.Redis, product_id: int, stock: int, *, opens_at: datetime | None
) -> None:
    stale = list(client.scan_iter(match=redis_keys.all_of(product_id), count=1000))
    for start in range(0, len(stale), 500):
        client.delete(*stale[start : start + 500])
    stream = redis_keys.orders_stream(product_id)
    pipe = client.pipeline(transaction=True)
    # Again inside the transaction: a writer may have recreated the stream meanwhile.
    pipe.delete(stream, redis_keys.buyers(product_id), redis_keys.opens_at(product_id))
    pipe.set(redis_keys.quantity(product_id), stock)
    pipe.set(redis_keys.initial(product_id), stock)
    pipe.set(redis_keys.sold(product_id), 0)
    if opens_at is not None:
        pipe.set(redis_keys.opens_at(product_id), int(opens_at.timestamp() * 1000))
    # The group starts at id 0 so writers read every order, even ones enqueued
    # before any writer was running.
    pipe.xgroup_create(stream, redis_keys.WRITER_GROUP, id="0", mkstream=True)
    pipe.sadd(redis_keys.STREAMS, stream)
    pipe.sadd(redis_keys.PRODUCTS, product_id)
    pipe.execute()
