"""The ceilings `make bench` measures order-redis against, served by the same gunicorn
config as order-redis (sync workers, 2 per core, preloaded):

- `bare_app()`: a Flask route that does nothing (what Flask and gunicorn cost);
- `script_app()`: the same plus one EVALSHA of a two-line check-and-decrement script
  (the least a Redis-backed sale can do).

  gunicorn -c images/order-redis/gunicorn.conf.py 'hotdeal_local.ceiling:script_app()'
"""

from __future__ import annotations

from flask import Flask, Response

from hotdeal.config import Settings
from hotdeal.redis_client import redis_from_settings

KEY = "{ceiling}-stock"
DECREMENT = """
local n = tonumber(redis.call("GET", KEYS[1]) or "0")
if n < 1 then return -1 end return redis.call("DECR", KEYS[1])
"""


def _app() -> Flask:
    app = Flask(__name__)
    app.add_url_rule("/healthz", "healthz", lambda: "ok")
    return app


def bare_app() -> Flask:
    app = _app()
    # POST too: `make bench-sold-out` sends it the orders it sends order-redis.
    app.add_url_rule(
        "/ceiling", "ceiling", lambda: Response("1", mimetype="text/plain"), methods=["GET", "POST"]
    )
    return app


def script_app(stock: int = 10**9) -> Flask:
    client = redis_from_settings(Settings.from_env())
    client.set(KEY, stock)
    decrement = client.register_script(DECREMENT)

    def take() -> Response:
        return Response(str(decrement(keys=[KEY])), mimetype="text/plain")

    app = _app()
    app.add_url_rule("/ceiling", "ceiling", take)
    return app
