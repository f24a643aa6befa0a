"""The fence's memory: per product, the highest take (epoch, seq) answered 201, shared by
every worker of one server.

gunicorn preloads the app and then forks its workers, so memory mapped before the fork
(anonymous, MAP_SHARED) is the same pages in every worker. Before, each worker kept its
own: a worker that had answered none of the latest takes could not tell that Redis came
back older, and sold once more before the writer's check paused the product (the
rollback test caught it). Across pods the writer's check remains the net.

Each slot is two aligned 64-bit words: the product id + 1 (0: free) and the mark, epoch
and seq packed into one word, so a read is a single load that can't be torn and needs
no lock. Raising a mark (read, compare, write) holds a POSIX record lock (fcntl): it is
per process, and the kernel drops it when a worker dies holding it (a semaphore would
stay taken forever). Every take reads once and raises once: two lock syscalls, not four;
they cost ~10 us in a worker between Redis round trips (measured), not the ~1 us of a
loop.
"""

from __future__ import annotations

import fcntl
import mmap
import tempfile

# Products one server remembers; beyond, a product's mark may go unremembered (that
# product's fence then rests on the writer's check).
SLOTS = 4096
SEQ_BITS = 40  # 10^12 takes per epoch; epochs (resets and repairs) up to 2^23
_SEQ_MASK = (1 << SEQ_BITS) - 1
_MAX_EPOCH = (1 << (63 - SEQ_BITS)) - 1


class SeenMarks:
    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, SLOTS * 16)  # shared across fork
        self._words = memoryview(self._memory).cast("q")  # [key, mark] per slot
        self._lock_file = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as we do)
        # Slot of each product this process has seen: a claimed slot never moves.
        self._slots: dict[int, int] = {}

    def _slot(self, pid: int, *, claim: bool) -> int | None:
        """The slot holding `pid`; with `claim` (lock held), else a free one taken."""
        slot = self._slots.get(pid)
        if slot is not None:
            return slot
        words, start = self._words, pid % SLOTS
        for step in range(SLOTS):
            slot = (start + step) % SLOTS
            key = words[2 * slot]
            if key == pid + 1:
                self._slots[pid] = slot
                return slot
            if key == 0:
                if not claim:
                    return None
                words[2 * slot + 1] = 0  # the mark before the key: a reader never sees junk
                words[2 * slot] = pid + 1
                self._slots[pid] = slot
                return slot
        return None  # full

    def get(self, pid: int) -> tuple[int, int]:
        slot = self._slot(pid, claim=False)
        if slot is None:
            return 0, 0
        mark = self._words[2 * slot + 1]
        return mark >> SEQ_BITS, mark & _SEQ_MASK

    def raise_to(self, pid: int, epoch: int, seq: int) -> None:
        """Remember (epoch, seq) for `pid` unless a higher take is already remembered."""
        if epoch > _MAX_EPOCH or seq > _SEQ_MASK:
            return  # can't be packed: this product's fence rests on the writer's check
        mark = epoch << SEQ_BITS | seq
        fd = self._lock_file.fileno()
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            slot = self._slot(pid, claim=True)
            if slot is not None and self._words[2 * slot + 1] < mark:
                self._words[2 * slot + 1] = mark
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
