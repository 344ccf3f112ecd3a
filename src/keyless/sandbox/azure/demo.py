"""The Azure demo the sandbox seeds through ARM with the real mgmt clients, and what it reports back."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ResourceNotFoundError
from azure.core.rest import HttpRequest
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.authorization.v2022_04_01.models import RoleAssignmentCreateParameters
from azure.mgmt.containerservice import ContainerServiceClient
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.msi.models import Identity as IdentityModel

from keyless.sandbox.azure.roles import CONTRIBUTOR, STORAGE_BLOB_DATA_READER

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = [
    "DEMO_API_IDENTITY",
    "DEMO_BROAD_IDENTITY",
    "DEMO_CLUSTER",
    "DEMO_CLUSTER_OFF",
    "DEMO_LOCATION",
    "DEMO_RESOURCE_GROUP",
    "DEMO_STORAGE_ACCOUNT",
    "DEPLOYER_IDENTITY",
    "AzureDemoSeed",
    "DemoIdentity",
    "assignment_name",
    "seed_demo",
]

DEMO_LOCATION = "eastus"
DEMO_RESOURCE_GROUP = "keyless-sandbox-rg"
DEMO_CLUSTER = "keyless-sandbox-aks"
DEMO_CLUSTER_OFF = "keyless-sandbox-aks-off"
DEMO_STORAGE_ACCOUNT = "keylessdemoassets"
DEMO_API_IDENTITY = "keyless-demo-api-identity"
DEMO_BROAD_IDENTITY = "keyless-demo-broad-identity"
DEPLOYER_IDENTITY = "keyless-deployer"
_RESOURCE_GROUPS_API = "2021-04-01"
_STORAGE_API = "2023-05-01"
# Stable names for role assignments, so that seeding twice finds the same ones.
_ASSIGNMENT_NAMESPACE = uuid.UUID("5c0f2e8a-8f4b-4d7e-b1f6-0c2a9e3d7b41")


@dataclass(frozen=True)
class DemoIdentity:
    name: str
    id: str
    client_id: str
    principal_id: str


@dataclass(frozen=True)
class AzureDemoSeed:
    """What seed_demo() created, read back through ARM."""

    tenant_id: str
    subscription_id: str
    resource_group: str
    location: str
    cluster: str
    cluster_issuer_url: str
    cluster_off: str
    storage_account_id: str
    identities: Mapping[str, DemoIdentity]
    deployer: DemoIdentity


def assignment_name(scope: str, role: str, principal_id: str) -> str:
    return str(uuid.uuid5(_ASSIGNMENT_NAMESPACE, f"{scope.lower()}|{role}|{principal_id.lower()}"))


def seed_demo(
    credential: TokenCredential,
    *,
    arm_url: str,
    ca_bundle: str,
    tenant_id: str,
    subscription_id: str,
) -> AzureDemoSeed:
    """Create (or find) the demo's resources through ARM as `credential`; see AzureSandbox.seed_demo."""
    common: dict[str, Any] = {"base_url": arm_url, "connection_verify": ca_bundle}
    sub, rg = subscription_id, DEMO_RESOURCE_GROUP
    with ManagedServiceIdentityClient(credential, sub, **common) as msi, \
            ContainerServiceClient(credential, sub, **common) as aks, \
            AuthorizationManagementClient(credential, sub, **common) as auth:
        group_path = f"/subscriptions/{sub}/resourcegroups/{rg}?api-version={_RESOURCE_GROUPS_API}"
        aks.send_request(HttpRequest("PUT", group_path, json={"location": DEMO_LOCATION,
                                                               "tags": {"keyless:sandbox": "demo"}})
                         ).raise_for_status()
        storage_id = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Storage/storageAccounts/" \
                     f"{DEMO_STORAGE_ACCOUNT}"
        aks.send_request(HttpRequest("PUT", f"{storage_id}?api-version={_STORAGE_API}", json={
            "location": DEMO_LOCATION, "kind": "StorageV2", "sku": {"name": "Standard_LRS"},
            "properties": {"allowBlobPublicAccess": False, "minimumTlsVersion": "TLS1_2"},
        })).raise_for_status()
        for name, enabled in ((DEMO_CLUSTER, True), (DEMO_CLUSTER_OFF, False)):
            # AKS assigns the issuer URL (read back below); the request only enables it, as `az aks create
            # --enable-oidc-issuer --enable-workload-identity` does. Raw JSON: the models differ across SDK versions.
            properties: dict[str, Any] = {
                "kubernetesVersion": "1.31.2", "dnsPrefix": name, "oidcIssuerProfile": {"enabled": enabled},
                "agentPoolProfiles": [{"name": "system", "count": 1, "vmSize": "Standard_D2s_v5",
                                       "mode": "System", "osType": "Linux"}],
            }
            if enabled:
                properties["securityProfile"] = {"workloadIdentity": {"enabled": True}}
            body = json.dumps({"location": DEMO_LOCATION, "properties": properties,
                               "identity": {"type": "SystemAssigned"}}).encode()
            aks.managed_clusters.begin_create_or_update(rg, name, io.BytesIO(body)).result()
        identities: dict[str, DemoIdentity] = {}
        for name in (DEMO_API_IDENTITY, DEMO_BROAD_IDENTITY, DEPLOYER_IDENTITY):
            try:
                model = msi.user_assigned_identities.get(rg, name)
            except ResourceNotFoundError:
                model = msi.user_assigned_identities.create_or_update(
                    rg, name, IdentityModel(location=DEMO_LOCATION, tags={"keyless:sandbox": "demo"}))
            identities[name] = DemoIdentity(name, str(model.id), str(model.client_id), str(model.principal_id))
        grants = (
            (storage_id, STORAGE_BLOB_DATA_READER, identities[DEMO_API_IDENTITY]),
            (f"/subscriptions/{sub}/resourceGroups/{rg}", CONTRIBUTOR, identities[DEMO_BROAD_IDENTITY]),
        )
        for scope, role, who in grants:
            auth.role_assignments.create(scope, assignment_name(scope, role, who.principal_id),
                                         RoleAssignmentCreateParameters(
                role_definition_id=f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/"
                                   f"{role}",
                principal_id=who.principal_id, principal_type="ServicePrincipal"))
        issuer_read = aks.managed_clusters.get(rg, DEMO_CLUSTER).properties
    issuer_url = issuer_read.oidc_issuer_profile.issuer_url if issuer_read and issuer_read.oidc_issuer_profile \
        else None
    return AzureDemoSeed(
        tenant_id=tenant_id, subscription_id=sub, resource_group=rg, location=DEMO_LOCATION,
        cluster=DEMO_CLUSTER, cluster_issuer_url=str(issuer_url), cluster_off=DEMO_CLUSTER_OFF,
        storage_account_id=storage_id,
        identities=MappingProxyType({k: v for k, v in identities.items() if k != DEPLOYER_IDENTITY}),
        deployer=identities[DEPLOYER_IDENTITY],
    )


