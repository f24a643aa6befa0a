"""The waiting room's routes (hotdeal.room) and the pass check of an order.

POST /v1/queue   {"product_id": 1}        a place (the same one if asked again) and its
                                          ticket
GET  /v1/queue   Hotdeal-Ticket: <ticket> where the place stands; once admitted, a pass
POST /v1/orders  Hotdeal-Pass: <pass>     required while the product's room is on
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, jsonify, request

from hotdeal import errors, fence, metrics
from hotdeal.config import Settings
from hotdeal.errors import ApiError
from hotdeal.identity import Trusting, Verifier
from hotdeal.redis_client import Client
from hotdeal.room import MAX_WAITED_MS, PASS, TICKET, Line, Place, RoomRefused, Signer
from hotdeal.validation import OrderRequest, parse_queue
from hotdeal.web import caller_of_request, json_body

TICKET_HEADER = "Hotdeal-Ticket"
PASS_HEADER = "Hotdeal-Pass"
ARRIVED_HEADER = "X-Hotdeal-Arrived"  # set by the front (charts/hotdeal/files/front.conf)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def front_arrival(header: str | None, trusted: bool) -> float | None:
    """When the front read this request (its ARRIVED_HEADER), epoch seconds (None: not
    trusted, or not a time)."""
    if not trusted or header is None:
        return None
    try:
        arrived = float(header)
    except ValueError:
        return None
    return arrived if math.isfinite(arrived) else None


class Passes:
    """An order's pass, checked before its take; the take script decides whether the
    room wants one (it knows whether the room is on, atomically with the sale)."""

    def __init__(self, signer: Signer | None, service: str, trust_front: bool = False) -> None:
        self.signer = signer
        self.trust_front = trust_front
        self._results = {
            r: metrics.ROOM_PASSES.labels(service, r)
            for r in ("issued", "used", "expired", "refused")
        }

    def issued(self) -> None:
        self._results["issued"].inc()

    def check(self, order: OrderRequest, token: str | None) -> tuple[str, RoomRefused | None]:
        """(the room id of a good pass or "", why a pass `token` that was sent is not
        good)."""
        if token is None or self.signer is None:
            return "", None
        try:
            claims = self.signer.read(token, PASS, order.user_id)
        except RoomRefused as refused:
            return "", refused
        if claims.product != order.product_id:
            return "", RoomRefused(
                "invalid_pass", "other_product", "the pass is for another product"
            )
        return claims.room, None

    def waited_ms(self, started: float, arrived_header: str | None) -> int:
        """How long an order has waited in the service (the room's automatic rate): since
        the front read it, queues before the worker included, else since the worker took
        it (perf_counter `started`)."""
        arrived = front_arrival(arrived_header, self.trust_front)
        if arrived is not None:
            waited = int((time.time() - arrived) * 1000)
            if waited >= 0:  # else a front whose clock is ahead: the worker's own time
                return min(waited, MAX_WAITED_MS)  # slow whatever the target
        return int((time.perf_counter() - started) * 1000)

    def settle(self, room_pass: str, refused: RoomRefused | None, exc: Exception | None) -> None:
        """Count the pass by what the take made of it; a take that wanted a pass and got
        a bad one answers why the pass is not good (or, of an earlier room, that)."""
        wanted = isinstance(exc, ApiError) and exc.code == "pass_required"
        if wanted and refused is None and room_pass:
            refused = RoomRefused(
                "invalid_pass", "other_room", "the pass is of an earlier room or event"
            )
        if wanted and refused is not None:
            self._results["expired" if refused.reason == "expired" else "refused"].inc()
            raise refused from None
        if room_pass and not wanted:
            self._results["used"].inc()


def init_queue(
    app: Flask,
    settings: Settings,
    verifier: Verifier | Trusting,
    client: Client,
    service: str,
    passes: Passes,
) -> None:
    line = Line(client)
    signer = passes.signer
    tickets = {r: metrics.ROOM_TICKETS.labels(service, r) for r in ("joined", "polled", "refused")}
    wait = metrics.ROOM_WAIT.labels(service)

    def need_signer() -> Signer:
        if signer is None:
            raise ApiError(
                503,
                "unavailable",
                "the waiting room is not set up on this server (HOTDEAL_ROOM_SECRET)",
                headers={"Retry-After": "5"},
            )
        return signer

    def arrived_us() -> int | None:
        arrived = front_arrival(request.headers.get(ARRIVED_HEADER), settings.room_front_arrival)
        return None if arrived is None else int(arrived * 1_000_000)

    def answer(place: Place, buyer: str, ticket: str | None = None) -> Response:
        if place.state == "unknown":
            # No books: not a product, unless this Redis came back empty and the
            # database's products are not restored yet.
            if fence.instance_checked(client):
                raise errors.unknown_product(place.product)
            raise errors.unavailable()
        body: dict[str, Any] = {"product_id": place.product, "state": place.state}
        if ticket is not None:
            body["ticket"] = ticket
        if place.state == "waiting":
            body["position"] = place.position
            if place.stalled:
                body["stalled"] = place.stalled
            else:
                body["estimated_wait_s"] = place.estimated_wait_s
            if place.opens_at_ms > place.now_ms:
                body["opens_at"] = _iso(place.opens_at_ms)
        if place.state == "admitted":
            token, expires = need_signer().pass_for(
                buyer, place.product, place.room, place.pass_ttl_s
            )
            body.update({"pass": token, "pass_expires_at": _iso(expires * 1000)})
            passes.issued()
        response = jsonify(body)
        if place.retry_after_s:
            response.headers["Retry-After"] = str(place.retry_after_s)
        return response

    @app.post("/v1/queue")
    def join_queue() -> Response:
        caller = caller_of_request(verifier)
        product, buyer = parse_queue(json_body(), caller)
        room_signer = need_signer()  # before a place is taken that no ticket could name
        place = line.join(product, buyer, arrived_us())
        ticket = None
        if place.state in ("waiting", "admitted"):  # sold out: no place was taken
            ticket = room_signer.ticket(buyer, product, place.room)
        tickets["joined"].inc()
        if place.first_admission:
            wait.observe(0)  # admitted on arrival
        return answer(place, buyer, ticket)

    @app.get("/v1/queue")
    def poll_queue() -> Response:
        caller = caller_of_request(verifier)
        # Whoever holds the ticket when the caller may act for any buyer (a game server)
        # or there is no caller (HOTDEAL_AUTH=off); else only the ticket's own buyer.
        holder = None if caller.acts_for_buyers else caller.subject
        try:
            claims = need_signer().read(request.headers.get(TICKET_HEADER), TICKET, holder)
            place = line.poll(claims.product, claims.buyer, claims.room)
        except RoomRefused:
            tickets["refused"].inc()
            raise
        tickets["polled"].inc()
        if place.first_admission:
            wait.observe(max(place.now_ms - claims.issued_ms, 0) / 1000)
        return answer(place, claims.buyer)


def passes_from_settings(settings: Settings, service: str) -> Passes:
    secret = settings.room_secret
    return Passes(Signer(secret) if secret else None, service, settings.room_front_arrival)
