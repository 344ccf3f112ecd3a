"""The dashboard: login, roles, CSRF and every page through TestClient; then Chromium drives it against the sandbox."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import boto3
import pytest
from e2e_support import Sandbox
from fastapi import FastAPI
from fastapi.testclient import TestClient
from server_support import running_server

from keyless.errors import CloudError, NotFound
from keyless.providers.base import PreflightIssue, PreflightSeverity
from keyless.server.app import create_app
from keyless.server.auth import SESSION_COOKIE, ServerState
from keyless.server.operations import Connector
from keyless.store import DeployActionRecord, DeployStatus, Role, Store
from keyless.store.models import utcnow

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"

PORTER_YAML = """\
name: shop
services:
  - name: api
    type: web
    run: echo '<b>not bold</b>'
    port: 8080
  - name: worker
    type: worker
    run: python worker.py
"""

TARGET = {"cloud": "aws", "region": "us-east-1", "cluster": "prod", "namespace": "shop"}
CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


class FakeProvider:
    """Stands in for a cloud on the targets page: preflight is all it is asked for."""

    def resolve(self, bindings: list[Any]) -> tuple[list[Any], list[PreflightIssue]]:
        return list(bindings), []

    def preflight(self, bindings: list[Any]) -> list[PreflightIssue]:
        return [PreflightIssue(PreflightSeverity.BLOCKING, "the EKS Pod Identity agent add-on is not installed on prod",
                               fix="aws eks create-addon --cluster-name prod --addon-name eks-pod-identity-agent")]


def fake_connector(name: str, target: Any) -> Any:
    if name == "unreachable":
        raise CloudError("cannot reach the cluster of target 'unreachable'", "check the network")
    return FakeProvider(), None


@dataclass
class Dashboard:
    app: FastAPI
    store: Store
    secrets: dict[Role, str]

    @property
    def state(self) -> ServerState:
        found: ServerState = self.app.state.keyless
        return found

    def client(self, role: Role | None = None) -> TestClient:
        """A browser with its own cookies, logged in with a token of `role` (None: not logged in)."""
        client = TestClient(self.app, follow_redirects=False)
        if role is not None:
            login(client, self.secrets[role])
        return client


def csrf_of(client: TestClient, path: str = "/login") -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = CSRF.search(page.text)
    assert found, page.text
    return found.group(1)


def login(client: TestClient, secret: str, next_url: str = "/") -> Any:
    response = client.post("/login", data={"token": secret, "next": next_url, "csrf": csrf_of(client)})
    assert response.status_code == 303, response.text
    return response


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    store = Store.open(f"sqlite:///{tmp_path}/k.db")
    app = create_app(store, {}, connector=cast(Connector, fake_connector))
    plane = cast(ServerState, app.state.keyless).plane
    plane.put_target("prod-eks", TARGET, "test")
    plane.put_target("unreachable", {**TARGET, "cluster": "gone"}, "test")
    plane.import_app(PORTER_YAML, None, None, "test")
    secrets = {role: store.create_token(f"{role.value}-person", role, "test")[1] for role in Role}
    try:
        yield Dashboard(app, store, secrets)
    finally:
        store.close()


def save_connection(client: TestClient, dashboard: Dashboard, **form: str) -> Any:
    revision = str(dashboard.store.get_app("shop").revision)
    data = {"csrf": csrf_of(client, "/apps/shop/services/api"), "revision": revision, **form}
    return client.post("/apps/shop/services/api/connections/awsRole", data=data)


# --- login and sessions ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/apps/shop", "/apps/shop/services/api", "/targets", "/audit-log",
                                  "/apps/shop/status"])
def test_pages_need_login(dashboard: Dashboard, path: str) -> None:
    response = dashboard.client().get(path)
    assert response.status_code == 303
    assert response.headers["location"] == f"/login?next={path}"


def test_login_sets_a_strict_http_only_cookie_and_goes_to_next(dashboard: Dashboard) -> None:
    client = dashboard.client()
    response = login(client, dashboard.secrets[Role.VIEWER], next_url="/apps/shop")
    assert response.headers["location"] == "/apps/shop"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Secure" not in cookie
    page = client.get("/apps/shop")
    assert page.status_code == 200
    assert "viewer-person (viewer)" in page.text


def test_secure_cookies_when_configured(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path}/k.db")
    try:
        _, secret = store.create_token("someone", Role.VIEWER, "test")
        client = TestClient(create_app(store, {}, secure_cookies=True), follow_redirects=False)
        assert "Secure" in login(client, secret).headers["set-cookie"]
    finally:
        store.close()


def test_wrong_token_is_refused(dashboard: Dashboard) -> None:
    client = dashboard.client()
    response = client.post("/login", data={"token": "kl_not-a-token", "next": "/", "csrf": csrf_of(client)})
    assert response.status_code == 401
    assert "not valid" in response.text
    assert "set-cookie" not in response.headers
    assert client.get("/").status_code == 303


@pytest.mark.parametrize("next_url", ["//evil.example/x", "https://evil.example/", "/\\evil.example",
                                      "javascript:alert(1)", "evil.example", "/\t/evil.example"])
def test_login_never_redirects_off_the_site(dashboard: Dashboard, next_url: str) -> None:
    response = login(dashboard.client(), dashboard.secrets[Role.VIEWER], next_url=next_url)
    assert response.headers["location"] == "/"


def test_logout_clears_the_session(dashboard: Dashboard) -> None:
    client = dashboard.client(Role.VIEWER)
    response = client.post("/logout", data={"csrf": csrf_of(client, "/")})
    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    assert f'{SESSION_COOKIE}=""' in response.headers["set-cookie"]
    assert client.get("/").status_code == 303


# --- roles and CSRF ----------------------------------------------------------------------------------


def test_viewer_sees_no_write_buttons_and_is_refused_on_posts(dashboard: Dashboard) -> None:
    viewer = dashboard.client(Role.VIEWER)
    service = viewer.get("/apps/shop/services/api").text
    assert "IAM Role Connection" in service
    assert ">Save</button>" not in service
    assert "disabled" in service
    assert "readonly" in service
    app_page = viewer.get("/apps/shop").text
    assert ">Plan</button>" not in app_page
    assert 'name="target"' not in app_page  # changing the target is for admins

    csrf = csrf_of(viewer, "/")
    for path, form in [("/apps/shop/services/api/connections/awsRole", {"revision": "1", "enabled": "on",
                                                                       "role": "shop-api-role"}),
                       ("/apps/shop/plan", {}), ("/apps/shop/target", {"target": "prod-eks"}),
                       ("/deploys/1/apply", {})]:
        response = viewer.post(path, data={"csrf": csrf, **form})
        assert response.status_code == 403, path
        assert "needs the" in response.text
    assert "awsRole" not in dashboard.store.get_app("shop").porter_yaml


def test_deployer_sees_save_and_plan_but_not_the_target_select(dashboard: Dashboard) -> None:
    dashboard.state.plane.set_app_target("shop", "prod-eks", "test")
    deployer = dashboard.client(Role.DEPLOYER)
    assert ">Save</button>" in deployer.get("/apps/shop/services/api").text
    page = deployer.get("/apps/shop").text
    assert ">Plan</button>" in page
    assert 'name="target"' not in page
    assert deployer.post("/apps/shop/target", data={"csrf": csrf_of(deployer, "/"), "target": ""}).status_code == 403


def test_admin_changes_the_target(dashboard: Dashboard) -> None:
    admin = dashboard.client(Role.ADMIN)
    page = admin.get("/apps/shop").text
    assert '<option value="prod-eks">prod-eks (aws)</option>' in page
    response = admin.post("/apps/shop/target", data={"csrf": csrf_of(admin, "/apps/shop"), "target": "prod-eks"})
    assert response.status_code == 303
    assert dashboard.store.get_app("shop").target_name == "prod-eks"


@pytest.mark.parametrize("csrf", [None, "", "0" * 64])
def test_posts_without_the_right_csrf_token_are_refused(dashboard: Dashboard, csrf: str | None) -> None:
    deployer = dashboard.client(Role.DEPLOYER)
    form = {"revision": "1", "enabled": "on", "role": "shop-api-role"}
    if csrf is not None:
        form["csrf"] = csrf
    response = deployer.post("/apps/shop/services/api/connections/awsRole", data=form)
    assert response.status_code == 403
    assert "CSRF" in response.text
    assert "awsRole" not in dashboard.store.get_app("shop").porter_yaml


def test_the_csrf_token_of_another_session_is_refused(dashboard: Dashboard) -> None:
    other = csrf_of(dashboard.client(Role.ADMIN), "/")
    deployer = dashboard.client(Role.DEPLOYER)
    response = deployer.post("/apps/shop/plan", data={"csrf": other})
    assert response.status_code == 403


def test_htmx_requests_send_the_csrf_token_as_a_header(dashboard: Dashboard) -> None:
    deployer = dashboard.client(Role.DEPLOYER)
    page = deployer.get("/").text
    header = re.search(r"hx-headers='\{&#34;X-CSRF-Token&#34;: &#34;([0-9a-f]+)&#34;\}'", page)
    if header is None:  # tojson's own escaping of quotes
        header = re.search(r"hx-headers='\{\"X-CSRF-Token\": \"([0-9a-f]+)\"\}'", page)
    assert header, page
    response = deployer.post("/apps/shop/services/api/connections/awsRole",
                             data={"revision": "1", "enabled": "on", "role": "shop-api-role"},
                             headers={"X-CSRF-Token": header.group(1)})
    assert response.status_code == 303


# --- pages, read without JavaScript ------------------------------------------------------------------


def test_pages_render_their_content_as_html(dashboard: Dashboard) -> None:
    client = dashboard.client(Role.DEPLOYER)
    apps = client.get("/")
    assert apps.status_code == 200
    assert apps.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in apps.headers["content-security-policy"]
    assert '<a href="/apps/shop">shop</a>' in apps.text
    assert "never deployed" in apps.text

    app_page = client.get("/apps/shop").text
    assert '<a href="/apps/shop/services/api">api</a>' in app_page
    assert '<a href="/apps/shop/services/worker">worker</a>' in app_page
    assert "none: choose one to deploy" in app_page
    assert "&lt;b&gt;not bold&lt;/b&gt;" in app_page  # porter.yaml is shown escaped
    assert "<b>not bold</b>" not in app_page

    service = client.get("/apps/shop/services/api").text
    for title in ("IAM Role Connection", "Azure Managed Identity Connection", "GCP Service Account Connection"):
        assert f">{title}</h2>" in service
    assert 'placeholder="shop-api-role"' in service
    assert "gives the pods of api access to every cloud resource" in service
    assert "pods.eks.amazonaws.com" in service  # the trust policy keyless needs, in the info box
    assert "shop-api-role" in service
    assert 'hx-get="/apps/shop/services/api/findings"' in service
    assert 'href="/apps/shop/services/api/findings"' in service  # the same findings without JavaScript

    findings = client.get("/apps/shop/services/api/findings")
    assert findings.status_code == 200
    assert "<html" in findings.text
    assert "The audit could not run: app &#39;shop&#39; has no deploy target" in findings.text
    fragment = client.get("/apps/shop/services/api/findings", headers={"HX-Request": "true"})
    assert "<html" not in fragment.text
    assert "The audit could not run" in fragment.text

    status = client.get("/apps/shop/status").text
    assert 'hx-get="/apps/shop/status/bindings"' in status  # the page answers at once; the cloud is read after
    assert 'href="/apps/shop/status/bindings"' in status  # and without JavaScript, by following the link
    bindings = client.get("/apps/shop/status/bindings").text
    assert "<html" in bindings
    assert "The status could not be read: app &#39;shop&#39; has no deploy target" in bindings
    fragment = client.get("/apps/shop/status/bindings", headers={"HX-Request": "true"}).text
    assert "<html" not in fragment
    assert "The status could not be read" in fragment


def test_the_info_box_follows_what_is_typed(dashboard: Dashboard) -> None:
    client = dashboard.client(Role.DEPLOYER)
    box = client.get("/apps/shop/services/api/preview/awsRole", params={"role": "billing-reader"},
                     headers={"HX-Request": "true"}).text
    assert "<html" not in box
    assert "billing-reader" in box
    azure = client.get("/apps/shop/services/api/preview/azureManagedIdentity",
                       params={"identityName": "shop-id", "resourceGroup": "rg-shop"}).text
    assert "shop-id" in azure
    assert "system:serviceaccount:" in azure


def test_targets_page_shows_each_targets_preflight(dashboard: Dashboard) -> None:
    client = dashboard.client(Role.VIEWER)
    page = client.get("/targets").text
    assert 'id="target-prod-eks"' in page
    assert "us-east-1" in page
    for name in ("prod-eks", "unreachable"):  # each target's checks load on their own: none holds the page
        assert f'hx-get="/targets/{name}/preflight"' in page
        assert f'href="/targets/{name}/preflight"' in page
    prod = client.get("/targets/prod-eks/preflight", headers={"HX-Request": "true"}).text
    assert "<html" not in prod
    assert "the EKS Pod Identity agent add-on is not installed on prod" in prod
    assert "aws eks create-addon --cluster-name prod" in prod
    assert ">ready</span>" not in prod
    unreachable = client.get("/targets/unreachable/preflight")
    assert unreachable.status_code == 200
    assert "<html" in unreachable.text
    assert "The checks could not run: cannot reach the cluster of target &#39;unreachable&#39;" in unreachable.text
    assert "hint: check the network" in unreachable.text
    assert client.get("/targets/nope/preflight").status_code == 404


def test_errors_are_html_pages_without_a_traceback(dashboard: Dashboard) -> None:
    client = dashboard.client(Role.VIEWER)
    response = client.get("/apps/nope")
    assert response.status_code == 404
    assert "app &#39;nope&#39; does not exist" in response.text
    assert "Traceback" not in response.text
    assert client.get("/deploys/999").status_code == 404
    assert client.get("/apps/shop/services/nope").status_code == 404


# --- changing a connection ---------------------------------------------------------------------------


def test_toggling_a_connection_on_edits_porter_yaml_and_is_audited(dashboard: Dashboard) -> None:
    client = dashboard.client(Role.DEPLOYER)
    response = save_connection(client, dashboard, enabled="on", role=" shop-api-role ")
    assert response.status_code == 303
    assert response.headers["location"] == "/apps/shop/services/api?saved=2#saved"
    confirmation = client.get(response.headers["location"]).text
    assert "<strong>Saved.</strong> porter.yaml is now at revision 2" in confirmation
    assert "+ - type: awsRole\n+   role: shop-api-role\n" in confirmation  # what changed in porter.yaml
    app = dashboard.store.get_app("shop")
    assert "type: awsRole" in app.porter_yaml
    assert "role: shop-api-role" in app.porter_yaml
    assert "run: echo '<b>not bold</b>'" in app.porter_yaml  # the rest of the file is kept as written
    service = app.service("api")
    assert service is not None
    assert service.connection("awsRole") is not None

    event = dashboard.store.audit_events("app/shop")[0]
    assert event.action == "connection.attach"
    assert event.subject == "app/shop/service/api"
    assert event.actor.startswith("deployer-person")
    log = client.get("/audit-log").text
    assert "connection.attach" in log
    assert "shop-api-role" in log

    page = client.get("/apps/shop/services/api").text
    assert re.search(r'id="awsRole-enabled" name="enabled" value="on" checked', page)
    assert 'value="shop-api-role"' in page

    off = save_connection(client, dashboard)  # the toggle unchecked: the browser sends no `enabled`
    assert off.status_code == 303
    assert "- - type: awsRole\n-   role: shop-api-role\n" in client.get(off.headers["location"]).text
    again = save_connection(client, dashboard)  # nothing to detach any more
    assert "Nothing changed: porter.yaml already said this" in client.get(again.headers["location"]).text
    assert "awsRole" not in dashboard.store.get_app("shop").porter_yaml
    assert dashboard.store.audit_events("app/shop")[0].action == "connection.detach"


def test_a_stale_form_gets_the_conflict_message(dashboard: Dashboard) -> None:
    client = dashboard.client(Role.DEPLOYER)
    csrf = csrf_of(client, "/apps/shop/services/api")
    first = client.post("/apps/shop/services/api/connections/awsRole",
                        data={"csrf": csrf, "revision": "1", "enabled": "on", "role": "first-role"})
    assert first.status_code == 303
    second = client.post("/apps/shop/services/api/connections/awsRole",
                         data={"csrf": csrf, "revision": "1", "enabled": "on", "role": "second-role"})
    assert second.status_code == 409
    assert "changed since you loaded it" in second.text
    assert 'value="first-role"' in second.text  # the form now shows what is stored
    assert 'name="revision" value="2"' in second.text
    assert "role: first-role" in dashboard.store.get_app("shop").porter_yaml


def test_a_refused_form_keeps_what_was_typed(dashboard: Dashboard) -> None:
    client = dashboard.client(Role.DEPLOYER)
    response = save_connection(client, dashboard, enabled="on", role="")
    assert response.status_code == 422
    assert "awsRole needs role" in response.text
    bad = save_connection(client, dashboard, enabled="on", role="not a role name")
    assert bad.status_code == 422
    assert 'value="not a role name"' in bad.text
    assert "awsRole" not in dashboard.store.get_app("shop").porter_yaml


# --- deploys -----------------------------------------------------------------------------------------


def test_deploy_page_shows_the_plan_and_apply_only_to_deployers(dashboard: Dashboard) -> None:
    plan = {"blockers": []}
    planned = dashboard.store.create_deploy("shop", "prod-eks", "test", DeployStatus.PLANNED, plan=plan,
                                            plan_text="+ cloud_binding shop/shop-api\n  role: shop-api-role")
    page = dashboard.client(Role.DEPLOYER).get(f"/deploys/{planned.id}").text
    assert "+ cloud_binding shop/shop-api" in page
    assert ">Apply</button>" in page
    assert 'http-equiv="refresh"' not in page
    assert ">Apply</button>" not in dashboard.client(Role.VIEWER).get(f"/deploys/{planned.id}").text

    blocked = dashboard.store.create_deploy(
        "shop", "prod-eks", "test", DeployStatus.PLANNED, plan_text="! blocked",
        plan={"blockers": [{"service": "api", "message": "shop-api is bound to another role by hand",
                            "hint": "delete that association"}]})
    page = dashboard.client(Role.DEPLOYER).get(f"/deploys/{blocked.id}").text
    assert "shop-api is bound to another role by hand" in page
    assert ">Apply</button>" not in page


def test_deploy_progress_is_polled_while_active_and_stops_when_finished(dashboard: Dashboard) -> None:
    store = dashboard.store
    deploy = store.create_deploy("shop", "prod-eks", "test", DeployStatus.PLANNING)
    store.set_deploy_plan(deploy.id, {"blockers": []}, "2 changes", 2, DeployStatus.APPLYING)
    store.record_action(deploy.id, DeployActionRecord(
        seq=1, service="api", resource="cloud_binding", kind="create", address="shop/shop-api", ok=True,
        message="created", seconds=1.25, finished_at=utcnow()))
    client = dashboard.client(Role.VIEWER)

    page = client.get(f"/deploys/{deploy.id}").text
    assert '<noscript><meta http-equiv="refresh" content="2"></noscript>' in page
    progress = client.get(f"/deploys/{deploy.id}/progress", headers={"HX-Request": "true"}).text
    assert "<html" not in progress
    assert 'hx-trigger="every 1s"' in progress
    assert "1 of 2 actions done" in progress
    assert "create cloud_binding shop/shop-api" in progress
    assert ">ok</span>" in progress

    store.finish_deploy(deploy.id, DeployStatus.SUCCEEDED, "2 change(s) applied")
    done = client.get(f"/deploys/{deploy.id}/progress").text
    assert "hx-trigger" not in done
    assert ">succeeded</span>" in done
    assert "2 change(s) applied" in done
    assert "http-equiv" not in client.get(f"/deploys/{deploy.id}").text
    history = client.get("/apps/shop").text
    assert f'<a href="/deploys/{deploy.id}">#{deploy.id}</a>' in history
    assert "succeeded" in client.get("/").text


def test_the_service_page_opens_only_the_targets_cloud_and_has_a_plan_button(dashboard: Dashboard) -> None:
    deployer = dashboard.client(Role.DEPLOYER)
    no_target = deployer.get("/apps/shop/services/api").text
    assert "<details" not in no_target  # no target yet: every cloud may apply
    assert ">Plan</button>" not in no_target
    assert "has no deploy target yet" in no_target

    dashboard.state.plane.set_app_target("shop", "prod-eks", "test")
    page = deployer.get("/apps/shop/services/api").text
    assert '<section class="connection" id="awsRole"' in page
    for type_, title in (("azureManagedIdentity", "Azure Managed Identity Connection"),
                         ("gcpServiceAccount", "GCP Service Account Connection")):
        section = page[page.index(f'id="{type_}"'):]
        assert section.index("<details>") < section.index(f">{title}</h2>") < section.index("</summary>")
        assert "does not apply to target prod-eks (AWS)" in section[:section.index("</summary>")]
    assert page.count("<details>") == 2
    assert ">Plan</button>" in page
    assert 'action="/apps/shop/plan"' in page
    assert ">Plan</button>" not in dashboard.client(Role.VIEWER).get("/apps/shop/services/api").text


def test_the_app_page_says_when_changes_are_not_deployed(dashboard: Dashboard) -> None:
    store = dashboard.store
    client = dashboard.client(Role.DEPLOYER)
    assert "Undeployed changes" not in client.get("/apps/shop").text  # nothing to deploy yet
    save_connection(client, dashboard, enabled="on", role="shop-api-role")
    assert "this app's connections have never been deployed" in client.get("/apps/shop").text

    done = store.create_deploy("shop", "prod-eks", "test", DeployStatus.PLANNING)
    store.finish_deploy(done.id, DeployStatus.SUCCEEDED, "1 change(s) applied")
    assert "Undeployed changes" not in client.get("/apps/shop").text
    failed = store.create_deploy("shop", "prod-eks", "test", DeployStatus.PLANNING)
    store.finish_deploy(failed.id, DeployStatus.FAILED, "boom")
    assert "Undeployed changes" not in client.get("/apps/shop").text  # a failed deploy changes nothing here

    save_connection(client, dashboard, enabled="on", role="shop-api-other")
    page = client.get("/apps/shop").text
    assert "Undeployed changes:" in page
    assert (f"porter.yaml is at revision 3; the target was last brought to revision 2\n      by "
            f'<a href="/deploys/{done.id}">deploy #{done.id}</a>') in page


def _plan_from_the_dashboard(dashboard: Dashboard, client: TestClient) -> tuple[int, str]:
    """Press Plan; the plan runs in the background: wait for it, then read the deploy page."""
    response = client.post("/apps/shop/plan", data={"csrf": csrf_of(client, "/apps/shop")})
    assert response.status_code == 303
    deploy_id = int(response.headers["location"].rsplit("/", 1)[1])
    dashboard.state.runner.wait(deploy_id)
    page = client.get(response.headers["location"])
    assert page.status_code == 200
    return deploy_id, page.text


def test_a_plan_blocked_by_preflight_lands_on_its_deploy_page_with_the_fix(dashboard: Dashboard) -> None:
    dashboard.state.plane.set_app_target("shop", "prod-eks", "test")
    client = dashboard.client(Role.DEPLOYER)
    save_connection(client, dashboard, enabled="on", role="shop-api-role")
    deploy_id, page = _plan_from_the_dashboard(dashboard, client)
    assert dashboard.store.get_deploy(deploy_id).status is DeployStatus.BLOCKED
    assert "Blocked before any change:" in page
    assert "the EKS Pod Identity agent add-on is not installed on prod" in page
    assert "fix: aws eks create-addon --cluster-name prod --addon-name eks-pod-identity-agent" in page
    assert ">Plan again</button>" in page
    assert ">Apply</button>" not in page
    assert "409" not in page


def test_an_unreachable_cloud_ends_the_plan_on_its_deploy_page_not_a_bad_gateway(dashboard: Dashboard) -> None:
    dashboard.state.plane.set_app_target("shop", "unreachable", "test")
    client = dashboard.client(Role.DEPLOYER)
    deploy_id, page = _plan_from_the_dashboard(dashboard, client)
    assert dashboard.store.get_deploy(deploy_id).status is DeployStatus.FAILED
    assert "The plan could not be made:" in page
    assert "cannot reach the cluster of target &#39;unreachable&#39;" in page
    assert "hint: check the network" in page
    assert "502" not in page
    assert ">Plan again</button>" in page


def test_a_page_shown_while_planning_reloads_once_the_plan_is_made(dashboard: Dashboard) -> None:
    store = dashboard.store
    deploy = store.create_deploy("shop", "prod-eks", "test", DeployStatus.PLANNING)
    client = dashboard.client(Role.VIEWER)
    page = client.get(f"/deploys/{deploy.id}").text
    assert f'hx-get="/deploys/{deploy.id}/progress?since=planning"' in page
    assert "The plan is being made." in page
    polled = client.get(f"/deploys/{deploy.id}/progress?since=planning", headers={"HX-Request": "true"})
    assert "HX-Refresh" not in polled.headers
    store.set_deploy_plan(deploy.id, {"blockers": []}, "+ cloud_binding shop/shop-api", 1, DeployStatus.PLANNED)
    done = client.get(f"/deploys/{deploy.id}/progress?since=planning", headers={"HX-Request": "true"})
    assert done.headers["HX-Refresh"] == "true"
    # The plan is waiting for review: it holds no lock, so a deploy may start.
    assert store.create_deploy("shop", "prod-eks", "test", DeployStatus.PLANNING).status is DeployStatus.PLANNING


def test_the_audit_of_a_plan_says_why_it_could_not_run(dashboard: Dashboard) -> None:
    client = dashboard.client(Role.VIEWER)
    planning = dashboard.store.create_deploy("shop", "prod-eks", "test", DeployStatus.PLANNING)
    fragment = client.get(f"/deploys/{planning.id}/audit", headers={"HX-Request": "true"}).text
    assert "<html" not in fragment
    assert f"The audit could not run: deploy #{planning.id} has no plan yet" in fragment
    assert "<html" in client.get(f"/deploys/{planning.id}/audit").text  # the page for reading without JavaScript


# --- the browser, against the sandbox ----------------------------------------------------------------

BROWSER_APP = "dash"
BROWSER_ROLE = "keyless-demo-api"  # seeded by the sandbox; its trust policy lets pods.eks.amazonaws.com in
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium, from $KEYLESS_TEST_CHROMIUM; the browser test is skipped only when that is unset."""
    path = os.environ.get("KEYLESS_TEST_CHROMIUM")
    if not path:
        pytest.skip("KEYLESS_TEST_CHROMIUM is not set (make unit sets it to /usr/bin/chromium)")
    return path


