"""Redis Cluster (and ElastiCache cluster mode) on a real 3-node cluster on loopback,
made as an operator would (redis-server --cluster-enabled yes, redis-cli --cluster
create): products on different nodes, takes with their durability wait on each node,
the writer draining one stream per product, reset and reconcile, the service and the ops
CLI, and a slot moving to another node under the service's feet. Twice: Debian's Redis
7.0 and valkey 9.1 (appendfsync always; each take followed by its config check)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from redis.crc import key_slot
from sqlalchemy import delete, func, select

from hotdeal import fence
from hotdeal.errors import ApiError
from hotdeal.model import keys
from hotdeal.redis_client import make_redis, node_client
from hotdeal.schema import hotdeal_list, hotdeal_slot, order_history
from hotdeal.validation import OrderRequest
from hotdeal_local.servers import RedisClusterServers, ops, writer
from hotdeal_ops.reconcile import reconcile
from hotdeal_ops.reset import reset
from hotdeal_order_redis.stock import RedisStock
from hotdeal_order_redis.writer import OrderWriter

from .events import VALKEY
from .helpers import service_running, statuses, workdir

STOCK = 40


@pytest.fixture(
    scope="module",
    params=[None, VALKEY],
    ids=["redis-7.0", "valkey-9.1"],
)
def cluster(request) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(
        workdir("cluster"), appendfsync="always", binary=request.param
    ).start()
    yield servers
    servers.stop()


@pytest.fixture(scope="module")
def client(cluster) -> Iterator[redis.RedisCluster]:
    c = make_redis(cluster.url, cluster=True)
    yield c
    c.close()


@pytest.fixture(scope="module")
def products(client, engine) -> Iterator[list[int]]:
    """One product per node, with ids of their own; gone from the session's shared
    database afterwards (the other tests see one product)."""
    chosen: dict[str, int] = {}
    for pid in range(201, 300):
        node = client.get_node_from_key(keys.books(pid)).name
        chosen.setdefault(node, pid)
    assert len(chosen) == 3
    yield sorted(chosen.values())
    with engine.begin() as conn:
        for table in (order_history, hotdeal_slot, hotdeal_list):
            conn.execute(delete(table).where(table.c.prod_id.in_(chosen.values())))


@pytest.fixture
def fresh(engine, client, products) -> list[int]:
    for pid in products:
        reset(engine, client, pid, STOCK, slots=1, opens_at=None, discard_orders=True)
    return products


def test_a_products_keys_share_a_node_and_the_products_spread(client, fresh):
    homes = set()
    for pid in fresh:
        names = [
            *keys.take_keys(pid),
            keys.idempotency(pid, "u", "k"),
            keys.idempotency_placeholder(pid),
            keys.dead_letter(pid),
        ]
        assert len({key_slot(k.encode()) for k in names}) == 1, pid
        homes.add(client.get_node_from_key(names[0]).name)
    assert len(homes) == 3


def _buy(stock: RedisStock, pid: int, user: str) -> str:
    order = OrderRequest(product_id=pid, user_id=user, quantity=1)
    try:
        stock.take(order, limit=1, idempotency_key=f"k-{user}")
        return "ok"
    except ApiError as exc:
        return exc.code


def test_takes_on_every_node_sell_exactly_the_stock_and_the_writer_stores_them(
    engine, client, fresh, cluster
):
    mode = "fsync"
    stock = RedisStock(client, write="stream", durability_mode=mode)
    stock.warm_up()
    # valkey acknowledges WAITAOF without an fsync, Redis 7.0 has none: on both, each
    # take is followed by its config check, on each node.
    assert stock.durability_plan().commands[0][0] == "CONFIG"
    attempts = [(pid, f"buyer-{i}") for pid in fresh for i in range(STOCK + 25)]
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda a: (a[0], _buy(stock, *a)), attempts))
    for pid in fresh:
        got = [code for p, code in answers if p == pid]
        assert got.count("ok") == STOCK and got.count("sold_out") == 25, pid

    drain = OrderWriter(client, engine, consumer="cluster-test", max_wait_ms=20)
    drain.durability_mode = mode
    drain.run(burst=True)
    with engine.connect() as conn:
        rows = dict(
            conn.execute(
                select(order_history.c.prod_id, func.count())
                .where(order_history.c.prod_id.in_(fresh))
                .group_by(order_history.c.prod_id)
            ).all()
        )
    assert rows == dict.fromkeys(fresh, STOCK)
    for pid in fresh:
        report = reconcile(engine, client, pid, wait_s=5)
        assert report["violations"] == [], report
        assert client.xlen(keys.orders_stream(pid)) == 0  # persisted entries leave


def _move_slot(cluster: RedisClusterServers, key: str) -> None:
    """Migrate `key`'s slot (and its keys) to another node, as resharding does."""
    clients = [redis.Redis.from_url(n.url, decode_responses=True) for n in cluster.nodes]
    slot = key_slot(key.encode())
    ids = [c.execute_command("CLUSTER", "MYID") for c in clients]
    src = next(
        i for i, c in enumerate(clients) if c.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
    )
    dst = (src + 1) % len(clients)
    clients[dst].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src])
    clients[src].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst])
    keys = clients[src].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    clients[src].execute_command(
        "MIGRATE", "127.0.0.1", cluster.nodes[dst].port, "", 0, 5000,
        "AUTH", cluster.password, "KEYS", *keys,
    )  # fmt: skip
    for i in (dst, src, *(i for i in range(len(clients)) if i not in (src, dst))):
        clients[i].execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[dst])
    for c in clients:
        c.close()


