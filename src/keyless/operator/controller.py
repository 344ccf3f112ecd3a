"""The kopf controller: KeylessApp handlers wired to the Reconciler, the login to the home cluster, and `run`.

Why kopf: it is the Python operator framework built for this (watches with resumption and bookmarks, finalizers,
handler retries with backoff, timers, Events, a liveness endpoint), so keyless writes handlers over its engine and
nothing of a controller's machinery. Replicas share the work through the per-app Leases that `keyless apply` takes
too (`engine.app_lock`), not through kopf's peering: a replica that finds an app locked skips it and looks again
soon, so no app is written twice at once, whether by two replicas or by a replica and a CI job.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import logging
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import kopf

from keyless.durations import parse_duration
from keyless.kube.home import HomeCluster
from keyless.operator.reconcile import Event, Outcome, Reconciler, Trigger
from keyless.operator.resource import FINALIZER, GROUP, KIND, PLURAL, VERSION, merge_conditions

__all__ = ["OperatorOptions", "build_registry", "operator_settings", "run_operator"]

log = logging.getLogger("keyless.operator")

ANNOTATION_PREFIX: Final = "keyless.dev"
DEFAULT_TICK: Final = 10.0  # how often each app's timer wakes to see whether its refresh interval has passed
MAX_CONCURRENT_RECONCILES: Final = 8  # each holds cloud clients and worker threads; the clouds' limits pace them


@dataclass
class OperatorOptions:
    namespaces: Collection[str] = ()  # empty: all namespaces
    refresh_interval: float = 600.0  # for KeylessApps that do not set spec.refreshInterval
    tick: float = DEFAULT_TICK
    liveness: str | None = None
    max_concurrent: int = MAX_CONCURRENT_RECONCILES


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_stamp(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


@dataclass
class _Handlers:
    """The state the handlers share: the reconciler, the home cluster, a bound on concurrent reconciles."""

    reconciler: Reconciler
    home: HomeCluster
    options: OperatorOptions
    gate: asyncio.Semaphore | None = None
    next_attempt: dict[str, datetime] = field(default_factory=dict)  # by uid: a refresh that failed backs off
    failures: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _gate(self) -> asyncio.Semaphore:
        if self.gate is None:
            self.gate = asyncio.Semaphore(self.options.max_concurrent)
        return self.gate

    def interval(self, spec: Mapping[str, Any]) -> float:
        raw = spec.get("refreshInterval")
        try:
            return parse_duration(str(raw)) if raw else self.options.refresh_interval
        except ValueError:
            return self.options.refresh_interval

    # ---- writing back ----------------------------------------------------------------------------------------

    def _status(self, outcome: Outcome, status: Mapping[str, Any], generation: int,
                refreshed: datetime | None) -> dict[str, Any]:
        written: dict[str, Any] = {
            "observedGeneration": generation,
            "conditions": merge_conditions(status.get("conditions") or [], outcome.conditions, _stamp(_now()),
                                           generation),
        }
        if outcome.bindings is not None:
            written["bindings"] = list(outcome.bindings)
        if outcome.last_plan is not None:
            written["lastAppliedPlan"] = outcome.last_plan
        if outcome.applied_to is not None:
            written["appliedTo"] = outcome.applied_to
        if refreshed is not None:
            written["lastRefreshTime"] = _stamp(refreshed)
        return written

    @staticmethod
    def _post(body: kopf.Body, events: tuple[Event, ...]) -> None:
        for event in events:
            kopf.event(body, type="Warning" if event.warning else "Normal", reason=event.reason,
                       message=event.message)

    def _publisher(self, body: kopf.Body, namespace: str, name: str, status: Mapping[str, Any], generation: int
                   ) -> Any:
        """What the reconciler calls (from its worker thread) when it finds drift, before the repair starts."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()

        def publish(outcome: Outcome) -> None:
            try:
                self.home.patch_status(GROUP, VERSION, KIND, PLURAL, namespace, name,
                                       {"conditions": merge_conditions(status.get("conditions") or [],
                                                                       outcome.conditions, _stamp(_now()),
                                                                       generation)})
            except Exception as exc:  # the final status says it all the same
                log.warning("could not write the drift of %s/%s: %s", namespace, name, exc)
            loop.call_soon_threadsafe(self._post, body, outcome.events, context=context)

        return publish

    # ---- handlers --------------------------------------------------------------------------------------------

    async def changed(self, **kwargs: Any) -> None:
        """Created, or its spec changed: plan and apply."""
        await self._reconcile(Trigger.CHANGE, kwargs)

    async def resumed(self, **kwargs: Any) -> None:
        """The operator (re)started and found the app: plan and apply, reading back what keyless recorded."""
        await self._reconcile(Trigger.RESUME, kwargs)

    async def _reconcile(self, trigger: Trigger, kwargs: Mapping[str, Any]) -> None:
        body, spec, status, meta, patch = (kwargs["body"], kwargs["spec"], kwargs["status"], kwargs["meta"],
                                           kwargs["patch"])
        namespace, name, retry = str(kwargs["namespace"]), str(kwargs["name"]), int(kwargs["retry"])
        generation = int(meta.get("generation") or 0)
        async with self._gate():
            outcome = await asyncio.to_thread(
                self.reconciler.reconcile, namespace, name, dict(spec), trigger, failures=retry,
                publish=self._publisher(body, namespace, name, status, generation),
                previous_target=status.get("appliedTo"))
        patch.status.update(self._status(outcome, status, generation, _now() if outcome.retry_in is None else None))
        self._post(body, outcome.events)
        if outcome.retry_in is not None:
            raise kopf.TemporaryError(_first_message(outcome), delay=outcome.retry_in)

    async def tick(self, **kwargs: Any) -> None:
        """Every tick: once the refresh interval has passed since the last reconcile, read everything back."""
        body, spec, status, meta, patch = (kwargs["body"], kwargs["spec"], kwargs["status"], kwargs["meta"],
                                           kwargs["patch"])
        namespace, name, uid = str(kwargs["namespace"]), str(kwargs["name"]), str(kwargs["uid"])
        now = _now()
        last = _parse_stamp(status.get("lastRefreshTime"))
        if last is None or (now - last).total_seconds() < self.interval(spec):
            return  # never reconciled yet (the change handler will), or not due
        with self.lock:
            if self.next_attempt.get(uid, now) > now:
                return
            failures = self.failures.get(uid, 0)
        generation = int(meta.get("generation") or 0)
        async with self._gate():
            outcome = await asyncio.to_thread(
                self.reconciler.reconcile, namespace, name, dict(spec), Trigger.REFRESH, failures=failures,
                publish=self._publisher(body, namespace, name, status, generation),
                previous_target=status.get("appliedTo"))
        waiting = outcome.retry_in is not None and not outcome.conditions  # the app is locked: not a failure
        if not waiting:
            patch.status.update(self._status(outcome, status, generation, _now()))
        self._post(body, outcome.events)
        with self.lock:
            if outcome.retry_in is None:
                self.next_attempt.pop(uid, None)
                self.failures.pop(uid, None)
            else:
                self.next_attempt[uid] = _now() + timedelta(seconds=outcome.retry_in)
                self.failures[uid] = outcome.failures

    async def deleted(self, **kwargs: Any) -> None:
        """Deleted: remove what keyless bound for the app; the finalizer keeps the object until that is done."""
        body, status = kwargs["body"], kwargs["status"]
        namespace, name, uid = str(kwargs["namespace"]), str(kwargs["name"]), str(kwargs["uid"])
        async with self._gate():
            outcome = await asyncio.to_thread(self.reconciler.remove, namespace, name, status.get("appliedTo"))
        self._post(body, outcome.events)
        with self.lock:
            self.next_attempt.pop(uid, None)
            self.failures.pop(uid, None)
        if outcome.retry_in is not None:
            raise kopf.TemporaryError(_first_message(outcome), delay=outcome.retry_in)


