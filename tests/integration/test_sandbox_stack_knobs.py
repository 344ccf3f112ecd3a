"""The whole sandbox's knobs through its control endpoint, as `keyless sandbox knobs` and `sandbox calls` use it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError
from e2e_support import Sandbox

from keyless.errors import UsageError
from keyless.sandbox import control
from keyless.sandbox.knobs import REALISTIC_LIMITS

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _defaults(sandbox: Sandbox) -> Iterator[None]:
    yield
    control.set_knobs(sandbox[1], {"rateLimits": "off", "latency": 0, "jitter": 0, "faultRate": 0, "timeScale": 1})


def test_knobs_set_through_the_control_endpoint_reach_every_front(sandbox: Sandbox) -> None:
    stack, state = sandbox
    fronts = control.set_knobs(state, {"rateLimits": "realistic", "latency": "5ms", "timeScale": 10})["fronts"]
    clusters = {f"kube-{c.cluster_name}" for c in (stack.eks, stack.aks, stack.gke) if c is not None}
    assert len(clusters) == 3
    assert set(fronts) == {"aws", "arm", "entra", "gcp", *clusters}
    for front in fronts.values():
        assert front["latency"] == 0.005
        assert front["timeScale"] == 10.0
        assert set(front["rateLimits"]) == set(REALISTIC_LIMITS)
    assert stack.time.factor == 10.0  # one time scale for every stand-in
    assert stack.aws.time is stack.azure.time is stack.gcp.time
    with pytest.raises(UsageError, match="faultRate"):
        control.set_knobs(state, {"faultRate": 7})


def test_random_faults_and_counters_across_the_stack(sandbox: Sandbox) -> None:
    stack, state = sandbox
    control.calls(state, reset=True)
    control.set_knobs(state, {"faultRate": 1.0, "faultSeed": 3})
    eks = stack.aws.client("eks")
    with pytest.raises(ClientError):  # every call fails, botocore's retries included
        eks.list_pod_identity_associations(clusterName=stack.aws.agent_cluster)
    control.set_knobs(state, {"faultRate": 0})
    eks.list_pod_identity_associations(clusterName=stack.aws.agent_cluster)
    counted = control.calls(state)
    assert counted["aws"]["operations"]["ListPodIdentityAssociations"] >= 2
    assert counted["arm"]["total"] == 0
    assert control.calls(state, reset=True)["aws"]["total"] == 0
