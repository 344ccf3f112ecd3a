"""The engine with in-memory test doubles of our own Provider and KubeSide Protocols (no SDK, no cluster)."""

from __future__ import annotations

import itertools
import json
import textwrap
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from keyless import engine
from keyless.bindings import Binding
from keyless.clouds import BINDING_ANNOTATION, IDENTITY_ANNOTATION, AwsRole, Cloud
from keyless.errors import ApplyFailed, LockHeld, LockLost, PreflightFailed
from keyless.kube.lock import AppLock, LeaseRecord, LockState, LockStatus, lock_status, released, renewed, taken
from keyless.kube.manifests import IDENTITY_RECORD
from keyless.ownership import APP_LABEL, SERVICE_LABEL, Owner
from keyless.plan import (
    Action,
    ActionKind,
    ObservedBinding,
    ObservedServiceAccount,
    ObservedWorkload,
    Plan,
    Refresh,
    Resource,
    planfile,
    planner,
)
from keyless.plan.model import AccountSpec, ObjectRef, PodTemplateSettings
from keyless.plan.render import render_text
from keyless.porter import load_app
from keyless.providers.base import ActionOutcome, PreflightIssue, PreflightSeverity
from keyless.targets import AnyTarget, load_targets

APP = "shop"
TARGET = "prod"
NS = "shop"

TARGETS = b"""\
targets:
  prod:
    cloud: aws
    region: us-east-1
    cluster: prod
    namespace: shop
"""

PORTER = """\
name: shop
services:
  - name: api
    type: web
    port: 8080
    connections:
      - type: awsRole
        role: api-role
  - name: worker
    type: worker
    connections:
      - type: awsRole
        role: worker-role
"""


def arn(role: str) -> str:
    return f"arn:aws:iam::111122223333:role/{role}"


# --- test doubles of our Protocols ----------------------------------------------------------------------


