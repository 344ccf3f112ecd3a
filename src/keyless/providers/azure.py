"""The Azure provider: federated identity credentials on user-assigned managed identities, trusting the AKS issuer."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import AzureAuthorityHosts, ClientAssertionCredential
from azure.mgmt.containerservice.models import ManagedCluster
from azure.mgmt.msi.v2024_11_30.models import FederatedIdentityCredential, Identity

from keyless import names
from keyless.bindings import Binding
from keyless.clouds import AzureIdentity, Cloud
from keyless.errors import CloudError
from keyless.federation import AZURE_TOKEN_AUDIENCE, subject_for
from keyless.plan import Action, ActionKind, ObservedBinding, ObservedServiceAccount, Refresh
from keyless.providers.azure_api import (
    AUTHORITY_ENV,
    CREDENTIALS_PER_IDENTITY,
    DEFAULT_LIMITS,
    DEFAULT_RETRY,
    AzureApi,
    AzureLimits,
    aadsts,
    arm_code,
    explain,
    status_of,
)
from keyless.providers.azure_credentials import (
    AUDIENCE,
    Credential,
    credentials_to_add,
    identity_key,
    identity_ref,
    jwt_claim,
    over_cap,
    select_observed,
)
from keyless.providers.base import (
    ActionOutcome,
    BindingWrites,
    PreflightIssue,
    PreflightSeverity,
    desired_of,
    failed,
    observed_of,
    services_label,
)
from keyless.providers.retry import RetryPolicy, TokenBucket, poll, shared_bucket
from keyless.targets import AzureTarget

T = TypeVar("T")

log = logging.getLogger(__name__)

RESOURCE_GROUP_NOT_FOUND = "ResourceGroupNotFound"

# A credential Get can see at once still takes seconds (occasionally minutes) to reach Entra ID's token
# endpoint; exchanges fail with AADSTS70021 meanwhile. The engine proves propagation with a real token exchange
# (try_token_exchange) before it restarts pods, so wait_visible itself only waits for ARM to show the write.
PROPAGATION_SETTLE = 0.0
# After Entra ID first accepts a new credential, exchanges can fail again with AADSTS70021 for a while (its replicas
# converge one by one): the engine restarts pods only once exchanges have kept working this long. A heuristic (the
# flapping is not documented in figures): long enough to outlast most flaps, short enough to cost little per apply.
EXCHANGE_STEADY_FOR = 10.0

_ARM_SUBSCRIPTION = re.compile(r"^/subscriptions/([^/]+)/", re.IGNORECASE)

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

    def __init__(
        self,
        target: AzureTarget,
        credential: TokenCredential | None = None,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        settle: float = PROPAGATION_SETTLE,
        steady_for: float | None = None,
        limits: AzureLimits = DEFAULT_LIMITS,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.target = target
        self._api = AzureApi(target, credential, retry=retry, sleep=sleep, clock=clock, now=now)
        self._limits = limits
        # Writes are paced per subscription and per identity (each attempt takes a token), so a large apply runs at
        # ARM's rate instead of collecting 429s and backing off past it.
        self._subscription_writes = shared_bucket(("azure", target.arm_endpoint, target.subscription),
                                                  limits.writes_per_subscription, sleep=sleep, clock=clock)
        self._identity_writes: dict[str, TokenBucket] = {}
        self._credential = self._api.credential
        self._scope = self._api.scope
        self.msi = self._api.msi
        self.clusters = self._api.clusters
        self._settle = settle
        self.exchange_steady_for = steady_for if steady_for is not None else (
            target.settle_seconds if target.settle_seconds is not None else EXCHANGE_STEADY_FOR)
        self._sleep = sleep
        self._clock = clock
        self._now = now
        self._cluster: _Cluster | None = None
        self._cluster_lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._written: dict[str, float] = {}  # credential path -> wall time of keyless's last write to it

    def close(self) -> None:
        self._api.close()

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
        retryable: Callable[[BaseException], bool] | None = None,
    ) -> T:
        return self._api.call(doing, fn, policy=policy, **({"retryable": retryable} if retryable else {}))

    def _lock(self, resource_group: str, identity_name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(identity_key(resource_group, identity_name), threading.Lock())

    def _write(self, resource_group: str, identity_name: str, doing: str, fn: Callable[[], T]) -> T:
        """One credential write, alone on its identity in this process and paced to ARM's limits; 409s from other
        writers are retried."""
        key = identity_key(resource_group, identity_name)
        with self._locks_guard:
            identity = self._identity_writes.setdefault(key, shared_bucket(
                ("azure", self.target.arm_endpoint, self.target.subscription, key), self._limits.writes_per_identity,
                sleep=self._sleep, clock=self._clock))

        def paced() -> T:
            identity.take()
            self._subscription_writes.take()
            return fn()

        with self._lock(resource_group, identity_name):
            return self._call(doing, paced)

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
                issues.append(PreflightIssue(PreflightSeverity.BLOCKING, exc.message, exc.hint, service))
                continue
            got = self._get_identity(rg, name)
            if got == RESOURCE_GROUP_NOT_FOUND:
                issues.append(PreflightIssue(
                    PreflightSeverity.BLOCKING,
                    f"resource group {rg!r} of managed identity {name!r} ({who}) does not exist in subscription "
                    f"{subscription}",
                    f"fix resourceGroup in porter.yaml (`az group list --subscription {subscription} -o table` lists "
                    "the groups)", service))
                continue
            if isinstance(got, str):
                issues.append(PreflightIssue(
                    PreflightSeverity.BLOCKING,
                    f"managed identity {name!r} ({who}) does not exist in resource group {rg!r} (subscription "
                    f"{subscription})",
                    f"create it (`az identity create -g {rg} -n {name} --subscription {subscription}`) or fix "
                    "identityName in porter.yaml", service))
                continue
            home = _ARM_SUBSCRIPTION.match(got.id or "")
            if home is not None and home.group(1).lower() != subscription.lower():
                issues.append(PreflightIssue(
                    PreflightSeverity.BLOCKING,
                    f"managed identity {name!r} in resource group {rg!r} ({who}) is in subscription {home.group(1)}, "
                    f"not the target's {subscription}",
                    "use an identity in the cluster's subscription", service))
                continue
            if not tenant_read:
                tenant, tenant_read = self._signed_in_tenant(), True
            if tenant and got.tenant_id and got.tenant_id.lower() != tenant.lower():
                issues.append(PreflightIssue(
                    PreflightSeverity.BLOCKING,
                    f"managed identity {name!r} in resource group {rg!r} ({who}) belongs to tenant {got.tenant_id}, "
                    f"but subscription {subscription} is in tenant {tenant}",
                    "use an identity of the cluster's tenant", service))
                continue
            if not got.client_id or not got.tenant_id:
                issues.append(PreflightIssue(
                    PreflightSeverity.BLOCKING,
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
                PreflightSeverity.BLOCKING,
                f"resource group {t.resource_group!r} of AKS cluster {t.cluster!r} does not exist in subscription "
                f"{t.subscription}",
                f"fix `resourceGroup` of the target (`az group list --subscription {t.subscription} -o table` lists "
                "the groups)")]
        if not facts.found:
            return [PreflightIssue(
                PreflightSeverity.BLOCKING,
                f"AKS cluster {t.cluster!r} not found in resource group {t.resource_group!r} (subscription "
                f"{t.subscription})",
                f"check `cluster` and `resourceGroup` of the target (`az aks list -g {t.resource_group} -o table` "
                "lists the clusters there)")]
        missing = [what for what, on in (("the OIDC issuer", facts.oidc_enabled),
                                         ("workload identity", facts.workload_identity)) if not on]
        if missing:
            return [PreflightIssue(
                PreflightSeverity.BLOCKING,
                f"AKS cluster {t.cluster!r} does not have {' or '.join(missing)} enabled: pods could not exchange "
                "their service-account tokens", fix)]
        if facts.issuer is None:
            return [PreflightIssue(PreflightSeverity.BLOCKING,
                                   f"AKS cluster {t.cluster!r} reports no OIDC issuer URL yet",
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
                    PreflightSeverity.BLOCKING,
                    f"managed identity {rg}/{name} has {len(existing)} federated credentials; {who} would add "
                    f"{adding}, {len(existing) + adding} in all, past Azure's limit of {CREDENTIALS_PER_IDENTITY} "
                    "per identity",
                    f"delete credentials no longer used (`az identity federated-credential list -g {rg} "
                    f"--identity-name {name} -o table`) or give some services another identity", service))
        return issues

    # ---- observe --------------------------------------------------------------------------------

    def observe(self, app: str, target: str, bindings: Sequence[Binding], recorded: Sequence[str] = (),
                accounts: Sequence[ObservedServiceAccount] = (), refresh: Refresh = Refresh.FULL
                ) -> list[ObservedBinding]:
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
            self._written[f"{identity_key(rg, ident)}/{name.lower()}"] = self._now()

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
            return poll(lambda: self._get(rg, ident, name) is None, policy=schedule, sleep=self._sleep,
                        clock=self._clock, what=f"waiting for federated credential {name} on {rg}/{ident} to go")
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
            return written is None or self._now() >= written + self._settle

        return poll(visible, policy=schedule, sleep=self._sleep, clock=self._clock,
                    what=f"waiting for federated credential {name} on {rg}/{ident} to take effect")

    # ---- propagation check ----------------------------------------------------------------------

    def try_token_exchange(self, binding: Binding, assertion: str) -> tuple[bool, str]:
        """Exchange a service-account token (audience api://AzureADTokenExchange) for an ARM token as the
        binding's identity, as the pod's SDK will: (True, "") once Entra ID accepts it, (False, "AADSTS70021 ...")
        while the credential has not propagated. CloudError if the authority is unreachable, or if Entra ID refuses
        for a reason no wait will cure (issuer or subject mismatch, an issuer it cannot fetch)."""
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
                return False, _wait_only_for_propagation(binding, ident, aadsts(exc))
            except (ServiceRequestError, ServiceResponseError) as exc:
                raise explain(exc, f"exchanging a token for {ident.describe()} at {authority}") from exc
        return True, ""


_AADSTS_CODE = re.compile(r"AADSTS(\d+)")
# Only AADSTS70021 ("no matching federated identity record") can be a credential still propagating (it can also
# flap back for a while after a first success); every other refusal is a misconfiguration no wait will cure:
# what it means and how to fix it, by code.
_MISCONFIGURED: dict[str, tuple[str, str]] = {
    "700211": ("no federated credential on the identity trusts the token's issuer",
               "the credential's issuer must be the cluster's OIDC issuer URL byte for byte, trailing slash included "
               "(`az aks show --query oidcIssuerProfile.issuerUrl`); run `keyless plan` and apply again"),
    "700213": ("no federated credential for this issuer trusts the service account",
               "the credential's subject must be exactly system:serviceaccount:<namespace>:<service account>; run "
               "`keyless plan` and apply again"),
    "7002138": ("the federated credential's subject differs from the service account only in letter case",
                "subjects match case-sensitively: fix the credential's subject (or the service account name) so "
                "that they are identical"),
    "90061": ("Entra ID cannot fetch the issuer's OIDC discovery document or keys",
              "the cluster's OIDC issuer must be enabled and its /.well-known/openid-configuration reachable from "
              "the internet (`az aks update --enable-oidc-issuer`)"),
    "50166": ("Entra ID cannot fetch the issuer's OIDC discovery document or keys",
              "the cluster's OIDC issuer must be enabled and its /.well-known/openid-configuration reachable from "
              "the internet (`az aks update --enable-oidc-issuer`)"),
    "700016": ("Entra ID knows no application with the identity's client id",
               "check the managed identity still exists (`az identity show`) and plan again"),
}


def _wait_only_for_propagation(binding: Binding, ident: AzureIdentity, reason: str) -> str:
    """The reason to keep waiting for an AADSTS70021; a CloudError naming the misconfiguration for anything else."""
    match = _AADSTS_CODE.match(reason)
    code = match.group(1) if match else ""
    if code == "70021":
        return reason
    what, fix = _MISCONFIGURED.get(code, ("Entra ID refused the token exchange", "fix the federated credential on "
                                          "the identity and apply again"))
    raise CloudError(f"service {binding.service!r}: token exchange for {ident.describe()} refused, {what}: {reason}",
                     fix)


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
                    PreflightSeverity.WARNING,
                    f"identical credential {credential.name} exists on {credential.identity}; keyless uses it and "
                    "will not delete it", "", binding.service))
            else:
                issues.append(PreflightIssue(
                    PreflightSeverity.BLOCKING,
                    f"federated credential {credential.name} on {credential.identity} already trusts {subject} from "
                    f"this cluster, but for audience {','.join(credential.audiences) or '(none)'}, not {AUDIENCE}; "
                    "Azure allows one credential per issuer and subject on an identity",
                    f"az identity federated-credential update -g {credential.resource_group} --identity-name "
                    f"{credential.identity_name} -n {credential.name} --audiences {AUDIENCE} (or delete it)",
                    binding.service))
    return issues
