"""Integration tests of the GCP sandbox, driven by google-auth over HTTPS, and in a subprocess for the pod side."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google.auth
import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import exceptions as auth_exceptions
from google.auth.transport.requests import AuthorizedSession, Request
from google.oauth2 import service_account
from virtual_time import VirtualTime

from keyless.sandbox.gcp import (
    DEMO_CLUSTER,
    DEMO_CLUSTER_OFF,
    DEMO_LOCATION,
    DEMO_PROJECT,
    DEMO_PROJECT_NUMBER,
    GcpDemoSeed,
    GcpSandbox,
)
from keyless.sandbox.knobs import KnobSettings, RateLimit
from keyless.sandbox.kube import GKE_POD_NAME_VARIABLE, KubeStandIn, gke_metadata_mutator
from keyless.sandbox.kube.admission import GkeMetadataRouting
from keyless.sandbox.stack import SandboxStack, kube_pod_lookup

pytestmark = pytest.mark.integration

DELAY = 30.0  # IAM propagation in this module, in virtual seconds: tests move the clock, never sleep for it
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
POOL = f"{DEMO_PROJECT}.svc.id.goog"
WI_USER = "roles/iam.workloadIdentityUser"
WEB = f"shop-web@{DEMO_PROJECT}.iam.gserviceaccount.com"
WORKER = f"shop-worker@{DEMO_PROJECT}.iam.gserviceaccount.com"
REPORTS = f"shop-reports@{DEMO_PROJECT}.iam.gserviceaccount.com"
RETIRED = f"shop-retired@{DEMO_PROJECT}.iam.gserviceaccount.com"
POD_SCRIPT = """
import google.auth
from google.auth.transport.requests import Request
credentials, project = google.auth.default()
credentials.refresh(Request())
print(project, credentials.service_account_email)
"""


# ---- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clock() -> VirtualTime:
    return VirtualTime()


@pytest.fixture(scope="module")
def sandbox(clock: VirtualTime) -> Iterator[GcpSandbox]:
    with GcpSandbox(propagation_delay=DELAY, clock=clock.clock) as running:
        yield running


@pytest.fixture(scope="module")
def seed(sandbox: GcpSandbox) -> GcpDemoSeed:
    return sandbox.seed_demo()


@pytest.fixture(scope="module")
def env(sandbox: GcpSandbox, seed: GcpDemoSeed) -> Iterator[dict[str, str]]:
    """The deployer's environment, as `keyless sandbox env` exports it, for the whole module."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in sandbox.env().items():
            patch.setenv(key, value)
        yield sandbox.env()


@pytest.fixture(scope="module")
def session(env: dict[str, str]) -> AuthorizedSession:
    credentials, _ = google.auth.default(scopes=SCOPES)
    return AuthorizedSession(credentials)


@pytest.fixture(scope="module")
def gke(sandbox: GcpSandbox, seed: GcpDemoSeed) -> Iterator[KubeStandIn]:
    """The cluster sandbox-gke: GKE's issuer, the metadata server routing, and the sandbox told about both."""
    with KubeStandIn(DEMO_CLUSTER, issuer_url=seed.cluster_issuer,
                     mutators=[gke_metadata_mutator(sandbox.metadata_host_for(DEMO_LOCATION, DEMO_CLUSTER))]
                     ) as cluster:
        sandbox.set_issuer_keys(lambda issuer: cluster.jwks() if issuer == cluster.issuer_url else None)
        sandbox.set_pod_lookup(kube_pod_lookup(cluster))
        cluster.ensure_namespace("shop")
        yield cluster


@pytest.fixture(autouse=True)
def _clean(sandbox: GcpSandbox) -> Iterator[None]:
    yield
    sandbox.reset_faults()


def url(env: dict[str, str], api: str, path: str) -> str:
    return env[f"CLOUDSDK_API_ENDPOINT_OVERRIDES_{api}"] + path


def sa_url(env: dict[str, str], email: str, suffix: str = "") -> str:
    return url(env, "IAM", f"v1/projects/-/serviceAccounts/{email}{suffix}")


def error_of(response: requests.Response) -> tuple[int, str, str]:
    error = response.json()["error"]
    assert error["code"] == response.status_code
    return response.status_code, error["status"], error["message"]


def set_policy(session: AuthorizedSession, env: dict[str, str], email: str, policy: dict[str, Any]
               ) -> requests.Response:
    return session.post(sa_url(env, email, ":setIamPolicy"), json={"policy": policy})


def get_policy(session: AuthorizedSession, env: dict[str, str], email: str) -> dict[str, Any]:
    response = session.post(sa_url(env, email, ":getIamPolicy"), json={"options": {"requestedPolicyVersion": 3}})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def new_account(sandbox: GcpSandbox) -> str:
    return sandbox.add_service_account(f"svc-{uuid.uuid4().hex[:10]}")


def kube_account(cluster: KubeStandIn, name: str, gsa: str | None) -> None:
    annotations = {"iam.gke.io/gcp-service-account": gsa} if gsa else {}
    response = requests.post(f"{cluster.url}/api/v1/namespaces/shop/serviceaccounts", timeout=10,
                             headers=cluster.admin_headers,
                             json={"metadata": {"name": name, "annotations": annotations}})
    assert response.status_code == 201, response.text


