"""The per-app apply lock as values: who asks, what a Lease's spec says, and the pure decisions over them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import Enum

from keyless import names

# A holder that dies (kill -9, a lost CI runner) frees the app after this long; the holder renews three times per
# lease, so a slow API server or a dropped request does not cost it the lock.
LOCK_DURATION = 30
# How long `keyless apply` waits for another apply of the same app and target by default (`--lock-timeout`).
DEFAULT_LOCK_TIMEOUT = 300.0


class LockState(Enum):
    FREE = "free"  # no Lease, no holder, or a holder that stopped renewing longer than its lease ago
    HELD = "held"  # someone else holds it, until `until` unless they renew
    MINE = "mine"


@dataclass(frozen=True, slots=True)
class AppLock:
    """The lock of one app on one target, as one holder asks for it: the Lease it lives in, and for how long."""

    namespace: str
    name: str
    app: str
    target: str
    holder: str
    duration: int = LOCK_DURATION  # seconds, the Lease's leaseDurationSeconds

    @property
    def renew_every(self) -> float:
        return self.duration / 3

    def describe(self) -> str:
        return f"app {self.app!r} on target {self.target!r} (Lease {self.namespace}/{self.name})"


def app_lock(namespace: str, app: str, target: str, holder: str, duration: int = LOCK_DURATION) -> AppLock:
    """The lock of `app` on `target`, in the app's namespace, under the one naming rule."""
    return AppLock(namespace=namespace, name=names.lock_lease_name(app, target), app=app, target=target,
                   holder=holder, duration=duration)


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """What a Lease's spec says: holderIdentity, leaseDurationSeconds, acquireTime, renewTime, leaseTransitions."""

    holder: str | None = None
    duration: int | None = None
    acquired: datetime | None = None
    renewed: datetime | None = None
    transitions: int = 0

    def expires(self) -> datetime | None:
        """When the holder's claim lapses unless renewed; None when the Lease records no time at all."""
        start = self.renewed or self.acquired
        if start is None:
            return None
        return start + timedelta(seconds=self.duration if self.duration and self.duration > 0 else LOCK_DURATION)


@dataclass(frozen=True, slots=True)
class LockStatus:
    """Whether a holder may go ahead: the lock is free, held by `holder` (since, until), or its own."""

    state: LockState
    holder: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def lock_status(record: LeaseRecord | None, me: str, now: datetime) -> LockStatus:
    """What a Lease means to `me` at `now` (the holder's clock and ours are assumed to agree within seconds)."""
    if record is None or not record.holder:
        return LockStatus(LockState.FREE)
    until = record.expires()
    if record.holder == me:
        return LockStatus(LockState.MINE, me, record.acquired, until)
    if until is None or until <= now:
        return LockStatus(LockState.FREE, record.holder, record.acquired, until)  # a dead holder's: free to take
    return LockStatus(LockState.HELD, record.holder, record.acquired, until)


def taken(record: LeaseRecord | None, lock: AppLock, now: datetime) -> LeaseRecord:
    """The spec that makes `lock.holder` the holder from `now`; a Lease passing to a new holder counts a transition.

    Taking again a lock one already holds (a retried call whose answer was lost) only renews it."""
    if record is not None and record.holder == lock.holder:
        return renewed(record, now)
    # As client-go counts them: every take of an existing Lease by another holder (or after a release) is one.
    transitions = record.transitions + 1 if record is not None else 0
    return LeaseRecord(holder=lock.holder, duration=lock.duration, acquired=now, renewed=now, transitions=transitions)


def renewed(record: LeaseRecord, now: datetime) -> LeaseRecord:
    return replace(record, renewed=now)


def released(record: LeaseRecord) -> LeaseRecord:
    """The spec of a given-up lock: no holder (the Lease stays, with its history of transitions)."""
    return replace(record, holder=None)


def ci_job(env: Mapping[str, str]) -> str | None:
    """The CI job running keyless, as the address of its page where the CI says so (the thing a person opens)."""
    if env.get("GITHUB_ACTIONS") == "true" and env.get("GITHUB_REPOSITORY") and env.get("GITHUB_RUN_ID"):
        server = env.get("GITHUB_SERVER_URL") or "https://github.com"
        return f"{server}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
    for variable in ("CI_JOB_URL", "BUILD_URL"):  # GitLab CI, Jenkins
        if env.get(variable):
            return env[variable]
    return None


def holder_identity(env: Mapping[str, str], user: str, host: str, pid: int) -> str:
    """Who holds a lock, so that a person can act on it: `<user or CI job>@<host>/<pid>`."""
    return f"{ci_job(env) or user or 'unknown'}@{host}/{pid}"
