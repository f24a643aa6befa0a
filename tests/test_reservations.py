"""Reservations: an order is a hold until it is paid (confirmed) or released (cancelled,
or expired at its deadline), on real Redis, PostgreSQL, services and writers. Each hold
settles exactly once, whoever gets there first; a late payment gets 409 expired."""

from __future__ import annotations

import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlalchemy import create_engine, select

from hotdeal.designs import Design
from hotdeal.history import OrderRow, insert_new
from hotdeal.model import keys
from hotdeal.redis_client import make_redis
from hotdeal.schema import order_history
from hotdeal.validation import OrderRequest
from hotdeal_local import auth
from hotdeal_local.servers import ops
from hotdeal_order_redis.holds import Expirer
from hotdeal_order_redis.stock import RedisStock
from hotdeal_order_redis.writer import OrderWriter
from hotdeal_order_redis.writer_metrics import read_persisted

from .events import SERVERS, restart_from, snapshot, wait_until
from .helpers import reconcile

PAYMENTS = auth.bearer("payments", scope=auth.ACT_FOR)  # the payment callback's service


def reserve(ev, window_s: int, stock: int = 10):
    ops(ev.env, "reset", "--discard-orders", "--stock", str(stock), "--payment-window",
        str(window_s))  # fmt: skip


def hold(svc, user: str, key: str | None = None, quantity: int = 1) -> requests.Response:
    headers = {"Idempotency-Key": key} if key else None
    body = {"product_id": 1, "user_id": user, "quantity": quantity}
    return svc.order(body, headers=headers)


def settle(svc, order_id: str, op: str, headers: dict[str, str] | None = None):
    return requests.post(
        f"{svc.url}/v1/orders/{order_id}/{op}", headers=headers or PAYMENTS, timeout=10
    )


def stored_states(ev) -> dict[str, str | None]:
    engine = create_engine(ev.env["HOTDEAL_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(order_history.c.order_id, order_history.c.state).where(
                    order_history.c.prod_id == 1
                )
            ).all()
    finally:
        engine.dispose()
    return dict(rows)


def settled_everywhere(ev) -> None:
    """The writers stored every change, and the books add up."""
    wait_until(lambda: ev.client().xlen(keys.orders_stream(1)) == 0, "the stream to drain")
    code, report = reconcile(ev.env, wait=True)
    assert code == 0, report["violations"]


def test_a_paid_hold_is_sold_once_and_cannot_be_cancelled(event):
    ev = event()
    reserve(ev, 60)
    svc, _ = ev.service(), ev.writer()
    answer = hold(svc, "buyer-1", key="k1")
    assert answer.status_code == 201, answer.text
    order = answer.json()
    assert order["state"] == "reserved" and order["expires_at"]
    books = ev.books()
    assert (books["quantity"], books["held"], books["sold"]) == ("9", "1", "1")
    # The buyer may not confirm its own hold (that is the payment service's word).
    mine = settle(svc, order["order_id"], "confirm", auth.bearer("buyer-1"))
    assert mine.status_code == 403, mine.text
    for _ in range(2):  # idempotent
        paid = settle(svc, order["order_id"], "confirm")
        assert paid.status_code == 200 and paid.json()["state"] == "confirmed", paid.text
    late_cancel = settle(svc, order["order_id"], "cancel", auth.bearer("buyer-1"))
    assert late_cancel.status_code == 409 and late_cancel.json()["error"] == "confirmed"
    assert ev.books()["held"] == "0" and ev.books()["quantity"] == "9"
    looked = svc.get(f"/v1/orders/{order['order_id']}")
    assert looked.json()["state"] == "confirmed"
    settled_everywhere(ev)
    assert stored_states(ev) == {order["order_id"]: "confirmed"}


