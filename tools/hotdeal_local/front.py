"""The front (nginx) in front of a local gunicorn service, from the chart's own text
(charts/hotdeal/files/front.conf): what buyers reach in `make up` and in the cluster."""

from __future__ import annotations

import shutil
from pathlib import Path

from hotdeal_local.servers import REPO, Missing, Process

CONF = REPO / "charts" / "hotdeal" / "files" / "front.conf"
# How long the front waits for each service's answer: longer than its longest request
# (gunicorn's worker timeout in images/<service>/gunicorn.conf.py; the chart's
# hotdeal.frontReadTimeout says the same, and a test holds all three together).
READ_TIMEOUT_S = {"legacy": 130, "order-redis": 35}


def render(listen: str, upstream: str, rundir: str, read_timeout_s: int) -> str:
    text = CONF.read_text()
    filled = {
        "@LISTEN@": listen,
        "@UPSTREAM@": upstream,
        "@RUNDIR@": rundir,
        "@READ_TIMEOUT@": f"{read_timeout_s}s",
    }
    for placeholder, value in filled.items():
        text = text.replace(placeholder, value)
    return text


def nginx_binary() -> str:
    # Debian puts nginx in /usr/sbin, which a non-root PATH often lacks.
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if path is None:
        raise Missing("nginx not found: install the Debian package nginx (make deps)")
    return path


def front(port: int, upstream_port: int, workdir: Path, service: str = "order-redis") -> Process:
    """nginx on 127.0.0.1:`port` forwarding to `service` on `upstream_port`; ready when
    the service's /healthz answers through it."""
    name = f"{service}-front"
    rundir = workdir / f"{name}-{port}"
    rundir.mkdir(parents=True, exist_ok=True)
    conf = rundir / "nginx.conf"
    conf.write_text(
        render(
            f"127.0.0.1:{port}",
            f"127.0.0.1:{upstream_port}",
            str(rundir),
            READ_TIMEOUT_S[service],
        )
    )
    return Process(
        name,
        [nginx_binary(), "-p", str(rundir), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"],
        {},
        health_url=f"http://127.0.0.1:{port}/healthz",
        log=workdir / f"{name}-{port}.log",
    )
