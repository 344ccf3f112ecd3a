"""The Plan: typed actions with reasons, computed from desired and observed state; printable and savable."""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from keyless.bindings import Binding, Cloud

PLAN_FORMAT = 1
IDENTITY_ANNOTATION = "keyless.dev/identity"  # on pod templates: changes when the identity does


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


@dataclass(frozen=True, slots=True)
class Owner:
    """What keyless records on an object it creates (tags, labels or a name it reserves)."""

    app: str
    service: str
    target: str


@dataclass(frozen=True, slots=True)
class ObservedBinding:
    """A cloud object that binds a service account to an identity, as a provider found it."""

    cloud: Cloud
    id: str
    namespace: str
    service_account: str
    identity: str  # resolved identity: role ARN, "group/name" of a UAMI, Google account email
    owner: Owner | None = None
    managed_by: str | None = None  # e.g. the ownerArn of an EKS add-on: never touched
    details: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.service_account)


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
            [sorted((_plain(b) for b in self.bindings), key=str),
             sorted((_plain(s) for s in self.service_accounts), key=str),
             sorted((_plain(w) for w in self.workloads), key=str)],
            sort_keys=True, default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(asdict(value), default=lambda o: dict(o) if isinstance(o, Mapping) else str(o)))


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    resource: Resource
    service: str
    address: str  # e.g. "shop/shop-api" or "Deployment shop/shop-api"
    reason: str
    desired: Binding | None = None
    observed: ObservedBinding | None = None
    detail: Mapping[str, str] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return self.kind is not ActionKind.NOOP

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

    # --- saving and loading ---

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "app": self.app,
            "target": self.target,
            "cloud": self.cloud.value,
            "observedDigest": self.observed_digest,
            "summary": self.summary(),
            "actions": [_action_json(a) for a in self.actions],
            "blockers": [{"service": b.service, "message": b.message, "hint": b.hint,
                          "desired": _binding_json(b.desired) if b.desired else None} for b in self.blockers],
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, data: Any) -> Plan:
        """A saved plan; ValueError for anything that is not one (never another exception type)."""
        if not isinstance(data, Mapping):
            raise ValueError("a plan file holds a JSON object")
        if data.get("format") != PLAN_FORMAT:
            raise ValueError(f"unsupported plan format {data.get('format')!r} (this keyless reads {PLAN_FORMAT})")
        try:
            return cls._from_json(data)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"malformed plan ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _from_json(cls, data: Mapping[str, Any]) -> Plan:
        return cls(
            app=str(data["app"]),
            target=str(data["target"]),
            cloud=Cloud(data["cloud"]),
            observed_digest=str(data["observedDigest"]),
            actions=tuple(_action_from_json(a) for a in data["actions"]),
            blockers=tuple(Blocker(service=b["service"], message=b["message"], hint=b.get("hint", ""),
                                   desired=_binding_from_json(b["desired"]) if b.get("desired") else None)
                           for b in data.get("blockers", [])),
            notes=tuple(data.get("notes", [])),
        )


def _action_json(action: Action) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": action.kind.value,
        "symbol": action.kind.symbol,
        "resource": action.resource.value,
        "service": action.service,
        "address": action.address,
        "reason": action.reason,
        "detail": dict(action.detail),
    }
    if action.desired is not None:
        out["desired"] = _binding_json(action.desired)
    if action.observed is not None:
        out["observed"] = _plain(action.observed)
    return out


def _binding_json(binding: Binding) -> dict[str, Any]:
    data: dict[str, Any] = _plain(binding)
    data["identityType"] = type(binding.identity).__name__
    return data


def _binding_from_json(data: Mapping[str, Any]) -> Binding:
    from keyless import bindings as b  # local: only plan files need the reverse mapping
    from keyless.diagnostics import Position
    from keyless.porter.model import ServiceType

    identity_types = {"AwsRole": b.AwsRole, "AzureIdentity": b.AzureIdentity, "GcpIdentity": b.GcpIdentity}
    identity = identity_types[data["identityType"]](**data["identity"])
    source = data.get("source")
    return Binding(
        app=data["app"], service=data["service"], kind=ServiceType(data["kind"]), target=data["target"],
        cloud=Cloud(data["cloud"]), namespace=data["namespace"], service_account=data["service_account"],
        identity=identity,
        source=b.Source(source["file"], Position(**source["position"])) if source else None,
    )


def _action_from_json(data: Mapping[str, Any]) -> Action:
    observed = data.get("observed")
    return Action(
        kind=ActionKind(data["kind"]),
        resource=Resource(data["resource"]),
        service=data["service"],
        address=data["address"],
        reason=data["reason"],
        desired=_binding_from_json(data["desired"]) if data.get("desired") else None,
        observed=ObservedBinding(
            cloud=Cloud(observed["cloud"]), id=observed["id"], namespace=observed["namespace"],
            service_account=observed["service_account"], identity=observed["identity"],
            owner=Owner(**observed["owner"]) if observed.get("owner") else None,
            managed_by=observed.get("managed_by"), details=observed.get("details", {}),
        ) if observed else None,
        detail=data.get("detail", {}),
    )


# --- rendering ---

_COLOURS = {
    ActionKind.CREATE: "green",
    ActionKind.UPDATE: "yellow",
    ActionKind.REPLACE: "magenta",
    ActionKind.DELETE: "red",
    ActionKind.ADOPT: "cyan",
    ActionKind.NOOP: "dim",
}


