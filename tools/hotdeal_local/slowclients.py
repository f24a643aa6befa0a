"""Slow clients (a request's headers a byte at a time, as slowloris sends them; clients
that keep their socket open after the answer) and `make bench-slow-clients`: what they
do to a sale with and without the front, and what the front costs when nobody is
slow."""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hotdeal_local.ab import run_ab
from hotdeal_local.servers import cpu_seconds, free_port
from hotdeal_local.stack import LocalStack, running

HEAD = b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


Client = Callable[[threading.Event, Callable[[], None]], None]


@contextlib.contextmanager
def _attack(n: int, client: Client, settle_s: float = 0.0) -> Iterator[None]:
    """`n` threads each running `client(stop, started)` until the block ends; a client
    calls `started()` once its first request is under way (or could not connect), and
    the block begins when all have, `settle_s` later."""
    stop = threading.Event()
    barrier = threading.Barrier(n + 1)

    def run() -> None:
        waiting = [True]

        def started() -> None:
            if waiting[0]:
                waiting[0] = False
                barrier.wait()

        client(stop, started)
        started()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    stop.wait(settle_s)
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(5)


def slow_clients(
    port: int, n: int, *, every_s: float = 0.2
) -> contextlib.AbstractContextManager[None]:
    """`n` sockets on 127.0.0.1:`port`, each sending a POST's headers a byte every
    `every_s` and never finishing; a socket the server closes is opened again (the
    attack lasts). The sockets have all started when the block begins."""

    def dribble(stop: threading.Event, started: Callable[[], None]) -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
                for byte in HEAD:
                    s.send(bytes([byte]))
                    started()
                    if stop.wait(every_s):
                        return
            started()  # could not even connect: count it as started, keep trying
            stop.wait(every_s)

    # A few bytes each before the block begins: every request is under way.
    return _attack(n, dribble, settle_s=2 * every_s)


def holding_clients(
    port: int, n: int, *, hold_s: float = 2.5
) -> contextlib.AbstractContextManager[None]:
    """`n` clients on 127.0.0.1:`port`, each asking for /healthz, reading the whole answer
    and then keeping the socket open for `hold_s` before it asks again. Straight at
    gunicorn 27 each holds a worker meanwhile, up to 2 s: its lingering close (RFC 9112
    9.6) waits for the client to close. Every first request has been sent when the
    block begins."""

    def hold(stop: threading.Event, started: Callable[[], None]) -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
                s.settimeout(30)
                s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                started()
                while s.recv(4096):  # the whole answer, up to the server's FIN
                    pass
                stop.wait(hold_s)
            started()

    return _attack(n, hold)


def half_closed_order(
    port: int, order: dict[str, Any], headers: dict[str, str], *, timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    """`POST /v1/orders` of `order` with `headers` to 127.0.0.1:`port`, from a client that
    shuts its sending side once the request is out, as RFC 9112 9.6 lets it, then reads
    the answer up to the server's FIN. Returns (status, headers with lower-case names,
    body); raises ValueError when no answer came."""
    body = json.dumps(order).encode()
    head = "POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    top, sep, rest = answer.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"no answer to a half-closed request: {answer[:100]!r}")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    found = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    return int(status_line.split(" ")[1]), found, rest


# (name, front in place, slow clients during the run)
COLUMNS = (
    ("direct", False, False),
    ("front", True, False),
    ("front + slow", True, True),
    ("direct + slow", False, True),
)


def run_slow_clients(
    *, rounds: int, requests: int, concurrency: int, slow: int, workdir: Path
) -> dict[str, Any]:
    """order-redis (default durability, every request a sale) under ab, the columns taking
    turns for `rounds` rounds: straight at gunicorn, through the front, and both with
    `slow` slow clients attacking during the run. ab's -s 5 -t 20 bound a column whose
    workers the attack holds."""
    workdir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(workdir=workdir)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in COLUMNS}
    with running(stack):
        stack.start_stores()
        for round_no in range(1, rounds + 1):
            for name, front, attacked in COLUMNS:
                stack.reset(requests + 1000)
                port = free_port()
                writer = stack.start_writer()
                proc = stack.start_service("order-redis", port, front=front)
                url = f"http://127.0.0.1:{port}/order-redis"
                try:
                    run_ab(url, requests=1000, concurrency=concurrency, gnuplot=workdir / "w.tsv")
                    pids = [proc.proc.pid] + ([stack.fronts[id(proc)].proc.pid] if front else [])
                    before = sum(cpu_seconds(p) for p in pids)
                    attack = slow_clients(port, slow) if attacked else contextlib.nullcontext()
                    with attack:
                        run = run_ab(
                            url,
                            requests=requests,
                            concurrency=concurrency,
                            gnuplot=workdir / "c.tsv",
                            extra=("-s", "5", "-t", "20"),
                        )
                    cpu = sum(cpu_seconds(p) for p in pids) - before
                finally:
                    stack.stop_process(proc)
                    stack.stop_process(writer)
                sample = {
                    "requests_per_second": round(run.complete / run.seconds, 1),
                    "complete": run.complete,
                    "failed": run.failed + run.non_2xx,
                    # ab gave up after its -s timeout: no request answered in time
                    "timed_out": int(run.timed_out),
                }
                if run.complete:
                    sample["cpu_us_per_request"] = round(cpu / run.complete * 1e6, 1)
                runs[name].append(sample)
                print(f"  round {round_no} {name}: {sample}", flush=True)

    def ratio(a: str, b: str) -> float:
        pairs = zip(runs[a], runs[b], strict=True)
        return round(
            statistics.median(
                x["requests_per_second"] / max(y["requests_per_second"], 1e-9) for x, y in pairs
            ),
            3,
        )

    return {
        "rounds": rounds,
        "slow_clients": slow,
        "columns": {
            name: {
                k: statistics.median(s[k] for s in samples if k in s)
                for k in {k for s in samples for k in s}
            }
            for name, samples in runs.items()
        },
        "front_cost": round(1 - ratio("front", "direct"), 3),
        "slow_vs_front": ratio("front + slow", "front"),
        "slow_vs_direct": ratio("direct + slow", "direct"),
        "runs": runs,
    }
