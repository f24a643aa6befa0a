"""Redis client construction: short timeouts so a dead Redis is a fast 503."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from hotdeal.config import Settings


def make_redis(url: str, *, timeout_s: float = 1.0, max_connections: int = 64) -> redis.Redis:
    # rediss:// (TLS, e.g. ElastiCache in-transit encryption) is handled by from_url.
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        health_check_interval=30,
        max_connections=max_connections,
        decode_responses=True,
        # Never resend a command on its own: a take_stock call whose reply was lost may
        # already have run, and running it twice would take the stock twice. The client
        # gets a 503 and retries with its Idempotency-Key instead.
        retry=Retry(NoBackoff(), 0),
    )


def redis_from_settings(settings: Settings) -> redis.Redis:
    # A reply may wait for the durability wait (WAITAOF/WAIT) on top of the round trip.
    timeout_ms = settings.redis_timeout_ms + settings.redis_durability_timeout_ms
    return make_redis(settings.need_redis(), timeout_s=timeout_ms / 1000)
