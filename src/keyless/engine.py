"""The engine: plan an app on a target from desired and observed state, then apply the plan service by service."""

from __future__ import annotations

import getpass
import heapq
import importlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from keyless import clouds
from keyless.audit import AuditReport
from keyless.bindings import Binding, desired_bindings, workloads
from keyless.clouds import BINDING_ANNOTATION, PENDING_ANNOTATION
from keyless.diagnostics import Diagnostic
from keyless.errors import ApplyFailed, KeylessError, LockHeld, LockLost, PreflightFailed
from keyless.kube import lock as applock
from keyless.kube.base import KubeSide
from keyless.kube.lock import DEFAULT_LOCK_TIMEOUT, LOCK_DURATION, AppLock, LockState, LockStatus
from keyless.kube.manifests import IDENTITY_RECORD
from keyless.ownership import SERVICE_LABEL
from keyless.plan.model import AccountSpec, Action, ActionKind, Observed, Plan, Refresh, Resource
from keyless.plan.planner import PlanRequest, make_plan
from keyless.porter.loader import LoadedApp
from keyless.providers.base import (
    ActionOutcome,
    BatchWriter,
    CapacityChecker,
    PreflightIssue,
    PreflightSeverity,
    Provider,
    TokenExchanger,
    VisibilityWaiter,
)
from keyless.providers.retry import RetryPolicy, poll
from keyless.targets import AnyTarget

log = logging.getLogger(__name__)

VISIBILITY_TIMEOUT = 60.0
# Azure documents seconds to minutes for a new federated credential to work.
PROPAGATION_POLICY = RetryPolicy(max_attempts=1_000, base_delay=1.0, max_delay=5.0, deadline=180.0)
ROLLOUT_TIMEOUT = 120.0
MAX_PARALLEL_SERVICES = 16  # I/O bound: most of a service's time is waiting for propagation and rollout


@dataclass(frozen=True, slots=True)
class PlanInput:
    """Everything plan_app needs to know about the app and where it goes."""

    loaded: LoadedApp
    app: str
    target_name: str
    target: AnyTarget


@dataclass(frozen=True, slots=True)
class PlannedApp:
    plan: Plan
    warnings: tuple[PreflightIssue, ...]
    notes: tuple[Diagnostic, ...]


def _blocking(issues: Sequence[PreflightIssue]) -> None:
    blocking = [i for i in issues if i.severity is PreflightSeverity.BLOCKING]
    if not blocking:
        return
    lines = []
    for issue in blocking:
        who = f"service {issue.service}: " if issue.service else ""
        lines.append(f"preflight: {who}{issue.message}" + (f"\n    fix: {issue.fix}" if issue.fix else ""))
    raise PreflightFailed("\n".join(lines))


def observe_all(provider: Provider, kube: KubeSide, app: str, target_name: str, namespace: str,
                bindings: Sequence[Binding], *, refresh: Refresh = Refresh.FULL) -> Observed:
    accounts, workloads = kube.observe(namespace, app, [b.service_account for b in bindings])
    # The identities keyless bound (the record) or was about to bind when an apply was interrupted (pending).
    recorded = sorted({a.annotations[IDENTITY_RECORD] for a in accounts if a.annotations.get(IDENTITY_RECORD)}
                      | {i for a in accounts for i in a.annotations.get(PENDING_ANNOTATION, "").split(",") if i})
    cloud = provider.observe(app, target_name, bindings, recorded, accounts, refresh=refresh)
    return Observed(bindings=tuple(cloud), service_accounts=tuple(accounts), workloads=tuple(workloads))


