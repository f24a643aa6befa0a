"""The ceilings `make bench` measures order-redis against, served by the same gunicorn
config as order-redis (its workers, preloaded):

- `bare_app()`: a Flask route that does nothing (what Flask and gunicorn cost);
- `script_app()`: the same plus one EVALSHA of a two-line check-and-decrement script
  (the least a Redis-backed sale can do), as a Flask route;
- `routes_app()`, `routes_script_app()`: the same two as order routes, served before
  Flask as order-redis serves its own (hotdeal.web.OrderRoutes): its like-for-like
  ceiling.

  gunicorn -c images/order-redis/gunicorn.conf.py 'hotdeal_local.ceiling:script_app()'
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response

from hotdeal.config import Settings
from hotdeal.redis_client import redis_from_settings
from hotdeal.web import Answer, Incoming, OrderCall, OrderRoutes

KEY = "{ceiling}-stock"
DECREMENT = """
local n = tonumber(redis.call("GET", KEYS[1]) or "0")
if n < 1 then return -1 end return redis.call("DECR", KEYS[1])
"""
TEXT = "text/plain"


def _app() -> Flask:
    app = Flask(__name__)
    app.add_url_rule("/healthz", "healthz", lambda: "ok")
    return app


def _decrement(stock: int) -> Callable[[], bytes]:
    client = redis_from_settings(Settings.from_env())
    client.set(KEY, stock)
    script = client.register_script(DECREMENT)
    return lambda: str(script(keys=[KEY])).encode()


def bare_app() -> Flask:
    app = _app()
    # POST too: `make bench-sold-out` sends it the orders it sends order-redis.
    app.add_url_rule(
        "/ceiling", "ceiling", lambda: Response("1", mimetype=TEXT), methods=["GET", "POST"]
    )
    return app


def script_app(stock: int = 10**9) -> Flask:
    decrement = _decrement(stock)
    app = _app()
    app.add_url_rule("/ceiling", "ceiling", lambda: Response(decrement(), mimetype=TEXT))
    return app


def _routed(body: Callable[[], bytes]) -> Flask:
    app = _app()
    routes = OrderRoutes("ceiling")

    @routes.get("/ceiling")
    def ceiling(call: OrderCall, incoming: Incoming) -> Answer:
        return Answer(200, body(), TEXT)

    routes.init_app(app)
    return app


def routes_app() -> Flask:
    return _routed(lambda: b"1")


def routes_script_app(stock: int = 10**9) -> Flask:
    return _routed(_decrement(stock))
