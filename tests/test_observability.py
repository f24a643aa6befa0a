"""Metrics, alert rules and the dashboard, checked with the real tools: promtool, and a
real Prometheus scraping the services during a short load run."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hotdeal.model import keys
from hotdeal_local.prometheus import RULES, operator_scrape_configs, prometheus, query
from hotdeal_local.servers import REPO, free_port

from .events import wait_until
from .helpers import buyers, stampede, workdir

DASHBOARD = REPO / "charts" / "hotdeal" / "files" / "dashboard.json"
RULE_TESTS = REPO / "tests" / "prometheus" / "alerts_test.yaml"
# Exposed only when the database is Oracle (v$system_event), which can't run here.
ORACLE_ONLY = {"hotdeal_db_wait_seconds_total", "hotdeal_db_wait_events_total"}


def _scrape(urls: dict[str, str]) -> dict[str, str]:
    return {name: requests.get(url, timeout=5).text for name, url in urls.items()}


@pytest.fixture(scope="module")
def pages(legacy, order_redis, writer_proc, reset_module, rclient):
    """Each process's /metrics before and after a short load on both designs (the
    services are shared with other tests, so counters are compared as differences)."""
    urls = {
        "legacy": f"http://127.0.0.1:{legacy.proc.admin_port}/metrics",
        "order-redis": f"http://127.0.0.1:{order_redis.proc.admin_port}/metrics",
        "writer": f"http://127.0.0.1:{writer_proc.metrics_port}/metrics",
    }
    reset_module(100)
    before = _scrape(urls)
    stampede(legacy, buyers(20), concurrency=20)  # 20 buyers queue on the hot row
    stampede(order_redis, buyers(60), concurrency=30)
    order_redis.order({"product_id": 1, "user_id": "user-0", "quantity": 1})  # limit_exceeded
    legacy.order({"product_id": 1, "user_id": "x", "quantity": 0})  # rejected
    wait_until(lambda: rclient.xlen(keys.orders_stream(1)) == 0, "the writer to persist")
    return before, _scrape(urls)


@pytest.fixture(scope="module")
def scraped(pages):
    return pages[1]


def total(text: str, name: str, **labels: str) -> float:
    """Sum of the matching samples; 0 when the series does not exist (yet)."""
    return sum(
        s.value
        for s in samples(text).get(name, [])
        if all(s.labels.get(k) == v for k, v in labels.items())
    )


def grew(pages, service: str, name: str, **labels: str) -> float:
    before, after = pages
    return value(after[service], name, **labels) - total(before[service], name, **labels)


@pytest.fixture(scope="module")
def reset_module(engine, rclient):
    from hotdeal_ops.reset import reset

    def _reset(stock: int) -> None:
        reset(engine, rclient, 1, stock, slots=8, opens_at=None, discard_orders=True)

    return _reset


def samples(text: str) -> dict[str, list]:
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def value(text: str, name: str, **labels: str) -> float:
    matching = [
        s.value
        for s in samples(text).get(name, [])
        if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert matching, f"no {name}{labels}"
    return sum(matching)


def test_promtool_accepts_every_metrics_page(scraped):
    for name, text in scraped.items():
        check = subprocess.run(
            ["promtool", "check", "metrics"],
            input=text,
            text=True,
            capture_output=True,
            check=False,
        )
        assert check.returncode == 0, f"{name}: {check.stdout}{check.stderr}"


def test_all_gunicorn_workers_are_counted(pages):
    """Multi-process mode: one scrape sees the orders every worker served."""
    assert grew(pages, "order-redis", "hotdeal_orders_total", result="ok") == 60
    assert grew(pages, "order-redis", "hotdeal_stock_decrements_total") == 60
    assert grew(pages, "order-redis", "hotdeal_orders_total", result="limit_exceeded") == 1
    assert grew(pages, "legacy", "hotdeal_orders_total", result="ok") == 20
    assert grew(pages, "legacy", "hotdeal_orders_total", result="rejected") == 1
    assert grew(pages, "order-redis", "hotdeal_order_duration_seconds_count") == 61


def test_gauges_come_from_the_stores(scraped):
    assert value(scraped["order-redis"], "hotdeal_stock_remaining", service="order-redis") == 40
    assert value(scraped["legacy"], "hotdeal_stock_remaining", service="legacy") == 80
    assert value(scraped["writer"], "hotdeal_orders_persisted", source="redis") == 60
    assert value(scraped["writer"], "hotdeal_writer_backlog") == 0
    assert value(scraped["order-redis"], "hotdeal_backend_up", backend="redis") == 1
    assert "hotdeal_db_lock_waiting_sessions" in samples(scraped["legacy"])


def test_the_hot_row_shows_as_lock_waits(pages):
    waited = grew(pages, "legacy", "hotdeal_lock_wait_seconds_count")
    quick = grew(pages, "legacy", "hotdeal_lock_wait_seconds_bucket", le="0.01")
    assert waited == 20
    assert quick < waited  # with 20 buyers at once, most had to queue behind the others


def _expressions() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dash = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    return exprs


def test_rules_and_dashboard_name_only_metrics_that_exist(scraped):
    live = set().union(*(samples(text) for text in scraped.values()))
    referenced = set()
    for expr in _expressions():
        without_labels = re.sub(r"\{[^}]*\}", "", expr)
        referenced |= set(re.findall(r"\bhotdeal_[a-z0-9_]+", without_labels))
        # Prometheus's own `up` must be narrowed to our jobs.
        assert not re.search(r"(?<![a-z_])up\{", expr) or 'job=~"hotdeal-' in expr
    assert referenced, "no metric found in the expressions"
    missing = referenced - live - ORACLE_ONLY
    assert not missing, f"not exposed by any service: {sorted(missing)}"


def test_alert_rules_pass_promtool():
    check = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run(
        ["promtool", "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        check=False,
        cwd=RULE_TESTS.parent,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test():
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {a["alertname"] for c in cases for a in c.get("alert_rule_test", [])}
    assert alerts == tested


def test_real_prometheus_sees_the_event(legacy, order_redis, writer_proc, reset_module):
    port = free_port()
    folder: Path = workdir("prometheus")
    prom = prometheus(
        folder,
        port,
        {
            "hotdeal-legacy": [f"127.0.0.1:{legacy.proc.admin_port}"],
            "hotdeal-order-redis": [f"127.0.0.1:{order_redis.proc.admin_port}"],
            "hotdeal-writer": [f"127.0.0.1:{writer_proc.metrics_port}"],
        },
        interval="1s",
    ).start()

    def eventually(expr: str, check) -> list:
        deadline = time.monotonic() + 30
        while True:
            result = query(port, expr)
            if result and check(result):
                return result
            assert time.monotonic() < deadline, f"{expr}: {result}"
            time.sleep(0.5)

    try:
        reset_module(300)
        # Targets are scraped only after discovery settles (a few seconds after start).
        eventually(
            'up{job=~"hotdeal-.*"}',
            lambda r: len(r) == 3 and all(float(x["value"][1]) == 1 for x in r),
        )
        stampede(legacy, buyers(30), concurrency=30)
        stampede(order_redis, buyers(200), concurrency=100)
        # The decrement rate during the last minute peaked above zero.
        eventually(
            'max_over_time(sum(rate(hotdeal_stock_decrements_total{service="order-redis"}[5s]))'
            "[1m:1s])",
            lambda r: float(r[0]["value"][1]) > 0,
        )
        eventually(
            'hotdeal_stock_remaining{service="order-redis",product="1"}',
            lambda r: float(r[0]["value"][1]) == 100,
        )
        eventually(
            'hotdeal_stock_remaining{service="legacy",product="1"}',
            lambda r: float(r[0]["value"][1]) == 270,
        )
        # Orders that waited longer than 10 ms for the row lock: the hot row under load.
        eventually(
            "sum(increase(hotdeal_lock_wait_seconds_count[1m]))"
            ' - sum(increase(hotdeal_lock_wait_seconds_bucket{le="0.01"}[1m]))',
            lambda r: float(r[0]["value"][1]) > 0,
        )
        rules = requests.get(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5).json()
        loaded = [r for g in rules["data"]["groups"] for r in g["rules"]]
        names = {r["name"] for r in loaded}
        alerts = set(re.findall(r"- alert: (\w+)", RULES.read_text()))
        assert names == alerts and all(r["health"] == "ok" for r in loaded)
        eventually(
            'up{job=~"hotdeal-.*"}',
            lambda r: len(r) == 3 and all(float(x["value"][1]) == 1 for x in r),
        )
    finally:
        prom.stop()


SELECTOR = re.compile(r"\b(hotdeal_[a-z0-9_]+|up)\b(\{[^}]*\})?")
BY = re.compile(r"\b(?:by|on)\s*\(([^)]*)\)")
# Series that exist only after something the short run never does (a failed order, an
# order whose outcome is unknown), besides Oracle's wait views.
RARE = {
    'hotdeal_orders_total{result="outcome_unknown"}',
    'hotdeal_orders_total{result=~"error|unavailable"}',
}


def _series(port: int, selector: str) -> list[dict[str, str]]:
    url = f"http://127.0.0.1:{port}/api/v1/series"
    body = requests.get(url, params={"match[]": selector}, timeout=5).json()
    assert body["status"] == "success", body
    return body["data"]


def _blind_spots(port: int) -> list[str]:
    """Selectors and aggregation labels of the rules and dashboard that match no series,
    and labels the relabelling renamed (exported_*)."""
    problems = []
    for expr in _expressions():
        found: list[dict[str, str]] = []
        for name, matchers in SELECTOR.findall(expr):
            selector = name + matchers
            if name in ORACLE_ONLY or selector in RARE:
                continue
            matched = _series(port, selector)
            if not matched:
                problems.append(f"{selector} matches nothing (in {expr!r})")
            found += matched
        for group in BY.findall(expr):
            for label in filter(None, (x.strip() for x in group.split(","))):
                if found and not any(label in s for s in found):
                    problems.append(f"by/on ({label}): no such label (in {expr!r})")
    renamed = {k for s in _series(port, '{__name__=~"hotdeal_.*"}') for k in s}
    problems += [f"label {k} (renamed by the scrape)" for k in renamed if k.startswith("exported_")]
    return problems


def test_rules_and_dashboard_see_the_series_after_the_operators_relabelling(
    legacy, order_redis, writer_proc, scraped, tmp_path
):
    """prometheus-operator adds target labels (namespace, service, pod, container, job,
    endpoint). A real Prometheus scrapes the services with the scrape configuration the
    operator makes of the chart's ServiceMonitors, and every selector and aggregation
    label of the alert rules and the dashboard must find its series. With honorLabels
    off (the chart as it was), the app's `service` label became `exported_service` and
    the oversell alert's `hotdeal_stock_initial{service="order-redis"}` matched nothing:
    the same check must see that."""
    from .test_chart import CHART, helm

    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"monitoring": {"serviceMonitor": {"enabled": True}}}))
    out = helm("helm4", "template", "ev", str(CHART), "-n", "games", "-f", str(values)).stdout
    monitors = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "ServiceMonitor"]
    addresses = {
        "legacy": f"127.0.0.1:{legacy.proc.admin_port}",
        "order-redis": f"127.0.0.1:{order_redis.proc.admin_port}",
        "writer": f"127.0.0.1:{writer_proc.metrics_port}",
    }
    assert {m["metadata"]["labels"]["app.kubernetes.io/component"] for m in monitors} == set(
        addresses
    )
    as_was = json.loads(json.dumps(monitors))
    for monitor in as_was:
        for endpoint in monitor["spec"]["endpoints"]:
            endpoint["honorLabels"] = False
    ports = {"chart": free_port(), "as-was": free_port()}
    procs = [
        prometheus(
            tmp_path / name,
            ports[name],
            operator_scrape_configs(docs, addresses, "games"),
            interval="1s",
        ).start()
        for name, docs in (("chart", monitors), ("as-was", as_was))
    ]
    try:
        for port in ports.values():
            deadline = time.monotonic() + 30
            # Every target scraped up twice: every series is in.
            while len(query(port, 'sum_over_time(up{job=~"hotdeal-.*"}[1m]) >= 2')) < 3:
                assert time.monotonic() < deadline, query(port, "up")
                time.sleep(0.5)
        up = query(ports["chart"], 'up{job="hotdeal-order-redis"}')[0]["metric"]
        assert up["namespace"] == "games" and up["service"] == "ev-hotdeal-order-redis"
        assert up["endpoint"] == "admin" and up["container"] == "order-redis"
        assert _blind_spots(ports["chart"]) == []
        as_was_problems = "\n".join(_blind_spots(ports["as-was"]))
        assert 'hotdeal_stock_initial{service="order-redis"} matches nothing' in as_was_problems
        assert "exported_service" in as_was_problems
    finally:
        for proc in procs:
            proc.stop()
