"""Running ApacheBench the workshop's way and reading what it measured."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hotdeal_local.servers import need_program


@dataclass(frozen=True)
class AbRun:
    seconds: float
    complete: int
    failed: int
    non_2xx: int
    # Per request, from ab -g: (start second, total ms), in ab's order.
    samples: list[tuple[int, int]]


def _field(text: str, label: str, default: str | None = None) -> str:
    match = re.search(rf"^{re.escape(label)}:\s+([\d.]+)", text, re.MULTILINE)
    if match:
        return match.group(1)
    if default is None:
        raise ValueError(f"ab printed no {label!r}:\n{text}")
    return default


def parse(stdout: str, gnuplot: Path) -> AbRun:
    samples = []
    for line in gnuplot.read_text().splitlines()[1:]:
        cols = line.split("\t")
        samples.append((int(cols[1]), int(cols[4])))
    return AbRun(
        seconds=float(_field(stdout, "Time taken for tests")),
        complete=int(_field(stdout, "Complete requests")),
        failed=int(_field(stdout, "Failed requests")),
        non_2xx=int(_field(stdout, "Non-2xx responses", "0")),
        samples=samples,
    )


def run_ab(url: str, *, requests: int, concurrency: int, gnuplot: Path) -> AbRun:
    ab = need_program("ab", "apache2-utils")
    # -l: the body (remaining stock) changes length, which is not a failure.
    # -r: count socket errors instead of stopping the run.
    # ab's progress lines ("Completed 300 requests") go to stderr, straight to the terminal.
    cmd = [ab, "-l", "-r", "-c", str(concurrency), "-n", str(requests), "-g", str(gnuplot), url]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ab failed (exit {done.returncode}):\n{done.stdout}")
    return parse(done.stdout, gnuplot)
