"""Unit tests of keyless.doctor that need no cloud: static keys in the env, and the AWS check when nothing is set."""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from keyless.doctor import Verdict, check_aws, check_azure, run_checks, static_key_findings, token_claims

KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def shown(checks: list[Any]) -> str:
    """Everything a check would print, in text or JSON."""
    return json.dumps([c.as_json() for c in checks])


@pytest.mark.parametrize(("env", "named"), [
    ({"AWS_ACCESS_KEY_ID": KEY_ID}, "AWS_ACCESS_KEY_ID"),
    ({"AWS_SECRET_ACCESS_KEY": SECRET}, "AWS_SECRET_ACCESS_KEY"),
    ({"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}, "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY"),
])
def test_static_keys_are_flagged_by_name(env: dict[str, str], named: str) -> None:
    findings = static_key_findings({**env, "HOME": "/root"})
    assert len(findings) == 1
    finding = findings[0]
    assert finding.cloud == "aws"
    assert finding.verdict is Verdict.ERROR
    assert finding.summary == f"static credentials in the environment: {named}"
    assert "remove them" in finding.details["fix"]


def test_static_key_values_are_never_shown() -> None:
    findings = static_key_findings({"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET})
    text = shown(findings) + "".join(f.summary for f in findings)
    assert KEY_ID not in text
    assert SECRET not in text
    assert "AKIA" not in text


@pytest.mark.parametrize("env", [
    {},
    {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""},  # set but empty: no key
    {"AWS_REGION": "us-east-1", "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.23/v1/credentials"},
])
def test_no_static_keys_no_finding(env: dict[str, str]) -> None:
    assert static_key_findings(env) == []


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Fail any attempt to open a connection; returns the attempts seen."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise AssertionError(f"network call attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_aws_check_is_skipped_when_nothing_is_configured(no_network: list[object]) -> None:
    check = check_aws({})
    assert check.verdict is Verdict.SKIPPED
    assert check.cloud == "aws"
    assert check.summary == "no AWS identity is configured in this pod"
    assert "Pod Identity" in check.details["hint"]
    assert no_network == []


def test_all_checks_with_an_empty_env_report_only_a_skip(no_network: list[object]) -> None:
    checks = run_checks({"HOME": "/root", "PATH": "/usr/bin"}, metadata_answers=lambda: False)
    assert [(c.cloud, c.verdict) for c in checks] == [("aws", Verdict.SKIPPED), ("azure", Verdict.SKIPPED),
                                                      ("gcp", Verdict.SKIPPED)]
    assert json.loads(shown(checks))[0]["verdict"] == "skipped"
    assert no_network == []


def test_azure_secrets_are_flagged_by_name_and_never_shown() -> None:
    findings = static_key_findings({"AZURE_CLIENT_SECRET": "s3cr3t-value", "AZURE_CLIENT_CERTIFICATE_PATH": "/c.pem"})
    (finding,) = findings
    assert finding.cloud == "azure"
    assert finding.verdict is Verdict.ERROR
    assert "AZURE_CLIENT_SECRET" in finding.summary
    assert "AZURE_CLIENT_CERTIFICATE_PATH" in finding.summary
    assert "s3cr3t-value" not in json.dumps(finding.as_json())


def test_incomplete_workload_identity_is_an_error_without_a_network_call(no_network: list[object]) -> None:
    check = check_azure({"AZURE_CLIENT_ID": "00000000-0000-0000-0000-000000000001"})
    assert check.verdict is Verdict.ERROR
    assert "AZURE_TENANT_ID" in check.summary
    assert "AZURE_FEDERATED_TOKEN_FILE" in check.summary
    assert no_network == []


def test_token_claims_reads_the_payload_and_tolerates_garbage() -> None:
    payload = base64.urlsafe_b64encode(json.dumps({"oid": "o-1", "appid": "a-1"}).encode()).decode().rstrip("=")
    assert token_claims(f"header.{payload}.signature") == {"oid": "o-1", "appid": "a-1"}
    assert token_claims("not-a-jwt") == {}


def test_a_google_key_file_is_flagged_without_showing_the_key(tmp_path: Path) -> None:
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----secret",
                               "client_email": "app@my-project.iam.gserviceaccount.com"}))
    (finding,) = static_key_findings({"GOOGLE_APPLICATION_CREDENTIALS": str(key)})
    assert (finding.cloud, finding.verdict) == ("gcp", Verdict.ERROR)
    assert str(key) in finding.summary
    assert "secret" not in json.dumps(finding.as_json())


def test_a_workload_identity_federation_config_is_not_a_key(tmp_path: Path) -> None:
    config = tmp_path / "wif.json"
    config.write_text(json.dumps({"type": "external_account", "audience": "//iam.googleapis.com/projects/1/x"}))
    assert static_key_findings({"GOOGLE_APPLICATION_CREDENTIALS": str(config)}) == []
