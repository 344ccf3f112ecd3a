"""The per-app apply lock against the Kubernetes stand-in: real lightkube over HTTPS, as keyless's least-privilege
identity, with the time injected (the Lease's clock through `now`, the wait through `sleep` and `clock`)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from lightkube import Client, KubeConfig
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from virtual_time import VirtualTime

from keyless import engine, ownership
from keyless.errors import CloudError, LockHeld, LockLost
from keyless.kube.cluster import ClusterKube
from keyless.kube.lock import LockState, LockStatus, app_lock
from keyless.providers.retry import RetryPolicy
from keyless.sandbox.kube import KubeStandIn
from keyless.sandbox.kube.rbac import KEYLESS_RULES
from keyless.targets import KubernetesSide

pytestmark = pytest.mark.integration

APP = "shop"
TARGET = "prod-eks"
FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, deadline=5.0)
T0 = datetime(2025, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)
_namespaces = itertools.count(1)


class Wall:
    """The time a ClusterKube reads to stamp and judge Leases, moved by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def stand_in() -> Iterator[KubeStandIn]:
    with KubeStandIn("keyless-lock-tests") as running:
        yield running
    assert running.api.unexpected_errors == []


@pytest.fixture
def namespace(stand_in: KubeStandIn) -> str:
    name = f"locks-{next(_namespaces)}"
    stand_in.ensure_namespace(name)
    return name


@pytest.fixture
def admin(stand_in: KubeStandIn, tmp_path: Path) -> Iterator[Client]:
    config = stand_in.write_kubeconfig(tmp_path / "admin", "admin")
    with Client(config=KubeConfig.from_file(config)) as client:
        yield client


def keyless_kube(stand_in: KubeStandIn, namespace: str, path: Path, wall: Wall, **rules: object) -> ClusterKube:
    """keyless as the README sets it up: its ClusterRole bound in `namespace` only, through its own kubeconfig."""
    token = stand_in.keyless_identity([namespace], **rules)  # type: ignore[arg-type]
    config = stand_in.write_kubeconfig(path, "keyless", token=token)
    side = KubernetesSide.model_validate({"kubeconfig": str(config), "context": "keyless"})
    return ClusterKube(side, policy=FAST, now=wall)


def lease_calls(stand_in: KubeStandIn) -> dict[str, int]:
    return {op: n for op, n in stand_in.api.knobs.calls().items() if op.endswith(" leases")}


def lease_of(admin: Client, namespace: str, name: str) -> Lease:
    return admin.get(Lease, name, namespace=namespace)


def test_a_free_lock_is_one_read_and_one_create_and_renewing_or_releasing_is_one_update(
        stand_in: KubeStandIn, namespace: str, admin: Client, tmp_path: Path) -> None:
    wall = Wall()
    kube = keyless_kube(stand_in, namespace, tmp_path / "config", wall)
    lock = app_lock(namespace, APP, TARGET, "alice@laptop/101")
    stand_in.api.knobs.reset_calls()
    assert kube.try_lock(lock).state is LockState.MINE
    assert lease_calls(stand_in) == {"get leases": 1, "create leases": 1}
    lease = lease_of(admin, namespace, lock.name)
    assert lease.metadata is not None
    assert lease.spec is not None
    assert lease.metadata.labels == ownership.lock_labels(APP, TARGET)
    assert (lease.spec.holderIdentity, lease.spec.leaseDurationSeconds, lease.spec.leaseTransitions) == (
        "alice@laptop/101", 30, 0)
    assert lease.spec.acquireTime == lease.spec.renewTime == T0

    wall.now = T0 + timedelta(seconds=10)
    stand_in.api.knobs.reset_calls()
    kube.renew_lock(lock)
    assert lease_calls(stand_in) == {"update leases": 1}  # on the resourceVersion it wrote: no read
    renewed = lease_of(admin, namespace, lock.name).spec
    assert renewed is not None
    assert renewed.renewTime == T0 + timedelta(seconds=10)
    assert renewed.acquireTime == T0

    stand_in.api.knobs.reset_calls()
    kube.release_lock(lock)
    assert lease_calls(stand_in) == {"update leases": 1}
    released = lease_of(admin, namespace, lock.name).spec
    assert released is not None
    assert released.holderIdentity is None

    stand_in.api.knobs.reset_calls()
    again = app_lock(namespace, APP, TARGET, "bob@desk/7")
    assert kube.try_lock(again).state is LockState.MINE
    assert lease_calls(stand_in) == {"get leases": 1, "update leases": 1}
    taken = lease_of(admin, namespace, lock.name).spec
    assert taken is not None
    assert (taken.holderIdentity, taken.leaseTransitions) == ("bob@desk/7", 1)


