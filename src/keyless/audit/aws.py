"""AWS rules: an IAM role's trust policy and permission policies, as documents, against least privilege."""

from __future__ import annotations

import enum
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from keyless.audit import rules as R
from keyless.audit.aws_statements import (
    USERNAME_VARIABLE,
    Condition,
    effectively_star,
    granted,
    mismatched,
    scoping_conditions,
    self_scoped,
    set_operator_misuse,
    unknown_actions,
    unset_condition_keys,
)
from keyless.audit.escalation import PASS_ROLE, EscalationMethod, open_methods
from keyless.audit.iam_actions import PERMISSIONS_MANAGEMENT, ActionCatalog, ActionInfo
from keyless.audit.model import Finding, FindingSeverity, Location
from keyless.audit.shared import audit_incomplete
from keyless.federation import POD_IDENTITY_SERVICE, TRUST_ACTIONS, trust_statement
from keyless.iam_policy import as_list, covers_action, statements

# The session tags EKS Pod Identity sends that pin a role to one cluster, namespace and service account.
SCOPE_TAGS = ("eks-cluster-arn", "kubernetes-namespace", "kubernetes-service-account")
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


# How far a statement's grant of an action reaches, from least to most: the escalation rule takes, for each action
# a method needs, the widest grant of it in the role.
_SELF, _SCOPED, _OPEN = 1, 2, 3
_LEVEL_OF_REACH = {_SELF: FindingSeverity.INFO, _SCOPED: FindingSeverity.WARNING, _OPEN: FindingSeverity.ERROR}
# Services whose passed role runs code the caller chooses: iam:PassedToService naming one still allows escalation.
_COMPUTE_SERVICES = ("ec2.", "lambda.", "ecs-tasks.", "ecs.", "glue.", "sagemaker.", "codebuild.", "cloudformation.",
                     "datapipeline.", "elasticmapreduce.", "batch.", "apprunner.", "bedrock")


# Actions that only manage how the caller's own IAM user signs in (its MFA device, its password): the access level
# calls some of them permissions management, but they grant no permission, and a pod role has no user to sign in.
_AUTHENTICATION_ONLY = frozenset({"iam:createvirtualmfadevice", "iam:enablemfadevice", "iam:resyncmfadevice",
                                  "iam:deactivatemfadevice", "iam:deletevirtualmfadevice", "iam:changepassword",
                                  "iam:getmfadevice", "iam:listmfadevices"})


@dataclass(frozen=True, slots=True)
class _Grant:
    """One Allow statement, read once: where it is, what it allows and how far that reaches."""

    policy: AwsPolicy
    index: int
    statement: Mapping[str, Any]
    location: Location
    actions: Mapping[str, ActionInfo]
    resources: tuple[str, ...]
    broad: bool  # "*", NotResource, or an ARN that is "*" in all but spelling
    scoping: tuple[Condition, ...]
    self_only: bool

    @property
    def reach(self) -> int:
        if self.self_only:
            return _SELF
        # Named resources do not lower it: the one role or function named may be exactly the privileged one.
        return _SCOPED if self.scoping else _OPEN


def _scoped_by(grant: _Grant) -> str:
    if grant.self_only:
        return f" (only on the caller's own IAM user, {USERNAME_VARIABLE}: a pod role has none)"
    if grant.scoping:
        return f" (scoped by {'; '.join(c.describe() for c in grant.scoping)})"
    return ""


def _lowered(severity: FindingSeverity, grant: _Grant, scoped: FindingSeverity) -> FindingSeverity | None:
    """Self-scoped grants are info; grants under a scoping condition drop to `scoped`; None keeps the rule's."""
    if grant.self_only:
        return FindingSeverity.INFO
    if grant.scoping and scoped.rank < severity.rank:
        return scoped
    return None


def _grants(role: AwsRoleDocuments, catalog: ActionCatalog) -> list[_Grant]:
    found: list[_Grant] = []
    for policy in role.policies:
        for index, statement in statements(policy.document):
            if statement.get("Effect") != "Allow":
                continue
            actions = granted(statement, catalog)
            resources = tuple(str(r) for r in as_list(statement.get("Resource")))
            broad = ("NotResource" in statement or "*" in resources
                     or any(effectively_star(r, actions.values()) for r in resources))
            found.append(_Grant(policy, index, statement, Location(role.arn, policy.describe(), index, _sid(statement)),
                                actions, resources, broad, tuple(scoping_conditions(statement)),
                                self_scoped(statement)))
    return found


def _denied(role: AwsRoleDocuments, catalog: ActionCatalog) -> set[str]:
    """Actions an unconditional Deny on every resource takes away, whatever the Allow statements say."""
    denied: set[str] = set()
    for policy in role.policies:
        for _, statement in statements(policy.document):
            if (statement.get("Effect") == "Deny" and not statement.get("Condition")
                    and "*" in as_list(statement.get("Resource"))):
                denied.update(granted(statement, catalog))
    return denied


