"""After the last unit, sold-out answers come from each worker's memory, not the take
script; they never hide a replay that is owed, and a unit that comes back is sold."""

from __future__ import annotations

import signal

import pytest

from hotdeal_local.servers import ops
from hotdeal_order_redis.sold_out import SoldOutMarks

from .events import SERVERS, busy_redis, order, wait_until
from .helpers import reconcile, statuses

# Long enough that no recheck happens by accident within a test.
FOR_THE_TEST = "60000"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_mark_lasts_the_recheck_period_and_only_when_nothing_is_left():
    clock = Clock()
    marks = SoldOutMarks(250, clock, spread=lambda: 0.0)
    marks.learn(1, 1)  # one unit left: an order for one can still be sold
    assert not marks.known(1)
    marks.learn(1, 0)
    assert marks.known(1) and not marks.known(2)
    clock.now += 0.249
    assert marks.known(1)
    clock.now += 0.002  # past the period: the next order asks Redis again
    assert not marks.known(1)
    off = SoldOutMarks(0, clock)
    off.learn(1, 0)
    assert not off.known(1)


def test_workers_that_learn_together_recheck_apart():
    """A mark lasts a random half to all of the period, never more: warm workers learn
    sold out in the same millisecond, and in step they would all refuse a returned unit
    until the same moment."""
    clock = Clock()
    lasted = []
    for spread in (0.0, 0.5, 0.999):
        marks = SoldOutMarks(250, clock, spread=lambda s=spread: s)
        marks.learn(1, 0)
        start = clock.now
        while marks.known(1):
            clock.now += 0.001
        lasted.append(round(clock.now - start, 3))
    assert lasted[0] > lasted[1] > lasted[2] >= 0.125 and lasted[0] <= 0.251


def test_sold_out_answers_need_no_redis_but_a_keyed_order_asks(event):
    ev = event(stock=2, HOTDEAL_WRITER_CHECK_MS="300")
    svc = ev.service(HOTDEAL_SOLD_OUT_RECHECK_MS=FOR_THE_TEST, HOTDEAL_WORKERS="1")
    assert statuses([order(svc, f"u{i}") for i in range(3)]) == {201: 2, 409: 1}
    ev.redis.proc.send_signal(signal.SIGSTOP)
    try:
        answers = [order(svc, f"late{i}", timeout=5) for i in range(5)]
        assert statuses(answers) == {409: 5}
        assert {(r.json()["error"], r.json()["remaining"]) for r in answers} == {("sold_out", 0)}
        # A keyed order may be the retry of a sale: it needs Redis to know, and Redis is
        # stuck, so it is a fast 503 that claims nothing.
        keyed = order(svc, "late-keyed", key="k-late", timeout=10)
        assert (keyed.status_code, keyed.json()["error"]) == (503, "unavailable")
    finally:
        ev.redis.proc.send_signal(signal.SIGCONT)
    assert ev.books()["quantity"] == "0" and ev.books()["sold"] == "2"


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_the_retry_of_the_last_sale_is_replayed_not_refused(event, server):
    ev = event(stock=1, binary=SERVERS[server])
    ev.writer()
    svc = ev.service(HOTDEAL_SOLD_OUT_RECHECK_MS=FOR_THE_TEST, HOTDEAL_WORKERS="1")
    first = order(svc, "last-buyer", key="k-last")
    assert first.status_code == 201
    assert order(svc, "other").status_code == 409  # the worker now knows it is sold out
    again = order(svc, "last-buyer", key="k-last")
    assert again.status_code == 201, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["order_id"] == first.json()["order_id"]
    fresh_key = order(svc, "other", key="k-never-used")
    assert (fresh_key.status_code, fresh_key.json()["error"]) == (409, "sold_out")
    code, report = reconcile(ev.env)
    assert code == 0, report["violations"]
    assert report["order_history"]["rows"] == 1


def test_an_order_for_more_than_is_left_marks_nothing(event):
    ev = event(stock=3)
    svc = ev.service(
        HOTDEAL_SOLD_OUT_RECHECK_MS=FOR_THE_TEST, HOTDEAL_WORKERS="1", HOTDEAL_PER_USER_LIMIT="0"
    )
    assert order(svc, "a").status_code == 201
    assert order(svc, "b").status_code == 201
    big = svc.order({"product_id": 1, "user_id": "c", "quantity": 2})
    assert big.status_code == 409, big.text
    assert (big.json()["error"], big.json()["remaining"]) == ("sold_out", 1)
    assert order(svc, "d").status_code == 201  # the last unit still sells
    assert ev.books()["quantity"] == "0"