def plan_app(spec: PlanInput, provider: Provider, kube: KubeSide, *, refresh: Refresh = Refresh.FULL) -> PlannedApp:
    """Resolve identities, preflight, observe, and compute the Plan. Raises PreflightFailed (exit 3).

    `refresh`: how much is read back rather than taken from keyless's journal (Refresh.NONE is `--refresh=false`)."""
    desired, notes = desired_bindings(spec.loaded, spec.app, spec.target_name, spec.target)
    resolved, issues = provider.resolve(desired)
    _blocking(issues)
    issues = [*issues, *provider.preflight(resolved)]
    _blocking(issues)
    observed = observe_all(provider, kube, spec.app, spec.target_name, spec.target.namespace, resolved,
                           refresh=refresh)
    declared = tuple(name for name, _, _, _ in workloads(spec.loaded))  # services, predeploy and initialDeploy
    request = PlanRequest(
        app=spec.app, target=spec.target_name, cloud=clouds.for_target(spec.target).cloud, desired=tuple(resolved),
        services_in_app=declared,
        notes=tuple(f"{i.service + ': ' if i.service else ''}{i.message}" for i in issues),
    )
    plan = make_plan(request, observed)
    if isinstance(provider, CapacityChecker):
        # A cluster-wide limit only creates can pass: counted once the plan says how many there are.
        creating = sum(1 for a in plan.changes if a.resource is Resource.CLOUD_BINDING and a.kind is ActionKind.CREATE)
        _blocking(provider.check_capacity(creating))
    return PlannedApp(plan=plan, warnings=tuple(issues), notes=tuple(notes))


# --- the apply lock ----------------------------------------------------------------------------

# How often a waiting apply asks again: soon at first (a short apply ends soon), then every few seconds.
LOCK_POLL = RetryPolicy(max_attempts=1_000_000, base_delay=1.0, max_delay=5.0, deadline=DEFAULT_LOCK_TIMEOUT)


@dataclass
class HeldLock:
    """The app's apply lock while this process holds it; `lost` is set when a renewal found someone else holding it."""

    lock: AppLock
    lost: threading.Event = field(default_factory=threading.Event)
    error: LockLost | None = None


def default_holder(who: str | None = None) -> str:
    """This process as a lock holder: `who` (else the CI job, else the user) at this host and pid."""
    try:
        user = who or getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        user = ""
    return applock.holder_identity({} if who else os.environ, user, socket.gethostname(), os.getpid())


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment is not None else "an unknown time"


def _held_error(lock: AppLock, status: LockStatus, timeout: float) -> LockHeld:
    holder = status.holder or "another apply"
    waited = "did not wait (--lock-timeout 0)" if timeout <= 0 else f"waited {timeout:g}s (--lock-timeout)"
    return LockHeld(
        f"{lock.describe()} is locked by {holder} since {_when(status.since)}; {waited}",
        f"let that apply finish, then run apply again, or wait longer with --lock-timeout (e.g. 10m); a holder that "
        f"died frees the lock {lock.duration}s after its last renewal (now: until {_when(status.until)})")


def _keep(kube: KubeSide, held: HeldLock, stop: threading.Event) -> None:
    """Renew the lock every third of its lease until `stop`; a lock someone else took stops the apply."""
    while not stop.wait(held.lock.renew_every):
        try:
            kube.renew_lock(held.lock)
        except LockLost as exc:
            held.error = exc
            held.lost.set()
            return
        except KeylessError as exc:  # retried already; the lease outlasts two more failed renewals
            log.warning("could not renew the apply lock of %s: %s", held.lock.describe(), exc.message)


