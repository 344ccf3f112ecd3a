"""Audit output: text for people, JSON for scripts, SARIF 2.1.0 for code scanning, and plan's one-liners."""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath
from typing import Any

from keyless import clouds
from keyless.audit.model import AuditReport, ConnectionAudit, Finding, FindingSeverity, Rule, summarize
from keyless.audit.rules import ALL_RULES
from keyless.bindings import Binding

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
SRCROOT = "%SRCROOT%"
_SARIF_LEVEL = {FindingSeverity.ERROR: "error", FindingSeverity.WARNING: "warning", FindingSeverity.INFO: "note"}
# GitHub code scanning ranks security alerts by this property (0.1-10): high, medium, low.
_SECURITY_SEVERITY = {FindingSeverity.ERROR: "8.0", FindingSeverity.WARNING: "5.0", FindingSeverity.INFO: "2.0"}


def connection_label(binding: Binding) -> str:
    return f"{clouds.entry(binding.cloud).connection_type} {binding.identity.describe()}"


def _where(binding: Binding) -> str:
    if binding.source is None:
        return ""
    position = binding.source.position
    return f"{binding.source.file}:{position.line}:{position.column}"


def _indent(text: str, prefix: str) -> str:
    return text.replace("\n", "\n" + prefix)


# --- text ---------------------------------------------------------------------------------------


def render_text(report: AuditReport) -> str:
    lines = [f"keyless audit of app {report.app!r} on target {report.target!r} ({report.cloud.value})", ""]
    for connection in report.connections:
        b = connection.binding
        lines.append(f"service {b.service}: {connection_label(b)} -> {b.namespace}/{b.service_account}"
                     + (f"  ({_where(b)})" if b.source else ""))
        if not connection.findings:
            lines.append("  no findings")
        for f in connection.findings:
            pad = " " * 11
            lines.append(f"  {f.severity.value:<8} {f.rule.id}: {f.message}")
            lines.append(f"{pad}at:  {f.location.describe()}")
            lines.append(f"{pad}fix: {_indent(f.fix, pad + '     ')}")
        lines.append("")
    n = len(report.connections)
    lines.append(f"{summarize(report.findings)} ({n} connection{'s' if n != 1 else ''} audited)")
    return "\n".join(lines)


def summary_lines(report: AuditReport, rerun: str) -> list[str]:
    """One line per connection, for plan and apply; `rerun` is the command that shows the details."""
    lines = []
    for connection in report.connections:
        b = connection.binding
        text = f"audit: service {b.service} ({b.identity.describe()}): {connection.summary()}"
        if connection.findings:
            worst = connection.findings[0]  # findings are sorted worst first
            text += f" - {worst.rule.id}: {worst.message}"
        lines.append(text)
    if any(c.findings for c in report.connections):
        lines.append(f"audit: details and fixes: {rerun}")
    return lines


# --- JSON ---------------------------------------------------------------------------------------


def _finding_json(f: Finding) -> dict[str, Any]:
    loc = f.location
    return {
        "rule": f.rule.id, "severity": f.severity.value, "title": f.rule.title, "message": f.message,
        "location": {"identity": loc.identity, "document": loc.document or None, "statement": loc.statement,
                     "sid": loc.sid, "scope": loc.scope, "text": loc.describe()},
        "fix": f.fix,
    }


def _source_json(binding: Binding) -> dict[str, Any] | None:
    if binding.source is None:
        return None
    return {"file": binding.source.file, "line": binding.source.position.line,
            "column": binding.source.position.column}


def _connection_json(c: ConnectionAudit) -> dict[str, Any]:
    b = c.binding
    return {"service": b.service, "connection": connection_label(b), "identity": b.identity.describe(),
            "serviceAccount": f"{b.namespace}/{b.service_account}", "source": _source_json(b),
            "summary": c.summary(), "findings": [_finding_json(f) for f in c.findings]}


