"""`make demo` end to end on a small run: the JSON has the promised shape and the
books balance for every design. (Its speed is reported by `make bench`, not asserted.)"""

from __future__ import annotations

import json
import os
import subprocess

from hotdeal_local.demo import BENCH_DESIGNS, CEILING_COLUMNS
from hotdeal_local.servers import BIN, free_port

from .helpers import workdir

DESIGN_KEYS = {
    "name",
    "requests",
    "concurrency",
    "seconds",
    "requests_per_second",
    "latency_ms",
    "failed",
    "non_2xx",
    "sold",
    "orders_persisted",
    "oversold",
}


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo.json"
    env = {
        **os.environ,
        "HOTDEAL_LEGACY_PORT": str(free_port()),
        "HOTDEAL_ORDER_REDIS_PORT": str(free_port()),
    }
    done = subprocess.run(
        [
            str(BIN / "hotdeal-local"),
            "demo",
            "-n",
            "200",
            "-c",
            "30",
            "--stock",
            "160",
            "--hold-ms",
            "5",
            "--out",
            str(out),
            "--workdir",
            str(workdir("demo")),
            "--designs",
            ",".join(BENCH_DESIGNS),
            "--ceilings",
            "1",
            "--ceiling-requests",
            "300",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Completed 100 requests" in done.stderr  # ab's progress reaches the user
    assert "requests/s" in done.stdout and "speed-up (orders/s)" in done.stdout

    result = json.loads(out.read_text())
    assert result["hold_ms"] == 5
    assert [d["name"] for d in result["designs"]] == list(BENCH_DESIGNS)
    for d in result["designs"]:
        assert set(d) >= DESIGN_KEYS, d["name"]
        assert set(d["latency_ms"]) == {"mean", "p50", "p95", "p99"}
        assert (d["requests"], d["concurrency"]) == (200, 30)
        assert d["latency_ms"]["p50"] <= d["latency_ms"]["p95"] <= d["latency_ms"]["p99"]
        # Sold out after exactly the stock: 160 sold, 40 refused, nothing lost or oversold.
        assert (d["sold"], d["non_2xx"], d["failed"]) == (160, 40, 0), d
        assert d["orders_persisted"] == 160 and not d["oversold"]
        assert d["counts_agree"] and d["reconcile_ok"]
        assert d["orders_per_second"] > 0
    for d in result["designs"][1:4]:  # the three Redis designs
        assert d["orders_in_redis"] == 160, d["name"]
    workshop = result["workshop"]
    assert workshop["workshop_speedup"] == 4.0  # 120.35 / 29.75
    assert set(workshop["designs"]) == {"legacy", "order-redis-inline"}
    assert workshop["here_speedup_order-redis"] > 0
    assert "The workshop's own runs" in done.stdout
    assert out.with_suffix(".png").stat().st_size > 10_000
    # The ceilings beside order-redis, with the ratios and CPU per request.
    ceilings = result["ceilings"]
    assert list(ceilings["columns"]) == [c.name for c in CEILING_COLUMNS]
    for column in ceilings["columns"].values():
        assert column["requests_per_second"] > 0 and column["failed"] == 0
    assert ceilings["columns"]["order-redis"]["cpu_us_writer"] > 0
    assert ceilings["order_redis_vs_script"] > 0 and "order-redis / routes+script" in done.stdout
    assert any("flask+script" in c["check"] for c in result["speed_bar"])


def test_redis_capacity_tool_measures_the_take_script(tmp_path):
    out = tmp_path / "capacity.json"
    done = subprocess.run(
        [str(BIN / "hotdeal-local"), "capacity", "-n", "2000", "--clients", "4",
         "--appendfsync", "everysec", "--out", str(out), "--workdir", str(workdir("cap"))],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    runs = json.loads(out.read_text())["runs"]
    assert len(runs) == 3 and all(r["takes_per_second"] > 0 for r in runs)
    assert all(r["redis_cpu_us_per_take"] > 0 for r in runs)
    # Every take sold: the tool sends the take as the service does (it once sent too
    # few keys and arguments, and measured the script's refusal). Two random buyers of
    # the API shape may be one (a gate run drew one in 10^8): the limit refuses it.
    workshop, api = (r["sold"] for r in runs if r["script"].startswith("take"))
    assert workshop == 2000 and api >= 1990


def test_demo_says_clearly_when_a_port_is_taken(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "HOTDEAL_LEGACY_PORT": str(port)}
        done = subprocess.run(
            [str(BIN / "hotdeal-local"), "demo", "--out", str(tmp_path / "x")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert f"port {port} for legacy is taken" in done.stderr
    assert "HOTDEAL_LEGACY_PORT" in done.stderr
