"""KeylessApp, the operator's custom resource, as values: its spec parsed, its status computed, its conditions kept.

Pure: the controller (`operator/controller.py`) hands in the object's spec and what the engine planned and applied,
and writes back what these functions return. Conditions follow the Kubernetes API conventions: `type`, `status`
("True"/"False"), `reason` (CamelCase), `message`, `lastTransitionTime` (changed only when `status` flips) and
`observedGeneration`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from keyless.diagnostics import Diagnostic, Position, Severity
from keyless.durations import parse_duration
from keyless.errors import InvalidInput
from keyless.plan import ActionKind, Plan, Resource

__all__ = [
    "DEFAULT_REFRESH_INTERVAL",
    "FINALIZER",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "BindingState",
    "Condition",
    "ConditionType",
    "ConfigMapKeyRef",
    "KeylessAppSpec",
    "KeylessAppState",
    "ObservedCondition",
    "binding_states",
    "keylessapp_manifest",
    "keylessapp_state",
    "merge_conditions",
    "parse_spec",
    "plan_summary",
    "porter_yaml_source",
]

GROUP: Final = "keyless.dev"
VERSION: Final = "v1alpha1"
PLURAL: Final = "keylessapps"
SINGULAR: Final = "keylessapp"
KIND: Final = "KeylessApp"
SHORT_NAMES: Final = ("kapp",)
# The finalizer that keeps a deleted KeylessApp until keyless has removed what it owns for the app.
FINALIZER: Final = "keyless.dev/cleanup"
DEFAULT_REFRESH_INTERVAL: Final = 600.0  # spec.refreshInterval's default, "10m"
MIN_REFRESH_INTERVAL: Final = 10.0  # below this, a fleet's refreshes would be the clouds' whole rate limit

@dataclass(frozen=True, slots=True)
class ConfigMapKeyRef:
    name: str
    key: str


@dataclass(frozen=True, slots=True)
class KeylessAppSpec:
    """What a KeylessApp asks for: one app's porter.yaml (inline or in a ConfigMap) deployed to one target."""

    target: str
    porter_yaml: str | None
    porter_yaml_from: ConfigMapKeyRef | None
    app: str | None
    refresh_interval: float
    suspend: bool


def _spec_error(where: str, field: str, message: str, hint: str = "") -> InvalidInput:
    return InvalidInput([Diagnostic(Severity.ERROR, where, Position(1, 1), f"{field}: {message}", hint)])


def parse_spec(spec: Mapping[str, Any], where: str) -> KeylessAppSpec:
    """Read a KeylessApp's spec (`where` names the object in messages); InvalidInput for anything wrong.

    The CRD's schema already holds types and required fields on a real API server; this is the same check for
    objects that reach the operator some other way, and the rules a schema cannot say (one porter.yaml source)."""
    target = spec.get("target")
    if not isinstance(target, str) or not target.strip():
        raise _spec_error(where, "spec.target", "required: the name of a target in the operator's targets file")
    inline = spec.get("porterYaml")
    source = spec.get("porterYamlFrom")
    if (inline is None) == (source is None):
        raise _spec_error(where, "spec", "give exactly one of porterYaml (the file's text) and "
                          "porterYamlFrom.configMapKeyRef {name, key}")
    if inline is not None and not isinstance(inline, str):
        raise _spec_error(where, "spec.porterYaml", "must be the porter.yaml text (a string)",
                          "in YAML, use a block scalar: `porterYaml: |` then the file indented")
    ref: ConfigMapKeyRef | None = None
    if source is not None:
        key_ref = source.get("configMapKeyRef") if isinstance(source, Mapping) else None
        if not isinstance(key_ref, Mapping) or not all(
                isinstance(key_ref.get(k), str) and key_ref.get(k) for k in ("name", "key")):
            raise _spec_error(where, "spec.porterYamlFrom", "needs configMapKeyRef with a name and a key")
        ref = ConfigMapKeyRef(str(key_ref["name"]), str(key_ref["key"]))
    app = spec.get("app")
    if app is not None and (not isinstance(app, str) or not app):
        raise _spec_error(where, "spec.app", "must be an app name (or left out: porter.yaml's name)")
    raw_interval = spec.get("refreshInterval", "10m")
    try:
        interval = parse_duration(str(raw_interval))
    except ValueError as exc:
        raise _spec_error(where, "spec.refreshInterval", str(exc)) from None
    if interval < MIN_REFRESH_INTERVAL:
        raise _spec_error(where, "spec.refreshInterval", f"{raw_interval} is too short: at least "
                          f"{MIN_REFRESH_INTERVAL:.0f}s (every refresh reads each binding from its cloud)")
    suspend = spec.get("suspend", False)
    if not isinstance(suspend, bool):
        raise _spec_error(where, "spec.suspend", "must be true or false")
    return KeylessAppSpec(target.strip(), inline, ref, app, interval, suspend)


