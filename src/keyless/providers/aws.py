"""The AWS provider: IAM roles bound to Kubernetes service accounts through EKS Pod Identity associations."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import boto3
from botocore.exceptions import ClientError

from keyless import names
from keyless.bindings import Binding
from keyless.clouds import BINDING_ANNOTATION, IDENTITY_ANNOTATION, PENDING_ANNOTATION, AwsRole, Cloud
from keyless.errors import CloudError
from keyless.federation import POD_IDENTITY_SERVICE, TRUST_ACTIONS, trust_statement
from keyless.iam_policy import check_trust_policy
from keyless.ownership import SERVICE_LABEL, Owner, label_value, labelled_for, owner_from_tags, ownership_tags
from keyless.plan import Action, ObservedBinding, ObservedServiceAccount, Refresh
from keyless.providers.aws_api import (
    ASSOCIATION_QUOTA,
    DEFAULT_LIMITS,
    DEFAULT_RETRY,
    AwsApi,
    AwsLimits,
    error_code,
    is_role_not_propagated,
    is_transient,
)
from keyless.providers.base import (
    ActionOutcome,
    BindingWrites,
    PreflightIssue,
    PreflightSeverity,
    failed,
    services_label,
)
from keyless.providers.retry import RetryPolicy
from keyless.targets import AwsTarget

if TYPE_CHECKING:
    from mypy_boto3_eks.type_defs import ClusterTypeDef, PodIdentityAssociationTypeDef

log = logging.getLogger(__name__)

AGENT_ADDON = "eks-pod-identity-agent"
# IAM propagation of a new role is usually seconds, occasionally a minute or two.
ROLE_PROPAGATION_RETRY = RetryPolicy(max_attempts=12, base_delay=1.0, max_delay=10.0, deadline=120.0)
# A new or changed association is visible to Describe at once but reaches the Pod Identity webhook and
# agent seconds later ("several seconds"; AWS publishes no bound); pods created in between get no credentials, or
# the old role. A write's outcome says it settles this long after the association's modifiedAt, and the engine
# restarts the service's pods then. Pods keyless does not restart keep the role the agent cached for them (up to
# its 3 h renewal) after a role change.
PROPAGATION_SETTLE = 10.0
# Describes in flight at once while observing; the token bucket (AwsLimits), not this, sets the pace.
DESCRIBE_CONCURRENCY = 16

# --- request tokens (pure) ----------------------------------------------------------------------------


def create_request_token(cluster: str, binding: Binding, role_arn: str, attempt: str) -> str:
    """clientRequestToken for one apply attempt of a create: every retry of that attempt sends the same
    token, so EKS answers a retry after a lost response with the association it already made. A new
    attempt (a later run) gets a new token, so a binding deleted and created again is never confused
    with its predecessor."""
    parts = (cluster, binding.namespace, binding.service_account, role_arn, binding.app, binding.service,
             binding.target, attempt)
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16]))


# --- the provider -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Role:
    name: str
    path: str
    arn: str
    trust: object  # AssumeRolePolicyDocument: parsed by botocore, or the encoded string


@dataclass(frozen=True, slots=True)
class _Summary:
    """What ListPodIdentityAssociations tells: no role, no tags (DescribePodIdentityAssociation has those)."""

    id: str
    namespace: str
    service_account: str


def _journaled(accounts: Sequence[ObservedServiceAccount], app: str, target: str) -> list[ObservedBinding]:
    """The associations the app's own service accounts record, as observing them would find them; an account whose
    labels could not hold the names exactly (shortened) vouches for nothing, so its association is described."""
    found: list[ObservedBinding] = []
    for account in accounts:
        binding_id = account.annotations.get(BINDING_ANNOTATION, "")
        role_arn = account.annotations.get(IDENTITY_ANNOTATION, "")
        service = account.labels.get(SERVICE_LABEL, "")
        if (not names.is_association_id(binding_id) or not role_arn.startswith("arn:")
                or not labelled_for(account.labels, app, target)
                or label_value(service) != service or label_value(app) != app or label_value(target) != target):
            continue
        found.append(ObservedBinding(cloud=Cloud.AWS, id=binding_id, namespace=account.namespace,
                                     service_account=account.name, identity=AwsRole(role=role_arn, arn=role_arn),
                                     owner=Owner(app, service, target)))
    return found


@dataclass(frozen=True, slots=True)
class _Association:
    id: str
    arn: str
    namespace: str
    service_account: str
    role_arn: str
    owner_arn: str | None
    tags: Mapping[str, str] = field(default_factory=dict)
    target_role_arn: str | None = None
    modified_at: float | None = None  # epoch seconds, the server's clock

    @property
    def owner(self) -> Owner | None:
        return owner_from_tags(self.tags)

    @property
    def address(self) -> str:
        return f"{self.namespace}/{self.service_account}"

    @classmethod
    def from_api(cls, raw: PodIdentityAssociationTypeDef) -> _Association:
        modified = raw.get("modifiedAt") or raw.get("createdAt")
        return cls(id=raw.get("associationId", ""), arn=raw.get("associationArn", ""),
                   namespace=raw.get("namespace", ""), service_account=raw.get("serviceAccount", ""),
                   role_arn=raw.get("roleArn", ""), owner_arn=raw.get("ownerArn") or None,
                   tags=dict(raw.get("tags") or {}), target_role_arn=raw.get("targetRoleArn") or None,
                   modified_at=modified.timestamp() if modified is not None else None)


def _aws_role(binding: Binding) -> AwsRole:
    if not isinstance(binding.identity, AwsRole):
        raise CloudError(f"service {binding.service!r}: {binding.identity.describe()} is not an AWS role",
                         "only awsRole connections apply to an AWS target")
    return binding.identity


def _role_arn(binding: Binding) -> str:
    role = _aws_role(binding)
    if role.arn is None:
        raise CloudError(f"service {binding.service!r}: role {role.role!r} was not resolved to an ARN",
                         "plan again: resolving the role is part of planning")
    return role.arn


def _owner_of(binding: Binding) -> Owner:
    return Owner(app=binding.app, service=binding.service, target=binding.target)


class AwsProvider:
    """EKS Pod Identity on one cluster. Clients come from the standard SDK configuration (AWS_PROFILE,
    AWS_ENDPOINT_URL_EKS/IAM/STS, ...); the region is the target's.

    Within one command (from `resolve`, or a fresh instance) each object is read at most once: the cluster's
    association listing and every association described are kept, so preflight, observe and the writes that
    follow share them, and each write keeps them up to date."""

    cloud = Cloud.AWS

    def __init__(
        self,
        target: AwsTarget,
        session: boto3.Session | None = None,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        role_propagation: RetryPolicy = ROLE_PROPAGATION_RETRY,
        settle: float | None = None,
        limits: AwsLimits = DEFAULT_LIMITS,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.target = target
        self._api = AwsApi(target.region, session, retry=retry, limits=limits, sleep=sleep, clock=clock)
        self._eks = self._api.eks
        self._role_propagation = role_propagation
        self._settle = settle if settle is not None else (
            target.settle_seconds if target.settle_seconds is not None else PROPAGATION_SETTLE)
        self._sleep = sleep
        self._clock = clock
        self._now = now  # wall time, compared with the server's modifiedAt
        # Roles read by resolve(), reused by preflight() in the same run instead of a second GetRole.
        self._roles: dict[str, _Role] = {}
        self._listing: list[_Summary] | None = None  # the cluster's associations, listed once per command
        self._described: dict[str, _Association] = {}  # by id: described (or written) in this command

    @property
    def api(self) -> AwsApi:
        """The SDK layer, whose `calls` count this provider's requests by operation."""
        return self._api

    @property
    def cluster(self) -> str:
        return self.target.cluster

    # ---- calling AWS ----------------------------------------------------------------------------

    def _describe_cluster(self) -> ClusterTypeDef | None:
        found: ClusterTypeDef | None = self._api.describe_cluster(self.cluster)
        return found

    def _addon_status(self) -> str | None:
        """The agent add-on's status, or None when it is not installed."""
        addon = self._api.get(
            f"describing add-on {AGENT_ADDON} of cluster {self.cluster!r}",
            lambda: self._eks.describe_addon(clusterName=self.cluster, addonName=AGENT_ADDON)["addon"],
            not_found="ResourceNotFoundException")
        return None if addon is None else str(addon.get("status", "UNKNOWN"))

    def _get_role(self, name: str) -> _Role | None:
        cached = self._roles.get(name)
        if cached is not None:
            return cached
        raw = self._api.get_role(name)
        if raw is None:
            return None
        role = _Role(name=raw["RoleName"], path=raw.get("Path", "/"), arn=raw["Arn"],
                     trust=raw.get("AssumeRolePolicyDocument"))
        self._roles[name] = role
        return role

    def _home(self) -> tuple[str, str]:
        """(partition, account) of the credentials in use, which is the cluster's: EKS lists no other."""
        who = self._api.call("asking STS who keyless runs as", self._api.sts.get_caller_identity)
        arn = who.get("Arn", "")
        partition = arn.split(":")[1] if arn.count(":") >= 5 else "aws"
        return partition, who.get("Account", "")

    def _list(self, namespace: str | None = None, service_account: str | None = None) -> list[_Summary]:
        """Every association (optionally of a namespace / service account), following every page. The whole
        cluster's listing is read once per command; a filtered one (settling a conflict) always afresh."""
        whole = namespace is None and service_account is None
        if whole and self._listing is not None:
            return self._listing
        found = [_Summary(id=s.get("associationId", ""), namespace=s.get("namespace", ""),
                          service_account=s.get("serviceAccount", ""))
                 for s in self._api.list_associations(self.cluster, namespace, service_account)]
        if whole:
            self._listing = found
        return found

    def _describe(self, association_id: str) -> _Association | None:
        """Describe an association afresh, and keep what it said for the rest of the command."""
        raw = self._api.describe_association(self.cluster, association_id)
        if raw is None:
            self._forget(association_id)
            return None
        return self._keep(_Association.from_api(raw))

    def _current(self, association_id: str) -> _Association | None:
        """The association as this command last read or wrote it; described only if it has not been yet."""
        known = self._described.get(association_id)
        return known if known is not None else self._describe(association_id)

    def _keep(self, association: _Association) -> _Association:
        self._described[association.id] = association
        return association

    def _forget(self, association_id: str) -> None:
        self._described.pop(association_id, None)
        if self._listing is not None:
            self._listing = [s for s in self._listing if s.id != association_id]

    def _settles_in(self, association: _Association) -> float:
        """Seconds until new pods get this association's role: its last change plus the propagation time."""
        if association.modified_at is None:
            return self._settle
        return max(0.0, association.modified_at + self._settle - self._now())

    def _find(self, namespace: str, service_account: str) -> _Association | None:
        """The association of a service account (EKS allows one), described."""
        for summary in self._list(namespace, service_account):
            found = self._describe(summary.id)
            if found is not None:
                return found
        return None

    def _tag(self, association: _Association, owner: Owner) -> None:
        self._api.call(f"tagging pod identity association {association.id}",
                   lambda: self._eks.tag_resource(resourceArn=association.arn, tags=ownership_tags(owner)))
        self._keep(replace(association, tags={**association.tags, **ownership_tags(owner)}))

    # ---- resolve --------------------------------------------------------------------------------

    def resolve(self, bindings: Sequence[Binding]) -> tuple[list[Binding], list[PreflightIssue]]:
        """Look each distinct role up (GetRole) and fill in its ARN; missing or foreign roles become issues.

        Resolving starts a command's reading: what earlier calls read is forgotten, and read again when needed."""
        self._roles = {}
        self._listing = None
        self._described = {}
        groups: dict[str, list[Binding]] = {}
        for binding in bindings:
            groups.setdefault(_aws_role(binding).role, []).append(binding)
        home: tuple[str, str] | None = None
        arns: dict[str, str] = {}
        issues: list[PreflightIssue] = []
        for written, group in groups.items():
            who, service = services_label(group)
            try:
                ref = names.parse_role(written)
            except names.NameRuleError as exc:
                issues.append(PreflightIssue(PreflightSeverity.BLOCKING, f"{exc.message} ({who})", exc.hint, service))
                continue
            if ref.is_arn:
                home = home or self._home()
                if (ref.partition, ref.account) != home:
                    issues.append(PreflightIssue(
                        PreflightSeverity.BLOCKING,
                        f"role {written} ({who}) is in account {ref.account} ({ref.partition}), but cluster "
                        f"{self.cluster!r} is in account {home[1]} ({home[0]}); EKS Pod Identity needs a role in "
                        "the cluster's own account",
                        "create the role in the cluster's account and name it in porter.yaml; cross-account "
                        "access (a role in the cluster's account that chains to this one through "
                        "targetRoleArn) is not supported by keyless yet",
                        service))
                    continue
            role = self._get_role(ref.name)
            if role is None:
                issues.append(PreflightIssue(
                    PreflightSeverity.BLOCKING,
                    f"IAM role {ref.name!r} ({who}) does not exist in the cluster's account",
                    f"create it with a trust policy that has this statement, or fix the role in porter.yaml: "
                    f"{json.dumps(trust_statement())}",
                    service))
                continue
            # Role names are unique in an account, but a path or ARN that was written must match too.
            if (ref.is_arn or ref.path != "/") and role.path != ref.path:
                issues.append(PreflightIssue(
                    PreflightSeverity.BLOCKING,
                    f"IAM role {ref.name!r} ({who}) has path {role.path!r}, not {ref.path!r} as written",
                    f"write the role as {role.arn}", service))
                continue
            arns[written] = role.arn
        resolved: list[Binding] = []
        for binding in bindings:
            written_role = _aws_role(binding)
            arn = arns.get(written_role.role)
            resolved.append(binding if arn is None else replace(binding, identity=replace(written_role, arn=arn)))
        return resolved, issues

    # ---- preflight ------------------------------------------------------------------------------

    def preflight(self, bindings: Sequence[Binding]) -> list[PreflightIssue]:
        """Cluster, agent add-on (unless Auto Mode) and each role's trust policy; the quota is `check_capacity`'s."""
        issues: list[PreflightIssue] = []
        cluster = self._describe_cluster()
        if cluster is None:
            issues.append(PreflightIssue(
                PreflightSeverity.BLOCKING, f"EKS cluster {self.cluster!r} not found in {self.target.region}",
                f"check `cluster` and `region` of the target (`aws eks list-clusters --region {self.target.region}` "
                "lists the clusters there)"))
        else:
            issues += self._check_cluster(cluster)
        issues += self._check_trust(bindings)
        return issues

    def _check_cluster(self, cluster: ClusterTypeDef) -> list[PreflightIssue]:
        issues: list[PreflightIssue] = []
        status = cluster.get("status", "ACTIVE")
        if status not in ("ACTIVE", "UPDATING"):
            issues.append(PreflightIssue(
                PreflightSeverity.WARNING, f"EKS cluster {self.cluster!r} is {status}",
                "pod identity associations may fail until the cluster is ACTIVE"))
        if cluster.get("computeConfig", {}).get("enabled"):
            return issues  # EKS Auto Mode runs the Pod Identity agent itself
        addon = self._addon_status()
        create = (f"aws eks create-addon --cluster-name {self.cluster} --addon-name {AGENT_ADDON} "
                  f"--region {self.target.region}")
        if addon is None:
            issues.append(PreflightIssue(
                PreflightSeverity.BLOCKING,
                f"EKS cluster {self.cluster!r} does not have the {AGENT_ADDON} add-on: pods would get no credentials",
                create))
        elif addon in ("CREATE_FAILED", "DELETING", "DELETE_FAILED"):
            issues.append(PreflightIssue(
                PreflightSeverity.BLOCKING, f"the {AGENT_ADDON} add-on of cluster {self.cluster!r} is {addon}",
                f"repair or reinstall it (`aws eks describe-addon --cluster-name {self.cluster} "
                f"--addon-name {AGENT_ADDON}` shows why), e.g. {create}"))
        elif addon in ("CREATING", "DEGRADED", "UPDATE_FAILED"):
            issues.append(PreflightIssue(
                PreflightSeverity.WARNING, f"the {AGENT_ADDON} add-on of cluster {self.cluster!r} is {addon}",
                "pods may not get credentials until it is ACTIVE"))
        return issues

    def check_capacity(self, creating: int) -> list[PreflightIssue]:
        """EKS's limit of associations per cluster, when the plan creates some: counted on the cluster's listing,
        which a full refresh has read already (and which is read once per command otherwise)."""
        if creating <= 0:
            return []
        existing = len(self._list())
        if existing + creating <= ASSOCIATION_QUOTA:
            return []
        return [PreflightIssue(
            PreflightSeverity.BLOCKING,
            f"EKS cluster {self.cluster!r} has {existing} pod identity associations; {creating} more would "
            f"pass the limit of {ASSOCIATION_QUOTA} per cluster",
            f"delete associations no longer used (`aws eks list-pod-identity-associations --cluster-name "
            f"{self.cluster}`)")]

    def _check_trust(self, bindings: Sequence[Binding]) -> list[PreflightIssue]:
        by_arn: dict[str, list[Binding]] = {}
        for binding in bindings:
            arn = _aws_role(binding).arn
            if arn is not None:
                by_arn.setdefault(arn, []).append(binding)
        issues: list[PreflightIssue] = []
        for arn, group in by_arn.items():
            who, service = services_label(group)
            name = names.parse_role(arn).name
            role = self._get_role(name)
            if role is None:
                issues.append(PreflightIssue(PreflightSeverity.BLOCKING, f"IAM role {name!r} ({who}) no longer exists",
                                             "create it again, or fix the role in porter.yaml", service))
                continue
            issue = _trust_issue(role, who, service)
            if issue is not None:
                issues.append(issue)
        return issues

    # ---- observe --------------------------------------------------------------------------------

    def observe(self, app: str, target: str, bindings: Sequence[Binding], recorded: Sequence[str] = (),
                accounts: Sequence[ObservedServiceAccount] = (), refresh: Refresh = Refresh.FULL
                ) -> list[ObservedBinding]:
        """What sits at the desired (namespace, service account) keys, plus every association keyless owns
        for this app on this target. Other apps' and other people's associations are never described.

        Refresh.FULL lists the whole cluster (100 a page; summaries carry no tags) and describes the candidates:
        those at a desired key, and those whose service account has the app's `<app>-` prefix (every account keyless
        names for the app has it), in any namespace, so that a target whose namespace changed still finds its old
        associations.

        Refresh.BOUND reads back by id each association the journal on the app's service accounts records, and
        lists (filtered to the key) only a key whose recorded association is gone: a refresh of an unchanged app
        costs one Describe per binding, whatever the size of the cluster. Keyless records what it is about to bind
        on the account before it writes (PENDING_ANNOTATION), so an interrupted apply leaves an account to look at.
        A desired key the journal does not record is probably a create, whose quota check needs the whole listing
        anyway: then it lists the whole cluster, as FULL does.

        Refresh.NONE reads nothing the journal vouches for (an association it records whose role is the one wanted,
        or whose connection is gone): only the desired keys it does not vouch for are listed (filtered to the key)
        and described. What an interrupted apply left where no connection wants it anymore is found by the next
        full refresh, the default."""
        desired = {b.key for b in bindings}
        if refresh is Refresh.NONE:
            return self._observe_journaled(app, target, bindings, accounts)
        if refresh is Refresh.BOUND and self._listing is None:
            bound = self._observe_bound(app, target, desired, accounts)
            if bound is not None:
                return bound
        prefix = f"{app}-"
        listed = [s.id for s in self._list()
                  if (s.namespace, s.service_account) in desired or s.service_account.startswith(prefix)]
        return self._described_bindings(app, target, desired, listed)

    def _observe_bound(self, app: str, target: str, desired: set[tuple[str, str]],
                       accounts: Sequence[ObservedServiceAccount]) -> list[ObservedBinding] | None:
        """Refresh.BOUND: the journal's associations described by id, keys whose association went listed; None when
        a desired key has no journal entry (the whole listing is the cheaper read then)."""
        journal: dict[tuple[str, str], str] = {}
        keys = set(desired)
        for account in accounts:
            key = (account.namespace, account.name)
            notes = account.annotations
            if key in desired or (labelled_for(account.labels, app, target) and any(
                    notes.get(k) for k in (BINDING_ANNOTATION, PENDING_ANNOTATION, IDENTITY_ANNOTATION))):
                keys.add(key)  # keyless bound (or was binding) something here
                if names.is_association_id(notes.get(BINDING_ANNOTATION, "")):
                    journal[key] = notes[BINDING_ANNOTATION]
        if desired - set(journal):
            return None
        read = self._read_all(list(journal.values()))
        settled = {(a.namespace, a.service_account) for a in read if a is not None}
        # EKS holds one association per key: a key whose recorded one is there has no other.
        ids = [a.id for a in read if a is not None]
        ids += [s.id for namespace, account in sorted(keys - settled) for s in self._list(namespace, account)]
        return self._described_bindings(app, target, desired, ids)

    def _described_bindings(self, app: str, target: str, desired: set[tuple[str, str]],
                            ids: Sequence[str]) -> list[ObservedBinding]:
        """Describe each association once, several at a time (the EKS read bucket sets the pace); keep those at a
        desired key and those keyless made for this app and target."""
        found: list[ObservedBinding] = []
        for association in self._read_all(ids):
            if association is None:
                continue  # deleted since it was listed
            key = (association.namespace, association.service_account)
            owner = association.owner
            if key not in desired and (owner is None or owner.app != app or owner.target != target):
                continue
            # Only what tells bindings apart: the journal (`refresh=False`) must observe the same value.
            details = {"targetRoleArn": association.target_role_arn} if association.target_role_arn else {}
            found.append(ObservedBinding(
                cloud=Cloud.AWS, id=association.id, namespace=association.namespace,
                service_account=association.service_account,
                identity=AwsRole(role=association.role_arn, arn=association.role_arn),
                owner=owner, managed_by=association.owner_arn, details=details))
        return found

    def _read_all(self, ids: Sequence[str]) -> list[_Association | None]:
        """Each association as this command knows it, those not read yet described several at a time."""
        unique = list(dict.fromkeys(ids))
        with ThreadPoolExecutor(max_workers=DESCRIBE_CONCURRENCY, thread_name_prefix="keyless-describe") as pool:
            return list(pool.map(self._current, unique))

    def _observe_journaled(self, app: str, target: str, bindings: Sequence[Binding],
                           accounts: Sequence[ObservedServiceAccount]) -> list[ObservedBinding]:
        wanted = {b.key: _role_arn(b) for b in bindings}
        # What the journal vouches for, but where the role changes: read what is there now.
        found = [j for j in _journaled(accounts, app, target)
                 if j.key not in wanted or wanted[j.key] == j.identity.describe()]
        vouched = {b.key for b in found}
        unvouched = [key for key in wanted if key not in vouched]
        ids = [s.id for namespace, account in unvouched for s in self._list(namespace, account)]
        return found + self._described_bindings(app, target, set(wanted), ids)

    # ---- apply ----------------------------------------------------------------------------------

    def apply(self, action: Action) -> ActionOutcome:
        """Carry out one cloud action. Refusals come back as a failed outcome; AWS failures that retries
        did not cure raise CloudError."""
        return BindingWrites("AWS", create=self._create, adopt=self._adopt, replace=self._replace,
                             delete=self._delete, update=self._update).apply(action)

    def _replace(self, observed: ObservedBinding, binding: Binding) -> ActionOutcome:
        # One association per service account, so the old one must go before the new one.
        removed = self._delete(observed)
        if not removed.ok:
            return removed
        created = self._create(binding)
        return replace(created, message=f"{removed.message}; {created.message}")

    def _create(self, binding: Binding) -> ActionOutcome:
        role_arn = _role_arn(binding)
        owner = _owner_of(binding)
        address = f"{binding.namespace}/{binding.service_account}"
        token = create_request_token(self.cluster, binding, role_arn, uuid.uuid4().hex)

        def once() -> _Association | None:
            try:
                made = self._eks.create_pod_identity_association(
                    clusterName=self.cluster, namespace=binding.namespace, serviceAccount=binding.service_account,
                    roleArn=role_arn, clientRequestToken=token, tags=ownership_tags(owner))
            except ClientError as exc:
                if error_code(exc) == "ResourceInUseException":
                    return None
                raise
            return _Association.from_api(made["association"])

        created = self._api.call(f"creating the pod identity association for {address}", once,
                             policy=self._role_propagation,
                             retryable=lambda e: is_transient(e) or is_role_not_propagated(e))
        if created is None:
            return self._settle_conflict(binding, role_arn, owner)
        self._keep(created)
        if self._listing is not None:
            self._listing.append(_Summary(created.id, created.namespace, created.service_account))
        return ActionOutcome(True, f"created association {created.id}: {address} -> {role_arn}", created.id,
                             self._settles_in(created))

    def _settle_conflict(self, binding: Binding, role_arn: str, owner: Owner) -> ActionOutcome:
        """Create said the service account is taken: ours after a lost response, identical, or someone's."""
        address = f"{binding.namespace}/{binding.service_account}"
        existing = self._find(binding.namespace, binding.service_account)
        if existing is None:
            return failed(f"{address}: EKS reported an association for this service account but none is listed "
                         "(deleted meanwhile?); plan and apply again")
        refusal = _foreign(existing, owner, self.cluster)
        if refusal is None and existing.role_arn != role_arn and existing.owner == owner:
            refusal = (f"{address} is already bound to {existing.role_arn} by association {existing.id}, made by "
                       "another keyless run since this plan; plan again")
        if refusal is None and existing.role_arn != role_arn:
            refusal = (f"{address} is already bound to {existing.role_arn} by association {existing.id}, which "
                       f"keyless did not make; keyless will not rebind it. Delete it (`aws eks "
                       f"delete-pod-identity-association --cluster-name {self.cluster} --association-id "
                       f"{existing.id}`) or set the awsRole of service {binding.service!r} to that role so keyless "
                       "adopts it")
        if refusal is not None:
            return failed(refusal, existing.id)
        if existing.owner == owner:
            return ActionOutcome(True, f"association {existing.id} already exists: {address} -> {role_arn}",
                                 existing.id, self._settles_in(existing))
        self._tag(existing, owner)
        return ActionOutcome(True, f"adopted existing association {existing.id} (same role): {address} -> "
                             f"{role_arn}", existing.id, self._settles_in(existing))

    def _update(self, observed: ObservedBinding, binding: Binding) -> ActionOutcome:
        role_arn = _role_arn(binding)
        current = self._current(observed.id)
        if current is None:
            return failed(f"{_gone(observed)}; plan again", observed.id)
        refusal = _foreign(current, observed.owner, self.cluster, must_be_tagged=True)
        if refusal is not None:
            return failed(refusal, current.id)
        if current.role_arn != role_arn:
            association_id = current.id
            updated = self._api.call(f"updating association {current.id} ({current.address})",
                                     lambda: self._eks.update_pod_identity_association(
                                         clusterName=self.cluster, associationId=association_id, roleArn=role_arn),
                                     policy=self._role_propagation,
                                     retryable=lambda e: is_transient(e) or is_role_not_propagated(e))
            # The answer is the association as updated; its tags stay as they were.
            current = self._keep(replace(_Association.from_api(updated["association"]), tags=current.tags))
        # The Pod Identity agent keeps serving running pods the credentials it cached for them (up to 3 h): only the
        # pods apply restarts get the new role; say so, for any other pod on the same service account.
        return ActionOutcome(True, f"updated association {current.id}: {current.address} -> {role_arn} (pods not "
                             "restarted keep the old role until the agent renews their credentials, up to 3 h)",
                             current.id, self._settles_in(current))

    def _delete(self, observed: ObservedBinding) -> ActionOutcome:
        # Read in this command (observe, or here): the plan may be old, and keyless deletes only what it can see
        # is its own now.
        current = self._current(observed.id)
        if current is None:
            return ActionOutcome(True, f"{_gone(observed)} already", observed.id)
        refusal = _foreign(current, observed.owner, self.cluster, must_be_tagged=True)
        if refusal is not None:
            return failed(refusal, current.id)

        def once() -> None:
            try:
                self._eks.delete_pod_identity_association(clusterName=self.cluster, associationId=current.id)
            except ClientError as exc:
                # A retry after a lost response finds it gone: that is the outcome we wanted.
                if error_code(exc) != "ResourceNotFoundException":
                    raise

        self._api.call(f"deleting association {current.id} ({current.address})", once)
        self._forget(current.id)
        return ActionOutcome(True, f"deleted association {current.id}: {current.address} (was {current.role_arn})",
                             current.id, 0.0)

    def _adopt(self, observed: ObservedBinding, binding: Binding) -> ActionOutcome:
        role_arn = _role_arn(binding)
        owner = _owner_of(binding)
        current = self._current(observed.id)
        if current is None:
            return failed(f"{_gone(observed)}; plan again", observed.id)
        refusal = _foreign(current, owner, self.cluster)
        if refusal is None and current.role_arn != role_arn:
            refusal = (f"{current.address}: association {current.id} is now bound to {current.role_arn}, not "
                       f"{role_arn} as planned; plan again")
        if refusal is not None:
            return failed(refusal, current.id)
        if current.owner != owner:
            self._tag(current, owner)
        return ActionOutcome(True, f"adopted association {current.id}: {current.address} -> {role_arn}", current.id,
                             self._settles_in(current))


