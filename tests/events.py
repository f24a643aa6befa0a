"""Private Redis servers for tests of faults: an event (a Redis of a chosen version and
setting, beside the session's PostgreSQL) with order-redis as gunicorn runs it and
writers as processes, and the means to break it (AOF copies, restarts)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import requests

from hotdeal.model import keys
from hotdeal_local.servers import PostgresServer, Process, RedisServer, ops, writer

from .helpers import Service, start_service, workdir

TOOLS = Path(sys.prefix) / "tools"  # scripts/ensure_tools.py puts them there (make test)
VALKEY = str(TOOLS / "valkey-server")
REDIS8 = str(TOOLS / "redis-server-8")
# The server lines the suite runs against: Debian's 7.0 (no WAITAOF), 8.2 (WAITAOF as
# Redis >= 7.2 answers it: the chart's redis:8.2 and managed Redis) and valkey 9.1.
SERVERS = {"redis-7.0": None, "redis-8.2": REDIS8, "valkey-9.1": VALKEY}


@dataclass
class Event:
    redis: RedisServer
    env: dict[str, str]
    cleanup: ExitStack
    services: list[Service] = field(default_factory=list)
    writers: list[Process] = field(default_factory=list)

    def service(self, **extra: str) -> Service:
        svc = start_service("order-redis", {**self.env, **extra})
        self.cleanup.callback(svc.proc.stop, signal.SIGKILL)
        self.services.append(svc)
        return svc

    def writer(self, name: str = "w", **extra: str) -> Process:
        log = self.redis.workdir.parent / f"writer-{name}.log"
        proc = writer(
            {**self.env, "HOTDEAL_WRITER_NAME": name, **extra}, log=log, name=name
        ).start()
        self.cleanup.callback(proc.stop, signal.SIGKILL)
        self.writers.append(proc)
        return proc

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url, decode_responses=True)

    def books(self) -> dict[str, str]:
        return self.client().hgetall(keys.books(1))


@pytest.fixture
def event(pg_server: PostgresServer) -> Iterator[callable]:
    with ExitStack() as cleanup:

        def make(
            *, appendfsync: str = "always", binary: str | None = None, stock: int = 100, **env: str
        ) -> Event:
            rs = RedisServer(workdir("dur-redis"), appendfsync=appendfsync, binary=binary).start()
            cleanup.callback(rs.stop, signal.SIGKILL)
            full = {
                "HOTDEAL_DATABASE_URL": pg_server.url,
                "HOTDEAL_REDIS_URL": rs.url,
                "HOTDEAL_HOLD_MS": "0",
                "HOTDEAL_WORKERS": "2",
                "HOTDEAL_WRITER_CLAIM_IDLE_MS": "500",
                "HOTDEAL_WRITER_CHECK_MS": "300",
                **env,
            }
            ops(full, "init-db")
            ops(full, "reset", "--discard-orders", "--stock", str(stock))
            return Event(rs, full, cleanup)

        yield make


def order(service: Service, user: str, key: str | None = None, timeout: float = 10):
    headers = {"Idempotency-Key": key} if key else None
    return service.order(
        {"product_id": 1, "user_id": user, "quantity": 1}, headers=headers, timeout=timeout
    )


def answer_of(service: Service, user: str, key: str) -> requests.Response:
    """The order's answer as a buyer learns it: retried with its key while the answer
    is a 503 (Retry-After), for at most 30 s."""
    last: list[requests.Response] = []

    def final() -> bool:  # (a 4xx Response is falsy: not the condition's value)
        last[:] = [order(service, user, key)]
        return last[0].status_code != 503

    try:
        wait_until(final, f"an answer for {user}/{key}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last: {last[0].text}") from None
    return last[0]


def snapshot(ev: Event) -> Path:
    """A copy of Redis's AOF as it is now (what a backup, or a lagging disk, holds)."""
    copy = workdir("aof-copy") / "data"
    shutil.copytree(ev.redis.workdir, copy, ignore=shutil.ignore_patterns("*.log"))
    return copy


def restart_from(ev: Event, copy: Path) -> None:
    ev.redis.stop(signal.SIGKILL)
    shutil.rmtree(ev.redis.workdir)
    shutil.copytree(copy, ev.redis.workdir)
    ev.redis.start()


@contextlib.contextmanager
def busy_redis(ev: Event) -> Iterator[None]:
    """Redis running a script that never ends: it answers BUSY to everything else until
    the script is killed (on leaving)."""
    ev.client().config_set("busy-reply-threshold", 100)

    def spin() -> None:
        with contextlib.suppress(redis.ResponseError):  # killed: "script killed by user"
            ev.client().eval("while true do end", 0)

    def busy() -> bool:
        try:
            ev.client().ping()
        except redis.exceptions.BusyLoadingError:
            return False
        except redis.ResponseError as exc:
            return "busy" in str(exc).lower()
        return False

    stuck = threading.Thread(target=spin)
    stuck.start()
    try:
        wait_until(busy, "Redis busy")
        yield
    finally:
        while busy():
            with contextlib.suppress(redis.ResponseError):
                ev.client().script_kill()
        stuck.join()


def wait_until(
    condition: Callable[[], object], what: str, timeout: float = 30, every: float = 0.05
) -> object:
    """Poll `condition` until it is true (returns its value); fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


class Fsyncs:
    """The fsyncs a redis-server makes while attached (strace on its pid and threads):
    the stand-in for a power loss, which keeps what was fsynced and nothing else. A
    SIGKILL can't stand in: the kernel still writes what Redis had written."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            ["strace", "-f", "-qq", "-e", "trace=fdatasync,fsync", "-o", str(out), "-p", str(pid)],
            stderr=subprocess.DEVNULL,
        )
        # strace prints nothing on attach: give it the moment it needs to seize the threads.
        wait_until(lambda: out.exists(), "strace to attach", timeout=10)
        time.sleep(0.3)

    def stop(self) -> int:
        self.proc.terminate()
        self.proc.wait(10)
        return sum(1 for line in self.out.read_text().splitlines() if "sync(" in line)
