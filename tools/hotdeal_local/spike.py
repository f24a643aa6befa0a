"""`make bench-spike`: the opening second as it comes (issue 21).

`buyers` buyers, each with a token of its own, arrive evenly over `seconds` seconds
centred on the opening of an event of `stock` units, against order-redis as `make up`
runs it (its front, the default workers, a writer, Redis with appendfsync always). Each
run once with the waiting room on (fifo, `rate` places a second) and once off, in
alternating order over `rounds`:
- room off: a buyer orders (with an Idempotency-Key) and retries while the answer is
  not final (409 not_open before the opening, 503): the workshop's crowd;
- room on: a buyer joins, polls as Retry-After says, and orders with its pass once
  admitted; sold out ends its wait.
Reported: 5xx answers (must be 0), units sold (must be the stock), the latency of the
orders that sold (p50/p99), in first-come mode how far the line departs from the order
buyers arrived in (share of pairs out of order, and of buyers more than 1% of the crowd
away from their arrival rank), and the time from the last unit sold to the last waiting
buyer knowing it is sold out.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import redis

from hotdeal.model import keys
from hotdeal_local import auth
from hotdeal_local.servers import free_port, ops
from hotdeal_local.stack import LocalStack, running

PRODUCT = 1
NOT_FINAL = (409, 503)  # 409 here: not_open or in_progress (sold_out is final)


@dataclass
class Buyer:
    name: str
    arrive_s: float  # offset from the start
    sent: float = 0.0  # monotonic, of its first request
    answers: list[int] = field(default_factory=list)
    sold_at: float | None = None  # monotonic, of the 201
    order_ms: float | None = None  # the order that sold: request to answer
    knew_sold_out: float | None = None  # monotonic


async def _call(
    session: aiohttp.ClientSession, buyer: Buyer, method: str, url: str, **kw: Any
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with session.request(method, url, **kw) as response:
        buyer.answers.append(response.status)
        try:
            body = await response.json(content_type=None)
        except (json.JSONDecodeError, aiohttp.ContentTypeError):
            body = {}
        return response.status, body if isinstance(body, dict) else {}, dict(response.headers)


async def _order(
    session: aiohttp.ClientSession, buyer: Buyer, base: str, headers: dict[str, str]
) -> None:
    """Order until the answer is final: 201, sold out, or anything else but a retry."""
    key = {"Idempotency-Key": uuid.uuid4().hex}
    while True:
        began = time.monotonic()
        status, body, answer = await _call(
            session, buyer, "POST", f"{base}/v1/orders",
            json={"product_id": PRODUCT, "quantity": 1}, headers={**headers, **key},
        )  # fmt: skip
        if status == 201:
            buyer.sold_at = time.monotonic()
            buyer.order_ms = (buyer.sold_at - began) * 1000
            return
        if body.get("error") == "sold_out":
            buyer.knew_sold_out = time.monotonic()
            return
        if status not in NOT_FINAL or body.get("error") == "limit_exceeded":
            return
        if body.get("error") == "not_open":  # a game client counts down to the opening
            opens = datetime.fromisoformat(body["opens_at"]).timestamp()
            await asyncio.sleep(max(0.0, opens - time.time()))
        else:
            await asyncio.sleep(float(answer.get("Retry-After", "1")))


async def _through_the_room(
    session: aiohttp.ClientSession, buyer: Buyer, base: str, headers: dict[str, str]
) -> None:
    status, body, answer = await _call(
        session, buyer, "POST", f"{base}/v1/queue", json={"product_id": PRODUCT}, headers=headers
    )
    ticket = body.get("ticket")
    while status == 200 and body.get("state") == "waiting":
        await asyncio.sleep(float(answer.get("Retry-After", "1")))
        status, body, answer = await _call(
            session, buyer, "GET", f"{base}/v1/queue",
            headers={**headers, "Hotdeal-Ticket": ticket},
        )  # fmt: skip
    if body.get("state") == "admitted":
        await _order(session, buyer, base, {**headers, "Hotdeal-Pass": body["pass"]})
    elif body.get("state") == "sold_out":
        buyer.knew_sold_out = time.monotonic()


async def _crowd(base: str, buyers: list[Buyer], tokens: dict[str, str], room: bool) -> float:
    """Every buyer's visit; returns the monotonic start."""
    connector = aiohttp.TCPConnector(limit=2000, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.monotonic()

        async def visit(buyer: Buyer) -> None:
            await asyncio.sleep(max(0.0, start + buyer.arrive_s - time.monotonic()))
            buyer.sent = time.monotonic()
            headers = {"Authorization": f"Bearer {tokens[buyer.name]}"}
            try:
                if room:
                    await _through_the_room(session, buyer, base, headers)
                else:
                    await _order(session, buyer, base, headers)
            except (TimeoutError, aiohttp.ClientError):
                buyer.answers.append(0)  # no answer at all

        await asyncio.gather(*(visit(b) for b in buyers))
    return start


def _out_of_order(arrival: list[str], line: list[str]) -> tuple[float, float]:
    """Share of pairs the line orders otherwise than they arrived (Kendall's distance),
    and share of buyers placed more than 1% of the crowd from their arrival rank."""
    rank = {name: n for n, name in enumerate(arrival)}
    placed = [rank[name] for name in line if name in rank]
    n = len(placed)
    if n < 2:
        return 0.0, 0.0

    def inversions(items: list[int]) -> int:  # merge sort
        if len(items) < 2:
            return 0
        mid = len(items) // 2
        left, right = items[:mid], items[mid:]
        count = inversions(left) + inversions(right)
        merged, i, j = [], 0, 0
        while i < len(left) and j < len(right):
            if left[i] <= right[j]:
                merged.append(left[i])
                i += 1
            else:
                merged.append(right[j])
                count += len(left) - i
                j += 1
        items[:] = merged + left[i:] + right[j:]
        return count

    far = sum(1 for place, r in enumerate(placed) if abs(place - r) > n / 100)
    pairs = inversions(list(placed))
    return pairs / (n * (n - 1) / 2), far / n


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 1) if ordered else 0.0