def _gone(observed: ObservedBinding) -> str:
    return f"{observed.namespace}/{observed.service_account}: association {observed.id} is gone"


def _foreign(
    association: _Association, owner: Owner | None, cluster: str, *, must_be_tagged: bool = False
) -> str | None:
    """Why keyless must not touch this association on behalf of `owner`, or None when it may.

    `must_be_tagged`: the association has to carry `owner`'s tags already (update, delete), rather than
    merely not belong to anyone else (adopt, settling a create conflict)."""
    if association.owner_arn is not None:
        return (f"{association.address}: association {association.id} is owned by {association.owner_arn} "
                "(an EKS add-on); keyless never changes or deletes it")
    current = association.owner
    if current is not None and current != owner:
        return (f"{association.address}: association {association.id} belongs to keyless app {current.app!r}, "
                f"service {current.service!r}, target {current.target!r}; keyless will not take it over")
    if must_be_tagged and (current is None or current != owner):
        return (f"{association.address}: association {association.id} no longer carries keyless's ownership tags "
                f"(someone changed it); keyless will not touch it. Inspect it with `aws eks "
                f"describe-pod-identity-association --cluster-name {cluster} --association-id {association.id}`")
    return None


def _trust_issue(role: _Role, who: str, service: str | None) -> PreflightIssue | None:
    statement = json.dumps(trust_statement(), indent=2)
    where = (f"the trust policy of role {role.name!r} (IAM console > Roles > {role.name} > Trust relationships, "
             f"or `aws iam update-assume-role-policy --role-name {role.name} --policy-document file://trust.json`)")
    try:
        finding = check_trust_policy(role.trust)
    except ValueError as exc:
        return PreflightIssue(PreflightSeverity.BLOCKING,
                              f"cannot read the trust policy of role {role.name!r} ({who}): {exc}",
                              f"make sure {where} is valid JSON and contains:\n{statement}", service)
    if finding.denied:
        return PreflightIssue(
            PreflightSeverity.BLOCKING,
            f"the trust policy of role {role.name!r} ({who}) denies {', '.join(finding.denied)} to "
            f"{POD_IDENTITY_SERVICE}",
            f"remove or narrow the Deny statement in {where}, and make sure it contains:\n{statement}", service)
    if finding.missing:
        return PreflightIssue(
            PreflightSeverity.BLOCKING,
            f"the trust policy of role {role.name!r} ({who}) does not allow {POD_IDENTITY_SERVICE} "
            f"{' and '.join(finding.missing)}; EKS Pod Identity needs both {' and '.join(TRUST_ACTIONS)}",
            f"add this statement to {where}:\n{statement}", service)
    if finding.conditional:
        return PreflightIssue(
            PreflightSeverity.WARNING,
            f"the trust policy of role {role.name!r} ({who}) allows {', '.join(finding.conditional)} to "
            f"{POD_IDENTITY_SERVICE} only under conditions keyless does not evaluate",
            "make sure the conditions hold for this cluster, namespace and service account", service)
    return None
