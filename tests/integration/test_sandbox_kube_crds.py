"""CustomResourceDefinitions on the Kubernetes stand-in, driven by lightkube's generic resources, kubectl and httpx.

What a CRD serves (discovery, OpenAPI, tables, RBAC), what the API server does to custom objects (defaults,
pruning, validation with field paths, generation, the status subresource), deleting a CRD, and the watch
semantics operators rely on (bookmarks, 410 Gone, sendInitialEvents, list resourceVersionMatch).
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
from lightkube import ApiError, Client, codecs
from lightkube.config.kubeconfig import KubeConfig
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.core_v1 import Namespace
from lightkube.types import PatchType

from keyless.sandbox.kube import KubeStandIn
from keyless.sandbox.kube.api import KubeApiServer
from keyless.sandbox.kube.schema import Kind

pytestmark = pytest.mark.integration

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed on this machine")

GROUP, VERSION, PLURAL, KIND = "keyless.dev", "v1alpha1", "keylessapps", "KeylessApp"
KeylessApp = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)


def keyless_app_crd(plural: str = PLURAL, kind: str = KIND, name: str | None = None) -> dict[str, Any]:
    """The CRD the operator will serve (``keylessapps.keyless.dev``), with its schema, columns and status."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": name or f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP, "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "shortNames": ["kapp"],
                      "categories": ["keyless"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Target", "type": "string", "jsonPath": ".spec.target"},
                    {"name": "Suspended", "type": "boolean", "jsonPath": ".spec.suspend"},
                    {"name": "Ready", "type": "string",
                     "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                    {"name": "Interval", "type": "string", "jsonPath": ".spec.refreshInterval", "priority": 1},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object", "required": ["target"],
                            "properties": {
                                "target": {"type": "string", "minLength": 1},
                                "app": {"type": "string"},
                                "porterYaml": {"type": "string"},
                                "porterYamlFrom": {"type": "object", "properties": {"configMapKeyRef": {
                                    "type": "object", "required": ["name", "key"],
                                    "properties": {"name": {"type": "string"}, "key": {"type": "string"}}}}},
                                "refreshInterval": {"type": "string", "default": "10m"},
                                "suspend": {"type": "boolean", "default": False},
                                "mode": {"type": "string", "enum": ["apply", "plan"], "default": "apply"},
                                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            },
                        },
                        "status": {
                            "type": "object",
                            "properties": {
                                "observedGeneration": {"type": "integer"},
                                "conditions": {"type": "array", "items": {
                                    "type": "object", "required": ["type", "status"],
                                    "properties": {"type": {"type": "string"}, "status": {"type": "string"},
                                                   "reason": {"type": "string"}, "message": {"type": "string"}}}},
                                "bindings": {"type": "array", "items": {"type": "string"}},
                                "lastAppliedPlan": {"type": "string"},
                            },
                        },
                    },
                }},
            }],
        },
    }


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeStandIn]:
    with KubeStandIn("crd-test", state_dir=tmp_path_factory.mktemp("kube")) as standin:
        yield standin
    assert standin.api.unexpected_errors == []


@pytest.fixture(scope="module")
def client(kube: KubeStandIn, tmp_path_factory: pytest.TempPathFactory) -> Client:
    kubeconfig = kube.write_kubeconfig(tmp_path_factory.mktemp("kubeconfig") / "config", "sandbox-crd")
    return Client(config=KubeConfig.from_file(kubeconfig), field_manager="crd-test")


@pytest.fixture(scope="module")
def crd(client: Client) -> str:
    client.create(codecs.from_dict(keyless_app_crd()))
    return f"{PLURAL}.{GROUP}"


def _namespace(client: Client, name: str) -> str:
    client.create(Namespace(metadata=ObjectMeta(name=name)))
    return name


def _app(name: str, namespace: str, **spec: Any) -> Any:
    return KeylessApp(metadata=ObjectMeta(name=name, namespace=namespace), spec={"target": "eks-prod", **spec})


def _listed_version(client: Client, namespace: str) -> str:
    """The resourceVersion of a list, as an operator lists before it watches."""
    listing = client.list(KeylessApp, namespace=namespace)
    list(listing)  # lightkube knows the version once it has read the list
    return str(listing.resourceVersion)


def _http(kube: KubeStandIn) -> httpx.Client:
    return httpx.Client(base_url=kube.url, headers=kube.admin_headers, timeout=30.0)


