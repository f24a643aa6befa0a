"""Buyers are who their token says, on both services over real HTTP: a bad token sells
nothing and reads nothing, a buyer sees only its own orders, a service with the
act-for-buyer scope acts for players, and an identity provider whose JWKS endpoint goes
down leaves the cached keys working (readiness says so)."""

from __future__ import annotations

import time

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from hotdeal.model import keys
from hotdeal_local import auth
from hotdeal_ops.tokens import Signer

from .events import wait_until
from .helpers import JwksServer, service_running

ACT_FOR = auth.ACT_FOR
ORDER = {"product_id": 1, "quantity": 1}


@pytest.fixture(params=["legacy", "order_redis"])
def service(request, writer_proc):
    return request.getfixturevalue(request.param)


def stock(service, engine, rclient) -> int:
    from sqlalchemy import select

    from hotdeal.schema import hotdeal_list

    if service.name == "legacy":
        with engine.connect() as conn:
            one = hotdeal_list.c.prod_id == 1
            return conn.execute(select(hotdeal_list.c.quantity).where(one)).scalar_one()
    return int(rclient.hget(keys.books(1), "quantity"))


BAD_TOKENS = {
    "missing": {"Authorization": None},  # requests sends no header for None
    "not-bearer": {"Authorization": "Basic dTpw"},
    "garbage": {"Authorization": "Bearer garbage"},
    "expired": {"Authorization": f"Bearer {auth.signer().token('p', exp=int(time.time()) - 600)}"},
    "wrong-audience": {"Authorization": f"Bearer {auth.signer().token('p', aud='other')}"},
    "forged": auth.forged_bearer("p"),
    "oversized": {"Authorization": "Bearer " + "a" * 5000},
}


@pytest.mark.parametrize("case", BAD_TOKENS)
def test_a_bad_token_sells_nothing_and_says_why(service, reset, engine, rclient, case):
    reset(5)
    r = service.order({**ORDER, "user_id": "p"}, headers=BAD_TOKENS[case])
    assert r.status_code == 401, r.text
    assert r.headers["Content-Type"] == "application/json"
    assert r.json()["error"] == (
        "unauthorized" if case in ("missing", "not-bearer") else "invalid_token"
    )
    assert r.headers["WWW-Authenticate"].startswith('Bearer realm="hotdeal"')
    assert stock(service, engine, rclient) == 5
    # Lookups too: nothing read without a good token.
    for path in ("/v1/orders?product_id=1", "/v1/orders/1-abc"):
        got = requests.get(f"{service.url}{path}", headers=BAD_TOKENS[case], timeout=10)
        assert got.status_code == 401


def test_the_buyer_is_the_token_not_the_body(service, reset, engine, rclient):
    reset(5)
    r = service.order(ORDER, user="alice")  # the body names nobody: the token's buyer
    assert r.status_code == 201, r.text
    mine = service.get("/v1/orders?product_id=1", user="alice").json()["orders"]
    assert [o["user_id"] for o in mine] == ["alice"]
    # A body naming someone else is refused (403, insufficient_scope): nothing sold.
    r = service.order({**ORDER, "user_id": "bob"}, user="alice")
    assert (r.status_code, r.json()["error"]) == (403, "insufficient_scope")
    assert f'scope="{ACT_FOR}"' in r.headers["WWW-Authenticate"]
    assert stock(service, engine, rclient) == 4


def test_lookups_answer_the_callers_own_orders_only(service, reset):
    reset(5)
    order_id = service.order(ORDER, user="carol").json()["order_id"]
    assert service.get(f"/v1/orders/{order_id}", user="carol").status_code == 200
    # Someone else's order id is no order of theirs: 404, as an unknown one.
    other = service.get(f"/v1/orders/{order_id}", user="mallory")
    assert (other.status_code, other.json()["error"]) == (404, "unknown_order")
    listed = service.get("/v1/orders?product_id=1&user_id=carol", user="mallory")
    assert (listed.status_code, listed.json()["error"]) == (403, "insufficient_scope")
    assert service.get("/v1/orders?product_id=1", user="mallory").json()["orders"] == []


def test_a_service_with_the_scope_acts_for_a_player(service, reset):
    reset(5)
    game = auth.bearer("game-server", scope=ACT_FOR)
    r = service.order({**ORDER, "user_id": "dave"}, headers=game)
    assert r.status_code == 201, r.text
    order_id = r.json()["order_id"]
    assert service.get(f"/v1/orders/{order_id}", user="dave").json()["user_id"] == "dave"
    seen = requests.get(f"{service.url}/v1/orders/{order_id}", headers=game, timeout=10)
    assert seen.json()["user_id"] == "dave"
    # The per-user limit is the player's, whoever places the order (order-redis: 1).
    if service.name == "order-redis":
        again = service.order({**ORDER, "user_id": "dave"}, headers=game)
        assert (again.status_code, again.json()["error"]) == (409, "limit_exceeded")


def test_refusals_are_counted_by_reason(order_redis):
    before = order_redis.admin("/metrics").text
    order_redis.order(ORDER, headers={"Authorization": "Bearer garbage"})
    after = order_redis.admin("/metrics").text

    def count(text: str) -> float:
        for line in text.splitlines():
            if line.startswith("hotdeal_auth_refused_total{") and 'reason="malformed"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    assert count(after) == count(before) + 1


def test_the_workshop_routes_are_off_unless_asked_for(stack_env, logs):
    with service_running(
        "order-redis", {**stack_env, "HOTDEAL_WORKSHOP_ROUTES": "false"}, logs
    ) as svc:
        assert svc.get("/order-redis").status_code == 404
        assert "/order-redis" not in svc.get("/openapi.json").json()["paths"]


def test_a_jwks_outage_keeps_buyers_buying(stack_env, logs, reset, writer_proc):
    idp = JwksServer({"idp-1": ec.generate_private_key(ec.SECP256R1())})
    signer = Signer(idp.keys["idp-1"], "https://id.example", "hotdeal", kid="idp-1")
    env = {
        **stack_env,
        "HOTDEAL_AUTH_PUBLIC_KEY": "",
        "HOTDEAL_AUTH_JWKS_URL": idp.url,
        "HOTDEAL_AUTH_ISSUER": signer.issuer,
        "HOTDEAL_AUTH_JWKS_REFRESH_S": "1",
    }
    try:
        with service_running("order-redis", env, logs) as svc:
            reset(10)

            def buy(user: str) -> int:
                headers = {"Authorization": f"Bearer {signer.token(user)}"}
                return svc.order(ORDER, headers=headers).status_code

            assert buy("e1") == 201
            wait_until(lambda: svc.admin("/readyz").json() == {"status": "ok"}, "ready")
            idp.down = True
            ready = wait_until(
                lambda: (r := svc.admin("/readyz")).json().get("degraded") and r,
                "readiness to say the JWKS is unreachable",
            )
            assert ready.status_code == 200
            assert "JWKS unreachable" in ready.json()["degraded"]["auth"]
            assert buy("e2") == 201  # the cached key still verifies
            idp.down = False
            wait_until(lambda: svc.admin("/readyz").json() == {"status": "ok"}, "whole again")
    finally:
        idp.stop()
