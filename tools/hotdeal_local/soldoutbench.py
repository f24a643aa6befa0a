"""`make bench-sold-out`: what a sold-out answer costs, and how long a unit that comes
back stays refused.

Throughput, in alternating rounds of one run, all columns receiving the same request
(ab -c 150, a POST /v1/orders body with a buyer's token), every answer after the last
unit:
- `flask`: a Flask route that does nothing (hotdeal_local.ceiling), the bar;
- `sold-out`: order-redis answering from its workers' memory (the default);
- `sold-out, keyed`: the same with an Idempotency-Key (one EXISTS per order);
- `sold-out, take`: HOTDEAL_SOLD_OUT_RECHECK_MS=0, every order runs the take (before).

The bound: order-redis under a sold-out flood (ab in the background); one unit comes
back at a time (the books' quantity raised, as a give-back does) and the time until it
is sold again is measured, `samples` times.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from hotdeal.config import Settings
from hotdeal.model import keys
from hotdeal_local import auth
from hotdeal_local.ab import run_ab, sample_of
from hotdeal_local.servers import Process, cpu_seconds, free_port, gunicorn, need_program
from hotdeal_local.stack import LocalStack, running

BODY = {"product_id": 1, "quantity": 1}
BUYER = "bench-sold-out"
COLUMNS: tuple[tuple[str, dict[str, str], bool], ...] = (
    ("flask", {}, False),
    ("sold-out", {}, False),
    ("sold-out, keyed", {}, True),
    ("sold-out, take", {"HOTDEAL_SOLD_OUT_RECHECK_MS": "0"}, False),
)
SERVICE_ENV = {"HOTDEAL_PER_USER_LIMIT": "0"}


def _p99(samples: list[tuple[int, int]]) -> float:
    ms = sorted(total for _, total in samples)
    return float(ms[int(len(ms) * 0.99)]) if ms else 0.0


def _ab_args(body: Path, keyed: bool) -> tuple[str, ...]:
    key = ("-H", "Idempotency-Key: bench-never-used") if keyed else ()
    return ("-p", str(body), "-T", "application/json", *key)


def _start(stack: LocalStack, name: str, env: dict[str, str], port: int) -> tuple[Process, str]:
    if name == "flask":
        env = {**stack.env, "HOTDEAL_ADMIN_BIND": ""}
        log = stack.workdir / "flask.log"
        proc = gunicorn("order-redis", port, env, log=log, app="hotdeal_local.ceiling:bare_app()")
        stack.processes.append(proc.start())
        return proc, f"http://127.0.0.1:{port}/ceiling"
    proc = stack.start_service("order-redis", port, **SERVICE_ENV, **env)
    return proc, f"http://127.0.0.1:{port}/v1/orders"


def _sell_out(url: str, token: str) -> None:
    import requests

    headers = {"Authorization": f"Bearer {token}"}
    answer = requests.post(url, json=BODY, headers=headers, timeout=10)
    assert answer.status_code in (201, 409), answer.text


def throughput(stack: LocalStack, *, rounds: int, requests: int, concurrency: int) -> dict:
    token = auth.token(BUYER)
    body = stack.workdir / "sold-out-body.json"
    body.write_text(json.dumps(BODY))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in COLUMNS}
    for round_no in range(1, rounds + 1):
        shift = (round_no - 1) % len(COLUMNS)
        for name, env, keyed in COLUMNS[shift:] + COLUMNS[:shift]:
            stack.reset(1)
            port = free_port()
            proc, url = _start(stack, name, env, port)
            try:
                if name != "flask":
                    _sell_out(url, token)
                extra = _ab_args(body, keyed)
                run_ab(url, requests=min(2000, requests), concurrency=concurrency,
                       gnuplot=stack.workdir / "w.tsv", extra=extra, token=token)  # fmt: skip
                before = cpu_seconds(proc.proc.pid)
                run = run_ab(url, requests=requests, concurrency=concurrency,
                             gnuplot=stack.workdir / "s.tsv", extra=extra, token=token)  # fmt: skip
                cpu = cpu_seconds(proc.proc.pid) - before
            finally:
                stack.stop_process(proc)
            sample = {**sample_of(run, cpu), "p99_ms": _p99(run.samples)}
            runs[name].append(sample)
            print(f"  round {round_no} {name}: {sample}", flush=True)

    def ratio(name: str) -> float:
        pairs = zip(runs[name], runs["flask"], strict=True)
        return round(statistics.median(a["requests_per_second"] / b["requests_per_second"]
                                       for a, b in pairs), 3)  # fmt: skip

    return {
        "columns": {
            name: {
                "requests_per_second": statistics.median(
                    s["requests_per_second"] for s in runs[name]
                ),
                "cpu_us_per_request": statistics.median(
                    s["cpu_us_per_request"] for s in runs[name]
                ),
                **({"vs_flask": ratio(name)} if name != "flask" else {}),
            }
            for name, _, _ in COLUMNS
        },
        "runs": runs,
    }


def bound(stack: LocalStack, *, samples: int, concurrency: int) -> dict[str, Any]:
    """Seconds from a unit coming back to its sale, under a sold-out flood."""
    token = auth.token(BUYER)
    body = stack.workdir / "sold-out-body.json"
    body.write_text(json.dumps(BODY))
    stack.reset(1)
    port = free_port()
    proc = stack.start_service("order-redis", port, **SERVICE_ENV)
    writer = stack.start_writer()
    url = f"http://127.0.0.1:{port}/v1/orders"
    client = redis.Redis.from_url(stack.env["HOTDEAL_REDIS_URL"], decode_responses=True)
    books = keys.books(1)
    ab = need_program("ab", "apache2-utils")
    flood = subprocess.Popen(
        [ab, "-q", "-r", "-l", "-t", "3600", "-n", "100000000", "-c", str(concurrency),
         *_ab_args(body, False), "-H", f"Authorization: Bearer {token}", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    waits: list[float] = []
    try:
        _sell_out(url, token)
        time.sleep(1)  # every worker has seen sold out
        for _ in range(samples):
            # A give-back: the unit returns to the books (and to the event's total).
            client.hincrby(books, keys.INITIAL, 1)
            began = time.monotonic()
            client.hincrby(books, keys.QUANTITY, 1)
            while client.hget(books, keys.QUANTITY) != "0":
                time.sleep(0.001)
            waits.append(time.monotonic() - began)
            time.sleep(0.3)
    finally:
        flood.terminate()
        flood.wait()
        stack.stop_process(proc)
        stack.stop_process(writer)
    waits.sort()
    return {
        "samples": len(waits),
        "recheck_ms": Settings().sold_out_recheck_ms,  # the service's default
        "p50_ms": round(statistics.median(waits) * 1000, 1),
        "max_ms": round(waits[-1] * 1000, 1),
    }


def run_sold_out_bench(
    *, rounds: int, requests: int, concurrency: int, samples: int, workdir: Path
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(workdir=workdir)
    with running(stack):
        stack.start_stores()
        result = throughput(stack, rounds=rounds, requests=requests, concurrency=concurrency)
        result["come_back"] = bound(stack, samples=samples, concurrency=concurrency)
    result.update(rounds=rounds, requests=requests, concurrency=concurrency)
    return result
