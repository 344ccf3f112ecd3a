"""A virtual clock for the code under test: `sleep` advances it at once, `clock` reads it, nothing waits for real.

Tests inject it where the product takes `sleep` and `clock`, and assert on virtual seconds: no test bounds the wall
clock (speed is `make bench`'s job)."""

from __future__ import annotations

import threading


class VirtualTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += max(0.0, seconds)

    def clock(self) -> float:
        with self._lock:
            return self.now
