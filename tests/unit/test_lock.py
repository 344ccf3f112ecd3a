"""The per-app apply lock's pure part: what a Lease's spec means to a holder at a given time, with plain values."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from keyless.kube.lock import (
    LOCK_DURATION,
    LeaseRecord,
    LockState,
    LockStatus,
    app_lock,
    holder_identity,
    lock_status,
    released,
    renewed,
    taken,
)
from keyless.names import lock_lease_name

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
ALICE = "alice@laptop/101"
CI = "https://github.com/shop/app/actions/runs/7@runner-3/4242"
LOCK = app_lock("shop", "shop", "prod-eks", ALICE)


def held_by(holder: str, renewed_at: datetime, duration: int | None = 30) -> LeaseRecord:
    return LeaseRecord(holder=holder, duration=duration, acquired=renewed_at - timedelta(minutes=1),
                       renewed=renewed_at, transitions=2)


def test_no_lease_or_no_holder_is_free() -> None:
    assert lock_status(None, ALICE, T0) == LockStatus(LockState.FREE)
    assert lock_status(LeaseRecord(holder=None, duration=30, renewed=T0), ALICE, T0).state is LockState.FREE
    assert lock_status(LeaseRecord(holder="", renewed=T0), ALICE, T0).state is LockState.FREE


def test_someone_elses_lease_is_held_until_its_renew_time_plus_its_duration() -> None:
    record = held_by(CI, T0)
    status = lock_status(record, ALICE, T0 + timedelta(seconds=29))
    assert status == LockStatus(LockState.HELD, CI, T0 - timedelta(minutes=1), T0 + timedelta(seconds=30))


def test_a_lease_not_renewed_for_its_duration_is_free_to_take_over() -> None:
    record = held_by(CI, T0)
    assert lock_status(record, ALICE, T0 + timedelta(seconds=30)).state is LockState.FREE  # exactly at expiry
    expired = lock_status(record, ALICE, T0 + timedelta(hours=1))
    assert (expired.state, expired.holder) == (LockState.FREE, CI)  # the dead holder is still named


def test_a_lease_without_duration_or_renew_time_falls_back() -> None:
    no_duration = held_by(CI, T0, duration=None)
    assert lock_status(no_duration, ALICE, T0 + timedelta(seconds=LOCK_DURATION - 1)).state is LockState.HELD
    assert lock_status(no_duration, ALICE, T0 + timedelta(seconds=LOCK_DURATION)).state is LockState.FREE
    acquired_only = LeaseRecord(holder=CI, duration=30, acquired=T0)
    assert lock_status(acquired_only, ALICE, T0 + timedelta(seconds=10)).until == T0 + timedelta(seconds=30)
    assert lock_status(LeaseRecord(holder=CI, duration=30), ALICE, T0).state is LockState.FREE  # no time at all


def test_my_own_lease_is_mine_even_expired() -> None:
    assert lock_status(held_by(ALICE, T0), ALICE, T0 + timedelta(hours=1)).state is LockState.MINE


def test_taking_a_new_lease_starts_at_zero_transitions() -> None:
    assert taken(None, LOCK, T0) == LeaseRecord(holder=ALICE, duration=30, acquired=T0, renewed=T0, transitions=0)


def test_taking_over_counts_a_transition_and_restarts_the_times() -> None:
    record = taken(held_by(CI, T0), LOCK, T0 + timedelta(minutes=5))
    assert record == LeaseRecord(holder=ALICE, duration=30, acquired=T0 + timedelta(minutes=5),
                                 renewed=T0 + timedelta(minutes=5), transitions=3)
    after_release = taken(released(held_by(CI, T0)), LOCK, T0)
    assert after_release.transitions == 3


def test_taking_again_what_is_mine_only_renews() -> None:
    mine = held_by(ALICE, T0)
    assert taken(mine, LOCK, T0 + timedelta(seconds=5)) == renewed(mine, T0 + timedelta(seconds=5))


def test_renewing_moves_only_the_renew_time() -> None:
    mine = held_by(ALICE, T0)
    assert renewed(mine, T0 + timedelta(seconds=10)) == LeaseRecord(
        holder=ALICE, duration=30, acquired=mine.acquired, renewed=T0 + timedelta(seconds=10), transitions=2)
    assert LOCK.renew_every == pytest.approx(10.0)


def test_releasing_clears_the_holder_and_keeps_the_history() -> None:
    gone = released(held_by(ALICE, T0))
    assert (gone.holder, gone.transitions, gone.renewed) == (None, 2, T0)
    assert lock_status(gone, CI, T0).state is LockState.FREE


def test_the_holder_names_the_person_or_the_ci_job_and_the_process() -> None:
    assert holder_identity({}, "alice", "laptop", 101) == ALICE
    github = {"GITHUB_ACTIONS": "true", "GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "shop/app",
              "GITHUB_RUN_ID": "7"}
    assert holder_identity(github, "runner", "runner-3", 4242) == CI
    gitlab = {"CI_JOB_URL": "https://gitlab.com/shop/app/-/jobs/9"}
    assert holder_identity(gitlab, "root", "pod", 1) == "https://gitlab.com/shop/app/-/jobs/9@pod/1"
    assert holder_identity({}, "", "pod", 1) == "unknown@pod/1"


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize(("app", "target"), [("shop", "prod-eks"), ("a" * 31, "t" * 63), ("shop", "Prod_EKS.v2"),
                                             ("x", "-")])
def test_the_lease_name_is_a_dns_label_of_at_most_63_characters(app: str, target: str) -> None:
    name = lock_lease_name(app, target)
    assert len(name) <= 63
    assert _DNS_LABEL.fullmatch(name), name
    assert name.startswith("keyless-")
    assert name == lock_lease_name(app, target)  # stable


def test_the_lease_name_is_readable_and_tells_apps_and_targets_apart() -> None:
    assert lock_lease_name("shop", "prod-eks").startswith("keyless-shop-prod-eks-")
    assert lock_lease_name("a-b", "c") != lock_lease_name("a", "b-c")
    assert lock_lease_name("shop", "Prod_EKS") != lock_lease_name("shop", "prod-eks")
    assert LOCK.name == lock_lease_name("shop", "prod-eks")
    assert LOCK.namespace == "shop"
