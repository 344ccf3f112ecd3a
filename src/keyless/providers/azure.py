"""The Azure provider: federated identity credentials on user-assigned managed identities, trusting the AKS issuer."""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import json
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import AzureAuthorityHosts, ClientAssertionCredential, DefaultAzureCredential
from azure.mgmt.authorization.v2022_04_01 import AuthorizationManagementClient
from azure.mgmt.containerservice import ContainerServiceClient
from azure.mgmt.containerservice.models import ManagedCluster
from azure.mgmt.msi.v2024_11_30 import ManagedServiceIdentityClient
from azure.mgmt.msi.v2024_11_30.models import FederatedIdentityCredential, Identity

from keyless import names
from keyless.bindings import Binding
from keyless.clouds import AzureIdentity, Cloud
from keyless.errors import CloudError
from keyless.federation import AZURE_TOKEN_AUDIENCE, parse_subject, subject_for
from keyless.ownership import Owner
from keyless.plan import Action, ActionKind, ObservedBinding
from keyless.providers.base import (
    ActionOutcome,
    BindingWrites,
    PreflightIssue,
    desired_of,
    failed,
    observed_of,
    services_label,
)
from keyless.providers.base import (
    PreflightSeverity as Severity,
)
from keyless.providers.retry import RetryPolicy, call_with_retry, poll
from keyless.targets import AzureTarget

T = TypeVar("T")

log = logging.getLogger(__name__)

AUDIENCE = AZURE_TOKEN_AUDIENCE
CREDENTIALS_PER_IDENTITY = 20  # Azure: federated identity credentials per managed identity (not adjustable)
CONCURRENT_WRITES = "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity"
RESOURCE_GROUP_NOT_FOUND = "ResourceGroupNotFound"
AUTHORITY_ENV = "AZURE_AUTHORITY_HOST"

# As on AWS, retries live in keyless.providers.retry only: the Azure SDK clients make one attempt per call
# (`retry_total=0`), so attempts never multiply and the total deadline holds. Writes on one identity are
# throttled to about one every four seconds and concurrent writers get a 409, so the schedule is longer than
# AWS's: a write queued behind a handful of others on the same identity still gets through.
DEFAULT_RETRY = RetryPolicy(max_attempts=8, base_delay=1.0, max_delay=10.0, deadline=60.0)
# Retry-After is honoured up to this many seconds per wait (and never past the policy's deadline): a server
# asking for minutes is better answered with a clear error than with a CLI that looks hung.
MAX_RETRY_AFTER = 30.0
# A credential Get can see at once still takes seconds (occasionally minutes) to reach Entra ID's token
# endpoint; exchanges fail with AADSTS70021 meanwhile. The engine proves propagation with a real token exchange
# (try_token_exchange) before it restarts pods, so wait_visible itself only waits for ARM to show the write.
PROPAGATION_SETTLE = 0.0

_ARM_SUBSCRIPTION = re.compile(r"^/subscriptions/([^/]+)/", re.IGNORECASE)
_AADSTS = re.compile(r"AADSTS\d+.*", re.DOTALL)
_DENIED_CODES = frozenset({"AuthorizationFailed", "LinkedAuthorizationFailed", "Forbidden",
                           "InvalidAuthenticationToken", "InvalidAuthenticationTokenTenant",
                           "ExpiredAuthenticationToken"})


# --- subjects, names, ownership (pure) -------------------------------------------------------------


def owner_from_name(name: str, target: str) -> Owner | None:
    """The owner keyless recorded in a credential's name, when keyless named it for `target`; else None.

    A keyless name for another target is someone else's business, exactly like a hand-made credential."""
    parsed = names.parse_federated_credential_name(name)
    if parsed is None:
        return None
    app, service, hashed = parsed
    if hashed != names.target_hash(target):
        return None
    return Owner(app=app, service=service, target=target)


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
    owner = owner_from_name(credential.name, target) if issuer is not None and credential.issuer == issuer else None
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


# --- errors: which ones are worth another attempt, and how to explain the rest -------------------------


def arm_code(exc: BaseException) -> str:
    """The ARM error code (`error.code` of the body); azure-core raises one exception type for every 409."""
    if isinstance(exc, HttpResponseError) and exc.error is not None:
        return str(exc.error.code or "")
    return ""


def arm_message(exc: HttpResponseError) -> str:
    if exc.error is not None and exc.error.message:
        return str(exc.error.message)
    return str(exc.reason or exc.message or "no message")


def status_of(exc: BaseException) -> int:
    return int(getattr(exc, "status_code", None) or 0) if isinstance(exc, HttpResponseError) else 0


def is_concurrent_write(exc: BaseException) -> bool:
    """Another write on the same identity is in flight: the same request succeeds once it is done."""
    return status_of(exc) == 409 and arm_code(exc) == CONCURRENT_WRITES


