"""One KeylessApp reconciled through the engine: load, plan, apply under the app's lock, and say what happened.

No kopf here: `controller.py` calls `Reconciler.reconcile` and `Reconciler.remove` from its handlers (in a worker
thread, since the engine blocks) and writes the returned `Outcome` as the object's status and Events. The same
engine functions serve the CLI and the server: the operator is a face, not a second implementation.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from keyless import engine
from keyless.errors import InvalidInput, KeylessError, LockHeld, PreflightFailed
from keyless.inputs import load_targets_file
from keyless.kube.base import KubeSide
from keyless.kube.lock import LOCK_DURATION
from keyless.operator.resource import (
    BindingState,
    Condition,
    ConditionType,
    KeylessAppSpec,
    binding_states,
    parse_spec,
    plan_summary,
    porter_yaml_source,
)
from keyless.plan import Plan, Refresh
from keyless.porter import LoadedApp, app_without_services, load_app, resolve_app_name
from keyless.providers.base import Provider
from keyless.targets import AnyTarget, Targets

__all__ = ["Event", "Outcome", "Reconciler", "Trigger", "refresh_for"]

log = logging.getLogger("keyless.operator")

# Backoff after an error a person or time may cure (a preflight blocker, a cloud error, a lock held elsewhere):
# doubled per failure in a row, with jitter so that a fleet of apps hit by one outage does not retry in step.
BACKOFF_BASE: Final = 15.0
BACKOFF_MAX: Final = 600.0
LOCK_RETRY: Final = 10.0  # another replica or a CLI apply holds the app: look again soon


class Trigger(enum.StrEnum):
    CHANGE = "change"  # the KeylessApp was created or its spec changed
    RESUME = "resume"  # the operator started and found the KeylessApp
    REFRESH = "refresh"  # the refresh interval passed: read everything back and repair drift


def refresh_for(trigger: Trigger, applied_to: Mapping[str, str] | None, namespace: str) -> Refresh:
    """How much a reconcile reads back. A new or changed spec gets a full refresh (on EKS: the cluster's listing,
    which also finds what keyless left in a namespace the target no longer uses). A periodic refresh, or a restart,
    of an app already applied in this namespace reads back each binding by the id keyless recorded for it: that
    costs one read per binding, not a listing of the whole cluster per app, which a fleet could not afford."""
    if trigger is Trigger.CHANGE or not applied_to or applied_to.get("namespace") != namespace:
        return Refresh.FULL
    return Refresh.BOUND


@dataclass(frozen=True, slots=True)
class Event:
    warning: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Outcome:
    """What a reconcile found and did, as the status and Events the controller writes.

    `retry_in`: seconds until the controller should try again (an error that may pass), or None when only the next
    change or refresh interval should; `applied_to` names the app and target keyless now holds bindings for."""

    conditions: tuple[Condition, ...]
    events: tuple[Event, ...] = ()
    bindings: tuple[dict[str, str], ...] | None = None
    last_plan: dict[str, Any] | None = None
    retry_in: float | None = None
    applied_to: dict[str, str] | None = None
    failures: int = 0  # errors in a row, for the backoff

    @property
    def drifted(self) -> bool:
        return any(c.type is ConditionType.DRIFTED and c.status for c in self.conditions)


def _blocked(reason: str, message: str, *, retry_in: float | None = None, failures: int = 0) -> Outcome:
    return Outcome(conditions=(Condition(ConditionType.BLOCKED, True, reason, message),
                               Condition(ConditionType.READY, False, reason, message)),
                   events=(Event(True, reason, message),), retry_in=retry_in, failures=failures)


def backoff(failures: int, rng: random.Random) -> float:
    """Seconds before retry number `failures` (1, 2, ...): exponential, capped, with full jitter on its upper half."""
    ceiling = min(BACKOFF_MAX, BACKOFF_BASE * float(2 ** max(0, failures - 1)))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


ReadConfigMap = Callable[[str, str, str], str | None]  # (namespace, name, key) -> text, None if missing
Connect = Callable[[str, AnyTarget], tuple[Provider, KubeSide]]


@dataclass
class Reconciler:
    """Reconciles KeylessApps with one targets file; `holder` names this operator replica in the apps' locks."""

    targets_file: Path
    holder: str
    read_config_map: ReadConfigMap
    connect: Connect = engine.connect
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    lock_duration: int = LOCK_DURATION  # seconds a dead replica's locks outlive it
    _targets: tuple[float, Targets] | None = field(default=None, init=False)

    # ---- inputs ----------------------------------------------------------------------------------------------

    def _load_targets(self) -> Targets:
        """The targets file, read again when it changed (a mounted ConfigMap is updated in place)."""
        stamp = self.targets_file.stat().st_mtime
        if self._targets is None or self._targets[0] != stamp:
            self._targets = (stamp, load_targets_file(self.targets_file, {}))
        return self._targets[1]

    def _porter_yaml(self, namespace: str, spec: KeylessAppSpec) -> str:
        if spec.porter_yaml is not None:
            return spec.porter_yaml
        assert spec.porter_yaml_from is not None  # parse_spec holds that there is exactly one
        ref = spec.porter_yaml_from
        text = self.read_config_map(namespace, ref.name, ref.key)
        if text is None:
            raise _Missing(f"ConfigMap {namespace}/{ref.name} has no key {ref.key!r} (or does not exist)",
                           f"create it: kubectl create configmap {ref.name} -n {namespace} "
                           f"--from-file={ref.key}=porter.yaml")
        return text

    def _load(self, namespace: str, name: str, spec: KeylessAppSpec) -> tuple[LoadedApp, str]:
        text = self._porter_yaml(namespace, spec)
        loaded = load_app(text.encode(), porter_yaml_source(namespace, name, spec), {}, spec.app)
        # porter.yaml's name, else the KeylessApp's own: an app always has one.
        return loaded, resolve_app_name(loaded, spec.app, {"PORTER_APP_NAME": name})

    # ---- reconcile -------------------------------------------------------------------------------------------

    def reconcile(self, namespace: str, name: str, spec_body: Mapping[str, Any], trigger: Trigger, *,
                  failures: int = 0, publish: Callable[[Outcome], None] | None = None,
                  previous_target: Mapping[str, str] | None = None) -> Outcome:
        """Plan the app on its target and apply what differs (unless suspended); `publish` hears the drift found
        before the repair starts, so that `Drifted` is visible while keyless repairs it."""
        where = f"keylessapp/{namespace}/{name}"
        try:
            spec = parse_spec(spec_body, where)
            loaded, app = self._load(namespace, name, spec)
            targets = self._load_targets()
            target = targets.get(spec.target)
        except InvalidInput as exc:
            # Nothing a retry cures: the next edit of the KeylessApp (or of the targets file) reconciles again.
            return _blocked("InvalidInput", exc.render())
        except _Missing as exc:
            return _blocked("PorterYamlMissing", exc.render(), retry_in=backoff(failures + 1, self.rng),
                            failures=failures + 1)
        except OSError as exc:
            return _blocked("TargetsFileUnreadable", f"{self.targets_file}: {exc.strerror or exc}",
                            retry_in=backoff(failures + 1, self.rng), failures=failures + 1)
        events: list[Event] = []
        previous = previous_target or {}
        moved = bool(previous) and (previous.get("target"), previous.get("app")) != (spec.target, app)
        if moved:
            # The app moved (another target or name): what keyless bound for the old one goes first.
            left = self.remove(namespace, name, previous)
            if left.retry_in is not None:
                return left
            events.extend(left.events)
        try:
            refresh = refresh_for(trigger, None if moved else previous_target, target.namespace)
            outcome = self._plan_and_apply(spec, loaded, app, target, trigger, refresh, failures, publish)
        except LockHeld as exc:
            return Outcome(conditions=(), events=(Event(False, "Waiting", exc.message),),
                           retry_in=LOCK_RETRY + self.rng.uniform(0, LOCK_RETRY / 2), failures=failures)
        except PreflightFailed as exc:
            return _blocked("PreflightFailed", exc.render(), retry_in=backoff(failures + 1, self.rng),
                            failures=failures + 1)
        except KeylessError as exc:
            message = exc.render()
            return Outcome(conditions=(Condition(ConditionType.READY, False, "CloudError", message),),
                           events=(Event(True, "CloudError", message),),
                           retry_in=backoff(failures + 1, self.rng), failures=failures + 1)
        return Outcome(outcome.conditions, (*events, *outcome.events), outcome.bindings, outcome.last_plan,
                       outcome.retry_in, outcome.applied_to, outcome.failures)

    def _plan_and_apply(self, spec: KeylessAppSpec, loaded: LoadedApp, app: str, target: AnyTarget,
                        trigger: Trigger, refresh: Refresh, failures: int,
                        publish: Callable[[Outcome], None] | None) -> Outcome:
        provider, kube = self.connect(spec.target, target)
        with engine.app_lock(kube, app, spec.target, target.namespace, timeout=0, holder=self.holder,
                             duration=self.lock_duration, clock=self.clock, sleep=self.sleep) as held:
            planned = engine.plan_app(engine.PlanInput(loaded, app, spec.target, target), provider, kube,
                                      refresh=refresh)
            plan = planned.plan
            stamp = self.now().strftime("%Y-%m-%dT%H:%M:%SZ")
            applied_to = {"target": spec.target, "app": app, "namespace": target.namespace}
            if plan.blockers:
                message = "; ".join(f"{b.service}: {b.message}" + (f" (fix: {b.hint})" if b.hint else "")
                                    for b in plan.blockers)
                blocked = _blocked("ForeignObject", message, retry_in=backoff(failures + 1, self.rng),
                                   failures=failures + 1)
                return Outcome(blocked.conditions, blocked.events, tuple(binding_states(plan, applied=False)),
                               plan_summary(plan, stamp, False), blocked.retry_in, applied_to, blocked.failures)
            not_blocked = Condition(ConditionType.BLOCKED, False, "NotBlocked")
            if not plan.changes:
                return Outcome(
                    conditions=(Condition(ConditionType.READY, True, "UpToDate", plan.summary()),
                                Condition(ConditionType.DRIFTED, False, "InSync"), not_blocked),
                    bindings=tuple(binding_states(plan)), last_plan=None, applied_to=applied_to)
            drift = trigger is Trigger.REFRESH
            events: list[Event] = []
            if drift:
                message = f"the clouds or the cluster differ from porter.yaml: {_changes(plan)}"
                events.append(Event(True, "Drifted", message))
                if publish is not None:
                    publish(Outcome(conditions=(Condition(ConditionType.DRIFTED, True, "DriftFound", message),),
                                    events=tuple(events)))
            if spec.suspend:
                reason = "Suspended"
                message = f"spec.suspend is true: {plan.summary()} (not applied)"
                conditions = [Condition(ConditionType.READY, False, reason, message), not_blocked]
                if drift:
                    conditions.append(Condition(ConditionType.DRIFTED, True, "DriftFound", _changes(plan)))
                return Outcome(tuple(conditions), (*events, Event(False, reason, message)),
                               tuple(binding_states(plan, applied=False)), plan_summary(plan, stamp, False),
                               applied_to=applied_to)
            report = engine.apply_plan(plan, provider, kube, clock=self.clock, sleep=self.sleep, lock=held)
            failed = frozenset(r.action.service for r in report.failures)
            ids = {r.action.service: r.binding_id for r in report.results if r.binding_id}
            bindings = tuple(binding_states(plan, failed, binding_ids=ids))
            if report.failures:
                message = "; ".join(f"{r.action.service}: {r.message}" for r in report.failures)
                return Outcome(
                    conditions=(Condition(ConditionType.READY, False, "ApplyFailed", message), not_blocked),
                    events=(*events, Event(True, "ApplyFailed", message)), bindings=bindings,
                    last_plan=plan_summary(plan, stamp, False), retry_in=backoff(failures + 1, self.rng),
                    applied_to=applied_to, failures=failures + 1)
            done = f"{plan.summary()} Applied."
            events.append(Event(False, "Repaired" if drift else "Applied", done))
            return Outcome(
                conditions=(Condition(ConditionType.READY, True, "Applied", done),
                            Condition(ConditionType.DRIFTED, False, "Repaired" if drift else "InSync"), not_blocked),
                events=tuple(events), bindings=bindings, last_plan=plan_summary(plan, stamp, True),
                applied_to=applied_to)

    # ---- removal ---------------------------------------------------------------------------------------------

    def remove(self, namespace: str, name: str, applied_to: Mapping[str, str] | None) -> Outcome:
        """Remove what keyless bound for the app on the target it was applied to (a deleted KeylessApp, or one
        that moved); objects keyless does not own are never touched. Nothing was applied: nothing to do."""
        if not applied_to or not applied_to.get("target") or not applied_to.get("app"):
            return Outcome(conditions=(), events=(Event(False, "NothingToRemove", "keyless never applied it"),))
        target_name, app = applied_to["target"], applied_to["app"]
        try:
            target = self._load_targets().get(target_name)
        except InvalidInput as exc:
            return _blocked("InvalidInput", f"cannot remove {app} from {target_name}: {exc.render()}",
                            retry_in=BACKOFF_MAX)
        empty = app_without_services(app, f"keylessapp/{namespace}/{name}")
        try:
            provider, kube = self.connect(target_name, target)
            with engine.app_lock(kube, app, target_name, target.namespace, timeout=0, holder=self.holder,
                                 duration=self.lock_duration, clock=self.clock, sleep=self.sleep) as held:
                plan = engine.plan_app(engine.PlanInput(empty, app, target_name, target), provider, kube).plan
                report = engine.apply_plan(plan, provider, kube, clock=self.clock, sleep=self.sleep, lock=held)
        except LockHeld as exc:
            return Outcome(conditions=(), events=(Event(False, "Waiting", exc.message),), retry_in=LOCK_RETRY)
        except KeylessError as exc:
            return Outcome(conditions=(Condition(ConditionType.READY, False, "RemoveFailed", exc.render()),),
                           events=(Event(True, "RemoveFailed", exc.render()),),
                           retry_in=backoff(1, self.rng))
        if report.failures:
            message = "; ".join(f"{r.action.service}: {r.message}" for r in report.failures)
            return Outcome(conditions=(Condition(ConditionType.READY, False, "RemoveFailed", message),),
                           events=(Event(True, "RemoveFailed", message),), retry_in=backoff(1, self.rng))
        removed = sum(1 for row in binding_states(plan) if row["state"] == BindingState.REMOVED.value)
        return Outcome(conditions=(), events=(Event(False, "Removed",
                                                    f"removed {removed} binding(s) of {app} from {target_name}"),))


class _Missing(KeylessError):
    """porter.yaml's ConfigMap (or its key) is not there yet."""


def _changes(plan: Plan) -> str:
    lines = [f"{a.kind.symbol} {a.resource.value} {a.address}: {a.reason}" for a in plan.changes]
    shown = "; ".join(lines[:5])
    return shown + (f" (and {len(lines) - 5} more)" if len(lines) > 5 else "")
