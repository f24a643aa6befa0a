"""gunicorn settings of the order-redis service (the image's CMD and `make up` use this file).

Worker model, chosen by measurement on 2 cores (ab -c 150, write-behind mode):
- write-behind ("stream", the default): **sync workers, 2 per core**. A request is pure
  CPU plus one ~0.1 ms Redis round trip, so processes (real parallelism) beat threads;
  gthread 2x4 measured ~1,900 req/s vs ~2,400 for 4 sync workers. The second worker per
  core covers the moments a worker waits on Redis or on the client closing the socket.
- inline mode: **gthread, 32 threads**: every request sleeps HOTDEAL_HOLD_MS inside a
  database transaction, so a worker must overlap many of them.
os.cpu_count() sees the node, not the container's CPU limit: in Kubernetes the chart sets
HOTDEAL_WORKERS from the pod's CPU request.

Where a request's CPU goes (py-spy and cProfile on a worker under ab -c 150, 2 cores;
`make bench` prints the CPU columns): gunicorn and Flask ~300 us for a route that does
nothing; a Redis round trip ~120 us more through redis-py's Script call (the
"flask+script" ceiling). order-redis adds ~25 us on top of that ceiling: the take goes
out on the worker's own connection, packed by hiredis (redis-py's pool and encoder
cost ~45 us, hotdeal_order_redis.stock), and the metric children are kept
(labels() ~4 us a call, hotdeal.web). The rest of the gap to the ceiling is not in the
worker: Redis runs the bigger script and fsyncs more (~40 us), and the writer and
PostgreSQL store the order (~55 us), all on the same cores.
"""

import os

from hotdeal import gunicorn_setup
from hotdeal.config import ServerSettings, Settings

server_settings, settings = ServerSettings.from_env(), Settings.from_env()
globals().update(gunicorn_setup.common(server_settings, settings))

inline = settings.order_write == "inline"
cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

worker_class = server_settings.worker_class or ("gthread" if inline else "sync")
workers = server_settings.workers or 2 * cores
threads = server_settings.threads or (32 if inline else 1)
# Inline mode: one pooled database connection per thread.
wsgi_app = f"hotdeal_order_redis.app:create_app(pool_size={threads})"
# Workers fork from an app that is already built and warm, so a worker is ready the
# moment it exists (a flash sale starts at full load, with no time to warm up).
preload_app = True
timeout = 30
# Probes and scrapes on their own port, outside the workers' queue (hotdeal.admin).
when_ready = gunicorn_setup.admin_starter(
    "order-redis", "hotdeal_order_redis.app:admin_probes", server_settings.admin_bind
)


def post_fork(server, worker):  # noqa: ANN001, ANN201
    # Connections opened before the fork must not be shared between workers. redis-py
    # resets its pool by itself when it sees a new pid; SQLAlchemy's pool must be told.
    app = getattr(worker.app, "callable", None)  # the preloaded Flask app
    engine = app.extensions.get("hotdeal_engine") if app is not None else None
    if engine is not None:
        engine.dispose(close=False)
