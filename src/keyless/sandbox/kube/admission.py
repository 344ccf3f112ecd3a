"""Pod admission of the stand-in: the built-in service-account plugin, the EKS and Azure identity webhooks, GKE's
metadata server routing."""

from __future__ import annotations

import copy
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

Pod = dict[str, Any]
ServiceAccount = dict[str, Any]
# A mutating webhook: (pod, its service account or None, cluster name) -> the mutated pod.
# Called once, when the pod is created, never on updates, like the real admission chain.
Mutator = Callable[[Pod, ServiceAccount | None, str], Pod]

KUBE_API_ACCESS_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
KUBE_API_ACCESS_EXPIRATION: Final = 3607  # what the built-in plugin asks for; the kubelet rotates it

EKS_AGENT_URL: Final = "http://169.254.170.23"
EKS_AUDIENCE: Final = "pods.eks.amazonaws.com"
EKS_TOKEN_DIR: Final = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount"
EKS_TOKEN_NAME: Final = "eks-pod-identity-token"
EKS_TOKEN_FILE: Final = f"{EKS_TOKEN_DIR}/{EKS_TOKEN_NAME}"
# amazon-eks-pod-identity-webhook: annotations under its domain, the label it puts on pods it wires to the agent,
# the default projected-token lifetime and the floor it raises shorter ones to (pkg/validation.go).
EKS_POD_IDENTITY_LABEL: Final = "eks.amazonaws.com/pod-identity"
EKS_TOKEN_EXPIRATION_ANNOTATION: Final = "eks.amazonaws.com/token-expiration"
EKS_SKIP_CONTAINERS_ANNOTATION: Final = "eks.amazonaws.com/skip-containers"
EKS_DEFAULT_EXPIRATION: Final = 86400
EKS_MIN_EXPIRATION: Final = 600

AZURE_USE_LABEL: Final = "azure.workload.identity/use"
AZURE_CLIENT_ID_ANNOTATION: Final = "azure.workload.identity/client-id"
AZURE_TENANT_ID_ANNOTATION: Final = "azure.workload.identity/tenant-id"
AZURE_EXPIRATION_ANNOTATION: Final = "azure.workload.identity/service-account-token-expiration"
AZURE_SKIP_CONTAINERS_ANNOTATION: Final = "azure.workload.identity/skip-containers"
AZURE_INJECT_PROXY_ANNOTATION: Final = "azure.workload.identity/inject-proxy-sidecar"
AZURE_PROXY_PORT_ANNOTATION: Final = "azure.workload.identity/proxy-sidecar-port"
AZURE_AUDIENCE: Final = "api://AzureADTokenExchange"
# The token layout of azure-workload-identity v1.6 (pkg/webhook/consts.go): one reserved volume per pod, named
# after a hash of the pod's name, mounted at .../wi with the token under token/. Earlier releases used the volume
# "azure-identity-token" at /var/run/secrets/azure/tokens; workloads must read AZURE_FEDERATED_TOKEN_FILE instead.
AZURE_TOKEN_DIR: Final = "/var/run/secrets/azure/wi"
AZURE_TOKEN_PATH: Final = "token/azure-identity-token"
AZURE_TOKEN_FILE: Final = f"{AZURE_TOKEN_DIR}/{AZURE_TOKEN_PATH}"
AZURE_VOLUME_PREFIX: Final = "azure-workload-identity-reserved-"
AZURE_MIN_EXPIRATION: Final = 3600
AZURE_MAX_EXPIRATION: Final = 86400
AZURE_PROXY_INIT: Final = "azwi-proxy-init"
AZURE_PROXY: Final = "azwi-proxy"
AZURE_PROXY_IMAGES: Final = "mcr.microsoft.com/oss/azure/workload-identity"
AZURE_PROXY_VERSION: Final = "v1.6.0"
AZURE_DEFAULT_PROXY_PORT: Final = 8000
AZURE_PUBLIC_AUTHORITY: Final = "https://login.microsoftonline.com/"

# The downward-API variable through which a pod names itself in its metadata host (see GkeMetadataRouting).
GKE_POD_NAME_VARIABLE: Final = "KEYLESS_SANDBOX_POD_NAME"