def _first_message(outcome: Outcome) -> str:
    for condition in outcome.conditions:
        if condition.message:
            return condition.message
    return outcome.events[0].message if outcome.events else "will try again"


def build_registry(reconciler: Reconciler, home: HomeCluster, options: OperatorOptions) -> kopf.OperatorRegistry:
    """The handlers of one operator process, registered on a registry of their own (no module-level state)."""
    registry = kopf.OperatorRegistry()
    handlers = _Handlers(reconciler, home, options)
    # Retried by keyless's own backoff (TemporaryError's delay), never given up: a blocked app waits for its fix.
    kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="reconcile")(handlers.resumed)
    kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="reconcile")(handlers.changed)
    kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, id="reconcile", field="spec")(handlers.changed)
    kopf.timer(GROUP, VERSION, PLURAL, registry=registry, id="refresh", interval=options.tick)(handlers.tick)
    kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, id="remove")(handlers.deleted)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(home)

    return registry


def connection_info(home: HomeCluster) -> kopf.ConnectionInfo:
    """kopf's credentials from the same kubeconfig (or pod account) keyless reads, read again at each login."""
    config = home.reload()
    cluster, user = config.cluster, config.user
    if user is None:
        raise kopf.LoginError(f"kubeconfig context {config.context_name!r} has no user")
    if user.exec is not None or user.auth_provider is not None:
        raise kopf.LoginError("the operator's kubeconfig uses a credential plugin: run it in the cluster (its service "
                              "account) or give it a kubeconfig with a token or a client certificate")
    token = user.token
    if user.token_file:
        with open(user.token_file, encoding="utf-8") as handle:
            token = handle.read().strip()
    return kopf.ConnectionInfo(
        server=cluster.server,
        ca_path=cluster.certificate_auth,
        ca_data=base64.b64decode(cluster.certificate_auth_data) if cluster.certificate_auth_data else None,
        insecure=cluster.insecure or None,
        username=user.username, password=user.password,
        scheme="Bearer" if token else None, token=token,
        certificate_path=user.client_cert,
        certificate_data=base64.b64decode(user.client_cert_data) if user.client_cert_data else None,
        private_key_path=user.client_key,
        private_key_data=base64.b64decode(user.client_key_data) if user.client_key_data else None,
        default_namespace=config.namespace,
    )


