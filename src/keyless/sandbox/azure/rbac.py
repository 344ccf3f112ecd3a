"""Azure RBAC in the sandbox: role assignments at any scope, ARM's $filter forms, and the built-in definitions."""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from keyless.sandbox.azure.roles import BUILT_IN_ROLES, RoleDefinition
from keyless.sandbox.azure.state import GUID, ArmError, AzureState, normalize_scope

__all__ = ["RoleAssignment", "RoleAssignments"]


@dataclass(frozen=True)
class RoleAssignment:
    name: str
    scope: str
    role_definition_id: str
    principal_id: str
    principal_type: str
    created_on: str
    description: str | None = None
    condition: str | None = None
    condition_version: str | None = None

    @property
    def id(self) -> str:
        return f"{self.scope}/providers/Microsoft.Authorization/roleAssignments/{self.name}"


def _covers(outer: str, inner: str) -> bool:
    outer_l, inner_l = outer.lower().rstrip("/"), inner.lower().rstrip("/")
    return inner_l == outer_l or inner_l.startswith(outer_l + "/") or outer_l == ""




class RoleAssignments:
    """The role assignments of the sandbox's subscription; scopes and principals are checked against the state."""

    def __init__(self, state: AzureState) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._assignments: dict[str, RoleAssignment] = {}

    def role_assignments(self, scope: str, filter_text: str | None) -> list[RoleAssignment]:
        scope = self.state.check_scope(scope)
        at_scope, principal = False, None
        for term in [t.strip() for t in re.split(r"\s+and\s+", filter_text or "", flags=re.IGNORECASE) if t.strip()]:
            if term.lower() == "atscope()":
                at_scope = True
                continue
            match = re.fullmatch(r"(?:principalId\s+eq\s+'([^']*)'|assignedTo\('([^']*)'\))", term, re.IGNORECASE)
            if match is None:
                raise ArmError(400, "UnsupportedQuery", f"The filter '{filter_text}' is not supported. Supported: "
                               "atScope(), principalId eq '{id}', assignedTo('{id}').")
            principal = (match.group(1) or match.group(2) or "").lower()
        with self._lock:
            found = [a for a in self._assignments.values()
                     if (_covers(a.scope, scope) or (not at_scope and _covers(scope, a.scope)))
                     and (principal is None or a.principal_id.lower() == principal)]
        return sorted(found, key=lambda a: (a.scope.lower(), a.name))

    def role_assignment(self, scope: str, name: str) -> RoleAssignment:
        scope = self.state.check_scope(scope)
        with self._lock:
            found = self._assignments.get(name.lower())
        if found is None or found.scope.lower() != scope.lower():
            raise ArmError(404, "RoleAssignmentNotFound", f"The role assignment '{name}' is not found.")
        return found

    def put_role_assignment(self, scope: str, name: str, properties: Mapping[str, Any]) -> tuple[RoleAssignment, bool]:
        scope = self.state.check_scope(scope)
        if not GUID.match(name):
            raise ArmError(400, "InvalidRoleAssignmentId",
                           f"The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID.")
        definition_id = str(properties.get("roleDefinitionId") or "")
        guid = definition_id.rstrip("/").rsplit("/", 1)[-1]
        if guid.lower() not in BUILT_IN_ROLES:
            raise ArmError(400, "RoleDefinitionDoesNotExist",
                           f"The specified role definition with ID '{guid}' does not exist.")
        principal_id = str(properties.get("principalId") or "")
        known_type = self.state.principal_type(principal_id)
        if known_type is None:
            raise ArmError(400, "PrincipalNotFound",
                           f"Principal {principal_id.replace('-', '')} does not exist in the directory "
                           f"{self.state.tenant_id}. Check that you have the correct principal ID. If you are "
                           "creating this principal and then immediately assigning a role, this error might be "
                           "related to a replication delay. In this case, set the role assignment principalType "
                           "property to a value, such as ServicePrincipal, User, or Group.  "
                           "See https://aka.ms/docs-principaltype")
        role_definition_id = f"/subscriptions/{self.state.subscription_id}/providers/Microsoft.Authorization/" \
                             f"roleDefinitions/{guid.lower()}"
        with self._lock:
            existing = self._assignments.get(name.lower())
            if existing is not None:
                if (existing.scope.lower(), existing.principal_id.lower(), existing.role_definition_id.lower()) != \
                        (scope.lower(), principal_id.lower(), role_definition_id.lower()):
                    raise ArmError(400, "RoleAssignmentUpdateNotPermitted",
                                   "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.")
                return existing, False
            for other in self._assignments.values():
                if (other.scope.lower(), other.principal_id.lower(), other.role_definition_id.lower()) == \
                        (scope.lower(), principal_id.lower(), role_definition_id.lower()):
                    raise ArmError(409, "RoleAssignmentExists", "The role assignment already exists.")
            assignment = RoleAssignment(
                name.lower(), scope, role_definition_id, principal_id,
                str(properties.get("principalType") or known_type), datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                description=properties.get("description"), condition=properties.get("condition"),
                condition_version=properties.get("conditionVersion"),
            )
            self._assignments[name.lower()] = assignment
        return assignment, True

    def delete_role_assignment(self, scope: str, name: str) -> RoleAssignment | None:
        scope = self.state.check_scope(scope)
        with self._lock:
            found = self._assignments.get(name.lower())
            if found is None or found.scope.lower() != scope.lower():
                return None
            del self._assignments[name.lower()]
        return found

    def role_definition(self, scope: str, guid: str) -> RoleDefinition:
        if normalize_scope(scope) != "/":
            self.state.check_scope(scope)
        found = BUILT_IN_ROLES.get(guid.lower())
        if found is None:
            raise ArmError(404, "RoleDefinitionDoesNotExist",
                           f"The specified role definition with ID '{guid}' does not exist.")
        return found

    def role_definitions(self, scope: str, filter_text: str | None) -> Sequence[RoleDefinition]:
        if normalize_scope(scope) != "/":
            self.state.check_scope(scope)
        roles: list[RoleDefinition] = list(BUILT_IN_ROLES.values())
        for term in [t.strip() for t in re.split(r"\s+and\s+", filter_text or "", flags=re.IGNORECASE) if t.strip()]:
            match = re.fullmatch(r"(roleName|type)\s+eq\s+'([^']*)'", term, re.IGNORECASE)
            if match is None:
                raise ArmError(400, "UnsupportedQuery", f"The filter '{filter_text}' is not supported. Supported: "
                               "roleName eq '{name}', type eq 'BuiltInRole|CustomRole'.")
            value = match.group(2)
            if match.group(1).lower() == "rolename":
                roles = [r for r in roles if r.name == value]
            else:
                roles = [r for r in roles if r.role_type.lower() == value.lower()]
        return roles
