"""End to end on Azure: the keyless CLI drives azure-mgmt, azure-identity and lightkube against the sandbox."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import jwt
import pytest
from azure.identity import WorkloadIdentityCredential
from azure.mgmt.msi import ManagedServiceIdentityClient
from e2e_support import KILL_POINTS, Dying, Killed, Sandbox, run_cli
from lightkube import Client, KubeConfig
from lightkube.resources.core_v1 import Pod

from keyless.porter import load_app
from keyless.sandbox import control
from keyless.sandbox.azure.demo import DEMO_API_IDENTITY, DEMO_BROAD_IDENTITY, DEMO_LOCATION, DEMO_RESOURCE_GROUP
from keyless.sandbox.porter import deploy_workloads
from keyless.sandbox.stack import AKS_CONTEXT, AKS_TARGET, keyless_context

pytestmark = pytest.mark.integration


def porter_yaml(tmp_path: Path, app: str, services: dict[str, str | None], name: str = "porter.yaml") -> Path:
    lines = [f"name: {app}", "services:"]
    for service, identity in services.items():
        lines += [f"  - name: {service}", "    type: worker"]
        if identity:
            lines += ["    connections:", "      - type: azureManagedIdentity", f"        identityName: {identity}",
                      f"        resourceGroup: {DEMO_RESOURCE_GROUP}"]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


run = run_cli


def msi(sandbox: Sandbox) -> ManagedServiceIdentityClient:
    stack, _ = sandbox
    azure = stack.azure
    credential = WorkloadIdentityCredential(
        tenant_id=azure.tenant_id, client_id=azure.deployer_client_id, token_file_path=str(azure.deployer_token_file),
        authority=azure.authority_url, connection_verify=str(azure.ca_bundle))
    return ManagedServiceIdentityClient(credential, azure.subscription_id, base_url=azure.arm_url,
                                        credential_scopes=[f"{azure.arm_url}/.default"],
                                        connection_verify=str(azure.ca_bundle))


def credentials(sandbox: Sandbox, identity: str) -> dict[str, str]:
    """name -> subject of the federated credentials on an identity."""
    return {c.name: c.subject for c in msi(sandbox).federated_identity_credentials.list(DEMO_RESOURCE_GROUP, identity)
            if c.name and c.subject}


def kube(env: dict[str, str]) -> Client:
    return Client(KubeConfig.from_file(env["KUBECONFIG"]).get(context_name=AKS_CONTEXT), namespace="shop")


def deploy(env: dict[str, str], path: Path) -> None:
    loaded = load_app(path.read_bytes(), str(path), {})
    assert loaded.app.name
    deploy_workloads(kube(env), loaded.app.name, loaded.app, "shop")


def test_apply_federates_and_a_new_pod_gets_a_token_for_its_identity(
        sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    path = porter_yaml(tmp_path, "az-one", {"api": DEMO_API_IDENTITY})
    deploy(env, path)
    code, output = run("apply", "-f", str(path), "--target", AKS_TARGET, "--auto-approve")
    assert code == 0, output
    assert "token exchange works" in output
    assert credentials(sandbox, DEMO_API_IDENTITY)["keyless_az-one_api_" + _hash(AKS_TARGET)] == \
        "system:serviceaccount:shop:az-one-api"

    pods = [p for p in kube(env).list(Pod, labels={"porter.run/app-name": "az-one"})
            if p.status is not None and p.status.phase == "Running"]
    assert pods
    pod = pods[0]
    assert pod.metadata is not None
    assert pod.metadata.name
    _, state = sandbox
    result = control.exec_in_pod(state, "shop", pod.metadata.name,
                                 [sys.executable, "-m", "keyless", "doctor", "--format", "json"], capture=True,
                                 context=AKS_CONTEXT)
    assert result.returncode == 0, result.stdout + result.stderr
    azure = next(c for c in json.loads(result.stdout) if c["cloud"] == "azure")
    identity = sandbox[0].azure.identity(DEMO_API_IDENTITY)
    assert azure["details"]["oid"] == identity.principal_id
    assert azure["details"]["method"] == "workload identity"

    code, output = run("apply", "-f", str(path), "--target", AKS_TARGET, "--auto-approve")
    assert code == 0, output
    assert "No changes" in output


def _hash(target: str) -> str:
    from keyless.names import target_hash

    return target_hash(target)


def test_two_services_on_one_identity_apply_at_once_without_a_conflict(
        sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    services: dict[str, str | None] = {f"w{i}": DEMO_BROAD_IDENTITY for i in range(4)}
    path = porter_yaml(tmp_path, "az-many", services)
    code, output = run("apply", "-f", str(path), "--target", AKS_TARGET, "--auto-approve")
    assert code == 0, output
    assert "Concurrent" not in output
    names = {n for n in credentials(sandbox, DEMO_BROAD_IDENTITY) if n.startswith("keyless_az-many_")}
    assert len(names) == 4


def test_credential_deleted_by_hand_shows_as_drift_and_apply_restores_it(
        sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    path = porter_yaml(tmp_path, "az-drift", {"api": DEMO_API_IDENTITY})
    assert run("apply", "-f", str(path), "--target", AKS_TARGET, "--auto-approve")[0] == 0
    name = "keyless_az-drift_api_" + _hash(AKS_TARGET)
    msi(sandbox).federated_identity_credentials.delete(DEMO_RESOURCE_GROUP, DEMO_API_IDENTITY, name)

    code, output = run("status", "--target", AKS_TARGET, "--app", "az-drift", "--format", "json")
    assert code == 0, output
    rows = {r["service"]: r for r in json.loads(output)}
    assert "deleted outside keyless" in rows["api"]["drift"]

    assert run("apply", "-f", str(path), "--target", AKS_TARGET, "--auto-approve")[0] == 0
    assert name in credentials(sandbox, DEMO_API_IDENTITY)


def test_removed_service_loses_its_credential_and_a_hand_made_one_stays(
        sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    stack, _ = sandbox
    assert stack.aks is not None
    msi(sandbox).federated_identity_credentials.create_or_update(
        DEMO_RESOURCE_GROUP, DEMO_API_IDENTITY, "made-by-hand",
        {"issuer": stack.aks.issuer_url, "subject": "system:serviceaccount:other:someone",
         "audiences": ["api://AzureADTokenExchange"]})
    path = porter_yaml(tmp_path, "az-gone", {"api": DEMO_API_IDENTITY, "worker": DEMO_API_IDENTITY})
    assert run("apply", "-f", str(path), "--target", AKS_TARGET, "--auto-approve")[0] == 0
    smaller = porter_yaml(tmp_path, "az-gone", {"api": DEMO_API_IDENTITY}, name="smaller.yaml")
    code, output = run("apply", "-f", str(smaller), "--target", AKS_TARGET, "--auto-approve")
    assert code == 0, output
    found = credentials(sandbox, DEMO_API_IDENTITY)
    assert "keyless_az-gone_worker_" + _hash(AKS_TARGET) not in found
    assert "keyless_az-gone_api_" + _hash(AKS_TARGET) in found
    assert "made-by-hand" in found


def test_a_cluster_without_issuer_or_workload_identity_blocks_with_the_fix(
        sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    stack, _ = sandbox
    targets = tmp_path / "targets.yaml"
    targets.write_text(textwrap.dedent(f"""\
        targets:
          off:
            cloud: azure
            subscription: {stack.azure.subscription_id}
            resourceGroup: {DEMO_RESOURCE_GROUP}
            cluster: keyless-sandbox-aks-off
            namespace: shop
            armEndpoint: {stack.azure.arm_url}
            caBundle: {stack.azure.ca_bundle}
            kubernetes: {{context: {keyless_context(AKS_CONTEXT)}}}
        """))
    path = porter_yaml(tmp_path, "az-off", {"api": DEMO_API_IDENTITY})
    code, output = run("plan", "-f", str(path), "--target", "off", "--targets", str(targets))
    assert code == 3, output
    assert "--enable-oidc-issuer" in output
    assert "--enable-workload-identity" in output


def test_missing_identity_and_missing_resource_group_block(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "porter.yaml"
    path.write_text(textwrap.dedent("""\
        name: az-missing
        services:
          - name: api
            type: worker
            connections:
              - type: azureManagedIdentity
                identityName: no-such-identity
                resourceGroup: keyless-sandbox-rg
          - name: web
            type: worker
            connections:
              - type: azureManagedIdentity
                identityName: keyless-demo-api-identity
                resourceGroup: no-such-rg
        """))
    code, output = run("plan", "-f", str(path), "--target", AKS_TARGET)
    assert code == 3, output
    assert "no-such-identity" in output
    assert "no-such-rg" in output


def test_identity_names_that_would_change_the_url_never_reach_azure(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "porter.yaml"
    path.write_text(textwrap.dedent("""\
        name: az-bad
        services:
          - name: api
            type: worker
            connections:
              - type: azureManagedIdentity
                identityName: "../../providers/x"
                resourceGroup: "rg?api-version=1"
        """))
    code, output = run("apply", "-f", str(path), "--target", AKS_TARGET, "--auto-approve")
    assert code == 2, output
    assert f"{path}:7:" in output  # identityName
    assert f"{path}:8:" in output  # resourceGroup



# ---- an apply killed at any step leaves no credential that outlives its connection ---------------------


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_no_credential_survives_its_connection_after_an_apply_killed_at_any_step(
        sandbox: Sandbox, env: dict[str, str], tmp_path: Path, kill_at: str) -> None:
    from keyless import engine
    from keyless.inputs import load_targets_file

    app = f"az-kill-{KILL_POINTS.index(kill_at)}"
    bound = porter_yaml(tmp_path, app, {"api": DEMO_API_IDENTITY}, name="bound.yaml")
    deploy(env, bound)
    target = load_targets_file(Path(env["KEYLESS_TARGETS"]), env).get(AKS_TARGET)
    provider, kube = engine.connect(AKS_TARGET, target)
    planned = engine.plan_app(engine.PlanInput(load_app(bound.read_bytes(), str(bound), {}), app, AKS_TARGET, target),
                              provider, kube)
    dying_provider, dying_kube = Dying(provider, kill_at), Dying(kube, kill_at)
    with pytest.raises(Killed):
        engine.apply_plan(planned.plan, dying_provider, dying_kube)  # type: ignore[arg-type]

    # The connection is taken out of porter.yaml, and keyless runs again (a new process).
    unbound = porter_yaml(tmp_path, app, {"api": None}, name="unbound.yaml")
    code, output = run("apply", "-f", str(unbound), "--target", AKS_TARGET, "--auto-approve")
    assert code == 0, output
    name = f"keyless_{app}_api_{_hash(AKS_TARGET)}"
    assert name not in credentials(sandbox, DEMO_API_IDENTITY), output
    code, output = run("plan", "-f", str(unbound), "--target", AKS_TARGET)
    assert code == 0, output
    assert "No changes" in output, output


def test_the_cluster_signs_as_the_issuer_aks_assigned(sandbox: Sandbox) -> None:
    """`az aks show` names the issuer the API server signs as, on AKS's issuer host (Entra fetches it there)."""
    stack, _ = sandbox
    assert stack.aks is not None
    shown = stack.azure.cluster(stack.aks.cluster_name)
    assert shown.issuer_url == stack.aks.issuer_url
    assert str(shown.issuer_url).startswith(f"https://{DEMO_LOCATION}.oic.prod-aks.azure.com/{stack.azure.tenant_id}/")
    token = stack.aks.mint_token("default", "default", "api://AzureADTokenExchange")
    assert jwt.decode(token, options={"verify_signature": False})["iss"] == shown.issuer_url
