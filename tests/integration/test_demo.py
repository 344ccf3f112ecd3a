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


def keyless(*args: str, sandbox: Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBECONFIG", "KEYLESS_"))}
    env["KEYLESS_SANDBOX_DIR"] = str(sandbox)
    result = subprocess.run([sys.executable, "-m", "keyless", *args], cwd=ROOT, env=env, text=True,
                            capture_output=True, timeout=300, check=False)
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_demo_proves_each_identity_from_inside_a_pod_and_a_rerun_changes_nothing(sandbox_dir: Path) -> None:
    first = keyless("demo", sandbox=sandbox_dir, check=True)
    assert "+ cloud_binding shop/shop-api" in first.stdout
    assert ":assumed-role/keyless-demo-api/" in first.stdout
    assert ":assumed-role/keyless-demo-worker/" in first.stdout
    assert "via container-role" in first.stdout

    second = keyless("demo", sandbox=sandbox_dir, check=True)
    assert "No changes" in second.stdout
    assert ":assumed-role/keyless-demo-api/" in second.stdout


def test_sandbox_up_env_exec_down(sandbox_dir: Path) -> None:
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

    missing = keyless("sandbox", "exec", "no-such-pod", "--", "true", sandbox=sandbox_dir)
    assert missing.returncode == 1
    assert "no-such-pod" in missing.stderr

    down = keyless("sandbox", "down", sandbox=sandbox_dir, check=True)
    assert "Stopped" in down.stdout
    after = keyless("sandbox", "env", sandbox=sandbox_dir)
    assert after.returncode == 1
    assert "not running" in after.stderr
