"""Soak: random porter.yaml edits on all three clouds, with injected faults and applies killed at random steps.

Seeded, CI-sized by default; KEYLESS_SOAK_ROUNDS (and KEYLESS_SOAK_SEED) make it larger. After the rounds the
faults stop and each app is applied once more; then every cloud must hold exactly what porter.yaml says (0 lost,
0 orphans: no association, credential or member keyless made outlives its connection) and the objects keyless
does not own must be exactly as they were (0 foreign touched)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_support import KILL_POINTS, Dying, Killed, Sandbox, run_cli
from lightkube import Client, KubeConfig

from keyless import engine, names
from keyless.errors import KeylessError
from keyless.federation import WORKLOAD_IDENTITY_USER_ROLE, workload_identity_member
from keyless.inputs import load_targets_file
from keyless.ownership import TAG_APP
from keyless.porter import load_app
from keyless.sandbox.azure.demo import DEMO_API_IDENTITY, DEMO_BROAD_IDENTITY, DEMO_RESOURCE_GROUP
from keyless.sandbox.porter import deploy_workloads
from keyless.sandbox.stack import AKS_CONTEXT, AKS_TARGET, EKS_CONTEXT, EKS_TARGET, GKE_CONTEXT, GKE_TARGET

pytestmark = pytest.mark.integration

ROUNDS = int(os.environ.get("KEYLESS_SOAK_ROUNDS", "4"))
SEED = int(os.environ.get("KEYLESS_SOAK_SEED", "20261205"))
SERVICES = ("s0", "s1", "s2")
FAULT_RATE = 0.1
KILL_RATE = 0.3
GSAS = ("shop-web@keyless-sandbox.iam.gserviceaccount.com", "shop-worker@keyless-sandbox.iam.gserviceaccount.com")


@dataclass(frozen=True)
class Cloud:
    target: str
    context: str
    connection: Callable[[str], list[str]]  # identity -> the porter.yaml lines of its connection
    identities: tuple[str, ...]


def _aws(role: str) -> list[str]:
    return ["      - type: awsRole", f"        role: {role}"]


def _azure(identity: str) -> list[str]:
    return ["      - type: azureManagedIdentity", f"        identityName: {identity}",
            f"        resourceGroup: {DEMO_RESOURCE_GROUP}"]


def _gcp(email: str) -> list[str]:
    return ["      - type: gcpServiceAccount", f"        serviceAccountEmail: {email}"]


CLOUDS = {
    "aws": Cloud(EKS_TARGET, EKS_CONTEXT, _aws, ("keyless-demo-api", "keyless-demo-worker")),
    "azure": Cloud(AKS_TARGET, AKS_CONTEXT, _azure, (DEMO_API_IDENTITY, DEMO_BROAD_IDENTITY)),
    "gcp": Cloud(GKE_TARGET, GKE_CONTEXT, _gcp, GSAS),
}


def porter_text(app: str, cloud: Cloud, wanted: dict[str, str | None]) -> str:
    lines = [f"name: {app}", "services:"]
    for service, identity in wanted.items():
        lines += [f"  - name: {service}", "    type: worker"]
        if identity:
            lines += ["    connections:", *cloud.connection(identity)]
    return "\n".join(lines) + "\n"


# --- what each cloud holds ------------------------------------------------------------------------------


def aws_owned(sandbox: Sandbox, app: str) -> dict[str, str]:
    """Service account -> role name of every association keyless tagged for the app."""
    eks = sandbox[0].aws.client("eks")
    cluster = load_targets_file(Path(sandbox[1].env["KEYLESS_TARGETS"]), sandbox[1].env).get(EKS_TARGET).cluster
    found: dict[str, str] = {}
    for page in eks.get_paginator("list_pod_identity_associations").paginate(clusterName=cluster, namespace="shop"):
        for summary in page["associations"]:
            association = eks.describe_pod_identity_association(
                clusterName=cluster, associationId=summary["associationId"])["association"]
            if association.get("tags", {}).get(TAG_APP) == app:
                found[association["serviceAccount"]] = association["roleArn"].rsplit("/", 1)[-1]
    return found


def aws_all(sandbox: Sandbox) -> dict[str, Any]:
    eks = sandbox[0].aws.client("eks")
    cluster = load_targets_file(Path(sandbox[1].env["KEYLESS_TARGETS"]), sandbox[1].env).get(EKS_TARGET).cluster
    found: dict[str, Any] = {}
    for page in eks.get_paginator("list_pod_identity_associations").paginate(clusterName=cluster):
        for summary in page["associations"]:
            association = eks.describe_pod_identity_association(
                clusterName=cluster, associationId=summary["associationId"])["association"]
            found[association["associationId"]] = (association["namespace"], association["serviceAccount"],
                                                    association["roleArn"], dict(association.get("tags", {})))
    return found


def azure_credentials(sandbox: Sandbox) -> dict[str, tuple[str, str, str]]:
    """identity/name -> (issuer, subject, audiences) of every credential on the demo identities (azure-mgmt-msi)."""
    from azure.mgmt.msi import ManagedServiceIdentityClient

    azure = sandbox[0].azure
    client = ManagedServiceIdentityClient(azure.deployer_credential(), azure.subscription_id, base_url=azure.arm_url,
                                          credential_scopes=[f"{azure.arm_url}/.default"],
                                          connection_verify=str(azure.ca_bundle))
    found: dict[str, tuple[str, str, str]] = {}
    for identity in (DEMO_API_IDENTITY, DEMO_BROAD_IDENTITY):
        for credential in client.federated_identity_credentials.list(DEMO_RESOURCE_GROUP, identity):
            found[f"{identity}/{credential.name}"] = (str(credential.issuer), str(credential.subject),
                                                      ",".join(credential.audiences or []))
    return found


def azure_owned(sandbox: Sandbox, app: str) -> dict[str, str]:
    """Service account -> identity of every credential keyless named for the app on the AKS target."""
    found: dict[str, str] = {}
    for key, (_, subject, _) in azure_credentials(sandbox).items():
        identity, name = key.split("/", 1)
        parsed = names.parse_federated_credential_name(name)
        if parsed is not None and parsed[0] == app and parsed[2] == names.target_hash(AKS_TARGET):
            found[subject.rsplit(":", 1)[-1]] = identity
    return found


def gcp_members(sandbox: Sandbox) -> dict[str, frozenset[str]]:
    return {email: frozenset(m for b in sandbox[0].gcp.iam_policy(email).get("bindings", [])
                             if b["role"] == WORKLOAD_IDENTITY_USER_ROLE for m in b["members"]) for email in GSAS}


def gcp_owned(sandbox: Sandbox, app: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for email, members in gcp_members(sandbox).items():
        for service in SERVICES:
            if workload_identity_member("keyless-sandbox", "shop", f"{app}-{service}") in members:
                assert f"{app}-{service}" not in found, f"{app}-{service} is a member of two accounts"
                found[f"{app}-{service}"] = email
    return found


OWNED = {"aws": aws_owned, "azure": azure_owned, "gcp": gcp_owned}


def foreign(sandbox: Sandbox) -> dict[str, Any]:
    """Everything keyless does not own, as it stands (compared before and after the soak)."""
    aws = {k: v for k, v in aws_all(sandbox).items() if TAG_APP not in v[3]}
    azure = {k: v for k, v in azure_credentials(sandbox).items() if not k.split("/", 1)[1].startswith("keyless_")}
    gcp = {email: sorted((b["role"], m) for b in sandbox[0].gcp.iam_policy(email).get("bindings", [])
                         for m in b["members"] if "[shop/soak-" not in m) for email in GSAS}
    return {"aws": aws, "azure": azure, "gcp": gcp}


def seed_foreign(sandbox: Sandbox) -> None:
    """Objects someone else made next to keyless's: they must come out of the soak untouched."""
    stack, state = sandbox
    eks = stack.aws.client("eks")
    target = load_targets_file(Path(state.env["KEYLESS_TARGETS"]), state.env).get(EKS_TARGET)
    role = stack.aws.client("iam").get_role(RoleName="keyless-demo-api")["Role"]["Arn"]
    eks.create_pod_identity_association(clusterName=target.cluster, namespace="shop", serviceAccount="soak-foreign",
                                       roleArn=role)
    stack.gcp.add_member(GSAS[0], WORKLOAD_IDENTITY_USER_ROLE,
                         workload_identity_member("keyless-sandbox", "shop", "hand-made"))
    stack.gcp.add_member(GSAS[1], "roles/iam.serviceAccountTokenCreator", f"serviceAccount:{GSAS[0]}")


