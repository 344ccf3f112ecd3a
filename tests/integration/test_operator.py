"""`keyless operator` on the sandbox, driven the way a platform team would: install it from `keyless operator
manifests`, apply KeylessApps with kubectl, break a binding with the aws CLI, delete the app.

Two replicas run in this process (threads), each logged in as the operator's own service account with the
ClusterRole the manifests give it. kubectl and the aws CLI are used when the machine has them; otherwise lightkube
and boto3 make the same calls.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from azure.identity import WorkloadIdentityCredential
from azure.mgmt.msi import ManagedServiceIdentityClient
from e2e_support import Sandbox
from lightkube import ApiError, Client, KubeConfig
from lightkube.codecs import load_all_yaml
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Event, Pod
from lightkube.types import PatchType
from operator_support import OPERATOR_CONTEXT, operator_replicas

from keyless import engine
from keyless.inputs import load_targets_file
from keyless.kube.cluster import ClusterKube
from keyless.porter import load_app
from keyless.sandbox import control
from keyless.sandbox.azure.demo import DEMO_API_IDENTITY, DEMO_RESOURCE_GROUP
from keyless.sandbox.knobs import KnobSettings
from keyless.sandbox.porter import deploy_workloads
from keyless.sandbox.stack import AKS_TARGET, EKS_CONTEXT, EKS_TARGET

pytestmark = pytest.mark.integration

KUBECTL = shutil.which("kubectl")
AWS = shutil.which("aws")
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
def replicas(sandbox: Sandbox, operator_env: dict[str, str]) -> Iterator[list[str]]:
    """The operator installed as the README says, two replicas watching namespace shop."""
    with operator_replicas(sandbox, operator_env, lambda text: _apply_yaml(operator_env, text),
                           "keyless-operator-test", namespaces=("shop",)) as holders:
        yield holders


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


def _aws_porter(app: str, services: list[str], kind: str = "web") -> str:
    """porter.yaml of services of one kind, each connected to the demo role keyless-demo-api."""
    return f"name: {app}\nservices:\n" + "".join(
        f"  - name: {s}\n    type: {kind}\n    connections:\n      - type: awsRole\n        role: keyless-demo-api\n"
        for s in services)


def _stop(processes: list[subprocess.Popen[bytes] | None]) -> None:
    for process in processes:
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(20)


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


def _wait(what: str, check: Callable[[], Any], seen: Callable[[], None] | None = None, pause: float = 0.2,
          deadline: float = DEADLINE) -> Any:
    deadline = time.monotonic() + deadline
    while time.monotonic() < deadline:
        if seen is not None:
            seen()
        found = check()
        if found:
            return found
        time.sleep(pause)
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
    assert obj["status"]["appliedTo"] == {"target": EKS_TARGET, "app": "op-shop", "namespace": "shop"}
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    # Two replicas, one create: the app was written by one of them only.
    assert _eks_calls(env).get("CreatePodIdentityAssociation", 0) - before == 1

    # A periodic refresh reads the association back by the id keyless recorded: no listing of the cluster.
    calls = _eks_calls(env)
    stamp = obj["status"]["lastRefreshTime"]
    _wait("a periodic refresh", lambda: (_get(env, "op-shop") or {}).get("status", {}).get("lastRefreshTime", stamp)
          > stamp)
    after = _eks_calls(env)
    assert after.get("DescribePodIdentityAssociation", 0) > calls.get("DescribePodIdentityAssociation", 0)
    assert after.get("ListPodIdentityAssociations", 0) == calls.get("ListPodIdentityAssociations", 0)

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



def _patch_spec(env: dict[str, str], name: str, spec: dict[str, Any]) -> None:
    _admin(env).patch(KeylessApp, name, {"spec": spec}, namespace="shop", patch_type=PatchType.MERGE)


def _role_of(cluster: str, service_account: str) -> str | None:
    found = _associations(cluster, service_account)
    if not found:
        return None
    described = boto3.client("eks").describe_pod_identity_association(
        clusterName=cluster, associationId=found[0]["associationId"])["association"]
    return str(described["roleArn"]).rsplit("/", 1)[-1]


def _refreshed_after(env: dict[str, str], name: str, stamp: str | None) -> Any:
    found = _get(env, name)
    last = (found.get("status") or {}).get("lastRefreshTime") if found is not None else None
    return found if last is not None and last != stamp else None


def test_a_role_changed_by_hand_is_restored_unless_suspended(
        operator_env: dict[str, str], replicas: list[str]) -> None:
    env, cluster = operator_env, _eks_cluster()
    porter = "name: op-role\nservices:\n  - name: api\n    type: web\n    connections:\n" \
             "      - type: awsRole\n        role: keyless-demo-api\n"
    _apply_yaml(env, _keylessapp("op-role", EKS_TARGET, porter))
    _ready(env, "op-role")
    assert _role_of(cluster, "op-role-api") == "keyless-demo-api"
    [association] = _associations(cluster, "op-role-api")
    worker = boto3.client("iam").get_role(RoleName="keyless-demo-worker")["Role"]["Arn"]
    boto3.client("eks").update_pod_identity_association(
        clusterName=cluster, associationId=association["associationId"], roleArn=worker)
    _wait("the role to be restored", lambda: _role_of(cluster, "op-role-api") == "keyless-demo-api")
    _wait("Drifted cleared", lambda: (_condition(_get(env, "op-role"), "Drifted") or {}).get("status") == "False")

    # Suspended: the operator reads and reports, and writes nothing.
    _patch_spec(env, "op-role", {"suspend": True})
    _wait("the suspend to be seen", lambda: (_condition(_get(env, "op-role"), "Ready") or {}).get("reason")
          in ("UpToDate", "Suspended"))
    boto3.client("eks").update_pod_identity_association(
        clusterName=cluster, associationId=association["associationId"], roleArn=worker)
    stamp = (_get(env, "op-role") or {}).get("status", {}).get("lastRefreshTime")

    def suspended_drift() -> Any:
        found = _refreshed_after(env, "op-role", stamp)
        ready = _condition(found, "Ready") if found is not None else None
        return found if ready is not None and ready["reason"] == "Suspended" else None

    found = _wait("a refresh that finds the drift and leaves it", suspended_drift)
    assert (_condition(found, "Drifted") or {}).get("status") == "True"
    assert _role_of(cluster, "op-role-api") == "keyless-demo-worker"  # not written while suspended
    assert [r["state"] for r in found["status"]["bindings"]] == ["Pending"]

    _patch_spec(env, "op-role", {"suspend": False})
    _wait("the role restored once resumed", lambda: _role_of(cluster, "op-role-api") == "keyless-demo-api")
    _admin(env).delete(KeylessApp, "op-role", namespace="shop")
    _wait("op-role to go", lambda: _get(env, "op-role") is None)
    assert _associations(cluster, "op-role-api") == []


def test_porter_yaml_from_a_config_map_and_a_ci_apply_holding_the_app(
        sandbox: Sandbox, operator_env: dict[str, str], replicas: list[str]) -> None:
    """The operator and a CI job never write one app at once: while the CI job holds the app's lock, the
    operator waits (an Event names the holder) and applies once it is released."""
    env, cluster = operator_env, _eks_cluster()
    porter = "name: op-cm\nservices:\n  - name: api\n    type: web\n    connections:\n" \
             "      - type: awsRole\n        role: keyless-demo-api\n"
    _admin(env).apply(ConfigMap(metadata=ObjectMeta(name="op-cm-porter", namespace="shop"),
                                data={"porter.yaml": porter}))
    target = load_targets_file(Path(env["KEYLESS_TARGETS"]), {}).get(EKS_TARGET)
    ci_side = ClusterKube(target.kubernetes)
    with engine.app_lock(ci_side, "op-cm", EKS_TARGET, "shop", timeout=0, holder="ci-job@runner/42"):
        _apply_yaml(env, textwrap.dedent("""\
            apiVersion: keyless.dev/v1alpha1
            kind: KeylessApp
            metadata: {name: op-cm, namespace: shop}
            spec:
              target: sandbox-eks
              porterYamlFrom: {configMapKeyRef: {name: op-cm-porter, key: porter.yaml}}
            """))

        def waiting() -> Any:
            return [e for e in _admin(env).list(Event, namespace="shop")
                    if e.involvedObject is not None and e.involvedObject.name == "op-cm" and e.reason == "Waiting"
                    and "ci-job@runner/42" in (e.message or "")]

        _wait("the operator to wait for the CI job", waiting)
        assert _associations(cluster, "op-cm-api") == []  # nothing written while the CI job holds the app
    obj = _ready(env, "op-cm")
    assert [r["state"] for r in obj["status"]["bindings"]] == ["Bound"]
    assert _role_of(cluster, "op-cm-api") == "keyless-demo-api"
    _admin(env).delete(KeylessApp, "op-cm", namespace="shop")
    _wait("op-cm to go", lambda: _get(env, "op-cm") is None)
    assert _associations(cluster, "op-cm-api") == []


def _credentials(sandbox: Sandbox, identity: str) -> dict[str, str]:
    stack, _ = sandbox
    azure = stack.azure
    credential = WorkloadIdentityCredential(
        tenant_id=azure.tenant_id, client_id=azure.deployer_client_id, token_file_path=str(azure.deployer_token_file),
        authority=azure.authority_url, connection_verify=str(azure.ca_bundle))
    with ManagedServiceIdentityClient(credential, azure.subscription_id, base_url=azure.arm_url,
                                      credential_scopes=[f"{azure.arm_url}/.default"],
                                      connection_verify=str(azure.ca_bundle)) as msi:
        return {str(c.name): str(c.subject) for c in
                msi.federated_identity_credentials.list(DEMO_RESOURCE_GROUP, identity)}


def test_an_azure_keylessapp_federates_and_its_credential_goes_with_it(
        sandbox: Sandbox, operator_env: dict[str, str], replicas: list[str]) -> None:
    env = operator_env
    porter = textwrap.dedent(f"""\
        name: op-az
        services:
          - name: api
            type: web
            connections:
              - type: azureManagedIdentity
                identityName: {DEMO_API_IDENTITY}
                resourceGroup: {DEMO_RESOURCE_GROUP}
        """)
    _apply_yaml(env, _keylessapp("op-az", AKS_TARGET, porter))
    obj = _ready(env, "op-az")
    [row] = obj["status"]["bindings"]
    assert (row["service"], row["cloud"], row["state"]) == ("api", "azure", "Bound")
    name = row["bindingId"].rsplit("/federatedIdentityCredentials/", 1)[-1]  # the credential's ARM id
    assert _credentials(sandbox, DEMO_API_IDENTITY)[name] == "system:serviceaccount:shop:op-az-api"
    _admin(env).delete(KeylessApp, "op-az", namespace="shop")
    _wait("op-az to go", lambda: _get(env, "op-az") is None)
    assert name not in _credentials(sandbox, DEMO_API_IDENTITY)


def _replica(env: dict[str, str], log: Path, namespace: str = "ops") -> subprocess.Popen[bytes]:
    """`keyless operator` as its own process (a pod of the Deployment), watching one namespace."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "keyless", "operator", "--context", OPERATOR_CONTEXT, "--targets",
             env["KEYLESS_TARGETS"], "--namespace", namespace, "--lease-duration", "3s", "--verbose"],
            env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)


