"""Runs the real keyless server (uvicorn) in a background thread on a free loopback port, for browser tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


@contextmanager
def running_server(app: FastAPI) -> Iterator[str]:
    """Serve `app` until the block ends; yields its base URL once /healthz answers."""
    # The socket is bound here and handed to uvicorn, so no other process can take the port in between.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="keyless-test-server")
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base_url, thread)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(STOP_TIMEOUT)
        sock.close()
        assert not thread.is_alive(), "the test server did not stop"


def _wait_healthy(base_url: str, thread: threading.Thread) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    with httpx.Client(base_url=base_url, timeout=2, trust_env=False) as client:
        while True:
            if not thread.is_alive():
                raise RuntimeError("the test server exited while starting (see the log above)")
            try:
                if client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test server did not answer {base_url}/healthz within {START_TIMEOUT:.0f}s")
            time.sleep(0.05)
