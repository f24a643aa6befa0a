"""gunicorn settings of the order-redis service (the image's CMD and `make up` use this file).

Worker model, chosen by measurement on 2 cores (ab -c 150, write-behind mode):
- write-behind ("stream", the default): **sync workers, 4 per core**. A request is CPU
  plus one Redis round trip that, with durability fsync, waits ~0.2 ms for Redis's disk,
  so processes (real parallelism) beat threads (gthread 2x4 measured ~1,900 req/s vs
  ~2,400 for 4 sync workers), and the extra workers run while others wait on the fsync
  or on the client closing the socket: `make bench-workers` measured 4 per core at 1.13x
  the takes of 2 per core, behind the front and under slow clients alike; sold-out
  answers, with no wait to overlap, pay the extra processes a little (0.96x in that run,
  0.82-1.13 in others; docs/performance.md).
- inline mode: **gthread, 32 threads**: every request sleeps HOTDEAL_HOLD_MS inside a
  database transaction, so a worker must overlap many of them.
os.cpu_count() sees the node, not the container's CPU limit: in Kubernetes the chart sets
HOTDEAL_WORKERS from the pod's CPU request.

Where a request's CPU goes (py-spy and cProfile on a worker under ab -c 150, 2 cores;
`make bench` prints the CPU columns): gunicorn ~140 us for a plain WSGI route that does
nothing, Flask ~100 us more; one EVALSHA through redis-py's Script call ~170 us more (the
"routes+script" ceiling), ~240 us behind Flask. So the order routes run without Flask
(hotdeal.web.OrderRoutes): order-redis's worker costs ~360 us a take, against ~510 when
it was a Flask route. What else it took, each measured:
- the take goes out on the worker's own connection, packed by hiredis (redis-py's pool,
  encoder and connect() wrapper cost ~45 us; hotdeal_order_redis.stock);
- no syscall a take can do without: the fence marks are read and raised without a lock
  (hotdeal_order_redis.seen), order ids come from a block of random bytes
  (hotdeal.history), no getpid() per take, in our code or prometheus_client's
  (hotdeal.gunicorn_setup), and gunicorn's sync worker less what it repeats per
  request (hotdeal.sync_worker: 25 -> 17 system calls a take, strace), its
  settings read as plain attributes, not through Config.__getattr__ (a fifth of a
  worker's instructions a take, callgrind);
- the metric children kept (hotdeal.web);
- the answer's headers and body leave as one TCP segment (hotdeal.tcp: 14.4 -> 12.3
  segments a take on loopback, counted in /proc/net/snmp), and gunicorn parses no peer
  address (no forwarding header is trusted: hotdeal.gunicorn_setup); together ~15 us
  of the worker and 4-6% more takes.
Code that costs ~2 us in a loop costs 5-10 us here: a worker runs each request with
cold caches after waiting on Redis, so fewer bytecodes and syscalls pay more than the
loop suggests. The rest of the gap to the ceiling is not in the worker: Redis runs the
bigger script (~36 us a take, of which ~8 in its commands, against ~3) and fsyncs,
and serves the writer, and the writer and PostgreSQL store the order (~55 us), all on
the same cores.
"""

import os

from hotdeal import gunicorn_setup
from hotdeal.config import ServerSettings, Settings

server_settings, settings = ServerSettings.from_env(), Settings.from_env()
globals().update(gunicorn_setup.common(server_settings, settings))

inline = settings.order_write == "inline"
cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

kind = server_settings.worker_class or ("gthread" if inline else "sync")
worker_class = gunicorn_setup.worker_class(kind)
workers = server_settings.workers or (2 if inline else 4) * cores
threads = server_settings.threads_for(kind, gthread=32 if inline else 1)
# Inline mode: one pooled database connection per thread.
wsgi_app = f"hotdeal_order_redis.app:create_app(pool_size={threads})"
timeout = 30
# Probes and scrapes on their own port, outside the workers' queue (hotdeal.admin).
when_ready = gunicorn_setup.admin_starter(
    "order-redis", "hotdeal_order_redis.app:admin_probes", server_settings.admin_bind
)