def _edit(role: AwsRoleDocuments, policy: AwsPolicy) -> str:
    if policy.kind is PolicyKind.INLINE:
        return (f"aws iam put-role-policy --role-name {role.name} --policy-name {policy.name} "
                "--policy-document file://policy.json")
    return (f"aws iam create-policy-version --policy-arn {policy.arn} --policy-document file://policy.json "
            "--set-as-default")


def _statement_findings(grant: _Grant, catalog: ActionCatalog, edit: str) -> list[Finding]:
    """Every rule that looks at one Allow statement on its own."""
    found: list[Finding] = []
    statement, location, expanded = grant.statement, grant.location, grant.actions
    resources = list(grant.resources)
    where = _scoped_by(grant)
    if "NotAction" in statement:
        found.append(Finding(
            R.AWS_PERM_NOTACTION,
            f"Allow with NotAction {json.dumps(statement['NotAction'])} grants every other action of every "
            f"service: {len(expanded)} today (what they allow is reported by the other rules)",
            location, f"replace NotAction with an Action list of the calls the service makes ({edit})"))
    if "NotResource" in statement:
        found.append(Finding(
            R.AWS_PERM_NOTRESOURCE,
            f"Allow with NotResource {json.dumps(statement['NotResource'])} applies to every other resource",
            location, f"replace NotResource with a Resource list of the ARNs the service uses ({edit})"))
    for pattern in _allowed_patterns(statement):
        service, _, name = pattern.partition(":")
        if pattern.strip("*") == "" or (name == "*" and "*" not in service and "?" not in service):
            what = "every action of every service" if pattern.strip("*") == "" else f"every {service} action"
            count = len(catalog.expand(pattern))
            found.append(Finding(
                R.AWS_PERM_WILDCARD_ACTION,
                f"Action {json.dumps(pattern)} allows {what} ({count} today, and any added later){where}",
                location, f"replace {json.dumps(pattern)} with the actions the service calls ({edit})",
                _lowered(R.AWS_PERM_WILDCARD_ACTION.severity, grant, FindingSeverity.ERROR)))
        elif "*" in pattern or "?" in pattern:
            matched = sorted(i.action for i in catalog.expand(pattern))
            if matched:
                found.append(Finding(
                    R.AWS_PERM_ACTION_PATTERN,
                    f"Action {json.dumps(pattern)} matches {len(matched)} actions",
                    location,
                    f"replace it with the ones the service calls, out of: {_examples(matched)} ({edit})"))
    for pattern, near in unknown_actions(statement, catalog):
        hint = f"; did you mean {' or '.join(near)}?" if near else ""
        found.append(Finding(
            R.AWS_PERM_UNKNOWN_ACTION,
            f"{json.dumps(pattern)} is not an action AWS has: the statement grants nothing for it{hint}",
            location, f"correct or remove {json.dumps(pattern)} ({edit})"))
    # iam:PassRole has a rule of its own just below.
    arn_actions = sorted((i for k, i in expanded.items()
                          if i.accepts_resource_arns and k != PASS_ROLE and k not in _AUTHENTICATION_ONLY),
                         key=lambda i: i.action)
    if "*" in resources and arn_actions:
        found.append(Finding(
            R.AWS_PERM_RESOURCE_STAR,
            f"Resource \"*\" with {len(arn_actions)} action(s) that accept resource ARNs "
            f"({_examples([i.action for i in arn_actions])}){where}",
            location,
            f"replace \"*\" with the ARNs of the resources the service uses{_arn_hint(arn_actions)} ({edit})",
            _lowered(R.AWS_PERM_RESOURCE_STAR.severity, grant, FindingSeverity.INFO)))
    starlike = [r for r in resources if r != "*" and effectively_star(r, arn_actions)]
    if starlike and arn_actions:
        found.append(Finding(
            R.AWS_PERM_RESOURCE_WILDCARD_ARN,
            f"Resource {_examples(starlike)} matches every such resource in every account and region, like \"*\", "
            f"for {_examples([i.action for i in arn_actions])}{where}",
            location, f"fill in the account, region and resource names the service uses ({edit})",
            _lowered(R.AWS_PERM_RESOURCE_WILDCARD_ARN.severity, grant, FindingSeverity.INFO)))
    for info, formats in mismatched(statement, catalog):
        found.append(Finding(
            R.AWS_PERM_RESOURCE_MISMATCH,
            f"{info.action} acts on {_examples(formats)}, and no Resource of the statement "
            f"({_examples(resources)}) is one: the statement grants nothing for it",
            location, f"give {info.action} an ARN of the form {formats[0]} ({edit})"))
    for condition in set_operator_misuse(statement, catalog):
        found.append(Finding(
            R.AWS_PERM_CONDITION_SET_OPERATOR,
            f"{condition.operator} on {condition.key}, which carries a single value: "
            + ("also true when the key is absent" if condition.operator.lower().startswith("forallvalues")
               else "works, but reads as if the key had several values"),
            location, f"use {condition.operator.split(':', 1)[1]} instead ({edit})"))
    for condition, offered in unset_condition_keys(statement, list(expanded.values())[:2000]):
        hint = f"; these actions set {_examples(offered)}" if offered else ""
        found.append(Finding(
            R.AWS_PERM_CONDITION_KEY,
            f"no action of the statement sets {condition.key}, so \"{condition.describe()}\" never holds "
            f"(or, negated or IfExists, always holds){hint}",
            location, f"test a key these actions set, or a global aws: key ({edit})"))
    if (PASS_ROLE in expanded and any(_every_role(r) for r in resources)) or (
            PASS_ROLE in expanded and "NotResource" in statement):
        services = [v for c in grant.scoping if c.key.lower() == "iam:passedtoservice" for v in c.values]
        level = None
        if services:
            compute = any(v.lower().startswith(_COMPUTE_SERVICES) for v in services)
            level = FindingSeverity.WARNING if compute else FindingSeverity.INFO
        elif grant.scoping:
            level = FindingSeverity.WARNING
        found.append(Finding(
            R.AWS_PERM_PASSROLE_STAR,
            f"iam:PassRole on {_examples([r for r in resources if _every_role(r)] or ['every resource'])} can hand "
            f"any role to a service{where}",
            location,
            "limit it to the role the service passes, e.g. \"Resource\": \"arn:aws:iam::ACCOUNT:role/NAME\" with "
            "\"Condition\": {\"StringEquals\": {\"iam:PassedToService\": \"SERVICE.amazonaws.com\"}} "
            f"({edit})", _lowered(FindingSeverity.ERROR, grant, level) if level else
            (FindingSeverity.INFO if grant.self_only else None)))
    managing = sorted(i.action for key, i in expanded.items()
                      if i.access_level == PERMISSIONS_MANAGEMENT and key != PASS_ROLE
                      and key not in _AUTHENTICATION_ONLY)
    if managing:
        found.append(Finding(
            R.AWS_PERM_PERMISSIONS_MGMT,
            f"allows {len(managing)} permissions-management action(s): {_examples(managing)}{where}",
            location, f"remove them, or limit them to the resources the service owns ({edit})",
            _lowered(R.AWS_PERM_PERMISSIONS_MGMT.severity, grant, FindingSeverity.INFO)))
    credentials = sorted(i.action for key, i in expanded.items() if key in catalog.credentials_exposure())
    if credentials:
        found.append(Finding(
            R.AWS_PERM_CREDENTIALS,
            f"allows {len(credentials)} action(s) that return credentials: {_examples(credentials)}{where}",
            location, f"remove them unless the service needs them ({edit})",
            _lowered(R.AWS_PERM_CREDENTIALS.severity, grant, FindingSeverity.INFO)))
    return found


