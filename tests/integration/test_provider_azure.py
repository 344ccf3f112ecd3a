"""Integration tests of AzureProvider: the real azure-mgmt clients and azure-identity over HTTPS against the sandbox."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ResourceNotFoundError
from azure.identity import WorkloadIdentityCredential
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.msi.models import FederatedIdentityCredential, Identity
from virtual_time import VirtualTime

from keyless import names
from keyless.bindings import Binding
from keyless.clouds import AzureIdentity, Cloud
from keyless.errors import CloudError, InvalidInput
from keyless.federation import subject_for
from keyless.ownership import Owner
from keyless.plan import Action, ActionKind, Blocker, ObservedBinding, Resource
from keyless.plan.model import ObjectRef
from keyless.plan.planner import plan_bindings
from keyless.porter.loader import load_app
from keyless.porter.model import ServiceType
from keyless.providers.azure import AzureProvider
from keyless.providers.azure_api import AzureLimits
from keyless.providers.azure_credentials import AUDIENCE
from keyless.providers.base import PreflightIssue, PreflightSeverity
from keyless.providers.retry import RateLimit, RetryPolicy
from keyless.sandbox.azure import DEMO_CLUSTER, DEMO_CLUSTER_OFF, DEMO_RESOURCE_GROUP, AzureDemoSeed, AzureSandbox
from keyless.sandbox.kube.tokens import ServiceAccountIssuer
from keyless.targets import AzureTarget

pytestmark = pytest.mark.integration

APP = "shop"
TARGET = "prod-aks"
RG = DEMO_RESOURCE_GROUP
ISSUER = "https://oidc.keyless.test/clusters/prod-aks/"  # with the trailing slash AKS issuers have
DELAY = 0.3  # the sandbox's propagation delay for new credentials
HOLD = 0.2  # how long a credential write holds its identity (a concurrent write meanwhile gets 409)
# Fast schedules so fault tests take little time; the shapes (attempts, deadline) are the real ones.
FAST = RetryPolicy(max_attempts=8, base_delay=0.05, max_delay=0.3, deadline=10.0)


# ---- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer() -> ServiceAccountIssuer:
    """The cluster's service-account token issuer, whose keys the sandbox's Entra ID trusts."""
    return ServiceAccountIssuer(ISSUER)


@pytest.fixture(scope="module")
def sandbox(issuer: ServiceAccountIssuer) -> Iterator[AzureSandbox]:
    with AzureSandbox(propagation_delay=DELAY, write_hold=HOLD) as running:
        running.publish_issuer(ISSUER, issuer.jwks)
        yield running


@pytest.fixture(scope="module")
def seed(sandbox: AzureSandbox) -> AzureDemoSeed:
    seeded = sandbox.seed_demo()
    # These tests sign as a fixed issuer; on Azure, AKS picks it (https://<region>.oic.prod-aks.azure.com/...).
    sandbox.set_cluster(replace(sandbox.cluster(DEMO_CLUSTER), issuer_url=ISSUER))
    return replace(seeded, cluster_issuer_url=ISSUER)


@pytest.fixture(autouse=True)
def azure_env(sandbox: AzureSandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """DefaultAzureCredential's workload identity path to the sandbox, and nothing from the developer's machine.

    REQUESTS_CA_BUNDLE is left out on purpose: the sandbox CA must reach the clients and the credential through
    the target's caBundle alone, as it would for a private CA in production."""
    for name in ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_USERNAME", "AZURE_PASSWORD",
                 "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "AZURE_TOKEN_CREDENTIALS", "IDENTITY_ENDPOINT",
                 "MSI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in sandbox.env().items():
        if name != "REQUESTS_CA_BUNDLE":
            monkeypatch.setenv(name, value)
    yield
    sandbox.reset_faults()


@pytest.fixture
def msi(sandbox: AzureSandbox, seed: AzureDemoSeed) -> Iterator[ManagedServiceIdentityClient]:
    """The person at the portal: the SDK with its own retries, as the deployer."""
    with ManagedServiceIdentityClient(sandbox.deployer_credential(), sandbox.subscription_id,
                                      base_url=sandbox.arm_url, connection_verify=str(sandbox.ca_bundle)) as client:
        yield client


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _identity(msi: ManagedServiceIdentityClient, name: str | None = None, rg: str = RG) -> str:
    """A fresh managed identity per test, so tests never see each other's credentials."""
    name = name or _unique("id")
    msi.user_assigned_identities.create_or_update(rg, name, Identity(location="eastus"))
    return name


def _by_hand(msi: ManagedServiceIdentityClient, identity: str, name: str, subject: str, *, issuer: str = ISSUER,
             audience: str = AUDIENCE, rg: str = RG) -> None:
    msi.federated_identity_credentials.create_or_update(
        rg, identity, name, FederatedIdentityCredential(issuer=issuer, subject=subject, audiences=[audience]))