# --- the soak -------------------------------------------------------------------------------------------


def arm_faults(sandbox: Sandbox, rng: random.Random) -> int:
    """About one call in ten fails the way each cloud fails: throttled, 5xx, or a lost create response.
    Answers how many faults were armed."""
    stack = sandbox[0]
    stack.aws.reset_faults()
    stack.azure.reset_faults()
    stack.gcp.reset_faults()
    armed = 0
    if rng.random() < FAULT_RATE * 3:
        armed += 1
        stack.aws.throttle_next(rng.randint(1, 2))
    if rng.random() < FAULT_RATE:
        armed += 1
        stack.aws.lose_next_create_response(rng.choice(["error", "drop"]))
    if rng.random() < FAULT_RATE * 3:
        armed += 1
        stack.azure.fail_next("Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/write",
                              rng.randint(1, 2), rng.choice([500, 503]))
    if rng.random() < FAULT_RATE * 3:
        armed += 1
        stack.gcp.fail_next(rng.choice([429, 503]), rng.randint(1, 2), rng.choice([":setIamPolicy",
                                                                                     ":getIamPolicy"]))
    return armed


def apply_once(sandbox: Sandbox, cloud: Cloud, app: str, text: str, kill_at: str | None) -> None:
    """One apply as a CI runner would run it; it may fail (faults) or die (kill_at): the next one converges."""
    env = sandbox[1].env
    loaded = load_app(text.encode(), "porter.yaml", {})
    target = load_targets_file(Path(env["KEYLESS_TARGETS"]), env).get(cloud.target)
    client = Client(KubeConfig.from_file(env["KUBECONFIG"]).get(context_name=cloud.context), namespace="shop")
    deploy_workloads(client, app, loaded.app, "shop")
    provider, kube = engine.connect(cloud.target, target)
    try:
        planned = engine.plan_app(engine.PlanInput(loaded, app, cloud.target, target), provider, kube)
        if kill_at is None:
            engine.apply_plan(planned.plan, provider, kube)
        else:
            engine.apply_plan(planned.plan, Dying(provider, kill_at), Dying(kube, kill_at))  # type: ignore[arg-type]
    except (KeylessError, Killed):
        pass


