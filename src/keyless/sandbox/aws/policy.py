"""Evaluation of IAM role trust policies, enough to decide whether EKS Pod Identity may assume a role."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote


@dataclass(frozen=True)
class AssumeRequest:
    """Who asks to assume a role, which actions it needs, and the request context conditions see."""

    actions: tuple[str, ...]
    service: str | None = None
    principal_arn: str | None = None
    principal_account: str | None = None
    # Condition keys are case-insensitive in IAM, so they are stored lower-cased.
    context: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrustDecision:
    """The verdict for one AssumeRequest: which of its actions the trust policy does not allow."""

    denied: tuple[str, ...]
    explicit_deny: bool

    @property
    def allowed(self) -> bool:
        return not self.denied


def parse_policy(document: object) -> Mapping[str, Any]:
    """Accept a policy as IAM hands it out: a dict, JSON, or URL-encoded JSON (the raw query API)."""
    if isinstance(document, Mapping):
        return document
    if isinstance(document, str):
        text = document if document.lstrip().startswith("{") else unquote(document)
        loaded = json.loads(text)
        if isinstance(loaded, Mapping):
            return loaded
    raise ValueError("the policy document is not a JSON object")


def evaluate_trust(document: object, request: AssumeRequest) -> TrustDecision:
    """Decide each requested action: an explicit Deny wins, otherwise some Allow statement must match."""
    policy = parse_policy(document)
    statements = _as_list(policy.get("Statement"))
    denied: list[str] = []
    explicit = False
    for action in request.actions:
        allow = False
        for statement in statements:
            if not isinstance(statement, Mapping):
                continue
            effect = statement.get("Effect")
            # An unsupported condition must never widen access: it fails Allows and triggers Denys.
            applies = _statement_applies(statement, request, action, unknown_as=effect == "Deny")
            if applies and effect == "Deny":
                explicit = True
                allow = False
                break
            if applies and effect == "Allow":
                allow = True
        if not allow:
            denied.append(action)
    return TrustDecision(denied=tuple(denied), explicit_deny=explicit)


def _as_list(value: object) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [value]


def _strings(value: object) -> list[str]:
    return [str(v) for v in _as_list(value)]


def _glob(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    # IAM wildcards are only * and ?; fnmatch would also treat [...] as a class, which IAM does not.
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE if ignore_case else 0) is not None


def _statement_applies(statement: Mapping[str, Any], request: AssumeRequest, action: str, *, unknown_as: bool) -> bool:
    if "NotPrincipal" in statement:
        # Rare in trust policies and subtle; refusing to reason about it keeps the sandbox strict.
        return unknown_as
    if not _principal_matches(statement.get("Principal"), request):
        return False
    if "Action" in statement:
        if not any(_glob(p, action, ignore_case=True) for p in _strings(statement["Action"])):
            return False
    elif "NotAction" in statement:
        if any(_glob(p, action, ignore_case=True) for p in _strings(statement["NotAction"])):
            return False
    else:
        return False
    verdict = _conditions_hold(statement.get("Condition"), request.context)
    return unknown_as if verdict is None else verdict


def _principal_matches(principal: object, request: AssumeRequest) -> bool:
    if principal == "*":
        return True
    if not isinstance(principal, Mapping):
        return False
    if request.service is not None and request.service in _strings(principal.get("Service")):
        return True
    if request.principal_arn is None:
        return False
    for value in _strings(principal.get("AWS")):
        if value in ("*", request.principal_arn):
            return True
        # Naming an account (bare id or its root) trusts every principal of that account.
        if request.principal_account and value in (
            request.principal_account,
            f"arn:aws:iam::{request.principal_account}:root",
        ):
            return True
    return False


_NEGATED = {"StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "ArnNotEquals", "ArnNotLike"}


def _conditions_hold(conditions: object, context: Mapping[str, str]) -> bool | None:
    """True/False when every condition was understood, None when one used an operator we do not model."""
    if conditions is None:
        return True
    if not isinstance(conditions, Mapping):
        return None
    lowered = {k.lower(): v for k, v in context.items()}
    for raw_operator, block in conditions.items():
        if not isinstance(block, Mapping):
            return None
        operator = str(raw_operator)
        if_exists = operator.endswith("IfExists")
        if if_exists:
            operator = operator[: -len("IfExists")]
        for key, expected in block.items():
            actual = lowered.get(str(key).lower())
            verdict = _condition(operator, actual, _strings(expected), if_exists=if_exists)
            if verdict is None or not verdict:
                return verdict
    return True


def _condition(operator: str, actual: str | None, expected: Sequence[str], *, if_exists: bool) -> bool | None:
    if operator == "Null":
        want_missing = [e.lower() == "true" for e in expected]
        return (actual is None) in want_missing
    known = {
        "StringEquals",
        "StringEqualsIgnoreCase",
        "StringLike",
        "ArnEquals",
        "ArnLike",
        "Bool",
        *_NEGATED,
    }
    if operator not in known:
        return None
    if actual is None:
        # Negated operators hold when the key is absent; positive ones only with ...IfExists.
        return operator in _NEGATED or if_exists
    if operator in ("StringEquals", "StringNotEquals", "ArnEquals", "ArnNotEquals"):
        hit = actual in expected
    elif operator in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
        hit = actual.lower() in (e.lower() for e in expected)
    elif operator == "Bool":
        hit = actual.lower() in (e.lower() for e in expected)
    else:
        hit = any(_glob(e, actual) for e in expected)
    return not hit if operator in _NEGATED else hit


def missing_service_actions(document: object, service: str, actions: Sequence[str]) -> tuple[str, ...]:
    """The actions no Allow statement grants to `service`, conditions left aside.

    This is the shape check EKS makes when an association is created or its role changed: the trust policy
    must name the service principal with the actions it will call. Conditions are only known at assume time.
    """
    statements = [s for s in _as_list(parse_policy(document).get("Statement"))
                  if isinstance(s, Mapping) and s.get("Effect") == "Allow" and "NotPrincipal" not in s]
    request = AssumeRequest(actions=tuple(actions), service=service)
    return tuple(
        action for action in actions
        if not any(_principal_matches(s.get("Principal"), request)
                   and any(_glob(p, action, ignore_case=True) for p in _strings(s.get("Action")))
                   for s in statements)
    )
