"""Flask glue both services share, one `init_*` per concern (as redash does):

- init_errors: every failure becomes a JSON answer; backends that are down become 503.
- init_health: /healthz, /readyz and /openapi.json.
- init_metrics: /metrics (every worker's samples plus the scrape-time readers).
- orders_blueprint: the order routes, whose requests are counted by outcome and timed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from functools import cache
from importlib.resources import files
from typing import Any

import yaml
from flask import Blueprint, Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import Metric
from werkzeug.exceptions import HTTPException

from hotdeal import metrics
from hotdeal.errors import ApiError, is_unavailable, unavailable
from hotdeal.validation import OrderRequest, parse_order

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], None]
Reader = Callable[[], Iterable[Metric]]

# Order bodies are ~80 bytes; anything near this is not an order (413 before parsing).
MAX_BODY_BYTES = 4096
# ApiError codes that are an outcome of their own in hotdeal_orders_total; every other
# 4xx is "rejected" (bad input, unknown product, reused idempotency key).
OUTCOMES = {
    "sold_out",
    "limit_exceeded",
    "not_open",
    "unavailable",
    "outcome_unknown",
    "paused",
    "in_progress",
    "error",
}
# Answers that prove the product exists: only then does the request carry its product
# label. Any other request is labelled "none", so clients can't mint metric series.
PRODUCT_KNOWN = {
    "sold_out",
    "limit_exceeded",
    "not_open",
    "paused",
    "in_progress",
    "idempotency_key_reused",
}
OUT_OF_STOCK = "Out Of Stock"


def error_response(err: ApiError) -> tuple[Response, int]:
    g.order_result = err.code if err.code in OUTCOMES else "rejected"
    if err.code in PRODUCT_KNOWN:
        product_known()
    response = jsonify(err.body())
    response.headers.update(err.headers)
    return response, err.status


def product_known() -> None:
    """The backend answered for the requested product: label the request with it."""
    if "candidate_product" in g:
        g.product = g.candidate_product


def order_from_request(max_per_order: int) -> OrderRequest:
    if not request.is_json:
        raise ApiError(400, "invalid_request", "body must be JSON (Content-Type: application/json)")
    try:
        body = json.loads(request.get_data(cache=False))
    except RecursionError:
        raise ApiError(400, "invalid_request", "body is nested too deeply") from None
    except ValueError:
        raise ApiError(400, "invalid_request", "body is not valid JSON") from None
    order = parse_order(body, max_per_order)
    g.candidate_product = order.product_id
    return order


def workshop_answer(take: Callable[[], Any]) -> Response:
    """The workshop's GET endpoints: the remaining stock as text, or its "Out Of Stock"
    (status 409, so ab's "Non-2xx" counts the sold-out answers)."""
    try:
        remaining = take()
    except ApiError as err:
        if err.code != "sold_out":
            raise
        g.order_result = "sold_out"
        product_known()
        return Response(OUT_OF_STOCK, status=409, mimetype="text/plain")
    product_known()
    return Response(str(remaining), mimetype="text/plain")


@cache
def _decrements(service: str, product: int) -> Any:
    # prometheus_client's labels() costs ~4 us a call; the few children are kept.
    return metrics.DECREMENTS.labels(service, str(product))


def sold(service: str, order: OrderRequest) -> None:
    """Count the units an order took (not for idempotent replays: nothing was taken)."""
    _decrements(service, order.product_id).inc(order.quantity)


def orders_blueprint(service: str) -> Blueprint:
    """The blueprint every order route goes on: its requests are counted by outcome and
    product, and timed. Health, metrics and lookups are not orders."""
    bp = Blueprint("orders", __name__)
    # Labelled children kept: labels() costs ~4 us a call. Bounded: products that exist
    # (hotdeal.web.product_known) times the outcomes.
    duration = metrics.ORDER_DURATION.labels(service)
    counter = cache(lambda product, result: metrics.ORDERS.labels(service, product, result))

    @bp.before_request
    def start_clock() -> None:
        g.started = time.perf_counter()

    @bp.after_request
    def account(response: Response) -> Response:
        result = g.get("order_result") or ("ok" if response.status_code < 400 else "rejected")
        counter(str(g.get("product", "none")), result).inc()
        duration.observe(time.perf_counter() - g.started)
        return response

    return bp


def init_errors(app: Flask) -> None:
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @app.errorhandler(ApiError)
    def api_error(err: ApiError) -> tuple[Response, int]:
        return error_response(err)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> tuple[Response, int]:
        g.order_result = "rejected"
        code = (err.name or "error").lower().replace(" ", "_")
        return jsonify(error=code, message=err.description), err.code or 500

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        if is_unavailable(exc):
            # The class only: a driver's message may quote the statement's parameters.
            log.warning("backend unavailable: %s", exc.__class__.__name__)
            return error_response(unavailable())
        log.error("unexpected error: %s", exc.__class__.__name__, exc_info=exc)
        return error_response(ApiError(500, "error", "internal error"))


@cache
def openapi_document() -> dict[str, Any]:
    return yaml.safe_load(files("hotdeal").joinpath("openapi.yaml").read_text())


def init_health(app: Flask, checks: dict[str, ReadinessCheck]) -> None:
    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        failed: dict[str, str] = {}
        for name, check in checks.items():
            try:
                check()
            except Exception as exc:
                failed[name] = str(exc).split("\n")[0][:300] or exc.__class__.__name__
        if failed:
            return jsonify(status="unavailable", failed=failed), 503
        return jsonify(status="ok"), 200

    @app.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(openapi_document())


def init_metrics(
    app: Flask, service: str, checks: dict[str, ReadinessCheck], readers: Iterable[Reader] = ()
) -> None:
    registry = metrics.scrape_registry(lambda: metrics.backend_up(service, checks), *readers)

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
