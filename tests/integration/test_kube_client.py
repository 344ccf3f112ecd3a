"""Integration tests of keyless.kube.cluster, .config and .render: the real lightkube client over HTTP against the
Kubernetes stand-in, and render mode's files."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import kmock
import pytest
from lightkube import Client, KubeConfig
from lightkube.models.core_v1 import ServiceAccount as ServiceAccountModel
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import CronJob
from lightkube.resources.core_v1 import Pod, ServiceAccount
from virtual_time import VirtualTime

from keyless import clouds, ownership
from keyless.bindings import Binding
from keyless.clouds import IDENTITY_ANNOTATION, AwsRole, AzureIdentity, Cloud
from keyless.errors import CloudError
from keyless.kube import manifests as km
from keyless.kube.base import KubeSide
from keyless.kube.cluster import ClusterKube
from keyless.kube.config import load_config
from keyless.kube.render import RenderedKube
from keyless.names import service_account_name
from keyless.plan import ActionKind, Observed, ObservedWorkload, Resource
from keyless.plan import kubernetes as pk
from keyless.plan.model import ObjectRef, PodTemplateSettings
from keyless.plan.planner import PlanRequest, make_plan
from keyless.porter.model import ServiceType
from keyless.providers.retry import RetryPolicy
from keyless.sandbox.kube import KubeStandIn
from keyless.targets import KubernetesSide

pytestmark = pytest.mark.integration

APP = "shop"
TARGET = "sandbox"
ROLE_ARN = "arn:aws:iam::123456789012:role/shop-api"
FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, deadline=5.0)
_namespaces = itertools.count(1)


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stand_in() -> Iterator[KubeStandIn]:
    with KubeStandIn("keyless-kube-tests") as running:
        yield running


@pytest.fixture(scope="module")
def kubeconfig(stand_in: KubeStandIn, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stand_in.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config", "stand-in")


@pytest.fixture(scope="module")
def kube(kubeconfig: Path) -> Iterator[ClusterKube]:
    side = KubernetesSide.model_validate({"kubeconfig": str(kubeconfig), "context": "stand-in"})
    cluster = ClusterKube(side, policy=FAST, poll_seconds=0.05)
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def other(kubeconfig: Path) -> Iterator[Client]:
    """A client acting as someone else (a person with kubectl, eksctl's IRSA set-up)."""
    with Client(config=KubeConfig.from_file(kubeconfig), field_manager="kubectl-edit") as client:
        yield client


@pytest.fixture
def namespace(stand_in: KubeStandIn) -> str:
    name = f"shop-{next(_namespaces)}"
    stand_in.ensure_namespace(name)
    return name


def binding(namespace: str, *, service: str = "api", role: str = "shop-api", arn: str = ROLE_ARN) -> Binding:
    return Binding(app=APP, service=service, kind=ServiceType.WEB, target=TARGET, cloud=Cloud.AWS,
                   namespace=namespace, service_account=service_account_name(APP, service),
                   identity=AwsRole(role, arn=arn))


def account_ref(namespace: str, name: str) -> ObjectRef:
    return ObjectRef("ServiceAccount", namespace, name)


def apply_account(kube: ClusterKube, b: Binding) -> None:
    """Apply the account as the planner would for an account with the cloud's stale annotations on it."""
    stale = tuple(sorted(clouds.entry(b.cloud).stale_annotations))
    kube.apply_service_account(account_ref(b.namespace, b.service_account), km.account_spec(b), stale)


def update(kube: ClusterKube, workload: ObservedWorkload, settings: PodTemplateSettings) -> None:
    kube.update_workload(ObjectRef(workload.kind, workload.namespace, workload.name), workload.service, settings)


def render(rendered: RenderedKube, bindings: list[Binding]) -> list[Path]:
    """Render mode after an apply: the files of the plan of these bindings."""
    plan = make_plan(PlanRequest(APP, TARGET, Cloud.AWS, tuple(bindings), tuple(b.service for b in bindings)),
                     Observed())
    return rendered.write_app(km.rendered_services(plan.actions), app=APP)


def porter_labels(service: str) -> dict[str, str]:
    return {"porter.run/app-name": APP, "porter.run/service-name": service}


def read_account(client: Client, namespace: str, name: str) -> ServiceAccount:
    return client.get(ServiceAccount, name, namespace=namespace)


def annotations_of(account: ServiceAccount) -> dict[str, str]:
    assert account.metadata is not None
    return dict(account.metadata.annotations or {})


def labels_of(account: ServiceAccount) -> dict[str, str]:
    assert account.metadata is not None
    return dict(account.metadata.labels or {})


def create_foreign_account(client: Client, namespace: str, name: str, *, annotations: dict[str, str],
                           labels: dict[str, str] | None = None) -> None:
    client.create(ServiceAccount.from_dict(ServiceAccountModel(
        metadata=ObjectMeta(name=name, namespace=namespace, annotations=annotations, labels=labels or {}),
    ).to_dict()))


# --- the protocol --------------------------------------------------------------------------------------


def test_both_sides_implement_the_protocol(kube: ClusterKube, tmp_path: Path) -> None:
    sides: list[KubeSide] = [kube, RenderedKube(TARGET, base=tmp_path)]
    assert len(sides) == 2


# --- service accounts ----------------------------------------------------------------------------------


def test_apply_creates_then_updates_the_account(kube: ClusterKube, other: Client, namespace: str) -> None:
    first = binding(namespace)
    apply_account(kube, (first))
    account = read_account(other, namespace, "shop-api")
    assert annotations_of(account) == {"keyless.dev/identity": ROLE_ARN}
    assert labels_of(account) == ownership.ownership_labels(APP, "api", TARGET)

    second = binding(namespace, role="shop-api-v2", arn=ROLE_ARN + "-v2")
    apply_account(kube, (second))
    assert annotations_of(read_account(other, namespace, "shop-api")) == {"keyless.dev/identity": ROLE_ARN + "-v2"}

    accounts, workloads = kube.observe(namespace, APP)
    assert [(a.name, dict(a.annotations)) for a in accounts] == [("shop-api", {"keyless.dev/identity": ROLE_ARN
                                                                               + "-v2"})]
    assert workloads == []
    actions = pk.plan_kubernetes([second], ["api"], accounts, workloads, APP, TARGET)
    assert [a.kind for a in actions] == [ActionKind.NOOP]


def test_apply_is_idempotent(kube: ClusterKube, other: Client, namespace: str) -> None:
    apply_account(kube, binding(namespace))
    before = read_account(other, namespace, "shop-api")
    apply_account(kube, binding(namespace))
    after = read_account(other, namespace, "shop-api")
    assert before.metadata is not None
    assert after.metadata is not None
    assert after.metadata.resourceVersion == before.metadata.resourceVersion


def test_stale_irsa_annotation_is_removed_and_others_kept(kube: ClusterKube, other: Client, namespace: str) -> None:
    create_foreign_account(other, namespace, "shop-api", annotations={
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/old-irsa",
        "example.com/owner": "team-a",
    })
    b = binding(namespace)
    accounts, _ = kube.observe(namespace, APP, ["shop-api"])
    [action] = pk.plan_kubernetes([b], ["api"], accounts, [], APP, TARGET)
    assert action.kind is ActionKind.UPDATE
    assert "eks.amazonaws.com/role-arn" in action.reason

    apply_account(kube, (b))
    annotations = annotations_of(read_account(other, namespace, "shop-api"))
    assert "eks.amazonaws.com/role-arn" not in annotations
    assert annotations["example.com/owner"] == "team-a"  # someone else's: kept
    assert annotations["keyless.dev/identity"] == ROLE_ARN

    accounts, _ = kube.observe(namespace, APP)
    assert [a.kind for a in pk.plan_kubernetes([b], ["api"], accounts, [], APP, TARGET)] == [ActionKind.NOOP]


def test_annotation_another_manager_set_later_is_kept(kube: ClusterKube, other: Client, namespace: str) -> None:
    b = binding(namespace)
    apply_account(kube, (b))
    other.patch(ServiceAccount, "shop-api", {"metadata": {"annotations": {"example.com/cost-centre": "42"}}},
                namespace=namespace)
    apply_account(kube, (binding(namespace, role="v2", arn=ROLE_ARN + "-v2")))
    annotations = annotations_of(read_account(other, namespace, "shop-api"))
    assert annotations["example.com/cost-centre"] == "42"
    assert annotations["keyless.dev/identity"] == ROLE_ARN + "-v2"


def test_helm_keeps_its_managed_by_label(kube: ClusterKube, other: Client, namespace: str) -> None:
    create_foreign_account(other, namespace, "shop-api", annotations={},
                           labels={"app.kubernetes.io/managed-by": "Helm"})
    apply_account(kube, (binding(namespace)))
    labels = labels_of(read_account(other, namespace, "shop-api"))
    assert labels["app.kubernetes.io/managed-by"] == "Helm"
    assert labels["keyless.dev/app"] == APP


def test_strip_removes_identity_annotations_only(kube: ClusterKube, other: Client, namespace: str) -> None:
    azure = AzureIdentity("shop-api-id", "platform", client_id="11111111-2222-3333-4444-555555555555",
                          tenant_id="99999999-8888-7777-6666-555555555555")
    b = Binding(app=APP, service="api", kind=ServiceType.WEB, target=TARGET, cloud=Cloud.AZURE,
                namespace=namespace, service_account="shop-api", identity=azure)
    apply_account(kube, (b))
    other.patch(ServiceAccount, "shop-api", {"metadata": {"annotations": {"example.com/owner": "team-a"}}},
                namespace=namespace)
    kube.remove_annotations(account_ref(namespace, "shop-api"), sorted(clouds.all_annotation_keys()))
    account = read_account(other, namespace, "shop-api")
    assert annotations_of(account) == {"example.com/owner": "team-a"}
    assert labels_of(account)["keyless.dev/app"] == APP  # still keyless's
    # An account that is not there: nothing to do, no error.
    kube.remove_annotations(account_ref(namespace, "absent"), sorted(clouds.all_annotation_keys()))


def test_delete_only_managed_accounts(kube: ClusterKube, other: Client, namespace: str) -> None:
    apply_account(kube, (binding(namespace)))
    create_foreign_account(other, namespace, "shop-worker", annotations={},
                           labels={"app.kubernetes.io/managed-by": "Helm"})
    create_foreign_account(other, namespace, "unlabelled", annotations={})

    assert kube.delete_service_account(account_ref(namespace, "shop-api")) is True
    assert kube.delete_service_account(account_ref(namespace, "shop-api")) is False  # already gone
    with pytest.raises(CloudError, match="managed by Helm"):
        kube.delete_service_account(account_ref(namespace, "shop-worker"))
    with pytest.raises(CloudError, match="managed by no tool"):
        kube.delete_service_account(account_ref(namespace, "unlabelled"))
    names = sorted(a.metadata.name for a in other.list(ServiceAccount, namespace=namespace)
                   if a.metadata is not None and a.metadata.name is not None)
    assert "shop-api" not in names
    assert {"shop-worker", "unlabelled"} <= set(names)


def test_observe_finds_labelled_and_named_accounts(kube: ClusterKube, other: Client, namespace: str) -> None:
    apply_account(kube, (binding(namespace, service="old")))
    create_foreign_account(other, namespace, "shop-api", annotations={})
    create_foreign_account(other, namespace, "unrelated", annotations={})
    accounts, _ = kube.observe(namespace, APP)
    assert [a.name for a in accounts] == ["shop-old"]
    accounts, _ = kube.observe(namespace, APP, ["shop-api", "shop-missing"])
    assert [a.name for a in accounts] == ["shop-api", "shop-old"]


# --- workloads -----------------------------------------------------------------------------------------


def test_workload_update_rolls_the_pods(kube: ClusterKube, other: Client, stand_in: KubeStandIn,
                                        namespace: str) -> None:
    stand_in.seed_workload(namespace, "shop-api", "Deployment", porter_labels("api"), replicas=2)
    stand_in.seed_workload(namespace, "other-app", "Deployment", {"porter.run/app-name": "other",
                                                                  "porter.run/service-name": "api"})
    b = binding(namespace)
    apply_account(kube, (b))

    accounts, workloads = kube.observe(namespace, APP)
    assert [(w.kind, w.name, w.service, w.service_account, w.identity_annotation) for w in workloads] == [
        ("Deployment", "shop-api", "api", None, None)]
    actions = pk.plan_kubernetes([b], ["api"], accounts, workloads, APP, TARGET)
    [restart] = [a for a in actions if a.resource is Resource.WORKLOAD]
    assert restart.kind is ActionKind.UPDATE
    assert restart.reason.startswith("restart: identity changed")

    update(kube, workloads[0], km.pod_template_settings(b))
    assert kube.wait_rollout(namespace, "shop-api", timeout=30.0) is True

    deployment = other.get(Deployment, "shop-api", namespace=namespace)
    assert deployment.spec is not None
    template = deployment.spec.template
    assert template.spec is not None
    assert template.metadata is not None
    assert template.spec.serviceAccountName == "shop-api"
    annotations = template.metadata.annotations or {}
    assert annotations[IDENTITY_ANNOTATION] == b.identity_fingerprint()
    assert "kubectl.kubernetes.io/restartedAt" in annotations
    pods = [p for p in other.list(Pod, namespace=namespace, labels=porter_labels("api"))
            if p.metadata is not None and p.metadata.deletionTimestamp is None]
    assert len(pods) == 2
    assert all(p.spec is not None and p.spec.serviceAccountName == "shop-api" for p in pods)

    accounts, workloads = kube.observe(namespace, APP)
    assert all(a.kind is ActionKind.NOOP for a in pk.plan_kubernetes([b], ["api"], accounts, workloads, APP, TARGET))


def test_removed_connection_drops_the_identity_from_the_template(kube: ClusterKube, other: Client,
                                                                 stand_in: KubeStandIn, namespace: str) -> None:
    stand_in.seed_workload(namespace, "shop-api", "Deployment", porter_labels("api"))
    b = binding(namespace)
    apply_account(kube, (b))
    _, [workload] = kube.observe(namespace, APP)
    update(kube, workload, km.pod_template_settings(b))
    assert kube.wait_rollout(namespace, "shop-api", timeout=30.0)

    accounts, workloads = kube.observe(namespace, APP)
    actions = pk.plan_kubernetes([], ["api"], accounts, workloads, APP, TARGET)
    assert [(a.kind, a.resource) for a in actions] == [(ActionKind.UPDATE, Resource.SERVICE_ACCOUNT),
                                                       (ActionKind.UPDATE, Resource.WORKLOAD)]
    kube.remove_annotations(account_ref(namespace, "shop-api"), sorted(clouds.all_annotation_keys()))
    update(kube, workloads[0], km.released_pod_template_settings())
    assert kube.wait_rollout(namespace, "shop-api", timeout=30.0)
    deployment = other.get(Deployment, "shop-api", namespace=namespace)
    assert deployment.spec is not None
    assert deployment.spec.template.metadata is not None
    assert IDENTITY_ANNOTATION not in (deployment.spec.template.metadata.annotations or {})
    assert deployment.spec.template.spec is not None
    assert deployment.spec.template.spec.serviceAccountName == "shop-api"  # Porter's pods keep their account

    accounts, workloads = kube.observe(namespace, APP)
    assert all(a.kind is ActionKind.NOOP for a in pk.plan_kubernetes([], ["api"], accounts, workloads, APP, TARGET))


def test_cronjob_template_is_updated(kube: ClusterKube, other: Client, stand_in: KubeStandIn,
                                     namespace: str) -> None:
    stand_in.seed_workload(namespace, "shop-nightly", "CronJob", porter_labels("nightly"))
    stand_in.run_job(namespace, "shop-nightly")  # its Job is not a workload of its own
    b = binding(namespace, service="nightly")
    _, workloads = kube.observe(namespace, APP)
    assert [(w.kind, w.name) for w in workloads] == [("CronJob", "shop-nightly")]
    update(kube, workloads[0], km.pod_template_settings(b))
    cron = other.get(CronJob, "shop-nightly", namespace=namespace)
    assert cron.spec is not None
    template = cron.spec.jobTemplate.spec.template if cron.spec.jobTemplate.spec is not None else None
    assert template is not None
    assert template.spec is not None
    assert template.spec.serviceAccountName == "shop-nightly"
    assert template.metadata is not None
    annotations = template.metadata.annotations or {}
    assert annotations[IDENTITY_ANNOTATION] == b.identity_fingerprint()
    assert "kubectl.kubernetes.io/restartedAt" not in annotations  # nothing to roll: the next run uses it


def test_jobs_are_observed_but_not_updated(kube: ClusterKube, stand_in: KubeStandIn, namespace: str) -> None:
    stand_in.seed_workload(namespace, "shop-migrate", "Job", porter_labels("migrate"))
    _, workloads = kube.observe(namespace, APP)
    assert [(w.kind, w.name, w.service) for w in workloads] == [("Job", "shop-migrate", "migrate")]
    with pytest.raises(CloudError, match="cannot change"):
        update(kube, workloads[0], km.pod_template_settings(binding(namespace, service="migrate")))


def test_wait_rollout_of_a_missing_deployment_is_an_error(kube: ClusterKube, namespace: str) -> None:
    with pytest.raises(CloudError, match=f"{namespace}/absent"):
        kube.wait_rollout(namespace, "absent", timeout=1.0)


def test_wait_rollout_gives_up_at_the_timeout(tmp_path: Path) -> None:
    with KubeStandIn("keyless-kube-slow", pod_startup_seconds=30.0) as slow:
        path = slow.write_kubeconfig(tmp_path / "config", "slow")
        slow.ensure_namespace("shop")
        porter = Client(config=KubeConfig.from_file(path), field_manager="porter")
        labels = porter_labels("api")
        # Created directly (seed_workload waits for the pods, which take 30s to start here).
        porter.apply(Deployment.from_dict({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "shop-api", "namespace": "shop", "labels": labels},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "app", "image": "app:1"}]}}},
        }))
        porter.close()
        virtual = VirtualTime()
        slow_kube = ClusterKube(KubernetesSide.model_validate({"kubeconfig": str(path), "context": "slow"}),
                                policy=FAST, poll_seconds=0.05, sleep=virtual.sleep, clock=virtual.clock)
        try:
            assert slow_kube.wait_rollout("shop", "shop-api", timeout=0.5) is False
            assert virtual.now == pytest.approx(0.5)  # gave up at its timeout
        finally:
            slow_kube.close()