def one_run(
    stack: LocalStack,
    *,
    room: bool,
    buyers: int,
    seconds: float,
    stock: int,
    rate: float,
    auto_target_ms: int = 0,
) -> dict[str, Any]:
    """`auto_target_ms`: the room's automatic rate, from `rate` (0: fixed at `rate`)."""
    opens = datetime.now(UTC) + timedelta(seconds=3 + seconds / 2)
    ops(stack.env, "reset", "--discard-orders", "--stock", str(stock), "--opens-at",
        opens.isoformat())  # fmt: skip
    if room:
        auto = ["--auto-target-ms", str(auto_target_ms)] if auto_target_ms else []
        ops(stack.env, "room", "--product", str(PRODUCT), "--rate", str(rate), *auto)
    port = free_port()
    proc = stack.start_service("order-redis", port, front=True)
    crowd = [Buyer(f"spike-{n}", 3 + seconds * n / buyers) for n in range(buyers)]
    tokens = {b.name: auth.token(b.name) for b in crowd}
    try:
        start = asyncio.run(_crowd(f"http://127.0.0.1:{port}", crowd, tokens, room))
        client = redis.Redis.from_url(stack.env["HOTDEAL_REDIS_URL"], decode_responses=True)
        line = client.zrange(keys.room_line(PRODUCT), 0, -1) if room else []
        rate_end = float(client.hget(keys.room(PRODUCT), "rate") or 0) if room else 0.0
    finally:
        stack.stop_process(proc)
    done = ops(stack.env, "reconcile", "--product", str(PRODUCT), "--wait", check=False)
    answers = [a for b in crowd for a in b.answers]
    sold = [b for b in crowd if b.sold_at is not None]
    last_sale = max((b.sold_at or 0 for b in sold), default=start)
    # Those already there when the last unit went (a later one learns at once).
    knew = [b.knew_sold_out for b in crowd if b.knew_sold_out and b.sent <= last_sale]
    result: dict[str, Any] = {
        "room": room,
        "requests": len(answers),
        "5xx": sum(1 for a in answers if a >= 500),
        "no_answer": sum(1 for a in answers if a == 0),
        "units_sold": len(sold),
        "reconcile_ok": done.returncode == 0,
        "order_ms_p50": _pct([b.order_ms for b in sold if b.order_ms is not None], 0.5),
        "order_ms_p99": _pct([b.order_ms for b in sold if b.order_ms is not None], 0.99),
        "last_buyer_knew_s": round(max(knew) - last_sale, 1) if knew else None,
    }
    if room:
        arrival = [b.name for b in sorted(crowd, key=lambda b: b.sent)]
        pairs, far = _out_of_order(arrival, line)
        result.update(
            out_of_order_pairs=round(pairs, 5), placed_far=round(far, 5), rate_end=rate_end
        )
    return result


def run_spike(
    *,
    rounds: int,
    buyers: int,
    seconds: float,
    stock: int,
    rate: float,
    workdir: Path,
    auto_target_ms: int = 0,
) -> dict[str, Any]:
    """Room off and on at `rate`, and with `auto_target_ms` the room's automatic rate
    from `rate` too, in rounds that rotate which goes first."""
    workdir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(workdir=workdir)
    variants = {"room off": (False, 0), "room on": (True, 0)}
    if auto_target_ms:
        variants["room auto"] = (True, auto_target_ms)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    with running(stack):
        stack.start_stores()
        ops(stack.env, "reset", "--discard-orders", "--stock", str(stock))
        writer = stack.start_writer()
        names = list(variants)
        for round_no in range(1, rounds + 1):
            shift = (round_no - 1) % len(names)
            for name in names[shift:] + names[:shift]:
                room, target = variants[name]
                run = one_run(
                    stack, room=room, buyers=buyers, seconds=seconds, stock=stock, rate=rate,
                    auto_target_ms=target,
                )  # fmt: skip
                runs[name].append(run)
                print(f"  round {round_no} {name}: {run}", flush=True)
        stack.stop_process(writer)
    summary = {
        name: {
            key: statistics.median(r[key] for r in found)
            for key in found[0]
            if isinstance(found[0][key], int | float) and not isinstance(found[0][key], bool)
        }
        for name, found in runs.items()
    }
    return {
        "summary": summary,
        "runs": runs,
        "buyers": buyers,
        "seconds": seconds,
        "stock": stock,
        "rate": rate,
        "auto_target_ms": auto_target_ms,
    }