def render_text(plan: Plan, *, show_noop: bool = False, markup: bool = False) -> str:
    """Terraform-style text; with `markup`, rich colour tags for a terminal."""
    lines = [f"keyless plan for app {plan.app!r} on target {plan.target!r} ({plan.cloud.value})", ""]
    for service in plan.services():
        actions = [a for a in plan.actions if a.service == service and (show_noop or a.changes)]
        if not actions:
            continue
        lines.append(f"  service {service}")
        for action in actions:
            text = "  " + action.line()
            if markup:
                colour = _COLOURS[action.kind]
                text = f"[{colour}]{_escape(text)}[/{colour}]"
            lines.append(text)
    for blocker in plan.blockers:
        text = f"  ! blocked: service {blocker.service}: {blocker.message}"
        if blocker.hint:
            text += f"\n      hint: {blocker.hint}"
        lines.append(f"[bold red]{_escape(text)}[/bold red]" if markup else text)
    lines.extend(f"  note: {_escape(n) if markup else n}" for n in plan.notes)
    if len(lines) > 2:
        lines.append("")
    lines.append(plan.summary())
    return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace("[", "\\[")


# --- planning (pure) ---

def plan_bindings(
    desired: Sequence[Binding],
    observed: Iterable[ObservedBinding],
    *,
    app: str,
    target: str,
    in_place_identity_change: bool,
    services_in_app: Iterable[str],
    marks_adopted: bool = True,
) -> tuple[list[Action], list[Blocker]]:
    """Match desired bindings to what exists; only objects keyless owns for this app and target may change."""
    observed = list(observed)
    by_key: dict[tuple[str, str], list[ObservedBinding]] = {}
    for item in observed:
        by_key.setdefault(item.key, []).append(item)
    consumed: set[str] = set()
    actions: list[Action] = []
    blockers: list[Blocker] = []
    still_declared = set(services_in_app)

    def mine(item: ObservedBinding, service: str | None = None) -> bool:
        o = item.owner
        return (o is not None and item.managed_by is None and o.app == app and o.target == target
                and (service is None or o.service == service))

    for want in desired:
        identity = want.identity.describe()
        address = f"{want.namespace}/{want.service_account}"
        here = by_key.get(want.key, [])
        same = next((o for o in here if o.identity == identity), None)
        owned_here = next((o for o in here if mine(o, want.service)), None)
        if same is not None and same.managed_by is not None:
            blockers.append(Blocker(want.service, f"{address} is bound by {same.managed_by}",
                                    "keyless never changes objects owned by an add-on; remove the connection",
                                    desired=want))
            consumed.add(same.id)
            continue
        if same is not None and mine(same, want.service):
            consumed.add(same.id)
            actions.append(Action(ActionKind.NOOP, Resource.CLOUD_BINDING, want.service, address,
                                  f"bound to {identity}", want, same))
            continue
        if same is not None and same.owner is not None:
            # keyless's own, but for another app or target: taking it over would break that app.
            consumed.add(same.id)
            blockers.append(Blocker(
                want.service,
                f"{address} is bound to {identity} by keyless for app {same.owner.app!r} on target "
                f"{same.owner.target!r}",
                "two apps cannot share a service account: rename one of the services or apps", desired=want))
            continue
        if same is not None and not marks_adopted:
            # The cloud cannot mark it as keyless's (Azure credentials): use it as it is, never delete it.
            consumed.add(same.id)
            actions.append(Action(ActionKind.NOOP, Resource.CLOUD_BINDING, want.service, address,
                                  f"uses the identical binding {same.id} made outside keyless (keyless never "
                                  "deletes it)", want, same))
            continue
        if same is not None:
            consumed.add(same.id)
            actions.append(Action(ActionKind.ADOPT, Resource.CLOUD_BINDING, want.service, address,
                                  f"an identical binding to {identity} exists; keyless takes ownership", want, same))
            continue
        if owned_here is not None:
            consumed.add(owned_here.id)
            if in_place_identity_change:
                actions.append(Action(ActionKind.UPDATE, Resource.CLOUD_BINDING, want.service, address,
                                      f"identity changes from {owned_here.identity} to {identity}", want,
                                      owned_here))
            else:
                actions.append(Action(ActionKind.REPLACE, Resource.CLOUD_BINDING, want.service, address,
                                      f"identity changes from {owned_here.identity} to {identity}", want,
                                      owned_here))
            continue
        foreign = [o for o in here if not mine(o)]
        if foreign and (in_place_identity_change or any(o.identity == identity for o in foreign)):
            # AWS allows one association per service account: someone else's is in the way.
            other = foreign[0]
            consumed.add(other.id)
            owner = "an EKS add-on" if other.managed_by else ("another app" if other.owner else "someone else")
            blockers.append(Blocker(
                want.service,
                f"{address} is already bound to {other.identity} by {owner} (id {other.id})",
                "keyless does not change bindings it does not own: delete that binding, or point the "
                "connection at the same identity so keyless can adopt it", desired=want))
            continue
        moved = next((o for o in observed if mine(o, want.service) and o.id not in consumed), None)
        if moved is not None:
            consumed.add(moved.id)
            actions.append(Action(ActionKind.REPLACE, Resource.CLOUD_BINDING, want.service, address,
                                  f"service account moves from {moved.namespace}/{moved.service_account}",
                                  want, moved))
            continue
        actions.append(Action(ActionKind.CREATE, Resource.CLOUD_BINDING, want.service, address,
                              f"bind to {identity}", want))
    for item in observed:
        if item.id in consumed or not mine(item):
            continue
        assert item.owner is not None
        why = ("connection removed from porter.yaml" if item.owner.service in still_declared
               else "service removed from porter.yaml")
        actions.append(Action(ActionKind.DELETE, Resource.CLOUD_BINDING, item.owner.service,
                              f"{item.namespace}/{item.service_account}", f"{why} (was bound to {item.identity})",
                              None, item))
    return actions, blockers
