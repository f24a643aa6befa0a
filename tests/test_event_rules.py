"""Per-user limits and Idempotency-Key on the Redis design, under a stampede."""

from __future__ import annotations

import random
from collections import Counter

from sqlalchemy import select

from hotdeal import redis_keys
from hotdeal.schema import hotdeal_list, order_history

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
    assert rclient.hget(redis_keys.books(1), "quantity") == "9"
    # The same key for a different order is a client bug: refuse it, sell nothing.
    other = order_redis.order(_body("carol", 2), headers=headers)
    assert (other.status_code, other.json()["error"]) == (422, "idempotency_key_reused")
    # Keys are per user: another buyer's identical key is a different order.
    assert (
        order_redis.order(_body("dave"), headers=headers).json()["order_id"]
        != (first.json()["order_id"])
    )


def test_idempotency_keys_expire(stack_env, logs, reset, rclient, writer_proc):
    with service_running(
        "order-redis", stack_env, logs, HOTDEAL_IDEMPOTENCY_TTL_S="7", HOTDEAL_PER_USER_LIMIT="0"
    ) as service:
        reset(10)
        service.order(_body("erin"), headers={"Idempotency-Key": "k"})
        ttl = rclient.ttl(redis_keys.idempotency(1, "erin", "k"))
        assert 0 < ttl <= 7


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
