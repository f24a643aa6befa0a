"""hotdeal.web.OrderRoutes: every order request is counted once, by outcome and by a
product label only the backend can vouch for, whatever way its view ends."""

from __future__ import annotations

import http.client
import io
import json
import socket

import pytest
import redis
from flask import Flask
from prometheus_client import REGISTRY

from hotdeal import errors
from hotdeal.tcp import one_segment
from hotdeal.web import Answer, Incoming, OrderCall, OrderRoutes, init_errors, workshop_answer

from .helpers import as_buyer

SERVICE = "test-routes"


def _count(product: str, result: str) -> float:
    labels = {"service": SERVICE, "product": product, "result": result}
    return REGISTRY.get_sample_value("hotdeal_orders_total", labels) or 0.0


@pytest.fixture(scope="module")
def client():
    app = Flask(__name__)
    init_errors(app)
    routes = OrderRoutes(SERVICE)

    def failing(exc: Exception):
        def view(call: OrderCall, incoming: Incoming) -> Answer:
            call.candidate = 7
            raise exc

        return view

    @routes.get("/ok")
    def ok(call: OrderCall, incoming: Incoming) -> Answer:
        call.candidate = 7
        call.product_known()
        return Answer(201, b"1", "text/plain")

    @routes.get("/sold-out")
    def sold_out(call: OrderCall, incoming: Incoming) -> Answer:
        call.candidate = 7
        return workshop_answer(call, lambda: _raise(errors.sold_out(0)))

    @routes.post("/body")
    def body(call: OrderCall, incoming: Incoming) -> Answer:
        call.candidate = 7
        return Answer.json(201, incoming.json())

    cases = {
        "/unknown": errors.unknown_product(7),
        "/paused": errors.paused("rollback"),
        "/redis-down": redis.ConnectionError("refused"),
        "/bug": RuntimeError("boom"),
    }
    for path, exc in cases.items():
        view = failing(exc)
        view.__name__ = path.strip("/").replace("-", "_")
        routes.get(path)(view)
    routes.init_app(app)
    return app.test_client()


def _raise(exc: Exception) -> None:
    raise exc


@pytest.mark.parametrize(
    ("path", "status", "product", "result"),
    [
        ("/ok", 201, "7", "ok"),
        ("/sold-out", 409, "7", "sold_out"),
        # The backend never vouched for product 7: no series of its own.
        ("/unknown", 404, "none", "rejected"),
        ("/paused", 503, "7", "paused"),
        ("/redis-down", 503, "none", "unavailable"),
        ("/bug", 500, "none", "error"),
    ],
)
def test_each_way_an_order_ends_is_counted_once(client, path, status, product, result):
    before = _count(product, result)
    answer = client.get(path)
    assert answer.status_code == status
    if status >= 400 and path != "/sold-out":  # the workshop's "Out Of Stock" is text
        assert answer.is_json and "error" in answer.get_json()
    assert _count(product, result) == before + 1


@pytest.mark.parametrize(
    ("body", "headers", "status", "error"),
    [
        (b'{"a": 1}', {"Content-Type": "application/json"}, 201, None),
        (b'{"a": 1}', {"Content-Type": "application/merge-patch+json"}, 201, None),
        (b'{"a": 1}', {"Content-Type": "text/plain"}, 400, "invalid_request"),
        (b'{"a": ', {"Content-Type": "application/json"}, 400, "invalid_request"),
        (b"[" * 100_000, {"Content-Type": "application/json"}, 413, "request_entity_too_large"),
        (b"", {"Content-Type": "application/json"}, 400, "invalid_request"),
    ],
)
def test_the_order_routes_read_a_body_as_flask_did(client, body, headers, status, error):
    """The order routes read the WSGI environ themselves: a body that is not JSON is a
    400, one over 4 KiB a 413 before it is read, and each is counted once."""
    before = _count("none", "rejected")
    answer = client.post("/body", data=body, headers=headers)
    assert answer.status_code == status and answer.is_json, answer.data
    if error:
        assert answer.get_json()["error"] == error
        assert _count("none", "rejected") == before + 1


