"""Parsing of order requests: strict types, clear messages, nothing coerced (but 339.0
is the JSON number 339)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from hotdeal.errors import ApiError, unknown_order

if TYPE_CHECKING:
    from hotdeal.identity import Caller

MAX_USER_ID = 64
MAX_IDEMPOTENCY_KEY = 128
# Buyer ids and Idempotency-Keys: printable ASCII, no whitespace. A database may refuse
# other characters (PostgreSQL rejects U+0000), a log or a terminal may act on them, and
# an identity provider's subjects (UUIDs, numbers) need none of them. The OpenAPI
# document states the same patterns (USER_ID_PATTERN).
USER_ID_PATTERN = rf"^[!-~]{{1,{MAX_USER_ID}}}$"
_USER_ID = re.compile(USER_ID_PATTERN[1:-1])
_KEY = re.compile(rf"[!-~]{{1,{MAX_IDEMPOTENCY_KEY}}}")


class UserIdError(ValueError):
    pass


def check_user_id(value: object) -> str:
    if not isinstance(value, str) or not _USER_ID.fullmatch(value):
        raise UserIdError(f"1 to {MAX_USER_ID} printable ASCII characters, no whitespace")
    return value


def _user_id(value: str) -> str:
    try:
        return check_user_id(value)
    except UserIdError as exc:
        raise ValueError(str(exc)) from None


def _integral(value: Any) -> Any:
    # JSON has numbers, not ints: 339.0 is the integer 339 (as JSON Schema's "integer"
    # says), 339.5 is not. Booleans stay refused (strict mode).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


UserId = Annotated[str, AfterValidator(_user_id)]
Count = Annotated[int, BeforeValidator(_integral)]


class OrderBody(BaseModel):
    """POST /v1/orders as sent: `user_id` only confirms (or, with the act-for scope,
    names) the buyer; the token says who is buying (hotdeal.identity)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    product_id: Count = Field(ge=1, le=2_000_000_000)
    # Absent, not null: the document says string (null was accepted: schemathesis).
    user_id: UserId | None = None
    quantity: Count = Field(ge=1)

    @field_validator("user_id", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must be a string (leave it out to buy as the token's buyer)")
        return value


class QueueBody(BaseModel):
    """POST /v1/queue: a place in the product's waiting room (for the token's buyer, or
    the one named with the act-for scope)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    product_id: Count = Field(ge=1, le=2_000_000_000)
    user_id: UserId | None = None

    _not_null = field_validator("user_id", mode="before")(OrderBody._not_null.__func__)


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """An order as the stores take it: its buyer known."""

    product_id: int
    user_id: str
    quantity: int


def _describe(err: ValidationError) -> str:
    # e["msg"] only, never e["input"]: the answer must not echo what the client sent.
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()
    )


Body = TypeVar("Body", bound=BaseModel)


def _validated(model: type[Body], body: Any) -> Body:
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as err:
        raise ApiError(400, "invalid_request", _describe(err)) from None


def parse_order(body: Any, max_per_order: int, caller: Caller) -> OrderRequest:
    order = _validated(OrderBody, body)
    if order.quantity > max_per_order:
        raise ApiError(
            400, "invalid_request", f"quantity: must be at most {max_per_order} per order"
        )
    return OrderRequest(order.product_id, caller.buyer(order.user_id), order.quantity)


def parse_queue(body: Any, caller: Caller) -> tuple[int, str]:
    """(product, buyer) of a request for a place in a waiting room."""
    place = _validated(QueueBody, body)
    return place.product_id, caller.buyer(place.user_id)


def parse_idempotency_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not _KEY.fullmatch(raw):
        raise ApiError(
            400,
            "invalid_request",
            f"Idempotency-Key: 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters, "
            "no whitespace",
        )
    return raw


def parse_user_id(raw: str | None) -> str | None:
    """A lookup's user_id (absent: the caller's own)."""
    if raw is None:
        return None
    try:
        return check_user_id(raw)
    except UserIdError as exc:
        raise ApiError(400, "invalid_request", f"user_id: {exc}") from None


# ASCII digits only: str.isdigit() also takes "¹" (which int() refuses: a 500, found by
# the fuzzed contract test) and "٣" (which int() reads as 3).
_PRODUCT_ID = re.compile(r"[0-9]{1,10}")


def parse_product_id(raw: str | None) -> int:
    if raw is None or not _PRODUCT_ID.fullmatch(raw) or not 1 <= int(raw) <= 2_000_000_000:
        raise ApiError(400, "invalid_request", "product_id: an integer from 1 to 2000000000")
    return int(raw)


_ORDER_ID = re.compile(r"[0-9a-zA-Z-]{1,48}")


def parse_order_id(raw: str) -> str:
    """Anything that can't be an order id ("<product>-<uuid>") is no order: 404, without
    reaching a backend (a database may choke on what a path can carry, e.g. NUL)."""
    if not _ORDER_ID.fullmatch(raw):
        raise unknown_order()
    return raw
