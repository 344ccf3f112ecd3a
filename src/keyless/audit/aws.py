"""AWS rules: an IAM role's trust policy and permission policies, as documents, against least privilege."""

from __future__ import annotations

import enum
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from keyless.audit import rules as R
from keyless.audit.iam_actions import PERMISSIONS_MANAGEMENT, ActionCatalog, ActionInfo
from keyless.audit.model import Finding, Location
from keyless.audit.shared import audit_incomplete
from keyless.federation import POD_IDENTITY_SERVICE, TRUST_ACTIONS, trust_statement
from keyless.iam_policy import as_list, covers_action, statements

# The session tags EKS Pod Identity sends that pin a role to one cluster, namespace and service account.
SCOPE_TAGS = ("eks-cluster-arn", "kubernetes-namespace", "kubernetes-service-account")
PASS_ROLE = "iam:passrole"
EXAMPLES = 5  # how many actions a message names before it says "and N more"


class PolicyKind(enum.StrEnum):
    INLINE = "inline"
    MANAGED = "managed"


@dataclass(frozen=True, slots=True)
class AwsPolicy:
    """A permission policy attached to the role: inline, or managed at its default version."""

    kind: PolicyKind
    name: str
    document: Mapping[str, Any]
    arn: str | None = None
    version: str | None = None

    def describe(self) -> str:
        if self.kind is PolicyKind.INLINE:
            return f"inline policy {self.name}"
        version = f" {self.version}" if self.version else ""
        return f"managed policy {self.arn or self.name}{version}"


@dataclass(frozen=True, slots=True)
class AwsRoleDocuments:
    """Everything the rules read about one role, as the provider fetched it."""

    name: str
    arn: str
    trust: Mapping[str, Any] | None
    policies: tuple[AwsPolicy, ...] = ()
    unreadable: tuple[str, ...] = ()  # what could not be read, and why


@dataclass(frozen=True, slots=True)
class PodIdentityScope:
    """Who should be able to use the role: this cluster, namespace and the service accounts bound to it."""

    account: str
    cluster_arn: str
    namespace: str
    service_accounts: tuple[str, ...]


# --- reading policy documents -------------------------------------------------------------------


def _sid(statement: Mapping[str, Any]) -> str | None:
    sid = statement.get("Sid")
    return str(sid) if sid else None


def _principals(value: object) -> list[tuple[str, str]]:
    """("Service", "pods.eks.amazonaws.com"), ("AWS", "arn:..."), ("*", "*") ... from a Principal element."""
    if value == "*":
        return [("*", "*")]
    if not isinstance(value, Mapping):
        return [("?", json.dumps(value))]
    return [(str(kind), str(item)) for kind, items in value.items() for item in as_list(items)]


def _is_pods(principal: tuple[str, str]) -> bool:
    return principal == ("Service", POD_IDENTITY_SERVICE)


def _is_public(principal: tuple[str, str]) -> bool:
    return principal in (("*", "*"), ("AWS", "*"))


def _condition_keys(statement: Mapping[str, Any]) -> set[str]:
    condition = statement.get("Condition")
    if not isinstance(condition, Mapping):
        return set()
    return {str(key).lower() for block in condition.values() if isinstance(block, Mapping) for key in block}


def _examples(items: Sequence[str]) -> str:
    shown = ", ".join(items[:EXAMPLES])
    return shown + (f" and {len(items) - EXAMPLES} more" if len(items) > EXAMPLES else "")


def _json(value: object) -> str:
    return json.dumps(value, indent=2)


# --- trust policy ---------------------------------------------------------------------------------


def scope_condition(scope: PodIdentityScope) -> dict[str, Any]:
    """The Condition block that pins the role to this account, cluster, namespace and service account(s)."""
    accounts: str | list[str] = (scope.service_accounts[0] if len(scope.service_accounts) == 1
                                 else list(scope.service_accounts))
    return {"StringEquals": {
        "aws:SourceAccount": scope.account,
        "aws:RequestTag/eks-cluster-arn": scope.cluster_arn,
        "aws:RequestTag/kubernetes-namespace": scope.namespace,
        "aws:RequestTag/kubernetes-service-account": accounts,
    }}


def _principal_findings(role: AwsRoleDocuments, update: str) -> tuple[list[Finding], list[int]]:
    """Findings about who is trusted, and the indexes of Allow statements that let Pod Identity in."""
    found: list[Finding] = []
    admitting: list[int] = []
    for index, statement in statements(role.trust):
        if statement.get("Effect") != "Allow":
            continue
        location = Location(role.arn, "trust policy", index, _sid(statement))
        if "NotPrincipal" in statement:
            found.append(Finding(
                R.AWS_TRUST_NOTPRINCIPAL,
                f"Allow with NotPrincipal {json.dumps(statement['NotPrincipal'])} trusts every other principal",
                location,
                f"replace NotPrincipal with \"Principal\": {{\"Service\": \"{POD_IDENTITY_SERVICE}\"}} ({update})"))
            continue
        principals = _principals(statement.get("Principal"))
        public = [p for p in principals if _is_public(p)]
        others = [p for p in principals if not _is_pods(p) and not _is_public(p)]
        if public or any(_is_pods(p) for p in principals):
            admitting.append(index)
        conditions = " (under conditions)" if statement.get("Condition") else ""
        if public:
            found.append(Finding(
                R.AWS_TRUST_PUBLIC,
                f"Principal {json.dumps(statement.get('Principal'))} lets any AWS principal assume the "
                f"role{conditions}",
                location,
                f"set \"Principal\": {{\"Service\": \"{POD_IDENTITY_SERVICE}\"}} in this statement ({update})"))
        elif others:
            found.append(Finding(
                R.AWS_TRUST_PRINCIPAL,
                f"the role is also trusted by {_examples([f'{kind} {value}' for kind, value in others])}{conditions}",
                location,
                f"remove {_examples([v for _, v in others])} from the trust policy and give that user its own "
                f"role ({update})"))
    return found, admitting