def porter_yaml_source(namespace: str, name: str, spec: KeylessAppSpec) -> str:
    """The name porter.yaml's diagnostics carry (their FILE), so that a person finds the text they point into."""
    if spec.porter_yaml_from is not None:
        ref = spec.porter_yaml_from
        return f"configmap/{namespace}/{ref.name}[{ref.key}]"
    return f"keylessapp/{namespace}/{name}.spec.porterYaml"


# ---- status ---------------------------------------------------------------------------------------------------


class ConditionType(enum.StrEnum):
    READY = "Ready"  # every binding is in place as porter.yaml says
    DRIFTED = "Drifted"  # the last refresh found the clouds or the cluster differing from what keyless applied
    BLOCKED = "Blocked"  # keyless cannot go on without a person: bad input, a preflight blocker, a foreign object


@dataclass(frozen=True, slots=True)
class Condition:
    type: ConditionType
    status: bool
    reason: str
    message: str = ""


def merge_conditions(previous: Sequence[Mapping[str, Any]], new: Sequence[Condition], now: str,
                     generation: int) -> list[dict[str, Any]]:
    """The conditions to write: `new` ones replace those of their type, keeping `lastTransitionTime` when the
    status did not change; conditions of other types are kept as they were."""
    by_type = {str(c.get("type")): dict(c) for c in previous if isinstance(c, Mapping)}
    for condition in new:
        status = "True" if condition.status else "False"
        old = by_type.get(condition.type.value)
        since = old.get("lastTransitionTime") if old is not None and old.get("status") == status else now
        by_type[condition.type.value] = {
            "type": condition.type.value, "status": status, "reason": condition.reason,
            "message": condition.message, "lastTransitionTime": since or now, "observedGeneration": generation,
        }
    order = [t.value for t in ConditionType]
    return sorted(by_type.values(), key=lambda c: (order.index(c["type"]) if c["type"] in order else len(order),
                                                   str(c["type"])))


class BindingState(enum.StrEnum):
    BOUND = "Bound"  # in place, as porter.yaml says
    PENDING = "Pending"  # a change keyless has planned and not applied (suspended, or blocked)
    FAILED = "Failed"  # the last apply of it failed
    REMOVED = "Removed"  # keyless removed it (gone from porter.yaml)


