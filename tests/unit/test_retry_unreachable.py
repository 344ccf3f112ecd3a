"""The one retry helper's brief budget for an endpoint nothing answers on, with plain errors and an injected clock."""

from __future__ import annotations

import socket

import pytest

from keyless.providers.retry import (
    REFUSED,
    UNREACHABLE_RETRY,
    UNRESOLVED,
    RetryPolicy,
    call_with_retry,
    unreachable_cause,
    unreachable_hint,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def wrapped(inner: BaseException) -> Exception:
    """An SDK-style error that keeps its cause as an attribute, as urllib3's MaxRetryError keeps `reason`."""
    outer = OSError("Max retries exceeded")
    outer.reason = inner  # type: ignore[attr-defined]
    return outer


@pytest.mark.parametrize(("error", "cause"), [
    (ConnectionRefusedError(111, "Connection refused"), REFUSED),
    (wrapped(ConnectionRefusedError(111, "refused")), REFUSED),
    (wrapped(socket.gaierror(-2, "Name or service not known")), UNRESOLVED),
    (RuntimeError("WorkloadIdentityCredential: ... Failed to establish a new connection: [Errno 111] Connection "
                  "refused"), REFUSED),
    (TimeoutError("timed out"), None),
    (RuntimeError("503 Service Unavailable"), None),
])
def test_what_counts_as_nothing_answering(error: BaseException, cause: str | None) -> None:
    assert unreachable_cause(error) == cause


def test_a_refused_connection_gets_the_brief_schedule_whatever_the_callers_policy() -> None:
    clock = Clock()
    calls = 0

    def refused() -> None:
        nonlocal calls
        calls += 1
        raise wrapped(ConnectionRefusedError(111, "refused"))

    with pytest.raises(OSError, match="Max retries") as raised:
        call_with_retry(refused, policy=RetryPolicy(max_attempts=8, deadline=60.0), retryable=lambda _: True,
                        sleep=clock.sleep, clock=clock.clock, draw=lambda: 1.0)
    assert calls == UNREACHABLE_RETRY.max_attempts
    assert clock.now <= UNREACHABLE_RETRY.deadline
    assert raised.value.__notes__ == [f"gave up after {calls} attempt(s) in {clock.now:.1f}s"]


def test_other_transient_errors_keep_the_callers_schedule() -> None:
    clock = Clock()
    calls = 0

    def busy() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("503 Service Unavailable")

    with pytest.raises(RuntimeError):
        call_with_retry(busy, policy=RetryPolicy(max_attempts=6, deadline=60.0), retryable=lambda _: True,
                        sleep=clock.sleep, clock=clock.clock, draw=lambda: 1.0)
    assert calls == 6


def test_a_caller_that_wants_one_try_gets_one() -> None:
    clock = Clock()
    with pytest.raises(ConnectionRefusedError):
        call_with_retry(lambda: (_ for _ in ()).throw(ConnectionRefusedError()),
                        policy=RetryPolicy(max_attempts=1, deadline=0.0), retryable=lambda _: True,
                        sleep=clock.sleep, clock=clock.clock)
    assert clock.sleeps == []


def test_the_hint_points_at_the_sandbox_only_for_a_loopback_endpoint() -> None:
    assert "keyless sandbox up" in unreachable_hint("http://127.0.0.1:4566", "AWS_ENDPOINT_URL_EKS")
    assert "keyless sandbox up" in unreachable_hint("https://localhost:8443", "`armEndpoint` of the target")
    remote = unreachable_hint("https://eks.example.internal", "AWS_ENDPOINT_URL_EKS")
    assert "sandbox" not in remote
    assert remote.startswith("check AWS_ENDPOINT_URL_EKS")
