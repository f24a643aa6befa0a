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


def static_scrape_configs(targets: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Scrape jobs named as in the chart (hotdeal-legacy, hotdeal-order-redis, hotdeal-writer)."""
    return [
        {"job_name": job, "static_configs": [{"targets": hosts}]} for job, hosts in targets.items()
    ]


_RELABEL_KEYS = {
    "sourceLabels": "source_labels",
    "targetLabel": "target_label",
    "separator": "separator",
    "regex": "regex",
    "replacement": "replacement",
    "modulus": "modulus",
    "action": "action",
}


def _relabel(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for rule in rules:
        converted = {_RELABEL_KEYS[k]: v for k, v in rule.items()}
        if "action" in converted:
            converted["action"] = converted["action"].lower()
        out.append(converted)
    return out


def operator_scrape_configs(
    monitors: list[dict[str, Any]], addresses: dict[str, str], namespace: str
) -> list[dict[str, Any]]:
    """What prometheus-operator makes of the chart's ServiceMonitors, with the Kubernetes
    service discovery replaced by static targets carrying the same __meta_ labels.

    The target labels and their order follow the operator's generated configuration
    (pkg/prometheus/testdata/*.golden upstream): namespace, service, pod, container, job
    (the Service's name, or its `jobLabel` label), endpoint (the port name); then the
    monitor's own relabelings and metricRelabelings; honor_labels from honorLabels.
    `addresses` maps a component (app.kubernetes.io/component) to host:port."""
    configs = []
    for monitor in monitors:
        name = monitor["metadata"]["name"]
        component = monitor["metadata"]["labels"]["app.kubernetes.io/component"]
        job_label = monitor["spec"].get("jobLabel")
        for index, endpoint in enumerate(monitor["spec"]["endpoints"]):
            meta = {
                "__meta_kubernetes_namespace": namespace,
                "__meta_kubernetes_service_name": name,
                "__meta_kubernetes_pod_name": f"{name}-7d9f8-x2k4p",
                "__meta_kubernetes_pod_container_name": component,
                "__meta_kubernetes_pod_phase": "Running",
                "__meta_kubernetes_endpoint_port_name": endpoint["port"],
            }
            job_source = (
                f"__meta_kubernetes_service_label_{job_label}"
                if job_label
                else "__meta_kubernetes_service_name"
            )
            configs.append(
                {
                    "job_name": f"serviceMonitor/{namespace}/{name}/{index}",
                    "honor_labels": bool(endpoint.get("honorLabels", False)),
                    "metrics_path": endpoint.get("path", "/metrics"),
                    "static_configs": [{"targets": [addresses[component]], "labels": meta}],
                    "relabel_configs": [
                        {
                            "action": "keep",
                            "source_labels": ["__meta_kubernetes_endpoint_port_name"],
                            "regex": endpoint["port"],
                        },
                        {
                            "source_labels": ["__meta_kubernetes_namespace"],
                            "target_label": "namespace",
                        },
                        {
                            "source_labels": ["__meta_kubernetes_service_name"],
                            "target_label": "service",
                        },
                        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                        {
                            "source_labels": ["__meta_kubernetes_pod_container_name"],
                            "target_label": "container",
                        },
                        {
                            "action": "drop",
                            "source_labels": ["__meta_kubernetes_pod_phase"],
                            "regex": "(Failed|Succeeded)",
                        },
                        {
                            "source_labels": [job_source],
                            "target_label": "job",
                            "replacement": "${1}",
                        },
                        {"target_label": "endpoint", "replacement": endpoint["port"]},
                        *_relabel(endpoint.get("relabelings", [])),
                    ],
                    "metric_relabel_configs": _relabel(endpoint.get("metricRelabelings", [])),
                }
            )
    return configs


def write_config(path: Path, scrape_configs: list[dict[str, Any]], interval: str) -> Path:
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(RULES)],
        "scrape_configs": scrape_configs,
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def prometheus(
    workdir: Path,
    port: int,
    targets: dict[str, list[str]] | list[dict[str, Any]],
    *,
    interval: str = "5s",
) -> Process:
    """A Prometheus scraping `targets`: {job: [host:port]}, or whole scrape configs."""
    binary = need_program("prometheus", "prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    configs = static_scrape_configs(targets) if isinstance(targets, dict) else targets
    config = write_config(workdir / "prometheus.yml", configs, interval)
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
