"""Who is buying: the subject of a JWT the game's identity provider signed, verified with
PyJWT (RFC 7519, RFC 8725's advice), never a string in the body.

- Keys: a JWKS URL (cached; refetched at most once per `jwks_refresh_s` when a token
  names an unknown `kid`, and in the background once older than `jwks_max_age_s`), a
  mounted public key or certificate, or an HS256 secret for local use. One source: a
  verifier that took both a public key and a secret could be fooled by an HS256 token
  signed with the public key.
- Each key verifies only the algorithms of its type; `none` never.
- exp, iss, aud and the buyer claim are required; exp/nbf/iat get a bounded leeway.
- The buyer is the buyer claim (`sub`). A token whose scope holds `act_for_scope` (the
  game server, the payment callback) may name another buyer in the request.
- Refusals are 401 with an RFC 6750 challenge (403 for a missing scope), counted by
  reason; they never reach a store. Keys that can't be had at all answer 503.
- Verified tokens are kept until they expire (a dict lookup instead of a signature
  check on every retry of the opening second); a changed key set empties the cache.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import requests
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from hotdeal import metrics
from hotdeal.config import ConfigError, Settings
from hotdeal.errors import ApiError, Degraded, NotReady, unavailable
from hotdeal.validation import UserIdError, check_user_id

log = logging.getLogger(__name__)

# A token is ~300-900 bytes; anything near a header's limit is not one of ours.
MAX_TOKEN_BYTES = 4096
MAX_CACHED = 100_000
# A JWKS is a few KiB; a provider answering more is broken (or not the provider).
MAX_JWKS_BYTES = 1 << 20
# A verified token is kept at most this long, whatever its exp says.
MAX_CACHED_S = 3600
REALM = "hotdeal"
# Which algorithms a key of each type may verify (RFC 8725 3.1: the key decides).
ALGORITHMS_OF = {
    rsa.RSAPublicKey: ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    ec.EllipticCurvePublicKey: ("ES256", "ES384", "ES512"),
    ed25519.Ed25519PublicKey: ("EdDSA",),
    bytes: ("HS256",),
}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request. `subject` None: no identity (HOTDEAL_AUTH=off, the workshop's
    trust in the body)."""

    subject: str | None
    acts_for_buyers: bool
    # The scope that lets a caller name another buyer (for the 403's challenge).
    act_for_scope: str = ""

    def buyer(self, named: str | None) -> str:
        """The buyer of this request: the caller, or the buyer it names when it may."""
        if named is None or named == self.subject:
            if self.subject is None:
                raise ApiError(400, "invalid_request", "user_id: required")
            return self.subject
        if not self.acts_for_buyers:
            raise insufficient_scope(self.act_for_scope)
        return named

    def owns(self, user_id: object) -> bool:
        return self.acts_for_buyers or user_id == self.subject


TRUSTING = Caller(None, True)


