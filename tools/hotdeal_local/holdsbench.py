"""`make bench-holds`: reservations (issue 22), on 2 cores, order-redis as `make up` runs
it (its front, fsync durability, a writer storing orders and changes):

- `holds vs sales`: ab -c 150 on the workshop's route, every order selling, in
  alternating rounds of one run: outright sales, and holds (a payment window);
- `confirm under a sale`: confirms of earlier holds from 4 threads while ab sells at
  full speed: the confirm's latency (p50, p99) and the sale's throughput meanwhile;
- `expiry storm`: 10,000 holds made within a fraction of a second (pipelined takes, as
  the service sends them), all expiring in the same second while ab sells: how long
  from the last deadline until every one is released (by the pod's and the writer's
  sweeps), and Redis's longest single command meanwhile (SLOWLOG, every command logged):
  a release batch must not stall the take.
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path
from typing import Any

import redis
import requests as http

from hotdeal import history
from hotdeal.model import keys
from hotdeal_local import auth
from hotdeal_local.ab import run_ab, sample_of
from hotdeal_local.servers import cpu_seconds, free_port
from hotdeal_local.stack import LocalStack, running
from hotdeal_order_redis.stock import take_script_keys

BUYER = "bench-holds"
PAYMENTS = auth.bearer("payments", scope=auth.ACT_FOR)
STORM_WINDOW_S = 6


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def _holds_vs_sales(
    stack: LocalStack, url: str, pid: int, rounds: int, requests: int, concurrency: int,
    workdir: Path,
) -> dict[str, Any]:  # fmt: skip
    token = auth.token(BUYER)
    runs: dict[str, list[dict[str, float]]] = {"sales": [], "holds": []}
    for round_no in range(1, rounds + 1):
        kinds = ("sales", "holds") if round_no % 2 else ("holds", "sales")
        for kind in kinds:
            stack.reset(requests + 2100, window_s=600 if kind == "holds" else 0)
            run_ab(url, requests=2000, concurrency=concurrency, token=token,
                   gnuplot=workdir / "w.tsv")  # fmt: skip
            before = cpu_seconds(pid)
            run = run_ab(url, requests=requests, concurrency=concurrency, token=token,
                         gnuplot=workdir / "h.tsv")  # fmt: skip
            sample = sample_of(run, cpu_seconds(pid) - before)
            runs[kind].append(sample)
            print(f"  round {round_no} {kind}: {sample}", flush=True)
    ratio = statistics.median(
        h["requests_per_second"] / s["requests_per_second"]
        for h, s in zip(runs["holds"], runs["sales"], strict=True)
    )
    return {
        "sales_per_second": statistics.median(s["requests_per_second"] for s in runs["sales"]),
        "holds_per_second": statistics.median(s["requests_per_second"] for s in runs["holds"]),
        "holds_over_sales": round(ratio, 3),
        "runs": runs,
    }


def _hold_ids(base: str, n: int) -> list[str]:
    session = http.Session()
    ids = []
    for i in range(n):
        r = session.post(
            f"{base}/v1/orders",
            json={"product_id": 1, "quantity": 1, "user_id": f"payer-{i}"},
            headers=PAYMENTS,
            timeout=10,
        )
        ids.append(r.json()["order_id"])
    return ids


def _confirm_under_sale(
    stack: LocalStack, base: str, requests: int, concurrency: int, workdir: Path
) -> dict[str, Any]:
    stack.reset(requests + 10_000, window_s=600)
    ids = _hold_ids(base, 2000)
    latencies: list[float] = []
    failed = 0
    selling = threading.Event()

    def confirm(order_id: str) -> None:
        nonlocal failed
        selling.wait()
        started = time.perf_counter()
        r = http.post(f"{base}/v1/orders/{order_id}/confirm", headers=PAYMENTS, timeout=10)
        latencies.append(time.perf_counter() - started)
        if r.status_code != 200:
            failed += 1

    token = auth.token(BUYER)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(confirm, i) for i in ids]
        timer = threading.Timer(1.0, selling.set)  # once ab is under way
        timer.start()
        run = run_ab(f"{base}/order-redis", requests=requests, concurrency=concurrency,
                     token=token, gnuplot=workdir / "c.tsv")  # fmt: skip
        for f in futures:
            f.result()
    return {
        "confirms": len(latencies),
        "confirm_p50_ms": _percentile(latencies, 0.5),
        "confirm_p99_ms": _percentile(latencies, 0.99),
        "confirm_failed": failed,
        "sale_requests_per_second": round(run.complete / run.seconds, 1),
    }


def _expiry_storm(
    stack: LocalStack, base: str, holds: int, concurrency: int, workdir: Path
) -> dict[str, Any]:
    stack.reset(holds + 200_000, window_s=STORM_WINDOW_S)
    assert stack.redis
    client = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    take = client.script_load(files("hotdeal_order_redis").joinpath("take_stock.lua").read_text())
    run_id = client.info("server")["run_id"]
    generation = client.hget(keys.books(1), keys.GENERATION)
    names = take_script_keys(1, keys.idempotency_placeholder(1), keys.INSTANCE)
    pipe = client.pipeline(transaction=False)
    for i in range(holds):
        args = [1, f"storm-{i}", 0, history.new_order_id(1), 1, "stream", 86400, "", 0, 0, "0"]
        pipe.evalsha(take, len(names), *names, *args, run_id, "1", "")
    started = time.time()
    replies = pipe.execute()
    made_s = time.time() - started
    assert all(r[0] == "ok" for r in replies), {r[0] for r in replies}
    deadlines = client.zrange(keys.deadlines(1), 0, -1, withscores=True)
    last_deadline = max(score for _, score in deadlines) / 1000
    client.slowlog_reset()
    client.config_set("slowlog-max-len", 1_000_000)
    client.config_set("slowlog-log-slower-than", 0)  # every command from now on
    token = auth.token(BUYER)
    load = threading.Thread(
        target=run_ab,
        kwargs={"url": f"{base}/order-redis", "requests": 40_000, "concurrency": concurrency,
                "token": token, "gnuplot": workdir / "storm.tsv", "extra": ("-t", "12")},
    )  # fmt: skip
    load.start()
    # The sale's own takes are holds too, due later: only the storm's are waited for.
    due = int(last_deadline * 1000)
    while client.zcount(keys.deadlines(1), "-inf", due):
        time.sleep(0.005)
    all_released = time.time() - last_deadline
    load.join()
    client.config_set("slowlog-log-slower-than", 10_000)
    slow = [e for e in client.slowlog_get(1_000_000) if "SLOWLOG" not in str(e["command"])]

    def longest(word: str) -> float:
        """The longest logged command whose text has `word` (µs in SLOWLOG), in ms."""
        found = [e["duration"] for e in slow if word in str(e["command"])]
        return round(max(found, default=0) / 1000, 3)

    return {
        "holds": holds,
        "generation": generation,
        "made_in_s": round(made_s, 3),
        "deadline_spread_s": round(last_deadline - min(s for _, s in deadlines) / 1000, 3),
        "all_released_after_last_deadline_s": round(all_released, 3),
        "longest_command_ms": round(max((e["duration"] for e in slow), default=0) / 1000, 3),
        "longest_expire_batch_ms": longest(" expire "),
        "longest_take_ms": longest(take),
        "commands_logged": len(slow),
        "longest_commands": [
            f"{e['duration'] / 1000:.1f} ms {str(e['command'])[:70]}"
            for e in sorted(slow, key=lambda e: -e["duration"])[:5]
        ],
    }


def run_holds_bench(
    *, rounds: int, requests: int, concurrency: int, storm: int, workdir: Path
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(workdir=workdir)
    with running(stack):
        stack.start_stores()
        stack.start_writer()
        port = free_port()
        proc = stack.start_service("order-redis", port, front=True, HOTDEAL_PER_USER_LIMIT="0")
        base = f"http://127.0.0.1:{port}"
        print("holds vs sales:", flush=True)
        versus = _holds_vs_sales(
            stack, f"{base}/order-redis", proc.proc.pid, rounds, requests, concurrency, workdir
        )
        print("confirm under a sale:", flush=True)
        confirm = _confirm_under_sale(stack, base, requests, concurrency, workdir)
        print(f"  {confirm}", flush=True)
        print(f"expiry storm of {storm} holds:", flush=True)
        storm_result = _expiry_storm(stack, base, storm, concurrency, workdir)
        print(f"  {storm_result}", flush=True)
    return {
        "holds_vs_sales": versus,
        "confirm_under_sale": confirm,
        "expiry_storm": storm_result,
        "rounds": rounds,
        "requests": requests,
        "concurrency": concurrency,
    }