def test_an_unpaid_hold_expires_once_and_a_late_payment_gets_409(event):
    """Released by a sweep at its deadline: the stock, the buyer's count (limit 1) and
    the Idempotency-Key (the same key is then a new order) all come back."""
    ev = event(HOTDEAL_PER_USER_LIMIT="1")
    reserve(ev, 1, stock=1)
    svc, _ = ev.service(HOTDEAL_PER_USER_LIMIT="1"), ev.writer()
    first = hold(svc, "buyer-2", key="k2").json()
    assert hold(svc, "buyer-3").json()["error"] == "sold_out"
    wait_until(lambda: ev.books()["quantity"] == "1", "the hold to expire", timeout=10)
    late = settle(svc, first["order_id"], "confirm")
    assert late.status_code == 409 and late.json()["error"] == "expired", late.text
    again = hold(svc, "buyer-2", key="k2")
    assert again.status_code == 201 and again.json()["order_id"] != first["order_id"]
    assert svc.get(f"/v1/orders/{first['order_id']}").json()["state"] == "expired"
    settled_everywhere(ev)
    states = stored_states(ev)
    assert states[first["order_id"]] == "expired"
    assert states[again.json()["order_id"]] in ("reserved", "expired")  # a 1 s window
    # The oversell alert's gauge counts no released unit (it was sold again).
    engine = create_engine(ev.env["HOTDEAL_DATABASE_URL"])
    try:
        (family,) = read_persisted(engine)
    finally:
        engine.dispose()
    persisted = {tuple(s.labels.values()): s.value for s in family.samples}
    released_again = states[again.json()["order_id"]] == "expired"
    assert persisted.get(("1", "redis"), 0) == (0 if released_again else 1)


def test_a_buyer_cancels_its_own_hold_and_no_one_elses(event):
    ev = event()
    reserve(ev, 60, stock=2)
    svc = ev.service()
    order = hold(svc, "buyer-4").json()
    other = settle(svc, order["order_id"], "cancel", auth.bearer("buyer-5"))
    assert other.status_code == 404, other.text
    gone = settle(svc, order["order_id"], "cancel", auth.bearer("buyer-4"))
    assert gone.status_code == 200 and gone.json()["state"] == "cancelled"
    assert ev.books()["quantity"] == "2"
    paid = settle(svc, order["order_id"], "confirm")
    assert paid.status_code == 409 and paid.json()["error"] == "cancelled"


@pytest.mark.parametrize("binary", list(SERVERS.values()), ids=list(SERVERS))
def test_a_payment_and_the_deadline_at_the_same_instant_have_one_winner(event, binary):
    """Each hold is confirmed or expired, never both: the confirms race the sweeps of
    two pods and a writer right at the deadline, on each Redis the chart and managed
    services run (hold.lua, its durability wait, the sweeps' scripts)."""
    ev = event(binary=binary)
    reserve(ev, 2, stock=40)
    svcs = [ev.service(), ev.service()]
    ev.writer()
    orders = [hold(svcs[i % 2], f"racer-{i}").json()["order_id"] for i in range(40)]
    deadline = time.time() + 2
    time.sleep(max(0.0, deadline - time.time() - 0.05))

    def pay(i: int) -> tuple[str, int, str]:
        answer = settle(svcs[i % 2], orders[i], "confirm")
        return orders[i], answer.status_code, answer.json().get("state") or answer.json()["error"]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(pay, range(40)))
    assert {(code, what) for _, code, what in results} <= {(200, "confirmed"), (409, "expired")}
    paid = {oid for oid, code, _ in results if code == 200}
    wait_until(lambda: ev.books()["held"] == "0", "every hold to settle", timeout=10)
    books = ev.books()
    assert int(books["quantity"]) == 40 - len(paid) and int(books["sold"]) == len(paid)
    settled_everywhere(ev)
    states = stored_states(ev)
    assert {o for o, s in states.items() if s == "confirmed"} == paid
    assert {o for o, s in states.items() if s == "expired"} == set(orders) - paid


