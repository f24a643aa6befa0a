"""Every detector of the gate fires (issue 24): reconcile's checks, each produced on
purpose on the harness's real Redis and PostgreSQL and named in the assertion, and the
writer's fence checks. A check no test has seen fire is a check that may not work."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis
from sqlalchemy import delete, insert, update

from hotdeal import fence
from hotdeal.designs import Design
from hotdeal.history import OrderRow
from hotdeal.model import keys
from hotdeal.schema import hotdeal_list, hotdeal_slot, order_history
from hotdeal_local.servers import RedisServer, ops
from hotdeal_ops.reconcile import reconcile
from hotdeal_order_redis.writer import Entry, OrderWriter

from .helpers import workdir

PID = 7  # a product of its own: the session's services sell product 1


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    """A Redis no writer of the session watches: these tests put entries in a stream on
    purpose, and a session writer draining them would store rows a later test finds."""
    server = RedisServer(workdir("detectors-redis")).start()
    yield server
    server.stop()


@pytest.fixture
def rclient(own_redis) -> redis.Redis:
    return redis.Redis.from_url(own_redis.url, decode_responses=True)


@pytest.fixture
def own_env(stack_env, own_redis) -> dict[str, str]:
    return {**stack_env, "HOTDEAL_REDIS_URL": own_redis.url}


@pytest.fixture
def clean(engine, rclient, reset):
    reset(10, product=PID)
    report = reconcile(engine, rclient, PID)
    assert report["violations"] == [], report
    yield report
    # Leave the shared stores as found: no product 7 for later tests' scrapes and sums.
    with engine.begin() as conn:
        for table in (order_history, hotdeal_slot, hotdeal_list):
            conn.execute(delete(table).where(table.c.prod_id == PID))
    for key in rclient.scan_iter(match=keys.all_of(PID)):
        rclient.delete(key)
    rclient.srem(keys.PRODUCTS, PID)
    rclient.srem(keys.STREAMS, keys.orders_stream(PID))


def _books(rclient, **fields):
    rclient.hset(keys.books(PID), mapping=fields)


def _generation(rclient) -> int:
    return int(rclient.hget(keys.books(PID), keys.GENERATION))


def _row(rclient, order_id: str, user: str, quantity: int, seq: int) -> OrderRow:
    epoch = int(rclient.hget(keys.books(PID), keys.EPOCH))
    return OrderRow(
        order_id,
        PID,
        _generation(rclient),
        user,
        quantity,
        Design.REDIS,
        datetime.now(UTC),
        take_epoch=epoch,
        take_seq=seq,
    )


def _store(engine, *rows: OrderRow) -> None:
    with engine.begin() as conn:
        conn.execute(insert(order_history), [r.as_params() for r in rows])


def _violations(engine, rclient) -> list[str]:
    return reconcile(engine, rclient, PID)["violations"]


def test_per_user_counts_that_disagree(engine, rclient, clean):
    rclient.hincrby(keys.buyers(PID), "ghost", 1)
    assert _violations(engine, rclient) == [
        "redis: per-user counts disagree with orders for 1 users"
    ]


def test_units_above_the_initial_stock(engine, rclient, clean):
    _books(rclient, quantity=0, sold=11, seq=1)
    _store(engine, _row(rclient, f"{PID}-over", "big", 11, 1))
    rclient.hset(keys.buyers(PID), "big", 11)
    found = _violations(engine, rclient)
    assert "redis: 11 units persisted, above the initial 10" in found
    assert "redis: initial 10 != remaining 0 + sold 11" in found


def test_paused_books(engine, rclient, clean):
    _books(rclient, paused="rollback: test")
    assert _violations(engine, rclient) == ["redis: selling is paused: rollback: test"]


def test_negative_redis_stock(engine, rclient, clean):
    _books(rclient, quantity=-1, sold=11)
    assert "redis: stock is negative" in _violations(engine, rclient)


def test_an_order_queued_twice(engine, rclient, clean):
    entry = {
        "order_id": f"{PID}-twice",
        "product_id": str(PID),
        "generation": str(_generation(rclient)),
        "user_id": "two",
        "quantity": "1",
        "ordered_at": "0",
        "epoch": "0",
        "seq": "0",
        "idem": "",
    }
    for _ in range(2):
        rclient.xadd(keys.orders_stream(PID), entry)
    _books(rclient, quantity=8, sold=2)
    rclient.hset(keys.buyers(PID), "two", 2)
    assert "redis: the same order id is queued twice" in _violations(engine, rclient)


def test_a_lost_order(engine, rclient, clean):
    """Redis sold a unit that is neither persisted, in flight nor dead-lettered."""
    _books(rclient, quantity=9, sold=1, seq=1)
    rclient.hset(keys.buyers(PID), "lost", 1)
    assert _violations(engine, rclient) == [
        "redis: sold 1 != persisted 0 + in flight 0 (an order was lost or duplicated)",
        "redis: per-user counts disagree with orders for 1 users",
    ]


def test_a_take_sold_twice(engine, rclient, clean):
    """Two stored orders with one take number: the books went backwards and sold again."""
    _books(rclient, quantity=8, sold=2, seq=1)
    _store(engine, _row(rclient, f"{PID}-a", "a", 1, 1), _row(rclient, f"{PID}-b", "b", 1, 1))
    rclient.hset(keys.buyers(PID), mapping={"a": 1, "b": 1})
    assert _violations(engine, rclient) == [
        "redis: 1 takes were sold twice (the books went backwards)"
    ]


def test_legacy_books_that_do_not_add_up(engine, rclient, clean):
    with engine.begin() as conn:
        conn.execute(update(hotdeal_list).where(hotdeal_list.c.prod_id == PID).values(quantity=-2))
    found = _violations(engine, rclient)
    assert "legacy: hotdeal_list.quantity is negative" in found
    assert "legacy: initial 10 != remaining -2 + sold 0" in found


def test_books_of_another_event(engine, rclient, clean):
    _books(rclient, generation=_generation(rclient) + 1)
    (found,) = _violations(engine, rclient)
    assert found.startswith("redis: books are of generation")


def test_an_internal_error_exits_4(own_env, rclient, clean):
    _books(rclient, quantity="many")  # not a number: reconcile can't read it
    done = ops(own_env, "reconcile", "--product", str(PID), check=False)
    assert done.returncode == 4
    assert "internal error: ValueError" in done.stderr and "Traceback" not in done.stderr


def test_the_writer_pauses_books_behind_a_batch_it_just_stored(engine, rclient, clean):
    writer = OrderWriter(rclient, engine, consumer="detector")
    row = _row(rclient, f"{PID}-ahead", "a", 1, 5)  # take 5, books at seq 0
    stream = keys.orders_stream(PID)
    books = {stream: rclient.hgetall(keys.books(PID))}
    writer.check_fence([Entry(stream, "0-1", row, {})], books)
    assert "but take" in rclient.hget(keys.books(PID), keys.PAUSED)


def test_the_writer_pauses_books_behind_the_database(engine, rclient, clean):
    _store(engine, _row(rclient, f"{PID}-stored", "s", 1, 3))  # books say nothing sold
    reason = fence.check(engine, rclient, PID)
    assert reason and "order_history holds take" in reason
    assert rclient.hget(keys.books(PID), keys.PAUSED) == reason