@contextmanager
def app_lock(kube: KubeSide, app: str, target_name: str, namespace: str, *,
             timeout: float = DEFAULT_LOCK_TIMEOUT, holder: str | None = None, duration: int = LOCK_DURATION,
             clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
             waiting: Callable[[LockStatus], None] | None = None) -> Iterator[HeldLock]:
    """Hold the apply lock of `app` on `target_name` (a Lease in `namespace`) for the block: wait for it up to
    `timeout` seconds (0: not at all) or raise LockHeld naming its holder; renew it meanwhile; release it at the end,
    whatever ends the block (an error, Ctrl-C). `waiting` hears who holds it when this has to wait.

    A face takes it before it observes, so that what it applies was observed under the lock: a second apply waits
    for the first and then plans from what the first left, instead of applying a plan the first made stale."""
    lock = applock.app_lock(namespace, app, target_name, holder or default_holder(), duration)
    last = LockStatus(LockState.HELD)
    told = waiting is None or timeout <= 0

    def mine() -> bool:
        nonlocal last, told
        last = kube.try_lock(lock)
        if last.state is LockState.HELD and not told and waiting is not None:
            told = True
            waiting(last)
        return last.state is LockState.MINE

    if not poll(mine, policy=replace(LOCK_POLL, deadline=max(0.0, timeout)), what=f"the lock of {lock.describe()}",
                sleep=sleep, clock=clock):
        raise _held_error(lock, last, timeout)
    held = HeldLock(lock)
    stop = threading.Event()
    renewer = threading.Thread(target=_keep, args=(kube, held, stop), name="keyless-lock", daemon=True)
    renewer.start()
    try:
        yield held
    finally:
        stop.set()
        renewer.join()
        try:
            kube.release_lock(lock)
        except KeylessError as exc:  # harmless: the lease runs out by itself
            log.warning("could not release the apply lock of %s (it frees itself in %ss): %s", lock.describe(),
                        lock.duration, exc.message)


# --- applying ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActionResult:
    action: Action
    ok: bool
    message: str
    seconds: float
    binding_id: str | None = None  # the binding a cloud write left in place (status pages show it)


@dataclass(frozen=True)
class ApplyReport:
    results: tuple[ActionResult, ...]

    @property
    def failures(self) -> list[ActionResult]:
        return [r for r in self.results if not r.ok]


Progress = Callable[[ActionResult], None]


@dataclass(frozen=True, slots=True)
class _Done:
    """What one applied action reports: its message, and for a cloud write, the seconds until it settles."""

    message: str
    settles_in: float = 0.0
    binding_id: str | None = None  # the binding a cloud write left in place (not a delete's)


@dataclass(frozen=True, slots=True)
class _Time:
    """The clock apply reads and the sleep it waits with (tests pass virtual ones)."""

    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def _apply_one(action: Action, provider: Provider, kube: KubeSide, written: ActionOutcome | None = None,
               journal: str | None = None, timing: _Time = _Time()) -> _Done:
    """Carry out one action exactly as the plan's typed fields say (`written`: its cloud write, done already;
    `journal`: the binding id the service's cloud write answered with, recorded on its account)."""
    ref = action.ref
    if action.resource is Resource.CLOUD_BINDING:
        if written is None and action.intent is not None:
            kube.record_intent(action.intent)  # before the write: an interruption cannot hide what it binds
        # A provider serializes writes the cloud refuses to run at once (Azure).
        outcome = written if written is not None else provider.apply(action)
        if not outcome.ok:
            raise ApplyFailed(outcome.message)
        kept = None if action.kind is ActionKind.DELETE else outcome.binding_id
        if outcome.settles_in is not None or action.kind not in (ActionKind.CREATE, ActionKind.UPDATE,
                                                                    ActionKind.REPLACE):
            return _Done(outcome.message, outcome.settles_in or 0.0, kept)
        if isinstance(provider, VisibilityWaiter) and not provider.wait_visible(action, VISIBILITY_TIMEOUT):
            return _Done(outcome.message + f" (not yet visible after {VISIBILITY_TIMEOUT:.0f}s; pods may wait for it)",
                         binding_id=kept)
        return _Done(outcome.message, binding_id=kept)
    if action.resource is Resource.SERVICE_ACCOUNT:
        if action.kind is ActionKind.DELETE:
            kube.delete_service_account(ref)
            return _Done(f"deleted service account {action.address}")
        if action.account is not None:
            account = action.account
            if journal is not None:  # the plan could not know a new binding's id; the write's answer does
                account = AccountSpec(labels=account.labels,
                                      annotations={**account.annotations, BINDING_ANNOTATION: journal})
            kube.apply_service_account(ref, account, action.remove_annotations)
        else:
            kube.remove_annotations(ref, action.remove_annotations)
        return _Done(f"applied service account {action.address}")
    if action.pod_template is None:
        raise ApplyFailed(f"{action.address}: a workload update without its pod template; the plan is damaged",
                          "plan again")
    propagation = _wait_propagation(action.desired, provider, kube, timing) if action.desired is not None else ""
    kube.update_workload(ref, action.service, action.pod_template)
    if ref.kind == "Deployment" and not kube.wait_rollout(ref.namespace, ref.name, ROLLOUT_TIMEOUT):
        return _Done(f"restarted {action.address}; rollout not finished after {ROLLOUT_TIMEOUT:.0f}s{propagation}")
    return _Done(f"restarted {action.address}{propagation}")