def test_two_replicas_started_at_once_write_each_app_once(
        sandbox: Sandbox, operator_env: dict[str, str], replicas: list[str], tmp_path: Path) -> None:
    stack, _ = sandbox
    env, cluster = operator_env, _eks_cluster()
    assert stack.eks is not None
    stack.eks.ensure_namespace("twins")
    apps = {f"twin-{i}": [f"s{j}" for j in range(3)] for i in range(3)}
    # The KeylessApps are there before any replica watching their namespace starts: both resume every one.
    for app, services in apps.items():
        porter = _aws_porter(app, services, "worker")
        _apply_yaml(env, _keylessapp(app, EKS_TARGET, porter).replace("namespace: shop", "namespace: twins"))
    before = _eks_calls(env).get("CreatePodIdentityAssociation", 0)
    started = [_replica(env, tmp_path / f"{i}.log", "twins") for i in (1, 2)]
    try:
        def all_ready() -> bool:
            for app in apps:
                found = _admin(env).get(KeylessApp, app, namespace="twins")
                ready = _condition(found, "Ready")
                if ready is None or ready["status"] != "True":
                    return False
            return True

        try:
            _wait("every app Ready", all_ready, deadline=180.0)
        except AssertionError:
            logs = "\n".join((tmp_path / f"{i}.log").read_text()[-3000:] for i in (1, 2))
            raise AssertionError(f"not converged:\n{logs}") from None
        # One create per service account: no app was written by both replicas.
        assert _eks_calls(env).get("CreatePodIdentityAssociation", 0) - before == sum(map(len, apps.values()))
        for app, services in apps.items():
            for s in services:
                assert len(_associations(cluster, f"{app}-{s}")) == 1
        assert all(process.poll() is None for process in started)
        for app in apps:
            _admin(env).delete(KeylessApp, app, namespace="twins")
        _wait("the twins' associations to go", lambda: all(
            not _associations(cluster, f"{app}-{s}") for app, services in apps.items() for s in services))
    finally:
        _stop(list(started))


