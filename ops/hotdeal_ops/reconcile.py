"""`hotdeal-ops reconcile`: do the books of each design add up?

Each design keeps its own books, told apart by order_history.source, and only the
product's current event (generation) counts:
- legacy (one hot row):   initial = hotdeal_list.quantity + units sold by "legacy"
- legacy-slots:           initial = sum(hotdeal_slot.quantity) + units sold by "legacy-slots"
- redis:                  initial = remaining + sold in Redis's books, and
                          sold = units persisted + units in flight + units dead-lettered
                          (answered, refused by the database: still sold)
                          (+ inline in progress); under reservations sold = held +
                          confirmed, released holds gave their units back, and no hold
                          is confirmed in one store and released in the other

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

from sqlalchemy import Connection, Engine, func, select

from hotdeal.designs import Design
from hotdeal.history import taken
from hotdeal.inline import InlineTakes
from hotdeal.model import keys, product
from hotdeal.model.records import Sale, StreamEntry, parse_index_record
from hotdeal.model.states import HoldState
from hotdeal.redis_client import Client
from hotdeal.schema import hotdeal_list, hotdeal_slot, order_history


def _in_event(conn: Connection, pid: int, generation: int, source: str) -> int:
    return int(
        conn.execute(
            select(func.coalesce(func.sum(order_history.c.quantity), 0)).where(
                order_history.c.prod_id == pid,
                order_history.c.generation == generation,
                order_history.c.source == source,
                taken(),
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
                conn,
                product_id,
                gen,
                head.initial_quantity,
                picture,
                in_flight,
                violations,
                client,
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
    client: Client,
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
    held, released = (int(books.get(k, 0)) for k in (keys.HELD, keys.RELEASED))
    epoch, seq = int(books[keys.EPOCH]), int(books[keys.SEQ])
    inline_pending = int(books.get(keys.INLINE_PENDING, 0))
    c = order_history.c
    ours = (c.prod_id == pid, c.generation == gen, c.source == Design.REDIS)
    rows = conn.execute(
        select(
            c.order_id, c.user_id, c.quantity, c.state, c.take_epoch, c.take_seq,
            c.change_epoch, c.change_seq,
        ).where(*ours)
    ).all()  # fmt: skip
    picture_marks = (epoch, seq)
    # Each order as the picture saw it: stored takes and changes up to its (epoch, seq)
    # (a change made after it reads as the hold it was), then the stream's entries, then
    # the dead letters (answered, refused by the database: still taken).
    orders: dict[str, Sale] = {}
    for r in rows:
        if (r.take_epoch or 0, r.take_seq or 0) > picture_marks:
            continue
        state = r.state
        changed_since = (r.change_epoch or 0, r.change_seq or 0) > picture_marks
        if state not in (None, HoldState.RESERVED) and changed_since:
            state = HoldState.RESERVED
        orders[r.order_id] = Sale(r.order_id, r.user_id, int(r.quantity), 0, None, state)
    persisted_ids = set(orders)
    queued_units = 0
    dead_units = 0
    for source, entries in (("queued", queued), ("dead", picture.dead_letters)):
        for fields in entries:
            try:
                entry = StreamEntry.parse(fields)
            except (KeyError, ValueError):
                continue
            if entry.generation != gen:
                continue
            known = orders.get(entry.order_id)
            if entry.change:
                if (known is not None and known.state == HoldState.RESERVED) or known is None:
                    orders[entry.order_id] = entry.sale()
            elif known is None:
                orders[entry.order_id] = entry.sale()
                if source == "queued":
                    queued_units += entry.quantity
                else:
                    dead_units += entry.quantity
    units = product.units_of(list(orders.values()))
    by_user: Counter[str] = Counter()
    for sale in orders.values():
        if sale.counts:
            by_user[sale.user_id] += sale.quantity
    persisted = sum(orders[o].quantity for o in persisted_ids if orders[o].counts)
    everything = sum(int(r.quantity) for r in rows if r.state not in HoldState.RELEASED)
    # Every take gets its own (epoch, seq): two stored orders with one number mean the
    # books went backwards and sold the same take again (a restore no check caught).
    twice = conn.execute(
        select(func.count()).select_from(
            select(c.take_epoch, c.take_seq)
            .where(*ours, c.take_epoch.is_not(None))  # 0.1.0's rows have no numbers
            .group_by(c.take_epoch, c.take_seq)
            .having(func.count() > 1)
            .subquery()
        )
    ).scalar_one()

    if books.get(keys.PAUSED):
        violations.append(f"redis: selling is paused: {books[keys.PAUSED]}")
    if initial != initial_db:
        violations.append(f"redis: initial {initial} != the database's {initial_db}")
    if remaining < 0:
        violations.append("redis: stock is negative")
    if initial != remaining + sold:
        violations.append(f"redis: initial {initial} != remaining {remaining} + sold {sold}")
    if sold != units.taken + inline_pending:
        violations.append(
            f"redis: sold {sold} != persisted {persisted} + in flight {queued_units}"
            + (f" + dead-lettered {dead_units}" if dead_units else "")
            + (f" + inline in progress {inline_pending}" if inline_pending else "")
            + (f" (held {units.held}, released {units.released})" if units.released else "")
            + " (an order was lost or duplicated)"
        )
    if (held, released) != (units.held, units.released):
        violations.append(
            f"redis: held {held} / released {released} != the orders' {units.held} / "
            f"{units.released} (a hold settled twice, or lost)"
        )
    if everything > initial:
        violations.append(f"redis: {everything} units persisted, above the initial {initial}")
    if twice:
        violations.append(f"redis: {twice} takes were sold twice (the books went backwards)")
    ids = [o["order_id"] for o in queued if o.get("kind") != "change"]
    if len(set(ids)) != len(ids):
        violations.append("redis: the same order id is queued twice")
    mismatched = {u for u in set(by_user) | set(buyers) if by_user[u] != int(buyers.get(u, 0))}
    if mismatched and not inline_pending:
        violations.append(
            f"redis: per-user counts disagree with orders for {len(mismatched)} users"
        )
    both = _sold_and_released(client, pid, rows)
    if both:
        violations.append(
            f"redis: {len(both)} holds are confirmed in one store and released in the "
            f"other (e.g. {both[0]})"
        )
    return {
        "initial": initial,
        "remaining": remaining,
        "sold": sold,
        "held": held,
        "released": released,
        "persisted": persisted,
        "persisted_total": everything,
        "in_flight": queued_units,
        "in_flight_orders": sum(1 for o in queued if o.get("kind") != "change"),
        "dead_lettered": dead_units,
        "inline_pending": inline_pending,
        "buyers": len(buyers),
        "epoch": epoch,
        "seq": seq,
        "paused": books.get(keys.PAUSED),
    }


def _sold_and_released(client: Client, pid: int, rows: list[Any]) -> list[str]:
    """Holds settled one way in the database and the other in Redis: a unit both sold
    and given back. Only settled states are compared (a change may be on its way)."""
    settled = {r.order_id: r.state for r in rows if r.state and r.state != HoldState.RESERVED}
    if not settled:
        return []
    ids = sorted(settled)
    found: list[str] = []
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        for order_id, raw in zip(chunk, client.hmget(keys.orders(pid), chunk), strict=True):
            if raw is None:
                continue
            theirs = parse_index_record(order_id, raw).state
            if theirs in (None, HoldState.RESERVED) or theirs == settled[order_id]:
                continue
            if HoldState.CONFIRMED in (theirs, settled[order_id]):
                found.append(order_id)
    return found
