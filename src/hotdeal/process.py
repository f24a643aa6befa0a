"""Processes: children that never outlive their parent (gunicorn's admin listener, and
every process the local tools start), and telling a forked worker from its parent."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A preexec_fn: the child gets `sig` when the thread that started it dies, so nothing
    we start outlives us, however we end (even SIGKILL)."""

    def _set() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return _set


_forks = 0
_pid = os.getpid()


def _forked() -> None:
    global _forks, _pid
    _forks += 1
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def forks() -> int:
    """Changes in every forked child (gunicorn's workers fork from the preloaded app): what
    a process set up must be redone when this differs. Cheaper than os.getpid(), a
    syscall, on a path that runs per order."""
    return _forks


def pid() -> int:
    """This process's id, kept across forks: os.getpid() is a system call."""
    return _pid
