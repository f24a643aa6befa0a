"""`make chaos`: a reproducible fault-injection run against local processes, and a
checker of what every buyer was told against what the database holds.

The stack: PostgreSQL (behind a forwarder that can lose a COMMIT's reply), a Redis
primary with a replica behind a forwarding "endpoint" (a failover moves it, as a managed
Redis's DNS name moves), two order-redis servers ("pods" a and b), an inline-mode
order-redis (the workshop's in-request insert), each behind its front (nginx, as in
the chart), and two writers. Buyers (threads) order
with random users, quantities, Idempotency-Keys and client timeouts from a random pod,
retrying with their key when the outcome is unknown. Each round injects one fault:
Redis kill -9 and restart, failover to a lagging replica, a long replica lag under keyed
retries then a failover, writer kill -9, PostgreSQL restart, reset while the writer
drains, a poisoned order, Redis restored from an older AOF copy (after the writers
drained: what the database holds must never sell again, whichever pod takes the next
order), Redis restarted empty, Redis full (maxmemory), Redis busy running a script
(BUSY to every command, lookups checked too), the database refusing every
write for seconds (read-only), a lost COMMIT reply in inline mode, slow clients on one
pod's front (its workers must go on answering; buyers who half-close once their
order is out must get their answers), a small event sold out under keyed
retries, then units back in the next (they must sell), an event of holds (reservations)
that a payer confirms or cancels, late too, with a failover between holds and their
confirms and a writer killed while releases are stored. At the end (and before each
reset) it checks:
- units persisted <= stock;
- every 201 persisted, once, with the order id it answered (a dead-lettered order is
  not persisted: only the poisoned one may be dead-lettered);
- nothing persisted that was not answered 201 or left unknown (503 outcome_unknown, a
  client timeout);
- every replay (same user and key) answered the same order id;
- no 5xx but 503 with a documented error (unavailable, outcome_unknown, paused), and
  no 404 for the product the database knows;
- every confirm answered 200 is stored confirmed, every 409 expired / cancelled (and a
  cancel's 200) stored released, and no hold was told two states;
- no take number (epoch, seq) stored twice (reconcile: a re-sale after a rollback,
  whatever the stock);
- `hotdeal-ops reconcile` is clean.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import random
import shutil
import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests
from sqlalchemy import select, text

from hotdeal.db import make_engine
from hotdeal.designs import Design
from hotdeal.durability import online_replicas
from hotdeal.model import keys
from hotdeal.model.states import HoldState
from hotdeal.schema import hotdeal_list, order_history
from hotdeal_local import auth
from hotdeal_local.front import front
from hotdeal_local.proxy import Proxy
from hotdeal_local.servers import (
    PostgresServer,
    Process,
    RedisServer,
    free_port,
    gunicorn,
    ops,
    writer,
)
from hotdeal_local.slowclients import half_closed_order, holding_clients, slow_clients

FAULTS = (
    "redis_kill9",
    "redis_failover",
    "writer_kill9",
    "postgres_restart",
    "reset_mid_drain",
    "poisoned_order",
    "redis_restore_older",
    "redis_restart_empty",
    "redis_full",
    "redis_busy",
    "database_read_only",
    "lost_commit",
    "replica_lag",
    "slow_clients",
    "sold_out_and_back",
    "reservations",
)
# The event of `sold_out_and_back`: gone within its round, under the buyers' load.
SMALL_STOCK = 40
# The event of `reservations`: holds with a short payment window, most of them held at
# once (releases must sell again), and a payer confirming or cancelling some, late too.
HELD_STOCK = 300
PAYMENT_WINDOW_S = 2
# The poisoned order's take: its unit sold, its entry queued, as a buggy producer would.
POISON = """
local seq = redis.call("HINCRBY", KEYS[1], "seq", 1)
redis.call("HINCRBY", KEYS[1], "quantity", -1)
redis.call("HINCRBY", KEYS[1], "sold", 1)
redis.call("HINCRBY", KEYS[3], ARGV[2], 1)
local b = redis.call("HMGET", KEYS[1], "epoch", "generation")
redis.call("XADD", KEYS[2], "*", "order_id", ARGV[1], "product_id", "1",
  "generation", b[2] or "0", "user_id", ARGV[2], "quantity", "1", "ordered_at", ARGV[3],
  "epoch", b[1] or "0", "seq", seq, "idem", "")