def test_a_slot_moving_to_another_node_is_followed_without_a_double_take(
    engine, client, fresh, cluster
):
    pid = fresh[0]
    stock = RedisStock(client, write="stream", durability_mode="fsync")
    stock.warm_up()
    assert _buy(stock, pid, "before") == "ok"  # the worker's connection to the old node
    before = node_client(client, keys.books(pid)).connection_pool.connection_kwargs["port"]
    _move_slot(cluster, keys.books(pid))
    # MOVED: topology refreshed, sent again; the books were checked on another server,
    # so the new node sells nothing until they are checked there (the writer's job).
    assert _buy(stock, pid, "after") == "paused"
    assert fence.validate_all(engine, client)[pid] == "stamped"
    assert _buy(stock, pid, "after") == "ok"
    after = node_client(client, keys.books(pid)).connection_pool.connection_kwargs["port"]
    assert after != before
    books = client.hgetall(keys.books(pid))
    assert (int(books["sold"]), int(books["quantity"])) == (2, STOCK - 2)  # taken once each
    assert _buy(stock, pid, "after") == "ok"  # its key replays the order: nothing taken
    assert client.hget(keys.books(pid), "sold") == "2"
    # Home again (three moves round the three nodes): the module's products stay one
    # per node for the tests after this one, in any order.
    for _ in range(2):
        _move_slot(cluster, keys.books(pid))
    client.nodes_manager.initialize()
    OrderWriter(client, engine, consumer="cluster-move", max_wait_ms=20).run(burst=True)
    assert reconcile(engine, client, pid, wait_s=5)["violations"] == []


def test_the_service_writer_and_ops_cli_run_on_the_cluster(stack_env, cluster, products, logs):
    env = {**stack_env, "HOTDEAL_REDIS_URL": cluster.url, "HOTDEAL_REDIS_CLUSTER": "true"}
    for pid in products:
        done = ops(
            env, "reset", "--product", str(pid), "--stock", "5", "--slots", "1", "--discard-orders"
        )
        assert done.returncode == 0, done.stderr
    drain = writer(env, log=logs / "cluster-writer.log").start()
    try:
        with service_running("order-redis", env, logs) as svc:
            assert svc.admin("/readyz", timeout=5).status_code == 200
            answers = [
                svc.order({"product_id": pid, "user_id": f"svc-{i}", "quantity": 1})
                for pid in products
                for i in range(7)
            ]
            assert statuses(answers) == {201: 15, 409: 6}
        for pid in products:
            done = ops(
                env, "reconcile", "--product", str(pid), "--wait", "--timeout", "30", check=False
            )
            assert done.returncode == 0, done.stdout + done.stderr
    finally:
        drain.stop()
