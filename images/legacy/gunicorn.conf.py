"""gunicorn settings of the legacy service (the image's CMD and `make up` use this file).

Worker model: gthread, many threads. The legacy design is bound by the row lock, not
by Python: every order spends ~HOLD_MS asleep inside its transaction. Threads let
each waiting buyer hold a database session that queues on the row lock, as the
workshop's per-request connections did, so the lock waits show up in the database.
"""

from hotdeal import gunicorn_setup
from hotdeal.config import ServerSettings, Settings

server = ServerSettings.from_env()
globals().update(gunicorn_setup.common(server, Settings.from_env()))

worker_class = server.worker_class or "gthread"
workers = server.workers or 2
threads = server.threads or 32
# One pooled database connection per thread: a thread never waits for the pool.
wsgi_app = f"hotdeal_legacy.app:create_app(pool_size={threads})"
# A queue on the hot row can make a single request wait for many seconds.
timeout = 120