# --- the definition ---------------------------------------------------------------------------


def test_a_crd_is_established_and_its_version_discovered(client: Client, kube: KubeStandIn, crd: str) -> None:
    stored = client.get(CustomResourceDefinition, crd)
    assert stored.status is not None
    conditions = {c.type: c.status for c in stored.status.conditions or []}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    assert stored.status.acceptedNames.listKind == "KeylessAppList"
    assert stored.status.storedVersions == [VERSION]
    with _http(kube) as http:
        groups = {g["name"]: g for g in http.get("/apis").json()["groups"]}
        assert groups[GROUP]["preferredVersion"] == {"groupVersion": f"{GROUP}/{VERSION}", "version": VERSION}
        assert http.get(f"/apis/{GROUP}").json()["versions"] == [{"groupVersion": f"{GROUP}/{VERSION}",
                                                                  "version": VERSION}]
        resources = {r["name"]: r for r in http.get(f"/apis/{GROUP}/{VERSION}").json()["resources"]}
    assert resources[PLURAL]["namespaced"] is True
    assert resources[PLURAL]["shortNames"] == ["kapp"]
    assert resources[PLURAL]["categories"] == ["keyless"]
    assert "watch" in resources[PLURAL]["verbs"]
    assert sorted(resources[f"{PLURAL}/status"]["verbs"]) == ["get", "patch", "update"]


def test_a_second_crd_of_the_same_name_is_a_conflict(client: Client, crd: str) -> None:
    with pytest.raises(ApiError) as error:
        client.create(codecs.from_dict(keyless_app_crd()))
    assert error.value.status.code == 409
    assert error.value.status.reason == "AlreadyExists"


def test_a_crd_named_otherwise_than_plural_dot_group_is_invalid(client: Client) -> None:
    with pytest.raises(ApiError) as error:
        client.create(codecs.from_dict(keyless_app_crd(plural="others", kind="Other", name="other.keyless.dev")))
    assert error.value.status.code == 422
    assert error.value.status.reason == "Invalid"
    assert 'metadata.name: Invalid value: "other.keyless.dev": must be spec.names.plural+"."+spec.group' in (
        error.value.status.message or "")


# --- custom objects -----------------------------------------------------------------------------


def test_defaults_are_applied_and_unknown_fields_pruned(client: Client, crd: str) -> None:
    namespace = _namespace(client, "defaults")
    created = client.create(KeylessApp(metadata=ObjectMeta(name="web", namespace=namespace),
                                       spec={"target": "eks-prod", "surprise": 1, "extra": {"kept": True}}))
    assert created.spec == {"target": "eks-prod", "refreshInterval": "10m", "suspend": False, "mode": "apply",
                            "extra": {"kept": True}}
    assert created.metadata.generation == 1


def test_a_bad_object_is_refused_with_the_field_paths(client: Client, crd: str) -> None:
    namespace = _namespace(client, "invalid")
    bad = KeylessApp(metadata=ObjectMeta(name="bad", namespace=namespace),
                     spec={"suspend": "yes", "mode": "destroy", "porterYamlFrom": {"configMapKeyRef": {"name": "c"}}})
    with pytest.raises(ApiError) as error:
        client.create(bad)
    status = error.value.status
    assert status.code == 422
    assert status.reason == "Invalid"
    assert {c.field: c.reason for c in status.details.causes} == {
        "spec.target": "FieldValueRequired",
        "spec.suspend": "FieldValueTypeInvalid",
        "spec.mode": "FieldValueNotSupported",
        "spec.porterYamlFrom.configMapKeyRef.key": "FieldValueRequired",
    }
    assert (status.message or "").startswith('KeylessApp.keyless.dev "bad" is invalid: [')
    assert 'spec.suspend: Invalid value: "string": spec.suspend in body must be of type boolean: "string"' in (
        status.message or "")
    assert 'spec.mode: Unsupported value: "destroy": supported values: "apply", "plan"' in (status.message or "")


def test_generation_counts_spec_changes_only(client: Client, crd: str) -> None:
    namespace = _namespace(client, "generation")
    client.create(_app("web", namespace))
    labelled = client.patch(KeylessApp, "web", {"metadata": {"labels": {"team": "a"}}}, namespace=namespace,
                            patch_type=PatchType.MERGE)
    assert labelled.metadata.generation == 1
    changed = client.patch(KeylessApp, "web", {"spec": {"suspend": True}}, namespace=namespace,
                           patch_type=PatchType.MERGE)
    assert changed.metadata.generation == 2
    status = client.patch(KeylessApp.Status, "web", {"status": {"observedGeneration": 2}}, namespace=namespace,
                          patch_type=PatchType.MERGE)
    assert status.metadata.generation == 2


