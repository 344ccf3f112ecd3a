"""Planning the Kubernetes side (pure): service account and workload actions that follow the desired bindings."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from keyless import clouds
from keyless.bindings import Binding
from keyless.clouds import BINDING_ANNOTATION, PENDING_ANNOTATION
from keyless.kube.manifests import (
    account_spec,
    defer_to_other_manager,
    pod_template_settings,
    released_pod_template_settings,
)
from keyless.ownership import (
    APP_LABEL,
    MANAGED_BY_LABEL,
    MANAGER,
    SERVICE_LABEL,
    TARGET_LABEL,
    labelled_elsewhere,
    labelled_for,
)
from keyless.plan.model import (
    AccountSpec,
    Action,
    ActionKind,
    Blocker,
    ObjectRef,
    ObservedServiceAccount,
    ObservedWorkload,
    Resource,
)

RESTART_REASON = "restart: identity changed"
LEFTOVER = "left by an interrupted apply"
SERVICE_ACCOUNT = "ServiceAccount"
# In a journal, a binding the plan creates: its id is known once the cloud answers, and apply records it then.
NEW_BINDING: None = None


def _differences(want: Mapping[str, str], have: Mapping[str, str], what: str) -> list[str]:
    out: list[str] = []
    for key, value in sorted(want.items()):
        if key not in have:
            out.append(f"{what} {key} missing")
        elif have[key] != value:
            out.append(f"{what} {key} is {have[key]!r}, wants {value!r}")
    return out


def _workload_ref(workload: ObservedWorkload) -> ObjectRef:
    return ObjectRef(workload.kind, workload.namespace, workload.name)


def _journaled(spec: AccountSpec, binding_id: str | None) -> AccountSpec:
    if binding_id is None:
        return spec
    return AccountSpec(labels=spec.labels, annotations={**spec.annotations, BINDING_ANNOTATION: binding_id})


def _plan_account(binding: Binding, observed: ObservedServiceAccount | None, journal: Mapping[tuple[str, str],
                  str | None]) -> Action:
    ref = ObjectRef(SERVICE_ACCOUNT, binding.namespace, binding.service_account)
    identity = binding.identity.describe()
    journaled = binding.key in journal
    recorded = journal.get(binding.key)  # the binding id the journal must hold (NEW_BINDING: the create tells)
    spec = _journaled(account_spec(binding), recorded)
    template = pod_template_settings(binding)  # render mode writes it beside the account
    if observed is None:
        return Action(ActionKind.CREATE, Resource.SERVICE_ACCOUNT, binding.service, ref,
                      f"create the service account for {identity}", binding, account=spec, pod_template=template)
    spec = AccountSpec(labels=defer_to_other_manager(spec.labels, observed.labels), annotations=spec.annotations)
    if APP_LABEL in observed.labels:
        changes = _differences(spec.labels, observed.labels, "label")
    else:
        changes = ["take over the existing account (add keyless's labels)"]
    changes += _differences(spec.annotations, observed.annotations, "annotation")
    if journaled and recorded is NEW_BINDING:
        changes.append(f"record the new binding in annotation {BINDING_ANNOTATION}")
    stale = {**clouds.entry(binding.cloud).stale_annotations, PENDING_ANNOTATION: LEFTOVER}
    present = tuple(key for key in sorted(stale) if key in observed.annotations)
    changes += [f"remove annotation {key} ({stale[key]})" for key in present]
    if not changes:
        return Action(ActionKind.NOOP, Resource.SERVICE_ACCOUNT, binding.service, ref,
                      f"annotated for {identity}", binding, account=spec, pod_template=template)
    return Action(ActionKind.UPDATE, Resource.SERVICE_ACCOUNT, binding.service, ref, "; ".join(changes), binding,
                  account=spec, remove_annotations=present, pod_template=template)


def _workload_changes(binding: Binding, workload: ObservedWorkload) -> list[str]:
    settings = pod_template_settings(binding)
    changes: list[str] = []
    if workload.service_account != settings.service_account_name:
        changes.append(f"serviceAccountName {workload.service_account or 'default'} -> "
                       f"{settings.service_account_name}")
    if workload.identity_annotation != binding.identity_fingerprint():
        changes.append(f"identity {workload.identity_annotation or 'none'} -> {binding.identity_fingerprint()}")
    changes += [f"pod label {key}={value}" for key, value in sorted(settings.labels.items())
                if value is not None and workload.pod_labels.get(key) != value]
    return changes


def _plan_workload(binding: Binding, workload: ObservedWorkload) -> Action:
    ref = _workload_ref(workload)
    changes = _workload_changes(binding, workload)
    if not changes:
        return Action(ActionKind.NOOP, Resource.WORKLOAD, binding.service, ref,
                      f"pods run as {binding.service_account}", binding)
    if workload.kind == "Job":
        # A Job's pod template cannot change; Porter creates a new Job on the next run or deploy.
        return Action(ActionKind.NOOP, Resource.WORKLOAD, binding.service, ref,
                      "job keeps its pods; its next run gets the new identity", binding)
    return Action(ActionKind.UPDATE, Resource.WORKLOAD, binding.service, ref,
                  f"{RESTART_REASON} ({'; '.join(changes)})", binding, pod_template=pod_template_settings(binding))


def _plan_released(account: ObservedServiceAccount, service: str, still_declared: bool,
                   workloads: Sequence[ObservedWorkload]) -> list[Action]:
    ref = ObjectRef(SERVICE_ACCOUNT, account.namespace, account.name)
    ours = account.labels.get(MANAGED_BY_LABEL) == MANAGER
    bound = tuple(sorted(key for key in {*clouds.all_annotation_keys(), PENDING_ANNOTATION, BINDING_ANNOTATION}
                         if key in account.annotations))
    actions: list[Action] = []
    if not still_declared:
        # Porter removes the service's workloads itself; only the account is keyless's to clean up.
        if ours:
            return [Action(ActionKind.DELETE, Resource.SERVICE_ACCOUNT, service, ref,
                           "service removed from porter.yaml")]
        if bound:
            return [Action(ActionKind.UPDATE, Resource.SERVICE_ACCOUNT, service, ref,
                           "service removed from porter.yaml; the account belongs to "
                           f"{account.labels.get(MANAGED_BY_LABEL)}, so keyless only removes {', '.join(bound)}",
                           remove_annotations=bound)]
        return [Action(ActionKind.NOOP, Resource.SERVICE_ACCOUNT, service, ref,
                       "service removed from porter.yaml; nothing of keyless's left on the account")]
    if bound:
        # Porter's pods keep running as <app>-<service>: keep the account, drop the identity.
        actions.append(Action(ActionKind.UPDATE, Resource.SERVICE_ACCOUNT, service, ref,
                              f"connection removed from porter.yaml: remove {', '.join(bound)}",
                              remove_annotations=bound))
    else:
        actions.append(Action(ActionKind.NOOP, Resource.SERVICE_ACCOUNT, service, ref,
                              "no identity connection; account kept for the service's pods"))
    for workload in workloads:
        wref = _workload_ref(workload)
        if workload.identity_annotation is None:
            actions.append(Action(ActionKind.NOOP, Resource.WORKLOAD, service, wref, "no identity on the pod template"))
        elif workload.kind == "Job":
            actions.append(Action(ActionKind.NOOP, Resource.WORKLOAD, service, wref,
                                  "job keeps its pods; its next run has no identity"))
        else:
            actions.append(Action(ActionKind.UPDATE, Resource.WORKLOAD, service, wref,
                                  f"{RESTART_REASON} (connection removed)",
                                  pod_template=released_pod_template_settings()))
    return actions


def _by_service(workloads: Iterable[ObservedWorkload]) -> dict[tuple[str, str], list[ObservedWorkload]]:
    found: dict[tuple[str, str], list[ObservedWorkload]] = {}
    for workload in sorted(workloads, key=lambda w: (w.namespace, w.service, w.kind, w.name)):
        found.setdefault((workload.namespace, workload.service), []).append(workload)
    return found


def plan_kubernetes(
    desired: Sequence[Binding],
    services_in_app: Collection[str],
    observed_accounts: Iterable[ObservedServiceAccount],
    observed_workloads: Iterable[ObservedWorkload],
    app: str,
    target: str,
    journal: Mapping[tuple[str, str], str | None] | None = None,
) -> list[Action]:
    """Service account and workload actions that make the cluster match the desired bindings. Pure.

    `journal` maps a desired account's key to the binding id its journal annotation must hold: the observed
    binding that stays, or NEW_BINDING for one the plan creates (apply records the id the cloud answers with).

    `services_in_app` names every workload porter.yaml still declares (predeploy included): an account
    keyless labelled for a service no longer listed is deleted, one whose service only lost its
    connection is kept without identity. Accounts keyless labelled for another app or target are left
    alone (see `kubernetes_blockers`).
    """
    accounts = {(a.namespace, a.name): a for a in observed_accounts}
    workloads = _by_service(observed_workloads)
    actions: list[Action] = []
    wanted: set[tuple[str, str]] = set()
    for binding in desired:
        if binding.key in wanted:
            continue
        wanted.add(binding.key)
        account = accounts.get(binding.key)
        if account is not None and labelled_elsewhere(account.labels, app, target):
            continue
        actions.append(_plan_account(binding, account, journal or {}))
        for workload in workloads.get((binding.namespace, binding.service), []):
            actions.append(_plan_workload(binding, workload))
    declared = set(services_in_app)
    for key, account in sorted(accounts.items()):
        if key in wanted or not labelled_for(account.labels, app, target):
            continue
        service = account.labels.get(SERVICE_LABEL, account.name)
        actions.extend(_plan_released(account, service, service in declared,
                                      workloads.get((account.namespace, service), [])))
    return actions


def kubernetes_blockers(
    desired: Sequence[Binding], observed_accounts: Iterable[ObservedServiceAccount], app: str, target: str
) -> list[Blocker]:
    """Desired accounts that keyless labelled for another app or target: binding them would take them over."""
    accounts = {(a.namespace, a.name): a for a in observed_accounts}
    blockers: list[Blocker] = []
    for binding in desired:
        account = accounts.get(binding.key)
        if account is None or not labelled_elsewhere(account.labels, app, target):
            continue
        other_app = account.labels.get(APP_LABEL, "?")
        other_target = account.labels.get(TARGET_LABEL, "?")
        blockers.append(Blocker(
            binding.service,
            f"service account {binding.namespace}/{binding.service_account} belongs to app {other_app!r} "
            f"on target {other_target!r}",
            "two app/service pairs map to the same `<app>-<service>` name: rename one service",
        ))
    return blockers
