"""What each cloud must trust for keyless's workload identity federation (ownership marks live in `ownership`)."""

from __future__ import annotations

import re
from typing import Any

# --- AWS: EKS Pod Identity ---------------------------------------------------------------------

POD_IDENTITY_SERVICE = "pods.eks.amazonaws.com"
# Pod Identity assumes the role with session tags, so sts:TagSession is as necessary as sts:AssumeRole.
TRUST_ACTIONS = ("sts:AssumeRole", "sts:TagSession")
POLICY_VERSION = "2012-10-17"

def trust_statement(service: str = POD_IDENTITY_SERVICE) -> dict[str, Any]:
    """The statement EKS Pod Identity needs in a role's trust policy."""
    return {"Effect": "Allow", "Principal": {"Service": service}, "Action": list(TRUST_ACTIONS)}


def trust_policy() -> dict[str, Any]:
    """A whole trust policy holding only the Pod Identity statement."""
    return {"Version": POLICY_VERSION, "Statement": [trust_statement()]}


# --- Azure: federated identity credentials ------------------------------------------------------

AZURE_TOKEN_AUDIENCE = "api://AzureADTokenExchange"
SUBJECT_PREFIX = "system:serviceaccount:"
_SUBJECT = re.compile(rf"^{re.escape(SUBJECT_PREFIX)}([^:]+):([^:]+)$")


def subject_for(namespace: str, service_account: str) -> str:
    """The subject Kubernetes puts in a service-account token, which the credential must match exactly."""
    return f"{SUBJECT_PREFIX}{namespace}:{service_account}"


def parse_subject(subject: str) -> tuple[str, str] | None:
    """(namespace, service account) of a Kubernetes service-account subject; None for any other subject."""
    match = _SUBJECT.fullmatch(subject)
    return (match.group(1), match.group(2)) if match else None


# --- Google Cloud: Workload Identity Federation for GKE ----------------------------------------

WORKLOAD_IDENTITY_USER_ROLE = "roles/iam.workloadIdentityUser"


def workload_identity_member(project: str, namespace: str, service_account: str) -> str:
    """The IAM member a GKE cluster's pods act as: a service account in the project's workload identity pool."""
    return f"serviceAccount:{project}.svc.id.goog[{namespace}/{service_account}]"
