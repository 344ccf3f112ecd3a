"""kubectl against the Kubernetes stand-in: discovery without short-name warnings, OpenAPI, field validation.

The first tests send over real HTTP what kubectl sends (discovery, the OpenAPI v3 index and documents
it reads before validating, writes with ``fieldValidation``), so they run everywhere; the last ones run
the kubectl binary itself when the machine has one (Debian's and the Google Cloud SDK's package it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyless.sandbox.kube import KubeStandIn
from keyless.sandbox.kube.schema import SERVICE_ACCOUNTS

pytestmark = pytest.mark.integration

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed on this machine")


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeStandIn]:
    with KubeStandIn("kubectl-test", state_dir=tmp_path_factory.mktemp("kube")) as standin:
        standin.ensure_namespace("shop")
        yield standin
    assert standin.api.unexpected_errors == []


def _get(kube: KubeStandIn, path: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{kube.url}{path}", headers={**kube.admin_headers, **headers})


# --- discovery ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1", "/apis/apps/v1", "/apis/batch/v1"])
def test_short_names_and_categories_are_on_resources_never_on_subresources(kube: KubeStandIn, path: str) -> None:
    listing = _get(kube, path).json()
    assert listing["groupVersion"] == path.removeprefix("/api/").removeprefix("/apis/")
    subresources = [r for r in listing["resources"] if "/" in r["name"]]
    assert subresources, "the stand-in serves status and token subresources"
    for entry in subresources:
        assert "shortNames" not in entry, entry
        assert "categories" not in entry, entry
        assert entry["singularName"] == ""


def test_discovery_states_what_each_subresource_is(kube: KubeStandIn) -> None:
    resources = {r["name"]: r for r in _get(kube, "/api/v1").json()["resources"]}
    assert resources["serviceaccounts"]["shortNames"] == ["sa"]
    assert resources["namespaces"]["shortNames"] == ["ns"]
    token = resources["serviceaccounts/token"]
    assert (token["group"], token["version"], token["kind"], token["verbs"]) == (
        "authentication.k8s.io", "v1", "TokenRequest", ["create"])
    assert sorted(resources["namespaces/status"]["verbs"]) == ["get", "patch", "update"]
    assert resources["pods"]["categories"] == ["all"]


def test_an_unknown_group_version_is_not_found(kube: KubeStandIn) -> None:
    assert _get(kube, "/apis/apps/v2").status_code == 404


# --- OpenAPI ------------------------------------------------------------------------------------


def _v3(kube: KubeStandIn, group_version: str) -> dict[str, Any]:
    index = _get(kube, "/openapi/v3").json()["paths"]
    response = _get(kube, index[group_version]["serverRelativeURL"])
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "public, immutable"
    document: dict[str, Any] = response.json()
    return document


def test_the_v3_index_lists_each_served_group_version(kube: KubeStandIn) -> None:
    index = _get(kube, "/openapi/v3").json()["paths"]
    assert sorted(index) == ["api/v1", "apis/apiextensions.k8s.io/v1", "apis/apps/v1", "apis/authentication.k8s.io/v1",
                             "apis/authorization.k8s.io/v1", "apis/batch/v1", "apis/coordination.k8s.io/v1",
                             "apis/rbac.authorization.k8s.io/v1"]
    assert all(entry["serverRelativeURL"].startswith(f"/openapi/v3/{gv}?hash=") for gv, entry in index.items())
    assert _get(kube, "/openapi/v3/apis/policy/v1").status_code == 404


def _patch_operation(document: dict[str, Any], path: str) -> dict[str, Any]:
    operation: dict[str, Any] = document["paths"][path]["patch"]
    return operation


def test_each_patch_operation_offers_field_validation_and_the_patch_types(kube: KubeStandIn) -> None:
    # What kubectl checks before it leaves validation to the server, and before it computes a
    # client-side apply patch from the schema.
    document = _v3(kube, "apis/apps/v1")
    patch = _patch_operation(document, "/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
    assert patch["x-kubernetes-group-version-kind"] == {"group": "apps", "kind": "Deployment", "version": "v1"}
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    assert "application/strategic-merge-patch+json" in patch["requestBody"]["content"]
    core = _v3(kube, "api/v1")
    namespace_patch = _patch_operation(core, "/api/v1/namespaces/{name}")
    assert namespace_patch["x-kubernetes-group-version-kind"]["kind"] == "Namespace"


def test_the_schemas_carry_the_kinds_and_the_merge_keys(kube: KubeStandIn) -> None:
    schemas = _v3(kube, "apis/apps/v1")["components"]["schemas"]
    deployment = schemas["io.k8s.api.apps.v1.Deployment"]
    assert deployment["x-kubernetes-group-version-kind"] == [{"group": "apps", "kind": "Deployment", "version": "v1"}]
    containers = schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert (containers["x-kubernetes-patch-strategy"], containers["x-kubernetes-patch-merge-key"]) == ("merge", "name")
    assert schemas["io.k8s.api.core.v1.Container"]["required"] == ["name"]
    text = json.dumps(schemas)
    for ref in {part.split('"')[0] for part in text.split('"#/components/schemas/')[1:]}:
        assert ref in schemas, f"dangling $ref {ref}"


def test_v2_answers_json_and_refuses_protobuf_only(kube: KubeStandIn) -> None:
    document = _get(kube, "/openapi/v2", Accept="application/json").json()
    assert document["swagger"] == "2.0"
    assert "io.k8s.api.core.v1.ServiceAccount" in document["definitions"]
    assert "#/components/" not in json.dumps(document)
    protobuf = _get(kube, "/openapi/v2", Accept="application/com.github.proto-openapi.spec.v2@v1.0+protobuf")
    assert protobuf.status_code == 406


# --- field validation ---------------------------------------------------------------------------


def _account(name: str, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": "shop", **extra}}


def test_strict_validation_refuses_an_unknown_field(kube: KubeStandIn) -> None:
    response = httpx.post(f"{kube.url}/api/v1/namespaces/shop/serviceaccounts?fieldValidation=Strict",
                          headers=kube.admin_headers,
                          json=_account("strict", lables={"app": "web"}))
    assert response.status_code == 400
    assert response.json()["message"] == ('ServiceAccount in version "v1" cannot be handled as a ServiceAccount: '
                                          'strict decoding error: unknown field "metadata.lables"')
    assert kube.api.get_object(SERVICE_ACCOUNTS, "shop", "strict") is None


def test_warn_is_the_default_and_names_each_unknown_field(kube: KubeStandIn) -> None:
    response = httpx.post(f"{kube.url}/api/v1/namespaces/shop/serviceaccounts", headers=kube.admin_headers,
                          json={**_account("warned", lables={"app": "web"}), "secretz": []})
    assert response.status_code == 201
    assert sorted(response.headers.get_list("Warning")) == [
        '299 - "unknown field \\"metadata.lables\\""', '299 - "unknown field \\"secretz\\""']
    # Warnings belong to their own answer, never to the next one on the same route.
    quiet = httpx.post(f"{kube.url}/api/v1/namespaces/shop/serviceaccounts?fieldValidation=Ignore",
                          headers=kube.admin_headers,
                       json=_account("ignored", lables={"app": "web"}))
    assert quiet.status_code == 201
    assert "Warning" not in quiet.headers


def test_a_strategic_merge_patch_may_carry_directives_but_not_unknown_fields(kube: KubeStandIn) -> None:
    url = f"{kube.url}/api/v1/namespaces/shop/serviceaccounts"
    assert httpx.post(url, headers=kube.admin_headers, json=_account("patched")).status_code == 201
    headers = {"Content-Type": "application/strategic-merge-patch+json"}
    ok = httpx.patch(f"{url}/patched?fieldValidation=Strict", headers={**kube.admin_headers, **headers},
                     content=json.dumps({"metadata": {"labels": {"a": "b"}, "$setElementOrder/finalizers": []}}))
    assert ok.status_code == 200, ok.text
    bad = httpx.patch(f"{url}/patched?fieldValidation=Strict", headers={**kube.admin_headers, **headers},
                      content=json.dumps({"secrets": [{"name": "x", "nmae": "y"}]}))
    assert bad.status_code == 400
    assert 'unknown field "secrets[0].nmae"' in bad.json()["message"]


def test_an_unsupported_directive_is_a_bad_request(kube: KubeStandIn) -> None:
    response = httpx.post(f"{kube.url}/api/v1/namespaces/shop/serviceaccounts?fieldValidation=Loud",
                          headers=kube.admin_headers,
                          json=_account("loud"))
    assert response.status_code == 400


# --- the kubectl binary -------------------------------------------------------------------------


def _kubectl(kube: KubeStandIn, home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    kubeconfig = home / "kubeconfig"
    if not kubeconfig.exists():
        kube.write_kubeconfig(kubeconfig)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "KUBECONFIG": str(kubeconfig)}
    return subprocess.run([KUBECTL, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60,
                          check=False)


DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: nginx:1.27
          env: [{name: GREETING, value: hello}]
          resources: {limits: {cpu: 1, memory: 128Mi}}
"""


