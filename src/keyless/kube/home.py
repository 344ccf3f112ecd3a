"""The cluster the operator runs in, through lightkube: its connection, the ConfigMaps KeylessApps name, status writes,
and the KeylessApps the control plane hands to it.

The operator's kopf machinery talks to this cluster itself (watches, patches of its own objects); this module holds
the few calls keyless makes there on its own: reading a porter.yaml out of a ConfigMap, and writing a KeylessApp's
status while a reconcile is still running (drift found, repair under way). The control plane reaches the same kind of
cluster (a target's, where an operator runs) to write, read and delete the KeylessApp of an app it hands over.
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

from keyless.errors import CloudError, Conflict
from keyless.kube.cluster import DEFAULT_POLICY, is_transient
from keyless.kube.config import load_config
from keyless.operator.resource import GROUP, KIND, PLURAL, VERSION
from keyless.providers.retry import RetryPolicy, call_with_retry
from keyless.targets import KubernetesSide

__all__ = ["KEYLESSAPP", "HomeCluster"]

T = TypeVar("T")

KEYLESSAPP = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)
_OPERATOR_RBAC_HINT = "check the operator's RBAC (`keyless operator manifests`)"


class HomeCluster:
    """The operator's own cluster: the kubeconfig context given (or $KUBECONFIG's, or the pod's account)."""

    def __init__(self, context: str | None = None, *, side: KubernetesSide | None = None,
                 env: Mapping[str, str] | None = None, field_manager: str = "keyless-operator",
                 rbac_hint: str = _OPERATOR_RBAC_HINT, policy: RetryPolicy = DEFAULT_POLICY,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        # `side`: a target's kubeconfig file and context (the control plane); else the context given (the operator).
        self._side = side if side is not None else KubernetesSide(context=context)
        self._env = os.environ if env is None else env
        self.config: SingleConfig = load_config(self._side, self._env)
        try:
            self._client = Client(config=self.config, field_manager=field_manager)
        except Exception as exc:
            # Building the client reads certificates and may run an exec credential plugin.
            raise CloudError(f"cannot set up a client for context {self.config.context_name!r}: {exc}",
                             "check the kubeconfig's certificates and credential plugin") from exc
        self._field_manager = field_manager
        self._rbac_hint = rbac_hint
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
                             self._rbac_hint) from exc
        except httpx2.HTTPError as exc:
            raise CloudError(f"cannot {what}: {self.config.cluster.server} did not answer ({exc})",
                             f"check that the cluster of context {self.config.context_name!r} is reachable") from exc

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

    # ---- KeylessApps written by the control plane ------------------------------------------------------------

    def _no_keylessapps(self) -> Conflict:
        return Conflict(f"the cluster of context {self.config.context_name!r} ({self.config.cluster.server}) does not "
                        f"serve KeylessApps ({PLURAL}.{GROUP}/{VERSION}): the keyless operator is not installed there",
                        "install it there: `keyless operator manifests | kubectl apply -f -` (with a targets file "
                        "that has this target), then try again")

    def _keylessapp_call(self, what: str, name: str, fn: Callable[[], T]) -> T | None:
        """`fn`, with None for a KeylessApp that is not there, and a Conflict for a cluster without the CRD (both
        answer 404: a missing object's Status names it, a resource the server does not serve names nothing)."""
        def call() -> T | None:
            try:
                return fn()
            except ApiError as exc:
                if exc.status.code != 404:
                    raise
                details = exc.status.details
                if details is not None and details.kind == "namespaces":
                    raise Conflict(f"namespace {details.name!r} does not exist in the cluster of context "
                                   f"{self.config.context_name!r}", "check the target's namespace") from None
                if details is not None and details.name == name and name:
                    return None
                raise self._no_keylessapps() from None

        return self._call(what, call)

    def read_keylessapp(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The KeylessApp as the API server returns it (status included), or None when there is none."""
        found = self._keylessapp_call(f"read KeylessApp {namespace}/{name}", name,
                                      lambda: self._client.get(KEYLESSAPP, name, namespace=namespace))
        return None if found is None else dict(found)  # a generic resource is the JSON object, a dict

    def apply_keylessapp(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of a KeylessApp as this client's field manager, forced: the caller has checked that the
        object is its own (its labels), so fields a person changed by hand go back to what the caller says."""
        metadata = manifest["metadata"]
        name, namespace = str(metadata["name"]), str(metadata["namespace"])
        body = KEYLESSAPP.from_dict(dict(manifest))

        def apply() -> Any:
            return self._client.apply(body, field_manager=self._field_manager, force=True)

        written = self._keylessapp_call(f"apply KeylessApp {namespace}/{name}", "", apply)
        if written is None:  # a 404 on apply names no object: the namespace is missing, or the CRD
            raise self._no_keylessapps()
        return dict(written)

    def delete_keylessapp(self, namespace: str, name: str) -> bool:
        """Delete the KeylessApp (the operator's finalizer then removes its bindings); False when it was not there."""
        def delete() -> bool:
            self._client.delete(KEYLESSAPP, name, namespace=namespace)
            return True

        return bool(self._keylessapp_call(f"delete KeylessApp {namespace}/{name}", name, delete))
