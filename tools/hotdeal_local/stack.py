"""The whole event on one machine: Redis, PostgreSQL, both services and a writer."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hotdeal.config import LocalSettings
from hotdeal_local.front import front as nginx_front
from hotdeal_local.prometheus import prometheus
from hotdeal_local.servers import (
    REPO,
    PostgresServer,
    Process,
    RedisServer,
    free_port,
    gunicorn,
    ops,
    port_taken,
    writer,
)


class PortTaken(RuntimeError):
    pass


@dataclass
class LocalStack:
    workdir: Path = REPO / ".local"
    legacy_port: int = field(default_factory=lambda: LocalSettings.from_env().legacy_port)
    order_redis_port: int = field(default_factory=lambda: LocalSettings.from_env().order_redis_port)
    prometheus_port: int = field(default_factory=lambda: LocalSettings.from_env().prometheus_port)
    stock: int = 10_000
    hold_ms: int = 30
    redis: RedisServer | None = None
    pg: PostgresServer | None = None
    processes: list[Process] = field(default_factory=list)
    # The front (nginx) in front of a service started with front=True, by its gunicorn.
    fronts: dict[int, Process] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        assert self.redis and self.pg
        return {
            "HOTDEAL_DATABASE_URL": self.pg.url,
            "HOTDEAL_REDIS_URL": self.redis.url,
            "HOTDEAL_HOLD_MS": str(self.hold_ms),
        }

    @property
    def legacy_url(self) -> str:
        return f"http://127.0.0.1:{self.legacy_port}"

    @property
    def order_redis_url(self) -> str:
        return f"http://127.0.0.1:{self.order_redis_port}"

    def check_ports(self, prometheus: bool = False) -> None:
        wanted = [
            ("legacy", self.legacy_port, "HOTDEAL_LEGACY_PORT"),
            ("order-redis", self.order_redis_port, "HOTDEAL_ORDER_REDIS_PORT"),
        ]
        if prometheus:
            wanted.append(("prometheus", self.prometheus_port, "HOTDEAL_PROMETHEUS_PORT"))
        for name, port, var in wanted:
            if port_taken(port):
                raise PortTaken(
                    f"port {port} for {name} is taken by another program: stop it or set {var}"
                )

    def start_stores(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(self.workdir / "redis").start()
        self.pg = PostgresServer(self.workdir / "postgres").start()
        ops(self.env, "init-db")

    def reset(self, stock: int | None = None, slots: int = 8, window_s: int = 0) -> None:
        """A new event; `window_s`: reservations' payment window (0: outright sales)."""
        window = ("--payment-window", str(window_s)) if window_s else ()
        ops(
            self.env,
            "reset",
            "--discard-orders",
            "--stock",
            str(stock or self.stock),
            "--slots",
            str(slots),
            *window,
        )

    def redis_config(self, **settings: str) -> None:
        """Change a setting of the running redis-server (e.g. appendfsync)."""
        import redis as redis_py

        assert self.redis
        client = redis_py.Redis.from_url(self.redis.url)
        try:
            for name, value in settings.items():
                client.config_set(name, value)
        finally:
            client.close()

    def start_service(self, name: str, port: int, *, front: bool = False, **extra: str) -> Process:
        """gunicorn on `port`, or with `front` the front (nginx) on `port` and gunicorn
        behind it on a free one: where buyers arrive in the cluster."""
        behind = free_port() if front else port
        log = self.workdir / f"{name}-{behind}.log"
        # Behind the front, the waiting room's line follows when the front read a join.
        trust = {"HOTDEAL_ROOM_FRONT_ARRIVAL": "true"} if front else {}
        proc = gunicorn(name, behind, {**self.env, **trust, **extra}, log=log).start()
        self.processes.append(proc)
        if front:
            nginx = nginx_front(port, behind, self.workdir, service=name).start()
            self.processes.append(nginx)
            self.fronts[id(proc)] = nginx
        return proc

    def stop_process(self, proc: Process) -> None:
        nginx = self.fronts.pop(id(proc), None)
        if nginx is not None:
            self.stop_process(nginx)
        proc.stop()
        self.processes.remove(proc)

    def start_writer(self, **extra: str) -> Process:
        proc = writer({**self.env, **extra}, log=self.workdir / "writer.log").start()
        self.processes.append(proc)
        return proc

    def start_prometheus(self, port: int, services: dict[str, Process], writer: Process) -> Process:
        """Scrapes each service's admin listener (its /metrics is not on the order port)."""
        targets = {f"hotdeal-{name}": [f"127.0.0.1:{p.admin_port}"] for name, p in services.items()}
        proc = prometheus(
            self.workdir / "prometheus",
            port,
            {**targets, "hotdeal-writer": [f"127.0.0.1:{writer.metrics_port}"]},
        ).start()
        self.processes.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()
        if self.pg:
            self.pg.stop()
        if self.redis:
            self.redis.stop()


@contextlib.contextmanager
def running(stack: LocalStack) -> Iterator[LocalStack]:
    """Stops everything on exit, also on SIGTERM (turned into KeyboardInterrupt).

    Once stopping has begun, further SIGINT/SIGTERM (a second Ctrl-C, make and us both
    signalled as one process group) are ignored until it is done: an interrupted
    clean-up is what leaves servers running. Should we die anyway (SIGKILL), every child
    was started with a parent-death signal (hotdeal.process.die_with_parent)."""

    def _interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield stack
    finally:
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stack.stop()
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, previous)
