"""The sandbox's Kubernetes stand-in, driven over HTTP by the real lightkube clients (sync and async)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from lightkube import ApiError, AsyncClient, Client
from lightkube.config.kubeconfig import KubeConfig
from lightkube.models.apps_v1 import DeploymentSpec
from lightkube.models.core_v1 import Container, PodSpec, PodTemplateSpec
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta
from lightkube.resources.apps_v1 import Deployment, ReplicaSet
from lightkube.resources.core_v1 import Event, Namespace, Pod, ServiceAccount
from lightkube.types import PatchType

from keyless.sandbox.knobs import KnobSettings, RateLimit
from keyless.sandbox.kube import (
    AZURE_TOKEN_FILE,
    EKS_TOKEN_FILE,
    KubeStandIn,
    azure_workload_identity_mutator,
    eks_pod_identity_mutator,
)

pytestmark = pytest.mark.integration

CLUSTER = "prod"
ISSUER = "https://oidc.sandbox.local/tenant-1/prod/"  # trailing slash on purpose: it must survive byte for byte
TENANT = "11111111-2222-3333-4444-555555555555"
AUTHORITY = "https://login.sandbox.local/"
ROLE = "arn:aws:iam::123456789012:role/shop-api"

# What the AWS stand-in would answer: (cluster, namespace, service account) -> role ARN.
ASSOCIATIONS: dict[tuple[str, str, str], str] = {}


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeStandIn]:
    standin = KubeStandIn(
        CLUSTER,
        issuer_url=ISSUER,
        state_dir=tmp_path_factory.mktemp("kube-state"),
        mutators=[
            eks_pod_identity_mutator(lambda c, ns, sa: ASSOCIATIONS.get((c, ns, sa)),
                                     "http://127.0.0.1:9/agent"),
            azure_workload_identity_mutator(TENANT, AUTHORITY),
        ],
    )
    with standin:
        yield standin
    assert standin.api.unexpected_errors == []


@pytest.fixture(scope="module")
def kubeconfig(kube: KubeStandIn, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return kube.write_kubeconfig(tmp_path_factory.mktemp("kubeconfig") / "config", "sandbox-prod")


@pytest.fixture
def client(kubeconfig: Path) -> Client:
    return Client(config=KubeConfig.from_file(kubeconfig), field_manager="keyless")


def _namespace(client: Client, name: str) -> str:
    client.create(Namespace(metadata=ObjectMeta(name=name)))
    return name


def _deployment(name: str, namespace: str, labels: dict[str, str], account: str | None = None,
                replicas: int = 2) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=name, namespace=namespace, labels=labels),
        spec=DeploymentSpec(
            replicas=replicas,
            selector=LabelSelector(matchLabels=labels),
            template=PodTemplateSpec(
                metadata=ObjectMeta(labels=labels),
                spec=PodSpec(serviceAccountName=account, containers=[Container(name="app", image="shop:1")]),
            ),
        ),
    )


def _wait_rollout(client: Client, name: str, namespace: str, timeout: float = 10.0) -> Deployment:
    """What keyless's "wait for rollout" does: poll until the controller saw the change and pods are new."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deployment = client.get(Deployment, name, namespace=namespace)
        status, want = deployment.status, deployment.spec.replicas
        if (status is not None and (status.observedGeneration or 0) >= (deployment.metadata.generation or 0)
                and status.updatedReplicas == want and status.availableReplicas == want
                and status.replicas == want):
            return deployment
        time.sleep(0.02)
    raise AssertionError(f"deployment {namespace}/{name} did not roll out")


def _pods(client: Client, namespace: str, **labels: str) -> list[Pod]:
    return sorted(client.list(Pod, namespace=namespace, labels=labels), key=lambda p: p.metadata.name)


def _env(pod: Pod) -> dict[str, str]:
    return {e.name: e.value for e in pod.spec.containers[0].env or []}