def test_a_redis_restored_to_before_a_payment_keeps_the_sale(event):
    """A failover to a replica (or a restore) from between a hold and its confirm: Redis
    shows the hold reserved again, and would release a paid unit at its deadline. The
    confirm reached the database first: the books are checked on the new server, found
    behind, and rebuilt with the hold confirmed (and the live holds with their deadlines)."""
    ev = event()
    reserve(ev, 3600, stock=5)
    svc, _ = ev.service(), ev.writer()
    paid, kept = (hold(svc, f"buyer-{i}").json() for i in range(2))
    copy = snapshot(ev)  # both holds reserved
    assert settle(svc, paid["order_id"], "confirm").status_code == 200
    settled_everywhere(ev)
    restart_from(ev, copy)
    assert ev.client().hexists(keys.holds(1), paid["order_id"])  # Redis forgot the payment
    # The writer checks the new server's books against the database and repairs them.
    wait_until(
        lambda: (
            not ev.client().hexists(keys.holds(1), paid["order_id"]) and ev.books().get("validated")
        ),
        "the books rebuilt from the database",
    )
    assert ev.client().zscore(keys.deadlines(1), kept["order_id"]) == int(
        datetime.fromisoformat(kept["expires_at"]).timestamp() * 1000
    )
    books = ev.books()
    assert (books["quantity"], books["held"], books["sold"]) == ("3", "1", "2")
    again = answer_of_settle(svc, paid["order_id"], "cancel")
    assert again.status_code == 409 and again.json()["error"] == "confirmed"
    assert answer_of_settle(svc, kept["order_id"], "confirm").status_code == 200
    settled_everywhere(ev)


def answer_of_settle(svc, order_id: str, op: str) -> requests.Response:
    """A settle retried while it answers 503 (the books being checked)."""
    last: list[requests.Response] = []

    def final() -> bool:
        last[:] = [settle(svc, order_id, op)]
        return last[0].status_code != 503

    wait_until(final, f"an answer to {op} {order_id}")
    return last[0]


def test_a_writer_killed_mid_release_leaves_each_change_stored_once(event):
    """A writer stores a batch of releases and dies before acknowledging it (kill -9):
    another claims the batch and stores it again. Each hold keeps the one state it
    settled to (a change applies only to a hold still reserved)."""
    ev = event(HOTDEAL_WRITER_CLAIM_IDLE_MS="300")
    reserve(ev, 3600, stock=6)
    svc = ev.service()
    orders = [hold(svc, f"buyer-{i}").json()["order_id"] for i in range(6)]
    for i, order_id in enumerate(orders):
        op = "confirm" if i % 2 else "cancel"
        assert settle(svc, order_id, op).status_code == 200
    client = ev.client()
    engine = create_engine(ev.env["HOTDEAL_DATABASE_URL"])
    try:
        first = OrderWriter(client, engine, consumer="doomed", durability_mode="none")
        batch = first._read_new()
        assert len(batch) == 12  # six holds, six changes
        first.persist(batch)  # stored; the ack never comes (the writer died here)
        survivor = OrderWriter(
            client, engine, consumer="survivor", durability_mode="none", claim_idle_ms=300
        )
        time.sleep(0.4)
        survivor.run(burst=True)
    finally:
        engine.dispose()
    assert client.xlen(keys.orders_stream(1)) == 0
    states = stored_states(ev)
    assert [states[o] for o in orders] == ["cancelled", "confirmed"] * 3
    code, report = reconcile(ev.env, wait=True)
    assert code == 0, report["violations"]


def test_the_pods_clocks_play_no_part_in_a_deadline(event, monkeypatch):
    """Deadlines are Redis's clock (TIME in the scripts): a pod whose clock jumped an hour
    ahead neither releases a hold early nor refuses its payment."""
    ev = event()
    reserve(ev, 60, stock=2)
    client = make_redis(ev.env["HOTDEAL_REDIS_URL"])
    stock = RedisStock(client, write="stream", durability_mode="none")
    taken = stock.take(OrderRequest(1, "buyer-9", 1), limit=0, idempotency_key=None)
    jump = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: jump)
    monkeypatch.setattr(time, "monotonic", lambda: jump)
    assert Expirer(client, "test").sweep() == 0
    assert stock.settle(taken.order_id, "confirm").state == "confirmed"


