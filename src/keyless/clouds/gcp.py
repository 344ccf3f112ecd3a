"""Google Cloud in the registry: a Google service account that a GKE service account acts as."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keyless.clouds.base import (
    IDENTITY_ANNOTATION,
    Cloud,
    CloudEntry,
    ConnectionField,
    ConnectionPreview,
    PreviewContext,
    PreviewDocument,
    preview_json,
)
from keyless.federation import WORKLOAD_IDENTITY_USER_ROLE, direct_access_principal, workload_identity_member
from keyless.kube.yamltext import to_yaml
from keyless.porter.model import GcpServiceAccountConnection
from keyless.targets import GcpTarget

SERVICE_ACCOUNT_ANNOTATION = "iam.gke.io/gcp-service-account"


@dataclass(frozen=True, slots=True)
class GcpIdentity:
    email: str

    @property
    def key(self) -> tuple[str, ...]:
        return (self.email,)

    @property
    def spelled_once(self) -> str:
        return self.email.lower()

    def describe(self) -> str:
        return self.email

    def annotations(self, service: str) -> dict[str, str]:
        return {SERVICE_ACCOUNT_ANNOTATION: self.email}


def _identity(connection: GcpServiceAccountConnection) -> GcpIdentity:
    return GcpIdentity(email=connection.service_account_email)


def _examples(app: str, service: str, target: Any | None) -> dict[str, str]:
    project = target.project if isinstance(target, GcpTarget) else "my-project"
    account = f"{app}-{service}"[:30].rstrip("-")
    return {"serviceAccountEmail": f"{account}@{project}.iam.gserviceaccount.com"}


def _preview(ctx: PreviewContext) -> ConnectionPreview:
    email = ctx.field(GcpServiceAccountConnection, "service_account_email", "<Google service account email>")
    project = ctx.target.project if isinstance(ctx.target, GcpTarget) else "<project of the target>"
    namespace = ctx.namespace()
    binding = {
        "role": WORKLOAD_IDENTITY_USER_ROLE,
        "members": [workload_identity_member(project, namespace, ctx.service_account)],
    }
    service_account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": ctx.service_account,
            "namespace": namespace,
            "annotations": {SERVICE_ACCOUNT_ANNOTATION: email},
        },
    }
    principal = direct_access_principal("PROJECT_NUMBER", project, namespace, ctx.service_account)
    summary = (f"keyless lets Kubernetes service account {ctx.service_account} of {ctx.service!r} act as Google "
               f"service account {email} through Workload Identity Federation for GKE: it grants the pods' "
               f"workload identity {WORKLOAD_IDENTITY_USER_ROLE} on that account and annotates the Kubernetes "
               "service account with it. You create the Google service account and its permissions. "
               + ctx.which_target())
    return ConnectionPreview(
        title=f"Google service account for {ctx.service}",
        summary=summary,
        documents=(
            PreviewDocument(f"IAM policy binding keyless adds on {email}", "json", preview_json(binding)),
            PreviewDocument(f"Annotation keyless sets on Kubernetes service account {ctx.service_account}", "yaml",
                            to_yaml(service_account)),
            PreviewDocument("To grant roles to the pods directly instead (no Google service account), use this "
                            f"principal; PROJECT_NUMBER is `gcloud projects describe {project} "
                            "--format='value(projectNumber)'`", "text", principal),
        ),
    )


ENTRY = CloudEntry(
    cloud=Cloud.GCP,
    name="Google Cloud",
    cluster_kind="GKE",
    mechanism="Workload Identity Federation for GKE",
    connection_type="gcpServiceAccount",
    connection_model=GcpServiceAccountConnection,
    connection_fields=(ConnectionField("serviceAccountEmail", "Google service account email"),),
    connection_title="GCP Service Account Connection",
    access_words="this Google service account",
    identity_of=_identity,
    target_model=GcpTarget,
    identity_type=GcpIdentity,
    binding_kind="IAM policy binding",
    annotation_keys=frozenset({IDENTITY_ANNOTATION, SERVICE_ACCOUNT_ANNOTATION}),
    stale_annotations={},
    pod_labels={},
    one_binding_per_service_account=False,
    updates_in_place=False,
    marks_adopted=False,
    found_through_identity=True,
    example_values=_examples,
    preview=_preview,
    provider="keyless.providers.gcp:GcpProvider",
    auditor="keyless.providers.gcp_audit:GcpAuditor",
)