def _annotations(client: Client, name: str, namespace: str) -> dict[str, str]:
    return dict(client.get(ServiceAccount, name, namespace=namespace).metadata.annotations or {})


def test_apply_creates_then_updates_a_service_account(client: Client) -> None:
    namespace = _namespace(client, "apply")
    created = client.apply(ServiceAccount(metadata=ObjectMeta(name="shop-api", namespace=namespace,
                                                              labels={"app": "shop"})), force=True)
    assert created.metadata.uid
    assert created.metadata.creationTimestamp
    updated = client.apply(ServiceAccount(metadata=ObjectMeta(
        name="shop-api", namespace=namespace, labels={"app": "shop"},
        annotations={"eks.amazonaws.com/role-arn": ROLE})), force=True)
    assert updated.metadata.uid == created.metadata.uid
    assert int(updated.metadata.resourceVersion) > int(created.metadata.resourceVersion)
    assert updated.metadata.annotations == {"eks.amazonaws.com/role-arn": ROLE}
    (entry,) = updated.metadata.managedFields
    assert (entry.manager, entry.operation) == ("keyless", "Apply")
    assert entry.fieldsV1 == {"f:metadata": {"f:annotations": {"f:eks.amazonaws.com/role-arn": {}},
                                             "f:labels": {"f:app": {}}}}
    again = client.apply(ServiceAccount(metadata=ObjectMeta(
        name="shop-api", namespace=namespace, labels={"app": "shop"},
        annotations={"eks.amazonaws.com/role-arn": ROLE})), force=True)
    assert again.metadata.resourceVersion == updated.metadata.resourceVersion  # a no-op apply writes nothing

    with pytest.raises(ApiError) as missing:
        client.apply(ServiceAccount(metadata=ObjectMeta(name="x", namespace="nowhere")), force=True)
    assert missing.value.status.code == 404
    assert missing.value.status.message == 'namespaces "nowhere" not found'
    with pytest.raises(ApiError) as exists:
        client.create(ServiceAccount(metadata=ObjectMeta(name="shop-api", namespace=namespace)))
    assert (exists.value.status.code, exists.value.status.reason) == (409, "AlreadyExists")
    with pytest.raises(ApiError) as gone:
        client.get(ServiceAccount, "nope", namespace=namespace)
    assert (gone.value.status.code, gone.value.status.message) == (404, 'serviceaccounts "nope" not found')
    with pytest.raises(ApiError) as bad:
        client.apply(ServiceAccount(metadata=ObjectMeta(name="x" * 254, namespace=namespace)), force=True)
    assert (bad.value.status.code, bad.value.status.reason) == (422, "Invalid")


def test_apply_drops_what_the_manager_stopped_applying_and_keeps_other_managers_fields(client: Client) -> None:
    namespace = _namespace(client, "ssa")
    client.apply(ServiceAccount(metadata=ObjectMeta(name="web", namespace=namespace, annotations={
        "keyless.dev/owned": "yes", "keyless.dev/dropped": "soon", "shared": "same"})), force=True)
    client.patch(ServiceAccount, "web", {"metadata": {"annotations": {"team": "payments"}}},
                 namespace=namespace, patch_type=PatchType.MERGE, field_manager="kubectl-edit")
    client.apply(ServiceAccount(metadata=ObjectMeta(name="web", namespace=namespace, annotations={"shared": "same"})),
                 field_manager="helm", force=True)

    client.apply(ServiceAccount(metadata=ObjectMeta(name="web", namespace=namespace, annotations={
        "keyless.dev/owned": "yes"})), force=True)

    assert _annotations(client, "web", namespace) == {
        "keyless.dev/owned": "yes", "team": "payments", "shared": "same"}
    managed = {m.manager: m for m in client.get(ServiceAccount, "web", namespace=namespace).metadata.managedFields}
    assert set(managed) == {"keyless", "kubectl-edit", "helm"}
    assert managed["kubectl-edit"].operation == "Update"

    # Without force, taking a field another manager owns with another value is a conflict.
    with pytest.raises(ApiError) as conflict:
        client.apply(ServiceAccount(metadata=ObjectMeta(name="web", namespace=namespace, annotations={
            "keyless.dev/owned": "yes", "team": "platform"})), field_manager="keyless")
    assert conflict.value.status.code == 409
    assert '"kubectl-edit"' in conflict.value.status.message
    assert ".metadata.annotations.team" in conflict.value.status.message
    taken = client.apply(ServiceAccount(metadata=ObjectMeta(name="web", namespace=namespace, annotations={
        "keyless.dev/owned": "yes", "team": "platform"})), force=True)
    assert taken.metadata.annotations["team"] == "platform"
    assert "kubectl-edit" not in {m.manager for m in taken.metadata.managedFields}


