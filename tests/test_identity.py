"""Buyer identity (hotdeal.identity) with real keys of every accepted type, real tokens
(PyJWT) and a real JWKS endpoint over HTTP: each bad token is refused with its reason,
keys rotate without a restart, a flood of unknown kids costs one fetch, an outage of
the endpoint keeps the cached keys working."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from prometheus_client import REGISTRY

from hotdeal.config import ConfigError, Settings
from hotdeal.errors import ApiError, Degraded, NotReady
from hotdeal.identity import MAX_TOKEN_BYTES, JwksKeys, Refused, Verifier, verifier_from_settings
from hotdeal_ops.tokens import Signer, public_pem

from .events import wait_until
from .helpers import JwksServer

ISS, AUD = "https://id.example", "hotdeal"
BASE = Settings(auth_issuer=ISS, auth_audience=AUD, auth_leeway_s=30)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims: dict, alg: str = "none") -> str:
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}."


def claims(**extra) -> dict:
    now = int(time.time())
    return {"iss": ISS, "aud": AUD, "sub": "player-1", "iat": now, "exp": now + 600, **extra}


def bearer(token: str) -> str:
    return f"Bearer {token}"


@pytest.fixture
def es256() -> Signer:
    return Signer(ec.generate_private_key(ec.SECP256R1()), ISS, AUD, kid="k1")


@pytest.fixture
def verifier(es256) -> Verifier:
    return verifier_from_settings(
        Settings(**{**BASE.__dict__, "auth_public_key": public_pem(es256.key)}), "test"
    )


def refused(verifier, authorization) -> ApiError:
    with pytest.raises(ApiError) as err:
        verifier.caller(authorization)
    return err.value


def refusals(reason: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "hotdeal_auth_refused_total", {"service": "test", "reason": reason}
        )
        or 0.0
    )


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP256R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ed25519.Ed25519PrivateKey.generate(),
    ],
    ids=["ES256", "RS256", "EdDSA"],
)
def test_each_key_type_verifies_its_tokens(key):
    signer = Signer(key, ISS, AUD)
    v = verifier_from_settings(
        Settings(**{**BASE.__dict__, "auth_public_key": public_pem(key)}), "test"
    )
    caller = v.caller(bearer(signer.token("player-9")))
    assert (caller.subject, caller.acts_for_buyers) == ("player-9", False)


def test_hs256_with_a_mounted_secret():
    secret = "s" * 32
    v = verifier_from_settings(Settings(**{**BASE.__dict__, "auth_hs256_secret": secret}), "test")
    assert v.caller(bearer(Signer(secret.encode(), ISS, AUD).token("p"))).subject == "p"
    with pytest.raises(ConfigError, match="32 bytes"):
        verifier_from_settings(Settings(**{**BASE.__dict__, "auth_hs256_secret": "short"}), "t")


def test_one_key_source_and_the_claims_to_check_are_required(es256):
    with pytest.raises(ConfigError, match="exactly one"):
        verifier_from_settings(BASE, "test")
    with pytest.raises(ConfigError, match="exactly one"):
        verifier_from_settings(
            Settings(
                **{
                    **BASE.__dict__,
                    "auth_public_key": public_pem(es256.key),
                    "auth_hs256_secret": "s" * 32,
                }
            ),
            "test",
        )
    with pytest.raises(ConfigError, match="ISSUER"):
        verifier_from_settings(Settings(auth_public_key=public_pem(es256.key)), "test")


def test_missing_token_gets_the_bare_challenge(verifier):
    for header in (None, "", "Bearer", "Bearer ", "Basic dTpw"):
        err = refused(verifier, header)
        assert (err.status, err.code) == (401, "unauthorized")
        # RFC 6750 3.1: no error code when the request carried no token.
        assert err.headers["WWW-Authenticate"] == 'Bearer realm="hotdeal"'


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda s: "not-a-jwt", "malformed"),
        (lambda s: "a.b.c", "malformed"),
        (lambda s: s.token("p", exp=int(time.time()) - 120), "expired"),
        (lambda s: s.token("p", nbf=int(time.time()) + 120), "expired"),
        (lambda s: s.token("p", aud="another-game"), "claims"),
        (lambda s: s.token("p", iss="https://evil.example"), "claims"),
        (lambda s: jwt.encode({"iss": ISS, "aud": AUD, "sub": "p"}, s.key, "ES256"), "claims"),
        (lambda s: unsigned(claims()), "algorithm"),
        (lambda s: unsigned(claims(), alg="None"), "algorithm"),
        (lambda s: s.token("p")[:-6] + "AAAAAA", "signature"),
        (lambda s: Signer.generate(ISS, AUD).token("p"), "signature"),
        (lambda s: s.token("a b"), "buyer"),
        (lambda s: s.token("x" * 65), "buyer"),
        (lambda s: "e" * (MAX_TOKEN_BYTES + 1), "too_large"),
    ],
    ids=[
        "garbage", "three-dots", "expired", "not-yet-valid", "wrong-audience", "wrong-issuer",
        "no-exp", "alg-none", "alg-None", "tampered", "other-key", "bad-subject",
        "long-subject", "oversized",
    ],
)  # fmt: skip
def test_bad_tokens_are_refused_with_their_reason(verifier, es256, make, reason):
    before = refusals(reason)
    err = refused(verifier, bearer(make(es256)))
    assert (err.status, err.code) == (401, "invalid_token")
    assert err.headers["WWW-Authenticate"].startswith(
        'Bearer realm="hotdeal", error="invalid_token"'
    )
    assert isinstance(err, Refused) and err.reason == reason
    assert refusals(reason) == before + 1


def test_odd_dates_are_refused_or_bounded_never_a_500(verifier, es256):
    # A NumericDate is a JSON number: PyJWT also took "1796..." (helper's attack).
    err = refused(verifier, bearer(es256.token("p", exp=str(int(time.time()) + 600))))
    assert (err.status, err.reason) == (401, "claims")
    assert refused(verifier, bearer(es256.token("p", exp=True))).status == 401
    # exp = 10**400 overflowed float(): a 500. It is a signed token: valid, cached an hour.
    assert verifier.caller(bearer(es256.token("p", exp=10**400))).subject == "p"


def test_an_hs256_token_signed_with_the_public_key_is_refused(verifier, es256):
    # The classic confusion: the verifier's public key used as an HMAC secret.
    secret = public_pem(es256.key).encode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims()).encode())
    sig = b64(hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
    err = refused(verifier, bearer(f"{head}.{body}.{sig}"))
    assert (err.status, err.reason) == (401, "algorithm")


def test_the_leeway_is_small_and_bounded(verifier, es256, monkeypatch):
    # 20 s past exp is within the 30 s leeway; 40 s is not.
    assert verifier.caller(bearer(es256.token("p", exp=int(time.time()) - 20))).subject == "p"
    assert refused(verifier, bearer(es256.token("p", exp=int(time.time()) - 40))).status == 401
    monkeypatch.setenv("HOTDEAL_AUTH_LEEWAY_S", "301")
    with pytest.raises(ConfigError, match="<= 300"):
        Settings.from_env()


def test_a_verified_token_is_refused_once_it_expires(verifier, es256):
    token = es256.token("p", exp=int(time.time()) - 29)  # 1 s left of the leeway
    assert verifier.caller(bearer(token)).subject == "p"
    time.sleep(1.2)  # the cache must not outlive the token (a wall-clock bound, not sync)
    assert refused(verifier, bearer(token)).reason == "expired"


def test_scope_lets_a_service_act_for_buyers(verifier, es256):
    service = verifier.caller(bearer(es256.token("game-server", scope="hotdeal:act_for_buyer")))
    assert service.acts_for_buyers and service.buyer("player-3") == "player-3"
    listed = verifier.caller(bearer(es256.token("game", scp=["hotdeal:act_for_buyer"])))
    assert listed.acts_for_buyers
    player = verifier.caller(bearer(es256.token("player-1", scope="profile hotdeal:orders")))
    assert not player.acts_for_buyers and player.buyer(None) == "player-1"
    with pytest.raises(ApiError) as err:
        player.buyer("player-3")
    assert (err.value.status, err.value.code) == (403, "insufficient_scope")
    assert not player.owns("player-3") and player.owns("player-1")


# -- a JWKS endpoint --------------------------------------------------------------------


@pytest.fixture
def idp() -> Iterator[JwksServer]:
    server = JwksServer({"k1": ec.generate_private_key(ec.SECP256R1())})
    yield server
    server.stop()


def jwks_verifier(idp: JwksServer, refresh_s: int = 1) -> Verifier:
    settings = Settings(
        **{**BASE.__dict__, "auth_jwks_url": idp.url, "auth_jwks_refresh_s": refresh_s}
    )
    v = verifier_from_settings(settings, "test")
    v.warm_up()
    return v


def signer_of(idp: JwksServer, kid: str) -> Signer:
    return Signer(idp.keys[kid], ISS, AUD, kid=kid)


def test_rotation_a_new_kid_appears_the_old_stays_until_removed(idp):
    v = jwks_verifier(idp)
    old = signer_of(idp, "k1").token("p")
    assert v.caller(bearer(old)).subject == "p"
    idp.keys["k2"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    time.sleep(1.1)  # past the refresh interval (a rate bound, not synchronisation)
    new = signer_of(idp, "k2").token("q")
    assert v.caller(bearer(new)).subject == "q"  # fetched on the unknown kid
    assert v.caller(bearer(old)).subject == "p"  # both valid during the overlap
    del idp.keys["k1"]
    time.sleep(1.1)
    v.keys.refresh()
    assert refused(v, bearer(old)).reason == "unknown_key"  # the cache forgot it too
    assert v.caller(bearer(new)).subject == "q"


def test_a_flood_of_unknown_kids_costs_one_fetch_per_interval(idp):
    v = jwks_verifier(idp, refresh_s=30)
    fetched = idp.fetches
    forger = Signer(ec.generate_private_key(ec.SECP256R1()), ISS, AUD)
    for _ in range(200):
        forger.kid = uuid.uuid4().hex
        assert refused(v, bearer(forger.token("p", jti=forger.kid))).reason == "unknown_key"
    assert idp.fetches - fetched <= 1


def test_a_symmetric_key_in_the_set_is_never_used(idp):
    # A JWKS that (wrongly) publishes an HMAC key: a token signed with it is refused.
    secret = b"k" * 32
    idp.extra.append({"kty": "oct", "k": b64(secret), "kid": "hs", "alg": "HS256"})
    v = jwks_verifier(idp)
    token = jwt.encode(claims(), secret, "HS256", headers={"kid": "hs"})
    assert refused(v, bearer(token)).reason == "unknown_key"
    assert v.caller(bearer(signer_of(idp, "k1").token("p"))).subject == "p"


def _degraded(keys: JwksKeys) -> bool:
    try:
        keys.check()
    except Degraded:
        return True
    return False


def test_an_outage_keeps_the_cached_keys_and_says_so(idp):
    v = jwks_verifier(idp)
    token = signer_of(idp, "k1").token("p")
    failed = (
        REGISTRY.get_sample_value(
            "hotdeal_auth_jwks_refreshes_total", {"service": "test", "result": "failed"}
        )
        or 0.0
    )
    idp.down = True
    keys: JwksKeys = v.keys
    wait_until(lambda: _degraded(keys), "readiness to say the JWKS is unreachable")
    assert v.caller(bearer(signer_of(idp, "k1").token("p2"))).subject == "p2"
    assert v.caller(bearer(token)).subject == "p"
    assert (
        REGISTRY.get_sample_value(
            "hotdeal_auth_jwks_refreshes_total", {"service": "test", "result": "failed"}
        )
        >= failed + 1
    )
    # A new kid while the endpoint is down: we can't know, so 503 (not "your token is bad").
    other = Signer(ec.generate_private_key(ec.SECP256R1()), ISS, AUD, kid="k9")
    time.sleep(1.1)  # past the refresh interval (a rate bound, not synchronisation)
    assert refused(v, bearer(other.token("p"))).status == 503
    idp.down = False
    wait_until(lambda: not _degraded(keys), "readiness to be whole again")


def _returns(call, within_s: float = 15):
    """`call()` in a thread: it must return (a hang would hold a worker for good)."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(_outcome(call)), daemon=True)
    thread.start()
    thread.join(within_s)
    assert not thread.is_alive(), "it hung"
    return result[0]


