"""gunicorn settings of the legacy service (the image's CMD and `make up` use this file).

Worker model: gthread, many threads. The legacy design is bound by the row lock, not
by Python: every order spends ~HOLD_MS asleep inside its transaction. Threads let
each waiting buyer hold a database session that queues on the row lock, as the
workshop's per-request connections did, so the lock waits show up in the database.
"""

import os

from hotdeal import gunicorn_setup

globals().update(gunicorn_setup.common())

wsgi_app = "hotdeal_legacy.app:create_app()"
worker_class = "gthread"
workers = int(os.environ.get("HOTDEAL_WORKERS", "2"))
threads = int(os.environ.get("HOTDEAL_THREADS", "32"))
# One pooled database connection per thread: a thread never waits for the pool.
os.environ.setdefault("HOTDEAL_DB_POOL_SIZE", str(threads))
# A queue on the hot row can make a single request wait for many seconds.
timeout = 120