def test_json_patch_removes_a_single_annotation(client: Client) -> None:
    namespace = _namespace(client, "jsonpatch")
    client.create(ServiceAccount(metadata=ObjectMeta(name="api", namespace=namespace, annotations={
        "azure.workload.identity/client-id": "abc", "keep": "me"})))
    patched = client.patch(ServiceAccount, "api", [
        {"op": "test", "path": "/metadata/annotations/azure.workload.identity~1client-id", "value": "abc"},
        {"op": "remove", "path": "/metadata/annotations/azure.workload.identity~1client-id"},
    ], namespace=namespace, patch_type=PatchType.JSON)
    assert patched.metadata.annotations == {"keep": "me"}
    with pytest.raises(ApiError) as failed:
        client.patch(ServiceAccount, "api", [{"op": "remove", "path": "/metadata/annotations/absent"}],
                     namespace=namespace, patch_type=PatchType.JSON)
    assert failed.value.status.code == 422
    strategic = client.patch(ServiceAccount, "api", {"metadata": {"labels": {"tier": "web"}}}, namespace=namespace)
    assert strategic.metadata.labels == {"tier": "web"}
    assert strategic.metadata.annotations == {"keep": "me"}


def test_list_filters_by_label_selector(client: Client, kube: KubeStandIn) -> None:
    namespace = _namespace(client, "selectors")
    for name, labels in {"a": {"porter.run/app-name": "shop", "porter.run/service-name": "web"},
                         "b": {"porter.run/app-name": "shop", "porter.run/service-name": "worker"},
                         "c": {"porter.run/app-name": "blog", "porter.run/service-name": "web"}}.items():
        client.create(ServiceAccount(metadata=ObjectMeta(name=name, namespace=namespace, labels=labels)))

    def names(**labels: Any) -> list[str]:
        return sorted(s.metadata.name for s in client.list(ServiceAccount, namespace=namespace, labels=labels))

    assert names(**{"porter.run/app-name": "shop", "porter.run/service-name": "web"}) == ["a"]
    assert names(**{"porter.run/app-name": "shop"}) == ["a", "b"]
    assert names(**{"porter.run/service-name": ("web", "worker")}) == ["a", "b", "c"]
    assert names(**{"porter.run/app-name": None}) == ["a", "b", "c"]
    every = sorted((s.metadata.namespace, s.metadata.name) for s in client.list(
        ServiceAccount, namespace="*", labels={"porter.run/app-name": "blog"}))
    assert every == [(namespace, "c")]
    raw = httpx.get(f"{kube.url}/api/v1/namespaces/{namespace}/serviceaccounts", headers=kube.admin_headers,
                    params={"labelSelector": "porter.run/app-name=shop,porter.run/service-name!=web", "limit": "1"})
    assert [i["metadata"]["name"] for i in raw.json()["items"]] == ["b"]


