"""In-pod checks: which identity each cloud SDK's default credential chain resolves to, and static keys in the env."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

STATIC_AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
POD_IDENTITY_VARS = ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
IRSA_VARS = ("AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")


class Verdict(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    ERROR = "error"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Check:
    cloud: str
    verdict: Verdict
    summary: str
    details: Mapping[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {"cloud": self.cloud, "verdict": self.verdict.value, "summary": self.summary,
                "details": dict(self.details)}


def static_key_findings(env: Mapping[str, str]) -> list[Check]:
    """Long-lived keys in the environment defeat the point of workload identity: flag each one by name."""
    found = [k for k in STATIC_AWS_KEYS[:2] if env.get(k)]
    if not found:
        return []
    return [Check("aws", Verdict.ERROR, f"static credentials in the environment: {', '.join(found)}",
                  {"fix": "remove them from the service's env and env groups; the pod's identity replaces them"})]


def check_aws(env: Mapping[str, str]) -> Check:
    """Resolve the default boto3 chain the way application code would, then ask STS who we are."""
    import boto3
    import botocore.exceptions

    configured = any(env.get(k) for k in (*POD_IDENTITY_VARS, *IRSA_VARS, *STATIC_AWS_KEYS, "AWS_PROFILE"))
    if not configured:
        return Check("aws", Verdict.SKIPPED, "no AWS identity is configured in this pod",
                     {"hint": "pods get Pod Identity variables only when created after the association exists"})
    details: dict[str, str] = {}
    if env.get(POD_IDENTITY_VARS[0]):
        details["podIdentityEndpoint"] = env[POD_IDENTITY_VARS[0]]
    if all(env.get(k) for k in IRSA_VARS):
        details["irsaRole"] = env[IRSA_VARS[0]]
    try:
        session = boto3.Session()
        credentials = session.get_credentials()
        if credentials is None:
            return Check("aws", Verdict.ERROR, "the default AWS credential chain found no credentials", details)
        details["method"] = credentials.method
        identity = session.client("sts").get_caller_identity()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        return Check("aws", Verdict.ERROR, f"the default AWS credential chain failed: {exc}", details)
    details["arn"] = identity["Arn"]
    details["account"] = identity["Account"]
    verdict = Verdict.OK if credentials.method == "container-role" else Verdict.WARNING
    summary = f"AWS identity {identity['Arn']} (via {credentials.method})"
    if verdict is Verdict.WARNING:
        summary += "; expected EKS Pod Identity (container-role)"
    return Check("aws", verdict, summary, details)


def run_checks(env: Mapping[str, str]) -> list[Check]:
    return [*static_key_findings(env), check_aws(env)]
