"""The control plane hands an app to the keyless operator on the sandbox, and shows what the operator reports.

The operator is installed from `keyless operator manifests` and runs as two replicas (threads) logged in as its own
service account, as in test_operator.py. The control plane runs in process (TestClient for the API, uvicorn and
Chromium for the dashboard) and reaches the target's cluster with the target's own least-privilege context, granted
the README's extra rules for KeylessApps; every call is real lightkube over HTTPS.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import boto3
import pytest
from e2e_support import Sandbox
from fastapi.testclient import TestClient
from lightkube import ApiError, Client, KubeConfig
from lightkube.codecs import from_dict, load_all_yaml
from operator_support import operator_replicas
from server_support import running_server

from keyless.kube.home import KEYLESSAPP
from keyless.operator.manifests import CONTROL_PLANE_RULES
from keyless.porter import load_app
from keyless.sandbox.porter import deploy_workloads
from keyless.sandbox.stack import AKS_CONTEXT, AKS_TARGET, EKS_CONTEXT, EKS_TARGET
from keyless.server.app import create_app
from keyless.server.auth import ServerState
from keyless.store import Role, Store

pytestmark = pytest.mark.integration

ROLE = "keyless-demo-api"
DEADLINE = 90.0  # seconds a wait may take before the test fails (never asserted as a bound)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _admin(env: dict[str, str], context: str = EKS_CONTEXT) -> Client:
    return Client(KubeConfig.from_file(env["KUBECONFIG"]).get(context_name=context), field_manager="kubectl")


def _wait(what: str, check: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def replicas(sandbox: Sandbox, operator_env: dict[str, str]) -> Iterator[None]:
    """The operator installed in the EKS cluster from its manifests (its Deployment aside), two replicas running."""
    def apply(text: str) -> None:
        admin = _admin(operator_env)
        for obj in load_all_yaml(text, create_resources_for_crds=True):
            admin.apply(obj, force=True)

    with operator_replicas(sandbox, operator_env, apply, "keyless-operator-handover"):
        yield


@pytest.fixture(scope="module")
def granted(operator_env: dict[str, str]) -> None:
    """What an admin gives the control plane's context in each cluster, as the README says: CONTROL_PLANE_RULES on
    top of keyless's own role, bound in the target namespace."""
    for context in (EKS_CONTEXT, AKS_CONTEXT):
        admin = _admin(operator_env, context)
        admin.apply(from_dict({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                               "metadata": {"name": "keyless-control-plane"},
                               "rules": [dict(r) for r in CONTROL_PLANE_RULES]}), force=True)
        admin.apply(from_dict({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                               "metadata": {"name": "keyless-control-plane", "namespace": "shop"},
                               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                           "name": "keyless-control-plane"},
                               "subjects": [{"kind": "ServiceAccount", "name": "keyless",
                                             "namespace": "keyless-system"}]}), force=True)


class Api:
    def __init__(self, client: TestClient, store: Store, admin: str, deployer: str) -> None:
        self.client, self.store = client, store
        self.admin = {"Authorization": f"Bearer {admin}"}
        self.deployer = {"Authorization": f"Bearer {deployer}"}

    def call(self, method: str, path: str, who: dict[str, str] | None = None, **kwargs: Any) -> Any:
        return self.client.request(method, path, headers=(who or self.deployer) | kwargs.pop("headers", {}), **kwargs)

    def ok(self, method: str, path: str, who: dict[str, str] | None = None, **kwargs: Any) -> Any:
        response = self.call(method, path, who, **kwargs)
        assert response.status_code < 300, response.text
        return response.json() if response.content else None


@pytest.fixture
def api(operator_env: dict[str, str], granted: None, tmp_path: Path) -> Iterator[Api]:
    store = Store.open(f"sqlite:///{tmp_path / 'keyless.db'}")
    admin = store.create_token("admin", Role.ADMIN, "test")[1]
    deployer = store.create_token("deployer", Role.DEPLOYER, "test")[1]
    files = Path(operator_env["KEYLESS_TARGETS"]).parent
    with TestClient(create_app(store, dict(os.environ), files_dir=files)) as client:
        handle = Api(client, store, admin, deployer)
        targets = Path(operator_env["KEYLESS_TARGETS"]).read_text()
        handle.ok("POST", "/api/v1/targets/import", handle.admin, content=targets,
                  headers={"content-type": "application/yaml"})
        yield handle
    store.close()


