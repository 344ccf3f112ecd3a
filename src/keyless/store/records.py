"""What the store hands out and takes in: small immutable values, never live database rows."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class Role(enum.StrEnum):
    """What an API token may do; each role may do everything the ones before it may."""

    VIEWER = "viewer"      # read everything
    DEPLOYER = "deployer"  # change connections, plan and deploy
    ADMIN = "admin"        # targets, apps, tokens

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


class DeployStatus(enum.StrEnum):
    PLANNED = "planned"          # a plan to review; nothing applied, holds no lock
    PLANNING = "planning"        # holds the app's lock
    APPLYING = "applying"        # holds the app's lock
    SUCCEEDED = "succeeded"
    NO_CHANGES = "no-changes"
    FAILED = "failed"
    BLOCKED = "blocked"          # a preflight check or a plan blocker stopped it before any change
    INTERRUPTED = "interrupted"  # the server stopped while it ran; the next deploy converges

    @property
    def active(self) -> bool:
        return self in (DeployStatus.PLANNING, DeployStatus.APPLYING)

    @property
    def finished(self) -> bool:
        return self not in (DeployStatus.PLANNED, DeployStatus.PLANNING, DeployStatus.APPLYING)


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    type: str
    settings: dict[str, str]


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    name: str
    kind: str
    connections: tuple[ConnectionRecord, ...] = ()

    def connection(self, type_: str) -> ConnectionRecord | None:
        return next((c for c in self.connections if c.type == type_), None)


@dataclass(frozen=True, slots=True)
class AppRecord:
    name: str
    target_name: str | None
    porter_yaml: str
    revision: int
    created_at: dt.datetime
    updated_at: dt.datetime
    services: tuple[ServiceRecord, ...] = ()

    def service(self, name: str) -> ServiceRecord | None:
        return next((s for s in self.services if s.name == name), None)


@dataclass(frozen=True, slots=True)
class TargetRecord:
    name: str
    cloud: str
    settings: dict[str, Any]
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class DeployActionRecord:
    seq: int
    service: str
    resource: str
    kind: str
    address: str
    ok: bool
    message: str
    seconds: float
    finished_at: dt.datetime


@dataclass(frozen=True, slots=True)
class DeployRecord:
    id: int
    app: str
    app_revision: int
    target_name: str
    status: DeployStatus
    requested_by: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    plan: dict[str, Any] | None
    plan_text: str | None
    total_actions: int
    message: str | None
    actions: tuple[DeployActionRecord, ...] = field(default=())
    # (done, failed) counted by the database when a listing leaves the actions out
    counts: tuple[int, int] | None = None

    @property
    def done(self) -> int:
        """Actions finished so far (each is recorded as it finishes)."""
        return self.counts[0] if self.counts is not None else len(self.actions)

    @property
    def failed(self) -> int:
        return self.counts[1] if self.counts is not None else sum(1 for a in self.actions if not a.ok)

    @property
    def seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or dt.datetime.now(dt.UTC)
        return (end - self.started_at).total_seconds()


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: int
    name: str
    role: Role
    prefix: str
    created_at: dt.datetime
    created_by: str
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None

    @property
    def actor(self) -> str:
        """How this token's holder appears in the audit log and on deploys."""
        return f"{self.name} (token {self.prefix}…, {self.role.value})"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: int
    at: dt.datetime
    actor: str
    action: str
    subject: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class AppChange:
    """One change of an app, as Store.edit_app writes it: new porter.yaml and services, and/or a new target."""

    action: str  # for the audit log: app.update, connection.attach, ...
    subject: str
    porter_yaml: str | None = None
    services: Sequence[ServiceRecord] | None = None
    target_name: str | None = None
    set_target: bool = False


@dataclass(frozen=True, slots=True)
class HandoverRecord:
    """An app the control plane handed to the keyless operator: where its KeylessApp is, and what it said."""

    app: str
    target_name: str
    namespace: str
    revision: int  # the app's porter.yaml revision the KeylessApp's spec holds
    refresh_interval: str | None
    suspend: bool
    handed_by: str
    handed_at: dt.datetime

    def summary(self) -> dict[str, Any]:
        """What the audit log keeps of a handover."""
        return {"target": self.target_name, "namespace": self.namespace, "revision": self.revision,
                "refreshInterval": self.refresh_interval, "suspend": self.suspend}
