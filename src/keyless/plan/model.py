"""The Plan as a value: typed actions that carry everything apply needs, and the observed state they came from."""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from keyless.bindings import Binding
from keyless.clouds import Cloud, Identity
from keyless.ownership import Owner


class Refresh(enum.StrEnum):
    """How much of what a plan compares is read back from the cloud rather than taken from keyless's journal (the
    binding ids and identities keyless records on the service accounts it manages)."""

    FULL = "full"  # every binding read back, and the cluster searched for bindings keyless left anywhere (default)
    BOUND = "bound"  # every binding the journal or porter.yaml points at read back, by id where the journal has one
    NONE = "none"  # `--refresh=false`: the journal trusted where reading a binding would cost a call of its own


class ActionKind(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"
    ADOPT = "adopt"
    NOOP = "noop"

    @property
    def symbol(self) -> str:
        return _SYMBOLS[self]


_SYMBOLS = {
    ActionKind.CREATE: "+",
    ActionKind.UPDATE: "~",
    ActionKind.REPLACE: "-/+",
    ActionKind.DELETE: "-",
    ActionKind.ADOPT: "<=",
    ActionKind.NOOP: " ",
}


class Resource(enum.StrEnum):
    """What an action changes; cloud objects first, then the Kubernetes side that depends on them."""

    CLOUD_BINDING = "cloud_binding"
    SERVICE_ACCOUNT = "service_account"
    WORKLOAD = "workload"


# --- what was observed ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ObservedBinding:
    """A cloud object that binds a service account to an identity, as a provider found it."""

    cloud: Cloud
    id: str
    namespace: str
    service_account: str
    identity: Identity  # the identity it binds to, as a typed value
    owner: Owner | None = None
    managed_by: str | None = None  # e.g. the ownerArn of an EKS add-on: never touched
    # What keeps the object from working for this target although it names the identity (an Azure credential
    # trusting another issuer or audience): such a binding is never the same as a desired one.
    mismatch: tuple[str, ...] = ()
    details: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.service_account)

    def binds(self, identity: Identity) -> bool:
        """Whether this object makes the account act as `identity` on this target."""
        return not self.mismatch and self.identity.key == identity.key

    def describe_identity(self) -> str:
        text = self.identity.describe()
        return f"{text} [{'; '.join(self.mismatch)}]" if self.mismatch else text


