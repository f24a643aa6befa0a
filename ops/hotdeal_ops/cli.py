"""`hotdeal-ops`: init-db, reset, reconcile. Connection settings come from the
environment (HOTDEAL_DATABASE_URL, HOTDEAL_REDIS_URL, or their *_FILE variants)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime

from sqlalchemy import Engine

from hotdeal.config import ConfigError, Settings
from hotdeal.db import make_engine
from hotdeal.errors import is_unavailable
from hotdeal.redis_client import make_redis
from hotdeal.schema import metadata
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
    sub.add_parser("init-db", help="create the tables (idempotent)")

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
    return parser


def _engine(settings: Settings) -> Engine:
    return make_engine(
        settings.need_database(), pool_size=2, connect_timeout_s=settings.db_connect_timeout_s
    )


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    engine = _engine(settings)
    if args.command == "init-db":
        metadata.create_all(engine)
        print(json.dumps({"init_db": "ok", "tables": sorted(metadata.tables)}))
        return 0
    client = make_redis(settings.redis_url) if settings.redis_url else None
    if args.command == "reset":
        if client is None:
            settings.need_redis()
        slots = args.slots or (settings.legacy_slots if settings.legacy_slots > 1 else 8)
        reset_database(engine, args.product, args.stock, slots=slots, opens_at=args.opens_at)
        reset_redis(client, args.product, args.stock, opens_at=args.opens_at)
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
    report = reconcile(engine, client, args.product)
    if args.wait:
        deadline = time.monotonic() + args.timeout
        while report.get("redis", {}).get("in_flight", 0) and time.monotonic() < deadline:
            print(f"waiting: {report['redis']['in_flight']} units in flight", file=sys.stderr)
            time.sleep(0.5)
            report = reconcile(engine, client, args.product)
        if report.get("redis", {}).get("in_flight", 0):
            report["violations"].append(f"backlog not drained after {args.timeout:g}s")
            report["ok"] = False
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


def main(argv: list[str] | None = None) -> None:
    try:
        code = run(argv)
    except ConfigError as exc:
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
