"""`costwarden serve`'s configuration (SPEC §13, docs/http.md#configuration)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

#: The roles a token may name (the PostgREST convention: the claim ``role``).
ROLES = ("costwarden_admin", "costwarden_service", "costwarden_tenant")

#: The shortest HS256 secret accepted, in bytes (UTF-8): RFC 7518 §3.2 wants a key at
#: least as long as the hash, and a shorter one is open to an offline search from any
#: one token (docs/http.md#configuration).
MIN_JWT_SECRET_BYTES = 32

#: Largest accepted request body (bytes); larger is 413. Usage objects and budget
#: changes are a few hundred bytes; metadata is the only free-form field.
DEFAULT_MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """Everything the application needs; :meth:`from_env` reads the environment.

    ``dsn``: the login role (a member of ``costwarden_authenticator`` and of the three
    roles of :data:`ROLES`). One of ``jwt_secret`` (HS256, at least
    :data:`MIN_JWT_SECRET_BYTES` bytes) or ``jwks`` (a JWKS file path or an http(s)
    URL: RS256 / ES256) verifies tokens; ``issuer`` / ``audience``, when set, must match
    the token's ``iss`` / ``aud``. ``kek``: the BYOK key-encryption
    key for key put (the service's own configuration, never a request field).
    ``cors_origins``: empty (the default) means no CORS headers at all."""

    dsn: str
    jwt_secret: str | None = field(default=None, repr=False)
    jwks: str | None = None
    issuer: str | None = None
    audience: str | None = None
    leeway_seconds: int = 0
    kek: str | None = field(default=None, repr=False)
    max_body_bytes: int = DEFAULT_MAX_BODY
    cors_origins: tuple[str, ...] = ()
    pool_min: int = 2
    pool_max: int = 10
    pool_timeout: float = 5.0
    spool_dir: str | None = None
    #: how long a verified token's identity is reused without verifying it again
    #: (never past its ``exp``); 0: every request verifies its token
    jwt_cache_seconds: int = 60

    def __post_init__(self) -> None:
        if not self.jwt_secret and not self.jwks:
            raise ValueError(
                "no token verification key: set COSTWARDEN_JWT_SECRET (HS256) "
                "or COSTWARDEN_JWKS (a JWKS file or URL)"
            )
        if self.jwt_secret and self.jwks:
            raise ValueError("set only one of COSTWARDEN_JWT_SECRET and COSTWARDEN_JWKS")
        if self.jwt_secret and len(self.jwt_secret.encode()) < MIN_JWT_SECRET_BYTES:
            # never the secret, nor its length, in the message: it reaches logs
            raise ValueError(
                f"COSTWARDEN_JWT_SECRET is too short: an HS256 secret must be at least "
                f"{MIN_JWT_SECRET_BYTES} bytes (e.g. python -c 'import secrets; "
                f"print(secrets.token_urlsafe(32))')"
            )
        if self.max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        if self.jwt_cache_seconds < 0:
            raise ValueError("jwt_cache_seconds must not be negative")

    @classmethod
    def from_env(
        cls, dsn: str, env: Mapping[str, str] | None = None, **overrides: object
    ) -> ServerConfig:
        """The configuration from ``COSTWARDEN_*`` variables, ``overrides`` winning."""
        e = os.environ if env is None else env
        origins = tuple(
            o.strip() for o in e.get("COSTWARDEN_CORS_ORIGINS", "").split(",") if o.strip()
        )
        values: dict[str, object] = {
            "dsn": dsn,
            "jwt_secret": e.get("COSTWARDEN_JWT_SECRET") or None,
            "jwks": e.get("COSTWARDEN_JWKS") or None,
            "issuer": e.get("COSTWARDEN_JWT_ISSUER") or None,
            "audience": e.get("COSTWARDEN_JWT_AUDIENCE") or None,
            "kek": e.get("COSTWARDEN_KEK") or None,
            "cors_origins": origins,
            "spool_dir": e.get("COSTWARDEN_SPOOL_DIR") or None,
        }
        if e.get("COSTWARDEN_MAX_BODY_BYTES"):
            values["max_body_bytes"] = int(e["COSTWARDEN_MAX_BODY_BYTES"])
        if e.get("COSTWARDEN_JWT_CACHE_SECONDS"):
            values["jwt_cache_seconds"] = int(e["COSTWARDEN_JWT_CACHE_SECONDS"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
