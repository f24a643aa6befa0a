"""Flask application factory of the Redis order service."""

from __future__ import annotations

import logging
import threading
import time

from flask import Flask, Response, jsonify, request
from sqlalchemy import Engine

from hotdeal import durability, errors
from hotdeal.config import Settings
from hotdeal.db import engine_from_settings, table_reachable
from hotdeal.errors import NotReady, already_confirmed, released, unknown_order
from hotdeal.identity import insufficient_scope, verifier_from_settings
from hotdeal.inline import InlineTakes
from hotdeal.model import keys
from hotdeal.model.records import iso_ms
from hotdeal.model.states import HoldState
from hotdeal.redis_client import Client, memory_full, redis_from_settings
from hotdeal.schema import order_history
from hotdeal.validation import (
    parse_idempotency_key,
    parse_order_id,
    parse_product_id,
    parse_user_id,
)
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
from hotdeal_order_redis import holds
from hotdeal_order_redis.queue import (
    ARRIVED_HEADER,
    PASS_HEADER,
    init_queue,
    passes_from_settings,
)
from hotdeal_order_redis.stock import RedisStock
from hotdeal_order_redis.stock_metrics import read_stock

SERVICE = "order-redis"
REPLAYED = (("Idempotent-Replayed", "true"),)
log = logging.getLogger(__name__)


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
    holds.start_expirer(client, SERVICE)
    if settings.order_write == "inline":
        engine = engine_from_settings(settings, pool_size=2)
        checks["database"] = lambda: table_reachable(engine, order_history)
        start_inline_sweeper(engine, client)
    return checks, [lambda: read_stock(client, SERVICE)]


def start_inline_sweeper(engine: Engine, client: Client, every_s: float = 5.0) -> None:
    """Inline mode: settle the takes whose settle was lost (hotdeal.inline), in every
    pod's admin listener (any of them may die; a take settles once whoever does it)."""
    takes = InlineTakes(client)

    def sweep() -> None:
        while True:
            time.sleep(every_s)
            try:
                for pid in sorted(int(p) for p in client.smembers(keys.PRODUCTS)):
                    settled = takes.sweep(engine, pid)
                    if settled["done"] or settled["given_back"]:
                        log.warning("product %s: inline takes settled late: %s", pid, settled)
            except Exception as exc:  # a store away: the next round tries again
                log.warning("inline sweep failed: %s", exc.__class__.__name__)

    threading.Thread(target=sweep, name="inline-sweeper", daemon=True).start()


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
        sold_out_recheck_ms=settings.sold_out_recheck_ms,
    )
    stock.warm_up()

    app = Flask(__name__)
    app.extensions["hotdeal_engine"] = engine
    app.extensions["hotdeal_worker_start"] = [stock.open_connections]
    verifier = verifier_from_settings(settings, SERVICE)
    verifier.warm_up()

    init_errors(app)
    init_public(app, SERVICE, settings)

    orders = OrderRoutes(SERVICE)
    holds.init_metrics(SERVICE)
    passes = passes_from_settings(settings, SERVICE)
    init_queue(app, settings, verifier, client, SERVICE, passes)

    if settings.workshop_routes:

        @orders.get("/order-redis")
        def workshop_order(call: OrderCall, incoming: Incoming) -> Answer:
            order = workshop_order_of(verifier.caller(incoming.header("Authorization")))
            call.candidate = order.product_id

            def take() -> int:
                if stock.known_sold_out(order, None):
                    raise errors.sold_out(0)
                taken = stock.take(order, limit=0, idempotency_key=None, list_under_buyer=False)
                sold(SERVICE, order)
                return taken.remaining

            return workshop_answer(call, take)

    @orders.post("/v1/orders")
    def create_order(call: OrderCall, incoming: Incoming) -> Answer:
        caller = verifier.caller(incoming.header("Authorization"))
        key = parse_idempotency_key(incoming.header("Idempotency-Key"))
        order = order_from_request(call, incoming, settings.max_per_order, caller)
        # After the last unit every order ends here, from this worker's memory
        # (hotdeal_order_redis.sold_out), before a pass is read.
        if stock.known_sold_out(order, key):
            raise errors.sold_out(0)
        room_pass, refused = passes.check(order, incoming.header(PASS_HEADER))
        waited_ms = 0
        if room_pass:
            waited_ms = passes.waited_ms(call.started, incoming.header(ARRIVED_HEADER))
        try:
            taken = stock.take(
                order,
                limit=settings.per_user_limit,
                idempotency_key=key,
                room_pass=room_pass,
                waited_ms=waited_ms,
            )
        except Exception as exc:
            passes.settle(room_pass, refused, exc)
            raise
        passes.settle(room_pass, refused, None)
        call.product_known()
        document = {
            "order_id": taken.order_id,
            "product_id": order.product_id,
            "quantity": order.quantity,
            "remaining": taken.remaining,
        }
        if taken.state is not None:
            document.update(state=taken.state, expires_at=iso_ms(taken.expires_ms))
        if taken.replayed:
            return Answer.json(201, document, REPLAYED)
        sold(SERVICE, order)
        return Answer.json(201, document)

    orders.init_app(app)

    @app.get("/v1/orders/<order_id>")
    def get_order(order_id: str) -> Response:
        caller = caller_of_request(verifier)
        record = stock.lookup(parse_order_id(order_id))
        if not caller.owns(record["user_id"]):
            raise unknown_order()
        return jsonify(record)

    @app.post("/v1/orders/<order_id>/confirm")
    def confirm_order(order_id: str) -> Response:
        """The payment came in (a service: the payment callback): the hold is a sale."""
        caller = caller_of_request(verifier)
        if not caller.acts_for_buyers:
            raise insufficient_scope(caller.act_for_scope)
        settled = stock.settle(parse_order_id(order_id), "confirm")
        holds.count(settled)
        if settled.state != HoldState.CONFIRMED:
            raise released(settled.state, settled.order_id)
        return jsonify(order_id=settled.order_id, state=settled.state)

    @app.post("/v1/orders/<order_id>/cancel")
    def cancel_order(order_id: str) -> Response:
        """The buyer (or a service) gives the hold up: its units go back at once."""
        caller = caller_of_request(verifier)
        order_id = parse_order_id(order_id)
        if not caller.acts_for_buyers and not caller.owns(stock.lookup(order_id)["user_id"]):
            raise unknown_order()
        settled = stock.settle(order_id, "cancel")
        holds.count(settled)
        if settled.state == HoldState.CONFIRMED:
            raise already_confirmed(settled.order_id)
        return jsonify(order_id=settled.order_id, state=settled.state)

    @app.get("/v1/orders")
    def list_orders() -> Response:
        caller = caller_of_request(verifier)
        pid = parse_product_id(request.args.get("product_id"))
        user = caller.buyer(parse_user_id(request.args.get("user_id")))
        return jsonify(orders=stock.user_orders(pid, user))

    return app