def test_a_held_lock_names_its_holder_and_until_when_and_is_not_written(
        stand_in: KubeStandIn, namespace: str, tmp_path: Path) -> None:
    wall = Wall()
    first = keyless_kube(stand_in, namespace, tmp_path / "config", wall)
    second = keyless_kube(stand_in, namespace, tmp_path / "config", wall)
    assert first.try_lock(app_lock(namespace, APP, TARGET, "ci-run-7@runner/42")).state is LockState.MINE
    wall.now = T0 + timedelta(seconds=29)
    stand_in.api.knobs.reset_calls()
    status = second.try_lock(app_lock(namespace, APP, TARGET, "alice@laptop/101"))
    assert status == LockStatus(LockState.HELD, "ci-run-7@runner/42", T0, T0 + timedelta(seconds=30))
    assert lease_calls(stand_in) == {"get leases": 1}


def test_a_holder_that_died_is_taken_over_after_its_lease_duration(
        stand_in: KubeStandIn, namespace: str, admin: Client, tmp_path: Path) -> None:
    wall = Wall()
    kube = keyless_kube(stand_in, namespace, tmp_path / "config", wall)
    lock = app_lock(namespace, APP, TARGET, "alice@laptop/101")
    # What a killed apply leaves: its Lease, renewed for the last time at T0.
    admin.create(Lease(metadata=ObjectMeta(name=lock.name, namespace=namespace,
                                           labels=ownership.lock_labels(APP, TARGET)),
                       spec=LeaseSpec(holderIdentity="dead@gone/1", leaseDurationSeconds=30, acquireTime=T0,
                                      renewTime=T0, leaseTransitions=4)))
    wall.now = T0 + timedelta(seconds=29)
    assert kube.try_lock(lock).holder == "dead@gone/1"
    wall.now = T0 + timedelta(seconds=31)
    assert kube.try_lock(lock).state is LockState.MINE
    spec = lease_of(admin, namespace, lock.name).spec
    assert spec is not None
    assert (spec.holderIdentity, spec.leaseTransitions, spec.acquireTime) == ("alice@laptop/101", 5, wall.now)


def test_two_at_once_one_waits_then_goes_ahead_when_the_first_releases(
        stand_in: KubeStandIn, namespace: str, admin: Client, tmp_path: Path) -> None:
    wall = Wall()
    first_kube = keyless_kube(stand_in, namespace, tmp_path / "config", wall)
    second_kube = keyless_kube(stand_in, namespace, tmp_path / "config", wall)
    holding, finish = threading.Event(), threading.Event()

    def first_apply() -> None:
        with engine.app_lock(first_kube, APP, TARGET, namespace, holder="first@ci/1"):
            holding.set()
            finish.wait(60)  # applying, until the second has seen the lock held

    first = threading.Thread(target=first_apply)
    first.start()
    assert holding.wait(60)
    time = VirtualTime()
    told: list[LockStatus] = []

    def sleep(seconds: float) -> None:  # the second apply waits: the first finishes meanwhile
        time.sleep(seconds)
        finish.set()
        first.join(60)

    with engine.app_lock(second_kube, APP, TARGET, namespace, holder="second@ci/2", timeout=300,
                         clock=time.clock, sleep=sleep, waiting=told.append):
        spec = lease_of(admin, namespace, app_lock(namespace, APP, TARGET, "").name).spec
        assert spec is not None
        assert (spec.holderIdentity, spec.leaseTransitions) == ("second@ci/2", 1)
    assert [t.holder for t in told] == ["first@ci/1"]
    assert len(time.sleeps) == 1
    assert time.now < 300


