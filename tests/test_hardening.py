"""What an attacker or a bad client sends, and what a bad row does to the writer."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import redis
import requests
import sqlalchemy.exc
from sqlalchemy import delete, func, select

from hotdeal.errors import is_retryable_transaction, is_unavailable
from hotdeal.model import keys
from hotdeal.schema import hotdeal_list, hotdeal_slot, order_history
from hotdeal_ops.reset import reset as reset_both
from hotdeal_order_redis import writer_metrics
from hotdeal_order_redis.writer import OrderWriter

from .events import wait_until
from .helpers import reconcile, service_running, stampede, statuses

POISON = [
    "a\u0000b",
    "a\u001bb",
    "zero\u200bwidth",
    "bidi\u202eevil",
    "tab\tx",
    "line\u2028x",
    "un\u0378assigned",  # no character in any Unicode version
    "private\ue000use",
]


@pytest.mark.parametrize("user", POISON)
def test_control_and_invisible_characters_are_refused_by_both(
    legacy, order_redis, reset, stack_env, user
):
    reset(5)
    for service in (legacy, order_redis):
        r = service.order({"product_id": 1, "user_id": user, "quantity": 1})
        assert r.status_code == 400, (service.name, r.text)
        assert r.json()["error"] == "invalid_request"
        assert user not in r.text  # the answer does not echo the input
    code, report = reconcile(stack_env)  # and nothing was sold, in either store
    assert code == 0 and report["legacy"]["sold"] == 0 and report["redis"]["sold"] == 0, report


def test_lone_surrogates_are_refused(legacy, order_redis, reset):
    reset(5)
    for service in (legacy, order_redis):
        r = service.order('{"product_id": 1, "user_id": "x\\ud800", "quantity": 1}')
        assert (r.status_code, r.json()["error"]) == (400, "invalid_request"), service.name


def test_huge_and_deep_bodies_are_refused_before_parsing(legacy, order_redis):
    for service in (legacy, order_redis):
        big = service.order("[" + "1," * 3_000_000 + "1]")
        assert big.status_code == 413, service.name
        assert big.json()["error"] == "request_entity_too_large"
        deep = service.order("[" * 2000 + "]" * 2000)
        assert (deep.status_code, deep.json()["error"]) == (400, "invalid_request")
        assert "nested" in deep.json()["message"]


def test_idempotency_keys_of_different_users_do_not_collide(order_redis, reset, writer_proc):
    """User "a" with key "b:c" and user "a:b" with key "c" once shared one Redis key."""
    reset(10)
    first = order_redis.order(
        {"product_id": 1, "user_id": "a:b", "quantity": 1}, headers={"Idempotency-Key": "c"}
    )
    other = order_redis.order(
        {"product_id": 1, "user_id": "a", "quantity": 1}, headers={"Idempotency-Key": "b:c"}
    )
    assert first.status_code == other.status_code == 201
    assert "Idempotent-Replayed" not in other.headers
    assert first.json()["order_id"] != other.json()["order_id"]
    assert other.json()["remaining"] == 8


def _series_products(service) -> set[str]:
    text = service.admin("/metrics").text
    return {
        line.split('product="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("hotdeal_orders_total{") and 'product="' in line
    }


def test_clients_cannot_mint_metric_series(legacy, order_redis, reset):
    reset(5)
    for service in (legacy, order_redis):
        for pid in (7_777_777, 8_888_888):
            r = service.order({"product_id": pid, "user_id": "u", "quantity": 1})
            assert r.status_code == 404
        service.order("garbage")
        products = _series_products(service)
        assert not {"7777777", "8888888"} & products, products
        assert products <= {"1", "none"}


def test_inline_mode_replays_only_committed_orders(stack_env, logs, reset):
    """The retry of an order whose INSERT is still running gets 409 in_progress, not a
    201 for a row that may never exist."""
    reset(10)
    with service_running(
        "order-redis",
        stack_env,
        logs,
        HOTDEAL_ORDER_WRITE="inline",
        HOTDEAL_HOLD_MS="1500",
        HOTDEAL_PER_USER_LIMIT="0",
    ) as inline:
        body = {"product_id": 1, "user_id": "slow", "quantity": 1}
        headers = {"Idempotency-Key": "k-1"}
        first: list[requests.Response] = []
        runner = threading.Thread(target=lambda: first.append(inline.order(body, headers=headers)))
        runner.start()
        record = keys.idempotency(1, "slow", "k-1")
        client = redis.Redis.from_url(stack_env["HOTDEAL_REDIS_URL"])
        wait_until(lambda: client.exists(record), "the first request to hold its key")
        early = inline.order(body, headers=headers)
        assert (early.status_code, early.json()["error"]) == (409, "in_progress")
        assert early.headers["Retry-After"] == "1"
        runner.join()
        assert first[0].status_code == 201
        late = inline.order(body, headers=headers)
        assert late.status_code == 201
        assert late.headers["Idempotent-Replayed"] == "true"
        assert late.json()["order_id"] == first[0].json()["order_id"]


POISON_PRODUCT = 901


def _entry(user: str, generation: int, seq: int) -> dict[str, str]:
    return {
        "order_id": f"{POISON_PRODUCT}-poison-test-{seq}",
        "product_id": str(POISON_PRODUCT),
        "generation": str(generation),
        "user_id": user,
        "quantity": "1",
        "ordered_at": str(int(time.time() * 1000)),
        "epoch": "1",
        "seq": str(seq),
        "idem": "",
    }


@pytest.fixture
def private_redis(stack_env):
    """A Redis database of the test's own: the session's writer process drains db 0."""

    def make(db: int) -> redis.Redis:
        client = redis.Redis.from_url(
            stack_env["HOTDEAL_REDIS_URL"].rsplit("/", 1)[0] + f"/{db}", decode_responses=True
        )
        client.flushdb()
        return client

    return make


@pytest.fixture
def poison_product(engine):
    """Product 901 exists only for the test: the other tests see one product."""
    yield POISON_PRODUCT
    with engine.begin() as conn:
        for table in (order_history, hotdeal_slot, hotdeal_list):
            conn.execute(delete(table).where(table.c.prod_id == POISON_PRODUCT))


def test_writer_sets_a_poisoned_order_aside_and_stores_the_rest(
    engine, private_redis, caplog, poison_product
):
    """A row the database refuses (NUL in a user id, a user id too long for its column)
    goes to the dead-letter stream with the reason; the orders batched with it are
    stored; the writer keeps going and never logs the order's values. In process, on a
    Redis database of its own (the session's writer process drains database 0)."""
    rclient = private_redis(7)
    reset_both(engine, rclient, POISON_PRODUCT, 100, slots=1, opens_at=None, discard_orders=True)
    generation = int(rclient.hget(keys.books(POISON_PRODUCT), "generation"))
    stream = keys.orders_stream(POISON_PRODUCT)
    users = ["ok-1", "nul\x00user", "ok-2", "x" * 100, "ok-3", "ok-4"]
    for seq, user in enumerate(users, start=1):
        rclient.xadd(stream, _entry(user, generation, seq))
    # The books as the take script would have left them.
    rclient.hset(keys.books(POISON_PRODUCT), mapping={"seq": 6, "sold": 6, "quantity": 94})
    writer = OrderWriter(
        rclient, engine, consumer="in-process", durability_mode="none", check_ms=60_000
    )
    dead_before = writer_metrics.DEAD_LETTERS._value.get()
    with caplog.at_level(logging.INFO):
        writer.run(burst=True)
    with engine.connect() as conn:
        stored = set(
            conn.execute(
                select(order_history.c.user_id).where(order_history.c.prod_id == POISON_PRODUCT)
            ).scalars()
        )
    assert stored == {"ok-1", "ok-2", "ok-3", "ok-4"}
    dead = rclient.xrange(keys.dead_letter(POISON_PRODUCT))
    assert sorted(f["seq"] for _, f in dead) == ["2", "4"]
    assert [f["reason"] for _, f in dead] == [
        "refused by the database: DataError: PostgreSQL text fields cannot contain NUL "
        "(0x00) bytes",
        "refused by the database: DataError: SQLSTATE 22001",
    ]
    assert "rollback" not in caplog.text
    assert writer_metrics.DEAD_LETTERS._value.get() - dead_before == 2
    assert rclient.xlen(stream) == 0
    assert "nul" not in caplog.text and "x" * 100 not in caplog.text


@pytest.mark.parametrize(
    ("message", "transient"),
    [
        ("ORA-01109: database not open", True),
        ("ORA-12514: TNS:listener does not currently know of service requested", True),
        ("ORA-01033: ORACLE initialization or shutdown in progress", True),
        ("DPY-6005: cannot connect to database", True),
        ("ORA-16000: database or pluggable database open for read-only access", True),
        ("ORA-01653: unable to extend table APP.ORDER_HISTORY by 128 in tablespace USERS", True),
        ("ORA-00257: Archiver error. Connect AS SYSDBA only until resolved.", True),
        ("ORA-04031: unable to allocate 4096 bytes of shared memory", True),
        ("ORA-00001: unique constraint (APP.SYS_C008) violated", False),
        ("ORA-12899: value too large for column", False),
    ],
)
def test_oracle_errors_are_told_apart_offline(message, transient):
    exc = sqlalchemy.exc.DatabaseError("INSERT ...", {}, Exception(message))
    assert is_unavailable(exc) is transient


def test_deadlocks_are_retried_not_answered_503():
    class PgDeadlock(Exception):
        sqlstate = "40P01"

    assert is_retryable_transaction(sqlalchemy.exc.OperationalError("x", {}, PgDeadlock()))
    assert is_retryable_transaction(
        sqlalchemy.exc.DatabaseError("x", {}, Exception("ORA-00060: deadlock detected"))
    )
    assert not is_retryable_transaction(
        sqlalchemy.exc.DatabaseError("x", {}, Exception("ORA-00001: unique constraint"))
    )


@pytest.mark.parametrize("stock", [40, 120])
def test_slot_design_answers_no_5xx_as_slots_run_low(legacy_slots, reset, stack_env, stock):
    """20 buyers at once with 1-3 units each over 8 slots: waiting and cross-slot takes
    once deadlocked (503s); now every answer is a sale or sold_out."""
    reset(stock, slots=8)
    bodies = [{"product_id": 1, "user_id": f"s-{i}", "quantity": 1 + i % 3} for i in range(240)]
    responses = stampede(legacy_slots, bodies, concurrency=20)
    got = statuses(responses)
    assert set(got) <= {201, 409}, got
    sold = sum(
        b["quantity"] for b, r in zip(bodies, responses, strict=True) if r.status_code == 201
    )
    assert stock - 2 <= sold <= stock
    code, report = reconcile(stack_env)
    assert code == 0, report["violations"]


def test_legacy_lookups_read_the_database(legacy, reset, engine):
    reset(5)
    placed = legacy.order({"product_id": 1, "user_id": "finder", "quantity": 1}).json()
    found = legacy.get(f"/v1/orders/{placed['order_id']}").json()
    assert (found["user_id"], found["quantity"]) == ("finder", 1)
    mine = legacy.get("/v1/orders?product_id=1&user_id=finder").json()["orders"]
    assert [o["order_id"] for o in mine] == [placed["order_id"]]
    assert legacy.get("/v1/orders/1-nope").status_code == 404
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(order_history)).scalar() >= 1


