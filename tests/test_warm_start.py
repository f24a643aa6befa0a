"""A worker is ready for the sale's first second: what its first order used to pay for
(a Redis connection, the server's run_id, the package metadata redis-py read for every
new connection) is done as the worker starts, or once in the master."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from flask import Flask

from hotdeal.config import ServerSettings, Settings
from hotdeal.redis_client import make_redis
from hotdeal.validation import OrderRequest
from hotdeal_local.servers import free_port
from hotdeal_order_redis.stock import RedisStock

from .events import SERVERS


def _clients(client: redis.Redis) -> int:
    return len(client.client_list())


@pytest.mark.parametrize("binary", SERVERS.values(), ids=SERVERS.keys())
def test_the_first_take_uses_the_connection_opened_at_start(event, binary):
    """On each server the chart or a managed service runs; the version redis-py reports
    (CLIENT SETINFO, which 7.0 refuses and redis-py ignores) is the one given."""
    ev = event(stock=5, binary=binary)
    admin = ev.client()
    stock = RedisStock(make_redis(ev.env["HOTDEAL_REDIS_URL"]), write="stream")
    stock.warm_up()  # in the master: scripts, durability (the pool's connection)
    before = _clients(admin)
    stock.open_connections()  # in each worker
    assert _clients(admin) == before + 1
    assert stock.take(OrderRequest(1, "buyer-1", 1), limit=0, idempotency_key=None).remaining == 4
    assert _clients(admin) == before + 1  # no new connection, no INFO on the take
    if binary:
        assert redis.__version__ in {c.get("lib-ver") for c in admin.client_list()}


def test_a_redis_that_is_down_at_start_is_not_fatal():
    """Best effort: /readyz says Redis is down; the first take connects (or answers 503)."""
    stock = RedisStock(make_redis(f"redis://127.0.0.1:{free_port()}/0"), write="stream")
    stock.open_connections()


def test_new_connections_do_not_read_the_package_metadata(monkeypatch, redis_server):
    """redis-py reads its version from the installed package's metadata for each new
    connection unless told it (0.5-6 ms of CPU each, measured)."""

    def refuse(name: str) -> str:
        raise AssertionError(f"package metadata read for {name}")

    monkeypatch.setattr("importlib.metadata.version", refuse)
    client = make_redis(redis_server.url)
    assert client.ping()
    info = client.connection_pool.connection_kwargs["driver_info"]
    assert info.lib_version == redis.__version__


def test_each_sync_worker_runs_the_apps_start_hooks(monkeypatch, tmp_path):
    """After gunicorn set the worker's signal handlers (post_worker_init, not post_fork:
    a SIGTERM while Redis is slow to answer must still stop it), and only in sync
    workers: a gthread worker's requests run on threads with connections of their own."""
    # Imported here, with a directory of its own: the module points
    # PROMETHEUS_MULTIPROC_DIR at one (for the gunicorn master it runs in), and every
    # service this process starts later would share it.
    # If this is the process's first import of prometheus_client, it picks multi-process
    # values: restored after, or later tests' metrics, the directory gone, fail to build.
    from prometheus_client import values

    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    from gunicorn.workers.gthread import ThreadWorker
    from gunicorn.workers.sync import SyncWorker

    from hotdeal import gunicorn_setup

    started: list[str] = []
    app = Flask(__name__)
    app.extensions["hotdeal_worker_start"] = [lambda: started.append("redis")]
    for kind in (SyncWorker, ThreadWorker):
        worker = kind.__new__(kind)
        worker.app = SimpleNamespace(callable=app)
        gunicorn_setup.post_worker_init(worker)
    assert started == ["redis"]
    hooks = gunicorn_setup.common(ServerSettings.from_env(), Settings.from_env())
    assert hooks["post_worker_init"] is gunicorn_setup.post_worker_init


