"""`keyless operator` on the sandbox, driven the way a platform team would: install it from `keyless operator
manifests`, apply KeylessApps with kubectl, break a binding with the aws CLI, delete the app.

Two replicas run in this process (threads), each logged in as the operator's own service account with the
ClusterRole the manifests give it. kubectl and the aws CLI are used when the machine has them; otherwise lightkube
and boto3 make the same calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from e2e_support import Sandbox, run_cli
from lightkube import ApiError, Client, KubeConfig
from lightkube.codecs import load_all_yaml
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import Event, Pod

from keyless.kube.home import HomeCluster
from keyless.operator.controller import OperatorOptions, run_operator
from keyless.operator.reconcile import Reconciler
from keyless.porter import load_app
from keyless.sandbox import control
from keyless.sandbox.porter import deploy_workloads
from keyless.sandbox.stack import EKS_CONTEXT, EKS_TARGET

pytestmark = pytest.mark.integration

KUBECTL = shutil.which("kubectl")
AWS = shutil.which("aws")
OPERATOR_NAMESPACE = "keyless-system"
OPERATOR_CONTEXT = "keyless-operator@sandbox-eks"
KeylessApp = create_namespaced_resource("keyless.dev", "v1alpha1", "KeylessApp", "keylessapps")
DEADLINE = 90.0  # seconds a wait may take before the test fails (never asserted as a bound)


# ---- the operator, installed and running ---------------------------------------------------------------


def _admin(env: dict[str, str], context: str = EKS_CONTEXT) -> Client:
    return Client(KubeConfig.from_file(env["KUBECONFIG"]).get(context_name=context), field_manager="kubectl")


def _kubectl(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    return subprocess.run([KUBECTL, "--context", EKS_CONTEXT, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, check=False,
                          env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
                               "KUBECONFIG": env["KUBECONFIG"]})


def _apply_yaml(env: dict[str, str], text: str) -> None:
    """`kubectl apply -f -` (validation on), or the same server-side apply through lightkube."""
    if KUBECTL is not None:
        done = _kubectl(env, "apply", "-f", "-", stdin=text)
        assert done.returncode == 0, done.stderr
        return
    client = _admin(env)
    for obj in load_all_yaml(text, create_resources_for_crds=True):
        client.apply(obj, force=True)


@pytest.fixture(scope="module")
def operator_env(sandbox: Sandbox) -> Iterator[dict[str, str]]:
    _, state = sandbox
    with pytest.MonkeyPatch.context() as patch:
        for key, value in state.env.items():
            patch.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"):
            patch.delenv(key, raising=False)
        yield dict(state.env)


@pytest.fixture(scope="module")
def replicas(sandbox: Sandbox, operator_env: dict[str, str]) -> Iterator[list[str]]:
    """`keyless operator manifests` installed as the README says (the Deployment aside: its replicas are threads
    here), and two replicas running as the operator's service account."""
    stack, _ = sandbox
    code, manifests = run_cli("operator", "manifests", "--namespace", OPERATOR_NAMESPACE)
    assert code == 0, manifests
    documents = manifests.split("\n---\n")
    assert any("kind: Deployment" in d for d in documents)
    _apply_yaml(operator_env, "\n---\n".join(d for d in documents if "kind: Deployment" not in d))
    assert stack.eks is not None
    # `kubectl create token keyless-operator -n keyless-system`, in a context of its own.
    token = stack.eks.mint_token(OPERATOR_NAMESPACE, "keyless-operator", expiration_seconds=7200)
    stack.eks.write_kubeconfig(operator_env["KUBECONFIG"], OPERATOR_CONTEXT, token=token, make_current=False)
    stop = threading.Event()
    threads, holders = [], []
    for index in (1, 2):
        home = HomeCluster(OPERATOR_CONTEXT)
        holder = f"keyless-operator-test/{index}"
        reconciler = Reconciler(Path(operator_env["KEYLESS_TARGETS"]), holder, home.config_map_value)
        options = OperatorOptions(refresh_interval=600.0, tick=1.0)
        ready = threading.Event()
        thread = threading.Thread(target=asyncio.run, args=(run_operator(reconciler, home, options, stop_flag=stop,
                                                                         ready_flag=ready),),
                                  name=f"operator-{index}", daemon=True)
        thread.start()
        assert ready.wait(30), "the operator did not start"
        threads.append(thread)
        holders.append(holder)
    yield holders
    stop.set()
    for thread in threads:
        thread.join(30)


