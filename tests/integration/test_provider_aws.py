"""Integration tests of AwsProvider: real boto3 over HTTP against the AWS sandbox, faults included."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import boto3
import pytest
from botocore.config import Config
from virtual_time import VirtualTime

from keyless import names
from keyless.bindings import Binding
from keyless.clouds import AwsRole, Cloud
from keyless.errors import CloudError
from keyless.federation import trust_statement
from keyless.ownership import Owner, ownership_tags
from keyless.plan import Action, ActionKind, Blocker, ObservedBinding, Resource
from keyless.plan.model import ObjectRef
from keyless.plan.planner import plan_bindings
from keyless.porter.model import ServiceType
from keyless.providers.aws import AwsProvider
from keyless.providers.aws_api import AwsLimits
from keyless.providers.base import PreflightIssue, PreflightSeverity
from keyless.providers.retry import NO_RETRY, RateLimit, RetryPolicy
from keyless.sandbox.aws import POD_IDENTITY_TRUST_POLICY, AwsSandbox, DemoSeed
from keyless.targets import AwsTarget

pytestmark = pytest.mark.integration

APP = "shop"
TARGET = "prod-eks"
REGION = "us-east-1"
OTHER_ACCOUNT = "210987654321"
# Fast schedules so fault tests take milliseconds; the shapes (attempts, deadline) are the real ones.
FAST = RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.05, deadline=5.0)
FAST_ROLE_WAIT = RetryPolicy(max_attempts=100, base_delay=0.05, max_delay=0.2, deadline=5.0)
HAND = Config(retries={"mode": "standard", "total_max_attempts": 1})  # the person at the console


# ---- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[AwsSandbox]:
    with AwsSandbox(region=REGION, association_delay=0.2) as running:
        yield running


@pytest.fixture(scope="module")
def seed(sandbox: AwsSandbox) -> DemoSeed:
    return sandbox.seed_demo()


@pytest.fixture(autouse=True)
def aws_env(sandbox: AwsSandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[None]:
    """Standard SDK configuration pointing at the sandbox, and nothing from the developer's ~/.aws."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
                 "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    yield
    sandbox.reset_faults()


@pytest.fixture
def eks(sandbox: AwsSandbox) -> Any:
    return sandbox.client("eks", HAND)


@pytest.fixture
def iam(sandbox: AwsSandbox) -> Any:
    return sandbox.client("iam")


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _cluster(sandbox: AwsSandbox, *, addon: bool = True, auto_mode: bool = False) -> str:
    """A fresh cluster per test, so tests never see each other's associations."""
    name = _unique("c")
    eks = sandbox.client("eks")
    role = sandbox.client("iam").get_role(RoleName="keyless-sandbox-cluster")["Role"]["Arn"]
    extra: dict[str, Any] = {}
    if auto_mode:
        extra = {"computeConfig": {"enabled": True, "nodePools": ["general-purpose"]},
                 "storageConfig": {"blockStorage": {"enabled": True}},
                 "kubernetesNetworkConfig": {"elasticLoadBalancing": {"enabled": True}}}
    eks.create_cluster(name=name, roleArn=role, resourcesVpcConfig={}, **extra)
    if addon:
        eks.create_addon(clusterName=name, addonName="eks-pod-identity-agent")
    return name


def _role(iam: Any, trust: Mapping[str, Any] = POD_IDENTITY_TRUST_POLICY, path: str = "/") -> tuple[str, str]:
    name = _unique("role")
    made = iam.create_role(RoleName=name, Path=path, AssumeRolePolicyDocument=json.dumps(dict(trust)))
    return name, str(made["Role"]["Arn"])


def _target(cluster: str, namespace: str = APP) -> AwsTarget:
    return AwsTarget(cloud="aws", region=REGION, cluster=cluster, namespace=namespace)


