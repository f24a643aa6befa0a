"""Test support: scratch folders, services started as gunicorn runs them, and HTTP
helpers for real requests against them, many at once."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from hotdeal_local.servers import Process, free_port, gunicorn, ops


@dataclass
class Service:
    name: str
    url: str
    proc: Process

    def order(
        self, body: Any, *, headers: dict[str, str] | None = None, timeout: float = 30
    ) -> requests.Response:
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        return requests.post(
            f"{self.url}/v1/orders",
            data=data,
            timeout=timeout,
            headers={"Content-Type": "application/json", **(headers or {})},
        )

    def get(self, path: str, timeout: float = 30) -> requests.Response:
        return requests.get(f"{self.url}{path}", timeout=timeout)

    def admin(self, path: str, timeout: float = 30) -> requests.Response:
        """The admin listener (/readyz, /metrics): not on the order port."""
        return requests.get(f"http://127.0.0.1:{self.proc.admin_port}{path}", timeout=timeout)


def workdir(name: str) -> Path:
    """A scratch folder, world-traversable so PostgreSQL (run as `postgres` when we are
    root) can enter it."""
    path = Path(tempfile.mkdtemp(prefix=f"hotdeal-{name}-"))
    os.chmod(path, 0o755)
    return path


def start_service(
    name: str, env: dict[str, str], logs: Path | None = None, **extra: str
) -> Service:
    port = free_port()
    log = logs / f"{name}-{port}.log" if logs else None
    return Service(
        name, f"http://127.0.0.1:{port}", gunicorn(name, port, {**env, **extra}, log=log).start()
    )


@contextlib.contextmanager
def service_running(
    name: str, env: dict[str, str], logs: Path | None = None, **extra: str
) -> Iterator[Service]:
    service = start_service(name, env, logs, **extra)
    try:
        yield service
    finally:
        service.proc.stop()


def stampede(
    service: Service,
    bodies: list[dict],
    *,
    concurrency: int = 150,
    headers: list[dict[str, str] | None] | None = None,
) -> list[requests.Response]:
    """Fire `bodies` at POST /v1/orders from `concurrency` threads at once."""
    hdrs = headers or [None] * len(bodies)
    with ThreadPoolExecutor(concurrency) as pool:
        return list(
            pool.map(lambda bh: service.order(bh[0], headers=bh[1]), zip(bodies, hdrs, strict=True))
        )


def statuses(responses: list[requests.Response]) -> Counter:
    return Counter(r.status_code for r in responses)


def buyers(n: int, product: int = 1, quantity: int = 1) -> list[dict]:
    users = itertools.cycle(f"user-{i}" for i in range(n))
    return [{"product_id": product, "user_id": next(users), "quantity": quantity} for _ in range(n)]


def reconcile(env: dict[str, str], product: int = 1, wait: bool = True) -> tuple[int, dict]:
    args = ["reconcile", "--product", str(product)] + (
        ["--wait", "--timeout", "60"] if wait else []
    )
    done: subprocess.CompletedProcess = ops(env, *args, check=False)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)
