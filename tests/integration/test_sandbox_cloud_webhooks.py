"""The EKS Pod Identity and Azure Workload Identity webhooks of the Kubernetes stand-in, as their releases mutate
and refuse pods, driven with lightkube over HTTP."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube import ApiError, Client
from lightkube.config.kubeconfig import KubeConfig
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod, ServiceAccount

from keyless.sandbox.kube import KubeStandIn, azure_workload_identity_mutator, eks_pod_identity_mutator

pytestmark = pytest.mark.integration

CLUSTER = "prod"
REGION = "eu-west-3"
TENANT = "11111111-2222-3333-4444-555555555555"
AUTHORITY = "https://login.sandbox.local/"
CLIENT_ID = "00000000-aaaa-bbbb-cccc-000000000001"
ROLE = "arn:aws:iam::123456789012:role/shop-api"
ASSOCIATED = "with-role"  # the service account the EKS webhook finds an association for


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    standin = KubeStandIn(
        CLUSTER,
        issuer_url="https://oidc.sandbox.local/prod/",
        state_dir=tmp_path_factory.mktemp("kube-state"),
        mutators=[
            eks_pod_identity_mutator(lambda c, ns, sa: ROLE if sa == ASSOCIATED else None,
                                     "http://127.0.0.1:9/agent", REGION),
            azure_workload_identity_mutator(TENANT, AUTHORITY),
        ],
    )
    with standin:
        config: Path = standin.write_kubeconfig(tmp_path_factory.mktemp("kubeconfig") / "config", "prod")
        yield Client(config=KubeConfig.from_file(config), field_manager="test")


@pytest.fixture
def namespace(client: Client) -> str:
    name = f"ns-{uuid.uuid4().hex[:8]}"
    client.create(Namespace(metadata=ObjectMeta(name=name)))
    for account in (ASSOCIATED, "azure"):
        annotations = {"azure.workload.identity/client-id": CLIENT_ID} if account == "azure" else None
        client.create(ServiceAccount(metadata=ObjectMeta(name=account, namespace=name, annotations=annotations)))
    return name


def _pod(client: Client, namespace: str, account: str, *, labels: dict[str, str] | None = None,
         annotations: dict[str, str] | None = None, containers: tuple[str, ...] = ("app",),
         host_network: bool | None = None) -> Pod:
    pod = Pod(metadata=ObjectMeta(name=f"p-{uuid.uuid4().hex[:6]}", namespace=namespace, labels=labels,
                                  annotations=annotations),
              spec=PodSpec(serviceAccountName=account, hostNetwork=host_network,
                           containers=[Container(name=n, image="busybox") for n in containers]))
    created: Pod = client.create(pod)
    return created


def _env(pod: Pod, container: int = 0) -> dict[str, str]:
    return {e.name: e.value for e in pod.spec.containers[container].env or []}


# ---- EKS Pod Identity (amazon-eks-pod-identity-webhook, container credentials) --------------------------------


def test_eks_webhook_injects_what_the_real_one_does(client: Client, namespace: str) -> None:
    pod = _pod(client, namespace, ASSOCIATED)
    assert _env(pod) == {
        "AWS_STS_REGIONAL_ENDPOINTS": "regional",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/agent/v1/credentials",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE":
            "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token",
    }
    assert pod.metadata.labels == {"eks.amazonaws.com/pod-identity": "enabled"}
    (volume,) = [v for v in pod.spec.volumes if v.name == "eks-pod-identity-token"]
    token = volume.projected.sources[0].serviceAccountToken
    assert (token.audience, token.expirationSeconds, token.path) == (
        "pods.eks.amazonaws.com", 86400, "eks-pod-identity-token")


def test_eks_webhook_keeps_a_region_the_workload_sets(client: Client, namespace: str) -> None:
    pod = Pod(metadata=ObjectMeta(name="regional", namespace=namespace),
              spec=PodSpec(serviceAccountName=ASSOCIATED, containers=[
                  Container(name="app", image="busybox", env=[{"name": "AWS_REGION", "value": "us-west-2"}])]))
    env = _env(client.create(pod))
    assert env["AWS_REGION"] == "us-west-2"
    assert "AWS_DEFAULT_REGION" not in env


def test_eks_webhook_reads_token_lifetime_and_skipped_containers(client: Client, namespace: str) -> None:
    pod = _pod(client, namespace, ASSOCIATED, containers=("app", "sidecar", "logger"), annotations={
        "eks.amazonaws.com/token-expiration": "7200", "eks.amazonaws.com/skip-containers": "sidecar,logger"})
    (volume,) = [v for v in pod.spec.volumes if v.name == "eks-pod-identity-token"]
    assert volume.projected.sources[0].serviceAccountToken.expirationSeconds == 7200
    assert "AWS_CONTAINER_CREDENTIALS_FULL_URI" in _env(pod, 0)
    assert _env(pod, 1) == {}
    assert _env(pod, 2) == {}
    short = _pod(client, namespace, ASSOCIATED, annotations={"eks.amazonaws.com/token-expiration": "60"})
    (volume,) = [v for v in short.spec.volumes if v.name == "eks-pod-identity-token"]
    assert volume.projected.sources[0].serviceAccountToken.expirationSeconds == 600  # raised to the floor


# ---- Azure Workload Identity (azure-workload-identity v1.6) -------------------------------------------------


def test_azure_webhook_uses_the_v1_6_token_layout(client: Client, namespace: str) -> None:
    pod = _pod(client, namespace, "azure", labels={"azure.workload.identity/use": "true"})
    assert _env(pod) == {
        "AZURE_CLIENT_ID": CLIENT_ID, "AZURE_TENANT_ID": TENANT,
        "AZURE_FEDERATED_TOKEN_FILE": "/var/run/secrets/azure/wi/token/azure-identity-token",
        "AZURE_AUTHORITY_HOST": AUTHORITY,
    }
    volume_name = "azure-workload-identity-reserved-" + hashlib.sha256(pod.metadata.name.encode()).hexdigest()[:30]
    (volume,) = [v for v in pod.spec.volumes if v.name == volume_name]
    token = volume.projected.sources[0].serviceAccountToken
    assert (token.audience, token.expirationSeconds, token.path) == (
        "api://AzureADTokenExchange", 3600, "token/azure-identity-token")
    (mount,) = [m for m in pod.spec.containers[0].volumeMounts if m.name == volume_name]
    assert (mount.mountPath, mount.readOnly) == ("/var/run/secrets/azure/wi", True)


@pytest.mark.parametrize("value", ["1800", "90000", "soon"])
def test_azure_webhook_refuses_a_token_lifetime_out_of_bounds(client: Client, namespace: str, value: str) -> None:
    with pytest.raises(ApiError) as refused:
        _pod(client, namespace, "azure", labels={"azure.workload.identity/use": "true"},
             annotations={"azure.workload.identity/service-account-token-expiration": value})
    assert refused.value.status.code == 400
    assert refused.value.status.message.startswith(
        'admission webhook "mutation.azure-workload-identity.io" denied the request: ')
    if value != "soon":
        assert f"token expiration {value} not valid. Expected value to be between 3600 and 86400" in (
            refused.value.status.message)
    # The bounds themselves are fine.
    pod = _pod(client, namespace, "azure", labels={"azure.workload.identity/use": "true"},
               annotations={"azure.workload.identity/service-account-token-expiration": "86400"})
    assert [v.projected.sources[0].serviceAccountToken.expirationSeconds for v in pod.spec.volumes
            if v.name.startswith("azure-workload-identity-reserved-")] == [86400]


def test_azure_webhook_proxy_sidecar_and_host_network(client: Client, namespace: str) -> None:
    labels = {"azure.workload.identity/use": "true"}
    plain_host = _pod(client, namespace, "azure", labels=labels, host_network=True)
    assert _env(plain_host)["AZURE_CLIENT_ID"] == CLIENT_ID  # hostNetwork alone is mutated as usual
    proxy = {"azure.workload.identity/inject-proxy-sidecar": "true", "azure.workload.identity/proxy-sidecar-port":
             "8100"}
    with pytest.raises(ApiError) as refused:
        _pod(client, namespace, "azure", labels=labels, annotations=proxy, host_network=True)
    assert refused.value.status.code == 400
    assert refused.value.status.message.endswith("hostNetwork is set to true, cannot inject proxy sidecar")
    pod = _pod(client, namespace, "azure", labels=labels, annotations=proxy)
    init = {c.name: c for c in pod.spec.initContainers}
    assert set(init) == {"azwi-proxy-init", "azwi-proxy"}
    assert {e.name: e.value for e in init["azwi-proxy-init"].env}["PROXY_PORT"] == "8100"
    assert init["azwi-proxy"].restartPolicy == "Always"  # a native sidecar
    assert "--proxy-port=8100" in init["azwi-proxy"].args