def test_random_edits_under_faults_and_kills_lose_nothing_orphan_nothing_touch_nothing_foreign(
        sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    rng = random.Random(SEED)
    seed_foreign(sandbox)
    before = foreign(sandbox)
    last: dict[str, tuple[str, dict[str, str | None]]] = {}
    faults = kills = 0
    try:
        for _ in range(ROUNDS):
            for kind, cloud in CLOUDS.items():
                app = f"soak-{kind}"
                wanted = {s: rng.choice([None, *cloud.identities]) for s in SERVICES}
                text = porter_text(app, cloud, wanted)
                last[kind] = (text, wanted)
                faults += arm_faults(sandbox, rng)
                kill_at = rng.choice(KILL_POINTS) if rng.random() < KILL_RATE else None
                kills += kill_at is not None
                apply_once(sandbox, cloud, app, text, kill_at)
    finally:
        for stack_cloud in (sandbox[0].aws, sandbox[0].azure, sandbox[0].gcp):
            stack_cloud.reset_faults()
    assert faults > 0, f"seed {SEED} armed no fault: choose another seed"
    assert kills > 0, f"seed {SEED} killed no apply: choose another seed"
    for kind, cloud in CLOUDS.items():
        app = f"soak-{kind}"
        text, wanted = last[kind]
        path = tmp_path / f"{app}.yaml"
        path.write_text(text)
        code, output = run_cli("apply", "-f", str(path), "--target", cloud.target, "--auto-approve")
        assert code == 0, output
        code, output = run_cli("plan", "-f", str(path), "--target", cloud.target)
        assert code == 0, output
        assert "No changes" in output, output
        expected = {f"{app}-{s}": identity for s, identity in wanted.items() if identity}
        assert OWNED[kind](sandbox, app) == expected, f"{kind}: lost or orphaned bindings (seed {SEED})"
    assert foreign(sandbox) == before, f"an object keyless does not own was changed (seed {SEED})"
