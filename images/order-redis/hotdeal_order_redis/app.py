"""Flask application factory of the Redis order service."""

from __future__ import annotations

from flask import Flask, Response, g, jsonify, request

from hotdeal.config import Settings
from hotdeal.db import engine_from_settings, table_reachable
from hotdeal.errors import ApiError
from hotdeal.redis_client import redis_from_settings
from hotdeal.schema import order_history
from hotdeal.validation import OrderRequest, parse_idempotency_key
from hotdeal.web import ReadinessCheck, install_common, order_from_request, sold
from hotdeal_order_redis.stock import RedisStock
from hotdeal_order_redis.stock_metrics import read_stock

SERVICE = "order-redis"
# The workshop's GET /order-redis: one unit of product 1 to one shared buyer, so the
# per-user limit does not apply to it.
WORKSHOP_ORDER = OrderRequest(product_id=1, user_id="workshop", quantity=1)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    client = redis_from_settings(settings)
    engine = engine_from_settings(settings) if settings.order_write == "inline" else None
    stock = RedisStock(
        client,
        write=settings.order_write,
        engine=engine,
        hold_ms=settings.hold_ms,
        idempotency_ttl_s=settings.idempotency_ttl_s,
    )

    stock.warm_up()

    app = Flask(__name__)
    app.config["HOTDEAL"] = settings
    app.extensions["hotdeal_engine"] = engine

    def redis_ready() -> None:
        client.ping()

    checks: dict[str, ReadinessCheck] = {"redis": redis_ready}
    if engine is not None:
        checks["database"] = lambda: table_reachable(engine, order_history)
    install_common(
        app,
        service=SERVICE,
        checks=checks,
        order_endpoints={"workshop_order", "create_order"},
        readers=[lambda: read_stock(client, SERVICE)],
    )

    @app.get("/order-redis")
    def workshop_order() -> Response:
        try:
            g.product = WORKSHOP_ORDER.product_id
            taken = stock.take(WORKSHOP_ORDER, limit=0, idempotency_key=None)
        except ApiError as err:
            if err.code == "sold_out":
                g.order_result = "sold_out"
                # The workshop's body; 409 so ab's "Non-2xx" counts the sold-out answers.
                return Response("Out Of Stock", status=409, mimetype="text/plain")
            raise
        sold(SERVICE, WORKSHOP_ORDER)
        return Response(str(taken.remaining), mimetype="text/plain")

    @app.post("/v1/orders")
    def create_order() -> tuple[Response, int]:
        key = parse_idempotency_key(request.headers.get("Idempotency-Key"))
        order = order_from_request(settings.max_per_order)
        taken = stock.take(order, limit=settings.per_user_limit, idempotency_key=key)
        response = jsonify(
            order_id=taken.order_id,
            product_id=order.product_id,
            quantity=order.quantity,
            remaining=taken.remaining,
        )
        if taken.replayed:
            response.headers["Idempotent-Replayed"] = "true"
        else:
            sold(SERVICE, order)
        return response, 201

    return app
