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
GKE_METADATA = "GKE_METADATA"  # the node pools' workload metadata mode that serves pods their KSA's identity
_MEMBER = re.compile(r"^serviceAccount:([a-z0-9.:-]+)\.svc\.id\.goog\[([a-z0-9.-]+)/([a-z0-9.-]+)\]$")


def workload_pool(project: str) -> str:
    """The project's one workload identity pool, shared by every GKE cluster of the project."""
    return f"{project}.svc.id.goog"


def workload_identity_member(project: str, namespace: str, service_account: str) -> str:
    """The IAM member a GKE cluster's pods act as: a service account in the project's workload identity pool."""
    return f"serviceAccount:{workload_pool(project)}[{namespace}/{service_account}]"


def parse_workload_identity_member(member: str) -> tuple[str, str, str] | None:
    """(project, namespace, service account) of a workload identity member; None for any other member."""
    match = _MEMBER.fullmatch(member)
    return (match.group(1), match.group(2), match.group(3)) if match else None


def direct_access_principal(project_number: str, project: str, namespace: str, service_account: str) -> str:
    """The principal a Kubernetes service account is in IAM without impersonation: grant roles to it directly."""
    return (f"principal://iam.googleapis.com/projects/{project_number}/locations/global/workloadIdentityPools/"
            f"{workload_pool(project)}/subject/ns/{namespace}/sa/{service_account}")


def gke_issuer(project: str, location: str, cluster: str) -> str:
    """The issuer GKE puts in a cluster's service-account tokens (and that Google's STS trusts for its pool)."""
    return f"https://container.googleapis.com/v1/projects/{project}/locations/{location}/clusters/{cluster}"


def sts_audience(project: str, location: str, cluster: str) -> str:
    """The audience Google's STS wants when a GKE service-account token is exchanged (what GKE's metadata server
    sends): the pool and the cluster's issuer."""
    return f"identitynamespace:{workload_pool(project)}:{gke_issuer(project, location, cluster)}"