def running_pod(cluster: KubeStandIn, workload: str, ksa: str) -> str:
    """A Deployment's pod, named by its ReplicaSet (generateName), as Porter's services run."""
    cluster.seed_workload("shop", workload, service_account=ksa)
    pods = requests.get(f"{cluster.url}/api/v1/namespaces/shop/pods", timeout=10, headers=cluster.admin_headers,
                        params={"labelSelector": f"app.kubernetes.io/name={workload}"}).json()["items"]
    assert len(pods) == 1
    return str(pods[0]["metadata"]["name"])


def run_in_pod(sandbox: GcpSandbox, cluster: KubeStandIn, pod: str, tmp_path: Path
               ) -> subprocess.CompletedProcess[str]:
    pod_env = {**sandbox.pod_env(), **cluster.exec_env("shop", pod), "CLOUDSDK_CONFIG": str(tmp_path)}
    return subprocess.run([sys.executable, "-c", POD_SCRIPT], env=pod_env, capture_output=True, text=True,
                          timeout=60, check=False)


def metadata_get(sandbox: GcpSandbox, pod: str, path: str, *, flavor: bool = True) -> requests.Response:
    headers = {"Metadata-Flavor": "Google"} if flavor else {}
    return requests.get(f"http://{sandbox.metadata_host('shop', pod)}/computeMetadata/v1/{path}", headers=headers,
                        timeout=10)


def sts_exchange(env: dict[str, str], subject_token: str, *, audience: str, as_json: bool = False
                 ) -> requests.Response:
    fields = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "audience": audience,
              "subject_token": subject_token, "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
              "requested_token_type": "urn:ietf:params:oauth:token-type:access_token", "scope": SCOPES[0]}
    target = url(env, "STS", "v1/token")
    if as_json:
        camel = {"".join(w if i == 0 else w.title() for i, w in enumerate(k.split("_"))): v for k, v in fields.items()}
        return requests.post(target, json=camel, timeout=10)
    return requests.post(target, data=fields, timeout=10)


def generate_token(env: dict[str, str], bearer: str, email: str) -> requests.Response:
    return requests.post(url(env, "IAMCREDENTIALS", f"v1/projects/-/serviceAccounts/{email}:generateAccessToken"),
                         headers={"Authorization": f"Bearer {bearer}"}, json={"scope": SCOPES}, timeout=10)


# ---- the deployer's credentials ---------------------------------------------------------------------


def test_env_is_gclouds_overrides_and_a_real_key_file(sandbox: GcpSandbox, env: dict[str, str]) -> None:
    for api, prefix in (("IAM", "iam"), ("CONTAINER", "container"), ("CLOUDRESOURCEMANAGER", "crm"), ("STS", "sts"),
                        ("IAMCREDENTIALS", "iamcredentials")):
        assert env[f"CLOUDSDK_API_ENDPOINT_OVERRIDES_{api}"] == f"{sandbox.api_url}{prefix}/"
    assert env["GOOGLE_CLOUD_PROJECT"] == DEMO_PROJECT
    key = json.loads(Path(env["GOOGLE_APPLICATION_CREDENTIALS"]).read_text())
    assert key["type"] == "service_account"
    assert key["client_email"] == f"keyless-deployer@{DEMO_PROJECT}.iam.gserviceaccount.com"
    assert key["token_uri"] == f"{sandbox.api_url}token"
    assert key["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert sandbox.ca_bundle.read_bytes() in Path(env["REQUESTS_CA_BUNDLE"]).read_bytes()
    pod_env = sandbox.pod_env()
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in pod_env
    assert pod_env["CLOUDSDK_API_ENDPOINT_OVERRIDES_IAM"] == env["CLOUDSDK_API_ENDPOINT_OVERRIDES_IAM"]


def test_token_endpoint_grants_a_token_for_the_key_files_assertion(env: dict[str, str]) -> None:
    credentials, project = google.auth.default(scopes=SCOPES)
    assert isinstance(credentials, service_account.Credentials)
    assert project == DEMO_PROJECT
    credentials.refresh(Request())
    assert credentials.token.startswith("ya29.")
    assert credentials.expiry is not None


def test_token_endpoint_refuses_an_assertion_signed_by_another_key(env: dict[str, str]) -> None:
    info = json.loads(Path(env["GOOGLE_APPLICATION_CREDENTIALS"]).read_text())
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    info["private_key"] = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()).decode()
    forged = service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
    with pytest.raises(auth_exceptions.RefreshError, match="invalid_grant: Invalid JWT Signature"):
        forged.refresh(Request())


def test_token_endpoint_refuses_an_assertion_without_scope(env: dict[str, str]) -> None:
    credentials, _ = google.auth.default()  # Google refuses a service account token that asks for no scope
    with pytest.raises(auth_exceptions.RefreshError, match="invalid_scope"):
        credentials.refresh(Request())


def test_apis_need_a_valid_bearer_token(env: dict[str, str]) -> None:
    for headers in ({}, {"Authorization": "Bearer ya29.not-issued-here"}):
        response = requests.get(sa_url(env, WEB), headers=headers, timeout=10)
        status, code, message = error_of(response)
        assert (status, code) == (401, "UNAUTHENTICATED")
        assert "authentication credential" in message
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


# ---- IAM ------------------------------------------------------------------------------------------------


