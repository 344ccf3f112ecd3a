"""Bounds on what the server reads: a request body is refused before it is read when it is too large, or when it
is sent to the API without a valid token."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio.to_thread

from keyless.server.errors import BAD_TOKEN, NO_TOKEN, error_body
from keyless.store import Store

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# A porter.yaml is at most 1 MiB (the loader's cap); a request holding one, as JSON or a form, fits in twice that.
MAX_BODY = 2 * 1024 * 1024
TOKEN_STATE = "keyless_token"  # where the checked token is left for the route's dependency (no second lookup)
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class _TooLarge(Exception):
    pass


class BoundedRequests:
    """ASGI middleware: 413 for a body over `max_body` (by Content-Length, or while a chunked body streams in),
    and 401 for an API request with a body but no valid Bearer token, both before the body is read."""

    def __init__(self, app: ASGIApp, store: Store, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.store = store
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WITH_BODY:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            await _answer(send, 413, "the request body is too large",
                          f"keyless accepts at most {self.max_body:,} bytes (a porter.yaml is at most 1 MiB)")
            return
        if scope["path"].startswith("/api/"):
            scheme, _, secret = headers.get("authorization", "").partition(" ")
            secret = secret.strip() if scheme.lower() == "bearer" else ""
            token = await anyio.to_thread.run_sync(self.store.authenticate, secret) if secret else None
            if token is None:
                await _answer(send, 401, *(BAD_TOKEN if secret else NO_TOKEN), {"WWW-Authenticate": "Bearer"})
                return
            scope.setdefault("state", {})[TOKEN_STATE] = token
        await self._bounded(scope, receive, send)

    async def _bounded(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _answer(send, 413, "the request body is too large",
                              f"keyless accepts at most {self.max_body:,} bytes")


async def _answer(send: Send, status: int, message: str, hint: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error_body(message, hint)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