def test_a_retried_batch_keeps_only_what_the_current_redis_holds(
    engine, private_redis, poison_product
):
    """A batch read from a primary that then failed over is retried against the new
    primary: entries it never received must not reach order_history (chaos found the
    books 'behind the database' after every failover until this)."""
    from hotdeal.model.records import StreamEntry
    from hotdeal_order_redis.writer import Entry

    rclient = private_redis(8)
    reset_both(engine, rclient, POISON_PRODUCT, 100, slots=1, opens_at=None, discard_orders=True)
    generation = int(rclient.hget(keys.books(POISON_PRODUCT), "generation"))
    stream = keys.orders_stream(POISON_PRODUCT)
    kept = _entry("survivor", generation, 1)
    kept_id = rclient.xadd(stream, kept)
    rclient.hset(keys.books(POISON_PRODUCT), mapping={"seq": 1, "sold": 1, "quantity": 99})
    lost = _entry("lost-in-failover", generation, 2)
    writer = OrderWriter(rclient, engine, consumer="retry", durability_mode="none", check_ms=60_000)
    writer._ensure_group(stream)
    rclient.xreadgroup(keys.WRITER_GROUP, "retry", {stream: ">"})
    writer._retry = [
        Entry(stream, kept_id, StreamEntry.parse(kept).row(), kept),
        Entry(stream, "1-1", StreamEntry.parse(lost).row(), lost),  # from the old primary
    ]
    writer.run_once()
    with engine.connect() as conn:
        users = set(
            conn.execute(
                select(order_history.c.user_id).where(order_history.c.prod_id == POISON_PRODUCT)
            ).scalars()
        )
    assert users == {"survivor"}


