"""The GCP provider: Workload Identity Federation for GKE, as roles/iam.workloadIdentityUser members on Google
service accounts for the app's Kubernetes service accounts."""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import requests
from google.auth.credentials import Credentials

from keyless import names
from keyless.bindings import Binding
from keyless.clouds import Cloud, GcpIdentity
from keyless.errors import CloudError, KeylessError
from keyless.federation import (
    GKE_METADATA,
    WORKLOAD_IDENTITY_USER_ROLE,
    direct_access_principal,
    parse_workload_identity_member,
    sts_audience,
    workload_identity_member,
    workload_pool,
)
from keyless.ownership import SERVICE_LABEL, Owner, labelled_for
from keyless.plan import Action, ActionKind, ObservedBinding, ObservedServiceAccount, Refresh, Resource
from keyless.providers.base import (
    ActionOutcome,
    PreflightIssue,
    PreflightSeverity,
    failed,
    services_label,
)
from keyless.providers.gcp_api import (
    DEFAULT_RETRY,
    SCOPES,
    GcpApi,
    GoogleApi,
    google_code,
    http_status,
    service_account_path,
)
from keyless.providers.retry import RetryPolicy, call_with_retry
from keyless.targets import GcpTarget

log = logging.getLogger(__name__)

# Policy version 3 is asked for and written back so that conditional bindings (which version 1 cannot carry)
# survive keyless's writes unchanged.
POLICY_VERSION = 3
# A stale etag (409 ABORTED) means another writer got in between: the whole read-modify-write is redone.
CONFLICT_RETRY = RetryPolicy(max_attempts=6, base_delay=0.5, max_delay=5.0, deadline=60.0)
MAX_PARALLEL_ACCOUNTS = 8  # policy writes on different Google service accounts are independent
_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
_JWT = "urn:ietf:params:oauth:token-type:jwt"
_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


def _email(binding: Binding) -> str:
    if not isinstance(binding.identity, GcpIdentity):
        raise CloudError(f"service {binding.service!r}: {binding.identity.describe()} is not a Google service account",
                         "only gcpServiceAccount connections apply to a GCP target")
    return _checked_email(binding.identity.email, f"service {binding.service!r}")


def _checked_email(email: str, where: str) -> str:
    """Emails are checked before they reach a URL: a saved plan or an annotation is not validated like porter.yaml."""
    try:
        return names.parse_service_account_email(email).email
    except names.NameRuleError as exc:
        raise CloudError(f"{where}: {exc.message}", exc.hint) from None


# --- the policy edit (pure) -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberChanges:
    """What keyless changes on one Google service account's policy: members of roles/iam.workloadIdentityUser."""

    add: frozenset[str] = frozenset()
    remove: frozenset[str] = frozenset()

    def __or__(self, other: MemberChanges) -> MemberChanges:
        return MemberChanges(self.add | other.add, self.remove | other.remove)


