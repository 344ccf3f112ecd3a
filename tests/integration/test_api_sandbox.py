"""The control plane's API against the sandbox: import, connect, plan, deploy, status, export, and the CLI agreeing.

The API runs in process (FastAPI's TestClient); deploys run on the server's own worker threads and drive the real
boto3, azure-mgmt and lightkube clients over HTTP(S) against the sandbox.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from e2e_support import Sandbox, run_cli
from fastapi.testclient import TestClient
from lightkube import Client, KubeConfig

from keyless.porter import load_app
from keyless.sandbox.azure.demo import DEMO_API_IDENTITY, DEMO_RESOURCE_GROUP
from keyless.sandbox.porter import deploy_workloads
from keyless.sandbox.stack import AKS_CONTEXT, AKS_TARGET, EKS_CONTEXT, EKS_TARGET, GKE_CONTEXT, GKE_TARGET
from keyless.server.app import create_app
from keyless.store import DeployStatus, Role, Store

pytestmark = pytest.mark.integration

ROLE = "keyless-demo-api"
CLUSTER = "keyless-sandbox"


class Api:
    def __init__(self, client: TestClient, store: Store, admin: str, deployer: str) -> None:
        self.client, self.store = client, store
        self.admin = {"Authorization": f"Bearer {admin}"}
        self.deployer = {"Authorization": f"Bearer {deployer}"}

    def ok(self, method: str, path: str, who: dict[str, str] | None = None, **kwargs: Any) -> Any:
        response = self.client.request(method, path, headers=(who or self.deployer) | kwargs.pop("headers", {}),
                                       **kwargs)
        assert response.status_code < 300, response.text
        return response

    def finished(self, deploy_id: int, timeout: float = 180.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body: dict[str, Any] = self.ok("GET", f"/api/v1/deploys/{deploy_id}").json()
            if body["finished"]:
                return body
            time.sleep(0.2)
        raise AssertionError(f"deploy {deploy_id} did not finish in {timeout}s")


@pytest.fixture
def api(env: dict[str, str], tmp_path: Path) -> Iterator[Api]:
    store = Store.open(f"sqlite:///{tmp_path / 'keyless.db'}")
    admin = store.create_token("admin", Role.ADMIN, "test")[1]
    deployer = store.create_token("deployer", Role.DEPLOYER, "test")[1]
    # The sandbox's kubeconfig and CA live in its state directory: the server may name files there only.
    files = Path(env["KEYLESS_TARGETS"]).parent
    with TestClient(create_app(store, dict(os.environ), files_dir=files)) as client:
        handle = Api(client, store, admin, deployer)
        targets = Path(env["KEYLESS_TARGETS"]).read_text()
        handle.ok("POST", "/api/v1/targets/import", handle.admin, content=targets,
                  headers={"content-type": "application/yaml"})
        yield handle
    store.close()


def porter(app: str, services: list[str]) -> str:
    lines = [f"# {app}: imported through the API", "services:"]
    for service in services:
        lines += [f"  - name: {service}", "    type: web", "    port: 8080"]
    return "\n".join(lines) + "\n"


def run_workloads(env: dict[str, str], text: str, app: str, context: str) -> None:
    """What a Porter deploy does before keyless: the app's Deployments exist in the cluster."""
    loaded = load_app(text.encode(), "porter.yaml", {})
    client = Client(KubeConfig.from_file(env["KUBECONFIG"]).get(context_name=context), namespace="shop")
    deploy_workloads(client, app, loaded.app, "shop")


def associations(cluster: str) -> dict[str, str]:
    eks = boto3.client("eks")
    found = {}
    for page in eks.get_paginator("list_pod_identity_associations").paginate(clusterName=cluster, namespace="shop"):
        for summary in page["associations"]:
            described = eks.describe_pod_identity_association(clusterName=cluster,
                                                              associationId=summary["associationId"])
            found[summary["serviceAccount"]] = described["association"]["roleArn"]
    return found


