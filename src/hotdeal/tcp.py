"""An order answer's headers and body in one TCP segment, on sync workers.

gunicorn sends an answer's status line and headers with one send() and its body with
another: two segments, and two wake-ups of the client (or of the front) for a few
hundred bytes, on every take. TCP_CORK (Linux) holds both, and the body's iterator
releases them as soon as gunicorn has written the body and asks for more: before it
writes its access log or closes the connection, so no answer waits on either, nor for
the kernel's 200 ms cork limit.

Not where the server runs requests on threads (wsgi.multithread: gthread, in legacy
and inline mode): there the release would wait for the interpreter lock, behind other
requests (p99 ~4 ms at 16 clients, measured), for a segment saved.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable, Iterator
from typing import Any

_CORK: int | None = getattr(socket, "TCP_CORK", None)
_TCP = (socket.AF_INET, socket.AF_INET6)


class OneSegment:
    """The answer's body; the cork is released once it has been read, or closed."""

    __slots__ = ("_body", "_sock")

    def __init__(self, body: list[bytes], sock: socket.socket) -> None:
        self._body = body
        self._sock: socket.socket | None = sock

    def __iter__(self) -> Iterator[bytes]:
        yield from self._body
        self.close()

    def close(self) -> None:
        """Release the cork (once; PEP 3333 has the server call this in any case)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            # The client may be gone already: what it missed is not the server's to fix.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _CORK, 0)  # type: ignore[arg-type]


def one_segment(environ: dict[str, Any], body: list[bytes]) -> Iterable[bytes]:
    """`body`, sent with its headers as one segment where a single-threaded server
    exposes its TCP socket (gunicorn: environ["gunicorn.socket"]) and the kernel has
    TCP_CORK; as it is anywhere else (threads, a Unix socket, a test client)."""
    sock = environ.get("gunicorn.socket")
    if (
        _CORK is None
        or environ.get("wsgi.multithread")
        or not isinstance(sock, socket.socket)
        or sock.family not in _TCP
    ):
        return body
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1)
    except OSError:
        return body
    return OneSegment(body, sock)
