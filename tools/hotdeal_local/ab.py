"""Running ApacheBench the workshop's way and reading what it measured."""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hotdeal_local import auth
from hotdeal_local.servers import need_program


@dataclass(frozen=True)
class AbRun:
    seconds: float
    complete: int
    failed: int
    non_2xx: int
    # Per request, from ab -g: (start second, total ms), in ab's order.
    samples: list[tuple[int, int]]
    # ab gave up on a request that got no answer within its -s timeout: what finished
    # before that is `complete` (over `seconds` of wall time), the rest never answered.
    timed_out: bool = False


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


def run_ab(
    url: str,
    *,
    requests: int,
    concurrency: int,
    gnuplot: Path,
    extra: tuple[str, ...] = (),
    token: str | None = None,
) -> AbRun:
    """`token`: the bearer token all of ab's clients send (default: the local identity
    provider's, for its workshop buyer)."""
    ab = need_program("ab", "apache2-utils")
    # -l: the body (remaining stock) changes length, which is not a failure.
    # -r: count socket errors instead of stopping the run.
    # `extra` goes first: ab's -t resets -n, which must come after it.
    # All of ab's clients are one buyer with one token, as the workshop's were one user.
    header = f"Authorization: Bearer {token or auth.token(auth.WORKSHOP_BUYER)}"
    cmd = [ab, *extra, "-l", "-r", "-H", header, "-c", str(concurrency), "-n", str(requests)]
    cmd += ["-g", str(gnuplot), url]
    # ab's progress lines ("Completed 300 requests") go to stderr, straight to the
    # terminal, unless a -s timeout may end the run: then stderr says how far it got.
    timeout = "-s" in extra
    began = time.monotonic()
    done = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE if timeout else None, text=True
    )
    total = re.search(r"Total of (\d+) requests completed", done.stderr or "")
    if done.returncode != 0 and "timeout specified has expired" in (done.stderr or ""):
        seconds = round(time.monotonic() - began, 3)
        return AbRun(seconds, int(total.group(1)) if total else 0, 0, 0, [], timed_out=True)
    if done.returncode != 0:
        raise RuntimeError(f"ab failed (exit {done.returncode}):\n{done.stdout}")
    return parse(done.stdout, gnuplot)


def sample_of(run: AbRun, cpu_s: float) -> dict[str, float]:
    """One run as the benchmarks in rounds report it: throughput, the service's CPU per
    request (`cpu_s` spent during the run), refusals and failures."""
    return {
        "requests_per_second": round(run.complete / run.seconds, 1),
        "cpu_us_per_request": round(cpu_s / max(run.complete, 1) * 1e6, 1),
        "non_2xx": run.non_2xx,
        "failed": run.failed,
    }