@needs_kubectl
@pytest.mark.parametrize("short_name", ["sa", "ns"])
def test_kubectl_get_by_short_name_prints_no_warning(kube: KubeStandIn, tmp_path: Path, short_name: str) -> None:
    result = _kubectl(kube, tmp_path, "get", short_name, "-A")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@needs_kubectl
def test_kubectl_apply_validates_and_patches(kube: KubeStandIn, tmp_path: Path) -> None:
    created = _kubectl(kube, tmp_path, "apply", "-f", "-", stdin=DEPLOYMENT)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "deployment.apps/web created"
    # A second apply with one value changed: kubectl computes its patch from the served schema.
    changed = _kubectl(kube, tmp_path, "apply", "-f", "-", stdin=DEPLOYMENT.replace("hello", "bonjour"))
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.strip() == "deployment.apps/web configured"
    assert changed.stderr == ""
    env = _kubectl(kube, tmp_path, "get", "deploy", "web", "-n", "shop",
                   "-o", "jsonpath={.spec.template.spec.containers[0].env}")
    assert json.loads(env.stdout) == [{"name": "GREETING", "value": "bonjour"}]


@needs_kubectl
def test_kubectl_apply_refuses_a_misspelled_field(kube: KubeStandIn, tmp_path: Path) -> None:
    misspelled = DEPLOYMENT.replace("name: web\n  namespace", "nmae: web2\n  name: web2\n  namespace")
    result = _kubectl(kube, tmp_path, "apply", "-f", "-", stdin=misspelled)
    assert result.returncode == 1
    assert 'strict decoding error: unknown field "metadata.nmae"' in result.stderr


@needs_kubectl
def test_kubectl_explain_reads_the_served_schema(kube: KubeStandIn, tmp_path: Path) -> None:
    result = _kubectl(kube, tmp_path, "explain", "serviceaccount.automountServiceAccountToken")
    assert result.returncode == 0, result.stderr
    assert "FIELD: automountServiceAccountToken <boolean>" in result.stdout
