"""`keyless audit` on the command line, for what never reaches a cloud: GCP targets, bad options, help."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyless.cli import app

PORTER = """\
name: shop
services:
  - name: api
    type: web
    connections:
      - type: gcpServiceAccount
        serviceAccountEmail: shop-api@my-project.iam.gserviceaccount.com
"""

TARGETS = """\
targets:
  prod-gke:
    cloud: gcp
    project: my-project
    location: us-central1
    cluster: prod-gke
    namespace: shop
"""


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    for name in ("KEYLESS_TARGETS", "PORTER_APP_NAME"):
        monkeypatch.delenv(name, raising=False)
    porter = tmp_path / "porter.yaml"
    porter.write_text(PORTER)
    targets = tmp_path / "targets.yaml"
    targets.write_text(TARGETS)
    return porter, targets


def test_a_gcp_target_without_google_credentials_says_how_to_sign_in(
        files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    porter, targets = files
    # No ADC anywhere: no key file, no gcloud configuration, and no metadata server to find.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    result = CliRunner().invoke(app, ["audit", "-f", str(porter), "--target", "prod-gke", "--targets", str(targets)])
    assert result.exit_code == 1, result.output
    assert "no Google credentials found" in result.output
    assert "gcloud auth application-default login" in result.output


@pytest.mark.parametrize("option", [["--fail-on", "info"], ["--format", "xml"]])
def test_unknown_option_values_are_usage_errors(files: tuple[Path, Path], option: list[str]) -> None:
    porter, targets = files
    result = CliRunner().invoke(app, ["audit", "-f", str(porter), "--target", "prod-gke", "--targets", str(targets),
                                      *option])
    assert result.exit_code == 2


def test_audit_and_fail_on_are_in_the_help() -> None:
    runner = CliRunner()
    assert "audit" in runner.invoke(app, ["--help"]).output
    for command in ("audit", "plan", "apply"):
        assert "--fail-on" in runner.invoke(app, [command, "--help"]).output
