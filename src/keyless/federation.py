"""What each cloud must trust for keyless's workload identity federation, and how keyless marks what it makes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from keyless.plan import Owner

# --- AWS: EKS Pod Identity ---------------------------------------------------------------------

POD_IDENTITY_SERVICE = "pods.eks.amazonaws.com"
# Pod Identity assumes the role with session tags, so sts:TagSession is as necessary as sts:AssumeRole.
TRUST_ACTIONS = ("sts:AssumeRole", "sts:TagSession")
POLICY_VERSION = "2012-10-17"

TAG_MANAGED_BY = "keyless.dev/managed-by"
TAG_APP = "keyless.dev/app"
TAG_SERVICE = "keyless.dev/service"
TAG_TARGET = "keyless.dev/target"
MANAGED_BY_KEYLESS = "keyless"


def trust_statement(service: str = POD_IDENTITY_SERVICE) -> dict[str, Any]:
    """The statement EKS Pod Identity needs in a role's trust policy."""
    return {"Effect": "Allow", "Principal": {"Service": service}, "Action": list(TRUST_ACTIONS)}


def trust_policy() -> dict[str, Any]:
    """A whole trust policy holding only the Pod Identity statement."""
    return {"Version": POLICY_VERSION, "Statement": [trust_statement()]}


def ownership_tags(owner: Owner) -> dict[str, str]:
    """The tags that mark an association as keyless's, and for which app, service and target."""
    return {TAG_MANAGED_BY: MANAGED_BY_KEYLESS, TAG_APP: owner.app, TAG_SERVICE: owner.service,
            TAG_TARGET: owner.target}


def owner_from_tags(tags: Mapping[str, str] | None) -> Owner | None:
    """The owner recorded by ownership_tags, or None unless every tag is there."""
    tags = tags or {}
    if tags.get(TAG_MANAGED_BY) != MANAGED_BY_KEYLESS:
        return None
    app, service, target = tags.get(TAG_APP), tags.get(TAG_SERVICE), tags.get(TAG_TARGET)
    if not (app and service and target):
        return None
    return Owner(app=app, service=service, target=target)


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
