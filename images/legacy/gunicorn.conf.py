"""gunicorn settings of the legacy service (the image's CMD and `make up` use this file).

Worker model: gthread, many threads. The legacy design is bound by the row lock, not
by Python: every order spends ~HOLD_MS asleep inside its transaction. Threads let
each waiting buyer hold a database session that queues on the row lock, as the
workshop's per-request connections did, so the lock waits show up in the database.
"""

import os

wsgi_app = "hotdeal_legacy.app:create_app()"
bind = os.environ.get("HOTDEAL_BIND", "0.0.0.0:8080")
worker_class = "gthread"
workers = int(os.environ.get("HOTDEAL_WORKERS", "2"))
threads = int(os.environ.get("HOTDEAL_THREADS", "32"))
# One pooled database connection per thread: a thread never waits for the pool.
os.environ.setdefault("HOTDEAL_DB_POOL_SIZE", str(threads))
backlog = 2048
# A queue on the hot row can make a single request wait for many seconds.
timeout = 120
graceful_timeout = 30
keepalive = 5
accesslog = os.environ.get("HOTDEAL_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("HOTDEAL_LOG_LEVEL", "info")
worker_tmp_dir = os.environ.get("HOTDEAL_WORKER_TMP_DIR") or (
    "/dev/shm" if os.path.isdir("/dev/shm") else None
)
