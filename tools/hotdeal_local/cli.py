"""`hotdeal-local up` (what `make up` runs) and `hotdeal-local demo` (`make demo`)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from hotdeal_local.servers import Missing
from hotdeal_local.stack import LocalStack, PortTaken, running


def up(args: argparse.Namespace) -> int:
    stack = LocalStack(stock=args.stock, hold_ms=args.hold_ms)
    stack.check_ports()
    with running(stack):
        print("starting redis-server and PostgreSQL (data under .local/) ...", flush=True)
        stack.start_stores()
        stack.reset()
        stack.start_service("legacy", stack.legacy_port)
        stack.start_service("order-redis", stack.order_redis_port)
        stack.start_writer()
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in stack.env.items())
        print(
            f"""
hotdeal is up (stock {args.stock} of product 1, hold {args.hold_ms} ms):
  legacy        {stack.legacy_url}/order        POST {stack.legacy_url}/v1/orders
  order-redis   {stack.order_redis_url}/order-redis  POST {stack.order_redis_url}/v1/orders
  redis         {stack.redis.url if stack.redis else ""}
  postgresql    {stack.pg.url if stack.pg else ""}
  logs          .local/*.log

  ab -c 150 -n 3000 {stack.legacy_url}/order
  export {exports}
  .venv/bin/hotdeal-ops reset --stock 10000 ; .venv/bin/hotdeal-ops reconcile --wait

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hotdeal-local", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="run the stack in the foreground")
    p_up.add_argument("--stock", type=int, default=10_000)
    p_up.add_argument("--hold-ms", type=int, default=30)
    args = parser.parse_args(argv)
    try:
        code = up(args)
    except (Missing, PortTaken) as exc:
        print(f"hotdeal-local: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)