def _clear_intents(actions: Sequence[Action], kube: KubeSide) -> None:
    """The service's apply is done: its account records what is bound, so the pending record can go."""
    for account in dict.fromkeys(a.intent.account for a in actions if a.intent is not None):
        try:
            kube.remove_annotations(account, [PENDING_ANNOTATION])
        except KeylessError as exc:  # harmless: the next plan clears it, and meanwhile only looks a bit further
            log.warning("could not clear the pending identities of %s/%s: %s", account.namespace, account.name,
                        exc.message)


class _RefusedAgain(Exception):
    """An exchange refused after earlier ones were accepted: the credential is still converging."""


def _wait_propagation(binding: Binding, provider: Provider, kube: KubeSide, timing: _Time = _Time()) -> str:
    """Where the cloud can say so (Azure), wait until the new federation accepts the account's token, and keeps
    accepting it for the provider's `exchange_steady_for` seconds.

    Pods restarted before that fail their first token exchanges (AADSTS70021); and one accepted exchange is not
    proof, because Entra ID can refuse again while its replicas converge. Waiting here, bounded by
    PROPAGATION_POLICY's deadline, makes the rollout land on a working identity; the message says which happened.
    A refusal other than "not propagated yet" ends the wait at once (the provider raises it).
    """
    if not isinstance(provider, TokenExchanger):
        return ""
    token = kube.request_token(binding.namespace, binding.service_account, provider.token_audience)
    if token is None:
        return "; propagation not checked (render mode)"
    start = timing.clock()
    last = ""
    refusals_after_success = 0

    def accepted() -> bool:
        nonlocal last
        ok, last = provider.try_token_exchange(binding, token)
        return ok

    def steady(since: float) -> Callable[[], bool]:
        def check() -> bool:
            if not accepted():
                raise _RefusedAgain(last)
            return timing.clock() - since >= provider.exchange_steady_for
        return check

    what = f"token exchange for {binding.service_account}"
    while True:
        left = PROPAGATION_POLICY.deadline - (timing.clock() - start)
        if left <= 0 or not poll(accepted, policy=replace(PROPAGATION_POLICY, deadline=left), what=what,
                                 sleep=timing.sleep, clock=timing.clock):
            return (f"; token exchange still refused after {PROPAGATION_POLICY.deadline:.0f}s ({last}): pods restart "
                    "anyway and the SDK retries until the credential propagates")
        first = timing.clock()
        left = PROPAGATION_POLICY.deadline - (first - start)
        # Look again every second or so (the one poll helper, on a flat schedule) until it has held long enough.
        every = RetryPolicy(max_attempts=1_000_000, base_delay=1.0, max_delay=1.0, deadline=max(0.0, left))
        try:
            if provider.exchange_steady_for <= 0 or poll(steady(first), policy=every, what=what, sleep=timing.sleep,
                                                         clock=timing.clock):
                flapped = f", after {refusals_after_success} refusal(s) past a first success" \
                    if refusals_after_success else ""
                return (f"; token exchange works ({first - start:.0f}s after the credential, steady for "
                        f"{timing.clock() - first:.0f}s{flapped})")
        except _RefusedAgain:
            refusals_after_success += 1
            continue
        return (f"; token exchange still flapping after {PROPAGATION_POLICY.deadline:.0f}s: pods restart anyway and "
                "the SDK retries while the credential converges")