class WebhookDenied(Exception):
    """A webhook refused the pod: the API server answers with this status and the webhook's message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def azure_token_volume_name(pod: Pod) -> str:
    """The reserved volume azure-workload-identity v1.6 adds: its prefix and a sha256 of the pod's name (a pod
    made from generateName is hashed as ``<generateName> (prefix)``), cut to the 63 characters a name may have."""
    meta = pod.get("metadata") or {}
    name = str(meta.get("name") or f"{meta.get('generateName') or ''} (prefix)")
    return AZURE_VOLUME_PREFIX + hashlib.sha256(name.encode()).hexdigest()[: 63 - len(AZURE_VOLUME_PREFIX)]


def _all_containers(pod: Pod) -> list[dict[str, Any]]:
    spec = pod.setdefault("spec", {})
    return [c for key in ("initContainers", "containers") for c in spec.get(key) or [] if isinstance(c, dict)]


def _add_env(container: dict[str, Any], name: str, value: str) -> None:
    env = container.setdefault("env", [])
    # Both webhooks leave a variable alone when the workload already sets it.
    if not any(isinstance(e, dict) and e.get("name") == name for e in env):
        env.append({"name": name, "value": value})


def _add_token_volume(pod: Pod, volume: str, audience: str, expiration: int, path: str) -> None:
    volumes = pod.setdefault("spec", {}).setdefault("volumes", [])
    if any(isinstance(v, dict) and v.get("name") == volume for v in volumes):
        return
    volumes.append({
        "name": volume,
        "projected": {
            "defaultMode": 420,
            "sources": [{"serviceAccountToken": {
                "audience": audience, "expirationSeconds": expiration, "path": path,
            }}],
        },
    })


def _add_mount(container: dict[str, Any], volume: str, mount_path: str) -> None:
    mounts = container.setdefault("volumeMounts", [])
    if not any(isinstance(m, dict) and m.get("mountPath") == mount_path for m in mounts):
        mounts.append({"name": volume, "mountPath": mount_path, "readOnly": True})


def service_account_admission(pod: Pod, service_account: ServiceAccount) -> Pod:
    """What the built-in ServiceAccount admission plugin does before any webhook runs.

    It mounts an API access token (plus the namespace file) at the standard path unless either the
    pod or its service account turns automounting off.
    """
    pod = copy.deepcopy(pod)
    spec = pod.setdefault("spec", {})
    automount = spec.get("automountServiceAccountToken")
    if automount is None:
        automount = service_account.get("automountServiceAccountToken")
    if automount is False:
        return pod
    containers = _all_containers(pod)
    if all(
        any(m.get("mountPath") == KUBE_API_ACCESS_DIR for m in c.get("volumeMounts") or []) for c in containers
    ):
        return pod
    volume = f"kube-api-access-{''.join(secrets.choice('bcdfghjklmnpqrstvwxz2456789') for _ in range(5))}"
    spec.setdefault("volumes", []).append({
        "name": volume,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": KUBE_API_ACCESS_EXPIRATION, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{
                    "path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                }]}},
            ],
        },
    })
    for container in containers:
        _add_mount(container, volume, KUBE_API_ACCESS_DIR)
    return pod


@dataclass(frozen=True)
class EksPodIdentityWebhook:
    """The EKS Pod Identity webhook: wires the agent's credentials endpoint into pods whose account has an association.

    ``association_for(cluster, namespace, service_account)`` answers with the role ARN of the
    association, or None. It is asked at pod creation only: pods that existed before the association
    get nothing until they are recreated.
    """

    association_for: Callable[[str, str, str], str | None]
    agent_url: str = EKS_AGENT_URL
    region: str = ""
    expiration_seconds: int = EKS_DEFAULT_EXPIRATION
    name: str = "iam-for-pods.amazonaws.com"

    def __call__(self, pod: Pod, service_account: ServiceAccount | None, cluster: str) -> Pod:
        metadata = pod.setdefault("metadata", {})
        namespace = str(metadata.get("namespace") or "default")
        account = str(pod.get("spec", {}).get("serviceAccountName") or "default")
        if not self.association_for(cluster, namespace, account):
            return pod
        annotations = metadata.get("annotations") or {}
        account_annotations = (service_account or {}).get("metadata", {}).get("annotations") or {}
        expiration = self._expiration(annotations.get(EKS_TOKEN_EXPIRATION_ANNOTATION),
                                      account_annotations.get(EKS_TOKEN_EXPIRATION_ANNOTATION))
        # A comma-separated list (the webhook reads it as one CSV record).
        skipped = {s.strip() for s in str(annotations.get(EKS_SKIP_CONTAINERS_ANNOTATION, "")).split(",") if s.strip()}
        metadata.setdefault("labels", {})[EKS_POD_IDENTITY_LABEL] = "enabled"
        _add_token_volume(pod, EKS_TOKEN_NAME, EKS_AUDIENCE, expiration, EKS_TOKEN_NAME)
        for container in _all_containers(pod):
            if container.get("name") in skipped:
                continue
            self._add_region(container)
            _add_env(container, "AWS_CONTAINER_CREDENTIALS_FULL_URI", self.agent_url.rstrip("/") + "/v1/credentials")
            _add_env(container, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", EKS_TOKEN_FILE)
            _add_mount(container, EKS_TOKEN_NAME, EKS_TOKEN_DIR)
        return pod

    def _add_region(self, container: dict[str, Any]) -> None:
        names = {e.get("name") for e in container.get("env") or [] if isinstance(e, dict)}
        _add_env(container, "AWS_STS_REGIONAL_ENDPOINTS", "regional")
        # Either region variable set by the workload keeps the webhook from adding both.
        if self.region and not names & {"AWS_REGION", "AWS_DEFAULT_REGION"}:
            _add_env(container, "AWS_DEFAULT_REGION", self.region)
            _add_env(container, "AWS_REGION", self.region)

    def _expiration(self, on_pod: Any, on_account: Any) -> int:
        """Pod annotation, else the service account's, else the default; unparsable values fall back (the webhook
        logs and goes on), shorter ones are raised to the floor."""
        seconds = self.expiration_seconds
        for value in (on_account, on_pod):
            if value is None:
                continue
            try:
                seconds = max(int(str(value)), EKS_MIN_EXPIRATION)
            except ValueError:
                continue
        return seconds


@dataclass(frozen=True)
class AzureWorkloadIdentityWebhook:
    """The Azure Workload Identity webhook (v1.6): federated-token settings for pods labelled to use it.

    Only pods labelled ``azure.workload.identity/use: "true"`` are touched. The client id comes from
    the service account's annotation; when it is missing the pod is still mutated but gets no
    ``AZURE_CLIENT_ID`` (and fails later, as on AKS). A token lifetime outside 3600-86400 seconds, or one that is
    not a number, is refused (the webhook answers 400), never clamped. ``inject-proxy-sidecar`` adds the proxy's
    init container and native sidecar, and is refused on a hostNetwork pod; hostNetwork alone is fine.
    """

    default_tenant_id: str
    authority_host: str = AZURE_PUBLIC_AUTHORITY
    expiration_seconds: int = 3600
    name: str = "mutation.azure-workload-identity.io"

    def __call__(self, pod: Pod, service_account: ServiceAccount | None, cluster: str) -> Pod:
        labels = pod.get("metadata", {}).get("labels") or {}
        if labels.get(AZURE_USE_LABEL) != "true":
            return pod
        annotations = (service_account or {}).get("metadata", {}).get("annotations") or {}
        pod_annotations = pod.get("metadata", {}).get("annotations") or {}
        if AZURE_INJECT_PROXY_ANNOTATION in pod_annotations:
            self._inject_proxy(pod, pod_annotations.get(AZURE_PROXY_PORT_ANNOTATION))
        expiration = self._expiration(pod_annotations.get(AZURE_EXPIRATION_ANNOTATION)
                                      or annotations.get(AZURE_EXPIRATION_ANNOTATION))
        client_id = str(annotations.get(AZURE_CLIENT_ID_ANNOTATION) or "")
        # An annotation present but empty wins over the default (and then no AZURE_TENANT_ID is set), as there.
        tenant_id = str(annotations.get(AZURE_TENANT_ID_ANNOTATION, self.default_tenant_id))
        skipped = {s.strip() for s in str(pod_annotations.get(AZURE_SKIP_CONTAINERS_ANNOTATION, "")).split(";")}
        volume = azure_token_volume_name(pod)
        _add_token_volume(pod, volume, AZURE_AUDIENCE, expiration, AZURE_TOKEN_PATH)
        for container in _all_containers(pod):
            if container.get("name") in skipped:
                continue
            # Variables with an empty value are left out, as the webhook does.
            for key, value in (("AZURE_CLIENT_ID", client_id), ("AZURE_TENANT_ID", tenant_id),
                               ("AZURE_FEDERATED_TOKEN_FILE", AZURE_TOKEN_FILE),
                               ("AZURE_AUTHORITY_HOST", self.authority_host)):
                if value:
                    _add_env(container, key, value)
            _add_mount(container, volume, AZURE_TOKEN_DIR)
        return pod

    def _expiration(self, value: Any) -> int:
        if value is None or value == "":
            return self.expiration_seconds
        try:
            seconds = int(str(value))
        except ValueError:
            raise WebhookDenied(f'strconv.ParseInt: parsing "{value}": invalid syntax') from None
        if not AZURE_MIN_EXPIRATION <= seconds <= AZURE_MAX_EXPIRATION:
            raise WebhookDenied(f"token expiration {seconds} not valid. Expected value to be between "
                                f"{AZURE_MIN_EXPIRATION} and {AZURE_MAX_EXPIRATION}")
        return seconds

    @staticmethod
    def _inject_proxy(pod: Pod, port_annotation: Any) -> None:
        spec = pod.setdefault("spec", {})
        if spec.get("hostNetwork"):
            # The proxy's init container rewrites the pod's iptables: on the host's network it would hit every pod.
            raise WebhookDenied("hostNetwork is set to true, cannot inject proxy sidecar")
        port = AZURE_DEFAULT_PROXY_PORT
        if port_annotation is not None:
            try:
                port = int(str(port_annotation))
            except ValueError:
                raise WebhookDenied(f'failed to parse proxy sidecar port: strconv.ParseInt: parsing '
                                    f'"{port_annotation}": invalid syntax') from None
        init = spec.setdefault("initContainers", [])
        names = {c.get("name") for c in init if isinstance(c, dict)}
        if AZURE_PROXY_INIT not in names:
            init.append({
                "name": AZURE_PROXY_INIT, "image": f"{AZURE_PROXY_IMAGES}/proxy-init:{AZURE_PROXY_VERSION}",
                "imagePullPolicy": "IfNotPresent", "env": [{"name": "PROXY_PORT", "value": str(port)}],
                "securityContext": {"capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}, "privileged": True,
                                    "runAsNonRoot": False, "runAsUser": 0},
            })
        if AZURE_PROXY not in names:
            # A native sidecar (an init container that keeps running), as the webhook does from Kubernetes 1.32 on.
            init.append({
                "name": AZURE_PROXY, "image": f"{AZURE_PROXY_IMAGES}/proxy:{AZURE_PROXY_VERSION}",
                "imagePullPolicy": "IfNotPresent", "restartPolicy": "Always",
                "args": [f"--proxy-port={port}", "--log-level=info"], "ports": [{"containerPort": port}],
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                    "privileged": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True},
            })


@dataclass(frozen=True)
class GkeMetadataRouting:
    """GKE's metadata server routing: pods on GKE_METADATA node pools reach the GKE metadata server.

    On GKE the node redirects 169.254.169.254 to the GKE metadata server, which knows the pod by its IP.
    The sandbox has no pod IPs, so the pod's metadata host carries the pod in its path, and this sets
    GCE_METADATA_HOST and GCE_METADATA_IP (both read by google-auth) to it, leaving values the workload
    sets. ``metadata_host_for(namespace, pod)`` answers None when the cluster's pools do not run
    GKE_METADATA (the pod then keeps the node's metadata server, which the sandbox does not have).

    A pod made by a controller has only ``generateName`` at admission (the API server names it after the
    webhooks ran, on GKE as here): the pod then names itself through the downward API, and the kubelet
    expands ``$(KEYLESS_SANDBOX_POD_NAME)`` in the host.
    """

    metadata_host_for: Callable[[str, str], str | None]
    name: str = "gke-metadata-server.sandbox.keyless.dev"

    def __call__(self, pod: Pod, service_account: ServiceAccount | None, cluster: str) -> Pod:
        if pod.get("spec", {}).get("hostNetwork"):
            return pod  # host-network pods talk to the node's own metadata server on GKE too
        meta = pod.get("metadata") or {}
        namespace = str(meta.get("namespace") or "default")
        pod_name = str(meta.get("name") or "")
        host = self.metadata_host_for(namespace, pod_name or f"$({GKE_POD_NAME_VARIABLE})")
        if host is None:
            return pod
        for container in _all_containers(pod):
            if not pod_name:
                env = container.setdefault("env", [])
                if not any(isinstance(e, dict) and e.get("name") == GKE_POD_NAME_VARIABLE for e in env):
                    # First, so that the variables below can refer to it (references resolve in order).
                    env.insert(0, {"name": GKE_POD_NAME_VARIABLE,
                                   "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}})
            _add_env(container, "GCE_METADATA_HOST", host)
            _add_env(container, "GCE_METADATA_IP", host)
        return pod


def gke_metadata_mutator(metadata_host_for: Callable[[str, str], str | None]) -> Mutator:
    """GKE's metadata server routing as a mutator (see :class:`GkeMetadataRouting`)."""
    return GkeMetadataRouting(metadata_host_for)


def eks_pod_identity_mutator(
    association_for: Callable[[str, str, str], str | None], agent_url: str = EKS_AGENT_URL, region: str = ""
) -> Mutator:
    """The EKS Pod Identity webhook as a mutator (see :class:`EksPodIdentityWebhook`)."""
    return EksPodIdentityWebhook(association_for, agent_url, region)


def azure_workload_identity_mutator(
    default_tenant_id: str, authority_host: str = AZURE_PUBLIC_AUTHORITY
) -> Mutator:
    """The Azure Workload Identity webhook as a mutator (see :class:`AzureWorkloadIdentityWebhook`)."""
    return AzureWorkloadIdentityWebhook(default_tenant_id, authority_host)


def mutator_name(mutator: Mutator) -> str:
    """How an admission failure names the webhook."""
    return str(getattr(mutator, "name", None) or getattr(mutator, "__name__", None) or type(mutator).__name__)
