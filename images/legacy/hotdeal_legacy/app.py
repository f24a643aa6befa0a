"""Flask application factory of the legacy order service."""

from __future__ import annotations

from flask import Flask, Response, current_app, jsonify

from hotdeal.config import Settings
from hotdeal.db import engine_from_settings, table_reachable
from hotdeal.errors import ApiError
from hotdeal.schema import hotdeal_list
from hotdeal.validation import OrderRequest
from hotdeal.web import install_common, order_from_request
from hotdeal_legacy.orders import LegacyOrders

# The workshop's GET /order sells one unit of product 1 to one shared buyer.
WORKSHOP_ORDER = OrderRequest(product_id=1, user_id="workshop", quantity=1)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    engine = engine_from_settings(settings)
    orders = LegacyOrders(engine, hold_ms=settings.hold_ms, slots=settings.legacy_slots)

    app = Flask(__name__)
    app.config["HOTDEAL"] = settings
    app.extensions["hotdeal_orders"] = orders

    install_common(app, {"database": lambda: table_reachable(engine, hotdeal_list)})

    @app.get("/order")
    def workshop_order() -> Response:
        try:
            placed = orders.place(WORKSHOP_ORDER)
        except ApiError as err:
            if err.code == "sold_out":
                # The workshop's body; 409 so ab's "Non-2xx" counts the sold-out answers.
                return Response("Out Of Stock", status=409, mimetype="text/plain")
            raise
        return Response(str(placed.remaining), mimetype="text/plain")

    @app.post("/v1/orders")
    def create_order() -> tuple[Response, int]:
        order = order_from_request(current_app.config["HOTDEAL"].max_per_order)
        placed = orders.place(order)
        return jsonify(
            order_id=placed.order_id,
            product_id=order.product_id,
            quantity=order.quantity,
            remaining=placed.remaining,
        ), 201

    return app
