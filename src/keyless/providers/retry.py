"""How keyless waits on a cloud: the one retry helper (bounded attempts, backoff with jitter, a deadline, a brief budget
for an endpoint nothing answers on) and the one pacer (a token bucket per rate limit)."""

from __future__ import annotations

import email.utils
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

log = logging.getLogger(__name__)

# Providers configure their SDKs to make a single attempt per call and retry here instead. Two layers
# would multiply (SDK attempts x our attempts) and the SDK knows neither our deadline nor the errors
# that are only transient in context (a role IAM has not propagated yet), so this is the only layer.


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to keep trying: whichever of `max_attempts` and `deadline` (seconds) runs out first."""

    max_attempts: int = 6
    base_delay: float = 0.25
    max_delay: float = 8.0
    deadline: float = 45.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.deadline < 0:
            raise ValueError("delays and deadline must not be negative")

    def backoff(self, retry: int, draw: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number `retry` (0-based): exponential, capped, "equal jitter".

        Half the ceiling is fixed and half random: the random half spreads callers that were throttled
        together, the fixed half makes the wait actually grow (full jitter can draw ~0 several times
        running, which burns attempts while IAM or a throttled API has had no time to recover).
        """
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(retry, 60))  # capped exponent: no float overflow
        return ceiling / 2 + draw() * ceiling / 2


# Retry-After is honoured up to this many seconds per wait (and never past the policy's deadline): a server
# asking for minutes is better answered with a clear error than with a CLI that looks hung.
MAX_RETRY_AFTER = 30.0


