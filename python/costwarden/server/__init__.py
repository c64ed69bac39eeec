"""`costwarden serve` (SPEC §13): the RPCs over HTTP with verified identity, a
dashboard and Prometheus metrics. An optional extra: ``pip install costwarden[server]``.

:func:`create_app` builds the ASGI application from a :class:`ServerConfig`;
docs/http.md describes every route, docs/dashboard.md the dashboard."""

from .app import create_app
from .auth import Identity, TokenVerifier
from .config import ROLES, ServerConfig

__all__ = ["ROLES", "Identity", "ServerConfig", "TokenVerifier", "create_app"]
