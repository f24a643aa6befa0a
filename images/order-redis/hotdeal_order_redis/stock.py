"""Taking stock in Redis: the Python side of take_stock.lua and its inline helpers.

The take and its durability wait (hotdeal.durability) go out in one round trip on one
connection. What the client can know afterwards decides the answer:
- the connection could not be made, or Redis refused before running the script
  (LOADING, READONLY, OOM, ...): nothing was sold -> 503 `unavailable`;
- the take was sent but no reply came (timeout, connection lost), or the durability
  wait timed out: it may have sold -> 503 `outcome_unknown`;
- otherwise the script's answer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import hiredis
import redis
from redis.commands.core import Script
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from hotdeal import durability, errors, fence
from hotdeal.db import transaction
from hotdeal.designs import Design
from hotdeal.errors import ApiError
from hotdeal.history import OrderRow, insert_new, new_order_id
from hotdeal.inline import INLINE_FINAL_S, InlineTake, InlineTakes, committed, redis_now_ms
from hotdeal.model import keys
from hotdeal.model.records import Sale, iso_ms, parse_index_record
from hotdeal.model.states import HoldState
from hotdeal.process import forks
from hotdeal.redis_client import Client, is_cluster, node_client, primaries, refresh_topology
from hotdeal.validation import OrderRequest
from hotdeal_order_redis.seen import SeenMarks
from hotdeal_order_redis.sold_out import SoldOutMarks

log = logging.getLogger(__name__)


def _script(name: str) -> str:
    return files(__package__).joinpath(name).read_text()


# Settles holds (hotdeal_order_redis.holds sweeps with it too).
HOLD_SCRIPT = _script("hold.lua")


@dataclass(frozen=True, slots=True)
class Taken:
    order_id: str
    remaining: int
    ordered_at_ms: str  # Redis's clock, epoch milliseconds
    replayed: bool
    # Reservations: the hold's state and deadline (None: an outright sale).
    state: str | None = None
    expires_ms: int | None = None

    @property
    def ordered_at(self) -> datetime:
        return _at(self.ordered_at_ms)


@dataclass(frozen=True)
class Settled:
    """A hold's state after a confirm or cancel; `changed` False: settled before."""

    order_id: str
    state: str
    changed: bool


def stopped_midway(reply: Exception) -> bool:
    """Whether a script's error came from inside the script once it ran (a Lua error, a
    command's error), where earlier writes stay, rather than a refusal of the script or
    of its first write. (redis-py strips the code of the errors it has a class for.)"""
    if errors.redis_refused(reply):
        return False
    text = str(reply)
    return "user_script" in text or "Error running script" in text


def take_script_keys(pid: int, idem_key: str, instance_key: str) -> list[str]:
    """take_stock.lua's KEYS, in its order."""
    return [
        *keys.take_keys(pid),
        idem_key,
        instance_key,
        keys.sync_mark(pid),
        keys.room(pid),
        keys.inline_takes(pid),
        keys.holds(pid),
        keys.deadlines(pid),
    ]


def hold_keys(pid: int, instance_key: str) -> list[str]:
    """hold.lua's KEYS, in its order."""
    return [
        keys.books(pid),
        keys.holds(pid),
        keys.deadlines(pid),
        keys.orders(pid),
        keys.buyers(pid),
        keys.orders_stream(pid),
        keys.sync_mark(pid),
        instance_key,
    ]


class Voided(Exception):
    """The take's order id is already in order_history: the sweep voided it."""


def _run_id(info: Any) -> str:
    """The run_id line of an INFO server reply (a new one every time a server starts)."""
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("run_id:"):
            return line[7:].strip()
    raise redis.ConnectionError("INFO server without a run_id")


def _at(ms: Any) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


