"""Rollback fencing: Redis's books may never go backwards behind what was answered or
persisted, and they are rebuilt from the database when they did.

Every take gets the next number (epoch, seq) in Redis's books (`seq` counts takes,
`epoch` is bumped by every reset and repair). It travels with the order into
order_history (take_epoch, take_seq). Redis only moves forward, so while its books are
intact:
- every server that answered 201 for take (e, s) finds the books at >= (e, s): the
  take script compares with what the caller passes (hotdeal_order_redis.seen, shared by
  the server's workers) and pauses the product otherwise;
- every order in order_history of the current generation is at <= the books' (epoch,
  seq), and its units are <= `sold` (the writer checks after each batch and every few
  seconds, see `check`).
If Redis came back older (a restart from an older AOF, a failover to a lagging replica,
a restore, a hand edit) one of these fails first, the product is paused (503 `paused`,
`hotdeal_sales_paused`), and `repair` rebuilds the books from the database: stock,
sold, buyers, the order index and Idempotency-Keys, with a new epoch. A unit the
database holds is therefore never sold again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select, update

from hotdeal import redis_keys
from hotdeal.designs import Design
from hotdeal.redis_client import Client
from hotdeal.schema import hotdeal_list, order_history

ROLLBACK = "rollback: "


class RepairError(RuntimeError):
    """The books can't be repaired right now; the message says why."""


@dataclass(frozen=True)
class DatabaseMarks:
    generation: int
    units: int
    epoch: int  # highest take_epoch persisted (0: none)
    seq: int  # highest take_seq within that epoch


def database_marks(engine: Engine, pid: int, generation: int) -> DatabaseMarks:
    """What order_history holds of Redis's sales in this event (legacy sales are not)."""
    rows = order_history.c
    ours = (rows.prod_id == pid, rows.generation == generation, rows.source == Design.REDIS)
    with engine.connect() as conn:
        units = conn.execute(
            select(func.coalesce(func.sum(rows.quantity), 0)).where(*ours)
        ).scalar_one()
        epoch = conn.execute(select(func.max(rows.take_epoch)).where(*ours)).scalar_one()
        seq = 0
        if epoch is not None:
            seq = conn.execute(
                select(func.max(rows.take_seq)).where(*ours, rows.take_epoch == epoch)
            ).scalar_one()
    return DatabaseMarks(generation, int(units), int(epoch or 0), int(seq or 0))


def pause(client: Client, pid: int, reason: str) -> bool:
    """Stop selling `pid` (the first reason is kept). False if the product has no books."""
    books = redis_keys.books(pid)
    pipe = client.pipeline(transaction=True)
    pipe.exists(books)
    pipe.hsetnx(books, redis_keys.PAUSED, reason)
    exists, _ = pipe.execute()
    if not exists:
        client.delete(books)  # HSETNX created a stray hash: the product was reset away
        return False
    return True


def behind(books: dict[str, str], marks: DatabaseMarks) -> str | None:
    """Why Redis's books are behind the database's (None: they are not)."""
    epoch, seq, sold = (int(books.get(k, 0)) for k in (redis_keys.EPOCH, redis_keys.SEQ, "sold"))
    if (marks.epoch, marks.seq) > (epoch, seq):
        return (
            f"{ROLLBACK}books at {epoch}/{seq} but order_history holds take "
            f"{marks.epoch}/{marks.seq}"
        )
    if marks.units > sold:
        return f"{ROLLBACK}books sold {sold} but order_history holds {marks.units} units"
    return None


def check(engine: Engine, client: Client, pid: int) -> str | None:
    """Pause `pid` if Redis's books are behind the database; returns the reason.

    The database is read first, Redis second: Redis only moves forward, so books read
    later must cover every order read before (the other order would see orders taken
    between the two reads and pause a healthy product)."""
    with engine.connect() as conn:
        generation = conn.execute(
            select(hotdeal_list.c.generation).where(hotdeal_list.c.prod_id == pid)
        ).scalar()
    if generation is None:
        return None
    marks = database_marks(engine, pid, generation)
    books = client.hgetall(redis_keys.books(pid))
    if not books or redis_keys.PAUSED in books:
        return books.get(redis_keys.PAUSED) if books else None
    if int(books.get(redis_keys.GENERATION, 0)) != generation:
        return None  # a reset is under way
    reason = behind(books, marks)
    if reason and pause(client, pid, reason):
        return reason
    return None


