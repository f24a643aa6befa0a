"""Names of every Redis key the services, the writer and the ops job share.

`prod-001-quantity` is the workshop's own key, kept so its `redis-cli get` still works.
"""

from __future__ import annotations

# Set of the order streams the writers must drain (one stream per product).
STREAMS = "hotdeal:streams"
# Set of the product ids `hotdeal-ops reset` has set up (for the stock gauges).
PRODUCTS = "hotdeal:products"
WRITER_GROUP = "order-writers"
# Stream entries no writer could parse, kept for a human to look at.
DEAD_LETTER = "hotdeal:dead-letter"


def prefix(product_id: int) -> str:
    return f"prod-{product_id:03d}"


def quantity(product_id: int) -> str:
    return f"{prefix(product_id)}-quantity"


def initial(product_id: int) -> str:
    return f"{prefix(product_id)}-initial"


def sold(product_id: int) -> str:
    return f"{prefix(product_id)}-sold"


def opens_at(product_id: int) -> str:
    """Opening time, epoch milliseconds; absent = open."""
    return f"{prefix(product_id)}-opens-at"


def buyers(product_id: int) -> str:
    """Hash user_id -> units bought, for the per-user limit."""
    return f"{prefix(product_id)}-buyers"


def orders_stream(product_id: int) -> str:
    return f"{prefix(product_id)}-orders"


def idempotency(product_id: int, user_id: str, key: str) -> str:
    return f"{prefix(product_id)}-idem:{user_id}:{key}"


def all_of(product_id: int) -> str:
    """SCAN pattern matching every key of one product."""
    return f"{prefix(product_id)}-*"