def _provider(cluster: str, session: boto3.Session | None = None, **overrides: Any) -> AwsProvider:
    options: dict[str, Any] = {"retry": FAST, "role_propagation": FAST_ROLE_WAIT, "settle": 0.0, **overrides}
    return AwsProvider(_target(cluster), session, **options)


def _binding(service: str, role: str, *, app: str = APP, namespace: str = APP) -> Binding:
    return Binding(app=app, service=service, kind=ServiceType.WEB, target=TARGET, cloud=Cloud.AWS,
                   namespace=namespace, service_account=names.service_account_name(app, service),
                   identity=AwsRole(role))


def _resolved(binding: Binding, arn: str) -> Binding:
    """The binding as resolve() returns it, for actions built without resolving (a role deleted since)."""
    return replace(binding, identity=AwsRole(role=arn, arn=arn))


def _blocking(issues: Sequence[PreflightIssue]) -> list[PreflightIssue]:
    return [i for i in issues if i.severity is PreflightSeverity.BLOCKING]


def _plan(provider: AwsProvider, bindings: Sequence[Binding], *, app: str = APP,
          services: Sequence[str] | None = None) -> tuple[list[Action], list[Blocker]]:
    """resolve -> preflight -> observe -> plan, as the engine does it; issues must not block."""
    resolved, issues = provider.resolve(bindings)
    assert not _blocking(issues), issues
    assert not _blocking(provider.preflight(resolved))
    observed = provider.observe(app, TARGET, resolved)
    return plan_bindings(resolved, observed, app=app, target=TARGET, cloud=Cloud.AWS,
                         services_in_app=services if services is not None else [b.service for b in bindings])


def _apply(provider: AwsProvider, actions: Sequence[Action]) -> None:
    for action in actions:
        if action.changes:
            outcome = provider.apply(action)
            assert outcome.ok, outcome.message
            assert outcome.settles_in is not None  # the engine restarts pods then, without asking EKS again


def _by_hand(eks: Any, cluster: str, namespace: str, service_account: str, role_arn: str,
             tags: Mapping[str, str] | None = None) -> dict[str, Any]:
    extra = {"tags": dict(tags)} if tags else {}
    made = eks.create_pod_identity_association(
        clusterName=cluster, namespace=namespace, serviceAccount=service_account, roleArn=role_arn, **extra)
    association: dict[str, Any] = made["association"]
    return association


def _all(eks: Any, cluster: str) -> list[dict[str, Any]]:
    """Every association, described, by the hand of someone with the console open."""
    found: list[dict[str, Any]] = []
    for page in eks.get_paginator("list_pod_identity_associations").paginate(clusterName=cluster):
        for summary in page["associations"]:
            found.append(eks.describe_pod_identity_association(
                clusterName=cluster, associationId=summary["associationId"])["association"])
    return found


