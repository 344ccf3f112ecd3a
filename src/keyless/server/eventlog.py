"""The server's log: each request and each deploy's start and finish as one JSON object per line on stderr."""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TextIO

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Where a route's authentication leaves the caller's token name (never the token) for the request's log line.
CALLER_STATE = "keyless_caller"


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class EventLog:
    """Writes events as JSON lines, whole lines only even from several threads; `stream` None means stderr as it is
    at each write (so a test's capture or a redirect made after start-up is honoured)."""

    def __init__(self, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], dt.datetime] = _utc_now) -> None:
        self.stream = stream
        self.clock = clock  # durations
        self.now = now  # the timestamp of each line
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        line = json.dumps({"time": self.now().isoformat(timespec="milliseconds"), "event": event, **fields},
                          default=str, separators=(",", ":"))
        stream = self.stream or sys.stderr
        with self._lock:
            stream.write(line + "\n")
            stream.flush()


def record_caller(scope: Scope, name: str) -> None:
    """Note who is calling (the token's name) for the request's log line."""
    scope.setdefault("state", {})[CALLER_STATE] = name


class RequestLog:
    """ASGI middleware: one `request` event per HTTP request, with its method, path, status, duration and caller."""

    def __init__(self, app: ASGIApp, events: EventLog) -> None:
        self.app = app
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})  # shared with the routes, which record the caller
        started = self.events.clock()
        status = 500  # what the client gets when the app raises before answering

        async def noting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        finally:
            caller = state.get(CALLER_STATE)
            self.events.emit("request", method=scope["method"], path=scope["path"], status=status,
                             ms=round((self.events.clock() - started) * 1000, 1),
                             **({"caller": caller} if caller else {}))