def test_service_account_by_email_and_by_unique_id(session: AuthorizedSession, env: dict[str, str]) -> None:
    account = session.get(sa_url(env, WEB)).json()
    assert account["name"] == f"projects/{DEMO_PROJECT}/serviceAccounts/{WEB}"
    assert account["projectId"] == DEMO_PROJECT
    assert account["email"] == WEB
    assert len(account["uniqueId"]) == 21
    assert account["oauth2ClientId"] == account["uniqueId"]
    assert "disabled" not in account  # IAM leaves it out for an enabled account
    by_id = session.get(url(env, "IAM", f"v1/projects/{DEMO_PROJECT}/serviceAccounts/{account['uniqueId']}"))
    assert by_id.json() == account


def test_missing_service_account_is_404(session: AuthorizedSession, env: dict[str, str]) -> None:
    missing = f"nobody-here@{DEMO_PROJECT}.iam.gserviceaccount.com"
    assert error_of(session.get(sa_url(env, missing))) == (404, "NOT_FOUND", "Unknown service account")
    assert error_of(session.post(sa_url(env, missing, ":getIamPolicy"), json={}))[:2] == (404, "NOT_FOUND")


def test_disabled_service_account_says_so(session: AuthorizedSession, env: dict[str, str]) -> None:
    assert session.get(sa_url(env, RETIRED)).json()["disabled"] is True


def test_policy_round_trip(session: AuthorizedSession, env: dict[str, str], sandbox: GcpSandbox) -> None:
    email = new_account(sandbox)
    empty = session.post(sa_url(env, email, ":getIamPolicy"), json={}).json()
    assert empty == {"version": 1, "etag": "ACAB"}  # no bindings key at all, as Google answers
    member = f"serviceAccount:{POOL}[shop/web]"
    written = set_policy(session, env, email, {**empty, "bindings": [
        {"role": WI_USER, "members": [member, member]},
        {"role": "roles/iam.serviceAccountUser", "members": []},  # dropped: no members
    ]})
    assert written.status_code == 200, written.text
    body = written.json()
    assert body["etag"] != "ACAB"
    assert body["bindings"] == [{"role": WI_USER, "members": [member]}]
    assert get_policy(session, env, email) == body == sandbox.iam_policy(email)


def test_stale_etag_is_409_aborted(session: AuthorizedSession, env: dict[str, str], sandbox: GcpSandbox) -> None:
    email = new_account(sandbox)
    read = get_policy(session, env, email)
    assert set_policy(session, env, email, {**read, "bindings": [{"role": WI_USER, "members": ["user:a@x.dev"]}]}
                      ).status_code == 200
    stale = set_policy(session, env, email, {**read, "bindings": [{"role": WI_USER, "members": ["user:b@x.dev"]}]})
    status, code, message = error_of(stale)
    assert (status, code) == (409, "ABORTED")
    assert message.startswith("There were concurrent policy changes. Please retry the whole read-modify-write")


def test_interleaved_writer_makes_the_write_stale(session: AuthorizedSession, env: dict[str, str],
                                                  sandbox: GcpSandbox) -> None:
    email = new_account(sandbox)
    sandbox.interleave(email, lambda: sandbox.add_member(email, WI_USER, "user:other@x.dev"))
    read = get_policy(session, env, email)
    mine = {"role": WI_USER, "members": [f"serviceAccount:{POOL}[shop/web]"]}
    assert error_of(set_policy(session, env, email, {**read, "bindings": [mine]}))[:2] == (409, "ABORTED")
    again = get_policy(session, env, email)
    assert again["bindings"] == [{"role": WI_USER, "members": ["user:other@x.dev"]}]
    merged = {"role": WI_USER, "members": [*again["bindings"][0]["members"], *mine["members"]]}
    assert set_policy(session, env, email, {**again, "bindings": [merged]}).status_code == 200
    assert sorted(sandbox.iam_policy(email)["bindings"][0]["members"]) == sorted(merged["members"])


def test_write_without_etag_overwrites_and_is_counted(session: AuthorizedSession, env: dict[str, str],
                                                      sandbox: GcpSandbox) -> None:
    email = new_account(sandbox)
    sandbox.add_member(email, WI_USER, "user:kept@x.dev")
    before = sandbox.blind_writes
    response = set_policy(session, env, email, {"bindings": [{"role": WI_USER, "members": ["user:new@x.dev"]}]})
    assert response.status_code == 200
    assert sandbox.iam_policy(email)["bindings"] == [{"role": WI_USER, "members": ["user:new@x.dev"]}]
    assert sandbox.blind_writes == before + 1


@pytest.mark.parametrize("member", [
    "bob@example.com",  # no type prefix
    "user:not-an-email",
    f"serviceAccount:{POOL}[Shop/web]",  # namespaces are DNS labels
    f"serviceAccount:{POOL}[shop/web_1]",
    f"serviceAccount:ghost-account@{DEMO_PROJECT}.iam.gserviceaccount.com",  # no such account
])
def test_bad_member_is_400_naming_it(session: AuthorizedSession, env: dict[str, str], sandbox: GcpSandbox,
                                     member: str) -> None:
    email = new_account(sandbox)
    response = set_policy(session, env, email, {"etag": "ACAB", "bindings": [{"role": WI_USER, "members": [member]}]})
    status, code, message = error_of(response)
    assert (status, code) == (400, "INVALID_ARGUMENT")
    assert member.split(":", 1)[-1] in message
    assert sandbox.iam_policy(email) == {"version": 1, "etag": "ACAB"}


