"""Flask glue both services share: JSON errors, health endpoints, the order body."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from hotdeal.errors import ApiError, is_unavailable
from hotdeal.validation import OrderRequest, parse_order

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], None]


def error_response(err: ApiError) -> tuple[Response, int]:
    return jsonify(err.body()), err.status


def unavailable_response(exc: BaseException) -> tuple[Response, int]:
    log.warning("backend unavailable: %s", exc.__class__.__name__)
    return error_response(ApiError(503, "unavailable", "a backend is unavailable, retry later"))


def order_from_request(max_per_order: int) -> OrderRequest:
    body = request.get_json(silent=True)
    if body is None:
        raise ApiError(400, "invalid_request", "body must be JSON (Content-Type: application/json)")
    return parse_order(body, max_per_order)


def install_common(app: Flask, checks: dict[str, ReadinessCheck]) -> None:
    """Health endpoints and error handlers that turn every failure into JSON."""

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

    @app.errorhandler(ApiError)
    def api_error(err: ApiError) -> tuple[Response, int]:
        return error_response(err)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> tuple[Response, int]:
        code = (err.name or "error").lower().replace(" ", "_")
        return jsonify(error=code, message=err.description), err.code or 500

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        if is_unavailable(exc):
            return unavailable_response(exc)
        log.exception("unexpected error")
        return error_response(ApiError(500, "error", "internal error"))
