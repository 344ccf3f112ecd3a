"""What keyless will create for one connection of a service, filled in with its values: the dashboard's info box."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from keyless import names
from keyless.bindings import Cloud, target_cloud
from keyless.errors import UsageError
from keyless.federation import (
    AZURE_TOKEN_AUDIENCE,
    WORKLOAD_IDENTITY_USER_ROLE,
    ownership_tags,
    subject_for,
    trust_policy,
    workload_identity_member,
)
from keyless.kube.manifests import GCP_SERVICE_ACCOUNT_ANNOTATION, to_yaml
from keyless.plan import Owner
from keyless.porter.model import (
    AwsRoleConnection,
    AzureManagedIdentityConnection,
    ConnectionType,
    GcpServiceAccountConnection,
)
from keyless.targets import AnyTarget, AzureTarget, GcpTarget

Language = Literal["json", "yaml", "text"]

CLOUD_NAMES = {Cloud.AWS: "AWS", Cloud.AZURE: "Azure", Cloud.GCP: "Google Cloud"}
CLUSTER_KINDS = {Cloud.AWS: "EKS", Cloud.AZURE: "AKS", Cloud.GCP: "GKE"}


@dataclass(frozen=True, slots=True)
class PreviewDocument:
    """One document of a preview, shown as a code block: `language` says how to highlight `body`."""

    label: str
    language: Language
    body: str


@dataclass(frozen=True, slots=True)
class ConnectionPreview:
    """What a connection makes keyless create, and what the person has to provide themselves."""

    title: str
    summary: str
    documents: tuple[PreviewDocument, ...]


def preview_connection(
    app: str, service: str, connection: Mapping[str, str], target_name: str | None, target: AnyTarget | None
) -> ConnectionPreview:
    """The preview of `connection` (porter.yaml spelling: `type` and its fields) of `service` in `app`, for
    `target` when it is of the connection's cloud; values that depend on a target are `<placeholders>` else.
    Fields not filled in yet are placeholders too, so the box can be shown while a person types."""
    builders: Mapping[str, Callable[[_Context], ConnectionPreview]] = {
        ConnectionType.AWS_ROLE: _aws_role,
        ConnectionType.AZURE_MANAGED_IDENTITY: _azure_identity,
        ConnectionType.GCP_SERVICE_ACCOUNT: _gcp_service_account,
    }
    kind = connection.get("type", "")
    build = builders.get(kind)
    if build is None:
        raise UsageError(f"connection type {kind!r} is not an identity connection",
                         f"use one of {', '.join(builders)}")
    return build(_Context(app, service, connection, target_name, target))


@dataclass(frozen=True, slots=True)
class _Context:
    app: str
    service: str
    connection: Mapping[str, str]
    target_name: str | None
    target: AnyTarget | None

    def field(self, model: type[Any], attribute: str, placeholder: str) -> str:
        """The value of a connection field, by its porter.yaml spelling (the model's alias), or `placeholder`."""
        spelling = model.model_fields[attribute].alias or attribute
        return self.connection.get(spelling, "").strip() or placeholder

    @property
    def service_account(self) -> str:
        return names.service_account_name(self.app, self.service)

    def on(self, cloud: Cloud) -> AnyTarget | None:
        """The target, when the connection takes effect on it."""
        return self.target if self.target is not None and target_cloud(self.target) is cloud else None

    def target_label(self, cloud: Cloud) -> str:
        """The target's name where it is the one the values are for, else a placeholder."""
        if self.target_name and (self.target is None or self.on(cloud) is not None):
            return self.target_name
        return "<target name>"

    def namespace(self, cloud: Cloud) -> str:
        target = self.on(cloud)
        return target.namespace if target is not None else "<namespace of the target>"

    def cluster(self, cloud: Cloud) -> str:
        target = self.on(cloud)
        return target.cluster if target is not None else f"<{CLUSTER_KINDS[cloud]} cluster of the target>"

    def which_target(self, cloud: Cloud) -> str:
        """The sentence of the summary saying which target the values are for."""
        target = self.on(cloud)
        if target is not None:
            return (f"Values for target {self.target_name or '?'!r} ({CLUSTER_KINDS[cloud]} cluster {target.cluster}, "
                    f"namespace {target.namespace}).")
        elsewhere = ""
        if self.target is not None:
            other = target_cloud(self.target)
            elsewhere = (f"Target {self.target_name or '?'!r} is on {CLOUD_NAMES[other]}, where this connection "
                         f"does nothing. ")
        return (f"{elsewhere}It takes effect when the app is deployed to a target on {CLOUD_NAMES[cloud]}; "
                "values in <angle brackets> come from that target.")


def _json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)


# --- AWS -----------------------------------------------------------------------------------------


