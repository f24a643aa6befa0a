"""`hotdeal-writer`: drains the per-product order streams into `order_history`.

At-least-once from Redis, exactly-once in the table: entries are acknowledged (and
deleted from the stream) only after the insert committed, and the insert skips order
ids already stored, so a batch replayed after a crash inserts nothing twice. Entries
left pending by a dead writer are taken over with XAUTOCLAIM once they have been idle
for HOTDEAL_WRITER_CLAIM_IDLE_MS. Any number of writers may share the group.

It never dies on what it reads or on a database that is away:
- a database that is down or restarting (connection lost, Oracle ORA-01109/ORA-12514
  ...): the batch is kept and retried with backoff;
- a database that refuses every write, whatever its error code (read-only: a standby,
  PostgreSQL's 25006; a full tablespace or archiver, ORA-01653/ORA-00257 ...): the
  batch is kept and retried with backoff (hotdeal_writer_database_refusing, alert
  HotdealDatabaseRefusingWrites); no order is set aside for it;
- a row the database refuses on its own (a poisoned order): the batch is split in
  halves until the row is alone and the rest is stored; the row is tried again
  ROW_ATTEMPTS times over at least ROW_PATIENCE_S, and it goes to the dead-letter stream
  only if each time the database accepted a good row (a canary insert, rolled back)
  while refusing it (hotdeal_writer_dead_letters_total, alert HotdealDeadLetters). Its
  units stay sold; `hotdeal-ops dead-letters requeue` sends it back once fixed;
- a full Redis (maxmemory): acknowledging and setting aside are scripts, which a full
  Redis still runs (it refuses any MULTI);
- a Redis server that is not the one the books were checked on (restart, restore,
  failover): every product is checked against the database before it sells again
  (hotdeal.fence.validate_all), and books that came back empty are restored;
- before a batch is stored, Redis is asked to make it as durable as the services'
  answers (hotdeal.durability), so the database never holds an order Redis may lose;
- after each batch and every HOTDEAL_WRITER_CHECK_MS it checks that Redis's books are
  not behind the database (hotdeal.fence) and repairs paused books once the product's
  stream is drained (HOTDEAL_WRITER_AUTO_REPAIR).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.resources import files

import redis
import sqlalchemy.exc
from prometheus_client import REGISTRY, make_wsgi_app
from sqlalchemy import Engine, insert

from hotdeal import durability, fence, metrics
from hotdeal.admin import probe_server
from hotdeal.config import ConfigError, Settings
from hotdeal.db import make_engine
from hotdeal.designs import Design
from hotdeal.errors import is_refusing, is_unavailable
from hotdeal.history import MAX_IN_LIST, OrderRow, apply_changes, insert_new
from hotdeal.model import keys
from hotdeal.model.records import StreamEntry
from hotdeal.redis_client import Client, is_cluster, node_client, redis_from_settings
from hotdeal.schema import order_history
from hotdeal_order_redis import writer_metrics
from hotdeal_order_redis.holds import EXPIRE_EVERY_S, Expirer

log = logging.getLogger("hotdeal.writer")
# How often an idle writer looks at a cluster's streams (it can't block on all at once).
CLUSTER_POLL_MS = 20
# A row the database refuses alone goes to the dead letters only after this many
# refusals over at least this long (a trigger or lock that fails now and then is not a
# poisoned order).
ROW_ATTEMPTS = 4
ROW_PATIENCE_S = 2.0
# How often the writer asks whether the Redis server changed (one INFO on one Redis).
INSTANCE_CHECK_S = 0.1


SYNC_MARK = '#!lua flags=allow-oom\nreturn redis.call("SET", KEYS[1], ARGV[1])'


class DatabaseRefusing(RuntimeError):
    """The database refuses every write, a good canary row included: keep the batch."""


def _script(name: str) -> str:
    return files(__package__).joinpath(name).read_text()


@dataclass(frozen=True)
class Entry:
    stream: str
    entry_id: str
    row: OrderRow
    fields: dict[str, str]  # as read, for the dead-letter stream
    change: bool = False  # a hold's confirm or release (hotdeal.model.records)

    @property
    def marks(self) -> tuple[int, int]:
        """Its place in the books: the change's for a change, else the take's."""
        row = self.row
        if self.change:
            return row.change_epoch or 0, row.change_seq or 0
        return row.take_epoch or 0, row.take_seq or 0


def _product(stream: str) -> int:
    pid = keys.product_of_stream(stream)
    assert pid is not None, stream  # streams() reads only this layout's
    return pid


class OrderWriter:
    def __init__(
        self,
        client: Client,
        engine: Engine,
        *,
        consumer: str,
        batch_size: int = 500,
        max_wait_ms: int = 200,
        claim_idle_ms: int = 10_000,
        durability_mode: str = "fsync",
        durability_timeout_ms: int = 500,
        check_ms: int = 2000,
        auto_repair: bool = True,
        idempotency_ttl_s: int = 86400,
    ) -> None:
        self.client = client
        # In a cluster each product's stream is in its own slot: no read spans several.
        self.cluster = is_cluster(client)
        self.engine = engine
        self.consumer = consumer
        self.batch_size = min(batch_size, MAX_IN_LIST)
        self.max_wait_ms = max_wait_ms
        self.claim_idle_ms = claim_idle_ms
        self.durability_mode = durability_mode
        self.durability_timeout_ms = durability_timeout_ms
        self.check_s = check_ms / 1000
        self.auto_repair = auto_repair
        self.idempotency_ttl_s = idempotency_ttl_s
        self.stop = threading.Event()
        self._streams: list[str] = []
        self._streams_at = 0.0
        self._claimed_at = 0.0
        self._checked_at = 0.0
        self._retry: list[Entry] = []
        self._held: list[Entry] = []  # refused alone, not set aside yet
        self._plan: durability.WaitPlan | None = None
        self._plan_at = 0.0
        self._instance_at = 0.0
        self._expirer = Expirer(client, "writer")
        self._expired_at = 0.0
        # order id -> (refusals, first refusal): a row is set aside only after several.
        self._refusals: dict[str, tuple[int, float]] = {}
        self._foreign: set[str] = set()  # registered streams of another layout
        self._ack = client.register_script(_script("ack.lua"))
        self._set_aside = client.register_script(_script("dead_letter.lua"))

    # -- reading -------------------------------------------------------------------
    def streams(self) -> list[str]:
        if time.monotonic() - self._streams_at > 2.0 or not self._streams:
            found = []
            for stream in sorted(self.client.smembers(keys.STREAMS)):
                if keys.product_of_stream(stream) is not None:
                    found.append(stream)
                elif stream not in self._foreign:
                    # A helper's attack: chart 0.1.0's names stopped every check (and
                    # its entries, without generation or epoch, can't be stored).
                    self._foreign.add(stream)
                    log.error(
                        "stream %s is of an older layout (chart 0.1.0): not read; drain it "
                        "with that version's writer (docs/kubernetes.md, Upgrades)",
                        stream,
                    )
            for stream in set(found) - set(self._streams):
                self._ensure_group(stream)
            self._streams, self._streams_at = found, time.monotonic()
        return self._streams

    def _ensure_group(self, stream: str) -> None:
        try:
            self.client.xgroup_create(stream, keys.WRITER_GROUP, id="0", mkstream=True)
        except redis.exceptions.OutOfMemoryError:
            pass  # refused even when it exists; a missing group shows as NOGROUP on read
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _claim_stale(self) -> list[Entry]:
        """Entries another (dead) writer read but never acknowledged."""
        if time.monotonic() - self._claimed_at < self.claim_idle_ms / 2000:
            return []
        self._claimed_at = time.monotonic()
        claimed: list[Entry] = []
        for stream in self.streams():
            _, messages, _deleted = self.client.xautoclaim(
                stream,
                keys.WRITER_GROUP,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id="0-0",
                count=self.batch_size,
            )
            claimed += self._entries((stream, m) for m in messages if m[1])
        if claimed:
            log.info("claimed %d stale entries", len(claimed))
        return claimed

    def _read_new(self) -> list[Entry]:
        """Up to batch_size new entries, waiting at most max_wait_ms for the batch to fill:
        fewer, larger transactions keep the database (and the commit fsyncs) off the
        critical path while bounding how long an order waits to be persisted.

        Once the first entries are in, it lets the rest arrive and reads them in one go.
        Reading again as soon as anything arrived (a read per few entries at 2,000
        orders/s) cost ~100 us of CPU per order, measured; one read per batch, ~30."""
        streams = self.streams()
        if not streams:
            self.stop.wait(self.max_wait_ms / 1000)
            return []
        deadline = time.monotonic() + self.max_wait_ms / 1000
        batch = self._read(streams, self.batch_size, block_ms=self.max_wait_ms)
        if batch and len(batch) < self.batch_size:
            left = deadline - time.monotonic()
            if left > 0 and self.stop.wait(left):
                return batch
            batch += self._read(streams, self.batch_size - len(batch), block_ms=None)
        return batch

    def _read(self, streams: list[str], count: int, *, block_ms: int | None) -> list[Entry]:
        if self.cluster and len(streams) > 1:
            return self._read_each(streams, count, block_ms=block_ms)
        reply = self.client.xreadgroup(
            keys.WRITER_GROUP,
            self.consumer,
            dict.fromkeys(streams, ">"),
            count=count,
            block=block_ms,
        )
        return self._entries((s, m) for s, messages in reply or [] for m in messages)

    def _read_each(self, streams: list[str], count: int, *, block_ms: int | None) -> list[Entry]:
        """A cluster refuses a read of streams in different slots (CROSSSLOT), so each
        is read on its own, and an empty pass polls again after a short wait instead of
        a blocking read."""
        entries: list[Entry] = []
        for stream in streams:
            if len(entries) >= count:
                break
            reply = self.client.xreadgroup(
                keys.WRITER_GROUP,
                self.consumer,
                {stream: ">"},
                count=count - len(entries),
            )
            entries += self._entries((s, m) for s, messages in reply or [] for m in messages)
        if not entries and block_ms:
            self.stop.wait(min(block_ms, CLUSTER_POLL_MS) / 1000)
        return entries

    def _still_there(self, batch: list[Entry]) -> list[Entry]:
        pipe = self.client.pipeline(transaction=False)
        for e in batch:
            pipe.xrange(e.stream, min=e.entry_id, max=e.entry_id, count=1)
        found = pipe.execute()
        kept = [e for e, hit in zip(batch, found, strict=True) if hit]
        if len(kept) < len(batch):
            log.warning("%d entries of a retried batch are gone from Redis", len(batch) - len(kept))
        return kept

    def _entries(self, messages: Iterable[tuple[str, tuple[str, dict[str, str]]]]) -> list[Entry]:
        entries: list[Entry] = []
        for stream, (mid, fields) in messages:
            try:
                parsed = StreamEntry.parse(fields)
                entries.append(Entry(stream, mid, parsed.row(), fields, parsed.change))
            except (KeyError, ValueError) as exc:
                self.dead_letter(stream, mid, fields, f"malformed entry: {exc!r}")
        return entries

    def dead_letter(self, stream: str, mid: str, fields: dict[str, str], reason: str) -> None:
        """Keep the entry for a human (with why), and let the stream move on."""
        log.error("entry %s %s moved to the dead-letter stream: %s", stream, mid, reason)
        dead = keys.dead_letter(_product(stream))  # the product's slot
        fields = {"stream": stream, "id": mid, "reason": reason, **fields}
        flat = [x for pair in fields.items() for x in pair]
        self._set_aside(keys=[stream, dead], args=[keys.WRITER_GROUP, mid, *flat])
        writer_metrics.DEAD_LETTERS.inc()

    # -- durability ----------------------------------------------------------------
    def make_durable(self, batch: list[Entry]) -> None:
        """Wait until the entries read are as durable as the answers given for them.

        WAITAOF/WAIT cover the calling client's own writes, so a tiny write on the same
        connection (per product, in its slot) comes first: the log is sequential, and
        once that write is durable every entry read before it is too."""
        if self._plan is None or time.monotonic() - self._plan_at > 5:
            self._plan = None
            self._plan = durability.plan_all(
                self.client, self.durability_mode, self.durability_timeout_ms
            )
            self._plan_at = time.monotonic()
        plan = self._plan
        if not plan.commands:
            return
        # Per node (one on a single Redis): the waits cover that connection's writes.
        by_node: dict[int, tuple[redis.Redis, list[str]]] = {}
        for stream in sorted({e.stream for e in batch}):
            node = node_client(self.client, stream)
            by_node.setdefault(id(node), (node, []))[1].append(stream)
        for node, streams in by_node.values():
            pipe = node.pipeline(transaction=False)
            for stream in streams:
                # A script past maxmemory: a full Redis would refuse a plain SET, and the
                # wait would then vouch for nothing.
                key = f"{keys.prefix(_product(stream))}-writer-sync"
                pipe.eval(SYNC_MARK, 1, key, self.consumer)
            for command in plan.commands:
                pipe.execute_command(*command)
            replies = pipe.execute(raise_on_error=False)
            marks, waits = replies[: len(streams)], replies[len(streams) :]
            # A mark Redis refused (MISCONF, NOREPLICAS) is not a write the wait covers:
            # it would vouch only for this connection's older writes (a helper's find).
            refused = [m for m in marks if isinstance(m, Exception)]
            if refused or not plan.satisfied(waits):
                raise durability.DurabilityError(f"durability wait failed: {replies!r}")

    # -- writing -------------------------------------------------------------------
    def _insert(self, batch: list[Entry]) -> int:
        """The batch's new orders, then its holds' changes (a hold taken and settled in
        one batch is stored, then updated), in one transaction."""
        rows = [e.row for e in batch if not e.change]
        changes = [e.row for e in batch if e.change]
        try:
            with self.engine.begin() as conn:
                if rows:
                    conn.execute(insert(order_history), [r.as_params() for r in rows])
                apply_changes(conn, changes)
            return len(rows)
        except sqlalchemy.exc.IntegrityError:
            # A replay (claimed from a dead writer, or a crash before the ack): some ids
            # are stored already. Take the slower path that skips them.
            with self.engine.begin() as conn:
                inserted = insert_new(conn, rows)
                apply_changes(conn, changes)
                return inserted

    def persist(self, batch: list[Entry]) -> tuple[int, list[tuple[Entry, str]]]:
        """Store what the database accepts; returns (inserted, entries it refused alone).

        A refusal that is not the database being away is narrowed down by halving, so
        one poisoned row never holds back the orders batched with it. A row refused
        alone counts as the row's fault only if the database takes a good row at the
        same moment (DatabaseRefusing otherwise: the whole batch waits)."""
        try:
            return self._insert(batch), []
        except Exception as exc:
            if is_unavailable(exc):
                raise
            if len(batch) == 1:
                if not self._accepts_writes(batch[0].row):
                    raise DatabaseRefusing(_code(exc)) from None
                entry = batch[0]
                # The class and the driver's error code only: never the row's values.
                reason = f"{exc.__class__.__name__}: {_code(exc)}"
                log.warning("order %s refused by the database (%s)", entry.row.order_id, reason)
                return 0, [(entry, reason)]
        half = len(batch) // 2
        done_a, refused_a = self.persist(batch[:half])
        done_b, refused_b = self.persist(batch[half:])
        return done_a + done_b, refused_a + refused_b

    def _accepts_writes(self, like: OrderRow) -> bool:
        """Does the database store a good order of the same product and event right now?
        A canary row, rolled back: a refusal of the whole product (a trigger, a
        partition) is the database's, not the row's."""
        canary = OrderRow.now(like.prod_id, like.generation, "hotdeal-canary", 1, Design.REDIS)
        try:
            with self.engine.connect() as conn:
                trans = conn.begin()
                try:
                    conn.execute(insert(order_history), [canary.as_params()])
                finally:
                    trans.rollback()
            return True
        except Exception as exc:
            if is_unavailable(exc):
                raise
            return False

    def _ripe(self, refused: list[tuple[Entry, str]]) -> list[tuple[Entry, str]]:
        """The refused rows that have been refused often and long enough to set aside."""
        now = time.monotonic()
        ripe = []
        for entry, reason in refused:
            count, first = self._refusals.get(entry.row.order_id, (0, now))
            count += 1
            self._refusals[entry.row.order_id] = (count, first)
            if count >= ROW_ATTEMPTS and now - first >= ROW_PATIENCE_S:
                ripe.append((entry, reason))
                del self._refusals[entry.row.order_id]
        return ripe

    def acknowledge(self, batch: list[Entry]) -> dict[str, dict[str, str]]:
        """XACK + XDEL the batch, and read each product's books in the same atomic step."""
        by_stream: dict[str, list[str]] = {}
        for e in batch:
            by_stream.setdefault(e.stream, []).append(e.entry_id)
        books = {}
        for stream, ids in by_stream.items():
            raw = self._ack(
                keys=[stream, keys.books(_product(stream))],
                args=[keys.WRITER_GROUP, *ids],
            )
            books[stream] = dict(zip(raw[::2], raw[1::2], strict=True))
        return books

    def check_fence(self, batch: list[Entry], books: dict[str, dict[str, str]]) -> None:
        """The batch just stored is in the database: Redis's books must be at or past
        it. If not, Redis came back older than the database: pause the product."""
        newest: dict[str, tuple[int, int, int]] = {}
        for e in batch:
            mark = (e.row.generation, *e.marks)
            newest[e.stream] = max(newest.get(e.stream, mark), mark)
        for stream, (generation, epoch, seq) in newest.items():
            current = books.get(stream) or {}
            if not current or int(current.get(keys.GENERATION, 0)) != generation:
                continue  # reset since: an old event's orders
            have = (int(current.get(keys.EPOCH, 0)), int(current.get(keys.SEQ, 0)))
            if have < (epoch, seq):
                reason = (
                    f"{fence.ROLLBACK}books at {have[0]}/{have[1]} but take "
                    f"{epoch}/{seq} was just persisted"
                )
                log.error("product %s: %s", _product(stream), reason)
                fence.pause(self.client, _product(stream), reason, judged=current)

    def check_instance(self) -> None:
        """Every INSTANCE_CHECK_S: if the Redis server is not the one every product was
        checked on (restart, restore, failover), check them all against the database
        now: until then the take sells nothing (hotdeal.fence)."""
        if time.monotonic() - self._instance_at < INSTANCE_CHECK_S:
            return
        self._instance_at = time.monotonic()
        try:
            if fence.instance_checked(self.client):
                # The same server, but books left behind by a check elsewhere (a
                # failback to a server that never restarted) are stale all the same.
                stale = fence.stale_products(self.engine, self.client)
                found = {pid: self._validate(pid) for pid in stale}
            else:
                found = fence.validate_all(
                    self.engine,
                    self.client,
                    auto_repair=self.auto_repair,
                    idempotency_ttl_s=self.idempotency_ttl_s,
                )
        except Exception as exc:
            # Storing and acknowledging go on (a full Redis frees memory that way); the
            # take keeps refusing these books until a later check gets through.
            log.warning("checking the books failed: %s: %s", exc.__class__.__name__, _code(exc))
            return
        changed = {pid: r for pid, r in found.items() if r != "valid"}
        if changed:
            log.warning("books checked on a new Redis server: %s", changed)
            writer_metrics.REPAIRS.inc(sum(1 for r in changed.values() if r == "repaired"))
        self._streams_at = 0.0  # restored products bring their streams back

    def _validate(self, pid: int) -> str:
        return fence.validate(
            self.engine,
            self.client,
            pid,
            auto_repair=self.auto_repair,
            idempotency_ttl_s=self.idempotency_ttl_s,
        )

    def check_books(self) -> None:
        """Every check interval: pause products whose books are behind the database,
        and repair paused ones whose stream is drained (HOTDEAL_WRITER_AUTO_REPAIR)."""
        if time.monotonic() - self._checked_at < self.check_s:
            return
        self._checked_at = time.monotonic()
        for stream in self.streams():
            pid = _product(stream)
            if not self.client.exists(keys.books(pid)):
                # Books deleted on a live server (by hand, a bad script): restored from
                # the database, as after a restart.
                log.warning("product %s has no books: %s", pid, self._validate(pid))
                continue
            reason = fence.check(self.engine, self.client, pid)
            if not reason:
                continue
            writer_metrics.PAUSED_SEEN.inc()
            if (
                self.auto_repair
                and reason.startswith(fence.REPAIRABLE)
                and not self.client.xlen(stream)
            ):
                try:
                    report = fence.repair(
                        self.engine, self.client, pid, idempotency_ttl_s=self.idempotency_ttl_s
                    )
                    log.warning("product %s repaired from the database: %s", pid, report)
                    writer_metrics.REPAIRS.inc()
                except fence.RepairError as exc:
                    log.warning("product %s not repaired yet: %s", pid, exc)

    def run_once(self) -> int:
        """Read, store and acknowledge one batch; returns how many entries it handled."""
        self.check_instance()
        # A batch that failed half-way is retried first, but only the entries the current
        # Redis still holds: after a failover it may be a replica that never got them,
        # and storing those would put orders in the database that Redis has forgotten.
        batch = self._still_there(self._retry) if self._retry else []
        if not batch:
            # Rows refused alone last time go again, with whatever is new.
            held = self._still_there(self._held) if self._held else []
            batch = held + (self._claim_stale() or self._read_new())
        self._retry, self._held = batch, []
        if batch:
            started = time.perf_counter()
            self.make_durable(batch)
            try:
                inserted, refused = self.persist(batch)
            except Exception as exc:
                if isinstance(exc, DatabaseRefusing) or is_refusing(exc):
                    writer_metrics.DATABASE_REFUSING.set(1)
                raise
            writer_metrics.DATABASE_REFUSING.set(0)
            for entry, reason in self._ripe(refused):
                self.dead_letter(
                    entry.stream, entry.entry_id, entry.fields, f"refused by the database: {reason}"
                )
            held = {entry.entry_id for entry, _ in refused}
            stored = [e for e in batch if e.entry_id not in held]
            books = self.acknowledge(stored) if stored else {}
            self.check_fence(stored, books)
            writer_metrics.BATCH_DURATION.observe(time.perf_counter() - started)
            writer_metrics.BATCH_SIZE.observe(len(batch))
            writer_metrics.PERSISTED.inc(inserted)
            # Rows refused but not set aside yet go again with the next batch.
            self._held = [e for e in batch if e.row.order_id in self._refusals]
        self._retry = []
        self.check_books()
        self.expire_holds()
        return len(batch)

    def expire_holds(self) -> None:
        """Release holds past their deadline (the pods' admin listeners do it too:
        whichever gets there first, hotdeal_order_redis.holds)."""
        if time.monotonic() - self._expired_at < EXPIRE_EVERY_S:
            return
        self._expired_at = time.monotonic()
        try:
            self._expirer.sweep()
        except redis.RedisError as exc:
            log.warning("hold expiry sweep failed: %s", exc.__class__.__name__)

    def run(self, *, max_batches: int | None = None, burst: bool = False) -> None:
        """Until stopped; `max_batches` and `burst` (stop once nothing is left) bound it
        for tests and one-off drains, as rq's worker does."""
        backoff = 0.1
        batches = 0
        log.info("writer %s started", self.consumer)
        while not self.stop.is_set() and (max_batches is None or batches < max_batches):
            try:
                handled = self.run_once()
                batches += 1
                backoff = 0.1
                if burst and not handled:
                    break
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc) or "no longer exists" in str(exc):
                    # `hotdeal-ops reset` deleted a stream we were reading.
                    log.info("stream reset (%s); reloading streams", exc)
                    self._streams, self._retry = [], []
                    continue
                backoff = self._back_off(exc, backoff)
            except Exception as exc:  # never die: an unknown failure is retried too
                backoff = self._back_off(exc, backoff)
        log.info("writer %s stopped", self.consumer)

    def _back_off(self, exc: Exception, backoff: float) -> float:
        # Entries read stay pending in Redis (this writer, or another one after
        # claim_idle_ms, reads them again): nothing is lost by waiting.
        level = logging.WARNING if is_unavailable(exc) else logging.ERROR
        log.log(
            level,
            "%s: %s; retrying in %.1fs",
            exc.__class__.__name__,
            _code(exc),
            backoff,
            exc_info=level == logging.ERROR,
        )
        writer_metrics.RETRIES.labels(exc.__class__.__name__).inc()
        self.stop.wait(backoff)
        return min(backoff * 2, 2.0)