def _counting_session() -> tuple[boto3.Session, dict[str, int]]:
    """A session whose clients count the API calls they make (botocore's public event hooks, no patching)."""
    session = boto3.Session()
    counts: dict[str, int] = {}

    def count(event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        counts[operation] = counts.get(operation, 0) + 1

    session.events.register("before-call", count)
    return session, counts


# ---- the happy path -------------------------------------------------------------------------------


def test_create_observe_then_nothing_to_do(sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _cluster(sandbox)
    provider = _provider(cluster)
    wanted = [_binding("api", "keyless-demo-api"), _binding("worker", seed.roles["keyless-demo-worker"])]

    actions, blockers = _plan(provider, wanted)
    assert not blockers
    assert [a.kind for a in actions] == [ActionKind.CREATE, ActionKind.CREATE]
    _apply(provider, actions)

    made = {(a["namespace"], a["serviceAccount"]): a for a in _all(eks, cluster)}
    assert made[(APP, "shop-api")]["roleArn"] == seed.roles["keyless-demo-api"]
    assert made[(APP, "shop-api")]["tags"] == ownership_tags(Owner(APP, "api", TARGET))
    observed = {o.service_account: o for o in provider.observe(APP, TARGET, provider.resolve(wanted)[0])}
    assert observed["shop-worker"].owner == Owner(APP, "worker", TARGET)
    assert observed["shop-worker"].identity.describe() == seed.roles["keyless-demo-worker"]
    assert observed["shop-worker"].id == made[(APP, "shop-worker")]["associationId"]
    assert observed["shop-worker"].details == {}  # no targetRoleArn: nothing else tells bindings apart

    again, _ = _plan(provider, wanted)
    assert [a.kind for a in again] == [ActionKind.NOOP, ActionKind.NOOP]


def test_resolve_reads_each_distinct_role_once(sandbox: AwsSandbox, seed: DemoSeed) -> None:
    session, counts = _counting_session()
    provider = _provider(_cluster(sandbox), session)
    same_role = [_binding(s, "keyless-demo-api") for s in ("a", "b", "c")]
    resolved, issues = provider.resolve([*same_role, _binding("d", seed.roles["keyless-demo-api"])])
    assert issues == []
    assert {b.identity.describe() for b in resolved} == {seed.roles["keyless-demo-api"]}
    assert counts["GetRole"] == 1  # the name and the ARN name the same role
    provider.preflight(resolved)
    assert counts["GetRole"] == 1  # preflight's trust check reuses what resolve read


def test_update_changes_the_role_in_place(sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _cluster(sandbox)
    provider = _provider(cluster)
    _apply(provider, _plan(provider, [_binding("api", "keyless-demo-api")])[0])

    actions, _ = _plan(provider, [_binding("api", "keyless-demo-worker")])
    assert [a.kind for a in actions] == [ActionKind.UPDATE]
    _apply(provider, actions)
    [association] = _all(eks, cluster)
    assert association["roleArn"] == seed.roles["keyless-demo-worker"]
    assert association["associationId"] == actions[0].observed.id  # type: ignore[union-attr]


def test_a_namespace_move_replaces_the_association(sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _cluster(sandbox)
    provider = _provider(cluster)
    _apply(provider, _plan(provider, [_binding("api", "keyless-demo-api")])[0])

    actions, _ = _plan(provider, [_binding("api", "keyless-demo-api", namespace="shop-v2")])
    assert [a.kind for a in actions] == [ActionKind.REPLACE]
    _apply(provider, actions)
    assert [(a["namespace"], a["serviceAccount"]) for a in _all(eks, cluster)] == [("shop-v2", "shop-api")]


def test_a_write_says_when_it_settles_without_polling(sandbox: AwsSandbox, seed: DemoSeed) -> None:
    cluster = _cluster(sandbox)
    session, counts = _counting_session()
    provider = _provider(cluster, session, settle=0.5)
    [create], _ = _plan(provider, [_binding("api", "keyless-demo-api")])
    before = dict(counts)
    outcome = provider.apply(create)
    assert outcome.ok
    # One request: the create's answer carries modifiedAt, so the settle time needs no Describe or List.
    assert {k: v - before.get(k, 0) for k, v in counts.items() if v != before.get(k, 0)} == {
        "CreatePodIdentityAssociation": 1}
    assert outcome.settles_in is not None
    assert 0.0 < outcome.settles_in <= 0.5
    time.sleep(outcome.settles_in)
    # The sandbox's association delay (0.2 s) is over by then: a pod created now gets the role.
    assert sandbox.association_for(cluster, APP, "shop-api") == seed.roles["keyless-demo-api"]

    # Long after the change (an injected wall clock), a write that finds it in place settles at once.
    later = _provider(cluster, settle=0.5, now=lambda: time.time() + 3600.0)
    [again, new], _ = _plan(later, [_binding("api", "keyless-demo-api"), _binding("web", "keyless-demo-api")])
    assert again.kind is ActionKind.NOOP
    assert later.apply(new).settles_in == pytest.approx(0.0)


# ---- resolve: roles that cannot be used ----------------------------------------------------------


def test_a_missing_role_blocks_naming_role_and_service(sandbox: AwsSandbox, seed: DemoSeed) -> None:
    provider = _provider(_cluster(sandbox))
    resolved, issues = provider.resolve([_binding("api", "no-such-role"), _binding("web", "keyless-demo-api")])
    [issue] = issues
    assert issue.severity is PreflightSeverity.BLOCKING
    assert issue.service == "api"
    assert "'no-such-role'" in issue.message
    assert "service api" in issue.message
    assert "pods.eks.amazonaws.com" in issue.fix
    assert [b.identity.arn for b in resolved] == [None, seed.roles["keyless-demo-api"]]  # type: ignore[union-attr]


def test_a_written_path_must_match_the_role(sandbox: AwsSandbox, iam: Any) -> None:
    name, arn = _role(iam, path="/team/")
    provider = _provider(_cluster(sandbox))
    resolved, issues = provider.resolve([_binding("a", f"team/{name}"), _binding("b", name)])
    assert issues == []
    assert {b.identity.describe() for b in resolved} == {arn}
    _, issues = provider.resolve([_binding("c", f"other/{name}")])
    [issue] = issues
    assert "path '/team/'" in issue.message
    assert arn in issue.fix


@pytest.mark.parametrize("role", [
    f"arn:aws:iam::{OTHER_ACCOUNT}:role/keyless-demo-api",
    "arn:aws-cn:iam::123456789012:role/keyless-demo-api",
])
def test_a_role_of_another_account_or_partition_blocks(sandbox: AwsSandbox, seed: DemoSeed, role: str) -> None:
    session, counts = _counting_session()
    provider = _provider(_cluster(sandbox), session)
    resolved, issues = provider.resolve([_binding("api", role)])
    [issue] = issues
    assert issue.severity is PreflightSeverity.BLOCKING
    assert issue.service == "api"
    assert "cluster's own account" in issue.message
    assert "targetRoleArn" in issue.fix
    assert "not supported" in issue.fix
    assert resolved[0].identity.arn is None  # type: ignore[union-attr]
    assert "GetRole" not in counts  # a foreign role is refused without looking it up


# ---- preflight ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("trust", "missing"), [
    ({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"},
                                              "Action": "sts:AssumeRole"}]}, "sts:TagSession"),
    ({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "eks.amazonaws.com"},
                                              "Action": ["sts:AssumeRole", "sts:TagSession"]}]},
     "sts:AssumeRole and sts:TagSession"),
])
def test_a_trust_policy_without_what_pods_need_blocks_with_the_statement(
        sandbox: AwsSandbox, iam: Any, trust: dict[str, Any], missing: str) -> None:
    name, _ = _role(iam, trust)
    provider = _provider(_cluster(sandbox))
    resolved, issues = provider.resolve([_binding("api", name)])
    assert issues == []
    [issue] = _blocking(provider.preflight(resolved))
    assert issue.service == "api"
    assert f"does not allow pods.eks.amazonaws.com {missing}" in issue.message
    statement = json.loads(issue.fix[issue.fix.index("{"):])
    assert statement == trust_statement()


