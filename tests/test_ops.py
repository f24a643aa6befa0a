"""`hotdeal-ops` as an operator runs it: a real process against the harness's stores."""

from __future__ import annotations

import json
import os
import threading
import time

from sqlalchemy import insert, update

from hotdeal.history import OrderRow
from hotdeal.model import keys
from hotdeal.schema import hotdeal_list, order_history
from hotdeal_local.servers import ops
from hotdeal_ops.reset import split

from .helpers import init_db_at_once, reconcile, stampede


def test_split_spreads_the_stock():
    assert split(10, 8) == [2, 2, 1, 1, 1, 1, 1, 1]
    assert sum(split(10_000, 7)) == 10_000


def test_init_db_is_idempotent(stack_env):
    for _ in range(2):
        out = json.loads(ops(stack_env, "init-db").stdout)
        assert out["tables"] == ["hotdeal_list", "hotdeal_slot", "order_history"]


def test_reset_sets_both_stores_and_purges(stack_env, rclient, engine):
    with engine.begin() as conn:
        conn.execute(insert(order_history), [OrderRow.now(1, 1, "old", 1, "legacy").as_params()])
    rclient.hset(keys.buyers(1), "old", 1)
    done = ops(
        stack_env, "reset", "--discard-orders", "--product", "1", "--stock", "10000", "--slots", "4"
    )
    assert json.loads(done.stdout)["stock"] == 10000
    assert rclient.hget(keys.books(1), "quantity") == "10000"
    assert not rclient.exists(keys.buyers(1))
    code, report = reconcile(stack_env)
    assert code == 0, report["violations"]
    assert report["order_history"]["rows"] == 0
    assert report["legacy-slots"]["slots"] == 4


def test_reconcile_catches_oversell_and_lost_orders(stack_env, rclient, engine):
    ops(stack_env, "reset", "--discard-orders", "--stock", "5")
    generation = int(rclient.hget(keys.books(1), "generation"))
    with engine.begin() as conn:  # a legacy row the stock never paid for
        conn.execute(
            insert(order_history),
            [OrderRow.now(1, generation, "ghost", 1, "legacy").as_params()],
        )
    # A Redis sale with no order record.
    rclient.hincrby(keys.books(1), "quantity", -1)
    rclient.hincrby(keys.books(1), "sold", 1)
    code, report = reconcile(stack_env, wait=False)
    assert code == 1
    joined = " ".join(report["violations"])
    assert "legacy: initial 5 != remaining 5 + sold 1" in joined
    assert "an order was lost" in joined


def test_reconcile_catches_negative_stock(stack_env, engine):
    ops(stack_env, "reset", "--discard-orders", "--stock", "5")
    with engine.begin() as conn:
        conn.execute(update(hotdeal_list).values(quantity=-1))
    code, report = reconcile(stack_env, wait=False)
    assert code == 1
    assert "legacy: hotdeal_list.quantity is negative" in report["violations"]


def test_opens_at_and_bad_arguments(stack_env, rclient):
    done = ops(
        stack_env,
        "reset",
        "--discard-orders",
        "--stock",
        "3",
        "--opens-at",
        "2030-01-01T09:00:00+09:00",
    )
    assert json.loads(done.stdout)["opens_at"] == "2030-01-01T09:00:00+09:00"
    assert rclient.hget(keys.books(1), "opens_at") == str(1893456000000)
    bad = ops(
        stack_env,
        "reset",
        "--discard-orders",
        "--stock",
        "3",
        "--opens-at",
        "tomorrow",
        check=False,
    )
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr
    bad = ops(stack_env, "reset", "--discard-orders", "--stock", "-1", check=False)
    assert bad.returncode == 2


def test_unreachable_backend_is_a_clear_message(stack_env):
    env = {**stack_env, "HOTDEAL_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/x"}
    done = ops(env, "reconcile", check=False)
    assert done.returncode == 3
    assert "unreachable" in done.stderr and "Traceback" not in done.stderr


def test_missing_configuration_is_a_clear_message():
    done = ops({"HOTDEAL_DATABASE_URL": ""}, "init-db", check=False)
    assert done.returncode == 2
    assert "HOTDEAL_DATABASE_URL" in done.stderr


