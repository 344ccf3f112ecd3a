"""Reading IAM policy documents (pure): parsing, statements, action patterns, and what a trust policy allows.

The AWS preflight (is the Pod Identity trust in place?) and the AWS audit rules (what does this role allow?)
both read policies through this module, so the two never disagree on what a document says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from keyless.federation import POD_IDENTITY_SERVICE, TRUST_ACTIONS


def load_policy(document: object) -> Mapping[str, Any]:
    """A policy as AWS hands it out: already parsed, JSON text, or URL-encoded JSON (IAM's raw API)."""
    if isinstance(document, Mapping):
        return document
    if isinstance(document, str):
        text = document.strip()
        if text.startswith("%"):
            text = unquote(text)
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"the policy document is not valid JSON ({exc})") from exc
        if isinstance(parsed, dict):
            return parsed
    raise ValueError("the policy document is not a JSON object")


def as_list(value: object) -> list[Any]:
    """An element that may be one value or a list of them, as a list."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def statements(document: Mapping[str, Any] | None) -> list[tuple[int, Mapping[str, Any]]]:
    """(index, statement) pairs; a single Statement object counts as index 0."""
    if document is None:
        return []
    return [(i, s) for i, s in enumerate(as_list(document.get("Statement"))) if isinstance(s, Mapping)]


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """IAM action and resource patterns: `*` and `?` wildcards, matched case-insensitively."""
    return re.compile(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), re.IGNORECASE)


def covers_action(statement: Mapping[str, Any], action: str) -> bool:
    """Whether the statement's Action (or NotAction) element applies to `action`."""
    if "Action" in statement:
        return any(pattern_regex(str(p)).fullmatch(action) for p in as_list(statement["Action"]))
    if "NotAction" in statement:
        return not any(pattern_regex(str(p)).fullmatch(action) for p in as_list(statement["NotAction"]))
    return False


def principal_covers(principal: object, service: str) -> bool:
    """Whether a Principal element names `service` (or everyone, which includes it)."""
    if principal == "*":
        return True
    if not isinstance(principal, Mapping):
        return False
    # {"AWS": "*"} means everyone, exactly like "*".
    return "*" in as_list(principal.get("AWS")) or service in as_list(principal.get("Service"))


def _trust_statement_covers(statement: Mapping[str, Any], service: str, action: str) -> bool:
    effect = statement.get("Effect")
    if "Principal" in statement:
        principal_ok = principal_covers(statement["Principal"], service)
    elif "NotPrincipal" in statement and effect == "Deny":
        principal_ok = not principal_covers(statement["NotPrincipal"], service)
    else:
        principal_ok = False  # NotPrincipal with Allow grants nothing in a trust policy
    return principal_ok and covers_action(statement, action)


@dataclass(frozen=True, slots=True)
class TrustFinding:
    """What a role's trust policy does with the actions EKS Pod Identity needs."""

    missing: tuple[str, ...] = ()  # no Allow statement grants it
    denied: tuple[str, ...] = ()  # a Deny statement without conditions refuses it
    conditional: tuple[str, ...] = ()  # granted or denied only under conditions keyless does not evaluate

    @property
    def ok(self) -> bool:
        return not self.missing and not self.denied


def check_trust_policy(
    document: object, *, service: str = POD_IDENTITY_SERVICE, actions: Sequence[str] = TRUST_ACTIONS
) -> TrustFinding:
    """Does the trust policy let `service` perform each of `actions`? Raises ValueError if unreadable."""
    found_statements = [s for _, s in statements(load_policy(document))]
    missing: list[str] = []
    denied: list[str] = []
    conditional: list[str] = []
    for action in actions:
        found = {(s.get("Effect"), bool(s.get("Condition"))) for s in found_statements
                 if _trust_statement_covers(s, service, action)}
        if ("Deny", False) in found:
            denied.append(action)
        elif ("Allow", False) not in found and ("Allow", True) not in found:
            missing.append(action)
        elif ("Allow", False) not in found or ("Deny", True) in found:
            conditional.append(action)
    return TrustFinding(tuple(missing), tuple(denied), tuple(conditional))
