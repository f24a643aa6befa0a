"""Redis client construction: short timeouts so a dead Redis is a fast 503.

With HOTDEAL_REDIS_CLUSTER the client is redis-py's RedisCluster (Redis Cluster, or
ElastiCache in cluster mode: give the configuration endpoint). Every key of a product
carries its hash tag (hotdeal.model.keys), so what one product needs lives on one node;
`node_client` is that node's plain client, for what must share one connection there (a
take and its durability wait).
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.retry import Retry

from hotdeal.config import Settings

Client = redis.Redis | redis.RedisCluster


def make_redis(
    url: str, *, timeout_s: float = 1.0, max_connections: int = 64, cluster: bool = False
) -> Client:
    options: dict[str, Any] = {
        "socket_connect_timeout": timeout_s,
        "socket_timeout": timeout_s,
        "max_connections": max_connections,
        "decode_responses": True,
        # Never resend a command on its own: a take_stock call whose reply was lost may
        # already have run, and running it twice would take the stock twice. The client
        # gets a 503 and retries with its Idempotency-Key instead.
        "retry": Retry(NoBackoff(), 0),
        # The version CLIENT SETINFO reports, given: redis-py otherwise reads it from the
        # package metadata for every new connection (0.5-6 ms of CPU each, measured: a
        # worker's first take, and every reconnect after a failover, paid it).
        "driver_info": DriverInfo(lib_version=redis.__version__),
    }
    # rediss:// (TLS, e.g. ElastiCache in-transit encryption) is handled by from_url.
    if cluster:
        return redis.RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, health_check_interval=30, **options)


def redis_from_settings(settings: Settings, *, timeout_s: float | None = None) -> Client:
    # A reply may wait for the durability wait (WAITAOF/WAIT) on top of the round trip.
    if timeout_s is None:
        timeout_s = (settings.redis_timeout_ms + settings.redis_durability_timeout_ms) / 1000
    return make_redis(settings.need_redis(), timeout_s=timeout_s, cluster=settings.redis_cluster)


def is_cluster(client: Client) -> bool:
    return isinstance(client, redis.RedisCluster)


def node_client(client: Client, key: str) -> redis.Redis:
    """The plain client of the server that holds `key` (the client itself on one Redis)."""
    if isinstance(client, redis.RedisCluster):
        return client.get_redis_connection(client.get_node_from_key(key))
    return client


def primaries(client: Client) -> list[redis.Redis]:
    """A plain client per primary (one on a single Redis)."""
    if isinstance(client, redis.RedisCluster):
        return [client.get_redis_connection(node) for node in client.get_primaries()]
    return [client]


def refresh_topology(client: Client) -> None:
    """After a MOVED answer: learn the cluster's slots again (no-op on one Redis)."""
    if isinstance(client, redis.RedisCluster):
        client.nodes_manager.initialize()


def memory(client: Client) -> list[tuple[int, int]]:
    """(used_memory, maxmemory) of each primary; maxmemory 0 means no limit."""
    found = []
    for node in primaries(client):
        info = node.info("memory")
        found.append((int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))))
    return found


def memory_full(client: Client) -> str | None:
    """Why Redis refuses writes for want of memory (maxmemory with noeviction), or None."""
    for used, limit in memory(client):
        if limit and used >= limit:
            return f"Redis is full: {used} bytes used of maxmemory {limit}; writes are refused"
    return None