# ---- helpers ------------------------------------------------------------------------------------------------


def _keylessapp(name: str, target: str, porter: str, refresh: str = "10s") -> str:
    return textwrap.dedent(f"""\
        apiVersion: keyless.dev/v1alpha1
        kind: KeylessApp
        metadata:
          name: {name}
          namespace: shop
        spec:
          target: {target}
          refreshInterval: {refresh}
          porterYaml: |
        """) + textwrap.indent(porter, "    ")


def _get(env: dict[str, str], name: str) -> Any | None:
    try:
        return _admin(env).get(KeylessApp, name, namespace="shop")
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


def _condition(obj: Any, kind: str) -> dict[str, Any] | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return None


def _wait(what: str, check: Callable[[], Any], seen: Callable[[], None] | None = None) -> Any:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if seen is not None:
            seen()
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _ready(env: dict[str, str], name: str) -> Any:
    def check() -> Any:
        obj = _get(env, name)
        ready = _condition(obj, "Ready") if obj is not None else None
        return obj if ready is not None and ready["status"] == "True" else None
    return _wait(f"KeylessApp {name} Ready", check)


def _associations(cluster: str, service_account: str) -> list[dict[str, Any]]:
    eks = boto3.client("eks")
    listed = eks.list_pod_identity_associations(clusterName=cluster, namespace="shop",
                                                serviceAccount=service_account)["associations"]
    return [dict(a) for a in listed]


def _delete_association(cluster: str, association_id: str) -> None:
    """By hand, with the aws CLI (boto3 when the machine has no aws CLI)."""
    if AWS is not None:
        done = subprocess.run([AWS, "eks", "delete-pod-identity-association", "--cluster-name", cluster,
                               "--association-id", association_id], capture_output=True, text=True, timeout=60,
                              check=False, env=dict(os.environ))
        assert done.returncode == 0, done.stderr
    else:
        boto3.client("eks").delete_pod_identity_association(clusterName=cluster, associationId=association_id)