def test_pool_without_a_workload_identity_cluster_does_not_exist(
        session: AuthorizedSession, env: dict[str, str], sandbox: GcpSandbox) -> None:
    email = new_account(sandbox)
    other = "other-project.svc.id.goog"
    response = set_policy(session, env, email, {"bindings": [{"role": WI_USER,
                                                              "members": [f"serviceAccount:{other}[shop/web]"]}]})
    assert error_of(response)[:2] == (400, "INVALID_ARGUMENT")
    assert f"Identity Pool does not exist ({other})" in error_of(response)[2]
    sandbox.set_workload_identity(DEMO_LOCATION, DEMO_CLUSTER, False)
    try:
        response = set_policy(session, env, email, {"bindings": [{"role": WI_USER,
                                                                  "members": [f"serviceAccount:{POOL}[shop/web]"]}]})
        assert f"Identity Pool does not exist ({POOL})" in error_of(response)[2]
    finally:
        sandbox.set_workload_identity(DEMO_LOCATION, DEMO_CLUSTER, True)
        sandbox.set_node_pool_mode(DEMO_LOCATION, DEMO_CLUSTER, "GKE_METADATA")


def test_every_kind_of_member_and_role_is_accepted(session: AuthorizedSession, env: dict[str, str],
                                                   sandbox: GcpSandbox) -> None:
    email = new_account(sandbox)
    members = ["user:ann@example.com", "group:ops@example.com", f"serviceAccount:{WEB}", "domain:example.com",
               f"principal://iam.googleapis.com/projects/{DEMO_PROJECT_NUMBER}/locations/global/workloadIdentityPools/"
               f"{POOL}/subject/ns/shop/sa/web",
               f"principalSet://iam.googleapis.com/projects/{DEMO_PROJECT_NUMBER}/locations/global/"
               f"workloadIdentityPools/{POOL}/namespace/shop",
               "allUsers", "allAuthenticatedUsers", "deleted:user:gone@example.com?uid=123456789",
               f"serviceAccount:{POOL}[shop/web.api]"]
    response = set_policy(session, env, email, {"bindings": [
        {"role": "roles/iam.serviceAccountTokenCreator", "members": members},
        {"role": f"projects/{DEMO_PROJECT}/roles/customReader", "members": ["user:ann@example.com"]},
    ]})
    assert response.status_code == 200, response.text
    assert sorted(response.json()["bindings"][0]["members"]) == sorted(members)
    bad_role = set_policy(session, env, email, {"bindings": [{"role": "owner", "members": ["user:ann@example.com"]}]})
    assert error_of(bad_role)[:2] == (400, "INVALID_ARGUMENT")


def test_keys_list_filters_by_type(session: AuthorizedSession, env: dict[str, str], seed: GcpDemoSeed) -> None:
    user_managed = session.get(sa_url(env, REPORTS, "/keys"), params={"keyTypes": "USER_MANAGED"}).json()["keys"]
    assert [k["keyType"] for k in user_managed] == ["USER_MANAGED"]
    key = user_managed[0]
    assert key["name"].startswith(f"projects/{DEMO_PROJECT}/serviceAccounts/{REPORTS}/keys/")
    assert {"validAfterTime", "validBeforeTime", "keyAlgorithm"} <= key.keys()
    everything = session.get(sa_url(env, REPORTS, "/keys")).json()["keys"]
    assert {k["keyType"] for k in everything} == {"USER_MANAGED", "SYSTEM_MANAGED"}
    assert session.get(sa_url(env, WEB, "/keys"), params={"keyTypes": "USER_MANAGED"}).json() == {}


# ---- GKE and Resource Manager -----------------------------------------------------------------------------


def test_cluster_with_workload_identity(session: AuthorizedSession, env: dict[str, str], seed: GcpDemoSeed) -> None:
    path = f"v1/projects/{DEMO_PROJECT}/locations/{DEMO_LOCATION}/clusters/{DEMO_CLUSTER}"
    cluster = session.get(url(env, "CONTAINER", path)).json()
    assert cluster["name"] == DEMO_CLUSTER
    assert cluster["location"] == DEMO_LOCATION
    assert cluster["status"] == "RUNNING"
    assert cluster["selfLink"] == f"https://container.googleapis.com/{path}"
    assert cluster["workloadIdentityConfig"] == {"workloadPool": POOL}
    assert [(p["name"], p["config"]["workloadMetadataConfig"]["mode"]) for p in cluster["nodePools"]] == [
        ("default-pool", "GKE_METADATA")]
    assert seed.cluster_issuer == f"https://container.googleapis.com/{path}"


