"""The sandbox's knobs: EKS refusing requests past its limits as EKS does, the time scale, latency, and the
per-operation counter, from Python, over HTTP and from `keyless sandbox up`; keyless paced under them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from keyless.bindings import Binding
from keyless.cli import app as cli
from keyless.clouds import AwsRole, Cloud
from keyless.ownership import Owner, ownership_tags
from keyless.porter.model import ServiceType
from keyless.providers.aws import AwsProvider
from keyless.sandbox.aws import AwsSandbox, DemoSeed
from keyless.sandbox.aws.eks_api import REAL_READ_LIMIT
from keyless.sandbox.azure.limits import REAL_WRITE_LIMITS
from keyless.sandbox.limits import RateLimits, SandboxKnobs
from keyless.targets import AwsTarget

pytestmark = pytest.mark.integration

NO_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1})


class StillTime:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 0.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


@pytest.fixture(scope="module")
def time() -> StillTime:
    return StillTime()


@pytest.fixture(scope="module")
def sandbox(time: StillTime) -> Iterator[AwsSandbox]:
    knobs = SandboxKnobs(rate_limits=RateLimits.REALISTIC, time_scale=2.0)
    with AwsSandbox(association_delay=0.0, knobs=knobs, clock=time) as running:
        yield running


@pytest.fixture(scope="module")
def seed(sandbox: AwsSandbox) -> DemoSeed:
    return sandbox.seed_demo()


def _knobs(sandbox: AwsSandbox, **body: Any) -> dict[str, Any]:
    url = f"{sandbox.eks_url}/_sandbox/knobs"
    answer = httpx.post(url, json=body, timeout=10) if body else httpx.get(url, timeout=10)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def test_past_its_read_limit_eks_answers_throttling_until_the_bucket_refills(
        sandbox: AwsSandbox, seed: DemoSeed, time: StillTime) -> None:
    eks = sandbox.client("eks", NO_RETRIES)
    time.advance(60.0)  # a full bucket
    burst = REAL_READ_LIMIT.burst
    for _ in range(burst):
        eks.list_pod_identity_associations(clusterName=seed.cluster)
    with pytest.raises(ClientError) as raised:
        eks.list_pod_identity_associations(clusterName=seed.cluster)
    assert raised.value.response["Error"]["Code"] == "ThrottlingException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    # At time scale 2 the bucket refills at twice EKS's rate: one token is due after 1 / (2 x 20/s), not before.
    time.advance(0.5 / (REAL_READ_LIMIT.per_second * 2.0))
    with pytest.raises(ClientError):
        eks.list_pod_identity_associations(clusterName=seed.cluster)
    time.advance(0.6 / (REAL_READ_LIMIT.per_second * 2.0))
    eks.list_pod_identity_associations(clusterName=seed.cluster)


def test_the_counter_names_each_operation_and_resets_over_http(sandbox: AwsSandbox, seed: DemoSeed,
                                                               time: StillTime) -> None:
    time.advance(60.0)
    httpx.post(f"{sandbox.eks_url}/_sandbox/operations/reset", timeout=10)
    eks = sandbox.client("eks", NO_RETRIES)
    eks.describe_cluster(name=seed.cluster)
    eks.list_pod_identity_associations(clusterName=seed.cluster)
    eks.list_pod_identity_associations(clusterName=seed.cluster)
    counts = httpx.get(f"{sandbox.eks_url}/_sandbox/operations", timeout=10).json()
    assert counts == {"DescribeCluster": 1, "ListPodIdentityAssociations": 2}


def test_the_knobs_are_read_and_set_over_http(sandbox: AwsSandbox, time: StillTime) -> None:
    assert _knobs(sandbox) == {"latency": 0.0, "rateLimits": "realistic", "timeScale": 2.0}
    try:
        assert _knobs(sandbox, rateLimits="off", latency=0.01) == {"latency": 0.01, "rateLimits": "off",
                                                                   "timeScale": 2.0}
        bad = httpx.post(f"{sandbox.eks_url}/_sandbox/knobs", json={"rateLimits": "sometimes"}, timeout=10)
        assert bad.status_code == 400
        assert "rateLimits must be one of off, realistic" in bad.json()["message"]
    finally:
        _knobs(sandbox, rateLimits="realistic", latency=0.0)


def test_keyless_paced_at_eks_limits_is_never_throttled(sandbox: AwsSandbox, seed: DemoSeed, time: StillTime,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in sandbox.env().items():
        monkeypatch.setenv(key, value)
    eks = sandbox.client("eks", NO_RETRIES)
    app = "knobbed"
    time.advance(60.0)
    _knobs(sandbox, rateLimits="off")
    for i in range(30):
        eks.create_pod_identity_association(
            clusterName=seed.cluster, namespace=app, serviceAccount=f"{app}-s{i}",
            roleArn=seed.roles["keyless-demo-api"],
            tags=ownership_tags(Owner(app, f"s{i}", "t")))
    _knobs(sandbox, rateLimits="realistic")
    httpx.post(f"{sandbox.eks_url}/_sandbox/operations/reset", timeout=10)
    time.advance(60.0)
    # keyless's buckets run on the same still clock: past the burst they wait (advancing it), as the cloud's refill.
    provider = AwsProvider(AwsTarget(cloud="aws", region=sandbox.region, cluster=seed.cluster, namespace=app),
                           sleep=time.advance, clock=time)
    binding = Binding(app=app, service="s0", kind=ServiceType.WEB, target="t", cloud=Cloud.AWS, namespace=app,
                      service_account=f"{app}-s0", identity=AwsRole(seed.roles["keyless-demo-api"],
                                                                    seed.roles["keyless-demo-api"]))
    observed = provider.observe(app, "t", [binding])
    assert len(observed) == 30
    counts = httpx.get(f"{sandbox.eks_url}/_sandbox/operations", timeout=10).json()
    # Every request answered the first time: exactly one per object, no throttled retry.
    assert counts["DescribePodIdentityAssociation"] == 30
    assert counts["ListPodIdentityAssociations"] == 1


def test_the_time_scale_speeds_up_the_azure_write_limits_too() -> None:
    scaled = REAL_WRITE_LIMITS.scaled(10.0)
    assert scaled.per_identity is not None
    assert REAL_WRITE_LIMITS.per_identity is not None
    assert scaled.per_identity.per_second == pytest.approx(REAL_WRITE_LIMITS.per_identity.per_second * 10)
    assert SandboxKnobs(latency=0.05, time_scale=10.0).request_latency == pytest.approx(0.005)


@pytest.mark.parametrize(("args", "message"), [
    (["--rate-limits", "sometimes"], "--rate-limits sometimes: expected off or realistic"),
    (["--latency", "soon"], "--latency soon: not a duration"),
    (["--time-scale", "0"], "the time scale must be positive"),
])
def test_sandbox_up_refuses_bad_knobs_before_starting_anything(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["sandbox", "up", *args])
    assert result.exit_code == 2
    assert message in result.output
