"""The fence's memory: per product, the highest take (epoch, seq) answered 201, shared by
every worker of one server.

gunicorn preloads the app and then forks its workers, so memory mapped before the fork
(anonymous, MAP_SHARED) is the same pages in every worker. Before, each worker kept its
own: a worker that had answered none of the latest takes could not tell that Redis came
back older, and sold once more before the writer's check paused the product (the
rollback test caught it). Across pods the writer's check remains the net.

A POSIX record lock (fcntl) guards each read and update: it is per process, and the
kernel drops it when a worker dies holding it (a semaphore would stay taken forever).
"""

from __future__ import annotations

import fcntl
import mmap
import struct
import tempfile

_ENTRY = struct.Struct("qqq")  # product id + 1 (0: free), epoch, seq
# Products one server remembers; beyond, a product's mark may take another's slot (that
# product's fence then rests on the writer's check).
SLOTS = 4096


class SeenMarks:
    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, SLOTS * _ENTRY.size)  # shared across fork
        self._lock_file = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as we do)

    def _slot(self, pid: int) -> int:
        """The slot holding `pid`, else a free one (open addressing)."""
        start = pid % SLOTS
        for step in range(SLOTS):
            slot = (start + step) % SLOTS
            key = _ENTRY.unpack_from(self._memory, slot * _ENTRY.size)[0]
            if key in (0, pid + 1):
                return slot
        return start

    def get(self, pid: int) -> tuple[int, int]:
        fd = self._lock_file.fileno()
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            key, epoch, seq = _ENTRY.unpack_from(self._memory, self._slot(pid) * _ENTRY.size)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
        return (epoch, seq) if key == pid + 1 else (0, 0)

    def raise_to(self, pid: int, epoch: int, seq: int) -> None:
        """Remember (epoch, seq) for `pid` unless a higher take is already remembered."""
        fd = self._lock_file.fileno()
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            offset = self._slot(pid) * _ENTRY.size
            key, *mark = _ENTRY.unpack_from(self._memory, offset)
            if key != pid + 1 or (epoch, seq) > tuple(mark):
                _ENTRY.pack_into(self._memory, offset, pid + 1, epoch, seq)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