def _porter(app: str, port: int = 8080) -> str:
    return (f"name: {app}\nservices:\n  - name: api\n    type: web\n    port: {port}\n    connections:\n"
            f"      - type: awsRole\n        role: {ROLE}\n")


def _import(api: Api, env: dict[str, str], app: str, target: str) -> str:
    text = _porter(app)
    api.ok("POST", f"/api/v1/apps?target={target}", api.admin, content=text,
           headers={"content-type": "application/yaml"})
    deploy_workloads(_admin(env), app, load_app(text.encode(), "porter.yaml", {}).app, "shop")
    return text


def _keylessapp(env: dict[str, str], name: str) -> Any | None:
    try:
        return _admin(env).get(KEYLESSAPP, name, namespace="shop")
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


def _condition(body: dict[str, Any], kind: str) -> dict[str, Any] | None:
    found = body.get("keylessApp") or {}
    return next((c for c in found.get("conditions", []) if c["type"] == kind), None)


def _ready(api: Api, app: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = api.ok("GET", f"/api/v1/apps/{app}/operator")
        ready = _condition(body, "Ready")
        caught_up = body["keylessApp"] is not None and body["keylessApp"]["caughtUp"]
        return body if caught_up and ready is not None and ready["status"] == "True" else None
    found: dict[str, Any] = _wait(f"the operator to report {app} Ready", check)
    return found


def _associations(service_account: str) -> list[dict[str, Any]]:
    eks = boto3.client("eks")
    cluster = eks.list_clusters()["clusters"][0]
    listed = eks.list_pod_identity_associations(clusterName=cluster, namespace="shop", serviceAccount=service_account)
    return [dict(a) for a in listed["associations"]]


# ---- the tests ----------------------------------------------------------------------------------------------


def test_handed_over_read_back_handed_again_and_taken_back(api: Api, operator_env: dict[str, str],
                                                           replicas: None) -> None:
    env = operator_env
    text = _import(api, env, "cp-shop", EKS_TARGET)
    assert api.ok("GET", "/api/v1/apps/cp-shop/operator") == {
        "app": "cp-shop", "handedOver": False, "handover": None, "keylessApp": None,
        "links": {"self": "/api/v1/apps/cp-shop/operator", "app": "/api/v1/apps/cp-shop"}}

    handed = api.ok("PUT", "/api/v1/apps/cp-shop/operator", json={"refreshInterval": "30s"})
    assert handed["handover"]["target"] == EKS_TARGET
    assert (handed["handover"]["revision"], handed["handover"]["upToDate"]) == (1, True)
    obj = _keylessapp(env, "cp-shop")
    assert obj is not None
    assert obj["spec"] == {"target": EKS_TARGET, "app": "cp-shop", "porterYaml": text, "suspend": False,
                           "refreshInterval": "30s"}
    assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "keyless-control-plane"
    assert obj["metadata"]["annotations"]["keyless.dev/handed-over-by"].startswith("deployer (token ")
    assert {m["manager"] for m in obj["metadata"]["managedFields"] if m["operation"] == "Apply"} >= {
        "keyless-control-plane"}

    # The operator binds it; the control plane reads its conditions and rows back.
    body = _ready(api, "cp-shop")
    app_state = body["keylessApp"]
    assert app_state["summary"] == "Ready"
    assert app_state["observedGeneration"] == app_state["generation"]
    ready = _condition(body, "Ready")
    assert ready is not None
    assert ready["reason"]
    assert ready["lastTransitionTime"]
    assert [(b["service"], b["cloud"], b["state"]) for b in app_state["bindings"]] == [("api", "aws", "Bound")]
    [association] = _associations("cp-shop-api")
    assert app_state["bindings"][0]["bindingId"] == association["associationId"]
    assert app_state["lastAppliedPlan"]["applied"] is True

    # While the operator has it, deploys from here to that target are refused: one writer per app.
    refused = api.call("POST", "/api/v1/apps/cp-shop/deploys")
    assert refused.status_code == 409, refused.text
    assert "handed to the keyless operator" in refused.json()["error"]
    assert refused.json()["hint"]

    # porter.yaml changes here: the handover says it is behind until it is handed over again, then the spec follows.
    api.ok("PUT", "/api/v1/apps/cp-shop/porter.yaml", api.admin, content=_porter("cp-shop", 9090),
           headers={"content-type": "application/yaml"})
    behind = api.ok("GET", "/api/v1/apps/cp-shop/operator")
    assert (behind["handover"]["revision"], behind["handover"]["appRevision"], behind["handover"]["upToDate"]) == (
        1, 2, False)
    again = api.ok("PUT", "/api/v1/apps/cp-shop/operator", json={"refreshInterval": "30s"})
    assert again["handover"]["upToDate"] is True
    updated = _keylessapp(env, "cp-shop")
    assert updated is not None
    assert "port: 9090" in updated["spec"]["porterYaml"]
    assert updated["metadata"]["generation"] > obj["metadata"]["generation"]
    _ready(api, "cp-shop")
    events = [e["action"] for e in api.ok("GET", "/api/v1/audit-log?subject=app/cp-shop")]
    assert events.count("operator.handover") == 2

    # Taking it back needs the caller to say the bindings go; then the KeylessApp and its binding do.
    unconfirmed = api.call("DELETE", "/api/v1/apps/cp-shop/operator")
    assert unconfirmed.status_code == 409, unconfirmed.text
    assert "removes every binding" in unconfirmed.json()["error"]
    assert "removeBindings=true" in unconfirmed.json()["hint"]
    assert _keylessapp(env, "cp-shop") is not None
    taken = api.ok("DELETE", "/api/v1/apps/cp-shop/operator?removeBindings=true")
    assert taken["handedOver"] is False
    assert taken["takenBack"]["deleted"] is True
    _wait("the KeylessApp to go", lambda: _keylessapp(env, "cp-shop") is None)
    assert _associations("cp-shop-api") == []
    assert api.ok("GET", "/api/v1/apps/cp-shop/operator")["handedOver"] is False
    assert "operator.takeback" in [e["action"] for e in api.ok("GET", "/api/v1/audit-log?subject=app/cp-shop")]


def test_a_cluster_without_the_operator_or_out_of_reach_is_a_clear_error(
        api: Api, operator_env: dict[str, str], tmp_path: Path) -> None:
    env = operator_env
    # The AKS cluster has no KeylessApp CRD: nothing is written, and the answer names the fix.
    api.ok("POST", f"/api/v1/apps?target={AKS_TARGET}", api.admin, content="name: cp-aks\nservices:\n"
           "  - name: api\n    type: web\n", headers={"content-type": "application/yaml"})
    missing = api.call("PUT", "/api/v1/apps/cp-aks/operator")
    assert missing.status_code == 409, missing.text
    assert "does not serve KeylessApps" in missing.json()["error"]
    assert "keyless operator manifests" in missing.json()["hint"]
    assert api.ok("GET", "/api/v1/apps/cp-aks/operator")["handedOver"] is False

    # A target whose cluster does not answer: 502 with the address and what to check, never a 500.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    files = Path(env["KEYLESS_TARGETS"]).parent
    kubeconfig = files / "gone-kubeconfig.yaml"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: gone\n"
        f"clusters:\n- name: gone\n  cluster:\n    server: https://127.0.0.1:{port}\n"
        "    insecure-skip-tls-verify: true\n"
        "users:\n- name: gone\n  user:\n    token: nothing\n"
        "contexts:\n- name: gone\n  context:\n    cluster: gone\n    user: gone\n")
    eks = api.ok("GET", f"/api/v1/targets/{EKS_TARGET}")["settings"]
    api.ok("PUT", "/api/v1/targets/gone-eks", api.admin, json={
        **eks, "kubernetes": {"kubeconfig": kubeconfig.name, "context": "gone"}})
    api.ok("POST", "/api/v1/apps?target=gone-eks", api.admin, content="name: cp-gone\nservices:\n"
           "  - name: api\n    type: web\n", headers={"content-type": "application/yaml"})
    unreachable = api.call("PUT", "/api/v1/apps/cp-gone/operator")
    assert unreachable.status_code == 502, unreachable.text
    assert f"127.0.0.1:{port} did not answer" in unreachable.json()["error"]
    assert "reachable" in unreachable.json()["hint"]
    # An app handed over before its cluster went away: reading its status says so too.
    api.store.record_handover("cp-gone", target_name="gone-eks", namespace="shop", revision=1, refresh_interval=None,
                              suspend=False, actor="test")
    status = api.call("GET", "/api/v1/apps/cp-gone/operator")
    assert status.status_code == 502, status.text
    assert "did not answer" in status.json()["error"]


