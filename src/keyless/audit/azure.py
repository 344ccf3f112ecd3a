"""Azure rules: a managed identity's role assignments (scope, role, permissions) against least privilege."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from keyless.audit import rules as R
from keyless.audit.model import Finding, Location
from keyless.audit.shared import audit_incomplete

# Built-in role definition GUIDs are the same in every tenant and cloud; names are matched too, for custom
# copies and documents that carry only the name.
PRIVILEGED_ROLES = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9": "User Access Administrator",
    "f58310d9-a9f6-439a-9e8d-f62e7b41a168": "Role Based Access Control Administrator",
}
_PRIVILEGED_NAMES = {name.lower() for name in PRIVILEGED_ROLES.values()}

# Control-plane roles a workload is often given where a data-plane role does the job without key access.
DATA_PLANE_ALTERNATIVES = {
    "storage account contributor": "Storage Blob Data Reader or Contributor (or the Queue, Table or File "
                                   "data roles) on the storage account",
    "classic storage account contributor": "Storage Blob Data Reader or Contributor on the storage account",
    "storage account key operator service role": "Storage Blob Data Reader or Contributor on the storage account",
    "reader and data access": "Storage Blob Data Reader on the storage account",
    "key vault contributor": "Key Vault Secrets User (or Key Vault Crypto User, Key Vault Certificate User) on "
                             "the vault",
    "documentdb account contributor": "a Cosmos DB data-plane role (Cosmos DB Built-in Data Reader or "
                                      "Contributor) through a Cosmos DB SQL role assignment",
    "cosmos db operator": "a Cosmos DB data-plane role (Cosmos DB Built-in Data Reader or Contributor) through a "
                          "Cosmos DB SQL role assignment",
    "redis cache contributor": "a Redis data access policy with Microsoft Entra authentication",
    "eventgrid contributor": "EventGrid Data Sender on the topic",
    "search service contributor": "Search Index Data Reader or Contributor on the search service",
}

# Actions that hand out keys or connection strings: whoever holds them bypasses data-plane RBAC.
_KEY_ACTION = re.compile(r"/(listkeys|listaccountsas|listservicesas|regeneratekey|listconnectionstrings)/action$",
                         re.IGNORECASE)
# Actions that let an identity grant roles, i.e. give itself more.
_GRANTING = re.compile(r"^(\*|microsoft\.authorization/(\*|\*/write|roleassignments/(\*|write)))$", re.IGNORECASE)


class ScopeLevel(enum.StrEnum):
    ROOT = "tenant root"
    MANAGEMENT_GROUP = "management group"
    SUBSCRIPTION = "subscription"
    RESOURCE_GROUP = "resource group"
    RESOURCE = "resource"


def scope_level(scope: str) -> ScopeLevel:
    parts = [p for p in scope.strip().split("/") if p]
    if not parts:
        return ScopeLevel.ROOT
    lowered = [p.lower() for p in parts]
    if lowered[0] == "providers" and len(lowered) >= 2 and lowered[1] == "microsoft.management":
        return ScopeLevel.MANAGEMENT_GROUP
    if lowered[0] == "subscriptions":
        if len(parts) <= 2:
            return ScopeLevel.SUBSCRIPTION
        if lowered[2] == "resourcegroups" and len(parts) <= 4:
            return ScopeLevel.RESOURCE_GROUP
    return ScopeLevel.RESOURCE


@dataclass(frozen=True, slots=True)
class AzureRoleAssignment:
    """A role assignment of the identity, with its role definition resolved."""

    id: str
    scope: str
    role_definition_id: str
    role_name: str
    role_type: str = ""  # BuiltInRole or CustomRole
    actions: tuple[str, ...] = ()
    not_actions: tuple[str, ...] = ()
    data_actions: tuple[str, ...] = ()
    condition: str | None = None

    @property
    def role_guid(self) -> str:
        return self.role_definition_id.rstrip("/").rsplit("/", 1)[-1].lower()


@dataclass(frozen=True, slots=True)
class AzureIdentityDocuments:
    identity: str  # "resourceGroup/name"
    principal_id: str
    assignments: tuple[AzureRoleAssignment, ...] = ()
    unreadable: tuple[str, ...] = ()


def _granting(actions: Sequence[str], not_actions: Sequence[str]) -> list[str]:
    """Actions that can write role assignments, unless NotActions takes role-assignment writes back out."""
    blocked = any(_GRANTING.match(n) for n in not_actions)
    return [] if blocked else [a for a in actions if _GRANTING.match(a) and a != "*"]


def _privileged(assignment: AzureRoleAssignment) -> str | None:
    """Why the role is privileged, or None."""
    if assignment.role_guid in PRIVILEGED_ROLES or assignment.role_name.lower() in _PRIVILEGED_NAMES:
        return f"role {assignment.role_name or PRIVILEGED_ROLES.get(assignment.role_guid)!r}"
    if "*" in assignment.actions:
        return f"role {assignment.role_name!r} allows every action (\"*\")"
    granting = _granting(assignment.actions, assignment.not_actions)
    if granting:
        return f"role {assignment.role_name!r} can assign roles ({', '.join(granting)})"
    return None


def _control_plane(assignment: AzureRoleAssignment) -> str | None:
    """The data-plane role to use instead, or None."""
    alternative = DATA_PLANE_ALTERNATIVES.get(assignment.role_name.lower())
    if alternative is not None:
        return alternative
    keys = [a for a in assignment.actions if _KEY_ACTION.search(a)]
    if keys:
        return f"a data-plane role (the role can read keys through {', '.join(keys[:3])})"
    return None


def audit_identity(documents: AzureIdentityDocuments) -> list[Finding]:
    """Every Azure rule over one managed identity's role assignments."""
    found = audit_incomplete(documents.identity, documents.unreadable)
    who = f"--assignee-object-id {documents.principal_id} --assignee-principal-type ServicePrincipal"
    for assignment in documents.assignments:
        location = Location(documents.identity, f"role assignment {assignment.id}", scope=assignment.scope)
        role = assignment.role_name or assignment.role_guid
        delete = f"az role assignment delete --ids {assignment.id}"
        level = scope_level(assignment.scope)
        privileged = _privileged(assignment)
        if privileged is not None:
            found.append(Finding(
                R.AZ_PRIVILEGED_ROLE, f"{privileged} at {level} scope {assignment.scope}", location,
                f"assign a role limited to what the service does on the resource it uses "
                f"(`az role assignment create {who} --role ROLE --scope RESOURCE_ID`), then `{delete}`"))
        else:
            alternative = _control_plane(assignment)
            if alternative is not None:
                found.append(Finding(
                    R.AZ_CONTROL_PLANE_ROLE, f"control-plane role {role!r} where {alternative} would do",
                    location,
                    f"assign {alternative} (`az role assignment create {who} --role ROLE --scope RESOURCE_ID`), "
                    f"then `{delete}`"))
        move = (f"`az role assignment create {who} --role \"{role}\" --scope RESOURCE_ID` with the ID of the "
                f"resource the service uses, then `{delete}`")
        if level in (ScopeLevel.ROOT, ScopeLevel.MANAGEMENT_GROUP, ScopeLevel.SUBSCRIPTION):
            found.append(Finding(R.AZ_SCOPE_SUBSCRIPTION,
                                 f"{role!r} is assigned at {level} scope {assignment.scope or '/'}", location, move))
        elif level is ScopeLevel.RESOURCE_GROUP:
            found.append(Finding(R.AZ_SCOPE_RESOURCE_GROUP,
                                 f"{role!r} is assigned at resource-group scope {assignment.scope}", location, move))
    return found
