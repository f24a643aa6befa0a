"""`hotdeal-local up` (what `make up` runs) and `hotdeal-local demo` (`make demo`)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from hotdeal_local import auth
from hotdeal_local.chaos import FAULTS
from hotdeal_local.demo import BENCH_DESIGNS, DEFAULT_DESIGNS, DESIGNS, run_demo
from hotdeal_local.report import picture, table
from hotdeal_local.servers import REPO, Missing
from hotdeal_local.stack import LocalStack, PortTaken, running


def write_json(path: str, result: object) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


def up(args: argparse.Namespace) -> int:
    stack = LocalStack(workdir=args.workdir, stock=args.stock, hold_ms=args.hold_ms)
    stack.check_ports(prometheus=True)
    with running(stack):
        print("starting redis-server and PostgreSQL (data under .local/) ...", flush=True)
        stack.start_stores()
        stack.reset()
        services = {
            "legacy": stack.start_service("legacy", stack.legacy_port, front=True),
            "order-redis": stack.start_service("order-redis", stack.order_redis_port, front=True),
        }
        writer = stack.start_writer()
        stack.start_prometheus(stack.prometheus_port, services, writer)
        # The local identity provider's key, for `hotdeal-ops token` in another shell.
        keys = auth.signer().write(stack.workdir / "auth")
        minting = {
            "HOTDEAL_SIGNING_KEY_FILE": str(keys["signing_key"]),
            "HOTDEAL_AUTH_ISSUER": auth.ISSUER,
            "HOTDEAL_AUTH_AUDIENCE": auth.AUDIENCE,
        }
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in {**stack.env, **minting}.items())
        print(
            f"""
