"""The sandbox's service-side pace: token buckets that refuse a request past a cloud's limit (as the cloud does, where
keyless's client-side buckets wait), per-request latency, and one time scale for every rate and delay."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

__all__ = ["DEFAULT_KNOBS", "Bucket", "RateLimit", "RateLimits", "SandboxKnobs", "knobs_from_json", "knobs_json",
           "retry_after_header"]


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `per_second` sustained, `burst` at once."""

    per_second: float
    burst: int = 1

    def scaled(self, factor: float) -> RateLimit:
        return replace(self, per_second=self.per_second * factor)


class Bucket:
    """One limit's tokens; `take` answers 0 when a token was taken, else the seconds until one is due."""

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.limit = limit
        self.tokens = float(limit.burst)
        self.stamp = now

    def take(self, now: float) -> float:
        self.tokens = min(float(self.limit.burst), self.tokens + (now - self.stamp) * self.limit.per_second)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.limit.per_second


def retry_after_header(seconds: float) -> str:
    # Retry-After is whole seconds in HTTP; never 0, or clients would hammer the endpoint.
    return str(max(1, math.ceil(seconds)))


class RateLimits(enum.StrEnum):
    """Whether the stand-ins refuse requests past the clouds' limits: off by default, so demos and tests stay fast."""

    OFF = "off"
    REALISTIC = "realistic"


@dataclass(frozen=True)
class SandboxKnobs:
    """How the whole sandbox paces itself: `latency` seconds added to each cloud request, the clouds' rate limits
    on or off, and `time_scale`, which multiplies every rate and divides every delay (latency and propagation
    included), so a benchmark keeps real ratios in seconds."""

    latency: float = 0.0
    rate_limits: RateLimits = RateLimits.OFF
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.latency < 0:
            raise ValueError("latency must not be negative")
        if self.time_scale <= 0:
            raise ValueError("the time scale must be positive")

    def delay(self, seconds: float) -> float:
        """A cloud's delay (latency, propagation) on the sandbox's clock."""
        return seconds / self.time_scale

    @property
    def request_latency(self) -> float:
        return self.delay(self.latency)

    def limit(self, limit: RateLimit) -> RateLimit | None:
        """A cloud's limit as the sandbox enforces it: scaled, or None when limits are off."""
        return limit.scaled(self.time_scale) if self.rate_limits is RateLimits.REALISTIC else None


DEFAULT_KNOBS = SandboxKnobs()


def knobs_json(knobs: SandboxKnobs) -> dict[str, object]:
    return {"latency": knobs.latency, "rateLimits": knobs.rate_limits.value, "timeScale": knobs.time_scale}


def knobs_from_json(body: dict[str, object], current: SandboxKnobs) -> SandboxKnobs:
    """`current` with the fields `body` sets (the /_sandbox/knobs POST); ValueError names a bad one."""
    latency, scale, limits = body.get("latency", current.latency), body.get("timeScale", current.time_scale), \
        body.get("rateLimits", current.rate_limits.value)
    if not isinstance(latency, int | float) or not isinstance(scale, int | float):
        raise ValueError("latency and timeScale must be numbers (seconds, and a factor)")
    if limits not in {r.value for r in RateLimits}:
        raise ValueError(f"rateLimits must be one of {', '.join(r.value for r in RateLimits)}")
    return SandboxKnobs(latency=float(latency), rate_limits=RateLimits(str(limits)), time_scale=float(scale))
