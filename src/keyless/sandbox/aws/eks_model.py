"""Records and validation rules of the EKS resources moto lacks: pod identity associations and add-ons."""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

# HTTP status of each error code, as botocore's EKS model declares it (ResourceLimitExceeded is 400).
ERROR_STATUS: Mapping[str, int] = MappingProxyType(
    {
        "BadRequestException": 400,
        "ClientException": 400,
        "InvalidParameterException": 400,
        "InvalidRequestException": 400,
        "ResourceLimitExceededException": 400,
        "SerializationException": 400,
        "MissingAuthenticationTokenException": 403,
        "AccessDeniedException": 403,  # botocore's EKS model: AccessDeniedException is HTTP 403
        "NotFoundException": 404,
        "ResourceNotFoundException": 404,
        "UnknownOperationException": 404,  # what an AWS REST API answers for a route it does not have
        "ResourceInUseException": 409,
        "ThrottlingException": 429,
        "ServerException": 500,
    }
)

DEFAULT_ASSOCIATION_QUOTA = 5000  # EKS user guide, "EKS Pod Identity limits": per cluster
MAX_TAGS = 50
POD_IDENTITY_AGENT_ADDON = "eks-pod-identity-agent"
# Add-ons the sandbox agrees to install, with the version EKS would pick by default.
KNOWN_ADDONS: Mapping[str, str] = MappingProxyType(
    {
        POD_IDENTITY_AGENT_ADDON: "v1.3.4-eksbuild.1",
        "vpc-cni": "v1.19.2-eksbuild.1",
        "coredns": "v1.11.4-eksbuild.2",
        "kube-proxy": "v1.31.3-eksbuild.2",
        "aws-ebs-csi-driver": "v1.38.1-eksbuild.1",
        "aws-efs-csi-driver": "v2.1.4-eksbuild.1",
    }
)

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::(\d{12}):role/(?:[\w+=,.@/-]*/)?([\w+=,.@-]{1,64})")


