"""The saved-plan format (versioned JSON): written by `plan --out`, read back by `apply PLAN.json`, never guessed at."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keyless.bindings import Binding, Source
from keyless.clouds import Cloud, identity_from_json
from keyless.diagnostics import Position
from keyless.ownership import Owner
from keyless.plan.model import (
    AccountSpec,
    Action,
    ActionKind,
    Blocker,
    Intent,
    ObjectRef,
    ObservedBinding,
    Plan,
    PodTemplateSettings,
    Resource,
    plain,
)
from keyless.porter.model import ServiceType

# 2: actions carry their object, account, annotations to remove and pod template as typed fields, and
# identities as typed values. A format-1 plan lacks them, so apply could only re-derive them: it is refused.
PLAN_FORMAT = 2


def dump(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-ready data: what `plan --out` saves and `plan --format json` prints."""
    return {
        "format": PLAN_FORMAT,
        "app": plan.app,
        "target": plan.target,
        "cloud": plan.cloud.value,
        "observedDigest": plan.observed_digest,
        "summary": plan.summary(),
        "actions": [_action_json(a) for a in plan.actions],
        "blockers": [{"service": b.service, "message": b.message, "hint": b.hint,
                      "desired": plain(b.desired) if b.desired else None} for b in plan.blockers],
        "notes": list(plan.notes),
        "warnings": list(plan.warnings),
    }


def load(data: Any) -> Plan:
    """A saved plan; ValueError for anything that is not one this keyless can apply (never another exception)."""
    if not isinstance(data, Mapping):
        raise ValueError("a plan file holds a JSON object")
    version = data.get("format")
    if version != PLAN_FORMAT:
        if isinstance(version, int) and 1 <= version < PLAN_FORMAT:
            raise ValueError(f"this plan was saved by an earlier keyless (plan format {version}), which did not "
                             "record everything apply needs; run `keyless plan --out` again and review the new plan")
        raise ValueError(f"unsupported plan format {version!r} (this keyless reads {PLAN_FORMAT})")
    try:
        return _plan(data)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"malformed plan ({type(exc).__name__}: {exc})") from None


def _plan(data: Mapping[str, Any]) -> Plan:
    return Plan(
        app=str(data["app"]),
        target=str(data["target"]),
        cloud=Cloud(data["cloud"]),
        observed_digest=str(data["observedDigest"]),
        actions=tuple(_action(a) for a in data["actions"]),
        blockers=tuple(Blocker(service=b["service"], message=b["message"], hint=b.get("hint", ""),
                               desired=_binding(b["desired"]) if b.get("desired") else None)
                       for b in data.get("blockers", [])),
        notes=tuple(str(n) for n in data.get("notes", [])),
        warnings=tuple(str(w) for w in data.get("warnings", [])),
    )


# --- actions --------------------------------------------------------------------------------------------


def _action_json(action: Action) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": action.kind.value,
        "symbol": action.kind.symbol,
        "resource": action.resource.value,
        "service": action.service,
        "address": action.address,  # for people and tools reading the file; apply reads `object`
        "object": plain(action.ref),
        "reason": action.reason,
    }
    if action.desired is not None:
        out["desired"] = plain(action.desired)
    if action.observed is not None:
        out["observed"] = plain(action.observed)
    if action.account is not None:
        out["account"] = plain(action.account)
    if action.remove_annotations:
        out["removeAnnotations"] = list(action.remove_annotations)
    if action.pod_template is not None:
        out["podTemplate"] = plain(action.pod_template)
    if action.intent is not None:
        out["intent"] = plain(action.intent)
    return out


def _action(data: Mapping[str, Any]) -> Action:
    account = data.get("account")
    template = data.get("podTemplate")
    intent = data.get("intent")
    return Action(
        kind=ActionKind(data["kind"]),
        resource=Resource(data["resource"]),
        service=str(data["service"]),
        ref=ObjectRef(**_strings(data["object"])),
        reason=str(data["reason"]),
        desired=_binding(data["desired"]) if data.get("desired") else None,
        observed=_observed(data["observed"]) if data.get("observed") else None,
        account=AccountSpec(labels=_strings(account["labels"]), annotations=_strings(account["annotations"]))
        if account is not None else None,
        remove_annotations=tuple(str(k) for k in data.get("removeAnnotations", [])),
        pod_template=PodTemplateSettings(
            service_account_name=template.get("service_account_name"),
            annotations=_optional_strings(template.get("annotations", {})),
            labels=_optional_strings(template.get("labels", {})),
        ) if template is not None else None,
        intent=Intent(account=ObjectRef(**_strings(intent["account"])), labels=_strings(intent["labels"]),
                      identities=tuple(str(i) for i in intent["identities"])) if intent is not None else None,
    )


def _strings(data: Mapping[str, Any]) -> dict[str, str]:
    if not isinstance(data, Mapping) or not all(isinstance(v, str) for v in data.values()):
        raise TypeError("expected a mapping of strings")
    return {str(k): v for k, v in data.items()}


def _optional_strings(data: Mapping[str, Any]) -> dict[str, str | None]:
    if not isinstance(data, Mapping) or not all(v is None or isinstance(v, str) for v in data.values()):
        raise TypeError("expected a mapping of strings or nulls")
    return {str(k): v for k, v in data.items()}


def _observed(data: Mapping[str, Any]) -> ObservedBinding:
    cloud = Cloud(data["cloud"])
    return ObservedBinding(
        cloud=cloud, id=str(data["id"]), namespace=str(data["namespace"]),
        service_account=str(data["service_account"]), identity=identity_from_json(cloud, data["identity"]),
        owner=Owner(**_strings(data["owner"])) if data.get("owner") else None,
        managed_by=data.get("managed_by"), mismatch=tuple(str(m) for m in data.get("mismatch", [])),
        details=_strings(data.get("details", {})),
    )


def _binding(data: Mapping[str, Any]) -> Binding:
    cloud = Cloud(data["cloud"])
    source = data.get("source")
    return Binding(
        app=str(data["app"]), service=str(data["service"]), kind=ServiceType(data["kind"]),
        target=str(data["target"]), cloud=cloud, namespace=str(data["namespace"]),
        service_account=str(data["service_account"]), identity=identity_from_json(cloud, data["identity"]),
        source=Source(str(source["file"]), Position(**source["position"])) if source else None,
        principal=str(data["principal"]) if data.get("principal") else None,
    )
