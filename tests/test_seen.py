"""The fence's memory is shared by the workers one gunicorn forks, and a worker that
dies holding its lock does not stop the others."""

from __future__ import annotations

import fcntl
import os

from hotdeal_order_redis.seen import ROWS, SEQ_BITS, SLOTS, SeenMarks


def _in_child(work) -> None:
    pid = os.fork()
    if pid == 0:  # the child: do it and vanish (as a worker killed with -9 would)
        try:
            work()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def test_a_mark_raised_in_one_worker_is_seen_by_the_others():
    marks = SeenMarks()  # made before the fork, as gunicorn's preload makes it
    _in_child(lambda: marks.raise_to(7, 3, 80))
    assert marks.get(7) == (3, 80)
    assert marks.get(8) == (0, 0)
    marks.raise_to(7, 3, 50)  # never lowered
    assert marks.get(7) == (3, 80)
    marks.raise_to(7, 4, 1)  # a new epoch is higher whatever its seq
    assert marks.get(7) == (4, 1)


def test_products_sharing_a_slot_keep_their_own_marks():
    marks = SeenMarks()
    marks.raise_to(1, 1, 10)
    marks.raise_to(1 + SLOTS, 1, 20)
    assert (marks.get(1), marks.get(1 + SLOTS)) == ((1, 10), (1, 20))


def test_a_dead_workers_row_is_taken_over_with_its_marks():
    marks = SeenMarks()
    _in_child(lambda: marks.raise_to(4, 2, 70))  # its row's owner is dead now
    for row in range(1, ROWS):  # every other row owned by a live process
        if marks._words[row] == 0:
            marks._words[row] = 1
    marks.raise_to(4, 2, 10)  # this process takes the dead one's row
    assert marks.get(4) == (2, 70)
    marks.raise_to(4, 2, 90)
    assert marks.get(4) == (2, 90)


def test_with_every_row_owned_a_worker_shares_the_locked_row():
    marks = SeenMarks()
    for row in range(1, ROWS):
        marks._words[row] = 1  # pid 1 is alive
    _in_child(lambda: marks.raise_to(6, 1, 40))
    marks.raise_to(6, 1, 30)
    assert marks.get(6) == (1, 40)
    assert marks._own_row() == 0


def test_a_worker_dying_with_the_lock_releases_it():
    marks = SeenMarks()
    _in_child(lambda: fcntl.lockf(marks._lock_file.fileno(), fcntl.LOCK_EX))
    marks.raise_to(9, 1, 1)  # would hang forever with a semaphore
    assert marks.get(9) == (1, 1)


def test_workers_raising_at_once_keep_the_highest():
    marks = SeenMarks()
    children = []
    for worker in range(4):
        pid = os.fork()
        if pid == 0:
            try:
                for seq in range(worker, 2000, 4):
                    marks.raise_to(5, 2, seq)
            finally:
                os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    assert marks.get(5) == (2, 1999)


def test_a_product_first_seen_by_another_worker_is_found():
    marks = SeenMarks()
    assert marks.get(11) == (0, 0)  # not there yet: nothing cached
    _in_child(lambda: marks.raise_to(11, 1, 3))
    assert marks.get(11) == (1, 3)


def test_a_mark_too_big_to_pack_is_left_to_the_writer():
    marks = SeenMarks()
    marks.raise_to(3, 1, 5)
    marks.raise_to(3, 1, 1 << SEQ_BITS)  # ignored: it must not spill into the epoch
    assert marks.get(3) == (1, 5)