def retry_after(headers: Mapping[str, str] | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds a server asked to wait: Retry-After in seconds or as an HTTP date, or Azure's -ms variants."""
    headers = headers or {}
    for header, scale in (("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001), ("Retry-After", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            continue
        return max(0.0, when.timestamp() - now())
    return None


# A policy for tests and callers that want exactly one try.
NO_RETRY = RetryPolicy(max_attempts=1, base_delay=0.0, max_delay=0.0, deadline=0.0)

# Nothing listening, or a host name that does not resolve: the endpoint is wrong or down (a sandbox that is not
# running, a mistyped AWS_ENDPOINT_URL_*), not busy. One more look covers a proxy or sandbox that is restarting;
# more only delays the message (a full schedule here kept people waiting 11-13 s for "could not connect").
UNREACHABLE_RETRY = RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=1.0, deadline=2.0)

# How the SDKs' wrapped errors say it when only their text survives (azure-identity folds every credential's
# failure into one message; urllib3 and botocore keep the cause as an attribute, not always as __cause__).
_REFUSED_TEXT = ("connection refused", "[errno 111]", "[winerror 10061]")
_UNRESOLVED_TEXT = ("name or service not known", "nodename nor servname", "temporary failure in name resolution",
                    "getaddrinfo failed", "failed to resolve", "no address associated with hostname")
REFUSED = "connection refused (nothing listens there)"
UNRESOLVED = "the host name does not resolve"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The error and everything it wraps: causes, contexts, and the attributes SDKs keep inner errors in."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        kwargs = getattr(current, "kwargs", None)  # botocore keeps the urllib3 error in kwargs["error"]
        inner = [current.__cause__, current.__context__, getattr(current, "reason", None),
                 getattr(current, "inner_exception", None), kwargs.get("error") if isinstance(kwargs, dict) else None,
                 *current.args]
        pending += [e for e in inner if isinstance(e, BaseException)]


def unreachable_cause(exc: BaseException) -> str | None:
    """REFUSED or UNRESOLVED when the error (or one it wraps) says nothing answered at the endpoint, else None."""
    for current in _chain(exc):
        if isinstance(current, ConnectionRefusedError):
            return REFUSED
        if isinstance(current, socket.gaierror):
            return UNRESOLVED
        text = str(current).lower()
        if any(marker in text for marker in _REFUSED_TEXT):
            return REFUSED
        if any(marker in text for marker in _UNRESOLVED_TEXT):
            return UNRESOLVED
    return None


def endpoint_root(url: str) -> str:
    """scheme://host[:port] of a URL: the part a person compares with their endpoint settings."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else url


def unreachable_hint(endpoint: str, settings: str) -> str:
    """What to check when nothing answered at `endpoint`, which `settings` (a person-readable list) chose."""
    host = urlsplit(endpoint).hostname or ""
    sandbox = ("if it is the keyless sandbox, start it (`keyless sandbox up`) and run "
               "`eval \"$(keyless sandbox env)\"` again in this shell (a restarted sandbox listens on new ports); ")
    local = host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
    return (f"{sandbox}otherwise check {settings}" if local
            else f"check {settings}, and the network and proxy settings")


def call_with_retry(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    retryable: Callable[[BaseException], bool],
    what: str = "call",
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    draw: Callable[[], float] = random.random,
    asked: Callable[[BaseException], float | None] | None = None,
) -> T:
    """Call `fn` until it returns, raises an error `retryable` rejects, or the policy runs out.

    `asked` reads the wait a server asked for from an error (Retry-After): the backoff is stretched to it,
    capped at MAX_RETRY_AFTER and the deadline, because retrying before the server said so only earns
    another 429.

    When the policy runs out, the last error is raised unchanged (so callers still see its type and
    code) with a note saying how many attempts were made. The deadline bounds when the last attempt
    may *start*: the final sleep is shortened to end at the deadline rather than skipped.
    """
    start = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not retryable(exc):
                raise
            # An endpoint nothing answers on gets the brief schedule, never more than the caller's own.
            schedule = policy if unreachable_cause(exc) is None else replace(
                UNREACHABLE_RETRY, max_attempts=min(policy.max_attempts, UNREACHABLE_RETRY.max_attempts),
                deadline=min(policy.deadline, UNREACHABLE_RETRY.deadline))
            remaining = schedule.deadline - (clock() - start)
            if attempt >= schedule.max_attempts or remaining <= 0:
                exc.add_note(f"gave up after {attempt} attempt(s) in {clock() - start:.1f}s")
                raise
            delay = min(schedule.backoff(attempt - 1, draw), remaining)
            hint = asked(exc) if asked is not None else None
            if hint:
                delay = max(delay, min(hint, MAX_RETRY_AFTER, remaining))
            log.debug("%s failed (%s: %s); attempt %d, retrying in %.2fs", what, type(exc).__name__, exc, attempt,
                      delay)
            sleep(delay)


class NotYet(Exception):
    """Raised by a polled check that has not come true yet; `poll` treats it as retryable."""


def poll(
    check: Callable[[], bool],
    *,
    policy: RetryPolicy,
    retryable: Callable[[BaseException], bool] = lambda _: False,
    what: str = "poll",
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    draw: Callable[[], float] = random.random,
) -> bool:
    """Call `check` on the policy's schedule until it returns True; False once the policy runs out.

    Errors `retryable` accepts (a throttled read, say) count as "not yet"; any other error propagates.
    """

    def once() -> bool:
        if not check():
            raise NotYet(what)
        return True

    try:
        return call_with_retry(
            once,
            policy=policy,
            retryable=lambda exc: isinstance(exc, NotYet) or retryable(exc),
            what=what,
            sleep=sleep,
            clock=clock,
            draw=draw,
        )
    except NotYet:
        return False


# --- pacing ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A request rate a cloud sustains (`per_second`) and the burst it allows above it."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")


class TokenBucket:
    """Paces calls to a RateLimit across threads: `take()` returns at once while tokens last, else sleeps until the
    next one is due. Pacing client-side keeps a run at the cloud's rate instead of above it, where every excess
    call earns a throttling error and a backoff longer than the wait it tried to skip."""

    def __init__(self, limit: RateLimit, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = float(limit.burst)
        self._updated = clock()

    def take(self) -> float:
        """Take one token, waiting for it if none is left; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.limit.burst), self._tokens + (now - self._updated) * self.limit.per_second)
            self._updated = now
            self._tokens -= 1.0  # reserved now: callers behind this one queue after it
            wait = max(0.0, -self._tokens / self.limit.per_second)
        if wait > 0:
            self._sleep(wait)
        return wait


_SHARED: dict[tuple[Hashable, ...], TokenBucket] = {}
_SHARED_LOCK = threading.Lock()


def shared_bucket(scope: tuple[Hashable, ...], limit: RateLimit, *, sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], float] = time.monotonic) -> TokenBucket:
    """The process's one bucket for a cloud limit: a cloud's limits are per account, region or subscription, not per
    client, so every provider of this process (the operator's concurrent reconciles, the server's deploys) draws
    from the same one. Keyed by what the limit is on (`scope`), the limit, and the clock and sleep it runs on (a
    test's injected clock gets buckets of its own)."""
    key = (*scope, limit, clock, sleep)
    with _SHARED_LOCK:
        bucket = _SHARED.get(key)
        if bucket is None:
            bucket = _SHARED[key] = TokenBucket(limit, sleep=sleep, clock=clock)
        return bucket