def test_a_chunked_body_over_the_bound_is_a_413(client):
    """No Content-Length (chunked, as gunicorn passes it): read up to the bound only."""
    answer = client.post(
        "/body",
        input_stream=io.BytesIO(b'{"a": "' + b"x" * 5000 + b'"}'),
        headers={"Content-Type": "application/json"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert (answer.status_code, answer.get_json()["error"]) == (413, "request_entity_too_large")


def test_flask_still_knows_the_order_routes(client):
    """Served before Flask, the routes are Flask's rules too: OPTIONS and a 405's Allow
    list them."""
    assert "POST" in client.options("/body").headers["Allow"]
    refused = client.put("/body")
    assert refused.status_code == 405 and "POST" in refused.headers["Allow"]
    assert refused.get_json()["error"] == "method_not_allowed"


def test_a_head_runs_no_order():
    """A helper's find: a HEAD of the workshop's GET route sold a unit (Flask serves a
    HEAD with the GET view). A HEAD must be safe: 405, and the view never runs."""
    app = Flask(__name__)
    init_errors(app)
    routes = OrderRoutes(SERVICE)
    ran = []

    @routes.get("/sells")
    def sells(call: OrderCall, incoming: Incoming) -> Answer:
        ran.append(1)
        return Answer(200, b"9", "text/plain")

    routes.init_app(app)
    head = app.test_client().head("/sells")
    assert head.status_code == 405 and head.headers["Allow"] == "GET"
    assert ran == []


def test_one_table_of_outcomes_holds_the_code_the_document_and_the_metric_together():
    """hotdeal.errors.OUTCOMES is the one place that says what an error code means: every
    answer the code builds uses its status, the OpenAPI document lists exactly its codes
    (the 500 "error" no promise allows aside), and the metric's results, the README and
    the alert rules and dashboard name only its results."""
    import json
    import re
    from pathlib import Path

    import werkzeug.exceptions as http

    from hotdeal.web import error_answer, openapi_document

    root = Path(__file__).resolve().parents[1]
    built = []
    for folder in ("src", "images", "ops"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text()
            built += re.findall(r'(?:ApiError|__init__)\(\s*(\d{3}),\s*"([a-z_]+)"', text)
    assert len(built) > 15
    for status, code in built:
        assert errors.OUTCOMES[code].status == int(status), (code, status)
    for exc in (http.NotFound(), http.MethodNotAllowed(["POST"]), http.RequestEntityTooLarge()):
        with Flask(__name__).app_context():
            answer, _ = error_answer(exc)
        assert errors.OUTCOMES[json.loads(answer.body)["error"]].status == answer.status

    with Flask(__name__).app_context():
        spec = openapi_document("order-redis", __import__("hotdeal.config").config.Settings())
    documented = spec["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
    assert set(documented) == set(errors.OUTCOMES) - {"error"}
    described = spec["components"]["responses"]["Error"]["description"]
    assert all(f"{errors.OUTCOMES[c].status} {c}: " in described for c in documented)
    # ...and the document's statuses for the order route are the table's.
    responses = spec["paths"]["/v1/orders"]["post"]["responses"]
    statuses = {o.status for code, o in errors.OUTCOMES.items() if code != "error"}
    assert statuses - {405} <= {int(s) for s in responses}, sorted(responses)  # 405: not POST

    results = set(errors.METRIC_RESULTS)
    readme = (root / "README.md").read_text()
    row = next(line for line in readme.splitlines() if "`hotdeal_orders_total{" in line)
    assert results <= set(re.findall(r"`([a-z_]+)`", row)), row
    rules = "".join(
        (root / "charts/hotdeal/files" / name).read_text()
        for name in ("alerts.yaml", "dashboard.json")
    )
    named = re.findall(r'hotdeal_orders_total\{[^}]*result=~?\\?"([^"\\]+)', rules)
    assert len(named) >= 3
    for match in named:
        assert set(match.split("|")) <= results, match


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        served, _ = listener.accept()
    return client, served


def test_an_answer_is_corked_until_its_body_has_been_written():
    """Headers and body leave as one segment (TCP_CORK), released as soon as the server
    has written the body and asks for more: before gunicorn writes its access log or
    closes the connection, so nothing waits for the kernel's 200 ms limit."""
    client, served = _tcp_pair()
    with client, served:
        body = one_segment({"gunicorn.socket": served, "wsgi.multithread": False}, [b"{}"])
        assert served.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 1
        chunks = iter(body)
        assert next(chunks) == b"{}"
        served.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        assert served.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 1
        assert next(chunks, None) is None
        assert served.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 0
        client.settimeout(10)
        assert client.recv(100).endswith(b"{}")
        body.close()  # as the server does afterwards: nothing left to release


def test_a_body_closed_unread_releases_the_cork():
    """A client gone before the body was written: close() (PEP 3333) releases it."""
    client, served = _tcp_pair()
    with client, served:
        body = one_segment({"gunicorn.socket": served}, [b"{}"])
        body.close()
        assert served.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 0
    body.close()


def test_an_answer_elsewhere_is_sent_as_it_is():
    """Threads (the release would wait for the interpreter lock), no socket (a test
    client, another server) or a Unix socket: nothing to cork."""
    assert one_segment({}, [b"{}"]) == [b"{}"]
    client, served = _tcp_pair()
    with client, served:
        body = [b"{}"]
        assert one_segment({"gunicorn.socket": served, "wsgi.multithread": True}, body) is body
        assert served.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 0
    left, right = socket.socketpair()
    with left, right:
        body = [b"{}"]
        assert one_segment({"gunicorn.socket": left}, body) is body


def test_kept_alive_connections_get_every_answer(legacy):
    """legacy's gthread workers keep connections alive: each answer on one connection
    arrives whole."""
    host, port = legacy.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        for _ in range(3):
            conn.request("POST", "/v1/orders", body=b"{", headers=as_buyer("tester"))
            answer = conn.getresponse()
            assert answer.status == 400, answer.read()
            assert json.loads(answer.read())["error"]
            assert answer.getheader("Connection") != "close"
    finally:
        conn.close()
