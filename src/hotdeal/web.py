"""Flask glue both services share: JSON errors, health endpoints, /metrics, and the
accounting of every order request (outcome, latency)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import Metric
from werkzeug.exceptions import HTTPException

from hotdeal import metrics
from hotdeal.errors import ApiError, is_unavailable
from hotdeal.validation import OrderRequest, parse_order

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], None]
Reader = Callable[[], Iterable[Metric]]

# ApiError codes that are an outcome of their own in hotdeal_orders_total; every other
# 4xx is "rejected" (bad input, unknown product, reused idempotency key).
OUTCOMES = {"sold_out", "limit_exceeded", "not_open", "unavailable", "error"}


def error_response(err: ApiError) -> tuple[Response, int]:
    g.order_result = err.code if err.code in OUTCOMES else "rejected"
    return jsonify(err.body()), err.status


def unavailable_response(exc: BaseException) -> tuple[Response, int]:
    log.warning("backend unavailable: %s", exc.__class__.__name__)
    return error_response(ApiError(503, "unavailable", "a backend is unavailable, retry later"))


def order_from_request(max_per_order: int) -> OrderRequest:
    body = request.get_json(silent=True)
    if body is None:
        raise ApiError(400, "invalid_request", "body must be JSON (Content-Type: application/json)")
    order = parse_order(body, max_per_order)
    g.product = order.product_id
    return order


def sold(service: str, order: OrderRequest) -> None:
    """Count the units an order took (not for idempotent replays: nothing was taken)."""
    metrics.DECREMENTS.labels(service, str(order.product_id)).inc(order.quantity)


def install_common(
    app: Flask,
    *,
    service: str,
    checks: dict[str, ReadinessCheck],
    order_endpoints: set[str],
    readers: Iterable[Reader] = (),
) -> None:
    """Health, /metrics, error handlers that turn every failure into JSON, and the
    outcome/latency accounting of the endpoints in `order_endpoints`."""
    registry = metrics.scrape_registry(lambda: metrics.backend_up(service, checks), *readers)

    @app.before_request
    def start_clock() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def account(response: Response) -> Response:
        if request.endpoint in order_endpoints:
            result = g.get("order_result") or ("ok" if response.status_code < 400 else "rejected")
            product = str(g.get("product", "none"))
            metrics.ORDERS.labels(service, product, result).inc()
            metrics.ORDER_DURATION.labels(service).observe(time.perf_counter() - g.started)
        return response

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
                failed[name] = exc.__class__.__name__
        if failed:
            return jsonify(status="unavailable", failed=failed), 503
        return jsonify(status="ok"), 200

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(metrics.render(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

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
            return unavailable_response(exc)
        log.exception("unexpected error")
        return error_response(ApiError(500, "error", "internal error"))
