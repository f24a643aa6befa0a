"""Both designs, over real HTTP to gunicorn, against the harness's Redis and PostgreSQL."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlalchemy import func, select

from hotdeal.model import keys
from hotdeal.schema import hotdeal_list, hotdeal_slot, order_history

from .helpers import buyers, reconcile, service_running, stampede, statuses

STOCK = 40
BAD_BODIES = [
    ("not json at all", 400),
    ("[1, 2]", 400),
    ({"product_id": 1, "user_id": "u", "quantity": 0}, 400),
    ({"product_id": 1, "user_id": "u", "quantity": -3}, 400),
    ({"product_id": 1, "user_id": "u", "quantity": 11}, 400),
    ({"product_id": 1, "user_id": "u", "quantity": "1"}, 400),
    ({"product_id": "1", "user_id": "u", "quantity": 1}, 400),
    ({"product_id": 1, "user_id": "", "quantity": 1}, 400),
    ({"product_id": 1, "user_id": "u", "quantity": 1.5}, 400),
    ({"product_id": 1, "user_id": "\u00fc", "quantity": 1}, 400),
    ({"product_id": 1, "user_id": "u", "quantity": 1, "price": 0}, 400),
    ({"product_id": 999, "user_id": "u", "quantity": 1}, 404),
]


@pytest.fixture(params=["legacy", "legacy_slots", "order_redis", "order_redis_inline"])
def service(request, writer_proc):
    return request.getfixturevalue(request.param)


def db_units(engine, source: str | None = None) -> int:
    """Units stored for the current event. A writer may still store an order of the
    previous one after a reset (it read it before): that row keeps its generation."""
    generation = select(hotdeal_list.c.generation).where(hotdeal_list.c.prod_id == 1)
    query = select(func.coalesce(func.sum(order_history.c.quantity), 0)).where(
        order_history.c.prod_id == 1,
        order_history.c.generation == generation.scalar_subquery(),
    )
    if source:
        query = query.where(order_history.c.source == source)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def test_150_concurrent_buyers_get_exactly_the_stock(service, reset, stack_env):
    reset(STOCK)
    responses = stampede(service, buyers(300), concurrency=150)
    got = statuses(responses)
    assert got == {201: STOCK, 409: 300 - STOCK}, got
    assert all(r.json()["error"] == "sold_out" for r in responses if r.status_code == 409)
    remaining = sorted(r.json()["remaining"] for r in responses if r.status_code == 201)
    if service.name == "order-redis":  # one atomic counter: every value is seen once
        assert remaining == list(range(STOCK))
    code, report = reconcile(stack_env)
    assert code == 0, report["violations"]
    assert report["order_history"]["rows"] == STOCK


def test_workshop_get_endpoint_sells_then_says_out_of_stock(
    legacy, order_redis, reset, writer_proc
):
    for service, path in ((legacy, "/order"), (order_redis, "/order-redis")):
        reset(2)
        answers = [service.get(path) for _ in range(3)]
        assert [r.text for r in answers] == ["1", "0", "Out Of Stock"]
        assert [r.status_code for r in answers] == [200, 200, 409]


@pytest.mark.parametrize(("body", "status"), BAD_BODIES)
def test_bad_input_is_a_4xx_json_error_and_changes_nothing(
    service, reset, engine, rclient, body, status
):
    reset(5)
    response = service.order(body)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"] in ("invalid_request", "unknown_product")
    assert response.json()["message"]
    with engine.connect() as conn:
        one = hotdeal_list.c.prod_id == 1
        assert conn.execute(select(hotdeal_list.c.quantity).where(one)).scalar_one() == 5
        slots = select(func.sum(hotdeal_slot.c.quantity)).where(hotdeal_slot.c.prod_id == 1)
        assert conn.execute(slots).scalar_one() == 5
    assert rclient.hget(keys.books(1), "quantity") == "5"
    assert db_units(engine) == 0


def test_bad_idempotency_key_is_a_400(order_redis, reset, rclient):
    reset(5)
    r = order_redis.order(
        {"product_id": 1, "user_id": "u", "quantity": 1}, headers={"Idempotency-Key": "x" * 200}
    )
    assert r.status_code == 400
    assert rclient.hget(keys.books(1), "quantity") == "5"


def test_unknown_paths_and_methods_answer_json(legacy, order_redis):
    for service in (legacy, order_redis):
        r = service.get("/nope")
        assert (r.status_code, r.json()["error"]) == (404, "not_found")
        r = requests.delete(f"{service.url}/v1/orders", timeout=5)
        assert r.status_code == 405
        assert r.json()["error"] == "method_not_allowed"
        assert {"GET", "POST"} <= set(r.headers["Allow"].replace(" ", "").split(","))


def test_multi_unit_orders_never_oversell(request, service, reset, stack_env, logs):
    with contextlib.ExitStack() as stack:
        if request.node.callspec.params["service"] == "order_redis":
            # Its per-user limit (1) refuses multi-unit orders: the same service without it.
            service = stack.enter_context(
                service_running("order-redis", stack_env, logs, HOTDEAL_PER_USER_LIMIT="0")
            )
        reset(25)
        bodies = [{"product_id": 1, "user_id": f"m-{i}", "quantity": 1 + i % 3} for i in range(60)]
        responses = stampede(service, bodies, concurrency=60)
    assert set(statuses(responses)) <= {201, 409}, statuses(responses)  # no 5xx, ever
    sold = sum(
        b["quantity"] for b, r in zip(bodies, responses, strict=True) if r.status_code == 201
    )
    assert 23 <= sold <= 25  # at most 2 units can be stranded by a 3-unit order at the end
    code, report = reconcile(stack_env)
    assert code == 0, report["violations"]


def test_slots_sell_the_last_units_spread_over_slots(legacy_slots, reset, stack_env):
    reset(10, slots=8)  # 2,2,1,1,1,1,1,1
    r = legacy_slots.order({"product_id": 1, "user_id": "a", "quantity": 9})
    assert r.status_code == 201, r.text
    assert r.json()["remaining"] == 1
    assert legacy_slots.order({"product_id": 1, "user_id": "b", "quantity": 2}).status_code == 409
    assert legacy_slots.order({"product_id": 1, "user_id": "b", "quantity": 1}).status_code == 201
    assert reconcile(stack_env)[0] == 0


@pytest.mark.parametrize("name", ["legacy", "order_redis"])
def test_event_not_open_yet(request, name, reset, writer_proc):
    service = request.getfixturevalue(name)
    reset(5, opens_at=datetime.now(UTC) + timedelta(hours=1))
    r = service.order({"product_id": 1, "user_id": "early", "quantity": 1})
    assert (r.status_code, r.json()["error"]) == (409, "not_open")
    assert r.json()["opens_at"]
    reset(5, opens_at=datetime.now(UTC) - timedelta(seconds=1))
    assert service.order({"product_id": 1, "user_id": "early", "quantity": 1}).status_code == 201


def test_readiness(legacy, order_redis, order_redis_inline):
    for service in (legacy, order_redis, order_redis_inline):
        assert service.get("/healthz").json() == {"status": "ok"}
        assert service.admin("/readyz").status_code == 200
        # Buyers reach the order port: readiness and metrics are not theirs to read.
        for path in ("/readyz", "/metrics"):
            assert service.get(path).status_code == 404, path


@pytest.mark.parametrize("name", ["legacy", "order_redis"])
def test_the_admin_listener_answers_beside_the_workers(request, name, reset):
    """Probes and scrapes have their own port (hotdeal.admin), outside the workers'
    queue: the workers' counters are aggregated there too."""
    service = request.getfixturevalue(name)
    reset(5)
    assert service.order({"product_id": 1, "user_id": "adm", "quantity": 1}).status_code == 201
    admin = f"http://127.0.0.1:{service.proc.admin_port}"
    assert requests.get(f"{admin}/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(f"{admin}/readyz", timeout=5).status_code == 200
    text = requests.get(f"{admin}/metrics", timeout=5).text
    assert 'hotdeal_orders_total{product="1",result="ok",service=' in text
    assert "hotdeal_stock_remaining" in text