# --- retries and errors --------------------------------------------------------------------------------


def fail_first(stand_in: KubeStandIn, namespace: str, method: str, plural: str, count: int, status: int,
               body: dict[str, object] | None = None) -> list[int]:
    """Make the stand-in answer `status` to the first `count` matching requests; returns their ids."""
    failed: list[int] = []

    def first(request: kmock.Request) -> bool:
        matches = (request.method == kmock.method(method) and request.namespace == namespace
                   and request.resource is not None and request.resource.plural == plural)
        if matches and request.id not in failed and len(failed) < count:
            failed.append(request.id)
        return request.id in failed

    reaction = stand_in.api[first] << status
    if body is not None:
        reaction << body
    return failed


def test_server_errors_are_retried(kube: ClusterKube, stand_in: KubeStandIn, other: Client, namespace: str) -> None:
    # A bare 503 with no body, as a load balancer in front of the API server answers.
    failed = fail_first(stand_in, namespace, "PATCH", "serviceaccounts", 2, 503)
    apply_account(kube, (binding(namespace)))
    assert len(failed) == 2
    assert annotations_of(read_account(other, namespace, "shop-api"))["keyless.dev/identity"] == ROLE_ARN


def test_throttled_reads_are_retried(kube: ClusterKube, stand_in: KubeStandIn, namespace: str) -> None:
    failed = fail_first(stand_in, namespace, "GET", "deployments", 1, 429, {
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "TooManyRequests", "code": 429,
        "message": "Too many requests, please try again later."})
    assert kube.observe(namespace, APP) == ([], [])
    assert len(failed) == 1


