"""aiohttp apps served on loopback from an event loop on a daemon thread: how each cloud stand-in runs."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")


class BackgroundServers:
    """Own thread and loop, so the caller's thread (and its event loop, in pytest or a CLI) stays free."""

    def __init__(self, name: str, host: str) -> None:
        self.name = name
        self.host = host
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []
        self.ports: list[int] = []

    @property
    def running(self) -> bool:
        return self.loop is not None

    def start(self, apps: Sequence[tuple[web.Application, int]], *, ssl_context: ssl.SSLContext | None = None,
              plain_apps: Sequence[tuple[web.Application, int]] = (), timeout: float = 30.0) -> list[int]:
        """Serve each (app, port) — port 0 picks a free one — and answer the ports actually bound.

        `apps` get `ssl_context`; `plain_apps` (after them, in `ports` too) are plain HTTP whatever it is, for
        endpoints that are plain on the real cloud as well (a metadata server)."""
        loop = asyncio.new_event_loop()
        self.loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
        self._thread.start()
        self.call(self._listen(apps, ssl_context), timeout)
        self.call(self._listen(plain_apps, None), timeout)
        return list(self.ports)

    async def _listen(self, apps: Sequence[tuple[web.Application, int]], context: ssl.SSLContext | None) -> None:
        for app, port in apps:
            # Cancelling a handler when its client goes away would half-apply a write a stand-in then has to undo.
            runner = web.AppRunner(app, access_log=None, handler_cancellation=False)
            await runner.setup()
            await web.TCPSite(runner, self.host, port, ssl_context=context).start()
            self._runners.append(runner)
            self.ports.append(int(runner.addresses[0][1]))

    def port(self, index: int) -> int:
        """The port the index-th app listens on; a clear error before start (or after stop)."""
        if len(self.ports) <= index:
            raise RuntimeError(f"{self.name} is not started")
        return self.ports[index]

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        assert self.loop is not None, "the servers are not started"
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=timeout)

    def stop(self, before: Callable[[], None] | None = None, timeout: float = 30.0) -> None:
        """Close the servers (running `before` on the loop first), stop the loop and join its thread."""
        loop, thread = self.loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            try:
                self.call(self._close(before), timeout)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout=timeout)
        if loop is not None and not loop.is_running():
            loop.close()
        self.loop = None
        self._thread = None
        self._runners.clear()
        self.ports.clear()

    async def _close(self, before: Callable[[], None] | None) -> None:
        if before is not None:
            before()
        for runner in reversed(self._runners):
            await runner.cleanup()
        await asyncio.get_running_loop().shutdown_default_executor()
