"""Fetching what the AWS audit rules read: role trust and permission policies, and who else uses each role."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from keyless import names
from keyless.audit import AuditReport, Finding, IdentityUse, build_report, identity_key
from keyless.audit.aws import AwsPolicy, AwsRoleDocuments, PodIdentityScope, PolicyKind, audit_role
from keyless.audit.iam_actions import ActionCatalog, default_catalog
from keyless.audit.shared import audit_incomplete
from keyless.bindings import Binding
from keyless.clouds import AwsRole, Cloud
from keyless.ownership import owner_from_tags
from keyless.providers.aws import (
    DEFAULT_RETRY,
    PAGE_SIZE,
    SDK_CONFIG,
    error_code,
    explain,
    is_transient,
    load_policy,
)
from keyless.providers.retry import RetryPolicy, call_with_retry
from keyless.targets import AwsTarget

if TYPE_CHECKING:
    from mypy_boto3_eks import EKSClient
    from mypy_boto3_iam import IAMClient

T = TypeVar("T")

# Reads that keyless's own identity may not be allowed: the audit says what it could not see instead of failing.
_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedException"})
DESCRIBE_WORKERS = 8  # reading every role and association of a big app one by one would take minutes


class _Denied(Exception):
    """A read AWS refused; carries what was being read, for the AUDIT-INCOMPLETE finding."""


@dataclass(frozen=True, slots=True)
class _RoleRead:
    documents: AwsRoleDocuments | None  # None: nothing could be read (the reason is in `problem`)
    problem: str = ""


class AwsAuditor:
    """Reads roles and the cluster's associations through boto3 (standard SDK configuration, the target's region)."""

    def __init__(self, target: AwsTarget, session: boto3.Session | None = None, *,
                 retry: RetryPolicy = DEFAULT_RETRY, catalog: ActionCatalog | None = None) -> None:
        self.target = target
        self._retry = retry
        self._catalog = catalog
        try:
            session = session or boto3.Session()
            self._iam: IAMClient = session.client("iam", region_name=target.region, config=SDK_CONFIG)
            self._eks: EKSClient = session.client("eks", region_name=target.region, config=SDK_CONFIG)
        except BotoCoreError as exc:
            raise explain(exc, "setting up the AWS clients") from exc

    # ---- calling AWS ------------------------------------------------------------------------------

    def _call(self, doing: str, fn: Callable[[], T]) -> T:
        """One read through the retry helper: denied reads raise _Denied, other failures a CloudError."""
        try:
            return call_with_retry(fn, policy=self._retry, retryable=is_transient, what=doing)
        except ClientError as exc:
            if error_code(exc) in _DENIED:
                raise _Denied(f"{doing} ({error_code(exc)})") from exc
            raise explain(exc, doing) from exc
        except BotoCoreError as exc:
            raise explain(exc, doing) from exc

    def _pages(self, doing: str, fetch: Callable[[dict[str, Any]], Mapping[str, Any]], key: str) -> list[Any]:
        """Every item of an IAM listing (Marker / IsTruncated)."""
        items: list[Any] = []
        kwargs: dict[str, Any] = {}
        while True:
            page = self._call(doing, lambda: fetch(dict(kwargs)))
            items += list(page.get(key, []))
            marker = page.get("Marker")
            if not page.get("IsTruncated") or not marker:
                return items
            kwargs["Marker"] = marker

    # ---- roles ------------------------------------------------------------------------------------

    def read_role(self, written: str) -> _RoleRead:
        """The role's trust policy and every permission policy (inline, and managed at its default version)."""
        try:
            ref = names.parse_role(written)
        except names.NameRuleError as exc:
            return _RoleRead(None, f"role {written}: {exc.message}")

        def get() -> Mapping[str, Any] | None:
            try:
                return self._iam.get_role(RoleName=ref.name)["Role"]
            except ClientError as exc:
                if error_code(exc) == "NoSuchEntity":
                    return None
                raise

        try:
            raw = self._call(f"iam:GetRole {ref.name}", get)
        except _Denied as exc:
            return _RoleRead(None, str(exc))
        if raw is None:
            return _RoleRead(None, f"role {written}: it does not exist in the account keyless runs in")
        arn = str(raw["Arn"])
        if ref.is_arn and arn != written:
            # GetRole takes a name; a same-named role of the home account is not the one porter.yaml means.
            return _RoleRead(None, f"role {written}: it is not in the account keyless runs in ({arn} is)")
        unreadable: list[str] = []
        trust: Mapping[str, Any] | None = None
        try:
            trust = load_policy(raw.get("AssumeRolePolicyDocument"))
        except ValueError as exc:
            unreadable.append(f"the trust policy of {arn}: {exc}")
        policies: list[AwsPolicy] = []
        for read in (self._inline_policies, self._managed_policies):
            try:
                policies += read(ref.name)
            except _Denied as exc:
                unreadable.append(str(exc))
        return _RoleRead(AwsRoleDocuments(ref.name, arn, trust, tuple(policies), tuple(unreadable)))

    def _inline_policies(self, role: str) -> list[AwsPolicy]:
        names_ = self._pages(f"iam:ListRolePolicies {role}",
                             lambda kw: self._iam.list_role_policies(RoleName=role, **kw), "PolicyNames")
        found = []
        for name in names_:
            raw = self._call(f"iam:GetRolePolicy {role} {name}",
                             partial(self._iam.get_role_policy, RoleName=role, PolicyName=name))
            found.append(AwsPolicy(PolicyKind.INLINE, str(name), load_policy(raw["PolicyDocument"])))
        return found

    def _managed_policies(self, role: str) -> list[AwsPolicy]:
        attached = self._pages(f"iam:ListAttachedRolePolicies {role}",
                               lambda kw: self._iam.list_attached_role_policies(RoleName=role, **kw),
                               "AttachedPolicies")
        found = []
        for item in attached:
            arn = str(item["PolicyArn"])
            policy = self._call(f"iam:GetPolicy {arn}", partial(self._iam.get_policy, PolicyArn=arn))["Policy"]
            version_id = str(policy.get("DefaultVersionId", ""))
            version = self._call(f"iam:GetPolicyVersion {arn} {version_id}",
                                 partial(self._iam.get_policy_version, PolicyArn=arn, VersionId=version_id))
            document = load_policy(version["PolicyVersion"].get("Document"))
            found.append(AwsPolicy(PolicyKind.MANAGED, str(item.get("PolicyName", arn)), document, arn, version_id))
        return found

    # ---- the cluster --------------------------------------------------------------------------------

    def cluster_arn(self) -> str | None:
        def describe() -> str | None:
            try:
                return self._eks.describe_cluster(name=self.target.cluster)["cluster"].get("arn")
            except ClientError as exc:
                if error_code(exc) == "ResourceNotFoundException":
                    return None
                raise

        try:
            return self._call(f"eks:DescribeCluster {self.target.cluster}", describe)
        except _Denied:
            return None

    def identity_uses(self, target_name: str) -> list[IdentityUse]:
        """Every association keyless manages for this target on the cluster (any app), with its role."""
        ids: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"clusterName": self.target.cluster, "maxResults": PAGE_SIZE}
            if token:
                kwargs["nextToken"] = token
            page = self._call(f"eks:ListPodIdentityAssociations {self.target.cluster}",
                              partial(self._eks.list_pod_identity_associations, **kwargs))
            ids += [s.get("associationId", "") for s in page.get("associations", [])]
            token = page.get("nextToken")
            if not token:
                break

        def describe(association_id: str) -> IdentityUse | None:
            def once() -> Mapping[str, Any] | None:
                try:
                    return self._eks.describe_pod_identity_association(
                        clusterName=self.target.cluster, associationId=association_id)["association"]
                except ClientError as exc:
                    if error_code(exc) == "ResourceNotFoundException":
                        return None  # deleted since it was listed
                    raise

            raw = self._call(f"eks:DescribePodIdentityAssociation {association_id}", once)
            owner = owner_from_tags(raw.get("tags")) if raw else None
            if raw is None or owner is None or owner.target != target_name or raw.get("ownerArn"):
                return None
            return IdentityUse(str(raw.get("roleArn", "")), owner.app, owner.service,
                               f"{raw.get('namespace', '')}/{raw.get('serviceAccount', '')}")

        with ThreadPoolExecutor(max_workers=DESCRIBE_WORKERS, thread_name_prefix="keyless-audit") as pool:
            return [u for u in pool.map(describe, [i for i in ids if i]) if u is not None]

    # ---- the audit ----------------------------------------------------------------------------------

    def audit(self, app: str, target_name: str, bindings: Sequence[Binding]) -> AuditReport:
        """Read each distinct role once, run the rules, and report per connection."""
        catalog = self._catalog or default_catalog()
        distinct = list(dict.fromkeys(_written(b) for b in bindings))
        # Roles are independent reads: a big app's dozens of roles would otherwise be read one by one.
        with ThreadPoolExecutor(max_workers=DESCRIBE_WORKERS, thread_name_prefix="keyless-audit") as pool:
            reads = dict(zip(distinct, pool.map(self.read_role, distinct), strict=True))
        # Fill in the ARNs, so that each binding's identity matches the roleArn of associations.
        resolved = [_with_arn(b, reads[_written(b)]) for b in bindings]
        cluster_arn = self.cluster_arn()
        sharing_problem = ""
        try:
            elsewhere = self.identity_uses(target_name)
        except _Denied as exc:
            elsewhere, sharing_problem = [], f"{exc}: sharing with other apps was not checked"
        per_identity: dict[str, list[Finding]] = {}
        for original, binding in zip(bindings, resolved, strict=True):
            key = identity_key(binding)
            if key in per_identity:
                continue
            read = reads[_written(original)]
            if read.documents is None:
                per_identity[key] = audit_incomplete(key, [read.problem])
                continue
            role = read.documents
            accounts = tuple(sorted({b.service_account for b in resolved if identity_key(b) == key}))
            scope = PodIdentityScope(account=role.arn.split(":")[4], namespace=self.target.namespace,
                                     cluster_arn=cluster_arn or _cluster_arn(role.arn, self.target),
                                     service_accounts=accounts)
            per_identity[key] = [*audit_role(role, scope, catalog),
                                 *(audit_incomplete(key, [sharing_problem]) if sharing_problem else [])]
        return build_report(app, target_name, Cloud.AWS, resolved, per_identity, elsewhere)


def _written(binding: Binding) -> str:
    assert isinstance(binding.identity, AwsRole)
    return binding.identity.arn or binding.identity.role


def _with_arn(binding: Binding, read: _RoleRead) -> Binding:
    if read.documents is None or not isinstance(binding.identity, AwsRole):
        return binding
    return replace(binding, identity=replace(binding.identity, arn=read.documents.arn))


def _cluster_arn(role_arn: str, target: AwsTarget) -> str:
    """The cluster's ARN when DescribeCluster was not allowed: same partition and account as the role."""
    partition, account = role_arn.split(":")[1], role_arn.split(":")[4]
    return f"arn:{partition}:eks:{target.region}:{account}:cluster/{target.cluster}"
