"""A TCP forwarder on loopback that can be pointed at another backend: what a managed
Redis's primary endpoint does on failover (the DNS name moves to the new primary and
old connections break). It can also lose a reply: with `cut_after` set, a connection
that sends those bytes (PostgreSQL's COMMIT) has them delivered, and is then cut before
the server's answer comes back."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from hotdeal_local.servers import free_port


class Proxy:
    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.port = port or free_port()
        self.target_port = target_port
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", self.port), backlog=512)
        self._stopped = False
        # While set, bytes are read and thrown away: a link that loses what is in flight.
        self.dropping = threading.Event()
        self.cut_after: bytes | None = None
        self.cuts = 0  # connections cut that way
        self._swallowed: set[socket.socket] = set()  # upstreams whose answers are lost
        threading.Thread(target=self._accept, daemon=True).start()

    def switch(self, target_port: int) -> None:
        """New connections go to `target_port`; existing ones are cut."""
        with self._lock:
            self.target_port = target_port
            conns, self._conns = self._conns, set()
        self.dropping.clear()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
        self.switch(self.target_port)

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for a, b, out in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(a, b, out), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        try:
            while data := src.recv(65536):
                cut = outbound and self.cut_after is not None and self.cut_after in data
                if cut:
                    # Deliver the request, let the server act on it, lose its answer.
                    self._swallowed.add(dst)
                    dst.sendall(data)
                    time.sleep(0.2)
                    self.cuts += 1
                    break
                if not self.dropping.is_set() and src not in self._swallowed:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns -= {src, dst}