def test_the_status_subresource_splits_what_each_endpoint_may_change(client: Client, crd: str) -> None:
    namespace = _namespace(client, "status-rules")
    created = client.create(KeylessApp(metadata=ObjectMeta(name="web", namespace=namespace),
                                       spec={"target": "eks-prod"}, status={"lastAppliedPlan": "ignored"}))
    assert created.status is None  # create ignores status when it is a subresource
    main = client.patch(KeylessApp, "web", {"spec": {"app": "shop"}, "status": {"lastAppliedPlan": "x"}},
                        namespace=namespace, patch_type=PatchType.MERGE)
    assert main.spec["app"] == "shop"
    assert main.status is None
    on_status = client.patch(KeylessApp.Status, "web",
                             {"spec": {"app": "changed"}, "status": {"lastAppliedPlan": "p1", "unknown": 1}},
                             namespace=namespace, patch_type=PatchType.MERGE)
    assert on_status.spec["app"] == "shop"
    assert on_status.status == {"lastAppliedPlan": "p1"}  # pruned like any field the schema does not know
    with pytest.raises(ApiError) as error:
        client.patch(KeylessApp.Status, "web", {"status": {"observedGeneration": "two"}}, namespace=namespace,
                     patch_type=PatchType.MERGE)
    assert error.value.status.code == 422
    assert [c.field for c in error.value.status.details.causes] == ["status.observedGeneration"]


def test_custom_objects_take_merge_json_and_apply_patches_but_no_strategic_one(
        client: Client, kube: KubeStandIn, crd: str) -> None:
    namespace = _namespace(client, "patches")
    client.create(_app("web", namespace))
    applied = client.apply(KeylessApp(metadata=ObjectMeta(name="web", namespace=namespace),
                                      spec={"target": "aks-prod"}), field_manager="other", force=True)
    assert applied.spec["target"] == "aks-prod"
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/web"
    with _http(kube) as http:
        strategic = http.patch(path, headers={"Content-Type": "application/strategic-merge-patch+json"},
                               content=b'{"spec": {"app": "x"}}')
        json_patch = http.patch(path, headers={"Content-Type": "application/json-patch+json"},
                                content=json.dumps([{"op": "add", "path": "/metadata/finalizers",
                                                     "value": ["keyless.dev/cleanup"]}]).encode())
    assert strategic.status_code == 415
    assert "application/merge-patch+json" in strategic.json()["message"]
    assert json_patch.status_code == 200
    assert json_patch.json()["metadata"]["finalizers"] == ["keyless.dev/cleanup"]
    client.delete(KeylessApp, "web", namespace=namespace)
    marked = client.get(KeylessApp, "web", namespace=namespace)
    assert marked.metadata.deletionTimestamp is not None
    assert marked.metadata.generation == 3  # the first graceful deletion bumps it (rest.BeforeDelete)
    client.patch(KeylessApp, "web", {"metadata": {"finalizers": None}}, namespace=namespace,
                 patch_type=PatchType.MERGE)
    with pytest.raises(ApiError) as gone:
        client.get(KeylessApp, "web", namespace=namespace)
    assert gone.value.status.code == 404


