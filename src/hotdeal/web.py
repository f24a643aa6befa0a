"""Flask glue both services share, one `init_*` per concern (as redash does):

- init_errors: every failure becomes a JSON answer; backends that are down become 503.
- init_public: /healthz and /openapi.json on the order port.
- init_health, init_metrics: /healthz, /readyz and /metrics, for the admin listener
  only (hotdeal.admin): buyers reach the order port, and readiness and metrics are not
  theirs to read.
- OrderRoutes: the order routes, served before Flask (plain WSGI), each request counted
  by outcome and timed.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache, lru_cache
from http import HTTPStatus
from importlib.resources import files
from typing import Any

import yaml
from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import Metric
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from hotdeal import metrics
from hotdeal.config import Settings
from hotdeal.durability import DurabilityError
from hotdeal.errors import OUTCOMES, ApiError, Degraded, NotReady, is_unavailable, unavailable
from hotdeal.identity import Caller, Trusting, Verifier
from hotdeal.tcp import one_segment
from hotdeal.validation import OrderRequest, parse_order

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], None]
Reader = Callable[[], Iterable[Metric]]

# Order bodies are ~80 bytes; anything near this is not an order (413 before parsing).
MAX_BODY_BYTES = 4096
# ApiError codes that are an outcome of their own in hotdeal_orders_total, and those
# whose answer proves the product exists (hotdeal.errors.OUTCOMES says which).
COUNTED = frozenset(code for code, o in OUTCOMES.items() if o.counted)
PRODUCT_KNOWN = frozenset(code for code, o in OUTCOMES.items() if o.names_product)
OUT_OF_STOCK = "Out Of Stock"


class OrderCall:
    """One order request as its metrics see it: the product it names, which labels the
    request only once the backend answered for that product (so clients can't mint
    metric series), and its outcome when that is not plain "ok"."""

    __slots__ = ("candidate", "product", "result", "started")

    def __init__(self, started: float = 0.0) -> None:
        self.started = started  # perf_counter when the worker took the request
        self.candidate: int | None = None
        self.product = "none"
        self.result: str | None = None

    def product_known(self) -> None:
        """The backend answered for the requested product: label the request with it."""
        if self.candidate is not None:
            self.product = str(self.candidate)


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer as bytes: what the order routes send straight through WSGI, and
    what a Flask view or error handler turns into a Response (one answer, two ways out)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, document: Any, headers: Iterable[tuple[str, str]] = ()) -> Answer:
        body = json.dumps(document, separators=(",", ":")).encode()
        return cls(status, body, headers=tuple(headers))

    def send(self, start_response: Callable[..., Any]) -> list[bytes]:
        start_response(
            _status_line(self.status),
            [
                ("Content-Type", self.content_type),
                ("Content-Length", str(len(self.body))),
                *self.headers,
            ],
        )
        return [self.body]

    def response(self) -> Response:
        return Response(
            self.body, status=self.status, content_type=self.content_type, headers=self.headers
        )


@cache
def _status_line(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"


def error_answer(exc: Exception, call: OrderCall | None = None) -> tuple[Answer, str]:
    """The JSON answer for a failure, and its outcome for hotdeal_orders_total: an
    ApiError as it says; bad HTTP "rejected"; a backend that is down 503 "unavailable";
    anything else 500 "error"."""
    if isinstance(exc, HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        # Allow on a 405 (RFC 9110 15.5.6), and whatever else the exception carries.
        headers = [(k, v) for k, v in exc.get_headers() if k != "Content-Type"]
        document = {"error": code, "message": exc.description}
        return Answer.json(exc.code or 500, document, headers), "rejected"
    if not isinstance(exc, ApiError):
        if is_unavailable(exc):
            # The class only: a driver's message may quote the statement's parameters.
            log.warning("backend unavailable: %s", exc.__class__.__name__)
            exc = unavailable()
        else:
            log.error("unexpected error: %s", exc.__class__.__name__, exc_info=exc)
            exc = ApiError(500, "error", "internal error")
    if call is not None and exc.code in PRODUCT_KNOWN:
        call.product_known()
    answer = Answer(exc.status, encoded(exc), headers=tuple(exc.headers.items()))
    return answer, exc.code if exc.code in COUNTED else "rejected"


def encoded(exc: ApiError) -> bytes:
    """The error's JSON body. The common refusals (sold out, not open) repeat, so their
    bytes are kept: after the last unit every answer is one (flask's jsonify cost ~35 us
    of a sold-out answer's ~100)."""
    try:
        return _encoded_cached(exc.code, exc.message, tuple(exc.extra.items()))
    except TypeError:  # an unhashable value (e.g. a list of order ids)
        return json.dumps(exc.body(), separators=(",", ":")).encode()


@lru_cache(maxsize=1024)
def _encoded_cached(code: str, message: str, extra: tuple[tuple[str, Any], ...]) -> bytes:
    return json.dumps(
        {"error": code, "message": message, **dict(extra)}, separators=(",", ":")
    ).encode()


def caller_of_request(verifier: Verifier | Trusting) -> Caller:
    """Who sent this request to a Flask route (401/403 before anything else is read)."""
    return verifier.caller(request.headers.get("Authorization"))


def json_body() -> Any:
    """A Flask route's JSON body, read as an order route reads it."""
    return Incoming(request.environ).json()


def _is_json(content_type: str) -> bool:
    mimetype = content_type.partition(";")[0].strip().lower()
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


class Incoming:
    """A request as the order routes read it: straight from the WSGI environ."""

    __slots__ = ("environ",)

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ

    def header(self, name: str) -> str | None:
        return self.environ.get(_environ_key(name))

    def json(self) -> Any:
        """The JSON body: 400 if it is not JSON, 413 over MAX_BODY_BYTES (before it is
        read)."""
        environ = self.environ
        if not _is_json(environ.get("CONTENT_TYPE", "")):
            raise ApiError(
                400, "invalid_request", "body must be JSON (Content-Type: application/json)"
            )
        stream = environ["wsgi.input"]
        length = environ.get("CONTENT_LENGTH")
        if length:
            # ASCII digits only: isdigit() alone takes a superscript, and int() fails.
            size = int(length) if length.isascii() and length.isdigit() else -1
            if size < 0:
                raise ApiError(400, "invalid_request", "Content-Length is not a number")
            if size > MAX_BODY_BYTES:
                raise _too_large()
            raw = stream.read(size)
        elif environ.get("wsgi.input_terminated"):  # chunked: read up to the bound
            raw = stream.read(MAX_BODY_BYTES + 1)
            if len(raw) > MAX_BODY_BYTES:
                raise _too_large()
        else:
            raw = b""
        try:
            return json.loads(raw)
        except RecursionError:
            raise ApiError(400, "invalid_request", "body is nested too deeply") from None
        except ValueError:
            raise ApiError(400, "invalid_request", "body is not valid JSON") from None


@cache
def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def _too_large() -> ApiError:
    return ApiError(413, "request_entity_too_large", f"the body is over {MAX_BODY_BYTES} bytes")


def order_from_request(
    call: OrderCall, incoming: Incoming, max_per_order: int, caller: Caller
) -> OrderRequest:
    order = parse_order(incoming.json(), max_per_order, caller)
    call.candidate = order.product_id
    return order


def workshop_answer(call: OrderCall, take: Callable[[], Any]) -> Answer:
    """The workshop's GET endpoints: the remaining stock as text, or its "Out Of Stock"
    (status 409, so ab's "Non-2xx" counts the sold-out answers)."""
    try:
        remaining = take()
    except ApiError as err:
        if err.code != "sold_out":
            raise
        call.result = "sold_out"
        call.product_known()
        return Answer(409, OUT_OF_STOCK.encode(), TEXT)
    call.product_known()
    return Answer(200, str(remaining).encode(), TEXT)


TEXT = "text/plain; charset=utf-8"


def workshop_order_of(caller: Caller) -> OrderRequest:
    """The workshop's GET routes: one unit of product 1 for the caller (all of ab's
    clients share one token, so no per-user limit), or for one shared buyer when
    HOTDEAL_AUTH=off."""
    return OrderRequest(1, caller.subject or "workshop", 1)


@cache
def _decrements(service: str, product: int) -> Any:
    # prometheus_client's labels() costs ~4 us a call; the few children are kept.
    return metrics.DECREMENTS.labels(service, str(product))


def sold(service: str, order: OrderRequest) -> None:
    """Count the units an order took (not for idempotent replays: nothing was taken)."""
    _decrements(service, order.product_id).inc(order.quantity)


View = Callable[[OrderCall, Incoming], Answer]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class OrderRoutes:
    """The order routes, served before Flask: a request for one goes straight from the
    WSGI environ to its view (`view(call, incoming) -> Answer`) and back. Flask's request
    and response machinery costs more than the rest of a take: a Flask route plus one
    EVALSHA served ~2,700 req/s where the same in plain WSGI served ~3,800 (2 cores,
    `make bench`'s ceilings). Each view's request is timed and counted by outcome and
    product, failures included (answered as init_errors would). Flask keeps the rules
    too, so OPTIONS and a 405's Allow header know them. Health, metrics and
    lookups are Flask routes; they are not orders."""

    def __init__(self, service: str) -> None:
        self._views: dict[tuple[str, str], View] = {}
        # Labelled children kept: labels() costs ~4 us a call. Bounded: products that
        # exist (OrderCall.product_known) times the outcomes.
        self._duration = metrics.ORDER_DURATION.labels(service)
        self._counter = cache(
            lambda product, result: metrics.ORDERS.labels(service, product, result)
        )

    def record(self, product: str, result: str, started: float) -> None:
        """Count one order request and time it (from `started`, perf_counter)."""
        self._counter(product, result).inc()
        self._duration.observe(time.perf_counter() - started)

    def get(self, rule: str) -> Callable[[View], View]:
        return self._route(rule, "GET")

    def post(self, rule: str) -> Callable[[View], View]:
        return self._route(rule, "POST")

    def _route(self, rule: str, method: str) -> Callable[[View], View]:
        def register(view: View) -> View:
            self._views[(method, rule)] = view
            return view

        return register

    def serve(self, view: View, environ: dict[str, Any]) -> Answer:
        started = time.perf_counter()
        call = OrderCall(started)
        try:
            answer = view(call, Incoming(environ))
            result = call.result or "ok"
        except Exception as exc:
            answer, result = error_answer(exc, call)
        self.record(call.product, result, started)
        return answer

    def init_app(self, app: Flask) -> None:
        for (method, rule), view in self._views.items():
            app.add_url_rule(rule, view.__name__, self._flask_view(view, method), methods=[method])
        flask_app: WsgiApp = app.wsgi_app
        views = self._views

        def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            view = views.get((environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")))
            if view is None:
                return flask_app(environ, start_response)
            return one_segment(environ, self.serve(view, environ).send(start_response))

        app.wsgi_app = wsgi_app  # type: ignore[method-assign]

    def _flask_view(self, view: View, method: str) -> Callable[[], Response]:
        """The rule's view in Flask, for what reaches it there (a path Flask normalises,
        as `//v1/orders`). Not a HEAD of a GET route: the workshop's GETs sell, and a HEAD
        must be safe (RFC 9110 9.2.1), so it gets a 405."""

        def flask_view() -> Response:
            if request.method != method:
                raise MethodNotAllowed(valid_methods=[method])
            return self.serve(view, request.environ).response()

        return flask_view


def init_errors(app: Flask) -> None:
    """Failures outside the order routes (lookups, health) get the same JSON answers."""
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @app.errorhandler(Exception)
    def failure(exc: Exception) -> Response:
        return error_answer(exc)[0].response()


@cache
def _openapi_source() -> dict[str, Any]:
    return yaml.safe_load(files("hotdeal").joinpath("openapi.yaml").read_text())


def _serves(item: dict[str, Any], service: str) -> bool:
    return service in item.pop("x-services", [service])


def openapi_document(service: str, settings: Settings) -> dict[str, Any]:
    """The document of what `service` serves with these settings: its paths and
    parameters only, the workshop's routes only when on, the limits it enforces."""
    doc = copy.deepcopy(_openapi_source())
    for path, item in list(doc["paths"].items()):
        workshop = item.pop("x-workshop", False)
        if not _serves(item, service) or (workshop and not settings.workshop_routes):
            del doc["paths"][path]
            continue
        for operation in item.values():
            operation["parameters"] = [
                p for p in operation.get("parameters", []) if _serves(p, service)
            ]
            if not operation["parameters"]:
                del operation["parameters"]
    served = {op.get("operationId") for item in doc["paths"].values() for op in item.values()}
    for item in doc["paths"].values():
        for operation in item.values():
            for response in operation.get("responses", {}).values():
                links = response.get("links")
                if links:  # only to what this service serves
                    response["links"] = {
                        k: v for k, v in links.items() if v["operationId"] in served
                    }
    schemas = doc["components"]["schemas"]
    # The codes follow from the one table of outcomes (the 500 no promise allows aside).
    codes = [code for code in OUTCOMES if code != "error"]
    schemas["Error"]["properties"]["error"]["enum"] = codes
    doc["components"]["responses"]["Error"]["description"] = "; ".join(
        f"{OUTCOMES[code].status} {code}: {OUTCOMES[code].meaning}" for code in codes
    )
    schemas["OrderRequest"]["properties"]["quantity"]["maximum"] = settings.max_per_order
    if settings.auth == "off":  # the body names the buyer
        del doc["security"], doc["components"]["securitySchemes"]
        schemas["OrderRequest"]["required"].append("user_id")
    return doc


def init_public(app: Flask, service: str, settings: Settings) -> None:
    document = openapi_document(service, settings)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(document)


def reason(exc: BaseException) -> str:
    """Why a check failed, for /readyz: the error's kind, never a backend's address or
    a driver's message (they name hosts, ports and users)."""
    if isinstance(exc, ApiError | DurabilityError | NotReady | Degraded):
        return str(exc)
    return exc.__class__.__name__


def init_health(app: Flask, checks: dict[str, ReadinessCheck]) -> None:
    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        failed: dict[str, str] = {}
        degraded: dict[str, str] = {}
        for name, check in checks.items():
            try:
                check()
            except Degraded as exc:
                degraded[name] = str(exc)
            except Exception as exc:
                failed[name] = reason(exc)
        extra = {"degraded": degraded} if degraded else {}
        if failed:
            return jsonify(status="unavailable", failed=failed, **extra), 503
        return jsonify(status="ok", **extra), 200


def init_metrics(
    app: Flask, service: str, checks: dict[str, ReadinessCheck], readers: Iterable[Reader] = ()
) -> None:
    registry = metrics.scrape_registry(lambda: metrics.backend_up(service, checks), *readers)

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