def test_rollout_replaces_pods_on_template_change_only(client: Client, kube: KubeStandIn) -> None:
    namespace = _namespace(client, "rollout")
    labels = {"porter.run/app-name": "shop", "porter.run/service-name": "web"}
    client.create(_deployment("shop-web", namespace, labels))
    first = _wait_rollout(client, "shop-web", namespace)
    before = _pods(client, namespace, **labels)
    assert len(before) == 2
    assert all(p.status.phase == "Running" for p in before)
    assert all(p.metadata.name.startswith("shop-web-") and len(p.metadata.name.split("-")) == 4 for p in before)

    client.patch(Deployment, "shop-web", {"metadata": {"labels": {"team": "payments"}}}, namespace=namespace,
                 patch_type=PatchType.MERGE)
    kube.wait_idle()
    unchanged = client.get(Deployment, "shop-web", namespace=namespace)
    assert unchanged.metadata.generation == first.metadata.generation
    assert [p.metadata.uid for p in _pods(client, namespace, **labels)] == [p.metadata.uid for p in before]

    client.patch(Deployment, "shop-web", {"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": "2024-05-01T10:00:00Z"}}}}}, namespace=namespace)
    restarted = _wait_rollout(client, "shop-web", namespace)
    assert restarted.metadata.generation == first.metadata.generation + 1
    after = _pods(client, namespace, **labels)
    assert len(after) == 2
    assert not {p.metadata.uid for p in after} & {p.metadata.uid for p in before}
    assert all(p.metadata.annotations["kubectl.kubernetes.io/restartedAt"] == "2024-05-01T10:00:00Z" for p in after)
    replica_sets = {rs.metadata.name: rs.spec.replicas for rs in client.list(ReplicaSet, namespace=namespace)}
    assert sorted(replica_sets.values()) == [0, 2]
    assert client.wait(Deployment, "shop-web", for_conditions=["Available"], namespace=namespace)


def test_mutators_run_at_pod_creation_only(client: Client, kube: KubeStandIn) -> None:
    namespace = _namespace(client, "mutation")
    labels = {"app": "api"}
    client.apply(ServiceAccount(metadata=ObjectMeta(name="shop-api", namespace=namespace)), force=True)
    client.create(_deployment("api", namespace, labels, account="shop-api", replicas=1))
    _wait_rollout(client, "api", namespace)
    (old,) = _pods(client, namespace, **labels)
    assert "AWS_CONTAINER_CREDENTIALS_FULL_URI" not in _env(old)

    ASSOCIATIONS[(CLUSTER, namespace, "shop-api")] = ROLE
    client.patch(Pod, old.metadata.name, {"metadata": {"labels": {"touched": "yes"}}}, namespace=namespace,
                 patch_type=PatchType.MERGE)
    kube.wait_idle()
    assert "AWS_CONTAINER_CREDENTIALS_FULL_URI" not in _env(client.get(Pod, old.metadata.name, namespace=namespace))
    with pytest.raises(ApiError) as immutable:  # nor can anyone add it to the running pod
        client.patch(Pod, old.metadata.name, {"spec": {"containers": [{"name": "app", "env": [
            {"name": "AWS_REGION", "value": "us-east-1"}]}]}}, namespace=namespace)
    assert immutable.value.status.code == 422

    client.patch(Deployment, "api", {"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": "2024-05-01T11:00:00Z"}}}}}, namespace=namespace)
    _wait_rollout(client, "api", namespace)
    (new,) = _pods(client, namespace, **labels)
    assert new.metadata.uid != old.metadata.uid
    env = _env(new)
    assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == "http://127.0.0.1:9/agent/v1/credentials"
    assert env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] == EKS_TOKEN_FILE
    (token_volume,) = [v for v in new.spec.volumes if v.name == "eks-pod-identity-token"]
    assert token_volume.projected.sources[0].serviceAccountToken.audience == "pods.eks.amazonaws.com"
    mounts = {m.mountPath for m in new.spec.containers[0].volumeMounts}
    assert "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount" in mounts
    assert "/var/run/secrets/kubernetes.io/serviceaccount" in mounts  # the built-in plugin ran too


