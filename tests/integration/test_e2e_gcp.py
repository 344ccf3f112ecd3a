"""End to end on GKE: the keyless CLI drives google-auth and lightkube against the sandbox, and a pod proves it.

The proof runs `keyless doctor` with the pod's environment: google.auth.default() finds the sandbox's GKE metadata
server through GCE_METADATA_HOST (set at admission, as GKE's metadata interception would reach the pod), which
hands out the Google service account's token only when the member AND the annotation are in place."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from e2e_support import KILL_POINTS, Dying, Killed, Sandbox, run_cli
from lightkube import Client, KubeConfig
from lightkube.resources.core_v1 import Pod, ServiceAccount

from keyless.federation import WORKLOAD_IDENTITY_USER_ROLE, workload_identity_member
from keyless.porter import load_app
from keyless.sandbox import control
from keyless.sandbox.gcp.demo import DEMO_PROJECT
from keyless.sandbox.porter import deploy_workloads
from keyless.sandbox.stack import GKE_CONTEXT, GKE_TARGET

pytestmark = pytest.mark.integration

ANNOTATION = "iam.gke.io/gcp-service-account"
run = run_cli


def porter_yaml(tmp_path: Path, app: str, services: dict[str, str | None]) -> Path:
    lines = [f"name: {app}", "services:"]
    for service, email in services.items():
        lines += [f"  - name: {service}", "    type: worker"]
        if email:
            lines += ["    connections:", "      - type: gcpServiceAccount", f"        serviceAccountEmail: {email}"]
    path = tmp_path / "porter.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def kube(env: dict[str, str]) -> Client:
    return Client(KubeConfig.from_file(env["KUBECONFIG"]).get(context_name=GKE_CONTEXT), namespace="shop")


def deploy(env: dict[str, str], path: Path) -> None:
    loaded = load_app(path.read_bytes(), str(path), {})
    assert loaded.app.name
    deploy_workloads(kube(env), loaded.app.name, loaded.app, "shop")


def gsa(sandbox: Sandbox, name: str) -> str:
    return sandbox[0].gcp.add_service_account(name)


def members(sandbox: Sandbox, email: str) -> set[str]:
    policy = sandbox[0].gcp.iam_policy(email)
    return {m for b in policy.get("bindings", []) if b["role"] == WORKLOAD_IDENTITY_USER_ROLE for m in b["members"]}


def member(account: str) -> str:
    return workload_identity_member(DEMO_PROJECT, "shop", account)


def doctor_in_pod(sandbox: Sandbox, env: dict[str, str], app: str) -> dict[str, Any]:
    pods = [p for p in kube(env).list(Pod, labels={"porter.run/app-name": app})
            if p.status is not None and p.status.phase == "Running" and p.metadata is not None
            and p.metadata.deletionTimestamp is None]
    assert pods
    newest = max(pods, key=lambda p: str(p.metadata.creationTimestamp if p.metadata else ""))
    assert newest.metadata is not None
    assert newest.metadata.name
    result = control.exec_in_pod(sandbox[1], "shop", newest.metadata.name,
                                 [sys.executable, "-m", "keyless", "doctor", "--format", "json"], capture=True,
                                 context=GKE_CONTEXT)
    checks = json.loads(result.stdout)
    found: dict[str, Any] = next(c for c in checks if c["cloud"] == "gcp")
    return found


def test_apply_binds_annotates_proves_and_the_pod_acts_as_its_google_service_account(
        sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    email = gsa(sandbox, "e2e-gke-api")
    path = porter_yaml(tmp_path, "gk-one", {"api": email})
    deploy(env, path)
    code, output = run("plan", "-f", str(path), "--target", GKE_TARGET)
    assert code == 0, output
    assert "+ cloud_binding shop/gk-one-api" in output
    assert ("principal for direct grants: principal://iam.googleapis.com/projects/684920371145/locations/global/"
            "workloadIdentityPools/keyless-sandbox.svc.id.goog/subject/ns/shop/sa/gk-one-api") in output
    code, output = run("apply", "-f", str(path), "--target", GKE_TARGET, "--auto-approve")
    assert code == 0, output
    assert "token exchange works" in output
    assert members(sandbox, email) == {member("gk-one-api")}
    account = kube(env).get(ServiceAccount, name="gk-one-api")
    assert account.metadata is not None
    assert account.metadata.annotations is not None
    assert account.metadata.annotations[ANNOTATION] == email

    check = doctor_in_pod(sandbox, env, "gk-one")
    assert check["verdict"] == "ok", check
    assert check["details"]["email"] == email

    code, output = run("apply", "-f", str(path), "--target", GKE_TARGET, "--auto-approve")
    assert code == 0, output
    assert "No changes" in output


def test_status_says_which_half_is_missing(sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    email = gsa(sandbox, "e2e-gke-half")
    path = porter_yaml(tmp_path, "gk-half", {"api": email})
    assert run("apply", "-f", str(path), "--target", GKE_TARGET, "--auto-approve")[0] == 0
    client = kube(env)
    # The annotation edited away by hand: the member alone gives pods nothing.
    client.patch(ServiceAccount, "gk-half-api", {"metadata": {"annotations": {ANNOTATION: None}}})
    code, output = run("status", "--target", GKE_TARGET, "-f", str(path), "--format", "json")
    assert code == 0, output
    (row,) = json.loads(output)
    assert f"lacks annotation {ANNOTATION}={email}" in row["drift"]
    assert run("apply", "-f", str(path), "--target", GKE_TARGET, "--auto-approve")[0] == 0
    # The member removed by hand: the annotation alone gives pods nothing either.
    sandbox_policy_without_member(sandbox, email, member("gk-half-api"))
    code, output = run("status", "--target", GKE_TARGET, "-f", str(path), "--format", "json")
    (row,) = json.loads(output)
    assert "IAM policy binding missing" in row["drift"]


def sandbox_policy_without_member(sandbox: Sandbox, email: str, gone: str) -> None:
    """Someone removes the member by hand, through IAM's own API (google-auth over HTTPS)."""
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
    root = sandbox[1].env["CLOUDSDK_API_ENDPOINT_OVERRIDES_IAM"]
    url = f"{root}v1/projects/-/serviceAccounts/{email}"
    policy = session.post(f"{url}:getIamPolicy", json={}).json()
    for item in policy.get("bindings", []):
        item["members"] = [m for m in item["members"] if m != gone]
    policy["bindings"] = [b for b in policy.get("bindings", []) if b["members"]]
    assert session.post(f"{url}:setIamPolicy", json={"policy": policy}).status_code == 200


