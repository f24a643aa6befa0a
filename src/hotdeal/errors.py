"""The API's error vocabulary and which backend failures mean "unavailable"."""

from __future__ import annotations

import re
from dataclasses import dataclass

import redis.exceptions
import sqlalchemy.exc


@dataclass(frozen=True)
class Outcome:
    """One kind of answer an order can get. `counted`: an outcome of its own in
    hotdeal_orders_total{result} (any other failure is "rejected"); `names_product`: the
    answer proves the product exists, so the request is labelled with it (clients can't
    mint series with product ids that don't exist); `meaning`: what it tells a client
    (the OpenAPI document's description of the error answers)."""

    status: int
    meaning: str
    counted: bool = False
    names_product: bool = False


# Every error code the services answer, the one place that says what each means for its
# status, the metric, the product label (hotdeal.web) and the OpenAPI document's enum
# and description (a test holds the document to it). "ok" is the 201, "error" the 500
# no promise allows.
OUTCOMES: dict[str, Outcome] = {
    "invalid_request": Outcome(400, "bad input; nothing was coerced or sold"),
    "unauthorized": Outcome(401, "no bearer token"),
    "invalid_token": Outcome(401, "a token that does not verify"),
    "insufficient_scope": Outcome(403, "the token may not do this (another buyer's order)"),
    "pass_required": Outcome(
        403,
        "the product sells through its waiting room: join it",
        counted=True,
        names_product=True,
    ),
    "invalid_pass": Outcome(403, "a waiting-room pass forged, expired or another's"),
    "invalid_ticket": Outcome(403, "a waiting-room ticket forged, expired or another's"),
    "unknown_product": Outcome(404, "no such event product"),
    "unknown_order": Outcome(404, "no such order"),
    "not_found": Outcome(404, "no such route"),
    "method_not_allowed": Outcome(405, "not a method of this route"),
    "sold_out": Outcome(409, "not enough stock left", counted=True, names_product=True),
    "limit_exceeded": Outcome(
        409, "the buyer's per-product limit is reached", counted=True, names_product=True
    ),
    "not_open": Outcome(409, "the event has not opened", counted=True, names_product=True),
    "in_progress": Outcome(
        409,
        "the first request with this Idempotency-Key still runs: retry",
        counted=True,
        names_product=True,
    ),
    # Reservations' confirm and cancel (counted in hotdeal_holds_settled_total).
    "expired": Outcome(
        409, "the hold was not confirmed by its deadline: its units went back (refund)"
    ),
    "cancelled": Outcome(409, "the hold was cancelled: its units went back (refund)"),
    "confirmed": Outcome(409, "the hold is confirmed (paid): it can't be cancelled"),
    "not_reserved": Outcome(409, "the order is an outright sale, not a hold"),
    "request_entity_too_large": Outcome(413, "a body over 4 KiB"),
    "request_uri_too_long": Outcome(414, "a URI too long"),
    "idempotency_key_reused": Outcome(
        422, "the Idempotency-Key was used for another quantity", names_product=True
    ),
    "error": Outcome(500, "a bug", counted=True),
    "unavailable": Outcome(503, "a backend is down; nothing was sold", counted=True),
    "outcome_unknown": Outcome(
        503,
        "it may have sold: retry with the same Idempotency-Key or look your orders up",
        counted=True,
    ),
    "paused": Outcome(
        503,
        "selling is paused while the product's books are checked or repaired",
        counted=True,
        names_product=True,
    ),
}
# hotdeal_orders_total{result}: "ok", the counted codes, and "rejected" for the rest.
METRIC_RESULTS = ("ok", *(code for code, o in OUTCOMES.items() if o.counted), "rejected")


class ApiError(Exception):
    """An answer with a 4xx/5xx status and a JSON body `{"error": code, "message": ...}`;
    `code` is one of OUTCOMES, with its status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: object,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, object]:
        return {"error": self.code, "message": self.message, **self.extra}


class NotReady(RuntimeError):
    """A readiness check's own verdict; its message is safe to show."""


class Degraded(RuntimeError):
    """A readiness check's "ready, but": the pod stays in service and /readyz says why
    (e.g. the JWKS endpoint is down and the cached keys still verify)."""


