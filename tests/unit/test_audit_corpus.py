"""keyless over public IAM documents: it flags whatever Parliament or Cloudsplaining flags, and no clean control."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from keyless.audit import rules as R
from keyless.audit.aws import AwsPolicy, AwsRoleDocuments, PolicyKind, audit_permissions
from keyless.audit.iam_actions import default_catalog
from keyless.audit.model import Finding, FindingSeverity

CORPUS = Path(__file__).resolve().parents[1] / "data" / "audit-corpus"
DOCUMENTS = sorted(CORPUS.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(path.read_text())
    return entry


def audit(entry: dict[str, Any]) -> list[Finding]:
    role = AwsRoleDocuments("corpus", "arn:aws:iam::123456789012:role/corpus", None,
                            (AwsPolicy(PolicyKind.INLINE, "doc", entry["policy"]),))
    return audit_permissions(role, default_catalog())


def serious(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity.at_least(FindingSeverity.WARNING)]


def test_the_corpus_is_large_enough_and_every_document_names_its_source() -> None:
    assert len(DOCUMENTS) >= 60
    entries = [load(p) for p in DOCUMENTS]
    assert sum(e["expected"]["clean"] for e in entries) >= 10
    assert all(e["source"] and e["peers"] for e in entries)


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.stem)
def test_keyless_agrees_with_the_peers_and_the_expectations(path: Path) -> None:
    entry = load(path)
    findings = audit(entry)
    fired = {f.rule.id for f in findings}
    peers = entry["peers"].values()
    if entry["expected"]["clean"]:
        assert serious(findings) == [], [f"{f.rule.id}: {f.message}" for f in serious(findings)]
        return
    assert set(entry["expected"]["rules"]) <= fired
    if any(p["flags"] for p in peers):
        assert serious(findings), "a peer flags this document and keyless raises nothing above info"
    if any(p["escalation"] for p in peers):
        assert R.AWS_PERM_PRIVESC.id in fired, "a peer calls this escalation and keyless does not"