def test_azure_webhook_needs_the_pod_label(client: Client, kube: KubeStandIn) -> None:
    namespace = _namespace(client, "azure")
    client.apply(ServiceAccount(metadata=ObjectMeta(name="shop-web", namespace=namespace, annotations={
        "azure.workload.identity/client-id": "00000000-aaaa-bbbb-cccc-000000000001"})), force=True)
    client.apply(ServiceAccount(metadata=ObjectMeta(name="no-client-id", namespace=namespace)), force=True)
    client.create(_deployment("plain", namespace, {"app": "plain"}, account="shop-web", replicas=1))
    client.create(_deployment("labelled", namespace, {"app": "labelled", "azure.workload.identity/use": "true"},
                              account="shop-web", replicas=1))
    client.create(_deployment("unannotated", namespace,
                              {"app": "unannotated", "azure.workload.identity/use": "true"},
                              account="no-client-id", replicas=1))
    kube.wait_idle()

    (plain,) = _pods(client, namespace, app="plain")
    assert not any(k.startswith("AZURE_") for k in _env(plain))
    (labelled,) = _pods(client, namespace, app="labelled")
    assert _env(labelled) == {
        "AZURE_CLIENT_ID": "00000000-aaaa-bbbb-cccc-000000000001", "AZURE_TENANT_ID": TENANT,
        "AZURE_FEDERATED_TOKEN_FILE": AZURE_TOKEN_FILE, "AZURE_AUTHORITY_HOST": AUTHORITY,
    }
    (volume,) = [v for v in labelled.spec.volumes if v.name.startswith("azure-workload-identity-reserved-")]
    assert volume.projected.sources[0].serviceAccountToken.audience == "api://AzureADTokenExchange"
    (unannotated,) = _pods(client, namespace, app="unannotated")
    assert "AZURE_CLIENT_ID" not in _env(unannotated)
    assert _env(unannotated)["AZURE_FEDERATED_TOKEN_FILE"] == AZURE_TOKEN_FILE


def test_pods_wait_for_their_service_account(client: Client, kube: KubeStandIn) -> None:
    namespace = _namespace(client, "missing-sa")
    deployment = _deployment("web", namespace, {"app": "web"}, account="later", replicas=1)
    deployment.spec.progressDeadlineSeconds = 1
    client.create(deployment)
    kube.wait_idle()
    assert _pods(client, namespace, app="web") == []
    deployment = client.get(Deployment, "web", namespace=namespace)
    failure = {c.type: c for c in deployment.status.conditions}["ReplicaFailure"]
    assert 'serviceaccount "later" not found' in failure.message
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # keyless stops waiting on a rollout once this shows up
        progressing = {c.type: c for c in client.get(Deployment, "web", namespace=namespace).status.conditions}
        if progressing["Progressing"].reason == "ProgressDeadlineExceeded":
            break
        time.sleep(0.1)
    assert progressing["Progressing"].status == "False"
    assert any(e.reason == "FailedCreate" for e in client.list(Event, namespace=namespace))
    with pytest.raises(ApiError) as refused:
        client.create(Pod(metadata=ObjectMeta(name="direct", namespace=namespace),
                          spec=PodSpec(serviceAccountName="later", containers=[Container(name="a", image="b")])))
    assert refused.value.status.code == 403

    client.create(ServiceAccount(metadata=ObjectMeta(name="later", namespace=namespace)))
    recovered = _wait_rollout(client, "web", namespace)
    assert len(_pods(client, namespace, app="web")) == 1
    conditions = {c.type: c for c in recovered.status.conditions}
    assert conditions["Progressing"].reason == "NewReplicaSetAvailable"