def sold_out(remaining: int) -> ApiError:
    return ApiError(409, "sold_out", "not enough stock for this order", remaining=remaining)


def limit_exceeded(limit: int, orders: list[str]) -> ApiError:
    return ApiError(
        409, "limit_exceeded", f"at most {limit} per user for this product", orders=orders
    )


def not_open(opens_at: str) -> ApiError:
    return ApiError(409, "not_open", "the event has not opened yet", opens_at=opens_at)


def released(state: str, order_id: str) -> ApiError:
    """A confirm of a hold whose units went back ("expired" or "cancelled"): the payment
    must be refunded."""
    why = "its deadline passed" if state == "expired" else "it was cancelled"
    return ApiError(
        409,
        state,
        f"hold {order_id} was released ({why}): refund the payment",
        order_id=order_id,
        state=state,
    )


def already_confirmed(order_id: str) -> ApiError:
    return ApiError(
        409,
        "confirmed",
        f"hold {order_id} is confirmed (paid): it can't be cancelled",
        order_id=order_id,
        state="confirmed",
    )


def not_reserved() -> ApiError:
    return ApiError(409, "not_reserved", "this order is an outright sale, not a hold")


def pass_required(product_id: int) -> ApiError:
    return ApiError(
        403,
        "pass_required",
        f"product {product_id} sells through its waiting room: join it (POST /v1/queue) "
        "and order with the pass it gives (Hotdeal-Pass)",
    )


def key_reused(first_quantity: int) -> ApiError:
    return ApiError(
        422,
        "idempotency_key_reused",
        f"this Idempotency-Key was first used for quantity {first_quantity}",
    )


def unknown_product(product_id: int) -> ApiError:
    return ApiError(404, "unknown_product", f"no event product {product_id}")


def unknown_order() -> ApiError:
    return ApiError(404, "unknown_order", "no such order")


def in_progress() -> ApiError:
    return ApiError(
        409,
        "in_progress",
        "the first request with this Idempotency-Key is still running: retry",
        headers={"Retry-After": "1"},
    )


def unavailable() -> ApiError:
    """Nothing was sold: the request never reached the point of taking stock."""
    return ApiError(
        503, "unavailable", "a backend is unavailable, retry later", headers={"Retry-After": "1"}
    )


def outcome_unknown() -> ApiError:
    """The take was sent but its durable answer never came: it may or may not have sold.
    Retrying with the same Idempotency-Key (or looking the user's orders up) tells."""
    return ApiError(
        503,
        "outcome_unknown",
        "the order may or may not have been placed: retry with the same Idempotency-Key "
        "or look up your orders",
        headers={"Retry-After": "1"},
    )


class CommitUnknown(ApiError):
    """COMMIT was sent and its answer never came (connection lost, reply dropped): the
    transaction may have committed. Never "nothing was sold", and never a give-back
    before the row is known to be absent."""

    def __init__(self) -> None:
        unknown = outcome_unknown()
        super().__init__(unknown.status, unknown.code, unknown.message, headers=unknown.headers)


def paused(reason: str) -> ApiError:
    return ApiError(
        503,
        "paused",
        "selling this product is paused until its books are repaired",
        headers={"Retry-After": "5"},
        reason=reason,
    )


def validating() -> ApiError:
    """Nothing was sold: this Redis server's books are not checked against the database
    yet (it restarted, was restored or promoted); a writer does that within a second."""
    return ApiError(
        503,
        "paused",
        "selling this product is paused while its books are checked against the database",
        headers={"Retry-After": "1"},
        reason="validating: the Redis server changed since the books were last checked",
    )


# Failures of a backend (not of the request): the client should retry later -> 503.
UNAVAILABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    # A full Redis (maxmemory, noeviction) refuses the write before it runs: nothing was
    # done (the take says so itself; the waiting room's join and poll fell through to 500).
    redis.exceptions.OutOfMemoryError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
)

