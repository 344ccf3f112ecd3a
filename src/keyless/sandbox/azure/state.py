"""What the Azure sandbox holds and the rules ARM and Entra enforce on it, with ARM's own error codes."""

from __future__ import annotations

import collections
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from keyless.sandbox.azure.oidc import aks_issuer_url
from keyless.sandbox.knobs import Settling

__all__ = [
    "MAX_FEDERATED_CREDENTIALS",
    "TOKEN_EXCHANGE_AUDIENCE",
    "ArmError",
    "AzureState",
    "FederatedCredential",
    "Identity",
    "ManagedCluster",
    "ResourceGroup",
    "Trust",
]

TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
MAX_FEDERATED_CREDENTIALS = 20
CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,119}$")
IDENTITY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,127}$")
RESOURCE_GROUP_NAME = re.compile(r"^[-\w.()]{0,89}[-\w()]$")
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

UAMI_TYPE = "Microsoft.ManagedIdentity/userAssignedIdentities"
FIC_TYPE = f"{UAMI_TYPE}/federatedIdentityCredentials"
AKS_TYPE = "Microsoft.ContainerService/managedClusters"


class ArmError(Exception):
    """An ARM failure: HTTP status, ARM error code and message, and any headers (Retry-After)."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- resources ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceGroup:
    subscription_id: str
    name: str
    location: str
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"/subscriptions/{self.subscription_id}/resourceGroups/{self.name}"


@dataclass(frozen=True)
class Identity:
    """A user-assigned managed identity: its Entra application (client id) and service principal (object id)."""

    subscription_id: str
    resource_group: str
    name: str
    location: str
    tenant_id: str
    client_id: str
    principal_id: str
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        # The managed identity RP answers with a lower-case "resourcegroups" segment: ids must be compared
        # case-insensitively, as ARM itself does.
        group = f"/subscriptions/{self.subscription_id}/resourcegroups/{self.resource_group}"
        return f"{group}/providers/{UAMI_TYPE}/{self.name}"


@dataclass(frozen=True)
class FederatedCredential:
    name: str
    issuer: str
    subject: str
    audiences: tuple[str, ...]
    created_at: str


@dataclass(frozen=True)
class Trust:
    """What Entra's token plane believes about one credential, from `effective_from` until `effective_until`.

    Control-plane writes reach the token plane only after the propagation delay, so a new credential is
    not usable at first, and a changed or deleted one keeps working (with its old values) for a while. After it
    first takes effect a credential can be missing again during `outages` (absolute times): Entra's replicas
    converge one by one, so exchanges that worked fail again for a while.
    """

    client_id: str
    credential: str
    issuer: str
    subject: str
    audiences: tuple[str, ...]
    effective_from: float
    effective_until: float = math.inf
    outages: tuple[tuple[float, float], ...] = ()

    def active(self, now: float) -> bool:
        return (self.effective_from <= now < self.effective_until
                and not any(start <= now < end for start, end in self.outages))


@dataclass(frozen=True)
class ManagedCluster:
    subscription_id: str
    resource_group: str
    name: str
    location: str
    oidc_issuer_enabled: bool
    issuer_url: str | None
    workload_identity_enabled: bool
    kubernetes_version: str = "1.31.2"
    tags: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)  # other properties, kept as given

    @property
    def id(self) -> str:
        group = f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
        return f"{group}/providers/{AKS_TYPE}/{self.name}"


def normalize_scope(scope: str) -> str:
    parts = [p for p in scope.split("/") if p]
    return "/" + "/".join(parts)


# ---- the state --------------------------------------------------------------------------------------


class AzureState:
    """All resources of one tenant and one subscription; thread-safe (the servers and Python callers share it)."""

    def __init__(
        self,
        tenant_id: str,
        subscription_id: str,
        *,
        propagation_delay: float = 1.0,
        write_hold: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
        settling: Callable[[str], Settling | None] = lambda _: None,
    ) -> None:
        """``settling`` draws how one credential write (named by a key) reaches the token plane; where it answers
        None, writes take ``propagation_delay`` and never flap."""
        self.tenant_id = tenant_id
        self.subscription_id = subscription_id
        self.propagation_delay = propagation_delay
        self.settling = settling
        self._write_counts: collections.Counter[str] = collections.Counter()
        self.write_hold = write_hold
        self.clock = clock
        self.lock = threading.RLock()
        self._groups: dict[str, ResourceGroup] = {}
        self._identities: dict[tuple[str, str], Identity] = {}
        self._credentials: dict[tuple[str, str], dict[str, FederatedCredential]] = {}
        self._trusts: list[Trust] = []
        self._clusters: dict[tuple[str, str], ManagedCluster] = {}
        self._resources: dict[str, dict[str, Any]] = {}
        self._extra_principals: dict[str, str] = {}
        self._writing: set[tuple[str, str]] = set()

    # ---- subscription and resource groups ---------------------------------------------------------

    def check_subscription(self, subscription_id: str) -> None:
        if subscription_id.lower() != self.subscription_id.lower():
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{subscription_id}' could not be found.")

    def resource_group(self, subscription_id: str, name: str) -> ResourceGroup:
        self.check_subscription(subscription_id)
        with self.lock:
            found = self._groups.get(name.lower())
        if found is None:
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{name}' could not be found.")
        return found

    def resource_groups(self, subscription_id: str) -> list[ResourceGroup]:
        self.check_subscription(subscription_id)
        with self.lock:
            return sorted(self._groups.values(), key=lambda g: g.name.lower())

    def put_resource_group(
        self, subscription_id: str, name: str, location: str | None, tags: Mapping[str, str] | None
    ) -> tuple[ResourceGroup, bool]:
        self.check_subscription(subscription_id)
        if not RESOURCE_GROUP_NAME.match(name):
            raise ArmError(400, "InvalidResourceGroupName", f"The resource group name '{name}' is invalid. "
                           "It can contain alphanumerics, underscores, parentheses, hyphens and periods "
                           "(not at the end), up to 90 characters.")
        if not location:
            raise ArmError(400, "LocationRequired", "The location property is required for this definition.")
        with self.lock:
            existing = self._groups.get(name.lower())
            if existing is not None and existing.location.lower() != location.lower():
                raise ArmError(409, "InvalidResourceGroupLocation",
                               f"Invalid resource group location '{location}'. The Resource group already exists "
                               f"in location '{existing.location}'.")
            group = ResourceGroup(self.subscription_id, existing.name if existing else name, location,
                                  dict(tags or (existing.tags if existing else {})))
            self._groups[name.lower()] = group
        return group, existing is None

    # ---- managed identities --------------------------------------------------------------------------

    def _identity_key(self, subscription_id: str, group: str, name: str) -> tuple[str, str]:
        self.resource_group(subscription_id, group)
        return group.lower(), name.lower()

    def identity(self, subscription_id: str, group: str, name: str) -> Identity:
        key = self._identity_key(subscription_id, group, name)
        with self.lock:
            found = self._identities.get(key)
        if found is None:
            raise ArmError(404, "ResourceNotFound",
                           f"The Resource '{UAMI_TYPE}/{name}' under resource group '{group}' was not found. "
                           "For more details please go to https://aka.ms/ARMResourceNotFoundFix")
        return found

    def identities(self, subscription_id: str, group: str | None = None) -> list[Identity]:
        if group is not None:
            self.resource_group(subscription_id, group)
        else:
            self.check_subscription(subscription_id)
        with self.lock:
            return [i for k, i in sorted(self._identities.items()) if group is None or k[0] == group.lower()]

    def put_identity(
        self, subscription_id: str, group: str, name: str, location: str | None, tags: Mapping[str, str] | None
    ) -> tuple[Identity, bool]:
        key = self._identity_key(subscription_id, group, name)
        if not IDENTITY_NAME.match(name):
            raise ArmError(400, "InvalidResourceName",
                           f"Resource name '{name}' is invalid. The name can be 3-128 characters: alphanumerics, "
                           "hyphens and underscores, starting with a letter or a number.")
        if not location:
            raise ArmError(400, "LocationRequired", "The location property is required for this definition.")
        with self.lock:
            existing = self._identities.get(key)
            if existing is not None:
                updated = replace(existing, tags=dict(tags) if tags is not None else existing.tags)
                self._identities[key] = updated
                return updated, False
            group_name = self._groups[group.lower()].name
            identity = Identity(self.subscription_id, group_name, name, location, self.tenant_id,
                                client_id=str(uuid.uuid4()), principal_id=str(uuid.uuid4()), tags=dict(tags or {}))
            self._identities[key] = identity
            self._credentials[key] = {}
        return identity, True

    def delete_identity(self, subscription_id: str, group: str, name: str) -> bool:
        key = self._identity_key(subscription_id, group, name)
        with self.lock:
            identity = self._identities.pop(key, None)
            self._credentials.pop(key, None)
            if identity is None:
                return False
            # The application is gone at once: its credentials cannot outlive it in the token plane.
            now = self.clock()
            self._trusts = [t if t.client_id != identity.client_id else replace(t, effective_until=now)
                            for t in self._trusts]
        return True

    def identity_by_client_id(self, client_id: str) -> Identity | None:
        with self.lock:
            return next((i for i in self._identities.values() if i.client_id.lower() == client_id.lower()), None)

    def principal_type(self, principal_id: str) -> str | None:
        with self.lock:
            if any(i.principal_id.lower() == principal_id.lower() for i in self._identities.values()):
                return "ServicePrincipal"
            return self._extra_principals.get(principal_id.lower())

    def add_principal(self, object_id: str, principal_type: str = "User") -> None:
        """A directory object other than a managed identity (a user, group or app) that roles can be given to."""
        with self.lock:
            self._extra_principals[object_id.lower()] = principal_type

    # ---- federated identity credentials ----------------------------------------------------------------

    def _parent(self, subscription_id: str, group: str, name: str, verb: str) -> tuple[str, str]:
        """The identity key for a credential operation; ARM's ParentResourceNotFound when it is missing."""
        key = self._identity_key(subscription_id, group, name)
        with self.lock:
            if key not in self._identities:
                raise ArmError(404, "ParentResourceNotFound",
                               f"Failed to perform '{verb}' on resource(s) of type "
                               f"'userAssignedIdentities/federatedIdentityCredentials', because the parent resource "
                               f"'/subscriptions/{subscription_id}/resourceGroups/{group}/providers/{UAMI_TYPE}/{name}'"
                               " could not be found.")
        return key

    def credentials(self, subscription_id: str, group: str, name: str) -> list[FederatedCredential]:
        key = self._parent(subscription_id, group, name, "read")
        with self.lock:
            return sorted(self._credentials[key].values(), key=lambda c: c.name.lower())

    def credential(self, subscription_id: str, group: str, name: str, credential: str) -> FederatedCredential:
        key = self._parent(subscription_id, group, name, "read")
        with self.lock:
            found = self._credentials[key].get(credential.lower())
        if found is None:
            raise ArmError(404, "ResourceNotFound",
                           f"The Resource '{UAMI_TYPE}/{name}/federatedIdentityCredentials/{credential}' under "
                           f"resource group '{group}' was not found. "
                           "For more details please go to https://aka.ms/ARMResourceNotFoundFix")
        return found

    @contextmanager
    def credential_write(self, subscription_id: str, group: str, name: str, verb: str) -> Iterator[tuple[str, str]]:
        """Hold the identity for one credential write; a second concurrent write to it fails like ARM's (409)."""
        key = self._parent(subscription_id, group, name, verb)
        with self.lock:
            identity = self._identities[key]
            if key in self._writing:
                raise ArmError(409, "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity",
                               "Too many Federated Identity Credentials are written concurrently for the managed "
                               f"identity '{identity.id.lower()}'. Concurrent Federated Identity Credentials writes "
                               "under the same managed identity are not supported.")
            self._writing.add(key)
        try:
            yield key
        finally:
            with self.lock:
                self._writing.discard(key)

    def put_credential(
        self, key: tuple[str, str], credential: str, properties: Mapping[str, Any] | None
    ) -> tuple[FederatedCredential, bool]:
        """Create or update a credential of the identity `key` (held through credential_write)."""
        if not CREDENTIAL_NAME.match(credential):
            raise ArmError(400, "BadRequest", f"Federated Identity Credential name '{credential}' is invalid.")
        props = properties or {}
        issuer, subject, audiences = props.get("issuer"), props.get("subject"), props.get("audiences")
        if not issuer or not subject or not audiences:
            raise ArmError(400, "BadRequest", "Federated Identity Credential from HTTP body has empty properties.")
        if not isinstance(issuer, str) or not isinstance(subject, str) or not isinstance(audiences, list) \
                or not all(isinstance(a, str) for a in audiences):
            raise ArmError(400, "BadRequest", "Federated Identity Credential from HTTP body has invalid properties.")
        if len(audiences) != 1:
            raise ArmError(400, "BadRequest", "Federated identity credentials must have exactly one audience.")
        with self.lock:
            identity = self._identities[key]
            existing = self._credentials[key]
            current = existing.get(credential.lower())
            for other in existing.values():
                # Issuer and subject compare exactly, as Entra matches them: 'https://x/' and 'https://x' differ.
                if other is not current and other.issuer == issuer and other.subject == subject:
                    raise ArmError(400, "BadRequest",
                                   "Issuer and subject combination already exists for this Managed Identity.")
            if current is None and len(existing) >= MAX_FEDERATED_CREDENTIALS:
                raise ArmError(400, "BadRequest",
                               f"Too many Federated Identity Credentials. A user-assigned managed identity can have "
                               f"at most {MAX_FEDERATED_CREDENTIALS} Federated Identity Credentials; "
                               f"'{identity.name}' already has {len(existing)}.")
            created = FederatedCredential(current.name if current else credential, issuer, subject,
                                          tuple(audiences), current.created_at if current else _now_iso())
            existing[credential.lower()] = created
            if current is None or (current.issuer, current.subject, current.audiences) != \
                    (created.issuer, created.subject, created.audiences):
                now = self.clock()
                settling = self._settling(identity, created.name)
                self._retire_trust(identity.client_id, created.name, now + settling.delay)
                self._trusts.append(Trust(
                    identity.client_id, created.name, issuer, subject, created.audiences, now + settling.delay,
                    outages=tuple((now + start, now + end) for start, end in settling.outages)))
        return created, current is None

    def delete_credential(self, key: tuple[str, str], credential: str) -> bool:
        with self.lock:
            identity = self._identities[key]
            removed = self._credentials[key].pop(credential.lower(), None)
            if removed is not None:
                self._retire_trust(identity.client_id, removed.name,
                                   self.clock() + self._settling(identity, removed.name).delay)
        return removed is not None

    def _settling(self, identity: Identity, credential: str) -> Settling:
        """How this write of the credential reaches the token plane (drawn from the knobs' seed, else fixed)."""
        key = f"{identity.id.lower()}/federatedIdentityCredentials/{credential.lower()}"
        self._write_counts[key] += 1
        drawn = self.settling(f"{key}#{self._write_counts[key]}")
        return drawn if drawn is not None else Settling(self.propagation_delay)

    def _retire_trust(self, client_id: str, credential: str, until: float) -> None:
        self._trusts = [
            replace(t, effective_until=min(t.effective_until, until))
            if t.client_id == client_id and t.credential.lower() == credential.lower() else t
            for t in self._trusts
        ]

    def trusts(self, client_id: str) -> list[Trust]:
        """The credentials the token plane uses now for the application `client_id`."""
        now = self.clock()
        with self.lock:
            self._trusts = [t for t in self._trusts if t.effective_until > now]
            return [t for t in self._trusts if t.client_id.lower() == client_id.lower() and t.active(now)]

    def pending(self, client_id: str, issuer: str, subject: str) -> bool:
        """Whether a credential of `client_id` for this issuer and subject is written but not in effect now."""
        now = self.clock()
        with self.lock:
            return any(t.client_id.lower() == client_id.lower() and t.issuer == issuer and t.subject == subject
                       and not t.active(now) and t.effective_until > now for t in self._trusts)

    def make_propagated(self, client_id: str) -> None:
        """Let every pending credential of `client_id` take effect now (the sandbox's own bootstrap only)."""
        now = self.clock()
        with self.lock:
            self._trusts = [replace(t, effective_from=min(t.effective_from, now), outages=())
                            if t.client_id == client_id else t for t in self._trusts]

    # ---- managed clusters -------------------------------------------------------------------------------

    def cluster(self, subscription_id: str, group: str, name: str) -> ManagedCluster:
        self.resource_group(subscription_id, group)
        with self.lock:
            found = self._clusters.get((group.lower(), name.lower()))
        if found is None:
            raise ArmError(404, "ResourceNotFound",
                           f"The Resource '{AKS_TYPE}/{name}' under resource group '{group}' was not found. "
                           "For more details please go to https://aka.ms/ARMResourceNotFoundFix")
        return found

    def clusters(self, subscription_id: str, group: str | None = None) -> list[ManagedCluster]:
        if group is not None:
            self.resource_group(subscription_id, group)
        else:
            self.check_subscription(subscription_id)
        with self.lock:
            return [c for k, c in sorted(self._clusters.items()) if group is None or k[0] == group.lower()]

    def put_cluster(self, subscription_id: str, group: str, name: str, body: Mapping[str, Any]) -> tuple[
            ManagedCluster, bool]:
        """Create or update a cluster from an ARM PUT body, with AKS's rules on OIDC issuer and workload identity."""
        rg = self.resource_group(subscription_id, group)
        location = body.get("location")
        if not location:
            raise ArmError(400, "LocationRequired", "The location property is required for this definition.")
        props = dict(body.get("properties") or {})
        oidc = dict(props.pop("oidcIssuerProfile", None) or {})
        security = dict(props.pop("securityProfile", None) or {})
        workload = dict(security.pop("workloadIdentity", None) or {})
        with self.lock:
            existing = self._clusters.get((group.lower(), name.lower()))
            enabled = bool(oidc.get("enabled", existing.oidc_issuer_enabled if existing else False))
            if existing is not None and existing.oidc_issuer_enabled and not enabled:
                raise ArmError(400, "BadRequest", "OIDC issuer feature cannot be disabled once it is enabled.")
            wi = bool(workload.get("enabled", existing.workload_identity_enabled if existing else False))
            if wi and not enabled:
                raise ArmError(400, "BadRequest", "Enabling workload identity requires enabling OIDC issuer feature.")
            # AKS assigns the issuer URL itself when the issuer is first enabled and keeps it: `issuerURL` is
            # read-only in the API (azure-rest-api-specs, ManagedClusterOIDCIssuerProfile), one in the body is ignored.
            issuer = existing.issuer_url if existing else None
            if enabled and not issuer:
                issuer = aks_issuer_url(str(location), self.tenant_id, str(uuid.uuid4()))
            for computed in ("provisioningState", "powerState", "fqdn", "currentKubernetesVersion", "maxAgentPools"):
                props.pop(computed, None)
            version = str(props.pop("kubernetesVersion", None) or (existing.kubernetes_version if existing
                                                                   else "1.31.2"))
            extra = {**(existing.extra if existing else {}), **props}
            if security:
                extra["securityProfile"] = security
            cluster = ManagedCluster(
                self.subscription_id, rg.name, existing.name if existing else name, str(location),
                oidc_issuer_enabled=enabled, issuer_url=str(issuer) if enabled and issuer else None,
                workload_identity_enabled=wi, kubernetes_version=version,
                tags=dict(body.get("tags") or (existing.tags if existing else {})), extra=MappingProxyType(extra),
            )
            self._clusters[(group.lower(), name.lower())] = cluster
        return cluster, existing is None

    def set_cluster(self, cluster: ManagedCluster) -> None:
        """Replace a cluster as is, without AKS's rules (tests that need an impossible or legacy state)."""
        self.resource_group(cluster.subscription_id, cluster.resource_group)
        with self.lock:
            self._clusters[(cluster.resource_group.lower(), cluster.name.lower())] = cluster

    # ---- generic resources (storage accounts and other role-assignment scopes) ----------------------------

    def resource(self, resource_id: str, group: str, type_name: str, name: str) -> dict[str, Any]:
        with self.lock:
            found = self._resources.get(normalize_scope(resource_id).lower())
        if found is None:
            raise ArmError(404, "ResourceNotFound",
                           f"The Resource '{type_name}/{name}' under resource group '{group}' was not found. "
                           "For more details please go to https://aka.ms/ARMResourceNotFoundFix")
        return dict(found)

    def put_resource(self, resource_id: str, type_name: str, name: str, body: Mapping[str, Any]) -> tuple[
            dict[str, Any], bool]:
        if not body.get("location"):
            raise ArmError(400, "LocationRequired", "The location property is required for this definition.")
        stored = {k: v for k, v in body.items() if k not in ("id", "name", "type")}
        stored.update(id=normalize_scope(resource_id), name=name, type=type_name)
        stored["properties"] = {**dict(body.get("properties") or {}), "provisioningState": "Succeeded"}
        with self.lock:
            created = normalize_scope(resource_id).lower() not in self._resources
            self._resources[normalize_scope(resource_id).lower()] = stored
        return dict(stored), created

    # ---- role assignments and definitions -------------------------------------------------------------------

    def check_scope(self, scope: str) -> str:
        """The normalized scope; SubscriptionNotFound / ResourceGroupNotFound like ARM when its parents are missing."""
        scope = normalize_scope(scope)
        parts = scope.strip("/").split("/")
        if len(parts) < 2 or parts[0].lower() != "subscriptions":
            raise ArmError(400, "InvalidRoleAssignmentScope" if parts[0] else "InvalidScope",
                           f"The scope '{scope}' is not valid for this sandbox: use a subscription, resource group "
                           "or resource scope.")
        self.check_subscription(parts[1])
        if len(parts) >= 4 and parts[2].lower() == "resourcegroups":
            self.resource_group(parts[1], parts[3])
        return scope
