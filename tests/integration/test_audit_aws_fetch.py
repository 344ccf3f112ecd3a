"""The AWS audit fetcher with real boto3 against the sandbox: denied reads, default policy versions, foreign
accounts, missing roles. Denials come from the sandbox's `deny()` knob, answered as AWS answers a caller whose
policies lack the action."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from keyless.audit import rules as R
from keyless.bindings import Binding
from keyless.clouds import AwsRole, Cloud
from keyless.porter.model import ServiceType
from keyless.providers.aws_audit import AwsAuditor
from keyless.providers.retry import NO_RETRY
from keyless.sandbox.aws import DEMO_CLUSTER, AwsSandbox, DemoSeed
from keyless.targets import AwsTarget

pytestmark = pytest.mark.integration

TRUST = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"},
                                                 "Action": ["sts:AssumeRole", "sts:TagSession"]}]}
WIDE = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "dynamodb:*", "Resource": "*"}]}
NARROW = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "dynamodb:GetItem",
                                                  "Resource": "arn:aws:dynamodb:us-east-1:123456789012:table/t"}]}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[AwsSandbox]:
    with AwsSandbox(association_delay=0.0) as running:
        yield running


@pytest.fixture(scope="module")
def seed(sandbox: AwsSandbox) -> DemoSeed:
    return sandbox.seed_demo()


@pytest.fixture(scope="module")
def role(sandbox: AwsSandbox, seed: DemoSeed) -> tuple[str, str]:
    """A role whose managed policy's default version (v2) is the broad one: (role ARN, policy ARN)."""
    iam = sandbox.client("iam")
    arn = iam.create_role(RoleName="audit-fetch-api", AssumeRolePolicyDocument=json.dumps(TRUST))["Role"]["Arn"]
    policy = iam.create_policy(PolicyName="audit-fetch-api", PolicyDocument=json.dumps(NARROW))["Policy"]["Arn"]
    iam.create_policy_version(PolicyArn=policy, PolicyDocument=json.dumps(WIDE), SetAsDefault=True)
    iam.attach_role_policy(RoleName="audit-fetch-api", PolicyArn=policy)
    return arn, policy


@pytest.fixture
def auditor(sandbox: AwsSandbox, seed: DemoSeed) -> Iterator[AwsAuditor]:
    env: dict[str, Any] = sandbox.env()
    session = boto3.Session(aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=seed.region)
    target = AwsTarget.model_validate({"cloud": "aws", "region": seed.region, "cluster": DEMO_CLUSTER,
                                       "namespace": "shop"})
    with pytest.MonkeyPatch.context() as patch:
        for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IAM", "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL_EKS"):
            patch.setenv(key, env[key])
        yield AwsAuditor(target, session, retry=NO_RETRY)
    sandbox.deny()


def binding(role: str) -> Binding:
    return Binding(app="shop", service="api", kind=ServiceType.WEB, target="prod", cloud=Cloud.AWS, namespace="shop",
                   service_account="shop-api", identity=AwsRole(role=role))


def test_denied_reads_become_incomplete_findings_and_the_rest_is_still_audited(
        sandbox: AwsSandbox, auditor: AwsAuditor, role: tuple[str, str], seed: DemoSeed) -> None:
    role_arn, policy_arn = role
    sandbox.deny("iam:ListRolePolicies", "eks:DescribeCluster")
    report = auditor.audit("shop", "prod", [binding("audit-fetch-api")])
    findings = report.connections[0].findings
    incomplete = [f for f in findings if f.rule is R.AUDIT_INCOMPLETE]
    assert [f.message for f in incomplete] == ["could not read iam:ListRolePolicies audit-fetch-api (AccessDenied)"]
    wildcard = next(f for f in findings if f.rule is R.AWS_PERM_WILDCARD_ACTION)
    assert wildcard.location.document == f"managed policy {policy_arn} v2"  # the default version, not v1
    scope = next(f for f in findings if f.rule is R.AWS_TRUST_SCOPE)
    # DescribeCluster was denied: the cluster ARN is built from the role's partition and account.
    assert f"arn:aws:eks:{seed.region}:{seed.account}:cluster/{DEMO_CLUSTER}" in scope.fix
    assert report.connections[0].binding.identity == AwsRole(role="audit-fetch-api", arn=role_arn)


def test_a_role_arn_of_another_account_is_not_audited_as_the_home_role(
        auditor: AwsAuditor, role: tuple[str, str]) -> None:
    # The home account has a role of the same name.
    report = auditor.audit("shop", "prod", [binding("arn:aws:iam::999999999999:role/audit-fetch-api")])
    [finding] = report.connections[0].findings
    assert finding.rule is R.AUDIT_INCOMPLETE
    assert "not in the account keyless runs in" in finding.message


def test_a_missing_role_is_an_incomplete_audit(auditor: AwsAuditor, seed: DemoSeed) -> None:
    [finding] = auditor.audit("shop", "prod", [binding("no-such-role")]).connections[0].findings
    assert finding.rule is R.AUDIT_INCOMPLETE
    assert "does not exist" in finding.message


def test_a_denied_association_listing_says_sharing_was_not_checked(
        sandbox: AwsSandbox, auditor: AwsAuditor, role: tuple[str, str]) -> None:
    sandbox.deny("eks:ListPodIdentityAssociations")
    findings = auditor.audit("shop", "prod", [binding("audit-fetch-api")]).connections[0].findings
    assert any(f.rule is R.AUDIT_INCOMPLETE and "sharing with other apps was not checked" in f.message
               for f in findings)
    assert not any("iam:" in f.message for f in findings if f.rule is R.AUDIT_INCOMPLETE)
