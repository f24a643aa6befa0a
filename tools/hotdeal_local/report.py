"""The demo's table (terminal) and picture (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLUMNS = [
    ("time taken (s)", lambda d: f"{d['seconds']:.2f}"),
    ("requests/s", lambda d: f"{d['requests_per_second']:.1f}"),
    ("orders/s (while stock lasted)", lambda d: f"{d['orders_per_second']:.1f}"),
    ("latency mean (ms)", lambda d: f"{d['latency_ms']['mean']:.0f}"),
    ("latency p50 (ms)", lambda d: f"{d['latency_ms']['p50']:.0f}"),
    ("latency p95 (ms)", lambda d: f"{d['latency_ms']['p95']:.0f}"),
    ("latency p99 (ms)", lambda d: f"{d['latency_ms']['p99']:.0f}"),
    ("failed", lambda d: str(d["failed"])),
    ("non-2xx (sold out)", lambda d: str(d["non_2xx"])),
    ("sold (2xx)", lambda d: str(d["sold"])),
    ("orders persisted", lambda d: str(d["orders_persisted"])),
    (
        "orders in redis",
        lambda d: "-" if d["orders_in_redis"] is None else str(d["orders_in_redis"]),
    ),
    ("counts agree", lambda d: "yes" if d["counts_agree"] else "NO"),
    ("reconcile", lambda d: "pass" if d["reconcile_ok"] else "FAIL"),
    ("oversold", lambda d: "YES" if d["oversold"] else "no"),
]


def table(result: dict[str, Any]) -> str:
    designs = result["designs"]
    first = max(len(label) for label, _ in COLUMNS) + 2
    width = max(14, *(len(d["name"]) + 2 for d in designs))
    lines = [" " * first + "".join(d["name"].rjust(width) for d in designs)]
    for label, cell in COLUMNS:
        lines.append(label.ljust(first) + "".join(cell(d).rjust(width) for d in designs))
    if "speedup_vs_legacy" in result:
        lines.append(
            "speed-up (orders/s)".ljust(first)
            + "".join(
                f"{result['speedup_vs_legacy'][d['name']]:.1f}x".rjust(width) for d in designs
            )
        )
    lines.append("")
    lines += ceiling_lines(result)
    lines += workshop_lines(result)
    for check in result.get("speed_bar", []):
        mark = "met " if check["ok"] else "MISS"
        lines.append(f"  [{mark}] {check['check']}: {check['value']}")
    return "\n".join(lines)


def ceiling_lines(result: dict[str, Any]) -> list[str]:
    c = result.get("ceilings")
    if not c:
        return []
    lines = [
        f"Ceilings (same gunicorn settings, every request a sale, median of {c['rounds']} "
        "rounds; CPU us per request):"
    ]
    keys = ("gunicorn", "redis", "writer", "postgres")
    lines.append("  " + "".ljust(26) + "req/s".rjust(9) + "".join(k.rjust(10) for k in keys))
    for name, col in c["columns"].items():
        cpu = "".join(
            (f"{col[f'cpu_us_{k}']:.0f}" if f"cpu_us_{k}" in col else "-").rjust(10) for k in keys
        )
        lines.append(f"  {name:<26}{col['requests_per_second']:9.0f}{cpu}")
    lines.append(
        f"  order-redis / routes+script: {c['order_redis_vs_script']:.2f}; "
        f"/ flask+script: {c['order_redis_vs_flask_script']:.2f}; "
        f"order-redis-none / routes+script (everysec): {c['none_vs_script_everysec']:.2f}"
    )
    lines.append("")
    return lines


def workshop_lines(result: dict[str, Any]) -> list[str]:
    w = result.get("workshop")
    if not w:
        return []
    lines = ["The workshop's own runs (ab -c 150 -n 3000; EC2, Flask dev server, Oracle):"]
    for name, row in w["designs"].items():
        here = (
            f"here {row['here_seconds']:.1f} s, {row['here_requests_per_second']:.1f} req/s"
            if row["here_seconds"] is not None
            else "not run here"
        )
        lines.append(
            f"  {name:<20} workshop {row['workshop_seconds']:.1f} s, "
            f"{row['workshop_requests_per_second']:.2f} req/s;  {here}"
        )
    ups = [f"workshop {w['workshop_speedup']}x (Redis, insert still in the request)"]
    for name in ("order-redis-inline", "order-redis", "order-redis-none"):
        if f"here_speedup_{name}" in w:
            ups.append(f"here {w[f'here_speedup_{name}']}x {name}")
    lines.append("  speed-up over legacy: " + "; ".join(ups))
    lines.append("")
    return lines


def picture(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate, latency) = plt.subplots(1, 2, figsize=(13, 5))
    for d in result["designs"]:
        rate.plot(range(len(d["timeline"])), d["timeline"], marker="o", label=d["name"])
    rate.set_yscale("log")
    rate.set_xlabel("seconds since the first request")
    rate.set_ylabel("answers per second (log)")
    rate.set_title("Throughput over time")
    rate.legend()
    rate.grid(True, which="both", alpha=0.3)

    for d in result["designs"]:
        ms = sorted(max(v, 1) for v in d.get("_latencies", [])) or [1]
        share = [(i + 1) / len(ms) * 100 for i in range(len(ms))]
        latency.plot(ms, share, label=f"{d['name']} (p99 {d['latency_ms']['p99']:.0f} ms)")
    latency.set_xscale("log")
    latency.set_xlabel("latency per request, ms (log)")
    latency.set_ylabel("% of requests answered within")
    latency.set_title("Latency distribution (from ab -g)")
    latency.legend()
    latency.grid(True, which="both", alpha=0.3)

    stock, hold = result["stock"], result["hold_ms"]
    n = result["designs"][0]["requests"] if result["designs"] else 0
    c = result["designs"][0]["concurrency"] if result["designs"] else 0
    fig.suptitle(
        f"hotdeal: ab -c {c} -n {n}, stock {stock}, hold {hold} ms, "
        f"{result['machine']['cores']} cores"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