# Oracle and python-oracledb errors that mean "the database is not there (yet)", not
# "this statement is wrong": instance starting or not open, listener or service not up,
# connection lost, logon refused while gvenzl's entrypoint is still creating the user.
ORACLE_TRANSIENT = re.compile(
    r"\b(ORA-(01033|01034|01089|01090|01109|01017|03113|03114|03135|12514|12516|12518|12519|"
    r"12520|12521|12528|12537|12541|12543|12547|25408)|DPY-(4011|6005|6000|6001))\b"
)
# A database that refuses every write or has no room: read-only (a standby, a
# failover in progress), out of disk or memory, shutting down. Not this request's fault:
# it answers 503 and sold nothing (its transaction rolled back). PostgreSQL SQLSTATE
# classes 25 (25006 read-only), 53 (insufficient resources), 57 (operator intervention),
# 08 (connection); Oracle read-only, tablespace and quota full, archiver stuck, shared
# pool exhausted.
REFUSING_SQLSTATE = re.compile(r"^(25006|53|57|08)")
ORACLE_REFUSING = re.compile(r"\bORA-(16000|01653|01654|01536|00257|04031|01552|30036)\b")
# A deadlock or serialization failure: the database rolled the transaction back and the
# same transaction may simply be run again (PostgreSQL SQLSTATEs, Oracle ORA-00060).
RETRYABLE_SQLSTATE = {"40P01", "40001", "55P03"}
ORACLE_RETRYABLE = re.compile(r"\bORA-(00060|00054|30006|08177)\b")


# The database is up and refuses this login: a wrong password or user (ORA-01017,
# PostgreSQL's 28P01/28000, which libpq reports in the message of a failed connect).
ORACLE_LOGON_REFUSED = re.compile(r"\bORA-(01017|28000|01005)\b")
PG_LOGON_REFUSED = re.compile(
    r"password authentication failed|role \"[^\"]*\" does not exist|is not permitted to log in"
)
DATABASE_CODE = re.compile(r"\b(ORA-\d{5}|DPY-\d{4})\b")


def error_code(exc: BaseException) -> str:
    """What a log line may say of a database failure: its code (ORA-01017, DPY-6005, a
    SQLSTATE, "logon refused") or its class; never the message, which can quote a
    statement's parameters."""
    orig = getattr(exc, "orig", None) or exc
    found = DATABASE_CODE.search(str(orig))
    if found:
        return found.group(1)
    if PG_LOGON_REFUSED.search(str(orig)):
        return "logon refused"
    sqlstate = getattr(orig, "sqlstate", None)
    return f"SQLSTATE {sqlstate}" if sqlstate else exc.__class__.__name__


def is_logon_refused(exc: BaseException) -> bool:
    """A wrong user or password: retrying will not help once the database is set up."""
    orig = str(getattr(exc, "orig", None) or exc)
    return bool(ORACLE_LOGON_REFUSED.search(orig) or PG_LOGON_REFUSED.search(orig))


def is_refusing(exc: BaseException) -> bool:
    """The database refuses writes as a whole (read-only, full), by its error code."""
    if not isinstance(exc, sqlalchemy.exc.DBAPIError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return bool(REFUSING_SQLSTATE.match(sqlstate) or ORACLE_REFUSING.search(str(exc.orig)))


# Redis refusals by their code (redis-py has a class for only some, and strips the code
# of those): a refusal of the whole command, or of a script's first write (once a script
# has written, Redis lets it finish), so nothing was done. Busy running a script, a
# replica cut off from its primary, a full Redis, a replica, a failed save, too few
# replicas.
REDIS_REFUSALS = frozenset(("BUSY", "MASTERDOWN", "OOM", "READONLY", "MISCONF", "NOREPLICAS"))


def redis_refused(exc: BaseException) -> bool:
    """Redis refused the command (see REDIS_REFUSALS): nothing was done."""
    return isinstance(exc, redis.exceptions.ResponseError) and (
        isinstance(exc, redis.exceptions.OutOfMemoryError | redis.exceptions.ReadOnlyError)
        or str(exc).split(" ", 1)[0] in REDIS_REFUSALS
    )


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, UNAVAILABLE) or redis_refused(exc):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        return (
            exc.connection_invalidated
            or is_refusing(exc)
            or bool(ORACLE_TRANSIENT.search(str(exc.orig)))
        )
    return False


def is_retryable_transaction(exc: BaseException) -> bool:
    """Deadlock victim, lock-not-available (NOWAIT) or serialization failure."""
    if not isinstance(exc, sqlalchemy.exc.DBAPIError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate in RETRYABLE_SQLSTATE or bool(ORACLE_RETRYABLE.search(str(exc.orig)))
