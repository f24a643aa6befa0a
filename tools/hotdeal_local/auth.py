"""The local identity provider: one ES256 key made per run, whose public half every
service started here verifies with, and whose tokens every local buyer (tests, chaos,
demo, `make up`) sends. And the waiting room's secret the local pods share."""

from __future__ import annotations

import secrets
from functools import cache

from hotdeal.config import Settings
from hotdeal_ops.tokens import Signer, public_pem

ISSUER = "hotdeal-local"
AUDIENCE = "hotdeal"
# The scope a service acting for buyers holds (the services' default).
ACT_FOR = Settings().auth_act_for_scope
# ab's clients, all one buyer (the workshop's load had one user too).
WORKSHOP_BUYER = "workshop"


@cache
def signer() -> Signer:
    return Signer.generate(ISSUER, AUDIENCE)


@cache
def room_secret() -> str:
    return secrets.token_urlsafe(48)


def service_env() -> dict[str, str]:
    """What a service needs to verify the local tokens and to sign the room's."""
    return {
        "HOTDEAL_AUTH": "jwt",
        "HOTDEAL_AUTH_ISSUER": ISSUER,
        "HOTDEAL_AUTH_AUDIENCE": AUDIENCE,
        "HOTDEAL_AUTH_PUBLIC_KEY": public_pem(signer().key),
        "HOTDEAL_ROOM_SECRET": room_secret(),
    }


def token(user: str, scope: str | None = None) -> str:
    return signer().token(user, scope=scope)


def bearer(user: str, scope: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user, scope)}"}


@cache
def _forger() -> Signer:
    return Signer.generate(ISSUER, AUDIENCE)


def forged_bearer(user: str) -> dict[str, str]:
    """A token that claims to be the local provider's and is signed with another key."""
    return {"Authorization": f"Bearer {_forger().token(user)}"}
