"""Azure audit: the rules over role assignments, and the fetcher driving the real SDK clients over a fake transport."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pytest
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest._http_response_impl import HttpResponseImpl

from keyless.audit import rules as R
from keyless.audit.azure import AzureIdentityDocuments, AzureRoleAssignment, ScopeLevel, audit_identity, scope_level
from keyless.bindings import Binding
from keyless.clouds import AzureIdentity, Cloud
from keyless.errors import CloudError
from keyless.names import federated_credential_name
from keyless.porter.model import ServiceType
from keyless.providers.azure_audit import AzureAuditor
from keyless.providers.retry import NO_RETRY
from keyless.targets import AzureTarget

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


# --- the fetcher, through the real SDK clients ----------------------------------------------------------


class _Response(HttpResponseImpl):
    def __init__(self, request: Any, status: int, body: Any) -> None:
        super().__init__(request=request, internal_response=None, status_code=status,
                         reason="OK" if status < 400 else "Error", content_type="application/json",
                         headers={"Content-Type": "application/json"}, stream_download_generator=None)
        self._content = json.dumps(body).encode()
        self._is_closed = True

    def read(self) -> bytes:
        return self._content

    def iter_bytes(self, **kwargs: Any) -> Iterator[bytes]:
        yield self._content

    def iter_raw(self, **kwargs: Any) -> Iterator[bytes]:
        yield self._content

    def close(self) -> None:
        return None


class FakeArm(HttpTransport):  # type: ignore[misc]
    """Answers ARM GETs from a table of path -> (status, body); records what the SDK asked for."""

    def __init__(self, routes: dict[str, tuple[int, Any]]) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []

    def __enter__(self) -> FakeArm:
        return self

    def __exit__(self, *args: object) -> None:
        return None

    def open(self) -> None:
        return None

    def close(self) -> None:
        return None

    def send(self, request: Any, **kwargs: Any) -> _Response:
        url = urlparse(request.url)
        path = unquote(url.path)
        self.requests.append((request.method, path, parse_qs(url.query)))
        status, body = self.routes.get(path, (404, {"error": {"code": "NotFound", "message": f"no {path}"}}))
        return _Response(request, status, body)


class StaticCredential:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("token", 4_102_444_800)

    def get_token_info(self, *scopes: str, **kwargs: Any) -> AccessTokenInfo:
        return AccessTokenInfo("token", 4_102_444_800)


TARGET = AzureTarget.model_validate({"cloud": "azure", "subscription": SUB, "resourceGroup": "platform",
                                     "cluster": "prod-aks", "namespace": "shop",
                                     "armEndpoint": "https://arm.example"})
IDENTITY_PATH = f"/subscriptions/{SUB}/resourceGroups/platform/providers/Microsoft.ManagedIdentity/" \
                "userAssignedIdentities/shop-api"
ASSIGNMENTS_PATH = f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleAssignments"


def _binding(service: str, name: str = "shop-api") -> Binding:
    return Binding(app="shop", service=service, kind=ServiceType.WEB, target="prod-aks", cloud=Cloud.AZURE,
                   namespace="shop", service_account=f"shop-{service}",
                   identity=AzureIdentity(identity_name=name, resource_group="platform"))


def _routes(assignments: list[dict[str, Any]], credentials: list[dict[str, Any]] | None = None,
            ) -> dict[str, tuple[int, Any]]:
    return {
        IDENTITY_PATH: (200, {"id": IDENTITY_PATH, "name": "shop-api", "location": "westeurope",
                              "properties": {"principalId": "p-1", "clientId": "c-1", "tenantId": "t-1"}}),
        ASSIGNMENTS_PATH: (200, {"value": assignments}),
        IDENTITY_PATH + "/federatedIdentityCredentials": (200, {"value": credentials or []}),
        definition_id(OWNER): (200, {"id": definition_id(OWNER), "name": OWNER, "properties": {
            "roleName": "Owner", "type": "BuiltInRole", "permissions": [{"actions": ["*"], "notActions": []}]}}),
        definition_id(BLOB_READER): (200, {"id": definition_id(BLOB_READER), "name": BLOB_READER, "properties": {
            "roleName": "Storage Blob Data Reader", "type": "BuiltInRole", "permissions": [{
                "actions": ["Microsoft.Storage/storageAccounts/blobServices/containers/read"],
                "dataActions": ["Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"]}]}}),
    }


def _assignment_json(scope: str, guid: str, name: str) -> dict[str, Any]:
    return {"id": f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}", "name": name,
            "properties": {"scope": scope, "roleDefinitionId": definition_id(guid), "principalId": "p-1",
                           "principalType": "ServicePrincipal"}}


def _auditor(transport: FakeArm) -> AzureAuditor:
    return AzureAuditor(TARGET, StaticCredential(), retry=NO_RETRY, transport=transport)  # type: ignore[arg-type]


def test_fetcher_reads_assignments_of_the_principal_and_resolves_their_roles() -> None:
    transport = FakeArm(_routes([_assignment_json(f"/subscriptions/{SUB}", OWNER, "a1"),
                                 _assignment_json(STORAGE, BLOB_READER, "a2")]))
    report = _auditor(transport).audit("shop", "prod-aks", [_binding("api")])
    [connection] = report.connections
    assert sorted(f.rule.id for f in connection.findings) == ["AZ-PRIVILEGED-ROLE", "AZ-SCOPE-SUBSCRIPTION"]
    listing = next(q for method, path, q in transport.requests if path == ASSIGNMENTS_PATH)
    assert listing["$filter"] == ["principalId eq 'p-1'"]
    assert all(method == "GET" for method, _, _ in transport.requests)


def test_fetcher_finds_other_apps_on_the_same_identity_through_keyless_credentials() -> None:
    other = federated_credential_name("billing", "worker", "prod-aks")
    elsewhere_target = federated_credential_name("billing", "api", "staging-aks")
    credentials = [{"name": name, "properties": {"issuer": "https://issuer.example/", "subject": subject,
                                                 "audiences": ["api://AzureADTokenExchange"]}}
                   for name, subject in ((other, "system:serviceaccount:shop:billing-worker"),
                                         (elsewhere_target, "system:serviceaccount:shop:billing-api"),
                                         ("hand-made", "system:serviceaccount:ops:tool"))]
    transport = FakeArm(_routes([_assignment_json(STORAGE, BLOB_READER, "a2")], credentials))
    report = _auditor(transport).audit("shop", "prod-aks", [_binding("api")])
    [finding] = report.connections[0].findings
    assert finding.rule is R.SHARED_IDENTITY
    assert "app billing service worker" in finding.message
    assert "staging" not in finding.message
    assert "tool" not in finding.message


def test_a_clean_identity_has_no_findings() -> None:
    transport = FakeArm(_routes([_assignment_json(STORAGE, BLOB_READER, "a2")]))
    assert _auditor(transport).audit("shop", "prod-aks", [_binding("api")]).connections[0].findings == ()


def test_a_missing_identity_or_a_denied_read_is_an_incomplete_audit() -> None:
    routes = _routes([])
    del routes[IDENTITY_PATH]
    [finding] = _auditor(FakeArm(routes)).audit("shop", "prod-aks", [_binding("api")]).connections[0].findings
    assert finding.rule is R.AUDIT_INCOMPLETE
    assert "does not exist" in finding.message
    routes = _routes([])
    routes[ASSIGNMENTS_PATH] = (403, {"error": {"code": "AuthorizationFailed", "message": "no"}})
    [finding] = _auditor(FakeArm(routes)).audit("shop", "prod-aks", [_binding("api")]).connections[0].findings
    assert finding.rule is R.AUDIT_INCOMPLETE
    assert "AuthorizationFailed" in finding.message


def test_server_errors_become_a_cloud_error() -> None:
    routes = _routes([])
    routes[ASSIGNMENTS_PATH] = (500, {"error": {"code": "InternalServerError", "message": "boom"}})
    with pytest.raises(CloudError, match="listing role assignments"):
        _auditor(FakeArm(routes)).audit("shop", "prod-aks", [_binding("api")])
