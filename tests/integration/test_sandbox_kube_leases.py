"""The Kubernetes stand-in's Leases (coordination.k8s.io/v1), over real HTTP, as the real API server serves them:
discovery, optimistic concurrency on resourceVersion, validation, and what keyless's role may do with them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from keyless.sandbox.kube import KubeStandIn

pytestmark = pytest.mark.integration

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeStandIn]:
    with KubeStandIn("lease-test") as standin:
        standin.ensure_namespace("shop")
        standin.ensure_namespace("other")
        yield standin
    assert standin.api.unexpected_errors == []


@pytest.fixture(scope="module")
def keyless_token(kube: KubeStandIn) -> str:
    return kube.keyless_identity(["shop"])


def call(kube: KubeStandIn, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {**kwargs.pop("headers", {}), "Authorization": f"Bearer {token or kube.admin_token}"}
    return httpx.request(method, f"{kube.url}{path}", headers=headers, timeout=10, **kwargs)


def lease(name: str, holder: str = "alice@laptop/1", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 30,
                     "renewTime": "2025-01-02T03:04:05.123456Z", **spec}}


def test_discovery_lists_leases(kube: KubeStandIn) -> None:
    groups = {g["name"]: g for g in call(kube, "GET", "/apis").json()["groups"]}
    assert groups["coordination.k8s.io"]["preferredVersion"]["groupVersion"] == "coordination.k8s.io/v1"
    resources = call(kube, "GET", "/apis/coordination.k8s.io/v1").json()["resources"]
    assert [(r["name"], r["kind"], r["namespaced"]) for r in resources] == [("leases", "Lease", True)]
    assert set(resources[0]["verbs"]) >= {"get", "list", "watch", "create", "update", "patch", "delete"}


def test_an_update_with_a_stale_resource_version_is_a_conflict(kube: KubeStandIn) -> None:
    base = LEASES.format(namespace="shop")
    created = call(kube, "POST", base, json=lease("stale"))
    assert created.status_code == 201
    first = created.json()
    taken = call(kube, "PUT", f"{base}/stale", json={**first, "spec": {**first["spec"], "holderIdentity": "bob"}})
    assert taken.status_code == 200
    assert taken.json()["metadata"]["resourceVersion"] != first["metadata"]["resourceVersion"]
    # A second writer that read the Lease before bob took it: refused, as the API server refuses it.
    late = call(kube, "PUT", f"{base}/stale", json={**first, "spec": {**first["spec"], "holderIdentity": "carol"}})
    assert late.status_code == 409
    assert late.json()["reason"] == "Conflict"
    assert call(kube, "GET", f"{base}/stale").json()["spec"]["holderIdentity"] == "bob"
    assert call(kube, "POST", base, json=lease("stale")).json()["reason"] == "AlreadyExists"


def test_leases_are_listed_patched_and_deleted(kube: KubeStandIn) -> None:
    base = LEASES.format(namespace="shop")
    assert call(kube, "POST", base, json=lease("listed")).status_code == 201
    assert "listed" in [i["metadata"]["name"] for i in call(kube, "GET", base).json()["items"]]
    patched = call(kube, "PATCH", f"{base}/listed", headers={"Content-Type": "application/merge-patch+json"},
                   json={"spec": {"holderIdentity": None}})
    assert patched.status_code == 200
    assert "holderIdentity" not in patched.json()["spec"]
    assert call(kube, "DELETE", f"{base}/listed").status_code == 200
    assert call(kube, "GET", f"{base}/listed").status_code == 404


def test_the_lease_spec_is_validated(kube: KubeStandIn) -> None:
    base = LEASES.format(namespace="shop")
    refused = call(kube, "POST", base, json=lease("invalid", leaseDurationSeconds=0, leaseTransitions=-1))
    assert refused.status_code == 422
    assert [c["field"] for c in refused.json()["details"]["causes"]] == ["spec.leaseDurationSeconds",
                                                                         "spec.leaseTransitions"]
    unknown = call(kube, "POST", f"{base}?fieldValidation=Strict", json=lease("unknown", holder_identity="x"))
    assert unknown.status_code == 400


def test_keyless_may_get_create_and_update_leases_in_its_namespaces_only(kube: KubeStandIn,
                                                                          keyless_token: str) -> None:
    base = LEASES.format(namespace="shop")
    created = call(kube, "POST", base, keyless_token, json=lease("keyless-lock"))
    assert created.status_code == 201
    read = call(kube, "GET", f"{base}/keyless-lock", keyless_token)
    assert read.status_code == 200
    assert call(kube, "PUT", f"{base}/keyless-lock", keyless_token, json=read.json()).status_code == 200
    # Only what the lock uses: no list, patch or delete, and nothing outside the namespaces keyless deploys to.
    assert call(kube, "GET", base, keyless_token).status_code == 403
    assert call(kube, "DELETE", f"{base}/keyless-lock", keyless_token).status_code == 403
    elsewhere = call(kube, "POST", LEASES.format(namespace="other"), keyless_token, json=lease("keyless-lock"))
    assert elsewhere.status_code == 403
    assert elsewhere.json()["message"].startswith(
        'leases.coordination.k8s.io is forbidden: User "system:serviceaccount:keyless-system:keyless" cannot '
        'create resource "leases" in API group "coordination.k8s.io" in the namespace "other"')