def to_json(report: AuditReport) -> dict[str, Any]:
    counts = report.counts()
    return {"app": report.app, "target": report.target, "cloud": report.cloud.value,
            "summary": {s.value: counts[s] for s in FindingSeverity},
            "connections": [_connection_json(c) for c in report.connections]}


# --- SARIF 2.1.0 ----------------------------------------------------------------------------------


def artifact_uri(file: str, root: str | None) -> tuple[str, bool]:
    """(uri, relative to %SRCROOT%?) for porter.yaml: code scanning wants paths relative to the repository."""
    path = PurePosixPath(file)
    if path.is_absolute():
        if root:
            try:
                return path.relative_to(PurePosixPath(root)).as_posix(), True
            except ValueError:
                pass
        return path.as_uri(), False
    return "/".join(p for p in path.parts if p != "."), True


def _rule_descriptor(rule: Rule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "name": "".join(part.capitalize() for part in rule.id.split("-")),
        "shortDescription": {"text": rule.title},
        "fullDescription": {"text": rule.rationale},
        "help": {"text": f"{rule.rationale}\nFix: {rule.fix}",
                 "markdown": f"{rule.rationale}\n\n**Fix:** {rule.fix}\n\nSee docs/AUDIT.md in keyless."},
        "defaultConfiguration": {"level": _SARIF_LEVEL[rule.severity]},
        "properties": {"tags": ["security", "least-privilege", rule.cloud],
                       "security-severity": _SECURITY_SEVERITY[rule.severity], "precision": "high"},
    }


def _fingerprint(binding: Binding, f: Finding) -> str:
    # Stable across edits that move the connection to another line: the alert stays the same alert.
    parts = (f.rule.id, binding.app, binding.target, binding.service, f.location.describe(), f.message)
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def _result(binding: Binding, f: Finding, index: int, root: str | None) -> dict[str, Any]:
    physical: dict[str, Any] = {}
    if binding.source is not None:
        uri, relative = artifact_uri(binding.source.file, root)
        location: dict[str, Any] = {"uri": uri}
        if relative:
            location["uriBaseId"] = SRCROOT
        physical = {"artifactLocation": location,
                    "region": {"startLine": binding.source.position.line,
                               "startColumn": binding.source.position.column}}
    result: dict[str, Any] = {
        "ruleId": f.rule.id,
        "ruleIndex": index,
        "level": _SARIF_LEVEL[f.severity],
        "message": {"text": f"service {binding.service} ({connection_label(binding)}): {f.message}. "
                            f"Where: {f.location.describe()}. Fix: {f.fix}"},
        "locations": [{
            **({"physicalLocation": physical} if physical else {}),
            "logicalLocations": [{"fullyQualifiedName": f.location.describe(), "kind": "resource"}],
        }],
        "partialFingerprints": {"keylessFinding/v1": _fingerprint(binding, f)},
        "properties": {"service": binding.service, "app": binding.app, "target": binding.target,
                       "identity": f.location.identity, "fix": f.fix},
    }
    return result


def to_sarif(report: AuditReport, *, tool_version: str, root: str | None = None) -> dict[str, Any]:
    """A SARIF 2.1.0 log; each result sits on the porter.yaml line of its connection. `root`: the directory
    relative paths are taken from (the repository checkout in CI)."""
    index = {rule.id: i for i, rule in enumerate(ALL_RULES)}
    results = [_result(c.binding, f, index[f.rule.id], root) for c in report.connections for f in c.findings]
    run: dict[str, Any] = {
        "tool": {"driver": {
            "name": "keyless",
            "version": tool_version,
            "semanticVersion": tool_version,
            "rules": [_rule_descriptor(rule) for rule in ALL_RULES],
        }},
        "automationDetails": {"id": f"keyless-audit/{report.target}/"},
        "columnKind": "unicodeCodePoints",
        "results": results,
        "properties": {"app": report.app, "target": report.target, "cloud": report.cloud.value},
    }
    if root and PurePosixPath(root).is_absolute():
        run["originalUriBaseIds"] = {SRCROOT: {"uri": PurePosixPath(root).as_uri().rstrip("/") + "/"}}
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}
