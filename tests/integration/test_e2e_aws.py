"""End to end on the sandbox: the keyless CLI drives real boto3 and lightkube against the AWS and EKS stand-ins."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import boto3
import httpx
import pytest
from e2e_support import Sandbox, run_cli
from lightkube import Client, KubeConfig
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Pod, ServiceAccount
from virtual_time import VirtualTime

from keyless import engine
from keyless.inputs import load_targets_file
from keyless.names import lock_lease_name
from keyless.ownership import lock_labels
from keyless.porter import load_app
from keyless.sandbox import control
from keyless.sandbox.porter import deploy_workloads
from keyless.sandbox.stack import EKS_TARGET

pytestmark = pytest.mark.integration


def porter_yaml(tmp_path: Path, app: str, services: dict[str, str | None], name: str = "porter.yaml") -> Path:
    """A porter.yaml whose services are web services bound to the given role (None: no connection)."""
    lines = [f"name: {app}", "services:"]
    for service, role in services.items():
        lines += [f"  - name: {service}", "    type: web", "    port: 8080"]
        if role:
            lines += ["    connections:", "      - type: awsRole", f"        role: {role}"]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


run = run_cli


def deploy(env: dict[str, str], path: Path, namespace: str = "shop") -> Client:
    client = Client(KubeConfig.from_file(env["KUBECONFIG"]), namespace=namespace)
    loaded = load_app(path.read_bytes(), str(path), {})
    assert loaded.app.name
    deploy_workloads(client, loaded.app.name, loaded.app, namespace)
    return client


def associations(cluster: str, namespace: str = "shop") -> dict[str, str]:
    client = boto3.client("eks")
    found = {}
    for page in client.get_paginator("list_pod_identity_associations").paginate(clusterName=cluster,
                                                                                namespace=namespace):
        for summary in page["associations"]:
            described = client.describe_pod_identity_association(
                clusterName=cluster, associationId=summary["associationId"])["association"]
            found[summary["serviceAccount"]] = described["roleArn"]
    return found


def _eks_writes(env: dict[str, str]) -> int:
    counts = httpx.get(f"{env['AWS_ENDPOINT_URL_EKS']}/_sandbox/requests", timeout=10).json()
    return sum(n for method, n in counts.items() if method != "GET")


def test_apply_binds_then_second_run_makes_no_changes(
        sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    path = porter_yaml(tmp_path, "e2e-one", {"api": "keyless-demo-api", "web": None})
    client = deploy(env, path)

    code, output = run("plan", "-f", str(path), "--target", EKS_TARGET)
    assert code == 0, output
    assert "+ cloud_binding shop/e2e-one-api" in output
    assert "e2e-one-web" not in output  # no connection: keyless leaves it alone

    code, output = run("apply", "-f", str(path), "--target", EKS_TARGET, "--auto-approve")
    assert code == 0, output
    assert associations("keyless-sandbox")["e2e-one-api"].endswith(":role/keyless-demo-api")
    account = client.get(ServiceAccount, name="e2e-one-api")
    assert account.metadata is not None
    assert account.metadata.labels is not None
    assert account.metadata.labels["app.kubernetes.io/managed-by"] == "keyless"

    stack, _ = sandbox
    assert stack.eks is not None
    stack.eks.wait_idle()
    kube_version = stack.eks.api.resource_version
    kube_calls = len(stack.eks.api.knobs.history())
    eks_writes = _eks_writes(env)
    code, output = run("apply", "-f", str(path), "--target", EKS_TARGET, "--auto-approve")
    assert code == 0, output
    assert "No changes" in output
    assert _eks_writes(env) == eks_writes  # the second run made no write call to EKS...
    stack.eks.wait_idle()
    # ...and to Kubernetes only the two of its apply lock: taken (the Lease stays after the first run), released.
    writes = [c.operation for c in stack.eks.api.knobs.history()[kube_calls:] if c.write]
    assert writes == ["update leases", "update leases"]
    assert stack.eks.api.resource_version == kube_version + 2

    code, output = run("status", "--target", EKS_TARGET, "--app", "e2e-one", "--format", "json")
    assert code == 0, output
    rows = {r["service"]: r for r in json.loads(output)}
    assert rows["api"]["identity"].endswith(":role/keyless-demo-api")
    assert rows["api"]["drift"] is None


def test_pod_created_after_apply_gets_credentials_for_its_role(
        sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    path = porter_yaml(tmp_path, "e2e-pod", {"api": "keyless-demo-api"})
    client = deploy(env, path)
    code, output = run("apply", "-f", str(path), "--target", EKS_TARGET, "--auto-approve")
    assert code == 0, output
    pods = [p for p in client.list(Pod, labels={"porter.run/app-name": "e2e-pod"})
            if p.status is not None and p.status.phase == "Running"]
    assert pods
    pod = pods[0]
    assert pod.metadata is not None
    assert pod.metadata.name
    _, state = sandbox
    result = control.exec_in_pod(state, "shop", pod.metadata.name,
                                 [sys.executable, "-m", "keyless", "doctor", "--format", "json"], capture=True)
    assert result.returncode == 0, result.stderr
    checks = json.loads(result.stdout)
    aws = next(c for c in checks if c["cloud"] == "aws")
    assert aws["details"]["method"] == "container-role"
    assert ":assumed-role/keyless-demo-api/" in aws["details"]["arn"]


def test_role_change_updates_and_service_removal_deletes(env: dict[str, str], tmp_path: Path) -> None:
    first = porter_yaml(tmp_path, "e2e-change", {"api": "keyless-demo-api", "worker": "keyless-demo-worker"})
    client = deploy(env, first)
    assert run("apply", "-f", str(first), "--target", EKS_TARGET, "--auto-approve")[0] == 0

    changed = porter_yaml(tmp_path, "e2e-change", {"api": "keyless-demo-worker"}, name="changed.yaml")
    code, output = run("plan", "-f", str(changed), "--target", EKS_TARGET)
    assert code == 0, output
    assert "~ cloud_binding shop/e2e-change-api" in output
    assert "- cloud_binding shop/e2e-change-worker" in output
    assert "service removed from porter.yaml" in output

    assert run("apply", "-f", str(changed), "--target", EKS_TARGET, "--auto-approve")[0] == 0
    found = associations("keyless-sandbox")
    assert found["e2e-change-api"].endswith(":role/keyless-demo-worker")
    assert "e2e-change-worker" not in found
    names = {a.metadata.name for a in client.list(ServiceAccount) if a.metadata}
    assert "e2e-change-worker" not in names


def test_identical_association_made_by_hand_is_adopted(env: dict[str, str], tmp_path: Path) -> None:
    role = boto3.client("iam").get_role(RoleName="keyless-demo-api")["Role"]["Arn"]
    boto3.client("eks").create_pod_identity_association(
        clusterName="keyless-sandbox", namespace="shop", serviceAccount="e2e-adopt-api", roleArn=role)
    path = porter_yaml(tmp_path, "e2e-adopt", {"api": "keyless-demo-api"})
    deploy(env, path)
    _, output = run("plan", "-f", str(path), "--target", EKS_TARGET)
    assert "<= cloud_binding shop/e2e-adopt-api" in output, output
    assert run("apply", "-f", str(path), "--target", EKS_TARGET, "--auto-approve")[0] == 0
    assert "No changes" in run("plan", "-f", str(path), "--target", EKS_TARGET)[1]


def test_association_to_another_role_made_by_hand_blocks(env: dict[str, str], tmp_path: Path) -> None:
    role = boto3.client("iam").get_role(RoleName="keyless-demo-worker")["Role"]["Arn"]
    boto3.client("eks").create_pod_identity_association(
        clusterName="keyless-sandbox", namespace="shop", serviceAccount="e2e-clash-api", roleArn=role)
    path = porter_yaml(tmp_path, "e2e-clash", {"api": "keyless-demo-api"})
    code, output = run("apply", "-f", str(path), "--target", EKS_TARGET, "--auto-approve")
    assert code == 3, output
    assert "already bound to" in output
    assert "keyless-demo-worker" in output
    assert associations("keyless-sandbox")["e2e-clash-api"] == role  # untouched


def test_missing_role_is_blocked_by_preflight(env: dict[str, str], tmp_path: Path) -> None:
    path = porter_yaml(tmp_path, "e2e-norole", {"api": "no-such-role"})
    code, output = run("plan", "-f", str(path), "--target", EKS_TARGET)
    assert code == 3, output
    assert "no-such-role" in output


def test_drift_is_reported_and_repaired(env: dict[str, str], tmp_path: Path) -> None:
    path = porter_yaml(tmp_path, "e2e-drift", {"api": "keyless-demo-api"})
    deploy(env, path)
    assert run("apply", "-f", str(path), "--target", EKS_TARGET, "--auto-approve")[0] == 0
    client = boto3.client("eks")
    summary = client.list_pod_identity_associations(clusterName="keyless-sandbox", namespace="shop",
                                                    serviceAccount="e2e-drift-api")["associations"][0]
    client.delete_pod_identity_association(clusterName="keyless-sandbox", associationId=summary["associationId"])

    code, output = run("status", "--target", EKS_TARGET, "--app", "e2e-drift", "--format", "json")
    assert code == 0, output
    rows = {r["service"]: r for r in json.loads(output)}
    assert "deleted outside keyless" in rows["api"]["drift"]

    assert run("apply", "-f", str(path), "--target", EKS_TARGET, "--auto-approve")[0] == 0
    assert "e2e-drift-api" in associations("keyless-sandbox")


def test_saved_plan_applies_and_refuses_when_stale(env: dict[str, str], tmp_path: Path) -> None:
    path = porter_yaml(tmp_path, "e2e-saved", {"api": "keyless-demo-api", "worker": "keyless-demo-worker"})
    deploy(env, path)
    saved = tmp_path / "plan.json"
    code, output = run("plan", "-f", str(path), "--target", EKS_TARGET, "--out", str(saved))
    assert code == 0, output
    # Someone binds the worker by hand meanwhile: the saved plan no longer describes the world.
    role = boto3.client("iam").get_role(RoleName="keyless-demo-worker")["Role"]["Arn"]
    boto3.client("eks").create_pod_identity_association(
        clusterName="keyless-sandbox", namespace="shop", serviceAccount="e2e-saved-worker", roleArn=role)
    code, output = run("apply", str(saved), "--auto-approve")
    assert code == 1, output
    assert "stale" in output
    assert "e2e-saved-api" not in associations("keyless-sandbox")

    code, output = run("plan", "-f", str(path), "--target", EKS_TARGET, "--out", str(saved))
    assert code == 0, output
    # No terminal and no --auto-approve, as in CI: the saved plan is the approval (Terraform's rule).
    code, output = run("apply", str(saved))
    assert code == 0, output
    assert "e2e-saved-api" in associations("keyless-sandbox")


def test_apply_without_terminal_needs_auto_approve(env: dict[str, str], tmp_path: Path) -> None:
    path = porter_yaml(tmp_path, "e2e-ask", {"api": "keyless-demo-api"})
    code, output = run("apply", "-f", str(path), "--target", EKS_TARGET)
    assert code == 2, output
    assert "--auto-approve" in output
    assert "e2e-ask-api" not in associations("keyless-sandbox")


def test_invalid_porter_yaml_never_reaches_the_cloud(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "porter.yaml"
    path.write_text(textwrap.dedent("""\
        name: e2e-bad
        services:
          - name: api
            connections:
              - type: awsRole
                role: "arn:aws:s3:::bucket"
        """))
    code, output = run("apply", "-f", str(path), "--target", EKS_TARGET, "--auto-approve")
    assert code == 2, output
    assert f"{path}:6:" in output
    assert "e2e-bad-api" not in associations("keyless-sandbox")


def test_interrupted_apply_converges_on_the_next_run(env: dict[str, str], tmp_path: Path) -> None:
    """Ctrl-C in the middle of an apply: the process stops cleanly (no traceback) and the next run finishes."""
    services = {f"s{i}": "keyless-demo-api" for i in range(6)}
    path = porter_yaml(tmp_path, "e2e-intr", services)
    deploy(env, path)
    process = subprocess.Popen(
        [sys.executable, "-m", "keyless", "apply", "-f", str(path), "--target", EKS_TARGET, "--auto-approve"],
        env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not associations("keyless-sandbox").keys() & {
            f"e2e-intr-{s}" for s in services}:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert "Traceback" not in output, output
    assert process.returncode == 130, output  # the settle wait after each create keeps the run long enough
    assert "run the same command again" in output

    code, output = run("apply", "-f", str(path), "--target", EKS_TARGET, "--auto-approve")
    assert code == 0, output
    bound = {sa for sa in associations("keyless-sandbox") if sa.startswith("e2e-intr-")}
    assert bound == {f"e2e-intr-{s}" for s in services}
    assert "No changes" in run("plan", "-f", str(path), "--target", EKS_TARGET)[1]


def test_render_mode_binds_in_the_cloud_and_writes_manifests_instead_of_touching_the_cluster(
        env: dict[str, str], tmp_path: Path) -> None:
    out_dir = tmp_path / "gitops"
    targets = tmp_path / "targets.yaml"
    targets.write_text(textwrap.dedent(f"""\
        targets:
          gitops-eks:
            cloud: aws
            region: us-east-1
            cluster: keyless-sandbox
            namespace: shop
            kubernetes: {{mode: render, outDir: {out_dir}}}
        """))
    path = porter_yaml(tmp_path, "e2e-render", {"api": "keyless-demo-api"})
    code, output = run("apply", "-f", str(path), "--target", "gitops-eks", "--targets", str(targets),
                       "--auto-approve")
    assert code == 0, output
    assert associations("keyless-sandbox")["e2e-render-api"].endswith(":role/keyless-demo-api")
    account = (out_dir / "serviceaccounts" / "e2e-render-api.yaml").read_text()
    assert "name: e2e-render-api" in account
    assert "app.kubernetes.io/managed-by: keyless" in account
    assert "e2e-render-api" in (out_dir / "helm-values.yaml").read_text()
    client = Client(KubeConfig.from_file(env["KUBECONFIG"]), namespace="shop")
    assert "e2e-render-api" not in {a.metadata.name for a in client.list(ServiceAccount) if a.metadata}

    code, output = run("apply", "-f", str(path), "--target", "gitops-eks", "--targets", str(targets),
                       "--auto-approve")
    assert code == 0, output
    assert "No changes" in output  # the rendered account is read back: nothing to write again

    elsewhere = tmp_path / "rendered"
    writes = _eks_writes(env)
    code, output = run("render", "-f", str(path), "--target", "gitops-eks", "--targets", str(targets),
                       "--out-dir", str(elsewhere))
    assert code == 0, output
    assert (elsewhere / "serviceaccounts" / "e2e-render-api.yaml").exists()
    assert _eks_writes(env) == writes  # render never writes to the cloud


def test_plan_out_into_a_missing_directory_is_a_clear_usage_error(env: dict[str, str], tmp_path: Path) -> None:
    path = porter_yaml(tmp_path, "e2e-out", {"api": "keyless-demo-api"})
    code, output = run("plan", "-f", str(path), "--target", EKS_TARGET, "--out", str(tmp_path / "no" / "plan.json"))
    assert code == 2, output
    assert "cannot write the plan there" in output
    assert "Traceback" not in output


def test_status_shows_whole_identifiers_however_narrow_the_terminal(env: dict[str, str], tmp_path: Path) -> None:
    path = porter_yaml(tmp_path, "e2e-wide", {"api": "keyless-demo-api"})
    deploy(env, path)
    code, output = run("apply", "-f", str(path), "--target", EKS_TARGET, "--auto-approve")
    assert code == 0, output
    code, output = run("status", "--target", EKS_TARGET, "--app", "e2e-wide")
    assert code == 0, output
    assert "…" not in output  # folded onto more lines, never cut
    cells = "".join(line.split("│")[3].strip() for line in output.splitlines() if line.count("│") >= 6)
    assert "arn:aws:iam::123456789012:role/keyless-demo-api" in cells


# --- the per-app apply lock -------------------------------------------------------------------------


def _lease(env: dict[str, str], app: str) -> Lease:
    with Client(KubeConfig.from_file(env["KUBECONFIG"]), namespace="shop") as client:
        return client.get(Lease, lock_lease_name(app, EKS_TARGET), namespace="shop")


def test_apply_with_lock_timeout_0_fails_at_once_naming_the_holder_then_goes_ahead_once_released(
        env: dict[str, str], tmp_path: Path) -> None:
    path = porter_yaml(tmp_path, "e2e-locked", {"api": "keyless-demo-api"})
    client = deploy(env, path)
    holder = "https://ci.example/shop/jobs/7@runner-3/4242"
    now = datetime.now(UTC)
    client.create(Lease(metadata=ObjectMeta(name=lock_lease_name("e2e-locked", EKS_TARGET), namespace="shop",
                                            labels=lock_labels("e2e-locked", EKS_TARGET)),
                        spec=LeaseSpec(holderIdentity=holder, leaseDurationSeconds=300, acquireTime=now,
                                       renewTime=now)))
    code, output = run("apply", "-f", str(path), "--target", EKS_TARGET, "--auto-approve", "--lock-timeout", "0")
    assert code == 4, output
    assert f"is locked by {holder} since" in output
    assert "--lock-timeout" in output
    assert "e2e-locked-api" not in associations("keyless-sandbox")  # nothing observed, nothing applied

    held = _lease(env, "e2e-locked")
    assert held.spec is not None
    held.spec.holderIdentity = None  # the other apply finished
    client.replace(held)
    code, output = run("apply", "-f", str(path), "--target", EKS_TARGET, "--auto-approve", "--lock-timeout", "0")
    assert code == 0, output
    assert "e2e-locked-api" in associations("keyless-sandbox")
    after = _lease(env, "e2e-locked").spec
    assert after is not None
    assert after.holderIdentity is None  # released at the end
    assert after.leaseTransitions == 1


def test_a_blocked_or_failed_apply_releases_the_lock(env: dict[str, str], tmp_path: Path) -> None:
    path = porter_yaml(tmp_path, "e2e-unlock", {"api": "no-such-role"})
    code, output = run("apply", "-f", str(path), "--target", EKS_TARGET, "--auto-approve", "--lock-timeout", "0")
    assert code == 3, output
    spec = _lease(env, "e2e-unlock").spec
    assert spec is not None
    assert spec.holderIdentity is None
    code, output = run("apply", "-f", str(path), "--target", EKS_TARGET, "--lock-timeout", "soon")
    assert code == 2, output
    assert "--lock-timeout soon: not a duration" in output


def test_two_applies_at_once_the_second_waits_and_plans_from_what_the_first_left(
        env: dict[str, str], tmp_path: Path) -> None:
    path = porter_yaml(tmp_path, "e2e-twice", {"api": "keyless-demo-api", "worker": "keyless-demo-worker"})
    deploy(env, path)
    loaded = load_app(path.read_bytes(), str(path), {})
    target = load_targets_file(Path(env["KEYLESS_TARGETS"]), env).get(EKS_TARGET)
    spec = engine.PlanInput(loaded, "e2e-twice", EKS_TARGET, target)
    holding, finish = threading.Event(), threading.Event()
    first_report: list[engine.ApplyReport] = []

    def first_apply() -> None:
        provider, kube = engine.connect(EKS_TARGET, target)
        with engine.app_lock(kube, "e2e-twice", EKS_TARGET, "shop", holder="first@ci/1") as held:
            plan = engine.plan_app(spec, provider, kube).plan
            holding.set()
            finish.wait(60)
            first_report.append(engine.apply_plan(plan, provider, kube, lock=held))

    first = threading.Thread(target=first_apply)
    first.start()
    assert holding.wait(60)
    waited = VirtualTime()

    def sleep(seconds: float) -> None:  # while the second waits, the first applies and releases
        waited.sleep(seconds)
        finish.set()
        first.join(120)

    provider, kube = engine.connect(EKS_TARGET, target)
    with engine.app_lock(kube, "e2e-twice", EKS_TARGET, "shop", holder="second@ci/2", clock=waited.clock,
                         sleep=sleep) as held:
        second = engine.plan_app(spec, provider, kube).plan  # observed under the lock, after the first's changes
        report = engine.apply_plan(second, provider, kube, lock=held)
    assert len(waited.sleeps) == 1
    assert not first_report[0].failures
    assert len(first_report[0].results) > 0
    assert second.changes == []  # not a stale copy of the first's plan applied again
    assert not report.failures
    assert {"e2e-twice-api", "e2e-twice-worker"} <= associations("keyless-sandbox").keys()