def test_a_replica_killed_mid_apply_is_taken_over_without_a_duplicate(
        sandbox: Sandbox, operator_env: dict[str, str], replicas: list[str], tmp_path: Path) -> None:
    stack, _ = sandbox
    env, cluster = operator_env, _eks_cluster()
    assert stack.eks is not None
    stack.eks.ensure_namespace("ops")
    services = [f"s{i}" for i in range(5)]
    porter = _aws_porter("op-kill", services)
    # The first replica takes the app; the second comes up while it applies (a rolling update, a rescheduled pod).
    # (Two replicas racing to add kopf's finalizer leave the loser waiting for the object's next event, which a
    # winner killed at once never writes: it then picks the app up at its next watch restart, within 60 s.)
    first = _replica(env, tmp_path / "a.log")
    second: subprocess.Popen[bytes] | None = None
    lease = create_namespaced_resource("coordination.k8s.io", "v1", "Lease", "leases")
    stack.aws.knobs.configure(KnobSettings(latency=0.4))  # slow EKS: the apply takes seconds, long enough to die in
    try:
        _apply_yaml(env, _keylessapp("op-kill", EKS_TARGET, porter).replace("namespace: shop", "namespace: ops"))

        before = _eks_calls(env).get("CreatePodIdentityAssociation", 0)

        def holder_mid_apply() -> str | None:
            # The counters answer at once (the latency shapes EKS's operations only).
            if _eks_calls(env).get("CreatePodIdentityAssociation", 0) == before:
                return None
            for found in _admin(env).list(lease, namespace="shop"):
                spec = found.get("spec") or {}
                if str(found["metadata"]["name"]).startswith("keyless-op-kill-") and spec.get("holderIdentity"):
                    return str(spec["holderIdentity"])
            return None

        holder = _wait("the first replica in the middle of the apply", holder_mid_apply, pause=0.02)
        assert holder.endswith(f"/{first.pid}")
        second = _replica(env, tmp_path / "b.log")
        dying, survivor = first, second
        dying.kill()  # kill -9: no handler runs, the Lease stays held until it expires
        dying.wait(10)
        stack.aws.knobs.configure(KnobSettings())

        def converged() -> Any:
            found = _admin(env).get(KeylessApp, "op-kill", namespace="ops")
            ready = _condition(found, "Ready")
            return found if ready is not None and ready["status"] == "True" else None

        try:
            # The dead replica's Lease runs out after 3 s; the survivor looks again within 15 s, then applies.
            obj = _wait("the surviving replica to converge", converged, deadline=180.0)
        except AssertionError:
            found = _admin(env).get(KeylessApp, "op-kill", namespace="ops")
            logs = "\n".join(path.read_text()[-3000:] for path in (tmp_path / "a.log", tmp_path / "b.log"))
            raise AssertionError(f"no convergence: {found.get('metadata')} {found.get('status')}\n{logs}") from None
        assert [r["state"] for r in obj["status"]["bindings"]] == ["Bound"] * len(services)
        for s in services:  # one association per service account: nothing written twice
            assert len(_associations(cluster, f"op-kill-{s}")) == 1
        _admin(env).delete(KeylessApp, "op-kill", namespace="ops")

        def gone() -> bool:
            try:
                _admin(env).get(KeylessApp, "op-kill", namespace="ops")
            except ApiError as exc:
                return exc.status.code == 404
            return False

        _wait("op-kill to go", gone)
        assert all(not _associations(cluster, f"op-kill-{s}") for s in services)
        assert survivor.poll() is None  # the survivor kept running throughout
    finally:
        stack.aws.knobs.configure(KnobSettings())
        _stop([first, second])