def _aws_role(ctx: _Context) -> ConnectionPreview:
    role = ctx.field(AwsRoleConnection, "role", "<IAM role>")
    try:
        role_arn = role if names.parse_role(role).is_arn else ""
    except names.NameRuleError:
        role_arn = ""
    role_arn = role_arn or f"<ARN of IAM role {role}, looked up at deploy in the AWS account of the target>"
    association = {
        "clusterName": ctx.cluster(Cloud.AWS),
        "namespace": ctx.namespace(Cloud.AWS),
        "serviceAccount": ctx.service_account,
        "roleArn": role_arn,
        "tags": ownership_tags(Owner(app=ctx.app, service=ctx.service, target=ctx.target_label(Cloud.AWS))),
    }
    summary = (f"keyless creates an EKS Pod Identity association so that the pods of {ctx.service!r}, running as "
               f"Kubernetes service account {ctx.service_account}, get credentials for IAM role {role}. You create "
               "the role and its permissions; its trust policy must allow EKS Pod Identity, as shown. "
               + ctx.which_target(Cloud.AWS))
    return ConnectionPreview(
        title=f"AWS IAM role for {ctx.service}",
        summary=summary,
        documents=(
            PreviewDocument("Trust policy the IAM role must have", "json", _json(trust_policy())),
            PreviewDocument("EKS Pod Identity association keyless creates", "json", _json(association)),
        ),
    )


# --- Azure ---------------------------------------------------------------------------------------


def _azure_identity(ctx: _Context) -> ConnectionPreview:
    identity = ctx.field(AzureManagedIdentityConnection, "identity_name", "<managed identity>")
    group = ctx.field(AzureManagedIdentityConnection, "resource_group", "<resource group>")
    target = ctx.on(Cloud.AZURE)
    # The issuer URL is only known by asking Azure about the cluster, which a pure preview does not do.
    cluster = f"AKS cluster {target.cluster}" if isinstance(target, AzureTarget) else "the target's AKS cluster"
    issuer = f"<the OIDC issuer URL of {cluster} (read at deploy)>"
    credential = {
        "name": _credential_name(ctx),
        "issuer": issuer,
        "subject": subject_for(ctx.namespace(Cloud.AZURE), ctx.service_account),
        "audiences": [AZURE_TOKEN_AUDIENCE],
    }
    subscription = (f"subscription {target.subscription}" if isinstance(target, AzureTarget)
                    else "the target's subscription")
    summary = (f"keyless adds a federated identity credential to user-assigned managed identity {identity} "
               f"(resource group {group}, {subscription}), so that the pods of {ctx.service!r}, running as Kubernetes "
               f"service account {ctx.service_account}, get tokens for it. You create the identity and its role "
               "assignments. " + ctx.which_target(Cloud.AZURE))
    return ConnectionPreview(
        title=f"Azure managed identity for {ctx.service}",
        summary=summary,
        documents=(
            PreviewDocument(f"Federated identity credential keyless adds to {group}/{identity}", "json",
                            _json(credential)),
        ),
    )


def _credential_name(ctx: _Context) -> str:
    target_name = ctx.target_label(Cloud.AZURE)
    if target_name.startswith("<"):
        return names.federated_credential_name_before_target(ctx.app, ctx.service)
    try:
        return names.federated_credential_name(ctx.app, ctx.service, target_name)
    except names.NameRuleError as exc:
        return f"<{exc.message}>"


# --- Google Cloud --------------------------------------------------------------------------------


def _gcp_service_account(ctx: _Context) -> ConnectionPreview:
    email = ctx.field(GcpServiceAccountConnection, "service_account_email", "<Google service account email>")
    target = ctx.on(Cloud.GCP)
    project = target.project if isinstance(target, GcpTarget) else "<project of the target>"
    namespace = ctx.namespace(Cloud.GCP)
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
            "annotations": {GCP_SERVICE_ACCOUNT_ANNOTATION: email},
        },
    }
    summary = (f"keyless lets Kubernetes service account {ctx.service_account} of {ctx.service!r} act as Google "
               f"service account {email} through Workload Identity Federation for GKE: it grants the pods' "
               f"workload identity {WORKLOAD_IDENTITY_USER_ROLE} on that account and annotates the Kubernetes "
               "service account with it. You create the Google service account and its permissions. "
               + ctx.which_target(Cloud.GCP))
    return ConnectionPreview(
        title=f"Google service account for {ctx.service}",
        summary=summary,
        documents=(
            PreviewDocument(f"IAM policy binding keyless adds on {email}", "json", _json(binding)),
            PreviewDocument(f"Annotation keyless sets on Kubernetes service account {ctx.service_account}", "yaml",
                            to_yaml(service_account)),
        ),
    )
