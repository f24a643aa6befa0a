"""`hotdeal-ops`: init-db, reset, reconcile. Connection settings come from the
environment (HOTDEAL_DATABASE_URL, HOTDEAL_REDIS_URL, or their *_FILE variants)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import Engine

from hotdeal.config import ConfigError, Settings
from hotdeal.db import make_engine
from hotdeal.errors import is_unavailable
from hotdeal.redis_client import make_redis
from hotdeal.schema import metadata
from hotdeal_ops.event import EventError, run_event
from hotdeal_ops.reconcile import reconcile
from hotdeal_ops.reset import reset_database, reset_redis


def _opens_at(raw: str) -> datetime:
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {raw!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _non_negative(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hotdeal-ops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init-db", help="create the tables (idempotent)")
    init.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="keep retrying this long while the database is not up yet",
    )

    reset = sub.add_parser("reset", help="set a product's stock in both stores, purge its orders")
    reset.add_argument("--product", type=_positive, default=1)
    reset.add_argument("--stock", type=_non_negative, required=True)
    reset.add_argument(
        "--slots",
        type=_positive,
        default=None,
        help="stock rows for the legacy slot design (default HOTDEAL_LEGACY_SLOTS or 8)",
    )
    reset.add_argument(
        "--opens-at",
        type=_opens_at,
        default=None,
        help="ISO 8601 opening time; orders before it get 409 not_open",
    )

    rec = sub.add_parser("reconcile", help="check stock against orders; exit 1 on a violation")
    rec.add_argument("--product", type=_positive, default=1)
    rec.add_argument(
        "--wait",
        action="store_true",
        help="first wait until no order is in flight (write-behind backlog drained)",
    )
    rec.add_argument("--timeout", type=float, default=120.0, help="seconds --wait may take")

    ev = sub.add_parser(
        "event", help="in-cluster: reset, run the load Job, wait, summarize, reconcile"
    )
    ev.add_argument("--load-cronjob", required=True, help="the chart's suspended load CronJob")
    ev.add_argument("--namespace", default=os.environ.get("HOTDEAL_NAMESPACE"))
    ev.add_argument("--job-name", default=None)
    ev.add_argument("--product", type=_positive, default=1)
    ev.add_argument("--stock", type=_non_negative, default=10_000)
    ev.add_argument("--slots", type=_positive, default=8)
    ev.add_argument("--timeout", type=float, default=1800.0, help="seconds the load may take")
    return parser


def _engine(settings: Settings) -> Engine:
    return make_engine(
        settings.need_database(), pool_size=2, connect_timeout_s=settings.db_connect_timeout_s
    )


def _init_db(engine: Engine, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            metadata.create_all(engine)
            return
        except Exception as exc:
            if not is_unavailable(exc) or time.monotonic() > deadline:
                raise
            print(
                f"waiting for the database: {exc.__class__.__name__}", file=sys.stderr, flush=True
            )
            time.sleep(3)


def _reconcile(
    engine: Engine, client: redis.Redis | None, product: int, wait: bool, timeout: float
) -> dict[str, Any]:
    report = reconcile(engine, client, product)
    if wait:
        deadline = time.monotonic() + timeout
        while report.get("redis", {}).get("in_flight", 0) and time.monotonic() < deadline:
            print(f"waiting: {report['redis']['in_flight']} units in flight", file=sys.stderr)
            time.sleep(0.5)
            report = reconcile(engine, client, product)
        if report.get("redis", {}).get("in_flight", 0):
            report["violations"].append(f"backlog not drained after {timeout:g}s")
            report["ok"] = False
    return report


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    engine = _engine(settings)
    if args.command == "init-db":
        _init_db(engine, args.wait)
        print(json.dumps({"init_db": "ok", "tables": sorted(metadata.tables)}))
        return 0
    client = make_redis(settings.redis_url) if settings.redis_url else None
    if args.command in ("reset", "event"):
        if client is None:
            settings.need_redis()
        slots = args.slots or (settings.legacy_slots if settings.legacy_slots > 1 else 8)

        def reset() -> None:
            reset_database(
                engine,
                args.product,
                args.stock,
                slots=slots,
                opens_at=getattr(args, "opens_at", None),
            )
            reset_redis(client, args.product, args.stock, opens_at=getattr(args, "opens_at", None))

        if args.command == "event":
            return run_event(
                args, reset, lambda: _reconcile(engine, client, args.product, True, 600)
            )
        reset()
        print(
            json.dumps(
                {
                    "reset": "ok",
                    "product": args.product,
                    "stock": args.stock,
                    "slots": slots,
                    "opens_at": args.opens_at and args.opens_at.isoformat(),
                }
            )
        )
        return 0
    report = _reconcile(engine, client, args.product, args.wait, args.timeout)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


def main(argv: list[str] | None = None) -> None:
    try:
        code = run(argv)
    except (ConfigError, EventError) as exc:
        print(f"hotdeal-ops: {exc}", file=sys.stderr)
        code = 2
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        print(
            f"hotdeal-ops: a backend is unreachable: {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0]}",
            file=sys.stderr,
        )
        code = 3
    sys.exit(code)