def _write_together(actions: Sequence[Action], provider: BatchWriter, kube: KubeSide) -> dict[int, ActionOutcome]:
    """Every cloud write of the plan at once, for a cloud whose one object holds several services' bindings (a GCP
    IAM policy): each intent is recorded first, and an action whose intent could not be recorded is not written."""
    outcomes: dict[int, ActionOutcome] = {}
    ready: list[Action] = []
    for action in actions:
        try:
            if action.intent is not None:
                kube.record_intent(action.intent)
            ready.append(action)
        except KeylessError as exc:
            outcomes[id(action)] = ActionOutcome(False, exc.message)
    outcomes.update((id(a), o) for a, o in zip(ready, provider.apply_all(ready), strict=True))
    return outcomes


def apply_plan(plan: Plan, provider: Provider, kube: KubeSide, progress: Progress | None = None, *,
               clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
               lock: HeldLock | None = None) -> ApplyReport:
    """Apply each service's actions in order; services run concurrently; one failure stops only its service.

    A service's cloud binding and service account go first, as fast as the provider's rate limits allow; its
    workloads restart once its own binding has settled (the write's answer says when), so the settle waits of all
    services overlap instead of holding a worker each, and nothing polls the cloud to find out.

    The app's apply lock is held throughout: `lock`, taken by the caller before it observed (`app_lock`), or else
    one taken here that does not wait (a plan observed before another apply's changes must not follow them).
    """
    if lock is None and plan.changes:
        with app_lock(kube, plan.app, plan.target, plan.changes[0].ref.namespace, timeout=0.0, clock=clock,
                      sleep=sleep) as held:
            return apply_plan(plan, provider, kube, progress, clock=clock, sleep=sleep, lock=held)
    lost = lock.lost if lock is not None else threading.Event()
    timing = _Time(clock, sleep)
    by_service: dict[str, list[Action]] = {}
    for action in plan.changes:
        by_service.setdefault(action.service, []).append(action)
    written: dict[int, ActionOutcome] = {}
    if isinstance(provider, BatchWriter):
        written = _write_together([a for a in plan.changes if a.resource is Resource.CLOUD_BINDING], provider, kube)

    stopping = threading.Event()
    results: dict[str, list[ActionResult]] = {service: [] for service in by_service}

    def run(service: str, actions: Sequence[Action]) -> float | None:
        """Carry out `actions` in order; when (on `clock`) the last cloud write settles, or None on a failure."""
        settled_at = clock()
        journal: str | None = None
        for action in actions:
            if stopping.is_set() or lost.is_set():
                return None  # Ctrl-C or a lost lock: finish the call in flight, start nothing new
            start = time.monotonic()
            try:
                done = _apply_one(action, provider, kube, written.get(id(action)), journal, timing)
                result = ActionResult(action, True, done.message, time.monotonic() - start, done.binding_id)
                settled_at = max(settled_at, clock() + done.settles_in)
                journal = done.binding_id or journal
            except KeylessError as exc:
                result = ActionResult(action, False, exc.message, time.monotonic() - start)
            except Exception as exc:  # a bug or an SDK surprise: report it for this service, keep the others going
                result = ActionResult(action, False, f"unexpected error: {type(exc).__name__}: {exc}",
                                      time.monotonic() - start)
            results[service].append(result)
            if progress is not None:
                progress(result)
            if not result.ok:
                return None  # later steps of this service depend on this one
        return settled_at

    def prepare(service: str) -> float | None:
        """The service's binding and account; when its pods may restart (on `clock`), or None if it stopped."""
        return run(service, [a for a in by_service[service] if a.resource is not Resource.WORKLOAD])

    def finish(service: str) -> None:
        actions = by_service[service]
        if run(service, [a for a in actions if a.resource is Resource.WORKLOAD]) is not None:
            _clear_intents(actions, kube)

    workers = max(1, min(MAX_PARALLEL_SERVICES, len(by_service)))
    # Two pools: restarts never queue behind the writes of services still waiting for theirs.
    writers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keyless-apply")
    restarters = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keyless-restart")
    try:
        preparing: dict[Future[float | None], str] = {writers.submit(prepare, s): s for s in by_service}
        settling: list[tuple[float, str]] = []  # (ready at, service), soonest first
        finishing: list[Future[None]] = []
        while preparing or settling:
            while settling and settling[0][0] <= clock():
                finishing.append(restarters.submit(finish, heapq.heappop(settling)[1]))
            if preparing:
                timeout = max(0.0, settling[0][0] - clock()) if settling else None
                done, _ = wait(preparing, timeout=timeout, return_when=FIRST_COMPLETED)
                for future in done:
                    service = preparing.pop(future)
                    ready_at = future.result()
                    if ready_at is not None:
                        heapq.heappush(settling, (ready_at, service))
            elif settling:
                sleep(max(0.0, settling[0][0] - clock()))
        for restart in finishing:
            restart.result()
    except KeyboardInterrupt:
        stopping.set()
        for pool in (writers, restarters):
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    writers.shutdown()
    restarters.shutdown()
    if lost.is_set() and lock is not None and lock.error is not None:
        raise lock.error
    ordered = [r for service in by_service for r in results[service]]
    if not any(not r.ok for r in ordered) and not stopping.is_set():
        kube.complete(plan)  # render mode writes the whole app's files once the cloud side is done
    return ApplyReport(results=tuple(ordered))


