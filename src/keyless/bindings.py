"""Desired bindings: for an app on a target, one (service, identity) pair per identity connection. Pure."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from keyless import clouds, names
from keyless.clouds import Cloud, Identity
from keyless.diagnostics import Diagnostic, Position, Severity
from keyless.porter.loader import LoadedApp
from keyless.porter.model import JOB_DEFAULT_NAMES, ServiceType, _Workload
from keyless.targets import AnyTarget

PREDEPLOY = JOB_DEFAULT_NAMES["predeploy"]
INITIAL_DEPLOY = JOB_DEFAULT_NAMES["initialDeploy"]


@dataclass(frozen=True, slots=True)
class Source:
    """Where in porter.yaml a binding was declared, for messages and SARIF."""

    file: str
    position: Position


@dataclass(frozen=True, slots=True)
class Binding:
    """A service's Kubernetes service account bound to one cloud identity on one target."""

    app: str
    service: str
    kind: ServiceType
    target: str
    cloud: Cloud
    namespace: str
    service_account: str
    identity: Identity
    source: Source | None = None
    # The principal the cloud knows the pods as without impersonation, for teams that grant roles to it directly
    # (GKE: principal://.../subject/ns/NS/sa/KSA); filled in by the provider where the cloud has one.
    principal: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """What the cloud keys the binding on: one per service account in a namespace."""
        return (self.namespace, self.service_account)

    def identity_fingerprint(self) -> str:
        """Changes whenever the identity changes, so the pod template annotation triggers a rollout."""
        return hashlib.sha256(f"{self.cloud}|{self.identity.describe()}".encode()).hexdigest()[:16]


def workloads(loaded: LoadedApp) -> list[tuple[str, ServiceType, _Workload, tuple[str | int, ...]]]:
    """Every workload that runs pods: the services, then predeploy and initialDeploy (each a job)."""
    app = loaded.app
    found: list[tuple[str, ServiceType, _Workload, tuple[str | int, ...]]] = [
        (s.name, s.kind, s, ("services", i)) for i, s in enumerate(app.services)
    ]
    if app.predeploy is not None:
        found.append((app.predeploy.name or PREDEPLOY, ServiceType.JOB, app.predeploy, ("predeploy",)))
    if app.initial_deploy is not None:
        found.append((app.initial_deploy.name or INITIAL_DEPLOY, ServiceType.JOB, app.initial_deploy,
                      ("initialDeploy",)))
    return found


def desired_bindings(
    loaded: LoadedApp, app_name: str, target_name: str, target: AnyTarget
) -> tuple[list[Binding], list[Diagnostic]]:
    """The bindings this app wants on this target, and notes on connections for other clouds."""
    cloud = clouds.for_target(target).cloud
    found: list[Binding] = []
    notes: list[Diagnostic] = []
    for service, kind, workload, path in workloads(loaded):
        for index, connection in enumerate(workload.connections):
            entry = clouds.for_connection(connection)
            if entry is None:
                continue  # cloudSql, disk: connections that bind no identity
            position = loaded.document.value_at((*path, "connections", index))
            if entry.cloud is not cloud:
                notes.append(Diagnostic(
                    Severity.NOTE, loaded.file, position,
                    f"{connection.type} connection of service {service!r} does not apply to target "
                    f"{target_name!r} ({cloud.value})", f"it applies when you deploy to a target on {entry.name}"))
                continue
            found.append(Binding(
                app=app_name,
                service=service,
                kind=kind,
                target=target_name,
                cloud=cloud,
                namespace=target.namespace,
                service_account=names.service_account_name(app_name, service),
                identity=entry.identity_of(connection),
                source=Source(loaded.file, position),
            ))
    return found, notes
