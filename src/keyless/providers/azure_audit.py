"""Fetching what the Azure audit rules read: a managed identity's role assignments and their role definitions."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from azure.core.credentials import TokenCredential

from keyless import names
from keyless.audit import AuditReport, Finding, IdentityUse, build_report, identity_key
from keyless.audit.azure import AzureIdentityDocuments, AzureRoleAssignment, audit_identity
from keyless.audit.shared import audit_incomplete
from keyless.bindings import Binding
from keyless.clouds import AzureIdentity, Cloud
from keyless.errors import Denied
from keyless.providers.azure_api import AzureApi
from keyless.providers.retry import RetryPolicy
from keyless.targets import AzureTarget

# Reads only, so a shorter schedule than the provider's writes need.
DEFAULT_RETRY = RetryPolicy(max_attempts=6, base_delay=0.5, max_delay=8.0, deadline=45.0)


@dataclass(frozen=True, slots=True)
class _IdentityRead:
    documents: AzureIdentityDocuments | None
    problem: str = ""
    uses: tuple[IdentityUse, ...] = ()


class AzureAuditor:
    """Reads role assignments, the identity and its credentials through the same SDK layer as the provider
    (`armEndpoint`, `caBundle`, the same retries and errors), with DefaultAzureCredential unless one is given."""

    def __init__(self, target: AzureTarget, credential: TokenCredential | None = None, *,
                 retry: RetryPolicy = DEFAULT_RETRY, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self._api = AzureApi(target, credential, retry=retry, sleep=sleep, clock=clock)
        self._auth = self._api.authorization
        self._msi = self._api.msi
        self._roles: dict[str, Any] = {}

    def close(self) -> None:
        self._api.close()

    def _role_definition(self, role_definition_id: str) -> Any:
        if role_definition_id not in self._roles:
            self._roles[role_definition_id] = self._api.call(
                f"reading role definition {role_definition_id}",
                lambda: self._auth.role_definitions.get_by_id(role_definition_id))
        return self._roles[role_definition_id]

    def read_identity(self, identity: AzureIdentity, target_name: str) -> _IdentityRead:
        """The identity's principal, every role assignment of it in the subscription, and keyless's credentials."""
        key = f"{identity.resource_group}/{identity.identity_name}"

        try:
            found = self._api.get(f"reading managed identity {key}", lambda: self._msi.user_assigned_identities.get(
                identity.resource_group, identity.identity_name))
        except Denied as exc:
            return _IdentityRead(None, _denied(exc))
        if found is None or not found.principal_id:
            return _IdentityRead(None, f"managed identity {key}: it does not exist in subscription "
                                       f"{self.target.subscription}")
        principal = str(found.principal_id)
        unreadable: list[str] = []
        assignments: list[AzureRoleAssignment] = []
        scope = f"/subscriptions/{self.target.subscription}"
        try:
            # principalId filter: assignments at, above (management groups) and below (groups, resources) the scope.
            listed = self._api.call(f"listing role assignments of {key}", lambda: list(
                self._auth.role_assignments.list_for_scope(scope, filter=f"principalId eq '{principal}'")))
        except Denied as exc:
            listed = []
            unreadable.append(_denied(exc))
        for item in listed:
            definition_id = str(item.role_definition_id or "")
            try:
                definition = self._role_definition(definition_id)
            except Denied as exc:
                unreadable.append(_denied(exc))
                definition = None
            permissions = list(getattr(definition, "permissions", None) or [])
            assignments.append(AzureRoleAssignment(
                id=str(item.id or ""), scope=str(item.scope or ""), role_definition_id=definition_id,
                role_name=str(getattr(definition, "role_name", "") or ""),
                role_type=str(getattr(definition, "role_type", "") or ""),
                actions=tuple(a for p in permissions for a in (p.actions or [])),
                not_actions=tuple(a for p in permissions for a in (p.not_actions or [])),
                data_actions=tuple(a for p in permissions for a in (p.data_actions or [])),
                condition=item.condition))
        uses: list[IdentityUse] = []
        try:
            credentials = self._api.call(f"listing federated credentials of {key}", lambda: list(
                self._msi.federated_identity_credentials.list(identity.resource_group, identity.identity_name)))
        except Denied as exc:
            credentials = []
            unreadable.append(f"{_denied(exc)}: sharing with other apps was not checked")
        for credential in credentials:
            owner = names.parse_federated_credential_name(str(credential.name or ""))
            if owner is not None and owner[2] == names.target_hash(target_name):
                uses.append(IdentityUse(key.lower(), owner[0], owner[1], str(credential.subject or "")))
        return _IdentityRead(AzureIdentityDocuments(key, principal, tuple(assignments), tuple(unreadable)),
                             uses=tuple(uses))

    def audit(self, app: str, target_name: str, bindings: Sequence[Binding]) -> AuditReport:
        per_identity: dict[str, list[Finding]] = {}
        elsewhere: list[IdentityUse] = []
        for binding in bindings:
            key = identity_key(binding)
            if key in per_identity:
                continue
            assert isinstance(binding.identity, AzureIdentity)
            read = self.read_identity(binding.identity, target_name)
            if read.documents is None:
                per_identity[key] = audit_incomplete(key, [read.problem])
                continue
            per_identity[key] = audit_identity(read.documents)
            elsewhere += read.uses
        return build_report(app, target_name, Cloud.AZURE, bindings, per_identity, elsewhere)


def _denied(exc: Denied) -> str:
    """A read ARM refused, for the AUDIT-INCOMPLETE finding: what was read and ARM's code."""
    return f"{exc.doing} (403 {exc.code})"
