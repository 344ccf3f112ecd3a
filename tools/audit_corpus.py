"""Research script (not run by the tests): build tests/data/audit-corpus/ and record Parliament's and Cloudsplaining's
verdicts on each document, then time the three tools over the corpus.

Needs parliament==1.6.4, cloudsplaining==0.9.1 and moto (for the AWS managed policies it bundles) in the venv:
    .venv/bin/pip install parliament==1.6.4 cloudsplaining==0.9.1 moto
    .venv/bin/python tools/audit_corpus.py build    # write the corpus files with the peers' verdicts
    .venv/bin/python tools/audit_corpus.py time     # time keyless, Parliament and Cloudsplaining over them
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "audit-corpus"
PARLIAMENT_TESTS = "https://github.com/duo-labs/parliament/blob/master/tests/unit/"
CLOUDSPLAINING_TESTS = "https://github.com/salesforce/cloudsplaining/blob/master/test/scanning/"

MANAGED = [
    "AdministratorAccess", "PowerUserAccess", "IAMFullAccess", "SecretsManagerReadWrite", "AmazonEC2FullAccess",
    "AWSCloudFormationFullAccess", "AWSLambda_FullAccess", "AmazonS3FullAccess", "AmazonS3ReadOnlyAccess",
    "AmazonDynamoDBFullAccess", "AmazonSQSFullAccess", "AmazonSNSFullAccess", "AWSGlueConsoleFullAccess",
    "AmazonSageMakerFullAccess", "AmazonECS_FullAccess", "AmazonSSMFullAccess", "AWSCodeBuildAdminAccess",
    "AmazonEC2ReadOnlyAccess", "CloudWatchLogsReadOnlyAccess", "AWSCloudTrail_ReadOnlyAccess",
    "AWSKeyManagementServicePowerUser", "IAMUserChangePassword",
]
# Managed policies that are clean for keyless's purpose (only the caller's own IAM user).
CLEAN_MANAGED = {"IAMUserChangePassword"}

# Cloudsplaining's own test builds one policy per escalation method from its action set; these are the methods
# the issue says keyless missed or should name, plus a few classic ones.
CLOUDSPLAINING_METHODS = [
    "ExecuteCloudFormationChangeSet", "ModifyEC2InstanceUserDataThenRestart", "ModifyExistingEC2LaunchTemplate",
    "ECSExecuteCommandOnRunningTask", "UpdateExistingGlueDevEndpoint", "EditExistingLambdaFunctionWithRole",
    "UpdateSageMakerNotebookLifecycleConfig", "CreatePresignedSageMakerNotebookUrl",
    "EC2InstanceConnectSendSSHPublicKey", "PassExistingRoleToNewCodeBuildProjectThenBuild",
    "CreateEC2WithExistingIP", "PassExistingRoleToNewECSService", "CreateAccessKey", "UpdateRolePolicyToAssumeIt",
    "PassExistingRoleToNewGlueJobThenRun", "AccessExistingBedrockCodeInterpreterSession",
]


def doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(action: Any, resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def handwritten() -> list[tuple[str, str, dict[str, Any], list[str], bool]]:
    """(name, source, policy, keyless rules that must fire, clean control?)."""
    p, c = PARLIAMENT_TESTS, CLOUDSPLAINING_TESTS
    return [
        # --- Parliament's tests
        ("parliament-ecr-s3-wildcards", f"Parliament test file {p}test_community_auditors.py",
         doc(allow(["ecr:*", "s3:*"])), ["AWS-PERM-WILDCARD-ACTION", "AWS-PERM-CREDENTIALS"], False),
        ("parliament-unknown-action-iam-list", f"Parliament test file {p}test_formatting.py",
         doc(allow("s3:listallmybuckets"), allow(["iam:listusers", "iam:list"])), ["AWS-PERM-UNKNOWN-ACTION"], False),
        ("parliament-condition-bad-key", f"Parliament test file {p}test_formatting.py",
         doc(allow("s3:listbucket", "arn:aws:s3:::bucket-name",
                   Condition={"DateGreaterThan": {"bad": "2019-07-16T12:00:00Z"}})), ["AWS-PERM-CONDITION-KEY"], False),
        ("parliament-condition-key-not-for-action", f"Parliament test file {p}test_formatting.py",
         doc(allow("s3:listbucket", "arn:aws:s3:::bucket-name",
                   Condition={"StringEquals": {"s3:x-amz-storage-class": "bad"}})), ["AWS-PERM-CONDITION-KEY"], False),
        ("parliament-condition-mismatch-iam-tag", f"Parliament test file {p}test_formatting.py",
         doc(allow(["ec2:*", "s3:*"], Condition={"StringNotEquals": {"iam:ResourceTag/status": "prod"}})),
         ["AWS-PERM-CONDITION-KEY", "AWS-PERM-WILDCARD-ACTION"], False),
        ("parliament-kms-creategrant-star", f"Parliament test file {p}test_formatting.py",
         doc(allow("kms:CreateGrant", Condition={"Bool": {"kms:GrantIsForAWSResource": True}})),
         ["AWS-PERM-RESOURCE-STAR"], False),
        ("parliament-terminate-instances-star", f"Parliament test file {p}test_formatting.py",
         doc(allow(["ec2:TerminateInstances"], Condition={"ArnEquals": {
             "ec2:InstanceProfile": "arn:aws:iam::123456789012:instance-profile/my_role"}})),
         ["AWS-PERM-RESOURCE-STAR"], False),
        ("parliament-resource-mismatch", f"Parliament test file {p}test_resource_mismatch.py",
         doc(allow("ec2:RunInstances", ["arn:aws:ec2:*:123456789012:fake_resource_type/*"])),
         ["AWS-PERM-RESOURCE-MISMATCH"], False),
        ("parliament-redshift-cluster-credentials", f"Parliament test file {p}test_formatting.py",
         doc(allow("redshift:GetClusterCredentials",
                   "arn:aws:redshift:us-west-2:123456789012:dbuser:the_cluster/the_user")),
         ["AWS-PERM-CREDENTIALS"], False),
        # --- Cloudsplaining's tests
        ("cloudsplaining-putimage-own-access-key", f"Cloudsplaining test file {c}test_policy_document.py",
         doc(allow(["ssm:GetParameters", "ecr:PutImage"]),
             {"Sid": "AllowManageOwnAccessKeys", "Effect": "Allow", "Action": ["iam:CreateAccessKey"],
              "Resource": "arn:aws:iam::*:user/${aws:username}"}), ["AWS-PERM-RESOURCE-STAR"], False),
        ("cloudsplaining-allow-all-deny-billing", f"Cloudsplaining test file {c}test_policy_document.py",
         doc(allow("*"), {"Effect": "Deny", "Action": "aws-portal:*", "Resource": "*"}),
         ["AWS-PERM-WILDCARD-ACTION", "AWS-PERM-PRIVESC", "AWS-PERM-PASSROLE-STAR"], False),
        ("cloudsplaining-passrole-lambda-dynamo", f"Cloudsplaining test file {c}test_policy_document.py",
         doc(allow(["iam:PassRole", "lambda:CreateFunction", "lambda:CreateEventSourceMapping",
                    "dynamodb:CreateTable", "dynamodb:PutItem"])), ["AWS-PERM-PRIVESC", "AWS-PERM-PASSROLE-STAR"],
         False),
        ("cloudsplaining-specific-actions-star", f"Cloudsplaining test file {c}test_policy_document.py",
         doc(allow(["iam:PassRole", "ssm:GetParameter", "s3:GetObject", "ssm:GetParameters",
                    "ssm:GetParametersByPath", "secretsmanager:GetSecretValue", "s3:PutObject", "ec2:CreateTags"])),
         ["AWS-PERM-PASSROLE-STAR", "AWS-PERM-RESOURCE-STAR"], False),
        ("cloudsplaining-notaction-iam", f"Cloudsplaining test file {c}test_policy_document.py",
         doc({"Sid": "Something", "Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}),
         ["AWS-PERM-NOTACTION", "AWS-PERM-PRIVESC", "AWS-PERM-PERMISSIONS-MGMT", "AWS-PERM-CREDENTIALS"], False),
        ("cloudsplaining-autoscaling-modify", f"Cloudsplaining test file {c}test_policy_document.py",
         doc(allow(["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup",
                    "autoscaling:UpdateAutoScalingGroup"])), ["AWS-PERM-RESOURCE-STAR"], False),
        # --- the issue's own examples, and AWS documentation patterns
        ("issue-cloudtrail-star-like-arn", "keyless issue 13 (resource effectively *), written for this corpus",
         doc(allow(["cloudtrail:StopLogging", "cloudtrail:DeleteTrail"], "arn:*:cloudtrail:*:*:trail/*")),
         ["AWS-PERM-RESOURCE-WILDCARD-ARN"], False),
        ("issue-s3-typo", "keyless issue 13 (typos such as s3:abc), written for this corpus",
         doc(allow(["s3:GetObject", "s3:abc"], "arn:aws:s3:::reports/*")), ["AWS-PERM-UNKNOWN-ACTION"], False),
        ("issue-bucket-arn-for-object-action", "keyless issue 13 (bucket ARN for an object action), written for this "
         "corpus", doc(allow(["s3:GetObject", "s3:PutObject"], "arn:aws:s3:::reports")),
         ["AWS-PERM-RESOURCE-MISMATCH"], False),
        ("aws-docs-forallvalues-single-valued", "AWS docs page https://docs.aws.amazon.com/IAM/latest/UserGuide/"
         "reference_policies_condition-single-vs-multi-valued-context-keys.html (the misuse it warns about)",
         doc(allow("s3:GetObject", "arn:aws:s3:::reports/*",
                   Condition={"ForAllValues:StringEquals": {"aws:SourceVpc": "vpc-1a2b3c4d"}})),
         ["AWS-PERM-CONDITION-SET-OPERATOR"], False),
        ("aws-docs-ec2-full-passrole", "AWS docs page https://docs.aws.amazon.com/IAM/latest/UserGuide/"
         "id_roles_use_passrole.html (over-broad variant: PassRole on every role)",
         doc(allow(["ec2:RunInstances", "ec2:AssociateIamInstanceProfile", "iam:PassRole"])),
         ["AWS-PERM-PRIVESC", "AWS-PERM-PASSROLE-STAR"], False),
        ("aws-docs-lambda-update-code", "AWS docs page https://docs.aws.amazon.com/lambda/latest/dg/"
         "permissions-user-function.html (deploy code to any function)",
         doc(allow(["lambda:UpdateFunctionCode", "lambda:GetFunction"])), ["AWS-PERM-PRIVESC"], False),
        ("aws-docs-ssm-send-command", "AWS docs page https://docs.aws.amazon.com/systems-manager/latest/userguide/"
         "sysman-rc-setting-up-cmdsec.html (Run Command on every instance)",
         doc(allow(["ssm:SendCommand", "ssm:ListCommandInvocations"])), ["AWS-PERM-PRIVESC"], False),
        # --- clean controls
        ("clean-self-service-mfa", "AWS docs page https://docs.aws.amazon.com/IAM/latest/UserGuide/"
         "reference_policies_examples_iam_mfa-selfmanage.html",
         doc({"Sid": "AllowListActions", "Effect": "Allow", "Action": ["iam:ListUsers", "iam:ListVirtualMFADevices"],
              "Resource": "*"},
             {"Sid": "AllowUserToCreateVirtualMFADevice", "Effect": "Allow", "Action": ["iam:CreateVirtualMFADevice"],
              "Resource": "arn:aws:iam::*:mfa/*"},
             {"Sid": "AllowUserToManageTheirOwnMFA", "Effect": "Allow",
              "Action": ["iam:EnableMFADevice", "iam:GetMFADevice", "iam:ListMFADevices", "iam:ResyncMFADevice"],
              "Resource": "arn:aws:iam::*:user/${aws:username}"},
             {"Sid": "AllowUserToDeactivateTheirOwnMFAOnlyWhenUsingMFA", "Effect": "Allow",
              "Action": ["iam:DeactivateMFADevice"], "Resource": ["arn:aws:iam::*:user/${aws:username}"],
              "Condition": {"Bool": {"aws:MultiFactorAuthPresent": "true"}}},
             {"Sid": "BlockMostAccessUnlessSignedInWithMFA", "Effect": "Deny",
              "NotAction": ["iam:CreateVirtualMFADevice", "iam:EnableMFADevice", "iam:ListMFADevices",
                            "iam:ListUsers", "iam:ListVirtualMFADevices", "iam:ResyncMFADevice"],
              "Resource": "*", "Condition": {"BoolIfExists": {"aws:MultiFactorAuthPresent": "false"}}}), [], True),
        ("clean-passrole-passed-to-service", "AWS docs page https://docs.aws.amazon.com/IAM/latest/UserGuide/"
         "reference_policies_iam-condition-keys.html#ck_PassedToService",
         doc(allow("iam:PassRole", Condition={"StringEquals": {"iam:PassedToService": "cloudwatch.amazonaws.com"}})),
         [], True),
        ("clean-s3-one-bucket", "AWS docs page https://docs.aws.amazon.com/IAM/latest/UserGuide/"
         "reference_policies_examples_s3_rw-bucket.html",
         doc({"Sid": "ListObjectsInBucket", "Effect": "Allow", "Action": ["s3:ListBucket"],
              "Resource": ["arn:aws:s3:::amzn-s3-demo-bucket"]},
             {"Sid": "AllObjectActions", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject",
                                                                        "s3:DeleteObject"],
              "Resource": ["arn:aws:s3:::amzn-s3-demo-bucket/*"]}), [], True),
        ("clean-dynamodb-one-table", "AWS docs page https://docs.aws.amazon.com/IAM/latest/UserGuide/"
         "reference_policies_examples_dynamodb_specific-table.html",
         doc(allow(["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query", "dynamodb:UpdateItem"],
                   "arn:aws:dynamodb:us-east-1:123456789012:table/MyTable")), [], True),
        ("clean-sqs-one-queue", "AWS docs page https://docs.aws.amazon.com/AWSSimpleQueueService/latest/"
         "SQSDeveloperGuide/sqs-basic-examples-of-iam-policies.html",
         doc(allow(["sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage"],
                   "arn:aws:sqs:us-east-1:123456789012:jobs")), [], True),
        ("clean-secret-one", "AWS docs page https://docs.aws.amazon.com/secretsmanager/latest/userguide/"
         "auth-and-access_examples.html",
         doc(allow("secretsmanager:GetSecretValue",
                   "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf")), [], True),
        ("clean-kms-decrypt-via-service", "AWS docs page https://docs.aws.amazon.com/kms/latest/developerguide/"
         "conditions-kms.html#conditions-kms-via-service",
         doc(allow("kms:Decrypt", "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                   Condition={"StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"}})), [], True),
        ("clean-parliament-list-buckets", f"Parliament test file {p}test_formatting.py",
         doc(allow("s3:listallmybuckets")), [], True),
        ("clean-parliament-guardduty-list", f"Parliament test file {p}test_formatting.py",
         doc(allow(["guardduty:ListDetectors"])), [], True),
        ("clean-parliament-home-prefix", f"Parliament test file {p}test_formatting.py",
         doc(allow("s3:listbucket", "arn:aws:s3:::bucket-name",
                   Condition={"StringEquals": {"s3:prefix": ["home/${aws:username}/*"]}})), [], True),
        ("clean-parliament-runinstances-arn", f"Parliament test file {p}test_resource_mismatch.py",
         doc(allow("ec2:RunInstances", ["arn:aws:ec2:*:123456789012:instance/*"])), [], True),
    ]


def parliament_verdict(policy: dict[str, Any]) -> dict[str, Any]:
    from parliament import analyze_policy_string

    result = analyze_policy_string(json.dumps(policy), include_community_auditors=True)
    findings = sorted({(f.issue, str(f.severity)) for f in result.findings})
    return {"findings": [f"{issue} ({severity})" for issue, severity in findings],
            "flags": any(severity not in ("MUTE", "INFO") for _, severity in findings),
            "escalation": any(issue == "PRIVILEGE_ESCALATION" for issue, _ in findings)}


def cloudsplaining_verdict(policy: dict[str, Any]) -> dict[str, Any]:
    from cloudsplaining.scan.policy_document import PolicyDocument

    d = PolicyDocument(policy)
    classes = {
        "PrivilegeEscalation": [e["type"] for e in d.allows_privilege_escalation],
        "ResourceExposure": d.permissions_management_without_constraints,
        "CredentialsExposure": d.credentials_exposure,
        "DataExfiltration": d.allows_data_exfiltration_actions,
        "ServiceWildcard": d.service_wildcard,
        "InfrastructureModification": d.infrastructure_modification,
    }
    return {"classes": {k: len(v) for k, v in classes.items() if v},
            "escalation_methods": sorted(classes["PrivilegeEscalation"]),
            "flags": any(classes.values()), "escalation": bool(classes["PrivilegeEscalation"])}


def entries() -> list[dict[str, Any]]:
    from importlib.metadata import version

    from cloudsplaining.shared.constants import PRIVILEGE_ESCALATION_METHODS
    from moto.iam.aws_managed_policies import aws_managed_policies_data

    managed = json.loads(aws_managed_policies_data)
    out: list[dict[str, Any]] = []
    for name in MANAGED:
        data = managed[name]
        out.append({"name": f"managed-{name}",
                    "source": f"AWS managed policy {name} version {data['DefaultVersionId']} "
                              f"(as bundled in moto {version('moto')})",
                    "policy": data["Document"], "expected": {"rules": [], "clean": name in CLEAN_MANAGED}})
    for method in CLOUDSPLAINING_METHODS:
        actions = PRIVILEGE_ESCALATION_METHODS[method]
        out.append({"name": f"cloudsplaining-method-{method}",
                    "source": f"Cloudsplaining test file {CLOUDSPLAINING_TESTS}test_privilege_escalation_methods.py "
                              f"(the policy it builds for method {method})",
                    "policy": doc(allow(list(actions))), "expected": {"rules": ["AWS-PERM-PRIVESC"], "clean": False}})
    for name, source, policy, rules, clean in handwritten():
        out.append({"name": name, "source": source, "policy": policy, "expected": {"rules": rules, "clean": clean}})
    return out


def build() -> None:
    CORPUS.mkdir(parents=True, exist_ok=True)
    for entry in entries():
        entry["peers"] = {"parliament 1.6.4": parliament_verdict(entry["policy"]),
                          "cloudsplaining 0.9.1": cloudsplaining_verdict(entry["policy"])}
        (CORPUS / f"{entry.pop('name')}.json").write_text(json.dumps(entry, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(list(CORPUS.glob('*.json')))} documents to {CORPUS}")


def timing() -> None:
    from parliament import analyze_policy_string

    from keyless.audit.aws import AwsPolicy, AwsRoleDocuments, PolicyKind, audit_permissions
    from keyless.audit.iam_actions import default_catalog

    policies = [json.loads(p.read_text())["policy"] for p in sorted(CORPUS.glob("*.json"))]
    started = time.perf_counter()
    catalog = default_catalog()
    loaded = time.perf_counter() - started

    def keyless() -> None:
        for i, policy in enumerate(policies):
            role = AwsRoleDocuments("r", "arn:aws:iam::123456789012:role/r", None,
                                    (AwsPolicy(PolicyKind.INLINE, f"p{i}", policy),))
            audit_permissions(role, catalog)

    def parliament() -> None:
        for policy in policies:
            analyze_policy_string(json.dumps(policy), include_community_auditors=True)

    def cloudsplaining() -> None:
        for policy in policies:
            cloudsplaining_verdict(policy)

    print(f"{len(policies)} documents; keyless catalogue load {loaded:.2f} s (once per process)")
    for name, run in (("keyless audit_permissions", keyless), ("parliament analyze_policy_string", parliament),
                      ("cloudsplaining PolicyDocument (all classes)", cloudsplaining)):
        run()  # warm caches, as a long-running CLI run would be after its first document
        started = time.perf_counter()
        run()
        print(f"{name}: {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    commands = {"build": build, "time": timing}
    chosen = sys.argv[1] if len(sys.argv) > 1 else "build"
    if chosen not in commands:
        print(f"usage: {sys.argv[0]} [build | time]\n{__doc__}", file=sys.stderr)
        raise SystemExit(2)
    commands[chosen]()
