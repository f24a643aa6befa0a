"""gunicorn settings of the order-redis service (the image's CMD and `make up` use this file).

Worker model: gthread with a few threads per worker, one worker per core by default.
In write-behind mode a request is CPU work plus one ~0.1 ms Redis round trip, so
processes (not threads) are what buys throughput; the few threads keep a worker busy
while one request waits on Redis and let inline mode (which sleeps HOLD_MS inside a
database transaction) overlap its waits. Raise HOTDEAL_THREADS for inline mode.
"""

import multiprocessing
import os

wsgi_app = "hotdeal_order_redis.app:create_app()"
bind = os.environ.get("HOTDEAL_BIND", "0.0.0.0:8080")
worker_class = "gthread"
workers = int(os.environ.get("HOTDEAL_WORKERS", str(multiprocessing.cpu_count())))
threads = int(os.environ.get("HOTDEAL_THREADS", "4"))
os.environ.setdefault("HOTDEAL_DB_POOL_SIZE", str(threads))
backlog = 2048
timeout = 30
graceful_timeout = 30
keepalive = 5
accesslog = os.environ.get("HOTDEAL_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("HOTDEAL_LOG_LEVEL", "info")
worker_tmp_dir = os.environ.get(
    "HOTDEAL_WORKER_TMP_DIR", "/dev/shm" if os.path.isdir("/dev/shm") else None
)
