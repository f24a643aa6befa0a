"""Parsing of order requests: strict types, clear messages, nothing coerced."""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from hotdeal.errors import ApiError, unknown_order

MAX_USER_ID = 64
MAX_IDEMPOTENCY_KEY = 128
# Control, format, surrogate, private-use, unassigned and separator characters: a
# database may refuse them (PostgreSQL rejects U+0000 and lone surrogates), a log or a
# terminal may act on them, and no game's user id needs them.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"}
_KEY = re.compile(rf"[!-~]{{1,{MAX_IDEMPOTENCY_KEY}}}")


def _printable(value: str) -> str:
    for ch in value:
        if unicodedata.category(ch) in _REFUSED_CATEGORIES or ch.isspace():
            raise ValueError("must not contain whitespace, control or unassigned characters")
    return value


UserId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_USER_ID),
    AfterValidator(_printable),
]


class OrderRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    product_id: int = Field(ge=1, le=2_000_000_000)
    user_id: UserId
    quantity: int = Field(ge=1)


def _describe(err: ValidationError) -> str:
    # e["msg"] only, never e["input"]: the answer must not echo what the client sent.
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()
    )


def parse_order(body: Any, max_per_order: int) -> OrderRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "body must be a JSON object")
    try:
        order = OrderRequest.model_validate(body)
    except ValidationError as err:
        raise ApiError(400, "invalid_request", _describe(err)) from None
    if order.quantity > max_per_order:
        raise ApiError(
            400, "invalid_request", f"quantity: must be at most {max_per_order} per order"
        )
    return order


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


def parse_user_id(raw: str | None) -> str:
    if raw is None or not 1 <= len(raw) <= MAX_USER_ID:
        raise ApiError(400, "invalid_request", f"user_id: 1 to {MAX_USER_ID} characters")
    try:
        return _printable(raw)
    except ValueError as exc:
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
