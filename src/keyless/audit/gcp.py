"""GCP rules: IAM policies (project, folder, organization) that grant roles to a Google service account."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keyless.audit import rules as R
from keyless.audit.model import Finding, Location
from keyless.audit.shared import audit_incomplete

BASIC_ROLES = ("roles/owner", "roles/editor")
# Held on a project, these let the account act as any service account of it.
IMPERSONATION_ROLES = ("roles/iam.serviceAccountTokenCreator", "roles/iam.serviceAccountUser",
                       "roles/iam.workloadIdentityUser")


@dataclass(frozen=True, slots=True)
class GcpPolicy:
    """The IAM policy of a resource above the service's own resources, as getIamPolicy returns it."""

    resource: str  # "projects/my-project", "folders/123", "organizations/456"
    policy: Mapping[str, Any]  # {"bindings": [{"role": ..., "members": [...], "condition": {...}}], "etag": ...}


@dataclass(frozen=True, slots=True)
class GcpKey:
    """A key of the service account, as keys.list returns it."""

    name: str  # projects/P/serviceAccounts/EMAIL/keys/ID
    key_type: str  # USER_MANAGED, SYSTEM_MANAGED
    valid_after: str = ""

    @property
    def key_id(self) -> str:
        return self.name.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class GcpServiceAccountDocuments:
    email: str
    policies: tuple[GcpPolicy, ...] = ()
    unreadable: tuple[str, ...] = ()
    keys: tuple[GcpKey, ...] = ()


def _as_list(value: object) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _member(email: str) -> str:
    return f"serviceAccount:{email}".lower()


def _roles_of(policy: GcpPolicy, email: str) -> list[tuple[int, str, bool]]:
    """(binding index, role, conditional) of every binding that names the service account."""
    member = _member(email)
    found: list[tuple[int, str, bool]] = []
    for index, binding in enumerate(_as_list(policy.policy.get("bindings"))):
        if not isinstance(binding, Mapping):
            continue
        members = {str(m).lower() for m in _as_list(binding.get("members"))}
        if member in members:
            found.append((index, str(binding.get("role", "")), bool(binding.get("condition"))))
    return found




def _remove(resource: str, email: str, role: str) -> str:
    kind, _, name = resource.partition("/")
    command = {"projects": "projects", "folders": "resource-manager folders",
               "organizations": "organizations"}.get(kind, "projects")
    return (f"gcloud {command} remove-iam-policy-binding {name} --member=serviceAccount:{email} "
            f"--role={role}")


def audit_service_account(documents: GcpServiceAccountDocuments) -> list[Finding]:
    """Every GCP rule over the policies that grant roles to one Google service account."""
    found = audit_incomplete(documents.email, documents.unreadable)
    for policy in documents.policies:
        for index, role, conditional in _roles_of(policy, documents.email):
            location = Location(documents.email, f"IAM policy of {policy.resource}", index, scope=policy.resource)
            remove = _remove(policy.resource, documents.email, role)
            suffix = " (with a condition)" if conditional else ""
            if role in BASIC_ROLES:
                found.append(Finding(
                    R.GCP_BASIC_ROLE, f"basic role {role} on {policy.resource}{suffix}", location,
                    f"grant predefined roles on the resources the service uses, then `{remove}`"))
            elif role in IMPERSONATION_ROLES:
                found.append(Finding(
                    R.GCP_PROJECT_IMPERSONATION, f"{role} on the whole of {policy.resource}{suffix}: it can act as "
                    "every service account there", location,
                    f"grant {role} on the one service account it must act as, then `{remove}`"))
            elif _is_admin(role):
                found.append(Finding(
                    R.GCP_PROJECT_ADMIN_ROLE, f"admin role {role} on the whole of {policy.resource}{suffix}",
                    location, f"grant a narrower role on the resource the service uses, then `{remove}`"))
            else:
                found.append(Finding(
                    R.GCP_PROJECT_GRANT, f"{role} is granted on the whole of {policy.resource}{suffix}", location,
                    f"grant {role} on the resource the service uses (e.g. `gcloud storage buckets "
                    f"add-iam-policy-binding gs://BUCKET --member=serviceAccount:{documents.email} --role={role}`), "
                    f"then `{remove}`"))
    for key in documents.keys:
        if key.key_type == "USER_MANAGED":
            since = f" (valid since {key.valid_after})" if key.valid_after else ""
            found.append(Finding(
                R.GCP_USER_MANAGED_KEY, f"user-managed key {key.key_id}{since}",
                Location(documents.email, "keys of the service account", scope=key.name),
                f"`gcloud iam service-accounts keys delete {key.key_id} --iam-account {documents.email}` once "
                "nothing uses it"))
    return found


def _is_admin(role: str) -> bool:
    """Predefined admin roles are named roles/SERVICE.admin or roles/SERVICE.somethingAdmin."""
    name = role.rsplit("/", 1)[-1].rsplit(".", 1)[-1]
    return role.startswith("roles/") and (name == "admin" or name.endswith("Admin"))
