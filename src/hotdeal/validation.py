"""Parsing of order requests: strict types, clear messages, nothing coerced."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from hotdeal.errors import ApiError

UserId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^\S+$")
]
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^\S+$")]


class OrderRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    product_id: int = Field(ge=1, le=2_000_000_000)
    user_id: UserId
    quantity: int = Field(ge=1)


def _describe(err: ValidationError) -> str:
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
    if not raw or len(raw) > 128 or any(c.isspace() for c in raw):
        raise ApiError(
            400, "invalid_request", "Idempotency-Key: 1 to 128 characters, no whitespace"
        )
    return raw