def _escalation_findings(role: AwsRoleDocuments, grants: Sequence[_Grant], denied: set[str]) -> list[Finding]:
    """One finding per statement and level, naming every escalation method the role's grants open together."""
    widest: dict[str, _Grant] = {}
    for grant in grants:
        for key in grant.actions:
            if key not in denied and (key not in widest or grant.reach > widest[key].reach):
                widest[key] = grant
    grouped: dict[tuple[int, FindingSeverity], list[EscalationMethod]] = {}
    anchors: dict[int, _Grant] = {}
    for method in open_methods(set(widest)):
        reach = min(widest[a].reach for a in method.needs)
        key_action = min(method.actions)
        anchor = widest[key_action]
        anchors[id(anchor)] = anchor
        grouped.setdefault((id(anchor), _LEVEL_OF_REACH[reach]), []).append(method)
    found: list[Finding] = []
    for (anchor_id, level), methods in grouped.items():
        anchor = anchors[anchor_id]
        named = [f"{m.name} ({' + '.join(sorted(widest[a].actions[a].action for a in m.needs))}: {m.explanation})"
                 for m in methods]
        limited = {FindingSeverity.WARNING: " (every grant it needs is limited by a condition)",
                   FindingSeverity.INFO: f" (one grant it needs is only on the caller's own IAM user, "
                                         f"{USERNAME_VARIABLE}: a pod role has none)"}.get(level, "")
        found.append(Finding(
            R.AWS_PERM_PRIVESC,
            f"can escalate privileges by {len(methods)} method(s): {'; '.join(named)}{limited}",
            anchor.location,
            f"{methods[0].fix} ({_edit(role, anchor.policy)})",
            None if level is FindingSeverity.ERROR else level))
    return found


def audit_permissions(role: AwsRoleDocuments, catalog: ActionCatalog) -> list[Finding]:
    """Permission rules over every Allow statement of every inline and managed policy of the role."""
    grants = _grants(role, catalog)
    found = [f for grant in grants for f in _statement_findings(grant, catalog, _edit(role, grant.policy))]
    return [*found, *_escalation_findings(role, grants, _denied(role, catalog))]


def audit_role(role: AwsRoleDocuments, scope: PodIdentityScope | None, catalog: ActionCatalog) -> list[Finding]:
    """Every AWS rule over one role."""
    return [*audit_incomplete(role.arn, role.unreadable), *audit_trust(role, scope),
            *audit_permissions(role, catalog)]
