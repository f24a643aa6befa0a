"""Taking stock in Redis: the Python side of take_stock.lua / give_back.lua."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files

import redis
from sqlalchemy import Engine

from hotdeal import errors, redis_keys
from hotdeal.errors import ApiError
from hotdeal.history import OrderRow, insert_new, new_order_id
from hotdeal.validation import OrderRequest

SOURCE = "redis"


def _script(name: str) -> str:
    return files(__package__).joinpath(name).read_text()


@dataclass(frozen=True)
class Taken:
    order_id: str
    remaining: int
    ordered_at: datetime
    replayed: bool


class RedisStock:
    """Stock of every product, in Redis. `write` is "stream" (write-behind: the order
    record is enqueued in the same atomic step) or "inline" (inserted into the RDBMS
    inside the request, as the workshop did)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        write: str,
        engine: Engine | None = None,
        hold_ms: int = 0,
        idempotency_ttl_s: int = 86400,
    ) -> None:
        if write == "inline" and engine is None:
            raise ValueError("inline order writes need a database engine")
        self.client = client
        self.write = write
        self.engine = engine
        self.hold_s = hold_ms / 1000
        self.idempotency_ttl_s = idempotency_ttl_s
        self._take = client.register_script(_script("take_stock.lua"))
        self._give_back = client.register_script(_script("give_back.lua"))

    def warm_up(self) -> None:
        """Load the scripts and open a connection now, not on the first buyer's request.
        Best effort: a Redis that is down at start-up is /readyz's business."""
        try:
            for script in (self._take, self._give_back):
                script.sha = self.client.script_load(script.script)
        except redis.RedisError:
            pass

    def take(self, order: OrderRequest, *, limit: int, idempotency_key: str | None) -> Taken:
        pid, user = order.product_id, order.user_id
        idem = redis_keys.idempotency(pid, user, idempotency_key) if idempotency_key else ""
        keys = [
            redis_keys.quantity(pid),
            redis_keys.sold(pid),
            redis_keys.buyers(pid),
            redis_keys.opens_at(pid),
            redis_keys.orders_stream(pid),
            idem,
        ]
        args = [
            order.quantity,
            user,
            limit,
            new_order_id(),
            pid,
            "1" if self.write == "stream" else "0",
            self.idempotency_ttl_s,
        ]
        status, *rest = self._take(keys=keys, args=args)
        if status in ("ok", "replay"):
            remaining, order_id, at_ms = int(rest[0]), rest[1], int(rest[2])
            taken = Taken(
                order_id,
                remaining,
                datetime.fromtimestamp(at_ms / 1000, UTC),
                replayed=status == "replay",
            )
            if status == "ok" and self.write == "inline":
                self._insert_inline(order, taken, keys, idem)
            return taken
        raise _refusal(status, rest, order, limit)

    def _insert_inline(self, order: OrderRequest, taken: Taken, keys: list[str], idem: str) -> None:
        row = OrderRow(
            taken.order_id,
            order.product_id,
            order.user_id,
            order.quantity,
            SOURCE,
            taken.ordered_at,
        )
        assert self.engine is not None
        try:
            with self.engine.begin() as conn:
                insert_new(conn, [row])
                time.sleep(self.hold_s)  # the workshop's work, inside the transaction
        except Exception:
            # Nothing was sold if the row is not stored: put the stock back.
            self._give_back(
                keys=[keys[0], keys[1], keys[2], idem], args=[order.quantity, order.user_id]
            )
            raise


def _refusal(status: str, rest: list[str], order: OrderRequest, limit: int) -> ApiError:
    if status == "sold_out":
        return errors.sold_out(int(rest[0]))
    if status == "limit_exceeded":
        return errors.limit_exceeded(limit)
    if status == "not_open":
        opens = datetime.fromtimestamp(int(rest[0]) / 1000, UTC)
        return errors.not_open(opens.isoformat())
    if status == "unknown":
        return errors.unknown_product(order.product_id)
    if status == "key_reused":
        return ApiError(
            422,
            "idempotency_key_reused",
            f"this Idempotency-Key was first used for quantity {rest[0]}",
        )
    raise RuntimeError(f"take_stock.lua returned {status!r}")