def pod_identity_roles(cluster: str, namespace: str) -> dict[str, str]:
    """Service account -> role ARN of every Pod Identity association in the namespace, read with boto3."""
    eks = boto3.client("eks")
    found = {}
    for page in eks.get_paginator("list_pod_identity_associations").paginate(clusterName=cluster,
                                                                             namespace=namespace):
        for summary in page["associations"]:
            described = eks.describe_pod_identity_association(clusterName=cluster,
                                                              associationId=summary["associationId"])
            found[summary["serviceAccount"]] = described["association"]["roleArn"]
    return found


@pytest.mark.integration
def test_browser_connects_a_role_deploys_and_disconnects_it(
        chromium: str, sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    from lightkube import Client, KubeConfig
    from playwright.sync_api import Page, expect, sync_playwright

    from keyless.porter import load_app
    from keyless.sandbox.porter import deploy_workloads
    from keyless.sandbox.stack import DEMO_NAMESPACE, EKS_TARGET

    text = f"name: {BROWSER_APP}\nservices:\n  - name: api\n    type: web\n    run: node index.js\n    port: 8080\n"
    store = Store.open(f"sqlite:///{tmp_path}/k.db")
    app = create_app(store, os.environ, files_dir=Path(env["KEYLESS_TARGETS"]).parent)
    plane = cast(ServerState, app.state.keyless).plane
    targets_file = Path(env["KEYLESS_TARGETS"])
    plane.import_targets(targets_file.read_text(), str(targets_file), "test")
    plane.import_app(text, None, EKS_TARGET, "test")
    _, secret = store.create_token("browser", Role.DEPLOYER, "test")
    kube = Client(KubeConfig.from_file(env["KUBECONFIG"]), namespace=DEMO_NAMESPACE)
    deploy_workloads(kube, BROWSER_APP, load_app(text.encode(), "porter.yaml", {}).app, DEMO_NAMESPACE)
    cluster = plane.target(EKS_TARGET).cluster
    account = f"{BROWSER_APP}-api"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def shot(page: Page, name: str) -> None:
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    def plan_and_apply(page: Page, base: str, expected: str) -> None:
        page.goto(f"{base}/apps/{BROWSER_APP}")
        page.get_by_role("button", name="Plan", exact=True).click()
        expect(page.locator("#plan-text")).to_contain_text(expected)
        page.get_by_role("button", name="Apply", exact=True).click()
        expect(page.locator("#deploy-status")).to_have_text("succeeded", timeout=120_000)

    eks = boto3.client("eks")
    try:
        with running_server(app) as base, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(30_000)
                errors: list[str] = []  # script errors, CSP refusals, failed loads (htmx itself, say)
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)

                page.goto(f"{base}/")
                expect(page).to_have_url(re.compile(r"/login\?next=/$"))
                shot(page, "01-login")
                page.get_by_label("Token", exact=True).fill(secret)
                page.get_by_role("button", name="Log in").click()
                expect(page.get_by_role("heading", name="Apps", exact=True)).to_be_visible()
                shot(page, "02-apps")

                page.get_by_role("link", name=BROWSER_APP, exact=True).click()
                expect(page.get_by_role("heading", name=f"App {BROWSER_APP}")).to_be_visible()
                expect(page.locator("#undeployed")).to_have_count(0)  # nothing to deploy yet
                shot(page, "03-app")

                # Toggle on: the IAM Role Connection, open since the target is on AWS; the other clouds are folded.
                page.get_by_role("link", name="api", exact=True).click()
                page.wait_for_url(f"{base}/apps/{BROWSER_APP}/services/api")  # loaded: htmx listens from here on
                expect(page.locator("section#azureManagedIdentity")).to_contain_text(
                    f"does not apply to target {EKS_TARGET} (AWS)")
                expect(page.get_by_label("Enable the Azure Managed Identity Connection")).to_be_hidden()
                assert page.evaluate("document.documentElement.scrollHeight") < 2000  # short: one cloud open
                section = page.locator("section#awsRole")
                toggle = section.get_by_label("Enable the IAM Role Connection")
                expect(toggle).not_to_be_checked()
                toggle.check()
                section.get_by_label("IAM role name or ARN").fill(BROWSER_ROLE)
                expect(section.locator(".infobox")).to_contain_text(BROWSER_ROLE)  # htmx refreshed the preview
                shot(page, "04-toggle-on")

                # Save: the page says what changed in porter.yaml.
                section.get_by_role("button", name="Save").click()
                expect(page.locator("#saved")).to_contain_text("Saved.")
                expect(page.locator("#saved pre")).to_have_text(f"+ - type: awsRole\n+   role: {BROWSER_ROLE}\n")
                expect(toggle).to_be_checked()
                expect(section.get_by_label("IAM role name or ARN")).to_have_value(BROWSER_ROLE)
                expect(section.locator(".infobox")).to_contain_text("pods.eks.amazonaws.com")
                expect(page.locator("#findings")).to_contain_text(f":role/{BROWSER_ROLE}")  # loaded by htmx
                shot(page, "05-saved")

                page.goto(f"{base}/apps/{BROWSER_APP}")
                expect(page.locator("#undeployed")).to_contain_text("Undeployed changes")
                shot(page, "06-undeployed")

                # Plan from the service page, blocked: someone bound the service account to another role by hand.
                other_role = boto3.client("iam").get_role(RoleName="keyless-demo-worker")["Role"]["Arn"]
                by_hand = eks.create_pod_identity_association(
                    clusterName=cluster, namespace=DEMO_NAMESPACE, serviceAccount=account,
                    roleArn=other_role)["association"]["associationId"]
                page.goto(f"{base}/apps/{BROWSER_APP}/services/api")
                page.get_by_role("button", name="Plan", exact=True).click()
                blockers = page.locator("#blockers")
                expect(blockers).to_contain_text(f"is already bound to {other_role}")
                expect(blockers).to_contain_text("fix: keyless does not change bindings it does not own")
                expect(page.get_by_role("button", name="Apply", exact=True)).to_have_count(0)
                shot(page, "07-blocked")

                # The fix, then the plan again: its audit is on the page, as `keyless plan` prints it.
                eks.delete_pod_identity_association(clusterName=cluster, associationId=by_hand)
                page.get_by_role("button", name="Plan again", exact=True).click()
                expect(page.locator("#plan-text")).to_contain_text(f"+ cloud_binding {DEMO_NAMESPACE}/{account}")
                audit = page.locator("#plan-audit").get_by_role("row").filter(has_text=f":role/{BROWSER_ROLE}")
                expect(audit).to_contain_text("api")
                expect(audit).to_contain_text(re.compile(r"clean|error|warning|info"))
                shot(page, "08-plan")

                # Apply.
                page.get_by_role("button", name="Apply", exact=True).click()
                expect(page.locator("#deploy-status")).to_have_text("succeeded", timeout=120_000)
                expect(page.locator("#progress")).to_contain_text("actions done")
                shot(page, "09-applied")
                page.goto(f"{base}/apps/{BROWSER_APP}")
                expect(page.locator("#undeployed")).to_have_count(0)
                shot(page, "10-deployed")

                page.goto(f"{base}/apps/{BROWSER_APP}/status")
                row = page.get_by_role("row").filter(has_text=account)
                expect(row).to_contain_text(f":role/{BROWSER_ROLE}")
                expect(row).to_contain_text("in sync")
                shot(page, "11-status")
                assert pod_identity_roles(cluster, DEMO_NAMESPACE)[account].endswith(f":role/{BROWSER_ROLE}")

                # Disconnect: toggle it off, save, deploy again.
                page.goto(f"{base}/apps/{BROWSER_APP}/services/api")
                toggle.uncheck()
                section.get_by_role("button", name="Save").click()
                expect(page.locator("#saved pre")).to_contain_text("- - type: awsRole")
                expect(toggle).not_to_be_checked()
                plan_and_apply(page, base, f"- cloud_binding {DEMO_NAMESPACE}/{account}")
                page.goto(f"{base}/apps/{BROWSER_APP}/status")
                expect(page.locator("#bindings")).not_to_contain_text("Read the status now")  # loaded by htmx
                expect(page.get_by_role("main")).not_to_contain_text(BROWSER_ROLE)
                assert account not in pod_identity_roles(cluster, DEMO_NAMESPACE)

                page.goto(f"{base}/targets")
                expect(page.locator(f"#target-{EKS_TARGET}")).to_contain_text("ready")
                shot(page, "12-targets")
                page.goto(f"{base}/audit-log")
                expect(page.get_by_role("main")).to_contain_text("connection.detach")
                expect(page.get_by_role("main")).to_contain_text("connection.attach")
                shot(page, "13-audit-log")
                assert errors == []
            finally:
                browser.close()
    finally:
        store.close()


