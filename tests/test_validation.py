import pytest

from hotdeal.errors import ApiError
from hotdeal.redis_keys import product_of_order
from hotdeal.validation import parse_idempotency_key, parse_order, parse_product_id

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


# The last three are digits to str.isdigit(): superscript 1, Arabic-Indic 3, fullwidth 1.
@pytest.mark.parametrize(
    "raw", ["", "0", "-1", "+1", " 1", "1.0", "2000000001", "\u00b9", "\u0663", "\uff11"]
)
def test_bad_product_ids_in_a_query_get_a_clear_400(raw):
    with pytest.raises(ApiError) as caught:
        parse_product_id(raw)
    assert caught.value.status == 400


def test_order_ids_with_non_ascii_digits_name_no_product():
    assert product_of_order("12-abc") == 12
    assert product_of_order("\u00b9-abc") is None
    assert product_of_order("\u0663-abc") is None