def _challenge(error: str | None, description: str | None = None, scope: str | None = None):
    parts = [f'realm="{REALM}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return {"WWW-Authenticate": "Bearer " + ", ".join(parts)}


class Refused(ApiError):
    """401 for a token that is missing or not good; `reason` labels the metric."""

    def __init__(self, reason: str, description: str) -> None:
        if reason == "missing":
            super().__init__(401, "unauthorized", description, headers=_challenge(None))
        else:
            super().__init__(
                401, "invalid_token", description, headers=_challenge("invalid_token", description)
            )
        self.reason = reason


def insufficient_scope(scope: str) -> ApiError:
    description = "naming another buyer needs the scope " + scope
    return ApiError(
        403,
        "insufficient_scope",
        description,
        headers=_challenge("insufficient_scope", description, scope),
    )


def load_public_key(pem: str | bytes) -> Any:
    """A PEM public key or certificate (what `helm genCA` gives, and most IdPs publish)."""
    data = pem.encode() if isinstance(pem, str) else pem
    if b"BEGIN CERTIFICATE" in data:
        return x509.load_pem_x509_certificate(data).public_key()
    return load_pem_public_key(data)


def algorithms_of(key: Any) -> tuple[str, ...]:
    for kind, algorithms in ALGORITHMS_OF.items():
        if isinstance(key, kind):
            return algorithms
    raise ConfigError(f"unsupported key type {key.__class__.__name__}")


class StaticKey:
    """One mounted key (or an HS256 secret): it never changes while the process runs."""

    version = 0

    def __init__(self, key: Any) -> None:
        self.key = key
        self.algorithms = algorithms_of(key)

    def check(self) -> None:
        pass


class JwksKeys:
    """The keys of a JWKS URL, by kid. One refresher thread per process fetches them;
    a request or a probe only asks it to and waits a bounded time (`wait_s`), never on
    the fetch itself: an endpoint that trickles, hangs or answers 300 MB holds the
    refresher (at most `timeout_s`, at most MAX_JWKS_BYTES), not the workers. At most
    one fetch per `min_interval_s` however many unknown kids arrive (per process: each
    worker and the admin listener fetch for themselves)."""

    def __init__(
        self,
        url: str,
        *,
        service: str,
        min_interval_s: float,
        max_age_s: float,
        timeout_s: float = 2.0,
    ) -> None:
        self.url = url
        self.min_interval_s = min_interval_s
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self.wait_s = timeout_s + 0.5  # what a request with an unknown kid may wait
        self._keys: dict[str | None, tuple[Any, tuple[str, ...]]] = {}
        self._fetched_at: float | None = None  # monotonic, of the last good fetch
        self._asked_at = float("-inf")
        self._failed: str | None = None
        self._attempts = 0
        self._done = threading.Condition()
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._fetcher: threading.Thread | None = None
        self._refreshes = {
            result: metrics.JWKS_REFRESHES.labels(service, result) for result in ("ok", "failed")
        }
        self.version = 0

    def refresh(self, *, wait: bool = True) -> None:
        """Ask for a fetch unless one was asked for within the interval; `wait`: until
        it is done, at most `wait_s`."""
        with self._done:
            now = time.monotonic()
            if now - self._asked_at < self.min_interval_s:
                return
            self._asked_at = now
            target = self._attempts + 1
            self._start()
            self._wanted.set()
            if wait:
                self._done.wait_for(lambda: self._attempts >= target, timeout=self.wait_s)

    def _start(self) -> None:
        # One refresher per process (gunicorn forks workers: a parent's thread is gone).
        if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="jwks", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            try:
                keys = self._fetch_within_deadline()
            except Exception as exc:  # keep the cached keys: an IdP outage is not ours
                failed = exc.__class__.__name__
                self._refreshes["failed"].inc()
                log.warning("JWKS refresh failed: %s", failed)
                with self._done:
                    self._failed = failed
                    self._attempts += 1
                    self._done.notify_all()
                continue
            self._refreshes["ok"].inc()
            with self._done:
                if keys.keys() != self._keys.keys():
                    self.version += 1
                self._keys = keys
                self._failed = None
                self._fetched_at = time.monotonic()
                self._attempts += 1
                self._done.notify_all()

    def _fetch_within_deadline(self) -> dict[str | None, tuple[Any, tuple[str, ...]]]:
        """The fetch in a thread of its own, given `timeout_s` in all: headers sent a
        byte a second hold only that thread (at most one such at a time: a second
        attempt while it is stuck fails at once, and readiness says so)."""
        if self._fetcher is not None and self._fetcher.is_alive():
            raise JwksTimeout("the previous fetch is still stuck")
        result: list[Any] = []

        def fetch() -> None:
            try:
                result.append(self._fetch())
            except Exception as exc:
                result.append(exc)

        self._fetcher = threading.Thread(target=fetch, name="jwks-fetch", daemon=True)
        self._fetcher.start()
        self._fetcher.join(self.timeout_s + 0.2)
        if not result:
            raise JwksTimeout(f"no whole answer within {self.timeout_s} s")
        if isinstance(result[0], Exception):
            raise result[0]
        return result[0]

    def _fetch(self) -> dict[str | None, tuple[Any, tuple[str, ...]]]:
        timeout = (self.timeout_s, self.timeout_s)
        # No redirects (requests reads a 3xx's body whole, past the cap), no pooled
        # connection (one made before gunicorn forks would be shared by the workers).
        with requests.get(
            self.url, timeout=timeout, stream=True, allow_redirects=False
        ) as response:
            # The body's deadline: a server sending a byte a second never trips the read
            # timeout; shutting the socket down ends the read (urllib3's shutdown()).
            deadline = threading.Timer(self.timeout_s, response.raw.shutdown)
            deadline.start()
            try:
                if response.status_code != 200:
                    raise JwksRefused(f"HTTP {response.status_code}")
                body = response.raw.read(MAX_JWKS_BYTES + 1, decode_content=True)
            finally:
                deadline.cancel()
        if len(body) > MAX_JWKS_BYTES:
            raise JwksTooLarge(f"over {MAX_JWKS_BYTES} bytes")
        found: dict[str | None, tuple[Any, tuple[str, ...]]] = {}
        for jwk in jwt.PyJWKSet.from_dict(json.loads(body)).keys:
            if jwk.public_key_use not in (None, "sig"):
                continue
            key = jwk.key
            if isinstance(key, bytes):  # a symmetric key in a public set: never
                continue
            allowed = algorithms_of(key)
            if jwk.algorithm_name in allowed:  # the JWK's own alg narrows it to one
                allowed = (jwk.algorithm_name,)
            found[jwk.key_id] = (key, allowed)
        return found

    def find(self, kid: str | None, algorithm: str) -> Any:
        fetched = self._fetched_at
        if fetched is None:
            self.refresh()
        elif time.monotonic() - fetched > self.max_age_s:
            self.refresh(wait=False)  # stale but usable: refreshed off the request's path
        entry = self._keys.get(kid)
        if entry is None:
            self.refresh()
            entry = self._keys.get(kid)
        if entry is None:
            if self._fetched_at is None or self._failed:
                raise unavailable()  # we can't know: the token may be good
            raise Refused("unknown_key", "the token's signing key is not known")
        key, allowed = entry
        if algorithm not in allowed:
            raise Refused("algorithm", f"algorithm {algorithm} is not accepted for this key")
        return key

    def check(self) -> None:
        """For readiness, from the last fetch (a probe never waits for one, but the
        first): no keys at all is not ready; an unreachable JWKS while cached keys still
        verify is degraded (buyers keep buying)."""
        self.refresh(wait=self._attempts == 0)
        if self._fetched_at is None:
            why = self._failed or "not fetched yet"
            raise NotReady(f"no signing keys: the JWKS could not be fetched ({why})")
        if self._failed:
            age = time.monotonic() - self._fetched_at
            raise Degraded(f"JWKS unreachable ({self._failed}): keys fetched {age:.0f} s ago")


class JwksTooLarge(ValueError):
    pass


class JwksTimeout(TimeoutError):
    pass


class JwksRefused(ValueError):
    """Not a 200 (a redirect included: a JWKS URL names the set itself)."""


Keys = StaticKey | JwksKeys


def _scopes(claims: dict[str, Any]) -> set[str]:
    scope = claims.get("scope", claims.get("scp", ""))
    if isinstance(scope, str):
        return set(scope.split())
    if isinstance(scope, list):
        return {s for s in scope if isinstance(s, str)}
    return set()


class Verifier:
    """Turns an Authorization header into a Caller, or refuses it."""

    def __init__(self, settings: Settings, keys: Keys, service: str) -> None:
        self.keys = keys
        self.issuer = settings.auth_issuer
        self.audience = settings.auth_audience
        self.leeway_s = settings.auth_leeway_s
        self.claim = settings.auth_buyer_claim
        self.scope = settings.auth_act_for_scope
        self._options: Any = {"require": ["exp", "iss", "aud", self.claim]}
        self._cache: dict[str, tuple[Caller, float]] = {}
        self._version = keys.version
        self._refused = {
            reason: metrics.AUTH_REFUSED.labels(service, reason)
            for reason in (
                "missing", "malformed", "too_large", "algorithm", "unknown_key", "signature",
                "expired", "claims", "buyer",
            )
        }  # fmt: skip

    def warm_up(self) -> None:
        """Fetch the keys before the first buyer waits for them (a failure is not fatal:
        readiness says so, and the next request tries again), and verify one token
        signed with a throwaway key: cryptography loads its OpenSSL backend on the first
        verification (~6 ms, measured), which every forked worker would otherwise pay
        on its first order."""
        key = ec.generate_private_key(ec.SECP256R1())
        jwt.decode(jwt.encode({}, key, "ES256"), key.public_key(), algorithms=["ES256"])
        if isinstance(self.keys, JwksKeys):
            self.keys.refresh()

    def caller(self, authorization: str | None) -> Caller:
        try:
            return self._caller(authorization)
        except Refused as refused:
            self._refused[refused.reason].inc()
            raise

    def _caller(self, authorization: str | None) -> Caller:
        if not authorization:
            raise Refused("missing", "an Authorization: Bearer token is required")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Refused("missing", "an Authorization: Bearer token is required")
        if len(token) > MAX_TOKEN_BYTES:
            raise Refused("too_large", "the token is too large")
        if self.keys.version != self._version:  # a key went or came: verify anew
            self._cache.clear()
            self._version = self.keys.version
        cached = self._cache.get(token)
        if cached is not None:
            if time.time() < cached[1]:
                return cached[0]
            del self._cache[token]
        caller, expires = self._verify(token)
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[token] = (caller, expires)
        return caller

    def _key(self, token: str) -> tuple[Any, list[str]]:
        """The key that must have signed `token`, and the algorithms it may use. One
        mounted key needs no look at the header (PyJWT reads a token in ~80 us: its
        base64 check is a Python loop); a JWKS key is found by the header's kid."""
        if isinstance(self.keys, StaticKey):
            return self.keys.key, list(self.keys.algorithms)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Refused("malformed", "the token is not a JWT") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if not isinstance(algorithm, str) or algorithm.lower() == "none":
            raise Refused("algorithm", "the token is not signed")
        if kid is not None and not isinstance(kid, str):
            raise Refused("malformed", "the token's kid is not a string")
        return self.keys.find(kid, algorithm), [algorithm]

    def _verify(self, token: str) -> tuple[Caller, float]:
        key, algorithms = self._key(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options=self._options,
            )
        except jwt.ExpiredSignatureError:
            raise Refused("expired", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Refused("expired", "the token is not valid yet") from None
        except jwt.InvalidSignatureError:
            raise Refused("signature", "the token's signature does not verify") from None
        except jwt.InvalidAlgorithmError:
            raise Refused("algorithm", "the token's algorithm is not accepted") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError, jwt.MissingRequiredClaimError):
            raise Refused("claims", "the token is not for this service") from None
        except jwt.PyJWTError:
            raise Refused("malformed", "the token could not be read") from None
        for name in ("exp", "nbf", "iat"):
            # RFC 7519 2: a NumericDate is a JSON number (PyJWT also takes "123").
            value = claims.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise Refused("claims", f"the token's {name} is not a number")
        subject = claims[self.claim]
        try:
            check_user_id(subject)
        except UserIdError:
            raise Refused("buyer", f"the token's {self.claim} is not a buyer id") from None
        # min() on the int first: float(10**400) overflows.
        expires = min(claims["exp"], time.time() + MAX_CACHED_S) + self.leeway_s
        return Caller(subject, self.scope in _scopes(claims), self.scope), expires


class Trusting:
    """HOTDEAL_AUTH=off: the body names the buyer, as in the workshop. For benchmarks of
    the designs only (the chart says so in NOTES)."""

    def caller(self, authorization: str | None) -> Caller:
        return TRUSTING

    def warm_up(self) -> None:
        pass


def keys_from_settings(settings: Settings, service: str) -> Keys:
    sources = [
        s
        for s in (settings.auth_jwks_url, settings.auth_public_key, settings.auth_hs256_secret)
        if s
    ]
    if len(sources) != 1:
        raise ConfigError(
            "HOTDEAL_AUTH=jwt needs exactly one of HOTDEAL_AUTH_JWKS_URL, "
            "HOTDEAL_AUTH_PUBLIC_KEY(_FILE) and HOTDEAL_AUTH_HS256_SECRET(_FILE)"
        )
    if settings.auth_jwks_url:
        return JwksKeys(
            settings.auth_jwks_url,
            service=service,
            min_interval_s=settings.auth_jwks_refresh_s,
            max_age_s=settings.auth_jwks_max_age_s,
        )
    if settings.auth_public_key:
        try:
            return StaticKey(load_public_key(settings.auth_public_key))
        except ValueError as exc:
            raise ConfigError(f"HOTDEAL_AUTH_PUBLIC_KEY: not a PEM public key ({exc})") from None
    secret = settings.auth_hs256_secret.encode()  # type: ignore[union-attr]
    if len(secret) < 32:  # RFC 7518 3.2: at least the hash's size
        raise ConfigError("HOTDEAL_AUTH_HS256_SECRET: at least 32 bytes")
    return StaticKey(secret)


def verifier_from_settings(settings: Settings, service: str) -> Verifier | Trusting:
    if settings.auth == "off":
        return Trusting()
    if not settings.auth_issuer or not settings.auth_audience:
        raise ConfigError("HOTDEAL_AUTH=jwt needs HOTDEAL_AUTH_ISSUER and HOTDEAL_AUTH_AUDIENCE")
    for result in ("ok", "failed"):  # exported at 0 whatever the key source: the alerts'
        metrics.JWKS_REFRESHES.labels(service, result)  # series exist before any fetch
    return Verifier(settings, keys_from_settings(settings, service), service)


def readiness_checks(settings: Settings, service: str) -> dict[str, Callable[[], None]]:
    """The admin listener's check of the keys (its own fetch: the same endpoint the
    workers see)."""
    if settings.auth == "off":
        return {}
    return {"auth": keys_from_settings(settings, service).check}