def test_retries_end_in_a_readable_error(kube: ClusterKube, stand_in: KubeStandIn, namespace: str) -> None:
    failed = fail_first(stand_in, namespace, "PATCH", "serviceaccounts", 100, 500, {
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500,
        "message": "etcdserver: request timed out"})
    with pytest.raises(CloudError, match=f"{namespace}/shop-api") as caught:
        apply_account(kube, (binding(namespace)))
    assert "etcdserver: request timed out (HTTP 500)" in caught.value.message
    assert len(failed) == FAST.max_attempts


def test_refusals_become_cloud_errors_naming_the_object(kube: ClusterKube) -> None:
    with pytest.raises(CloudError, match=r"no-such-namespace/shop-api") as caught:
        apply_account(kube, binding("no-such-namespace"))
    assert "HTTP 404" in caught.value.message
    assert caught.value.hint


def test_unreachable_cluster_is_a_cloud_error(tmp_path: Path) -> None:
    dead = KubeStandIn("keyless-kube-dead")
    with dead:
        path = dead.write_kubeconfig(tmp_path / "config", "dead")
    side = KubernetesSide.model_validate({"kubeconfig": str(path), "context": "dead"})
    gone = ClusterKube(side, policy=FAST)
    try:
        with pytest.raises(CloudError, match="did not answer"):
            gone.observe("shop", APP)
    finally:
        gone.close()