class EksError(Exception):
    """An EKS API error: the code botocore turns into a ClientError, its HTTP status and message."""

    def __init__(self, code: str, message: str, **fields: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = ERROR_STATUS.get(code, 400)
        self.fields = fields


@dataclass(frozen=True)
class ClusterRef:
    """An existing cluster as moto reports it."""

    region: str
    account: str
    name: str
    arn: str


@dataclass(frozen=True)
class RoleBinding:
    """What an association makes a pod assume; it changes on update, and takes effect after a delay."""

    role_arn: str
    target_role_arn: str | None = None
    disable_session_tags: bool = False
    policy: str | None = None
    external_id: str | None = None


@dataclass(frozen=True)
class Association:
    """One EKS Pod Identity association."""

    cluster: ClusterRef
    namespace: str
    service_account: str
    association_id: str
    association_arn: str
    binding: RoleBinding
    tags: Mapping[str, str]
    created_at: float
    modified_at: float
    owner_arn: str | None
    seq: int
    # Monotonic instant from which `binding` is what credential fetches see; before, `previous` is.
    effective_from: float
    previous: RoleBinding | None
    # Monotonic intervals after effective_from in which the agent's side still answers with `previous` (flapping).
    outages: tuple[tuple[float, float], ...] = ()

    def effective(self, now: float) -> RoleBinding | None:
        if now < self.effective_from or any(start <= now < end for start, end in self.outages):
            return self.previous
        return self.binding

    def to_api(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "clusterName": self.cluster.name,
            "namespace": self.namespace,
            "serviceAccount": self.service_account,
            "roleArn": self.binding.role_arn,
            "associationArn": self.association_arn,
            "associationId": self.association_id,
            "tags": dict(self.tags),
            "createdAt": self.created_at,
            "modifiedAt": self.modified_at,
            "disableSessionTags": self.binding.disable_session_tags,
        }
        optional = {
            "ownerArn": self.owner_arn,
            "targetRoleArn": self.binding.target_role_arn,
            "externalId": self.binding.external_id,
            "policy": self.binding.policy,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return body

    def to_summary(self) -> dict[str, Any]:
        # The List API drops roleArn, tags and timestamps on purpose: callers must Describe to see them.
        body: dict[str, Any] = {
            "clusterName": self.cluster.name,
            "namespace": self.namespace,
            "serviceAccount": self.service_account,
            "associationArn": self.association_arn,
            "associationId": self.association_id,
        }
        if self.owner_arn is not None:
            body["ownerArn"] = self.owner_arn
        return body


@dataclass(frozen=True)
class Addon:
    """One installed EKS add-on."""

    cluster: ClusterRef
    name: str
    version: str
    arn: str
    namespace: str
    tags: Mapping[str, str]
    created_at: float
    modified_at: float
    service_account_role_arn: str | None
    configuration_values: str | None
    association_arns: tuple[str, ...]
    active_from: float
    deleting: bool = False

    def to_api(self, now: float) -> dict[str, Any]:
        status = "DELETING" if self.deleting else "ACTIVE" if now >= self.active_from else "CREATING"
        body: dict[str, Any] = {
            "addonName": self.name,
            "clusterName": self.cluster.name,
            "status": status,
            "addonVersion": self.version,
            "health": {"issues": []},
            "addonArn": self.arn,
            "createdAt": self.created_at,
            "modifiedAt": self.modified_at,
            "tags": dict(self.tags),
            "podIdentityAssociations": list(self.association_arns),
            "namespaceConfig": {"namespace": self.namespace},
        }
        if self.service_account_role_arn is not None:
            body["serviceAccountRoleArn"] = self.service_account_role_arn
        if self.configuration_values is not None:
            body["configurationValues"] = self.configuration_values
        return body


@dataclass(frozen=True)
class BindingChange:
    """The fields UpdatePodIdentityAssociation may change; None means "leave as is", "" clears."""

    role_arn: str | None = None
    target_role_arn: str | None = None
    disable_session_tags: bool | None = None
    policy: str | None = None


def parse_role_arn(arn: object, field_name: str = "roleArn") -> tuple[str, str]:
    """(account, role name) of an IAM role ARN, or InvalidParameterException."""
    match = _ROLE_ARN.fullmatch(arn) if isinstance(arn, str) else None
    if match is None:
        raise EksError("InvalidParameterException", f"{field_name} {arn!r} is not a valid IAM role ARN")
    return match.group(1), match.group(2)


def validate_tags(tags: object, *, code: str = "InvalidParameterException") -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise EksError(code, "tags must be a map of strings to strings")
    if not 1 <= len(tags) <= MAX_TAGS:
        raise EksError(code, f"The number of tags must be between 1 and {MAX_TAGS}, got {len(tags)}")
    for key, value in tags.items():
        if not 1 <= len(key) <= 128:
            raise EksError(code, f"Tag key {key!r} must be 1 to 128 characters long")
        if len(value) > 256:
            raise EksError(code, f"Tag value for {key!r} must be at most 256 characters long")
        if key.lower().startswith("aws:"):
            raise EksError(code, f"Tag key {key!r} uses the reserved prefix aws:")
    return dict(tags)


def validate_names(namespace: object, service_account: object) -> tuple[str, str]:
    if not isinstance(namespace, str) or len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace):
        raise EksError("InvalidParameterException", f"namespace {namespace!r} is not a valid Kubernetes namespace")
    if (
        not isinstance(service_account, str)
        or len(service_account) > 253
        or not _DNS_SUBDOMAIN.fullmatch(service_account)
    ):
        raise EksError(
            "InvalidParameterException",
            f"serviceAccount {service_account!r} is not a valid Kubernetes service account name",
        )
    return namespace, service_account


def new_association_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "a-" + "".join(secrets.choice(alphabet) for _ in range(17))


def encode_token(position: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": position}).encode()).decode().rstrip("=")


def decode_token(token: str) -> int:
    try:
        padded = token + "=" * (-len(token) % 4)
        position = json.loads(base64.urlsafe_b64decode(padded.encode()))["after"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise EksError("InvalidParameterException", "The nextToken provided is not valid") from exc
    if not isinstance(position, int):
        raise EksError("InvalidParameterException", "The nextToken provided is not valid")
    return position


def validate_max_results(raw: str | None) -> int:
    if raw is None:
        return 100
    try:
        value = int(raw)
    except ValueError as exc:
        raise EksError("InvalidParameterException", f"maxResults {raw!r} is not a number") from exc
    if not 1 <= value <= 100:
        raise EksError("InvalidParameterException", "maxResults must be between 1 and 100")
    return value


@dataclass(frozen=True)
class CreateRequest:
    """A validated CreatePodIdentityAssociation; equal requests replay under one clientRequestToken."""

    namespace: str
    service_account: str
    binding: RoleBinding
    tags: tuple[tuple[str, str], ...]
