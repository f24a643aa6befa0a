"""Real parts only: every test talks to a redis-server and a PostgreSQL that this
harness starts on free ports, and to the services as gunicorn runs them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import settings
from sqlalchemy import Engine

from hotdeal.db import make_engine
from hotdeal_local.servers import PostgresServer, Process, RedisServer, ops
from hotdeal_ops.reset import reset as reset_both

from .events import event  # noqa: F401 (a fixture)
from .helpers import Service, service_running, workdir

# `make test` is deterministic: the same examples every run, no example database (a find
# from an exploring run is pinned as an @example). `make test-explore` searches widely.
settings.register_profile(
    "gate", max_examples=100, deadline=None, derandomize=True, database=None, print_blob=True
)
settings.register_profile(
    "explore", max_examples=3000, deadline=None, database=None, print_blob=True
)
settings.load_profile(os.environ.get("HOTDEAL_HYPOTHESIS", "gate"))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(workdir("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer(workdir("pg")).start()
    yield server
    server.stop("immediate")


@pytest.fixture(scope="session")
def stack_env(redis_server: RedisServer, pg_server: PostgresServer) -> dict[str, str]:
    env = {
        "HOTDEAL_DATABASE_URL": pg_server.url,
        "HOTDEAL_REDIS_URL": redis_server.url,
        "HOTDEAL_HOLD_MS": "5",
        "HOTDEAL_WORKERS": "2",
    }
    ops(env, "init-db")
    return env


@pytest.fixture(scope="session")
def engine(stack_env: dict[str, str]) -> Iterator[Engine]:
    eng = make_engine(stack_env["HOTDEAL_DATABASE_URL"])
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def rclient(stack_env: dict[str, str]) -> redis.Redis:
    return redis.Redis.from_url(stack_env["HOTDEAL_REDIS_URL"], decode_responses=True)


@pytest.fixture
def reset(engine: Engine, rclient: redis.Redis):
    """reset(stock, product=1, slots=8, opens_at=None): both stores, as `hotdeal-ops reset`."""

    def _reset(stock: int, product: int = 1, slots: int = 8, opens_at=None) -> None:
        reset_both(
            engine, rclient, product, stock, slots=slots, opens_at=opens_at, discard_orders=True
        )

    return _reset


@pytest.fixture(scope="session")
def logs() -> Path:
    return workdir("logs")


def _service(name: str, env: dict[str, str], logs: Path, **extra: str) -> Iterator[Service]:
    with service_running(name, env, logs, **extra) as service:
        yield service


@pytest.fixture(scope="session")
def legacy(stack_env, logs) -> Iterator[Service]:
    yield from _service("legacy", stack_env, logs)


@pytest.fixture(scope="session")
def legacy_slots(stack_env, logs) -> Iterator[Service]:
    yield from _service("legacy", stack_env, logs, HOTDEAL_LEGACY_SLOTS="8")


@pytest.fixture(scope="session")
def order_redis(stack_env, logs) -> Iterator[Service]:
    """Write-behind mode, per-user limit 1 (the defaults)."""
    yield from _service("order-redis", stack_env, logs)


@pytest.fixture(scope="session")
def order_redis_inline(stack_env, logs) -> Iterator[Service]:
    yield from _service(
        "order-redis", stack_env, logs, HOTDEAL_ORDER_WRITE="inline", HOTDEAL_PER_USER_LIMIT="0"
    )


@pytest.fixture(scope="session")
def writer_proc(stack_env, logs) -> Iterator[Process]:
    from hotdeal_local.servers import writer

    proc = writer(
        {**stack_env, "HOTDEAL_WRITER_CLAIM_IDLE_MS": "1000"}, log=logs / "writer.log"
    ).start()
    yield proc
    proc.stop()
