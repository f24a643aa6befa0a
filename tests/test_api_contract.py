"""The API as published (/openapi.json): both apps in process (Flask's test client) on
the harness's real Redis and PostgreSQL, fed hand-picked and generated input. Every
answer must be one the document lists, with a body of its schema; never a 500."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jsonschema
import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotdeal.config import Settings
from hotdeal.errors import ApiError
from hotdeal.identity import Caller
from hotdeal.validation import USER_ID_PATTERN, parse_idempotency_key, parse_order
from hotdeal.web import MAX_BODY_BYTES, openapi_document
from hotdeal_legacy.app import create_app as legacy_app
from hotdeal_local import auth
from hotdeal_order_redis.app import create_app as order_redis_app

SETTINGS = Settings(
    **{k[len("HOTDEAL_") :].lower(): v for k, v in auth.service_env().items()},
    workshop_routes=True,
)
# Every order below is the fuzzer's (the body may name it, or nobody, or someone else).
BUYER = "fuzzer"
CALLER = Caller(BUYER, False, SETTINGS.auth_act_for_scope)
HEADERS = {"Content-Type": "application/json", **auth.bearer(BUYER)}
# The union of both services' documents: what each serves is checked on its own below.
DOC = openapi_document("order-redis", SETTINGS)


@pytest.fixture(scope="module")
def apps(stack_env) -> dict[str, Flask]:
    settings = dataclasses.replace(
        SETTINGS,
        database_url=stack_env["HOTDEAL_DATABASE_URL"],
        redis_url=stack_env["HOTDEAL_REDIS_URL"],
        hold_ms=0,
        per_user_limit=2,
        db_pool_size=2,
    )
    return {"legacy": legacy_app(settings), "order-redis": order_redis_app(settings)}


def _schema(ref_or_schema: dict[str, Any]) -> dict[str, Any]:
    """A schema of the document, with its components resolvable."""
    return {**ref_or_schema, "components": DOC["components"]}


def check_answer(path: str, method: str, response) -> None:
    operation = DOC["paths"][path][method]
    status = str(response.status_code)
    assert status in operation["responses"], (path, method, status, response.get_data())
    assert response.status_code != 500
    documented = operation["responses"][status]
    if "$ref" in documented:
        documented = DOC["components"]["responses"][documented["$ref"].rsplit("/", 1)[1]]
    content = documented.get("content", {})
    if "application/json" in content:
        jsonschema.validate(response.get_json(), _schema(content["application/json"]["schema"]))


def test_each_service_publishes_what_it_serves(apps):
    for name, app in apps.items():
        doc = app.test_client().get("/openapi.json").get_json()
        assert doc == openapi_document(name, SETTINGS)
        paths = set(doc["paths"])
        mine, other = ("/order", "/order-redis")[:: 1 if name == "legacy" else -1]
        assert mine in paths and other not in paths
        keyed = [
            p["name"]
            for p in doc["paths"]["/v1/orders"]["post"].get("parameters", [])
            if p["in"] == "header"
        ]
        assert keyed == (["Idempotency-Key", "Hotdeal-Pass"] if name == "order-redis" else [])
        assert ("/v1/queue" in paths) == (name == "order-redis")  # the room is Redis's
        assert doc["security"] == [{"bearer": []}]
        assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        request = doc["components"]["schemas"]["OrderRequest"]
        assert request["properties"]["quantity"]["maximum"] == SETTINGS.max_per_order
        assert request["properties"]["user_id"]["pattern"] == USER_ID_PATTERN
        # Every route the app has is documented, and every documented one exists.
        rules = {
            str(r.rule).replace("<order_id>", "{order_id}")
            for r in app.url_map.iter_rules()
            if r.endpoint != "static"
        }
        assert rules == paths, rules ^ paths


BAD = [
    ("not json", 400),
    ("[1, 2]", 400),
    ('{"product_id": 1, "quantity": 0}', 400),
    ('{"product_id": 1, "user_id": "u", "quantity": 11}', 400),
    ('{"product_id": 1, "user_id": "u", "quantity": "1"}', 400),
    ('{"product_id": 1, "user_id": "u", "quantity": 1.5}', 400),
    ('{"product_id": 1, "user_id": "someone-else", "quantity": 1}', 403),
    ('{"product_id": true, "user_id": "u", "quantity": 1}', 400),
    ('{"product_id": 1, "user_id": "u\\u0000", "quantity": 1}', 400),
    ('{"product_id": 1, "user_id": "u", "quantity": 1, "price": 0}', 400),
    ('{"product_id": 999999, "quantity": 1}', 404),
    ("[" * 4000, 400),
    ("1" * 5000, 413),
]


@pytest.mark.parametrize(("body", "status"), BAD)
def test_the_4xx_matrix_in_process(apps, reset, body, status):
    reset(5)
    for app in apps.values():
        response = app.test_client().post("/v1/orders", data=body, headers=HEADERS)
        assert response.status_code == status, (body, response.get_data())
        check_answer("/v1/orders", "post", response)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)
order_like = st.fixed_dictionaries(
    {
        "product_id": st.one_of(st.integers(-3, 4), st.integers(), json_values),
        "quantity": st.one_of(st.integers(-2, 12), json_values),
    },
    optional={
        "user_id": st.one_of(st.just(BUYER), st.text(min_size=0, max_size=70), json_values),
        "extra": json_values,
    },
)
keys = st.none() | st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=140
)


def expected_statuses(body: Any, key: str | None, data: str) -> set[int]:
    """What an order may answer, from the input alone: a test that accepted any
    documented status would pass if every order answered 503."""
    if len(data.encode()) > MAX_BODY_BYTES:
        return {413}
    try:
        parsed = json.loads(data)
        parse_idempotency_key(key)
        order = parse_order(parsed, max_per_order=10, caller=CALLER)
    except ValueError:
        return {400}
    except ApiError as err:
        return {err.status}  # 400 bad input, 403 another buyer named
    if order.product_id == 1:  # reset just now: on sale
        return {201, 409, 422}  # sold, sold out or over the limit, key reused
    return {201, 404, 409, 422}  # another test's product, or none


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.one_of(order_like, json_values), key=keys, raw=st.booleans())
def test_fuzzed_orders_get_documented_answers(apps, reset, body, key, raw):
    reset(1000)
    headers = dict(HEADERS)
    if key is not None:
        headers["Idempotency-Key"] = key
    data = json.dumps(body) if not raw else json.dumps(body)[:-1]  # raw: truncated JSON
    wanted = expected_statuses(body, key, data)
    for app in apps.values():
        response = app.test_client().post("/v1/orders", data=data, headers=headers)
        check_answer("/v1/orders", "post", response)
        assert response.status_code in wanted, (data, key, response.get_data())


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    order_id=st.text(min_size=1, max_size=80),
    product=st.text(max_size=12),
    user=st.text(max_size=70),
)
def test_fuzzed_lookups_get_documented_answers(apps, order_id, product, user):
    for app in apps.values():
        client = app.test_client()
        response = client.get(
            "/v1/orders/" + order_id.replace("/", "_").replace("?", "_"), headers=HEADERS
        )
        if response.status_code != 404 or response.is_json:
            check_answer("/v1/orders/{order_id}", "get", response)
        response = client.get(
            "/v1/orders", query_string={"product_id": product, "user_id": user}, headers=HEADERS
        )
        check_answer("/v1/orders", "get", response)