def test_lock_timeout_zero_fails_at_once_naming_the_holder(
        stand_in: KubeStandIn, namespace: str, tmp_path: Path) -> None:
    wall = Wall()
    kube = keyless_kube(stand_in, namespace, tmp_path / "config", wall)
    assert kube.try_lock(app_lock(namespace, APP, TARGET, "ci-run-7@runner/42")).state is LockState.MINE
    time = VirtualTime()
    with pytest.raises(LockHeld) as raised, engine.app_lock(kube, APP, TARGET, namespace, timeout=0,
                                                            holder="alice@laptop/101", clock=time.clock,
                                                            sleep=time.sleep):
        pytest.fail("not without the lock")
    assert time.sleeps == []
    assert raised.value.exit_code == 4
    assert "locked by ci-run-7@runner/42 since 2025-03-01 12:00:00 UTC" in raised.value.message


def test_different_apps_and_targets_do_not_block_each_other(
        stand_in: KubeStandIn, namespace: str, tmp_path: Path) -> None:
    kube = keyless_kube(stand_in, namespace, tmp_path / "config", Wall())
    assert kube.try_lock(app_lock(namespace, APP, TARGET, "ci-run-7@runner/42")).state is LockState.MINE
    for app, target in (("billing", TARGET), (APP, "staging")):
        with engine.app_lock(kube, app, target, namespace, timeout=0, holder="alice@laptop/101"):
            pass


def test_the_lock_is_released_when_the_block_fails(
        stand_in: KubeStandIn, namespace: str, admin: Client, tmp_path: Path) -> None:
    kube = keyless_kube(stand_in, namespace, tmp_path / "config", Wall())
    with pytest.raises(CloudError), engine.app_lock(kube, APP, TARGET, namespace, holder="alice@laptop/101"):
        raise CloudError("the apply failed")
    spec = lease_of(admin, namespace, app_lock(namespace, APP, TARGET, "").name).spec
    assert spec is not None
    assert spec.holderIdentity is None


def test_a_renewal_after_someone_took_the_lock_over_is_lost(
        stand_in: KubeStandIn, namespace: str, tmp_path: Path) -> None:
    wall = Wall()
    stalled = keyless_kube(stand_in, namespace, tmp_path / "config", wall)
    other = keyless_kube(stand_in, namespace, tmp_path / "config", wall)
    mine = app_lock(namespace, APP, TARGET, "alice@laptop/101")
    assert stalled.try_lock(mine).state is LockState.MINE
    wall.now = T0 + timedelta(minutes=5)  # alice's process stalled past its lease
    assert other.try_lock(app_lock(namespace, APP, TARGET, "bob@desk/7")).state is LockState.MINE
    with pytest.raises(LockLost, match="bob@desk/7 holds it now"):
        stalled.renew_lock(mine)
    stalled.release_lock(mine)  # releasing what is no longer ours leaves bob's lock alone
    assert other.try_lock(app_lock(namespace, APP, TARGET, "bob@desk/7")).state is LockState.MINE


def test_a_lease_keyless_did_not_label_is_never_used(
        stand_in: KubeStandIn, namespace: str, admin: Client, tmp_path: Path) -> None:
    kube = keyless_kube(stand_in, namespace, tmp_path / "config", Wall())
    lock = app_lock(namespace, APP, TARGET, "alice@laptop/101")
    admin.create(Lease(metadata=ObjectMeta(name=lock.name, namespace=namespace), spec=LeaseSpec()))
    with pytest.raises(CloudError, match="not keyless's"):
        kube.try_lock(lock)


def test_without_the_lease_rule_the_error_says_which_permission_is_missing(
        stand_in: KubeStandIn, namespace: str, tmp_path: Path) -> None:
    rules = [r for r in KEYLESS_RULES if r["resources"] != ["leases"]]
    kube = keyless_kube(stand_in, namespace, tmp_path / "config", Wall(), rules=rules)
    try:
        with pytest.raises(CloudError) as raised:
            kube.try_lock(app_lock(namespace, APP, TARGET, "alice@laptop/101"))
    finally:
        stand_in.keyless_identity([namespace])  # the module's other tests run with the README's role
    assert "(HTTP 403)" in raised.value.message
    assert 'cannot get resource "leases"' in raised.value.message
    assert "get, create and update on leases" in raised.value.hint
