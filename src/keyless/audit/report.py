"""Assembling findings per identity into findings per porter.yaml connection."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from keyless.audit.model import AuditReport, ConnectionAudit, Finding, identity_key, sorted_findings
from keyless.audit.shared import IdentityUse, shared_identity
from keyless.bindings import Binding
from keyless.clouds import Cloud


def build_report(app: str, target: str, cloud: Cloud, bindings: Sequence[Binding],
                 per_identity: Mapping[str, Sequence[Finding]], elsewhere: Sequence[IdentityUse] = ()) -> AuditReport:
    """Each binding gets its identity's findings (an identity two services share is reported at both)."""
    shared = shared_identity(bindings, elsewhere)
    connections = tuple(
        ConnectionAudit(b, tuple(sorted_findings([*per_identity.get(identity_key(b), ()), *shared.get(b, ())])))
        for b in bindings)
    return AuditReport(app=app, target=target, cloud=cloud, connections=connections)