def test_removing_the_service_removes_its_member_and_nothing_else(
        sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    email = gsa(sandbox, "e2e-gke-shared")
    path = porter_yaml(tmp_path, "gk-two", {"api": email, "worker": email})
    deploy(env, path)
    before = len(sandbox[0].gcp.requests)
    assert run("apply", "-f", str(path), "--target", GKE_TARGET, "--auto-approve")[0] == 0
    writes = [p for _, p in sandbox[0].gcp.requests[before:] if p.endswith(":setIamPolicy")]
    assert len(writes) == 1  # two services on one account: one write
    sandbox[0].gcp.add_member(email, WORKLOAD_IDENTITY_USER_ROLE, "user:ops@example.com")
    path = porter_yaml(tmp_path, "gk-two", {"api": email})
    code, output = run("apply", "-f", str(path), "--target", GKE_TARGET, "--auto-approve")
    assert code == 0, output
    assert members(sandbox, email) == {member("gk-two-api"), "user:ops@example.com"}


def test_a_malformed_email_is_bad_input_that_never_reaches_google(
        sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    path = porter_yaml(tmp_path, "gk-bad", {"api": "not-an-email"})
    before = len(sandbox[0].gcp.requests)
    code, output = run("plan", "-f", str(path), "--target", GKE_TARGET)
    assert code == 2, output
    assert f"{path}:7:30: 'not-an-email' is not a Google service account email" in output
    assert sandbox[0].gcp.requests[before:] == []


def test_a_cluster_without_the_workload_pool_blocks_with_the_fix(
        sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    stack, _ = sandbox
    location = "us-central1"
    stack.gcp.set_workload_identity(location, "sandbox-gke", False)
    try:
        path = porter_yaml(tmp_path, "gk-off", {"api": gsa(sandbox, "e2e-gke-off")})
        code, output = run("plan", "-f", str(path), "--target", GKE_TARGET)
    finally:
        stack.gcp.set_workload_identity(location, "sandbox-gke", True)
        stack.gcp.set_node_pool_mode(location, "sandbox-gke", "GKE_METADATA")
    assert code == 3, output
    assert "--workload-pool=keyless-sandbox.svc.id.goog" in output


def test_a_disabled_account_blocks_naming_it(sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    email = sandbox[0].gcp.add_service_account("e2e-gke-disabled", disabled=True)
    code, output = run("plan", "-f", str(porter_yaml(tmp_path, "gk-dis", {"api": email})), "--target", GKE_TARGET)
    assert code == 3, output
    assert email in output
    assert "disabled" in output


def test_audit_flags_the_broad_account_with_its_key(sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    broad = f"shop-reports@{DEMO_PROJECT}.iam.gserviceaccount.com"
    path = porter_yaml(tmp_path, "gk-audit", {"reports": broad})
    code, output = run("audit", "-f", str(path), "--target", GKE_TARGET, "--format", "json")
    assert code == 0, output
    ids = {f["rule"] for c in json.loads(output)["connections"] for f in c["findings"]}
    assert {"GCP-BASIC-ROLE", "GCP-USER-MANAGED-KEY"} <= ids
    code, _ = run("audit", "-f", str(path), "--target", GKE_TARGET, "--fail-on", "error")
    assert code != 0


# ---- an apply killed at any step leaves no member that outlives its connection --------------------------


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_no_member_survives_its_connection_after_an_apply_killed_at_any_step(
        sandbox: Sandbox, env: dict[str, str], tmp_path: Path, kill_at: str) -> None:
    from keyless import engine
    from keyless.inputs import load_targets_file

    app = f"gk-kill-{KILL_POINTS.index(kill_at)}"
    email = gsa(sandbox, f"e2e-gke-kill-{KILL_POINTS.index(kill_at)}")
    bound = porter_yaml(tmp_path, app, {"api": email})
    deploy(env, bound)
    target = load_targets_file(Path(env["KEYLESS_TARGETS"]), env).get(GKE_TARGET)
    provider, kube = engine.connect(GKE_TARGET, target)
    planned = engine.plan_app(engine.PlanInput(load_app(bound.read_bytes(), str(bound), {}), app, GKE_TARGET, target),
                              provider, kube)
    with pytest.raises(Killed):
        engine.apply_plan(planned.plan, Dying(provider, kill_at), Dying(kube, kill_at))  # type: ignore[arg-type]

    # The connection is taken out of porter.yaml, and keyless runs again (a new process).
    unbound = porter_yaml(tmp_path, app, {"api": None})
    code, output = run("apply", "-f", str(unbound), "--target", GKE_TARGET, "--auto-approve")
    assert code == 0, output
    assert member(f"{app}-api") not in members(sandbox, email), output
    code, output = run("plan", "-f", str(unbound), "--target", GKE_TARGET)
    assert code == 0, output
    assert "No changes" in output, output