@dataclass
class Log:
    """Calls made to the fakes, in order, from any thread: (service, what)."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, service: str, what: str) -> None:
        with self.lock:
            self.calls.append((service, what))

    def of(self, service: str) -> list[str]:
        return [what for s, what in self.calls if s == service]


class FakeProvider:
    """An AWS-like cloud in memory: one binding per (namespace, service account), tags as Owner."""

    cloud = Cloud.AWS

    def __init__(self, log: Log, *, fail: Collection[str] = (),
                 resolve_issues: Sequence[PreflightIssue] = (), preflight_issues: Sequence[PreflightIssue] = (),
                 settles: Mapping[str, float] | None = None):
        self.log = log
        self.fail = set(fail)
        self.settles = dict(settles or {})  # service -> the settles_in its write answers (None: ask wait_visible)
        self.resolve_issues = list(resolve_issues)
        self.preflight_issues = list(preflight_issues)
        self.bindings: dict[str, ObservedBinding] = {}
        self._ids = itertools.count(1)

    def add(self, binding: ObservedBinding) -> None:
        self.bindings[binding.id] = binding

    def resolve(self, bindings: Sequence[Binding]) -> tuple[list[Binding], list[PreflightIssue]]:
        resolved = []
        for b in bindings:
            assert isinstance(b.identity, AwsRole)
            resolved.append(replace(b, identity=replace(b.identity, arn=arn(b.identity.role))))
        return resolved, list(self.resolve_issues)

    def preflight(self, bindings: Sequence[Binding]) -> list[PreflightIssue]:
        self.log.add("-", "preflight")
        return list(self.preflight_issues)

    def observe(self, app: str, target: str, bindings: Sequence[Binding],
                recorded: Sequence[str] = (), accounts: Sequence[object] = (),
                refresh: Refresh = Refresh.FULL) -> list[ObservedBinding]:
        self.log.add("-", "observe")
        keys = {b.key for b in bindings}
        return [o for o in self.bindings.values()
                if o.key in keys or (o.owner is not None and (o.owner.app, o.owner.target) == (app, target))]

    def apply(self, action: Action) -> ActionOutcome:
        self.log.add(action.service, f"cloud {action.kind.value}")
        if action.service in self.fail:
            return ActionOutcome(False, f"AccessDenied: not allowed to {action.kind.value} {action.address}")
        if action.observed is not None and action.kind in (ActionKind.DELETE, ActionKind.REPLACE):
            del self.bindings[action.observed.id]
        if action.kind is ActionKind.DELETE:
            return ActionOutcome(True, f"deleted {action.address}")
        desired = action.desired
        assert desired is not None
        owner = Owner(desired.app, desired.service, desired.target)
        if action.kind in (ActionKind.UPDATE, ActionKind.ADOPT):
            assert action.observed is not None
            made = replace(action.observed, identity=desired.identity, owner=owner)
        else:
            made = ObservedBinding(cloud=Cloud.AWS, id=f"a-{next(self._ids)}", namespace=desired.namespace,
                                   service_account=desired.service_account, identity=desired.identity, owner=owner)
        self.add(made)
        return ActionOutcome(True, f"{action.kind.value}d {action.address}", made.id,
                             self.settles.get(action.service))

    def wait_visible(self, action: Action, timeout: float) -> bool:
        self.log.add(action.service, "cloud visible")
        return True


class FakeKube:
    """A namespace of service accounts and workloads in memory."""

    def __init__(self, log: Log, workloads: Sequence[ObservedWorkload] = ()) -> None:
        self.log = log
        self.accounts: dict[tuple[str, str], ObservedServiceAccount] = {}
        self.workloads = {(w.namespace, w.kind, w.name): w for w in workloads}
        self.applied: list[tuple[ObjectRef, AccountSpec, tuple[str, ...]]] = []
        self.completed: list[Plan] = []
        self.leases: dict[str, LeaseRecord] = {}

    def observe(self, namespace: str, app: str, service_accounts: Collection[str] = ()
                ) -> tuple[list[ObservedServiceAccount], list[ObservedWorkload]]:
        accounts = [a for a in self.accounts.values()
                    if a.namespace == namespace and (a.labels.get(APP_LABEL) == app or a.name in service_accounts)]
        return accounts, [w for w in self.workloads.values() if w.namespace == namespace]

    def apply_service_account(self, ref: ObjectRef, spec: AccountSpec, remove_annotations: Collection[str]) -> None:
        self.log.add(spec.labels[SERVICE_LABEL], "service account")
        kept = {k: v for k, v in self.accounts[(ref.namespace, ref.name)].annotations.items()
                if k not in remove_annotations} if (ref.namespace, ref.name) in self.accounts else {}
        self.accounts[(ref.namespace, ref.name)] = ObservedServiceAccount(
            ref.namespace, ref.name, {**kept, **spec.annotations}, dict(spec.labels))
        self.applied.append((ref, spec, tuple(remove_annotations)))

    def remove_annotations(self, ref: ObjectRef, keys: Collection[str]) -> None:
        account = self.accounts[(ref.namespace, ref.name)]
        self.log.add(account.labels.get(SERVICE_LABEL, ref.name), "strip service account")
        annotations = {k: v for k, v in account.annotations.items() if k not in keys}
        self.accounts[(ref.namespace, ref.name)] = replace(account, annotations=annotations)

    def delete_service_account(self, ref: ObjectRef) -> bool:
        account = self.accounts.pop((ref.namespace, ref.name), None)
        self.log.add(account.labels.get(SERVICE_LABEL, ref.name) if account else ref.name, "delete service account")
        return account is not None

    def update_workload(self, ref: ObjectRef, service: str, settings: PodTemplateSettings) -> None:
        self.log.add(service, "workload")
        key = (ref.namespace, ref.kind, ref.name)
        current = self.workloads[key]
        labels = {**current.pod_labels, **{k: v for k, v in settings.labels.items() if v is not None}}
        self.workloads[key] = replace(
            current, service_account=settings.service_account_name or current.service_account,
            identity_annotation=settings.annotations.get(IDENTITY_ANNOTATION), pod_labels=labels)

    def complete(self, plan: Plan) -> None:
        self.completed.append(plan)

    def wait_rollout(self, namespace: str, name: str, timeout: float) -> bool:
        return True

    # The apply lock: one Lease per name, in memory, at a fixed time (the pure decisions are test_lock.py's).
    now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

    def try_lock(self, lock: AppLock) -> LockStatus:
        self.log.add("lock", "try")
        leases = self.leases
        status = lock_status(leases.get(lock.name), lock.holder, self.now)
        if status.state is LockState.HELD:
            return status
        leases[lock.name] = taken(leases.get(lock.name), lock, self.now)
        return LockStatus(LockState.MINE, lock.holder)

    def renew_lock(self, lock: AppLock) -> None:
        record = self.leases.get(lock.name)
        if record is None or record.holder != lock.holder:
            raise LockLost("lost the apply lock")
        self.leases[lock.name] = renewed(record, self.now)

    def release_lock(self, lock: AppLock) -> None:
        self.log.add("lock", "release")
        record = self.leases.get(lock.name)
        if record is not None and record.holder == lock.holder:
            self.leases[lock.name] = released(record)

    def holder(self, name: str) -> str | None:
        record = self.leases.get(name)
        return record.holder if record is not None else None


def workload(service: str) -> ObservedWorkload:
    """Porter's workload of a service, before keyless touched it (the predeploy job is a Job)."""
    kind = "Job" if service == "predeploy" else "Deployment"
    return ObservedWorkload(namespace=NS, kind=kind, name=f"{APP}-{service}", service=service,
                            service_account=None, identity_annotation=None)


