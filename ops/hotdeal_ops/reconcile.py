"""`hotdeal-ops reconcile`: do the books of each design add up?

Each design keeps its own books, told apart by order_history.source:
- legacy (one hot row):   initial = hotdeal_list.quantity + units sold by "legacy"
- legacy-slots:           initial = sum(hotdeal_slot.quantity) + units sold by "legacy-slots"
- redis:                  initial = prod-NNN-quantity + prod-NNN-sold, and
                          prod-NNN-sold = units persisted by "redis" + units in flight
                          (in the stream, not yet in order_history)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import redis
from sqlalchemy import Engine, func, select

from hotdeal import redis_keys
from hotdeal.schema import hotdeal_list, hotdeal_slot, order_history


def _database_books(engine: Engine, pid: int) -> dict[str, Any]:
    with engine.connect() as conn:
        head = conn.execute(
            select(hotdeal_list.c.quantity, hotdeal_list.c.initial_quantity).where(
                hotdeal_list.c.prod_id == pid
            )
        ).first()
        slots = (
            conn.execute(select(hotdeal_slot.c.quantity).where(hotdeal_slot.c.prod_id == pid))
            .scalars()
            .all()
        )
        sold = {
            source: int(units)
            for source, units in conn.execute(
                select(order_history.c.source, func.sum(order_history.c.quantity))
                .where(order_history.c.prod_id == pid)
                .group_by(order_history.c.source)
            )
        }
        rows = conn.execute(
            select(func.count()).select_from(order_history).where(order_history.c.prod_id == pid)
        ).scalar_one()
        duplicates = conn.execute(
            select(func.count()).select_from(
                select(order_history.c.order_id)
                .group_by(order_history.c.order_id)
                .having(func.count() > 1)
                .subquery()
            )
        ).scalar_one()
        redis_rows = conn.execute(
            select(
                order_history.c.order_id, order_history.c.user_id, order_history.c.quantity
            ).where(order_history.c.prod_id == pid, order_history.c.source == "redis")
        ).all()
    return {
        "found": head is not None,
        "initial": int(head.initial_quantity) if head else None,
        "remaining": int(head.quantity) if head else None,
        "slots": [int(q) for q in slots],
        "sold": sold,
        "rows": int(rows),
        "duplicate_order_ids": int(duplicates),
        "redis_rows": redis_rows,
    }


def _stream_orders(client: redis.Redis, pid: int) -> list[dict[str, str]]:
    stream = redis_keys.orders_stream(pid)
    entries: list[dict[str, str]] = []
    start = "-"
    while True:
        batch = client.xrange(stream, min=start, count=5000)
        if not batch:
            return entries
        entries.extend(fields for _, fields in batch)
        start = "(" + batch[-1][0]


def _stock_books(
    design: str, initial: int, rows: list[int], sold: int, violations: list[str], *, negative: str
) -> dict[str, int]:
    """initial = remaining (over the design's stock rows) + units its orders took."""
    remaining = sum(rows)
    if min(rows) < 0:
        violations.append(f"{design}: {negative}")
    if initial != remaining + sold:
        violations.append(f"{design}: initial {initial} != remaining {remaining} + sold {sold}")
    return {"initial": initial, "remaining": remaining, "sold": sold}


def reconcile(engine: Engine, client: redis.Redis | None, product_id: int) -> dict[str, Any]:
    violations: list[str] = []
    db = _database_books(engine, product_id)
    report: dict[str, Any] = {"product_id": product_id}
    if not db["found"]:
        violations.append(f"product {product_id} is not in hotdeal_list (run reset)")
    else:
        initial, sold = db["initial"], db["sold"]
        report["legacy"] = _stock_books(
            "legacy",
            initial,
            [db["remaining"]],
            sold.get("legacy", 0),
            violations,
            negative="hotdeal_list.quantity is negative",
        )
        if db["slots"]:
            report["legacy_slots"] = _stock_books(
                "legacy-slots",
                initial,
                db["slots"],
                sold.get("legacy-slots", 0),
                violations,
                negative="a slot quantity is negative",
            )
            report["legacy_slots"]["slots"] = len(db["slots"])
    if db["duplicate_order_ids"]:
        violations.append(f"{db['duplicate_order_ids']} duplicate order ids in order_history")
    report["order_history"] = {"rows": db["rows"], "duplicate_order_ids": db["duplicate_order_ids"]}

    if client is not None:
        report["redis"] = _redis_books(client, product_id, db, violations)
    report["violations"] = violations
    report["ok"] = not violations
    return report


def _redis_books(
    client: redis.Redis, pid: int, db: dict[str, Any], violations: list[str]
) -> dict[str, Any]:
    pipe = client.pipeline(transaction=True)
    pipe.get(redis_keys.initial(pid))
    pipe.get(redis_keys.quantity(pid))
    pipe.get(redis_keys.sold(pid))
    pipe.hgetall(redis_keys.buyers(pid))
    initial, remaining, sold, buyers = pipe.execute()
    if initial is None or remaining is None:
        violations.append(f"redis: no stock keys for product {pid} (run reset)")
        return {"found": False}
    initial, remaining, sold = int(initial), int(remaining), int(sold or 0)

    persisted_ids = {r.order_id for r in db["redis_rows"]}
    by_user: Counter[str] = Counter()
    for r in db["redis_rows"]:
        by_user[r.user_id] += int(r.quantity)
    persisted = sum(by_user.values())
    in_flight = [o for o in _stream_orders(client, pid) if o["order_id"] not in persisted_ids]
    in_flight_ids = {o["order_id"] for o in in_flight}
    for o in in_flight:
        by_user[o["user_id"]] += int(o["quantity"])
    in_flight_units = sum(int(o["quantity"]) for o in in_flight)

    if remaining < 0:
        violations.append("redis: stock is negative")
    if initial != remaining + sold:
        violations.append(f"redis: initial {initial} != remaining {remaining} + sold {sold}")
    if sold != persisted + in_flight_units:
        violations.append(
            f"redis: sold {sold} != persisted {persisted} + in flight {in_flight_units} "
            "(an order was lost or duplicated)"
        )
    if persisted > initial:
        violations.append(f"redis: {persisted} units persisted, above the initial {initial}")
    if len(in_flight_ids) != len(in_flight):
        violations.append("redis: the same order id is queued twice")
    mismatched = {u for u in set(by_user) | set(buyers) if by_user[u] != int(buyers.get(u, 0))}
    if mismatched:
        violations.append(
            f"redis: per-user counts disagree with orders for {len(mismatched)} users"
        )
    return {
        "initial": initial,
        "remaining": remaining,
        "sold": sold,
        "persisted": persisted,
        "in_flight": in_flight_units,
        "in_flight_orders": len(in_flight),
        "buyers": len(buyers),
    }