def test_rbac_authorizes_custom_resources_like_any_other(client: Client, kube: KubeStandIn, crd: str) -> None:
    namespace = _namespace(client, "rbac-custom")
    client.create(_app("web", namespace))
    token = kube.keyless_identity([namespace], rules=[
        {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list"]}])
    with httpx.Client(base_url=kube.url, headers={"Authorization": f"Bearer {token}"}) as http:
        listed = http.get(f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}")
        status = http.patch(f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/web/status",
                            headers={"Content-Type": "application/merge-patch+json"}, content=b"{}")
    assert listed.status_code == 200
    assert [i["metadata"]["name"] for i in listed.json()["items"]] == ["web"]
    assert status.status_code == 403
    assert status.json()["message"] == (
        f'{PLURAL}.{GROUP} "web" is forbidden: User "system:serviceaccount:keyless-system:keyless" cannot patch '
        f'resource "{PLURAL}/status" in API group "{GROUP}" in the namespace "{namespace}"')


def test_openapi_v3_carries_the_crd_schema(kube: KubeStandIn, crd: str) -> None:
    with _http(kube) as http:
        entry = http.get("/openapi/v3").json()["paths"][f"apis/{GROUP}/{VERSION}"]
        document = http.get(entry["serverRelativeURL"]).json()
    schema = document["components"]["schemas"]["dev.keyless.v1alpha1.KeylessApp"]
    assert schema["x-kubernetes-group-version-kind"] == [{"group": GROUP, "kind": KIND, "version": VERSION}]
    assert schema["properties"]["spec"]["required"] == ["target"]
    assert schema["properties"]["metadata"] == {
        "$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    patch = document["paths"][f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{PLURAL}/{{name}}"]["patch"]
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    assert "application/strategic-merge-patch+json" not in patch["requestBody"]["content"]


def test_tables_print_the_additional_printer_columns(client: Client, kube: KubeStandIn, crd: str) -> None:
    namespace = _namespace(client, "tables")
    client.create(_app("web", namespace))
    client.patch(KeylessApp.Status, "web", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                 namespace=namespace, patch_type=PatchType.MERGE)
    with _http(kube) as http:
        table = http.get(f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
                         headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}).json()
    assert [(c["name"], c["type"], c["priority"]) for c in table["columnDefinitions"]] == [
        ("Name", "string", 0), ("Target", "string", 0), ("Suspended", "boolean", 0), ("Ready", "string", 0),
        ("Interval", "string", 1), ("Age", "date", 0)]
    cells = table["rows"][0]["cells"]
    assert cells[:5] == ["web", "eks-prod", False, "True", "10m"]
    assert cells[5].endswith("s")  # an age, as HumanDuration writes it


# --- deleting a CRD -----------------------------------------------------------------------------


def test_deleting_a_crd_deletes_its_objects_after_their_finalizers(client: Client, kube: KubeStandIn) -> None:
    plural = "doomedapps"
    Doomed = create_namespaced_resource(GROUP, VERSION, "DoomedApp", plural)
    client.create(codecs.from_dict(keyless_app_crd(plural=plural, kind="DoomedApp")))
    namespace = _namespace(client, "cascade")
    client.create(Doomed(metadata=ObjectMeta(name="plain", namespace=namespace), spec={"target": "t"}))
    client.create(Doomed(metadata=ObjectMeta(name="held", namespace=namespace, finalizers=["keyless.dev/hold"]),
                         spec={"target": "t"}))
    client.delete(CustomResourceDefinition, f"{plural}.{GROUP}")
    terminating = client.get(CustomResourceDefinition, f"{plural}.{GROUP}")
    assert terminating.metadata.deletionTimestamp is not None
    assert "Terminating" in {c.type for c in terminating.status.conditions or []}
    assert [o.metadata.name for o in client.list(Doomed, namespace=namespace)] == ["held"]
    with pytest.raises(ApiError) as refused:
        client.create(Doomed(metadata=ObjectMeta(name="late", namespace=namespace), spec={"target": "t"}))
    assert refused.value.status.code == 405
    client.patch(Doomed, "held", {"metadata": {"finalizers": None}}, namespace=namespace,
                 patch_type=PatchType.MERGE)
    with pytest.raises(ApiError) as gone:
        client.get(CustomResourceDefinition, f"{plural}.{GROUP}")
    assert gone.value.status.code == 404
    with _http(kube) as http:
        assert plural not in {r["name"] for r in http.get(f"/apis/{GROUP}/{VERSION}").json()["resources"]}
        assert http.get(f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}").status_code == 404


# --- watches and lists --------------------------------------------------------------------------


def _watch(kube: KubeStandIn, path: str, count: int, **params: str) -> list[dict[str, Any]]:
    """The first ``count`` events of a watch (or fewer, if the server ends it)."""
    events: list[dict[str, Any]] = []
    with _http(kube) as http, http.stream("GET", path, params={"watch": "true", **params}) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line:
                events.append(json.loads(line))
            if len(events) >= count:
                break
    return events


def test_bookmarks_carry_only_the_resource_version(client: Client, kube: KubeStandIn, crd: str) -> None:
    namespace = _namespace(client, "bookmarks")
    created = client.create(_app("web", namespace))
    kube.api.bookmark_seconds = 0.2
    try:
        events = _watch(kube, f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}", 1,
                        allowWatchBookmarks="true", resourceVersion=created.metadata.resourceVersion)
    finally:
        kube.api.bookmark_seconds = 60.0
    assert events[0]["type"] == "BOOKMARK"
    assert set(events[0]["object"]) == {"apiVersion", "kind", "metadata"}
    assert (events[0]["object"]["apiVersion"], events[0]["object"]["kind"]) == (f"{GROUP}/{VERSION}", KIND)
    assert list(events[0]["object"]["metadata"]) == ["resourceVersion"]
    assert int(events[0]["object"]["metadata"]["resourceVersion"]) >= int(created.metadata.resourceVersion)


def test_no_bookmark_unless_asked_and_timeout_seconds_ends_the_watch(client: Client, kube: KubeStandIn,
                                                                     crd: str) -> None:
    namespace = _namespace(client, "no-bookmarks")
    created = client.create(_app("web", namespace))
    kube.api.bookmark_seconds = 0.1
    try:
        events = _watch(kube, f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}", 10,
                        resourceVersion=created.metadata.resourceVersion, timeoutSeconds="1")
    finally:
        kube.api.bookmark_seconds = 60.0
    assert events == []


