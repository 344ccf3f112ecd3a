"""Federated identity credentials as values (pure): what ARM returns, which ones bind what, and the per-identity cap."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass

from azure.mgmt.msi.v2024_11_30.models import FederatedIdentityCredential

from keyless import names
from keyless.clouds import AzureIdentity, Cloud
from keyless.federation import AZURE_TOKEN_AUDIENCE, parse_subject
from keyless.ownership import owner_from_credential_name
from keyless.plan import ObservedBinding
from keyless.providers.azure_api import CREDENTIALS_PER_IDENTITY

AUDIENCE = AZURE_TOKEN_AUDIENCE


# --- names ------------------------------------------------------------------------------------------


def identity_ref(text: str) -> tuple[str, str] | None:
    """("resource group", "identity name") of `AzureIdentity.describe()` text, or None if it is not one.

    Both halves are checked against Azure's naming rules, so nothing read back from a cluster annotation can
    add a path segment, query or fragment to an ARM URL."""
    group, slash, name = text.partition("/")
    if not slash:
        return None
    try:
        names.check_resource_group(group)
        names.check_identity_name(name)
    except names.NameRuleError:
        return None
    return group, name


def identity_key(resource_group: str, identity_name: str) -> str:
    """ARM names are case-insensitive: one key per identity, however it was spelled."""
    return f"{resource_group}/{identity_name}".lower()


# --- credentials ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credential:
    """A federated identity credential as ARM returns it, with the identity it sits on."""

    resource_group: str
    identity_name: str
    name: str
    issuer: str
    subject: str
    audiences: tuple[str, ...] = (AUDIENCE,)
    arm_id: str = ""
    modified_at: float | None = None  # epoch seconds, the server's clock

    @property
    def identity(self) -> str:
        return f"{self.resource_group}/{self.identity_name}"

    @property
    def binding_id(self) -> str:
        return self.arm_id or f"{self.identity}/{self.name}"

    @property
    def key(self) -> tuple[str, str] | None:
        return parse_subject(self.subject)

    def trusts(self, issuer: str | None, subject: str) -> bool:
        """Same issuer (byte for byte: a missing trailing '/' is another issuer to Entra ID) and subject."""
        return issuer is not None and self.issuer == issuer and self.subject == subject

    def works_for(self, issuer: str | None, subject: str) -> bool:
        """Would a token of this subject from this issuer be exchanged through this credential?"""
        return self.trusts(issuer, subject) and self.audiences == (AUDIENCE,)

    @classmethod
    def from_api(cls, resource_group: str, identity_name: str, raw: FederatedIdentityCredential) -> Credential:
        data = raw.system_data
        when = (data.last_modified_at or data.created_at) if data is not None else None
        return cls(resource_group=resource_group, identity_name=identity_name, name=raw.name or "",
                   issuer=raw.issuer or "", subject=raw.subject or "", audiences=tuple(raw.audiences or ()),
                   arm_id=raw.id or "", modified_at=when.timestamp() if when is not None else None)


def credential_mismatch(credential: Credential, issuer: str | None) -> tuple[str, ...]:
    """What keeps a credential from working for this cluster: another issuer (byte for byte) or audience.

    A credential with any mismatch is never taken for the binding the plan wants (and never "adopted":
    it would not let a pod in)."""
    differs: list[str] = []
    if issuer is None or credential.issuer != issuer:
        differs.append(f"issuer {credential.issuer}")
    if credential.audiences != (AUDIENCE,):
        differs.append(f"audience {','.join(credential.audiences) or '(none)'}")
    return tuple(differs)


def to_observed(credential: Credential, issuer: str | None, target: str) -> ObservedBinding | None:
    """The credential as an ObservedBinding; None unless its subject is a Kubernetes service account."""
    key = credential.key
    if key is None:
        return None
    # Only a credential trusting this cluster's issuer can be keyless's on this target: one trusting another
    # issuer belongs to another cluster (or to someone's experiment), whatever its name says.
    trusts_cluster = issuer is not None and credential.issuer == issuer
    owner = owner_from_credential_name(credential.name, target) if trusts_cluster else None
    return ObservedBinding(
        cloud=Cloud.AZURE, id=credential.binding_id, namespace=key[0], service_account=key[1],
        identity=AzureIdentity(identity_name=credential.identity_name, resource_group=credential.resource_group),
        mismatch=credential_mismatch(credential, issuer), owner=owner,
        details={"name": credential.name, "issuer": credential.issuer, "audience": ",".join(credential.audiences),
                 "resourceGroup": credential.resource_group, "identityName": credential.identity_name})


def select_observed(
    credentials: Iterable[Credential], *, app: str, target: str, issuer: str | None,
    desired_keys: Iterable[tuple[str, str]],
) -> list[ObservedBinding]:
    """What observe reports: credentials at a desired (namespace, service account), and those keyless owns for
    this app on this target. Owned ones come first, so that where two credentials sit at one key on one
    identity, keyless's own is the one the plan sees first."""
    desired = set(desired_keys)
    found: list[ObservedBinding] = []
    seen: set[str] = set()
    for credential in credentials:
        observed = to_observed(credential, issuer, target)
        if observed is None or observed.id in seen:
            continue
        mine = observed.owner is not None and observed.owner.app == app
        if observed.key in desired or mine:
            seen.add(observed.id)
            found.append(observed)
    found.sort(key=lambda o: (o.owner is None, o.describe_identity().lower(), o.details.get("name", "")))
    return found


def credentials_to_add(existing: Iterable[Credential], wanted: Iterable[tuple[str, str]], issuer: str) -> int:
    """How many new credentials writing `wanted` ((credential name, subject) pairs) adds to one identity.

    A pair whose name exists is an update (Azure credentials are keyed by name); one whose issuer and subject
    an existing credential already trusts is adopted or refused, never added."""
    existing = list(existing)
    taken_names = {c.name.lower() for c in existing}
    trusted = {c.subject for c in existing if c.issuer == issuer}
    adding = {(n.lower(), s) for n, s in wanted if n.lower() not in taken_names and s not in trusted}
    return len(adding)


def over_cap(existing: int, adding: int, cap: int = CREDENTIALS_PER_IDENTITY) -> bool:
    return adding > 0 and existing + adding > cap


def jwt_claim(token: str, claim: str) -> str | None:
    """A claim of a JWT's payload, read without verifying it (only to learn which tenant signed us in)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    value = payload.get(claim) if isinstance(payload, dict) else None
    return value if isinstance(value, str) else None
