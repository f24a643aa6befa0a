"""`hotdeal-writer`: drains the per-product order streams into `order_history`.

At-least-once from Redis, exactly-once in the table: entries are acknowledged (and
deleted from the stream) only after the insert committed, and the insert skips order
ids already stored, so a batch replayed after a crash inserts nothing twice. Entries
left pending by a dead writer are taken over with XAUTOCLAIM once they have been idle
for HOTDEAL_WRITER_CLAIM_IDLE_MS. Any number of writers may share the group.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
import sqlalchemy.exc
from prometheus_client import REGISTRY, start_http_server
from sqlalchemy import Engine, insert

from hotdeal import metrics, redis_keys
from hotdeal.config import ConfigError, Settings, env_int
from hotdeal.db import make_engine
from hotdeal.errors import is_unavailable
from hotdeal.history import MAX_IN_LIST, OrderRow, insert_new
from hotdeal.redis_client import make_redis
from hotdeal.schema import order_history
from hotdeal_order_redis import writer_metrics
from hotdeal_order_redis.stock import SOURCE
from hotdeal_order_redis.stock_metrics import read_backlog

log = logging.getLogger("hotdeal.writer")


@dataclass(frozen=True)
class Entry:
    stream: str
    entry_id: str
    row: OrderRow


def _row(fields: dict[str, str]) -> OrderRow:
    return OrderRow(
        order_id=fields["order_id"],
        prod_id=int(fields["product_id"]),
        user_id=fields["user_id"],
        quantity=int(fields["quantity"]),
        source=SOURCE,
        ordered_at=datetime.fromtimestamp(int(fields["ordered_at"]) / 1000, UTC),
    )


class OrderWriter:
    def __init__(
        self,
        client: redis.Redis,
        engine: Engine,
        *,
        consumer: str,
        batch_size: int = 500,
        max_wait_ms: int = 200,
        claim_idle_ms: int = 10_000,
    ) -> None:
        self.client = client
        self.engine = engine
        self.consumer = consumer
        self.batch_size = min(batch_size, MAX_IN_LIST)
        self.max_wait_ms = max_wait_ms
        self.claim_idle_ms = claim_idle_ms
        self.stop = threading.Event()
        self._streams: list[str] = []
        self._streams_at = 0.0
        self._claimed_at = 0.0

    # -- reading -------------------------------------------------------------------
    def streams(self) -> list[str]:
        if time.monotonic() - self._streams_at > 2.0 or not self._streams:
            found = sorted(self.client.smembers(redis_keys.STREAMS))
            for stream in set(found) - set(self._streams):
                self._ensure_group(stream)
            self._streams, self._streams_at = found, time.monotonic()
        return self._streams

    def _ensure_group(self, stream: str) -> None:
        try:
            self.client.xgroup_create(stream, redis_keys.WRITER_GROUP, id="0", mkstream=True)
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
                redis_keys.WRITER_GROUP,
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
        critical path while bounding how long an order waits to be persisted."""
        streams = self.streams()
        if not streams:
            self.stop.wait(self.max_wait_ms / 1000)
            return []
        batch: list[Entry] = []
        deadline = time.monotonic() + self.max_wait_ms / 1000
        while len(batch) < self.batch_size:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            reply = self.client.xreadgroup(
                redis_keys.WRITER_GROUP,
                self.consumer,
                dict.fromkeys(streams, ">"),
                count=self.batch_size - len(batch),
                block=left_ms,
            )
            batch += self._entries((s, m) for s, messages in reply or [] for m in messages)
            if not reply and batch:
                break
        return batch

    def _entries(self, messages: Iterable[tuple[str, tuple[str, dict[str, str]]]]) -> list[Entry]:
        """Parse stream entries; a malformed one goes to the dead-letter stream (kept for a
        human) instead of blocking the writers forever."""
        entries: list[Entry] = []
        for stream, (mid, fields) in messages:
            try:
                entries.append(Entry(stream, mid, _row(fields)))
            except (KeyError, ValueError):
                log.error("malformed entry %s %s moved to %s", stream, mid, redis_keys.DEAD_LETTER)
                pipe = self.client.pipeline(transaction=True)
                pipe.xadd(redis_keys.DEAD_LETTER, {"stream": stream, "id": mid, **fields})
                pipe.xack(stream, redis_keys.WRITER_GROUP, mid)
                pipe.xdel(stream, mid)
                pipe.execute()
        return entries

    # -- writing -------------------------------------------------------------------
    def persist(self, batch: list[Entry]) -> int:
        rows = [e.row for e in batch]
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(order_history), [r.as_params() for r in rows])
            return len(rows)
        except sqlalchemy.exc.IntegrityError:
            # A replay (claimed from a dead writer, or a crash before the ack): some ids
            # are stored already. Take the slower path that skips them.
            with self.engine.begin() as conn:
                return insert_new(conn, rows)

    def acknowledge(self, batch: list[Entry]) -> None:
        by_stream: dict[str, list[str]] = {}
        for e in batch:
            by_stream.setdefault(e.stream, []).append(e.entry_id)
        pipe = self.client.pipeline(transaction=True)
        for stream, ids in by_stream.items():
            pipe.xack(stream, redis_keys.WRITER_GROUP, *ids)
            # Persisted entries leave the stream, so its length is the backlog.
            pipe.xdel(stream, *ids)
        pipe.execute()

    def run(self) -> None:
        pending: list[Entry] = []
        backoff = 0.1
        log.info("writer %s started", self.consumer)
        while not self.stop.is_set():
            try:
                batch = pending or self._claim_stale() or self._read_new()
                pending = batch
                if batch:
                    started = time.perf_counter()
                    inserted = self.persist(batch)
                    self.acknowledge(batch)
                    writer_metrics.BATCH_DURATION.observe(time.perf_counter() - started)
                    writer_metrics.BATCH_SIZE.observe(len(batch))
                    writer_metrics.PERSISTED.inc(inserted)
                pending = []
                backoff = 0.1
            except redis.ResponseError as exc:
                # `hotdeal-ops reset` deleted a stream we were reading: find the groups again.
                if "NOGROUP" not in str(exc) and "no longer exists" not in str(exc):
                    raise
                log.info("stream reset (%s); reloading streams", exc)
                self._streams, pending = [], []
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                # Keep the batch (it stays pending in Redis too) and retry it.
                log.warning(
                    "backend unavailable (%s), retrying in %.1fs", exc.__class__.__name__, backoff
                )
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
        log.info("writer %s stopped", self.consumer)


