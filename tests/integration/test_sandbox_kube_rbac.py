"""The Kubernetes stand-in's authentication, RBAC, reviews, scale subresource and Table output, over real HTTP.

Each expectation is the real API server's: the 401 and 403 bodies word for word (the authorization filter's
``User "x" cannot <verb> resource "<resource>" in API group "<group>" in the namespace "<ns>"``), RBAC's
rule matching (subresources, ``*/status``, resourceNames, non-resource URLs) and its bootstrap policy.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ruamel.yaml import YAML

from keyless.sandbox.kube import KubeStandIn
from keyless.sandbox.kube.rbac import KEYLESS_RULES

pytestmark = pytest.mark.integration

RBAC = "/apis/rbac.authorization.k8s.io/v1"
KEYLESS_USER = "system:serviceaccount:keyless-system:keyless"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeStandIn]:
    with KubeStandIn("rbac-test", state_dir=tmp_path_factory.mktemp("kube")) as standin:
        standin.ensure_namespace("shop")
        standin.ensure_namespace("other")
        yield standin
    assert standin.api.unexpected_errors == []


@pytest.fixture(scope="module")
def keyless_token(kube: KubeStandIn) -> str:
    return kube.keyless_identity(["shop"])


def call(kube: KubeStandIn, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.request(method, f"{kube.url}{path}", headers=headers, timeout=10, **kwargs)


def admin(kube: KubeStandIn, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return call(kube, method, path, kube.admin_token, **kwargs)


def account(name: str, namespace: str = "shop") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}


# --- authentication ---------------------------------------------------------------------------------


def test_anonymous_requests_see_only_public_information(kube: KubeStandIn) -> None:
    assert call(kube, "GET", "/healthz").status_code == 200
    assert call(kube, "GET", "/version").status_code == 200
    assert call(kube, "GET", "/.well-known/openid-configuration").json()["issuer"] == kube.issuer_url
    assert call(kube, "GET", "/openid/v1/jwks").json() == kube.jwks()
    discovery = call(kube, "GET", "/api")
    assert discovery.status_code == 403
    assert discovery.json() == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": 'forbidden: User "system:anonymous" cannot get path "/api"',
                                "reason": "Forbidden", "code": 403}
    listed = call(kube, "GET", "/api/v1/namespaces/shop/serviceaccounts")
    assert listed.json()["message"] == ('serviceaccounts is forbidden: User "system:anonymous" cannot list resource '
                                        '"serviceaccounts" in API group "" in the namespace "shop"')


def test_a_token_the_cluster_did_not_issue_is_unauthorized(kube: KubeStandIn) -> None:
    for token in ("not-a-token", kube.mint_token("shop", "default", "sts.amazonaws.com")):
        answer = call(kube, "GET", "/api", token)
        assert answer.status_code == 401
        assert answer.json()["reason"] == "Unauthorized"
        assert answer.json()["message"] == "Unauthorized"


def test_a_deleted_accounts_tokens_stop_working(kube: KubeStandIn) -> None:
    assert admin(kube, "POST", "/api/v1/namespaces/shop/serviceaccounts", json=account("short-lived")).status_code \
        == 201
    token = kube.mint_token("shop", "short-lived")
    who = call(kube, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", token,
               json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).json()
    assert who["status"]["userInfo"]["username"] == "system:serviceaccount:shop:short-lived"
    assert who["status"]["userInfo"]["groups"] == ["system:serviceaccounts", "system:serviceaccounts:shop",
                                                   "system:authenticated"]
    assert admin(kube, "DELETE", "/api/v1/namespaces/shop/serviceaccounts/short-lived").status_code == 200
    assert call(kube, "GET", "/api", token).status_code == 401


# --- RBAC -------------------------------------------------------------------------------------------


def test_keyless_may_do_what_the_readme_grants_in_its_namespace_only(kube: KubeStandIn, keyless_token: str) -> None:
    assert admin(kube, "POST", "/api/v1/namespaces/shop/serviceaccounts", json=account("web")).status_code == 201
    assert admin(kube, "POST", "/api/v1/namespaces/other/serviceaccounts",
                 json=account("web", "other")).status_code == 201
    assert call(kube, "GET", "/api", keyless_token).status_code == 200  # discovery: every authenticated user
    assert call(kube, "GET", "/api/v1/namespaces/shop/serviceaccounts", keyless_token).status_code == 200
    token = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"audiences": ["x"]}}
    assert call(kube, "POST", "/api/v1/namespaces/shop/serviceaccounts/web/token", keyless_token,
                json=token).status_code == 201
    refused = call(kube, "POST", "/api/v1/namespaces/other/serviceaccounts/web/token", keyless_token, json=token)
    assert refused.status_code == 403
    assert refused.json()["message"] == (
        f'serviceaccounts "web" is forbidden: User "{KEYLESS_USER}" cannot create resource "serviceaccounts/token" '
        'in API group "" in the namespace "other"')
    assert refused.json()["details"] == {"name": "web", "kind": "serviceaccounts"}
    pods = call(kube, "GET", "/api/v1/namespaces/shop/pods", keyless_token)
    assert pods.status_code == 403  # keyless never reads pods
    scale = call(kube, "GET", "/apis/apps/v1/namespaces/shop/deployments/web/scale", keyless_token)
    assert scale.json()["message"] == (
        f'deployments.apps "web" is forbidden: User "{KEYLESS_USER}" cannot get resource "deployments/scale" in API '
        'group "apps" in the namespace "shop"')
    cluster_wide = call(kube, "GET", "/api/v1/namespaces", keyless_token)
    assert cluster_wide.json()["message"] == (
        f'namespaces is forbidden: User "{KEYLESS_USER}" cannot list resource "namespaces" in API group "" at the '
        "cluster scope")


def test_server_side_apply_that_creates_needs_create_too(kube: KubeStandIn) -> None:
    kube.ensure_namespace("apply-only")
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "patcher", "namespace": "apply-only"},
            "rules": [{"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get", "patch"]}]}
    assert admin(kube, "POST", f"{RBAC}/namespaces/apply-only/roles", json=role).status_code == 201
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "patcher", "namespace": "apply-only"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "patcher"},
               "subjects": [{"kind": "ServiceAccount", "name": "default"}]}
    assert admin(kube, "POST", f"{RBAC}/namespaces/apply-only/rolebindings", json=binding).status_code == 201
    token = kube.mint_token("apply-only", "default")
    apply = {"params": {"fieldManager": "keyless"}, "headers": {"Content-Type": "application/apply-patch+yaml"},
             "json": account("new", "apply-only")}
    refused = call(kube, "PATCH", "/api/v1/namespaces/apply-only/serviceaccounts/new", token, **apply)
    assert refused.status_code == 403
    assert refused.json()["message"].startswith('serviceaccounts "new" is forbidden')
    role["rules"][0]["verbs"].append("create")
    assert admin(kube, "PUT", f"{RBAC}/namespaces/apply-only/roles/patcher", json=role).status_code == 200
    assert call(kube, "PATCH", "/api/v1/namespaces/apply-only/serviceaccounts/new", token, **apply).status_code \
        == 201


def _review(kube: KubeStandIn, token: str, **attributes: str) -> dict[str, Any]:
    key = "nonResourceAttributes" if "path" in attributes else "resourceAttributes"
    answer = call(kube, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", token, json={
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {key: attributes}})
    assert answer.status_code == 201, answer.text
    status: dict[str, Any] = answer.json()["status"]
    return status


def test_rules_match_subresources_names_and_urls_as_rbac_does(kube: KubeStandIn) -> None:
    kube.ensure_namespace("rules")
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "rules-test"},
            "rules": [{"apiGroups": ["apps"], "resources": ["*/status"], "verbs": ["get"]},
                      {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"]},
                      {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["one"]},
                      {"nonResourceURLs": ["/metrics", "/logs/*"], "verbs": ["get"]}]}
    assert admin(kube, "POST", f"{RBAC}/clusterroles", json=role).status_code == 201
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "rules-test"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "rules-test"},
               "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "rules"}]}
    assert admin(kube, "POST", f"{RBAC}/clusterrolebindings", json=binding).status_code == 201
    token = kube.mint_token("rules", "default")

    def allowed(**attributes: str) -> bool:
        return bool(_review(kube, token, **attributes)["allowed"])

    assert allowed(verb="get", group="apps", resource="deployments", subresource="status", namespace="rules")
    assert allowed(verb="get", group="apps", resource="replicasets", subresource="status", namespace="x")
    assert not allowed(verb="get", group="apps", resource="deployments", namespace="rules")
    assert allowed(verb="patch", group="apps", resource="deployments", subresource="scale", namespace="rules")
    assert not allowed(verb="patch", group="apps", resource="deployments", namespace="rules")
    assert allowed(verb="get", resource="configmaps", name="one", namespace="rules")
    assert not allowed(verb="get", resource="configmaps", name="two", namespace="rules")
    assert not allowed(verb="list", resource="configmaps", namespace="rules")  # a list names no object
    assert allowed(verb="get", path="/metrics")
    assert allowed(verb="get", path="/logs/kube-apiserver.log")
    assert not allowed(verb="get", path="/debug")
    reason = _review(kube, token, verb="get", path="/metrics")["reason"]
    assert reason == ('RBAC: allowed by ClusterRoleBinding "rules-test" of ClusterRole "rules-test" to '
                      'ServiceAccount "default/rules"')


def test_a_binding_to_a_missing_role_says_so_in_the_denial(kube: KubeStandIn) -> None:
    kube.ensure_namespace("dangling")
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "dangling", "namespace": "dangling"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gone"},
               "subjects": [{"kind": "ServiceAccount", "name": "default"}]}
    assert admin(kube, "POST", f"{RBAC}/namespaces/dangling/rolebindings", json=binding).status_code == 201
    refused = call(kube, "GET", "/api/v1/namespaces/dangling/pods", kube.mint_token("dangling", "default"))
    assert refused.json()["message"].endswith(': RBAC: role.rbac.authorization.k8s.io "gone" not found')
    changed = {**binding, "roleRef": {**binding["roleRef"], "name": "other"}}
    invalid = admin(kube, "PUT", f"{RBAC}/namespaces/dangling/rolebindings/dangling", json=changed)
    assert invalid.status_code == 422
    assert "roleRef: Invalid value" in invalid.json()["message"]
    assert "cannot change roleRef" in invalid.json()["message"]


def test_aggregated_cluster_roles_take_the_rules_of_the_roles_they_select(kube: KubeStandIn) -> None:
    kube.ensure_namespace("aggregated")
    parent = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "monitoring"},
              "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"example.com/aggregate": "true"}}]}}
    child = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": "monitoring-pods", "labels": {"example.com/aggregate": "true"}},
             "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "monitoring", "namespace": "aggregated"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "monitoring"},
               "subjects": [{"kind": "Group", "name": "system:serviceaccounts:aggregated"}]}
    for path, body in ((f"{RBAC}/clusterroles", parent), (f"{RBAC}/clusterroles", child),
                       (f"{RBAC}/namespaces/aggregated/rolebindings", binding)):
        assert admin(kube, "POST", path, json=body).status_code == 201
    token = kube.mint_token("aggregated", "default")
    assert call(kube, "GET", "/api/v1/namespaces/aggregated/pods", token).status_code == 200
    assert call(kube, "GET", "/api/v1/namespaces/shop/pods", token).status_code == 403


def test_rules_review_lists_what_the_user_may_do(kube: KubeStandIn, keyless_token: str) -> None:
    answer = call(kube, "POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", keyless_token, json={
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": "shop"}})
    rules = answer.json()["status"]["resourceRules"]
    for rule in KEYLESS_RULES:
        assert {**rule} in rules
    assert {"verbs": ["get"], "nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez",
                                                  "/openapi", "/openapi/*", "/readyz", "/version", "/version/"]} \
        in answer.json()["status"]["nonResourceRules"]


def test_reviews_are_only_created(kube: KubeStandIn) -> None:
    assert admin(kube, "GET", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews").status_code == 405
    verbs = {r["name"]: r["verbs"] for r in admin(kube, "GET", "/apis/authorization.k8s.io/v1").json()["resources"]}
    assert verbs["selfsubjectaccessreviews"] == ["create"]


def test_the_readme_documents_exactly_the_role_the_sandbox_grants() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Kubernetes permissions", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    documents = list(YAML(typ="safe", pure=True).load_all(block.group(1)))
    role = next(d for d in documents if d["kind"] == "ClusterRole")
    assert role["rules"] == [dict(rule) for rule in KEYLESS_RULES]
    binding = next(d for d in documents if d["kind"] == "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "keyless"}


# --- scale subresource and tables -------------------------------------------------------------------


def test_scale_reads_and_writes_replicas(kube: KubeStandIn) -> None:
    kube.seed_workload("shop", "scaled", replicas=1)
    path = "/apis/apps/v1/namespaces/shop/deployments/scaled/scale"
    scale = admin(kube, "GET", path).json()
    assert (scale["kind"], scale["apiVersion"], scale["spec"], scale["status"]["selector"]) == (
        "Scale", "autoscaling/v1", {"replicas": 1}, "app.kubernetes.io/name=scaled")
    patched = admin(kube, "PATCH", path, headers={"Content-Type": "application/merge-patch+json"},
                    json={"spec": {"replicas": 3}})
    assert patched.status_code == 200
    assert patched.json()["spec"]["replicas"] == 3
    kube.wait_idle()
    assert admin(kube, "GET", path).json()["status"]["replicas"] == 3
    stale = admin(kube, "PUT", path, json={**scale, "spec": {"replicas": 2}})
    assert stale.status_code == 409  # the resourceVersion read before the patch
    negative = admin(kube, "PUT", path, json={"apiVersion": "autoscaling/v1", "kind": "Scale",
                                              "metadata": {"name": "scaled"}, "spec": {"replicas": -1}})
    assert negative.status_code == 422
    discovery = {r["name"]: r for r in admin(kube, "GET", "/apis/apps/v1").json()["resources"]}
    assert (discovery["deployments/scale"]["group"], discovery["deployments/scale"]["kind"]) == ("autoscaling", "Scale")


def test_tables_carry_the_api_servers_columns(kube: KubeStandIn) -> None:
    kube.seed_workload("shop", "tabled")
    pods = admin(kube, "GET", "/api/v1/namespaces/shop/pods", headers={"Accept": TABLE}).json()
    assert pods["kind"] == "Table"
    names = [c["name"] for c in pods["columnDefinitions"]]
    assert names == ["Name", "Ready", "Status", "Restarts", "Age", "IP", "Node", "Nominated Node", "Readiness Gates"]
    assert [c["priority"] for c in pods["columnDefinitions"]] == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    row = next(r for r in pods["rows"] if r["cells"][0].startswith("tabled-"))
    assert row["cells"][1:4] == ["1/1", "Running", "0"]
    assert row["object"]["kind"] == "PartialObjectMetadata"
    deployment = admin(kube, "GET", "/apis/apps/v1/namespaces/shop/deployments/tabled",
                       headers={"Accept": TABLE}).json()
    assert [c["name"] for c in deployment["columnDefinitions"]][:5] == ["Name", "Ready", "Up-to-date", "Available",
                                                                       "Age"]
    assert deployment["rows"][0]["cells"][:4] == ["tabled", "1/1", 1, 1]
    for path, columns in (("/api/v1/namespaces/shop/serviceaccounts", ["Name", "Secrets", "Age"]),
                          ("/api/v1/namespaces", ["Name", "Status", "Age"]),
                          ("/api/v1/namespaces/shop/events", ["Name", "Age"])):
        table = admin(kube, "GET", path, headers={"Accept": TABLE}).json()
        assert [c["name"] for c in table["columnDefinitions"]] == columns, path
    plain = admin(kube, "GET", "/api/v1/namespaces/shop/pods").json()
    assert plain["kind"] == "PodList"
