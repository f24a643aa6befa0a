"""The fence's memory: per product, the highest take (epoch, seq) answered 201, shared by
every worker of one server.

gunicorn preloads the app and then forks its workers, so memory mapped before the fork
(anonymous, MAP_SHARED) is the same pages in every worker. Before, each worker kept its
own: a worker that had answered none of the latest takes could not tell that Redis came
back older, and sold once more before the writer's check paused the product (the
rollback test caught it). Across pods the writer's check remains the net.

No lock on a take's path: each worker process owns a row of marks and is its only
writer; a reader takes the highest mark of the product across all rows. A mark is epoch
and seq packed into one aligned 64-bit word, so a read can't be torn. (A POSIX record
lock around each read and update cost ~10 us of a worker's CPU per order, measured: the
syscalls run with cold caches between Redis round trips.) The lock (fcntl: per process,
dropped by the kernel when a worker dies holding it) is kept for what happens once: a
process claiming its row, a product claiming its slot.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import tempfile
import threading

from hotdeal.process import forks

# Products one server remembers; beyond, a product's mark goes unremembered (that
# product's fence then rests on the writer's check).
SLOTS = 4096
# Rows of marks: row 0 is shared (lock-guarded) by processes that find no row free;
# the others are owned by one process each (a dead owner's row is taken over, marks and
# all: they are takes that were answered).
ROWS = 64
SEQ_BITS = 40  # 10^12 takes per epoch; epochs (resets and repairs) up to 2^23
_SEQ_MASK = (1 << SEQ_BITS) - 1
_MAX_EPOCH = (1 << (63 - SEQ_BITS)) - 1
_OWNERS, _KEYS, _MARKS = 0, ROWS, ROWS + SLOTS  # word offsets of the three regions


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SeenMarks:
    def __init__(self) -> None:
        words = ROWS + SLOTS + SLOTS * ROWS
        self._memory = mmap.mmap(-1, words * 8)  # shared across fork, zeroed
        self._words = memoryview(self._memory).cast("q")
        self._lock_file = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as we do)
        # Slot of each product this process has seen: a claimed slot never moves.
        self._slots: dict[int, int] = {}
        self._row_forks = -1  # forks() when our row was claimed: a child claims its own
        self._row = 0
        self._thread_lock = threading.Lock()  # threads of one process share its row

    def _locked(self) -> _FileLock:
        return _FileLock(self._lock_file.fileno())

    def _slot(self, pid: int, *, claim: bool) -> int | None:
        """The slot holding `pid`; with `claim`, a free one taken if it has none."""
        slot = self._slots.get(pid)
        if slot is not None:
            return slot
        words, start = self._words, pid % SLOTS
        for step in range(SLOTS):
            slot = (start + step) % SLOTS
            key = words[_KEYS + slot]
            if key == pid + 1:
                self._slots[pid] = slot
                return slot
            if key == 0:
                if not claim:
                    return None
                with self._locked():
                    if words[_KEYS + slot] not in (0, pid + 1):
                        continue  # another process claimed it meanwhile
                    words[_KEYS + slot] = pid + 1
                self._slots[pid] = slot
                return slot
        return None  # full

    def _own_row(self) -> int:
        if self._row_forks == forks():
            return self._row
        me = os.getpid()
        row = 0  # shared, if every row is owned by a live process
        with self._locked():
            for candidate in range(1, ROWS):
                owner = self._words[_OWNERS + candidate]
                if owner in (0, me) or not _alive(owner):
                    self._words[_OWNERS + candidate] = me
                    row = candidate
                    break
        self._row, self._row_forks = row, forks()
        self._thread_lock = threading.Lock()  # one held at the fork would stay held
        return row

    def get(self, pid: int) -> tuple[int, int]:
        slot = self._slot(pid, claim=False)
        if slot is None:
            return 0, 0
        base = _MARKS + slot * ROWS
        mark = max(self._words[base : base + ROWS])
        return mark >> SEQ_BITS, mark & _SEQ_MASK

    def raise_to(self, pid: int, epoch: int, seq: int) -> None:
        """Remember (epoch, seq) for `pid` unless a higher take is already remembered."""
        if epoch > _MAX_EPOCH or seq > _SEQ_MASK:
            return  # can't be packed: this product's fence rests on the writer's check
        slot = self._slot(pid, claim=True)
        if slot is None:
            return
        mark = epoch << SEQ_BITS | seq
        row = self._own_row()
        index = _MARKS + slot * ROWS + row
        with self._thread_lock:
            if row == 0:  # shared with other processes
                with self._locked():
                    if self._words[index] < mark:
                        self._words[index] = mark
            elif self._words[index] < mark:
                self._words[index] = mark


class _FileLock:
    """fcntl.lockf on a file descriptor, as a context manager."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN)
