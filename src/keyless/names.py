"""Every naming rule keyless knows, in one place: Kubernetes names, IAM roles, Azure and Google names."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

DNS_LABEL_MAX = 63
PORTER_NAME_MAX = 31  # Porter's own limit for app and service names

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class NameRuleError(ValueError):
    """A value breaks a naming rule; carries a hint saying what a valid value looks like."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def check_dns_label(value: str, what: str, max_length: int = DNS_LABEL_MAX) -> None:
    """Kubernetes object names used here are DNS-1123 labels: lowercase, digits, '-', at most 63."""
    if not value:
        raise NameRuleError(f"{what} is empty", "use lowercase letters, digits and '-'")
    if len(value) > max_length:
        raise NameRuleError(
            f"{what} {value!r} is {len(value)} characters long; the limit is {max_length}",
            "shorten it",
        )
    if not _DNS_LABEL.fullmatch(value):
        suggestion = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")
        hint = "use lowercase letters, digits and '-', starting and ending with a letter or digit"
        if suggestion and _DNS_LABEL.fullmatch(suggestion):
            hint += f", e.g. {suggestion!r}"
        raise NameRuleError(f"{what} {value!r} is not a valid name", hint)


def check_app_name(value: str) -> None:
    check_dns_label(value, "app name", PORTER_NAME_MAX)


def check_service_name(value: str) -> None:
    check_dns_label(value, "service name")


def check_namespace(value: str) -> None:
    check_dns_label(value, "namespace")


def short_hash(*parts: str, length: int = 8) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:length]


def service_account_name(app: str, service: str) -> str:
    """Porter's convention `<app>-<service>`; past 63 characters, cut and end with a stable hash."""
    full = f"{app}-{service}"
    if len(full) <= DNS_LABEL_MAX:
        return full
    suffix = short_hash(app, service)
    head = full[: DNS_LABEL_MAX - len(suffix) - 1].rstrip("-")
    return f"{head}-{suffix}"


def lock_lease_name(app: str, target: str) -> str:
    """The Lease holding the apply lock of one app on one target: `keyless-<app>-<target>-<hash>`.

    The hash of both names keeps the name unique when '-' inside them would make two pairs read alike (`a-b` on `c`,
    `a` on `b-c`) and when a target name is no DNS label (`Prod_EKS`); the rest is cut to stay within 63 characters."""
    suffix = short_hash(app, target)
    readable = re.sub(r"[^a-z0-9-]+", "-", f"keyless-{app}-{target}".lower())
    head = readable[: DNS_LABEL_MAX - len(suffix) - 1].strip("-")
    return f"{head}-{suffix}"


# --- AWS IAM roles -----------------------------------------------------------------------------

PARTITIONS = ("aws", "aws-cn", "aws-us-gov")
_ROLE_NAME = re.compile(r"^[\w+=,.@-]{1,64}$", re.ASCII)
_ROLE_PATH = re.compile(r"^/(?:[\x21-\x7e]+/)?$")
_ARN = re.compile(
    r"^arn:(?P<partition>[^:]*):(?P<service>[^:]*):(?P<region>[^:]*):(?P<account>[^:]*):(?P<resource>.*)$"
)
_ACCOUNT = re.compile(r"^[0-9]{12}$")


@dataclass(frozen=True, slots=True)
class RoleRef:
    """An IAM role as written in porter.yaml: a name (with path) and, for an ARN, its partition and account."""

    name: str
    path: str = "/"
    partition: str | None = None
    account: str | None = None

    @property
    def is_arn(self) -> bool:
        return self.account is not None

    def arn_in(self, partition: str, account: str) -> str:
        return f"arn:{self.partition or partition}:iam::{self.account or account}:role{self.path}{self.name}"


def _check_role_name(name: str, path: str) -> None:
    if not _ROLE_NAME.fullmatch(name):
        raise NameRuleError(
            f"IAM role name {name!r} is not valid",
            "role names are 1-64 characters of letters, digits and + = , . @ _ -",
        )
    if len(path) > 512 or not _ROLE_PATH.fullmatch(path):
        raise NameRuleError(f"IAM role path {path!r} is not valid", "a path looks like /service-role/")


