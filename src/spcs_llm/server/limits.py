"""Bounded input: a request body over ``server.max_request_mb`` is refused with 413 without being read.

A declared ``Content-Length`` over the limit is answered at once, before a byte of the body is received; a body
without one (chunked) is counted as it arrives and refused as soon as it passes the limit, so the server never
holds more than the limit. The decoded size of a gzip/deflate body is bounded the same way
(:func:`~spcs_llm.server.snowflake.decompress`).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import RequestTooLarge
from . import wire


def too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(
        f"request body is over the {limit / 2**20:g} MB limit (server.max_request_mb); send smaller batches "
        "(MAX_BATCH_ROWS on the function)"
    )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await wire.error_response(scope["path"], too_large(self.max_bytes))(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # raised inside the route's body read: its error handler answers
                    raise too_large(self.max_bytes)
            return message

        await self.app(scope, counted, send)
