"""gunicorn settings of the legacy service (the image's CMD and `make up` use this file).

Worker model: gthread, many threads. The legacy design is bound by the row lock, not
by Python: every order spends ~HOLD_MS asleep inside its transaction. Threads let
each waiting buyer hold a database session that queues on the row lock, as the
workshop's per-request connections did, so the lock waits show up in the database.
"""

from hotdeal import gunicorn_setup
from hotdeal.config import ServerSettings, Settings

server_settings = ServerSettings.from_env()
globals().update(gunicorn_setup.common(server_settings, Settings.from_env()))

kind = server_settings.worker_class or "gthread"
worker_class = gunicorn_setup.worker_class(kind)
workers = server_settings.workers or 2
threads = server_settings.threads_for(kind, gthread=32)
# One pooled database connection per thread: a thread never waits for the pool.
wsgi_app = f"hotdeal_legacy.app:create_app(pool_size={threads})"
# A queue on the hot row can make a single request wait for many seconds.
timeout = 120
# Probes and scrapes on their own port, outside the workers' queue (hotdeal.admin).
when_ready = gunicorn_setup.admin_starter(
    "legacy", "hotdeal_legacy.app:admin_probes", server_settings.admin_bind
)
