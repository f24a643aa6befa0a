"""`make bench-probes`: how long /healthz, /readyz and /metrics take while legacy's hot
row is under the workshop's load (ab -c 150), on the admin port (hotdeal.admin), beside
/healthz on the order port (the only probe buyers' port still serves), which queues
behind the orders. A benchmark, not a test: it prints what it measured."""

from __future__ import annotations

import statistics
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from hotdeal_local.ab import run_ab
from hotdeal_local.stack import LocalStack, running

PATHS = ("/healthz", "/readyz", "/metrics")


def _sample(url: str) -> float:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            answer.read()
    except OSError:
        return float("inf")
    return time.perf_counter() - started


def run_probes(*, requests: int, concurrency: int, hold_ms: int, workdir: Path) -> dict[str, Any]:
    stack = LocalStack(workdir=workdir, stock=requests, hold_ms=hold_ms)
    stack.check_ports()
    with running(stack):
        stack.start_stores()
        stack.reset(requests, slots=1)
        proc = stack.start_service("legacy", stack.legacy_port, HOTDEAL_LEGACY_SLOTS="1")
        ports = {"order port": stack.legacy_port, "admin port": proc.admin_port}
        paths = {"order port": ("/healthz",), "admin port": PATHS}
        samples = {f"{p} {where}": [] for where in ports for p in paths[where]}
        done = threading.Event()

        def probe() -> None:
            time.sleep(2)  # let the queue on the hot row build up first
            while not done.is_set():
                for where, port in ports.items():
                    for path in paths[where]:
                        samples[f"{path} {where}"].append(_sample(f"http://127.0.0.1:{port}{path}"))
                time.sleep(0.2)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        run_ab(
            f"http://127.0.0.1:{stack.legacy_port}/order",
            requests=requests,
            concurrency=concurrency,
            gnuplot=workdir / "probes-ab.tsv",
        )
        done.set()
        prober.join()
    return {
        name: {
            "n": len(values),
            "p50_ms": round(statistics.median(values) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1),
        }
        for name, values in samples.items()
        if values
    }
