"""Azure in the registry: a user-assigned managed identity trusting the AKS issuer through a federated credential."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keyless import names
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
from keyless.errors import PreflightFailed
from keyless.federation import AZURE_TOKEN_AUDIENCE, subject_for
from keyless.porter.model import AzureManagedIdentityConnection
from keyless.targets import AzureTarget

CLIENT_ID_ANNOTATION = "azure.workload.identity/client-id"
TENANT_ID_ANNOTATION = "azure.workload.identity/tenant-id"
USE_LABEL = "azure.workload.identity/use"


@dataclass(frozen=True, slots=True)
class AzureIdentity:
    identity_name: str
    resource_group: str
    client_id: str | None = None  # filled in by the provider
    tenant_id: str | None = None

    @property
    def key(self) -> tuple[str, ...]:
        return (self.resource_group, self.identity_name)

    @property
    def spelled_once(self) -> str:
        return self.describe().lower()  # ARM names are case-insensitive

    def describe(self) -> str:
        return f"{self.resource_group}/{self.identity_name}"

    def annotations(self, service: str) -> dict[str, str]:
        if not self.client_id:
            # Without the client ID the webhook starts pods with no AZURE_CLIENT_ID and they fail later.
            raise PreflightFailed(
                f"managed identity {self.describe()} of service {service!r} has no client ID",
                "keyless reads it from Azure before it writes Kubernetes objects; check that the identity exists",
            )
        out = {CLIENT_ID_ANNOTATION: self.client_id}
        if self.tenant_id:
            out[TENANT_ID_ANNOTATION] = self.tenant_id
        return out


def _identity(connection: AzureManagedIdentityConnection) -> AzureIdentity:
    return AzureIdentity(identity_name=connection.identity_name, resource_group=connection.resource_group)


def _examples(app: str, service: str, target: Any | None) -> dict[str, str]:
    group = target.resource_group if isinstance(target, AzureTarget) else "my-resource-group"
    return {"identityName": f"{app}-{service}-identity", "resourceGroup": group}


def _credential_name(ctx: PreviewContext) -> str:
    target_name = ctx.target_label()
    if target_name.startswith("<"):
        return names.federated_credential_name_before_target(ctx.app, ctx.service)
    try:
        return names.federated_credential_name(ctx.app, ctx.service, target_name)
    except names.NameRuleError as exc:
        return f"<{exc.message}>"


def _preview(ctx: PreviewContext) -> ConnectionPreview:
    identity = ctx.field(AzureManagedIdentityConnection, "identity_name", "<managed identity>")
    group = ctx.field(AzureManagedIdentityConnection, "resource_group", "<resource group>")
    target = ctx.target if isinstance(ctx.target, AzureTarget) else None
    # The issuer URL is only known by asking Azure about the cluster, which a pure preview does not do.
    cluster = f"AKS cluster {target.cluster}" if target is not None else "the target's AKS cluster"
    credential = {
        "name": _credential_name(ctx),
        "issuer": f"<the OIDC issuer URL of {cluster} (read at deploy)>",
        "subject": subject_for(ctx.namespace(), ctx.service_account),
        "audiences": [AZURE_TOKEN_AUDIENCE],
    }
    subscription = f"subscription {target.subscription}" if target is not None else "the target's subscription"
    summary = (f"keyless adds a federated identity credential to user-assigned managed identity {identity} "
               f"(resource group {group}, {subscription}), so that the pods of {ctx.service!r}, running as Kubernetes "
               f"service account {ctx.service_account}, get tokens for it. You create the identity and its role "
               "assignments. " + ctx.which_target())
    return ConnectionPreview(
        title=f"Azure managed identity for {ctx.service}",
        summary=summary,
        documents=(
            PreviewDocument(f"Federated identity credential keyless adds to {group}/{identity}", "json",
                            preview_json(credential)),
        ),
    )


ENTRY = CloudEntry(
    cloud=Cloud.AZURE,
    name="Azure",
    cluster_kind="AKS",
    mechanism="workload identity",
    connection_type="azureManagedIdentity",
    connection_model=AzureManagedIdentityConnection,
    connection_fields=(ConnectionField("identityName", "Managed identity name"),
                       ConnectionField("resourceGroup", "Resource group of the managed identity")),
    connection_title="Azure Managed Identity Connection",
    access_words="this managed identity's role assignments",
    identity_of=_identity,
    target_model=AzureTarget,
    identity_type=AzureIdentity,
    binding_kind="federated identity credential",
    annotation_keys=frozenset({IDENTITY_ANNOTATION, CLIENT_ID_ANNOTATION, TENANT_ID_ANNOTATION}),
    stale_annotations={},
    pod_labels={USE_LABEL: "true"},  # the Azure webhook mutates only pods carrying this label
    one_binding_per_service_account=False,
    updates_in_place=False,
    marks_adopted=False,
    found_through_identity=True,
    example_values=_examples,
    preview=_preview,
    provider="keyless.providers.azure:AzureProvider",
    auditor="keyless.providers.azure_audit:AzureAuditor",
)