def test_cluster_without_workload_identity_and_pool_modes(session: AuthorizedSession, env: dict[str, str],
                                                          sandbox: GcpSandbox) -> None:
    off = session.get(url(env, "CONTAINER", f"v1/projects/{DEMO_PROJECT}/locations/{DEMO_LOCATION}/clusters/"
                                            f"{DEMO_CLUSTER_OFF}")).json()
    assert "workloadIdentityConfig" not in off
    assert off["nodePools"][0]["config"]["workloadMetadataConfig"]["mode"] == "GCE_METADATA"
    sandbox.add_cluster("us-east1-b", "mixed", metadata_modes=("GKE_METADATA", "GCE_METADATA"))
    mixed = session.get(url(env, "CONTAINER", f"v1/projects/{DEMO_PROJECT}/locations/us-east1-b/clusters/mixed")).json()
    assert [p["config"]["workloadMetadataConfig"]["mode"] for p in mixed["nodePools"]] == ["GKE_METADATA",
                                                                                          "GCE_METADATA"]
    sandbox.set_node_pool_mode("us-east1-b", "mixed", "GCE_METADATA")
    again = session.get(url(env, "CONTAINER", f"v1/projects/{DEMO_PROJECT}/locations/-/clusters/mixed")).json()
    assert {p["config"]["workloadMetadataConfig"]["mode"] for p in again["nodePools"]} == {"GCE_METADATA"}


def test_missing_cluster_is_404(session: AuthorizedSession, env: dict[str, str], seed: GcpDemoSeed) -> None:
    response = session.get(url(env, "CONTAINER", f"v1/projects/{DEMO_PROJECT}/locations/{DEMO_LOCATION}/clusters/no"))
    assert error_of(response) == (404, "NOT_FOUND",
                                  f"Not found: projects/{DEMO_PROJECT}/locations/{DEMO_LOCATION}/clusters/no.")


def test_project_number_from_v1_and_v3(session: AuthorizedSession, env: dict[str, str]) -> None:
    v3 = session.get(url(env, "CLOUDRESOURCEMANAGER", f"v3/projects/{DEMO_PROJECT}")).json()
    assert (v3["name"], v3["projectId"], v3["state"]) == (f"projects/{DEMO_PROJECT_NUMBER}", DEMO_PROJECT, "ACTIVE")
    v1 = session.get(url(env, "CLOUDRESOURCEMANAGER", f"v1/projects/{DEMO_PROJECT}")).json()
    assert (v1["projectNumber"], v1["projectId"], v1["lifecycleState"]) == (DEMO_PROJECT_NUMBER, DEMO_PROJECT,
                                                                            "ACTIVE")
    unknown = session.get(url(env, "CLOUDRESOURCEMANAGER", "v3/projects/someone-elses-project"))
    assert error_of(unknown) == (403, "PERMISSION_DENIED", "The caller does not have permission")


def test_project_policy(session: AuthorizedSession, env: dict[str, str], seed: GcpDemoSeed) -> None:
    for version in ("v1", "v3"):
        policy = session.post(url(env, "CLOUDRESOURCEMANAGER", f"{version}/projects/{DEMO_PROJECT}:getIamPolicy"),
                              json={"options": {"requestedPolicyVersion": 3}}).json()
        editors = next(b["members"] for b in policy["bindings"] if b["role"] == "roles/editor")
        assert f"serviceAccount:{REPORTS}" in editors
        assert policy["etag"]


# ---- faults and counters ------------------------------------------------------------------------------------


def test_denied_permission_is_403_until_allowed(session: AuthorizedSession, env: dict[str, str],
                                               sandbox: GcpSandbox) -> None:
    email = new_account(sandbox)
    sandbox.deny("iam.serviceAccounts.setIamPolicy", "container.clusters.get")
    response = set_policy(session, env, email, {"etag": "ACAB", "bindings": []})
    assert error_of(response) == (403, "PERMISSION_DENIED", "Permission 'iam.serviceAccounts.setIamPolicy' denied on "
                                                            "resource (or it may not exist).")
    info = response.json()["error"]["details"][0]
    assert info["reason"] == "IAM_PERMISSION_DENIED"
    assert info["metadata"]["permission"] == "iam.serviceAccounts.setIamPolicy"
    cluster = session.get(url(env, "CONTAINER", f"v1/projects/{DEMO_PROJECT}/locations/{DEMO_LOCATION}/clusters/"
                                                f"{DEMO_CLUSTER}"))
    assert error_of(cluster)[:2] == (403, "PERMISSION_DENIED")
    assert session.get(sa_url(env, email)).status_code == 200  # only what was denied
    sandbox.allow("iam.serviceAccounts.setIamPolicy")
    assert set_policy(session, env, email, {"etag": "ACAB", "bindings": []}).status_code == 200
    assert error_of(session.get(url(env, "CONTAINER", f"v1/projects/{DEMO_PROJECT}/locations/{DEMO_LOCATION}/"
                                                      f"clusters/{DEMO_CLUSTER}")))[0] == 403


def test_fail_next_answers_429_and_503_with_googles_bodies(session: AuthorizedSession, env: dict[str, str],
                                                           sandbox: GcpSandbox) -> None:
    sandbox.fail_next(429, path_contains="/iam/", retry_after=7)
    throttled = session.get(sa_url(env, WEB))
    assert error_of(throttled)[:2] == (429, "RESOURCE_EXHAUSTED")
    assert throttled.headers["Retry-After"] == "7"
    sandbox.fail_next(503, count=2, path_contains=":getIamPolicy")
    assert session.get(sa_url(env, WEB)).status_code == 200  # another path: untouched
    for _ in range(2):
        assert error_of(session.post(sa_url(env, WEB, ":getIamPolicy"), json={}))[:2] == (503, "UNAVAILABLE")
    assert session.post(sa_url(env, WEB, ":getIamPolicy"), json={}).status_code == 200


