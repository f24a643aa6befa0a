"""`hotdeal-ops dead-letters list | requeue`: the orders the writers set aside.

A dead letter is an answered order (201) that the database refused on its own while
accepting others (hotdeal_order_redis.writer). Its units stay sold: repair and
reconcile count it. Once the cause is fixed (a constraint, a trigger, a column too
narrow), `requeue` moves the entries back to the product's order stream, in one
transaction per product, and the writers store them like any other order.
"""

from __future__ import annotations

from typing import Any

from hotdeal.model import keys
from hotdeal.redis_client import Client

# What the writer adds to an entry when it sets it aside (the rest is the order).
ASIDE = ("stream", "id", "reason")


def listing(client: Client, pid: int) -> dict[str, Any]:
    """The product's dead letters, without the orders' values (a user id is personal)."""
    entries = client.xrange(keys.dead_letter(pid))
    return {
        "product_id": pid,
        "dead_letters": [
            {
                "id": entry_id,
                "order_id": fields.get("order_id"),
                "generation": fields.get("generation"),
                "quantity": fields.get("quantity"),
                "reason": fields.get("reason"),
            }
            for entry_id, fields in entries
        ],
    }


# Each entry moves once, however many requeues run at once: only the one whose XDEL
# removed it adds it to the stream.
MOVE = """
if redis.call("XDEL", KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call("XADD", KEYS[2], "*", unpack(ARGV, 2))
return 1
"""


def requeue(client: Client, pid: int, *, ids: list[str] | None = None) -> dict[str, Any]:
    """Move dead letters (all, or `ids`) back to the order stream for the writers."""
    dead = keys.dead_letter(pid)
    stream = keys.orders_stream(pid)
    moved = []
    for entry_id, fields in client.xrange(dead):
        if ids is not None and entry_id not in ids:
            continue
        order = [x for k, v in fields.items() if k not in ASIDE for x in (k, v)]
        if client.eval(MOVE, 2, dead, stream, entry_id, *order) == 1:
            moved.append(entry_id)
    return {"product_id": pid, "requeued": len(moved), "ids": moved}
