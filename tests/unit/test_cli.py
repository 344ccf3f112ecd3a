"""The command line through typer's CliRunner: exit codes, messages and JSON, for input that never reaches a cloud."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from keyless import __version__
from keyless.cli import app
from keyless.plan import Refresh

PORTER = """\
name: shop
services:
  - name: api
    type: web
    port: 8080
    connections:
      - type: awsRole
        role: api-role
  - name: worker
    type: worker
    connections:
      - type: azureManagedIdentity
        identityName: shop-worker
        resourceGroup: platform
"""

TARGETS = """\
targets:
  prod-eks:
    cloud: aws
    region: us-east-1
    cluster: prod
    namespace: shop
  prod-aks:
    cloud: azure
    subscription: 00000000-0000-0000-0000-000000000000
    resourceGroup: platform
    cluster: prod-aks
    namespace: shop
    kubernetes: {mode: render}
  prod-gke:
    cloud: gcp
    project: my-project
    location: us-central1
    cluster: prod-gke
    namespace: shop
    kubernetes: {mode: render}
"""


@pytest.fixture(autouse=True)
def quiet_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ambient configuration: no targets file from the env, no app name, no usable kubeconfig."""
    for name in ("KEYLESS_TARGETS", "PORTER_APP_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture
def porter(tmp_path: Path) -> Path:
    return write(tmp_path, "porter.yaml", PORTER)


@pytest.fixture
def targets(tmp_path: Path) -> Path:
    return write(tmp_path, "targets.yaml", TARGETS)


def run(*args: str | Path) -> Result:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.stdout + result.stderr
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    return result


# --- validate and schema ---------------------------------------------------------------------------------


def test_validate_a_valid_file_lists_its_services(porter: Path) -> None:
    result = run("validate", "-f", porter)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"{porter}: valid. App 'shop', 2 service(s)"
    assert lines[1].split() == ["api", "web", "awsRole", "api-role"]
    assert lines[2].split() == ["worker", "worker", "azureManagedIdentity", "platform/shop-worker"]


def test_validate_json_of_a_valid_file(porter: Path) -> None:
    result = run("validate", "-f", porter, "--format", "json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["valid"] is True
    assert data["file"] == str(porter)
    assert data["app"]["name"] == "shop"
    assert [s["name"] for s in data["app"]["services"]] == ["api", "worker"]
    assert data["app"]["services"][0]["connections"] == [{"type": "awsRole", "role": "api-role"}]
    assert data["diagnostics"] == []


def test_validate_json_of_an_invalid_file_locates_each_problem(tmp_path: Path) -> None:
    bad = write(tmp_path, "porter.yaml", PORTER.replace("port: 8080", "port: lots").replace(
        "role: api-role", "rolle: api-role"))
    result = run("validate", "-f", bad, "--format", "json")
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["valid"] is False
    errors = [d for d in data["diagnostics"] if d["severity"] == "error"]
    assert {(d["line"], d["column"]) for d in errors} >= {(5, 11), (7, 9)}
    port = next(d for d in errors if d["line"] == 5)
    assert "whole number" in port["message"]
    assert port["file"] == str(bad)
    assert all(isinstance(d["hint"], str) for d in errors)


def test_validate_text_of_an_invalid_file_prints_file_line_col(tmp_path: Path) -> None:
    bad = write(tmp_path, "porter.yaml", PORTER.replace("port: 8080", "port: lots"))
    result = run("validate", "-f", bad)
    assert result.exit_code == 2
    assert f"{bad}:5:11: `port` must be a whole number" in result.stderr


def test_validate_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = run("validate", "-f", missing)
    assert result.exit_code == 2
    assert f"{missing}:1:1: file not found" in result.stderr


def test_schema_describes_services_and_every_identity_connection() -> None:
    result = run("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "services" in schema["properties"]
    assert "services" in schema["required"]
    items = schema["$defs"]["Service"]["properties"]["connections"]["items"]
    mapping = items["discriminator"]["mapping"]
    assert {"awsRole", "azureManagedIdentity", "gcpServiceAccount"} <= set(mapping)
    for ref in mapping.values():
        assert ref.removeprefix("#/$defs/") in schema["$defs"]
    assert schema["$defs"]["AwsRoleConnection"]["required"] == ["type", "role"]


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout == f"keyless {__version__}\n"


# --- plan and apply: input errors ---------------------------------------------------------------------


def test_plan_with_an_unknown_target_names_the_known_ones(porter: Path, targets: Path) -> None:
    result = run("plan", "-f", porter, "--target", "nope", "--targets", targets)
    assert result.exit_code == 2
    assert f"{targets}:1:1: no target named 'nope'" in result.stderr
    assert "targets in this file: prod-aks, prod-eks, prod-gke" in result.stderr


def test_plan_with_a_broken_targets_file_points_at_the_error(porter: Path, tmp_path: Path) -> None:
    broken = write(tmp_path, "targets.yaml", TARGETS.replace("region: us-east-1", "region: us-east"))
    result = run("plan", "-f", porter, "--target", "prod-eks", "--targets", broken)
    assert result.exit_code == 2
    assert f"{broken}:4:13: AWS region 'us-east' is not valid" in result.stderr


def test_plan_with_a_missing_targets_file(porter: Path, tmp_path: Path) -> None:
    result = run("plan", "-f", porter, "--target", "prod-eks")
    assert result.exit_code == 2
    assert "keyless.targets.yaml:1:1: file not found" in result.stderr


def test_plan_with_an_invalid_porter_yaml_stops_before_the_targets(tmp_path: Path, targets: Path) -> None:
    bad = write(tmp_path, "porter.yaml", "services: nope\n")
    result = run("plan", "-f", bad, "--target", "prod-eks", "--targets", targets)
    assert result.exit_code == 2
    assert f"{bad}:1:11:" in result.stderr


def test_apply_needs_a_target_or_a_plan_file(porter: Path) -> None:
    result = run("apply", "-f", porter)
    assert result.exit_code == 2
    assert "apply needs --target NAME (or a saved plan file)" in result.stderr


@pytest.mark.parametrize("content", [
    "garbage",
    b"\xff\xfe\x00not utf-8",
    "{}",
    '{"format": 3, "app": "shop"}',
    '{"format": 1, "app": "shop"}',
    '{"format": 2, "app": "shop"}',
    '{"format": 2, "app": "shop", "target": "t", "cloud": "aws", "observedDigest": "d", "actions": [{}]}',
    '{"format": 2, "app": "shop", "target": "t", "cloud": "mars", "observedDigest": "d", "actions": []}',
], ids=["text", "binary", "empty-object", "format-3", "format-1", "no-fields", "empty-action", "bad-cloud"])
def test_apply_with_a_garbage_plan_file(tmp_path: Path, content: str | bytes) -> None:
    plan = write(tmp_path, "plan.json", content)
    result = run("apply", plan)
    assert result.exit_code == 2
    assert f"{plan}: not a keyless plan file" in result.stderr
    assert "keyless plan --out plan.json" in result.stderr


@pytest.mark.parametrize("content", [
    "[]", '"plan"', "42", "null",
    '{"format": 2, "app": "shop", "target": "t", "cloud": "aws", "observedDigest": "d", "actions": [1]}',
], ids=["list", "string", "number", "null", "action-not-an-object"])
def test_apply_with_a_plan_file_that_is_not_made_of_json_objects(tmp_path: Path, content: str) -> None:
    plan = write(tmp_path, "plan.json", content)
    result = run("apply", plan)
    assert result.exit_code == 2
    assert f"{plan}: not a keyless plan file" in result.stderr


def test_apply_with_a_plan_file_that_is_a_directory(tmp_path: Path) -> None:
    result = run("apply", tmp_path)
    assert result.exit_code == 2
    assert "not a keyless plan file" in result.stderr


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_a_gcp_target_without_google_credentials_says_how_to_sign_in(
        porter: Path, targets: Path, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    result = run(command, "-f", porter, "--target", "prod-gke", "--targets", targets)
    assert result.exit_code == 1, result.stderr
    assert "no Google credentials found" in result.stderr
    assert "Traceback" not in result.stderr


def test_apply_of_a_plan_saved_by_an_earlier_keyless_says_to_plan_again(tmp_path: Path) -> None:
    plan = write(tmp_path, "plan.json", '{"format": 1, "app": "shop", "target": "t", "cloud": "aws", '
                                        '"observedDigest": "d", "actions": []}')
    result = run("apply", plan)
    assert result.exit_code == 2
    assert "saved by an earlier keyless (plan format 1)" in result.stderr
    assert "run `keyless plan --out` again" in result.stderr


def test_an_endless_input_is_read_only_up_to_the_cap(tmp_path: Path) -> None:
    # /dev/zero never ends: reading it whole would never finish; one byte past the cap is enough to refuse it.
    result = run("validate", "-f", Path("/dev/zero"))
    assert result.exit_code == 2
    assert "/dev/zero:1:1: file is larger than 1,048,576 bytes" in result.stderr
    big = write(tmp_path, "porter.yaml", b"services: []\n" + b"#" * (1024 * 1024))
    result = run("validate", "-f", big)
    assert result.exit_code == 2
    assert "larger than 1,048,576 bytes" in result.stderr


# --- help ------------------------------------------------------------------------------------------------


def _command_paths() -> list[list[str]]:
    """Every command and group of the CLI, as the words that name it (the root is [])."""
    import typer

    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(command: object, words: list[str]) -> None:
        paths.append(words)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*words, name])

    walk(root, [])
    return paths


def test_help_of_every_command_shows_no_type_beside_a_flag() -> None:
    paths = _command_paths()
    assert ["sandbox", "exec"] in paths  # the walk reaches subcommands
    assert ["plan"] in paths
    for words in paths:
        result = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (words, result.output)
        assert "--help" in result.output
        assert "<bool>" not in result.output, (words, result.output)


def test_plan_help_offers_no_option_that_does_nothing() -> None:
    result = CliRunner().invoke(app, ["plan", "--help"], env={"COLUMNS": "200"})
    assert "always on" not in result.output
    # --refresh does something now: false trusts the journal (tests/integration/test_call_counts.py counts it).
    assert "--refresh" in result.output
    assert "--no-refresh" in result.output


@pytest.mark.parametrize(("value", "no_refresh", "expected"), [
    ("true", False, Refresh.FULL), ("false", False, Refresh.NONE), ("FALSE", False, Refresh.NONE),
    ("true", True, Refresh.NONE)])
def test_refresh_is_spelled_as_terraform_spells_it(value: str, no_refresh: bool, expected: Refresh) -> None:
    from keyless.cli import _refresh

    assert _refresh(value, no_refresh) is expected


def test_a_refresh_that_is_neither_true_nor_false_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["plan", "--target", "x", "--refresh=sometimes"])
    assert result.exit_code == 2
    assert "--refresh=sometimes: expected true or false" in result.output


def test_sandbox_help_names_every_cloud_it_stands_in_for() -> None:
    result = CliRunner().invoke(app, ["sandbox", "--help"], env={"COLUMNS": "200"})
    for cloud in ("AWS", "Azure", "GCP", "Kubernetes"):
        assert cloud in result.output
