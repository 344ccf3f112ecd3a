"""The token bucket that paces calls to a cloud's rate limit, on an injected clock."""

from __future__ import annotations

import threading

import pytest

from keyless.providers.retry import RateLimit, TokenBucket, shared_bucket


class Clock:
    """Time that passes only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.lock = threading.Lock()

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds

    def clock(self) -> float:
        with self.lock:
            return self.now


def test_the_burst_goes_at_once_then_the_rate_applies() -> None:
    time = Clock()
    bucket = TokenBucket(RateLimit(per_second=2.0, burst=3), sleep=time.sleep, clock=time.clock)
    waits = [bucket.take() for _ in range(7)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.5, 0.5, 0.5, 0.5])
    assert time.now == pytest.approx(2.0)  # 4 calls beyond the burst at 2/s


def test_tokens_refill_while_nobody_calls_but_never_beyond_the_burst() -> None:
    time = Clock()
    bucket = TokenBucket(RateLimit(per_second=1.0, burst=2), sleep=time.sleep, clock=time.clock)
    bucket.take()
    bucket.take()
    time.sleep(100.0)  # idle: the bucket fills up to its burst, not to 100 tokens
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_callers_on_many_threads_queue_one_behind_another() -> None:
    # A clock that stands still while they wait: each caller's wait is its place in the queue over the rate.
    bucket = TokenBucket(RateLimit(per_second=10.0, burst=1), sleep=lambda _: None, clock=lambda: 0.0)
    waits: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        waited = bucket.take()
        with lock:
            waits.append(waited)

    threads = [threading.Thread(target=take) for _ in range(21)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(waits) == pytest.approx([i / 10 for i in range(21)])


def test_a_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive rate"):
        RateLimit(per_second=0.0, burst=1)
    with pytest.raises(ValueError, match="burst"):
        RateLimit(per_second=1.0, burst=0)


def test_providers_of_one_process_share_a_cloud_limit() -> None:
    """Two clients of one scope draw from one bucket (the operator's reconciles together stay under the limit);
    another scope, or another clock, has its own."""
    time = Clock()
    limit = RateLimit(2.0, burst=2)
    first = shared_bucket(("aws", "eu-west-1", "eks", True), limit, sleep=time.sleep, clock=time.clock)
    second = shared_bucket(("aws", "eu-west-1", "eks", True), limit, sleep=time.sleep, clock=time.clock)
    assert first is second
    assert shared_bucket(("aws", "us-east-1", "eks", True), limit, sleep=time.sleep, clock=time.clock) is not first
    other = Clock()
    assert shared_bucket(("aws", "eu-west-1", "eks", True), limit, sleep=other.sleep, clock=other.clock) is not first
    waits = [first.take(), second.take(), first.take(), second.take()]
    assert waits == pytest.approx([0.0, 0.0, 0.5, 0.5])  # the second client waits for the first's tokens too