def test_takes_on_many_threads_never_exhaust_the_pool(stack_env, reset):
    """Each thread takes on a connection of its own; those must not count against the
    pool's cap, which the pool's own users need (inline mode's give-backs and commits:
    32 gthread threads used to exhaust a 64-connection pool, and an answered take lost
    its give-back)."""
    from concurrent.futures import ThreadPoolExecutor

    from hotdeal.errors import ApiError
    from hotdeal.redis_client import make_redis
    from hotdeal.validation import OrderRequest
    from hotdeal_order_redis.stock import RedisStock

    reset(100)
    client = make_redis(stack_env["HOTDEAL_REDIS_URL"], max_connections=4)
    stock = RedisStock(client, write="stream", durability_mode="fsync")

    def buy(i: int) -> str:
        try:
            stock.take(
                OrderRequest(product_id=1, user_id=f"t{i}", quantity=1),
                limit=1,
                idempotency_key=None,
            )
            return "ok"
        except ApiError as exc:
            return exc.code

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(buy, range(24)))
    assert answers == ["ok"] * 24
    assert client.hget("{prod-001}-books", "quantity") == "76"
    # The pool is still whole: all 4 of its connections can be handed out at once (a
    # take's connection counted against the cap would leave fewer: "Too many connections").
    pool = client.connection_pool
    held = [pool.get_connection() for _ in range(4)]
    for conn in held:
        conn.send_command("PING")
        assert conn.read_response() in (b"PONG", "PONG")
        pool.release(conn)