def audit_trust(role: AwsRoleDocuments, scope: PodIdentityScope | None) -> list[Finding]:
    """Trust-policy rules: who may assume the role, with which actions, under which conditions."""
    if role.trust is None:
        return []
    update = f"aws iam update-assume-role-policy --role-name {role.name} --policy-document file://trust.json"
    found, admitting = _principal_findings(role, update)
    by_index = dict(statements(role.trust))
    # A public statement admits Pod Identity too (and is reported above); the action and scope rules look only
    # at statements that name pods.eks.amazonaws.com, the ones the fix edits.
    pods_statements = [(i, by_index[i]) for i in admitting
                       if any(_is_pods(p) for p in _principals(by_index[i].get("Principal")))]
    missing = [a for a in TRUST_ACTIONS if not any(covers_action(by_index[i], a) for i in admitting)]
    if missing:
        first = pods_statements[0] if pods_statements else None
        statement_text = _json(trust_statement())
        found.append(Finding(
            R.AWS_TRUST_TAGSESSION,
            f"{POD_IDENTITY_SERVICE} is not allowed {' and '.join(missing)}: pods get no credentials",
            Location(role.arn, "trust policy", first[0] if first else None, _sid(first[1]) if first else None),
            f"add this statement to the trust policy ({update}):\n{statement_text}"))
    for index, statement in pods_statements:
        if "NotAction" in statement:
            extra = [f"everything but {json.dumps(statement['NotAction'])}"]
        else:
            wanted = {a.lower() for a in TRUST_ACTIONS}
            extra = [str(a) for a in as_list(statement.get("Action")) if str(a).lower() not in wanted]
        if extra:
            found.append(Finding(
                R.AWS_TRUST_ACTIONS,
                f"{POD_IDENTITY_SERVICE} is also allowed {_examples(extra)}",
                Location(role.arn, "trust policy", index, _sid(statement)),
                f"set \"Action\": [\"sts:AssumeRole\", \"sts:TagSession\"] in this statement ({update})"))
    if scope is not None and pods_statements:
        index, statement = pods_statements[0]
        keys = _condition_keys(statement)
        absent = [k for k in ("aws:SourceAccount", *(f"aws:RequestTag/{tag}" for tag in SCOPE_TAGS))
                  if k.lower() not in keys]
        if absent:
            how = "merge this into the statement's Condition" if statement.get("Condition") else \
                "add this to the statement"
            found.append(Finding(
                R.AWS_TRUST_SCOPE,
                f"the {POD_IDENTITY_SERVICE} statement has no condition on {_examples(absent)}",
                Location(role.arn, "trust policy", index, _sid(statement)),
                f"{how} ({update}):\n\"Condition\": {_json(scope_condition(scope))}"))
    return found


# --- permission policies --------------------------------------------------------------------------


def _expand(patterns: Iterable[str], catalog: ActionCatalog) -> dict[str, ActionInfo]:
    expanded: dict[str, ActionInfo] = {}
    for pattern in patterns:
        for info in catalog.expand(pattern):
            expanded.setdefault(info.action.lower(), info)
    return expanded


def _allowed_patterns(statement: Mapping[str, Any]) -> list[str]:
    return [str(a) for a in as_list(statement.get("Action"))]


def _every_role(resource: str) -> bool:
    """"*", or an ARN pattern that covers every role of an account (arn:aws:iam::123456789012:role/*)."""
    if resource == "*":
        return True
    head, _, tail = resource.partition(":role/")
    return head.startswith("arn:") and ":iam:" in head and tail == "*"


def _arn_hint(infos: Sequence[ActionInfo]) -> str:
    """The ARN formats most of these actions take, so the person knows what to write instead of "*"."""
    counts: Counter[str] = Counter(arn for info in infos for arn in info.arn_formats)
    if not counts:
        return ""
    top = [arn for arn, _ in counts.most_common(3)]
    more = f" (and {len(counts) - len(top)} other kinds)" if len(counts) > len(top) else ""
    return f"; ARNs for these actions look like {', '.join(top)}{more}"


