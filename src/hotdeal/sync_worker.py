"""gunicorn's sync worker, less the system calls a request does not need.

A take is CPU-bound on a busy node, and gunicorn 27's sync worker spends 25 system
calls on one (strace, order-redis under ab): 5 of them repeat, per request, what is
already so. Here they are made once, or not at all:
- the accepted socket is already blocking and close-on-exec (Python accepts with
  accept4(SOCK_CLOEXEC) into a blocking socket, PEP 446): no `setblocking(1)`, no
  F_GETFD/F_SETFD;
- the listener's address (a WSGI environ's SERVER_NAME/PORT) is read once, not by a
  getsockname() per request;
- the heartbeat (a utime() on the worker's temporary file: gunicorn's arbiter kills a
  worker whose file is older than `timeout`) is touched at most every HEARTBEAT_S, not
  on every accept. The last touch may then be that much older than the request that
  hangs: a hung worker is killed between timeout - HEARTBEAT_S and timeout into its
  request (a helper saw 29.34 s of a 30 s timeout with a 1 s throttle).

It also reads its settings as plain attributes: gunicorn asks its Config for a setting
~24 times a request, each through `Config.__getattr__`, which CPython calls only after
the ordinary lookup has failed, built an AttributeError and dropped it; for values that
never change in a worker's life (a reload starts new workers). That was a fifth of an
order-redis worker's instructions a take (callgrind: ~845,000 -> ~680,000).
"""

from __future__ import annotations

import socket
import time
from typing import Any

from gunicorn.config import Config
from gunicorn.workers.sync import SyncWorker as GunicornSyncWorker

# How often the heartbeat is touched at most: a worker serving ~400 requests a second
# touches it every ~100 requests, and a hung one is killed at least 29.75 s into a 30 s
# timeout.
HEARTBEAT_S = 0.25


class _Named:
    """A listener whose address is read once: gunicorn asks it on every request."""

    __slots__ = ("_listener", "_name")

    def __init__(self, listener: Any) -> None:
        self._listener = listener
        self._name = listener.getsockname()

    def getsockname(self) -> Any:
        return self._name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._listener, name)


def keep_settings(cfg: Config) -> None:
    """Each of `cfg`'s settings as a plain attribute of `cfg`: found before
    Config.__getattr__ is asked. (Its properties, e.g. worker_class, still win.) A
    `cfg.set()` in the worker afterwards would be shadowed: nothing sets one there
    (gunicorn sets them in the master; a reload builds a new Config)."""
    vars(cfg).update({name: setting.get() for name, setting in cfg.settings.items()})


class SyncWorker(GunicornSyncWorker):
    _touched = float("-inf")
    _named: dict[int, _Named]

    def init_process(self) -> None:
        self._named = {id(listener): _Named(listener) for listener in self.sockets}
        keep_settings(self.cfg)
        super().init_process()

    def notify(self) -> None:
        now = time.monotonic()
        if now - self._touched >= HEARTBEAT_S:
            self._touched = now
            super().notify()

    def accept(self, listener: Any) -> None:
        client, addr = listener.accept()
        if socket.getdefaulttimeout() is not None:  # then Python gave it that timeout
            client.setblocking(True)
        self.handle(listener, client, addr)

    def handle_request(self, listener: Any, req: Any, client: Any, addr: Any) -> None:
        super().handle_request(self._named[id(listener)], req, client, addr)