def _outcome(call):
    try:
        return call()
    except ApiError as err:
        return err


@pytest.mark.parametrize("mode", ["trickle", "hang", "huge", "slow-headers", "redirect"])
def test_an_endpoint_that_misbehaves_holds_no_request_and_no_probe(idp, mode):
    """A JWKS answering a byte a second held the lock of every fetch: requests with an
    unknown kid and the readiness probe hung, and each stale-key request left a thread
    waiting on it (helper's attack). Now one refresher per process fetches, bounded in
    time and size, and callers wait for it a bounded time."""
    v = jwks_verifier(idp)
    keys: JwksKeys = v.keys
    keys.max_age_s = 0  # every request finds the keys stale and asks for a refresh
    known = signer_of(idp, "k1")
    before = {t for t in threading.enumerate() if t.name.startswith("jwks")}
    idp.mode = mode
    for i in range(5):
        stranger = Signer(ec.generate_private_key(ec.SECP256R1()), ISS, AUD, kid=f"x{i}")
        answer = _returns(lambda s=stranger: v.caller(bearer(s.token("p"))))
        assert isinstance(answer, ApiError) and answer.status in (401, 503), answer
        keys._asked_at = float("-inf")  # let the next one ask again
    for i in range(50):
        assert _returns(lambda i=i: v.caller(bearer(known.token(f"k{i}")))).subject == f"k{i}"
    # The refresher, at most one fetch (stuck or not) and its deadline timer: no thread
    # per request (the endpoint's own handler threads run in this process too).
    ours = {t for t in threading.enumerate() if t.name.startswith("jwks")} - before
    timers = [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
    assert len(ours) <= 1 and len(timers) <= 1, (ours, timers)

    def probe() -> bool:
        with contextlib.suppress(Degraded, NotReady):  # ready or not: it must answer
            keys.check()
        return True

    assert _returns(probe)
    # Each is an outage the probe reports, the cached keys kept (the headers sent a
    # byte a second, and a redirect's body read whole, once hid it: helper's attack).
    failure = {
        "trickle": ("JwksTimeout", "ProtocolError", "ChunkedEncodingError"),
        "hang": ("JwksTimeout", "ReadTimeout", "ConnectionError"),
        "huge": ("JwksTooLarge",),
        "slow-headers": ("JwksTimeout",),
        "redirect": ("JwksRefused",),
    }[mode]
    keys._asked_at = float("-inf")
    keys.refresh()
    wait_until(lambda: keys._failed in failure, f"the outage seen as one of {failure}")
    assert _degraded(keys)


def test_no_keys_at_all_is_not_ready_and_answers_503(idp):
    idp.down = True
    v = jwks_verifier(idp)
    with pytest.raises(NotReady, match="no signing keys"):
        v.keys.check()
    assert refused(v, bearer(signer_of(idp, "k1").token("p"))).status == 503
