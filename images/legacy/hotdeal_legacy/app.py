"""Flask application factory of the legacy order service."""

from __future__ import annotations

from flask import Flask, Response, g, jsonify

from hotdeal import metrics
from hotdeal.config import Settings
from hotdeal.db import engine_from_settings, table_reachable
from hotdeal.db_waits import read_db_waits
from hotdeal.errors import ApiError
from hotdeal.schema import hotdeal_list
from hotdeal.validation import OrderRequest
from hotdeal.web import install_common, order_from_request, sold
from hotdeal_legacy.orders import LegacyOrders, Placed
from hotdeal_legacy.stock_metrics import read_stock

SERVICE = "legacy"
# The workshop's GET /order sells one unit of product 1 to one shared buyer.
WORKSHOP_ORDER = OrderRequest(product_id=1, user_id="workshop", quantity=1)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    engine = engine_from_settings(settings)
    orders = LegacyOrders(engine, hold_ms=settings.hold_ms, slots=settings.legacy_slots)

    app = Flask(__name__)
    app.config["HOTDEAL"] = settings

    install_common(
        app,
        service=SERVICE,
        checks={"database": lambda: table_reachable(engine, hotdeal_list)},
        order_endpoints={"workshop_order", "create_order"},
        readers=[
            lambda: read_stock(engine, SERVICE, settings.legacy_slots),
            lambda: read_db_waits(engine),
        ],
    )
    design = "hot-row" if settings.legacy_slots == 1 else "slots"
    lock_wait = metrics.LOCK_WAIT.labels(SERVICE, design)
    lock_hold = metrics.LOCK_HOLD.labels(SERVICE, design)

    def place(order: OrderRequest) -> Placed:
        g.product = order.product_id
        placed = orders.place(order)
        lock_wait.observe(placed.lock_wait_s)
        lock_hold.observe(placed.lock_hold_s)
        sold(SERVICE, order)
        return placed

    @app.get("/order")
    def workshop_order() -> Response:
        try:
            placed = place(WORKSHOP_ORDER)
        except ApiError as err:
            if err.code == "sold_out":
                g.order_result = "sold_out"
                # The workshop's body; 409 so ab's "Non-2xx" counts the sold-out answers.
                return Response("Out Of Stock", status=409, mimetype="text/plain")
            raise
        return Response(str(placed.remaining), mimetype="text/plain")

    @app.post("/v1/orders")
    def create_order() -> tuple[Response, int]:
        order = order_from_request(settings.max_per_order)
        placed = place(order)
        return jsonify(
            order_id=placed.order_id,
            product_id=order.product_id,
            quantity=order.quantity,
            remaining=placed.remaining,
        ), 201

    return app