def role_of(name: str) -> AwsRole:
    """A role as a provider reports it, resolved to its ARN."""
    return AwsRole(arn(name), arn=arn(name))


def target() -> AnyTarget:
    return load_targets(TARGETS, "keyless.targets.yaml", {}).get(TARGET)


def spec(porter: str = PORTER) -> engine.PlanInput:
    loaded = load_app(textwrap.dedent(porter).encode(), "porter.yaml", {})
    return engine.PlanInput(loaded, APP, TARGET, target())


@dataclass
class World:
    log: Log
    provider: FakeProvider
    kube: FakeKube

    def plan(self, porter: str = PORTER) -> Plan:
        return engine.plan_app(spec(porter), self.provider, self.kube).plan

    def apply(self, plan: Plan) -> engine.ApplyReport:
        return engine.apply_plan(plan, self.provider, self.kube)


def world(*, fail: Collection[str] = (), services: Sequence[str] = ("api", "worker"), **provider: Any) -> World:
    log = Log()
    return World(log, FakeProvider(log, fail=fail, **provider), FakeKube(log, [workload(s) for s in services]))


# --- settling -----------------------------------------------------------------------------------------


class StillClock:
    """Time that moves only when the engine sleeps, and a record of when each restart happened."""

    def __init__(self) -> None:
        self.now = 0.0
        self.lock = threading.Lock()

    def clock(self) -> float:
        with self.lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += max(0.0, seconds)


def test_each_service_restarts_once_its_own_binding_has_settled_and_nothing_polls() -> None:
    w = world(settles={"api": 5.0, "worker": 0.0})
    time = StillClock()
    restarted: dict[str, float] = {}
    update = w.kube.update_workload

    def timed_update(ref: ObjectRef, service: str, settings: PodTemplateSettings) -> None:
        restarted[service] = time.clock()
        update(ref, service, settings)

    w.kube.update_workload = timed_update  # type: ignore[method-assign]
    report = engine.apply_plan(w.plan(), w.provider, w.kube, clock=time.clock, sleep=time.sleep)
    assert not report.failures
    # worker's binding settled at once: its restart did not wait for api's five seconds.
    assert restarted["worker"] == pytest.approx(0.0)
    assert restarted["api"] == pytest.approx(5.0)  # and api's waited exactly until its own had
    assert "cloud visible" not in [what for _, what in w.log.calls]  # the answers said when: no wait_visible


def test_a_provider_that_cannot_say_when_is_asked_to_wait() -> None:
    w = world()  # the fake's answers carry no settles_in
    w.apply(w.plan())
    assert w.log.of("api").count("cloud visible") == 1


# --- ordering ------------------------------------------------------------------------------------------


