"""What both gunicorn configs share: multi-process metrics and the common settings.

Imported by images/*/gunicorn.conf.py before the app, so PROMETHEUS_MULTIPROC_DIR is set
before prometheus_client is first imported (it picks its storage at import time).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gunicorn.workers.sync import SyncWorker

from hotdeal.config import ServerSettings, Settings
from hotdeal.process import die_with_parent


def metrics_dir() -> Path:
    """The directory where every worker writes its samples (a fresh one if unset)."""
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="hotdeal-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


METRICS_DIR = metrics_dir()


def _metrics_pid() -> None:
    """prometheus_client's multi-process values ask os.getpid() on every update (to see
    a fork): 4 system calls a take. Our pid, kept at fork, says the same. Only before
    any of our metrics exists (each value class keeps its own open files), and only in
    multi-process mode (a process that imported prometheus_client earlier keeps its
    in-memory values: a test run)."""
    from prometheus_client import values

    from hotdeal import process

    if "hotdeal.metrics" not in sys.modules and values.ValueClass is not values.MutexValue:
        values.ValueClass = values.MultiProcessValue(process_identifier=process.pid)


_metrics_pid()


def on_starting(server: Any) -> None:
    # Samples of a previous run in the same directory would be summed into this one's.
    for stale in METRICS_DIR.glob("*.db"):
        stale.unlink()


def admin_starter(service: str, factory: str, bind: str) -> Callable[[Any], None]:
    """A `when_ready` hook that forks the admin listener (hotdeal.admin) from the arbiter:
    probes and scrapes never wait behind orders in the workers' queue. Forked once the
    app is preloaded, as the workers are, it starts with everything imported (a new
    interpreter took ~1.1 s before it answered a probe)."""

    def when_ready(server: Any) -> None:
        if not bind:
            return
        pid = os.fork()
        if pid == 0:
            try:
                _become_admin(server)
                from hotdeal import admin

                admin.main([service, factory, bind])
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(1)
        server.log.info("admin listener (pid %s) on %s", pid, bind)

    return when_ready


def _become_admin(server: Any) -> None:
    """In the forked child: no longer gunicorn's arbiter. Default signal handlers (the
    arbiter's would queue signals for a loop that doesn't run here), none of its
    listening sockets, and gone when the arbiter goes."""
    for sig in ARBITER_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    for listener in server.LISTENERS:
        listener.close()
    die_with_parent()()


ARBITER_SIGNALS = tuple(
    getattr(signal, f"SIG{name}")
    for name in ("HUP", "QUIT", "INT", "TERM", "TTIN", "TTOU", "USR1", "USR2", "WINCH", "CHLD")
)


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _extension(worker: Any, name: str, default: Any = None) -> Any:
    """What the preloaded Flask app keeps under `name` in its extensions."""
    app = getattr(worker.app, "callable", None)
    return getattr(app, "extensions", {}).get(name, default)


def post_fork(server: Any, worker: Any) -> None:
    # Connections opened before the fork must not be shared between workers. redis-py
    # resets its pool by itself when it sees a new pid; SQLAlchemy's pool must be told.
    engine = _extension(worker, "hotdeal_engine")
    if engine is not None:
        engine.dispose(close=False)


def post_worker_init(worker: Any) -> None:
    """What a sync worker opens for itself (the app's `hotdeal_worker_start`) before its
    first request, not on it. Here, not in post_fork: gunicorn has set the worker's own
    signal handlers by now, so a SIGTERM while Redis is slow to answer still stops it.
    gthread workers serve on threads of their own, which open their own connections."""
    if not isinstance(worker, SyncWorker):
        return
    for start in _extension(worker, "hotdeal_worker_start", ()):
        start()


def worker_class(kind: str) -> str:
    """gunicorn's worker class for HOTDEAL_WORKER_CLASS: "sync" is gunicorn's sync worker
    less the system calls a request doesn't need (hotdeal.sync_worker)."""
    return "hotdeal.sync_worker.SyncWorker" if kind == "sync" else kind


def common(server: ServerSettings, settings: Settings) -> dict[str, Any]:
    """Settings both services use; each config adds its worker model."""
    return {
        "bind": server.bind,
        "backlog": 2048,
        "graceful_timeout": 30,
        "keepalive": 5,
        # The front bounds a request's headers (4 buffers of 4 KB): gunicorn must accept
        # what it passes, or a client gets gunicorn's HTML 431 through it.
        "limit_request_fields": 4096,
        # No forwarding header is honoured from any peer (nothing here reads the scheme
        # or builds a URL; the waiting room's arrival header has its own switch), so
        # there is no proxy to trust: "*" spares the parse of the peer's address that
        # gunicorn otherwise does on every request (~10 us of a take, measured).
        "forwarded_allow_ips": "*",
        "secure_scheme_headers": {},
        "forwarder_headers": "",
        # Said, not left to the default: "*" above is also the list of peers gunicorn
        # lets negotiate cleartext HTTP/2.
        "http_protocols": "h1",
        "accesslog": server.access_log,
        "errorlog": "-",
        "loglevel": settings.log_level,
        # Heartbeat files in memory, not on a (possibly read-only) root filesystem.
        "worker_tmp_dir": server.worker_tmp_dir
        or ("/dev/shm" if os.path.isdir("/dev/shm") else None),
        # gunicorn's runtime control socket lives under $HOME: unused here, and it would
        # need a writable home on a read-only root filesystem.
        "control_socket_disable": True,
        # Workers fork from an app that is already built and warm, so a worker is ready
        # the moment it exists (a flash sale starts at full load, with no time to warm
        # up, and a restarted pod serves in ~2 s).
        "preload_app": True,
        "post_fork": post_fork,
        "post_worker_init": post_worker_init,
        "on_starting": on_starting,
        "child_exit": child_exit,
    }
