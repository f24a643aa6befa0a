"""A 201 survives any single fault (issue: durable answers). Each test runs a private
Redis (Debian's 7.0, or valkey-server 9.1 for WAITAOF) beside the session's
PostgreSQL, with order-redis as gunicorn runs it and writers as processes."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time

import pytest
import redis
import requests

from hotdeal.durability import online_replicas
from hotdeal.errors import ApiError
from hotdeal.model import keys
from hotdeal.redis_client import make_redis
from hotdeal.validation import OrderRequest
from hotdeal_local.proxy import Proxy
from hotdeal_local.servers import RedisServer, ops
from hotdeal_order_redis.stock import RedisStock

from .events import (
    SERVERS,
    VALKEY,
    Event,
    Fsyncs,
    answer_of,
    order,
    restart_from,
    snapshot,
    wait_until,
)
from .helpers import reconcile, statuses, workdir

# -- durability modes ---------------------------------------------------------------


def test_fsync_refuses_to_serve_when_redis_cannot_fsync_each_answer(event):
    """Redis 7.0 has no WAITAOF: fsync mode needs appendfsync always, and says so."""
    ev = event(appendfsync="everysec")
    svc = ev.service()
    ready = svc.admin("/readyz")
    assert ready.status_code == 503
    assert "appendfsync always" in ready.json()["failed"]["redis"]
    r = order(svc, "early")
    assert (r.status_code, r.json()["error"]) == (503, "unavailable")
    assert ev.books()["sold"] == "0"  # nothing was taken
    ev.client().config_set("appendfsync", "always")
    assert svc.admin("/readyz").status_code == 200
    # The take path re-checks the server every 5 s; until then it sells nothing.
    wait_until(lambda: order(svc, "later").status_code == 201, "a sale once fsync holds")


def test_none_is_the_workshops_unsafe_replay(event):
    """The negative control of replica mode: `none` answers 201 while no replica holds
    the take (replica mode answers outcome_unknown there), and a failover to that
    replica forgets the answered order."""
    ev = event(appendfsync="everysec", HOTDEAL_REDIS_DURABILITY="none")
    link = Proxy(ev.redis.port)  # the replication link, which can lose what is in flight
    ev.cleanup.callback(link.stop)
    replica = RedisServer(
        workdir("dur-replica"), replica_of=ev.redis, primary_port=link.port
    ).start()
    ev.cleanup.callback(replica.stop, signal.SIGKILL)
    wait_until(lambda: online_replicas(ev.client().info("replication")) >= 1, "a replica")
    svc = ev.service()
    link.dropping.set()  # the replica gets nothing more
    answered = order(svc, "u")
    assert answered.status_code == 201  # nothing waited for the replica
    ev.redis.stop(signal.SIGKILL)  # the primary dies; its replica takes over
    promoted = redis.Redis.from_url(replica.url, decode_responses=True)
    promoted.execute_command("REPLICAOF", "NO", "ONE")
    books = promoted.hgetall(keys.books(1))
    assert books["quantity"] == "100"  # the replica has the event, and not the sale:
    assert books.get("sold", "0") == "0"  # the failover forgot the 201
    assert promoted.xlen(keys.orders_stream(1)) == 0


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_each_fsync_answer_waited_for_an_fsync_and_none_did_not(event, server):
    """Durability fsync on every server line the suite runs: each 201 came after an
    fsync of the AOF (20 sequential orders, at least 20 fsyncs). The negative control,
    the workshop's setting (everysec, durability none), answers as many orders with
    about one fsync a second: a power loss would take them."""
    counts = {}
    for mode, setting in (("fsync", "always"), ("none", "everysec")):
        ev = event(binary=SERVERS[server], appendfsync=setting, HOTDEAL_REDIS_DURABILITY=mode)
        svc = ev.service()
        wait_until(lambda s=svc: order(s, "warm").status_code == 201, "a first sale")
        traced = Fsyncs(ev.redis.proc.pid, ev.redis.workdir.parent / f"strace-{mode}.txt")
        answers = [order(svc, f"buyer-{i}").status_code for i in range(20)]
        counts[mode] = traced.stop()
        assert answers == [201] * 20
    assert counts["fsync"] >= 20, counts
    assert counts["none"] < 10, counts


@pytest.mark.parametrize("server", ["redis-8.2", "valkey-9.1"])
def test_waitaof_answers_survive_kill9(event, server):
    """The WAITAOF path (Redis >= 7.2, valkey): every 201 is still there after kill -9,
    and the writer stores each once."""
    ev = event(binary=SERVERS[server])
    svc = ev.service()
    wait_until(lambda: order(svc, "warm").status_code == 201, "a first sale")
    answered = [order(svc, f"buyer-{i}") for i in range(20)]
    assert [r.status_code for r in answered] == [201] * 20
    ev.redis.stop(signal.SIGKILL)
    ev.redis.start()
    assert ev.books()["sold"] == "21"
    ev.writer()
    code, report = reconcile(ev.env)
    assert code == 0, report
    assert report["redis"]["persisted"] == 21


def _with_replica(ev: Event, binary: str | None = None) -> RedisServer:
    replica = RedisServer(
        workdir("dur-replica"), appendfsync="always", binary=binary, replica_of=ev.redis
    ).start()
    ev.cleanup.callback(replica.stop, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while online_replicas(ev.client().info("replication")) < 1:
        assert time.monotonic() < deadline, "the replica did not connect"
        time.sleep(0.1)
    return replica


@pytest.mark.parametrize("binary", [None, VALKEY], ids=["redis-7.0-WAIT", "valkey-WAITAOF"])
def test_replica_mode_answers_only_what_a_replica_holds(event, binary):
    ev = event(
        binary=binary,
        HOTDEAL_REDIS_DURABILITY="replica",
        HOTDEAL_REDIS_DURABILITY_TIMEOUT_MS="300",
    )
    svc = ev.service()
    assert svc.admin("/readyz").status_code == 503  # no replica yet
    replica = _with_replica(ev, binary)
    assert svc.admin("/readyz").status_code == 200
    # The take path re-checks the server every 5 s; until then it sells nothing.
    wait_until(lambda: order(svc, "one", key="k-1").status_code == 201, "a sale")
    # A replica that stops acknowledging: the take ran, but is not safe -> outcome_unknown.
    replica.proc.send_signal(signal.SIGSTOP)
    try:
        r = order(svc, "two", key="k-2")
        assert (r.status_code, r.json()["error"]) == (503, "outcome_unknown")
    finally:
        replica.proc.send_signal(signal.SIGCONT)
    # Finding out: the retry with the same key answers the original order.
    retry = order(svc, "two", key="k-2")
    assert retry.status_code == 201 and retry.headers["Idempotent-Replayed"] == "true"
    mine = svc.get("/v1/orders?product_id=1&user_id=two").json()["orders"]
    assert [o["order_id"] for o in mine] == [retry.json()["order_id"]]


# -- outcome unknown -------------------------------------------------------------------


def test_a_take_whose_reply_is_lost_is_outcome_unknown_not_unavailable(event):
    """The script was sent and no answer came in time: the buyer must not be told
    "nothing sold" (the replica test shows the branch where it did sell). Whatever
    happened, the retry with the same key converges on exactly one order."""
    ev = event(HOTDEAL_REDIS_TIMEOUT_MS="300", HOTDEAL_REDIS_DURABILITY_TIMEOUT_MS="200")
    svc = ev.service()
    assert order(svc, "warm").status_code == 201
    ev.client().execute_command("CLIENT", "PAUSE", 1500, "WRITE")
    r = order(svc, "stalled", key="k-stalled")
    assert (r.status_code, r.json()["error"]) == (503, "outcome_unknown")
    assert r.headers["Retry-After"] == "1"
    # Once the pause ends, the retry with the same key answers (it may have sold).
    again = wait_until(
        lambda: (r := order(svc, "stalled", key="k-stalled")).status_code == 201 and r,
        "the retry to find out",
    )
    mine = svc.get("/v1/orders?product_id=1&user_id=stalled").json()["orders"]
    assert [o["order_id"] for o in mine] == [again.json()["order_id"]]
    one = svc.get(f"/v1/orders/{mine[0]['order_id']}").json()
    assert (one["user_id"], one["quantity"]) == ("stalled", 1)
    # Without the key, the per-user limit names the order the buyer already has.
    refused = order(svc, "stalled")
    assert refused.status_code == 409
    assert refused.json()["orders"] == [mine[0]["order_id"]]


def test_a_lost_reply_is_unknown_in_time_while_signals_interrupt_the_wait(event):
    """The wait for a take's reply keeps one deadline across interruptions: a signal
    (a profiler or debugger attaching, a log-rotation USR1, a terminal's WINCH) makes
    the receive return EINTR and Python retry it. With the socket's timeout left to the
    kernel (SO_RCVTIMEO), each retry waited a whole timeout again: signals every 50 ms
    kept a stalled take waiting until the stall ended, and gunicorn killed the worker
    at 30 s with an HTML 500 (a helper's find). Here the stall outlasts the signals'
    storm, so a take that waits it out sells, and the test sees it."""
    ev = event(stock=5)
    stock = RedisStock(make_redis(ev.env["HOTDEAL_REDIS_URL"], timeout_s=0.3), write="stream")
    stock.warm_up()
    stock.open_connections()

    def take(user: str) -> int:
        return stock.take(OrderRequest(1, user, 1), limit=0, idempotency_key=None).remaining

    assert take("buyer-1") == 4
    main, stop = threading.get_ident(), threading.Event()

    def storm() -> None:
        while not stop.wait(0.05):
            signal.pthread_kill(main, signal.SIGWINCH)

    previous = signal.signal(signal.SIGWINCH, lambda *_: None)  # ignored ones don't interrupt
    sender = threading.Thread(target=storm, daemon=True)
    ev.client().execute_command("CLIENT", "PAUSE", 4000, "WRITE")
    sender.start()
    try:
        with pytest.raises(ApiError) as lost:
            take("buyer-2")
        assert lost.value.code == "outcome_unknown"
    finally:
        stop.set()
        sender.join()
        signal.signal(signal.SIGWINCH, previous)
        ev.client().execute_command("CLIENT", "UNPAUSE")


def test_redis_down_is_unavailable_and_sells_nothing(event):
    ev = event()
    svc = ev.service()
    ev.redis.stop(signal.SIGKILL)
    r = order(svc, "nobody", timeout=5)
    assert (r.status_code, r.json()["error"]) == (503, "unavailable")
    assert r.headers["Retry-After"] == "1"
    ev.redis.start()  # AOF always: what it holds is what it took
    assert ev.books()["quantity"] == "100" and ev.books().get("sold", "0") == "0"


# -- rollback fencing -------------------------------------------------------------------


def test_a_redis_rollback_pauses_selling_and_repair_never_resells(event):
    """The issue's reproduction: stock 100, 80 sold, Redis restarted from an AOF taken at
    50 sold. Before: the same users with the same keys bought again (130 units for a
    stock of 100). Now: the next take notices, selling pauses, and the books are rebuilt
    from order_history."""
    ev = event(HOTDEAL_WRITER_AUTO_REPAIR="false")
    svc = ev.service()
    ev.writer()
    answered = {}
    for i in range(50):
        r = order(svc, f"u{i}", key=f"k{i}")
        answered[i] = r.json()["order_id"]
    copy = snapshot(ev)
    for i in range(50, 80):
        answered[i] = order(svc, f"u{i}", key=f"k{i}").json()["order_id"]
    code, report = reconcile(ev.env)  # every order persisted
    assert code == 0 and report["redis"]["persisted"] == 80, report
    restart_from(ev, copy)
    assert ev.books()["sold"] == "50"  # Redis forgot 30 sales the database holds

    replays = [order(svc, f"u{i}", key=f"k{i}") for i in range(50, 80)]
    assert all(r.status_code == 503 for r in replays), statuses(replays)
    assert all(r.json()["error"] == "paused" for r in replays)
    assert "rollback" in ev.books()["paused"]
    assert order(svc, "newcomer").json()["error"] == "paused"
    metrics = svc.admin("/metrics").text
    assert 'hotdeal_sales_paused{product="1",service="order-redis"} 1.0' in metrics

    done = ops(ev.env, "repair", "--product", "1", check=False)
    assert done.returncode == 0, done.stderr
    repaired = json.loads(done.stdout)
    assert (repaired["sold"], repaired["remaining"]) == (80, 20)
    # The same users with the same keys get their original orders, and buy nothing.
    # (A 503 there is a durability wait that ran out on this disk: the buyer retries.)
    again = [answer_of(svc, f"u{i}", key=f"k{i}") for i in range(50, 80)]
    assert [r.json().get("order_id") for r in again] == [answered[i] for i in range(50, 80)]
    assert all(r.headers.get("Idempotent-Replayed") == "true" for r in again)
    rest = [order(svc, f"late{i}") for i in range(40)]
    assert statuses(rest) == {201: 20, 409: 20}
    code, report = reconcile(ev.env)
    assert code == 0, report["violations"]
    assert report["redis"]["persisted_total"] == 100


def test_the_writer_notices_a_rollback_no_service_saw(event):
    """A fresh service (it has answered nothing yet) can't tell: the writer's check
    against order_history pauses the product, then repairs it once drained."""
    ev = event()
    svc = ev.service()
    copy = snapshot(ev)
    ev.writer()
    assert statuses([order(svc, f"u{i}") for i in range(30)]) == {201: 30}
    code, _ = reconcile(ev.env)
    assert code == 0
    for s in ev.services:
        s.proc.stop(signal.SIGKILL)
    restart_from(ev, copy)  # back to before any sale
    fresh = ev.service()
    deadline = time.monotonic() + 30
    while True:  # paused by the writer's check, then repaired by it
        books = ev.books()
        if books.get("sold") == "30" and "paused" not in books:
            break
        assert time.monotonic() < deadline, books
        time.sleep(0.2)
    assert statuses([order(fresh, f"v{i}") for i in range(80)]) == {201: 70, 409: 10}
    code, report = reconcile(ev.env)
    assert code == 0, report["violations"]
    assert report["redis"]["persisted_total"] == 100


def test_redis_kill_9_in_fsync_mode_loses_no_answered_order(event):
    ev = event(stock=1000)
    svc = ev.service()
    ev.writer()
    answered: list[requests.Response] = []
    stop = threading.Event()

    def buy() -> None:
        i = 0
        while not stop.is_set():
            with contextlib.suppress(requests.RequestException):
                answered.append(order(svc, f"k9-{threading.get_ident()}-{i}", timeout=5))
            i += 1

    threads = [threading.Thread(target=buy) for _ in range(8)]
    for t in threads:
        t.start()
    wait_until(lambda: len(answered) >= 40, "sales under way")
    ev.redis.stop(signal.SIGKILL)
    before = len(answered)
    ev.redis.start()
    wait_until(lambda: sum(r.status_code == 201 for r in answered[before:]) >= 20, "sales again")
    stop.set()
    for t in threads:
        t.join()
    ok = {r.json()["order_id"] for r in answered if r.status_code == 201}
    assert ok and {r.status_code for r in answered} <= {201, 409, 503}
    code, report = reconcile(ev.env)
    assert code == 0, report["violations"]
    for oid in ok:  # every 201 is findable
        assert svc.get(f"/v1/orders/{oid}").status_code == 200


def test_the_writer_stores_nothing_a_replica_does_not_hold(event, engine):
    """The writer's own durability wait: in replica mode it stores a batch only once a
    replica holds it (else a failover would leave the database holding orders Redis
    forgot, and their units would sell again). In process: one run_once at a time."""
    from sqlalchemy import func, select

    from hotdeal.durability import DurabilityError
    from hotdeal.schema import order_history
    from hotdeal_order_redis.writer import OrderWriter

    ev = event(HOTDEAL_REDIS_DURABILITY="none")  # the takes themselves wait for nothing
    replica = _with_replica(ev)
    svc = ev.service()
    wait_until(lambda: order(svc, "warm").status_code == 201, "a first sale")

    def stored() -> int:
        with engine.connect() as conn:
            return conn.execute(
                select(func.count()).where(order_history.c.user_id.like("unheld-%"))
            ).scalar_one()

    writer = OrderWriter(
        ev.client(), engine, consumer="held", durability_mode="replica", durability_timeout_ms=300
    )
    replica.proc.send_signal(signal.SIGSTOP)
    try:
        assert [order(svc, f"unheld-{i}").status_code for i in range(3)] == [201] * 3
        with pytest.raises(DurabilityError):
            writer.run_once()
        assert stored() == 0  # read, not stored: no replica holds them
    finally:
        replica.proc.send_signal(signal.SIGCONT)

    def drained() -> bool:
        try:
            writer.run_once()
        except DurabilityError:
            return False  # the replica is still catching up
        return stored() == 3

    wait_until(drained, "the batch stored once a replica holds it")