def operator_settings(holder: str) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
    settings.scanning.disabled = True  # one known resource: no need to watch CRDs (nor the right to)
    settings.posting.reporting_component = "keyless-operator"
    settings.posting.reporting_instance = holder[:128]
    settings.posting.event_name_prefix = "keyless-"
    # The API server ends each watch after this; kopf lists and watches again. It bounds how long an object whose
    # finalizer another replica won (kopf then waits for the object's next event) goes unhandled if that replica
    # died before writing anything more.
    settings.watching.server_timeout = 60
    return settings


class _QuietRefreshTicks(logging.Filter):
    """kopf logs every timer run; a tick that finds nothing due is most of them (500 apps: 50 lines a second)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timer 'refresh' succeeded")


async def run_operator(reconciler: Reconciler, home: HomeCluster, options: OperatorOptions, *,
                       stop_flag: asyncio.Event | threading.Event | None = None,
                       ready_flag: asyncio.Event | threading.Event | None = None) -> None:
    """Run the controller until `stop_flag` (or a signal, when run from the command line)."""
    quiet = _QuietRefreshTicks()
    if not any(isinstance(f, _QuietRefreshTicks) for f in logging.getLogger("kopf.objects").filters):
        logging.getLogger("kopf.objects").addFilter(quiet)
    await kopf.operator(
        registry=build_registry(reconciler, home, options),
        settings=operator_settings(reconciler.holder),
        standalone=True,
        clusterwide=not options.namespaces,
        namespaces=list(options.namespaces),
        liveness_endpoint=options.liveness,
        stop_flag=stop_flag, ready_flag=ready_flag,
    )
