"""Every HOTDEAL_* setting, read in this one module; each default is written once, in
its field. Every variable can also be given as `<NAME>_FILE`: Kubernetes mounts a
Secret as a file instead of exposing the value in the pod spec, and the file wins over
the plain variable so a mounted Secret can't be shadowed by a stale default.

- Settings: the services, the writer and the ops CLI.
- ServerSettings: gunicorn sizing and logging (images/*/gunicorn.conf.py), where `None`
  means "the service's gunicorn config decides" (it says why).
- LocalSettings: `make up` / `make demo` only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Self


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def env(name: str, default: str | None = None) -> str | None:
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={path}: {exc.strerror}") from exc
    value = os.environ.get(name)
    return default if value in (None, "") else value


def setting(
    name: str,
    default: Any = None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    choices: tuple[str, ...] | None = None,
    kind: type = str,
) -> Any:
    """A field read from the environment variable `name` (see `_from_env`)."""
    meta = {"env": name, "min": minimum, "max": maximum, "choices": choices, "kind": kind}
    return field(default=default, metadata=meta)


def _parse(raw: str, meta: dict[str, Any]) -> Any:
    name, kind = meta["env"], meta["kind"]
    if kind is bool:
        if raw.lower() not in ("true", "false"):
            raise ConfigError(f"{name} must be true or false, got {raw!r}")
        return raw.lower() == "true"
    if kind is int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if meta["min"] is not None and value < meta["min"]:
            raise ConfigError(f"{name} must be >= {meta['min']}, got {value}")
        if meta["max"] is not None and value > meta["max"]:
            raise ConfigError(f"{name} must be <= {meta['max']}, got {value}")
        return value
    if meta["choices"]:
        value = raw.lower()
        if value not in meta["choices"]:
            raise ConfigError(f"{name} must be one of {', '.join(meta['choices'])}, got {value!r}")
        return value
    return raw


class _FromEnv:
    @classmethod
    def from_env(cls) -> Self:
        values = {}
        for f in fields(cls):  # type: ignore[arg-type]
            raw = env(f.metadata["env"])
            if raw is not None:
                values[f.name] = _parse(raw, dict(f.metadata))
        return cls(**values)

    @classmethod
    def variables(cls) -> list[str]:
        return [f.metadata["env"] for f in fields(cls)]  # type: ignore[arg-type]


@dataclass(frozen=True)
class Settings(_FromEnv):
    database_url: str | None = setting("HOTDEAL_DATABASE_URL")
    redis_url: str | None = setting("HOTDEAL_REDIS_URL")
    # Simulated work done while the order's database transaction is open (workshop: 30 ms).
    hold_ms: int = setting("HOTDEAL_HOLD_MS", 30, minimum=0, kind=int)
    max_per_order: int = setting("HOTDEAL_MAX_PER_ORDER", 10, minimum=1, kind=int)
    # Max units one user may buy of one product; 0 = no limit.
    per_user_limit: int = setting("HOTDEAL_PER_USER_LIMIT", 1, minimum=0, kind=int)
    # order-redis: "stream" = write-behind through a Redis Stream (default),
    # "inline" = insert into the RDBMS inside the request (the workshop's way).
    order_write: str = setting("HOTDEAL_ORDER_WRITE", "stream", choices=("stream", "inline"))
    idempotency_ttl_s: int = setting("HOTDEAL_IDEMPOTENCY_TTL_S", 86400, minimum=1, kind=int)
    # order-redis: how long a worker answers sold out from memory after a take found
    # nothing left (hotdeal_order_redis.sold_out); a unit that comes back waits at most
    # this long. 0 = every order runs the take.
    sold_out_recheck_ms: int = setting(
        "HOTDEAL_SOLD_OUT_RECHECK_MS", 250, minimum=0, maximum=60_000, kind=int
    )
    # legacy: number of stock rows per product (1 = the single hot row).
    legacy_slots: int = setting("HOTDEAL_LEGACY_SLOTS", 1, minimum=1, kind=int)
    # Pooled connections per worker; None = one per gunicorn thread (see ServerSettings).
    db_pool_size: int | None = setting("HOTDEAL_DB_POOL_SIZE", None, minimum=1, kind=int)
    db_connect_timeout_s: int = setting("HOTDEAL_DB_CONNECT_TIMEOUT_S", 2, minimum=1, kind=int)
    redis_timeout_ms: int = setting("HOTDEAL_REDIS_TIMEOUT_MS", 1000, minimum=50, kind=int)
    # Redis Cluster / ElastiCache cluster mode (HOTDEAL_REDIS_URL: any node, or the
    # configuration endpoint).
    redis_cluster: bool = setting("HOTDEAL_REDIS_CLUSTER", False, kind=bool)
    # order-redis and writer: how durable a take is before it is answered 201 (see
    # hotdeal.durability): "fsync" (default), "replica" or "none" (unsafe).
    redis_durability: str = setting(
        "HOTDEAL_REDIS_DURABILITY", "fsync", choices=("fsync", "replica", "none")
    )
    redis_durability_timeout_ms: int = setting(
        "HOTDEAL_REDIS_DURABILITY_TIMEOUT_MS", 500, minimum=1, kind=int
    )
    # hotdeal-writer (batch: at most 1000, Oracle's IN-list cap)
    writer_batch: int = setting("HOTDEAL_WRITER_BATCH", 500, minimum=1, maximum=1000, kind=int)
    writer_max_wait_ms: int = setting("HOTDEAL_WRITER_MAX_WAIT_MS", 200, minimum=1, kind=int)
    writer_claim_idle_ms: int = setting(
        "HOTDEAL_WRITER_CLAIM_IDLE_MS", 10_000, minimum=100, kind=int
    )
    writer_metrics_port: int = setting("HOTDEAL_WRITER_METRICS_PORT", 9102, minimum=0, kind=int)
    writer_metrics_addr: str = setting("HOTDEAL_WRITER_METRICS_ADDR", "0.0.0.0")
    writer_name: str | None = setting("HOTDEAL_WRITER_NAME")
    writer_check_ms: int = setting("HOTDEAL_WRITER_CHECK_MS", 2000, minimum=100, kind=int)
    writer_auto_repair: bool = setting("HOTDEAL_WRITER_AUTO_REPAIR", True, kind=bool)
    # Buyer identity (hotdeal.identity): "jwt" = the buyer is a verified token's subject;
    # "off" = the body names the buyer, as in the workshop (benchmarks of the designs).
    auth: str = setting("HOTDEAL_AUTH", "jwt", choices=("jwt", "off"))
    auth_issuer: str | None = setting("HOTDEAL_AUTH_ISSUER")
    auth_audience: str | None = setting("HOTDEAL_AUTH_AUDIENCE")
    # Exactly one key source: a JWKS URL, a PEM public key or certificate, or (local use)
    # an HS256 secret.
    auth_jwks_url: str | None = setting("HOTDEAL_AUTH_JWKS_URL")
    auth_public_key: str | None = setting("HOTDEAL_AUTH_PUBLIC_KEY")
    auth_hs256_secret: str | None = setting("HOTDEAL_AUTH_HS256_SECRET")
    auth_leeway_s: int = setting("HOTDEAL_AUTH_LEEWAY_S", 30, minimum=0, maximum=300, kind=int)
    auth_buyer_claim: str = setting("HOTDEAL_AUTH_BUYER_CLAIM", "sub")
    # A token with this scope (the game server, the payment callback) may name the buyer.
    auth_act_for_scope: str = setting("HOTDEAL_AUTH_ACT_FOR_SCOPE", "hotdeal:act_for_buyer")
    # At most one JWKS fetch per this many seconds for unknown kids; a set older than
    # max_age is refetched in the background.
    auth_jwks_refresh_s: int = setting("HOTDEAL_AUTH_JWKS_REFRESH_S", 30, minimum=1, kind=int)
    auth_jwks_max_age_s: int = setting("HOTDEAL_AUTH_JWKS_MAX_AGE_S", 300, minimum=1, kind=int)
    # hotdeal-ops token (load jobs, local runs): the PEM private key or HS256 secret.
    signing_key: str | None = setting("HOTDEAL_SIGNING_KEY")
    signing_key_id: str | None = setting("HOTDEAL_SIGNING_KEY_ID")
    # order-redis: the waiting room's signing secret (32+ bytes, the same on every pod):
    # tickets and passes are HS256 JWTs under it. Unset: no room can be joined.
    room_secret: str | None = setting("HOTDEAL_ROOM_SECRET")
    # order-redis behind the front (nginx): the line follows when the front read each
    # join (its X-Hotdeal-Arrived header). Only where the front is the only way in: a
    # client reaching gunicorn directly could send an early time.
    room_front_arrival: bool = setting("HOTDEAL_ROOM_FRONT_ARRIVAL", False, kind=bool)
    # The workshop's GET /order and GET /order-redis (ab's routes): off in production.
    workshop_routes: bool = setting("HOTDEAL_WORKSHOP_ROUTES", False, kind=bool)
    log_level: str = setting("HOTDEAL_LOG_LEVEL", "info")
    # hotdeal-ops event: the namespace of the load CronJob (default: the pod's own).
    namespace: str | None = setting("HOTDEAL_NAMESPACE")

    def need_database(self) -> str:
        if not self.database_url:
            raise ConfigError("HOTDEAL_DATABASE_URL (or HOTDEAL_DATABASE_URL_FILE) is required")
        return self.database_url

    def need_redis(self) -> str:
        if not self.redis_url:
            raise ConfigError("HOTDEAL_REDIS_URL (or HOTDEAL_REDIS_URL_FILE) is required")
        return self.redis_url


@dataclass(frozen=True)
class ServerSettings(_FromEnv):
    bind: str = setting("HOTDEAL_BIND", "0.0.0.0:8080")
    workers: int | None = setting("HOTDEAL_WORKERS", None, minimum=1, kind=int)
    threads: int | None = setting("HOTDEAL_THREADS", None, minimum=1, kind=int)
    worker_class: str | None = setting("HOTDEAL_WORKER_CLASS", None, choices=("sync", "gthread"))
    access_log: str | None = setting("HOTDEAL_ACCESS_LOG")
    # Heartbeat files in memory, not on a (possibly read-only) root filesystem.
    worker_tmp_dir: str | None = setting("HOTDEAL_WORKER_TMP_DIR")
    # /healthz, /readyz and /metrics outside the workers' queue (hotdeal.admin); "" = off.
    admin_bind: str = setting("HOTDEAL_ADMIN_BIND", "0.0.0.0:9000")

    def __post_init__(self) -> None:
        # gunicorn 27 runs gthread instead of any sync worker given threads, and says so
        # only in its log.
        if self.worker_class == "sync" and (self.threads or 1) > 1:
            raise ConfigError(
                f"HOTDEAL_THREADS={self.threads} needs HOTDEAL_WORKER_CLASS=gthread: a sync "
                "worker serves one request at a time"
            )

    def threads_for(self, worker_class: str, gthread: int) -> int:
        """HOTDEAL_THREADS, else `gthread` threads for a gthread worker and one for sync."""
        return self.threads or (gthread if worker_class == "gthread" else 1)


@dataclass(frozen=True)
class LocalSettings(_FromEnv):
    legacy_port: int = setting("HOTDEAL_LEGACY_PORT", 5000, minimum=1, kind=int)
    order_redis_port: int = setting("HOTDEAL_ORDER_REDIS_PORT", 5001, minimum=1, kind=int)
    prometheus_port: int = setting("HOTDEAL_PROMETHEUS_PORT", 9090, minimum=1, kind=int)
    pg_bindir: str | None = setting("HOTDEAL_PG_BINDIR")