def test_ordered_groups_by_service_then_cloud_account_workload() -> None:
    def a(service: str, resource: Resource) -> Action:
        return Action(ActionKind.CREATE, resource, service, ObjectRef(resource.value, NS, service), "why")

    shuffled = [a("api", Resource.WORKLOAD), a("worker", Resource.SERVICE_ACCOUNT), a("api", Resource.CLOUD_BINDING),
                a("worker", Resource.CLOUD_BINDING), a("api", Resource.SERVICE_ACCOUNT), a("worker", Resource.WORKLOAD)]
    ordered = planner._ordered(shuffled)
    assert [(x.service, x.resource) for x in ordered] == [
        ("api", Resource.CLOUD_BINDING), ("api", Resource.SERVICE_ACCOUNT), ("api", Resource.WORKLOAD),
        ("worker", Resource.CLOUD_BINDING), ("worker", Resource.SERVICE_ACCOUNT), ("worker", Resource.WORKLOAD),
    ]


def test_first_plan_creates_binding_account_and_restarts_each_service() -> None:
    plan = world().plan()
    assert [(a.service, a.resource, a.kind) for a in plan.changes] == [
        ("api", Resource.CLOUD_BINDING, ActionKind.CREATE),
        ("api", Resource.SERVICE_ACCOUNT, ActionKind.CREATE),
        ("api", Resource.WORKLOAD, ActionKind.UPDATE),
        ("worker", Resource.CLOUD_BINDING, ActionKind.CREATE),
        ("worker", Resource.SERVICE_ACCOUNT, ActionKind.CREATE),
        ("worker", Resource.WORKLOAD, ActionKind.UPDATE),
    ]
    assert plan.actions[0].reason == f"bind to {arn('api-role')}"  # the resolved identity is planned
    assert plan.blockers == ()


def test_apply_runs_each_services_steps_in_order() -> None:
    w = world()
    report = w.apply(w.plan())
    assert report.failures == []
    assert len(report.results) == 6
    for service in ("api", "worker"):
        assert w.log.of(service) == ["cloud create", "cloud visible", "service account", "workload"]
    account = w.kube.accounts[(NS, "shop-api")]
    assert account.annotations[IDENTITY_RECORD] == arn("api-role")
    assert w.kube.workloads[(NS, "Deployment", "shop-api")].service_account == "shop-api"


def test_a_failed_cloud_action_stops_only_its_own_service() -> None:
    w = world(fail=["api"])
    report = w.apply(w.plan())
    assert w.log.of("api") == ["cloud create"]  # no service account, no restart after the failure
    assert w.log.of("worker") == ["cloud create", "cloud visible", "service account", "workload"]
    assert len(report.failures) == 1
    failure = report.failures[0]
    assert (failure.action.service, failure.action.resource) == ("api", Resource.CLOUD_BINDING)
    assert failure.message == "AccessDenied: not allowed to create shop/shop-api"
    assert [r.action.service for r in report.results if r.ok] == ["worker"] * 3


def test_rerun_after_a_failure_picks_up_where_it_stopped() -> None:
    w = world(fail=["api"])
    w.apply(w.plan())
    w.provider.fail.clear()
    again = w.plan()
    assert {a.service for a in again.changes} == {"api"}
    assert w.apply(again).failures == []
    assert w.plan().changes == []


# --- preflight ---------------------------------------------------------------------------------------------


def test_a_blocking_preflight_issue_stops_the_plan_with_the_fix() -> None:
    issue = PreflightIssue(PreflightSeverity.BLOCKING, "the trust policy of role 'api-role' does not allow pods.eks",
                           "add this statement to the trust policy: {...}", "api")
    w = world(preflight_issues=[issue])
    with pytest.raises(PreflightFailed) as caught:
        w.plan()
    assert caught.value.exit_code == 3
    assert caught.value.message == ("preflight: service api: the trust policy of role 'api-role' does not allow "
                                    "pods.eks\n    fix: add this statement to the trust policy: {...}")
    assert "observe" not in w.log.of("-")  # nothing was read, let alone written


def test_a_blocking_issue_while_resolving_stops_before_preflight() -> None:
    issue = PreflightIssue(PreflightSeverity.BLOCKING, "IAM role 'api-role' does not exist", "create it", "api")
    w = world(resolve_issues=[issue])
    with pytest.raises(PreflightFailed, match="fix: create it") as caught:
        w.plan()
    assert caught.value.exit_code == 3
    assert w.log.calls == []