def test_the_sync_worker_repeats_no_system_call_a_request_does_not_need(monkeypatch):
    """hotdeal.sync_worker: gunicorn's sync worker, with its heartbeat touched at most
    every 0.25 s and the listener's address read once (each was a system call on every
    request). Both services' "sync" is this worker."""
    from gunicorn.util import load_class
    from gunicorn.workers.sync import SyncWorker as GunicornSyncWorker

    from hotdeal import gunicorn_setup, sync_worker

    assert issubclass(load_class(gunicorn_setup.worker_class("sync")), GunicornSyncWorker)
    assert gunicorn_setup.worker_class("gthread") == "gthread"

    worker = sync_worker.SyncWorker.__new__(sync_worker.SyncWorker)
    touched: list[float] = []
    worker.tmp = SimpleNamespace(notify=lambda: touched.append(now[0]))
    now = [100.0]
    monkeypatch.setattr(sync_worker.time, "monotonic", lambda: now[0])
    for step in range(40):  # 40 requests over 3.9 s
        now[0] = 100.0 + step * 0.1
        worker.notify()
    # Every 0.3 s: never more often than the throttle, never later than a request after.
    assert touched[0] == 100.0 and len(touched) == 14
    assert all(0.25 <= b - a < 0.35 for a, b in itertools.pairwise(touched))

    asked: list[int] = []

    class Listener:
        def getsockname(self) -> tuple[str, int]:
            asked.append(1)
            return ("127.0.0.1", 8080)

        def fileno(self) -> int:
            return 7

    named = sync_worker._Named(Listener())
    assert [named.getsockname() for _ in range(3)] == [("127.0.0.1", 8080)] * 3
    assert named.fileno() == 7 and asked == [1]


def test_a_sync_workers_request_asks_config_for_no_setting(monkeypatch):
    """gunicorn asks its Config for a setting ~24 times a request, each through
    Config.__getattr__; a sync worker keeps its settings as plain attributes from its
    start (they never change in a worker's life). A real request, on a real socket."""
    from gunicorn.config import Config
    from gunicorn.glogging import Logger
    from gunicorn.workers.sync import SyncWorker as GunicornSyncWorker

    from hotdeal import sync_worker

    cfg = Config()
    cfg.set("limit_request_fields", 4096)
    listener = socket.create_server(("127.0.0.1", 0))

    def app(environ: dict, start_response: Any) -> list[bytes]:
        body = environ["PATH_INFO"].encode()
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]

    worker = sync_worker.SyncWorker(0, os.getpid(), [listener], None, 30, cfg, Logger(cfg))
    worker.wsgi = app
    monkeypatch.setattr(GunicornSyncWorker, "init_process", lambda self: None)
    worker.init_process()
    assert cfg.limit_request_fields == 4096 and cfg.worker_class_str == "sync"

    asked: list[str] = []
    settings_of = Config.__getattr__

    def counted(self: Config, name: str) -> Any:
        asked.append(name)
        return settings_of(self, name)

    monkeypatch.setattr(Config, "__getattr__", counted)
    buyer = socket.create_connection(listener.getsockname())
    buyer.sendall(b"GET /order-redis HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n")
    buyer.shutdown(socket.SHUT_WR)
    client, addr = listener.accept()
    worker.handle(listener, client, addr)
    answer = buyer.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"/order-redis")
    assert asked == []
    buyer.close()
    listener.close()
    worker.tmp.close()


def test_metrics_of_forked_workers_go_to_files_of_their_own(tmp_path):
    """prometheus_client learns the pid from hotdeal.process (kept at fork), not from a
    getpid() per update: each forked worker still writes files under its own pid (two
    workers sharing one would count max, not sum: test_observability sees that)."""
    script = """
import os, sys
from hotdeal import gunicorn_setup, metrics
from prometheus_client import values
assert values.ValueClass is not values.MutexValue
pids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        metrics.ORDERS.labels("order-redis", "1", "ok").inc()
        os._exit(0)
    pids.append(pid)
for pid in pids:
    assert os.waitpid(pid, 0)[1] == 0
print(" ".join(map(str, pids)))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    pids = done.stdout.split()
    assert sorted(p.name for p in tmp_path.glob("counter_*.db")) == sorted(
        f"counter_{pid}.db" for pid in pids
    )