def binding_states(plan: Plan, failed_services: frozenset[str] = frozenset(), applied: bool = True,
                   binding_ids: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """`status.bindings`: one entry per service connection of the plan, from its cloud-binding actions.

    `applied`: the plan's changes were carried out (else they are pending); `binding_ids`: the ids the apply
    wrote, by service (a created binding has none in the plan)."""
    written = binding_ids or {}
    rows: list[dict[str, str]] = []
    for action in plan.actions:
        if action.resource is not Resource.CLOUD_BINDING:
            continue
        identity = action.desired.identity.describe() if action.desired is not None else (
            action.observed.describe_identity() if action.observed is not None else "")
        if action.kind is ActionKind.DELETE:
            state = BindingState.PENDING if not applied else BindingState.REMOVED
        elif action.service in failed_services:
            state = BindingState.FAILED
        elif action.changes and not applied:
            state = BindingState.PENDING
        else:
            state = BindingState.BOUND
        binding_id = written.get(action.service) or (action.observed.id if action.observed is not None else "")
        rows.append({"service": action.service, "cloud": plan.cloud.value, "identity": identity,
                     "bindingId": binding_id if state is not BindingState.REMOVED else "", "state": state.value})
    return sorted(rows, key=lambda r: (r["service"], r["identity"]))


def plan_summary(plan: Plan, applied_at: str, applied: bool) -> dict[str, Any]:
    """`status.lastAppliedPlan`: what the last plan held, in a line, and whether it was carried out."""
    counts = plan.counts()
    return {
        "summary": plan.summary(),
        "create": counts[ActionKind.CREATE], "update": counts[ActionKind.UPDATE] + counts[ActionKind.REPLACE],
        "delete": counts[ActionKind.DELETE], "applied": applied, "time": applied_at,
    }


# ---- written and read by the control plane --------------------------------------------------------------------


def keylessapp_manifest(name: str, namespace: str, *, target: str, porter_yaml: str, app: str,
                        refresh_interval: str | None = None, suspend: bool = False,
                        labels: Mapping[str, str] | None = None,
                        annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A KeylessApp with porter.yaml inline, as the control plane applies it: only the fields it means to own (a
    server-side apply owns exactly what it sends, so the operator's status and finalizer are left alone)."""
    spec: dict[str, Any] = {"target": target, "app": app, "porterYaml": porter_yaml, "suspend": suspend}
    if refresh_interval is not None:
        spec["refreshInterval"] = refresh_interval
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": metadata, "spec": spec}


@dataclass(frozen=True, slots=True)
class ObservedCondition:
    """A condition as the operator wrote it (a person or another tool may have written anything: strings kept)."""

    type: str
    status: str  # "True", "False", "Unknown"
    reason: str
    message: str
    last_transition_time: str
    observed_generation: int | None

    def as_json(self) -> dict[str, Any]:
        return {"type": self.type, "status": self.status, "reason": self.reason, "message": self.message,
                "lastTransitionTime": self.last_transition_time, "observedGeneration": self.observed_generation}


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class KeylessAppState:
    """What a KeylessApp read from the cluster says: its spec's essentials, and the operator's status of it."""

    name: str
    namespace: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    generation: int
    deleting: bool  # deletionTimestamp set: the operator is removing its bindings (the finalizer holds it)
    target: str
    porter_yaml: str | None
    suspend: bool
    observed_generation: int | None
    conditions: tuple[ObservedCondition, ...]
    bindings: tuple[Mapping[str, str], ...]
    last_applied_plan: Mapping[str, Any] | None
    last_refresh_time: str

    @property
    def caught_up(self) -> bool:
        """The operator has reconciled the current spec (its status speaks of this generation)."""
        return self.observed_generation is not None and self.observed_generation >= self.generation

    def condition(self, type_: ConditionType) -> ObservedCondition | None:
        return next((c for c in self.conditions if c.type == type_.value), None)

    @property
    def summary(self) -> str:
        """One word for a list of apps: Removing, Pending (not reconciled yet), Blocked, Drifted, Ready, NotReady."""
        if self.deleting:
            return "Removing"
        if not self.caught_up:
            return "Pending"
        for type_, word in ((ConditionType.BLOCKED, "Blocked"), (ConditionType.DRIFTED, "Drifted")):
            found = self.condition(type_)
            if found is not None and found.status == "True":
                return word
        ready = self.condition(ConditionType.READY)
        if ready is not None and ready.status == "True":
            return "Ready"
        return "Suspended" if self.suspend else "NotReady"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "namespace": self.namespace, "target": self.target, "suspend": self.suspend,
            "generation": self.generation, "observedGeneration": self.observed_generation,
            "caughtUp": self.caught_up, "deleting": self.deleting, "summary": self.summary,
            "conditions": [c.as_json() for c in self.conditions], "bindings": [dict(b) for b in self.bindings],
            "lastAppliedPlan": dict(self.last_applied_plan) if self.last_applied_plan is not None else None,
            "lastRefreshTime": self.last_refresh_time or None,
        }


def keylessapp_state(obj: Mapping[str, Any]) -> KeylessAppState:
    """A KeylessApp object (as the API server returns it) read as values; missing or odd fields become empty."""
    metadata, spec, status = (_mapping(obj.get(key)) for key in ("metadata", "spec", "status"))
    conditions = tuple(
        ObservedCondition(_text(c.get("type")), _text(c.get("status")) or "Unknown", _text(c.get("reason")),
                          _text(c.get("message")), _text(c.get("lastTransitionTime")),
                          _int_or_none(c.get("observedGeneration")))
        for c in status.get("conditions") or [] if isinstance(c, Mapping))
    order = [t.value for t in ConditionType]
    conditions = tuple(sorted(conditions, key=lambda c: (order.index(c.type) if c.type in order else len(order),
                                                          c.type)))
    bindings = tuple({str(k): _text(v) for k, v in row.items()}
                     for row in status.get("bindings") or [] if isinstance(row, Mapping))
    plan = status.get("lastAppliedPlan")
    porter_yaml = spec.get("porterYaml")
    return KeylessAppState(
        name=_text(metadata.get("name")), namespace=_text(metadata.get("namespace")),
        labels={str(k): _text(v) for k, v in (metadata.get("labels") or {}).items()},
        annotations={str(k): _text(v) for k, v in (metadata.get("annotations") or {}).items()},
        generation=_int_or_none(metadata.get("generation")) or 0,
        deleting=bool(metadata.get("deletionTimestamp")),
        target=_text(spec.get("target")), porter_yaml=porter_yaml if isinstance(porter_yaml, str) else None,
        suspend=spec.get("suspend") is True,
        observed_generation=_int_or_none(status.get("observedGeneration")),
        conditions=conditions, bindings=bindings,
        last_applied_plan=plan if isinstance(plan, Mapping) else None,
        last_refresh_time=_text(status.get("lastRefreshTime")),
    )
