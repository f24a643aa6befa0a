"""Per-user limits and Idempotency-Key on the Redis design, under a stampede."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from sqlalchemy import select

from hotdeal.model import keys
from hotdeal.schema import hotdeal_list, order_history

from .events import wait_until
from .helpers import reconcile, service_running, stampede, statuses


def _body(user: str, quantity: int = 1) -> dict:
    return {"product_id": 1, "user_id": user, "quantity": quantity}


def test_per_user_limit(order_redis, reset, writer_proc):
    reset(10)
    assert order_redis.order(_body("alice")).status_code == 201
    again = order_redis.order(_body("alice"))
    assert (again.status_code, again.json()["error"]) == (409, "limit_exceeded")
    two = order_redis.order(_body("bob", 2))
    assert (two.status_code, two.json()["error"]) == (409, "limit_exceeded")


def test_idempotency_key_replays_the_first_answer(order_redis, reset, rclient, writer_proc):
    reset(10)
    headers = {"Idempotency-Key": "retry-1"}
    first = order_redis.order(_body("carol"), headers=headers)
    second = order_redis.order(_body("carol"), headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert rclient.hget(keys.books(1), "quantity") == "9"
    # The same key for a different order is a client bug: refuse it, sell nothing.
    other = order_redis.order(_body("carol", 2), headers=headers)
    assert (other.status_code, other.json()["error"]) == (422, "idempotency_key_reused")
    # Keys are per user: another buyer's identical key is a different order.
    assert (
        order_redis.order(_body("dave"), headers=headers).json()["order_id"]
        != (first.json()["order_id"])
    )


@pytest.mark.parametrize(("limit", "after"), [("0", "a new order"), ("1", "limit_exceeded")])
def test_idempotency_keys_expire(stack_env, logs, reset, rclient, writer_proc, limit, after):
    """After HOTDEAL_IDEMPOTENCY_TTL_S the key is forgotten: the same request is a new
    order, which the per-user limit (when set) refuses naming the first one."""
    with service_running(
        "order-redis", stack_env, logs, HOTDEAL_IDEMPOTENCY_TTL_S="1", HOTDEAL_PER_USER_LIMIT=limit
    ) as service:
        reset(10)
        key = {"Idempotency-Key": "k"}
        first = service.order(_body("erin"), headers=key)
        assert first.status_code == 201
        record = keys.idempotency(1, "erin", "k")
        assert 0 < rclient.pttl(record) <= 1000
        assert service.order(_body("erin"), headers=key).headers["Idempotent-Replayed"] == "true"
        wait_until(lambda: not rclient.exists(record), "the key to expire", timeout=10)
        again = service.order(_body("erin"), headers=key)
        if after == "a new order":
            assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
            assert again.json()["order_id"] != first.json()["order_id"]
        else:
            assert (again.status_code, again.json()["error"]) == (409, "limit_exceeded")
            assert again.json()["orders"] == [first.json()["order_id"]]


def test_stampede_of_1000_users_with_retries(order_redis, reset, stack_env, engine, writer_proc):
    """150 concurrent buyers, 1,000 distinct users, a third of them retrying their order
    with the same Idempotency-Key, some also trying to buy twice without one."""
    stock = 600
    reset(stock)
    rng = random.Random(7)
    bodies, headers = [], []
    for i in range(1000):
        user = f"gamer-{i}"
        key = {"Idempotency-Key": f"{user}-order"}
        bodies.append(_body(user))
        headers.append(key)
        if i % 3 == 0:  # a retry of the same order (lost response)
            bodies.append(_body(user))
            headers.append(key)
        if i % 10 == 0:  # a second, different purchase attempt
            bodies.append(_body(user))
            headers.append(None)
    order = list(range(len(bodies)))
    rng.shuffle(order)
    bodies = [bodies[i] for i in order]
    headers = [headers[i] for i in order]
    responses = stampede(order_redis, bodies, concurrency=150, headers=headers)

    got = statuses(responses)
    assert set(got) <= {201, 409}, got
    ok = [r for r in responses if r.status_code == 201]
    unique_orders = {r.json()["order_id"] for r in ok}
    assert len(unique_orders) == stock  # sold out exactly; replays reuse the first order id
    code, report = reconcile(stack_env)
    assert code == 0, report["violations"]
    with engine.connect() as conn:
        rows = conn.execute(
            select(order_history.c.order_id, order_history.c.user_id).where(
                order_history.c.prod_id == 1,
                # This event's rows: a writer may still store one of the previous event's.
                order_history.c.generation
                == select(hotdeal_list.c.generation)
                .where(hotdeal_list.c.prod_id == 1)
                .scalar_subquery(),
            )
        ).all()
    assert {r.order_id for r in rows} == unique_orders
    per_user = Counter(r.user_id for r in rows)
    assert max(per_user.values()) == 1  # nobody above the limit


def test_a_per_user_limit_above_one_adds_units_also_after_a_repair(
    stack_env, logs, reset, writer_proc
):
    """The limit counts units across orders; a repair rebuilds each buyer's count from
    order_history, so the limit holds as before."""
    from hotdeal_local.servers import ops

    def buy(service, quantity: int) -> tuple[int, str | None]:
        r = service.order({"product_id": 1, "user_id": "fran", "quantity": quantity})
        return r.status_code, r.json().get("error")

    with service_running("order-redis", stack_env, logs, HOTDEAL_PER_USER_LIMIT="3") as svc:
        reset(50)
        assert buy(svc, 2) == (201, None)
        assert buy(svc, 2) == (409, "limit_exceeded")  # 2 + 2 > 3
        assert buy(svc, 1) == (201, None)
        assert buy(svc, 1) == (409, "limit_exceeded")
        ops(stack_env, "repair", "--product", "1")  # the books rebuilt from the database
        assert buy(svc, 1) == (409, "limit_exceeded")
        code, report = reconcile(stack_env)
        assert code == 0 and report["redis"]["persisted"] == 3, report
    with service_running("order-redis", stack_env, logs, HOTDEAL_PER_USER_LIMIT="4") as svc:
        assert buy(svc, 2) == (409, "limit_exceeded")  # 3 + 2 > 4
        assert buy(svc, 1) == (201, None)