def audit_permissions(role: AwsRoleDocuments, catalog: ActionCatalog) -> list[Finding]:
    """Permission rules over every Allow statement of every inline and managed policy of the role."""
    found: list[Finding] = []
    allows = [(policy, index, statement) for policy in role.policies for index, statement in statements(policy.document)
              if statement.get("Effect") == "Allow"]
    role_passes_roles = any(PASS_ROLE in _expand(_allowed_patterns(s), catalog) for _, _, s in allows)
    escalation = catalog.privilege_escalation()
    for policy, index, statement in allows:
        location = Location(role.arn, policy.describe(), index, _sid(statement))
        edit = (f"aws iam put-role-policy --role-name {role.name} --policy-name {policy.name} "
                "--policy-document file://policy.json" if policy.kind is PolicyKind.INLINE else
                f"aws iam create-policy-version --policy-arn {policy.arn} --policy-document file://policy.json "
                "--set-as-default")
        resources = [str(r) for r in as_list(statement.get("Resource"))]
        if "NotAction" in statement:
            found.append(Finding(
                R.AWS_PERM_NOTACTION,
                f"Allow with NotAction {json.dumps(statement['NotAction'])} grants every other action of every "
                "service",
                location, f"replace NotAction with an Action list of the calls the service makes ({edit})"))
        if "NotResource" in statement:
            found.append(Finding(
                R.AWS_PERM_NOTRESOURCE,
                f"Allow with NotResource {json.dumps(statement['NotResource'])} applies to every other resource",
                location, f"replace NotResource with a Resource list of the ARNs the service uses ({edit})"))
        patterns = _allowed_patterns(statement)
        for pattern in patterns:
            service, _, name = pattern.partition(":")
            if pattern.strip("*") == "" or (name == "*" and "*" not in service and "?" not in service):
                what = "every action of every service" if pattern.strip("*") == "" else f"every {service} action"
                count = len(catalog.expand(pattern))
                found.append(Finding(
                    R.AWS_PERM_WILDCARD_ACTION,
                    f"Action {json.dumps(pattern)} allows {what} ({count} today, and any added later)",
                    location, f"replace {json.dumps(pattern)} with the actions the service calls ({edit})"))
            elif "*" in pattern or "?" in pattern:
                matched = sorted(i.action for i in catalog.expand(pattern))
                found.append(Finding(
                    R.AWS_PERM_ACTION_PATTERN,
                    f"Action {json.dumps(pattern)} matches {len(matched)} actions",
                    location,
                    f"replace it with the ones the service calls, out of: {_examples(matched)} ({edit})"))
        expanded = _expand(patterns, catalog)
        star = "*" in resources
        if star:
            with_arns = sorted((i for i in expanded.values() if i.accepts_resource_arns), key=lambda i: i.action)
            if with_arns:
                conditional = " (under conditions)" if statement.get("Condition") else ""
                found.append(Finding(
                    R.AWS_PERM_RESOURCE_STAR,
                    f"Resource \"*\" with {len(with_arns)} action(s) that accept resource ARNs "
                    f"({_examples([i.action for i in with_arns])}){conditional}",
                    location,
                    f"replace \"*\" with the ARNs of the resources the service uses{_arn_hint(with_arns)} ({edit})"))
        passes_every_role = PASS_ROLE in expanded and any(_every_role(r) for r in resources)
        if passes_every_role:
            found.append(Finding(
                R.AWS_PERM_PASSROLE_STAR,
                f"iam:PassRole on {_examples([r for r in resources if _every_role(r)])} can hand any role to a service",
                location,
                "limit it to the role the service passes, e.g. \"Resource\": \"arn:aws:iam::ACCOUNT:role/NAME\" with "
                "\"Condition\": {\"StringEquals\": {\"iam:PassedToService\": \"SERVICE.amazonaws.com\"}} "
                f"({edit})"))
        # iam:PassRole has its own rule above and takes part in the escalation rule below.
        managing = sorted(i.action for key, i in expanded.items()
                          if i.access_level == PERMISSIONS_MANAGEMENT and key != PASS_ROLE)
        if managing:
            found.append(Finding(
                R.AWS_PERM_PERMISSIONS_MGMT,
                f"allows {len(managing)} permissions-management action(s): {_examples(managing)}",
                location, f"remove them, or limit them to the resources the service owns ({edit})"))
        direct = sorted(i.action for key, i in expanded.items()
                        if key in escalation and i.service == "iam" and key != PASS_ROLE)
        launch = sorted(i.action for key, i in expanded.items() if key in escalation and i.service != "iam")
        paths = [*direct, *(f"{a} with iam:PassRole" for a in launch if role_passes_roles)]
        if paths:
            found.append(Finding(
                R.AWS_PERM_PRIVESC,
                f"can escalate privileges through {_examples(paths)}",
                location, f"remove these actions; they let the pod grant itself more than this role allows ({edit})"))
    return found


def audit_role(role: AwsRoleDocuments, scope: PodIdentityScope | None, catalog: ActionCatalog) -> list[Finding]:
    """Every AWS rule over one role."""
    return [*audit_incomplete(role.arn, role.unreadable), *audit_trust(role, scope),
            *audit_permissions(role, catalog)]