def test_import_connect_plan_apply_then_export_and_the_cli_sees_no_changes(
        api: Api, env: dict[str, str], tmp_path: Path) -> None:
    text = porter("api-one", ["api", "web"])
    api.ok("POST", f"/api/v1/apps?name=api-one&target={EKS_TARGET}", api.admin, content=text,
           headers={"content-type": "application/yaml"})
    run_workloads(env, text, "api-one", EKS_CONTEXT)
    api.ok("PUT", "/api/v1/apps/api-one/services/api/connections/awsRole", json={"role": ROLE})

    planned = api.ok("POST", "/api/v1/apps/api-one/plan").json()
    assert planned["status"] == "planned"
    assert "+" in planned["planText"]
    assert "api-one-api" in planned["planText"]
    assert "api-one-api" not in associations(CLUSTER)  # a plan changes nothing

    started = api.ok("POST", f"/api/v1/deploys/{planned['id']}/apply").json()
    assert started["status"] == "applying"
    done = api.finished(started["id"])
    assert done["status"] == "succeeded", done["message"]
    assert done["progress"]["done"] == done["progress"]["total"] > 0
    assert done["progress"]["failed"] == 0
    assert all(a["ok"] for a in done["actions"])
    assert associations(CLUSTER)["api-one-api"].endswith(f":role/{ROLE}")

    status = api.ok("GET", "/api/v1/apps/api-one/status").json()["services"]
    row = next(r for r in status if r["service"] == "api")
    assert row["identity"].endswith(f":role/{ROLE}")
    assert row["drift"] is None

    # The exported porter.yaml, applied from the CLI, changes nothing: both paths lead to the same state.
    exported = api.ok("GET", "/api/v1/apps/api-one/porter.yaml").text
    assert exported.startswith("# api-one: imported through the API\nname: api-one\nservices:\n")
    path = tmp_path / "porter.yaml"
    path.write_text(exported)
    code, output = run_cli("plan", "-f", str(path), "--target", EKS_TARGET)
    assert code == 0, output
    assert "No changes" in output
    code, output = run_cli("apply", "-f", str(path), "--target", EKS_TARGET, "--auto-approve")
    assert code == 0, output
    assert "No changes" in output

    # Detach through the API: the next deploy removes the association keyless made.
    api.ok("DELETE", "/api/v1/apps/api-one/services/api/connections/awsRole")
    again = api.finished(api.ok("POST", "/api/v1/apps/api-one/deploys").json()["id"])
    assert again["status"] == "succeeded", again["message"]
    assert "api-one-api" not in associations(CLUSTER)
    last = api.finished(api.ok("POST", "/api/v1/apps/api-one/deploys").json()["id"])
    assert last["status"] == "no-changes"


def test_a_second_deploy_of_the_same_app_is_refused_with_who_holds_it(api: Api) -> None:
    text = porter("api-two", ["api"])
    api.ok("POST", "/api/v1/apps", api.admin, json={"porterYaml": text, "name": "api-two", "target": EKS_TARGET})
    # Another server (sharing the database) is deploying this app right now.
    held = api.store.create_deploy("api-two", EKS_TARGET, "alice (token kl_abcde…, deployer)", DeployStatus.APPLYING)
    refused = api.client.post("/api/v1/apps/api-two/deploys", headers=api.deployer)
    assert refused.status_code == 409
    assert f"deploy #{held.id} by alice" in refused.json()["error"]
    planned = api.ok("POST", "/api/v1/apps/api-two/plan").json()  # planning alone takes no lock
    assert api.client.post(f"/api/v1/deploys/{planned['id']}/apply", headers=api.deployer).status_code == 409
    api.store.finish_deploy(held.id, DeployStatus.SUCCEEDED, "done")
    assert api.finished(api.ok("POST", "/api/v1/apps/api-two/deploys").json()["id"])["status"] in (
        "succeeded", "no-changes")


def test_deploys_of_different_apps_run_side_by_side(api: Api, env: dict[str, str]) -> None:
    for app in ("par-a", "par-b"):
        text = porter(app, ["api"])
        api.ok("POST", "/api/v1/apps", api.admin, json={"porterYaml": text, "name": app, "target": EKS_TARGET})
        run_workloads(env, text, app, EKS_CONTEXT)
        api.ok("PUT", f"/api/v1/apps/{app}/services/api/connections/awsRole", json={"role": ROLE})
    ids = [api.ok("POST", f"/api/v1/apps/{app}/deploys").json()["id"] for app in ("par-a", "par-b")]
    first, second = (api.finished(i) for i in ids)
    assert first["status"] == second["status"] == "succeeded", (first["message"], second["message"])
    assert second["startedAt"] < first["finishedAt"]  # the second started before the first was done
    found = associations(CLUSTER)
    assert "par-a-api" in found
    assert "par-b-api" in found