def test_warnings_become_plan_notes_and_do_not_block() -> None:
    issue = PreflightIssue(PreflightSeverity.WARNING, "the add-on is DEGRADED", "wait", None)
    w = world(preflight_issues=[issue])
    planned = engine.plan_app(spec(), w.provider, w.kube)
    assert planned.plan.notes == ("the add-on is DEGRADED",)
    assert planned.warnings == (issue,)
    assert len(planned.plan.changes) == 6


# --- convergence ----------------------------------------------------------------------------------------


def test_a_second_plan_after_apply_has_no_changes() -> None:
    w = world()
    assert w.apply(w.plan()).failures == []
    again = w.plan()
    assert again.changes == []
    assert again.summary().startswith("No changes.")
    assert {a.kind for a in again.actions} == {ActionKind.NOOP}


def test_changing_a_role_updates_in_place_and_converges() -> None:
    w = world()
    w.apply(w.plan())
    changed = PORTER.replace("role: api-role", "role: api-role-v2")
    plan = w.plan(changed)
    assert [(a.service, a.resource, a.kind) for a in plan.changes] == [
        ("api", Resource.CLOUD_BINDING, ActionKind.UPDATE),
        ("api", Resource.SERVICE_ACCOUNT, ActionKind.UPDATE),
        ("api", Resource.WORKLOAD, ActionKind.UPDATE),
    ]
    assert w.apply(plan).failures == []
    assert w.plan(changed).changes == []


def test_removing_a_service_deletes_its_binding_and_account() -> None:
    w = world()
    w.apply(w.plan())
    only_api = PORTER.partition("  - name: worker")[0]
    plan = w.plan(only_api)
    assert [(a.service, a.resource, a.kind) for a in plan.changes] == [
        ("worker", Resource.CLOUD_BINDING, ActionKind.DELETE),
        ("worker", Resource.SERVICE_ACCOUNT, ActionKind.DELETE),
    ]
    assert "service removed" in plan.changes[0].reason
    assert w.apply(plan).failures == []
    assert (NS, "shop-worker") not in w.kube.accounts
    assert w.plan(only_api).changes == []


PREDEPLOY = PORTER + """\
predeploy:
  run: python -m shop.migrate
  connections:
    - type: awsRole
      role: migrate-role
"""


def test_removing_the_predeploy_connection_keeps_its_account() -> None:
    w = world(services=["api", "worker", "predeploy"])
    assert w.apply(w.plan(PREDEPLOY)).failures == []
    without_connection = PREDEPLOY.partition("  connections:\n    - type: awsRole\n      role: migrate-role")[0]
    assert "predeploy:" in without_connection
    plan = w.plan(without_connection)
    changes = {(a.resource, a.kind): a for a in plan.changes if a.service == "predeploy"}
    cloud = changes[(Resource.CLOUD_BINDING, ActionKind.DELETE)]
    assert "connection removed" in cloud.reason
    assert (Resource.SERVICE_ACCOUNT, ActionKind.DELETE) not in changes


def test_a_plan_just_made_is_not_stale() -> None:
    w = world()
    plan = w.plan()
    assert engine.observe_saved(plan, w.provider, w.kube, NS).digest() == plan.observed_digest
    w.provider.add(ObservedBinding(Cloud.AWS, "x-1", NS, "shop-other", role_of("x"), owner=Owner(APP, "other", TARGET)))
    assert engine.observe_saved(plan, w.provider, w.kube, NS).digest() != plan.observed_digest


def test_a_plan_just_made_with_a_blocker_is_not_stale() -> None:
    w = world()
    w.provider.add(ObservedBinding(Cloud.AWS, "x-1", NS, "shop-api", role_of("someone"), owner=None))
    plan = w.plan()
    assert [b.service for b in plan.blockers] == ["api"]
    assert engine.observe_saved(plan, w.provider, w.kube, NS).digest() == plan.observed_digest


# --- status ---------------------------------------------------------------------------------------------


def status(w: World, porter: str | None = None) -> dict[str, engine.ServiceStatus]:
    loaded = spec(porter).loaded if porter is not None else None
    return {r.service: r for r in engine.app_status(APP, TARGET, target(), w.provider, w.kube, loaded)}


