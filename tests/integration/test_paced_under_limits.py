"""keyless under the sandbox's realistic limits: paced to EKS's rates, it is never throttled, so each object is read
exactly once (the sandbox's own knobs are tested in test_sandbox_aws.py and the other stand-ins' files)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from virtual_time import VirtualTime

from keyless.bindings import Binding
from keyless.clouds import AwsRole, Cloud
from keyless.ownership import Owner, ownership_tags
from keyless.porter.model import ServiceType
from keyless.providers.aws import AwsProvider
from keyless.providers.aws_api import DEFAULT_LIMITS
from keyless.sandbox.aws import AwsSandbox, DemoSeed
from keyless.sandbox.knobs import REALISTIC_LIMITS, KnobSettings, TimeScale
from keyless.targets import AwsTarget

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def time() -> VirtualTime:
    """Time that moves only when someone sleeps on it: keyless's buckets, whose sleeps refill the sandbox's too."""
    return VirtualTime()


@pytest.fixture(scope="module")
def sandbox(time: VirtualTime) -> Iterator[AwsSandbox]:
    with AwsSandbox(association_delay=0.0, time_scale=TimeScale(1.0, time.clock)) as running:
        yield running


@pytest.fixture(scope="module")
def seed(sandbox: AwsSandbox) -> DemoSeed:
    return sandbox.seed_demo()


def test_keyless_paces_itself_below_what_the_sandbox_enforces() -> None:
    for ours, theirs in ((DEFAULT_LIMITS.eks_reads, REALISTIC_LIMITS["eks-read"]),
                         (DEFAULT_LIMITS.eks_writes, REALISTIC_LIMITS["eks-write"]),
                         (DEFAULT_LIMITS.iam_reads, REALISTIC_LIMITS["iam-read"]),
                         (DEFAULT_LIMITS.iam_writes, REALISTIC_LIMITS["iam-write"])):
        assert ours.per_second <= theirs.per_second
        assert ours.burst <= theirs.burst


def test_keyless_paced_at_eks_limits_is_never_throttled(sandbox: AwsSandbox, seed: DemoSeed, time: VirtualTime,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in sandbox.env().items():
        monkeypatch.setenv(key, value)
    eks = sandbox.client("eks")
    app = "knobbed"
    for i in range(45):
        eks.create_pod_identity_association(
            clusterName=seed.cluster, namespace=app, serviceAccount=f"{app}-s{i}",
            roleArn=seed.roles["keyless-demo-api"], tags=ownership_tags(Owner(app, f"s{i}", "t")))
    sandbox.knobs.configure(KnobSettings(rate_limits=dict(REALISTIC_LIMITS)))
    try:
        httpx.post(f"{sandbox.eks_url}/_sandbox/calls/reset", timeout=10).raise_for_status()
        time.sleep(60.0)  # full buckets on both sides
        # keyless's buckets run on the same still clock: past their burst they sleep on it, which refills the
        # sandbox's too, as time passing would.
        provider = AwsProvider(AwsTarget(cloud="aws", region=sandbox.region, cluster=seed.cluster, namespace=app),
                               sleep=time.sleep, clock=time.clock)
        role = seed.roles["keyless-demo-api"]
        binding = Binding(app=app, service="s0", kind=ServiceType.WEB, target="t", cloud=Cloud.AWS, namespace=app,
                          service_account=f"{app}-s0", identity=AwsRole(role, role))
        observed = provider.observe(app, "t", [binding])
        assert len(observed) == 45
        calls = httpx.get(f"{sandbox.eks_url}/_sandbox/calls", timeout=10).json()["operations"]
        # Every request answered the first time: one List, one Describe per object, no throttled retry.
        assert calls == {"ListPodIdentityAssociations": 1, "DescribePodIdentityAssociation": 45}
    finally:
        sandbox.knobs.configure(KnobSettings())