def _bindings(policy: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = policy.get("bindings") or []
    return [dict(b) for b in raw if isinstance(b, Mapping)]


def workload_identity_members(policy: Mapping[str, Any]) -> set[str]:
    """Members holding roles/iam.workloadIdentityUser without a condition (a conditional grant may not apply)."""
    return {str(m) for b in _bindings(policy) if b.get("role") == WORKLOAD_IDENTITY_USER_ROLE and not b.get("condition")
            for m in b.get("members") or []}


def edit_policy(policy: Mapping[str, Any], changes: MemberChanges) -> dict[str, Any] | None:
    """The policy with `changes` made to the unconditional roles/iam.workloadIdentityUser binding, everything else
    (other roles, conditional bindings, audit configs, the etag) as read; None when nothing would change."""
    current = workload_identity_members(policy)
    if changes.add <= current and not (changes.remove - changes.add) & current:
        return None
    edited = copy.deepcopy(dict(policy))
    bindings = _bindings(edited)
    target = next((b for b in bindings if b.get("role") == WORKLOAD_IDENTITY_USER_ROLE and not b.get("condition")),
                  None)
    if target is None:
        target = {"role": WORKLOAD_IDENTITY_USER_ROLE, "members": []}
        bindings.append(target)
    members = [str(m) for m in target.get("members") or []]
    removing = changes.remove - changes.add
    members = [m for m in members if m not in removing]
    members += sorted(changes.add - set(members))
    target["members"] = members
    edited["bindings"] = [b for b in bindings if b.get("members")]  # Google drops bindings without members
    edited["version"] = max(int(edited.get("version") or 1), POLICY_VERSION if _conditional(edited) else 1)
    return edited


def _conditional(policy: Mapping[str, Any]) -> bool:
    return any(b.get("condition") for b in _bindings(policy))


# --- facts read once per command ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Cluster:
    found: bool
    workload_pool: str = ""
    node_pools: tuple[tuple[str, str], ...] = ()  # (name, workload metadata mode)


class _Conflict(Exception):
    """The policy changed between keyless's read and write (409 ABORTED): read it again and redo the edit."""


class GcpProvider:
    """Workload Identity Federation on one GKE cluster: keyless's members on Google service accounts' IAM policies.

    IAM members carry no marks, so keyless owns a member by its Kubernetes service account: a member
    `serviceAccount:PROJECT.svc.id.goog[NS/KSA]` is the app's when KSA is one of the app's service accounts in the
    target's namespace (declared in porter.yaml, or labelled by keyless for the app and target). No other member
    and no other role is ever changed. Every GKE cluster of a project shares the project's pool, so two targets with
    the same project, namespace and app name share members (see docs)."""

    cloud = Cloud.GCP

    def __init__(
        self,
        target: GcpTarget,
        credentials: Credentials | None = None,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        conflict_retry: RetryPolicy = CONFLICT_RETRY,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.target = target
        self.api = GcpApi(credentials, retry=retry, sleep=sleep, clock=clock, now=now,
                          **({"env": env} if env is not None else {}))
        self.token_audience = workload_pool(target.project)  # the KSA token GKE's metadata server exchanges
        # One accepted exchange is proof enough: no flapping after a first success is modelled for Google STS.
        self.exchange_steady_for = 0.0
        self._conflict_retry = conflict_retry
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._cluster: _Cluster | None = None
        self._project_number: str | None = None
        self._policies: dict[str, dict[str, Any]] = {}  # email -> policy as last read or written in this command
        self._accounts: dict[str, dict[str, Any] | None] = {}  # email -> the service account as read

    def close(self) -> None:
        self.api.close()

    def __enter__(self) -> GcpProvider:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- reads, each at most once per command ------------------------------------------------------

    def _service_account(self, email: str) -> dict[str, Any] | None:
        with self._lock:
            if email in self._accounts:
                return self._accounts[email]
        found = self.api.get(f"reading Google service account {email}", GoogleApi.IAM, service_account_path(email))
        with self._lock:
            self._accounts[email] = found
        return found

    def _cluster_facts(self) -> _Cluster:
        with self._lock:
            if self._cluster is not None:
                return self._cluster
        t = self.target
        raw = self.api.get(f"reading GKE cluster {t.cluster!r}", GoogleApi.CONTAINER,
                           f"v1/projects/{t.project}/locations/{t.location}/clusters/{t.cluster}")
        if raw is None:
            return _Cluster(found=False)  # not cached: it may be created before the next call
        pools = tuple(
            (str(p.get("name", "")),
             str(((p.get("config") or {}).get("workloadMetadataConfig") or {}).get("mode", "")))
            for p in raw.get("nodePools") or [] if isinstance(p, Mapping))
        facts = _Cluster(found=True, workload_pool=str((raw.get("workloadIdentityConfig") or {}).get("workloadPool")
                                                       or ""), node_pools=pools)
        with self._lock:
            self._cluster = facts
        return facts

    def project_number(self) -> str:
        """The project's number (Resource Manager, read once): direct-access principals are spelled with it."""
        with self._lock:
            if self._project_number is not None:
                return self._project_number
        project = self.target.project
        doing = f"reading project {project}"
        # v3 names the project `projects/NUMBER`; v1 (what some private endpoints still serve) has projectNumber.
        raw = (self.api.get(doing, GoogleApi.RESOURCE_MANAGER, f"v3/projects/{project}")
               or self.api.call(doing, "GET", GoogleApi.RESOURCE_MANAGER, f"v1/projects/{project}"))
        name = str(raw.get("name") or "")
        number = name.removeprefix("projects/") if name.startswith("projects/") else str(raw.get("projectNumber") or "")
        if not number.isdigit():
            raise CloudError(f"reading project {project}: Resource Manager answered no project number ({name!r})")
        with self._lock:
            self._project_number = number
        return number

    def _read_policy(self, email: str) -> dict[str, Any]:
        policy = self.api.call(f"reading the IAM policy of {email}", "POST", GoogleApi.IAM,
                               service_account_path(email) + ":getIamPolicy",
                               body={"options": {"requestedPolicyVersion": POLICY_VERSION}})
        with self._lock:
            self._policies[email] = policy
        return policy

    def _policy(self, email: str) -> dict[str, Any]:
        with self._lock:
            cached = self._policies.get(email)
        return cached if cached is not None else self._read_policy(email)

    # ---- resolve and preflight ----------------------------------------------------------------------

    def resolve(self, bindings: Sequence[Binding]) -> tuple[list[Binding], list[PreflightIssue]]:
        """Read each Google service account once: missing or disabled ones block. Fill in each service's
        direct-access principal (the project number is read once)."""
        groups: dict[str, list[Binding]] = {}
        issues: list[PreflightIssue] = []
        for binding in bindings:
            try:
                groups.setdefault(_email(binding), []).append(binding)
            except CloudError as exc:
                issues.append(PreflightIssue(PreflightSeverity.BLOCKING, exc.message, exc.hint, binding.service))
        project = self.target.project
        for email, group in groups.items():
            who, service = services_label(group)
            found = self._service_account(email)
            home = email.partition("@")[2].removesuffix(".iam.gserviceaccount.com")
            if found is None:
                issues.append(PreflightIssue(
                    PreflightSeverity.BLOCKING,
                    f"Google service account {email} ({who}) does not exist",
                    f"create it (`gcloud iam service-accounts create {email.partition('@')[0]} --project {home}`) "
                    "and grant it the roles the service needs, or fix serviceAccountEmail in porter.yaml", service))
            elif found.get("disabled"):
                issues.append(PreflightIssue(
                    PreflightSeverity.BLOCKING,
                    f"Google service account {email} ({who}) is disabled: pods could not get tokens for it",
                    f"gcloud iam service-accounts enable {email} --project {home}", service))
        if issues or not bindings:
            return list(bindings), issues
        number = self.project_number()
        return [replace(b, principal=direct_access_principal(number, project, b.namespace, b.service_account))
                for b in bindings], issues

    def preflight(self, bindings: Sequence[Binding]) -> list[PreflightIssue]:
        """The cluster exists and runs Workload Identity with the project's pool; node pools serve pods their
        identity (GKE_METADATA), else pods get the node's identity: a warning, since some pools may not run them."""
        t = self.target
        facts = self._cluster_facts()
        where = f"--location {t.location} --project {t.project}"
        if not facts.found:
            return [PreflightIssue(
                PreflightSeverity.BLOCKING,
                f"GKE cluster {t.cluster!r} was not found in project {t.project}, location {t.location}",
                f"check `cluster`, `location` and `project` of the target (`gcloud container clusters list "
                f"--project {t.project}`)")]
        pool = workload_pool(t.project)
        if facts.workload_pool != pool:
            now = f"uses pool {facts.workload_pool}" if facts.workload_pool else "has Workload Identity off"
            return [PreflightIssue(
                PreflightSeverity.BLOCKING,
                f"GKE cluster {t.cluster!r} {now}; pods can act as Google service accounts only with the workload "
                f"pool {pool}",
                f"gcloud container clusters update {t.cluster} {where} --workload-pool={pool}")]
        issues: list[PreflightIssue] = []
        plain = [name for name, mode in facts.node_pools if mode != GKE_METADATA]
        if plain and bindings:
            issues.append(PreflightIssue(
                PreflightSeverity.WARNING,
                f"node pool(s) {', '.join(plain)} of GKE cluster {t.cluster!r} do not run the GKE metadata server: "
                "pods scheduled there get the node's identity, not their Google service account",
                f"gcloud container node-pools update {plain[0]} --cluster {t.cluster} {where} "
                f"--workload-metadata={GKE_METADATA}"))
        return issues

    # ---- observe ------------------------------------------------------------------------------------

    def observe(self, app: str, target: str, bindings: Sequence[Binding], recorded: Sequence[str] = (),
                accounts: Sequence[ObservedServiceAccount] = (), refresh: Refresh = Refresh.FULL
                ) -> list[ObservedBinding]:
        """One getIamPolicy per Google service account the app uses or used (recorded on its service accounts):
        every workload identity member there for one of the app's service accounts in the target's namespace."""
        emails: dict[str, None] = {}
        for binding in bindings:
            emails[_email(binding)] = None
        for text in recorded:
            try:
                emails[names.parse_service_account_email(text).email] = None
            except names.NameRuleError:
                # Annotations can be edited by anyone with access to the cluster: never let one reach a URL.
                log.warning("ignoring recorded identity %r: not a Google service account email", text)
        owners = self._owners(app, target, bindings, accounts)
        found: list[ObservedBinding] = []
        for email, policy in self._read_all(list(emails)):
            found += self._members_of(email, policy, owners)
        return found

    def _read_all(self, emails: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
        """Each policy read once (in parallel: 300 services may use 300 accounts); a deleted account has none."""
        def read(email: str) -> tuple[str, dict[str, Any]] | None:
            try:
                return email, self._read_policy(email)
            except CloudError as exc:
                if http_status(exc) == 404:
                    return None
                raise

        if len(emails) <= 1:
            results = [read(e) for e in emails]
        else:
            with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_ACCOUNTS, len(emails)),
                                    thread_name_prefix="keyless-gcp-read") as pool:
                results = list(pool.map(read, emails))
        return [r for r in results if r is not None]

    def _owners(self, app: str, target: str, bindings: Sequence[Binding],
                accounts: Sequence[ObservedServiceAccount]) -> dict[tuple[str, str], Owner]:
        """(namespace, KSA) -> owner, for the app's service accounts: those porter.yaml binds, and those keyless
        labelled for the app and target (how a removed service's member is still found to be the app's)."""
        owners = {(b.namespace, b.service_account): Owner(app, b.service, target) for b in bindings}
        for account in accounts:
            service = account.labels.get(SERVICE_LABEL)
            if service and labelled_for(account.labels, app, target):
                owners.setdefault((account.namespace, account.name), Owner(app, service, target))
        return owners

    def _members_of(self, email: str, policy: Mapping[str, Any],
                    owners: Mapping[tuple[str, str], Owner]) -> list[ObservedBinding]:
        found: list[ObservedBinding] = []
        for member in sorted(workload_identity_members(policy)):
            parsed = parse_workload_identity_member(member)
            if parsed is None or parsed[0] != self.target.project:
                continue
            _, namespace, account = parsed
            owner = owners.get((namespace, account))
            if owner is None:
                continue  # another app's or a hand-made member: not keyless's business
            found.append(ObservedBinding(
                cloud=Cloud.GCP, id=f"{email}:{member}", namespace=namespace, service_account=account,
                identity=GcpIdentity(email), owner=owner, details={"email": email, "member": member}))
        return found

    # ---- apply --------------------------------------------------------------------------------------

    def apply(self, action: Action) -> ActionOutcome:
        """One action; the engine calls apply_all instead, which writes each account's policy once."""
        return self.apply_all([action])[0]

    def apply_all(self, actions: Sequence[Action]) -> list[ActionOutcome]:
        """Carry out the plan's cloud actions with ONE setIamPolicy per Google service account, carrying every
        change of the app on it. Accounts that gain members are written first, then those that only lose some
        (create before delete, as elsewhere). Answers one outcome per action, in order."""
        per_account: dict[str, MemberChanges] = {}
        touched: list[list[str]] = []
        refusals: dict[int, str] = {}
        for index, action in enumerate(actions):
            emails: list[str] = []
            try:
                for email, change in self._changes_of(action):
                    per_account[email] = per_account.get(email, MemberChanges()) | change
                    emails.append(email)
            except KeylessError as exc:
                refusals[index] = exc.message
            touched.append(emails)
        results: dict[str, str] = {}
        errors: dict[str, str] = {}
        adding = [e for e, c in per_account.items() if c.add]
        removing = [e for e, c in per_account.items() if not c.add]
        for wave in (adding, removing):
            self._write_wave(wave, per_account, results, errors)
        outcomes: list[ActionOutcome] = []
        for index, action in enumerate(actions):
            if index in refusals:
                outcomes.append(failed(refusals[index], action.observed.id if action.observed else None))
                continue
            problems = [errors[e] for e in touched[index] if e in errors]
            binding_id = self._binding_id(action)
            if problems:
                outcomes.append(failed("; ".join(problems), binding_id))
            elif action.kind is ActionKind.NOOP:
                outcomes.append(ActionOutcome(True, f"{action.address}: nothing to do", binding_id))
            else:
                # setIamPolicy answers with the policy as written: nothing to wait for here. Whether IAM has
                # propagated it is proven by try_token_exchange before the service's pods restart.
                outcomes.append(ActionOutcome(True, _describe(action, results), binding_id, settles_in=0.0))
        return outcomes

    def _write_wave(self, emails: Sequence[str], per_account: Mapping[str, MemberChanges], results: dict[str, str],
                    errors: dict[str, str]) -> None:
        def write(email: str) -> None:
            try:
                results[email] = self._write_members(email, per_account[email])
            except KeylessError as exc:
                errors[email] = exc.message

        if len(emails) <= 1:
            for email in emails:
                write(email)
            return
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_ACCOUNTS, len(emails)),
                                thread_name_prefix="keyless-gcp-write") as pool:
            list(pool.map(write, emails))

    def _changes_of(self, action: Action) -> list[tuple[str, MemberChanges]]:
        """The member changes one action makes, per account; refusals raise (the plan is damaged or not keyless's)."""
        if action.resource is not Resource.CLOUD_BINDING:
            raise CloudError(f"{action.address}: the GCP provider applies IAM policy bindings, not {action.resource}")
        kind = action.kind
        if kind in (ActionKind.NOOP, ActionKind.ADOPT):
            return []
        changes: list[tuple[str, MemberChanges]] = []
        if kind in (ActionKind.CREATE, ActionKind.REPLACE, ActionKind.UPDATE):
            if action.desired is None:
                raise CloudError(f"{action.address}: a {kind} action needs its desired binding; the plan is damaged",
                                 "plan again")
            want = action.desired
            member = self._member(want.namespace, want.service_account)
            changes.append((_email(want), MemberChanges(add=frozenset({member}))))
        if kind in (ActionKind.DELETE, ActionKind.REPLACE, ActionKind.UPDATE):
            observed = action.observed
            if observed is None:
                raise CloudError(f"{action.address}: a {kind} action needs its observed binding; the plan is "
                                 "damaged", "plan again")
            email, member = self._owned_member(observed)
            if not any(e == email and member in c.add for e, c in changes):
                changes.append((email, MemberChanges(remove=frozenset({member}))))
        return changes

    def _binding_id(self, action: Action) -> str | None:
        want = action.desired
        if want is not None and isinstance(want.identity, GcpIdentity):
            member = workload_identity_member(self.target.project, want.namespace, want.service_account)
            return f"{want.identity.email}:{member}"
        return action.observed.id if action.observed is not None else None

    def _member(self, namespace: str, service_account: str) -> str:
        try:
            names.check_namespace(namespace)
            names.check_dns_label(service_account, "service account name")
        except names.NameRuleError as exc:
            raise CloudError(f"{namespace}/{service_account}: {exc.message}", exc.hint) from None
        return workload_identity_member(self.target.project, namespace, service_account)

    def _owned_member(self, observed: ObservedBinding) -> tuple[str, str]:
        """The account and member an observed binding names, when keyless may remove it: a member of this
        project's pool for a service account the plan recorded as the app's."""
        where = f"{observed.namespace}/{observed.service_account}"
        if observed.owner is None or not isinstance(observed.identity, GcpIdentity):
            raise CloudError(f"{where}: member {observed.id} is not one of the app's; keyless never removes it")
        email = _checked_email(observed.identity.email, where)
        member = self._member(observed.namespace, observed.service_account)
        if observed.details.get("member", member) != member:
            raise CloudError(f"{where}: the observed member {observed.details.get('member')!r} is not this service "
                             "account's in this project's pool; the plan is damaged", "plan again")
        return email, member

    def _write_members(self, email: str, changes: MemberChanges) -> str:
        """Read-modify-write of one account's policy, with the etag read; redone whole on a conflict."""
        def attempt() -> str:
            policy = self._policy(email)
            edited = edit_policy(policy, changes)
            if edited is None:
                return f"the IAM policy of {email} already says so"
            if not policy.get("etag"):
                # Without an etag, setIamPolicy overwrites whatever another writer did meanwhile: never.
                raise CloudError(f"the IAM policy of {email} came without an etag; keyless does not write a policy "
                                 "blindly", "run it again; if it persists, report it")
            try:
                written = self.api.call(f"writing the IAM policy of {email}", "POST", GoogleApi.IAM,
                                        service_account_path(email) + ":setIamPolicy", body={"policy": edited})
            except CloudError as exc:
                if http_status(exc) == 409 or google_code(exc) == "ABORTED":
                    with self._lock:
                        self._policies.pop(email, None)  # read again: someone else wrote since
                    raise _Conflict(exc.message) from exc
                raise
            with self._lock:
                self._policies[email] = written
            return "updated the IAM policy of " + email

        try:
            return call_with_retry(attempt, policy=self._conflict_retry, retryable=lambda e: isinstance(e, _Conflict),
                                   what=f"read-modify-write of {email}", sleep=self._sleep, clock=self._clock)
        except _Conflict as exc:
            raise CloudError(f"{exc} (gave up after other writers kept changing it)",
                             "run it again when the other writers are done") from exc

    # ---- proof ----------------------------------------------------------------------------------------

    def try_token_exchange(self, binding: Binding, assertion: str) -> tuple[bool, str]:
        """Do what GKE's metadata server does for the pod: exchange the Kubernetes token (audience the pool) at
        Google's STS, then ask IAM Credentials for an access token of the Google service account. (True, "")
        when both succeed; (False, why) while IAM has not propagated the member (up to 7 minutes)."""
        email = _email(binding)
        t = self.target
        # RFC 8693 as google-auth's own STS client sends it: form-encoded, snake_case.
        form = {"grant_type": _TOKEN_EXCHANGE, "audience": sts_audience(t.project, t.location, t.cluster),
                "scope": SCOPES[0], "requested_token_type": _ACCESS_TOKEN, "subject_token": assertion,
                "subject_token_type": _JWT}
        with requests.Session() as anonymous:  # STS takes the subject token, not keyless's credentials
            try:
                exchanged = self.api.call(f"exchanging the token of {binding.namespace}/{binding.service_account} at "
                                          "Google STS", "POST", GoogleApi.STS, "v1/token", form=form,
                                          session=anonymous)
            except CloudError as exc:
                if 400 <= http_status(exc) < 500:
                    return False, exc.message
                raise
            federated = str(exchanged.get("access_token") or "")
            try:
                self.api.call(f"getting an access token of {email} as {binding.namespace}/{binding.service_account}",
                              "POST", GoogleApi.IAM_CREDENTIALS, service_account_path(email) + ":generateAccessToken",
                              body={"scope": list(SCOPES), "lifetime": "300s"},
                              headers={"Authorization": f"Bearer {federated}"}, session=anonymous)
            except CloudError as exc:
                if 400 <= http_status(exc) < 500:
                    return False, exc.message
                raise
        return True, ""


def _describe(action: Action, results: Mapping[str, str]) -> str:
    parts: list[str] = []
    if action.desired is not None and action.kind is not ActionKind.DELETE:
        want = action.desired
        parts.append(f"granted {WORKLOAD_IDENTITY_USER_ROLE} on {want.identity.describe()} to "
                     f"{want.namespace}/{want.service_account}")
    if action.observed is not None and action.kind in (ActionKind.DELETE, ActionKind.REPLACE, ActionKind.UPDATE):
        parts.append(f"removed {action.observed.details.get('member', action.observed.id)} from "
                     f"{action.observed.identity.describe()}")
    return "; ".join(parts) or f"{action.address}: nothing to do"
