"""Bearer token verification (SPEC §13): HS256 with a shared secret, or RS256 /
ES256 with the keys of a JWKS (a file, or a URL fetched and cached by PyJWT).

A token that is missing, malformed, expired, not yet valid, signed with another key
or another algorithm (``alg: none`` included), or for another issuer / audience is
:class:`Unauthenticated` (401). A valid token whose ``role`` is not one of
:data:`~costwarden.server.config.ROLES` is :class:`NotPermitted` (403). What the
identity may do is decided by the database, under ``SET LOCAL ROLE`` (db.py).

A verified token's identity is kept for ``jwt_cache_seconds`` (never past the token's
``exp`` and its leeway), keyed by the whole token: the same bytes again need no second
verification, which costs more than the rest of a request's own work (docs/http.md)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cachetools import TLRUCache

from ..errors import CostwardenError
from .config import ROLES, ServerConfig

HS_ALGORITHMS = ["HS256"]
JWKS_ALGORITHMS = ["RS256", "ES256"]


class Unauthenticated(CostwardenError):
    """401: no usable token."""


class NotPermitted(CostwardenError):
    """403: a verified token that names a role the service does not take."""


@dataclass(frozen=True)
class Identity:
    """A verified token: the role to SET, and the claims for request.jwt.claims."""

    role: str
    org_id: str | None
    sub: str | None
    claims: dict[str, Any]

    def claims_json(self) -> str:
        return json.dumps(self.claims, separators=(",", ":"), sort_keys=True, default=str)


def _algorithms(key: jwt.PyJWK) -> list[str]:
    """The one algorithm a JWKS key verifies (its own), never another family's."""
    name = key.algorithm_name
    if name not in JWKS_ALGORITHMS:
        raise Unauthenticated(f"key {key.key_id!r} is for {name}, not RS256 or ES256")
    return [name]


#: At most this many verified tokens are kept (least recently used go first).
CACHE_SIZE = 10_000


def _cache_deadline(_token: str, entry: tuple[Identity, float], _now: float) -> float:
    return entry[1]


class TokenVerifier:
    def __init__(self, config: ServerConfig) -> None:
        self._config = config
        self._secret = config.jwt_secret
        # token -> (identity, monotonic deadline). Not thread-safe: every caller of
        # verify() is an async route or dependency, on the event loop's thread.
        self._verified: TLRUCache[str, tuple[Identity, float]] = TLRUCache(
            CACHE_SIZE, _cache_deadline, timer=time.monotonic
        )
        self._jwks: jwt.PyJWKSet | None = None
        self._jwks_client: jwt.PyJWKClient | None = None
        if config.jwks:
            if config.jwks.startswith(("http://", "https://")):
                self._jwks_client = jwt.PyJWKClient(config.jwks, cache_keys=True, lifespan=300)
            else:
                self._jwks = jwt.PyJWKSet.from_json(Path(config.jwks).read_text(encoding="utf-8"))

    def _key(self, token: str) -> tuple[Any, list[str]]:
        if self._secret is not None:
            return self._secret, HS_ALGORITHMS
        header = jwt.get_unverified_header(token)
        kid = header.get("kid")
        if self._jwks_client is not None:
            signing = (
                self._jwks_client.get_signing_key(kid)
                if kid
                else self._jwks_client.get_signing_keys()[0]
            )
            return signing.key, _algorithms(signing)
        assert self._jwks is not None
        keys = [k for k in self._jwks.keys if kid is None or k.key_id == kid]
        if not keys:
            raise Unauthenticated("token signed with an unknown key")
        return keys[0].key, _algorithms(keys[0])

    def verify(self, authorization: str | None) -> Identity:
        """The identity of an ``Authorization`` header value (``Bearer <JWT>``)."""
        if not authorization:
            raise Unauthenticated("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("the Authorization header must be 'Bearer <JWT>'")
        return self.verify_token(token)

    def verify_token(self, token: str) -> Identity:
        cached = self._verified.get(token)
        if cached is not None:
            return cached[0]
        identity, exp = self._verify(token)
        keep = min(
            float(self._config.jwt_cache_seconds), exp + self._config.leeway_seconds - time.time()
        )
        if keep > 0:
            self._verified[token] = (identity, time.monotonic() + keep)
        return identity

    def _verify(self, token: str) -> tuple[Identity, float]:
        """The identity of a token, verified now, and its ``exp`` (epoch seconds)."""
        try:
            key, algorithms = self._key(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                issuer=self._config.issuer,
                audience=self._config.audience,
                leeway=self._config.leeway_seconds,
                options={
                    "require": ["exp", "role"],
                    "verify_aud": self._config.audience is not None,
                },
            )
        except Unauthenticated:
            raise
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired") from exc
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
            raise Unauthenticated(f"invalid token: {exc}") from exc
        role = claims.get("role")
        if role not in ROLES:
            raise NotPermitted(f"role {role!r} is not one of {', '.join(ROLES)}")
        org_id, sub = claims.get("org_id"), claims.get("sub")
        for name, value in (("org_id", org_id), ("sub", sub)):
            if value is not None and not isinstance(value, str):
                raise Unauthenticated(f"claim {name} must be a string")
        identity = Identity(role=str(role), org_id=org_id, sub=sub, claims=dict(claims))
        return identity, float(claims["exp"])