def test_a_form_posted_from_another_site_is_refused(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'k.db'}")
    _, secret = store.create_token("admin", Role.ADMIN, "test")
    with TestClient(create_app(store, {})) as client:
        page = client.get("/login")
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert csrf
        refused = client.post("/login", data={"token": secret, "csrf": csrf.group(1)},
                              headers={"Origin": "https://evil.example"}, follow_redirects=False)
        assert refused.status_code == 403
        assert "another site" in refused.text
        assert "keyless_session" not in refused.cookies
        same = client.post("/login", data={"token": secret, "csrf": csrf.group(1)},
                           headers={"Origin": "http://testserver"}, follow_redirects=False)
        assert same.status_code == 303


def test_an_expired_session_sends_htmx_to_the_login_page(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'k.db'}")
    with TestClient(create_app(store, {})) as client:
        response = client.get("/deploys/1/progress", headers={"HX-Request": "true",
                                                               "HX-Current-URL": "http://testserver/deploys/1"},
                              follow_redirects=False)
        assert response.status_code == 204
        assert response.headers["HX-Redirect"] == "/login?next=/deploys/1"


# --- importing an app ------------------------------------------------------------------------------


def test_an_admin_imports_a_porter_yaml_from_the_apps_page(dashboard: Dashboard) -> None:
    admin = dashboard.client(Role.ADMIN)
    page = admin.get("/").text
    assert "Import a porter.yaml" in page
    assert 'value="prod-eks"' in page
    text = "name: blog\nservices:\n  - name: web\n    type: web\n    port: 80\n"
    response = admin.post("/apps", data={"csrf": csrf_of(admin, "/"), "porter_yaml": text, "target": "prod-eks"})
    assert response.status_code == 303
    assert response.headers["location"] == "/apps/blog"
    stored = dashboard.store.get_app("blog")
    assert stored.porter_yaml == text
    assert stored.target_name == "prod-eks"
    assert dashboard.store.audit_events("app/blog")[0].actor.startswith("admin-person")