def test_logs_never_carry_an_orders_values(stack_env, reset, tmp_path):
    """A buyer's id and Idempotency-Key are personal data: the services, their admin
    listeners and the writer log none of them, on any path (sales, replays, lookups,
    refusals, bad input, a database that is down)."""
    import os

    from hotdeal_local.servers import writer

    logs = tmp_path / "logs"
    logs.mkdir()
    os.chmod(tmp_path, 0o755)
    user, key = "CANARYUSER9f3", "CANARYKEY9f3"
    body = {"product_id": 1, "user_id": user, "quantity": 1}
    reset(10)
    w = writer({**stack_env, "HOTDEAL_LOG_LEVEL": "debug"}, log=logs / "writer.log").start()
    try:
        for name in ("order-redis", "legacy"):
            with service_running(name, stack_env, logs, HOTDEAL_LOG_LEVEL="debug") as svc:
                assert svc.order(body, headers={"Idempotency-Key": key}).status_code == 201
                svc.order(body, headers={"Idempotency-Key": key})  # a replay or a refusal
                svc.order({**body, "user_id": user + "\u0000"})  # bad input: 400
                svc.get(f"/v1/orders?product_id=1&user_id={user}")
            down = {**stack_env, "HOTDEAL_DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:1/x"}
            if name == "legacy":  # its database is down: a 503, logged by class only
                with service_running(name, down, logs, HOTDEAL_LOG_LEVEL="debug") as svc:
                    assert svc.order(body).status_code == 503
        code, report = reconcile(stack_env)
        assert code == 0, report
    finally:
        w.stop()
    texts = {p.name: p.read_text(errors="replace") for p in logs.iterdir()}
    assert len(texts) >= 4 and all(texts.values())  # every process logged something
    leaked = {name for name, text in texts.items() if "CANARY" in text}
    assert not leaked, {name: texts[name][-2000:] for name in leaked}