def build_writer(settings: Settings | None = None) -> OrderWriter:
    settings = settings or Settings.from_env()
    return OrderWriter(
        make_redis(settings.need_redis(), timeout_s=5.0),
        make_engine(
            settings.need_database(), pool_size=2, connect_timeout_s=settings.db_connect_timeout_s
        ),
        consumer=os.environ.get("HOTDEAL_WRITER_NAME") or f"{socket.gethostname()}-{os.getpid()}",
        batch_size=env_int("HOTDEAL_WRITER_BATCH", 500, minimum=1),
        max_wait_ms=env_int("HOTDEAL_WRITER_MAX_WAIT_MS", 200, minimum=1),
        claim_idle_ms=env_int("HOTDEAL_WRITER_CLAIM_IDLE_MS", 10_000, minimum=100),
    )


def serve_metrics(writer: OrderWriter) -> None:
    """The writer's /metrics (one process: the default registry), with the backlog read
    from Redis at scrape time. HOTDEAL_WRITER_METRICS_PORT=0 turns it off."""
    port = env_int("HOTDEAL_WRITER_METRICS_PORT", 9102)
    if port == 0:
        return
    REGISTRY.register(metrics.ScrapeCollector(lambda: read_backlog(writer.client)))
    REGISTRY.register(metrics.ScrapeCollector(lambda: writer_metrics.read_persisted(writer.engine)))
    start_http_server(port, addr=os.environ.get("HOTDEAL_WRITER_METRICS_ADDR", "0.0.0.0"))


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("HOTDEAL_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        writer = build_writer()
    except ConfigError as exc:
        raise SystemExit(f"hotdeal-writer: {exc}") from None
    serve_metrics(writer)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: writer.stop.set())
    writer.run()