# --- kubeconfig ----------------------------------------------------------------------------------------


def test_kubeconfig_errors_are_readable(tmp_path: Path, kubeconfig: Path) -> None:
    with pytest.raises(CloudError, match="cannot use the kubeconfig"):
        load_config(KubernetesSide.model_validate({"kubeconfig": str(tmp_path / "missing")}))
    with pytest.raises(CloudError, match="nope"):
        load_config(KubernetesSide.model_validate({"kubeconfig": str(kubeconfig), "context": "nope"}))


def test_kubeconfig_from_the_environment(tmp_path: Path, kubeconfig: Path, stand_in: KubeStandIn) -> None:
    config = load_config(KubernetesSide(), {"KUBECONFIG": str(kubeconfig)})
    assert config.context_name == "stand-in"
    second = stand_in.write_kubeconfig(tmp_path / "second", "second-context")
    listed = os.pathsep.join([str(kubeconfig), str(tmp_path / "absent"), str(second)])
    config = load_config(KubernetesSide.model_validate({"context": "second-context"}), {"KUBECONFIG": listed})
    assert config.context_name == "second-context"
    with pytest.raises(CloudError, match="no kubeconfig in"):
        load_config(KubernetesSide.model_validate({"context": "nope"}), {"KUBECONFIG": listed})
    # No $KUBECONFIG: ~/.kube/config, as kubectl reads it.
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_bytes(kubeconfig.read_bytes())
    assert load_config(KubernetesSide(), {"HOME": str(home)}).context_name == "stand-in"
    with pytest.raises(CloudError, match="cannot use the kubeconfig"):
        load_config(KubernetesSide(), {"HOME": str(tmp_path / "nobody")})  # and not in a pod either


