"""`hotdeal-ops reconcile`: do the books of each design add up?

Each design keeps its own books, told apart by order_history.source, and only the
product's current event (generation) counts:
- legacy (one hot row):   initial = hotdeal_list.quantity + units sold by "legacy"
- legacy-slots:           initial = sum(hotdeal_slot.quantity) + units sold by "legacy-slots"
- redis:                  initial = remaining + sold in Redis's books, and
                          sold = units persisted + units in flight + units dead-lettered
                          (answered, refused by the database: still sold)
                          (+ inline in progress)

One consistent picture, also during live traffic: Redis is read in one transaction
(its books, buyers and the stream's last id); then we wait until the writer has
persisted every order up to that stream position; then the database is read in one
snapshot (SERIALIZABLE) and only orders up to the Redis picture's (epoch, seq) count.
Orders sold after the picture was taken are in neither side.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, or_, select

from hotdeal.designs import Design
from hotdeal.inline import InlineTakes
from hotdeal.model import keys, product
from hotdeal.redis_client import Client
from hotdeal.schema import hotdeal_list, hotdeal_slot, order_history


def _in_event(conn: Connection, pid: int, generation: int, source: str) -> int:
    return int(
        conn.execute(
            select(func.coalesce(func.sum(order_history.c.quantity), 0)).where(
                order_history.c.prod_id == pid,
                order_history.c.generation == generation,
                order_history.c.source == source,
            )
        ).scalar_one()
    )


def _stock_books(
    design: str, initial: int, rows: list[int], sold: int, violations: list[str], *, negative: str
) -> dict[str, int]:
    """initial = remaining (over the design's stock rows) + units its orders took."""
    remaining = sum(rows)
    if rows and min(rows) < 0:
        violations.append(f"{design}: {negative}")
    if initial != remaining + sold:
        violations.append(f"{design}: initial {initial} != remaining {remaining} + sold {sold}")
    return {"initial": initial, "remaining": remaining, "sold": sold}


def _wait_for_writer(client: Client, pid: int, last_id: str | None, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    stream = keys.orders_stream(pid)
    while last_id and time.monotonic() < deadline:
        if not client.xrange(stream, max=last_id, count=1):
            return
        time.sleep(0.2)


def reconcile(
    engine: Engine, client: Client | None, product_id: int, *, wait_s: float = 0
) -> dict[str, Any]:
    """The report; `client=None` checks the database's books only. With `wait_s`, waits
    up to that long for the writer to persist the orders of the Redis picture, and
    first settles the inline takes the database can tell about (hotdeal.inline: a
    settle lost to Redis would otherwise count a stored row twice)."""
    violations: list[str] = []
    report: dict[str, Any] = {"product_id": product_id}
    picture = in_flight = None
    if client is not None:
        if wait_s:
            InlineTakes(client).sweep(engine, product_id)
        picture = product.picture(client, product_id)
        _wait_for_writer(client, product_id, picture.last_id, wait_s)
        in_flight = product.in_stream(client, product_id, picture.last_id)
    with engine.connect().execution_options(isolation_level="SERIALIZABLE") as conn:
        head = conn.execute(
            select(
                hotdeal_list.c.quantity,
                hotdeal_list.c.initial_quantity,
                hotdeal_list.c.generation,
            ).where(hotdeal_list.c.prod_id == product_id)
        ).first()
        if head is None:
            violations.append(f"product {product_id} is not in hotdeal_list (run reset)")
            report.update(violations=violations, ok=False)
            return report
        gen = head.generation
        report["generation"] = gen
        report[Design.LEGACY] = _stock_books(
            Design.LEGACY,
            head.initial_quantity,
            [head.quantity],
            _in_event(conn, product_id, gen, Design.LEGACY),
            violations,
            negative="hotdeal_list.quantity is negative",
        )
        slots = (
            conn.execute(
                select(hotdeal_slot.c.quantity).where(
                    hotdeal_slot.c.prod_id == product_id, hotdeal_slot.c.generation == gen
                )
            )
            .scalars()
            .all()
        )
        if slots:
            report[Design.LEGACY_SLOTS] = _stock_books(
                Design.LEGACY_SLOTS,
                head.initial_quantity,
                list(slots),
                _in_event(conn, product_id, gen, Design.LEGACY_SLOTS),
                violations,
                negative="a slot quantity is negative",
            )
            report[Design.LEGACY_SLOTS]["slots"] = len(slots)
        rows = conn.execute(
            select(func.count())
            .select_from(order_history)
            .where(order_history.c.prod_id == product_id, order_history.c.generation == gen)
        ).scalar_one()
        # No duplicate-id check: order_id is the primary key (the database refuses one).
        report["order_history"] = {"rows": int(rows)}
        if picture is not None and in_flight is not None:
            report[Design.REDIS] = _redis_books(
                conn, product_id, gen, head.initial_quantity, picture, in_flight, violations
            )
    report["violations"] = violations
    report["ok"] = not violations
    return report


def _redis_books(
    conn: Connection,
    pid: int,
    gen: int,
    initial_db: int,
    picture: product.Picture,
    queued: list[dict[str, str]],
    violations: list[str],
) -> dict[str, Any]:
    books, buyers = picture.books, picture.buyers
    if not books:
        violations.append(f"redis: no books for product {pid} (run reset)")
        return {"found": False}
    if int(books[keys.GENERATION]) != gen:
        violations.append(
            f"redis: books are of generation {books[keys.GENERATION]}, the database's "
            f"of {gen} (a reset is under way, or did not reach Redis: run reset)"
        )
        return {"found": True, "generation": int(books[keys.GENERATION])}
    initial, remaining, sold = (int(books[k]) for k in (keys.INITIAL, keys.QUANTITY, keys.SOLD))
    epoch, seq = int(books[keys.EPOCH]), int(books[keys.SEQ])
    inline_pending = int(books.get(keys.INLINE_PENDING, 0))
    upto = or_(
        order_history.c.take_epoch < epoch,
        and_(order_history.c.take_epoch == epoch, order_history.c.take_seq <= seq),
    )
    rows = conn.execute(
        select(order_history.c.order_id, order_history.c.user_id, order_history.c.quantity).where(
            order_history.c.prod_id == pid,
            order_history.c.generation == gen,
            order_history.c.source == Design.REDIS,
            upto,
        )
    ).all()
    everything = _in_event(conn, pid, gen, Design.REDIS)
    # Every take gets its own (epoch, seq): two stored orders with one number mean the
    # books went backwards and sold the same take again (a restore no check caught).
    twice = conn.execute(
        select(func.count()).select_from(
            select(order_history.c.take_epoch, order_history.c.take_seq)
            .where(
                order_history.c.prod_id == pid,
                order_history.c.generation == gen,
                order_history.c.source == Design.REDIS,
            )
            .group_by(order_history.c.take_epoch, order_history.c.take_seq)
            .having(func.count() > 1)
            .subquery()
        )
    ).scalar_one()
    persisted_ids = {r.order_id for r in rows}
    by_user: Counter[str] = Counter()
    for r in rows:
        by_user[r.user_id] += int(r.quantity)
    persisted = sum(by_user.values())
    in_flight = [o for o in queued if o["order_id"] not in persisted_ids]
    for o in in_flight:
        by_user[o["user_id"]] += int(o["quantity"])
    in_flight_units = sum(int(o["quantity"]) for o in in_flight)
    counted = persisted_ids | {o["order_id"] for o in in_flight}
    dead: dict[str, dict[str, str]] = {}
    for o in picture.dead_letters:
        if o.get("generation") == str(gen) and o.get("order_id") not in counted:
            dead.setdefault(o["order_id"], o)
    for o in dead.values():
        by_user[o["user_id"]] += int(o["quantity"])
    dead_units = sum(int(o["quantity"]) for o in dead.values())

    if books.get(keys.PAUSED):
        violations.append(f"redis: selling is paused: {books[keys.PAUSED]}")
    if initial != initial_db:
        violations.append(f"redis: initial {initial} != the database's {initial_db}")
    if remaining < 0:
        violations.append("redis: stock is negative")
    if initial != remaining + sold:
        violations.append(f"redis: initial {initial} != remaining {remaining} + sold {sold}")
    if sold != persisted + in_flight_units + dead_units + inline_pending:
        violations.append(
            f"redis: sold {sold} != persisted {persisted} + in flight {in_flight_units}"
            + (f" + dead-lettered {dead_units}" if dead_units else "")
            + (f" + inline in progress {inline_pending}" if inline_pending else "")
            + " (an order was lost or duplicated)"
        )
    if everything > initial:
        violations.append(f"redis: {everything} units persisted, above the initial {initial}")
    if twice:
        violations.append(f"redis: {twice} takes were sold twice (the books went backwards)")
    if len({o["order_id"] for o in in_flight}) != len(in_flight):
        violations.append("redis: the same order id is queued twice")
    mismatched = {u for u in set(by_user) | set(buyers) if by_user[u] != int(buyers.get(u, 0))}
    if mismatched and not inline_pending:
        violations.append(
            f"redis: per-user counts disagree with orders for {len(mismatched)} users"
        )
    return {
        "initial": initial,
        "remaining": remaining,
        "sold": sold,
        "persisted": persisted,
        "persisted_total": everything,
        "in_flight": in_flight_units,
        "in_flight_orders": len(in_flight),
        "dead_lettered": dead_units,
        "inline_pending": inline_pending,
        "buyers": len(buyers),
        "epoch": epoch,
        "seq": seq,
        "paused": books.get(keys.PAUSED),
    }
