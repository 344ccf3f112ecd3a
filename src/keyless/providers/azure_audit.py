"""Fetching what the Azure audit rules read: a managed identity's role assignments and their role definitions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from keyless import names
from keyless.audit import AuditReport, Finding, IdentityUse, build_report, identity_key
from keyless.audit.azure import AzureIdentityDocuments, AzureRoleAssignment, audit_identity
from keyless.audit.shared import audit_incomplete
from keyless.bindings import Binding
from keyless.clouds import AzureIdentity, Cloud
from keyless.errors import CloudError
from keyless.providers.retry import RetryPolicy, call_with_retry
from keyless.targets import AzureTarget

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.mgmt.authorization import AuthorizationManagementClient
    from azure.mgmt.msi import ManagedServiceIdentityClient

T = TypeVar("T")

# As for AWS, the SDK makes one attempt (retry_total=0) and keyless.providers.retry decides about the rest.
DEFAULT_RETRY = RetryPolicy(max_attempts=6, base_delay=0.5, max_delay=8.0, deadline=45.0)


def is_transient(exc: BaseException) -> bool:
    """Throttling, server errors and lost connections."""
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return True
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        return status == 429 or status >= 500
    return False


def _denied(exc: BaseException) -> bool:
    return isinstance(exc, HttpResponseError) and not isinstance(exc, ClientAuthenticationError) \
        and exc.status_code == 403


class _Denied(Exception):
    """A read ARM refused (403); carries what was being read."""


@dataclass(frozen=True, slots=True)
class _IdentityRead:
    documents: AzureIdentityDocuments | None
    problem: str = ""
    uses: tuple[IdentityUse, ...] = ()


class AzureAuditor:
    """Reads role assignments through azure-mgmt-authorization and the identity through azure-mgmt-msi.

    Clients are built like the Azure target's: ARM endpoint `armEndpoint`, CA bundle `caBundle`, and a
    credential (DefaultAzureCredential unless one is given). `client_options` reach both SDK clients (a test
    passes its transport there).
    """

    def __init__(self, target: AzureTarget, credential: TokenCredential | None = None, *,
                 retry: RetryPolicy = DEFAULT_RETRY, **client_options: Any) -> None:
        from azure.mgmt.authorization import AuthorizationManagementClient
        from azure.mgmt.msi import ManagedServiceIdentityClient

        self.target = target
        self._retry = retry
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        endpoint = target.arm_endpoint.rstrip("/")
        options: dict[str, Any] = {
            "base_url": endpoint,
            "credential_scopes": [f"{endpoint}/.default"],
            "retry_total": 0,
            "connection_verify": target.ca_bundle or True,
            **client_options,
        }
        self._auth: AuthorizationManagementClient = AuthorizationManagementClient(
            credential, target.subscription, **options)
        self._msi: ManagedServiceIdentityClient = ManagedServiceIdentityClient(
            credential, target.subscription, **options)
        self._roles: dict[str, Any] = {}

    def _call(self, doing: str, fn: Callable[[], T]) -> T:
        try:
            return call_with_retry(fn, policy=self._retry, retryable=is_transient, what=doing)
        except HttpResponseError as exc:
            if _denied(exc):
                raise _Denied(f"{doing} (403 {exc.error.code if exc.error else 'Forbidden'})") from exc
            if isinstance(exc, ClientAuthenticationError):
                raise CloudError(f"{doing}: Azure refused the credentials: {exc.message}",
                                 "check AZURE_CLIENT_ID, AZURE_TENANT_ID and the federated token (or `az login`)"
                                 ) from exc
            raise CloudError(f"{doing}: {exc.message}") from exc
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise CloudError(f"{doing}: could not reach Azure Resource Manager at {self.target.arm_endpoint}: {exc}",
                             "check armEndpoint, caBundle and the network") from exc

    def _role_definition(self, role_definition_id: str) -> Any:
        if role_definition_id not in self._roles:
            self._roles[role_definition_id] = self._call(
                f"reading role definition {role_definition_id}",
                lambda: self._auth.role_definitions.get_by_id(role_definition_id))
        return self._roles[role_definition_id]

    def read_identity(self, identity: AzureIdentity, target_name: str) -> _IdentityRead:
        """The identity's principal, every role assignment of it in the subscription, and keyless's credentials."""
        key = f"{identity.resource_group}/{identity.identity_name}"

        def get() -> Any:
            try:
                return self._msi.user_assigned_identities.get(identity.resource_group, identity.identity_name)
            except ResourceNotFoundError:
                return None

        try:
            found = self._call(f"reading managed identity {key}", get)
        except _Denied as exc:
            return _IdentityRead(None, str(exc))
        if found is None or not found.principal_id:
            return _IdentityRead(None, f"managed identity {key}: it does not exist in subscription "
                                       f"{self.target.subscription}")
        principal = str(found.principal_id)
        unreadable: list[str] = []
        assignments: list[AzureRoleAssignment] = []
        scope = f"/subscriptions/{self.target.subscription}"
        try:
            # principalId filter: assignments at, above (management groups) and below (groups, resources) the scope.
            listed = self._call(f"listing role assignments of {key}", lambda: list(
                self._auth.role_assignments.list_for_scope(scope, filter=f"principalId eq '{principal}'")))
        except _Denied as exc:
            listed = []
            unreadable.append(str(exc))
        for item in listed:
            definition_id = str(item.role_definition_id or "")
            try:
                definition = self._role_definition(definition_id)
            except _Denied as exc:
                unreadable.append(str(exc))
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
            credentials = self._call(f"listing federated credentials of {key}", lambda: list(
                self._msi.federated_identity_credentials.list(identity.resource_group, identity.identity_name)))
        except _Denied as exc:
            credentials = []
            unreadable.append(f"{exc}: sharing with other apps was not checked")
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
