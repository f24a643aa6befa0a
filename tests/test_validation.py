import pytest

from hotdeal.errors import ApiError
from hotdeal.identity import TRUSTING, Caller
from hotdeal.model.keys import product_of_order
from hotdeal.validation import parse_idempotency_key, parse_order, parse_product_id

GOOD = {"product_id": 1, "user_id": "u-1", "quantity": 2}
BUYER = Caller("u-1", False, "hotdeal:act_for_buyer")
SERVICE = Caller("game-server", True, "hotdeal:act_for_buyer")


def test_good_order_parses():
    order = parse_order(GOOD, max_per_order=10, caller=TRUSTING)
    assert (order.product_id, order.user_id, order.quantity) == (1, "u-1", 2)


def test_an_integral_json_number_is_that_integer():
    # JSON Schema's "integer" takes 339.0; so does the service (339.5 stays refused).
    order = parse_order({**GOOD, "quantity": 2.0, "product_id": 1.0}, 10, TRUSTING)
    assert (order.product_id, order.quantity) == (1, 2)
    assert type(order.quantity) is int


def test_the_token_names_the_buyer():
    assert parse_order({"product_id": 1, "quantity": 1}, 10, BUYER).user_id == "u-1"
    assert parse_order(GOOD, 10, BUYER).user_id == "u-1"
    with pytest.raises(ApiError) as err:
        parse_order({**GOOD, "user_id": "someone-else"}, 10, BUYER)
    assert (err.value.status, err.value.code) == (403, "insufficient_scope")
    assert 'scope="hotdeal:act_for_buyer"' in err.value.headers["WWW-Authenticate"]
    # A service acting for players names the buyer; without a name it buys as itself.
    assert parse_order({**GOOD, "user_id": "player-7"}, 10, SERVICE).user_id == "player-7"


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
        ({**GOOD, "user_id": "\u00e9t\u00e9"}, "user_id"),
        ({**GOOD, "user_id": "tab\there"}, "user_id"),
        ({**GOOD, "quantity": 1e300}, "quantity"),
        ({**GOOD, "user_id": None}, "user_id"),  # found by schemathesis
        ({"product_id": 1, "quantity": 1}, "user_id"),
        ({**GOOD, "coupon": "FREE"}, "coupon"),
    ],
)
def test_bad_orders_get_a_clear_400(body, fragment):
    with pytest.raises(ApiError) as err:
        parse_order(body, max_per_order=10, caller=TRUSTING)
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
