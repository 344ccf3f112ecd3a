"""Rules for every cloud: one identity used by several services or apps, and an audit that could not see it all."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from keyless.audit import rules as R
from keyless.audit.model import Finding, Location, identity_key
from keyless.bindings import Binding


@dataclass(frozen=True, slots=True)
class IdentityUse:
    """A binding keyless manages on the target, as the provider observed it."""

    identity: str  # spelled like identity_key(): role ARN, "group/name" (lower case), email (lower case)
    app: str  # "" when the cloud cannot say (a GCP member): `service` then says who in words
    service: str
    where: str = ""  # namespace/service account


def shared_identity(bindings: Sequence[Binding], elsewhere: Sequence[IdentityUse]) -> dict[Binding, list[Finding]]:
    """For each binding whose identity other services (of this app or of other apps) also use, one finding.

    `elsewhere` is what keyless manages on the target; the app's own entries there are ignored, because
    porter.yaml (the bindings) says what the app will use once applied.
    """
    apps = {b.app for b in bindings}
    users: dict[str, dict[tuple[str, str], str]] = {}
    for b in bindings:
        users.setdefault(identity_key(b), {})[(b.app, b.service)] = f"{b.namespace}/{b.service_account}"
    for use in elsewhere:
        if use.app in apps:
            continue
        users.setdefault(use.identity, {}).setdefault((use.app, use.service), use.where)
    found: dict[Binding, list[Finding]] = {}
    for b in bindings:
        key = identity_key(b)
        others = [(app, service) for app, service in users.get(key, {}) if (app, service) != (b.app, b.service)]
        if not others:
            continue
        names = [f"service {service}" if app == b.app else (f"app {app} service {service}" if app else service)
                 for app, service in others]
        found[b] = [Finding(
            R.SHARED_IDENTITY,
            f"{b.identity.describe()} is also used by {', '.join(names)}",
            Location(key, f"bindings on target {b.target}"),
            f"give service {b.service} its own identity with only the permissions it needs, and point its "
            "connection in porter.yaml at it")]
    return found


def audit_incomplete(identity: str, unreadable: Sequence[str]) -> list[Finding]:
    """One finding per thing that could not be read: an audit that saw less must not look clean."""
    return [Finding(R.AUDIT_INCOMPLETE, f"could not read {what}", Location(identity),
                    "grant keyless the read permissions listed in docs/AUDIT.md, then audit again")
            for what in unreadable]
