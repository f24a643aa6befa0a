"""The front (nginx, charts/hotdeal/files/front.conf) where buyers arrive: slow clients
hold no worker, and the front's own errors are the API's JSON answers, never claiming
more than is known."""

from __future__ import annotations

import contextlib
import re
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from hotdeal import errors
from hotdeal.web import MAX_BODY_BYTES
from hotdeal_local.front import CONF, front
from hotdeal_local.servers import free_port, gunicorn
from hotdeal_local.slowclients import slow_clients

from .helpers import Service, buyers, reconcile, workdir

SLOW_CLIENTS = 40


def test_front_limits_and_answers_are_the_services_own() -> None:
    text = CONF.read_text()
    size = re.search(r"client_max_body_size (\d+)k;", text)
    assert size and int(size.group(1)) * 1024 == MAX_BODY_BYTES
    for answer in (errors.unavailable(), errors.outcome_unknown()):
        assert f'"error":"{answer.code}","message":"{answer.message}"' in text


@contextlib.contextmanager
def fronted(env: dict[str, str], **extra: str) -> Iterator[tuple[Service, Service]]:
    """order-redis with HOTDEAL_WORKERS=2 behind its own front: the service as buyers
    reach it through the front, and gunicorn's own port."""
    logs = workdir("front")
    behind, port = free_port(), free_port()
    app = gunicorn(
        "order-redis", behind, {**env, "HOTDEAL_WORKERS": "2", **extra}, log=logs / "gunicorn.log"
    ).start()
    nginx = front(port, behind, logs).start()
    try:
        yield (
            Service("order-redis", f"http://127.0.0.1:{port}", app),
            Service("order-redis", f"http://127.0.0.1:{behind}", app),
        )
    finally:
        nginx.stop()
        app.stop(signal.SIGKILL)


def port_of(service: Service) -> int:
    return int(service.url.rsplit(":", 1)[1])


def test_slow_clients_hold_no_worker_behind_the_front(stack_env, reset, writer_proc) -> None:
    reset(100)
    with fronted(stack_env) as (svc, direct):
        # Negative control: the same attack straight at gunicorn's two sync workers
        # holds both, and a buyer waits (this is what the front is for).
        control = {"product_id": 1, "user_id": "control", "quantity": 1}
        with slow_clients(port_of(direct), 2), pytest.raises(requests.exceptions.ReadTimeout):
            direct.order(control, timeout=3)
        with slow_clients(port_of(svc), SLOW_CLIENTS), ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda b: svc.order(b, timeout=20), buyers(20)))
        assert [r.status_code for r in answers] == [201] * 20
        code, report = reconcile(stack_env)
        assert code == 0, report
        # The control's order may have been taken once its worker was free again.
        assert report["redis"]["sold"] in (20, 21)


def test_front_errors_are_json_and_claim_nothing_sold_only_when_nothing_was(
    stack_env, reset, writer_proc
) -> None:
    reset(10)
    with fronted(stack_env) as (svc, _):
        big = {"product_id": 1, "user_id": "u", "quantity": 1, "pad": "x" * MAX_BODY_BYTES}
        r = svc.order(big)
        assert r.status_code == 413 and r.json()["error"] == "request_entity_too_large"
        svc.proc.stop(signal.SIGKILL)  # the service behind the front is gone
        r = svc.order({"product_id": 1, "user_id": "u", "quantity": 1})
        # The front can't know whether a POST reached a worker before it died.
        assert r.status_code == 503 and r.json()["error"] == "outcome_unknown"
        assert r.headers["Retry-After"] == "1"
        r = svc.get("/v1/orders?product_id=1&user_id=u")
        assert r.status_code == 503 and r.json()["error"] == "unavailable"
    code, report = reconcile(stack_env)
    assert code == 0 and report["redis"]["sold"] == 0, report