def test_reconcile_refuses_to_skip_redis_silently(stack_env, reset):
    """Without HOTDEAL_REDIS_URL it once checked only the database and said ok."""
    reset(5)  # its own event: it passed only after a test before it had made one
    env = {**stack_env, "HOTDEAL_REDIS_URL": ""}
    done = ops(env, "reconcile", check=False)
    assert done.returncode == 2
    assert "HOTDEAL_REDIS_URL" in done.stderr and "--no-redis" in done.stderr
    assert ops(env, "reconcile", "--no-redis", check=False).returncode == 0


def test_redis_unreachable_is_exit_3(stack_env):
    env = {**stack_env, "HOTDEAL_REDIS_URL": "redis://127.0.0.1:1/0"}
    done = ops(env, "reconcile", check=False)
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr


def test_reconcile_is_consistent_during_live_traffic(order_redis, writer_proc, stack_env):
    """It once read the database and Redis at different moments and reported "lost or
    duplicated" in 10 of 30 runs under load."""
    ops(stack_env, "reset", "--discard-orders", "--stock", "100000")
    stop = threading.Event()

    def buy() -> None:
        i = 0
        while not stop.is_set():
            bodies = [
                {"product_id": 1, "user_id": f"live-{i}-{n}", "quantity": 1} for n in range(50)
            ]
            stampede(order_redis, bodies, concurrency=10)
            i += 1

    load = threading.Thread(target=buy)
    load.start()
    try:
        results = [reconcile(stack_env, wait=True) for _ in range(8)]
    finally:
        stop.set()
        load.join()
    failures = [report["violations"] for code, report in results if code != 0]
    assert not failures, failures
    assert results[-1][1]["redis"]["sold"] > 0


def test_init_db_from_several_pods_at_once(pg_server):
    """Every database client runs init-db as an initContainer: four at once on an empty
    database must all succeed."""
    url = pg_server.new_database(f"initdb_{int(time.time() * 1000)}")
    results = init_db_at_once({**os.environ, "HOTDEAL_DATABASE_URL": url}, 4)
    assert all(code == 0 for code, _ in results), results


def test_a_refused_login_stops_init_db_with_its_code(stack_env):
    """A wrong user or password once looked like "waiting for the database:
    DatabaseError" for the whole --wait (900 s in the chart). A refused login is retried
    for --logon-grace (gvenzl creates the user after the database opens), then init-db
    stops and says what to check."""
    url = stack_env["HOTDEAL_DATABASE_URL"].replace("postgres@", "no_such_user@")
    done = ops(
        {**stack_env, "HOTDEAL_DATABASE_URL": url},
        "init-db",
        "--wait",
        "900",
        "--logon-grace",
        "2",
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "waiting for the database: logon refused" in done.stderr  # retried in the grace
    assert "refuses the login (logon refused)" in done.stderr
    assert "check the user and password" in done.stderr and "Traceback" not in done.stderr


def test_oracle_errors_are_logged_by_code():
    import oracledb
    import sqlalchemy.exc

    from hotdeal import errors

    refused = sqlalchemy.exc.DatabaseError(
        "connect", {}, oracledb.DatabaseError("ORA-01017: invalid credential or not authorized")
    )
    assert errors.is_logon_refused(refused) and errors.error_code(refused) == "ORA-01017"
    starting = sqlalchemy.exc.OperationalError(
        "connect", {}, oracledb.DatabaseError("ORA-01033: ORACLE initialization in progress")
    )
    assert not errors.is_logon_refused(starting) and errors.error_code(starting) == "ORA-01033"


def test_a_reset_in_the_middle_of_a_sale_tries_its_transaction_again(engine, rclient, monkeypatch):
    """A take between the reset's WATCH and EXEC made it fail (WatchError: exit 4)."""
    from hotdeal_ops import reset as reset_module

    reset_module.reset(engine, rclient, 1, 10, slots=1, opens_at=None, discard_orders=True)
    checked = reset_module._rebuilt_meanwhile
    takes = []

    def a_take_meanwhile(client, product_id, fresh):
        answer = checked(client, product_id, fresh)
        if len(takes) < 2 and client is not rclient:  # the WATCHing pipeline
            takes.append(rclient.hincrby(keys.books(1), keys.SEQ, 1))
        return answer

    monkeypatch.setattr(reset_module, "_rebuilt_meanwhile", a_take_meanwhile)
    reset_module.reset(engine, rclient, 1, 7, slots=1, opens_at=None, discard_orders=True)
    assert len(takes) == 2  # two transactions lost, the third replaced the books
    books = rclient.hgetall(keys.books(1))
    assert (books["quantity"], books["seq"]) == ("7", "0")