# EKS association ids as EKS makes them ("a-" and lowercase letters and digits, 17 of them today; the length is not
# documented, so any up to a sane bound).
_ASSOCIATION_ID = re.compile(r"^a-[a-z0-9]{1,64}$")


def is_association_id(value: str) -> bool:
    """Whether `value` can be an EKS pod identity association id: one read from an annotation anyone can edit reaches a
    URL only if it is."""
    return bool(_ASSOCIATION_ID.fullmatch(value))


def parse_role(value: str) -> RoleRef:
    """Accept `name`, `path/name`, `/path/name/` forms, or `arn:PARTITION:iam::ACCOUNT:role/path/name`."""
    value = value.strip()
    if not value:
        raise NameRuleError("awsRole `role` is empty", "write the IAM role name or its ARN")
    if value.startswith("arn:"):
        m = _ARN.fullmatch(value)
        if not m:
            raise NameRuleError(f"{value!r} is not a valid ARN", "an IAM role ARN looks like "
                                "arn:aws:iam::123456789012:role/my-role")
        partition, service, region, account, resource = m.group(
            "partition", "service", "region", "account", "resource"
        )
        if partition not in PARTITIONS:
            raise NameRuleError(
                f"unknown AWS partition {partition!r} in {value!r}",
                f"the partition is one of {', '.join(PARTITIONS)}",
            )
        if service == "sts" and resource.startswith("assumed-role/"):
            raise NameRuleError(
                f"{value!r} is an assumed-role session, not a role",
                "use the role's ARN: arn:PARTITION:iam::ACCOUNT:role/NAME",
            )
        if service != "iam" or not resource.startswith("role/"):
            kind = resource.split("/", 1)[0] or "?"
            raise NameRuleError(
                f"{value!r} is an ARN for {service}:{kind}, not an IAM role",
                "an IAM role ARN looks like arn:aws:iam::123456789012:role/my-role",
            )
        if region:
            raise NameRuleError(f"IAM ARNs have no region, but {value!r} names {region!r}",
                                "remove the region: arn:aws:iam::ACCOUNT:role/NAME")
        if not _ACCOUNT.fullmatch(account):
            raise NameRuleError(f"account {account!r} in {value!r} is not a 12-digit AWS account ID",
                                "an account ID is exactly 12 digits, e.g. arn:aws:iam::123456789012:role/my-role")
        rest = resource[len("role/"):]
        path, _, name = rest.rpartition("/")
        path = f"/{path}/" if path else "/"
        _check_role_name(name, path)
        return RoleRef(name=name, path=path, partition=partition, account=account)
    trimmed = value.strip("/") if value.startswith("/") else value
    path_part, _, name = trimmed.rpartition("/")
    path = f"/{path_part}/" if path_part else "/"
    _check_role_name(name, path)
    return RoleRef(name=name, path=path)


# --- Azure -------------------------------------------------------------------------------------

_UAMI_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,127}$")
_RESOURCE_GROUP = re.compile(r"^[-\w._()]{1,90}$")
_FEDERATED_CREDENTIAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,119}$")
_SUBSCRIPTION = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def check_identity_name(value: str) -> None:
    """User-assigned managed identity names: 3-128 of letters, digits, '-' and '_', first a letter or digit."""
    if not _UAMI_NAME.fullmatch(value):
        raise NameRuleError(
            f"managed identity name {value!r} is not valid",
            "use 3-128 letters, digits, '-' or '_', starting with a letter or digit",
        )


def check_resource_group(value: str) -> None:
    """Resource groups: 1-90 of letters, digits, '_', '-', '.', '(', ')', not ending in '.'.

    Nothing here can add a path segment, query or fragment to an ARM URL ('/', '?', '#', '%').
    """
    if not _RESOURCE_GROUP.fullmatch(value) or value.endswith("."):
        raise NameRuleError(
            f"resource group name {value!r} is not valid",
            "use 1-90 letters, digits, '_', '-', '.', '(' or ')', not ending with '.'",
        )


def check_federated_credential_name(value: str) -> None:
    if not _FEDERATED_CREDENTIAL.fullmatch(value):
        raise NameRuleError(f"federated credential name {value!r} is not valid",
                            "3-120 letters, digits, '-' or '_', starting with a letter or digit")


