"""A TCP forwarder on loopback that can be pointed at another backend: what a managed
Redis's primary endpoint does on failover (the DNS name moves to the new primary and
old connections break)."""

from __future__ import annotations

import contextlib
import socket
import threading

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
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self.dropping.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns -= {src, dst}