def test_send_initial_events_ends_with_a_marked_bookmark(client: Client, kube: KubeStandIn, crd: str) -> None:
    namespace = _namespace(client, "initial-events")
    client.create(_app("a", namespace))
    client.create(_app("b", namespace))
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    events = _watch(kube, path, 3, sendInitialEvents="true", resourceVersionMatch="NotOlderThan",
                    allowWatchBookmarks="true")
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in events] == [
        ("ADDED", "a"), ("ADDED", "b"), ("BOOKMARK", None)]
    assert events[2]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    with _http(kube) as http:
        refused = http.get(path, params={"watch": "true", "sendInitialEvents": "true"})
    assert refused.status_code == 422
    assert refused.json()["message"] == (
        'ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: sendInitialEvents requires setting '
        "resourceVersionMatch to NotOlderThan")


def test_a_watch_resumes_from_a_resource_version_and_an_expired_one_is_410_gone(
        client: Client, kube: KubeStandIn, crd: str) -> None:
    namespace = _namespace(client, "expiry")
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    start = _listed_version(client, namespace)
    client.create(_app("web", namespace))
    resumed = _watch(kube, path, 1, resourceVersion=start)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in resumed] == [("ADDED", "web")]
    kube.api.watch_window = 3
    try:
        for index in range(5):
            client.patch(KeylessApp, "web", {"spec": {"app": f"app-{index}"}}, namespace=namespace,
                         patch_type=PatchType.MERGE)
        expired = _watch(kube, path, 2, resourceVersion=start)
        with _http(kube) as http:
            exact = http.get(path, params={"resourceVersion": start, "resourceVersionMatch": "Exact"})
    finally:
        kube.api.watch_window = 1000
    assert len(expired) == 1  # the server ends the watch after the error
    assert expired[0]["type"] == "ERROR"
    assert (expired[0]["object"]["code"], expired[0]["object"]["reason"]) == (410, "Expired")
    assert expired[0]["object"]["message"].startswith(f"too old resource version: {start} (")
    assert exact.status_code == 410
    assert exact.json()["reason"] == "Expired"


def test_an_exact_list_shows_the_objects_as_they_were(client: Client, kube: KubeStandIn, crd: str) -> None:
    namespace = _namespace(client, "exact")
    client.create(_app("a", namespace))
    before = _listed_version(client, namespace)
    client.patch(KeylessApp, "a", {"spec": {"app": "changed"}}, namespace=namespace, patch_type=PatchType.MERGE)
    client.create(_app("b", namespace))
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    with _http(kube) as http:
        exact = http.get(path, params={"resourceVersion": before, "resourceVersionMatch": "Exact"}).json()
        newest = http.get(path, params={"resourceVersion": before, "resourceVersionMatch": "NotOlderThan"}).json()
        forbidden = http.get(path, params={"resourceVersionMatch": "Exact"})
    assert exact["metadata"]["resourceVersion"] == before
    assert [(i["metadata"]["name"], i["spec"].get("app")) for i in exact["items"]] == [("a", None)]
    assert [(i["metadata"]["name"], i["spec"].get("app")) for i in newest["items"]] == [("a", "changed"), ("b", None)]
    assert forbidden.status_code == 422
    assert "resourceVersionMatch is forbidden unless resourceVersion is provided" in forbidden.json()["message"]