def test_requests_are_recorded_with_their_prefix(session: AuthorizedSession, env: dict[str, str],
                                                 sandbox: GcpSandbox) -> None:
    before = len(sandbox.requests)
    session.get(sa_url(env, WORKER))
    session.get(url(env, "CLOUDRESOURCEMANAGER", f"v3/projects/{DEMO_PROJECT}"))
    assert sandbox.requests[before:] == [("GET", f"/iam/v1/projects/-/serviceAccounts/{WORKER}"),
                                         ("GET", f"/crm/v3/projects/{DEMO_PROJECT}")]


# ---- STS and IAM Credentials ------------------------------------------------------------------------------------


def test_sts_exchanges_a_gke_service_account_token(env: dict[str, str], gke: KubeStandIn,
                                                   seed: GcpDemoSeed) -> None:
    kube_account(gke, "sts-good", None)
    token = gke.mint_token("shop", "sts-good", POOL)
    audience = f"identitynamespace:{POOL}:{seed.cluster_issuer}"
    for as_json in (False, True):
        response = sts_exchange(env, token, audience=audience, as_json=as_json)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["access_token"].startswith("ya29.")
        assert body["token_type"] == "Bearer"
        assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
        assert 0 < body["expires_in"] <= 3600


def test_sts_refuses_the_wrong_audience(env: dict[str, str], gke: KubeStandIn, seed: GcpDemoSeed) -> None:
    kube_account(gke, "sts-aud", None)
    audience = f"identitynamespace:{POOL}:{seed.cluster_issuer}"
    response = sts_exchange(env, gke.mint_token("shop", "sts-aud", "sts.amazonaws.com"), audience=audience)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert POOL in response.json()["error_description"]
    other_pool = sts_exchange(env, gke.mint_token("shop", "sts-aud", POOL),
                              audience=f"identitynamespace:nope-project.svc.id.goog:{seed.cluster_issuer}")
    assert (other_pool.status_code, other_pool.json()["error"]) == (400, "invalid_target")


def test_sts_refuses_a_token_of_another_issuer(env: dict[str, str], seed: GcpDemoSeed, gke: KubeStandIn) -> None:
    with KubeStandIn("elsewhere") as elsewhere:
        elsewhere.ensure_namespace("shop")
        kube_account(elsewhere, "web", None)
        response = sts_exchange(env, elsewhere.mint_token("shop", "web", POOL),
                                audience=f"identitynamespace:{POOL}:{seed.cluster_issuer}")
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")
    assert "issuer" in response.json()["error_description"]


def test_sts_refuses_a_bad_signature(env: dict[str, str], gke: KubeStandIn, seed: GcpDemoSeed) -> None:
    kube_account(gke, "sts-sig", None)
    claims = jwt.decode(gke.mint_token("shop", "sts-sig", POOL), options={"verify_signature": False})
    forged = jwt.encode(claims, rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm="RS256",
                        headers={"kid": gke.jwks()["keys"][0]["kid"]})
    response = sts_exchange(env, forged, audience=f"identitynamespace:{POOL}:{seed.cluster_issuer}")
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")
    assert "signature" in response.json()["error_description"]


def test_generate_access_token_waits_for_iam_propagation(session: AuthorizedSession, env: dict[str, str],
                                                         sandbox: GcpSandbox, gke: KubeStandIn, seed: GcpDemoSeed,
                                                         clock: VirtualTime) -> None:
    email = new_account(sandbox)
    kube_account(gke, "impersonator", None)
    member = f"serviceAccount:{POOL}[shop/impersonator]"
    sts = sts_exchange(env, gke.mint_token("shop", "impersonator", POOL),
                       audience=f"identitynamespace:{POOL}:{seed.cluster_issuer}").json()["access_token"]
    assert error_of(generate_token(env, sts, email))[:2] == (403, "PERMISSION_DENIED")
    read = get_policy(session, env, email)
    assert set_policy(session, env, email, {**read, "bindings": [{"role": WI_USER, "members": [member]}]}
                      ).status_code == 200
    clock.sleep(DELAY - 1)
    early = generate_token(env, sts, email)
    assert error_of(early) == (403, "PERMISSION_DENIED", "Permission 'iam.serviceAccounts.getAccessToken' denied on "
                                                         "resource (or it may not exist).")
    clock.sleep(1)
    granted = generate_token(env, sts, email)
    assert granted.status_code == 200, granted.text
    assert granted.json()["expireTime"].endswith("Z")
    info = requests.get(f"{sandbox.api_url}tokeninfo", params={"access_token": granted.json()["accessToken"]},
                        timeout=10).json()
    assert info["email"] == email
    # The impersonated account's token is not the deployer: it may not read IAM.
    as_gsa = requests.get(sa_url(env, WEB), headers={"Authorization": f"Bearer {granted.json()['accessToken']}"},
                          timeout=10)
    assert as_gsa.status_code == 403


def test_generate_access_token_for_missing_and_disabled_accounts(env: dict[str, str], sandbox: GcpSandbox,
                                                                 clock: VirtualTime) -> None:
    credentials, _ = google.auth.default(scopes=SCOPES)
    credentials.refresh(Request())
    missing = generate_token(env, credentials.token, f"nobody-here@{DEMO_PROJECT}.iam.gserviceaccount.com")
    assert error_of(missing)[:2] == (404, "NOT_FOUND")
    sandbox.add_member(RETIRED, WI_USER, f"serviceAccount:{POOL}[shop/retired]")
    clock.sleep(DELAY)
    disabled = generate_token(env, credentials.token, RETIRED)
    assert error_of(disabled)[:2] == (400, "FAILED_PRECONDITION")


