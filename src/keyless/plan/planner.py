"""The planner (pure): desired bindings and observed state in, a Plan out; only what keyless owns may change."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from keyless import clouds
from keyless.bindings import Binding
from keyless.clouds import Cloud
from keyless.ownership import ownership_labels
from keyless.plan.kubernetes import NEW_BINDING, kubernetes_blockers, plan_kubernetes
from keyless.plan.model import (
    Action,
    ActionKind,
    Blocker,
    Intent,
    ObjectRef,
    Observed,
    ObservedBinding,
    Plan,
    Resource,
)


@dataclass(frozen=True, slots=True)
class PlanRequest:
    """What the planner needs besides observed state: the app, its target, and what porter.yaml declares."""

    app: str
    target: str
    cloud: Cloud
    desired: tuple[Binding, ...]  # resolved by the provider
    services_in_app: tuple[str, ...]  # every workload porter.yaml declares (predeploy included)
    notes: tuple[str, ...] = ()


def make_plan(request: PlanRequest, observed: Observed) -> Plan:
    """The whole plan: cloud bindings, then per service its account and workloads, in the order apply needs."""
    cloud_actions, blockers = plan_bindings(
        request.desired, observed.bindings, app=request.app, target=request.target, cloud=request.cloud,
        services_in_app=request.services_in_app)
    kube_actions = plan_kubernetes(request.desired, request.services_in_app, observed.service_accounts,
                                   observed.workloads, request.app, request.target, _journal(cloud_actions))
    return Plan(
        app=request.app, target=request.target, cloud=request.cloud,
        actions=tuple(_ordered([*cloud_actions, *kube_actions])), observed_digest=observed.digest(),
        blockers=(*blockers, *kubernetes_blockers(request.desired, observed.service_accounts, request.app,
                                                  request.target)),
        notes=request.notes,
        warnings=tuple(_unbinding_warnings(cloud_actions, request.services_in_app)),
    )


def _journal(cloud_actions: Sequence[Action]) -> dict[tuple[str, str], str | None]:
    """The binding id each bound account's journal must hold after apply: the observed binding where it stays,
    NEW_BINDING where the plan makes a new one."""
    journal: dict[tuple[str, str], str | None] = {}
    for action in cloud_actions:
        if action.desired is None or action.kind is ActionKind.DELETE:
            continue
        stays = action.kind in (ActionKind.NOOP, ActionKind.UPDATE, ActionKind.ADOPT) and action.observed is not None
        journal[action.desired.key] = action.observed.id if stays and action.observed is not None else NEW_BINDING
    return journal


def _unbinding_warnings(actions: Sequence[Action], services_in_app: Sequence[str]) -> list[str]:
    """A service still in porter.yaml whose binding would be deleted: say it loudly, it may be a slip of the pen."""
    declared = set(services_in_app)
    return [f"service {a.service!r} is still in porter.yaml but has no {a.observed.describe_identity()} connection "
            f"any more: applying deletes its binding and its pods lose that identity. If you did not mean to remove "
            f"the connection, check the service's `connections:` in porter.yaml before you apply"
            for a in actions
            if a.resource is Resource.CLOUD_BINDING and a.kind is ActionKind.DELETE and a.service in declared
            and a.observed is not None]


_RESOURCE_ORDER = {Resource.CLOUD_BINDING: 0, Resource.SERVICE_ACCOUNT: 1, Resource.WORKLOAD: 2}


def _ordered(actions: Sequence[Action]) -> list[Action]:
    """Per service: cloud binding, then service account, then workloads (the order apply needs)."""
    services = {s: i for i, s in enumerate(dict.fromkeys(a.service for a in actions))}
    return sorted(actions, key=lambda a: (services[a.service], _RESOURCE_ORDER[a.resource]))


def plan_bindings(
    desired: Sequence[Binding],
    observed: Iterable[ObservedBinding],
    *,
    app: str,
    target: str,
    cloud: Cloud,
    services_in_app: Iterable[str],
) -> tuple[list[Action], list[Blocker]]:
    """Match desired bindings to what exists; only objects keyless owns for this app and target may change."""
    traits = clouds.entry(cloud)
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

    def action(kind: ActionKind, want: Binding, reason: str, found: ObservedBinding | None = None) -> Action:
        return Action(kind, Resource.CLOUD_BINDING, want.service,
                      ObjectRef(traits.binding_kind, want.namespace, want.service_account), reason, want, found)

    for want in desired:
        identity = want.identity.describe()
        address = f"{want.namespace}/{want.service_account}"
        here = by_key.get(want.key, [])
        same = next((o for o in here if o.binds(want.identity)), None)
        owned_here = next((o for o in here if mine(o, want.service)), None)
        if same is not None and same.managed_by is not None:
            blockers.append(Blocker(want.service, f"{address} is bound by {same.managed_by}",
                                    "keyless never changes objects owned by an add-on; remove the connection",
                                    desired=want))
            consumed.add(same.id)
            continue
        if same is not None and mine(same, want.service):
            consumed.add(same.id)
            actions.append(action(ActionKind.NOOP, want, f"bound to {identity}", same))
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
        if same is not None and not traits.marks_adopted:
            # The cloud cannot mark it as keyless's (Azure credentials): use it as it is, never delete it.
            consumed.add(same.id)
            actions.append(action(ActionKind.NOOP, want, f"uses the identical binding {same.id} made outside "
                                  "keyless (keyless never deletes it)", same))
            continue
        if same is not None:
            consumed.add(same.id)
            actions.append(action(ActionKind.ADOPT, want,
                                  f"an identical binding to {identity} exists; keyless takes ownership", same))
            continue
        if owned_here is not None:
            consumed.add(owned_here.id)
            kind = ActionKind.UPDATE if traits.updates_in_place else ActionKind.REPLACE
            actions.append(action(kind, want, f"identity changes from {owned_here.describe_identity()} to {identity}",
                                  owned_here))
            continue
        foreign = [o for o in here if not mine(o)]
        if foreign and (traits.one_binding_per_service_account or any(o.binds(want.identity) for o in foreign)):
            # One binding per service account (AWS): someone else's is in the way.
            other = foreign[0]
            consumed.add(other.id)
            owner = "an EKS add-on" if other.managed_by else ("another app" if other.owner else "someone else")
            blockers.append(Blocker(
                want.service,
                f"{address} is already bound to {other.describe_identity()} by {owner} (id {other.id})",
                "keyless does not change bindings it does not own: delete that binding, or point the "
                "connection at the same identity so keyless can adopt it", desired=want))
            continue
        moved = next((o for o in observed if mine(o, want.service) and o.id not in consumed), None)
        if moved is not None:
            consumed.add(moved.id)
            actions.append(action(ActionKind.REPLACE, want,
                                  f"service account moves from {moved.namespace}/{moved.service_account}", moved))
            continue
        actions.append(action(ActionKind.CREATE, want, f"bind to {identity}"))
    for item in observed:
        if item.id in consumed or not mine(item):
            continue
        assert item.owner is not None
        why = ("connection removed from porter.yaml" if item.owner.service in still_declared
               else "service removed from porter.yaml")
        actions.append(Action(ActionKind.DELETE, Resource.CLOUD_BINDING, item.owner.service,
                              ObjectRef(traits.binding_kind, item.namespace, item.service_account),
                              f"{why} (was bound to {item.describe_identity()})", None, item))
    if traits.found_through_identity:
        actions = [_with_intent(a, app, target) if a.changes else a for a in actions]
    return actions, blockers


def _with_intent(action: Action, app: str, target: str) -> Action:
    """The action with the identities it writes on, to record on the service's account before the write."""
    bindings = [b for b in (action.desired, action.observed) if b is not None]
    identities = tuple(sorted({b.identity.describe() for b in bindings}))
    account = action.desired or action.observed
    assert account is not None
    return replace(action, intent=Intent(ObjectRef("ServiceAccount", account.namespace, account.service_account),
                                         ownership_labels(app, action.service, target), identities))
