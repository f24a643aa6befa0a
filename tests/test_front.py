"""The front (nginx, charts/hotdeal/files/front.conf) where buyers arrive: slow clients
hold no worker, and the front's own errors are the API's JSON answers, never claiming
more than is known."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from hotdeal import errors
from hotdeal.config import Settings
from hotdeal.web import MAX_BODY_BYTES, openapi_document
from hotdeal_local.demo import DESIGNS
from hotdeal_local.front import CONF, READ_TIMEOUT_S, front
from hotdeal_local.servers import REPO, free_port, gunicorn
from hotdeal_local.slowclients import half_closed_order, holding_clients, slow_clients

from .helpers import Service, as_buyer, buyers, reconcile, workdir

SLOW_CLIENTS = 40


def test_front_limits_and_answers_are_the_services_own() -> None:
    text = CONF.read_text()
    size = re.search(r"client_max_body_size (\d+)k;", text)
    assert size and int(size.group(1)) * 1024 == MAX_BODY_BYTES
    for answer in (errors.unavailable(), errors.outcome_unknown()):
        assert f'"error":"{answer.code}","message":"{answer.message}"' in text
    # One vocabulary: every code the front answers is one the API document lists.
    codes = set(re.findall(r'"error":"(\w+)"', text))
    doc = openapi_document("order-redis", Settings(auth="off"))
    enum = set(doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"])
    assert codes and codes <= enum, codes - enum
    # An error after an order reached the service never says nothing was sold: every
    # route that sells (the workshop's GETs for ab too) maps to outcome_unknown.
    selling = re.search(r'"~(\^\(POST [^"]+)"\s+\'\{"error":"outcome_unknown"', text)
    assert selling, "the front's map of the answers that may have sold"
    for request in ["POST /v1/orders", *{f"GET {d.path}" for d in DESIGNS.values()}]:
        assert re.match(selling.group(1), request), request
    assert not re.match(selling.group(1), "GET /v1/orders")
    # The front outwaits each service's longest request (a legacy buyer queued on the
    # hot row for 36 s got outcome_unknown, and legacy has no Idempotency-Key to retry
    # with: the retry bought a second unit).
    for service, seconds in READ_TIMEOUT_S.items():
        conf = (REPO / "images" / service / "gunicorn.conf.py").read_text()
        worker_timeout = int(re.search(r"^timeout = (\d+)", conf, re.MULTILINE).group(1))
        assert seconds > worker_timeout, service


RAW = [
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40, 400),  # TLS hello
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    (b"get / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"a: b\r\n" * 300 + b"\r\n", 200),
    (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Ssl: on\r\n\r\n",
        200,
    ),
]


def _raw(port: int, request: bytes) -> tuple[int, str, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and len(data) > data.index(b"\r\n\r\n") + 4:
                break
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    ctype = next(
        (
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-type:")
        ),
        "",
    )
    return status, ctype, body


def test_what_nginx_cannot_parse_gets_a_json_answer(stack_env) -> None:
    """A malformed request line once got nginx's 500 HTML (a named error location needs
    a URI); headers gunicorn would refuse once got its HTML through the front."""
    with fronted(stack_env) as (svc, _, _):
        for request, status in RAW:
            got, ctype, body = _raw(port_of(svc), request)
            assert (got, ctype) == (status, "application/json"), (request[:40], got, body[:200])


@contextlib.contextmanager
def fronted(
    env: dict[str, str], name: str = "order-redis", **extra: str
) -> Iterator[tuple[Service, Service, Path]]:
    """A service (order-redis) with HOTDEAL_WORKERS=2 behind its own front: the service
    as buyers reach it through the front, gunicorn's own port, and their logs' folder."""
    logs = workdir("front")
    behind, port = free_port(), free_port()
    app = gunicorn(
        name, behind, {**env, "HOTDEAL_WORKERS": "2", **extra}, log=logs / "gunicorn.log"
    ).start()
    nginx = front(port, behind, logs, service=name).start()
    try:
        yield (
            Service(name, f"http://127.0.0.1:{port}", app),
            Service(name, f"http://127.0.0.1:{behind}", app),
            logs,
        )
    finally:
        nginx.stop()
        app.stop(signal.SIGKILL)


def port_of(service: Service) -> int:
    return int(service.url.rsplit(":", 1)[1])


@pytest.mark.parametrize(
    ("attack", "at_gunicorn"),
    [(slow_clients, 2), (holding_clients, 8)],
    ids=["headers-a-byte-at-a-time", "keep-the-socket-open"],
)
def test_slow_clients_hold_no_worker_behind_the_front(
    stack_env, reset, writer_proc, attack, at_gunicorn
) -> None:
    """Slowloris, and clients that read their answer and keep the socket open: gunicorn
    27 lingers after each answer until the client closes, up to 2 s (RFC 9112 9.6), in
    a sync worker. The front holds both kinds of socket, and closes its own connection
    to gunicorn as soon as it has the answer."""
    reset(100)
    with fronted(stack_env) as (svc, direct, _):
        # Negative control: the same attack straight at gunicorn's two sync workers
        # holds both, and a buyer waits (this is what the front is for).
        control = {"product_id": 1, "user_id": "control", "quantity": 1}
        with (
            attack(port_of(direct), at_gunicorn),
            pytest.raises(requests.exceptions.ReadTimeout),
        ):
            direct.order(control, timeout=3)
        with attack(port_of(svc), SLOW_CLIENTS), ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda b: svc.order(b, timeout=20), buyers(20)))
        assert [r.status_code for r in answers] == [201] * 20
        code, report = reconcile(stack_env)
        assert code == 0, report
        # The control's order may have been taken once its worker was free again.
        assert report["redis"]["sold"] in (20, 21)


def test_a_client_that_shuts_its_sending_side_after_the_order_gets_the_answer(
    stack_env, reset, writer_proc
) -> None:
    """A half-close after the request (RFC 9112 9.6 lets a client do it) is no goodbye:
    the front once dropped such an order with no answer (nginx's 499), sold or not."""
    reset(10)
    order = {"product_id": 1, "user_id": "halfclose", "quantity": 1}
    with fronted(stack_env) as (svc, _, _):
        status, _, answer = half_closed_order(port_of(svc), order, as_buyer("halfclose"))
    assert status == 201, answer
    code, report = reconcile(stack_env)
    assert code == 0 and report["redis"]["sold"] == 1, report


def test_front_errors_are_json_and_claim_nothing_sold_only_when_nothing_was(
    stack_env, reset, writer_proc
) -> None:
    reset(10)
    with fronted(stack_env) as (svc, _, logs):
        big = {"product_id": 1, "user_id": "u", "quantity": 1, "pad": "x" * MAX_BODY_BYTES}
        r = svc.order(big)
        assert r.status_code == 413 and r.json()["error"] == "request_entity_too_large"
        svc.proc.stop(signal.SIGKILL)  # the service behind the front is gone
        r = svc.order({"product_id": 1, "user_id": "u", "quantity": 1})
        # The front can't know whether a POST reached a worker before it died.
        assert r.status_code == 503 and r.json()["error"] == "outcome_unknown"
        assert r.headers["Retry-After"] == "1"
        # The workshop's GET routes sell as a POST does (ab's, in `make up` and here).
        for path in ("/order-redis", "/order-redis?x=1", "/order", "/order%2Dredis"):
            r = svc.get(path)
            assert r.status_code == 503 and r.json()["error"] == "outcome_unknown", path
        for path in ("/v1/orders?product_id=1&user_id=CANARYFRONT", "/orders", "/order-redis/x"):
            r = svc.get(path)
            assert r.status_code == 503 and r.json()["error"] == "unavailable", path
    # nginx's error lines quote the request line: the front logs none of them.
    assert not [p.name for p in logs.iterdir() if p.is_file() and b"CANARY" in p.read_bytes()]
    code, report = reconcile(stack_env)
    assert code == 0 and report["redis"]["sold"] == 0, report