FEDERATED_CREDENTIAL_PREFIX = "keyless_"


def federated_credential_name(app: str, service: str, target: str) -> str:
    """The name keyless gives the credential it owns: `keyless_<app>_<service>_<target hash>`.

    Federated credentials carry no tags, so the name is the ownership mark. '_' cannot appear in app
    or service names (DNS labels), so the parts parse back unambiguously; at most 8+31+1+63+1+6 = 110
    characters, inside Azure's 120.
    """
    name = _federated_credential_name(app, service, target_hash(target))
    check_federated_credential_name(name)
    return name


def federated_credential_name_before_target(app: str, service: str) -> str:
    """The same name while no target is chosen yet, its last part shown as `<target hash>`: for display only."""
    return _federated_credential_name(app, service, "<target hash>")


def _federated_credential_name(app: str, service: str, hashed_target: str) -> str:
    return f"{FEDERATED_CREDENTIAL_PREFIX}{app}_{service}_{hashed_target}"


def parse_federated_credential_name(name: str) -> tuple[str, str, str] | None:
    """(app, service, target hash) of a credential keyless named, else None (not keyless's)."""
    if not name.startswith(FEDERATED_CREDENTIAL_PREFIX):
        return None
    parts = name[len(FEDERATED_CREDENTIAL_PREFIX):].split("_")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


def target_hash(target: str) -> str:
    return short_hash(target, length=6)


def check_subscription_id(value: str) -> None:
    if not _SUBSCRIPTION.fullmatch(value):
        raise NameRuleError(f"subscription {value!r} is not a subscription ID",
                            "a subscription ID is a GUID like 00000000-0000-0000-0000-000000000000")


# --- Google Cloud ------------------------------------------------------------------------------

_GSA_NAME = re.compile(r"^[a-z](?:[-a-z0-9]{4,28}[a-z0-9])$")
_PROJECT_ID = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
_DOMAIN = re.compile(r"^[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}$")
_DEFAULT_COMPUTE = re.compile(r"^[0-9]+-compute@developer\.gserviceaccount\.com$")


@dataclass(frozen=True, slots=True)
class GoogleServiceAccount:
    email: str
    project: str | None  # None for Google-managed default accounts, whose project is not in the email
    is_default: bool = False


def check_project_id(value: str) -> None:
    if not _PROJECT_ID.fullmatch(value):
        raise NameRuleError(f"project ID {value!r} is not valid",
                            "6-30 lowercase letters, digits and '-', starting with a letter")


def parse_service_account_email(value: str) -> GoogleServiceAccount:
    """`NAME@PROJECT.iam.gserviceaccount.com`, or one of Google's default accounts (flagged as such)."""
    email = value.strip()
    if email != email.lower():
        raise NameRuleError(f"service account email {value!r} has uppercase letters",
                            f"Google service account emails are lowercase: {email.lower()!r}")
    if _DEFAULT_COMPUTE.fullmatch(email):
        return GoogleServiceAccount(email=email, project=None, is_default=True)
    name, at, domain = email.partition("@")
    if at and domain == "appspot.gserviceaccount.com" and _PROJECT_ID.fullmatch(name):
        return GoogleServiceAccount(email=email, project=name, is_default=True)
    suffix = ".iam.gserviceaccount.com"
    if not at or not domain.endswith(suffix):
        raise NameRuleError(
            f"{value!r} is not a Google service account email",
            "it looks like NAME@PROJECT_ID.iam.gserviceaccount.com",
        )
    project = domain[: -len(suffix)]
    if not _GSA_NAME.fullmatch(name):
        raise NameRuleError(f"service account name {name!r} is not valid",
                            "6-30 lowercase letters, digits and '-', starting with a letter")
    # Domain-scoped projects (`example.com:my-project`) put the project first: NAME@my-project.example.com.iam...
    project_id, dot, domain_part = project.partition(".")
    if not _PROJECT_ID.fullmatch(project_id) or (dot and not _DOMAIN.fullmatch(domain_part)):
        raise NameRuleError(f"project {project!r} in {value!r} is not a valid project ID",
                            "6-30 lowercase letters, digits and '-', starting with a letter")
    return GoogleServiceAccount(email=email, project=f"{domain_part}:{project_id}" if dot else project_id)