class StalePlan(ApplyFailed):
    """A saved plan whose observed world has changed: applying it could undo someone's change."""

    def __init__(self) -> None:
        super().__init__("the cloud or cluster changed since this plan was made; the plan is stale",
                         "run `keyless plan` again, review it, and apply the new plan")


def observe_saved(plan: Plan, provider: Provider, kube: KubeSide, namespace: str, *,
                  refresh: Refresh = Refresh.FULL) -> Observed:
    """Observe again what a (saved) plan was computed from: once, to tell whether it is stale."""
    return observe_all(provider, kube, plan.app, plan.target, namespace, plan.wanted_bindings(), refresh=refresh)


def render_app(spec: PlanInput, provider: Provider, out_dir: str | None) -> list[str]:
    """`keyless render`: resolve identities (read-only) and write the Kubernetes side to files; no cloud writes."""
    from keyless.kube.manifests import rendered_services
    from keyless.kube.render import RenderedKube

    desired, _ = desired_bindings(spec.loaded, spec.app, spec.target_name, spec.target)
    resolved, issues = provider.resolve(desired)
    _blocking(issues)
    side = spec.target.kubernetes.model_copy(update={"out_dir": out_dir}) if out_dir else spec.target.kubernetes
    # The plan of a cluster with nothing on it: every bound service's account and pod template.
    request = PlanRequest(app=spec.app, target=spec.target_name, cloud=clouds.for_target(spec.target).cloud,
                          desired=tuple(resolved), services_in_app=tuple(n for n, _, _, _ in workloads(spec.loaded)))
    plan = make_plan(request, Observed())
    written = RenderedKube(spec.target_name, side).write_app(rendered_services(plan.actions), app=spec.app)
    return [str(p) for p in written]