class RedisStock:
    """Stock of every product, in Redis. `write` is "stream" (write-behind: the order
    record is enqueued in the same atomic step) or "inline" (inserted into the RDBMS
    inside the request, as the workshop did)."""

    def __init__(
        self,
        client: Client,
        *,
        write: str,
        engine: Engine | None = None,
        hold_ms: int = 0,
        idempotency_ttl_s: int = 86400,
        durability_mode: str = "fsync",
        durability_timeout_ms: int = 500,
        sold_out_recheck_ms: int = 0,
    ) -> None:
        if write == "inline" and engine is None:
            raise ValueError("inline order writes need a database engine")
        self.client = client
        self.write = write
        self.engine = engine
        self.hold_s = hold_ms / 1000
        self.idempotency_ttl_s = idempotency_ttl_s
        self.durability_mode = durability_mode
        self.durability_timeout_ms = durability_timeout_ms
        self._take = client.register_script(_script("take_stock.lua"))
        self._inline = InlineTakes(client)
        self._lookup = client.register_script(_script("lookup.lua"))
        self._hold = client.register_script(HOLD_SCRIPT)
        self._plan: durability.WaitPlan | None = None
        self._plan_checked = 0.0
        self._plan_lock = threading.Lock()
        # The fence: per product, the highest (epoch, seq) this server answered 201 for.
        self._seen = SeenMarks()
        self._sold_out = SoldOutMarks(sold_out_recheck_ms)
        self._line = threading.local()
        # On one Redis the take reads the instance mark; a cluster has no key for it.
        self._marked = "0" if is_cluster(client) else "1"
        self._validating = threading.Lock()

    # -- start-up and readiness ------------------------------------------------------
    def warm_up(self) -> None:
        """Load the scripts, open a connection and check durability now, not on the first
        buyer's request. Best effort: a Redis that is down at start-up is /readyz's
        business."""
        try:
            for script in (
                self._take,
                self._hold,
                self._inline.done_script,
                self._inline.give_back_script,
                self._lookup,
            ):
                script.sha = self.client.script_load(script.script)
            self.durability_plan(force=True)
        except (redis.RedisError, durability.DurabilityError) as exc:
            log.warning("not ready yet: %s", exc)

    def open_connections(self) -> None:
        """This thread's own connection to every primary, opened as a sync worker starts
        (hotdeal.gunicorn_setup.post_worker_init): connecting and asking the server's
        run_id cost the first take ~10 ms of CPU, measured, in each worker at the sale's
        first second. Best effort, as warm_up."""
        try:
            for node in primaries(self.client):
                self._ready(node)
        except (ApiError, redis.RedisError) as exc:
            log.warning("no connection to Redis yet: %s", exc)

    def durability_plan(self, *, force: bool = False) -> durability.WaitPlan:
        """The verified wait plan; re-checked every 5 s (a server's config can change).
        Raises DurabilityError when the server can't give the configured level."""
        now = time.monotonic()
        if not force and self._plan is not None and now - self._plan_checked < 5:
            return self._plan
        with self._plan_lock:
            try:
                self._plan = durability.plan_all(
                    self.client, self.durability_mode, self.durability_timeout_ms
                )
            except durability.DurabilityError:
                self._plan = None
                raise
            finally:
                self._plan_checked = now
        return self._plan

    def ready(self) -> None:
        self.client.ping()
        self.durability_plan(force=True)

    # -- the take ----------------------------------------------------------------------
    def _connection(self, node: redis.Redis) -> redis.connection.AbstractConnection:
        """This thread's own connection to `node` (the product's Redis), kept outside the
        pool: taking one from redis-py's pool and giving it back cost ~35 us per order
        (measured with cProfile), a tenth of a request's CPU. A forked worker makes its
        own."""
        line = self._line
        if getattr(line, "forks", None) != forks():  # not the connections we inherited
            line.conns, line.run_ids, line.forks = {}, {}, forks()
        pool = node.connection_pool
        where = (pool.connection_kwargs.get("host"), pool.connection_kwargs.get("port"))
        conn = line.conns.get(where)
        if conn is None:
            # Not pool.make_connection(): that counts against the pool's max_connections,
            # which the pool's own connections (inline mode's give-backs, lookups) need;
            # 32 threads holding one each exhausted it.
            conn = line.conns[where] = pool.connection_class(**pool.connection_kwargs)
        return conn

    def _ready(self, node: redis.Redis) -> tuple[redis.connection.AbstractConnection, str]:
        """This thread's connection to `node`, connected, and the run_id of the server it
        reached (asked once per socket: a restart or failover breaks the socket). Raises
        `unavailable`: nothing has been sent."""
        try:
            conn = self._connection(node)
            # can_read() connects a new connection (redis-py's connect() costs a retry
            # wrapper per call, ~3 us). An idle connection that can be read from was
            # closed by Redis (a restart, a failover, a timeout): reconnect before
            # sending, as redis-py's pool does, so a dead connection is "unavailable",
            # not an unknown outcome.
            try:
                stale = conn.can_read()
            except (redis.ConnectionError, OSError):
                stale = True
            if stale:
                conn.disconnect()
                conn.connect()
            sock = conn._sock
            known = self._line.run_ids.get(id(conn))
            if known is None or known[0] is not sock:
                conn.send_command("INFO", "server")
                known = (sock, _run_id(conn.read_response()))
                self._line.run_ids[id(conn)] = known
            return conn, known[1]
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, OSError):
            # ResponseError: INFO refused (BUSY running a script, LOADING, ...): no take
            # was sent either.
            raise errors.unavailable() from None

    def _round_trip(
        self, conn: redis.connection.AbstractConnection, commands: list[tuple[Any, ...]]
    ) -> list[Any]:
        """Send `commands` in one write, read every reply (errors as values). Raises
        `outcome_unknown` if a reply went missing."""
        try:
            # hiredis packs the commands directly (redis-py's encoder costs ~12 us more).
            conn.send_packed_command([b"".join(map(hiredis.pack_command, commands))])
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
            return replies
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()
            raise errors.outcome_unknown() from None

    def _run_script(
        self,
        script: Script,
        names: list[str],
        args: list[Any],
        plan: durability.WaitPlan,
        after: tuple[Any, ...],
    ) -> tuple[list[Any], bool]:
        """`script` with `args`, the run_id of the server this connection reached and
        `after`, then the durability wait, in one round trip. Returns the script's reply
        and whether the wait was satisfied; `unavailable` if Redis refused the script
        before it ran."""
        for attempt in (1, 2):
            # The product's node (the client itself on one Redis): a script and its
            # durability wait must share one connection there.
            node = node_client(self.client, names[0])
            conn, run_id = self._ready(node)
            call = ("EVALSHA", script.sha, len(names), *names, *args, run_id, *after)
            replies = self._round_trip(conn, [call, *plan.commands])
            reply = replies[0]
            if isinstance(reply, Exception) and attempt == 1:
                # Not run, so safe to send again: a node without the script (restarted,
                # or new to the cluster), or a slot that moved to another node.
                if isinstance(reply, redis.exceptions.NoScriptError):
                    script.sha = node.script_load(script.script)
                    continue
                if isinstance(reply, redis.exceptions.AskError):  # MOVED is one too
                    refresh_topology(self.client)
                    continue
            if isinstance(reply, Exception):
                first_line = str(reply).split("\n")[0][:200]
                if stopped_midway(reply):
                    # The script ran and stopped on an error: Redis keeps what it wrote
                    # before, so it may have sold.
                    log.error("script failed while it ran: %s", first_line)
                    raise errors.outcome_unknown()
                # Refused before it ran (LOADING, READONLY, OOM, ...): nothing was done.
                log.warning("script refused by Redis: %s", first_line)
                raise errors.unavailable()
            return reply, plan.satisfied(replies[1:])
        raise errors.unavailable()

    def _run_take(
        self,
        names: list[str],
        args: list[Any],
        plan: durability.WaitPlan,
        room_pass: str,
        waited_ms: int,
    ) -> list[Any]:
        after = (self._marked, room_pass, waited_ms)
        reply, durable = self._run_script(self._take, names, args, plan, after)
        # A replay wrote a mark after the original take: its wait covers that take.
        if reply[0] in ("ok", "replay") and not durable:
            raise errors.outcome_unknown()
        # These name earlier takes (the buyer's orders, the key's quantity): this
        # request sold nothing, and says nothing about takes not yet durable.
        if reply[0] in ("limit_exceeded", "key_reused") and not durable:
            raise errors.unavailable()
        return reply

    def take(
        self,
        order: OrderRequest,
        *,
        limit: int,
        idempotency_key: str | None,
        list_under_buyer: bool = True,
        room_pass: str = "",
        waited_ms: int = 0,
        again: bool = True,
    ) -> Taken:
        """`room_pass`: the room id of the order's verified waiting-room pass ("" without
        one); `waited_ms`: how long the order waited in the service before the take (the
        room's automatic rate). `again`: whether a take that had to settle something
        first (validate the books, give back a take that never committed) may run once
        more."""
        pid, user = order.product_id, order.user_id
        idem_key = (
            keys.idempotency(pid, user, idempotency_key)
            if idempotency_key
            else keys.idempotency_placeholder(pid)
        )
        try:
            plan = self.durability_plan()
        except durability.DurabilityError:
            raise errors.unavailable() from None
        except redis.RedisError:
            raise errors.unavailable() from None
        names = take_script_keys(pid, idem_key, self._instance_key(pid))
        seen_epoch, seen_seq = self._seen.get(pid)
        args = [
            order.quantity,
            user,
            limit,
            new_order_id(pid),
            pid,
            self.write,
            self.idempotency_ttl_s,
            idempotency_key or "",
            seen_epoch,
            seen_seq,
            "1" if list_under_buyer else "0",
        ]
        status, *rest = self._run_take(names, args, plan, room_pass, waited_ms)
        if status == "ok":
            remaining, order_id, at_ms, epoch, seq, generation, expires = rest
            self._seen.raise_to(pid, int(epoch), int(seq))
            hold = (HoldState.RESERVED, int(expires)) if expires else (None, None)
            taken = Taken(order_id, int(remaining), at_ms, False, *hold)
            if self.write == "inline":
                marks = (int(generation), int(epoch), int(seq))
                self._insert_inline(order, taken, marks, idempotency_key)
            return taken
        if status == "replay":
            remaining, order_id, at_ms, state, _, record = rest
            sale = parse_index_record(order_id, record) if record else None
            hold = (sale.state, sale.expires_ms) if sale else (None, None)
            taken = Taken(order_id, int(remaining), at_ms, True, *hold)
            if state != "pending" or self._pending(order, taken, idempotency_key):
                return taken
            if not again:
                raise errors.unavailable()
        elif not (status == "unvalidated" and again and self._validate_here()):
            if status == "sold_out":
                self._sold_out.learn(pid, int(rest[0]))
            raise _refusal(status, rest, order, limit)
        # Settled first (a pending take given back, the books validated): once more.
        return self.take(
            order, limit=limit, idempotency_key=idempotency_key,
            list_under_buyer=list_under_buyer, room_pass=room_pass, waited_ms=waited_ms,
            again=False,
        )  # fmt: skip

    def known_sold_out(self, order: OrderRequest, idempotency_key: str | None) -> bool:
        """This worker knows the product is sold out (hotdeal_order_redis.sold_out) and
        the order can't be the retry of a sale: it has no Idempotency-Key, or one never
        used. Raises `unavailable` if Redis can't say which. The routes ask before the
        take (and before anything else costs)."""
        if not self._sold_out.known(order.product_id):
            return False
        if idempotency_key is None:
            return True
        key = keys.idempotency(order.product_id, order.user_id, idempotency_key)
        return not self._key_exists(key)

    def _key_exists(self, key: str) -> bool:
        """Whether an Idempotency-Key was used before (its take may be owed a replay):
        one EXISTS on the product's node, no script. Nothing is sold either way, so a
        lost reply is `unavailable`."""
        node = node_client(self.client, key)
        conn, _ = self._ready(node)
        try:
            (reply,) = self._round_trip(conn, [("EXISTS", key)])
        except ApiError:
            raise errors.unavailable() from None
        if isinstance(reply, Exception):
            if isinstance(reply, redis.exceptions.AskError):
                refresh_topology(self.client)
            raise errors.unavailable()
        return bool(reply)

    def _validate_here(self) -> bool:
        """Inline mode has the database, and may run no writer: check the books against
        it now (one thread at a time; the others answer 503 meanwhile)."""
        if self.engine is None or not self._validating.acquire(blocking=False):
            return False
        try:
            results = fence.validate_all(
                self.engine, self.client, idempotency_ttl_s=self.idempotency_ttl_s
            )
        except Exception as exc:  # a backend away: the buyer gets the 503 it would anyway
            log.warning("could not check the books: %s", exc.__class__.__name__)
            return False
        finally:
            self._validating.release()
        return all(r in ("valid", "stamped", "repaired") for r in results.values())

    # -- inline mode (the workshop's in-request insert) ----------------------------------
    def _insert_inline(
        self,
        order: OrderRequest,
        taken: Taken,
        marks: tuple[int, int, int],
        idempotency_key: str | None,
    ) -> None:
        assert self.engine is not None
        generation, epoch, seq = marks
        row = OrderRow(
            taken.order_id,
            order.product_id,
            generation,
            order.user_id,
            order.quantity,
            Design.REDIS,
            taken.ordered_at,
            take_epoch=epoch,
            take_seq=seq,
            idempotency_key=idempotency_key,
        )
        take = InlineTake.of(order, taken.order_id, idempotency_key)
        try:
            with transaction(self.engine) as conn:
                if not insert_new(conn, [row]):
                    raise Voided()
                time.sleep(self.hold_s)  # the workshop's work, inside the transaction
        except errors.CommitUnknown:
            # The COMMIT's answer was lost: the row may be stored. Stored -> sold; voided
            # -> nothing sold; neither (or can't look) -> still unknown, and the stock
            # stays taken: a give-back now could sell a unit the database holds (the
            # take stays open until a retry or the sweep decides it, hotdeal.inline).
            fate = None
            with contextlib.suppress(Exception):
                fate = committed(self.engine, taken.order_id)
            if fate is True:
                self._settle_done(take)  # sold: a refused settle must not say otherwise
                return
            if fate is False:
                self._inline.give_back(take)
                raise errors.unavailable() from None
            raise
        except (Voided, IntegrityError):
            # The sweep fenced this order id first (the take had outlived
            # INLINE_FINAL_S): the row can't be stored, the units went back.
            self._inline.give_back(take)  # (a no-op if the sweep's got there)
            raise errors.unavailable() from None
        except Exception:
            # COMMIT never went out: the transaction rolled back, so nothing was sold.
            # (A give-back lost to Redis is the sweep's, which voids the id first.)
            self._inline.give_back(take)
            raise
        self._settle_done(take)

    def _settle_done(self, take: InlineTake) -> None:
        """Sold: the row is committed. Settling may be tried again (it counts once); if
        Redis stays away or refuses, a replay or the sweep settles it, and the answer is
        still the sale's (a helper's find: a BUSY here answered 503 "nothing sold")."""
        for attempt in (1, 2):
            try:
                self._inline.done(take)
                return
            except redis.RedisError as exc:
                if attempt == 2:
                    log.warning("order committed, not settled yet: %s", exc.__class__.__name__)

    def _pending(self, order: OrderRequest, taken: Taken, idempotency_key: str | None) -> bool:
        """A replay of an inline take whose row was not known committed: True once the
        row is found (the order is done). Older than INLINE_FINAL_S (Redis's clock), its
        id is voided first (hotdeal.inline): then the stock goes back and False tells
        the caller to take anew, unless the row won the race (done)."""
        assert self.engine is not None
        take = InlineTake.of(order, taken.order_id, idempotency_key)
        fate = committed(self.engine, taken.order_id)
        if fate is None:
            age_ms = redis_now_ms(self.client, order.product_id) - int(taken.ordered_at_ms)
            if age_ms < INLINE_FINAL_S * 1000:
                raise errors.in_progress()
            voided = self._inline.void(self.engine, take)
            if voided is None:
                raise errors.in_progress()  # its transaction still holds the id
            fate = not voided
        if fate:
            self._inline.done(take)
            return True
        self._inline.give_back(take)
        return False

    # -- reservations ------------------------------------------------------------------
    def settle(self, order_id: str, op: str, *, again: bool = True) -> Settled:
        """Confirm (`op` "confirm") or cancel ("cancel") the hold `order_id` (hold.lua).
        Idempotent: a hold settled before answers what it became. Answered only once
        the change is durable, as a take is. `again`: whether to run once more after
        validating the books here."""
        pid = keys.product_of_order(order_id)
        if pid is None:
            raise errors.unknown_order()
        try:
            plan = self.durability_plan()
        except (redis.RedisError, durability.DurabilityError):
            raise errors.unavailable() from None
        seen_epoch, seen_seq = self._seen.get(pid)
        args = [op, order_id]
        after = (seen_epoch, seen_seq, pid, keys.idempotency_prefix(pid), self._marked)
        names = hold_keys(pid, self._instance_key(pid))
        reply, durable = self._run_script(self._hold, names, args, plan, after)
        status, *rest = reply
        if status in HoldState.ALL:
            if not durable:
                raise errors.outcome_unknown()
            epoch, seq = int(rest[0]), int(rest[1])
            if seq:
                self._seen.raise_to(pid, epoch, seq)
            return Settled(order_id, status, changed=bool(seq))
        if status == "unvalidated" and again and self._validate_here():
            return self.settle(order_id, op, again=False)
        raise _settle_refusal(status, rest)

    # -- lookups -----------------------------------------------------------------------
    def _look(self, pid: int, mode: str, what: str) -> list[Any]:
        """lookup.lua and the durability wait in one round trip on the product's node:
        a lookup answers a take only once the take is durable."""
        try:
            plan = self.durability_plan()
        except (redis.RedisError, durability.DurabilityError):
            raise errors.unavailable() from None
        names = (
            keys.books(pid),
            keys.orders(pid),
            keys.buyer_orders(pid),
            keys.sync_mark(pid),
            self._instance_key(pid),
        )
        script: Script = self._lookup
        for attempt in (1, 2):
            node = node_client(self.client, names[0])
            conn, run_id = self._ready(node)
            look = ("EVALSHA", script.sha, len(names), *names, run_id, mode, what, self._marked)
            replies = self._round_trip(conn, [look, *plan.commands])
            reply = replies[0]
            if isinstance(reply, redis.exceptions.NoScriptError) and attempt == 1:
                script.sha = node.script_load(script.script)
                continue
            if isinstance(reply, redis.exceptions.AskError) and attempt == 1:
                refresh_topology(self.client)
                continue
            if isinstance(reply, Exception):
                raise errors.unavailable()
            if reply[0] == "unvalidated":
                raise errors.validating()
            found = reply[0] == "ok" and len(reply) > 1 and reply[1] is not None
            if found and not plan.satisfied(replies[1:]):
                raise errors.outcome_unknown()
            return reply
        raise errors.unavailable()

    def lookup(self, order_id: str) -> dict[str, Any]:
        pid = keys.product_of_order(order_id)
        if pid is None:
            raise errors.unknown_order()
        reply = self._look(pid, "order", order_id)
        if reply[0] != "ok" or reply[1] is None:
            raise errors.unknown_order()
        return _order(pid, parse_index_record(order_id, reply[1]))

    def user_orders(self, pid: int, user: str) -> list[dict[str, Any]]:
        reply = self._look(pid, "user", user)
        if reply[0] != "ok":
            return []
        return [
            _order(pid, parse_index_record(order_id, record))
            for order_id, record in zip(reply[1::2], reply[2::2], strict=True)
        ]

    def _instance_key(self, pid: int) -> str:
        return keys.INSTANCE if self._marked == "1" else keys.instance_placeholder(pid)


