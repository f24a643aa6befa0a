"""Flask application factory of the legacy order service."""

from __future__ import annotations

from flask import Flask, Response, jsonify, request
from sqlalchemy import Engine

from hotdeal import metrics
from hotdeal.config import Settings
from hotdeal.db import engine_from_settings, table_reachable
from hotdeal.db_waits import read_db_waits
from hotdeal.designs import Design
from hotdeal.schema import hotdeal_list
from hotdeal.validation import OrderRequest, parse_order_id, parse_product_id, parse_user_id
from hotdeal.web import (
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
from hotdeal_legacy.orders import LegacyOrders, Placed, find_order, user_orders
from hotdeal_legacy.stock_metrics import read_stock

SERVICE = "legacy"
# The workshop's GET /order sells one unit of product 1 to one shared buyer.
WORKSHOP_ORDER = OrderRequest(product_id=1, user_id="workshop", quantity=1)


def probes(settings: Settings, engine: Engine) -> tuple[dict[str, ReadinessCheck], list[Reader]]:
    """Readiness checks and scrape-time readers (the app's and the admin listener's)."""
    checks = {"database": lambda: table_reachable(engine, hotdeal_list)}
    readers: list[Reader] = [
        lambda: read_stock(engine, SERVICE, settings.legacy_slots),
        lambda: read_db_waits(engine),
    ]
    return checks, readers


def admin_probes(settings: Settings) -> tuple[dict[str, ReadinessCheck], list[Reader]]:
    """For hotdeal.admin: its own small engine (probes and scrapes only)."""
    return probes(settings, engine_from_settings(settings, pool_size=2))


def create_app(settings: Settings | None = None, *, pool_size: int | None = None) -> Flask:
    """`pool_size`: database connections per worker (gunicorn.conf.py passes its threads)."""
    settings = settings or Settings.from_env()
    engine = engine_from_settings(settings, pool_size=pool_size)
    orders = LegacyOrders(engine, hold_ms=settings.hold_ms, slots=settings.legacy_slots)

    app = Flask(__name__)
    init_errors(app)
    init_public(app)
    design = Design.of_legacy(settings.legacy_slots)
    lock_wait = metrics.LOCK_WAIT.labels(SERVICE, design)
    lock_hold = metrics.LOCK_HOLD.labels(SERVICE, design)

    def place(call: OrderCall, order: OrderRequest) -> Placed:
        placed = orders.place(order)
        call.product_known()
        lock_wait.observe(placed.lock_wait_s)
        lock_hold.observe(placed.lock_hold_s)
        sold(SERVICE, order)
        return placed

    routes = OrderRoutes(SERVICE)

    @routes.get("/order")
    def workshop_order(call: OrderCall) -> Response:
        call.candidate = WORKSHOP_ORDER.product_id
        return workshop_answer(call, lambda: place(call, WORKSHOP_ORDER).remaining)

    @routes.post("/v1/orders")
    def create_order(call: OrderCall) -> tuple[Response, int]:
        order = order_from_request(call, settings.max_per_order)
        placed = place(call, order)
        return jsonify(
            order_id=placed.order_id,
            product_id=order.product_id,
            quantity=order.quantity,
            remaining=placed.remaining,
        ), 201

    app.register_blueprint(routes.blueprint)

    @app.get("/v1/orders/<order_id>")
    def get_order(order_id: str) -> Response:
        return jsonify(find_order(engine, parse_order_id(order_id)))

    @app.get("/v1/orders")
    def list_orders() -> Response:
        pid = parse_product_id(request.args.get("product_id"))
        user = parse_user_id(request.args.get("user_id"))
        return jsonify(orders=user_orders(engine, pid, user))

    return app