def _code(exc: BaseException) -> str:
    """A database error's code (SQLSTATE, ORA-nnnnn), never its message's parameters."""
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate:
        return f"SQLSTATE {sqlstate}"
    text = str(orig if orig is not None else exc).split("\n")[0]
    return text[:200]


def build_writer(settings: Settings | None = None) -> OrderWriter:
    settings = settings or Settings.from_env()
    return OrderWriter(
        redis_from_settings(
            settings,
            timeout_s=(settings.redis_timeout_ms + settings.redis_durability_timeout_ms) / 1000
            + 5.0,
        ),
        make_engine(
            settings.need_database(), pool_size=2, connect_timeout_s=settings.db_connect_timeout_s
        ),
        consumer=settings.writer_name or f"{socket.gethostname()}-{os.getpid()}",
        batch_size=settings.writer_batch,
        max_wait_ms=settings.writer_max_wait_ms,
        claim_idle_ms=settings.writer_claim_idle_ms,
        durability_mode=settings.redis_durability,
        durability_timeout_ms=settings.redis_durability_timeout_ms,
        check_ms=settings.writer_check_ms,
        auto_repair=settings.writer_auto_repair,
        idempotency_ttl_s=settings.idempotency_ttl_s,
    )


def serve_metrics(writer: OrderWriter, settings: Settings) -> None:
    """The writer's /metrics (one process: the default registry), with the backlog read
    from Redis at scrape time, and /healthz for the liveness probe, which reads no store:
    a slow database or Redis must not get the writer restarted (the stores' own alerts
    say they are slow). HOTDEAL_WRITER_METRICS_PORT=0 turns both off."""
    if settings.writer_metrics_port == 0:
        return
    REGISTRY.register(metrics.ScrapeCollector(lambda: writer_metrics.read_backlog(writer.client)))
    REGISTRY.register(metrics.ScrapeCollector(lambda: writer_metrics.read_persisted(writer.engine)))
    scrape = make_wsgi_app(REGISTRY)

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        return scrape(environ, start_response)

    server = probe_server(settings.writer_metrics_addr, settings.writer_metrics_port, app)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()


def main() -> None:
    try:
        settings = Settings.from_env()
        writer = build_writer(settings)
    except ConfigError as exc:
        raise SystemExit(f"hotdeal-writer: {exc}") from None
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    serve_metrics(writer, settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: writer.stop.set())
    writer.run()