def test_status_after_apply_shows_no_drift() -> None:
    w = world()
    w.apply(w.plan())
    rows = status(w, PORTER)
    assert set(rows) == {"api", "worker"}
    api = rows["api"]
    assert (api.identity, api.service_account, api.drift) == (arn("api-role"), "shop/shop-api", None)
    assert api.binding_id is not None
    assert api.as_json()["serviceAccount"] == "shop/shop-api"


def test_status_reports_a_binding_deleted_outside_keyless() -> None:
    w = world()
    w.apply(w.plan())
    api_binding = next(b for b in w.provider.bindings.values() if b.service_account == "shop-api")
    del w.provider.bindings[api_binding.id]
    rows = status(w)
    assert rows["api"].drift is not None
    assert rows["api"].drift.startswith("Pod Identity association missing (deleted outside keyless)")
    assert rows["api"].binding_id is None
    assert rows["worker"].drift is None


def test_status_reports_a_binding_changed_outside_keyless() -> None:
    w = world()
    w.apply(w.plan())
    api_binding = next(b for b in w.provider.bindings.values() if b.service_account == "shop-api")
    w.provider.add(replace(api_binding, identity=role_of("admin")))
    rows = status(w)
    assert rows["api"].drift == f"binding changed outside keyless (keyless set {arn('api-role')})"
    assert rows["api"].identity == arn("admin")
    assert rows["worker"].drift is None


def test_status_with_porter_yaml_says_what_apply_would_do() -> None:
    w = world()
    w.apply(w.plan())
    rows = status(w, PORTER.replace("role: worker-role", "role: worker-v2"))
    assert rows["worker"].drift == f"porter.yaml wants {arn('worker-v2')}: run apply"
    assert rows["api"].drift is None


def test_status_does_not_count_someone_elses_binding_at_the_key_as_keylesss() -> None:
    w = world()
    w.provider.add(ObservedBinding(Cloud.AWS, "x-1", NS, "shop-api", role_of("api-role"), owner=None))
    w.provider.add(ObservedBinding(Cloud.AWS, "x-2", NS, "shop-worker", arn("worker-role"),
                                   owner=Owner("store", "worker", TARGET)))
    rows = status(w, PORTER)
    for service in ("api", "worker"):
        assert rows[service].binding_id is None
        assert rows[service].identity is None
        assert rows[service].drift == f"porter.yaml wants {arn(service + '-role')}: run apply"


# --- the plan is the contract ----------------------------------------------------------------------------


def test_a_saved_plan_is_applied_exactly_as_saved_even_when_the_planner_changes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    w = world()
    saved = planfile.load(json.loads(json.dumps(planfile.dump(w.plan()))))
    printed = [(a.service, a.resource, a.kind, a.ref) for a in saved.changes]

    # A later keyless whose planner decides differently: apply must not consult it.
    def refuse(*args: object, **kwargs: object) -> object:
        raise AssertionError("apply re-derived what the saved plan says")

    from keyless.kube import manifests
    from keyless.plan import kubernetes

    for module, name in [(manifests, "account_spec"), (manifests, "pod_template_settings"),
                         (manifests, "identity_annotations"), (kubernetes, "account_spec"),
                         (kubernetes, "pod_template_settings"), (planner, "plan_bindings"),
                         (planner, "plan_kubernetes"), (planner, "make_plan")]:
        monkeypatch.setattr(module, name, refuse)
    report = engine.apply_plan(saved, w.provider, w.kube)

    assert report.failures == []
    assert [(r.action.service, r.action.resource, r.action.kind, r.action.ref) for r in report.results] == printed
    # The accounts as the plan says, plus the one thing it could not know: the id each create answered with.
    made = {(b.namespace, b.service_account): b.id for b in w.provider.bindings.values()}
    wanted_accounts = [(a.ref, AccountSpec(labels=a.account.labels,
                                           annotations={**a.account.annotations,
                                                        BINDING_ANNOTATION: made[(a.ref.namespace, a.ref.name)]}),
                        a.remove_annotations)
                       for a in saved.changes if a.resource is Resource.SERVICE_ACCOUNT and a.account is not None]
    assert w.kube.applied == wanted_accounts
    for action in saved.changes:
        if action.resource is Resource.WORKLOAD:
            assert action.pod_template is not None
            live = w.kube.workloads[(action.ref.namespace, action.ref.kind, action.ref.name)]
            assert live.identity_annotation == action.pod_template.annotations[IDENTITY_ANNOTATION]
    assert w.kube.completed == [saved]


