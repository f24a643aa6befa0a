"""`make up` (hotdeal-local up): whatever signals reach it, it leaves nothing running."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hotdeal_local.servers import BIN, free_port, port_taken

from .helpers import workdir


def _children() -> dict[int, int]:
    """pid -> parent pid, for every process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":  # zombies are dead
                found[int(entry.name)] = int(fields[1])
    return found


def _descendants(root: int) -> set[int]:
    parents = _children()
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    return pids & set(_children())


def _start_up() -> tuple[subprocess.Popen, set[int], list[int]]:
    ports = [free_port() for _ in range(3)]
    env = {
        **os.environ,
        "HOTDEAL_LEGACY_PORT": str(ports[0]),
        "HOTDEAL_ORDER_REDIS_PORT": str(ports[1]),
        "HOTDEAL_PROMETHEUS_PORT": str(ports[2]),
        "HOTDEAL_WORKERS": "1",
    }
    proc = subprocess.Popen(
        [str(BIN / "hotdeal-local"), "up", "--stock", "10", "--workdir", str(workdir("up"))],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as make and it are
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 180
    for line in proc.stdout:
        if "Ctrl-C stops everything" in line:
            break
        assert time.monotonic() < deadline, "hotdeal-local up did not come up"
    else:
        pytest.fail(f"hotdeal-local up exited with {proc.wait()}")
    started = _descendants(proc.pid)
    assert len(started) >= 6  # redis, postgres (+ its workers), 2 gunicorns, writer, prometheus
    return proc, started, ports


def _gone(pids: set[int], ports: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pids) or any(port_taken(p) for p in ports):
        assert time.monotonic() < deadline, f"still running: {sorted(_alive(pids))}"
        time.sleep(0.2)


def test_signals_during_shutdown_do_not_leave_services_running():
    """TERM reaching make and hotdeal-local together, then a second TERM and a Ctrl-C
    while it is stopping: the clean-up finishes anyway."""
    proc, started, ports = _start_up()
    os.killpg(proc.pid, signal.SIGTERM)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGTERM)
    time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(120)
    _gone(started, ports)


def test_children_die_with_it_even_on_sigkill():
    proc, started, ports = _start_up()
    proc.kill()
    proc.wait(10)
    _gone(started, ports)