return seq
"""
DOCUMENTED_503 = {"unavailable", "outcome_unknown", "paused"}
UNKNOWN = {"outcome_unknown", "client_timeout"}


@dataclass
class Answer:
    event: int
    user: str
    quantity: int
    key: str | None
    status: int | None  # None: the client gave up (timeout, connection error)
    error: str | None = None
    order_id: str | None = None
    replayed: bool = False

    @property
    def outcome(self) -> str:
        if self.status is None:
            return "client_timeout"
        if self.status == 201:
            return "replayed" if self.replayed else "ok"
        return self.error or str(self.status)


@dataclass
class Settle:
    """A payer's confirm or cancel and what it was told."""

    event: int
    order_id: str
    op: str
    status: int | None  # None: no answer
    said: str | None  # the state (200) or the error (409)


@dataclass
class Chaos:
    seed: int
    rounds: int
    round_s: float
    durability: str
    workdir: Path
    # Enough that selling goes on through every fault (a fault after the sell-out proves
    # little), and so many users that the per-user limit (2) rarely refuses.
    stock: int = 200_000
    buyers: int = 8
    users: int = 1_000_000
    answers: list[Answer] = field(default_factory=list)
    settles: list[Settle] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    checked_units: int = 0
    event: int = 0
    checked_upto: int = 0  # answers before this index were covered by an earlier check
    dead_lettered: int = 0
    route: int | None = None  # while set, every buyer uses this pod
    kinds: tuple[str, ...] = FAULTS  # the faults to take turns with
    settle_s: float = 90  # how long a check waits for the books to settle and balance

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.lock = threading.Lock()
        self.load_on = threading.Event()
        self.quit = threading.Event()

    # -- the stack ------------------------------------------------------------------
    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # `none` is the workshop's setting: AOF fsync once a second, nothing waited for.
        fsync = "everysec" if self.durability == "none" else "always"
        self.pg = PostgresServer(self.workdir / "postgres").start()
        self.primary = RedisServer(self.workdir / "redis-a", appendfsync=fsync).start()
        # Replication goes through a link that can lag (drop what is in flight).
        self.link = Proxy(self.primary.port)
        self.replica = RedisServer(
            self.workdir / "redis-b",
            appendfsync=fsync,
            replica_of=self.primary,
            primary_port=self.link.port,
        ).start()
        self._wait_replica()
        self.proxy = Proxy(self.primary.port)
        # The inline pod reaches PostgreSQL through a forwarder that can lose a reply.
        self.pg_link = Proxy(self.pg.port)
        self.env = {
            "HOTDEAL_DATABASE_URL": self.pg.url,
            "HOTDEAL_REDIS_URL": f"redis://:{self.primary.password}@127.0.0.1:{self.proxy.port}/0",
            "HOTDEAL_HOLD_MS": "0",
            "HOTDEAL_WORKERS": "2",
            "HOTDEAL_PER_USER_LIMIT": "2",
            "HOTDEAL_REDIS_DURABILITY": self.durability,
            "HOTDEAL_REDIS_DURABILITY_TIMEOUT_MS": "300",
            "HOTDEAL_REDIS_TIMEOUT_MS": "500",
            "HOTDEAL_WRITER_CLAIM_IDLE_MS": "1000",
            "HOTDEAL_WRITER_CHECK_MS": "500",
        }
        ops(self.env, "init-db")
        ops(self.env, "reset", "--discard-orders", "--stock", str(self.stock))
        self.services: list[Process] = []
        self.fronts: list[Process] = []
        self.urls: list[str] = []
        self.direct: list[str] = []
        for name, extra in (
            ("a", {}),
            ("b", {}),
            (
                "inline",
                {
                    "HOTDEAL_ORDER_WRITE": "inline",
                    "HOTDEAL_DATABASE_URL": self.pg.url.replace(
                        f":{self.pg.port}/", f":{self.pg_link.port}/"
                    ),
                },
            ),
        ):
            # Each pod as buyers reach it in the cluster: through its front (nginx).
            port, behind = free_port(), free_port()
            log = self.workdir / f"order-redis-{name}.log"
            self.services.append(gunicorn("order-redis", behind, {**self.env, **extra}, log=log))
            self.fronts.append(front(port, behind, self.workdir))
            self.urls.append(f"http://127.0.0.1:{port}")
            self.direct.append(f"http://127.0.0.1:{behind}")  # for the checker's own test
        for proc in (*self.services, *self.fronts):
            proc.start()
        self.writers: list[Process] = [self._writer(n) for n in ("w1", "w2")]

    def _writer(self, name: str) -> Process:
        return writer(
            {**self.env, "HOTDEAL_WRITER_NAME": f"{name}-{uuid.uuid4().hex[:6]}"},
            log=self.workdir / f"writer-{name}.log",
            name=name,
        ).start()

    def _wait_replica(self, timeout: float = 30) -> None:
        client = redis.Redis.from_url(self.primary.url, decode_responses=True)
        deadline = time.monotonic() + timeout
        while online_replicas(client.info("replication")) < 1:
            if time.monotonic() > deadline:
                raise TimeoutError("the replica did not come in sync")
            time.sleep(0.1)

    def stop(self) -> None:
        self.quit.set()
        for proc in (*self.fronts, *self.services, *self.writers):
            proc.stop(signal.SIGKILL)
        self.proxy.stop()
        self.link.stop()
        self.pg_link.stop()
        for server in (self.primary, self.replica):
            server.stop(signal.SIGKILL)
        self.pg.stop("immediate")

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.env["HOTDEAL_REDIS_URL"], decode_responses=True)

    # -- the buyers -----------------------------------------------------------------
    def buyer(self, seed: int) -> None:
        rng = random.Random(seed)
        session = requests.Session()
        while not self.quit.is_set():
            if not self.load_on.wait(0.1):
                continue
            url = self.urls[rng.choices((0, 1, 2), weights=(45, 45, 10))[0]]
            if self.route is not None:  # a fault that needs one pod only
                url = self.urls[self.route]
            if rng.random() < 0.03:  # a poisoned body or a forged token: refused, no change
                forged = rng.random() < 0.5
                try:
                    r = session.post(
                        f"{url}/v1/orders",
                        json={
                            "product_id": 1,
                            "user_id": "u0" if forged else "evil\u0000\u202e",
                            "quantity": 1,
                        },
                        headers=auth.forged_bearer("u0") if forged else auth.bearer("u0"),
                        timeout=5,
                    )
                except requests.RequestException:
                    continue  # no answer at all (a fault): nothing to check, and no lost buyer
                wanted = 401 if forged else 400
                if r.status_code != wanted:
                    what = "forged token" if forged else "poisoned body"
                    self._violation(f"{what} answered {r.status_code}, not {wanted}")
                continue
            user = f"u{rng.randrange(self.users)}"
            quantity = rng.randint(1, 2)
            key = uuid.UUID(int=rng.getrandbits(128)).hex if rng.random() < 0.6 else None
            for _attempt in range(4):
                answer = self._order(session, url, user, quantity, key, rng.choice((0.3, 1.0, 3.0)))
                if answer.outcome not in UNKNOWN | {"unavailable", "paused"} or key is None:
                    break
                time.sleep(rng.uniform(0.05, 0.3))  # retry the same order with its key

    def _order(
        self,
        session: requests.Session,
        url: str,
        user: str,
        quantity: int,
        key: str | None,
        timeout: float,
    ) -> Answer:
        event = self.event
        try:
            r = session.post(
                f"{url}/v1/orders",
                json={"product_id": 1, "user_id": user, "quantity": quantity},
                headers={**auth.bearer(user), **({"Idempotency-Key": key} if key else {})},
                timeout=timeout,
            )
        except requests.RequestException:
            answer = Answer(event, user, quantity, key, None)
        else:
            body = (
                r.json() if r.headers.get("Content-Type", "").startswith("application/json") else {}
            )
            answer = Answer(
                event,
                user,
                quantity,
                key,
                r.status_code,
                body.get("error"),
                body.get("order_id"),
                r.headers.get("Idempotent-Replayed") == "true",
            )
            if answer.error == "unknown_product":  # product 1 always exists
                self._violation("404 unknown_product for a product the database knows")
            if r.status_code >= 500 and (
                r.status_code != 503 or answer.error not in DOCUMENTED_503
            ):
                self._violation(f"{r.status_code} {answer.error}: not a documented answer")
        with self.lock:
            self.answers.append(answer)
        return answer

    def _half_closed_order(self, port: int) -> None:
        """An order from a client that half-closes once it is sent (RFC 9112 9.6): the
        front once dropped these unanswered, sold or not."""
        event, user = self.event, f"u{self.rng.randrange(self.users)}"
        key = uuid.UUID(int=self.rng.getrandbits(128)).hex
        order = {"product_id": 1, "user_id": user, "quantity": 1}
        try:
            status, headers, raw = half_closed_order(
                port, order, {**auth.bearer(user), "Idempotency-Key": key}
            )
        except (OSError, ValueError) as exc:
            self._violation(f"a half-closed order got no answer: {exc}")
            with self.lock:
                self.answers.append(Answer(event, user, 1, key, None))
            return
        doc = (
            json.loads(raw)
            if headers.get("content-type", "").startswith("application/json")
            else {}
        )
        replayed = headers.get("idempotent-replayed") == "true"
        with self.lock:
            self.answers.append(
                Answer(event, user, 1, key, status, doc.get("error"), doc.get("order_id"), replayed)
            )

    def _violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)

    # -- faults ---------------------------------------------------------------------
    def inject(self, fault: str) -> None:
        self.faults[fault] += 1
        getattr(self, f"fault_{fault}")()

    def fault_redis_kill9(self) -> None:
        self.primary.stop(signal.SIGKILL)
        time.sleep(0.3)
        self.primary.start()
        self._wait_replica()

    def fault_redis_failover(self) -> None:
        """The replica lags (its link loses what is in flight for a moment), the primary
        dies, the replica is promoted and the endpoint moves to it; the old primary
        comes back as a replica of the new one."""
        old, new = self.primary, self.replica
        self.link.dropping.set()
        time.sleep(0.4)
        old.stop(signal.SIGKILL)
        redis.Redis.from_url(new.url).execute_command("REPLICAOF", "NO", "ONE")
        self.proxy.switch(new.port)
        self.link.switch(new.port)
        old.replica_of, old.primary_port = new, self.link.port
        old.start()
        self.primary, self.replica = new, old
        new.replica_of = None
        self._wait_replica()

    def fault_writer_kill9(self) -> None:
        victim = self.writers.pop(self.rng.randrange(len(self.writers)))
        victim.stop(signal.SIGKILL)
        self.writers.append(self._writer(f"w{self.faults['writer_kill9'] + 2}"))

    def fault_postgres_restart(self) -> None:
        self.pg.stop("immediate")
        time.sleep(0.5)
        self.pg.start()

    def fault_poisoned_order(self) -> None:
        """An order no database would store (a NUL in the user id), taken as a buggy
        producer might take it: its unit is sold, and it must go to the dead-letter
        stream, stay counted as sold, and stop nothing else."""
        client = self.redis()
        self.poison = f"1-poison-{uuid.uuid4()}"
        client.eval(
            POISON,
            3,
            keys.books(1),
            keys.orders_stream(1),
            keys.buyers(1),
            self.poison,
            "poison\u0000",
            str(int(time.time() * 1000)),
        )

    def _quiesce(self) -> None:
        """Stop the buyers and let the writers persist everything answered: what a
        restore or an empty restart then forgets, the database holds."""
        self.load_on.clear()
        time.sleep(3.5)  # requests in flight finish or time out (client timeouts <= 3 s)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.redis().xlen(keys.orders_stream(1)) == 0:
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)

    def _restart_primary(self, data: Path | None) -> None:
        """kill -9 the primary; start it on `data` (None: empty); its replica follows."""
        self.primary.stop(signal.SIGKILL)
        shutil.rmtree(self.primary.workdir)
        if data is not None:
            shutil.copytree(data, self.primary.workdir)
        self.primary.start()
        self._wait_replica()

    def fault_redis_restore_older(self) -> None:
        """An AOF copy; sales go on, on pod a only; the writers drain; Redis comes back
        from the copy, and pod b (which answered none of the forgotten takes) sells
        first. The database holds more than Redis then: no unit it holds may be sold
        again, whichever pod takes the next order."""
        copy = self.workdir / "aof-copy"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(self.primary.workdir, copy, ignore=shutil.ignore_patterns("*.log"))
        self.route = 0  # only pod a answers the takes the restore will forget
        time.sleep(self.round_s / 4)
        self._quiesce()
        self._restart_primary(copy)
        self.route = 1  # and pod b, which answered none of them, takes the next orders
        self.load_on.set()
        # An operator answers the pause with a repair while the writers check and repair
        # too: a check judged on the rolled-back books must not pause rebuilt ones.
        operator = threading.Thread(target=self._operator_repair, daemon=True)
        operator.start()
        time.sleep(1.0)
        self.route = None
        operator.join(timeout=30)

    def _operator_repair(self) -> None:
        done = ops(self.env, "repair", "--product", "1", "--timeout", "10", check=False)
        # 1: refused for now (the stream not drained yet, a writer repairing meanwhile)
        if done.returncode not in (0, 1):
            self._violation(f"repair exited {done.returncode}: {done.stderr.strip()[-300:]}")

    def fault_redis_restart_empty(self) -> None:
        """Redis comes back with nothing (its disk lost): the books are rebuilt from
        the database, and no product it knows answers 404."""
        self._quiesce()
        self._restart_primary(None)
        self.load_on.set()

    def fault_redis_full(self) -> None:
        """maxmemory at what Redis uses now (noeviction): takes are refused for 2 s; the
        writers must keep acknowledging."""
        client = self.redis()
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]))
        time.sleep(2.0)
        client.config_set("maxmemory", 0)

    def fault_redis_busy(self) -> None:
        """Redis runs a script that never ends for 1.5 s, and answers BUSY to everything
        else: every answer meanwhile is a documented 503, the lookups' and the waiting
        room's too (a helper's find: a BUSY became a 500 on the room's join)."""
        client = self.redis()
        threshold = client.config_get("busy-reply-threshold")["busy-reply-threshold"]
        client.config_set("busy-reply-threshold", 100)

        def spin() -> None:
            with contextlib.suppress(redis.RedisError):  # killed: "script killed by user"
                self.redis().eval("while true do end", 0)

        stuck = threading.Thread(target=spin, daemon=True)
        stuck.start()
        with self.lock:
            sold = [a for a in self.answers if a.status == 201 and a.order_id]
        buyer, order_id = (sold[-1].user, sold[-1].order_id) if sold else ("nobody", "none")
        deadline = time.monotonic() + 1.5
        busy = False
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                self.redis().ping()
            except redis.ResponseError as exc:
                busy = busy or str(exc).startswith("BUSY")
            except redis.RedisError:
                pass
            for url in self.urls:
                for method, path in (
                    ("GET", f"/v1/orders/{order_id}"),
                    ("GET", "/v1/orders?product_id=1"),
                    ("POST", "/v1/queue"),  # the waiting room's join
                ):
                    try:
                        r = requests.request(
                            method,
                            url + path,
                            json={"product_id": 1} if method == "POST" else None,
                            headers=auth.bearer(buyer),
                            timeout=3,
                        )
                    except requests.RequestException:
                        self._violation(f"{method} {path} hung or failed while Redis was busy")
                        continue
                    if r.status_code >= 500 and (
                        r.status_code != 503 or r.json().get("error") != "unavailable"
                    ):
                        self._violation(f"{method} {path}: {r.status_code} while Redis was busy")
        while stuck.is_alive():
            with contextlib.suppress(redis.RedisError):
                client.script_kill()
            stuck.join(0.2)
        client.config_set("busy-reply-threshold", threshold)
        if not busy:  # then this round tested nothing it names
            self._violation("Redis never answered BUSY in the redis_busy round")

    def _pg_sql(self, *statements: str) -> None:
        engine = make_engine(self.env["HOTDEAL_DATABASE_URL"], pool_size=1)
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for statement in statements:
                    conn.execute(text(statement))
        finally:
            engine.dispose()

    def fault_database_read_only(self) -> None:
        """The database refuses every write for 4 s (SQLSTATE 25006, as a standby or a
        database out of storage answers): nothing may go to the dead letters."""
        self._pg_sql(
            "ALTER SYSTEM SET default_transaction_read_only = on", "SELECT pg_reload_conf()"
        )
        time.sleep(4.0)
        self._pg_sql("ALTER SYSTEM RESET default_transaction_read_only", "SELECT pg_reload_conf()")

    def fault_lost_commit(self) -> None:
        """The inline pod's next COMMIT reaches PostgreSQL and its reply is lost."""
        cuts = self.pg_link.cuts
        self.pg_link.cut_after = b"COMMIT"
        deadline = time.monotonic() + 5
        while self.pg_link.cuts == cuts and time.monotonic() < deadline:
            time.sleep(0.05)
        self.pg_link.cut_after = None

    def fault_replica_lag(self) -> None:
        """The replica misses writes for 1.5 s while buyers retry with their keys (a
        replay must not answer 201 before a replica holds the take); then the primary
        dies and the lagging replica takes over."""
        self.link.dropping.set()
        time.sleep(1.5)
        self.fault_redis_failover()

    def fault_slow_clients(self) -> None:
        """40 clients send a request's headers a byte at a time to pod a or b, 20 more
        read their answers there and keep the sockets open, and every buyer orders from
        that pod meanwhile: its two sync workers must go on answering (the front holds
        the slow sockets, not the workers). A few buyers shut their sending side once
        their order is out: each must get its answer."""
        victim = self.rng.randrange(2)
        port = int(self.urls[victim].rsplit(":", 1)[1])
        with slow_clients(port, 40), holding_clients(port, 20):
            self.route = victim
            with self.lock:
                before = sum(1 for a in self.answers if a.status is not None)
            for _ in range(3):
                self._half_closed_order(port)
            time.sleep(max(self.round_s / 2, 1.5))
            with self.lock:
                answered = sum(1 for a in self.answers if a.status is not None) - before
            self.route = None
        if answered < 10:
            self._violation(f"slow clients stopped the sale: {answered} answers from pod {victim}")

    def fault_reset_mid_drain(self) -> None:
        """Orders queue while no writer runs; the writers start draining; reset starts
        the next event in the middle of it. The closed event is checked first up to
        what its books hold, then only the new event counts."""
        self.load_on.clear()
        time.sleep(0.5)
        for proc in self.writers:
            proc.stop()
        self.load_on.set()
        time.sleep(1.0)
        self.load_on.clear()
        time.sleep(0.5)
        self.writers = [self._writer(n) for n in ("w1", "w2")]
        client = self.redis()
        stream = keys.orders_stream(1)
        deadline = time.monotonic() + 10
        backlog = client.xlen(stream)
        while client.xlen(stream) >= backlog > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        with self.lock:
            self.event += 1
        ops(self.env, "reset", "--discard-orders", "--stock", str(self.stock))
        self.load_on.set()

    def fault_sold_out_and_back(self) -> None:
        """A small event sells out under keyed retries: every pod's workers then answer
        sold out from memory (hotdeal_order_redis.sold_out) and must still replay a key
        that sold. Then the next event brings units back: the marks lapse and it sells."""
        stock = self.stock
        self._next_event(SMALL_STOCK)
        time.sleep(max(self.round_s, 2.0))
        with self.lock:
            small = self.event
            refused = sum(1 for a in self.answers if a.event == small and a.error == "sold_out")
        if refused == 0:  # then this round tested nothing it names
            self._violation(f"the event of {SMALL_STOCK} units did not sell out")
        self._next_event(stock)
        time.sleep(max(self.round_s / 2, 1.5))
        with self.lock:
            sold = sum(1 for a in self.answers if a.event == self.event and a.status == 201)
        if sold == 0:
            self._violation("units came back but nothing was sold")

    def fault_reservations(self) -> None:
        """An event of holds with a short payment window under the buyers' load: a payer
        confirms or cancels some (some after their deadline), the rest expire; the
        Redis primary fails over between holds and their confirms, and a writer is
        killed (-9) while the releases are stored. Every 200 confirm must stay sold,
        every 409 expired released, and the released units sell again."""
        stock = self.stock
        self._next_event(HELD_STOCK, window_s=PAYMENT_WINDOW_S)
        paying = threading.Event()
        payer = threading.Thread(target=self.payer, args=(paying,), daemon=True)
        payer.start()
        time.sleep(max(self.round_s / 2, 1.5))
        self.fault_redis_failover()
        time.sleep(PAYMENT_WINDOW_S + 0.5)
        self.fault_writer_kill9()
        time.sleep(max(self.round_s / 2, 1.5))
        paying.set()
        payer.join(15)
        with self.lock:
            held = self.event
            settled = [s for s in self.settles if s.event == held]
        if not any(s.status == 200 for s in settled):
            self._violation("no hold was confirmed or cancelled in the reservations round")
        self._next_event(stock)

    def payer(self, done: threading.Event) -> None:
        """The payment callback (and some buyers' cancels): each of the event's holds,
        at a random moment up to 1.5 windows after it was answered, is confirmed (60%),
        cancelled (20%) or left to expire. Stops at `done` (before the next reset)."""
        rng = random.Random(self.seed * 7919 + self.event)
        event = self.event
        seen: set[str] = set()
        local = threading.local()

        def settle(order_id: str, op: str) -> None:
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            url = self.urls[hash(order_id) % 2]
            try:
                r = session.post(
                    f"{url}/v1/orders/{order_id}/{op}",
                    headers=auth.bearer("payments", scope=auth.ACT_FOR),
                    timeout=3,
                )
                body = r.json()
                said = body.get("state") or body.get("error")
                answer = Settle(event, order_id, op, r.status_code, said)
            except (requests.RequestException, ValueError):
                answer = Settle(event, order_id, op, None, None)
            with self.lock:
                self.settles.append(answer)

        due: list[tuple[float, str, str]] = []  # a heap: (when, order id, op)
        with ThreadPoolExecutor(8) as pool:
            while not done.wait(0.02):
                with self.lock:
                    fresh = [
                        a.order_id
                        for a in self.answers
                        if a.event == event and a.status == 201 and a.order_id not in seen
                    ]
                for order_id in fresh:
                    seen.add(order_id or "")
                    pick = rng.random()
                    if order_id is None or pick >= 0.8:
                        continue
                    at = time.monotonic() + rng.uniform(0, PAYMENT_WINDOW_S * 1.5)
                    heapq.heappush(due, (at, order_id, "confirm" if pick < 0.6 else "cancel"))
                while due and due[0][0] <= time.monotonic():
                    _, order_id, op = heapq.heappop(due)
                    pool.submit(settle, order_id, op)

    def _next_event(self, stock: int, window_s: int | None = None) -> None:
        """Check the event as it stands, then reset to a new one of `stock` units (of
        holds with a payment window of `window_s`, if given)."""
        self.load_on.clear()
        time.sleep(0.5)
        self.check()
        with self.lock:
            self.event += 1
        self.stock = stock
        window = ["--payment-window", str(window_s)] if window_s else []
        ops(self.env, "reset", "--discard-orders", "--stock", str(stock), *window)
        self.load_on.set()

    # -- the check ------------------------------------------------------------------
    def settle(self, timeout: float = 90) -> dict[str, Any]:
        """Wait until Redis answers, selling is not paused and the backlog is drained;
        return reconcile's report."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                books = self.redis().hgetall(keys.books(1))
                if books and "paused" not in books:
                    done = ops(self.env, "reconcile", "--wait", "--timeout", "30", check=False)
                    report = json.loads(done.stdout) if done.stdout else {}
                    if done.returncode == 0 or time.monotonic() > deadline:
                        report["exit"] = done.returncode
                        return report
            except (redis.RedisError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                return {"exit": -1, "violations": ["the books did not settle"]}
            time.sleep(0.5)

    def check(self) -> None:
        report = self.settle(self.settle_s)
        if report.get("exit") != 0:
            self.violations += [f"reconcile: {v}" for v in report.get("violations", [])]
        engine = make_engine(self.env["HOTDEAL_DATABASE_URL"], pool_size=1)
        with engine.connect() as conn:
            generation = conn.execute(
                select(hotdeal_list.c.generation).where(hotdeal_list.c.prod_id == 1)
            ).scalar_one()
            rows = {
                r.order_id: r
                for r in conn.execute(
                    select(order_history).where(
                        order_history.c.prod_id == 1,
                        order_history.c.generation == generation,
                        order_history.c.source == Design.REDIS,
                    )
                )
            }
        engine.dispose()
        dead = {
            fields.get("order_id")
            for _, fields in self.redis().xrange(keys.dead_letter(1))
            if fields.get("generation") == str(generation)
        }
        self.dead_lettered += len(dead)
        for oid in dead - {getattr(self, "poison", None)}:
            self.violations.append(f"event {self.event}: a good order {oid} was dead-lettered")
        with self.lock:
            # This event's answers, and any since the last check that straddled a reset.
            recent = self.answers[self.checked_upto :]
            answers = [a for a in self.answers if a.event == self.event]
            acknowledged_any = {a.order_id for a in self.answers if a.status == 201}
            self.checked_upto = len(self.answers)
        # Released holds gave their units back (and they sold again).
        units = sum(r.quantity for r in rows.values() if r.state not in HoldState.RELEASED)
        self.checked_units += units
        self._check_settles(rows)
        if units > self.stock:
            self.violations.append(f"event {self.event}: {units} units persisted > stock")
        acknowledged = {a.order_id for a in answers if a.status == 201}
        for oid in acknowledged - set(rows):
            self.violations.append(f"event {self.event}: 201 for {oid} but it is not persisted")
        by_key: dict[tuple[str, str], set[str]] = {}
        for a in answers:
            if a.status == 201 and a.key:
                by_key.setdefault((a.user, a.key), set()).add(a.order_id or "")
        for (user, key), ids in by_key.items():
            if len(ids) > 1:
                self.violations.append(f"replays of {user}/{key} answered {sorted(ids)}")
        # Orders nobody was told about: at most one per request whose outcome stayed
        # unknown (and was not resolved by a retry with its key).
        unresolved = sum(
            1
            for a in {id(a): a for a in answers + recent}.values()
            if a.outcome in UNKNOWN and not (a.key and (a.user, a.key) in by_key)
        )
        unanswered = set(rows) - acknowledged_any
        if len(unanswered) > unresolved:
            users = {rows[o].user_id for o in unanswered}
            seen = [
                f"{a.user}:{a.key}:{a.outcome}:{a.order_id}:e{a.event}"
                for a in self.answers
                if a.user in users
            ]
            self.violations.append(
                f"event {self.event}: {len(unanswered)} orders persisted without a 201, "
                f"more than the {unresolved} requests left unknown: "
                f"{sorted((rows[o].user_id, o) for o in unanswered)[:5]}; answers {seen[:12]}"
            )
        takes = Counter((r.take_epoch, r.take_seq) for r in rows.values() if r.take_epoch)
        twice = [take for take, n in takes.items() if n > 1]
        if twice:  # the books went backwards and sold a take again, whatever the stock
            self.violations.append(f"event {self.event}: {len(twice)} takes stored twice")
        if getattr(self, "poison", None) and self.poison in rows:
            self.violations.append("the poisoned order was persisted")

    def _check_settles(self, rows: dict[str, Any]) -> None:
        """What the payer was told, against what the database holds: a 200 confirm is
        sold for good, a 409 expired or cancelled (and a cancel's 200) was released,
        and no hold is both."""
        with self.lock:
            settles = [s for s in self.settles if s.event == self.event]
        told: dict[str, set[str]] = {}
        for s in settles:
            if s.status in (200, 409) and s.said in HoldState.ALL:
                told.setdefault(s.order_id, set()).add(s.said)
        for order_id, states in told.items():
            stored = rows[order_id].state if order_id in rows else None
            if len(states) > 1:
                self.violations.append(f"hold {order_id} was told {sorted(states)}")
            elif stored != next(iter(states)):
                self.violations.append(
                    f"hold {order_id} was told {next(iter(states))}, the database holds {stored}"
                )

    # -- the run --------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        plan = [self.kinds[i % len(self.kinds)] for i in range(self.rounds)]
        self.rng.shuffle(plan)
        threads = [
            threading.Thread(target=self.buyer, args=(self.seed * 1000 + i,), daemon=True)
            for i in range(self.buyers)
        ]
        for t in threads:
            t.start()
        self.load_on.set()
        try:
            for n, fault in enumerate(plan, 1):
                time.sleep(self.round_s / 2)
                print(f"round {n}/{len(plan)}: {fault}", flush=True)
                if fault == "reset_mid_drain":
                    self.load_on.clear()
                    time.sleep(0.5)
                    self.check()  # the event about to be reset, as it stands
                    self.load_on.set()
                self.inject(fault)
                time.sleep(self.round_s / 2)
        finally:
            self.load_on.clear()
            time.sleep(3.5)  # let every request in flight finish or time out
            self.quit.set()
            for t in threads:
                t.join(10)
        self.check()
        outcomes = Counter(a.outcome for a in self.answers)
        return {
            "seed": self.seed,
            "rounds": self.rounds,
            "durability": self.durability,
            "faults": dict(self.faults),
            "requests": len(self.answers),
            "acknowledged": sum(1 for a in self.answers if a.status == 201),
            "outcomes": dict(outcomes),
            "stock": self.stock,
            "events": self.event + 1,
            "persisted_units": self.checked_units,
            "dead_lettered": self.dead_lettered,
            "settles": dict(Counter(f"{s.op} {s.status} {s.said}" for s in self.settles)),
            "violations": self.violations,
            "ok": not self.violations,
        }


def run_chaos(
    *,
    seed: int,
    rounds: int,
    round_s: float,
    durability: str,
    workdir: Path,
    faults: tuple[str, ...] = FAULTS,
) -> dict[str, Any]:
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown fault(s) {sorted(unknown)}; choose from {', '.join(FAULTS)}")
    chaos = Chaos(seed, rounds, round_s, durability, workdir, kinds=tuple(faults))
    chaos.start()
    try:
        return chaos.run()
    finally:
        chaos.stop()