def test_apply_strips_exactly_the_annotations_the_plan_lists() -> None:
    w = world()
    w.apply(w.plan())
    plan = w.plan(PORTER.replace("    connections:\n      - type: awsRole\n        role: api-role\n", "", 1))
    strip = next(a for a in plan.changes if a.resource is Resource.SERVICE_ACCOUNT and a.service == "api")
    assert strip.account is None
    assert strip.remove_annotations == (BINDING_ANNOTATION, IDENTITY_ANNOTATION)
    edited = replace(strip, remove_annotations=())  # a plan that keeps the annotation keeps it
    w.apply(replace(plan, actions=tuple(edited if a is strip else a for a in plan.actions)))
    assert IDENTITY_ANNOTATION in w.kube.accounts[(NS, "shop-api")].annotations


def test_a_service_that_keeps_running_but_loses_its_connection_is_a_loud_warning() -> None:
    w = world()
    w.apply(w.plan())
    plan = w.plan(PORTER.replace("    connections:\n      - type: awsRole\n        role: api-role\n", "", 1))
    [warning] = plan.warnings
    assert "service 'api' is still in porter.yaml" in warning
    assert arn("api-role") in warning
    assert "! warning: service 'api'" in render_text(plan)
    saved = planfile.load(json.loads(json.dumps(planfile.dump(plan))))
    assert saved.warnings == plan.warnings


def test_removing_a_whole_service_is_no_warning() -> None:
    w = world()
    w.apply(w.plan())
    head, worker = PORTER.split("  - name: worker")
    without_api = head.split("services:")[0] + "services:\n  - name: worker" + worker
    plan = w.plan(without_api)
    assert any(a.kind is ActionKind.DELETE and a.service == "api" for a in plan.changes)
    assert plan.warnings == ()


# --- the apply lock -----------------------------------------------------------------------------------

OTHER = "https://ci.example/jobs/7@runner/42"
LEASE = engine.applock.app_lock(NS, APP, TARGET, OTHER).name


def hold(w: World, holder: str = OTHER) -> None:
    """Someone else (another apply, the operator) holds the app's lock, renewed just now."""
    w.kube.leases[LEASE] = LeaseRecord(holder=holder, duration=30, acquired=FakeKube.now, renewed=FakeKube.now)


def test_apply_holds_the_apps_lock_from_before_the_first_change_to_after_the_last() -> None:
    w = world()
    plan = w.plan()
    planned = len(w.log.calls)
    w.apply(plan)
    applying = w.log.calls[planned:]
    assert [what for service, what in applying if service == "lock"] == ["try", "release"]
    assert applying[0] == ("lock", "try")
    assert applying[-1] == ("lock", "release")
    assert w.kube.holder(LEASE) is None  # released: the next apply need not wait
    assert w.kube.leases[LEASE].transitions == 0


def test_apply_without_a_lock_of_its_own_never_waits_for_another_holder() -> None:
    # A plan observed before another apply's changes must not be applied after them: it fails at once.
    w = world()
    plan = w.plan()
    planned = len(w.log.calls)
    hold(w)
    time = StillClock()
    with pytest.raises(LockHeld) as raised:
        engine.apply_plan(plan, w.provider, w.kube, clock=time.clock, sleep=time.sleep)
    assert raised.value.exit_code == 4
    assert OTHER in raised.value.message
    assert "since 2025-03-01 12:00:00 UTC" in raised.value.message
    assert "--lock-timeout 0" in raised.value.message
    assert "--lock-timeout" in raised.value.hint
    assert time.now == 0.0
    assert [s for s, _ in w.log.calls[planned:]] == ["lock"]  # nothing applied, nothing released that was not ours
    assert w.kube.holder(LEASE) == OTHER


