"""Azure audit rules over role assignments, with plain values (the fetcher runs on the sandbox: tests/integration)."""

from __future__ import annotations

import pytest

from keyless.audit.azure import AzureIdentityDocuments, AzureRoleAssignment, ScopeLevel, audit_identity, scope_level

SUB = "00000000-0000-0000-0000-000000000001"
STORAGE = f"/subscriptions/{SUB}/resourceGroups/data/providers/Microsoft.Storage/storageAccounts/shopdata"
BLOB_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"


def definition_id(guid: str) -> str:
    return f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{guid}"


def assignment(scope: str, role: str, guid: str = "11111111-1111-1111-1111-111111111111",
               actions: tuple[str, ...] = (), not_actions: tuple[str, ...] = ()) -> AzureRoleAssignment:
    return AzureRoleAssignment(id=f"{scope}/providers/Microsoft.Authorization/roleAssignments/a1", scope=scope,
                               role_definition_id=definition_id(guid), role_name=role, actions=actions,
                               not_actions=not_actions)


def ids(*assignments: AzureRoleAssignment) -> list[str]:
    return sorted(f.rule.id for f in audit_identity(AzureIdentityDocuments("platform/shop-api", "p-1", assignments)))


# --- rules ------------------------------------------------------------------------------------------


def test_a_data_role_on_one_resource_is_clean() -> None:
    assert ids(assignment(STORAGE, "Storage Blob Data Reader", BLOB_READER)) == []


def test_the_same_role_on_the_subscription_is_a_warning() -> None:
    findings = audit_identity(AzureIdentityDocuments(
        "platform/shop-api", "p-1", (assignment(f"/subscriptions/{SUB}", "Storage Blob Data Reader", BLOB_READER),)))
    assert [f.rule.id for f in findings] == ["AZ-SCOPE-SUBSCRIPTION"]
    assert findings[0].location.scope == f"/subscriptions/{SUB}"
    assert "az role assignment delete --ids" in findings[0].fix
    assert "--assignee-object-id p-1" in findings[0].fix


def test_a_management_group_counts_as_above_the_subscription() -> None:
    scope = "/providers/Microsoft.Management/managementGroups/corp"
    assert ids(assignment(scope, "Storage Blob Data Reader", BLOB_READER)) == ["AZ-SCOPE-SUBSCRIPTION"]


def test_the_same_role_on_a_resource_group_is_info() -> None:
    scope = f"/subscriptions/{SUB}/resourceGroups/data"
    assert ids(assignment(scope, "Storage Blob Data Reader", BLOB_READER)) == ["AZ-SCOPE-RESOURCE-GROUP"]


@pytest.mark.parametrize(("scope", "level"), [
    ("/", ScopeLevel.ROOT),
    (f"/subscriptions/{SUB}", ScopeLevel.SUBSCRIPTION),
    (f"/subscriptions/{SUB}/resourceGroups/data", ScopeLevel.RESOURCE_GROUP),
    (f"/subscriptions/{SUB}/resourcegroups/data/", ScopeLevel.RESOURCE_GROUP),
    (STORAGE, ScopeLevel.RESOURCE),
])
def test_scope_levels(scope: str, level: ScopeLevel) -> None:
    assert scope_level(scope) is level


@pytest.mark.parametrize("role", ["Owner", "Contributor", "User Access Administrator",
                                  "Role Based Access Control Administrator"])
def test_privileged_roles_are_errors_even_on_one_resource(role: str) -> None:
    assert ids(assignment(STORAGE, role)) == ["AZ-PRIVILEGED-ROLE"]


def test_privileged_roles_are_known_by_their_guid() -> None:
    assert ids(assignment(STORAGE, "", OWNER)) == ["AZ-PRIVILEGED-ROLE"]


def test_custom_roles_that_can_do_everything_or_grant_roles_are_privileged() -> None:
    assert ids(assignment(STORAGE, "my-admin", actions=("*",))) == ["AZ-PRIVILEGED-ROLE"]
    assert ids(assignment(STORAGE, "granter", actions=("Microsoft.Authorization/roleAssignments/write",))) == [
        "AZ-PRIVILEGED-ROLE"]
    # A role that cannot grant because NotActions takes it back out is not.
    assert ids(assignment(STORAGE, "reader-ish", actions=("Microsoft.Authorization/*",),
                          not_actions=("Microsoft.Authorization/*/Write",))) == []


def test_a_control_plane_role_with_a_data_plane_alternative_is_a_warning() -> None:
    findings = audit_identity(AzureIdentityDocuments(
        "platform/shop-api", "p-1", (assignment(STORAGE, "Storage Account Contributor"),)))
    assert [f.rule.id for f in findings] == ["AZ-CONTROL-PLANE-ROLE"]
    assert "Storage Blob Data" in findings[0].message


def test_a_custom_role_that_lists_keys_is_control_plane() -> None:
    role = assignment(STORAGE, "keys", actions=("Microsoft.Storage/storageAccounts/listKeys/action",))
    assert ids(role) == ["AZ-CONTROL-PLANE-ROLE"]
    assert ids(assignment(STORAGE, "reads", actions=("Microsoft.Storage/storageAccounts/read",))) == []

