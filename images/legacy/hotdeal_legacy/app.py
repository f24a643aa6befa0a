"""Flask application factory of the legacy order service."""

from __future__ import annotations

from flask import Flask, Response, jsonify, request
from sqlalchemy import Engine

from hotdeal import metrics
from hotdeal.config import Settings
from hotdeal.db import engine_from_settings, table_reachable
from hotdeal.db_waits import read_db_waits
from hotdeal.designs import Design
from hotdeal.errors import unknown_order
from hotdeal.identity import verifier_from_settings
from hotdeal.schema import hotdeal_list
from hotdeal.validation import OrderRequest, parse_order_id, parse_product_id, parse_user_id
from hotdeal.web import (
    Answer,
    Incoming,
    OrderCall,
    OrderRoutes,
    Reader,
    ReadinessCheck,
    caller_of_request,
    init_errors,
    init_public,
    order_from_request,
    sold,
    workshop_answer,
    workshop_order_of,
)
from hotdeal_legacy.orders import LegacyOrders, Placed, find_order, user_orders
from hotdeal_legacy.stock_metrics import read_stock

SERVICE = "legacy"


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
    app.extensions["hotdeal_engine"] = engine  # disposed in each forked worker
    verifier = verifier_from_settings(settings, SERVICE)
    verifier.warm_up()
    init_errors(app)
    init_public(app, SERVICE, settings)
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

    if settings.workshop_routes:

        @routes.get("/order")
        def workshop_order(call: OrderCall, incoming: Incoming) -> Answer:
            order = workshop_order_of(verifier.caller(incoming.header("Authorization")))
            call.candidate = order.product_id
            return workshop_answer(call, lambda: place(call, order).remaining)

    @routes.post("/v1/orders")
    def create_order(call: OrderCall, incoming: Incoming) -> Answer:
        caller = verifier.caller(incoming.header("Authorization"))
        order = order_from_request(call, incoming, settings.max_per_order, caller)
        placed = place(call, order)
        document = {
            "order_id": placed.order_id,
            "product_id": order.product_id,
            "quantity": order.quantity,
            "remaining": placed.remaining,
        }
        return Answer.json(201, document)

    routes.init_app(app)

    @app.get("/v1/orders/<order_id>")
    def get_order(order_id: str) -> Response:
        caller = caller_of_request(verifier)
        record = find_order(engine, parse_order_id(order_id))
        if not caller.owns(record["user_id"]):
            raise unknown_order()
        return jsonify(record)

    @app.get("/v1/orders")
    def list_orders() -> Response:
        caller = caller_of_request(verifier)
        pid = parse_product_id(request.args.get("product_id"))
        user = caller.buyer(parse_user_id(request.args.get("user_id")))
        return jsonify(orders=user_orders(engine, pid, user))

    return app
