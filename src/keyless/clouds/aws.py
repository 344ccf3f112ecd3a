"""AWS in the registry: an IAM role bound to a service account by an EKS Pod Identity association."""

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
from keyless.federation import trust_policy
from keyless.ownership import Owner, ownership_tags
from keyless.porter.model import AwsRoleConnection
from keyless.targets import AwsTarget

IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"


@dataclass(frozen=True, slots=True)
class AwsRole:
    """The role as written (name, path, or ARN); the provider resolves it to an ARN."""

    role: str
    arn: str | None = None  # filled in by the provider's resolve step

    @property
    def ref(self) -> names.RoleRef:
        return names.parse_role(self.role)

    @property
    def key(self) -> tuple[str, ...]:
        return (self.arn or self.role,)

    @property
    def spelled_once(self) -> str:
        return self.arn or self.role  # ARNs are case-sensitive

    def describe(self) -> str:
        return self.arn or self.role

    def annotations(self, service: str) -> dict[str, str]:
        # Pod Identity keys on the account's name; keyless's record is all the account carries.
        return {}


def _identity(connection: AwsRoleConnection) -> AwsRole:
    return AwsRole(role=connection.role)


def _examples(app: str, service: str, target: Any | None) -> dict[str, str]:
    return {"role": f"{app}-{service}-role"}


def _preview(ctx: PreviewContext) -> ConnectionPreview:
    role = ctx.field(AwsRoleConnection, "role", "<IAM role>")
    try:
        role_arn = role if names.parse_role(role).is_arn else ""
    except names.NameRuleError:
        role_arn = ""
    role_arn = role_arn or f"<ARN of IAM role {role}, looked up at deploy in the AWS account of the target>"
    association = {
        "clusterName": ctx.cluster(),
        "namespace": ctx.namespace(),
        "serviceAccount": ctx.service_account,
        "roleArn": role_arn,
        "tags": ownership_tags(Owner(app=ctx.app, service=ctx.service, target=ctx.target_label())),
    }
    summary = (f"keyless creates an EKS Pod Identity association so that the pods of {ctx.service!r}, running as "
               f"Kubernetes service account {ctx.service_account}, get credentials for IAM role {role}. You create "
               "the role and its permissions; its trust policy must allow EKS Pod Identity, as shown. "
               + ctx.which_target())
    return ConnectionPreview(
        title=f"AWS IAM role for {ctx.service}",
        summary=summary,
        documents=(
            PreviewDocument("Trust policy the IAM role must have", "json", preview_json(trust_policy())),
            PreviewDocument("EKS Pod Identity association keyless creates", "json", preview_json(association)),
        ),
    )


ENTRY = CloudEntry(
    cloud=Cloud.AWS,
    name="AWS",
    cluster_kind="EKS",
    mechanism="EKS Pod Identity",
    connection_type="awsRole",
    connection_model=AwsRoleConnection,
    connection_fields=(ConnectionField("role", "IAM role name or ARN"),),
    connection_title="IAM Role Connection",
    access_words="this IAM role",
    identity_of=_identity,
    target_model=AwsTarget,
    identity_type=AwsRole,
    binding_kind="Pod Identity association",
    annotation_keys=frozenset({IDENTITY_ANNOTATION}),
    stale_annotations={IRSA_ANNOTATION: "IRSA, superseded by EKS Pod Identity"},
    pod_labels={},
    one_binding_per_service_account=True,
    updates_in_place=True,
    marks_adopted=True,
    found_through_identity=False,
    example_values=_examples,
    preview=_preview,
    provider="keyless.providers.aws:AwsProvider",
    auditor="keyless.providers.aws_audit:AwsAuditor",
)
