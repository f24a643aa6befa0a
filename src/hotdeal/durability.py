"""How durable a take is before order-redis answers 201 (HOTDEAL_REDIS_DURABILITY).

- `fsync`: on the Redis server's disk. Redis >= 7.2 / Valkey: `WAITAOF 1 0 <ms>` after the
  take, in the same round trip. Older servers: only with `appendonly yes` and
  `appendfsync always`, verified with CONFIG GET (Redis then fsyncs before it replies).
- `replica`: also on at least one replica: `WAIT 1 <ms>` (a replica holds it: a
  failover to it keeps the order), plus `WAITAOF 1 0 <ms>` on servers that have it and
  keep an AOF (on the primary's disk too). Not `WAITAOF 1 1`: a replica acknowledges its
  own fsync only in its once-a-second REPLCONF ACK (measured here with valkey 9.1), so
  every answer would wait up to a second. A timeout answers 503 outcome_unknown: the
  take ran but is not safe yet.
- `none`: answer as soon as the script ran (the workshop's way). A Redis that comes back
  older (crash with appendfsync everysec, failover to a lagging replica, a restore) has
  forgotten orders it acknowledged. Unsafe; for comparisons only.

The writer waits the same way before it persists a batch, so the database never holds
an order that Redis could still lose (see hotdeal.fence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from hotdeal.redis_client import Client, primaries

MODES = ("fsync", "replica", "none")


class DurabilityError(RuntimeError):
    """The Redis server can't give the configured durability; the message says why."""


@dataclass(frozen=True)
class WaitPlan:
    """The commands that make a take durable, sent right after it on the same
    connection (WAIT and WAITAOF cover that connection's writes)."""

    commands: tuple[tuple[Any, ...], ...] = ()

    def satisfied(self, replies: list[Any]) -> bool:
        """Every wait acknowledged by as many as it asked for."""
        for command, reply in zip(self.commands, replies, strict=True):
            if isinstance(reply, Exception):
                return False
            if command[0] == "WAIT" and int(reply) < command[1]:
                return False
            if command[0] == "WAITAOF":
                local, replicas = (int(x) for x in reply)
                if local < command[1] or replicas < command[2]:
                    return False
        return True


def _has_waitaof(client: redis.Redis) -> bool:
    try:
        client.execute_command("WAITAOF", 0, 0, 1)
        return True
    except redis.ResponseError as exc:
        if "unknown command" in str(exc).lower():
            return False
        raise


def online_replicas(replication: dict[str, Any]) -> int:
    """Replicas in sync (INFO replication's slaveN entries with state=online)."""
    return sum(
        1
        for key, value in replication.items()
        if key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    )


def plan(client: redis.Redis, mode: str, timeout_ms: int) -> WaitPlan:
    """Check the server against `mode` and return how to wait; DurabilityError if it
    can't give it (the service then refuses to serve: /readyz false, orders 503)."""
    if mode == "none":
        return WaitPlan()
    persistence = client.info("persistence")
    aof = int(persistence.get("aof_enabled", 0)) == 1
    waitaof = _has_waitaof(client)
    if mode == "fsync":
        if waitaof:
            if not aof:
                raise DurabilityError(
                    "HOTDEAL_REDIS_DURABILITY=fsync needs appendonly yes on the Redis server"
                )
            return WaitPlan((("WAITAOF", 1, 0, timeout_ms),))
        try:
            fsync = client.config_get("appendfsync").get("appendfsync")
        except redis.ResponseError as exc:
            raise DurabilityError(
                "HOTDEAL_REDIS_DURABILITY=fsync: this server has no WAITAOF (Redis < 7.2) and "
                f"refuses CONFIG GET ({exc}), so appendfsync always can't be verified; "
                "use HOTDEAL_REDIS_DURABILITY=replica on managed Redis"
            ) from None
        if not aof or fsync != "always":
            raise DurabilityError(
                "HOTDEAL_REDIS_DURABILITY=fsync on a server without WAITAOF (Redis < 7.2) "
                f"needs appendonly yes and appendfsync always (found appendonly "
                f"{'yes' if aof else 'no'}, appendfsync {fsync})"
            )
        return WaitPlan()
    replication = client.info("replication")
    if replication.get("role") != "master":
        raise DurabilityError("HOTDEAL_REDIS_DURABILITY=replica: the server is not a primary")
    if online_replicas(replication) < 1:
        raise DurabilityError(
            "HOTDEAL_REDIS_DURABILITY=replica: no replica is connected and in sync"
        )
    local = (("WAITAOF", 1, 0, timeout_ms),) if waitaof and aof else ()
    return WaitPlan((*local, ("WAIT", 1, timeout_ms)))


def plan_all(client: Client, mode: str, timeout_ms: int) -> WaitPlan:
    """`plan` for every primary (one on a single Redis, each node of a cluster): a take
    may land on any of them, so each must give the level, and the same way."""
    plans = {plan(node, mode, timeout_ms) for node in primaries(client)}
    if len(plans) > 1:
        raise DurabilityError(
            "the cluster's primaries differ (Redis versions or AOF settings): "
            f"{sorted(p.commands for p in plans)}"
        )
    return plans.pop()
