"""Flask application factory of the Redis order service."""

from __future__ import annotations

from flask import Flask, Response, jsonify, request

from hotdeal import durability
from hotdeal.config import Settings
from hotdeal.db import engine_from_settings, table_reachable
from hotdeal.redis_client import memory_full, redis_from_settings
from hotdeal.schema import order_history
from hotdeal.validation import (
    OrderRequest,
    parse_idempotency_key,
    parse_order_id,
    parse_product_id,
    parse_user_id,
)
from hotdeal.web import (
    NotReady,
    OrderCall,
    OrderRoutes,
    Reader,
    ReadinessCheck,
    init_errors,
    init_public,
    order_from_request,
    sold,
    workshop_answer,
)
from hotdeal_order_redis.stock import RedisStock
from hotdeal_order_redis.stock_metrics import read_stock

SERVICE = "order-redis"
# The workshop's GET /order-redis: one unit of product 1 to one shared buyer, so the
# per-user limit does not apply to it.
WORKSHOP_ORDER = OrderRequest(product_id=1, user_id="workshop", quantity=1)


def admin_probes(settings: Settings) -> tuple[dict[str, ReadinessCheck], list[Reader]]:
    """For hotdeal.admin: Redis reachable and able to give the configured durability
    (and the database in inline mode); the stock gauges."""
    client = redis_from_settings(settings)

    def redis_ready() -> None:
        client.ping()
        durability.plan_all(client, settings.redis_durability, settings.redis_durability_timeout_ms)
        full = memory_full(client)
        if full:
            raise NotReady(full)

    checks: dict[str, ReadinessCheck] = {"redis": redis_ready}
    if settings.order_write == "inline":
        engine = engine_from_settings(settings, pool_size=2)
        checks["database"] = lambda: table_reachable(engine, order_history)
    return checks, [lambda: read_stock(client, SERVICE)]


def create_app(settings: Settings | None = None, *, pool_size: int | None = None) -> Flask:
    """`pool_size`: inline mode's database connections per worker (gunicorn.conf.py
    passes its threads)."""
    settings = settings or Settings.from_env()
    client = redis_from_settings(settings)
    inline = settings.order_write == "inline"
    engine = engine_from_settings(settings, pool_size=pool_size) if inline else None
    stock = RedisStock(
        client,
        write=settings.order_write,
        engine=engine,
        hold_ms=settings.hold_ms,
        idempotency_ttl_s=settings.idempotency_ttl_s,
        durability_mode=settings.redis_durability,
        durability_timeout_ms=settings.redis_durability_timeout_ms,
    )
    stock.warm_up()

    app = Flask(__name__)
    app.extensions["hotdeal_engine"] = engine

    init_errors(app)
    init_public(app)

    orders = OrderRoutes(SERVICE)

    @orders.get("/order-redis")
    def workshop_order(call: OrderCall) -> Response:
        call.candidate = WORKSHOP_ORDER.product_id

        def take() -> int:
            taken = stock.take(
                WORKSHOP_ORDER, limit=0, idempotency_key=None, list_under_buyer=False
            )
            sold(SERVICE, WORKSHOP_ORDER)
            return taken.remaining

        return workshop_answer(call, take)

    @orders.post("/v1/orders")
    def create_order(call: OrderCall) -> tuple[Response, int]:
        key = parse_idempotency_key(request.headers.get("Idempotency-Key"))
        order = order_from_request(call, settings.max_per_order)
        taken = stock.take(order, limit=settings.per_user_limit, idempotency_key=key)
        call.product_known()
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

    app.register_blueprint(orders.blueprint)

    @app.get("/v1/orders/<order_id>")
    def get_order(order_id: str) -> Response:
        return jsonify(stock.lookup(parse_order_id(order_id)))

    @app.get("/v1/orders")
    def list_orders() -> Response:
        pid = parse_product_id(request.args.get("product_id"))
        user = parse_user_id(request.args.get("user_id"))
        return jsonify(orders=stock.user_orders(pid, user))

    return app