def _credentials(msi: ManagedServiceIdentityClient, identity: str, rg: str = RG) -> dict[str, Any]:
    return {c.name: c for c in msi.federated_identity_credentials.list(rg, identity)}


def _target(sandbox: AzureSandbox, cluster: str = DEMO_CLUSTER, namespace: str = APP, **extra: Any) -> AzureTarget:
    return AzureTarget.model_validate({
        "cloud": "azure", "subscription": sandbox.subscription_id, "resourceGroup": RG, "cluster": cluster,
        "namespace": namespace, "armEndpoint": sandbox.arm_url, "caBundle": str(sandbox.ca_bundle), **extra})


@pytest.fixture
def providers(sandbox: AzureSandbox, seed: AzureDemoSeed) -> Iterator[list[AzureProvider]]:
    made: list[AzureProvider] = []
    yield made
    for provider in made:
        provider.close()


def _provider(sandbox: AzureSandbox, providers: list[AzureProvider], cluster: str = DEMO_CLUSTER,
              **options: Any) -> AzureProvider:
    provider = AzureProvider(_target(sandbox, cluster), retry=options.pop("retry", FAST),
                             settle=options.pop("settle", 0.0), **options)
    providers.append(provider)
    return provider


def binding_ref(service_account: str) -> ObjectRef:
    return ObjectRef("federated identity credential", "shop", service_account)


def _binding(service: str, identity: str, *, rg: str = RG, app: str = APP, namespace: str = APP) -> Binding:
    return Binding(app=app, service=service, kind=ServiceType.WEB, target=TARGET, cloud=Cloud.AZURE,
                   namespace=namespace, service_account=names.service_account_name(app, service),
                   identity=AzureIdentity(identity_name=identity, resource_group=rg))


def _blocking(issues: Sequence[PreflightIssue]) -> list[PreflightIssue]:
    return [i for i in issues if i.severity is PreflightSeverity.BLOCKING]


def _plan(provider: AzureProvider, bindings: Sequence[Binding], *, recorded: Sequence[str] = (),
          services: Sequence[str] | None = None) -> tuple[list[Action], list[Blocker]]:
    """resolve -> preflight -> observe -> plan, as the engine does it; issues must not block."""
    resolved, issues = provider.resolve(bindings)
    assert not _blocking(issues), issues
    assert not _blocking(provider.preflight(resolved))
    observed = provider.observe(APP, TARGET, resolved, recorded)
    return plan_bindings(resolved, observed, app=APP, target=TARGET, cloud=Cloud.AZURE,
                         services_in_app=services if services is not None else [b.service for b in bindings])


def _apply(provider: AzureProvider, actions: Sequence[Action]) -> list[str]:
    messages = []
    for action in actions:
        if action.changes:
            outcome = provider.apply(action)
            assert outcome.ok, outcome.message
            messages.append(outcome.message)
            if action.kind in (ActionKind.CREATE, ActionKind.REPLACE):
                assert provider.wait_visible(action, 5.0)
    return messages


def _recorded(identity: str, rg: str = RG) -> str:
    return AzureIdentity(identity_name=identity, resource_group=rg).describe()


# ---- the happy path -------------------------------------------------------------------------------


def test_create_observe_then_nothing_to_do(sandbox: AzureSandbox, providers: list[AzureProvider],
                                          msi: ManagedServiceIdentityClient) -> None:
    identity = _identity(msi)
    provider = _provider(sandbox, providers)
    wanted = [_binding("api", identity), _binding("worker", identity)]

    resolved, issues = provider.resolve(wanted)
    assert issues == []
    made = sandbox.identity(identity)
    assert {(b.identity.client_id, b.identity.tenant_id) for b in resolved  # type: ignore[union-attr]
            } == {(made.client_id, sandbox.tenant_id)}

    actions, blockers = _plan(provider, wanted)
    assert not blockers
    assert [a.kind for a in actions] == [ActionKind.CREATE, ActionKind.CREATE]
    _apply(provider, actions)

    stored = _credentials(msi, identity)
    name = names.federated_credential_name(APP, "api", TARGET)
    assert set(stored) == {name, names.federated_credential_name(APP, "worker", TARGET)}
    assert stored[name].issuer == ISSUER  # byte for byte, trailing slash included
    assert stored[name].subject == f"system:serviceaccount:{APP}:shop-api"
    assert stored[name].audiences == [AUDIENCE]

    observed = {o.service_account: o for o in provider.observe(APP, TARGET, resolved)}
    assert observed["shop-api"].owner == Owner(APP, "api", TARGET)
    assert observed["shop-api"].identity == AzureIdentity(identity, RG)
    assert observed["shop-api"].id == stored[name].id
    assert observed["shop-api"].details["issuer"] == ISSUER

    again, _ = _plan(provider, wanted)
    assert [a.kind for a in again] == [ActionKind.NOOP, ActionKind.NOOP]


