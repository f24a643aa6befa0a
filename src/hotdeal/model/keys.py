"""Names of every Redis key the services, the writer and the ops job share.

Every key of one product carries the hash tag `{prod-NNN}`, so they all live in one
slot: the take script touches several of them atomically, which Redis Cluster (and
ElastiCache cluster mode) allows only within one slot.
"""

from __future__ import annotations

from functools import cache

# Set of the order streams the writers must drain (one stream per product).
STREAMS = "hotdeal:streams"
# Set of the product ids `hotdeal-ops reset` has set up (for the stock gauges).
PRODUCTS = "hotdeal:products"
WRITER_GROUP = "order-writers"
# On one Redis: the run_id of the server on which every product of the database has been
# checked (hotdeal.fence.validate_all). Until it is this server's, a take that finds no
# books answers 503, not "unknown product": the server may have come back empty.
INSTANCE = "hotdeal:instance"

# Fields of the per-product books hash (`books`).
QUANTITY = "quantity"  # units left
INITIAL = "initial"  # units the event started with
SOLD = "sold"  # units taken
SEQ = "seq"  # takes so far: every take gets the next number (never reused in an epoch)
EPOCH = "epoch"  # bumped by reset and repair: (epoch, seq) orders every take ever made
GENERATION = "generation"  # the event (hotdeal_list.generation)
OPENS_AT = "opens_at"  # epoch milliseconds; absent = open
PAUSED = "paused"  # why selling stopped (absent = selling)
INLINE_PENDING = "inline_pending"  # inline mode: units taken, row not settled yet
# Reservations: the payment window (ms; absent or 0 = outright sales), and the units
# taken by holds not confirmed yet (counted in `sold` too: initial = quantity + sold).
WINDOW = "window_ms"
HELD = "held"
# Units released holds gave back, ever (in this epoch's books): `sold` + `released`
# only grows, as the database's rows of the event do (hotdeal.fence compares them).
RELEASED = "released"
# run_id of the Redis server on which the books were last checked against the database
# (reset, repair, hotdeal.fence.validate): on any other server nothing is sold.
VALIDATED = "validated"


def prefix(product_id: int) -> str:
    return f"{{prod-{product_id:03d}}}"


def books(product_id: int) -> str:
    """Hash of the fields above: one read gives the take script all it needs."""
    return f"{prefix(product_id)}-books"


def buyers(product_id: int) -> str:
    """Hash user_id -> units bought, for the per-user limit."""
    return f"{prefix(product_id)}-buyers"


def buyer_orders(product_id: int) -> str:
    """Hash user_id -> space-separated order ids (what `limit_exceeded` names)."""
    return f"{prefix(product_id)}-buyer-orders"


def orders(product_id: int) -> str:
    """Hash order_id -> "user_id quantity ordered_at_ms" (GET /v1/orders/{id})."""
    return f"{prefix(product_id)}-orders"


def orders_stream(product_id: int) -> str:
    return f"{prefix(product_id)}-stream"


def product_of_stream(stream: str) -> int | None:
    """The product of an orders stream's name; None for a name of another layout (chart
    0.1.0's "prod-001-orders")."""
    head, sep, rest = stream.partition("}")
    digits = head.removeprefix("{prod-")
    if sep and rest == "-stream" and head.startswith("{prod-") and digits.isdigit():
        return int(digits)
    return None


def dead_letter(product_id: int) -> str:
    """Stream of the product's orders no writer could store, each with the reason, for a
    human to look at (in the product's slot: moved there in one transaction)."""
    return f"{prefix(product_id)}-dead-letter"


def inline_takes(product_id: int) -> str:
    """Hash order_id -> "quantity at_ms user_id idempotency_key" of the product's inline
    takes not settled yet (hotdeal.inline); a rebuild deletes it with the books."""
    return f"{prefix(product_id)}-inline"


def holds(product_id: int) -> str:
    """Hash order_id -> "quantity expires_ms user_id take_epoch take_seq key" of the
    product's holds not settled yet (hotdeal.model.records.Sale.hold_record)."""
    return f"{prefix(product_id)}-holds"


def deadlines(product_id: int) -> str:
    """Sorted set order_id -> expires_ms of the same holds: the next to expire first."""
    return f"{prefix(product_id)}-deadlines"


def room(product_id: int) -> str:
    """Hash of the product's waiting room (hotdeal.room): its event, mode, rate, pass
    lifetime and admission frontier. Absent, or of another event: no room."""
    return f"{prefix(product_id)}-room"


def room_line(product_id: int) -> str:
    """Sorted set buyer -> place in the waiting room's line."""
    return f"{prefix(product_id)}-room-line"


def room_admitted(product_id: int) -> str:
    """Hash buyer -> when its place was first seen admitted (epoch ms): the wait metric."""
    return f"{prefix(product_id)}-room-admitted"


@cache
def take_keys(product_id: int) -> tuple[str, str, str, str, str]:
    """The keys every take touches, in take_stock.lua's KEYS order (kept per product:
    built on every order they cost a few microseconds)."""
    return (
        books(product_id),
        buyers(product_id),
        buyer_orders(product_id),
        orders(product_id),
        orders_stream(product_id),
    )


@cache  # on every take, like take_keys
def sync_mark(product_id: int) -> str:
    """A small key a reader overwrites so that a durability wait covers what it read."""
    return f"{prefix(product_id)}-sync"


def idempotency(product_id: int, user_id: str, key: str) -> str:
    # Length-prefixed: user "a" with key "b:c" and user "a:b" with key "c" must differ.
    # hold.lua builds the same name from idempotency_prefix (a release drops the key).
    return f"{idempotency_prefix(product_id)}{len(user_id)}:{user_id}:{key}"


def idempotency_prefix(product_id: int) -> str:
    return f"{prefix(product_id)}-idem:"


def idempotency_pattern(product_id: int) -> str:
    """SCAN pattern of the product's Idempotency-Key records (`{` escaped for glob)."""
    return f"\\{{prod-{product_id:03d}\\}}-idem:*"


def idempotency_placeholder(product_id: int) -> str:
    """Declared in place of a missing Idempotency-Key: scripts must only touch keys they
    declare, and in a cluster every declared key must hash to the product's slot."""
    return f"{prefix(product_id)}-idem"


@cache  # on every take in a cluster
def instance_placeholder(product_id: int) -> str:
    """Declared in place of INSTANCE in a cluster (a script's keys share one slot)."""
    return f"{prefix(product_id)}-instance"


def all_of(product_id: int) -> str:
    """SCAN pattern matching every key of one product (`{` escaped for glob)."""
    return f"\\{{prod-{product_id:03d}\\}}-*"


def product_of_order(order_id: str) -> int | None:
    """Order ids are "<product>-<uuid>": the product says where to look the order up."""
    head, sep, _ = order_id.partition("-")
    # isascii(): isdigit() alone takes digits int() refuses ("¹") or reads otherwise.
    return int(head) if sep and head.isascii() and head.isdigit() and len(head) <= 10 else None