def test_an_invalid_import_shows_each_problem_with_its_line_and_keeps_the_text(dashboard: Dashboard) -> None:
    admin = dashboard.client(Role.ADMIN)
    text = "name: blog\nservices:\n  - name: web\n    type: web\n    connections:\n      - type: awsRole\n"
    response = admin.post("/apps", data={"csrf": csrf_of(admin, "/"), "porter_yaml": text})
    assert response.status_code == 422
    assert "porter.yaml:6:" in response.text
    assert "connections:" in response.text  # the pasted text is still in the form
    taken = admin.post("/apps", data={"csrf": csrf_of(admin, "/"), "porter_yaml": PORTER_YAML})
    assert taken.status_code == 409
    assert "already exists" in taken.text
    with pytest.raises(NotFound):
        dashboard.store.get_app("blog")


def test_only_admins_import(dashboard: Dashboard) -> None:
    deployer = dashboard.client(Role.DEPLOYER)
    assert "Import a porter.yaml" not in deployer.get("/").text
    refused = deployer.post("/apps", data={"csrf": csrf_of(deployer, "/"), "porter_yaml": PORTER_YAML})
    assert refused.status_code == 403


@pytest.mark.integration
def test_browser_connects_a_google_service_account_on_gke_and_deploys(
        chromium: str, sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    from lightkube import Client, KubeConfig
    from playwright.sync_api import expect, sync_playwright

    from keyless.federation import WORKLOAD_IDENTITY_USER_ROLE, workload_identity_member
    from keyless.porter import load_app
    from keyless.sandbox.porter import deploy_workloads
    from keyless.sandbox.stack import DEMO_NAMESPACE, GKE_CONTEXT, GKE_TARGET

    app_name = "dash-gke"
    email = sandbox[0].gcp.add_service_account("dash-gke-api")
    text = f"name: {app_name}\nservices:\n  - name: api\n    type: web\n    run: node index.js\n    port: 8080\n"
    store = Store.open(f"sqlite:///{tmp_path}/k.db")
    app = create_app(store, os.environ, files_dir=Path(env["KEYLESS_TARGETS"]).parent)
    plane = cast(ServerState, app.state.keyless).plane
    targets_file = Path(env["KEYLESS_TARGETS"])
    plane.import_targets(targets_file.read_text(), str(targets_file), "test")
    plane.import_app(text, None, GKE_TARGET, "test")
    _, secret = store.create_token("browser", Role.DEPLOYER, "test")
    kube = Client(KubeConfig.from_file(env["KUBECONFIG"]).get(context_name=GKE_CONTEXT), namespace=DEMO_NAMESPACE)
    deploy_workloads(kube, app_name, load_app(text.encode(), "porter.yaml", {}).app, DEMO_NAMESPACE)
    account = f"{app_name}-api"
    member = workload_identity_member("keyless-sandbox", DEMO_NAMESPACE, account)

    def members() -> set[str]:
        policy = sandbox[0].gcp.iam_policy(email)
        return {m for b in policy.get("bindings", []) if b["role"] == WORKLOAD_IDENTITY_USER_ROLE for m in b["members"]}

    try:
        with running_server(app) as base, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(30_000)
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
                page.goto(f"{base}/login")
                page.get_by_label("Token", exact=True).fill(secret)
                page.get_by_role("button", name="Log in").click()
                expect(page.get_by_role("heading", name="Apps", exact=True)).to_be_visible()

                page.goto(f"{base}/apps/{app_name}/services/api")
                section = page.locator("section#gcpServiceAccount")
                toggle = section.get_by_label("Enable the GCP Service Account Connection")
                expect(toggle).not_to_be_checked()
                toggle.check()
                section.get_by_label("Google service account email").fill(email)
                expect(section.locator(".infobox")).to_contain_text(member)  # the member keyless will add
                section.get_by_role("button", name="Save").click()
                expect(toggle).to_be_checked()
                expect(section.get_by_label("Google service account email")).to_have_value(email)
                page.screenshot(path=str(SCREENSHOTS / "14-gcp-service.png"), full_page=True)

                page.goto(f"{base}/apps/{app_name}")
                page.get_by_role("button", name="Plan", exact=True).click()
                expect(page.locator("#plan-text")).to_contain_text(f"+ cloud_binding {DEMO_NAMESPACE}/{account}")
                expect(page.locator("#plan-text")).to_contain_text("principal for direct grants: principal://")
                page.get_by_role("button", name="Apply", exact=True).click()
                expect(page.locator("#deploy-status")).to_have_text("succeeded", timeout=120_000)
                assert members() == {member}

                page.goto(f"{base}/apps/{app_name}/status")
                row = page.get_by_role("row").filter(has_text=account)
                expect(row).to_contain_text(email)
                expect(row).to_contain_text("in sync")
                expect(row).to_contain_text(f"subject/ns/{DEMO_NAMESPACE}/sa/{account}")
                page.screenshot(path=str(SCREENSHOTS / "15-gcp-status.png"), full_page=True)

                page.goto(f"{base}/apps/{app_name}/services/api")
                toggle.uncheck()
                section.get_by_role("button", name="Save").click()
                expect(toggle).not_to_be_checked()
                page.goto(f"{base}/apps/{app_name}")
                page.get_by_role("button", name="Plan", exact=True).click()
                expect(page.locator("#plan-text")).to_contain_text(f"- cloud_binding {DEMO_NAMESPACE}/{account}")
                page.get_by_role("button", name="Apply", exact=True).click()
                expect(page.locator("#deploy-status")).to_have_text("succeeded", timeout=120_000)
                assert members() == set()
                assert errors == []
            finally:
                browser.close()
    finally:
        store.close()