def _history(engine: Engine, pid: int) -> tuple[dict[str, Any], list[Any]]:
    with engine.connect() as conn:
        head = conn.execute(
            select(
                hotdeal_list.c.initial_quantity,
                hotdeal_list.c.generation,
                hotdeal_list.c.fence_epoch,
            ).where(hotdeal_list.c.prod_id == pid)
        ).first()
        if head is None:
            raise RepairError(f"product {pid} is not in hotdeal_list (run reset)")
        rows = conn.execute(
            select(
                order_history.c.order_id,
                order_history.c.user_id,
                order_history.c.quantity,
                order_history.c.ordered_at,
                order_history.c.take_epoch,
                order_history.c.take_seq,
                order_history.c.idempotency_key,
            )
            .where(
                order_history.c.prod_id == pid,
                order_history.c.generation == head.generation,
                order_history.c.source == Design.REDIS,
            )
            .order_by(order_history.c.seq)
        ).all()
    return head._asdict(), rows


def repair(
    engine: Engine,
    client: Client,
    pid: int,
    *,
    idempotency_ttl_s: int = 86400,
    drain_timeout_s: float = 0,
) -> dict[str, Any]:
    """Rebuild Redis's books of `pid` from order_history and resume selling.

    Selling is paused first; then every order still in the stream must reach the
    database (a writer drains it; wait up to `drain_timeout_s`), so the database holds
    every order Redis still knows of. The books are rebuilt in one transaction that
    aborts if anything changed meanwhile."""
    books_key = redis_keys.books(pid)
    stream = redis_keys.orders_stream(pid)
    if not pause(client, pid, f"{ROLLBACK}repair requested"):
        raise RepairError(f"product {pid} has no books in Redis (run reset)")
    deadline = time.monotonic() + drain_timeout_s
    while client.xlen(stream):
        if time.monotonic() >= deadline:
            raise RepairError(
                f"{client.xlen(stream)} orders of product {pid} are not persisted yet: "
                "a writer must drain the stream before the books can be rebuilt"
            )
        time.sleep(0.2)
    head, rows = _history(engine, pid)
    books = client.hgetall(books_key)
    if int(books.get(redis_keys.GENERATION, 0)) != head["generation"]:
        raise RepairError("Redis and the database are at different generations: run reset")
    units = sum(r.quantity for r in rows)
    marks = database_marks(engine, pid, head["generation"])
    epoch = max(int(books.get(redis_keys.EPOCH, 0)), head["fence_epoch"], marks.epoch) + 1
    seq = max(int(books.get(redis_keys.SEQ, 0)), marks.seq)
    with engine.begin() as conn:  # the database remembers the epoch: Redis may roll back
        conn.execute(
            update(hotdeal_list).where(hotdeal_list.c.prod_id == pid).values(fence_epoch=epoch)
        )
    remaining = int(head["initial_quantity"]) - units
    buyers: dict[str, int] = {}
    listed: dict[str, list[str]] = {}
    index: dict[str, str] = {}
    now = datetime.now(UTC)
    with client.pipeline(transaction=True) as pipe:
        pipe.watch(books_key, stream)
        if pipe.xlen(stream) or pipe.hget(books_key, redis_keys.SEQ) != books.get(redis_keys.SEQ):
            raise RepairError("the books changed while repairing: run repair again")
        pipe.multi()
        pipe.delete(redis_keys.buyers(pid), redis_keys.buyer_orders(pid), redis_keys.orders(pid))
        for r in rows:
            at_ms = int(r.ordered_at.timestamp() * 1000)
            buyers[r.user_id] = buyers.get(r.user_id, 0) + r.quantity
            if r.user_id != "workshop":
                listed.setdefault(r.user_id, []).append(r.order_id)
            index[r.order_id] = f"{r.user_id} {r.quantity} {at_ms}"
            if r.idempotency_key:
                ttl = idempotency_ttl_s - int((now - r.ordered_at).total_seconds())
                if ttl > 0:
                    key = redis_keys.idempotency(pid, r.user_id, r.idempotency_key)
                    pipe.hset(
                        key,
                        mapping={
                            "quantity": r.quantity,
                            "remaining": remaining,
                            "order_id": r.order_id,
                            "ordered_at": at_ms,
                            "state": "done",
                        },
                    )
                    pipe.expire(key, ttl)
        if buyers:
            pipe.hset(redis_keys.buyers(pid), mapping=buyers)
        if listed:
            pipe.hset(
                redis_keys.buyer_orders(pid), mapping={u: " ".join(i) for u, i in listed.items()}
            )
        if index:
            pipe.hset(redis_keys.orders(pid), mapping=index)
        pipe.hset(
            books_key,
            mapping={
                redis_keys.QUANTITY: remaining,
                redis_keys.SOLD: units,
                redis_keys.SEQ: seq,
                redis_keys.EPOCH: epoch,
                redis_keys.INLINE_PENDING: 0,
            },
        )
        pipe.hdel(books_key, redis_keys.PAUSED)
        pipe.execute()
    return {
        "product_id": pid,
        "repaired": True,
        "was": books.get(redis_keys.PAUSED),
        "generation": head["generation"],
        "epoch": epoch,
        "seq": seq,
        "sold": units,
        "remaining": remaining,
        "orders": len(rows),
    }
