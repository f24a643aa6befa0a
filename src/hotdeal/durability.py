"""How durable a take is before order-redis answers 201 (HOTDEAL_REDIS_DURABILITY).

- `fsync`: on the Redis server's disk. Redis >= 7.2 / Valkey: `WAITAOF 1 0 <ms>` after the
  take, in the same round trip. Older servers: only with `appendonly yes` and
  `appendfsync always`, verified with CONFIG GET (Redis then fsyncs before it replies).
- `replica`: also on at least one replica: `WAITAOF <local> 1 <ms>` (local = 1 when the
  primary keeps an AOF), or `WAIT 1 <ms>` on servers without WAITAOF (the replica holds
  it in memory). A timeout answers 503 outcome_unknown: the take ran but is not safe yet.
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

MODES = ("fsync", "replica", "none")


class DurabilityError(RuntimeError):
    """The Redis server can't give the configured durability; the message says why."""


@dataclass(frozen=True)
class WaitPlan:
    """The command that makes a take durable (None: nothing to wait for) and how many
    acknowledgements its reply must show."""

    command: tuple[Any, ...] | None
    need_local: int = 0
    need_replicas: int = 0

    def satisfied(self, reply: Any) -> bool:
        if self.command is None:
            return True
        if isinstance(reply, Exception):
            return False
        if self.command[0] == "WAIT":
            return int(reply) >= self.need_replicas
        local, replicas = (int(x) for x in reply)
        return local >= self.need_local and replicas >= self.need_replicas


def _has_waitaof(client: redis.Redis) -> bool:
    try:
        client.execute_command("WAITAOF", 0, 0, 1)
        return True
    except redis.ResponseError as exc:
        if "unknown command" in str(exc).lower():
            return False
        raise


def plan(client: redis.Redis, mode: str, timeout_ms: int) -> WaitPlan:
    """Check the server against `mode` and return how to wait; DurabilityError if it
    can't give it (the service then refuses to serve: /readyz false, orders 503)."""
    if mode == "none":
        return WaitPlan(None)
    persistence = client.info("persistence")
    aof = int(persistence.get("aof_enabled", 0)) == 1
    waitaof = _has_waitaof(client)
    if mode == "fsync":
        if waitaof:
            if not aof:
                raise DurabilityError(
                    "HOTDEAL_REDIS_DURABILITY=fsync needs appendonly yes on the Redis server"
                )
            return WaitPlan(("WAITAOF", 1, 0, timeout_ms), need_local=1)
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
        return WaitPlan(None)
    replication = client.info("replication")
    if replication.get("role") != "master":
        raise DurabilityError("HOTDEAL_REDIS_DURABILITY=replica: the server is not a primary")
    if int(replication.get("connected_slaves", 0)) < 1:
        raise DurabilityError(
            "HOTDEAL_REDIS_DURABILITY=replica: no replica is connected to the primary"
        )
    if waitaof:
        local = 1 if aof else 0
        return WaitPlan(("WAITAOF", local, 1, timeout_ms), need_local=local, need_replicas=1)
    return WaitPlan(("WAIT", 1, timeout_ms), need_replicas=1)