def test_a_deny_in_the_trust_policy_blocks(sandbox: AwsSandbox, iam: Any) -> None:
    deny = {"Effect": "Deny", "Principal": {"Service": "pods.eks.amazonaws.com"}, "Action": "sts:TagSession"}
    name, _ = _role(iam, {"Version": "2012-10-17", "Statement": [trust_statement(), deny]})
    provider = _provider(_cluster(sandbox))
    [issue] = _blocking(provider.preflight(provider.resolve([_binding("api", name)])[0]))
    assert "denies sts:TagSession" in issue.message


def test_a_missing_agent_addon_blocks_with_the_command(sandbox: AwsSandbox) -> None:
    cluster = _cluster(sandbox, addon=False)
    provider = _provider(cluster)
    [issue] = _blocking(provider.preflight(provider.resolve([_binding("api", "keyless-demo-api")])[0]))
    assert "eks-pod-identity-agent" in issue.message
    assert issue.fix.startswith(f"aws eks create-addon --cluster-name {cluster} --addon-name eks-pod-identity-agent")


def test_auto_mode_needs_no_agent_addon(sandbox: AwsSandbox) -> None:
    provider = _provider(_cluster(sandbox, addon=False, auto_mode=True))
    assert provider.preflight(provider.resolve([_binding("api", "keyless-demo-api")])[0]) == []