def test_units_that_come_back_are_sold_after_the_recheck(event):
    ev = event(stock=1)
    ev.writer()
    svc = ev.service(HOTDEAL_SOLD_OUT_RECHECK_MS="300")
    assert statuses([order(svc, f"first{i}") for i in range(4)]) == {201: 1, 409: 3}
    wait_until(lambda: reconcile(ev.env)[1]["order_history"]["rows"] == 1, "the sale stored")
    # Units come back: here a new event (a give-back or a repair raises the books'
    # quantity the same way). The workers' marks lapse and the next take sells.
    ops(ev.env, "reset", "--discard-orders", "--stock", "2")
    sold = []

    def sells() -> bool:
        answer = order(svc, f"back{len(sold)}")
        if answer.status_code == 201:
            sold.append(answer)
        return len(sold) == 2

    wait_until(sells, "the units that came back sold", timeout=30, every=0.05)
    assert ev.books()["quantity"] == "0"
    code, report = reconcile(ev.env)
    assert code == 0, report["violations"]


def test_what_is_not_a_valid_sold_out_order_gets_the_usual_answer(event):
    """The shortcut in front of Flask only ever says sold_out, where the app would."""
    ev = event(stock=1)
    svc = ev.service(HOTDEAL_SOLD_OUT_RECHECK_MS=FOR_THE_TEST, HOTDEAL_WORKERS="1")
    assert statuses([order(svc, "a"), order(svc, "b")]) == {201: 1, 409: 1}
    bad = svc.order({"product_id": 1, "user_id": "c", "quantity": 0})
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_request")
    broken = svc.order(b'{"product_id": 1,', user="c")
    assert (broken.status_code, broken.json()["error"]) == (400, "invalid_request")
    not_json = svc.order(
        {"product_id": 1, "user_id": "c", "quantity": 1},
        headers={"Content-Type": "application/jsonx"},
    )
    assert (not_json.status_code, not_json.json()["error"]) == (400, "invalid_request")
    anonymous = svc.order({"product_id": 1, "quantity": 1}, headers={"Authorization": None})
    assert anonymous.status_code == 401 and "Bearer" in anonymous.headers["WWW-Authenticate"]
    other = svc.order({"product_id": 1, "user_id": "someone-else", "quantity": 1}, user="c")
    assert (other.status_code, other.json()["error"]) == (403, "insufficient_scope")
    bad_key = order(svc, "c", key="has a space")
    assert (bad_key.status_code, bad_key.json()["error"]) == (400, "invalid_request")
    unknown = svc.order({"product_id": 2, "user_id": "c", "quantity": 1})
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_product")
    sold_out = [order(svc, f"late{i}") for i in range(3)]
    assert {(r.status_code, r.json()["error"]) for r in sold_out} == {(409, "sold_out")}
    assert sold_out[0].headers["Content-Type"] == "application/json"
    page = svc.admin("/metrics").text
    refused = [
        line for line in page.splitlines()
        if line.startswith("hotdeal_orders_total{") and 'result="sold_out"' in line
    ]  # fmt: skip
    assert len(refused) == 1 and 'product="1"' in refused[0], refused
    assert float(refused[0].rsplit(" ", 1)[1]) == 4.0  # b's and the three late ones


def test_a_busy_redis_is_a_503_for_a_keyed_order_and_refusals_count_once(event):
    ev = event(stock=1)
    svc = ev.service(HOTDEAL_SOLD_OUT_RECHECK_MS=FOR_THE_TEST, HOTDEAL_WORKERS="1")
    assert order(svc, "a", key="k-a").status_code == 201
    assert order(svc, "b").status_code == 409
    anonymous = svc.order({"product_id": 1, "quantity": 1}, headers={"Authorization": None})
    assert anonymous.status_code == 401
    page = svc.admin("/metrics").text
    assert 'hotdeal_auth_refused_total{reason="missing",service="order-redis"} 1.0' in page
    with busy_redis(ev):
        keyed = order(svc, "a", key="k-a")
        assert (keyed.status_code, keyed.json()["error"]) == (503, "unavailable"), keyed.text
    replay = order(svc, "a", key="k-a")
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
