"""How durable a take is before order-redis answers 201 (HOTDEAL_REDIS_DURABILITY).

- `fsync`: on the Redis server's disk. Every server version needs `appendonly yes` and
  `appendfsync always` (checked with CONFIG GET): under `everysec`, Redis 7.2 and 8.x
  answer `WAITAOF 1 0` only after the once-a-second fsync (about half of all waits
  would time out), and valkey 9.1 acknowledges it at once without fsyncing. Each take
  then carries its own proof, in the same round trip: `WAITAOF 1 0 <ms>` where the
  server has it and tells the truth (Redis >= 7.2), else `CONFIG GET appendonly
  appendfsync` right after the take (Redis 7.0, valkey): a server whose AOF was switched
  off or to everysec a moment ago gets no 201 for it (the 5 s plan cache bounded that
  window before).
- `replica`: also on at least one replica: `WAIT 1 <ms>` (a replica holds it: a
  failover to it keeps the order), plus `WAITAOF 1 0 <ms>` on servers that have it and
  keep an AOF (on the primary's disk too). Not `WAITAOF 1 1`: a replica acknowledges its
  own fsync only in its once-a-second REPLCONF ACK (measured here with valkey 9.1), so
  every answer would wait up to a second. A timeout answers 503 outcome_unknown: the
  take ran but is not safe yet.
- `none`: answer as soon as the script ran (the workshop's way). A Redis that comes back
  older (crash with appendfsync everysec, failover to a lagging replica, a restore) has
  forgotten orders it acknowledged. Unsafe; for comparisons only.

The waits cover the calling connection's writes and everything logged before them, so
a read that must vouch for an earlier take (an idempotent replay, a lookup) writes a
marker first and waits on it. The writer waits the same way before it persists a batch,
so the database never holds an order that Redis could still lose (see hotdeal.fence).
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
            if command[0] == "CONFIG" and _aof_config(reply) != ("yes", "always"):
                return False
        return True


# Sent after a take where WAITAOF can't vouch for the fsync: the config it ran under.
CONFIG_CHECK = ("CONFIG", "GET", "appendonly", "appendfsync")


def _aof_config(reply: Any) -> tuple[str | None, str | None]:
    """(appendonly, appendfsync) from a CONFIG GET reply (a flat list or, RESP3, a map)."""
    if isinstance(reply, dict):
        found = reply
    else:
        items = list(reply)
        found = dict(zip(items[::2], items[1::2], strict=True))
    found = {_text(k): _text(v) for k, v in found.items()}
    return found.get("appendonly"), found.get("appendfsync")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _has_waitaof(client: redis.Redis) -> bool:
    try:
        client.execute_command("WAITAOF", 0, 0, 1)
        return True
    except redis.ResponseError as exc:
        if "unknown command" in str(exc).lower():
            return False
        raise


def _is_valkey(client: redis.Redis) -> bool:
    """valkey acknowledges WAITAOF without an fsync of its own (measured with 9.1 under
    everysec), so its answer proves nothing about the disk."""
    server = client.info("server")
    return server.get("server_name") == "valkey" or "valkey_version" in server


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
        try:
            fsync = client.config_get("appendfsync").get("appendfsync")
        except redis.ResponseError as exc:
            raise DurabilityError(
                "HOTDEAL_REDIS_DURABILITY=fsync needs appendfsync always, and this server "
                f"refuses CONFIG GET ({exc}), so it can't be verified; use "
                "HOTDEAL_REDIS_DURABILITY=replica on managed Redis"
            ) from None
        if not aof or fsync != "always":
            raise DurabilityError(
                "HOTDEAL_REDIS_DURABILITY=fsync needs appendonly yes and appendfsync always "
                f"(found appendonly {'yes' if aof else 'no'}, appendfsync {fsync})"
            )
        if waitaof and not _is_valkey(client):
            return WaitPlan((("WAITAOF", 1, 0, timeout_ms),))
        return WaitPlan((CONFIG_CHECK,))
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
