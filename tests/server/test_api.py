"""The REST API in process (FastAPI's TestClient over httpx): every route against every role, errors, round trips.

The app's target here is on GCP with no Google credentials to be found (GOOGLE_APPLICATION_CREDENTIALS names a
missing file), so routes that would call a cloud answer 502 at once, saying how to sign in, and never leave the
machine; the sandbox tests drive the same routes against AWS, Azure and GCP.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from keyless.server.app import create_app
from keyless.store import DeployStatus, Role, Store

PORTER_YAML = """\
# The shop: comments and order survive every edit made through the API.
version: v2
name: shop
services:
  - name: api
    type: web
    port: 8080
    connections:
      - type: gcpServiceAccount
        serviceAccountEmail: shop-api@my-project.iam.gserviceaccount.com
  - name: worker      # no identity yet
    type: worker
"""

# Render mode: the Kubernetes side writes files (none is read before the cloud answers), so a call reaches Google first.
GKE = {"cloud": "gcp", "project": "my-project", "location": "us-central1", "cluster": "prod", "namespace": "shop",
       "kubernetes": {"mode": "render"}}
EKS = {"cloud": "aws", "region": "us-east-1", "cluster": "prod", "namespace": "shop"}
MINIMAL = "services:\n  - name: web\n    type: web\n"
TARGETS_FILE = "targets:\n  other:\n    cloud: aws\n    region: eu-west-1\n    cluster: c\n    namespace: n\n"


@dataclass
class World:
    client: TestClient
    store: Store
    tokens: dict[str, str]
    planned_id: int

    def headers(self, who: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}


def _seed(path: Path) -> None:
    from keyless.server.operations import ControlPlane

    store = Store.open(f"sqlite:///{path}")
    plane = ControlPlane(store, {})
    plane.put_target("gke", GKE, "seed")
    plane.put_target("spare", EKS, "seed")
    plane.import_app(PORTER_YAML, None, "gke", "seed")
    store.create_deploy("shop", "gke", "seed", DeployStatus.PLANNED, plan={"format": "none"}, plan_text="-")
    store.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("api") / "template.db"
    _seed(path)
    return path


@pytest.fixture
def world(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-credentials.json"))
    db = tmp_path / "keyless.db"
    shutil.copy(template, db)
    store = Store.open(f"sqlite:///{db}")
    tokens = {role.value: store.create_token(role.value, role, "test")[1] for role in Role}
    planned = store.list_deploys("shop")[0].id
    with TestClient(create_app(store, {})) as client:
        yield World(client, store, tokens, planned)
    store.close()


# --- the matrix: each route x no token, viewer, deployer, admin ------------------------------------------

YAML = {"content-type": "application/yaml"}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    needs: Role
    allowed_status: int
    json: Any = None
    content: str | None = None
    # What a refusal of the allowed role says: most are the cloud call without credentials.
    error: str = "no Google credentials found"
    hint: str = "gcloud auth application-default login"

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


ROUTES = [
    Route("GET", "/api/v1/whoami", Role.VIEWER, 200),
    Route("GET", "/api/v1/openapi.json", Role.VIEWER, 200),
    Route("GET", "/api/v1/targets", Role.VIEWER, 200),
    Route("GET", "/api/v1/targets/gke", Role.VIEWER, 200),
    Route("PUT", "/api/v1/targets/eks", Role.ADMIN, 201, json=EKS),
    Route("DELETE", "/api/v1/targets/spare", Role.ADMIN, 204),
    Route("POST", "/api/v1/targets/import", Role.ADMIN, 200, content=TARGETS_FILE),
    Route("GET", "/api/v1/targets/gke/preflight", Role.VIEWER, 502),  # no Google credentials: said plainly
    Route("GET", "/api/v1/apps", Role.VIEWER, 200),
    Route("POST", "/api/v1/apps", Role.ADMIN, 201, json={"porterYaml": "services:\n  - name: web\n    type: web\n",
                                                          "name": "blog"}),
    Route("GET", "/api/v1/apps/shop", Role.VIEWER, 200),
    Route("DELETE", "/api/v1/apps/shop?force=true", Role.ADMIN, 204),
    Route("GET", "/api/v1/apps/shop/porter.yaml", Role.VIEWER, 200),
    Route("PUT", "/api/v1/apps/shop/porter.yaml", Role.ADMIN, 200, content=PORTER_YAML.replace("8080", "9090")),
    Route("PUT", "/api/v1/apps/shop/target", Role.ADMIN, 200, json={"target": "spare"}),
    Route("GET", "/api/v1/apps/shop/services", Role.VIEWER, 200),
    Route("GET", "/api/v1/apps/shop/services/api", Role.VIEWER, 200),
    Route("GET", "/api/v1/apps/shop/services/api/connections", Role.VIEWER, 200),
    Route("PUT", "/api/v1/apps/shop/services/worker/connections/awsRole", Role.DEPLOYER, 200,
          json={"role": "shop-worker"}),
    Route("DELETE", "/api/v1/apps/shop/services/api/connections/gcpServiceAccount", Role.DEPLOYER, 200),
    Route("POST", "/api/v1/apps/shop/plan", Role.DEPLOYER, 502),
    Route("POST", "/api/v1/apps/shop/deploys", Role.DEPLOYER, 202),
    Route("POST", "/api/v1/deploys/{planned}/apply", Role.DEPLOYER, 202),
    Route("GET", "/api/v1/apps/shop/deploys", Role.VIEWER, 200),
    Route("GET", "/api/v1/deploys/{planned}", Role.VIEWER, 200),
    Route("GET", "/api/v1/apps/shop/status", Role.VIEWER, 502),
    Route("GET", "/api/v1/apps/shop/audit", Role.VIEWER, 502),
    Route("GET", "/api/v1/apps/shop/operator", Role.VIEWER, 200),  # not handed over: said without a cluster read
    # The operator's own check of the spec refuses it before any cluster is reached.
    Route("PUT", "/api/v1/apps/shop/operator", Role.DEPLOYER, 422, json={"refreshInterval": "1s"},
          error="the input is not valid", hint=""),
    Route("DELETE", "/api/v1/apps/shop/operator", Role.DEPLOYER, 404, error="is not handed to the operator",
          hint="PUT /api/v1/apps/APP/operator"),
    Route("GET", "/api/v1/audit-log", Role.VIEWER, 200),
    Route("GET", "/api/v1/tokens", Role.ADMIN, 200),
    Route("POST", "/api/v1/tokens", Role.ADMIN, 201, json={"name": "ci", "role": "deployer"}),
    Route("DELETE", "/api/v1/tokens/1", Role.ADMIN, 200),
]


def _call(world: World, route: Route, who: str | None) -> Any:
    path = route.path.replace("{planned}", str(world.planned_id))
    headers = world.headers(who)
    if route.content is not None:
        headers |= YAML
    return world.client.request(route.method, path, headers=headers, json=route.json, content=route.content)


def test_the_matrix_covers_every_route_of_the_api(world: World) -> None:
    from keyless.server import api

    # The API router's routes, and the OpenAPI document the app serves beside them.
    served = [*api.router.routes, *(r for r in world.client.app.routes  # type: ignore[attr-defined]
                                     if getattr(r, "path", "").startswith("/api/"))]
    for route in served:
        for method in route.methods:
            matching = [r for r in ROUTES if r.method == method
                        and route.path_regex.match(r.path.replace("{planned}", "1"))]
            assert matching, f"{method} {route.path} is not in the matrix"
    assert len(ROUTES) == sum(len(r.methods) for r in served)


@pytest.mark.parametrize("route", ROUTES, ids=str)
@pytest.mark.parametrize("who", [None, "viewer", "deployer", "admin"])
def test_each_route_for_each_role(world: World, route: Route, who: str | None) -> None:
    response = _call(world, route, who)
    if who is None:
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "needs a token" in response.json()["error"]
    elif not Role(who).allows(route.needs):
        assert response.status_code == 403, response.text
        assert f"needs the {route.needs.value} role" in response.json()["error"]
    else:
        assert response.status_code == route.allowed_status, response.text
        if response.status_code >= 400:
            body = response.json()
            assert route.error in body["error"]
            assert route.hint in body.get("hint", "")


def test_healthz_needs_no_token(world: World) -> None:
    response = world.client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


# --- authentication ------------------------------------------------------------------------------------


def test_a_wrong_or_revoked_token_is_refused(world: World) -> None:
    assert world.client.get("/api/v1/apps", headers={"Authorization": "Bearer kl_nope"}).status_code == 401
    assert world.client.get("/api/v1/apps", headers={"Authorization": "Basic abc"}).status_code == 401
    made = world.client.post("/api/v1/tokens", headers=world.headers("admin"), json={"name": "ci", "role": "viewer"})
    secret, token_id = made.json()["token"], made.json()["id"]
    assert world.client.get("/api/v1/apps", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    listed = world.client.get("/api/v1/tokens", headers=world.headers("admin")).json()
    assert all("token" not in t for t in listed)  # the secret is shown once, at creation
    world.client.delete(f"/api/v1/tokens/{token_id}", headers=world.headers("admin"))
    refused = world.client.get("/api/v1/apps", headers={"Authorization": f"Bearer {secret}"})
    assert refused.status_code == 401
    assert "revoked" in refused.json()["error"]


def test_a_token_role_must_be_one_of_the_three(world: World) -> None:
    response = world.client.post("/api/v1/tokens", headers=world.headers("admin"), json={"name": "x", "role": "root"})
    assert response.status_code == 422
    assert "role" in response.json()["error"]


# --- apps: import, export, edit --------------------------------------------------------------------------


def test_export_gives_back_the_imported_text(world: World) -> None:
    exported = world.client.get("/api/v1/apps/shop/porter.yaml", headers=world.headers("viewer"))
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("application/yaml")
    assert exported.text == PORTER_YAML


def test_import_as_yaml_body_and_export_adds_the_name(world: World) -> None:
    text = "services:\n  - name: web\n    type: web\n    port: 80\n"
    created = world.client.post("/api/v1/apps?name=blog&target=gke", content=text,
                                headers=world.headers("admin") | YAML)
    assert created.status_code == 201, created.text
    assert created.headers["Location"] == "/api/v1/apps/blog"
    assert created.json()["target"] == "gke"
    exported = world.client.get("/api/v1/apps/blog/porter.yaml", headers=world.headers("viewer")).text
    assert exported.startswith("name: blog\n")
    assert exported.endswith(text)


def test_an_invalid_porter_yaml_gets_every_problem_with_its_line(world: World) -> None:
    bad = "name: blog\nservices:\n  - name: web\n    type: web\n    connections:\n      - type: awsRole\n"
    response = world.client.post("/api/v1/apps", headers=world.headers("admin"), json={"porterYaml": bad})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "the input is not valid"
    problem = body["problems"][0]
    assert problem["line"] == 6
    assert problem["file"] == "porter.yaml"
    assert "role" in problem["message"]
    assert world.client.get("/api/v1/apps/blog", headers=world.headers("viewer")).status_code == 404


def test_import_errors_a_person_can_act_on(world: World) -> None:
    admin = world.headers("admin")
    taken = world.client.post("/api/v1/apps", headers=admin, json={"porterYaml": PORTER_YAML})
    assert taken.status_code == 409
    assert "already exists" in taken.json()["error"]
    no_name = world.client.post("/api/v1/apps", headers=admin, json={"porterYaml": MINIMAL})
    assert no_name.status_code == 422
    assert "no name" in no_name.json()["problems"][0]["message"]
    unknown_target = world.client.post("/api/v1/apps", headers=admin,
                                       json={"porterYaml": MINIMAL, "name": "x", "target": "nope"})
    assert unknown_target.status_code == 404
    assert "target 'nope'" in unknown_target.json()["error"]
    wrong_json = world.client.post("/api/v1/apps", headers=admin, json={"yaml": "x"})
    assert wrong_json.status_code == 422
    assert "porterYaml" in wrong_json.json()["error"]
    not_utf8 = world.client.post("/api/v1/apps", headers=admin | YAML, content=b"\xff\xfe")
    assert not_utf8.status_code == 422
    assert "UTF-8" in not_utf8.json()["error"]
    html = world.client.post("/api/v1/apps", headers=admin | {"content-type": "text/html"}, content="<p>")
    assert html.status_code == 422
    assert "application/yaml" in html.json()["hint"]


def test_connections_attach_change_detach_edit_porter_yaml(world: World) -> None:
    deployer = world.headers("deployer")
    base = "/api/v1/apps/shop/services/worker/connections"
    attached = world.client.put(f"{base}/awsRole", headers=deployer, json={"role": "shop-worker"})
    assert attached.status_code == 200
    worker = next(s for s in attached.json()["services"] if s["name"] == "worker")
    assert worker["connections"] == [{"type": "awsRole", "role": "shop-worker"}]
    changed = world.client.put(f"{base}/awsRole", headers=deployer,
                               json={"role": "arn:aws:iam::123456789012:role/shop-worker"})
    assert changed.json()["revision"] == attached.json()["revision"] + 1
    text = world.client.get("/api/v1/apps/shop/porter.yaml", headers=deployer).text
    assert "role: arn:aws:iam::123456789012:role/shop-worker" in text
    assert "# The shop: comments and order survive" in text
    assert "# no identity yet" in text
    detached = world.client.delete(f"{base}/awsRole", headers=deployer)
    assert detached.status_code == 200
    assert world.client.get("/api/v1/apps/shop/porter.yaml", headers=deployer).text == PORTER_YAML
    actions = [e["action"] for e in world.client.get("/api/v1/audit-log?subject=app/shop",
                                                     headers=deployer).json()]
    assert actions[:3] == ["connection.detach", "connection.change", "connection.attach"]
    event = world.client.get("/api/v1/audit-log?subject=app/shop&limit=1", headers=deployer).json()[0]
    assert event["actor"].startswith("deployer (token ")
    assert event["before"]["connections"]["worker"]
    assert "worker" not in event["after"]["connections"]


def test_connection_input_is_checked_before_it_is_stored(world: World) -> None:
    deployer = world.headers("deployer")
    base = "/api/v1/apps/shop/services"
    bad_role = world.client.put(f"{base}/worker/connections/awsRole", headers=deployer, json={"role": "no spaces!"})
    assert bad_role.status_code == 422
    assert "role" in bad_role.json()["problems"][0]["message"].lower()
    missing = world.client.put(f"{base}/worker/connections/azureManagedIdentity", headers=deployer,
                               json={"identityName": "x"})
    assert missing.status_code == 422
    assert "resourceGroup" in missing.json()["error"]
    extra = world.client.put(f"{base}/worker/connections/awsRole", headers=deployer, json={"role": "r", "x": "y"})
    assert extra.status_code == 422
    assert "no field 'x'" in extra.json()["error"]
    kind = world.client.put(f"{base}/worker/connections/cloudSql", headers=deployer, json={})
    assert kind.status_code == 422
    assert "awsRole" in kind.json()["hint"]
    service = world.client.put(f"{base}/nope/connections/awsRole", headers=deployer, json={"role": "r"})
    assert service.status_code == 404
    assert "api, worker" in service.json()["hint"]
    stale = world.client.put(f"{base}/worker/connections/awsRole?revision=0", headers=deployer, json={"role": "r"})
    assert stale.status_code == 409
    assert "reload" in stale.json()["hint"]
    assert world.client.get("/api/v1/apps/shop", headers=deployer).json()["revision"] == 1


def test_targets_are_validated_like_the_targets_file(world: World) -> None:
    admin = world.headers("admin")
    bad = world.client.put("/api/v1/targets/eks", headers=admin, json={**EKS, "region": "moon-1"})
    assert bad.status_code == 422
    assert bad.json()["problems"]
    assert world.client.put("/api/v1/targets/eks", headers=admin, json=EKS).status_code == 201
    assert world.client.put("/api/v1/targets/eks", headers=admin, json=EKS).status_code == 200
    in_use = world.client.delete("/api/v1/targets/gke", headers=admin)
    assert in_use.status_code == 409
    assert "shop" in in_use.json()["error"]
    got = world.client.get("/api/v1/targets/eks", headers=admin).json()
    assert got["cloud"] == "aws"
    assert got["settings"]["region"] == "us-east-1"


def test_deploys_of_a_target_keyless_cannot_reach_fail_with_the_reason(world: World) -> None:
    # No Google credentials in this world (see the module's docstring).
    deployer = world.headers("deployer")
    started = world.client.post("/api/v1/apps/shop/deploys", headers=deployer)
    assert started.status_code == 202
    assert started.headers["Location"] == f"/api/v1/deploys/{started.json()['id']}"
    world.client.app.state.keyless.runner.wait(started.json()["id"], timeout=30)  # type: ignore[attr-defined]
    done = world.client.get(started.headers["Location"], headers=deployer).json()
    assert done["status"] == "failed"
    assert done["finished"]
    assert "no Google credentials found" in done["message"]
    no_target = world.client.post("/api/v1/apps/shop/deploys?target=nope", headers=deployer)
    assert no_target.status_code == 404


def test_the_openapi_document_describes_every_route(world: World) -> None:
    document = world.client.get("/api/v1/openapi.json", headers=world.headers("viewer")).json()
    assert document["openapi"].startswith("3.")
    assert "/api/v1/apps/{app}/services/{service}/connections/{type}" in document["paths"]
    assert "/healthz" in document["paths"]
    assert len(document["paths"]) >= 20


def test_an_app_whose_bindings_may_remain_is_not_forgotten_unless_forced(world: World) -> None:
    admin = world.headers("admin")
    refused = world.client.delete("/api/v1/apps/shop", headers=admin)
    assert refused.status_code == 409
    assert "still has identity connections (api)" in refused.json()["error"]
    assert "force=true" in refused.json()["hint"]
    world.client.delete("/api/v1/apps/shop/services/api/connections/gcpServiceAccount", headers=admin)
    # Detached, and never deployed at all: nothing can be bound, so it goes.
    assert world.client.delete("/api/v1/apps/shop", headers=admin).status_code == 204


def test_undeployed_changes_keep_an_app_from_being_forgotten(world: World) -> None:
    admin = world.headers("admin")
    world.client.delete("/api/v1/apps/shop/services/api/connections/gcpServiceAccount", headers=admin)
    deployed = world.store.create_deploy("shop", "gke", "test", DeployStatus.PLANNING)
    world.store.finish_deploy(deployed.id, DeployStatus.SUCCEEDED, "ok")  # deployed at the current revision
    world.client.put("/api/v1/apps/shop/porter.yaml", headers=admin | YAML,
                     content=PORTER_YAML.replace("      - type: gcpServiceAccount\n        serviceAccountEmail: "
                                                 "shop-api@my-project.iam.gserviceaccount.com\n", "").replace(
                                                     "    connections:\n", "").replace("8080", "8081"))
    refused = world.client.delete("/api/v1/apps/shop", headers=admin)
    assert refused.status_code == 409
    assert "never deployed" in refused.json()["error"]
    assert world.client.delete("/api/v1/apps/shop?force=true", headers=admin).status_code == 204
    assert world.client.get("/api/v1/apps/shop", headers=admin).status_code == 404


def test_api_answers_are_never_cached_nor_sniffed(world: World) -> None:
    answer = world.client.post("/api/v1/tokens", headers=world.headers("admin"),
                               json={"name": "ci", "role": "viewer"})
    assert answer.status_code == 201, answer.text  # this answer holds a new token
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-content-type-options"] == "nosniff"
    refused = world.client.get("/api/v1/apps", headers={"Authorization": "Bearer kl_nope"})
    assert refused.status_code == 401
    assert refused.headers["cache-control"] == "no-store"


AKS = {"cloud": "azure", "subscription": "00000000-0000-0000-0000-000000000001", "resourceGroup": "platform",
       "cluster": "prod-aks", "namespace": "shop"}


def test_a_target_from_the_api_names_no_file_outside_the_files_directory(world: World, tmp_path: Path) -> None:
    admin = world.headers("admin")
    # The server in `world` was given no files directory: it uses $XDG_DATA_HOME/keyless/files, never /etc.
    refused = world.client.put("/api/v1/targets/aks", headers=admin,
                               json={**AKS, "caBundle": "/etc/ssl/private/key.pem"})
    assert refused.status_code == 422
    assert "outside the server's files directory" in refused.json()["error"]

    files = tmp_path / "files"
    files.mkdir()
    with TestClient(create_app(world.store, {}, files_dir=files)) as client:
        for field in ({"caBundle": "/etc/passwd"}, {"caBundle": "../outside.pem"},
                      {"kubernetes": {"kubeconfig": "/root/.kube/config"}},
                      {"kubernetes": {"mode": "render", "outDir": "../../anywhere"}}):
            answer = client.put("/api/v1/targets/aks", headers=admin, json={**AKS, **field})
            assert answer.status_code == 422, answer.text
            assert "outside the server's files directory" in answer.json()["error"]
        kept = client.put("/api/v1/targets/aks", headers=admin,
                          json={**AKS, "caBundle": "ca.pem", "kubernetes": {"mode": "render", "outDir": "gitops"}})
        assert kept.status_code == 201, kept.text
        stored = client.get("/api/v1/targets/aks", headers=admin).json()
    assert stored["settings"]["caBundle"] == str((files / "ca.pem").resolve())
    assert stored["settings"]["kubernetes"]["outDir"] == str((files / "gitops").resolve())