def test_a_missing_cluster_blocks_and_trust_is_still_checked(sandbox: AwsSandbox, iam: Any) -> None:
    name, _ = _role(iam, {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
    provider = _provider("ghost")
    issues = _blocking(provider.preflight(provider.resolve([_binding("api", name)])[0]))
    assert next(i.message for i in issues) == f"EKS cluster 'ghost' not found in {REGION}"
    assert any("sts:TagSession" in i.message for i in issues[1:])


def test_the_association_quota_is_checked_when_the_plan_creates(sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _cluster(sandbox)
    for i in range(5):
        _by_hand(eks, cluster, "crowd", f"sa-{i}", seed.roles["keyless-demo-api"])
    provider = _provider(cluster)
    # A plan that creates nothing does not pay for counting the cluster's associations.
    assert provider.check_capacity(0) == []
    assert "eks:ListPodIdentityAssociations" not in provider.api.calls
    assert _blocking(provider.check_capacity(4995)) == []
    [issue] = _blocking(provider.check_capacity(4996))
    assert "has 5 pod identity associations; 4996 more" in issue.message
    assert "5000" in issue.message
    assert "aws eks list-pod-identity-associations" in issue.fix
    # Counted on one listing, read once however often it is asked.
    assert provider.api.calls["eks:ListPodIdentityAssociations"] == 1


# ---- associations someone else made --------------------------------------------------------------


def test_an_identical_association_made_by_hand_is_adopted(sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _cluster(sandbox)
    by_hand = _by_hand(eks, cluster, APP, "shop-api", seed.roles["keyless-demo-api"], {"team": "payments"})
    provider = _provider(cluster)
    actions, _ = _plan(provider, [_binding("api", "keyless-demo-api")])
    assert [a.kind for a in actions] == [ActionKind.ADOPT]
    _apply(provider, actions)
    [association] = _all(eks, cluster)
    assert association["associationId"] == by_hand["associationId"]
    assert association["tags"] == {"team": "payments", **ownership_tags(Owner(APP, "api", TARGET))}
    assert [a.kind for a in _plan(provider, [_binding("api", "keyless-demo-api")])[0]] == [ActionKind.NOOP]


def test_a_create_that_finds_an_identical_association_adopts_it(
        sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _cluster(sandbox)
    provider = _provider(cluster)
    [create], _ = _plan(provider, [_binding("api", "keyless-demo-api")])
    by_hand = _by_hand(eks, cluster, APP, "shop-api", seed.roles["keyless-demo-api"])  # between plan and apply
    outcome = provider.apply(create)
    assert outcome.ok
    assert outcome.binding_id == by_hand["associationId"]
    assert "adopted" in outcome.message
    [association] = _all(eks, cluster)
    assert association["tags"] == ownership_tags(Owner(APP, "api", TARGET))


def test_a_hand_made_association_to_another_role_is_refused(
        sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _cluster(sandbox)
    provider = _provider(cluster)
    [create], _ = _plan(provider, [_binding("api", "keyless-demo-api")])
    by_hand = _by_hand(eks, cluster, APP, "shop-api", seed.roles["keyless-demo-worker"])

    actions, blockers = _plan(provider, [_binding("api", "keyless-demo-api")])
    assert actions == []
    assert len(blockers) == 1
    assert by_hand["associationId"] in blockers[0].message

    outcome = provider.apply(create)  # a plan made before the association appeared
    assert not outcome.ok
    assert seed.roles["keyless-demo-worker"] in outcome.message
    assert f"--association-id {by_hand['associationId']}" in outcome.message
    [association] = _all(eks, cluster)
    assert association["roleArn"] == seed.roles["keyless-demo-worker"]
    assert association.get("tags", {}) == {}


# ---- deleting: only what keyless owns ------------------------------------------------------------


def test_a_removed_connection_deletes_the_association_keyless_owns(
        sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _cluster(sandbox)
    provider = _provider(cluster)
    _apply(provider, _plan(provider, [_binding("api", "keyless-demo-api")])[0])
    by_hand = _by_hand(eks, cluster, APP, "shop-web", seed.roles["keyless-demo-api"])  # same prefix, not ours

    actions, _ = _plan(provider, [], services=["api", "web"])
    assert [(a.kind, a.address) for a in actions] == [(ActionKind.DELETE, "shop/shop-api")]
    _apply(provider, actions)
    assert [a["associationId"] for a in _all(eks, cluster)] == [by_hand["associationId"]]
    assert provider.apply(actions[0]).ok  # deleting again: already gone is fine


def _forged_delete(association: Mapping[str, Any], owner: Owner) -> Action:
    """A DELETE as a stale or tampered plan file could carry it: it claims keyless owns the association."""
    observed = ObservedBinding(cloud=Cloud.AWS, id=association["associationId"], namespace=association["namespace"],
                               service_account=association["serviceAccount"],
                               identity=AwsRole(association["roleArn"], arn=association["roleArn"]), owner=owner)
    return Action(ActionKind.DELETE, Resource.CLOUD_BINDING, owner.service,
                  ObjectRef("Pod Identity association", association["namespace"], association["serviceAccount"]),
                  "forged", None, observed)


def test_delete_refuses_what_keyless_does_not_own(sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _cluster(sandbox)
    role = seed.roles["keyless-demo-api"]
    untagged = _by_hand(eks, cluster, APP, "shop-api", role)
    other_app = _by_hand(eks, cluster, APP, "shop-web", role, ownership_tags(Owner("other", "web", TARGET)))
    addon = eks.create_addon(clusterName=cluster, addonName="aws-ebs-csi-driver",
                             podIdentityAssociations=[{"serviceAccount": "ebs-csi-controller-sa", "roleArn": role}])
    [addon_owned] = [a for a in _all(eks, cluster) if a.get("ownerArn")]
    provider = _provider(cluster)

    refusals = {
        "untagged": provider.apply(_forged_delete(untagged, Owner(APP, "api", TARGET))),
        "other app": provider.apply(_forged_delete(other_app, Owner(APP, "web", TARGET))),
        "add-on": provider.apply(_forged_delete(addon_owned, Owner(APP, "ebs", TARGET))),
    }
    assert not any(o.ok for o in refusals.values())
    assert "ownership tags" in refusals["untagged"].message
    assert "keyless app 'other'" in refusals["other app"].message
    assert addon["addon"]["addonArn"] in refusals["add-on"].message
    assert len(_all(eks, cluster)) == 3


def test_add_on_owned_associations_are_observed_as_managed(sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _cluster(sandbox)
    role = seed.roles["keyless-demo-api"]
    addon = eks.create_addon(clusterName=cluster, addonName="aws-ebs-csi-driver",
                             podIdentityAssociations=[{"serviceAccount": "ebs-csi-controller-sa", "roleArn": role}])
    wanted = Binding(app=APP, service="ebs", kind=ServiceType.WORKER, target=TARGET, cloud=Cloud.AWS,
                     namespace="kube-system", service_account="ebs-csi-controller-sa", identity=AwsRole(role))
    provider = _provider(cluster)
    [observed] = provider.observe(APP, TARGET, provider.resolve([wanted])[0])
    assert observed.managed_by == addon["addon"]["addonArn"]


# ---- faults ---------------------------------------------------------------------------------------


def test_a_throttling_storm_is_ridden_out(sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _cluster(sandbox)
    provider = _provider(cluster)
    sandbox.throttle_next(5)  # FAST allows 6 attempts per call
    actions, _ = _plan(provider, [_binding("api", "keyless-demo-api")])
    sandbox.throttle_next(5)
    _apply(provider, actions)
    assert sandbox.faults.throttle_remaining == 0
    assert len(_all(eks, cluster)) == 1


def test_endless_throttling_gives_up_in_bounded_time_with_a_clear_error(sandbox: AwsSandbox) -> None:
    virtual = VirtualTime()
    provider = _provider(_cluster(sandbox), sleep=virtual.sleep, clock=virtual.clock)
    sandbox.throttle_next(10_000)
    with pytest.raises(CloudError) as raised:
        provider.preflight([])
    assert virtual.now <= FAST.deadline
    assert len(virtual.sleeps) == FAST.max_attempts - 1
    assert "ThrottlingException" in raised.value.message
    assert "gave up after 6 attempt(s)" in raised.value.message
    assert "throttl" in raised.value.hint


@pytest.mark.parametrize("mode", ["error", "drop"])
def test_a_lost_create_response_is_retried_with_the_same_token(
        sandbox: AwsSandbox, seed: DemoSeed, eks: Any, mode: Any) -> None:
    cluster = _cluster(sandbox)
    provider = _provider(cluster)
    [create], _ = _plan(provider, [_binding("api", "keyless-demo-api")])
    sandbox.lose_next_create_response(mode)
    outcome = provider.apply(create)
    assert outcome.ok, outcome.message
    assert sandbox.faults.lose_remaining == 0  # the fault did fire
    [association] = _all(eks, cluster)
    assert outcome.binding_id == association["associationId"]
    assert association["tags"] == ownership_tags(Owner(APP, "api", TARGET))


@pytest.mark.parametrize("mode", ["error", "drop"])
def test_after_a_lost_create_response_the_next_apply_succeeds(
        sandbox: AwsSandbox, seed: DemoSeed, eks: Any, mode: Any) -> None:
    cluster = _cluster(sandbox)
    impatient = _provider(cluster, retry=NO_RETRY, role_propagation=NO_RETRY)
    [create], _ = _plan(impatient, [_binding("api", "keyless-demo-api")])
    sandbox.lose_next_create_response(mode)
    with pytest.raises(CloudError) as raised:
        impatient.apply(create)
    assert "creating the pod identity association for shop/shop-api" in raised.value.message

    outcome = _provider(cluster).apply(create)  # the next run: a new token, and the association exists
    assert outcome.ok, outcome.message
    [association] = _all(eks, cluster)
    assert outcome.binding_id == association["associationId"]


def test_a_role_iam_has_not_propagated_is_waited_for(sandbox: AwsSandbox, iam: Any) -> None:
    cluster = _cluster(sandbox)
    provider = _provider(cluster)
    sandbox.role_propagation_delay = 1.0
    try:
        name, _arn = _role(iam)  # created just now: EKS says it does not exist for a second
        [create], _ = _plan(provider, [_binding("api", name)])
        started = time.monotonic()
        outcome = provider.apply(create)
        assert outcome.ok, outcome.message
        assert time.monotonic() - started >= 0.5
    finally:
        sandbox.role_propagation_delay = 0.0


def test_a_role_that_never_appears_fails_in_bounded_time(sandbox: AwsSandbox) -> None:
    cluster = _cluster(sandbox)
    short = RetryPolicy(max_attempts=100, base_delay=0.05, max_delay=0.1, deadline=1.0)
    virtual = VirtualTime()
    provider = _provider(cluster, role_propagation=short, sleep=virtual.sleep, clock=virtual.clock)
    ghost = "arn:aws:iam::123456789012:role/deleted-after-planning"
    create = Action(ActionKind.CREATE, Resource.CLOUD_BINDING, "api",
                    ObjectRef("Pod Identity association", "shop", "shop-api"), "bind",
                    _resolved(_binding("api", ghost), ghost))
    with pytest.raises(CloudError) as raised:
        provider.apply(create)
    assert virtual.now == pytest.approx(short.deadline)  # kept trying until the deadline, and no longer
    assert "Role provided in the request does not exist" in raised.value.message
    assert "propagating" in raised.value.hint


# ---- listing many -----------------------------------------------------------------------------------


def test_observe_follows_every_page_and_describes_only_candidates(
        sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _cluster(sandbox)
    role = seed.roles["keyless-demo-api"]
    for i in range(150):
        _by_hand(eks, cluster, "crowd", f"sa-{i}", role)
    app = "big"
    for i in range(130):
        service = f"s{i}"
        _by_hand(eks, cluster, app if i % 2 else "big-old-namespace", names.service_account_name(app, service),
                 role, ownership_tags(Owner(app, service, TARGET)))
    session, counts = _counting_session()
    provider = _provider(cluster, session)
    wanted = [_binding("s1", role, app=app, namespace=app), _binding("new", role, app=app, namespace=app)]

    observed = provider.observe(app, TARGET, provider.resolve(wanted)[0])
    assert len(observed) == 130
    assert {o.owner.service for o in observed if o.owner} == {f"s{i}" for i in range(130)}
    assert counts["ListPodIdentityAssociations"] == 3  # 280 associations, 100 a page
    assert counts["DescribePodIdentityAssociation"] == 130  # the crowd's are never described

    actions, _ = plan_bindings(provider.resolve(wanted)[0], observed, app=app, target=TARGET,
                               cloud=Cloud.AWS, services_in_app=["s1", "new"])
    kinds = [a.kind for a in actions]
    assert kinds.count(ActionKind.CREATE) == 1
    assert kinds.count(ActionKind.NOOP) == 1
    assert kinds.count(ActionKind.DELETE) == 129


def test_reads_and_writes_are_paced_to_their_limits(sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _cluster(sandbox)
    role = seed.roles["keyless-demo-api"]
    app = "paced"
    for i in range(8):
        _by_hand(eks, cluster, app, names.service_account_name(app, f"s{i}"), role,
                 ownership_tags(Owner(app, f"s{i}", TARGET)))
    virtual = VirtualTime()
    slow = RateLimit(per_second=2.0, burst=1)
    provider = _provider(cluster, limits=AwsLimits(eks_reads=slow, eks_writes=slow, iam_reads=slow,
                                                   iam_writes=slow),
                         sleep=virtual.sleep, clock=virtual.clock)
    observed = provider.observe(app, TARGET, [])
    assert len(observed) == 8
    reads = provider.api.calls["eks:ListPodIdentityAssociations"] + provider.api.calls[
        "eks:DescribePodIdentityAssociation"]
    assert reads == 9
    # Each read beyond the burst waited its turn at 2/s (the waits overlap across the describing threads, so the
    # virtual clock, which adds every sleep, has at least that much).
    assert virtual.now >= (reads - 1) / 2.0


# ---- configuration and credentials -------------------------------------------------------------


def test_an_unreachable_endpoint_is_a_clear_error(sandbox: AwsSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_EKS", "http://127.0.0.1:9")
    provider = _provider("any")
    with pytest.raises(CloudError) as raised:
        provider.preflight([])
    assert "could not reach AWS" in raised.value.message
    assert "127.0.0.1:9" in raised.value.message
    assert "AWS_ENDPOINT_URL" in raised.value.hint


def test_missing_credentials_are_a_clear_error(sandbox: AwsSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    provider = _provider("any")
    with pytest.raises(CloudError) as raised:
        provider.resolve([_binding("api", "keyless-demo-api")])
    assert "no usable AWS credentials" in raised.value.message
    assert "AWS_PROFILE" in raised.value.hint


def test_secrets_never_appear_in_errors(sandbox: AwsSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL_EKS", "http://127.0.0.1:9")
    with pytest.raises(CloudError) as raised:
        _provider("any").preflight([])
    assert secret not in raised.value.render()