def test_the_waiting_room_keeps_its_line_while_every_unit_left_is_held(event):
    """Held units are not lost yet: while every unit left is held, the line waits
    instead of hearing "sold out"; a release reopens the sale, a payment ends it."""
    from .test_room import admitted, buy, join, poll, room_on

    ev = event()
    reserve(ev, 3600, stock=1)
    svc = ev.service()
    room_on(ev, "--rate", "1000")
    first = join(svc, "r0").json()["ticket"]
    second = join(svc, "r1").json()["ticket"]
    held = buy(svc, "r0", admitted(svc, "r0", first))
    assert held.status_code == 201 and held.json()["state"] == "reserved"
    assert poll(svc, "r1", second).json()["state"] in ("waiting", "admitted")
    assert settle(svc, held.json()["order_id"], "cancel", auth.bearer("r0")).status_code == 200
    again = buy(svc, "r1", admitted(svc, "r1", second))  # the unit came back: it sells
    assert again.status_code == 201, again.text
    assert settle(svc, again.json()["order_id"], "confirm").status_code == 200
    late = join(svc, "r2")
    assert late.json()["state"] == "sold_out", late.text


def test_sold_out_while_held_sells_again_once_a_hold_is_released(event):
    """Each worker remembers "sold out" for HOTDEAL_SOLD_OUT_RECHECK_MS: a released
    hold's unit is refused at most that long, then sold."""
    ev = event()
    reserve(ev, 3600, stock=1)
    svc = ev.service(HOTDEAL_SOLD_OUT_RECHECK_MS="300")
    first = hold(svc, "s0").json()
    for _ in range(4):  # every worker learns it
        assert hold(svc, "s1").json()["error"] == "sold_out"
    assert settle(svc, first["order_id"], "cancel", auth.bearer("s0")).status_code == 200
    sold = wait_until(lambda: hold(svc, "s1").status_code == 201, "the released unit sold")
    assert sold


def test_a_confirm_while_redis_came_back_empty_is_503_not_404(event):
    """A payment callback told 404 would refund a paid hold: while the server's products
    are not restored, a confirm answers 503 (retry); once the writer has rebuilt them
    from the database, the hold is there, with its deadline, and the confirm sells."""
    ev = event()
    reserve(ev, 3600, stock=3)
    svc, _ = ev.service(), ev.writer()
    order = hold(svc, "e0").json()
    settled_everywhere(ev)
    for w in ev.writers:
        w.stop(signal.SIGKILL)
    ev.redis.stop(signal.SIGKILL)
    shutil.rmtree(ev.redis.workdir)  # no AOF: it starts empty
    ev.redis.start()
    early = settle(svc, order["order_id"], "confirm")
    assert (early.status_code, early.json()["error"]) == (503, "paused"), early.text
    ev.writer("w2")  # restores the books from the database
    paid = answer_of_settle(svc, order["order_id"], "confirm")
    assert paid.status_code == 200 and paid.json()["state"] == "confirmed", paid.text
    assert ev.books()["held"] == "0" and ev.books()["quantity"] == "2"