@dataclass(frozen=True, slots=True)
class ObservedServiceAccount:
    namespace: str
    name: str
    annotations: Mapping[str, str]
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ObservedWorkload:
    namespace: str
    kind: str  # Deployment, CronJob, Job
    name: str
    service: str
    service_account: str | None
    identity_annotation: str | None
    pod_labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Observed:
    bindings: tuple[ObservedBinding, ...] = ()
    service_accounts: tuple[ObservedServiceAccount, ...] = ()
    workloads: tuple[ObservedWorkload, ...] = ()

    def digest(self) -> str:
        """A stable fingerprint of everything observed: a saved plan refuses to apply when it changed."""
        blob = json.dumps(
            [sorted((plain(b) for b in self.bindings), key=str),
             sorted((plain(s) for s in self.service_accounts), key=str),
             sorted((plain(w) for w in self.workloads), key=str)],
            sort_keys=True, default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()


def plain(value: Any) -> Any:
    """A dataclass value as JSON-ready plain data (mappings as dicts, tuples as lists)."""
    return json.loads(json.dumps(asdict(value), default=lambda o: dict(o) if isinstance(o, Mapping) else str(o)))


# --- what apply does ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """The object an action changes: a Kubernetes kind (or the cloud's binding kind), namespace and name."""

    kind: str
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class AccountSpec:
    """The service account as apply writes it: keyless's labels and the identity annotations."""

    labels: Mapping[str, str]
    annotations: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class PodTemplateSettings:
    """What keyless sets on a workload's pod template; a None value removes that key."""

    service_account_name: str | None  # None: leave the template's account as it is
    annotations: Mapping[str, str | None] = field(default_factory=dict)
    labels: Mapping[str, str | None] = field(default_factory=dict)

    def patch(self) -> dict[str, Any]:
        """The pod template fragment (`metadata` and `spec`) these settings amount to."""
        template: dict[str, Any] = {}
        metadata: dict[str, Any] = {}
        if self.annotations:
            metadata["annotations"] = dict(sorted(self.annotations.items()))
        if self.labels:
            metadata["labels"] = dict(sorted(self.labels.items()))
        if metadata:
            template["metadata"] = metadata
        if self.service_account_name is not None:
            template["spec"] = {"serviceAccountName": self.service_account_name}
        return template


@dataclass(frozen=True, slots=True)
class Intent:
    """Identities to record on a service account before a cloud write (clouds whose bindings live on the identity)."""

    account: ObjectRef
    labels: Mapping[str, str]
    identities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Action:
    """One change (or a noop) with everything apply needs in typed fields; `reason` is for people only.

    - cloud binding: `desired` and/or `observed` (what to write, what to change or delete);
    - service account: `account` to apply (None: only strip `remove_annotations`, or delete);
    - workload: `pod_template` to set, then the pods roll.
    A service account action of a bound service also carries `pod_template`, which render mode writes as a patch.
    """

    kind: ActionKind
    resource: Resource
    service: str
    ref: ObjectRef
    reason: str
    desired: Binding | None = None
    observed: ObservedBinding | None = None
    account: AccountSpec | None = None
    remove_annotations: tuple[str, ...] = ()
    pod_template: PodTemplateSettings | None = None
    intent: Intent | None = None  # cloud bindings: recorded before the write, cleared after the service's apply

    @property
    def changes(self) -> bool:
        return self.kind is not ActionKind.NOOP

    @property
    def address(self) -> str:
        """How people read the object: `shop/shop-api`, or `Deployment shop/shop-api` for a workload."""
        where = f"{self.ref.namespace}/{self.ref.name}"
        return f"{self.ref.kind} {where}" if self.resource is Resource.WORKLOAD else where

    def line(self) -> str:
        return f"{self.kind.symbol:>3} {self.resource.value} {self.address}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Blocker:
    """Something the plan cannot do: applying would change an object keyless does not own."""

    service: str
    message: str
    hint: str = ""
    desired: Binding | None = None  # what was wanted there, so a saved plan re-observes the same keys


@dataclass(frozen=True)
class Plan:
    app: str
    target: str
    cloud: Cloud
    actions: tuple[Action, ...]
    observed_digest: str
    blockers: tuple[Blocker, ...] = ()
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # what a person must not miss before applying (an unbinding they may not mean)

    @property
    def changes(self) -> list[Action]:
        return [a for a in self.actions if a.changes]

    def counts(self) -> dict[ActionKind, int]:
        counts = dict.fromkeys(ActionKind, 0)
        for action in self.actions:
            counts[action.kind] += 1
        return counts

    def summary(self) -> str:
        if not self.changes and not self.blockers:
            return "No changes. The cloud and the cluster match porter.yaml."
        c = self.counts()
        parts = [f"{c[ActionKind.CREATE]} to create", f"{c[ActionKind.UPDATE]} to update",
                 f"{c[ActionKind.REPLACE]} to replace", f"{c[ActionKind.DELETE]} to delete",
                 f"{c[ActionKind.ADOPT]} to adopt"]
        text = "Plan: " + ", ".join(parts) + "."
        if self.blockers:
            text += f" {len(self.blockers)} blocked."
        return text

    def services(self) -> list[str]:
        return list(dict.fromkeys(a.service for a in self.actions))

    def principal_of(self, service: str) -> str | None:
        """The principal the service's pods are in the cloud's IAM without impersonation (GKE), when known."""
        return next((a.desired.principal for a in self.actions
                     if a.service == service and a.desired is not None and a.desired.principal), None)

    def wanted_bindings(self) -> list[Binding]:
        """The bindings the plan wants (cloud-binding actions and blockers): what a saved plan re-observes."""
        wanted = [a.desired for a in self.actions if a.resource is Resource.CLOUD_BINDING and a.desired is not None]
        return wanted + [b.desired for b in self.blockers if b.desired is not None]
