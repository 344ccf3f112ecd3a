"""Throttling of managed-identity writes in the Azure sandbox: token buckets and injected 429s, with Retry-After."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from keyless.sandbox.azure.state import ArmError
from keyless.sandbox.limits import Bucket, RateLimit
from keyless.sandbox.limits import retry_after_header as _retry_after

__all__ = ["REAL_WRITE_LIMITS", "RateLimit", "WriteLimits", "WriteThrottle"]


@dataclass(frozen=True)
class WriteLimits:
    """Token buckets on managed-identity writes (identities and their federated credentials)."""

    per_identity: RateLimit | None = None
    per_subscription: RateLimit | None = None

    def scaled(self, factor: float) -> WriteLimits:
        """The same limits on a sandbox running `factor` times faster than the cloud."""
        return WriteLimits(per_identity=self.per_identity.scaled(factor) if self.per_identity else None,
                           per_subscription=self.per_subscription.scaled(factor) if self.per_subscription else None)


# Azure's documented limits: 0.25 writes/s per identity, 2 per subscription. The sandbox throttles only when asked,
# so that tests and demos stay fast; a set-up that wants Azure's pace passes these.
REAL_WRITE_LIMITS = WriteLimits(per_identity=RateLimit(0.25, burst=4), per_subscription=RateLimit(2.0, burst=20))


class WriteThrottle:
    """Decides whether a managed-identity write is throttled; thread-safe."""

    def __init__(self, subscription_id: str, limits: WriteLimits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.subscription_id = subscription_id
        self.limits = limits or WriteLimits()
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, Bucket] = {}
        self._throttle_next = 0
        self._throttle_retry_after = 1.0

    def throttle_next(self, count: int, retry_after: float = 1.0) -> None:
        with self._lock:
            self._throttle_next = count
            self._throttle_retry_after = retry_after

    def reset(self) -> None:
        with self._lock:
            self._throttle_next = 0
            self._buckets.clear()

    def check(self, identity_key: tuple[str, str] | None) -> dict[str, str]:
        """Raise 429 when a write must be throttled; else the rate-limit headers to answer with."""
        now = self.clock()
        with self._lock:
            if self._throttle_next > 0:
                self._throttle_next -= 1
                wait = _retry_after(self._throttle_retry_after)
                raise ArmError(429, "TooManyRequests", "The request was throttled by Microsoft.ManagedIdentity. "
                               f"Please retry after {wait} seconds.", {"Retry-After": wait})
            headers: dict[str, str] = {}
            if self.limits.per_subscription is not None:
                bucket = self._bucket("subscription", self.limits.per_subscription, now)
                seconds = bucket.take(now)
                if seconds > 0:
                    raise ArmError(429, "SubscriptionRequestsThrottled",
                                   f"Number of 'write' requests for subscription '{self.subscription_id}' exceeded "
                                   f"the limit. Please try again after '{_retry_after(seconds)}' seconds. "
                                   "Refer to https://aka.ms/arm-throttling",
                                   {"Retry-After": _retry_after(seconds)})
                headers["x-ms-ratelimit-remaining-subscription-writes"] = str(int(bucket.tokens))
            if identity_key is not None and self.limits.per_identity is not None:
                seconds = self._bucket("/".join(identity_key), self.limits.per_identity, now).take(now)
                if seconds > 0:
                    raise ArmError(429, "TooManyRequests",
                                   f"Too many write requests for the managed identity '{identity_key[1]}'. "
                                   f"Please retry after {_retry_after(seconds)} seconds.",
                                   {"Retry-After": _retry_after(seconds)})
            return headers

    def _bucket(self, key: str, limit: RateLimit, now: float) -> Bucket:
        bucket = self._buckets.get(key)
        if bucket is None or bucket.limit != limit:
            bucket = self._buckets[key] = Bucket(limit, now)
        return bucket