@pytest.fixture(scope="module")
def chromium() -> str:
    path = os.environ.get("KEYLESS_TEST_CHROMIUM")
    if not path:
        pytest.skip("KEYLESS_TEST_CHROMIUM is not set (make unit sets it to /usr/bin/chromium)")
    return path


def test_the_dashboard_hands_over_shows_the_conditions_and_takes_back(
        chromium: str, operator_env: dict[str, str], granted: None, replicas: None, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    env = operator_env
    store = Store.open(f"sqlite:///{tmp_path}/k.db")
    app = create_app(store, dict(os.environ), files_dir=Path(env["KEYLESS_TARGETS"]).parent)
    plane = cast(ServerState, app.state.keyless).plane
    targets_file = Path(env["KEYLESS_TARGETS"])
    plane.import_targets(targets_file.read_text(), str(targets_file), "test")
    text = _porter("cp-web")
    plane.import_app(text, None, EKS_TARGET, "test")
    deploy_workloads(_admin(env), "cp-web", load_app(text.encode(), "porter.yaml", {}).app, "shop")
    _, secret = store.create_token("browser", Role.DEPLOYER, "test")
    try:
        with running_server(app) as base, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(30_000)
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
                page.goto(f"{base}/login?next=/apps/cp-web")
                page.get_by_label("Token", exact=True).fill(secret)
                page.get_by_role("button", name="Log in").click()
                panel = page.locator("section#operator")
                expect(panel).to_contain_text("Not handed over")
                panel.get_by_role("button", name="Hand over to the operator").click()
                expect(panel).to_contain_text("KeylessApp shop/cp-web on sandbox-eks")

                # The panel's status is read once per page view: reload until the operator has reported Ready.
                def ready_shown() -> bool:
                    page.goto(f"{base}/apps/cp-web")
                    status = page.locator("#operator-status")
                    expect(status.locator("table")).to_have_count(2)
                    return "Ready" in status.locator("span.status").first.inner_text()
                _wait("the panel to show Ready", ready_shown)
                status = page.locator("#operator-status")
                ready_row = status.get_by_role("row").filter(has=page.get_by_role("rowheader", name="Ready"))
                expect(ready_row).to_contain_text("True")
                expect(status.get_by_role("row").filter(has=page.get_by_role("rowheader", name="api"))).to_contain_text(
                    "Bound")
                expect(status).to_contain_text("The operator has reconciled the current spec")

                page.goto(f"{base}/")
                row = page.get_by_role("row").filter(has_text="cp-web")
                expect(row).to_contain_text(re.compile("handed over.*Ready", re.DOTALL))

                # Take back: the browser will not send the form until the box saying the bindings go is ticked.
                page.goto(f"{base}/apps/cp-web")
                panel = page.locator("section#operator")
                panel.get_by_role("button", name="Take back").click()
                expect(page).to_have_url(re.compile(r"/apps/cp-web$"))
                panel.get_by_label(re.compile("I understand")).check()
                panel.get_by_role("button", name="Take back").click()
                expect(panel).to_contain_text("Taken back from the operator")
                expect(panel).to_contain_text("Not handed over")
                assert errors == []
            finally:
                browser.close()
        _wait("the KeylessApp to go", lambda: _keylessapp(env, "cp-web") is None)
    finally:
        store.close()
