"""The AWS audit fetcher over stubbed boto3 clients: denied reads, default policy versions, foreign accounts."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from keyless.audit import rules as R
from keyless.bindings import Binding
from keyless.clouds import AwsRole, Cloud
from keyless.porter.model import ServiceType
from keyless.providers.aws_audit import AwsAuditor
from keyless.providers.retry import NO_RETRY
from keyless.targets import AwsTarget

TARGET = AwsTarget.model_validate({"cloud": "aws", "region": "us-east-1", "cluster": "prod", "namespace": "shop"})
ROLE_ARN = "arn:aws:iam::123456789012:role/shop-api"
POLICY_ARN = "arn:aws:iam::123456789012:policy/shop-api"
TRUST = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"},
                                                 "Action": ["sts:AssumeRole", "sts:TagSession"]}]}
NOW = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)


def binding(role: str = "shop-api") -> Binding:
    return Binding(app="shop", service="api", kind=ServiceType.WEB, target="prod", cloud=Cloud.AWS, namespace="shop",
                   service_account="shop-api", identity=AwsRole(role=role))


@pytest.fixture
def stubbed() -> Iterator[tuple[AwsAuditor, Stubber, Stubber]]:
    session = boto3.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret", region_name="us-east-1")
    auditor = AwsAuditor(TARGET, session, retry=NO_RETRY)
    with Stubber(auditor._iam) as iam, Stubber(auditor._eks) as eks:
        yield auditor, iam, eks


def get_role(iam: Stubber, arn: str = ROLE_ARN) -> None:
    iam.add_response("get_role", {"Role": {"RoleName": "shop-api", "Path": "/", "RoleId": "AROAEXAMPLEEXAMPLE1",
                                           "Arn": arn, "CreateDate": NOW,
                                           "AssumeRolePolicyDocument": json.dumps(TRUST)}},
                     {"RoleName": "shop-api"})


def no_cluster_access(eks: Stubber) -> None:
    eks.add_client_error("describe_cluster", "AccessDeniedException", http_status_code=403)
    eks.add_response("list_pod_identity_associations", {"associations": []})


def test_denied_reads_become_incomplete_findings_and_the_rest_is_still_audited(
        stubbed: tuple[AwsAuditor, Stubber, Stubber]) -> None:
    auditor, iam, eks = stubbed
    get_role(iam)
    iam.add_client_error("list_role_policies", "AccessDenied", http_status_code=403)
    iam.add_response("list_attached_role_policies", {"AttachedPolicies": [
        {"PolicyName": "shop-api", "PolicyArn": POLICY_ARN}], "IsTruncated": False})
    iam.add_response("get_policy", {"Policy": {"PolicyName": "shop-api", "Arn": POLICY_ARN,
                                               "DefaultVersionId": "v3"}}, {"PolicyArn": POLICY_ARN})
    document: dict[str, Any] = {"Version": "2012-10-17",
                                "Statement": [{"Effect": "Allow", "Action": "dynamodb:*", "Resource": "*"}]}
    iam.add_response("get_policy_version", {"PolicyVersion": {"Document": json.dumps(document), "VersionId": "v3",
                                                              "IsDefaultVersion": True}},
                     {"PolicyArn": POLICY_ARN, "VersionId": "v3"})
    no_cluster_access(eks)
    report = auditor.audit("shop", "prod", [binding()])
    findings = report.connections[0].findings
    incomplete = [f for f in findings if f.rule is R.AUDIT_INCOMPLETE]
    assert [f.message for f in incomplete] == ["could not read iam:ListRolePolicies shop-api (AccessDenied)"]
    wildcard = next(f for f in findings if f.rule is R.AWS_PERM_WILDCARD_ACTION)
    assert wildcard.location.document == f"managed policy {POLICY_ARN} v3"
    scope = next(f for f in findings if f.rule is R.AWS_TRUST_SCOPE)
    # DescribeCluster was denied: the cluster ARN is built from the role's partition and account.
    assert "arn:aws:eks:us-east-1:123456789012:cluster/prod" in scope.fix
    assert report.connections[0].binding.identity == AwsRole(role="shop-api", arn=ROLE_ARN)


def test_a_role_arn_of_another_account_is_not_audited_as_the_home_role(
        stubbed: tuple[AwsAuditor, Stubber, Stubber]) -> None:
    auditor, iam, eks = stubbed
    get_role(iam)  # the home account has a role of the same name
    no_cluster_access(eks)
    report = auditor.audit("shop", "prod", [binding("arn:aws:iam::999999999999:role/shop-api")])
    [finding] = report.connections[0].findings
    assert finding.rule is R.AUDIT_INCOMPLETE
    assert "not in the account keyless runs in" in finding.message


def test_a_missing_role_is_an_incomplete_audit(stubbed: tuple[AwsAuditor, Stubber, Stubber]) -> None:
    auditor, iam, eks = stubbed
    iam.add_client_error("get_role", "NoSuchEntity", http_status_code=404)
    no_cluster_access(eks)
    [finding] = auditor.audit("shop", "prod", [binding()]).connections[0].findings
    assert "does not exist" in finding.message


def test_a_denied_association_listing_says_sharing_was_not_checked(
        stubbed: tuple[AwsAuditor, Stubber, Stubber]) -> None:
    auditor, iam, eks = stubbed
    get_role(iam)
    iam.add_response("list_role_policies", {"PolicyNames": [], "IsTruncated": False})
    iam.add_response("list_attached_role_policies", {"AttachedPolicies": [], "IsTruncated": False})
    eks.add_response("describe_cluster", {"cluster": {"name": "prod",
                                                      "arn": "arn:aws:eks:us-east-1:123456789012:cluster/prod"}})
    eks.add_client_error("list_pod_identity_associations", "AccessDeniedException", http_status_code=403)
    findings = auditor.audit("shop", "prod", [binding()]).connections[0].findings
    assert any(f.rule is R.AUDIT_INCOMPLETE and "sharing with other apps was not checked" in f.message
               for f in findings)
