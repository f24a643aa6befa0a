"""Test support: scratch folders, services started as gunicorn runs them, and HTTP
helpers for real requests against them, many at once."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from hotdeal.validation import UserIdError, check_user_id
from hotdeal_local import auth
from hotdeal_local.servers import BIN, Process, free_port, gunicorn, ops
from hotdeal_ops.tokens import jwks_of


@dataclass
class Service:
    name: str
    url: str
    proc: Process

    def order(
        self,
        body: Any,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
        user: str | None = None,
    ) -> requests.Response:
        """POST /v1/orders as the buyer `user` (default: the body's user_id when it is a
        valid buyer id, else "tester"), with a token of the local identity provider
        unless `headers` carry an Authorization of their own."""
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        named = body.get("user_id") if isinstance(body, dict) else None
        return requests.post(
            f"{self.url}/v1/orders",
            data=data,
            timeout=timeout,
            headers={
                "Content-Type": "application/json",
                **as_buyer(user or named, headers),
                **(headers or {}),
            },
        )

    def get(self, path: str, timeout: float = 30, user: str | None = None) -> requests.Response:
        """GET as `user`, else as the query's user_id, else as a support tool that may
        read every buyer's orders (test_buyers checks what a buyer may read)."""
        query = parse_qs(urlsplit(path).query).get("user_id")
        named = user or (query[0] if query else None)
        headers = as_buyer(named) if named else auth.bearer("support", scope=auth.ACT_FOR)
        return requests.get(f"{self.url}{path}", timeout=timeout, headers=headers)

    def admin(self, path: str, timeout: float = 30) -> requests.Response:
        """The admin listener (/readyz, /metrics): not on the order port."""
        return requests.get(f"http://127.0.0.1:{self.proc.admin_port}{path}", timeout=timeout)


def as_buyer(user: object, headers: dict[str, str] | None = None) -> dict[str, str]:
    """A bearer token for `user` (or for "tester" if it is no buyer id), unless the
    request already says who it is."""
    if headers and any(k.lower() == "authorization" for k in headers):
        return {}
    try:
        check_user_id(user)
    except UserIdError:
        user = "tester"
    return auth.bearer(str(user))


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


class JwksServer:
    """An identity provider's JWKS endpoint on a free port: its keys can be changed, it
    can go down (`down`: 503) or misbehave (`mode`: "trickle" a byte a second, "hang"
    never answering, "huge" 8 MB of valid JSON, "slow-headers" its headers a byte a
    second, "redirect" to itself with an 8 MB body), and it counts the fetches."""

    def __init__(self, keys: dict[str, Any]) -> None:
        self.keys = dict(keys)  # kid -> private key (the endpoint publishes the public half)
        self.extra: list[dict[str, Any]] = []  # JWKs published as they are
        self.fetches = 0
        self.down = False
        self.mode = "ok"
        self.stop_event = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if server.down:
                    self.send_error(503)
                    return
                if server.mode == "hang":
                    server.stop_event.wait(60)
                    return
                if server.mode == "slow-headers":
                    for byte in b"HTTP/1.1 200 OK\r\nX-Pad: " + b"x" * 1000:
                        if server.stop_event.wait(1):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    return
                if server.mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", self.path)
                    self.send_header("Content-Length", "8000000")
                    self.end_headers()
                    self.wfile.write(b"x" * 8_000_000)
                    return
                server.fetches += 1
                doc = jwks_of(server.keys)
                body = json.dumps({"keys": doc["keys"] + server.extra}).encode()
                if server.mode == "huge":
                    body = body[:-1] + b', "padding": "' + b"x" * 8_000_000 + b'"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.mode == "trickle":
                    for byte in body:
                        if server.stop_event.wait(1):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/.well-known/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.stop_event.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def init_db_at_once(env: dict[str, str], pods: int) -> list[tuple[int, str]]:
    """`hotdeal-ops init-db` from `pods` processes at once, as the initContainers of a
    rollout run it: each one's exit code and stderr."""
    procs = [
        subprocess.Popen(
            [str(BIN / "hotdeal-ops"), "init-db"], env=env, stderr=subprocess.PIPE, text=True
        )
        for _ in range(pods)
    ]
    return [(p.wait(60), p.stderr.read()) for p in procs]
