"""How gunicorn's TCP connections carry an answer, and how they end.

One segment (sync workers): gunicorn sends an answer's status line and headers with
one send() and its body with another: two segments, and two wake-ups of the client (or
of the front) for a few hundred bytes, on every take. TCP_CORK (Linux) holds both, and
the body's iterator releases them as soon as gunicorn has written the body and asks
for more: before it writes its access log or closes the connection, so no answer waits
on either, nor for the kernel's 200 ms cork limit. Not where the server runs requests
on threads (wsgi.multithread: gthread, in legacy and inline mode): there the release
would wait for the interpreter lock, behind other requests (p99 ~4 ms at 16 clients,
measured), for a segment saved.

A lingering close only where it saves an answer: gunicorn 27 ends every connection
with one (RFC 9112 9.6: shut the write side, then read until the client closes, up to
2 s), so that a request's unread bytes don't turn the close into a reset that destroys
the answer in the client's buffers. It lingers in the sync worker itself and on the
gthread worker's event loop: a client that read its answer and kept the socket open
held a sync worker, or stalled every thread of a gthread worker, for 2 s (eight sync
workers served four such clients a second, and nobody else), and every answer held its
worker until the client's close. With nothing left unread no reset can happen, so the
socket is closed at once; otherwise gunicorn lingers as it would. As in gunicorn 26 and
before, bytes that arrive after the close (a pipelined request still on the wire) get
a reset.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import socket
import ssl
import struct
import termios
from collections.abc import Callable, Iterable, Iterator
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


def unread_bytes(sock: socket.socket) -> int | None:
    """Bytes received on `sock` and not read yet (the kernel's count; None where it
    can't be asked: TLS keeps its own buffer, and a Unix socket or a closed one)."""
    if isinstance(sock, ssl.SSLSocket) or sock.family not in _TCP:
        return None
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):  # closed, or never connected
        return None
    return struct.unpack("i", raw)[0]


def linger_only_on_unread(close_graceful: Callable[..., None]) -> Callable[..., None]:
    """gunicorn's lingering close (gunicorn.util.close_graceful), used only when the
    client sent bytes that were not read: otherwise the socket is closed at once."""
    if getattr(close_graceful, "hotdeal_wrapped", False):
        return close_graceful

    @functools.wraps(close_graceful)
    def close(sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        if unread_bytes(sock) == 0:
            with contextlib.suppress(OSError):
                sock.close()
            return
        close_graceful(sock, *args, **kwargs)

    close.hotdeal_wrapped = True  # type: ignore[attr-defined]
    return close