# ---- the GKE metadata server, as a pod's google-auth sees it -----------------------------------------------------


def test_metadata_server_needs_the_metadata_flavor_header(sandbox: GcpSandbox, gke: KubeStandIn) -> None:
    kube_account(gke, "flavor", None)
    pod = running_pod(gke, "flavor", "flavor")
    refused = metadata_get(sandbox, pod, "project/project-id", flavor=False)
    assert refused.status_code == 403
    answered = metadata_get(sandbox, pod, "project/project-id")
    assert (answered.status_code, answered.text, answered.headers["Metadata-Flavor"]) == (200, DEMO_PROJECT, "Google")
    assert metadata_get(sandbox, pod, "project/numeric-project-id").text == DEMO_PROJECT_NUMBER


def test_pods_of_controllers_name_themselves_in_the_metadata_host(sandbox: GcpSandbox, gke: KubeStandIn) -> None:
    kube_account(gke, "named", None)
    pod = running_pod(gke, "named", "named")  # generateName: no name at admission
    env = gke.exec_env("shop", pod)
    assert env["GCE_METADATA_HOST"] == env["GCE_METADATA_IP"] == sandbox.metadata_host("shop", pod)
    assert env[GKE_POD_NAME_VARIABLE] == pod


def test_metadata_routing_keeps_the_workloads_value_and_skips_other_pools(sandbox: GcpSandbox) -> None:
    routing = GkeMetadataRouting(sandbox.metadata_host_for(DEMO_LOCATION, DEMO_CLUSTER))
    pod = {"metadata": {"name": "p", "namespace": "shop"},
           "spec": {"containers": [{"name": "app", "env": [{"name": "GCE_METADATA_HOST", "value": "mine:80"}]}]}}
    env = routing(pod, None, DEMO_CLUSTER)["spec"]["containers"][0]["env"]
    assert {e["name"]: e.get("value") for e in env} == {"GCE_METADATA_HOST": "mine:80",
                                                         "GCE_METADATA_IP": sandbox.metadata_host("shop", "p")}
    off = GkeMetadataRouting(sandbox.metadata_host_for(DEMO_LOCATION, DEMO_CLUSTER_OFF))
    plain = {"metadata": {"name": "p", "namespace": "shop"}, "spec": {"containers": [{"name": "app"}]}}
    assert off(json.loads(json.dumps(plain)), None, DEMO_CLUSTER_OFF) == plain


def test_pod_without_the_annotation_gets_no_token(sandbox: GcpSandbox, gke: KubeStandIn, clock: VirtualTime,
                                                  tmp_path: Path) -> None:
    sandbox.add_member(WORKER, WI_USER, f"serviceAccount:{POOL}[shop/no-annotation]")
    clock.sleep(DELAY)
    kube_account(gke, "no-annotation", None)
    pod = running_pod(gke, "no-annotation", "no-annotation")
    assert metadata_get(sandbox, pod, "instance/service-accounts/default/email").text == POOL
    result = run_in_pod(sandbox, gke, pod, tmp_path)
    assert result.returncode != 0
    assert "iam.gke.io/gcp-service-account" in result.stderr
    assert metadata_get(sandbox, pod, "instance/service-accounts/default/token").status_code == 403


def test_pod_without_the_binding_gets_no_token(sandbox: GcpSandbox, gke: KubeStandIn, clock: VirtualTime,
                                               tmp_path: Path) -> None:
    email = new_account(sandbox)
    kube_account(gke, "no-binding", email)
    pod = running_pod(gke, "no-binding", "no-binding")
    result = run_in_pod(sandbox, gke, pod, tmp_path)
    assert result.returncode != 0
    assert "iam.serviceAccounts.getAccessToken" in result.stderr
    assert "roles/iam.workloadIdentityUser" in result.stderr
    sandbox.add_member(email, WI_USER, f"serviceAccount:{POOL}[shop/no-binding]")
    clock.sleep(DELAY - 1)  # granted, not yet propagated
    assert metadata_get(sandbox, pod, "instance/service-accounts/default/token").status_code == 403