def test_a_waiting_apply_goes_ahead_once_the_holder_releases() -> None:
    w = world()
    hold(w)
    time = StillClock()
    told: list[LockStatus] = []
    polls = 0
    real_try = w.kube.try_lock

    def try_lock(lock: AppLock) -> LockStatus:
        nonlocal polls
        polls += 1
        if polls == 3:  # the other apply finished meanwhile
            w.kube.leases[LEASE] = released(w.kube.leases[LEASE])
        return real_try(lock)

    w.kube.try_lock = try_lock  # type: ignore[method-assign]
    with engine.app_lock(w.kube, APP, TARGET, NS, timeout=300, holder="me@here/1", clock=time.clock,
                         sleep=time.sleep, waiting=told.append) as held:
        assert w.kube.holder(LEASE) == "me@here/1"
        report = engine.apply_plan(w.plan(), w.provider, w.kube, lock=held)  # planned under the lock
    assert not report.failures
    assert polls == 3
    assert [t.holder for t in told] == [OTHER]  # said once whom it waits for
    assert 0 < time.now < 300
    assert w.kube.holder(LEASE) is None
    assert w.kube.leases[LEASE].transitions == 1  # passed from the other holder to this one


def test_a_lock_still_held_after_the_timeout_fails_naming_the_holder() -> None:
    w = world()
    hold(w)
    time = StillClock()
    with pytest.raises(LockHeld) as raised, engine.app_lock(w.kube, APP, TARGET, NS, timeout=120,
                                                            clock=time.clock, sleep=time.sleep):
        pytest.fail("the block must not run without the lock")
    assert time.now == pytest.approx(120.0)  # waited exactly the timeout, on the injected clock
    assert f"locked by {OTHER}" in raised.value.message
    assert "waited 120s" in raised.value.message
    assert w.kube.holder(LEASE) == OTHER


def test_the_lock_is_released_after_a_failed_apply_and_after_ctrl_c() -> None:
    w = world(fail={"api"})
    report = w.apply(w.plan())
    assert report.failures
    assert w.kube.holder(LEASE) is None
    w = world()
    plan = w.plan()

    def interrupted(ref: ObjectRef, service: str, settings: PodTemplateSettings) -> None:
        raise KeyboardInterrupt

    w.kube.update_workload = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        w.apply(plan)
    assert w.kube.holder(LEASE) is None
    with pytest.raises(ApplyFailed), engine.app_lock(w.kube, APP, TARGET, NS, holder="me@here/1"):
        raise ApplyFailed("a face's own failure under the lock")
    assert w.kube.holder(LEASE) is None


def test_different_apps_and_targets_have_different_locks() -> None:
    w = world()
    hold(w)
    for app, target in (("other", TARGET), (APP, "staging")):
        with engine.app_lock(w.kube, app, target, NS, timeout=0, holder="me@here/1"):
            pass
    assert w.kube.holder(LEASE) == OTHER


def test_a_lock_lost_while_applying_starts_nothing_new_and_fails() -> None:
    w = world()
    plan = w.plan()
    planned = len(w.log.calls)
    with engine.app_lock(w.kube, APP, TARGET, NS, holder="me@here/1", duration=1) as held:
        hold(w)  # the lease ran out unrenewed (a stalled process) and another apply took it over
        assert held.lost.wait(30), "the renewal in the background saw the lock taken"
        with pytest.raises(LockLost):
            engine.apply_plan(plan, w.provider, w.kube, lock=held)
    assert [s for s, what in w.log.calls[planned:] if s != "lock"] == []  # no change made
    assert w.kube.holder(LEASE) == OTHER  # and the other holder's lock is left alone


def test_the_lock_is_renewed_in_the_background_while_held() -> None:
    w = world()
    renewals = threading.Semaphore(0)
    real_renew: Callable[[AppLock], None] = w.kube.renew_lock

    def counted(lock: AppLock) -> None:
        real_renew(lock)
        renewals.release()

    w.kube.renew_lock = counted  # type: ignore[method-assign]
    with engine.app_lock(w.kube, APP, TARGET, NS, holder="me@here/1", duration=1):
        assert renewals.acquire(timeout=30)
        assert renewals.acquire(timeout=30)
    assert w.kube.holder(LEASE) is None