# --- render mode ---------------------------------------------------------------------------------------


def test_rendered_side_observes_nothing_and_writes_files(tmp_path: Path) -> None:
    rendered = RenderedKube(TARGET, KubernetesSide.model_validate({"mode": "render"}), base=tmp_path)
    assert rendered.out_dir == tmp_path / "keyless-manifests" / TARGET
    assert rendered.observe("shop", APP) == ([], [])
    api, worker = binding("shop"), binding("shop", service="worker", role="w", arn=ROLE_ARN + "-w")
    written = render(rendered, [api, worker])
    files = sorted(str(p.relative_to(rendered.out_dir)) for p in written)
    assert files == ["helm-values.yaml", "patches/deployment-shop-api.yaml", "patches/deployment-shop-worker.yaml",
                     "serviceaccounts/shop-api.yaml", "serviceaccounts/shop-worker.yaml"]
    plan = make_plan(PlanRequest(APP, TARGET, Cloud.AWS, (api, worker), ("api", "worker")), Observed())
    expected = km.render_manifests(km.rendered_services(plan.actions), app=APP, target=TARGET)
    assert all((rendered.out_dir / k).read_text() == v for k, v in expected.items())

    # The engine's path (apply each account) writes the same text as the whole app's files.
    (rendered.out_dir / "serviceaccounts/shop-api.yaml").unlink()
    [account] = [a for a in plan.actions if a.resource is Resource.SERVICE_ACCOUNT and a.service == "api"]
    assert account.account is not None
    rendered.apply_service_account(account.ref, account.account, account.remove_annotations)
    assert (rendered.out_dir / "serviceaccounts/shop-api.yaml").read_text() == expected[
        "serviceaccounts/shop-api.yaml"]

    # A service removed from porter.yaml loses its files; files keyless did not write stay.
    (rendered.out_dir / "serviceaccounts/handmade.yaml").write_text("kind: ServiceAccount\n")
    render(rendered, [api])
    rendered.complete(make_plan(PlanRequest(APP, TARGET, Cloud.AWS, (api,), ("api",)), Observed()))
    assert not (rendered.out_dir / "serviceaccounts/shop-worker.yaml").exists()
    assert not (rendered.out_dir / "patches/deployment-shop-worker.yaml").exists()
    assert (rendered.out_dir / "serviceaccounts/handmade.yaml").exists()
    assert rendered.wait_rollout("shop", "shop-api", 1.0) is True
    assert rendered.delete_service_account(account_ref("shop", "shop-api")) is True
    assert rendered.delete_service_account(account_ref("shop", "shop-api")) is False


