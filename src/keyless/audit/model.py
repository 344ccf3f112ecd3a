"""The audit's values: severities, rules, located findings, and the report for one app on one target."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from keyless.bindings import Binding
from keyless.clouds import Cloud


class FindingSeverity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def at_least(self, threshold: FindingSeverity) -> bool:
        return self.rank >= threshold.rank


_RANK = {FindingSeverity.INFO: 1, FindingSeverity.WARNING: 2, FindingSeverity.ERROR: 3}


@dataclass(frozen=True, slots=True)
class Rule:
    """One check: its stable ID never changes meaning, so CI configuration and SARIF history can name it."""

    id: str
    cloud: str  # "aws", "azure", "gcp", or "any"
    severity: FindingSeverity
    title: str  # one line: what is wrong when the rule fires
    rationale: str  # why it matters
    fix: str  # the general remedy; each finding carries the concrete one


@dataclass(frozen=True, slots=True)
class Location:
    """Where in the cloud the problem sits, precisely enough to go and change it."""

    identity: str  # role ARN, "resourceGroup/name" of a managed identity, Google account email
    document: str = ""  # "trust policy", "inline policy NAME", "role assignment ID", ...
    statement: int | None = None  # 0-based index into the policy's Statement list
    sid: str | None = None
    scope: str | None = None  # Azure assignment scope, GCP resource

    def describe(self) -> str:
        parts = [self.identity]
        if self.document:
            parts.append(self.document)
        if self.statement is not None:
            parts.append(f"Statement[{self.statement}]" + (f" (Sid {self.sid})" if self.sid else ""))
        if self.scope:
            parts.append(f"scope {self.scope}")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Finding:
    rule: Rule
    message: str  # one line, names the concrete thing
    location: Location
    fix: str  # concrete: what to paste or run
    # Set when this finding is less severe than its rule says, because a condition or the resource really limits
    # the grant (the message says which); the rule's own severity otherwise.
    level: FindingSeverity | None = None

    @property
    def severity(self) -> FindingSeverity:
        return self.level or self.rule.severity


def identity_key(binding: Binding) -> str:
    """The identity a binding uses, spelled the same way for every binding that uses it."""
    return binding.identity.spelled_once


@dataclass(frozen=True, slots=True)
class ConnectionAudit:
    """The findings for one connection of porter.yaml (one binding)."""

    binding: Binding
    findings: tuple[Finding, ...]

    def counts(self) -> dict[FindingSeverity, int]:
        return count(self.findings)

    def summary(self) -> str:
        """`clean`, or e.g. `2 errors, 1 warning, 1 info`."""
        return summarize(self.findings)


@dataclass(frozen=True, slots=True)
class AuditReport:
    app: str
    target: str
    cloud: Cloud
    connections: tuple[ConnectionAudit, ...]

    @property
    def findings(self) -> list[Finding]:
        return [f for c in self.connections for f in c.findings]

    def counts(self) -> dict[FindingSeverity, int]:
        return count(self.findings)

    def fails(self, threshold: FindingSeverity | None) -> bool:
        """True when some finding is at or above `threshold` (None: never)."""
        return threshold is not None and any(f.severity.at_least(threshold) for f in self.findings)


def count(findings: Iterable[Finding]) -> dict[FindingSeverity, int]:
    counts = dict.fromkeys(FindingSeverity, 0)
    for finding in findings:
        counts[finding.severity] += 1
    return counts


def summarize(findings: Iterable[Finding]) -> str:
    counts = count(findings)
    parts = []
    for severity in FindingSeverity:
        n = counts[severity]
        if n:
            word = severity.value if n == 1 or severity is FindingSeverity.INFO else f"{severity.value}s"
            parts.append(f"{n} {word}")
    return ", ".join(parts) or "clean"


def sorted_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first, then by rule and place, so output is stable from run to run."""
    return sorted(findings, key=lambda f: (-f.severity.rank, f.rule.id, f.location.describe(), f.message))
