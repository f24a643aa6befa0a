"""Tokens for local runs and load tests: a signing key pair (`hotdeal-ops keygen`) and
tokens for N buyers (`hotdeal-ops token`). Production tokens come from the game's
identity provider; these exist so `make up`, `make demo`, the chart's load jobs and the
tests buy the way players do: with a token each.

Signing is PyJWT's (and `cryptography`'s key generation): no crypto of our own.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from hotdeal.config import ConfigError

# The algorithm a private key of each type signs with (the verifier decides by key too).
ALGORITHM_OF = {
    ec.EllipticCurvePrivateKey: "ES256",
    rsa.RSAPrivateKey: "RS256",
    ed25519.Ed25519PrivateKey: "EdDSA",
    bytes: "HS256",
}


def algorithm_of(key: Any) -> str:
    for kind, algorithm in ALGORITHM_OF.items():
        if isinstance(key, kind):
            return algorithm
    raise ConfigError(f"unsupported signing key type {key.__class__.__name__}")


def load_signing_key(text: str) -> Any:
    """A PEM private key (EC P-256, RSA, Ed25519), or else an HS256 secret."""
    if "-----BEGIN" in text:
        return serialization.load_pem_private_key(text.encode(), password=None)
    if len(text.encode()) < 32:
        raise ConfigError("an HS256 secret needs at least 32 bytes")
    return text.encode()


def public_pem(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def private_pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def jwks_of(keys: dict[str, Any]) -> dict[str, Any]:
    """A JWKS document of the public halves of `keys` (kid -> private key)."""
    found = []
    for kid, key in keys.items():
        algorithm = algorithm_of(key)
        jwk = jwt.get_algorithm_by_name(algorithm).to_jwk(key.public_key(), as_dict=True)
        found.append({**jwk, "kid": kid, "use": "sig", "alg": algorithm})
    return {"keys": found}


@dataclass
class Signer:
    """Mints tokens as an identity provider would: iss, aud, sub, iat, exp (and a scope
    when asked), signed with `key`, its kid in the header."""

    key: Any
    issuer: str
    audience: str
    kid: str | None = None
    ttl_s: int = 3600
    _minted: dict[tuple[str, str | None], tuple[str, float]] = field(default_factory=dict)

    @classmethod
    def generate(cls, issuer: str, audience: str) -> Signer:
        return cls(ec.generate_private_key(ec.SECP256R1()), issuer, audience, kid=_new_kid())

    def token(self, subject: str, *, scope: str | None = None, **claims: Any) -> str:
        """A token for `subject`; the same one again while it has most of its life left
        (as a player's client reuses its token), unless `claims` change it."""
        now = time.time()
        if not claims:
            cached = self._minted.get((subject, scope))
            if cached and cached[1] - now > self.ttl_s / 2:
                return cached[0]
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": int(now),
            "exp": int(now) + self.ttl_s,
        }
        if scope:
            payload["scope"] = scope
        payload.update(claims)
        headers = {"kid": self.kid} if self.kid else None
        token = jwt.encode(payload, self.key, algorithm=algorithm_of(self.key), headers=headers)
        if not claims:
            self._minted[(subject, scope)] = (token, payload["exp"])
        return token

    def write(self, directory: Path) -> dict[str, Path]:
        """signing.pem (0600), public.pem and jwks.json in `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = {
            "signing_key": directory / "signing.pem",
            "public_key": directory / "public.pem",
            "jwks": directory / "jwks.json",
        }
        paths["signing_key"].touch(mode=0o600)
        paths["signing_key"].write_text(private_pem(self.key))
        paths["public_key"].write_text(public_pem(self.key))
        paths["jwks"].write_text(json.dumps(jwks_of({self.kid or "local": self.key})))
        return paths


def _new_kid() -> str:
    return "local-" + secrets.token_hex(4)