def _order(pid: int, sale: Sale) -> dict[str, Any]:
    found: dict[str, Any] = {
        "order_id": sale.order_id,
        "product_id": pid,
        "user_id": sale.user_id,
        "quantity": sale.quantity,
        "ordered_at": _at(sale.at_ms).isoformat(),
    }
    if sale.state is not None:
        found.update(state=sale.state, expires_at=iso_ms(sale.expires_ms))
    return found


Refusal = Callable[[list[Any], OrderRequest, int], ApiError]
# take_stock.lua's refusals (a status and its values) as the API answers them; every
# code is one of hotdeal.errors.OUTCOMES (tests/test_model.py holds the script to it).
REFUSALS: dict[str, Refusal] = {
    "sold_out": lambda rest, order, limit: errors.sold_out(int(rest[0])),
    "limit_exceeded": lambda rest, order, limit: errors.limit_exceeded(
        limit, rest[1].split() if len(rest) > 1 else []
    ),
    "not_open": lambda rest, order, limit: errors.not_open(_at(rest[0]).isoformat()),
    "unknown": lambda rest, order, limit: errors.unknown_product(order.product_id),
    "paused": lambda rest, order, limit: errors.paused(rest[0]),
    "unvalidated": lambda rest, order, limit: errors.validating(),
    "pass_required": lambda rest, order, limit: errors.pass_required(order.product_id),
    "key_reused": lambda rest, order, limit: errors.key_reused(int(rest[0])),
}


def _settle_refusal(status: str, rest: list[Any]) -> ApiError:
    if status == "unknown":
        return errors.unknown_order()
    if status == "not_reserved":
        return errors.not_reserved()
    if status == "paused":
        return errors.paused(rest[0])
    if status == "unvalidated":
        return errors.validating()
    raise RuntimeError(f"hold.lua returned {status!r}")


def _refusal(status: str, rest: list[Any], order: OrderRequest, limit: int) -> ApiError:
    try:
        refusal = REFUSALS[status]
    except KeyError:
        raise RuntimeError(f"take_stock.lua returned {status!r}") from None
    return refusal(rest, order, limit)
