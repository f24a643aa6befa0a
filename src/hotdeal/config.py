"""Settings from environment variables, each also readable from `<NAME>_FILE`.

The `_FILE` form lets Kubernetes mount a Secret as a file instead of exposing the
value in the pod spec; it wins over the plain variable so a mounted Secret can't be
shadowed by a stale default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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


def env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = env(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (env(name) or default).lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    redis_url: str | None = None
    # Simulated work done while the order's database transaction is open (workshop: 30 ms).
    hold_ms: int = 30
    max_per_order: int = 10
    # Max units one user may buy of one product; 0 = no limit.
    per_user_limit: int = 1
    # order-redis: "stream" = write-behind through a Redis Stream (default),
    # "inline" = insert into the RDBMS inside the request (the workshop's way).
    order_write: str = "stream"
    idempotency_ttl_s: int = 86400
    # legacy: number of stock rows per product (1 = the single hot row).
    legacy_slots: int = 1
    db_pool_size: int = 32
    db_connect_timeout_s: int = 2
    redis_timeout_ms: int = 1000
    # order-redis and writer: how durable a take is before it is answered 201 (see
    # hotdeal.durability): "fsync" (default), "replica" or "none" (unsafe).
    redis_durability: str = "fsync"
    redis_durability_timeout_ms: int = 500
    # hotdeal-writer
    writer_batch: int = 500  # at most 1000: Oracle's IN-list cap
    writer_max_wait_ms: int = 200
    writer_claim_idle_ms: int = 10_000
    writer_metrics_port: int = 9102
    writer_metrics_addr: str = "0.0.0.0"
    writer_name: str | None = None
    writer_check_ms: int = 2000
    writer_auto_repair: bool = True

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            database_url=env("HOTDEAL_DATABASE_URL"),
            redis_url=env("HOTDEAL_REDIS_URL"),
            hold_ms=env_int("HOTDEAL_HOLD_MS", 30),
            max_per_order=env_int("HOTDEAL_MAX_PER_ORDER", 10, minimum=1),
            per_user_limit=env_int("HOTDEAL_PER_USER_LIMIT", 1),
            order_write=env_choice("HOTDEAL_ORDER_WRITE", "stream", ("stream", "inline")),
            idempotency_ttl_s=env_int("HOTDEAL_IDEMPOTENCY_TTL_S", 86400, minimum=1),
            legacy_slots=env_int("HOTDEAL_LEGACY_SLOTS", 1, minimum=1),
            db_pool_size=env_int("HOTDEAL_DB_POOL_SIZE", 32, minimum=1),
            db_connect_timeout_s=env_int("HOTDEAL_DB_CONNECT_TIMEOUT_S", 2, minimum=1),
            redis_timeout_ms=env_int("HOTDEAL_REDIS_TIMEOUT_MS", 1000, minimum=50),
            redis_durability=env_choice(
                "HOTDEAL_REDIS_DURABILITY", "fsync", ("fsync", "replica", "none")
            ),
            redis_durability_timeout_ms=env_int(
                "HOTDEAL_REDIS_DURABILITY_TIMEOUT_MS", 500, minimum=1
            ),
            writer_batch=min(env_int("HOTDEAL_WRITER_BATCH", 500, minimum=1), 1000),
            writer_max_wait_ms=env_int("HOTDEAL_WRITER_MAX_WAIT_MS", 200, minimum=1),
            writer_claim_idle_ms=env_int("HOTDEAL_WRITER_CLAIM_IDLE_MS", 10_000, minimum=100),
            writer_metrics_port=env_int("HOTDEAL_WRITER_METRICS_PORT", 9102),
            writer_metrics_addr=env("HOTDEAL_WRITER_METRICS_ADDR") or "0.0.0.0",
            writer_name=env("HOTDEAL_WRITER_NAME"),
            writer_check_ms=env_int("HOTDEAL_WRITER_CHECK_MS", 2000, minimum=100),
            writer_auto_repair=env_choice("HOTDEAL_WRITER_AUTO_REPAIR", "true", ("true", "false"))
            == "true",
        )

    def need_database(self) -> str:
        if not self.database_url:
            raise ConfigError("HOTDEAL_DATABASE_URL (or HOTDEAL_DATABASE_URL_FILE) is required")
        return self.database_url

    def need_redis(self) -> str:
        if not self.redis_url:
            raise ConfigError("HOTDEAL_REDIS_URL (or HOTDEAL_REDIS_URL_FILE) is required")
        return self.redis_url