def test_a_plan_made_stale_by_an_edit_is_refused(api: Api) -> None:
    text = porter("api-three", ["api"])
    api.ok("POST", "/api/v1/apps", api.admin, json={"porterYaml": text, "name": "api-three", "target": EKS_TARGET})
    planned = api.ok("POST", "/api/v1/apps/api-three/plan").json()
    api.ok("PUT", "/api/v1/apps/api-three/services/api/connections/awsRole", json={"role": ROLE})
    refused = api.client.post(f"/api/v1/deploys/{planned['id']}/apply", headers=api.deployer)
    assert refused.status_code == 409
    assert "make a new plan" in refused.json()["hint"]


def test_azure_connection_through_the_api(api: Api, env: dict[str, str]) -> None:
    text = porter("az-api", ["api"])
    api.ok("POST", "/api/v1/apps", api.admin, json={"porterYaml": text, "name": "az-api", "target": AKS_TARGET})
    run_workloads(env, text, "az-api", AKS_CONTEXT)
    api.ok("PUT", "/api/v1/apps/az-api/services/api/connections/azureManagedIdentity",
           json={"identityName": DEMO_API_IDENTITY, "resourceGroup": DEMO_RESOURCE_GROUP})
    done = api.finished(api.ok("POST", "/api/v1/apps/az-api/deploys").json()["id"])
    assert done["status"] == "succeeded", done["message"]
    assert any("token exchange works" in a["message"] for a in done["actions"]), done["actions"]
    row = api.ok("GET", "/api/v1/apps/az-api/status").json()["services"][0]
    assert row["service"] == "api"
    assert DEMO_API_IDENTITY in row["identity"]
    assert row["drift"] is None
    audit = api.ok("GET", "/api/v1/apps/az-api/audit").json()
    assert audit["cloud"] == "azure"
    assert len(audit["connections"]) == 1
    preflight = api.ok("GET", f"/api/v1/targets/{AKS_TARGET}/preflight").json()
    assert preflight["ready"] is True


def test_gcp_connection_through_the_api(api: Api, env: dict[str, str], sandbox: Sandbox) -> None:
    email = sandbox[0].gcp.add_service_account("api-gke-one")
    text = porter("gk-api", ["api"])
    api.ok("POST", "/api/v1/apps", api.admin, json={"porterYaml": text, "name": "gk-api", "target": GKE_TARGET})
    run_workloads(env, text, "gk-api", GKE_CONTEXT)
    api.ok("PUT", "/api/v1/apps/gk-api/services/api/connections/gcpServiceAccount",
           json={"serviceAccountEmail": email})
    plan = api.ok("POST", "/api/v1/apps/gk-api/plan").json()
    assert plan["status"] == "planned", plan["message"]
    assert "principal for direct grants: principal://" in plan["planText"]
    done = api.finished(api.ok("POST", plan["links"]["apply"]).json()["id"])
    assert done["status"] == "succeeded", done["message"]
    assert any("token exchange works" in a["message"] for a in done["actions"]), done["actions"]
    row = api.ok("GET", "/api/v1/apps/gk-api/status").json()["services"][0]
    assert (row["service"], row["identity"], row["drift"]) == ("api", email, None)
    assert row["principal"].endswith("/subject/ns/shop/sa/gk-api-api")
    audit = api.ok("GET", "/api/v1/apps/gk-api/audit").json()
    assert audit["cloud"] == "gcp"
    assert len(audit["connections"]) == 1
    assert api.ok("GET", f"/api/v1/targets/{GKE_TARGET}/preflight").json()["ready"] is True


def test_preflight_of_a_target_whose_cluster_is_missing(api: Api) -> None:
    api.ok("PUT", "/api/v1/targets/ghost", api.admin,
           json={"cloud": "aws", "region": "us-east-1", "cluster": "ghost", "namespace": "shop"})
    body = api.ok("GET", "/api/v1/targets/ghost/preflight").json()
    assert body["ready"] is False
    assert "not found" in body["issues"][0]["message"]
    assert body["issues"][0]["fix"]
