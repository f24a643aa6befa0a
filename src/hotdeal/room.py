"""The waiting room: per product, switched on by the operator (`hotdeal-ops room`).

A buyer joins (`POST /v1/queue`) and gets a signed ticket for its place; polling the
ticket (`GET /v1/queue`) says its position, an estimated wait and when to ask again, in
one Redis round trip (room.lua) and no database. Places are admitted in line order at
the room's rate; an admitted ticket's poll carries a pass, a short-lived signed token
bound to the buyer, the product and the room, and while the room is on the take script
sells that product only to an order carrying one (`Hotdeal-Pass`). One place per buyer
(the token's subject) per product; joining again gives the same place.

Tickets and passes are JWTs signed with HS256 (PyJWT) under the room's secret
(HOTDEAL_ROOM_SECRET), shared by every pod; each carries the room's id, new whenever
the room is switched on (so with every event too): those of an earlier room open
nothing.

The rate is the operator's, or automatic (`auto_target_ms`): it follows what the order
service is measured to serve, growing while the room's orders wait in the service less
than the target and cutting back once more than 5% wait longer (room.lua).

The room's state lives in Redis beside the books (hotdeal.model.keys): a
reset, or a Redis that came back empty, ends it (the product then sells without a room
until the operator switches it on again: never more than the stock, but without the
line).
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import jwt

from hotdeal.errors import ApiError
from hotdeal.model import keys
from hotdeal.redis_client import Client

MODES = ("fifo", "random")
FIRST_COME = 1 << 40  # room.lua: places drawn at random score below, arrival times above
ISSUER = "hotdeal-room"
TICKET = "hotdeal:room-ticket"  # audiences: a ticket is never a pass, nor the reverse
PASS = "hotdeal:room-pass"
TICKET_TTL_S = 12 * 3600
MIN_SECRET_BYTES = 32
DEFAULT_PASS_TTL_S = 120
MAX_PASS_TTL_S = 86_400
MAX_RATE = 1_000_000.0
MIN_RATE = 0.01  # below (but 0): a wait of years
MAX_WAIT_S = 86_400  # an estimate beyond a day says "not today", not a number
MAX_WAITED_MS = 60_000  # an order's wait as the automatic rate counts it, at most
MAX_AUTO_TARGET_MS = MAX_WAITED_MS // 2  # below it: the longest wait is always slow
MAX_CACHED = 100_000
_SCRIPT = files(__package__).joinpath("room.lua").read_text()


class RoomRefused(ApiError):
    """403 for a ticket or a pass that is not good for this buyer, product and event;
    `reason` labels the metric."""

    def __init__(self, code: str, reason: str, message: str) -> None:
        super().__init__(403, code, message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    buyer: str
    product: int
    room: str
    issued_ms: int
    expires: float


class Signer:
    """Signs and reads tickets and passes (HS256 under the room's secret). Verified ones
    are kept until they expire: a buyer's polls and retries cost a dict lookup, not a
    JWT read (~100 us each)."""

    def __init__(self, secret: str) -> None:
        key = secret.encode()
        if len(key) < MIN_SECRET_BYTES:
            raise ValueError(f"the room's secret must be at least {MIN_SECRET_BYTES} bytes")
        self._key = key
        self._verified: dict[tuple[str, str], Claims] = {}

    def _sign(
        self, audience: str, buyer: str, product: int, room: str, ttl_s: int
    ) -> tuple[str, int]:
        """The token, and when it expires (epoch seconds)."""
        now_ms = int(time.time() * 1000)
        expires = now_ms // 1000 + ttl_s
        claims = {
            "iss": ISSUER,
            "aud": audience,
            "sub": buyer,
            "pid": product,
            "room": room,
            "ms": now_ms,
            "exp": expires,
        }
        return jwt.encode(claims, self._key, algorithm="HS256"), expires

    def ticket(self, buyer: str, product: int, room: str) -> str:
        return self._sign(TICKET, buyer, product, room, TICKET_TTL_S)[0]

    def pass_for(self, buyer: str, product: int, room: str, ttl_s: int) -> tuple[str, int]:
        return self._sign(PASS, buyer, product, room, ttl_s)

    def read(self, token: str | None, audience: str, buyer: str | None) -> Claims:
        """The claims of a ticket or pass of `buyer` (None: of whoever holds it, with
        HOTDEAL_AUTH=off), or RoomRefused."""
        code, what = (
            ("invalid_ticket", "ticket") if audience == TICKET else ("invalid_pass", "pass")
        )
        if not token:
            raise RoomRefused(code, "missing", f"the {what} is missing")
        cached = self._verified.get((audience, token))
        if cached is not None and time.time() < cached.expires:
            return self._owned(cached, buyer, code, what)
        if len(token) > 2048:
            raise RoomRefused(code, "malformed", f"the {what} is not one of ours")
        try:
            raw = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=audience,
                issuer=ISSUER,
                options={"require": ["exp", "iss", "aud", "sub", "pid", "room", "ms"]},
            )
            claims = Claims(
                str(raw["sub"]),
                int(raw["pid"]),
                str(raw["room"]),
                int(raw["ms"]),
                float(raw["exp"]),
            )
        except jwt.ExpiredSignatureError:
            raise RoomRefused(code, "expired", f"the {what} has expired") from None
        except (jwt.PyJWTError, TypeError, ValueError, OverflowError):
            raise RoomRefused(code, "forged", f"the {what} is not one of ours") from None
        if len(self._verified) >= MAX_CACHED:
            self._verified.clear()
        self._verified[(audience, token)] = claims
        return self._owned(claims, buyer, code, what)

    @staticmethod
    def _owned(claims: Claims, buyer: str | None, code: str, what: str) -> Claims:
        if buyer is not None and claims.buyer != buyer:
            raise RoomRefused(code, "other_buyer", f"the {what} is another buyer's")
        return claims


@dataclass(frozen=True, slots=True)
class Place:
    """What a join or a poll found. `state`: "waiting", "admitted", "sold_out",
    "closed" (no room: order directly) or "unknown" (no books). `stalled`: why
    admission stands still ("" while it moves); then no wait is estimated."""

    state: str
    product: int
    room: str = ""
    position: int = 0  # 1 = next in line (waiting only)
    estimated_wait_s: int | None = None
    stalled: str = ""
    retry_after_s: int = 0
    opens_at_ms: int = 0
    first_admission: bool = False
    now_ms: int = 0
    pass_ttl_s: int = DEFAULT_PASS_TTL_S


def _keys(product: int) -> list[str]:
    """room.lua's KEYS."""
    return [
        keys.room(product),
        keys.room_line(product),
        keys.books(product),
        keys.room_admitted(product),
    ]


def _retry_after(wait_s: float) -> int:
    """Ask again at a third of the expected wait: 1 s near the front, 30 s at most."""
    return max(1, min(30, math.ceil(wait_s / 3)))


class Line:
    """The service's side of room.lua."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._script = client.register_script(_SCRIPT)

    def join(self, product: int, buyer: str, arrived_us: int | None = None) -> Place:
        """`arrived_us`: when the front read the join (epoch microseconds), if known."""
        draw = secrets.randbelow(FIRST_COME)  # used only for a place drawn at random
        args = ["join", buyer, draw, "" if arrived_us is None else arrived_us]
        return self._place(product, self._script(keys=_keys(product), args=args))

    def poll(self, product: int, buyer: str, room: str) -> Place:
        """`room`: the ticket's room id (another room's ticket has no place here)."""
        reply = self._script(keys=_keys(product), args=["poll", buyer, 0, room])
        return self._place(product, reply)

    def _place(self, product: int, reply: list[Any]) -> Place:
        status = reply[0]
        if status == "closed":
            return Place("closed", product)
        if status == "sold_out":
            # Units may come back (a give-back, a repair): the place is kept.
            return Place("sold_out", product, retry_after_s=30)
        if status == "unknown":
            return Place("unknown", product)
        if status == "no_place":
            raise RoomRefused(
                "invalid_ticket",
                "no_place",
                "the ticket has no place in this product's room (of an earlier room or event?)",
            )
        rank, admitted, rate, opens_ms, now_ms, room, first, ttl, stalled = reply[1:]
        if int(rank) < int(admitted):
            return Place(
                "admitted",
                product,
                room,
                first_admission=first == 1,
                now_ms=int(now_ms),
                pass_ttl_s=min(max(int(ttl), 1), MAX_PASS_TTL_S),
            )
        position = int(rank) - int(admitted) + 1
        until_open_s = max(0, int(opens_ms) - int(now_ms)) / 1000
        per_s = float(rate)
        wait_s = until_open_s + (position / per_s if per_s >= MIN_RATE else MAX_WAIT_S)
        wait_s = min(wait_s, MAX_WAIT_S)
        # Stalled, the line moves when selling resumes or a hold is released, which no
        # rate foretells: no estimate, and polls as often as if it moved.
        return Place(
            "waiting",
            product,
            room,
            position=position,
            estimated_wait_s=None if stalled else math.ceil(wait_s),
            stalled=stalled,
            retry_after_s=_retry_after(wait_s),
            opens_at_ms=int(opens_ms),
            now_ms=int(now_ms),
        )


# -- the operator's side (hotdeal-ops room) -------------------------------------------


def configure(
    client: Client,
    product: int,
    *,
    mode: str | None = None,
    rate: float | None = None,
    pass_ttl_s: int | None = None,
    auto_target_ms: int | None = None,
) -> dict[str, Any]:
    """Switch the room on for the product's current event (a new room: an empty line,
    a new id), or change its rate, mode or pass lifetime mid-event (the line and who was
    admitted stay; a new rate applies from now). `auto_target_ms`: the rate follows the
    order service from `rate` (or the current one) on; a `rate` alone fixes it again.
    One script: no transaction for the buyers' joins to break."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode: one of {', '.join(MODES)}")
    if rate is not None and not (rate == 0 or MIN_RATE <= rate <= MAX_RATE):
        raise ValueError(f"rate: 0, or {MIN_RATE:g} to {MAX_RATE:g} places a second")
    if pass_ttl_s is not None and not 1 <= pass_ttl_s <= MAX_PASS_TTL_S:
        raise ValueError(f"pass lifetime: 1 to {MAX_PASS_TTL_S} seconds")
    if auto_target_ms is not None and not 1 <= auto_target_ms <= MAX_AUTO_TARGET_MS:
        raise ValueError(f"automatic rate's target: 1 to {MAX_AUTO_TARGET_MS} ms")
    args = [
        "configure",
        mode or "",
        "" if rate is None else repr(float(rate)),
        "" if pass_ttl_s is None else str(pass_ttl_s),
        secrets.token_hex(8),
        "" if auto_target_ms is None else str(auto_target_ms),
    ]
    reply = client.register_script(_SCRIPT)(keys=_keys(product), args=args)
    if reply[0] == "unknown":
        raise LookupError(f"product {product} has no books in Redis (run reset)")
    if reply[0] == "refused":
        raise ValueError(f"{reply[1]} (switch the room off and on for a new line)")
    return status(client, product)


