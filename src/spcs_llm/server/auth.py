"""The API key: every route except ``/health`` requires it when one is configured.

Accepted forms: ``Authorization: Bearer KEY`` (OpenAI clients) and ``Authorization: Snowflake Token="KEY"`` (the
Cortex REST clients' header). The comparison is constant-time. The check is an ASGI middleware, so every route
is covered, including routes added later (Cortex REST, usage, async results); :func:`require_api_key` is the same
check as a FastAPI dependency, for a router mounted on another app.

A server on a non-loopback address without a key is refused at start-up unless ``allow_unauthenticated`` is set:
inside SPCS the endpoint is private and Snowflake authenticates its callers, so the container passes it.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import ConfigError, ServerSettings
from ..errors import Unauthorized
from . import wire

OPEN_PATHS = frozenset({"/health"})


def presented_key(authorization: str | None) -> str | None:
    """The key in an Authorization header (``Bearer KEY`` or ``Snowflake Token="KEY"``), or None."""
    if not authorization:
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer":
        return rest or None
    if scheme.lower() == "snowflake":
        name, _, value = rest.partition("=")
        if name.strip().lower() == "token":
            return value.strip().strip('"') or None
    return None


def key_matches(expected: str, authorization: str | None) -> bool:
    """Constant-time: the time taken does not tell how much of a wrong key was right."""
    given = presented_key(authorization)
    # compare_digest on equal-length digests of both sides, so the length of the key does not leak either
    return given is not None and hmac.compare_digest(_digest(given), _digest(expected))


def _digest(key: str) -> bytes:
    return hmac.new(b"spcs-llm-api-key", key.encode(), "sha256").digest()


CORTEX_REST = "/api/v2/cortex/"


class ApiKeyMiddleware:
    """Answers 401 (in the route's wire format) to any request but ``open_paths`` that lacks the key."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: Iterable[str] = OPEN_PATHS) -> None:
        self.app = app
        self.api_key = api_key
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # the Cortex REST routes check the key themselves, with Cortex's statuses (401 none, 403 another)
        if scope["type"] != "http" or scope["path"] in self.open_paths or scope["path"].startswith(CORTEX_REST):
            await self.app(scope, receive, send)
            return
        authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        if key_matches(self.api_key, authorization):
            await self.app(scope, receive, send)
            return
        response = wire.error_response(scope["path"], Unauthorized())
        response.headers["www-authenticate"] = "Bearer"
        await response(scope, receive, send)


def require_api_key(request: Request) -> None:
    """FastAPI dependency form of the check (``Depends(require_api_key)``); a no-op when no key is set."""
    key = request.app.state.settings.server.api_key
    if key and not key_matches(key, request.headers.get("authorization")):
        raise Unauthorized()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(server: ServerSettings) -> None:
    """Refuse to serve a non-loopback address without a key, unless the operator said so explicitly."""
    if server.api_key or server.allow_unauthenticated or is_loopback(server.host):
        return
    raise ConfigError(
        f"refusing to serve {server.host}:{server.port} without an API key: set --api-key (or $SPCS_LLM_API_KEY), "
        "or pass --allow-unauthenticated (server.allow_unauthenticated) where something else authenticates "
        "callers, as Snowflake does for an SPCS endpoint"
    )
