"""The Azure built-in role definitions the sandbox knows, with their real GUIDs and permissions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "BUILT_IN_ROLES",
    "CONTRIBUTOR",
    "MANAGED_IDENTITY_CONTRIBUTOR",
    "OWNER",
    "RBAC_ADMINISTRATOR",
    "READER",
    "STORAGE_BLOB_DATA_CONTRIBUTOR",
    "STORAGE_BLOB_DATA_READER",
    "USER_ACCESS_ADMINISTRATOR",
    "RoleDefinition",
    "role_by_name",
]

# Built-in role definitions exist in every tenant with the same GUIDs; these are the real ones, so code
# written against the sandbox that hard-codes a GUID (as Azure docs tell people to) behaves the same.
OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
USER_ACCESS_ADMINISTRATOR = "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9"
RBAC_ADMINISTRATOR = "f58310d9-a9f6-439a-9e8d-f62e7b41a168"
STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_ACCOUNT_CONTRIBUTOR = "17d1049b-9a84-46fb-8f53-869881c3d3ab"
MANAGED_IDENTITY_CONTRIBUTOR = "e40ec5ca-96e0-45a2-b4ff-59039f2c2b59"
MANAGED_IDENTITY_OPERATOR = "f1a07417-d97a-45cb-824c-7a7467783830"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
AKS_CLUSTER_USER = "4abbcc35-e782-43d8-92c5-2d3f1bd2253f"

_BLOBS = "Microsoft.Storage/storageAccounts/blobServices"
_UAMI = "Microsoft.ManagedIdentity/userAssignedIdentities"
_MONITORING_AND_DEPLOYMENTS = (
    "Microsoft.Authorization/*/read",
    "Microsoft.Insights/alertRules/*",
    "Microsoft.Resources/subscriptions/resourceGroups/read",
    "Microsoft.Resources/deployments/*",
    "Microsoft.Support/*",
)


@dataclass(frozen=True)
class RoleDefinition:
    """One built-in role: what `roleDefinitions` answers, minus the scope-dependent id."""

    guid: str
    name: str
    description: str
    actions: Sequence[str] = ()
    not_actions: Sequence[str] = ()
    data_actions: Sequence[str] = ()
    not_data_actions: Sequence[str] = ()
    created_on: str = "2015-02-02T21:55:09.8806423Z"
    updated_on: str = "2024-01-01T00:00:00.0000000Z"
    role_type: str = field(default="BuiltInRole")

    def resource(self, scope: str) -> dict[str, Any]:
        """The ARM JSON of this definition as read at `scope` (built-ins are visible at every scope)."""
        return {
            "id": f"{definition_scope(scope)}/providers/Microsoft.Authorization/roleDefinitions/{self.guid}",
            "name": self.guid,
            "type": "Microsoft.Authorization/roleDefinitions",
            "properties": {
                "roleName": self.name,
                "type": self.role_type,
                "description": self.description,
                "assignableScopes": ["/"],
                "permissions": [{
                    "actions": list(self.actions),
                    "notActions": list(self.not_actions),
                    "dataActions": list(self.data_actions),
                    "notDataActions": list(self.not_data_actions),
                }],
                "createdOn": self.created_on,
                "updatedOn": self.updated_on,
                "createdBy": None,
                "updatedBy": None,
            },
        }


def definition_scope(scope: str) -> str:
    """Role definition ids are rooted at the subscription of the scope they are read at ("" for tenant scope)."""
    parts = [p for p in scope.split("/") if p]
    if len(parts) >= 2 and parts[0].lower() == "subscriptions":
        return f"/subscriptions/{parts[1]}"
    return ""


_ROLES = (
    RoleDefinition(OWNER, "Owner", "Full access to manage all resources, including assigning roles.",
                   actions=("*",)),
    RoleDefinition(
        CONTRIBUTOR, "Contributor",
        "Full access to manage all resources, but cannot assign roles or manage Blueprints assignments.",
        actions=("*",),
        not_actions=(
            "Microsoft.Authorization/*/Delete",
            "Microsoft.Authorization/*/Write",
            "Microsoft.Authorization/elevateAccess/Action",
            "Microsoft.Blueprint/blueprintAssignments/write",
            "Microsoft.Blueprint/blueprintAssignments/delete",
            "Microsoft.Compute/galleries/share/action",
            "Microsoft.Purview/consents/write",
            "Microsoft.Purview/consents/delete",
            "Microsoft.Resources/deploymentStacks/manageDenySetting/action",
            "Microsoft.Subscription/cancel/action",
            "Microsoft.Subscription/enable/action",
        ),
    ),
    RoleDefinition(READER, "Reader", "View all resources, but make no changes.", actions=("*/read",)),
    RoleDefinition(USER_ACCESS_ADMINISTRATOR, "User Access Administrator", "Manage user access to Azure resources.",
                   actions=("*/read", "Microsoft.Authorization/*", "Microsoft.Support/*")),
    RoleDefinition(
        RBAC_ADMINISTRATOR, "Role Based Access Control Administrator",
        "Manage access to Azure resources by assigning roles with Azure RBAC; cannot manage other access.",
        actions=("Microsoft.Authorization/roleAssignments/write", "Microsoft.Authorization/roleAssignments/delete",
                 "*/read", "Microsoft.Support/*"),
    ),
    RoleDefinition(
        STORAGE_BLOB_DATA_READER, "Storage Blob Data Reader", "Read and list Azure Storage containers and blobs.",
        actions=(f"{_BLOBS}/containers/read", f"{_BLOBS}/generateUserDelegationKey/action"),
        data_actions=(f"{_BLOBS}/containers/blobs/read",),
    ),
    RoleDefinition(
        STORAGE_BLOB_DATA_CONTRIBUTOR, "Storage Blob Data Contributor",
        "Read, write and delete Azure Storage containers and blobs.",
        actions=(f"{_BLOBS}/containers/delete", f"{_BLOBS}/containers/read", f"{_BLOBS}/containers/write",
                 f"{_BLOBS}/generateUserDelegationKey/action"),
        data_actions=(f"{_BLOBS}/containers/blobs/delete", f"{_BLOBS}/containers/blobs/read",
                      f"{_BLOBS}/containers/blobs/write", f"{_BLOBS}/containers/blobs/move/action",
                      f"{_BLOBS}/containers/blobs/add/action"),
    ),
    RoleDefinition(
        STORAGE_BLOB_DATA_OWNER, "Storage Blob Data Owner",
        "Full access to Azure Storage blob containers and data, including assigning POSIX access control.",
        actions=(f"{_BLOBS}/containers/*", f"{_BLOBS}/generateUserDelegationKey/action"),
        data_actions=(f"{_BLOBS}/containers/blobs/*",),
    ),
    RoleDefinition(
        STORAGE_ACCOUNT_CONTRIBUTOR, "Storage Account Contributor",
        "Manage storage accounts, including their access keys (a control-plane role).",
        actions=("Microsoft.Network/virtualNetworks/subnets/joinViaServiceEndpoint/action",
                 "Microsoft.ResourceHealth/availabilityStatuses/read", "Microsoft.Storage/storageAccounts/*",
                 "Microsoft.Insights/diagnosticSettings/*", *_MONITORING_AND_DEPLOYMENTS),
    ),
    RoleDefinition(
        MANAGED_IDENTITY_CONTRIBUTOR, "Managed Identity Contributor",
        "Create, read, update and delete user-assigned identities and their federated credentials.",
        actions=(f"{_UAMI}/read", f"{_UAMI}/write", f"{_UAMI}/delete",
                 f"{_UAMI}/federatedIdentityCredentials/read", f"{_UAMI}/federatedIdentityCredentials/write",
                 f"{_UAMI}/federatedIdentityCredentials/delete", *_MONITORING_AND_DEPLOYMENTS),
    ),
    RoleDefinition(MANAGED_IDENTITY_OPERATOR, "Managed Identity Operator", "Read and assign user-assigned identities.",
                   actions=(f"{_UAMI}/*/read", f"{_UAMI}/*/assign/action", *_MONITORING_AND_DEPLOYMENTS)),
    RoleDefinition(KEY_VAULT_SECRETS_USER, "Key Vault Secrets User", "Read secret contents of a key vault.",
                   data_actions=("Microsoft.KeyVault/vaults/secrets/getSecret/action",
                                 "Microsoft.KeyVault/vaults/secrets/readMetadata/action")),
    RoleDefinition(AKS_CLUSTER_USER, "Azure Kubernetes Service Cluster User Role",
                   "List the cluster user credential of a managed cluster.",
                   actions=("Microsoft.ContainerService/managedClusters/listClusterUserCredential/action",
                            "Microsoft.ContainerService/managedClusters/read")),
)

BUILT_IN_ROLES: Mapping[str, RoleDefinition] = MappingProxyType({role.guid: role for role in _ROLES})


def role_by_name(name: str) -> RoleDefinition:
    """The built-in role called `name` (exact, as `roleName eq '...'` matches it)."""
    for role in _ROLES:
        if role.name == name:
            return role
    raise KeyError(name)
