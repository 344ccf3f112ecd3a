"""A person pokes at the whole sandbox with kubectl and the aws CLI; keyless runs with only its README role.

kubectl and the aws CLI are run as binaries when the machine has them (the aws CLI is the awscli package on
PyPI); without the aws CLI the same EKS calls go through boto3.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError
from e2e_support import Sandbox, run_cli
from lightkube import Client, KubeConfig
from lightkube.resources.rbac_authorization_v1 import ClusterRole
from lightkube.types import PatchType

from keyless.porter import load_app
from keyless.sandbox.kube.rbac import KEYLESS_RULES
from keyless.sandbox.porter import deploy_workloads
from keyless.sandbox.stack import EKS_CONTEXT, EKS_TARGET, keyless_context

pytestmark = pytest.mark.integration

KUBECTL = shutil.which("kubectl")
AWS = shutil.which("aws")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed on this machine")
KEYLESS_USER = "system:serviceaccount:keyless-system:keyless"

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: poke
  namespace: shop
  labels: {app: poke}
spec:
  selector: {matchLabels: {app: poke}}
  template:
    metadata: {labels: {app: poke}}
    spec:
      containers:
        - name: web
          image: nginx:1.27
"""


def kubectl(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    return subprocess.run([KUBECTL, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
                               "KUBECONFIG": env["KUBECONFIG"]})


@needs_kubectl
def test_kubectl_apply_scale_get_wide_and_auth_can_i(sandbox: Sandbox, env: dict[str, str]) -> None:
    stack, _ = sandbox
    assert stack.eks is not None
    misspelled = kubectl(env, "apply", "--validate=strict", "-f", "-",
                         stdin=DEPLOYMENT.replace("image: nginx", "imag: nginx"))
    assert misspelled.returncode != 0
    assert 'unknown field "spec.template.spec.containers[0].imag"' in misspelled.stderr
    applied = kubectl(env, "apply", "--validate=strict", "-f", "-", stdin=DEPLOYMENT)
    assert applied.returncode == 0, applied.stderr
    assert "deployment.apps/poke created" in applied.stdout

    scaled = kubectl(env, "scale", "deployment/poke", "-n", "shop", "--replicas=3")
    assert scaled.returncode == 0, scaled.stderr
    assert "deployment.apps/poke scaled" in scaled.stdout
    stack.eks.wait_idle()
    replicas = kubectl(env, "get", "deployment", "poke", "-n", "shop", "-o", "jsonpath={.status.readyReplicas}")
    assert replicas.stdout == "3"

    wide = kubectl(env, "get", "pods", "-n", "shop", "-l", "app=poke", "-o", "wide")
    assert wide.returncode == 0, wide.stderr
    header, *rows = wide.stdout.splitlines()
    assert header.split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE",
                              "READINESS", "GATES"]
    assert len(rows) == 3
    for row in rows:
        cells = row.split()
        assert cells[0].startswith("poke-")
        assert cells[1:4] == ["1/1", "Running", "0"]
        assert cells[6] == stack.eks.api.node_name

    keyless = keyless_context(EKS_CONTEXT)
    for verb, resource, answer in (("create", "serviceaccounts/token", "yes"), ("patch", "deployments.apps", "yes"),
                                   ("list", "pods", "no"), ("get", "secrets", "no"), ("create", "deployments", "no")):
        result = kubectl(env, "auth", "can-i", verb, resource, "-n", "shop", "--context", keyless)
        assert result.stdout.strip() == answer, (verb, resource, result.stderr)
        assert result.returncode == (0 if answer == "yes" else 1)
    elsewhere = kubectl(env, "auth", "can-i", "list", "serviceaccounts", "-n", "default", "--context", keyless)
    assert elsewhere.stdout.strip() == "no"
    assert kubectl(env, "auth", "can-i", "*", "*", "--all-namespaces").stdout.strip() == "yes"  # the admin context
    listing = kubectl(env, "auth", "can-i", "--list", "-n", "shop", "--context", keyless)
    assert listing.returncode == 0, listing.stderr
    assert any(line.split()[:1] == ["serviceaccounts/token"] and "[create]" in line
               for line in listing.stdout.splitlines())
    whoami = kubectl(env, "auth", "whoami", "--context", keyless, "-o", "json")
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == KEYLESS_USER
    refused = kubectl(env, "get", "pods", "-n", "shop", "--context", keyless)
    assert refused.returncode == 1
    assert (f'pods is forbidden: User "{KEYLESS_USER}" cannot list resource "pods" in API group "" in the '
            'namespace "shop"') in refused.stderr


