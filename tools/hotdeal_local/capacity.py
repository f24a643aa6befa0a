"""`make bench-redis`: what one Redis core can take, for the scale plan (README "Scale").

redis-benchmark sends the real take script (take_stock.lua) with realistic keys and
arguments to a private redis-server, as the services send it:
- the workshop's shape: one shared buyer, no per-user limit, no Idempotency-Key;
- the API's shape: a new buyer each time, limit 1, an Idempotency-Key (more writes);
- the two-line check-and-decrement script of `make bench`'s ceiling, for scale;
with appendfsync always (durability fsync on Redis 7.0) and everysec (durability none),
at several client counts. Redis is single-threaded: its CPU per take (from /proc) is
what bounds one primary. redis-benchmark runs on the same machine.
"""

from __future__ import annotations

import csv
import io
import subprocess
from importlib.resources import files
from pathlib import Path
from typing import Any

import redis

from hotdeal.model import keys
from hotdeal_local.ceiling import DECREMENT
from hotdeal_local.ceiling import KEY as CEILING_KEY
from hotdeal_local.servers import RedisServer, cpu_seconds, need_program
from hotdeal_order_redis.stock import take_script_keys

PRODUCT = 1
# redis-benchmark's __rand_int__ range (it reads an int): the API shape's random buyers
# collide once in ~1,000 runs of 2,000 takes, and the limit refuses the second.
RANDOM_RANGE = 2_000_000_000


def _commands(take_sha: str, decrement_sha: str, run_id: str) -> dict[str, list[str]]:
    """The take as RedisStock sends it (its KEYS and ARGV, hotdeal_order_redis.stock),
    on one Redis (the instance mark is real), without a waiting-room pass."""
    order_id = f"{PRODUCT}-__rand_int__-4f6c-4a8e-9d2b-7c1e5a3f9b60"
    workshop = take_script_keys(PRODUCT, keys.idempotency_placeholder(PRODUCT), keys.INSTANCE)
    api = take_script_keys(
        PRODUCT,
        keys.idempotency(PRODUCT, "buyer-__rand_int__", "key-__rand_int__"),
        keys.INSTANCE,
    )
    after = (run_id, "1", "")
    return {
        "take, workshop shape": [
            "EVALSHA", take_sha, str(len(workshop)), *workshop,
            "1", "workshop", "0", order_id, str(PRODUCT), "stream", "86400", "", "0", "0", "0",
            *after,
        ],
        "take, API shape (new buyer, limit 1, key)": [
            "EVALSHA", take_sha, str(len(api)), *api,
            "1", "buyer-__rand_int__", "1", order_id, str(PRODUCT), "stream", "86400",
            "key-__rand_int__", "0", "0", "1", *after,
        ],
        "ceiling: two-line decrement": ["EVALSHA", decrement_sha, "1", CEILING_KEY],
    }  # fmt: skip


def measure(
    workdir: Path, *, requests: int, clients: tuple[int, ...], fsyncs: tuple[str, ...]
) -> list[dict[str, Any]]:
    bench = need_program("redis-benchmark", "redis-tools")
    rows = []
    for fsync in fsyncs:
        server = RedisServer(workdir / f"capacity-{fsync}", appendfsync=fsync).start()
        assert server.proc is not None
        try:
            client = redis.Redis.from_url(server.url, decode_responses=True)
            take = files("hotdeal_order_redis").joinpath("take_stock.lua").read_text()
            shas = client.script_load(take), client.script_load(DECREMENT)
            run_id = client.info("server")["run_id"]
            for name, command in _commands(*shas, run_id).items():
                for n_clients in clients:
                    # Enough stock that every take sells; a fresh stream each time.
                    client.delete(*keys.take_keys(PRODUCT))
                    client.hset(
                        keys.books(PRODUCT),
                        mapping={"quantity": 10**9, "initial": 10**9, "sold": 0, "seq": 0,
                                 "epoch": 1, "generation": 1, "validated": run_id},
                    )  # fmt: skip
                    client.set(CEILING_KEY, 10**9)
                    before = cpu_seconds(server.proc.pid)
                    done = subprocess.run(
                        # -a: redis-benchmark has no other way; a throwaway password
                        # of a private server.
                        [bench, "-p", str(server.port), "-a", server.password, "-n",
                         str(requests), "-c", str(n_clients), "-r", str(RANDOM_RANGE), "--csv",
                         *command],
                        capture_output=True, text=True, check=True,
                    )  # fmt: skip
                    used = cpu_seconds(server.proc.pid) - before
                    row = next(csv.DictReader(io.StringIO(done.stdout)))
                    rows.append(
                        {
                            "script": name,
                            "appendfsync": fsync,
                            "clients": n_clients,
                            "takes_per_second": round(float(row["rps"])),
                            "p50_ms": float(row["p50_latency_ms"]),
                            "redis_cpu_us_per_take": round(used / requests * 1e6, 1),
                            # A take that refused (unvalidated books, a key layout the
                            # script does not expect) measures nothing: it must sell.
                            "sold": int(client.hget(keys.books(PRODUCT), "sold") or 0),
                        }
                    )
                    print(
                        f"  {name:<42} appendfsync {fsync:<8} {n_clients:>4} clients: "
                        f"{rows[-1]['takes_per_second']:>7} /s, Redis CPU "
                        f"{rows[-1]['redis_cpu_us_per_take']:5.1f} us each",
                        flush=True,
                    )
            client.close()
        finally:
            server.stop()
    return rows
