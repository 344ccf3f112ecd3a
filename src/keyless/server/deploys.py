"""Deploys run in the background: plan, then apply with each action recorded as it finishes; one per app."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from keyless import engine
from keyless.errors import KeylessError, PreflightFailed
from keyless.kube.base import KubeSide
from keyless.plan import Plan, planfile
from keyless.plan.render import render_text
from keyless.providers.base import Provider
from keyless.server.eventlog import EventLog
from keyless.server.operations import ControlPlane
from keyless.store import DeployActionRecord, DeployRecord, DeployStatus

log = logging.getLogger("keyless.server")

MAX_PARALLEL_DEPLOYS = 4  # different apps deploy side by side; each apply runs its services in parallel too
HEARTBEAT_SECONDS = 30.0


class DeployRunner:
    """Starts deploys and runs them on worker threads; the store's per-app lock keeps one per app."""

    def __init__(self, plane: ControlPlane, max_parallel: int = MAX_PARALLEL_DEPLOYS, server: str = "",
                 events: EventLog | None = None) -> None:
        self.server = server  # which server this is: its locks carry it, so it frees its own after a restart
        self.events = events or EventLog()
        self.plane = plane
        self.store = plane.store
        self._pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="keyless-deploy")
        self._running: dict[int, Future[None]] = {}
        self._lock = threading.Lock()

    # --- starting ------------------------------------------------------------------------------------

    def plan(self, app_name: str, target_name: str | None, actor: str) -> DeployRecord:
        """Plan now (synchronously) and keep the plan as a deploy to review and apply later (the API's plan)."""
        spec, _, _, plan = self._plan(app_name, target_name)
        return self.store.create_deploy(app_name, spec.target_name, actor, DeployStatus.PLANNED,
                                        plan=planfile.dump(plan), plan_text=render_text(plan))

    def plan_in_background(self, app_name: str, target_name: str | None, actor: str) -> DeployRecord:
        """Plan on a worker thread (the dashboard's Plan): the page answers at once and follows the planning, so an
        unreachable cloud or a failed preflight ends on the deploy page with its message, never on a timeout."""
        app = self.store.get_app(app_name)
        name, _ = self.plane.target_of(app, target_name)
        record = self.store.create_deploy(app_name, name, actor, DeployStatus.PLANNING, server=self.server)
        self._submit(record, "plan", lambda: self._plan_only(record))
        return record

    def deploy(self, app_name: str, target_name: str | None, actor: str) -> DeployRecord:
        """Plan and apply in the background (like `keyless apply --auto-approve`)."""
        app = self.store.get_app(app_name)
        name, _ = self.plane.target_of(app, target_name)  # a missing target is refused before anything starts
        self.plane.check_not_handed_over(app_name, name)
        record = self.store.create_deploy(app_name, name, actor, DeployStatus.PLANNING, server=self.server)
        self._submit(record, "deploy", lambda: self._plan_and_apply(record))
        return record

    def apply(self, deploy_id: int, actor: str) -> DeployRecord:
        """Apply a reviewed plan in the background; refused when the app changed since (make a new plan)."""
        planned = self.store.get_deploy(deploy_id)
        self.plane.check_not_handed_over(planned.app, planned.target_name)
        record = self.store.start_planned(deploy_id, actor, self.server)
        self._submit(record, "apply", lambda: self._apply_saved(record))
        return record

    def _submit(self, record: DeployRecord, kind: str, work: Callable[[], None]) -> None:
        deploy_id = record.id

        def run() -> None:
            self.events.emit("deploy.start", deploy=deploy_id, kind=kind, app=record.app, target=record.target_name,
                             requestedBy=record.requested_by)
            started = self.events.clock()
            stop = threading.Event()
            beat = threading.Thread(target=self._heartbeat, args=(deploy_id, stop), daemon=True)
            beat.start()
            try:
                work()
            except KeylessError as exc:
                status = DeployStatus.BLOCKED if isinstance(exc, PreflightFailed) else DeployStatus.FAILED
                self.store.finish_deploy(deploy_id, status, exc.render())
            except Exception as exc:  # a bug or an SDK surprise: the deploy fails, the server lives on
                log.exception("deploy %s failed unexpectedly", deploy_id)
                self.store.finish_deploy(deploy_id, DeployStatus.FAILED,
                                         f"unexpected error: {type(exc).__name__}: {exc}")
            finally:
                stop.set()
                with self._lock:
                    self._running.pop(deploy_id, None)
                self._log_finish(deploy_id, kind, record.app, started)

        with self._lock:
            self._running[deploy_id] = self._pool.submit(run)

    def _log_finish(self, deploy_id: int, kind: str, app: str, started: float) -> None:
        try:
            status = self.store.get_deploy(deploy_id).status.value
        except Exception:  # the database blinked: the finish is still logged, its status unknown
            status = "unknown"
        self.events.emit("deploy.finish", deploy=deploy_id, kind=kind, app=app, status=status,
                         seconds=round(self.events.clock() - started, 3))

    def _heartbeat(self, deploy_id: int, stop: threading.Event) -> None:
        """Keeps the app's lock fresh while a long step (propagation, rollout) runs."""
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                self.store.heartbeat(deploy_id)
            except Exception:  # the database blinked; the next beat or action will refresh the lock
                log.warning("heartbeat of deploy %s failed", deploy_id, exc_info=True)

    # --- running -------------------------------------------------------------------------------------

    def _plan(self, app_name: str, target_name: str | None) -> tuple[engine.PlanInput, Provider, KubeSide, Plan]:
        """The app's current porter.yaml planned on the target, with the clients that observed it."""
        spec = self.plane.plan_input(self.store.get_app(app_name), target_name)
        provider, kube = self.plane.connector(spec.target_name, spec.target)
        return spec, provider, kube, engine.plan_app(spec, provider, kube).plan

    def _plan_only(self, record: DeployRecord) -> None:
        """A background plan: kept as a planned deploy to review (blockers and all), which frees the app's lock."""
        _, _, _, plan = self._plan(record.app, record.target_name)
        self.store.set_deploy_plan(record.id, planfile.dump(plan), render_text(plan), len(plan.changes),
                                   DeployStatus.PLANNED)

    def _holder(self, record: DeployRecord) -> str:
        """This deploy as the holder of the app's apply lock, in words a person can trace back to it."""
        server = f" {self.server}" if self.server else ""
        return engine.default_holder(f"keyless serve{server} deploy {record.id} for {record.requested_by}")

    def _plan_and_apply(self, record: DeployRecord) -> None:
        spec = self.plane.plan_input(self.store.get_app(record.app), record.target_name)
        provider, kube = self.plane.connector(spec.target_name, spec.target)
        # Planned under the app's lock, like the CLI's apply: a CLI or operator apply running now is waited for.
        with engine.app_lock(kube, spec.app, spec.target_name, spec.target.namespace,
                             holder=self._holder(record)) as held:
            plan = engine.plan_app(spec, provider, kube).plan
            if plan.blockers:
                self.store.set_deploy_plan(record.id, planfile.dump(plan), render_text(plan), 0,
                                           DeployStatus.PLANNING)
                self.store.finish_deploy(record.id, DeployStatus.BLOCKED, _blockers_text(plan))
                return
            self._apply(record.id, plan, provider, kube, held)

    def _apply_saved(self, record: DeployRecord) -> None:
        assert record.plan is not None
        plan = planfile.load(record.plan)
        if plan.blockers:
            self.store.finish_deploy(record.id, DeployStatus.BLOCKED, _blockers_text(plan))
            return
        target = self.plane.target(plan.target)
        provider, kube = self.plane.connector(plan.target, target)
        with engine.app_lock(kube, plan.app, plan.target, target.namespace, holder=self._holder(record)) as held:
            observed = engine.observe_saved(plan, provider, kube, target.namespace)
            if observed.digest() != plan.observed_digest:
                raise engine.StalePlan()
            self._apply(record.id, plan, provider, kube, held)

    def _apply(self, deploy_id: int, plan: Plan, provider: Provider, kube: KubeSide,
               lock: engine.HeldLock) -> None:
        changes = plan.changes
        self.store.set_deploy_plan(deploy_id, planfile.dump(plan), render_text(plan), len(changes),
                                   DeployStatus.APPLYING)
        if not changes:
            self.store.finish_deploy(deploy_id, DeployStatus.NO_CHANGES, plan.summary())
            return
        seq = iter(range(1, len(changes) + 1))
        seq_lock = threading.Lock()

        def progress(result: engine.ActionResult) -> None:
            with seq_lock:
                n = next(seq)
            action = result.action
            self.store.record_action(deploy_id, DeployActionRecord(
                seq=n, service=action.service, resource=action.resource.value, kind=action.kind.value,
                address=action.address, ok=result.ok, message=result.message, seconds=result.seconds,
                finished_at=dt.datetime.now(dt.UTC)))

        report = engine.apply_plan(plan, provider, kube, progress=progress, lock=lock)
        failures = report.failures
        if failures:
            lines = [f"{f.action.service}: {f.action.resource.value} {f.action.address}: {f.message}"
                     for f in failures]
            self.store.finish_deploy(deploy_id, DeployStatus.FAILED,
                                     f"{len(failures)} action(s) failed; deploy again once fixed: it picks up "
                                     "where this one stopped\n" + "\n".join(lines))
        else:
            self.store.finish_deploy(deploy_id, DeployStatus.SUCCEEDED,
                                     f"{len(report.results)} change(s) applied")

    # --- lifecycle -----------------------------------------------------------------------------------

    def running(self) -> list[int]:
        with self._lock:
            return sorted(self._running)

    def wait(self, deploy_id: int, timeout: float | None = None) -> None:
        with self._lock:
            future = self._running.get(deploy_id)
        if future is not None:
            future.result(timeout=timeout)

    def shutdown(self) -> None:
        """Let running deploys finish (they are bounded); nothing new starts."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def _blockers_text(plan: Plan) -> str:
    return "blocked before any change:\n" + "\n".join(
        f"{b.service}: {b.message}" + (f" ({b.hint})" if b.hint else "") for b in plan.blockers)