def test_rendering_again_leaves_unchanged_files_untouched(tmp_path: Path) -> None:
    rendered = RenderedKube(TARGET, KubernetesSide.model_validate({"mode": "render"}), base=tmp_path)
    api, worker = binding("shop"), binding("shop", service="worker", role="w", arn=ROLE_ARN + "-w")
    render(rendered, [api, worker])
    before = {p: p.stat().st_mtime_ns for p in rendered.out_dir.rglob("*.yaml")}
    for path in before:
        os.utime(path, ns=(0, 0))  # a stamp no write could leave
    moved = binding("shop", service="worker", role="w2", arn=ROLE_ARN + "-w2")
    render(rendered, [api, moved])
    rewritten = sorted(str(p.relative_to(rendered.out_dir)) for p in before if p.stat().st_mtime_ns != 0)
    # Only what the worker's new role changes (its account and patch, and the values file listing every service).
    assert rewritten == ["helm-values.yaml", "patches/deployment-shop-worker.yaml", "serviceaccounts/shop-worker.yaml"]


def test_rendered_side_uses_out_dir_and_refuses_escapes(tmp_path: Path) -> None:
    rendered = RenderedKube(TARGET, KubernetesSide.model_validate({"mode": "render", "outDir": "gitops/prod"}),
                            base=tmp_path)
    assert rendered.out_dir == tmp_path / "gitops" / "prod"
    with pytest.raises(ValueError, match="outside"):
        rendered.write({"../escape.yaml": "x"})