hotdeal is up (stock {args.stock} of product 1, hold {args.hold_ms} ms):
  legacy        {stack.legacy_url}/order        POST {stack.legacy_url}/v1/orders
  order-redis   {stack.order_redis_url}/order-redis  POST {stack.order_redis_url}/v1/orders
  prometheus    http://127.0.0.1:{stack.prometheus_port}  (alerts: /alerts)
  writer        http://127.0.0.1:{writer.metrics_port}/metrics
  redis         {stack.redis.url if stack.redis else ""}
  postgresql    {stack.pg.url if stack.pg else ""}
  logs          .local/*.log

  export {exports}
  TOKEN=$(.venv/bin/hotdeal-ops token --subject player-1)    # --users N: N buyers
  curl -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
       -d '{{"product_id": 1, "quantity": 1}}' {stack.order_redis_url}/v1/orders
  ab -H "Authorization: Bearer $TOKEN" -c 150 -n 3000 {stack.legacy_url}/order
  .venv/bin/hotdeal-ops reset --stock 10000 ; .venv/bin/hotdeal-ops reconcile --wait

  the waiting room: .venv/bin/hotdeal-ops room --rate 200   (--off; no flags: show it)
  curl -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
       -d '{{"product_id": 1}}' {stack.order_redis_url}/v1/queue    # the ticket
  curl -H "Authorization: Bearer $TOKEN" -H "Hotdeal-Ticket: $TICKET" \
       {stack.order_redis_url}/v1/queue    # your place; once admitted, the pass
  then POST /v1/orders as above with -H "Hotdeal-Pass: $PASS"

Ctrl-C stops everything.""",
            flush=True,
        )
        try:
            while all(p.proc and p.proc.poll() is None for p in stack.processes):
                time.sleep(0.5)
            print("a process exited; stopping (see .local/*.log)", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\nstopping ...", flush=True)
            return 0


def demo(args: argparse.Namespace) -> int:
    designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    unknown = set(designs) - set(DESIGNS)
    if unknown:
        raise SystemExit(
            f"hotdeal-local: unknown design(s) {', '.join(sorted(unknown))}; "
            f"choose from {', '.join(DESIGNS)}"
        )
    result = run_demo(
        requests=args.requests,
        concurrency=args.concurrency,
        stock=args.stock,
        hold_ms=args.hold_ms,
        designs=designs,
        workdir=args.workdir,
        ceiling_rounds=args.ceilings,
        ceiling_requests=args.ceiling_requests,
    )
    out = Path(args.out)
    png = out.with_suffix(".png")
    picture(result, png)
    for d in result["designs"]:
        d.pop("_latencies", None)
    write_json(args.out, result)
    print("\n" + table(result))
    print(f"\nwrote {out} and {png}")
    if not result["ok"]:
        print("the books do not balance: see 'violations' in the JSON", file=sys.stderr)
        return 1
    return 0


def capacity(args: argparse.Namespace) -> int:
    from hotdeal_local.capacity import measure

    print("take_stock.lua on one Redis core (redis-benchmark, same machine):", flush=True)
    rows = measure(
        args.workdir,
        requests=args.requests,
        clients=tuple(int(c) for c in args.clients.split(",")),
        fsyncs=tuple(args.appendfsync.split(",")),
    )
    out = write_json(args.out, {"machine": {"cores": os.cpu_count()}, "runs": rows})
    print(f"wrote {out}")
    return 0


def chaos(args: argparse.Namespace) -> int:
    from hotdeal_local.chaos import run_chaos

    result = run_chaos(
        seed=args.seed,
        rounds=args.rounds,
        round_s=args.round_seconds,
        durability=args.durability,
        workdir=args.workdir / f"chaos-{args.seed}-{args.durability}",
        faults=tuple(f for f in args.faults.split(",") if f),
    )
    out = write_json(args.out, result)
    print(
        f"chaos seed {result['seed']}, durability {result['durability']}: "
        f"{result['requests']} requests, {result['acknowledged']} acknowledged, "
        f"{result['persisted_units']} units persisted, faults {result['faults']}"
    )
    print(f"outcomes: {result['outcomes']}")
    for v in result["violations"]:
        print(f"VIOLATION: {v}")
    print(f"{'ok' if result['ok'] else 'FAILED'}; wrote {out}")
    return 0 if result["ok"] else 1


def probes(args: argparse.Namespace) -> int:
    from hotdeal_local.probes import run_probes

    result = run_probes(
        requests=args.requests,
        concurrency=args.concurrency,
        hold_ms=args.hold_ms,
        workdir=args.workdir / "probes",
    )
    load = f"ab -c {args.concurrency} -n {args.requests}, hold {args.hold_ms} ms"
    print(f"\nlegacy's hot row under {load}:")
    for name, row in result.items():
        p50, worst = row["p50_ms"], row["max_ms"]
        print(f"  {name:<22} n={row['n']:<4} p50 {p50:>8.1f} ms   max {worst:>8.1f} ms")
    write_json(args.out, result)
    return 0


def _rounds(args: argparse.Namespace) -> dict[str, int]:
    """What every benchmark in alternating rounds takes from its command line."""
    return {"rounds": args.rounds, "requests": args.requests, "concurrency": args.concurrency}


def _load(args: argparse.Namespace) -> str:
    return f"ab -c {args.concurrency} -n {args.requests}, medians of {args.rounds}"


def slow(args: argparse.Namespace) -> int:
    from hotdeal_local.slowclients import run_slow_clients

    result = run_slow_clients(
        **_rounds(args),
        slow=args.slow,
        workdir=args.workdir / "slow-clients",
    )
    print(f"\norder-redis, {_load(args)}:")
    for name, row in result["columns"].items():
        cpu = row.get("cpu_us_per_request")
        print(
            f"  {name:<14} {row['requests_per_second']:>8.1f} req/s  failed {row['failed']:>6.0f}"
            + (f"  {cpu:>6.1f} us CPU per request (gunicorn + front)" if cpu else "")
            + ("  (ab timed out: no answer)" if row["timed_out"] else "")
        )
    print(
        f"  the front costs {result['front_cost']:.1%} of throughput; with {args.slow} slow "
        f"clients: {result['slow_vs_front']:.2f} of the front's, {result['slow_vs_direct']:.2f} "
        "of direct's without it"
    )
    write_json(args.out, result)
    return 0


def bench_sold_out(args: argparse.Namespace) -> int:
    from hotdeal_local.soldoutbench import run_sold_out_bench

    result = run_sold_out_bench(
        **_rounds(args),
        samples=args.samples,
        workdir=args.workdir / "bench-sold-out",
    )
    print(f"\nsold-out answers, {_load(args)}:")
    for name, row in result["columns"].items():
        vs = row.get("vs_flask")
        print(
            f"  {name:<16} {row['requests_per_second']:>8.1f} req/s "
            f"{row['cpu_us_per_request']:>7.1f} us CPU per request"
            + (f"  {vs:.3f} of flask's" if vs else "")
        )
    back = result["come_back"]
    print(
        f"a unit that came back was sold after {back['p50_ms']} ms (p50), {back['max_ms']} ms "
        f"(max of {back['samples']}); recheck {back['recheck_ms']} ms"
    )
    write_json(args.out, result)
    return 0


def bench_holds(args: argparse.Namespace) -> int:
    from hotdeal_local.holdsbench import run_holds_bench

    result = run_holds_bench(
        **_rounds(args), storm=args.storm, workdir=args.workdir / "bench-holds"
    )
    versus, confirm, storm = (
        result[k] for k in ("holds_vs_sales", "confirm_under_sale", "expiry_storm")
    )
    print(f"\norder-redis (fsync durability, behind its front), {_load(args)}:")
    print(
        f"  sales {versus['sales_per_second']:.1f} req/s, holds {versus['holds_per_second']:.1f}"
        f" req/s: holds {versus['holds_over_sales']:.3f} of sales"
    )
    print(
        f"  confirm under a sale: p50 {confirm['confirm_p50_ms']} ms, p99 "
        f"{confirm['confirm_p99_ms']} ms, the sale at {confirm['sale_requests_per_second']} req/s"
    )
    print(
        f"  {storm['holds']} holds expiring within {storm['deadline_spread_s']} s: all released "
        f"{storm['all_released_after_last_deadline_s']} s after the last deadline; longest "
        f"Redis command {storm['longest_command_ms']} ms (an expiry batch "
        f"{storm['longest_expire_batch_ms']} ms, a take {storm['longest_take_ms']} ms)"
    )
    write_json(args.out, result)
    return 0


def bench_workers(args: argparse.Namespace) -> int:
    from hotdeal_local.workersbench import run_workers_bench

    result = run_workers_bench(
        **_rounds(args), slow=args.slow, workdir=args.workdir / "bench-workers"
    )
    print(f"\norder-redis (fsync durability, behind its front), {_load(args)}:")
    for name, row in result["columns"].items():
        print(
            f"  {name:<26} {row['requests_per_second']:>8.1f} req/s "
            f"{row['cpu_us_per_request']:>7.1f} us CPU per request  failed {row['failed']}"
        )
    for kind, gain in result["gain_of_4_per_core"].items():
        print(f"  {kind}: 4 per core gives {gain:.3f} of 2 per core's throughput")
    write_json(args.out, result)
    return 0


def bench_spike(args: argparse.Namespace) -> int:
    from hotdeal_local.spike import run_spike

    result = run_spike(
        rounds=args.rounds,
        buyers=args.buyers,
        seconds=args.seconds,
        stock=args.stock,
        rate=args.rate,
        workdir=args.workdir / "bench-spike",
        auto_target_ms=args.auto_target_ms,
    )
    print(
        f"\n{args.buyers} buyers over {args.seconds:g} s around the opening, stock "
        f"{args.stock}, room at {args.rate:g}/s, medians of {args.rounds}:"
    )
    for name, row in result["summary"].items():
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
    write_json(args.out, result)
    return 0


def bench_auth(args: argparse.Namespace) -> int:
    from hotdeal_local.authbench import run_auth_bench

    result = run_auth_bench(
        **_rounds(args),
        workdir=args.workdir / "bench-auth",
    )
    print(f"\norder-redis, {_load(args)}:")
    for name, row in result["columns"].items():
        vs = row.get("throughput_vs_off")
        print(
            f"  {name:<6} {row['requests_per_second']:>8.1f} req/s "
            f"{row['cpu_us_per_request']:>7.1f} us CPU per request"
            + (f"  {vs:.3f} of off's throughput" if vs else "")
        )
    for algorithm, us in result["verify_us"].items():
        share = result["first_verify_share_of_order_cpu"][algorithm]
        print(
            f"  {algorithm}: a token's first check {us['first']:.1f} us ({share:.1%} of an "
            f"order's CPU), a cached one {us['cached']:.1f} us"
        )
    write_json(args.out, result)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hotdeal-local", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="run the stack in the foreground")
    p_up.add_argument("--stock", type=int, default=10_000)
    p_up.add_argument("--hold-ms", type=int, default=30)
    p_up.add_argument("--workdir", type=Path, default=REPO / ".local")
    p_demo = sub.add_parser("demo", help="replay the workshop against each design and compare")
    p_demo.add_argument("--requests", "-n", type=int, default=3000)
    p_demo.add_argument("--concurrency", "-c", type=int, default=150)
    p_demo.add_argument("--stock", type=int, default=10_000)
    p_demo.add_argument("--hold-ms", type=int, default=30)
    p_demo.add_argument(
        "--designs",
        default=",".join(DEFAULT_DESIGNS),
        help=f"comma-separated, in run order, of {', '.join(DESIGNS)} (default "
        f"{','.join(DEFAULT_DESIGNS)}; make bench: {','.join(BENCH_DESIGNS)})",
    )
    p_demo.add_argument(
        "--out", default="results/demo.json", help="JSON results; the PNG goes beside it"
    )
    p_demo.add_argument(
        "--ceilings",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="also measure order-redis beside a bare Flask route and Flask + one EVALSHA, "
        "taking turns for ROUNDS rounds (make bench: 3)",
    )
    p_demo.add_argument("--ceiling-requests", type=int, default=20_000)
    p_demo.add_argument("--workdir", type=Path, default=REPO / ".local" / "demo")
    p_chaos = sub.add_parser("chaos", help="fault-injection run with a checker")
    p_chaos.add_argument("--seed", type=int, default=1)
    p_chaos.add_argument("--rounds", type=int, default=12)
    p_chaos.add_argument("--round-seconds", type=float, default=6.0)
    p_chaos.add_argument("--durability", choices=("replica", "fsync", "none"), default="replica")
    p_chaos.add_argument("--out", default="results/chaos.json")
    p_chaos.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"comma-separated kinds to take turns with (default all: {','.join(FAULTS)})",
    )
    p_chaos.add_argument("--workdir", type=Path, default=REPO / ".local")
    p_cap = sub.add_parser("capacity", help="the take script's capacity on one Redis core")
    p_cap.add_argument("--requests", "-n", type=int, default=200_000)
    p_cap.add_argument("--clients", default="8,50,200")
    p_cap.add_argument("--appendfsync", default="always,everysec")
    p_cap.add_argument("--out", default="results/redis-capacity.json")
    p_cap.add_argument("--workdir", type=Path, default=REPO / ".local")
    p_probes = sub.add_parser("probes", help="probe and scrape latency under legacy's load")
    p_probes.add_argument("--requests", "-n", type=int, default=3000)
    p_probes.add_argument("--concurrency", "-c", type=int, default=150)
    p_probes.add_argument("--hold-ms", type=int, default=30)
    p_probes.add_argument("--out", default="results/probes.json")
    p_probes.add_argument("--workdir", type=Path, default=REPO / ".local")
    p_auth = sub.add_parser("bench-auth", help="order-redis with and without token checks")
    p_auth.add_argument("--rounds", type=int, default=3)
    p_auth.add_argument("--requests", "-n", type=int, default=20_000)
    p_auth.add_argument("--concurrency", "-c", type=int, default=150)
    p_auth.add_argument("--out", default="results/auth.json")
    p_auth.add_argument("--workdir", type=Path, default=REPO / ".local")
    p_sold = sub.add_parser("bench-sold-out", help="sold-out answers against a bare Flask route")
    p_sold.add_argument("--rounds", type=int, default=3)
    p_sold.add_argument("--requests", "-n", type=int, default=20_000)
    p_sold.add_argument("--concurrency", "-c", type=int, default=150)
    p_sold.add_argument("--samples", type=int, default=20)
    p_sold.add_argument("--out", default="results/sold-out.json")
    p_sold.add_argument("--workdir", type=Path, default=REPO / ".local")
    p_holds = sub.add_parser("bench-holds", help="reservations: holds vs sales, confirms, expiry")
    p_holds.add_argument("--rounds", type=int, default=3)
    p_holds.add_argument("--requests", "-n", type=int, default=20_000)
    p_holds.add_argument("--concurrency", "-c", type=int, default=150)
    p_holds.add_argument("--storm", type=int, default=10_000, help="holds expiring at once")
    p_holds.add_argument("--out", default="results/holds.json")
    p_holds.add_argument("--workdir", type=Path, default=REPO / ".local")

    p_workers = sub.add_parser("bench-workers", help="order-redis with 2 or 4 workers per core")
    p_workers.add_argument("--rounds", type=int, default=3)
    p_workers.add_argument("--requests", "-n", type=int, default=20_000)
    p_workers.add_argument("--concurrency", "-c", type=int, default=150)
    p_workers.add_argument("--slow", type=int, default=40)
    p_workers.add_argument("--out", default="results/workers.json")
    p_workers.add_argument("--workdir", type=Path, default=REPO / ".local")
    p_spike = sub.add_parser("bench-spike", help="the opening second, waiting room on and off")
    p_spike.add_argument("--rounds", type=int, default=1)
    p_spike.add_argument("--buyers", type=int, default=20_000)
    p_spike.add_argument("--seconds", type=float, default=10.0)
    p_spike.add_argument("--stock", type=int, default=2_000)
    p_spike.add_argument("--rate", type=float, default=400.0)
    p_spike.add_argument(
        "--auto-target-ms", type=int, default=0, help="also run the room's automatic rate"
    )
    p_spike.add_argument("--out", default="results/spike.json")
    p_spike.add_argument("--workdir", type=Path, default=REPO / ".local")
    p_slow = sub.add_parser(
        "slow-clients", help="a sale under slow clients, with and without the front"
    )
    p_slow.add_argument("--rounds", type=int, default=3)
    p_slow.add_argument("--requests", "-n", type=int, default=20_000)
    p_slow.add_argument("--concurrency", "-c", type=int, default=150)
    p_slow.add_argument("--slow", type=int, default=40)
    p_slow.add_argument("--out", default="results/slow-clients.json")
    p_slow.add_argument("--workdir", type=Path, default=REPO / ".local")
    args = parser.parse_args(argv)
    commands = {
        "up": up,
        "demo": demo,
        "chaos": chaos,
        "probes": probes,
        "capacity": capacity,
        "slow-clients": slow,
        "bench-auth": bench_auth,
        "bench-sold-out": bench_sold_out,
        "bench-workers": bench_workers,
        "bench-holds": bench_holds,
        "bench-spike": bench_spike,
    }
    try:
        code = commands[args.command](args)
    except (Missing, PortTaken) as exc:
        print(f"hotdeal-local: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)
