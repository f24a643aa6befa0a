"""The API's error vocabulary and which backend failures mean "unavailable"."""

from __future__ import annotations

import redis.exceptions
import sqlalchemy.exc


class ApiError(Exception):
    """An answer with a 4xx/5xx status and a JSON body `{"error": code, "message": ...}`."""

    def __init__(self, status: int, code: str, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, object]:
        return {"error": self.code, "message": self.message, **self.extra}


def sold_out(remaining: int) -> ApiError:
    return ApiError(409, "sold_out", "not enough stock for this order", remaining=remaining)


def limit_exceeded(limit: int) -> ApiError:
    return ApiError(409, "limit_exceeded", f"at most {limit} per user for this product")


def not_open(opens_at: str) -> ApiError:
    return ApiError(409, "not_open", "the event has not opened yet", opens_at=opens_at)


def unknown_product(product_id: int) -> ApiError:
    return ApiError(404, "unknown_product", f"no event product {product_id}")


# Failures of a backend (not of the request): the client should retry later -> 503.
UNAVAILABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
)


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, UNAVAILABLE):
        return True
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated
