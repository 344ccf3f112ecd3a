"""The cluster the operator runs in, through lightkube: its connection, the ConfigMaps KeylessApps name, status writes.

The operator's kopf machinery talks to this cluster itself (watches, patches of its own objects); this module holds
the few calls keyless makes there on its own: reading a porter.yaml out of a ConfigMap, and writing a KeylessApp's
status while a reconcile is still running (drift found, repair under way).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import httpx2
from lightkube import ApiError, Client, SingleConfig, codecs
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, ServiceAccount
from lightkube.types import PatchType

from keyless.errors import CloudError
from keyless.kube.cluster import DEFAULT_POLICY, is_transient
from keyless.kube.config import load_config
from keyless.providers.retry import RetryPolicy, call_with_retry
from keyless.targets import KubernetesSide

__all__ = ["HomeCluster"]

T = TypeVar("T")


class HomeCluster:
    """The operator's own cluster: the kubeconfig context given (or $KUBECONFIG's, or the pod's account)."""

    def __init__(self, context: str | None = None, *, env: Mapping[str, str] | None = None,
                 policy: RetryPolicy = DEFAULT_POLICY, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._side = KubernetesSide(context=context)
        self._env = os.environ if env is None else env
        self.config: SingleConfig = load_config(self._side, self._env)
        self._client = Client(config=self.config, field_manager="keyless-operator")
        self._policy = policy
        self._sleep = sleep
        self._clock = clock

    def reload(self) -> SingleConfig:
        """Read the kubeconfig (or the pod's rotated token) again, for a fresh login."""
        self.config = load_config(self._side, self._env)
        return self.config

    def close(self) -> None:
        self._client.close()

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return call_with_retry(fn, policy=self._policy, retryable=is_transient, what=what, sleep=self._sleep,
                                   clock=self._clock)
        except httpx2.HTTPStatusError as exc:
            detail = exc.status.message if isinstance(exc, ApiError) and exc.status.message else exc.response.text
            raise CloudError(f"Kubernetes refused to {what}: {detail} (HTTP {exc.response.status_code})",
                             "check the operator's RBAC (`keyless operator manifests`)") from exc
        except httpx2.HTTPError as exc:
            raise CloudError(f"cannot {what}: {self.config.cluster.server} did not answer ({exc})",
                             "check that the operator's cluster is reachable") from exc

    def config_map_value(self, namespace: str, name: str, key: str) -> str | None:
        """One key of a ConfigMap, or None when the ConfigMap or the key is not there."""
        def read() -> ConfigMap | None:
            try:
                return self._client.get(ConfigMap, name, namespace=namespace)
            except ApiError as exc:
                if exc.status.code == 404:
                    return None
                raise

        found = self._call(f"read ConfigMap {namespace}/{name}", read)
        if found is None:
            return None
        return (found.data or {}).get(key)

    def patch_status(self, group: str, version: str, kind: str, plural: str, namespace: str, name: str,
                     status: dict[str, Any]) -> None:
        """Merge `status` into a namespaced custom object's status subresource."""
        resource = create_namespaced_resource(group, version, kind, plural)
        self._call(f"write the status of {kind} {namespace}/{name}",
                   lambda: self._client.patch(resource.Status, name, {"status": status}, namespace=namespace,
                                              patch_type=PatchType.MERGE))

    def apply_manifests(self, documents: Iterable[Mapping[str, Any]], field_manager: str = "keyless") -> list[str]:
        """Server-side apply each document, as `kubectl apply --server-side` would; answers `kind/name` of each."""
        applied = []
        for document in documents:
            obj: Any = codecs.from_dict(dict(document))
            kind, name = document.get("kind", ""), (document.get("metadata") or {}).get("name", "")

            def apply(obj: Any = obj) -> Any:
                return self._client.apply(obj, field_manager=field_manager, force=True)

            self._call(f"apply {kind} {name}", apply)
            applied.append(f"{str(kind).lower()}/{name}")
        return applied

    def service_account_token(self, namespace: str, name: str, seconds: int) -> str:
        """A token of the service account for the API server (`kubectl create token NAME --duration`)."""
        request = ServiceAccount.Token(metadata=ObjectMeta(name=name, namespace=namespace),
                                       spec=TokenRequestSpec(audiences=[], expirationSeconds=seconds))
        created = self._call(f"request a token for ServiceAccount {namespace}/{name}",
                             lambda: self._client.create(request, name, namespace=namespace))
        status = getattr(created, "status", None)
        if status is None or not status.token:
            raise CloudError(f"the API server gave no token for ServiceAccount {namespace}/{name}", "")
        return str(status.token)

    def kubeconfig_for(self, context: str, token: str) -> dict[str, Any]:
        """A kubeconfig with one context: this cluster, as the identity `token` is a token of."""
        cluster = self.config.cluster
        entry: dict[str, Any] = {"server": cluster.server}
        if cluster.certificate_auth_data:
            entry["certificate-authority-data"] = cluster.certificate_auth_data
        elif cluster.certificate_auth:
            entry["certificate-authority"] = cluster.certificate_auth
        return {"apiVersion": "v1", "kind": "Config", "current-context": context,
                "clusters": [{"name": context, "cluster": entry}],
                "users": [{"name": context, "user": {"token": token}}],
                "contexts": [{"name": context, "context": {"cluster": context, "user": context}}]}
