import pytest

from hotdeal.errors import ApiError
from hotdeal.validation import parse_idempotency_key, parse_order

GOOD = {"product_id": 1, "user_id": "u-1", "quantity": 2}


def test_good_order_parses():
    order = parse_order(GOOD, max_per_order=10)
    assert (order.product_id, order.user_id, order.quantity) == (1, "u-1", 2)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([], "JSON object"),
        ({**GOOD, "quantity": 0}, "quantity"),
        ({**GOOD, "quantity": 11}, "at most 10"),
        ({**GOOD, "quantity": "1"}, "quantity"),
        ({**GOOD, "quantity": True}, "quantity"),
        ({**GOOD, "quantity": 1.5}, "quantity"),
        ({**GOOD, "product_id": -1}, "product_id"),
        ({**GOOD, "user_id": ""}, "user_id"),
        ({**GOOD, "user_id": "a b"}, "user_id"),
        ({**GOOD, "user_id": "x" * 65}, "user_id"),
        ({"product_id": 1, "quantity": 1}, "user_id"),
        ({**GOOD, "coupon": "FREE"}, "coupon"),
    ],
)
def test_bad_orders_get_a_clear_400(body, fragment):
    with pytest.raises(ApiError) as err:
        parse_order(body, max_per_order=10)
    assert err.value.status == 400
    assert err.value.code == "invalid_request"
    assert fragment in err.value.message


@pytest.mark.parametrize("key", ["", "has space", "k" * 129])
def test_bad_idempotency_keys(key):
    with pytest.raises(ApiError):
        parse_idempotency_key(key)


def test_idempotency_key_optional():
    assert parse_idempotency_key(None) is None
    assert parse_idempotency_key("abc-123") == "abc-123"