def test_pod_with_both_halves_gets_the_gsas_token(sandbox: GcpSandbox, gke: KubeStandIn, clock: VirtualTime,
                                                  tmp_path: Path) -> None:
    email = new_account(sandbox)
    kube_account(gke, "both", email)
    sandbox.add_member(email, WI_USER, f"serviceAccount:{POOL}[shop/both]")
    clock.sleep(DELAY)
    pod = running_pod(gke, "both", "both")
    result = run_in_pod(sandbox, gke, pod, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [DEMO_PROJECT, email]
    token = metadata_get(sandbox, pod, "instance/service-accounts/default/token").json()
    assert token["token_type"] == "Bearer"
    assert 0 < token["expires_in"] <= 3600
    info = requests.get(f"{sandbox.api_url}tokeninfo", params={"access_token": token["access_token"]},
                        timeout=10, verify=str(sandbox.ca_bundle)).json()
    assert info["email"] == email


# ---- the whole sandbox: the stack's wiring ------------------------------------------------------------------------


def test_stack_wires_sandbox_gke_to_the_gcp_stand_in(tmp_path: Path) -> None:
    stack = SandboxStack(tmp_path / "stack", association_delay=0.0)
    state = stack.start()
    try:
        assert stack.gke is not None
        assert state.env["CLOUDSDK_API_ENDPOINT_OVERRIDES_IAM"] == f"{stack.gcp.api_url}iam/"
        assert state.env["GOOGLE_APPLICATION_CREDENTIALS"] == str(stack.gcp.key_file)
        # One CA signs Azure and GCP, so the one REQUESTS_CA_BUNDLE trusts both.
        assert stack.azure.ca_bundle.read_bytes() == stack.gcp.ca_bundle.read_bytes()
        assert stack.gcp.ca_bundle.read_bytes() in Path(state.pod_env["REQUESTS_CA_BUNDLE"]).read_bytes()
        targets = Path(state.env["KEYLESS_TARGETS"]).read_text()
        assert "  sandbox-gke:\n    cloud: gcp\n    project: keyless-sandbox\n    location: us-central1\n" in targets
        assert stack.gke.issuer_url == stack.gcp.cluster_issuer(DEMO_LOCATION, DEMO_CLUSTER)
        kube_account(stack.gke, "stack-web", WEB)
        stack.gcp.add_member(WEB, WI_USER, f"serviceAccount:{POOL}[shop/stack-web]")
        pod = running_pod(stack.gke, "stack-web", "stack-web")
        pod_env = {**state.pod_env, **stack.exec_env("shop", pod, "sandbox-gke"), "CLOUDSDK_CONFIG": str(tmp_path)}
        result = subprocess.run([sys.executable, "-c", POD_SCRIPT], env=pod_env, capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [DEMO_PROJECT, WEB]
    finally:
        stack.stop()


# ---- knobs: IAM quotas, lost answers, counters -------------------------------------------------------------


def test_iam_quotas_answer_429_resource_exhausted_and_refill_on_the_sandbox_clock(
        sandbox: GcpSandbox, session: AuthorizedSession, env: dict[str, str], clock: VirtualTime) -> None:
    email = new_account(sandbox)
    sandbox.knobs.configure(KnobSettings(rate_limits={"gcp-iam-read": RateLimit(1.0, burst=1),
                                                      "gcp-iam-write": RateLimit(0.5, burst=1)}))
    try:
        policy = get_policy(session, env, email)
        throttled = session.post(sa_url(env, email, ":getIamPolicy"), json={})
        status, name, message = error_of(throttled)
        assert (status, name) == (429, "RESOURCE_EXHAUSTED")
        assert "'Read requests'" in message
        assert throttled.headers["Retry-After"] == "1"
        [info] = throttled.json()["error"]["details"]
        assert (info["@type"], info["reason"]) == ("type.googleapis.com/google.rpc.ErrorInfo", "RATE_LIMIT_EXCEEDED")
        assert set_policy(session, env, email, policy).status_code == 200  # writes draw on their own bucket
        refused = set_policy(session, env, email, policy)
        assert error_of(refused)[:2] == (429, "RESOURCE_EXHAUSTED")
        assert "'Write requests'" in error_of(refused)[2]
        assert refused.headers["Retry-After"] == "2"
        clock.sleep(1.0)  # the buckets refill on the sandbox's clock, not the wall's
        assert session.post(sa_url(env, email, ":getIamPolicy"), json={}).status_code == 200
    finally:
        sandbox.knobs.configure(KnobSettings())


def test_a_lost_set_iam_policy_answer_leaves_the_policy_written(
        sandbox: GcpSandbox, session: AuthorizedSession, env: dict[str, str]) -> None:
    email = new_account(sandbox)
    policy = get_policy(session, env, email)
    member = "serviceAccount:keyless-sandbox.svc.id.goog[shop/lost]"
    policy["bindings"] = [{"role": "roles/iam.workloadIdentityUser", "members": [member]}]
    sandbox.knobs.lose_next(1, match=(":setIamPolicy",))
    assert error_of(set_policy(session, env, email, policy))[:2] == (500, "INTERNAL")
    assert member in json.dumps(sandbox.iam_policy(email))


def test_sts_throttles_in_oauth_words_and_calls_are_counted_by_google_method(
        sandbox: GcpSandbox, session: AuthorizedSession, env: dict[str, str]) -> None:
    control = f"{sandbox.api_url}_sandbox/"
    verify = str(sandbox.ca_bundle)
    requests.delete(f"{control}calls", verify=verify, timeout=10).raise_for_status()
    email = new_account(sandbox)
    get_policy(session, env, email)
    session.get(sa_url(env, email))
    armed = requests.post(f"{control}faults/throttle", json={"count": 1, "match": "sts.token", "retryAfter": 5},
                          verify=verify, timeout=10)
    assert armed.json()["throttleRemaining"] == 1
    throttled = requests.post(url(env, "STS", "v1/token"), data={"grant_type": "x"}, timeout=10)
    assert throttled.status_code == 429
    assert throttled.json()["error"] == "rate_limit_exceeded"
    assert throttled.headers["Retry-After"] == "5"
    counted = requests.get(f"{control}calls", verify=verify, timeout=10).json()["operations"]
    assert counted["iam.projects.serviceAccounts.getIamPolicy"] == 1
    assert counted["iam.projects.serviceAccounts.get"] == 1
    assert counted["sts.token"] == 1
