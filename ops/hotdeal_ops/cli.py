"""`hotdeal-ops`: init-db, reset, reconcile, repair, dead-letters, room, event, keygen,
token.
Connection settings come from the environment (HOTDEAL_DATABASE_URL, HOTDEAL_REDIS_URL,
or their *_FILE variants).

Exit codes: 0 done / books clean, 1 a violation (reconcile, event), 2 usage or
configuration, 3 a backend unreachable, 4 an internal error (a bug: please report it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import Engine

from hotdeal import fence, room
from hotdeal.config import ConfigError, Settings
from hotdeal.db import make_engine
from hotdeal.errors import error_code, is_logon_refused, is_unavailable
from hotdeal.redis_client import Client, redis_from_settings
from hotdeal.schema import metadata
from hotdeal_ops import dead_letters, tokens
from hotdeal_ops.reconcile import reconcile
from hotdeal_ops.reset import ResetRefused, reset

EXIT_OK, EXIT_VIOLATION, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERNAL = 0, 1, 2, 3, 4
# How long `init-db --wait` sleeps between tries while the database comes up.
INIT_RETRY_S = 3.0


class UsageError(RuntimeError):
    """The command can't run as asked (exit 2); the message says what is missing."""


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


def _rate(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
    if not (value == 0 or room.MIN_RATE <= value <= room.MAX_RATE):
        raise argparse.ArgumentTypeError(
            f"0 (admit nobody) or {room.MIN_RATE:g} to {room.MAX_RATE:g} places a second"
        )
    return value


def _auto_target(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= room.MAX_AUTO_TARGET_MS:
        raise argparse.ArgumentTypeError(f"1 to {room.MAX_AUTO_TARGET_MS} ms")
    return value


def _pass_ttl(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= room.MAX_PASS_TTL_S:
        raise argparse.ArgumentTypeError(f"1 to {room.MAX_PASS_TTL_S} seconds")
    return value


def _non_negative(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc, indent=2, default=str))


class Context:
    """What the sub-commands share: settings, and the stores made on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Engine | None = None
        self._redis: Client | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(
                self.settings.need_database(),
                pool_size=2,
                connect_timeout_s=self.settings.db_connect_timeout_s,
            )
        return self._engine

    @property
    def redis(self) -> Client:
        if self._redis is None:
            self._redis = redis_from_settings(self.settings, timeout_s=5.0)
        return self._redis

    def slots(self, asked: int | None) -> int:
        configured = self.settings.legacy_slots
        return asked or (configured if configured > 1 else 8)


def cmd_init_db(ctx: Context, args: argparse.Namespace) -> int:
    """Create or migrate the tables to this version's schema, from an empty database or
    any version the chart shipped (idempotent; safe from several pods at once)."""
    from hotdeal_ops import migrate  # Alembic: ~0.2 s of every other command's start

    start = getattr(args, "from")
    if start is not None and start not in migrate.revisions():
        raise UsageError(f"--from: no revision {start!r} (there are {migrate.revisions()})")
    if args.sql:
        print(migrate.sql(f"{args.sql}://", start), end="")
        return EXIT_OK
    deadline = time.monotonic() + args.wait
    refused_since: float | None = None
    while True:
        try:
            migrated = migrate.upgrade(ctx.engine)
            break
        except migrate.SchemaError as exc:
            raise UsageError(str(exc)) from None
        except Exception as exc:
            now = time.monotonic()
            if is_logon_refused(exc):
                # gvenzl's entrypoint creates the app user after the database opens: a
                # refused logon is retried that long, then it is the Secret's password.
                refused_since = refused_since if refused_since is not None else now
                if now - refused_since >= min(args.logon_grace, args.wait):
                    print(
                        f"the database refuses the login ({error_code(exc)}) for "
                        f"{now - refused_since:.0f} s: check the user and password in the "
                        "database URL (the Secret's database-url / app-password)",
                        file=sys.stderr,
                    )
                    return EXIT_USAGE
            elif not is_unavailable(exc):
                raise
            if now > deadline:
                raise
            print(f"waiting for the database: {error_code(exc)}", file=sys.stderr)
            time.sleep(INIT_RETRY_S)
    print(
        json.dumps(
            {
                "init_db": "ok",
                "tables": sorted(metadata.tables),
                "schema": {"was": migrated.was, "now": migrated.now},
            }
        )
    )
    return EXIT_OK


def _reset(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    slots = ctx.slots(args.slots)
    fresh = reset(
        ctx.engine,
        ctx.redis,
        args.product,
        args.stock,
        slots=slots,
        opens_at=getattr(args, "opens_at", None),
        discard_orders=getattr(args, "discard_orders", False),
        payment_window_s=getattr(args, "payment_window", None),
    )
    opens = getattr(args, "opens_at", None)
    return {
        "reset": "ok",
        "product": args.product,
        "stock": args.stock,
        "slots": slots,
        "generation": fresh.generation,
        "opens_at": opens.isoformat() if opens else None,
        "payment_window_s": getattr(args, "payment_window", None),
    }


def cmd_reset(ctx: Context, args: argparse.Namespace) -> int:
    """Start a new event for the product in both stores."""
    try:
        print(json.dumps(_reset(ctx, args)))
    except ResetRefused as exc:
        print(f"hotdeal-ops reset: {exc}", file=sys.stderr)
        return EXIT_VIOLATION
    return EXIT_OK


def _reconcile(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    if args.no_redis:
        client = None
    elif not ctx.settings.redis_url:
        raise UsageError(
            "reconcile needs HOTDEAL_REDIS_URL (or _FILE) to check order-redis's books; "
            "pass --no-redis to check the database's books only"
        )
    else:
        client = ctx.redis
    wait_s = args.timeout if args.wait else 0.0
    report = reconcile(ctx.engine, client, args.product, wait_s=wait_s)
    if client is not None and report.get("redis", {}).get("in_flight") and args.wait:
        report["violations"].append(f"backlog not drained after {args.timeout:g}s")
        report["ok"] = False
    return report


def cmd_reconcile(ctx: Context, args: argparse.Namespace) -> int:
    """Check each design's books; exit 1 on a violation."""
    report = _reconcile(ctx, args)
    _emit(report)
    return EXIT_OK if report["ok"] else EXIT_VIOLATION


def cmd_repair(ctx: Context, args: argparse.Namespace) -> int:
    """Rebuild a product's Redis books from order_history and resume selling."""
    try:
        report = fence.repair(
            ctx.engine,
            ctx.redis,
            args.product,
            idempotency_ttl_s=ctx.settings.idempotency_ttl_s,
            drain_timeout_s=args.timeout,
        )
    except fence.RepairError as exc:
        print(f"hotdeal-ops repair: {exc}", file=sys.stderr)
        return EXIT_VIOLATION
    _emit(report)
    return EXIT_OK


def cmd_dead_letters(ctx: Context, args: argparse.Namespace) -> int:
    """List the orders the writers set aside, or send them back to the writers."""
    if args.action == "requeue":
        _emit(dead_letters.requeue(ctx.redis, args.product, ids=args.id or None))
    else:
        _emit(dead_letters.listing(ctx.redis, args.product))
    return EXIT_OK


def cmd_room(ctx: Context, args: argparse.Namespace) -> int:
    """Switch a product's waiting room on (or change its rate, mode or pass lifetime
    mid-event), off, or show it."""
    if args.off:
        _emit(room.close(ctx.redis, args.product))
        return EXIT_OK
    if all(value is None for value in (args.mode, args.rate, args.pass_ttl, args.auto_target_ms)):
        _emit(room.status(ctx.redis, args.product))
        return EXIT_OK
    try:
        _emit(
            room.configure(
                ctx.redis,
                args.product,
                mode=args.mode,
                rate=args.rate,
                pass_ttl_s=args.pass_ttl,
                auto_target_ms=args.auto_target_ms,
            )
        )
    except (LookupError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return EXIT_OK


def cmd_event(ctx: Context, args: argparse.Namespace) -> int:
    """In-cluster: reset, run the load Job, wait, summarize, reconcile."""
    args.namespace = args.namespace or ctx.settings.namespace
    args.slots = ctx.slots(args.slots)
    # Imported here: the kubernetes client takes ~0.5 s to import, which every other
    # command (a reset, a reconcile in a Job) would pay for nothing.
    from hotdeal_ops.event import EventError, run_event

    try:
        return run_event(args, ctx.engine, ctx.redis)
    except EventError as exc:
        raise UsageError(str(exc)) from None


def cmd_keygen(ctx: Context, args: argparse.Namespace) -> int:
    """Write a local signing key pair (ES256): signing.pem, public.pem, jwks.json."""
    settings = ctx.settings
    signer = tokens.Signer.generate(settings.auth_issuer or "", settings.auth_audience or "")
    if args.kid:
        signer.kid = args.kid
    _emit({name: str(path) for name, path in signer.write(args.dir).items()} | {"kid": signer.kid})
    return EXIT_OK


def cmd_token(ctx: Context, args: argparse.Namespace) -> int:
    """Print tokens, one a line: for --subject, or for N buyers <prefix>0.. (load tests)."""
    settings = ctx.settings
    if not settings.signing_key:
        raise UsageError("HOTDEAL_SIGNING_KEY (or HOTDEAL_SIGNING_KEY_FILE) is required")
    if not settings.auth_issuer or not settings.auth_audience:
        raise UsageError("HOTDEAL_AUTH_ISSUER and HOTDEAL_AUTH_AUDIENCE are required")
    signer = tokens.Signer(
        tokens.load_signing_key(settings.signing_key),
        settings.auth_issuer,
        settings.auth_audience,
        kid=settings.signing_key_id,
        ttl_s=args.ttl,
    )
    subjects = [args.subject] if args.subject else [f"{args.prefix}{i}" for i in range(args.users)]
    for subject in subjects:
        print(signer.token(subject, scope=args.scope))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hotdeal-ops", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, run: Callable[[Context, argparse.Namespace], int]) -> Any:
        p = sub.add_parser(name, help=run.__doc__)
        p.set_defaults(run=run)
        return p

    init = command("init-db", cmd_init_db)
    init.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="keep retrying this long while the database is not up yet",
    )
    init.add_argument(
        "--logon-grace",
        type=float,
        default=180,
        metavar="SECONDS",
        help="retry a refused login this long (gvenzl's image creates the user after the "
        "database opens); then stop and say so",
    )
    init.add_argument(
        "--sql",
        choices=("oracle+oracledb", "postgresql+psycopg"),
        help="print the DDL instead of running it (for a DBA; needs no database)",
    )
    init.add_argument(
        "--from",
        metavar="REVISION",
        help="with --sql: the revision the database is at (0001: chart 0.1.0, 0002: "
        "0.2.0, 0003: reservations)",
    )

    rst = command("reset", cmd_reset)
    rst.add_argument("--product", type=_positive, default=1)
    rst.add_argument("--stock", type=_non_negative, required=True)
    rst.add_argument(
        "--slots",
        type=_positive,
        default=None,
        help="stock rows for the legacy slot design (default HOTDEAL_LEGACY_SLOTS or 8)",
    )
    rst.add_argument(
        "--opens-at",
        type=_opens_at,
        default=None,
        help="ISO 8601 opening time; orders before it get 409 not_open",
    )

    rst.add_argument(
        "--discard-orders",
        action="store_true",
        help="start a new event even though the current one has orders (they are deleted)",
    )
    rst.add_argument(
        "--payment-window",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="reservations: an order is a hold, released unless confirmed (paid) within "
        "this many seconds (order-redis, stream mode; default: outright sales)",
    )

    rec = command("reconcile", cmd_reconcile)
    rec.add_argument("--product", type=_positive, default=1)
    rec.add_argument(
        "--wait",
        action="store_true",
        help="first wait until the writer has persisted every order of the Redis picture",
    )
    rec.add_argument("--timeout", type=float, default=120.0, help="seconds --wait may take")
    rec.add_argument(
        "--no-redis", action="store_true", help="check the database's books only (legacy)"
    )

    rep = command("repair", cmd_repair)
    rep.add_argument("--product", type=_positive, default=1)
    rep.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the stream to drain"
    )

    dl = command("dead-letters", cmd_dead_letters)
    dl.add_argument("action", choices=("list", "requeue"))
    dl.add_argument("--product", type=_positive, default=1)
    dl.add_argument(
        "--id",
        action="append",
        help="requeue only this dead-letter entry id (repeatable; default: all of them)",
    )

    rm = command("room", cmd_room)
    rm.add_argument("--product", type=_positive, default=1)
    rm.add_argument(
        "--mode",
        choices=room.MODES,
        default=None,
        help="fifo: first come, first admitted; random: who joins before the opening is "
        "placed at random (default fifo)",
    )
    rm.add_argument(
        "--rate",
        type=_rate,
        default=None,
        help="places admitted per second (default 100); alone, it ends an automatic rate",
    )
    rm.add_argument(
        "--auto-target-ms",
        type=_auto_target,
        default=None,
        help="let the rate follow the order service (from --rate or the current one): it "
        "grows while the room's orders wait in the service less than this, and cuts back "
        "once more than 5%% wait longer",
    )
    rm.add_argument(
        "--pass-ttl", type=_pass_ttl, default=None, help="seconds a pass lives (default 120)"
    )
    rm.add_argument("--off", action="store_true", help="switch the room off")

    kg = command("keygen", cmd_keygen)
    kg.add_argument("--dir", type=Path, required=True, help="where to write the key files")
    kg.add_argument("--kid", default=None, help="the key id (default: local-<random>)")

    tk = command("token", cmd_token)
    who = tk.add_mutually_exclusive_group()
    who.add_argument("--subject", default=None, help="one token, for this buyer")
    who.add_argument("--users", type=_positive, default=1, help="tokens for N buyers")
    tk.add_argument("--prefix", default="user-", help="buyer ids for --users: <prefix><i>")
    tk.add_argument("--ttl", type=_positive, default=3600, help="seconds each token lives")
    tk.add_argument("--scope", default=None, help="e.g. hotdeal:act_for_buyer (a service)")

    ev = command("event", cmd_event)
    ev.add_argument("--load-cronjob", required=True, help="the chart's suspended load CronJob")
    ev.add_argument("--namespace", default=None, help="default HOTDEAL_NAMESPACE, or the pod's")
    ev.add_argument("--job-name", default=None)
    ev.add_argument("--product", type=_positive, default=1)
    ev.add_argument("--stock", type=_non_negative, default=10_000)
    ev.add_argument(
        "--slots",
        type=_positive,
        default=None,
        help="as for reset (default HOTDEAL_LEGACY_SLOTS or 8)",
    )
    ev.add_argument("--timeout", type=float, default=1800.0, help="seconds the load may take")
    return parser


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(Context(Settings.from_env()), args)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = run(argv)
    except (ConfigError, UsageError) as exc:
        print(f"hotdeal-ops: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except Exception as exc:
        if is_unavailable(exc) or isinstance(exc, redis.RedisError):
            first = str(exc).splitlines()[0] if str(exc) else ""
            print(
                f"hotdeal-ops: a backend is unreachable: {exc.__class__.__name__}: {first}",
                file=sys.stderr,
            )
            code = EXIT_UNREACHABLE
        else:
            print(f"hotdeal-ops: internal error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
            code = EXIT_INTERNAL
    sys.exit(code)