def _eks_calls(env: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = httpx.get(f"{env['AWS_ENDPOINT_URL_EKS']}/_sandbox/calls", timeout=10).json()[
        "operations"]
    return counts


# ---- the tests ----------------------------------------------------------------------------------------------


def test_a_keylessapp_binds_repairs_a_deleted_association_and_is_cleaned_up(
        sandbox: Sandbox, operator_env: dict[str, str], replicas: list[str]) -> None:
    _, state = sandbox
    env = operator_env
    cluster = _eks_cluster()
    porter = "name: op-shop\nservices:\n  - name: api\n    type: web\n    port: 8080\n    connections:\n" \
             "      - type: awsRole\n        role: keyless-demo-api\n"
    loaded = load_app(porter.encode(), "porter.yaml", {})
    deploy_workloads(_admin(env), "op-shop", loaded.app, "shop")
    # A binding made by hand for another service account: keyless must never touch it.
    role = boto3.client("iam").get_role(RoleName="keyless-demo-api")["Role"]["Arn"]
    foreign = boto3.client("eks").create_pod_identity_association(
        clusterName=cluster, namespace="shop", serviceAccount="made-by-hand", roleArn=role)["association"]
    before = _eks_calls(env).get("CreatePodIdentityAssociation", 0)

    _apply_yaml(env, _keylessapp("op-shop", EKS_TARGET, porter))
    obj = _ready(env, "op-shop")
    rows = obj["status"]["bindings"]
    assert [(r["service"], r["cloud"], r["state"]) for r in rows] == [("api", "aws", "Bound")]
    [association] = _associations(cluster, "op-shop-api")
    assert rows[0]["bindingId"] == association["associationId"]
    assert obj["status"]["appliedTo"] == {"target": EKS_TARGET, "app": "op-shop"}
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    # Two replicas, one create: the app was written by one of them only.
    assert _eks_calls(env).get("CreatePodIdentityAssociation", 0) - before == 1

    # The pods have the identity: the SDK's default chain in a pod resolves to the role.
    pods = _wait("a running pod of op-shop-api", lambda: [
        p for p in _admin(env).list(Pod, namespace="shop", labels={"porter.run/app-name": "op-shop"})
        if p.status is not None and p.status.phase == "Running" and p.metadata is not None
        and (p.metadata.annotations or {}).get("keyless.dev/identity")])
    result = control.exec_in_pod(state, "shop", pods[0].metadata.name,
                                 [sys.executable, "-m", "keyless", "doctor", "--format", "json"], capture=True)
    assert result.returncode == 0, result.stderr
    aws = next(c for c in json.loads(result.stdout) if c["cloud"] == "aws")
    assert ":assumed-role/keyless-demo-api/" in aws["details"]["arn"]

    # Someone deletes the association by hand: the next refresh sees the drift and repairs it.
    _delete_association(cluster, association["associationId"])
    drifted: list[str] = []

    def watch_drift() -> None:
        found = _get(env, "op-shop")
        condition = _condition(found, "Drifted") if found is not None else None
        if condition is not None:
            drifted.append(condition["status"])

    def repaired() -> bool:
        now = _associations(cluster, "op-shop-api")
        found = _get(env, "op-shop")
        condition = _condition(found, "Drifted") if found is not None else None
        return bool(now) and now[0]["associationId"] != association["associationId"] and condition is not None \
            and condition["status"] == "False" and "True" in drifted
    _wait("the association to come back", repaired, watch_drift)
    reasons = {e.reason for e in _admin(env).list(Event, namespace="shop")
               if e.involvedObject is not None and e.involvedObject.name == "op-shop"}
    assert {"Applied", "Drifted", "Repaired"} <= reasons

    # Deleted: what keyless bound goes (the finalizer holds the object until then); the hand-made one stays.
    if KUBECTL is not None:
        done = _kubectl(env, "delete", "keylessapp", "op-shop", "-n", "shop", "--timeout=90s")
        assert done.returncode == 0, done.stderr
    else:
        _admin(env).delete(KeylessApp, "op-shop", namespace="shop")
    _wait("the KeylessApp to go", lambda: _get(env, "op-shop") is None)
    assert _associations(cluster, "op-shop-api") == []
    assert [a["associationId"] for a in _associations(cluster, "made-by-hand")] == [foreign["associationId"]]


def test_a_keylessapp_with_bad_porter_yaml_is_blocked_at_its_line_without_a_cloud_call(
        operator_env: dict[str, str], replicas: list[str]) -> None:
    env = operator_env
    before = sum(_eks_calls(env).values())
    broken = "name: op-bad\nservices:\n  - name: api\n    type: web\n    connections:\n      - type: awsRole\n"
    _apply_yaml(env, _keylessapp("op-bad", EKS_TARGET, broken))

    def blocked() -> Any:
        found = _get(env, "op-bad")
        condition = _condition(found, "Blocked") if found is not None else None
        return condition if condition is not None and condition["status"] == "True" else None

    condition = _wait("op-bad Blocked", blocked)
    assert condition["reason"] == "InvalidInput"
    assert condition["message"].startswith("keylessapp/shop/op-bad.spec.porterYaml:6:")
    assert sum(_eks_calls(env).values()) == before  # nothing reached the cloud

    _apply_yaml(env, _keylessapp("op-lost", "no-such-target", "name: op-lost\nservices:\n  - name: api\n"
                                 "    type: web\n"))

    def unknown() -> Any:
        found = _get(env, "op-lost")
        condition = _condition(found, "Blocked") if found is not None else None
        return condition if condition is not None and condition["status"] == "True" else None

    lost = _wait("op-lost Blocked", unknown)
    assert "no target named 'no-such-target'" in lost["message"]
    assert f"{EKS_TARGET}" in lost["message"]  # the targets there are, named
    for name in ("op-bad", "op-lost"):
        _admin(env).delete(KeylessApp, name, namespace="shop")
        _wait(f"{name} to go", lambda name=name: _get(env, name) is None)


def _eks_cluster() -> str:
    return str(boto3.client("eks").list_clusters()["clusters"][0])