def close(client: Client, product: int) -> dict[str, Any]:
    """Switch the room off: the product sells to every order again."""
    client.delete(keys.room(product), keys.room_line(product), keys.room_admitted(product))
    return status(client, product)


@dataclass(frozen=True, slots=True)
class RoomState:
    product: int
    on: bool
    mode: str = ""
    rate: float = 0.0
    pass_ttl_s: int = DEFAULT_PASS_TTL_S
    places: int = 0
    admitted: int = 0
    auto_target_ms: int = 0  # 0: the operator's rate

    @property
    def waiting(self) -> int:
        return max(self.places - self.admitted, 0)


def read_states(client: Client, products: list[int]) -> list[RoomState]:
    """Each product's room as it stands (for the metrics and the operator)."""
    pipe = client.pipeline(transaction=False)
    for pid in products:
        pipe.hmget(keys.room(pid), "generation", "mode", "rate", "pass_ttl", "frontier", "auto")
        pipe.hget(keys.books(pid), keys.GENERATION)
        pipe.zcard(keys.room_line(pid))
    replies = pipe.execute()
    states = []
    for n, pid in enumerate(products):
        (generation, mode, rate, pass_ttl, frontier, auto), books_generation, places = replies[
            3 * n : 3 * n + 3
        ]
        if generation is None or generation != books_generation:
            states.append(RoomState(pid, on=False))
            continue
        states.append(
            RoomState(
                pid,
                on=True,
                mode=mode or "fifo",
                rate=_number(rate),
                pass_ttl_s=int(_number(pass_ttl, DEFAULT_PASS_TTL_S)),
                places=int(places),
                admitted=min(math.floor(_number(frontier)), int(places)),
                auto_target_ms=int(_number(auto)),
            )
        )
    return states


def _number(raw: str | None, default: float = 0.0) -> float:
    """A room field as room.lua reads it: absent, not a number, negative or infinite is
    the default (a hand edit must not break the metrics)."""
    try:
        value = float(raw) if raw is not None else default
    except ValueError:
        return default
    return value if math.isfinite(value) and value >= 0 else default


def status(client: Client, product: int) -> dict[str, Any]:
    (state,) = read_states(client, [product])
    answer: dict[str, Any] = {"product_id": product, "room": "on" if state.on else "off"}
    if state.on:
        answer.update(
            mode=state.mode,
            admit_per_s=state.rate,
            rate="auto" if state.auto_target_ms else "fixed",
            pass_ttl_s=state.pass_ttl_s,
            places=state.places,
            admitted=state.admitted,
            waiting=state.waiting,
        )
        if state.auto_target_ms:
            answer["auto_target_ms"] = state.auto_target_ms
    return answer
