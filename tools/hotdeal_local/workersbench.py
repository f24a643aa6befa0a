"""`make bench-workers`: how many sync workers a core gets (issue 21: durable sales at
100x legacy).

With `fsync` durability a take's reply waits for Redis's fsync of the AOF, and the
worker is idle meanwhile: more workers overlap those waits (Redis fsyncs once for every
take of an event-loop pass). Each column is order-redis as `make up` runs it (its front,
a writer storing the orders, Redis with appendfsync always), in alternating rounds of one
run, ab -c 150 with a buyer's token:
- `take, N per core`: every order sells: the workshop's route (`GET /order-redis`, one
  unit for the token's buyer, no per-user limit, the route `make demo` compares with
  legacy), stock enough for all;
- `sold out, N per core`: every order is answered sold out from the workers' memory;
- `slow clients, N per core`: the sale again, while slow clients dribble their headers
  to the front (hotdeal_local.slowclients): the front must still hold them all.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import requests as http

from hotdeal_local import auth
from hotdeal_local.ab import run_ab, sample_of
from hotdeal_local.servers import cpu_seconds, free_port
from hotdeal_local.slowclients import slow_clients
from hotdeal_local.stack import LocalStack, running

BODY = {"product_id": 1, "quantity": 1}
BUYER = "bench-workers"
PER_CORE = (2, 4)
KINDS = ("take", "sold out", "slow clients")


def _columns(cores: int) -> list[tuple[str, str, int]]:
    return [(f"{kind}, {n} per core", kind, n * cores) for kind in KINDS for n in PER_CORE]


def run_workers_bench(
    *, rounds: int, requests: int, concurrency: int, slow: int, workdir: Path
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(workdir=workdir)
    cores = 2
    columns = _columns(cores)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in columns}
    token = auth.token(BUYER)
    body = workdir / "order.json"
    body.write_text(json.dumps(BODY))
    extra = ("-p", str(body), "-T", "application/json")
    with running(stack):
        stack.start_stores()
        writer = stack.start_writer()
        for round_no in range(1, rounds + 1):
            shift = (round_no - 1) % len(columns)
            for name, kind, workers in columns[shift:] + columns[:shift]:
                sold_out = kind == "sold out"
                stack.reset(1 if sold_out else requests + 2100)
                port = free_port()
                proc = stack.start_service(
                    "order-redis",
                    port,
                    front=True,
                    HOTDEAL_WORKERS=str(workers),
                    HOTDEAL_PER_USER_LIMIT="0",
                )
                url = f"http://127.0.0.1:{port}/v1/orders"
                load = {"concurrency": concurrency, "extra": extra, "token": token}
                if not sold_out:
                    url = f"http://127.0.0.1:{port}/order-redis"
                    load["extra"] = ()
                try:
                    if sold_out:
                        headers = {"Authorization": f"Bearer {token}"}
                        http.post(url, json=BODY, headers=headers, timeout=10)
                    run_ab(url, requests=2000, gnuplot=workdir / "w.tsv", **load)
                    before = cpu_seconds(proc.proc.pid)
                    with slow_clients(port, slow if kind == "slow clients" else 0):
                        run = run_ab(url, requests=requests, gnuplot=workdir / "s.tsv", **load)
                    cpu = cpu_seconds(proc.proc.pid) - before
                finally:
                    stack.stop_process(proc)
                sample = sample_of(run, cpu)
                runs[name].append(sample)
                print(f"  round {round_no} {name}: {sample}", flush=True)
        stack.stop_process(writer)

    def median(name: str, field: str) -> float:
        return statistics.median(s[field] for s in runs[name])

    def gain(kind: str) -> float:
        low, high = (f"{kind}, {n} per core" for n in PER_CORE)
        pairs = zip(runs[high], runs[low], strict=True)
        return round(statistics.median(
            a["requests_per_second"] / b["requests_per_second"] for a, b in pairs), 3)  # fmt: skip

    return {
        "columns": {
            name: {
                "requests_per_second": median(name, "requests_per_second"),
                "cpu_us_per_request": median(name, "cpu_us_per_request"),
                "failed": sum(s["failed"] for s in runs[name]),
            }
            for name, _, _ in columns
        },
        "gain_of_4_per_core": {kind: gain(kind) for kind in KINDS},
        "runs": runs,
        "rounds": rounds,
        "requests": requests,
        "concurrency": concurrency,
    }