def test_tokens_verify_against_the_served_jwks(client: Client, kube: KubeStandIn) -> None:
    namespace = _namespace(client, "tokens")
    account = client.create(ServiceAccount(metadata=ObjectMeta(name="shop-api", namespace=namespace)))
    token = kube.mint_token(namespace, "shop-api", "api://AzureADTokenExchange")

    discovery = httpx.get(f"{kube.url}/.well-known/openid-configuration").json()
    assert discovery["issuer"] == ISSUER
    jwks = httpx.get(discovery["jwks_uri"]).json()
    assert jwks == kube.jwks()
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
    claims = jwt.decode(token, key, algorithms=["RS256"], audience="api://AzureADTokenExchange", issuer=ISSUER)
    assert claims["iss"] == ISSUER
    assert claims["sub"] == f"system:serviceaccount:{namespace}:shop-api"
    assert claims["aud"] == ["api://AzureADTokenExchange"]
    assert claims["kubernetes.io"]["serviceaccount"] == {"name": "shop-api", "uid": account.metadata.uid}
    assert claims["exp"] - claims["iat"] >= 3000  # its own lifetime, not a race with the wall clock
    jwt.decode(token, kube.public_key(), algorithms=["RS256"], audience="api://AzureADTokenExchange")


def test_exec_env_materializes_the_projected_token(client: Client, kube: KubeStandIn,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    namespace = _namespace(client, "exec")
    monkeypatch.setenv("KEYLESS_HOST_SECRET", "must-not-leak")
    client.apply(ServiceAccount(metadata=ObjectMeta(name="shop-worker", namespace=namespace)), force=True)
    ASSOCIATIONS[(CLUSTER, namespace, "shop-worker")] = ROLE
    kube.seed_workload(namespace, "shop-worker", "CronJob",
                       {"porter.run/app-name": "shop", "porter.run/service-name": "worker"},
                       service_account="shop-worker", env={"DATA_DIR": "/data"})
    job = kube.run_job(namespace, "shop-worker")
    (pod,) = _pods(client, namespace, **{"batch.kubernetes.io/job-name": job})
    assert pod.status.phase == "Running"

    env = kube.exec_env(namespace, pod.metadata.name)
    assert "KEYLESS_HOST_SECRET" not in env
    assert env["PATH"]
    assert env["DATA_DIR"] == "/data"
    token_file = Path(env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"])
    assert token_file.is_file()
    assert str(token_file).startswith(str(kube.state_dir))
    assert token_file.name == "eks-pod-identity-token"
    claims = jwt.decode(token_file.read_text(), kube.public_key(), algorithms=["RS256"],
                        audience="pods.eks.amazonaws.com")
    assert claims["sub"] == f"system:serviceaccount:{namespace}:shop-worker"
    assert claims["kubernetes.io"]["pod"] == {"name": pod.metadata.name, "uid": pod.metadata.uid}
    assert oct(os.stat(token_file).st_mode & 0o777) == "0o600"

    kube.finish_pod(namespace, pod.metadata.name)
    conditions = {c["type"] for c in httpx.get(
        f"{kube.url}/apis/batch/v1/namespaces/{namespace}/jobs/{job}",
        headers=kube.admin_headers).json()["status"]["conditions"]}
    assert "Complete" in conditions


def test_async_client_and_namespace_deletion(kubeconfig: Path, kube: KubeStandIn) -> None:
    async def scenario() -> None:
        client = AsyncClient(config=KubeConfig.from_file(kubeconfig), field_manager="keyless")
        await client.create(Namespace(metadata=ObjectMeta(name="async")))
        await client.apply(ServiceAccount(metadata=ObjectMeta(name="svc", namespace="async",
                                                               annotations={"a": "1"})), force=True)
        patched = await client.patch(ServiceAccount, "svc", {"metadata": {"annotations": {"a": None}}},
                                     namespace="async", patch_type=PatchType.MERGE)
        assert not patched.metadata.annotations
        names = [sa.metadata.name async for sa in client.list(ServiceAccount, namespace="async")]
        assert sorted(names) == ["default", "svc"]
        await client.delete(Namespace, "async")
        await client.close()

    asyncio.run(scenario())
    kube.wait_idle()
    sync = Client(config=KubeConfig.from_file(kubeconfig))
    with pytest.raises(ApiError) as gone:
        sync.get(Namespace, "async")
    assert gone.value.status.code == 404
    assert list(sync.list(ServiceAccount, namespace="async")) == []


# ---- knobs: API Priority and Fairness, denials, counters ---------------------------------------------------


def test_a_rate_limit_answers_429_too_many_requests_with_retry_after(kube: KubeStandIn, client: Client) -> None:
    kube.knobs.configure(KnobSettings(rate_limits={"kube": RateLimit(0.5, burst=1)}))
    try:
        client.get(Namespace, "default")
        with pytest.raises(ApiError) as throttled:
            client.get(Namespace, "default")
        assert (throttled.value.status.code, throttled.value.status.reason) == (429, "TooManyRequests")
        assert throttled.value.status.details is not None
        assert throttled.value.status.details.retryAfterSeconds == 2
        answer = httpx.get(f"{kube.url}/api/v1/namespaces/default")
        assert (answer.status_code, answer.headers["Retry-After"]) == (429, "2")
        assert answer.json()["kind"] == "Status"
    finally:
        kube.knobs.configure(KnobSettings())


def test_denied_verbs_are_forbidden_and_calls_are_counted_by_verb_and_resource(
        kube: KubeStandIn, client: Client) -> None:
    control = f"{kube.url}/_sandbox"
    httpx.post(f"{control}/calls/reset").raise_for_status()
    namespace = _namespace(client, "knobs-counted")
    list(client.list(Pod, namespace=namespace))
    client.get(Namespace, namespace)
    assert httpx.get(f"{control}/calls").json()["operations"] == {
        "create namespaces": 1, "get namespaces": 1, "list pods": 1}
    assert httpx.post(f"{control}/faults/deny", json={"actions": ["list pods"]}).json()["denied"] == ["list pods"]
    try:
        with pytest.raises(ApiError) as denied:
            list(client.list(Pod, namespace=namespace))
        assert (denied.value.status.code, denied.value.status.reason) == (403, "Forbidden")
        client.get(Namespace, namespace)  # what is not denied still works
    finally:
        httpx.post(f"{control}/faults/reset").raise_for_status()
    assert httpx.post(f"{control}/faults/deny", json={"actions": ["List Pods!"]}).status_code == 400


def test_a_lost_answer_leaves_the_object_created(kube: KubeStandIn, client: Client) -> None:
    namespace = _namespace(client, "knobs-lost")
    kube.knobs.lose_next(1, match=("create serviceaccounts",))
    with pytest.raises(ApiError) as lost:
        client.create(ServiceAccount(metadata=ObjectMeta(name="lost", namespace=namespace)))
    assert lost.value.status.code == 500
    assert client.get(ServiceAccount, "lost", namespace=namespace).metadata is not None


def test_reactions_installed_on_the_api_answer_before_the_stand_in(kube: KubeStandIn, client: Client) -> None:
    namespace = _namespace(client, "reactions")
    for name in ("faulty", "once"):
        client.create(ServiceAccount(metadata=ObjectMeta(name=name, namespace=namespace)))

    def get(name: str) -> int:
        url = f"{kube.url}/api/v1/namespaces/{namespace}/serviceaccounts/{name}"
        return httpx.get(url, headers=kube.admin_headers).status_code

    # A filter (asked about each request alone) and a sliced view (asked kmock's way, over the kept requests).
    kube.api[lambda r: r.namespace == namespace and r.name == "faulty"] << 503
    kube.api[lambda r: r.namespace == namespace and r.name == "once"][:1] << 500
    assert [get("faulty"), get("faulty"), get("once"), get("once"), get("default")] == [503, 503, 500, 200, 200]
