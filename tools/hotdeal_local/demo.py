"""`make demo`: the workshop's event replayed against each design, side by side.

For each design: reset the stock, start its service, `ab -c 150 -n 3000` against the
workshop's GET endpoint, then check the books (`hotdeal-ops reconcile --wait`) and that
2xx answers, orders in Redis and rows in order_history agree.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from hotdeal.db import make_engine
from hotdeal.designs import Design as Source
from hotdeal.schema import order_history
from hotdeal_local.ab import AbRun, run_ab
from hotdeal_local.servers import Process, cpu_seconds, free_port, gunicorn, ops
from hotdeal_local.stack import LocalStack, running


@dataclass(frozen=True)
class Design:
    name: str
    service: str
    path: str
    env: dict[str, str]
    source: Source  # the design (order_history.source) this demo column runs
    slots: int = 8
    # Redis's appendfsync while this design runs (the durability it is measured with).
    appendfsync: str = "always"


DESIGNS = {
    "legacy": Design("legacy", "legacy", "/order", {"HOTDEAL_LEGACY_SLOTS": "1"}, Source.LEGACY),
    # The workshop's own Redis design: stock in Redis (atomic here, not its racy GET then
    # DECR), but the INSERT and the ~30 ms of work still inside the request.
    "order-redis-inline": Design(
        "order-redis-inline",
        "order-redis",
        "/order-redis",
        {"HOTDEAL_ORDER_WRITE": "inline"},
        Source.REDIS,
    ),
    # hotdeal's design: write-behind, every 201 on Redis's disk first (durability fsync).
    "order-redis": Design("order-redis", "order-redis", "/order-redis", {}, Source.REDIS),
    # The same without the durable answer (unsafe; `make bench` prices durability).
    "order-redis-none": Design(
        "order-redis-none",
        "order-redis",
        "/order-redis",
        {"HOTDEAL_REDIS_DURABILITY": "none"},
        Source.REDIS,
        appendfsync="everysec",
    ),
    "legacy-slots-8": Design(
        "legacy-slots-8", "legacy", "/order", {"HOTDEAL_LEGACY_SLOTS": "8"}, Source.LEGACY_SLOTS
    ),
}
DEFAULT_DESIGNS = ("legacy", "order-redis-inline", "order-redis", "legacy-slots-8")
BENCH_DESIGNS = (
    "legacy",
    "order-redis-inline",
    "order-redis",
    "order-redis-none",
    "legacy-slots-8",
)

# The workshop's own ab runs (the seed): 150 concurrent, 3,000 requests, on an EC2
# instance with Flask's development server and Oracle over the network, not this
# machine: a reference, not a like-for-like comparison.
WORKSHOP = {
    "legacy": {"seconds": 100.827, "requests_per_second": 29.75},
    "order-redis-inline": {"seconds": 24.927, "requests_per_second": 120.35},
}


def orders_per_second(database_url: str, source: str) -> float:
    """Orders per second while the stock lasted, from the orders' own timestamps (first
    to last), so fast sold-out answers after the sale don't inflate it."""
    engine = make_engine(database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            n, first, last = conn.execute(
                select(
                    func.count(),
                    func.min(order_history.c.ordered_at),
                    func.max(order_history.c.ordered_at),
                ).where(order_history.c.source == source)
            ).one()
    finally:
        engine.dispose()
    span = (last - first).total_seconds() if n > 1 else 0.0
    return round((n - 1) / span, 2) if span > 0 else 0.0


def percentile(sorted_ms: list[int], pct: float) -> float:
    """Nearest-rank percentile, as ab reports its own."""
    if not sorted_ms:
        return 0.0
    rank = max(1, round(pct / 100 * len(sorted_ms)))
    return float(sorted_ms[min(rank, len(sorted_ms)) - 1])


def books(report: dict[str, Any], design: Design) -> tuple[int, int | None]:
    """(units the design's store says it sold, orders Redis says it took)."""
    if design.source == "redis":
        return report["redis"]["persisted"], report["redis"]["sold"]
    return report[design.source]["sold"], None


def summarize(
    design: Design,
    run: AbRun,
    report: dict[str, Any],
    code: int,
    stock: int,
    requests: int,
    concurrency: int,
) -> dict[str, Any]:
    totals = sorted(ms for _, ms in run.samples)
    persisted, in_redis = books(report, design)
    sold = run.complete - run.non_2xx - run.failed
    counts = [sold, persisted] + ([in_redis] if in_redis is not None else [])
    return {
        "name": design.name,
        "requests": requests,
        "concurrency": concurrency,
        "seconds": run.seconds,
        "requests_per_second": round(run.complete / run.seconds, 2) if run.seconds else 0.0,
        "latency_ms": {
            "mean": round(statistics.fmean(totals), 1) if totals else 0.0,
            "p50": percentile(totals, 50),
            "p95": percentile(totals, 95),
            "p99": percentile(totals, 99),
        },
        "failed": run.failed,
        "non_2xx": run.non_2xx,
        "sold": sold,
        "orders_persisted": persisted,
        "orders_in_redis": in_redis,
        "oversold": persisted > stock or (in_redis or 0) > stock,
        "counts_agree": len(set(counts)) == 1,
        "reconcile_ok": code == 0,
        "violations": report.get("violations", []),
        "timeline": timeline(run),
        "_latencies": totals,  # for the picture; not written to the JSON
    }


def timeline(run: AbRun) -> list[int]:
    """Answers completed in each second of the run (from ab -g start times + totals)."""
    if not run.samples:
        return []
    start = min(s for s, _ in run.samples)
    done = [s - start + ms / 1000 for s, ms in run.samples]
    counts = [0] * (int(max(done)) + 1)
    for t in done:
        counts[int(t)] += 1
    return counts


def run_design(
    stack: LocalStack, design: Design, *, requests: int, concurrency: int, stock: int, workdir: Path
) -> dict[str, Any]:
    print(
        f"\n=== {design.name}: ab -c {concurrency} -n {requests} {design.path} "
        f"(stock {stock}, hold {stack.hold_ms} ms)",
        flush=True,
    )
    stack.reset(stock, slots=design.slots)
    stack.redis_config(appendfsync=design.appendfsync)
    port = stack.legacy_port if design.service == "legacy" else stack.order_redis_port
    # The writer waits for the same durability as the design's answers.
    durability = {k: v for k, v in design.env.items() if k == "HOTDEAL_REDIS_DURABILITY"}
    writer = stack.start_writer(**durability)
    proc = stack.start_service(design.service, port, **design.env)
    try:
        run = run_ab(
            f"http://127.0.0.1:{port}{design.path}",
            requests=requests,
            concurrency=concurrency,
            gnuplot=workdir / f"{design.name}.tsv",
        )
    finally:
        stack.stop_process(proc)
    try:
        done = ops(stack.env, "reconcile", "--wait", "--timeout", "120", check=False)
    finally:
        stack.stop_process(writer)
    report = json.loads(done.stdout) if done.stdout else {"violations": [done.stderr]}
    result = summarize(design, run, report, done.returncode, stock, requests, concurrency)
    result["orders_per_second"] = orders_per_second(
        stack.env["HOTDEAL_DATABASE_URL"], design.source
    )
    return result


def workshop_comparison(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The workshop's published figures beside ours, and the speed-ups both ways."""
    by = {d["name"]: d for d in results}
    rows = {
        name: {
            "workshop_seconds": w["seconds"],
            "workshop_requests_per_second": w["requests_per_second"],
            "here_seconds": by[name]["seconds"] if name in by else None,
            "here_requests_per_second": by[name]["requests_per_second"] if name in by else None,
        }
        for name, w in WORKSHOP.items()
    }
    out: dict[str, Any] = {"designs": rows}
    w = WORKSHOP
    out["workshop_speedup"] = round(
        w["order-redis-inline"]["requests_per_second"] / w["legacy"]["requests_per_second"], 1
    )
    if "legacy" in by:
        base = by["legacy"]["orders_per_second"] or 1e-9
        for name in ("order-redis-inline", "order-redis", "order-redis-none"):
            if name in by:
                out[f"here_speedup_{name}"] = round(by[name]["orders_per_second"] / base, 1)
    return out


def speed_bar(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The speed issue's bars, on orders/s while the stock lasted and on the ceiling
    comparison; informational (speed lives in benchmarks, not in tests)."""
    by = {d["name"]: d for d in result["designs"]}
    checks = []
    legacy = by.get("legacy")
    workshop = WORKSHOP["legacy"]["requests_per_second"]
    if legacy and result["hold_ms"] == 30:
        off = abs(legacy["orders_per_second"] - workshop) / workshop
        checks.append(
            {
                "check": f"legacy within 10% of the workshop's {workshop} orders/s",
                "value": legacy["orders_per_second"],
                "ok": off <= 0.10,
            }
        )
    redis = by.get("order-redis")
    if legacy and redis:
        ratio = redis["orders_per_second"] / max(legacy["orders_per_second"], 1e-9)
        checks.append(
            {"check": "order-redis >= 100x legacy", "value": round(ratio, 1), "ok": ratio >= 100}
        )
    if redis:
        checks.append(
            {
                "check": "order-redis: zero failed requests",
                "value": redis["failed"],
                "ok": redis["failed"] == 0,
            }
        )
    ceilings = result.get("ceilings")
    if ceilings:
        # The whole durable take, with its writer, against a Flask route that only runs
        # a two-line script (what the order route cost before it ran without Flask).
        ratio = ceilings["order_redis_vs_flask_script"]
        checks.append(
            {
                "check": "order-redis >= flask+script (median of rounds)",
                "value": ratio,
                "ok": ratio >= 1,
            }
        )
        writer = ceilings["columns"]["order-redis"].get("cpu_us_writer")
        if writer is not None:
            checks.append(
                {
                    "check": "writer <= 40 us CPU per order",
                    "value": writer,
                    "ok": writer <= 40,
                }
            )
    return checks


@dataclass(frozen=True)
class Column:
    """One column of the ceiling comparison: a WSGI app under order-redis's gunicorn
    settings, the Redis appendfsync it runs with, and whether a writer runs beside it."""

    name: str
    app: str | None  # None: order-redis itself
    path: str
    appendfsync: str
    env: dict[str, str]


# Requests before each measured run (connections, caches, the stream's first entries),
# at most as many as the run itself (a short test run needs no long warm-up).
WARM_UP = 1000
# The ceilings are measured on the same Redis as the design they bound: with durability
# fsync on Redis 7.0 every write is fsynced (appendfsync always), the ceiling's DECR too.
CEILING_COLUMNS = (
    Column("flask", "hotdeal_local.ceiling:bare_app()", "/ceiling", "always", {}),
    Column("flask+script", "hotdeal_local.ceiling:script_app()", "/ceiling", "always", {}),
    Column("routes", "hotdeal_local.ceiling:routes_app()", "/ceiling", "always", {}),
    Column("routes+script", "hotdeal_local.ceiling:routes_script_app()", "/ceiling",
           "always", {}),
    Column("order-redis", None, "/order-redis", "always", {}),
    Column("routes+script (everysec)", "hotdeal_local.ceiling:routes_script_app()",
           "/ceiling", "everysec", {}),
    Column("order-redis-none", None, "/order-redis", "everysec",
           {"HOTDEAL_REDIS_DURABILITY": "none"}),
)  # fmt: skip


def _start_column(stack: LocalStack, column: Column, port: int) -> tuple[Process, Process | None]:
    stack.redis_config(appendfsync=column.appendfsync)
    if column.app is None:
        writer = stack.start_writer(**column.env)
        return stack.start_service("order-redis", port, **column.env), writer
    env = {**stack.env, "HOTDEAL_ADMIN_BIND": ""}
    proc = gunicorn("order-redis", port, env, log=stack.workdir / "ceiling.log", app=column.app)
    stack.processes.append(proc.start())
    return proc, None


def run_ceilings(
    stack: LocalStack, *, requests: int, concurrency: int, rounds: int, workdir: Path
) -> dict[str, Any]:
    """order-redis beside what a Flask route, and a Flask route plus one EVALSHA, cost
    under the same gunicorn settings: every request a sale (stock is never short), the
    columns taking turns for `rounds` rounds so the machine's drift hits them alike.
    CPU per request comes from /proc: the gunicorn process tree, Redis, the writer and
    PostgreSQL (the writer's inserts)."""
    assert stack.redis and stack.pg and stack.redis.proc and stack.pg.proc
    stores = {"redis": stack.redis.proc.pid, "postgres": stack.pg.proc.pid}
    runs: dict[str, list[dict[str, float]]] = {c.name: [] for c in CEILING_COLUMNS}
    for round_no in range(1, rounds + 1):
        for column in CEILING_COLUMNS:
            warm_up = min(WARM_UP, requests)
            stack.reset(requests + warm_up)  # never short: every request is a sale
            port = free_port()
            proc, writer = _start_column(stack, column, port)
            url = f"http://127.0.0.1:{port}{column.path}"
            try:
                run_ab(url, requests=warm_up, concurrency=concurrency, gnuplot=workdir / "w.tsv")
                pids = {"gunicorn": proc.proc.pid, **stores}
                if writer:
                    pids["writer"] = writer.proc.pid
                before = {k: cpu_seconds(pid) for k, pid in pids.items()}
                run = run_ab(
                    url, requests=requests, concurrency=concurrency, gnuplot=workdir / "c.tsv"
                )
                if writer:
                    ops(stack.env, "reconcile", "--wait", "--timeout", "120")  # all persisted
                cpu = {
                    k: (cpu_seconds(pids[k]) - v) / run.complete * 1e6 for k, v in before.items()
                }
            finally:
                stack.stop_process(proc)
                if writer:
                    stack.stop_process(writer)
            sample = {
                "requests_per_second": round(run.complete / run.seconds, 1),
                "failed": run.failed + run.non_2xx,
                **{f"cpu_us_{k}": round(v, 1) for k, v in cpu.items()},
            }
            runs[column.name].append(sample)
            print(
                f"  round {round_no} {column.name}: {sample['requests_per_second']} req/s, "
                + ", ".join(f"{k} {v:.0f} us" for k, v in cpu.items())
                + " CPU per request",
                flush=True,
            )
    stack.redis_config(appendfsync="always")
    return summarize_ceilings(runs)


def summarize_ceilings(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Medians per column, and the per-round ratios' medians (each round's columns ran
    back to back, so a ratio within a round is fair even when the machine drifts)."""
    columns = {
        name: {
            key: statistics.median(s[key] for s in samples)
            for key in samples[0]
            if all(key in s for s in samples)
        }
        for name, samples in runs.items()
    }

    def ratio(a: str, b: str) -> float:
        pairs = zip(runs[a], runs[b], strict=True)
        return round(
            statistics.median(
                x["requests_per_second"] / y["requests_per_second"] for x, y in pairs
            ),
            3,
        )

    return {
        "rounds": len(next(iter(runs.values()))),
        "columns": columns,
        "order_redis_vs_script": ratio("order-redis", "routes+script"),
        "order_redis_vs_flask_script": ratio("order-redis", "flask+script"),
        "none_vs_script_everysec": ratio("order-redis-none", "routes+script (everysec)"),
        "runs": runs,
    }


def run_demo(
    *,
    requests: int,
    concurrency: int,
    stock: int,
    hold_ms: int,
    designs: list[str],
    workdir: Path,
    ceiling_rounds: int = 0,
    ceiling_requests: int = 20_000,
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(workdir=workdir, stock=stock, hold_ms=hold_ms)
    stack.check_ports()
    with running(stack):
        print("starting redis-server and PostgreSQL ...", flush=True)
        stack.start_stores()
        results = [
            run_design(
                stack,
                DESIGNS[name],
                requests=requests,
                concurrency=concurrency,
                stock=stock,
                workdir=workdir,
            )
            for name in designs
        ]
        ceilings = None
        if ceiling_rounds:
            print(
                f"\n=== ceilings: ab -c {concurrency} -n {ceiling_requests}, "
                f"{ceiling_rounds} rounds (every request a sale)",
                flush=True,
            )
            ceilings = run_ceilings(
                stack,
                requests=ceiling_requests,
                concurrency=concurrency,
                rounds=ceiling_rounds,
                workdir=workdir,
            )
    result: dict[str, Any] = {
        "hold_ms": hold_ms,
        "stock": stock,
        "machine": {"cores": os.cpu_count()},
        "designs": results,
    }
    # Speed-up in orders sold per second while the stock lasted.
    legacy_ops = next((d["orders_per_second"] for d in results if d["name"] == "legacy"), None)
    if legacy_ops:
        result["speedup_vs_legacy"] = {
            d["name"]: round(d["orders_per_second"] / legacy_ops, 1) for d in results
        }
    if ceilings:
        result["ceilings"] = ceilings
    result["workshop"] = workshop_comparison(results)
    result["speed_bar"] = speed_bar(result)
    result["ok"] = all(
        d["reconcile_ok"] and d["counts_agree"] and not d["oversold"] for d in results
    )
    return result
