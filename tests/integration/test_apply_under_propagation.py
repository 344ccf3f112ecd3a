"""keyless's apply against realistic propagation, on a virtual clock: Entra ID flapping after a first success, and EKS
associations that take seconds to reach the Pod Identity agent (issue 15 item 3)."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Collection, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.msi.models import Identity
from virtual_time import VirtualTime

from keyless import engine
from keyless.kube.lock import AppLock, LockState, LockStatus
from keyless.plan import Plan, Resource
from keyless.plan.model import (
    AccountSpec,
    Intent,
    ObjectRef,
    ObservedServiceAccount,
    ObservedWorkload,
    PodTemplateSettings,
)
from keyless.porter import load_app
from keyless.providers.aws import PROPAGATION_SETTLE, AwsProvider
from keyless.providers.azure import AzureProvider
from keyless.providers.retry import RetryPolicy
from keyless.sandbox.aws import AwsSandbox
from keyless.sandbox.azure import DEMO_CLUSTER, DEMO_RESOURCE_GROUP, AzureSandbox
from keyless.sandbox.knobs import REALISTIC_PROPAGATION, KnobSettings, Propagation, TimeScale
from keyless.sandbox.kube.tokens import ServiceAccountIssuer
from keyless.targets import load_targets

pytestmark = pytest.mark.integration

APP = "shop"
ISSUER = "https://oidc.keyless.test/clusters/flapping/"
AUDIENCE = "api://AzureADTokenExchange"
FAST = RetryPolicy(max_attempts=8, base_delay=0.05, max_delay=0.3, deadline=10.0)


class Cluster:
    """keyless's KubeSide in memory: Porter's deployments, restarts stamped on the virtual clock, real tokens."""

    def __init__(self, clock: VirtualTime, services: Collection[str], issuer: ServiceAccountIssuer | None = None
                 ) -> None:
        self.clock, self.issuer = clock, issuer
        self.workloads = [ObservedWorkload(APP, "Deployment", f"{APP}-{s}", s, None, None) for s in services]
        self.restarted: dict[str, float] = {}

    def observe(self, namespace: str, app: str, service_accounts: Collection[str] = ()
                ) -> tuple[list[ObservedServiceAccount], list[ObservedWorkload]]:
        return [], list(self.workloads)

    def apply_service_account(self, ref: ObjectRef, spec: AccountSpec, remove_annotations: Collection[str]) -> None:
        return None

    def record_intent(self, intent: Intent) -> None:
        return None

    def remove_annotations(self, ref: ObjectRef, keys: Collection[str]) -> None:
        return None

    def delete_service_account(self, ref: ObjectRef) -> bool:
        return False

    def update_workload(self, workload: ObjectRef, service: str, settings: PodTemplateSettings) -> None:
        self.restarted[service] = self.clock.clock()

    def wait_rollout(self, namespace: str, name: str, timeout: float) -> bool:
        return True

    def request_token(self, namespace: str, name: str, audience: str) -> str | None:
        assert self.issuer is not None
        return self.issuer.mint(namespace=namespace, service_account=name, service_account_uid=str(uuid.uuid4()),
                                audiences=[audience])

    # Nobody else applies this app here: the apply lock is always this apply's.
    def try_lock(self, lock: AppLock) -> LockStatus:
        return LockStatus(LockState.MINE)

    def renew_lock(self, lock: AppLock) -> None:
        return None

    def release_lock(self, lock: AppLock) -> None:
        return None

    def complete(self, plan: Plan) -> None:
        return None


def _plan_and_apply(porter: str, targets: str, provider: Any, cluster: Cluster, clock: VirtualTime
                    ) -> engine.ApplyReport:
    loaded = load_app(textwrap.dedent(porter).encode(), "porter.yaml", {})
    target = load_targets(textwrap.dedent(targets).encode(), "keyless.targets.yaml", {}).get("prod")
    planned = engine.plan_app(engine.PlanInput(loaded, APP, "prod", target), provider, cluster)
    return engine.apply_plan(planned.plan, provider, cluster, clock=clock.clock, sleep=clock.sleep)


# ---- Azure: the rollout waits until exchanges are steady, not for one lucky one ------------------------------


@pytest.fixture(scope="module")
def azure_time() -> VirtualTime:
    return VirtualTime()


@pytest.fixture(scope="module")
def issuer() -> ServiceAccountIssuer:
    return ServiceAccountIssuer(ISSUER)


@pytest.fixture(scope="module")
def azure(issuer: ServiceAccountIssuer, azure_time: VirtualTime) -> Iterator[AzureSandbox]:
    with AzureSandbox(write_hold=0.0, time_scale=TimeScale(1.0, azure_time.clock)) as running:
        running.publish_issuer(ISSUER, issuer.jwks)
        running.seed_demo()
        # This module signs as a fixed issuer; on Azure, AKS picks it (https://<region>.oic.prod-aks.azure.com/...).
        running.set_cluster(replace(running.cluster(DEMO_CLUSTER), issuer_url=ISSUER))
        yield running


@pytest.fixture
def azure_env(azure: AzureSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_USERNAME", "AZURE_PASSWORD",
                 "AZURE_TOKEN_CREDENTIALS", "IDENTITY_ENDPOINT", "MSI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in azure.env().items():
        monkeypatch.setenv(name, value)


def _azure_apply(azure: AzureSandbox, clock: VirtualTime, issuer: ServiceAccountIssuer, identity: str,
                 steady_for: float) -> tuple[engine.ApplyReport, Cluster]:
    with ManagedServiceIdentityClient(azure.deployer_credential(), azure.subscription_id, base_url=azure.arm_url,
                                      connection_verify=str(azure.ca_bundle)) as msi:
        # A fixed name: the sandbox draws each write's schedule from the seed and what was written, so the test is
        # the same on every run.
        msi.user_assigned_identities.create_or_update(DEMO_RESOURCE_GROUP, identity, Identity(location="eastus"))
    targets = f"""\
        targets:
          prod:
            cloud: azure
            subscription: {azure.subscription_id}
            resourceGroup: {DEMO_RESOURCE_GROUP}
            cluster: {DEMO_CLUSTER}
            namespace: {APP}
            armEndpoint: {azure.arm_url}
            caBundle: {azure.ca_bundle}
        """
    porter = f"""\
        name: {APP}
        services:
          - name: api
            type: web
            port: 8080
            connections:
              - type: azureManagedIdentity
                identityName: {identity}
                resourceGroup: {DEMO_RESOURCE_GROUP}
        """
    cluster = Cluster(clock, ["api"], issuer)
    target = load_targets(textwrap.dedent(targets).encode(), "keyless.targets.yaml", {}).get("prod")
    with AzureProvider(target, retry=FAST, sleep=clock.sleep, clock=clock.clock, steady_for=steady_for) as provider:
        return _plan_and_apply(porter, targets, provider, cluster, clock), cluster


def _exchanges_from_now(azure: AzureSandbox, clock: VirtualTime, issuer: ServiceAccountIssuer, identity: str,
                        seconds: float) -> list[str]:
    """What a pod started now gets from Entra ID for the next `seconds`, tried every half second."""
    client_id = azure.identity(identity).client_id
    token = issuer.mint(namespace=APP, service_account=f"{APP}-api", service_account_uid=str(uuid.uuid4()),
                        audiences=[AUDIENCE])
    seen = []
    end = clock.clock() + seconds
    while clock.clock() <= end:
        answer = httpx.post(f"{azure.authority_url}{azure.tenant_id}/oauth2/v2.0/token", verify=False, data={
            "grant_type": "client_credentials", "client_id": client_id, "client_assertion": token,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "scope": "https://management.azure.com/.default"})
        seen.append("ok" if answer.status_code == 200 else f"AADSTS{answer.json()['error_codes'][0]}")
        clock.sleep(0.5)
    return seen


# Seeded: with seed 1, both credentials below take effect after 10-20 s, then flap; the first works at most 10 s at a
# time before its last outage, so 15 s of steady exchanges outlast the flap.
FLAPPING = KnobSettings(fault_seed=1, propagation={"entra-credential": Propagation(10.0, 20.0, 40.0, 0.5)})


def test_apply_rolls_pods_only_once_the_exchange_is_steady_and_they_then_get_tokens(
        azure: AzureSandbox, azure_env: None, azure_time: VirtualTime, issuer: ServiceAccountIssuer) -> None:
    azure.entra_knobs.configure(FLAPPING)
    try:
        report, cluster = _azure_apply(azure, azure_time, issuer, "flap-steady", steady_for=15.0)
    finally:
        azure.entra_knobs.configure(KnobSettings())
    assert not report.failures, report.failures
    [restart] = [r.message for r in report.results if r.action.resource is Resource.WORKLOAD]
    assert "token exchange works" in restart
    assert "refusal(s) past a first success" in restart  # it saw the credential flap, and waited it out
    assert "api" in cluster.restarted
    # The pods restarted then get a token at once, and every time after.
    assert set(_exchanges_from_now(azure, azure_time, issuer, "flap-steady", 60.0)) == {"ok"}


def test_one_lucky_exchange_would_have_rolled_pods_into_the_flap(
        azure: AzureSandbox, azure_env: None, azure_time: VirtualTime, issuer: ServiceAccountIssuer) -> None:
    # The same flapping credential proved by a single exchange (what keyless did before): its pods restart while
    # Entra ID still refuses some exchanges. This is what the steady wait above prevents.
    azure.entra_knobs.configure(FLAPPING)
    try:
        report, _ = _azure_apply(azure, azure_time, issuer, "flap-eager", steady_for=0.0)
    finally:
        azure.entra_knobs.configure(KnobSettings())
    assert not report.failures, report.failures
    assert "AADSTS70021" in _exchanges_from_now(azure, azure_time, issuer, "flap-eager", 60.0)


# ---- AWS: pods restart once the association has reached the agent -------------------------------------------


@pytest.fixture(scope="module")
def aws_time() -> VirtualTime:
    return VirtualTime()


@pytest.fixture(scope="module")
def aws(aws_time: VirtualTime) -> Iterator[AwsSandbox]:
    with AwsSandbox(time_scale=TimeScale(1.0, aws_time.clock)) as running:
        running.seed_demo()
        yield running


def test_an_aws_apply_restarts_pods_only_once_realistic_associations_have_settled(
        aws: AwsSandbox, aws_time: VirtualTime, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    for name, value in aws.env().items():
        monkeypatch.setenv(name, value)
    aws.knobs.configure(KnobSettings(fault_seed=1, propagation=dict(REALISTIC_PROPAGATION)))
    services = [f"s{i}" for i in range(6)]
    porter = f"name: {APP}\nservices:\n" + "".join(
        f"  - name: {s}\n    type: worker\n    connections:\n      - type: awsRole\n        role: keyless-demo-api\n"
        for s in services)
    targets = f"""\
        targets:
          prod:
            cloud: aws
            region: {aws.region}
            cluster: {aws.agent_cluster}
            namespace: {APP}
        """
    settled_at_restart: dict[str, bool] = {}

    class Watching(Cluster):
        def update_workload(self, workload: ObjectRef, service: str, settings: PodTemplateSettings) -> None:
            super().update_workload(workload, service, settings)
            account = f"{APP}-{service}"
            settled_at_restart[service] = aws.association_for(aws.agent_cluster, APP, account) is not None

    cluster = Watching(aws_time, services)
    target = load_targets(textwrap.dedent(targets).encode(), "keyless.targets.yaml", {}).get("prod")
    written = aws_time.clock()
    try:
        # keyless's own settle wait (PROPAGATION_SETTLE), on the virtual clock, against the realistic delays.
        report = _plan_and_apply(porter, targets, AwsProvider(target, sleep=aws_time.sleep, clock=aws_time.clock),
                                 cluster, aws_time)
    finally:
        aws.knobs.configure(KnobSettings())
    assert not report.failures, report.failures
    assert set(cluster.restarted) == set(services)
    assert all(at - written >= PROPAGATION_SETTLE - 0.5 for at in cluster.restarted.values()), cluster.restarted
    assert settled_at_restart == dict.fromkeys(services, True)  # every new pod would get its role
    # The delays drawn for these writes: some longer than the 5 s keyless used to wait, whose pods would have started
    # before the webhook and the agent knew the association.
    drawn = [REALISTIC_PROPAGATION["eks-association"].settling(
        1, f"eks-association/{aws.region}/{aws.agent_cluster}/{APP}/{APP}-{s}#1").delay for s in services]
    assert max(drawn) > 5.0, drawn
