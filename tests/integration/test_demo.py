"""The README's first command: `keyless demo` and `keyless sandbox up|env|exec|down`, as a person runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sandbox_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "sandbox"
    yield directory
    keyless("sandbox", "down", sandbox=directory)


def keyless(*args: str, sandbox: Path, check: bool = False, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBECONFIG", "KEYLESS_"))}
    env["KEYLESS_SANDBOX_DIR"] = str(sandbox)
    # The sandbox's pods run `keyless` as this interpreter's keyless, whatever PATH holds: none here.
    env["PATH"] = "/usr/bin:/bin"
    result = subprocess.run([sys.executable, "-m", "keyless", *args], cwd=cwd, env=env, text=True,
                            capture_output=True, timeout=300, check=False)
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_demo_proves_each_identity_from_inside_a_pod_and_a_rerun_changes_nothing(sandbox_dir: Path,
                                                                                   tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"  # not the repository: the demo finds its example all the same
    elsewhere.mkdir()
    first = keyless("demo", sandbox=sandbox_dir, check=True, cwd=elsewhere)
    assert "+ cloud_binding shop/shop-api" in first.stdout
    assert ":assumed-role/keyless-demo-api/" in first.stdout
    assert ":assumed-role/keyless-demo-worker/" in first.stdout
    assert "via container-role" in first.stdout

    second = keyless("demo", sandbox=sandbox_dir, check=True)
    assert "No changes" in second.stdout
    assert ":assumed-role/keyless-demo-api/" in second.stdout

    # The demo left its pods behind: they are listed, and the README's exec form reaches each, from anywhere.
    pods = keyless("sandbox", "pods", sandbox=sandbox_dir, check=True, cwd=elsewhere).stdout
    eks_api = next(line.split()[0] for line in pods.splitlines()
                   if " sandbox-eks " in line and line.rstrip().endswith("shop/api"))
    for args in ([eks_api, "-n", "shop", "--", "keyless", "doctor"],
                 ["-n", "shop", eks_api, "--", "keyless", "doctor", "--format", "json"],
                 [eks_api, "--context", "sandbox-eks", "-n", "shop", "--", "keyless", "doctor"]):
        doctor = keyless("sandbox", "exec", *args, sandbox=sandbox_dir, cwd=elsewhere)
        assert doctor.returncode == 0, (args, doctor.stdout + doctor.stderr)
        assert "assumed-role/keyless-demo-api/" in doctor.stdout

    wrong = keyless("sandbox", "exec", eks_api, "--context", "sandbox-aks", "--", "true", sandbox=sandbox_dir)
    assert wrong.returncode == 1
    assert f"keyless sandbox exec {eks_api} -n shop --context sandbox-eks -- keyless doctor" in wrong.stderr


def test_a_demo_that_cannot_start_leaves_no_sandbox_running(sandbox_dir: Path, tmp_path: Path) -> None:
    missing = keyless("demo", "-f", str(tmp_path / "nope.yaml"), sandbox=sandbox_dir, cwd=tmp_path)
    assert missing.returncode == 2
    assert "nope.yaml" in missing.stderr
    assert keyless("sandbox", "env", sandbox=sandbox_dir).returncode == 1


def test_sandbox_up_env_exec_down(sandbox_dir: Path, tmp_path: Path) -> None:
    up = keyless("sandbox", "up", sandbox=sandbox_dir, check=True)
    assert "Started" in up.stdout
    again = keyless("sandbox", "up", sandbox=sandbox_dir, check=True)
    assert "Already running" in again.stdout

    exports = keyless("sandbox", "env", sandbox=sandbox_dir, check=True).stdout
    for variable in ("AWS_ENDPOINT_URL_EKS", "AWS_ENDPOINT_URL_IAM", "AWS_ENDPOINT_URL_STS", "KUBECONFIG",
                     "KEYLESS_TARGETS", "CLOUDSDK_API_ENDPOINT_OVERRIDES_IAM", "GOOGLE_APPLICATION_CREDENTIALS"):
        assert f"export {variable}=" in exports
    targets = next(line for line in exports.splitlines() if "KEYLESS_TARGETS" in line).split("=", 1)[1]
    listed = Path(targets.strip("'")).read_text()
    assert "sandbox-eks" in listed
    assert "sandbox-gke" in listed

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    from_elsewhere = keyless("sandbox", "env", sandbox=sandbox_dir, check=True, cwd=elsewhere).stdout
    assert from_elsewhere == exports

    missing = keyless("sandbox", "exec", "no-such-pod", "--", "true", sandbox=sandbox_dir)
    assert missing.returncode == 1
    assert "no-such-pod" in missing.stderr
    assert "keyless sandbox deploy -f porter.yaml" in missing.stderr  # no pods yet: how to get some
    assert "No pods yet" in keyless("sandbox", "pods", sandbox=sandbox_dir, check=True).stdout

    deployed = keyless("sandbox", "deploy", "-f", "examples/porter.yaml", "--context", "sandbox-eks",
                       sandbox=sandbox_dir, check=True)
    assert "(as Porter would) deployed sandbox-eks: Deployment shop/shop-api" in deployed.stdout
    pods = keyless("sandbox", "pods", sandbox=sandbox_dir, check=True).stdout
    assert "shop/api" in pods
    assert "sandbox-aks" not in pods

    down = keyless("sandbox", "down", sandbox=sandbox_dir, check=True)
    assert "Stopped" in down.stdout
    unset = next(line.split() for line in down.stdout.splitlines() if line.strip().startswith("unset "))
    exported = {line.split("=", 1)[0].removeprefix("export ") for line in exports.splitlines()}
    assert set(unset[1:]) == exported
    after = keyless("sandbox", "env", sandbox=sandbox_dir)
    assert after.returncode == 1
    assert "not running" in after.stderr