def test_a_change_does_not_walk_the_other_objects(client: Client, kube: KubeStandIn, crd: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # 500 KeylessApps will be watched: a change must cost its own watchers, not a pass over every object.
    namespace = _namespace(client, "many")
    for index in range(200):
        client.create(_app(f"app-{index:03d}", namespace))
    walks: list[str] = []
    listing = KubeApiServer.list_objects

    def counted(api: KubeApiServer, kind: Kind, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        walks.append(kind.plural)
        return listing(api, kind, *args, **kwargs)
    monkeypatch.setattr(KubeApiServer, "list_objects", counted)  # the stand-in's own method, counted
    for index in range(20):
        client.patch(KeylessApp.Status, f"app-{index:03d}", {"status": {"observedGeneration": index}},
                     namespace=namespace, patch_type=PatchType.MERGE)
    kube.wait_idle()
    assert walks == []


# --- events as operators post them ----------------------------------------------------------------


def test_an_event_in_another_namespace_than_its_object_is_invalid(client: Client, kube: KubeStandIn) -> None:
    namespace = _namespace(client, "events")
    with _http(kube) as http:
        refused = http.post(f"/api/v1/namespaces/{namespace}/events", json={
            "metadata": {"generateName": "op-"}, "reason": "Logging", "message": "m", "type": "Normal",
            "involvedObject": {"kind": "KeylessApp", "namespace": "elsewhere", "name": "web"}})
    assert refused.status_code == 422
    assert refused.json()["details"]["causes"][0]["field"] == "involvedObject.namespace"


# --- kubectl ----------------------------------------------------------------------------------------


def _kubectl(kube: KubeStandIn, home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    kubeconfig = home / "kubeconfig"
    if not kubeconfig.exists():
        kube.write_kubeconfig(kubeconfig)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "KUBECONFIG": str(kubeconfig)}
    return subprocess.run([KUBECTL, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60,
                          check=False)


APP = """\
apiVersion: keyless.dev/v1alpha1
kind: KeylessApp
metadata:
  name: shop
  namespace: kubectl-apply
spec:
  target: eks-prod
  app: shop
  porterYamlFrom:
    configMapKeyRef: {name: shop-porter, key: porter.yaml}
"""


@needs_kubectl
def test_kubectl_applies_gets_and_refuses_custom_objects(client: Client, kube: KubeStandIn, crd: str,
                                                         tmp_path: Path) -> None:
    _namespace(client, "kubectl-apply")
    created = _kubectl(kube, tmp_path, "apply", "-f", "-", stdin=APP)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "keylessapp.keyless.dev/shop created"
    changed = _kubectl(kube, tmp_path, "apply", "-f", "-", stdin=APP.replace("app: shop", "app: shop-v2"))
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.strip() == "keylessapp.keyless.dev/shop configured"
    assert client.get(KeylessApp, "shop", namespace="kubectl-apply").metadata.generation == 2

    table = _kubectl(kube, tmp_path, "get", "kapp", "-n", "kubectl-apply")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["NAME", "TARGET", "SUSPENDED", "READY", "AGE"]
    assert row.split()[:3] == ["shop", "eks-prod", "false"]
    assert len(row.split()) == 4  # READY has no value yet: kubectl leaves the cell empty
    wide = _kubectl(kube, tmp_path, "get", "keylessapps", "-n", "kubectl-apply", "-o", "wide")
    assert wide.stdout.splitlines()[0].split() == ["NAME", "TARGET", "SUSPENDED", "READY", "INTERVAL", "AGE"]

    misspelled = _kubectl(kube, tmp_path, "apply", "-f", "-", stdin=APP.replace("  app: shop", "  ap: shop"))
    assert misspelled.returncode == 1
    assert 'strict decoding error: unknown field "spec.ap"' in misspelled.stderr
    wrong = _kubectl(kube, tmp_path, "apply", "-f", "-",
                     stdin=APP.replace("name: shop\n", "name: broken\n").replace("target: eks-prod", "target: 7"))
    assert wrong.returncode == 1
    assert ('The KeylessApp "broken" is invalid: spec.target: Invalid value: "integer": spec.target in body must '
            'be of type string: "integer"') in wrong.stderr