def _load(path: str) -> Any:
    """The class an entry names as `module:attribute` (the registry names I/O code without importing it)."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def connect(target_name: str, target: AnyTarget) -> tuple[Provider, KubeSide]:
    """The provider and Kubernetes side for a target (clients are built from standard SDK configuration)."""
    from keyless.targets import KubernetesMode

    entry = clouds.for_target(target)
    provider: Provider = _load(entry.provider)(target)
    kube: KubeSide
    if target.kubernetes.mode is KubernetesMode.RENDER:
        from keyless.kube.render import RenderedKube

        kube = RenderedKube(target_name, target.kubernetes)
    else:
        from keyless.kube.cluster import ClusterKube

        kube = ClusterKube(target.kubernetes)
    return provider, kube


def preflight_target(target_name: str, target: AnyTarget) -> list[PreflightIssue]:
    """The checks that hold for a whole target, whatever the app: cluster found, agent or issuer enabled."""
    provider, _ = connect(target_name, target)
    return provider.preflight([])


def audit_app(target_name: str, target: AnyTarget, app_name: str, bindings: Sequence[Binding]) -> AuditReport:
    """Fetch the documents of each connection's identity and run the least-privilege rules over them."""
    entry = clouds.for_target(target)
    report: AuditReport = _load(entry.auditor)(target).audit(app_name, target_name, list(bindings))
    return report


# --- status ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    service: str
    binding_id: str | None
    identity: str | None
    service_account: str | None
    drift: str | None
    principal: str | None = None  # for direct grants, where the cloud has one (GKE)

    def as_json(self) -> dict[str, str | None]:
        return {"service": self.service, "binding": self.binding_id, "identity": self.identity,
                "serviceAccount": self.service_account, "drift": self.drift, "principal": self.principal}


def app_status(app: str, target_name: str, target: AnyTarget, provider: Provider, kube: KubeSide,
               loaded: LoadedApp | None) -> list[ServiceStatus]:
    """Compare what keyless recorded on its service accounts with the cloud bindings it owns (and porter.yaml)."""
    desired: list[Binding] = []
    if loaded is not None:
        wanted, _ = desired_bindings(loaded, app, target_name, target)
        desired, _ = provider.resolve(wanted)
    observed = observe_all(provider, kube, app, target_name, target.namespace, desired)
    owned = {b.owner.service: b for b in observed.bindings
             if b.owner is not None and b.owner.app == app and b.owner.target == target_name}
    accounts = {a.labels.get(SERVICE_LABEL): a for a in observed.service_accounts if a.labels.get(SERVICE_LABEL)}
    wanted_by_service = {b.service: b for b in desired}
    services = sorted(set(owned) | {s for s in accounts if s} | set(wanted_by_service))
    rows: list[ServiceStatus] = []
    for service in services:
        binding = owned.get(service)
        account = accounts.get(service)
        recorded = account.annotations.get(IDENTITY_RECORD) if account is not None else None
        want = wanted_by_service.get(service)
        drift: list[str] = []
        if binding is None and recorded:
            drift.append(f"{clouds.for_target(target).binding_kind} missing (deleted outside keyless): the service "
                         "account's annotation alone gives pods nothing; run apply")
        if binding is not None and recorded and binding.describe_identity() != recorded:
            drift.append(f"binding changed outside keyless (keyless set {recorded})")
        if binding is not None and account is None:
            drift.append("service account missing")
        if want is not None and binding is not None and account is not None and binding.binds(want.identity):
            # The cloud half without the Kubernetes half (an annotation edited away): pods cannot use the identity.
            for key, value in want.identity.annotations(service).items():
                if account.annotations.get(key) != value:
                    drift.append(f"service account lacks annotation {key}={value}: pods cannot use the identity; "
                                 "run apply")
        if want is not None and (binding is None or not binding.binds(want.identity)):
            drift.append(f"porter.yaml wants {want.identity.describe()}: run apply")
        if loaded is not None and want is None and binding is not None:
            drift.append("no longer in porter.yaml: run apply to remove it")
        rows.append(ServiceStatus(
            service=service,
            binding_id=binding.id if binding else None,
            identity=binding.describe_identity() if binding else None,
            service_account=f"{account.namespace}/{account.name}" if account else None,
            drift="; ".join(drift) or None,
            principal=want.principal if want is not None else None,
        ))
    return rows
