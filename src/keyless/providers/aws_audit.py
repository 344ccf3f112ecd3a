"""Fetching what the AWS audit rules read: role trust and permission policies, and who else uses each role."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import boto3

from keyless import names
from keyless.audit import AuditReport, Finding, IdentityUse, build_report, identity_key
from keyless.audit.aws import AwsPolicy, AwsRoleDocuments, PodIdentityScope, PolicyKind, audit_role
from keyless.audit.iam_actions import ActionCatalog, default_catalog
from keyless.audit.shared import audit_incomplete
from keyless.bindings import Binding
from keyless.clouds import AwsRole, Cloud
from keyless.errors import Denied
from keyless.iam_policy import load_policy
from keyless.ownership import owner_from_tags
from keyless.providers.aws_api import DEFAULT_RETRY, AwsApi
from keyless.providers.retry import RetryPolicy
from keyless.targets import AwsTarget

DESCRIBE_WORKERS = 8  # reading every role and association of a big app one by one would take minutes


@dataclass(frozen=True, slots=True)
class _RoleRead:
    documents: AwsRoleDocuments | None  # None: nothing could be read (the reason is in `problem`)
    problem: str = ""


class AwsAuditor:
    """Reads roles and the cluster's associations through boto3 (standard SDK configuration, the target's region)."""

    def __init__(self, target: AwsTarget, session: boto3.Session | None = None, *,
                 retry: RetryPolicy = DEFAULT_RETRY, catalog: ActionCatalog | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self._catalog = catalog
        # Reads are named after the IAM action they need, so an incomplete audit says which permission is missing.
        self._api = AwsApi(target.region, session, retry=retry, sleep=sleep, clock=clock)
        self._iam = self._api.iam
        self._eks = self._api.eks

    # ---- roles ------------------------------------------------------------------------------------

    def read_role(self, written: str) -> _RoleRead:
        """The role's trust policy and every permission policy (inline, and managed at its default version)."""
        try:
            ref = names.parse_role(written)
        except names.NameRuleError as exc:
            return _RoleRead(None, f"role {written}: {exc.message}")

        try:
            raw: Mapping[str, Any] | None = self._api.get(
                f"iam:GetRole {ref.name}", lambda: self._iam.get_role(RoleName=ref.name)["Role"],
                not_found="NoSuchEntity")
        except Denied as exc:
            return _RoleRead(None, _denied(exc))
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
            except Denied as exc:
                unreadable.append(_denied(exc))
        return _RoleRead(AwsRoleDocuments(ref.name, arn, trust, tuple(policies), tuple(unreadable)))

    def _inline_policies(self, role: str) -> list[AwsPolicy]:
        names_ = self._api.iam_pages(f"iam:ListRolePolicies {role}", self._iam.list_role_policies, "PolicyNames",
                                     RoleName=role)
        found = []
        for name in names_:
            raw = self._api.call(f"iam:GetRolePolicy {role} {name}",
                             partial(self._iam.get_role_policy, RoleName=role, PolicyName=name))
            found.append(AwsPolicy(PolicyKind.INLINE, str(name), load_policy(raw["PolicyDocument"])))
        return found

    def _managed_policies(self, role: str) -> list[AwsPolicy]:
        attached = self._api.iam_pages(f"iam:ListAttachedRolePolicies {role}", self._iam.list_attached_role_policies,
                                       "AttachedPolicies", RoleName=role)
        found = []
        for item in attached:
            arn = str(item["PolicyArn"])
            policy = self._api.call(f"iam:GetPolicy {arn}", partial(self._iam.get_policy, PolicyArn=arn))["Policy"]
            version_id = str(policy.get("DefaultVersionId", ""))
            version = self._api.call(f"iam:GetPolicyVersion {arn} {version_id}",
                                 partial(self._iam.get_policy_version, PolicyArn=arn, VersionId=version_id))
            document = load_policy(version["PolicyVersion"].get("Document"))
            found.append(AwsPolicy(PolicyKind.MANAGED, str(item.get("PolicyName", arn)), document, arn, version_id))
        return found

    # ---- the cluster --------------------------------------------------------------------------------

    def cluster_arn(self) -> str | None:
        try:
            cluster = self._api.get(f"eks:DescribeCluster {self.target.cluster}",
                                    lambda: self._eks.describe_cluster(name=self.target.cluster)["cluster"],
                                    not_found="ResourceNotFoundException")
        except Denied:
            return None
        return None if cluster is None else cluster.get("arn")

    def identity_uses(self, target_name: str) -> list[IdentityUse]:
        """Every association keyless manages for this target on the cluster (any app), with its role."""
        cluster = self.target.cluster
        summaries = self._api.eks_pages(f"eks:ListPodIdentityAssociations {cluster}",
                                        self._eks.list_pod_identity_associations, "associations", clusterName=cluster)
        ids = [str(summary.get("associationId", "")) for summary in summaries]

        def describe(association_id: str) -> IdentityUse | None:
            raw = self._api.get(f"eks:DescribePodIdentityAssociation {association_id}",
                                lambda: self._eks.describe_pod_identity_association(
                                    clusterName=cluster, associationId=association_id)["association"],
                                not_found="ResourceNotFoundException")  # None: deleted since it was listed
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
        except Denied as exc:
            elsewhere, sharing_problem = [], f"{_denied(exc)}: sharing with other apps was not checked"
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


def _denied(exc: Denied) -> str:
    """A read AWS refused, for the AUDIT-INCOMPLETE finding: what was read and AWS's code."""
    return f"{exc.doing} ({exc.code})"