def _aws(*args: str) -> tuple[int, str, str]:
    assert AWS is not None
    result = subprocess.run([AWS, "eks", *args, "--output", "json"], capture_output=True, text=True, timeout=60,
                            check=False, env=dict(os.environ))
    return result.returncode, result.stdout, result.stderr


def test_eks_describes_the_issuer_the_cluster_serves_and_answers_json_for_what_it_lacks(
        sandbox: Sandbox, env: dict[str, str]) -> None:
    stack, _ = sandbox
    assert stack.eks is not None
    if KUBECTL is not None:
        raw = kubectl(env, "get", "--raw", "/.well-known/openid-configuration")
        assert raw.returncode == 0, raw.stderr
        served = json.loads(raw.stdout)["issuer"]
    else:  # the document is public, as EKS's is
        served = httpx.get(f"{stack.eks.url}/.well-known/openid-configuration", timeout=10).json()["issuer"]
    if AWS is not None:
        code, out, err = _aws("describe-cluster", "--name", "keyless-sandbox")
        assert code == 0, err
        described = json.loads(out)["cluster"]["identity"]["oidc"]["issuer"]
        code, out, err = _aws("describe-addon-versions", "--addon-name", "eks-pod-identity-agent")
        assert code == 0, err
        assert json.loads(out)["addons"][0]["addonVersions"]
        for args in (("list-access-entries", "--cluster-name", "keyless-sandbox"),
                     ("update-addon", "--cluster-name", "keyless-sandbox", "--addon-name", "eks-pod-identity-agent")):
            code, out, err = _aws(*args)
            assert code != 0
            assert "(InvalidRequestException)" in err, err
            assert "is not supported by the keyless sandbox" in err
            assert "<html" not in err.lower()
    else:
        eks = boto3.client("eks")
        described = eks.describe_cluster(name="keyless-sandbox")["cluster"]["identity"]["oidc"]["issuer"]
        assert eks.describe_addon_versions(addonName="eks-pod-identity-agent")["addons"][0]["addonVersions"]
        with pytest.raises(ClientError) as refused:
            eks.list_access_entries(clusterName="keyless-sandbox")
        assert refused.value.response["Error"]["Code"] == "InvalidRequestException"
    assert described == served == stack.eks.issuer_url
    assert described.startswith("https://oidc.eks.")


def test_keyless_fails_with_a_clear_403_when_its_role_lacks_one_verb(
        sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "porter.yaml"
    path.write_text("name: e2e-rbac\nservices:\n  - name: api\n    type: web\n    port: 8080\n"
                    "    connections:\n      - type: awsRole\n        role: keyless-demo-api\n")
    admin = Client(KubeConfig.from_file(env["KUBECONFIG"]).get(context_name=EKS_CONTEXT), namespace="shop")
    loaded = load_app(path.read_bytes(), str(path), {})
    deploy_workloads(admin, "e2e-rbac", loaded.app, "shop")
    rules = [dict(rule) for rule in KEYLESS_RULES]
    deployments = next(i for i, rule in enumerate(rules) if rule["resources"] == ["deployments"])
    without_patch = [v for v in rules[deployments]["verbs"] if v != "patch"]
    admin.patch(ClusterRole, "keyless", [{"op": "replace", "path": f"/rules/{deployments}/verbs",
                                          "value": without_patch}], patch_type=PatchType.JSON)
    try:
        code, output = run_cli("apply", "-f", str(path), "--target", EKS_TARGET, "--auto-approve")
        assert code != 0, output
        flat = " ".join(output.split())
        assert (f'deployments.apps "e2e-rbac-api" is forbidden: User "{KEYLESS_USER}" cannot patch resource '
                '"deployments" in API group "apps" in the namespace "shop" (HTTP 403)') in flat
    finally:
        admin.patch(ClusterRole, "keyless", [{"op": "replace", "path": "/rules", "value": rules}],
                    patch_type=PatchType.JSON)
    code, output = run_cli("apply", "-f", str(path), "--target", EKS_TARGET, "--auto-approve")
    assert code == 0, output  # the README's role is enough: the same apply passes once the verb is back
