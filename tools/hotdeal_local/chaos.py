"""`make chaos`: a reproducible fault-injection run against local processes, and a
checker of what every buyer was told against what the database holds.

The stack: PostgreSQL, a Redis primary with a replica behind a forwarding "endpoint"
(a failover moves it, as a managed Redis's DNS name moves), order-redis (gunicorn) and
two writers. Buyers (threads) order with random users, quantities, Idempotency-Keys
and client timeouts, retrying with their key when the outcome is unknown. Each round
injects one fault: Redis kill -9 and restart, failover to a lagging replica, writer
kill -9, PostgreSQL restart, reset while the writer drains, a poisoned order. At the
end (and before each reset) it checks:
- units persisted <= stock;
- every 201 persisted, once, with the order id it answered;
- nothing persisted that was not answered 201 or left unknown (503 outcome_unknown, a
  client timeout);
- every replay (same user and key) answered the same order id;
- no 5xx but 503 with a documented error (unavailable, outcome_unknown, paused);
- `hotdeal-ops reconcile` is clean.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests
from sqlalchemy import select

from hotdeal import redis_keys
from hotdeal.db import make_engine
from hotdeal.designs import Design
from hotdeal.durability import online_replicas
from hotdeal.schema import hotdeal_list, order_history
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

FAULTS = (
    "redis_kill9",
    "redis_failover",
    "writer_kill9",
    "postgres_restart",
    "reset_mid_drain",
    "poisoned_order",
)
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
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    checked_units: int = 0
    event: int = 0
    checked_upto: int = 0  # answers before this index were covered by an earlier check
    kinds: tuple[str, ...] = FAULTS  # the faults to take turns with

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
        ops(self.env, "reset", "--stock", str(self.stock))
        port = free_port()
        self.service = gunicorn(
            "order-redis", port, self.env, log=self.workdir / "order-redis.log"
        ).start()
        self.url = f"http://127.0.0.1:{port}"
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
        for proc in (self.service, *self.writers):
            proc.stop(signal.SIGKILL)
        self.proxy.stop()
        self.link.stop()
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
            if rng.random() < 0.02:  # a poisoned body: must be refused, change nothing
                r = session.post(
                    f"{self.url}/v1/orders",
                    json={"product_id": 1, "user_id": "evil\u0000\u202e", "quantity": 1},
                    timeout=5,
                )
                if r.status_code != 400:
                    self._violation(f"poisoned body answered {r.status_code}, not 400")
                continue
            user = f"u{rng.randrange(self.users)}"
            quantity = rng.randint(1, 2)
            key = uuid.UUID(int=rng.getrandbits(128)).hex if rng.random() < 0.6 else None
            for _attempt in range(4):
                answer = self._order(session, user, quantity, key, rng.choice((0.3, 1.0, 3.0)))
                if answer.outcome not in UNKNOWN | {"unavailable", "paused"} or key is None:
                    break
                time.sleep(rng.uniform(0.05, 0.3))  # retry the same order with its key

    def _order(
        self, session: requests.Session, user: str, quantity: int, key: str | None, timeout: float
    ) -> Answer:
        event = self.event
        try:
            r = session.post(
                f"{self.url}/v1/orders",
                json={"product_id": 1, "user_id": user, "quantity": quantity},
                headers={"Idempotency-Key": key} if key else {},
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
            if r.status_code >= 500 and (
                r.status_code != 503 or answer.error not in DOCUMENTED_503
            ):
                self._violation(f"{r.status_code} {answer.error}: not a documented answer")
        with self.lock:
            self.answers.append(answer)
        return answer

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
        """An entry no database would store (a NUL in the user id), as a buggy producer
        might write it: it must go to the dead-letter stream, and nothing else stop."""
        client = self.redis()
        generation = client.hget(redis_keys.books(1), redis_keys.GENERATION)
        self.poison = f"1-poison-{uuid.uuid4()}"
        client.xadd(
            redis_keys.orders_stream(1),
            {
                "order_id": self.poison,
                "product_id": "1",
                "generation": generation or "0",
                "user_id": "poison\u0000",
                "quantity": "1",
                "ordered_at": str(int(time.time() * 1000)),
                "epoch": "0",
                "seq": "0",
                "idem": "",
            },
        )

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
        stream = redis_keys.orders_stream(1)
        deadline = time.monotonic() + 10
        backlog = client.xlen(stream)
        while client.xlen(stream) >= backlog > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        with self.lock:
            self.event += 1
        ops(self.env, "reset", "--stock", str(self.stock))
        self.load_on.set()

    # -- the check ------------------------------------------------------------------
    def settle(self, timeout: float = 90) -> dict[str, Any]:
        """Wait until Redis answers, selling is not paused and the backlog is drained;
        return reconcile's report."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                books = self.redis().hgetall(redis_keys.books(1))
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
        report = self.settle()
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
        with self.lock:
            # This event's answers, and any since the last check that straddled a reset.
            recent = self.answers[self.checked_upto :]
            answers = [a for a in self.answers if a.event == self.event]
            acknowledged_any = {a.order_id for a in self.answers if a.status == 201}
            self.checked_upto = len(self.answers)
        units = sum(r.quantity for r in rows.values())
        self.checked_units += units
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
        if getattr(self, "poison", None) and self.poison in rows:
            self.violations.append("the poisoned order was persisted")

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
