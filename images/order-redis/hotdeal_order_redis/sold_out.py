"""Sold out, remembered: after the last unit, orders are answered without the take script.

A worker whose take answered `sold_out` with nothing left remembers it for
HOTDEAL_SOLD_OUT_RECHECK_MS. Meanwhile it answers 409 sold_out for that product from
memory; the first order after that runs the take again. So:
- a unit that comes back (a give-back, a repair, a reset) is refused by a worker for at
  most the recheck period, and sold by the next take after it;
- while sold out, a worker sends the take at most once per period per product, whatever
  the load (each worker learns on its own: one take each, no shared state to go stale);
- an order with an Idempotency-Key may be the retry of a take that sold: it costs one
  EXISTS on its key (hotdeal_order_redis.stock), and a key that exists gets the take.

SoldOutShortcut answers those orders before Flask: a request and a response through
Flask cost ~30% of a bare route's throughput (measured: a WSGI callable 3,250 req/s, a
Flask route 2,250), and after the last unit every answer is one of these.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from hotdeal import errors
from hotdeal.errors import ApiError, is_unavailable
from hotdeal.identity import Trusting, Verifier
from hotdeal.validation import parse_idempotency_key, parse_order
from hotdeal.web import MAX_BODY_BYTES, OrderCall, OrderRoutes, encoded, error_answer

if TYPE_CHECKING:
    from hotdeal_order_redis.stock import RedisStock

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class SoldOutMarks:
    """Per product, until when this worker answers sold out without asking Redis."""

    __slots__ = ("_clock", "_recheck_s", "_until")

    def __init__(self, recheck_ms: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._recheck_s = recheck_ms / 1000
        self._clock = clock
        self._until: dict[int, float] = {}

    def known(self, product_id: int) -> bool:
        """Sold out, as a take said less than the recheck period ago."""
        until = self._until.get(product_id)
        if until is None:
            return False
        if self._clock() < until:
            return True
        self._until.pop(product_id, None)  # the next take finds out again (threads: pop)
        return False

    def learn(self, product_id: int, remaining: int) -> None:
        """A take answered sold_out: remember it when nothing at all is left (an order
        for fewer units could still be sold otherwise)."""
        if remaining <= 0 and self._recheck_s > 0:
            self._until[product_id] = self._clock() + self._recheck_s

    def any(self) -> bool:
        """Some product is known sold out (lapsed marks are dropped on the way)."""
        now = self._clock()
        for product_id, until in list(self._until.items()):
            if until <= now:
                self._until.pop(product_id, None)
        return bool(self._until)


class SoldOutShortcut:
    """WSGI middleware in front of the Flask app, for orders of a product this worker
    knows is sold out: it answers them as the app would, without Flask. A sold-out
    answer from memory; any refusal on the way (a token refused, a bad Idempotency-Key,
    a body that does not validate, another buyer named, Redis away for a keyed order)
    with the app's own answer, checked in the app's order, counted once. Anything else
    (another route, a body that is not exactly JSON or names no marked product, a key
    that was used, a failure the app must log) goes to the app untouched, body and all."""

    def __init__(
        self,
        app: WsgiApp,
        *,
        stock: RedisStock,
        verifier: Verifier | Trusting,
        max_per_order: int,
        routes: OrderRoutes,
    ) -> None:
        self.app = app
        self.stock = stock
        self.verifier = verifier
        self.max_per_order = max_per_order
        self.routes = routes
        self.body = encoded(errors.sold_out(0))
        self.headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(self.body))),
        ]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if (
            self.stock.any_sold_out
            and environ.get("PATH_INFO") == "/v1/orders"
            and environ.get("REQUEST_METHOD") == "POST"
        ):
            started = time.perf_counter()
            marked = self._marked(environ)
            if marked is not None:
                product, body = marked
                answer = self._answer(environ, product, body)
                if answer is SOLD_OUT:
                    self.routes.record(str(product), "sold_out", started)
                    start_response("409 CONFLICT", self.headers)
                    return [self.body]
                if answer is not None:
                    response, label, result = answer
                    self.routes.record(label, result, started)
                    return response(environ, start_response)
        return self.app(environ, start_response)

    def _marked(self, environ: dict[str, Any]) -> tuple[int, Any] | None:
        """(product, body) of an order for a product known sold out, else None. The body
        is read once; the app gets the same bytes."""
        # Exactly JSON (any other type, even one the app accepts, goes to the app).
        if environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != "application/json":
            return None
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return None
        if not 0 < length <= MAX_BODY_BYTES:
            return None
        raw = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(raw)
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            return None
        product = body.get("product_id") if isinstance(body, dict) else None
        if type(product) is not int or not self.stock.marked(product):
            return None
        return product, body

    def _answer(self, environ: dict[str, Any], product: int, body: Any) -> Any:
        """SOLD_OUT, the app's answer to a refusal as (response, product label, result),
        or None for the app to answer."""
        call = OrderCall()
        call.candidate = product
        try:
            # The app's order of checks (hotdeal_order_redis.app.create_order).
            caller = self.verifier.caller(environ.get("HTTP_AUTHORIZATION"))
            key = parse_idempotency_key(environ.get("HTTP_IDEMPOTENCY_KEY"))
            order = parse_order(body, self.max_per_order, caller)
            if self.stock.known_sold_out(order, key):
                return SOLD_OUT
            return None  # a replay may be owed: the take decides
        except Exception as exc:
            if not (isinstance(exc, ApiError) or is_unavailable(exc)):
                return None  # the app answers it, and logs it
            response, _, result = error_answer(exc, call)
            return response, call.product, result


SOLD_OUT = object()
