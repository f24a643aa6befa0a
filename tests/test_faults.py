"""Faults with real processes: Redis and PostgreSQL stopped and restarted, writers
killed with SIGKILL in the middle of a load run. Each test gets a private stack."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
import requests

from hotdeal.model import keys
from hotdeal_local.servers import (
    PostgresServer,
    Process,
    RedisServer,
    ops,
    writer,
)

from .events import wait_until
from .helpers import Service, buyers, reconcile, stampede, start_service, statuses, workdir

# Generous client deadline: a backend that is down must answer long before it.
FAST = 1.0


@dataclass
class Stack:
    redis: RedisServer
    pg: PostgresServer
    env: dict[str, str]
    legacy: Service
    order_redis: Service
    writers: list[Process]

    def new_writer(self, name: str) -> Process:
        proc = writer({**self.env, "HOTDEAL_WRITER_NAME": name}, name=name).start()
        self.writers.append(proc)
        return proc

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url, decode_responses=True)

    def redis_units(self) -> int:
        return int(self.redis_client().hget(keys.books(1), "quantity"))


def _service(name: str, env: dict[str, str]) -> Service:
    return start_service(name, env)


@pytest.fixture
def stack(request) -> Iterator[Stack]:
    fsync = getattr(request, "param", "always")
    rs = RedisServer(workdir("fault-redis"), appendfsync=fsync).start()
    pg = PostgresServer(workdir("fault-pg")).start()
    env = {
        "HOTDEAL_DATABASE_URL": pg.url,
        "HOTDEAL_REDIS_URL": rs.url,
        "HOTDEAL_HOLD_MS": "5",
        "HOTDEAL_WORKERS": "2",
        "HOTDEAL_WRITER_CLAIM_IDLE_MS": "500",
    }
    ops(env, "init-db")
    ops(env, "reset", "--discard-orders", "--stock", "500")
    st = Stack(rs, pg, env, _service("legacy", env), _service("order-redis", env), [])
    yield st
    for proc in (st.legacy.proc, st.order_redis.proc, *st.writers):
        proc.stop(signal.SIGKILL)
    rs.stop(signal.SIGKILL)
    pg.stop("immediate")


def _eventually(check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not recovered within {timeout}s")
        time.sleep(0.2)


def _order(service: Service, user: str, timeout: float = FAST) -> requests.Response:
    return service.order({"product_id": 1, "user_id": user, "quantity": 1}, timeout=timeout)


def test_redis_down_is_a_fast_503_and_recovers(stack):
    assert _order(stack.order_redis, "before").status_code == 201
    stack.redis.stop()
    for i in range(3):  # the pooled connections are dead: every one answers 503, fast
        r = _order(stack.order_redis, f"down-{i}")
        assert (r.status_code, r.json()["error"]) == (503, "unavailable")
    assert stack.order_redis.admin("/readyz", timeout=FAST).status_code == 503
    assert stack.order_redis.get("/healthz", timeout=FAST).status_code == 200
    stack.redis.start()
    # A restarted server sells once a writer has checked its books against the database.
    r = _order(stack.order_redis, "early")
    assert (r.status_code, r.json()["error"]) == (503, "paused")
    stack.new_writer("w-check")
    _eventually(lambda: _order(stack.order_redis, "after").status_code == 201)
    assert stack.order_redis.admin("/readyz").status_code == 200
    assert stack.redis_units() == 498  # AOF kept the stock across the restart


def test_postgres_down_is_a_fast_503_for_legacy_and_recovers(stack):
    assert _order(stack.legacy, "before").status_code == 201
    stack.pg.stop()
    r = _order(stack.legacy, "down")
    assert (r.status_code, r.json()["error"]) == (503, "unavailable")
    assert stack.legacy.admin("/readyz", timeout=FAST + 2).status_code == 503
    # Write-behind: the Redis design keeps selling while the RDBMS is down.
    assert _order(stack.order_redis, "still-selling").status_code == 201
    stack.pg.start()
    _eventually(lambda: _order(stack.legacy, "after").status_code == 201)


def _sold_soon(stack, more: int):
    """A wait for `more` units sold after now (the load is under way)."""
    books = keys.books(1)
    start = int(stack.redis_client().hget(books, "sold") or 0)

    def wait() -> None:
        wait_until(
            lambda: int(stack.redis_client().hget(books, "sold") or 0) >= start + more,
            "the load to be under way",
        )

    return wait


def test_postgres_down_during_load_loses_nothing(stack):
    stack.new_writer("w1")
    load = buyers(400)
    results: list = []
    under_way = _sold_soon(stack, 50)
    runner = threading.Thread(target=lambda: results.extend(stampede(stack.order_redis, load)))
    runner.start()
    under_way()  # the fault lands in the middle of the load
    stack.pg.stop("immediate")
    runner.join()
    assert statuses(results) == {201: 400}  # accepted on the Redis path throughout
    # The database is down: the backlog waits in the Redis stream.
    assert stack.redis_client().xlen(keys.orders_stream(1)) > 0
    stack.pg.start()
    code, report = reconcile(stack.env)
    assert code == 0, report["violations"]
    assert report["redis"]["persisted"] == 400 and report["redis"]["in_flight"] == 0
    assert report["order_history"]["rows"] == 400


def test_writer_killed_mid_load_loses_and_duplicates_nothing(stack):
    ops(stack.env, "reset", "--discard-orders", "--stock", "1000")
    doomed = stack.new_writer("doomed")
    load = buyers(1200)
    results: list = []
    under_way = _sold_soon(stack, 200)
    runner = threading.Thread(target=lambda: results.extend(stampede(stack.order_redis, load)))
    runner.start()
    under_way()
    assert runner.is_alive()  # the kill lands in the middle of the run
    doomed.stop(signal.SIGKILL)
    runner.join()
    assert statuses(results) == {201: 1000, 409: 200}
    stack.new_writer("rescuer")  # takes over the dead writer's pending entries
    code, report = reconcile(stack.env)
    assert code == 0, report["violations"]
    assert report["redis"]["persisted"] == 1000
    assert report["order_history"] == {"rows": 1000}


def test_several_writers_share_the_stream(stack):
    for name in ("a", "b", "c"):
        stack.new_writer(name)
    assert statuses(stampede(stack.order_redis, buyers(300))) == {201: 300}
    code, report = reconcile(stack.env)
    assert code == 0, report["violations"]
    assert report["order_history"]["rows"] == 300


def test_redis_restart_keeps_stock_and_unwritten_orders(stack):
    # No writer yet: the orders exist only in the Redis stream.
    assert statuses(stampede(stack.order_redis, buyers(50))) == {201: 50}
    stack.redis.restart()
    assert stack.redis_units() == 450
    stack.new_writer("late")
    code, report = reconcile(stack.env)
    assert code == 0, report["violations"]
    assert report["redis"]["persisted"] == 50


@pytest.mark.parametrize("stack", ["always"], indirect=True)
def test_appendfsync_always_survives_sigkill(stack):
    """With `appendfsync always` every acknowledged order is on disk before the 201."""
    assert statuses(stampede(stack.order_redis, buyers(50))) == {201: 50}
    stack.redis.stop(signal.SIGKILL)
    stack.redis.start()
    assert stack.redis_units() == 450
    stack.new_writer("late")
    code, report = reconcile(stack.env)
    assert code == 0, report["violations"]


def test_inline_mode_gives_the_stock_back_when_the_insert_fails(stack):
    inline = _service("order-redis", {**stack.env, "HOTDEAL_ORDER_WRITE": "inline"})
    try:
        stack.pg.stop()
        r = _order(inline, "unlucky", timeout=FAST + 4)
        assert (r.status_code, r.json()["error"]) == (503, "unavailable")
        assert stack.redis_units() == 500  # nothing sold without its order row
        assert stack.redis_client().hget(keys.buyers(1), "unlucky") in (None, "0")
        stack.pg.start()
        _eventually(lambda: _order(inline, "unlucky").status_code == 201)
        code, report = reconcile(stack.env)
        assert code == 0, report["violations"]
    finally:
        inline.proc.stop()


@pytest.mark.parametrize("run", [1, 2, 3])
def test_reset_while_the_writer_drains_never_mixes_events(stack, run):
    """A batch the writer read before `reset` commits after it: that order belongs to
    the old event (its generation), never to the new one's books."""
    ops(stack.env, "reset", "--discard-orders", "--stock", "3000")
    assert statuses(stampede(stack.order_redis, buyers(1500))) == {201: 1500}
    client = stack.redis_client()
    stream = keys.orders_stream(1)
    stack.new_writer("drainer")
    _eventually(lambda: client.xlen(stream) < 1500, timeout=30)  # draining has begun
    ops(stack.env, "reset", "--discard-orders", "--stock", "100")
    assert statuses(stampede(stack.order_redis, buyers(40))) == {201: 40}
    code, report = reconcile(stack.env)
    assert code == 0, report["violations"]
    assert report["order_history"]["rows"] == 40
    assert report["redis"]["persisted"] == 40


def test_the_writers_liveness_reads_no_store(event):
    """A stopped Redis makes /metrics wait (it reads the backlog from Redis); /healthz,
    the liveness probe the chart gives the writer, answers at once: a slow store must
    not get the writer restarted mid-event."""
    ev = event()
    w = ev.writer()
    base = f"http://127.0.0.1:{w.metrics_port}"
    assert requests.get(f"{base}/metrics", timeout=10).status_code == 200
    ev.redis.proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.get(f"{base}/metrics", timeout=2)  # control: the store is really stuck
        r = requests.get(f"{base}/healthz", timeout=2)
        assert (r.status_code, r.text) == (200, "ok\n")
    finally:
        ev.redis.proc.send_signal(signal.SIGCONT)
