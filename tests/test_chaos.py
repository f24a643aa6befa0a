"""A short round of `make chaos` (the fault-injection checker): every fault kind once.
With the default durability it must find nothing; with `none` it must find the lost
acknowledged orders a failover to a lagging replica causes (the checker checks)."""

from __future__ import annotations

import threading

from hotdeal_local.chaos import FAULTS, run_chaos

from .helpers import workdir


def test_every_fault_once_breaks_no_promise():
    result = run_chaos(
        seed=7, rounds=len(FAULTS), round_s=2, durability="replica", workdir=workdir("chaos")
    )
    assert result["violations"] == [], result
    assert result["faults"] == dict.fromkeys(FAULTS, 1)
    assert result["acknowledged"] > 100
    # reset_mid_drain started one more, sold_out_and_back two, reservations two
    assert result["events"] == 6


def test_the_checker_finds_what_durability_none_loses():
    result = run_chaos(
        seed=7,
        rounds=2,
        round_s=3,
        durability="none",
        workdir=workdir("chaos-none"),
        faults=("redis_failover", "replica_lag"),
    )
    assert not result["ok"]
    assert any("not persisted" in v for v in result["violations"]), result["violations"][:5]


def _answering(status: int, body: dict):
    """A local HTTP server that answers every POST with `status` and `body`."""
    import json as json_lib
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            data = json_lib.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_each_checker_rule_fires():
    """The checker is the gate of `make chaos`: each of its rules is shown to fail on the
    defect it names (a rule that can't fail would let that defect through)."""
    import copy

    import requests
    from sqlalchemy import insert, select

    from hotdeal.db import make_engine
    from hotdeal.model import keys
    from hotdeal.schema import order_history
    from hotdeal_local.chaos import Answer, Chaos, Settle

    chaos = Chaos(seed=1, rounds=0, round_s=2, durability="replica", workdir=workdir("rules"))
    chaos.settle_s = 1  # a tampered run never balances: no waiting for it to
    chaos.start()
    session = requests.Session()
    try:
        for i in range(3):
            answer = chaos._order(session, chaos.urls[0], f"rule-{i}", 1, f"k{i}", 5)
            assert answer.status == 201, answer
        chaos.check()
        assert chaos.violations == []  # the honest run is clean
        honest = list(chaos.answers)

        def fires(expected: str, tamper) -> None:
            chaos.violations, chaos.answers, chaos.checked_upto = [], copy.copy(honest), 0
            tamper()
            chaos.check()
            assert any(expected in v for v in chaos.violations), (expected, chaos.violations)

        a = honest[0]
        fires(
            "not persisted",
            lambda: chaos.answers.append(Answer(0, "x", 1, None, 201, None, "1-nope")),
        )
        fires(
            "replays of",
            lambda: chaos.answers.append(Answer(0, a.user, 1, a.key, 201, None, "1-other")),
        )
        fires("persisted without a 201", lambda: chaos.answers.pop(0))
        fires("units persisted > stock", lambda: setattr(chaos, "stock", 2))
        chaos.stock = 200_000
        fires("the poisoned order was persisted", lambda: setattr(chaos, "poison", a.order_id))
        chaos.poison = None
        # The payer's answers: a 200 confirm of an order the database does not hold
        # confirmed, and one hold told two states.
        told = Settle(0, a.order_id, "confirm", 200, "confirmed")
        fires("the database holds None", lambda: setattr(chaos, "settles", [told]))
        late = Settle(0, a.order_id, "confirm", 409, "expired")
        fires("was told ['confirmed', 'expired']", lambda: setattr(chaos, "settles", [told, late]))
        chaos.settles = []

        def dead_letter() -> None:
            books = chaos.redis().hgetall(keys.books(1))
            chaos.redis().xadd(
                keys.dead_letter(1),
                {"order_id": "1-good", "generation": books["generation"]},
            )

        fires("was dead-lettered", dead_letter)
        chaos.redis().delete(keys.dead_letter(1))

        def sold_twice() -> None:
            engine = make_engine(chaos.env["HOTDEAL_DATABASE_URL"], pool_size=1)
            with engine.begin() as conn:
                row = dict(
                    conn.execute(
                        select(order_history).where(order_history.c.order_id == a.order_id)
                    )
                    .one()
                    ._mapping
                )
                row.pop("id", None)
                conn.execute(insert(order_history).values({**row, "order_id": "1-again"}))
            engine.dispose()
            chaos.answers.append(Answer(0, a.user, 1, None, None))  # an unknown outcome

        fires("takes stored twice", sold_twice)
        assert any(v.startswith("reconcile: ") for v in chaos.violations)  # reconcile too

        # The answers themselves: an undocumented 5xx, a 404 for the known product.
        for status, body, expected in (
            (500, {"error": "error"}, "not a documented answer"),
            (503, {"error": "surprise"}, "not a documented answer"),
            (404, {"error": "unknown_product"}, "404 unknown_product"),
        ):
            server, url = _answering(status, body)
            chaos.violations = []
            chaos._order(session, url, "u", 1, None, 5)
            server.shutdown()
            assert any(expected in v for v in chaos.violations), (status, chaos.violations)

        # Slow clients straight at gunicorn's sync workers (no front) stop the sale.
        chaos.violations, chaos.urls[:2] = [], chaos.direct[:2]
        chaos.load_on.set()
        buyers = [threading.Thread(target=chaos.buyer, args=(i,), daemon=True) for i in range(4)]
        for t in buyers:
            t.start()
        chaos.fault_slow_clients()
        assert any("slow clients stopped the sale" in v for v in chaos.violations)
    finally:
        chaos.stop()
