"""A real Prometheus (Debian's `prometheus`) scraping the local processes with the
chart's alert rules."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from hotdeal_local.servers import REPO, Process, need_program

RULES = REPO / "charts" / "hotdeal" / "files" / "alerts.yaml"


def write_config(path: Path, targets: dict[str, list[str]], interval: str) -> Path:
    """Scrape jobs named as in the chart (hotdeal-legacy, hotdeal-order-redis, hotdeal-writer)."""
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": hosts}]}
            for job, hosts in targets.items()
        ],
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def prometheus(
    workdir: Path, port: int, targets: dict[str, list[str]], *, interval: str = "5s"
) -> Process:
    binary = need_program("prometheus", "prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_config(workdir / "prometheus.yml", targets, interval)
    check = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise RuntimeError(f"promtool check config failed:\n{check.stdout}{check.stderr}")
    return Process(
        "prometheus",
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1d",
        ],
        {},
        health_url=f"http://127.0.0.1:{port}/-/ready",
        log=workdir / "prometheus.log",
    )


def query(port: int, expr: str) -> list[dict[str, Any]]:
    """Instant query through the HTTP API; returns the result vector."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    if body["status"] != "success":
        raise RuntimeError(f"query {expr!r} failed: {body}")
    return body["data"]["result"]