def test_the_issuer_is_stored_exactly_as_the_cluster_reports_it(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    cluster = _unique("aks")
    odd = "https://oidc.keyless.test/Clusters/No-Slash"  # no trailing slash, mixed case: kept as is
    sandbox.add_cluster(cluster, issuer_url=odd)
    identity = _identity(msi)
    provider = _provider(sandbox, providers, cluster)
    _apply(provider, _plan(provider, [_binding("api", identity)])[0])
    [stored] = _credentials(msi, identity).values()
    assert stored.issuer == odd


def test_a_credential_deleted_by_hand_is_created_again(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    identity = _identity(msi)
    provider = _provider(sandbox, providers)
    wanted = [_binding("api", identity)]
    _apply(provider, _plan(provider, wanted)[0])
    msi.federated_identity_credentials.delete(RG, identity, names.federated_credential_name(APP, "api", TARGET))

    assert provider.observe(APP, TARGET, provider.resolve(wanted)[0], [_recorded(identity)]) == []
    actions, _ = _plan(provider, wanted, recorded=[_recorded(identity)])
    assert [a.kind for a in actions] == [ActionKind.CREATE]
    _apply(provider, actions)
    assert list(_credentials(msi, identity)) == [names.federated_credential_name(APP, "api", TARGET)]


def test_a_removed_service_deletes_its_credential_found_through_the_recorded_identity(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    identity, other = _identity(msi), _identity(msi)
    provider = _provider(sandbox, providers)
    _apply(provider, _plan(provider, [_binding("api", identity), _binding("worker", other)])[0])

    # porter.yaml now has only the api service; the worker's identity is known from its service account.
    actions, _ = _plan(provider, [_binding("api", identity)], recorded=[_recorded(other), _recorded(identity)],
                       services=["api"])
    assert [(a.kind, a.service) for a in actions] == [(ActionKind.NOOP, "api"), (ActionKind.DELETE, "worker")]
    assert actions[1].reason.startswith("service removed from porter.yaml")
    _apply(provider, actions)
    assert _credentials(msi, other) == {}
    assert list(_credentials(msi, identity)) == [names.federated_credential_name(APP, "api", TARGET)]
    assert provider.wait_visible(actions[1], 5.0)  # a delete is "visible" once it is gone


def test_another_identity_replaces_the_credential(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    old, new = _identity(msi), _identity(msi)
    provider = _provider(sandbox, providers)
    _apply(provider, _plan(provider, [_binding("api", old)])[0])

    actions, _ = _plan(provider, [_binding("api", new)], recorded=[_recorded(old)])
    assert [a.kind for a in actions] == [ActionKind.REPLACE]
    _apply(provider, actions)
    assert _credentials(msi, old) == {}
    assert list(_credentials(msi, new)) == [names.federated_credential_name(APP, "api", TARGET)]


def test_a_namespace_move_rewrites_the_subject_in_place(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    identity = _identity(msi)
    provider = _provider(sandbox, providers)
    _apply(provider, _plan(provider, [_binding("api", identity)])[0])

    actions, _ = _plan(provider, [_binding("api", identity, namespace="shop-v2")])
    assert [a.kind for a in actions] == [ActionKind.REPLACE]
    _apply(provider, actions)
    [stored] = _credentials(msi, identity).values()
    assert stored.subject == "system:serviceaccount:shop-v2:shop-api"


# ---- resolve and preflight: what blocks, and what it says -------------------------------------------


def test_a_missing_identity_blocks_naming_service_identity_and_group(
        sandbox: AzureSandbox, providers: list[AzureProvider]) -> None:
    provider = _provider(sandbox, providers)
    resolved, issues = provider.resolve([_binding("api", "nobody-home")])
    [issue] = issues
    assert issue.severity is PreflightSeverity.BLOCKING
    assert issue.service == "api"
    assert "'nobody-home'" in issue.message
    assert "does not exist in resource group" in issue.message
    assert repr(RG) in issue.message
    assert f"az identity create -g {RG} -n nobody-home" in issue.fix
    assert resolved[0].identity == AzureIdentity("nobody-home", RG)  # nothing filled in


def test_a_missing_resource_group_is_told_apart_from_a_missing_identity(
        sandbox: AzureSandbox, providers: list[AzureProvider]) -> None:
    provider = _provider(sandbox, providers)
    _, issues = provider.resolve([_binding("api", "shop-api", rg="no-such-group"),
                                  _binding("worker", "shop-api", rg="no-such-group")])
    [issue] = issues  # one lookup (and one issue) per distinct identity
    assert issue.severity is PreflightSeverity.BLOCKING
    assert "resource group 'no-such-group'" in issue.message
    assert "'shop-api'" in issue.message
    assert "services api, worker" in issue.message
    assert "does not exist in subscription" in issue.message
    assert "resourceGroup" in issue.fix


def test_a_missing_cluster_blocks(sandbox: AzureSandbox, providers: list[AzureProvider]) -> None:
    [issue] = _provider(sandbox, providers, "no-such-aks").preflight([])
    assert issue.severity is PreflightSeverity.BLOCKING
    assert "'no-such-aks' not found" in issue.message


def test_a_cluster_without_the_oidc_issuer_blocks_with_the_exact_fix(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    provider = _provider(sandbox, providers, DEMO_CLUSTER_OFF)
    [issue] = provider.preflight(provider.resolve([_binding("api", _identity(msi))])[0])
    assert issue.severity is PreflightSeverity.BLOCKING
    assert "OIDC issuer" in issue.message
    assert issue.fix == (f"az aks update -g {RG} -n {DEMO_CLUSTER_OFF} --enable-oidc-issuer "
                         "--enable-workload-identity")


def test_a_cluster_without_workload_identity_blocks_with_the_exact_fix(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    cluster = _unique("aks")
    sandbox.add_cluster(cluster, issuer_url=ISSUER, workload_identity_enabled=False)
    provider = _provider(sandbox, providers, cluster)
    [issue] = provider.preflight(provider.resolve([_binding("api", _identity(msi))])[0])
    assert issue.severity is PreflightSeverity.BLOCKING
    assert "workload identity" in issue.message
    assert "OIDC issuer" not in issue.message
    assert issue.fix == f"az aks update -g {RG} -n {cluster} --enable-oidc-issuer --enable-workload-identity"
    # Once fixed, the same provider sees it at the next preflight.
    sandbox.add_cluster(cluster, issuer_url=ISSUER, workload_identity_enabled=True)
    assert provider.preflight([]) == []


def test_twenty_credentials_already_on_the_identity_block(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    identity = _identity(msi)
    sandbox.write_hold = 0.0  # twenty hand-made writes: no need to wait for each
    try:
        for i in range(19):
            _by_hand(msi, identity, f"other-{i}", subject_for("elsewhere", f"sa-{i}"))
        provider = _provider(sandbox, providers)
        resolved, _ = provider.resolve([_binding("api", identity)])
        assert provider.preflight(resolved) == []  # 19 + 1 fits

        _by_hand(msi, identity, "other-19", subject_for("elsewhere", "sa-19"))
        [issue] = provider.preflight(resolved)
        assert issue.severity is PreflightSeverity.BLOCKING
        assert f"{RG}/{identity} has 20 federated credentials" in issue.message
        assert "would add 1, 21 in all" in issue.message
        assert "limit of 20" in issue.message
        assert f"--identity-name {identity}" in issue.fix

        # Rewriting a credential keyless already has adds nothing: an identity full of them is not blocked.
        msi.federated_identity_credentials.delete(RG, identity, "other-19")
        _apply(provider, _plan(provider, [_binding("api", identity)])[0])
        assert len(_credentials(msi, identity)) == 20
        assert provider.preflight(resolved) == []
        # ... and Azure's own answer, were preflight skipped, is a readable error.
        both, _ = provider.resolve([_binding("api", identity), _binding("web", identity)])
        actions, _ = plan_bindings(both, provider.observe(APP, TARGET, both), app=APP, target=TARGET,
                                   cloud=Cloud.AZURE, services_in_app=["api", "web"])
        [create] = [a for a in actions if a.kind is ActionKind.CREATE]
        with pytest.raises(CloudError) as caught:
            provider.apply(create)
        assert "Too many Federated Identity Credentials" in caught.value.message
        assert "delete unused ones" in caught.value.hint
    finally:
        sandbox.write_hold = HOLD


# ---- concurrency and faults ---------------------------------------------------------------------------


def test_two_services_on_one_identity_applied_at_once(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    """The engine applies services in parallel threads: one provider serializes writes per identity."""
    identity, other = _identity(msi), _identity(msi)
    provider = _provider(sandbox, providers, retry=RetryPolicy(max_attempts=1, base_delay=0, max_delay=0,
                                                               deadline=0))  # a 409 would surface at once
    wanted = [_binding(s, identity) for s in ("api", "worker", "web")] + [_binding("jobs", other)]
    actions, _ = _plan(provider, wanted)
    barrier = threading.Barrier(len(actions))

    def run(action: Action) -> str:
        barrier.wait()
        outcome = provider.apply(action)
        assert outcome.ok, outcome.message
        return outcome.message

    with ThreadPoolExecutor(len(actions)) as pool:
        list(pool.map(run, actions))
    assert len(_credentials(msi, identity)) == 3
    assert len(_credentials(msi, other)) == 1


def test_writes_are_paced_to_arms_limits_per_identity_and_per_subscription(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    first, second = _identity(msi), _identity(msi)
    virtual = VirtualTime()
    limits = AzureLimits(writes_per_subscription=RateLimit(per_second=2.0, burst=1),
                         writes_per_identity=RateLimit(per_second=0.25, burst=1))
    provider = _provider(sandbox, providers, limits=limits, sleep=virtual.sleep, clock=virtual.clock)
    wanted = [_binding("api", first), _binding("worker", first), _binding("web", first), _binding("jobs", second)]
    for action in _plan(provider, wanted)[0]:
        assert provider.apply(action).ok
    # Three writes on one identity at 0.25/s: two waits of four seconds (the other identity's write costs only
    # the subscription's half second, inside them).
    assert virtual.now >= 8.0
    assert max(virtual.sleeps) == pytest.approx(4.0)


def test_writes_on_one_identity_queue_while_other_identities_run_in_parallel(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    first, second = _identity(msi), _identity(msi)
    provider = _provider(sandbox, providers)
    sandbox.write_hold = 0.6

    def together(wanted: list[Binding]) -> dict[str, tuple[float, float]]:
        """When each service's write started and ended."""
        actions = [a for a in _plan(provider, wanted)[0] if a.changes]
        barrier = threading.Barrier(len(actions))
        spans: dict[str, tuple[float, float]] = {}

        def run(action: Action) -> None:
            barrier.wait()
            started = time.monotonic()
            assert provider.apply(action).ok
            spans[action.service] = (started, time.monotonic())

        with ThreadPoolExecutor(len(actions)) as pool:
            list(pool.map(run, actions))
        return spans

    def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] < b[1] and b[0] < a[1]

    try:
        spans = together([_binding("api", first), _binding("worker", first)])
        assert max(end for _, end in spans.values()) - min(start for start, _ in spans.values()) >= 1.2
        both = [_binding("api", first), _binding("worker", first), _binding("web", first), _binding("jobs", second)]
        spans = together(both)
        # One identity's writes queue behind each other; another identity's run beside them.
        assert overlap(spans["jobs"], spans["web"])  # api and worker exist already: only these two write
    finally:
        sandbox.write_hold = HOLD


def test_a_concurrent_writer_elsewhere_is_waited_out(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    """Two keyless processes (two providers) on one identity: Azure's 409 for the loser is retried."""
    identity = _identity(msi)
    sandbox.write_hold = 0.5
    try:
        first, second = _provider(sandbox, providers), _provider(sandbox, providers)
        [api], _ = _plan(first, [_binding("api", identity)])
        [worker], _ = _plan(second, [_binding("worker", identity)])
        barrier = threading.Barrier(2)

        def run(pair: tuple[AzureProvider, Action]) -> bool:
            barrier.wait()
            return pair[0].apply(pair[1]).ok

        with ThreadPoolExecutor(2) as pool:
            assert list(pool.map(run, [(first, api), (second, worker)])) == [True, True]
        assert len(_credentials(msi, identity)) == 2
    finally:
        sandbox.write_hold = HOLD


def test_throttling_is_ridden_out_honouring_retry_after(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    identity = _identity(msi)
    provider = _provider(sandbox, providers)
    [create], _ = _plan(provider, [_binding("api", identity)])
    sandbox.throttle_next(2, retry_after=1.0)
    started = time.monotonic()
    assert provider.apply(create).ok
    # FAST alone would retry within a fraction of a second; the server asked for a second each time.
    assert time.monotonic() - started >= 1.9
    assert list(_credentials(msi, identity)) == [names.federated_credential_name(APP, "api", TARGET)]


def test_endless_throttling_gives_up_in_bounded_time_with_a_clear_error(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    identity = _identity(msi)
    virtual = VirtualTime()
    unpaced = RateLimit(per_second=1000.0, burst=1000)  # the pacing is not what this test is about
    provider = _provider(sandbox, providers, retry=RetryPolicy(max_attempts=20, base_delay=0.05, max_delay=0.2,
                                                               deadline=2.5), sleep=virtual.sleep, clock=virtual.clock,
                         limits=AzureLimits(writes_per_subscription=unpaced, writes_per_identity=unpaced))
    [create], _ = _plan(provider, [_binding("api", identity)])
    sandbox.throttle_next(1000, retry_after=1.0)
    with pytest.raises(CloudError) as caught:
        provider.apply(create)
    assert virtual.now == pytest.approx(2.5)  # Retry-After honoured up to the deadline, not past it
    assert all(s <= 1.0 for s in virtual.sleeps)
    assert "TooManyRequests" in caught.value.message
    assert "gave up after" in caught.value.message
    assert "throttling" in caught.value.hint


# ---- ownership: adopting, and never deleting what keyless did not name ---------------------------------


def test_an_identical_hand_made_credential_is_used_as_is_and_never_deleted(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    identity = _identity(msi)
    _by_hand(msi, identity, "made-by-alice", subject_for(APP, "shop-api"))
    provider = _provider(sandbox, providers)
    wanted = [_binding("api", identity)]

    resolved, _ = provider.resolve(wanted)
    [warning] = provider.preflight(resolved)
    assert warning.severity is PreflightSeverity.WARNING
    assert warning.message == (f"identical credential made-by-alice exists on {RG}/{identity}; keyless uses it and "
                               "will not delete it")
    actions, _ = _plan(provider, wanted)
    assert [a.kind for a in actions] == [ActionKind.NOOP]  # credentials take no marks: used as they are
    assert "made outside keyless (keyless never deletes it)" in actions[0].reason
    # A plan that says adopt (a hand-edited one) writes nothing either.
    [message] = _apply(provider, [replace(actions[0], kind=ActionKind.ADOPT)])
    assert message == f"identical credential made-by-alice exists on {RG}/{identity}; keyless uses it and will not " \
                      "delete it"
    assert list(_credentials(msi, identity)) == ["made-by-alice"]  # nothing written

    # The service goes away: keyless plans nothing for a credential it did not name.
    gone, _ = _plan(provider, [], recorded=[_recorded(identity)], services=[])
    assert gone == []
    # And a forged delete (a hand-edited plan file) is refused, leaving it in place.
    [observed] = [o for o in provider.observe(APP, TARGET, resolved) if o.details["name"] == "made-by-alice"]
    forged = replace(observed, owner=Owner(APP, "api", TARGET))
    outcome = provider.apply(Action(ActionKind.DELETE, Resource.CLOUD_BINDING, "api", binding_ref("shop-api"), "forged",
                                    None, forged))
    assert not outcome.ok
    assert "was not named by keyless" in outcome.message
    assert list(_credentials(msi, identity)) == ["made-by-alice"]


def test_a_keyless_name_for_another_target_is_never_deleted(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    identity = _identity(msi)
    theirs = names.federated_credential_name(APP, "worker", "staging-aks")
    _by_hand(msi, identity, theirs, subject_for(APP, "shop-worker"))
    provider = _provider(sandbox, providers)
    observed = provider.observe(APP, TARGET, [], [_recorded(identity)])
    assert observed == []  # not at a desired key, not this target's: not keyless's business here
    fake = ObservedBinding(Cloud.AZURE, "x", APP, "shop-worker", AzureIdentity(identity, RG),
                           owner=Owner(APP, "worker", TARGET),
                           details={"name": theirs, "resourceGroup": RG, "identityName": identity})
    outcome = provider.apply(Action(ActionKind.DELETE, Resource.CLOUD_BINDING, "worker", binding_ref("shop-worker"),
                                    "x",
                                    None, fake))
    assert not outcome.ok
    assert theirs in _credentials(msi, identity)


def test_a_hand_made_credential_for_another_issuer_is_not_adopted(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    identity = _identity(msi)
    almost = ISSUER.rstrip("/")  # Entra would refuse tokens through it: AADSTS70021
    _by_hand(msi, identity, "missing-slash", subject_for(APP, "shop-api"), issuer=almost)
    provider = _provider(sandbox, providers)
    actions, _ = _plan(provider, [_binding("api", identity)])
    assert [a.kind for a in actions] == [ActionKind.CREATE]
    _apply(provider, actions)
    assert set(_credentials(msi, identity)) == {"missing-slash", names.federated_credential_name(APP, "api", TARGET)}
    again, _ = _plan(provider, [_binding("api", identity)])
    assert [a.kind for a in again] == [ActionKind.NOOP]
    # Removing the service deletes keyless's credential only.
    removed, _ = _plan(provider, [], recorded=[_recorded(identity)], services=[])
    assert [a.kind for a in removed] == [ActionKind.DELETE]
    _apply(provider, removed)
    assert list(_credentials(msi, identity)) == ["missing-slash"]


def test_a_create_that_meets_an_identical_credential_made_since_the_plan_uses_it(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    identity = _identity(msi)
    provider = _provider(sandbox, providers)
    [create], _ = _plan(provider, [_binding("api", identity)])
    _by_hand(msi, identity, "made-meanwhile", subject_for(APP, "shop-api"))
    outcome = provider.apply(create)
    assert outcome.ok, outcome.message
    assert "identical credential made-meanwhile exists" in outcome.message
    assert provider.wait_visible(create, 2.0)
    assert list(_credentials(msi, identity)) == ["made-meanwhile"]


def test_a_same_subject_credential_with_another_audience_blocks(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    identity = _identity(msi)
    _by_hand(msi, identity, "wrong-audience", subject_for(APP, "shop-api"), audience="api://something-else")
    provider = _provider(sandbox, providers)
    resolved, _ = provider.resolve([_binding("api", identity)])
    [issue] = provider.preflight(resolved)
    assert issue.severity is PreflightSeverity.BLOCKING
    assert "wrong-audience" in issue.message
    assert "api://something-else" in issue.message
    assert "--audiences api://AzureADTokenExchange" in issue.fix


def test_replace_refuses_to_delete_what_keyless_did_not_name(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    old, new = _identity(msi), _identity(msi)
    _by_hand(msi, old, "made-by-bob", subject_for(APP, "shop-api"))
    provider = _provider(sandbox, providers)
    [observed] = provider.observe(APP, TARGET, [_binding("api", old)])
    assert observed.details["name"] == "made-by-bob"
    forged = replace(observed, owner=Owner(APP, "api", TARGET))
    desired = provider.resolve([_binding("api", new)])[0][0]
    outcome = provider.apply(Action(ActionKind.REPLACE, Resource.CLOUD_BINDING, "api", binding_ref("shop-api"), "x",
                                    desired, forged))
    assert not outcome.ok
    assert "was not named by keyless" in outcome.message
    assert list(_credentials(msi, old)) == ["made-by-bob"]
    assert _credentials(msi, new) == {}  # refused before writing anything


# ---- names that could bend a URL ----------------------------------------------------------------------


@pytest.mark.parametrize(("identity_name", "resource_group"), [
    ("shop/../../other-group/providers/x", "platform"),
    ("shop-api?api-version=2015-01-01", "platform"),
    ("shop%2Fapi", "platform"),
    ("shop-api", "platform/providers/Microsoft.ManagedIdentity/userAssignedIdentities/x"),
    ("shop-api", "platform#x"),
])
def test_names_that_would_alter_the_url_path_are_refused_by_the_loader(identity_name: str,
                                                                        resource_group: str) -> None:
    document = ("name: shop\nservices:\n  - name: api\n    type: worker\n    connections:\n"
                f"      - type: azureManagedIdentity\n        identityName: '{identity_name}'\n"
                f"        resourceGroup: '{resource_group}'\n")
    with pytest.raises(InvalidInput) as caught:
        load_app(document.encode(), "porter.yaml", {})
    assert "is not valid" in caught.value.message


class _NoCalls:
    """Stands in for the credential operations: any call at all fails the test."""

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"federated_identity_credentials.{name} was called with {args}")
        return call


def test_names_that_would_alter_the_url_path_never_reach_the_sdk(
        sandbox: AzureSandbox, providers: list[AzureProvider]) -> None:
    """Past the loader (a hand-edited plan file, an edited service-account annotation), the provider checks again."""
    provider = _provider(sandbox, providers)
    original = provider.msi.federated_identity_credentials
    provider.msi.federated_identity_credentials = _NoCalls()  # type: ignore[assignment]
    try:
        assert provider.observe(APP, TARGET, [], ["platform/../../x", "no-slash", "rg/a?b=c", "rg/a/b"]) == []
        bad = _binding("api", "shop/../other")
        _, issues = provider.resolve([bad])
        assert _blocking(issues)
        assert "is not valid" in issues[0].message
        with pytest.raises(CloudError):
            provider.apply(Action(ActionKind.CREATE, Resource.CLOUD_BINDING, "api", binding_ref("shop-api"), "x", bad))
        forged = ObservedBinding(Cloud.AZURE, "x", APP, "shop-api", f"{RG}/x", owner=Owner(APP, "api", TARGET),
                                 details={"name": "keyless_shop_api_000000", "resourceGroup": RG,
                                          "identityName": "../../x"})
        with pytest.raises(CloudError):
            provider.apply(Action(ActionKind.DELETE, Resource.CLOUD_BINDING, "api", binding_ref("shop-api"), "x", None,
                                  forged))
    finally:
        provider.msi.federated_identity_credentials = original


# ---- propagation ----------------------------------------------------------------------------------------


def test_wait_visible_and_the_token_exchange_after_propagation(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient,
        issuer: ServiceAccountIssuer) -> None:
    identity = _identity(msi)
    provider = _provider(sandbox, providers, settle=0.2)
    sandbox.propagation_delay = 1.0
    try:
        [create], _ = _plan(provider, [_binding("api", identity)])
        binding = create.desired
        assert binding is not None
        assertion = issuer.mint(namespace=APP, service_account="shop-api", service_account_uid=str(uuid.uuid4()),
                                audiences=[AUDIENCE])
        ok, why = provider.try_token_exchange(binding, assertion)
        assert not ok
        assert why.startswith("AADSTS70021")

        assert provider.apply(create).ok
        started = time.monotonic()
        assert provider.wait_visible(create, 5.0)
        assert time.monotonic() - started >= 0.15  # the settle time after keyless's write
        ok, why = provider.try_token_exchange(binding, assertion)
        assert not ok  # visible to ARM, not yet to Entra ID's token endpoint
        assert why.startswith("AADSTS70021")

        deadline = time.monotonic() + 5.0
        while not ok and time.monotonic() < deadline:
            time.sleep(0.1)
            ok, why = provider.try_token_exchange(binding, assertion)
        assert (ok, why) == (True, "")

        # Another service's token is no good for this credential, and waiting would not change that.
        other = issuer.mint(namespace=APP, service_account="shop-worker", service_account_uid=str(uuid.uuid4()),
                            audiences=[AUDIENCE])
        with pytest.raises(CloudError, match="AADSTS700213"):
            provider.try_token_exchange(binding, other)
    finally:
        sandbox.propagation_delay = DELAY


def test_wait_visible_gives_up_in_bounded_time(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    identity = _identity(msi)
    provider = _provider(sandbox, providers)
    [create], _ = _plan(provider, [_binding("api", identity)])
    virtual = VirtualTime()
    waiting = _provider(sandbox, providers, sleep=virtual.sleep, clock=virtual.clock)
    assert not waiting.wait_visible(create, 0.5)  # never applied
    assert virtual.now == pytest.approx(0.5)


class _OtherTenant:
    """The deployer's credential, except that the token keyless reads its tenant from says another tenant."""

    def __init__(self, inner: WorkloadIdentityCredential) -> None:
        self.inner = inner

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        real = self.inner.get_token(*scopes, **kwargs)
        claims = base64.urlsafe_b64encode(json.dumps({"tid": "99999999-0000-0000-0000-000000000000"}).encode())
        return AccessToken(f"e30.{claims.decode().rstrip('=')}.sig", real.expires_on)

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        return self.inner.get_token_info(*scopes, options=options)


def test_an_identity_of_another_tenant_blocks(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    identity = _identity(msi)
    provider = AzureProvider(_target(sandbox), _OtherTenant(sandbox.deployer_credential()), retry=FAST)
    providers.append(provider)
    _, [issue] = provider.resolve([_binding("api", identity)])
    assert issue.severity is PreflightSeverity.BLOCKING
    assert f"belongs to tenant {sandbox.tenant_id}" in issue.message
    assert "99999999-0000-0000-0000-000000000000" in issue.message


def test_a_deployer_credential_can_be_given(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    credential: WorkloadIdentityCredential = sandbox.deployer_credential()
    provider = AzureProvider(_target(sandbox), credential, retry=FAST, settle=0.0)
    providers.append(provider)
    assert provider.preflight([]) == []


def test_a_missing_identity_is_gone_for_observe_not_an_error(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient) -> None:
    identity = _identity(msi)
    provider = _provider(sandbox, providers)
    msi.user_assigned_identities.delete(RG, identity)
    with pytest.raises(ResourceNotFoundError):
        msi.user_assigned_identities.get(RG, identity)
    assert provider.observe(APP, TARGET, [], [_recorded(identity), _recorded("x-identity", "no-such-group")]) == []


def test_the_exchange_check_stops_at_once_on_a_misconfiguration(
        sandbox: AzureSandbox, providers: list[AzureProvider], msi: ManagedServiceIdentityClient,
        issuer: ServiceAccountIssuer) -> None:
    identity = _identity(msi)
    _by_hand(msi, identity, "other-sa", f"system:serviceaccount:{APP}:someone-else")
    provider = _provider(sandbox, providers)
    [create], _ = _plan(provider, [_binding("api", identity)])
    binding = create.desired
    assert binding is not None
    deadline = time.monotonic() + 5.0
    while True:  # once the hand-made credential reached Entra, the refusal is a subject mismatch, not a wait
        assertion = issuer.mint(namespace=APP, service_account="shop-api", service_account_uid=str(uuid.uuid4()),
                                audiences=[AUDIENCE])
        try:
            ok, why = provider.try_token_exchange(binding, assertion)
        except CloudError as error:
            refused = error
            break
        assert not ok
        assert why.startswith("AADSTS70021")
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "AADSTS700213" in refused.message
    assert "subject" in refused.hint
