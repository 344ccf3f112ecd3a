"""Least-privilege audit: pure rules over the documents providers fetch, and their text, JSON and SARIF output."""

from keyless.audit.model import AuditReport, ConnectionAudit, Finding, FindingSeverity, Location, Rule, identity_key
from keyless.audit.report import build_report
from keyless.audit.rules import ALL_RULES, RULES_BY_ID
from keyless.audit.shared import IdentityUse

__all__ = [
    "ALL_RULES",
    "RULES_BY_ID",
    "AuditReport",
    "ConnectionAudit",
    "Finding",
    "FindingSeverity",
    "IdentityUse",
    "Location",
    "Rule",
    "build_report",
    "identity_key",
]