def test_a_release_the_database_never_got_is_not_revived_by_a_repair(event):
    """A helper's attack: with two writers the database is not a prefix of Redis's
    history. A hold's release was still unstored (one writer stalled) while the next
    take of that unit was stored and confirmed (the other); Redis then rolled back. The
    repair revived the released hold, and confirming it sold the unit twice. Redis never
    holds more than the stock, so the oldest holds beyond it were released: repair
    releases them again, and tells the writers."""
    ev = event()
    reserve(ev, 3600, stock=1)
    generation = int(ev.books()["generation"])
    epoch = int(ev.books()["epoch"])
    now = datetime.now(UTC)
    released, sold = (
        "1-00000000-0000-4000-8000-00000000000a",
        "1-00000000-0000-4000-8000-00000000000b",
    )
    engine = create_engine(ev.env["HOTDEAL_DATABASE_URL"])
    rows = [
        OrderRow(released, 1, generation, "first", 1, Design.REDIS, now, epoch, 1,
                 state="reserved", expires_at=now + timedelta(hours=1)),
        OrderRow(sold, 1, generation, "second", 1, Design.REDIS, now, epoch, 3,
                 state="confirmed", expires_at=now + timedelta(hours=1), settled_at=now,
                 change_epoch=epoch, change_seq=4),
    ]  # fmt: skip
    try:
        with engine.begin() as conn:
            insert_new(conn, rows)
    finally:
        engine.dispose()
    ops(ev.env, "repair", "--product", "1")
    books = ev.books()
    assert (books["quantity"], books["sold"], books["held"]) == ("0", "1", "0")
    svc, _ = ev.service(), ev.writer()
    late = settle(svc, released, "confirm")
    assert late.status_code == 409 and late.json()["error"] == "expired", late.text
    settled_everywhere(ev)
    assert stored_states(ev) == {released: "expired", sold: "confirmed"}


def test_a_limit_refusal_names_only_the_orders_that_count(event):
    """A helper's find: `limit_exceeded` listed released holds among the buyer's orders."""
    ev = event(HOTDEAL_PER_USER_LIMIT="1")
    reserve(ev, 3600, stock=5)
    svc = ev.service(HOTDEAL_PER_USER_LIMIT="1")
    first = hold(svc, "l0").json()["order_id"]
    assert settle(svc, first, "cancel", auth.bearer("l0")).status_code == 200
    second = hold(svc, "l0").json()["order_id"]
    refused = hold(svc, "l0").json()
    assert refused["error"] == "limit_exceeded" and refused["orders"] == [second], refused
    listed = svc.get("/v1/orders?product_id=1&user_id=l0").json()["orders"]
    assert {o["order_id"]: o["state"] for o in listed} == {first: "cancelled", second: "reserved"}


def test_a_settle_stopped_part_way_pauses_for_a_repair_and_never_answers_reserved(event):
    """A second helper's find: a cancel that stopped on an error after its first writes
    (the fault: the buyers' hash hand-edited to a string) answered outcome_unknown, as
    it should, but its retry then answered 200 "reserved", and a confirm 409 "it was
    cancelled"; the unit stayed held for good. Now the retry pauses selling, and the
    writer's repair rebuilds the hold from the database, which settles it then."""
    ev = event()
    reserve(ev, window_s=60, stock=5)
    ev.writer()
    svc = ev.service()
    client = ev.client()
    taken = hold(svc, "m1", "k-m1")
    assert taken.status_code == 201, taken.text
    order_id = taken.json()["order_id"]
    wait_until(lambda: stored_states(ev).get(order_id) == "reserved", "the hold stored")
    buyers = client.hgetall(keys.buyers(1))
    client.delete(keys.buyers(1))
    client.set(keys.buyers(1), "not a hash")
    stopped = settle(svc, order_id, "cancel")
    assert (stopped.status_code, stopped.json()["error"]) == (503, "outcome_unknown")
    client.delete(keys.buyers(1))
    client.hset(keys.buyers(1), mapping=buyers)
    retried = [settle(svc, order_id, op) for op in ("cancel", "confirm")]
    assert [(r.status_code, r.json()["error"]) for r in retried] == [(503, "paused")] * 2

    def cancelled() -> bool:
        return settle(svc, order_id, "cancel").json().get("state") == "cancelled"

    wait_until(cancelled, "the repaired hold cancelled", timeout=30)
    settled_everywhere(ev)
    assert ev.books()["quantity"] == "5" and stored_states(ev)[order_id] == "cancelled"