def is_throttled(exc: BaseException) -> bool:
    return status_of(exc) == 429


def _tls_failure(exc: BaseException) -> bool:
    """Is a TLS verification failure somewhere in the chain (wrong or missing caBundle, not weather)?"""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError) or type(current).__name__ == "SSLError":
            return True
        inner = getattr(current, "inner_exception", None)
        current = inner if isinstance(inner, BaseException) else (current.__cause__ or current.__context__)
    return False


def is_transient(exc: BaseException) -> bool:
    """Throttling, concurrent writes on one identity, server errors and lost connections."""
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return not _tls_failure(exc)
    if isinstance(exc, HttpResponseError):
        # A credential that could not get a token is a ClientAuthenticationError without a status: not weather.
        status = status_of(exc)
        return status == 429 or status >= 500 or is_concurrent_write(exc)
    return False


def retry_after(exc: BaseException, now: Callable[[], float] = time.time) -> float | None:
    """Seconds the server asked to wait (Retry-After in seconds or as an HTTP date, or the -ms variants)."""
    response = getattr(exc, "response", None)
    headers: Mapping[str, str] = getattr(response, "headers", None) or {}
    for header, scale in (("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001), ("Retry-After", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            continue
        return max(0.0, when.timestamp() - now())
    return None


def _compact(text: str, limit: int = 600) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def explain(exc: BaseException, doing: str) -> CloudError:
    """A CloudError a person can act on, with the ARM error code and message when there is one."""
    gave_up = next((n for n in getattr(exc, "__notes__", ()) if n.startswith("gave up")), "")
    suffix = f" ({gave_up})" if gave_up else ""
    if isinstance(exc, ClientAuthenticationError) and getattr(exc, "response", None) is None:
        # No token at all: azure-identity says which credentials it tried and why each one failed.
        return CloudError(
            f"{doing}: no usable Azure credentials: {_compact(str(exc))}",
            "sign in with `az login`, or set the workload identity variables (AZURE_CLIENT_ID, AZURE_TENANT_ID, "
            f"AZURE_FEDERATED_TOKEN_FILE, and {AUTHORITY_ENV} outside the public cloud) or a service principal's")
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        if _tls_failure(exc):
            return CloudError(f"{doing}: the TLS certificate of the Azure endpoint was not trusted: "
                              f"{_compact(str(exc))}",
                              "set `caBundle` on the target to the CA that signed the endpoint's certificate")
        return CloudError(f"{doing}: could not reach Azure: {_compact(str(exc))}{suffix}",
                          f"check the network, proxy settings, `armEndpoint` of the target and {AUTHORITY_ENV}")
    if not isinstance(exc, HttpResponseError):
        return CloudError(f"{doing}: {_compact(str(exc))}{suffix}")
    code = arm_code(exc)
    status = status_of(exc)
    text = f"{doing}: {code or status or 'error'}: {_compact(arm_message(exc))}{suffix}"
    lowered = f"{code} {arm_message(exc)}".lower()
    if status in (401, 403) or code in _DENIED_CODES:
        return CloudError(text, "the Azure identity keyless runs as lacks a permission: it needs "
                          "Microsoft.ManagedIdentity/userAssignedIdentities/read and "
                          ".../federatedIdentityCredentials/read, write and delete on the identities (the "
                          "'Managed Identity Contributor' role), and Microsoft.ContainerService/managedClusters/read "
                          "on the cluster")
    if is_concurrent_write(exc):
        return CloudError(text, "something else kept writing credentials on the same managed identity; run it "
                          "again when it is done")
    if is_throttled(exc):
        return CloudError(text, "Azure kept throttling keyless (about one credential write per identity every "
                          "four seconds); wait a minute and run it again")
    if status == 400 and any(word in lowered for word in ("too many", "at most", "limit", "maximum", "exceed")):
        return CloudError(text, f"a managed identity holds at most {CREDENTIALS_PER_IDENTITY} federated "
                          "credentials: delete unused ones (`az identity federated-credential list`) or give some "
                          "services another identity")
    if status == 400 and "issuer" in lowered and "subject" in lowered:
        return CloudError(text, "a managed identity accepts one credential per issuer and subject: another "
                          "credential on it already trusts this service account; plan again")
    if status >= 500:
        return CloudError(text, "Azure had a transient failure; run it again")
    return CloudError(text)


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


def aadsts(exc: BaseException) -> str:
    """The Entra ID error of a failed token request, from its AADSTS code on (the useful part)."""
    text = str(getattr(exc, "message", None) or exc)
    match = _AADSTS.search(text)
    return _compact(match.group(0) if match else text, 400)


# --- the provider -------------------------------------------------------------------------------------


def _azure_identity(binding: Binding) -> AzureIdentity:
    if not isinstance(binding.identity, AzureIdentity):
        raise CloudError(f"service {binding.service!r}: {binding.identity.describe()} is not an Azure managed identity",
                         "only azureManagedIdentity connections apply to an Azure target")
    return binding.identity


def _checked(resource_group: str, identity_name: str, where: str) -> tuple[str, str]:
    """Names are checked before they reach the SDK: a saved plan file is not validated like porter.yaml is."""
    try:
        names.check_resource_group(resource_group)
        names.check_identity_name(identity_name)
    except names.NameRuleError as exc:
        raise CloudError(f"{where}: {exc.message}", exc.hint) from None
    return resource_group, identity_name


def _ref(binding: Binding) -> tuple[str, str]:
    identity = _azure_identity(binding)
    return _checked(identity.resource_group, identity.identity_name, f"service {binding.service!r}")


def _observed_ref(observed: ObservedBinding) -> tuple[str, str, str]:
    """(resource group, identity, credential name) of an observed credential."""
    name = observed.details.get("name", "")
    where = f"{observed.namespace}/{observed.service_account}"
    if not isinstance(observed.identity, AzureIdentity) or not name:
        raise CloudError(f"{where}: the observed credential {observed.id} lacks its identity or name; the plan "
                         "is damaged", "plan again")
    group, identity = _checked(observed.identity.resource_group, observed.identity.identity_name, where)
    try:
        names.check_federated_credential_name(name)
    except names.NameRuleError as exc:
        raise CloudError(f"{where}: {exc.message}", exc.hint) from None
    return group, identity, name




def client_options(target: AzureTarget) -> dict[str, Any]:
    """What every ARM client of a target is built with: its endpoint and token scope (sovereign clouds, the
    sandbox), its CA, and one attempt per call (keyless.providers.retry does the retrying)."""
    options: dict[str, Any] = {
        "base_url": target.arm_endpoint,
        "credential_scopes": [f"{target.arm_endpoint}/.default"],
        "retry_total": 0,
        "connection_timeout": 5,
        "read_timeout": 30,
        "user_agent": "keyless",
    }
    if target.ca_bundle:
        options["connection_verify"] = target.ca_bundle
    return options


@dataclass(frozen=True, slots=True)
class _Cluster:
    found: bool
    missing: str = ""  # the ARM code when not found: ResourceGroupNotFound tells a wrong group from a wrong name
    oidc_enabled: bool = False
    issuer: str | None = None  # exactly as AKS reports it
    workload_identity: bool = False


class AzureProvider:
    """Workload Identity on one AKS cluster: keyless's federated credentials on user-assigned managed identities.

    Credentials carry no tags, so keyless marks its own by name (names.federated_credential_name). Writes on one
    identity are serialized inside the provider (Azure refuses concurrent ones), writes on different identities
    run in parallel. The credential comes from DefaultAzureCredential (az login, a service principal, or the
    workload identity variables with AZURE_AUTHORITY_HOST) unless one is given."""

    cloud = Cloud.AZURE
    token_audience = AZURE_TOKEN_AUDIENCE
    marks_adopted = False  # credentials take no tags: an adopted one stays the person's, used as it is
    # Credentials live on the identity: another identity means a new credential there and the old one deleted.
    in_place_identity_change = False

    def __init__(
        self,
        target: AzureTarget,
        credential: TokenCredential | None = None,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        settle: float = PROPAGATION_SETTLE,
    ) -> None:
        self.target = target
        self._retry = retry
        self._settle = settle
        self._scope = f"{target.arm_endpoint}/.default"
        verify = {"connection_verify": target.ca_bundle} if target.ca_bundle else {}
        self._owns_credential = credential is None
        # DefaultAzureCredential reads AZURE_AUTHORITY_HOST itself; the CA bundle must reach its token requests too.
        self._credential: TokenCredential = credential or DefaultAzureCredential(**verify)
        options = client_options(target)
        self.msi = ManagedServiceIdentityClient(self._credential, target.subscription, **options)
        self.clusters = ContainerServiceClient(self._credential, target.subscription, **options)
        # Not used by the Protocol methods: the least-privilege audit reads role assignments through it.
        self.authorization = AuthorizationManagementClient(self._credential, target.subscription, **options)
        self._cluster: _Cluster | None = None
        self._cluster_lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._written: dict[str, float] = {}  # credential path -> time.time() of keyless's last write to it

    def close(self) -> None:
        for client in (self.msi, self.clusters, self.authorization):
            client.close()
        if self._owns_credential and isinstance(self._credential, DefaultAzureCredential):
            self._credential.close()

    def __enter__(self) -> AzureProvider:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- calling Azure --------------------------------------------------------------------------

    def _call(
        self,
        doing: str,
        fn: Callable[[], T],
        *,
        policy: RetryPolicy | None = None,
        retryable: Callable[[BaseException], bool] = is_transient,
    ) -> T:
        """Run `fn` (SDK calls) with the retry policy; whatever escapes becomes a CloudError.

        The helper's backoff is stretched to the server's Retry-After when one came back (capped, and never
        past the deadline): retrying before the server said so only earns another 429."""
        policy = policy or self._retry
        started = time.monotonic()
        asked: float | None = None

        def attempt() -> T:
            nonlocal asked
            asked = None  # only the last answer counts: a lost connection after a 429 asked for nothing
            try:
                return fn()
            except HttpResponseError as exc:
                asked = retry_after(exc)
                raise

        def wait(delay: float) -> None:
            remaining = max(0.0, policy.deadline - (time.monotonic() - started))
            time.sleep(max(delay, min(asked or 0.0, MAX_RETRY_AFTER, remaining)))

        try:
            return call_with_retry(attempt, policy=policy, retryable=retryable, what=doing, sleep=wait)
        except AzureError as exc:
            raise explain(exc, doing) from exc

    def _lock(self, resource_group: str, identity_name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(identity_key(resource_group, identity_name), threading.Lock())

    def _write(self, resource_group: str, identity_name: str, doing: str, fn: Callable[[], T]) -> T:
        """One credential write, alone on its identity in this process; 409s from other writers are retried."""
        with self._lock(resource_group, identity_name):
            return self._call(doing, fn)

    def _cluster_facts(self, *, refresh: bool = False) -> _Cluster:
        """The cluster's issuer and settings. Read once and reused by observe and apply (services apply in
        parallel; the issuer of a cluster never changes); preflight reads them afresh, to see a fix at once."""
        with self._cluster_lock:
            if self._cluster is not None and not refresh:
                return self._cluster
            group, name = self.target.resource_group, self.target.cluster

            def once() -> ManagedCluster | str:
                try:
                    return self.clusters.managed_clusters.get(group, name)
                except ResourceNotFoundError as exc:
                    return arm_code(exc) or "ResourceNotFound"

            raw = self._call(f"reading AKS cluster {name!r}", once)
            if isinstance(raw, str):
                self._cluster = None  # not cached: it may be created before the next call
                return _Cluster(found=False, missing=raw)
            # Through `properties`: the flattened attributes of this model are untyped (__getattr__).
            props = raw.properties
            oidc = props.oidc_issuer_profile if props is not None else None
            security = props.security_profile if props is not None else None
            workload = security.workload_identity if security is not None else None
            self._cluster = _Cluster(found=True, oidc_enabled=bool(oidc and oidc.enabled),
                                     issuer=(oidc.issuer_url or None) if oidc is not None else None,
                                     workload_identity=bool(workload and workload.enabled))
            return self._cluster

    def _issuer(self) -> str | None:
        facts = self._cluster_facts()
        return facts.issuer if facts.oidc_enabled else None

    def _require_issuer(self) -> str:
        issuer = self._issuer()
        if issuer is None:
            raise CloudError(f"AKS cluster {self.target.cluster!r} has no OIDC issuer (or was not found)",
                             f"az aks update -g {self.target.resource_group} -n {self.target.cluster} "
                             "--enable-oidc-issuer --enable-workload-identity")
        return issuer

    def _get_identity(self, resource_group: str, identity_name: str) -> Identity | str:
        """The identity, or the ARM error code that says why there is none (ResourceGroupNotFound, ...)."""
        def once() -> Identity | str:
            try:
                return self.msi.user_assigned_identities.get(resource_group, identity_name)
            except ResourceNotFoundError as exc:
                return arm_code(exc) or "ResourceNotFound"

        return self._call(f"reading managed identity {resource_group}/{identity_name}", once)

    def _list(self, resource_group: str, identity_name: str) -> list[Credential] | None:
        """Every credential on an identity (every page), or None when the identity or its group is gone."""
        def once() -> list[Credential] | None:
            try:
                pages = self.msi.federated_identity_credentials.list(resource_group, identity_name)
                return [Credential.from_api(resource_group, identity_name, raw) for raw in pages]
            except ResourceNotFoundError:
                return None

        return self._call(f"listing federated credentials of managed identity {resource_group}/{identity_name}",
                          once)

    def _get(self, resource_group: str, identity_name: str, name: str) -> Credential | None:
        def once() -> Credential | None:
            try:
                raw = self.msi.federated_identity_credentials.get(resource_group, identity_name, name)
            except ResourceNotFoundError:
                return None
            return Credential.from_api(resource_group, identity_name, raw)

        return self._call(f"reading federated credential {name} of {resource_group}/{identity_name}", once)

    def _signed_in_tenant(self) -> str | None:
        """The tenant of the ARM token keyless uses, which is the target subscription's (ARM accepts no other)."""
        try:
            token = self._credential.get_token(self._scope).token
        except AzureError as exc:
            raise explain(exc, "signing in to Azure") from exc
        return jwt_claim(token, "tid")

    # ---- resolve --------------------------------------------------------------------------------

    def resolve(self, bindings: Sequence[Binding]) -> tuple[list[Binding], list[PreflightIssue]]:
        """Read each distinct identity once and fill in its client and tenant IDs; problems become issues."""
        groups: dict[str, list[Binding]] = {}
        for binding in bindings:
            ident = _azure_identity(binding)
            groups.setdefault(identity_key(ident.resource_group, ident.identity_name), []).append(binding)
        tenant: str | None = None
        tenant_read = False
        found: dict[str, Identity] = {}
        issues: list[PreflightIssue] = []
        subscription = self.target.subscription
        for key, group in groups.items():
            who, service = services_label(group)
            ident = _azure_identity(group[0])
            rg, name = ident.resource_group, ident.identity_name
            try:
                _checked(rg, name, who)
            except CloudError as exc:
                issues.append(PreflightIssue(Severity.BLOCKING, exc.message, exc.hint, service))
                continue
            got = self._get_identity(rg, name)
            if got == RESOURCE_GROUP_NOT_FOUND:
                issues.append(PreflightIssue(
                    Severity.BLOCKING,
                    f"resource group {rg!r} of managed identity {name!r} ({who}) does not exist in subscription "
                    f"{subscription}",
                    f"fix resourceGroup in porter.yaml (`az group list --subscription {subscription} -o table` lists "
                    "the groups)", service))
                continue
            if isinstance(got, str):
                issues.append(PreflightIssue(
                    Severity.BLOCKING,
                    f"managed identity {name!r} ({who}) does not exist in resource group {rg!r} (subscription "
                    f"{subscription})",
                    f"create it (`az identity create -g {rg} -n {name} --subscription {subscription}`) or fix "
                    "identityName in porter.yaml", service))
                continue
            home = _ARM_SUBSCRIPTION.match(got.id or "")
            if home is not None and home.group(1).lower() != subscription.lower():
                issues.append(PreflightIssue(
                    Severity.BLOCKING,
                    f"managed identity {name!r} in resource group {rg!r} ({who}) is in subscription {home.group(1)}, "
                    f"not the target's {subscription}",
                    "use an identity in the cluster's subscription", service))
                continue
            if not tenant_read:
                tenant, tenant_read = self._signed_in_tenant(), True
            if tenant and got.tenant_id and got.tenant_id.lower() != tenant.lower():
                issues.append(PreflightIssue(
                    Severity.BLOCKING,
                    f"managed identity {name!r} in resource group {rg!r} ({who}) belongs to tenant {got.tenant_id}, "
                    f"but subscription {subscription} is in tenant {tenant}",
                    "use an identity of the cluster's tenant", service))
                continue
            if not got.client_id or not got.tenant_id:
                issues.append(PreflightIssue(
                    Severity.BLOCKING,
                    f"managed identity {name!r} in resource group {rg!r} ({who}) has no client ID or tenant ID yet",
                    "wait until it is provisioned, then plan again", service))
                continue
            found[key] = got
        resolved: list[Binding] = []
        for binding in bindings:
            ident = _azure_identity(binding)
            got_identity = found.get(identity_key(ident.resource_group, ident.identity_name))
            if got_identity is None:
                resolved.append(binding)
                continue
            filled = replace(ident, client_id=got_identity.client_id, tenant_id=got_identity.tenant_id)
            resolved.append(replace(binding, identity=filled))
        return resolved, issues

    # ---- preflight ------------------------------------------------------------------------------

    def preflight(self, bindings: Sequence[Binding]) -> list[PreflightIssue]:
        """The cluster (found, OIDC issuer and workload identity on), then per identity the credential cap and
        credentials someone made for the same service account."""
        t = self.target
        fix = f"az aks update -g {t.resource_group} -n {t.cluster} --enable-oidc-issuer --enable-workload-identity"
        facts = self._cluster_facts(refresh=True)
        if facts.missing == RESOURCE_GROUP_NOT_FOUND:
            return [PreflightIssue(
                Severity.BLOCKING,
                f"resource group {t.resource_group!r} of AKS cluster {t.cluster!r} does not exist in subscription "
                f"{t.subscription}",
                f"fix `resourceGroup` of the target (`az group list --subscription {t.subscription} -o table` lists "
                "the groups)")]
        if not facts.found:
            return [PreflightIssue(
                Severity.BLOCKING,
                f"AKS cluster {t.cluster!r} not found in resource group {t.resource_group!r} (subscription "
                f"{t.subscription})",
                f"check `cluster` and `resourceGroup` of the target (`az aks list -g {t.resource_group} -o table` "
                "lists the clusters there)")]
        missing = [what for what, on in (("the OIDC issuer", facts.oidc_enabled),
                                         ("workload identity", facts.workload_identity)) if not on]
        if missing:
            return [PreflightIssue(
                Severity.BLOCKING,
                f"AKS cluster {t.cluster!r} does not have {' or '.join(missing)} enabled: pods could not exchange "
                "their service-account tokens", fix)]
        if facts.issuer is None:
            return [PreflightIssue(Severity.BLOCKING, f"AKS cluster {t.cluster!r} reports no OIDC issuer URL yet",
                                   f"wait for the cluster update to finish (or run `{fix}`), then plan again")]
        return self._check_identities(bindings, facts.issuer)

    def _check_identities(self, bindings: Sequence[Binding], issuer: str) -> list[PreflightIssue]:
        by_identity: dict[str, list[Binding]] = {}
        for binding in bindings:
            ident = _azure_identity(binding)
            by_identity.setdefault(identity_key(ident.resource_group, ident.identity_name), []).append(binding)
        issues: list[PreflightIssue] = []
        for group in by_identity.values():
            rg, name = _ref(group[0])
            existing = self._list(rg, name)
            if existing is None:
                continue  # resolve reported it
            issues += _same_subject_issues(existing, group, issuer)
            wanted = [(names.federated_credential_name(b.app, b.service, b.target),
                       subject_for(b.namespace, b.service_account)) for b in group]
            adding = credentials_to_add(existing, wanted, issuer)
            if over_cap(len(existing), adding):
                who, service = services_label(group)
                issues.append(PreflightIssue(
                    Severity.BLOCKING,
                    f"managed identity {rg}/{name} has {len(existing)} federated credentials; {who} would add "
                    f"{adding}, {len(existing) + adding} in all, past Azure's limit of {CREDENTIALS_PER_IDENTITY} "
                    "per identity",
                    f"delete credentials no longer used (`az identity federated-credential list -g {rg} "
                    f"--identity-name {name} -o table`) or give some services another identity", service))
        return issues

    # ---- observe --------------------------------------------------------------------------------

    def observe(self, app: str, target: str, bindings: Sequence[Binding],
                recorded: Sequence[str] = ()) -> list[ObservedBinding]:
        """One list per identity, for every identity of the bindings and every identity keyless recorded on the
        app's service accounts (how a removed connection's credential is found): what sits at a desired key, and
        every credential keyless owns for this app on this target."""
        identities: dict[str, tuple[str, str]] = {}
        for binding in bindings:
            rg, name = _ref(binding)
            identities.setdefault(identity_key(rg, name), (rg, name))
        for text in recorded:
            parsed = identity_ref(text)
            if parsed is None:
                # Annotations can be edited by anyone with access to the cluster: never let one reach a URL.
                log.warning("ignoring recorded identity %r: not a resourceGroup/identityName pair", text)
                continue
            identities.setdefault(identity_key(*parsed), parsed)
        issuer = self._issuer()
        credentials: list[Credential] = []
        for rg, name in identities.values():
            credentials += self._list(rg, name) or []
        return select_observed(credentials, app=app, target=target, issuer=issuer,
                               desired_keys=[b.key for b in bindings])

    # ---- apply ----------------------------------------------------------------------------------

    def apply(self, action: Action) -> ActionOutcome:
        """Carry out one cloud action. Refusals come back as a failed outcome; Azure failures that retries did
        not cure raise CloudError."""
        return BindingWrites("Azure", create=self._create, adopt=self._adopt, replace=self._replace,
                             delete=self._delete,
                             no_update="Azure credentials are replaced, never updated in place; the plan was not "
                                       "made for an Azure target").apply(action)

    def _create(self, binding: Binding) -> ActionOutcome:
        rg, ident = _ref(binding)
        issuer = self._require_issuer()
        name = names.federated_credential_name(binding.app, binding.service, binding.target)
        subject = subject_for(binding.namespace, binding.service_account)
        body = FederatedIdentityCredential(issuer=issuer, subject=subject, audiences=[AUDIENCE])
        doing = f"creating federated credential {name} on managed identity {rg}/{ident}"
        try:
            made = self._write(rg, ident, doing, lambda: self.msi.federated_identity_credentials.create_or_update(
                rg, ident, name, body))
        except CloudError as exc:
            cause = exc.__cause__
            if cause is None or status_of(cause) != 400:
                raise
            # Most likely another credential already trusts this issuer and subject (one per pair per identity):
            # made by hand since the plan, it is as good as keyless's own; anything else is the real error.
            twin = self._identical(rg, ident, issuer, subject)
            if twin is None:
                raise
            return _adopted(twin)
        created = Credential.from_api(rg, ident, made)
        self._mark_written(rg, ident, name)
        return ActionOutcome(True, f"created federated credential {name} on {rg}/{ident}: {subject} from {issuer}",
                             created.binding_id)

    def _identical(self, rg: str, ident: str, issuer: str, subject: str) -> Credential | None:
        return next((c for c in self._list(rg, ident) or [] if c.works_for(issuer, subject)), None)

    def _adopt(self, observed: ObservedBinding, binding: Binding) -> ActionOutcome:
        """Azure credentials cannot be renamed and carry no tags, and issuer+subject is unique per identity, so
        keyless cannot mark a hand-made credential as its own nor add its own next to it: it uses it as it is,
        writes nothing, and (its name not being keyless's) will never delete it."""
        rg, ident, name = _observed_ref(observed)
        issuer = self._require_issuer()
        subject = subject_for(binding.namespace, binding.service_account)
        current = self._get(rg, ident, name)
        if current is None:
            return failed(f"{observed.namespace}/{observed.service_account}: federated credential {name} on "
                         f"{rg}/{ident} is gone; plan again", observed.id)
        if identity_key(rg, ident) != identity_key(*_ref(binding)) or not current.works_for(issuer, subject):
            return failed(f"{observed.namespace}/{observed.service_account}: federated credential {name} on "
                         f"{rg}/{ident} changed since the plan (issuer {current.issuer}, subject {current.subject}); "
                         "plan again", current.binding_id)
        return _adopted(current)

    def _owned_refusal(self, observed: ObservedBinding, current: Credential) -> str | None:
        """Why keyless must not delete this credential, or None when its name says keyless made it for the owner
        the plan recorded, and it still trusts this cluster."""
        owner = observed.owner
        parsed = names.parse_federated_credential_name(current.name)
        where = f"{observed.namespace}/{observed.service_account}: federated credential {current.name} on " \
                f"{current.identity}"
        if owner is None or parsed is None or parsed != (owner.app, owner.service, names.target_hash(owner.target)):
            return f"{where} was not named by keyless for this app and target; keyless never deletes it"
        if current.issuer != self._issuer():
            return (f"{where} no longer trusts this cluster's issuer (it trusts {current.issuer}); keyless will not "
                    "touch it")
        return None

    def _delete(self, observed: ObservedBinding) -> ActionOutcome:
        # Read it again first: the plan may be old, and keyless deletes only what it can see is its own now.
        rg, ident, name = _observed_ref(observed)
        current = self._get(rg, ident, name)
        if current is None:
            return ActionOutcome(True, f"federated credential {name} on {rg}/{ident} is gone already", observed.id)
        refusal = self._owned_refusal(observed, current)
        if refusal is not None:
            return failed(refusal, current.binding_id)

        def once() -> None:
            # A retry after a lost response finds it gone: that is the outcome we wanted.
            with contextlib.suppress(ResourceNotFoundError):
                self.msi.federated_identity_credentials.delete(rg, ident, name)

        self._write(rg, ident, f"deleting federated credential {name} on {rg}/{ident}", once)
        return ActionOutcome(True, f"deleted federated credential {name} on {rg}/{ident} (was {current.subject})",
                             current.binding_id)

    def _replace(self, observed: ObservedBinding, binding: Binding) -> ActionOutcome:
        rg, ident, name = _observed_ref(observed)
        new_name = names.federated_credential_name(binding.app, binding.service, binding.target)
        same_place = identity_key(rg, ident) == identity_key(*_ref(binding)) and name.lower() == new_name.lower()
        current = self._get(rg, ident, name)
        if current is not None:
            refusal = self._owned_refusal(observed, current)
            if refusal is not None:
                return failed(refusal, current.binding_id)  # refused before writing anything
        # Create first, then delete: if the create fails, the old credential (and the pods using it) still work.
        # On the same identity under the same name, the create is an in-place update of the subject or audience.
        created = self._create(binding)
        if not created.ok or same_place or current is None:
            return created
        removed = self._delete(observed)
        if not removed.ok:
            return replace(removed, message=f"{created.message}; but {removed.message}")
        return replace(created, message=f"{created.message}; {removed.message}")

    def _mark_written(self, rg: str, ident: str, name: str) -> None:
        with self._locks_guard:
            self._written[f"{identity_key(rg, ident)}/{name.lower()}"] = time.time()

    def _written_at(self, rg: str, ident: str, name: str) -> float | None:
        with self._locks_guard:
            return self._written.get(f"{identity_key(rg, ident)}/{name.lower()}")

    # ---- wait -----------------------------------------------------------------------------------

    def wait_visible(self, action: Action, timeout: float) -> bool:
        """Poll Get until the credential is there as planned (or, for a delete, gone), and keyless's last write
        to it is `settle` seconds old, so that token exchanges from now on find it."""
        schedule = RetryPolicy(max_attempts=10_000, base_delay=0.25, max_delay=2.0, deadline=max(0.0, timeout))
        if action.kind in (ActionKind.NOOP, ActionKind.ADOPT):
            return True
        if action.kind is ActionKind.DELETE:
            rg, ident, name = _observed_ref(observed_of(action))
            return poll(lambda: self._get(rg, ident, name) is None, policy=schedule,
                        what=f"waiting for federated credential {name} on {rg}/{ident} to go")
        binding = desired_of(action)
        rg, ident = _ref(binding)
        issuer = self._require_issuer()
        name = names.federated_credential_name(binding.app, binding.service, binding.target)
        subject = subject_for(binding.namespace, binding.service_account)

        def visible() -> bool:
            found = self._get(rg, ident, name)
            if found is None:
                # The create may have found an identical hand-made credential and used that instead.
                return self._identical(rg, ident, issuer, subject) is not None
            if not found.works_for(issuer, subject):
                return False
            written = max(filter(None, (found.modified_at, self._written_at(rg, ident, name))), default=None)
            return written is None or time.time() >= written + self._settle

        return poll(visible, policy=schedule,
                    what=f"waiting for federated credential {name} on {rg}/{ident} to take effect")

    # ---- propagation check ----------------------------------------------------------------------

    def try_token_exchange(self, binding: Binding, assertion: str) -> tuple[bool, str]:
        """Exchange a service-account token (audience api://AzureADTokenExchange) for an ARM token as the
        binding's identity, as the pod's SDK will: (True, "") once Entra ID accepts it, (False, "AADSTS70021 ...")
        while the credential has not propagated or does not match. CloudError if the authority is unreachable."""
        ident = _azure_identity(binding)
        if not ident.client_id or not ident.tenant_id:
            raise CloudError(f"service {binding.service!r}: managed identity {ident.describe()} was not resolved",
                             "plan again: resolving the identity is part of planning")
        authority = os.environ.get(AUTHORITY_ENV) or AzureAuthorityHosts.AZURE_PUBLIC_CLOUD
        verify = {"connection_verify": self.target.ca_bundle} if self.target.ca_bundle else {}
        # A fresh credential per try: a cached token would answer "yes" without asking Entra ID again.
        with ClientAssertionCredential(ident.tenant_id, ident.client_id, lambda: assertion, authority=authority,
                                       **verify) as exchange:
            try:
                exchange.get_token(self._scope)
            except ClientAuthenticationError as exc:
                return False, aadsts(exc)
            except (ServiceRequestError, ServiceResponseError) as exc:
                raise explain(exc, f"exchanging a token for {ident.describe()} at {authority}") from exc
        return True, ""


def _adopted(credential: Credential) -> ActionOutcome:
    return ActionOutcome(True, f"identical credential {credential.name} exists on {credential.identity}; keyless uses "
                         "it and will not delete it", credential.binding_id)


def _same_subject_issues(existing: Sequence[Credential], group: Sequence[Binding], issuer: str) -> list[PreflightIssue]:
    """Credentials someone else made for a service account keyless binds: usable ones are used as they are, the
    others block (Azure allows one credential per issuer and subject on an identity, so keyless cannot add its own)."""
    issues: list[PreflightIssue] = []
    for binding in group:
        mine = names.federated_credential_name(binding.app, binding.service, binding.target).lower()
        subject = subject_for(binding.namespace, binding.service_account)
        for credential in existing:
            if credential.name.lower() == mine or not credential.trusts(issuer, subject):
                continue
            if credential.works_for(issuer, subject):
                issues.append(PreflightIssue(
                    Severity.WARNING,
                    f"identical credential {credential.name} exists on {credential.identity}; keyless uses it and "
                    "will not delete it", "", binding.service))
            else:
                issues.append(PreflightIssue(
                    Severity.BLOCKING,
                    f"federated credential {credential.name} on {credential.identity} already trusts {subject} from "
                    f"this cluster, but for audience {','.join(credential.audiences) or '(none)'}, not {AUDIENCE}; "
                    "Azure allows one credential per issuer and subject on an identity",
                    f"az identity federated-credential update -g {credential.resource_group} --identity-name "
                    f"{credential.identity_name} -n {credential.name} --audiences {AUDIENCE} (or delete it)",
                    binding.service))
    return issues
