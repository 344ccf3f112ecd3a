"""A target's cluster through lightkube (`mode: apply`): observe, server-side apply, patch, roll, request tokens."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import httpx2
from lightkube import ApiError, Client
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.core_v1 import PodTemplateSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.operators import Operator
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import CronJob, Job
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import ServiceAccount
from lightkube.types import PatchType

from keyless.clouds import IDENTITY_ANNOTATION, PENDING_ANNOTATION
from keyless.errors import CloudError, LockLost
from keyless.kube.config import load_config
from keyless.kube.lock import AppLock, LeaseRecord, LockState, LockStatus, lock_status, released, renewed, taken
from keyless.kube.manifests import defer_to_other_manager, service_account_manifest, workload_patch
from keyless.ownership import (
    APP_LABEL,
    MANAGED_BY_LABEL,
    MANAGER,
    PORTER_APP_LABEL,
    PORTER_SERVICE_LABEL,
    label_value,
    lock_labels,
)
from keyless.plan.model import (
    AccountSpec,
    Intent,
    ObjectRef,
    ObservedServiceAccount,
    ObservedWorkload,
    Plan,
    PodTemplateSettings,
)
from keyless.providers.retry import RetryPolicy, call_with_retry, poll
from keyless.targets import KubernetesSide

T = TypeVar("T")

INTENT_MANAGER = "keyless-intent"  # the field manager of the pending-identities record

# Reads and writes are cheap and idempotent; a minute covers an API server restart or a throttled burst.
DEFAULT_POLICY = RetryPolicy(max_attempts=6, base_delay=0.25, max_delay=4.0, deadline=60.0)
ROLLOUT_POLL_SECONDS = 1.0

_HINTS = {
    401: "the cluster rejected the kubeconfig's credentials: refresh them (e.g. `aws eks update-kubeconfig`, "
         "`az aks get-credentials`, `gcloud container clusters get-credentials`)",
    403: "the kubeconfig's user lacks RBAC permission: in the target namespace keyless needs get, list, create, patch "
         "and delete on serviceaccounts, create on serviceaccounts/token, get, list and patch on deployments, list "
         "and patch on cronjobs, list on jobs, get, create and update on leases (coordination.k8s.io) "
         "(README: Kubernetes permissions)",
    404: "check the namespace in the targets file and that the object still exists",
    409: "someone else changed the object at the same time: run keyless again",
    422: "the API server rejected the change as invalid",
}


def is_transient(exc: BaseException) -> bool:
    """Throttling, server errors and lost connections are worth another try; everything else is an answer."""
    if isinstance(exc, httpx2.HTTPStatusError):  # ApiError, or an error body that is not a Status
        code = exc.response.status_code
        return code == 429 or code >= 500
    return isinstance(exc, httpx2.TransportError)


def _status_code(exc: httpx2.HTTPStatusError) -> int:
    return exc.response.status_code


def _unmasked(fn: Callable[[], T]) -> Callable[[], T]:
    """`fn`, raising the HTTP status error lightkube masks when an error response has no Content-Type.

    lightkube reads the Content-Type header of every error response to decide whether it is a
    Kubernetes Status; a proxy or load balancer in front of the API server may answer a bare 502/503
    without one, and lightkube then raises KeyError while handling the real HTTPStatusError.
    """
    def call() -> T:
        try:
            return fn()
        except KeyError as exc:
            masked = exc.__context__
            if isinstance(masked, httpx2.HTTPStatusError):
                raise masked from None
            raise
    return call


def _selector(key: str, value: str) -> dict[str, str | Operator[Any] | Iterable[Any] | None]:
    """An equality label selector, typed the way lightkube's list() wants it."""
    return {key: label_value(value)}


def _body_message(response: httpx2.Response) -> str:
    """The message of an error body lightkube did not decode: a Status sent with another Content-Type
    (`application/json; charset=utf-8`), or a proxy's page, of which the first line is enough."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])
    lines = response.text.strip().splitlines()
    return lines[0][:200] if lines else response.reason_phrase


def _pointer(key: str) -> str:
    """A JSON pointer to one annotation (RFC 6901 escapes '~' and '/', which every prefixed key contains)."""
    return "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")


def _template_of(obj: Deployment | CronJob | Job) -> PodTemplateSpec | None:
    if isinstance(obj, CronJob):
        job_template = obj.spec.jobTemplate if obj.spec is not None else None
        return job_template.spec.template if job_template is not None and job_template.spec is not None else None
    return obj.spec.template if obj.spec is not None else None


def _observed_workload(kind: str, obj: Deployment | CronJob | Job) -> ObservedWorkload | None:
    metadata = obj.metadata
    if metadata is None or metadata.name is None or metadata.namespace is None:
        return None
    template = _template_of(obj)
    pod_labels = dict((template.metadata.labels if template and template.metadata else None) or {})
    pod_annotations = dict((template.metadata.annotations if template and template.metadata else None) or {})
    service = (metadata.labels or {}).get(PORTER_SERVICE_LABEL) or pod_labels.get(PORTER_SERVICE_LABEL)
    if service is None:
        return None
    spec = template.spec if template is not None else None
    account = (spec.serviceAccountName or spec.serviceAccount) if spec is not None else None
    return ObservedWorkload(namespace=metadata.namespace, kind=kind, name=metadata.name, service=service,
                            service_account=account, identity_annotation=pod_annotations.get(IDENTITY_ANNOTATION),
                            pod_labels=pod_labels)


def _observed_account(obj: ServiceAccount) -> ObservedServiceAccount:
    metadata = obj.metadata
    assert metadata is not None
    assert metadata.name is not None
    assert metadata.namespace is not None
    return ObservedServiceAccount(namespace=metadata.namespace, name=metadata.name,
                                  annotations=dict(metadata.annotations or {}), labels=dict(metadata.labels or {}))


def _owned_by_cronjob(obj: Job) -> bool:
    refs = obj.metadata.ownerReferences if obj.metadata is not None else None
    return any(ref.kind == "CronJob" for ref in refs or [])


def rolled_out(deployment: Deployment) -> bool:
    """kubectl's test: the controller saw the latest spec and every replica runs, available, from it."""
    metadata, spec, status = deployment.metadata, deployment.spec, deployment.status
    if status is None:
        return False
    generation = (metadata.generation if metadata is not None else None) or 0
    if (status.observedGeneration or 0) < generation:
        return False
    wanted = spec.replicas if spec is not None and spec.replicas is not None else 1
    return (status.updatedReplicas or 0) == wanted == (status.availableReplicas or 0) == (status.replicas or 0)


def _stuck(deployment: Deployment) -> bool:
    conditions = deployment.status.conditions if deployment.status is not None else None
    return any(c.type == "Progressing" and c.status == "False" and c.reason == "ProgressDeadlineExceeded"
               for c in conditions or [])


class _RolloutStuck(Exception):
    """The Deployment passed its progress deadline: waiting longer will not help."""


def _restart_stamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # RFC 3339, as `kubectl rollout restart` writes


# A lock write that meets another writer (409) reads the Lease again and decides again, this many times at most.
LOCK_WRITE_ATTEMPTS = 3


def _lease_record(lease: Lease) -> LeaseRecord:
    spec = lease.spec or LeaseSpec()
    return LeaseRecord(holder=spec.holderIdentity or None, duration=spec.leaseDurationSeconds,
                       acquired=spec.acquireTime, renewed=spec.renewTime, transitions=spec.leaseTransitions or 0)


def _lease_spec(record: LeaseRecord) -> LeaseSpec:
    return LeaseSpec(holderIdentity=record.holder, leaseDurationSeconds=record.duration,
                     acquireTime=record.acquired, renewTime=record.renewed, leaseTransitions=record.transitions)


def _micro_time(now: datetime) -> datetime:
    """`now` as a Lease's MicroTime: lightkube writes a whole second without its fraction, which an API server's
    MicroTime parser refuses, so a whole second moves on by one microsecond."""
    return now if now.microsecond else now.replace(microsecond=1)


def _mine(record: LeaseRecord) -> LockStatus:
    return LockStatus(LockState.MINE, record.holder, record.acquired, record.expires())


# Lists are read in pages of this many objects (limit/continue), as kubectl does: the API server answers a page
# at a time instead of building one response of every object in the namespace.
LIST_PAGE = 500
# Up to this many accounts not labelled for the app yet are read one GET each; more, with one list of the namespace.
ACCOUNT_GETS_MAX = 16


class ClusterKube:
    """The cluster of a target, through lightkube: server-side apply for accounts, merge patches for workloads."""

    def __init__(
        self,
        side: KubernetesSide | None = None,
        *,
        client: Client | None = None,
        policy: RetryPolicy = DEFAULT_POLICY,
        poll_seconds: float = ROLLOUT_POLL_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if client is None:
            config = load_config(side or KubernetesSide())
            try:
                client = Client(config=config, field_manager=MANAGER)
            except Exception as exc:
                # Building the client reads certificates and may run an exec credential plugin.
                raise CloudError(f"cannot set up a client for context {config.context_name!r}: {exc}",
                                 "check the kubeconfig's certificates and credential plugin") from exc
        self._client = client
        self._policy = policy
        self._poll_seconds = poll_seconds
        self._sleep = sleep
        self._clock = clock
        self._now = now
        # Each lock this instance holds, as it last wrote it: a renewal is one write on that resourceVersion.
        self._held: dict[tuple[str, str], Lease] = {}
        self._held_guard = threading.Lock()

    def close(self) -> None:
        self._client.close()

    # --- calls, retries and errors ---

    def _server(self) -> str:
        try:
            return str(self._client.config.cluster.server)
        except Exception:  # a client handed in by a test may have no full config
            return "the Kubernetes API"

    def _error(self, what: str, exc: Exception) -> CloudError:
        """One readable error for a refused or unanswered call, naming the object."""
        if isinstance(exc, httpx2.HTTPStatusError):
            code = _status_code(exc)
            if isinstance(exc, ApiError) and exc.status is not None and exc.status.message:
                message = exc.status.message
            else:
                message = _body_message(exc.response)
            return CloudError(f"Kubernetes refused to {what}: {message} (HTTP {code})", _HINTS.get(code, ""))
        return CloudError(f"cannot {what}: {self._server()} did not answer ({type(exc).__name__}: {exc})",
                          "check the kubeconfig context and that the cluster is reachable")

    def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        return call_with_retry(_unmasked(fn), policy=self._policy, retryable=is_transient, what=what, sleep=self._sleep,
                               clock=self._clock)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return self._retrying(what, fn)
        except httpx2.HTTPError as exc:
            raise self._error(what, exc) from exc

    def _get_or_none(self, what: str, fn: Callable[[], T]) -> T | None:
        try:
            return self._retrying(what, fn)
        except httpx2.HTTPStatusError as exc:
            if _status_code(exc) == 404:
                return None
            raise self._error(what, exc) from exc
        except httpx2.HTTPError as exc:
            raise self._error(what, exc) from exc

    def _get_account(self, namespace: str, name: str) -> ServiceAccount | None:
        return self._get_or_none(f"read service account {namespace}/{name}",
                                 lambda: self._client.get(ServiceAccount, name, namespace=namespace))

    # --- observing ---

    def observe(
        self, namespace: str, app: str, service_accounts: Collection[str] = ()
    ) -> tuple[list[ObservedServiceAccount], list[ObservedWorkload]]:
        """Accounts labelled keyless's for the app plus the named ones; the app's Deployments, CronJobs and Jobs."""
        labelled = self._call(
            f"list service accounts in namespace {namespace}",
            lambda: list(self._client.list(ServiceAccount, namespace=namespace, labels=_selector(APP_LABEL, app),
                                           chunk_size=LIST_PAGE)))
        accounts = {a.name: a for a in map(_observed_account, labelled)}
        missing = sorted(set(service_accounts) - set(accounts))
        if len(missing) > ACCOUNT_GETS_MAX:
            # One list of the namespace, not a GET per account: a 300-service app would wait on 300 round trips.
            everything = self._call(f"list service accounts in namespace {namespace}",
                                    lambda: list(self._client.list(ServiceAccount, namespace=namespace,
                                                                   chunk_size=LIST_PAGE)))
            for found in map(_observed_account, everything):
                if found.name in missing:
                    accounts[found.name] = found
        else:
            # A few accounts: a GET each, not a list of a namespace a whole fleet of apps may share.
            for name in missing:
                live = self._get_account(namespace, name)
                if live is not None:
                    accounts[name] = _observed_account(live)
        selector = _selector(PORTER_APP_LABEL, app)
        workloads: list[ObservedWorkload] = []
        deployments = self._call(f"list deployments in namespace {namespace}",
                                 lambda: list(self._client.list(Deployment, namespace=namespace, labels=selector,
                                                                chunk_size=LIST_PAGE)))
        cronjobs = self._call(f"list cronjobs in namespace {namespace}",
                              lambda: list(self._client.list(CronJob, namespace=namespace, labels=selector,
                                                             chunk_size=LIST_PAGE)))
        jobs = self._call(f"list jobs in namespace {namespace}",
                          lambda: list(self._client.list(Job, namespace=namespace, labels=selector,
                                                         chunk_size=LIST_PAGE)))
        found_workloads: Iterable[tuple[str, Deployment | CronJob | Job]] = [
            *(("Deployment", d) for d in deployments),
            *(("CronJob", c) for c in cronjobs),
            # A CronJob's runs carry its labels; the CronJob is the workload keyless updates.
            *(("Job", j) for j in jobs if not _owned_by_cronjob(j)),
        ]
        for kind, obj in found_workloads:
            observed = _observed_workload(kind, obj)
            if observed is not None:
                workloads.append(observed)
        workloads.sort(key=lambda w: (w.service, w.kind, w.name))
        return [accounts[n] for n in sorted(accounts)], workloads

    # --- service accounts ---

    def apply_service_account(self, ref: ObjectRef, spec: AccountSpec, remove_annotations: Collection[str]) -> None:
        """Server-side apply as field manager keyless, then strip the annotations the plan says to remove."""
        namespace, name = ref.namespace, ref.name
        live = self._get_account(namespace, name)
        labels = dict(spec.labels)
        if live is not None:
            # The plan already deferred; the live account is read again so a manager that appeared since wins.
            labels = defer_to_other_manager(labels, (live.metadata.labels if live.metadata is not None else None) or {})
        manifest = service_account_manifest(namespace, name, AccountSpec(labels=labels, annotations=spec.annotations))
        account = cast(ServiceAccount, ServiceAccount.from_dict(manifest))
        applied = self._call(f"apply service account {namespace}/{name}",
                             lambda: self._client.apply(account, field_manager=MANAGER, force=True))
        self._remove_annotations(applied, remove_annotations)

    def _remove_annotations(self, account: ServiceAccount, keys: Collection[str]) -> None:
        """JSON-patch away each key that is present: apply cannot drop a field another manager owns."""
        current: ServiceAccount | None = account
        for _ in range(3):
            if current is None or current.metadata is None:
                return
            namespace, name = str(current.metadata.namespace), str(current.metadata.name)
            present = sorted(k for k in keys if k in (current.metadata.annotations or {}))
            if not present or self._patch_away(namespace, name, present):
                return
            current = self._get_account(namespace, name)
        raise CloudError(f"could not remove {', '.join(sorted(keys))} from service account: it keeps changing",
                         "run keyless again")

    def _patch_away(self, namespace: str, name: str, keys: Sequence[str]) -> bool:
        """One JSON patch removing `keys`; False when one of them vanished meanwhile (422), so read again."""
        operations = [{"op": "remove", "path": _pointer(k)} for k in keys]
        what = f"remove annotations {', '.join(keys)} from service account {namespace}/{name}"
        try:
            self._retrying(what, lambda: self._client.patch(
                ServiceAccount, name, operations, namespace=namespace, patch_type=PatchType.JSON))
        except httpx2.HTTPStatusError as exc:
            if _status_code(exc) == 422:
                return False
            raise self._error(what, exc) from exc
        except httpx2.HTTPError as exc:
            raise self._error(what, exc) from exc
        return True

    def record_intent(self, intent: Intent) -> None:
        """Server-side apply of the pending identities under a field manager of their own, so keyless's main
        apply of the account neither drops them nor is changed by them."""
        ref = intent.account
        live = self._get_account(ref.namespace, ref.name)
        labels = dict(intent.labels)
        if live is not None:
            labels = defer_to_other_manager(labels, (live.metadata.labels if live.metadata is not None else None) or {})
            recorded = ((live.metadata.annotations if live.metadata is not None else None) or {}).get(
                PENDING_ANNOTATION, "")
            # An earlier interrupted apply's identities stay listed until a full apply clears them.
            identities = sorted({*intent.identities, *filter(None, recorded.split(","))})
        else:
            identities = sorted(intent.identities)
        manifest = service_account_manifest(ref.namespace, ref.name, AccountSpec(
            labels=labels, annotations={PENDING_ANNOTATION: ",".join(identities)}))
        account = cast(ServiceAccount, ServiceAccount.from_dict(manifest))
        self._call(f"record pending identities on service account {ref.namespace}/{ref.name}",
                   lambda: self._client.apply(account, field_manager=INTENT_MANAGER, force=True))

    def remove_annotations(self, ref: ObjectRef, keys: Collection[str]) -> None:
        """Remove these annotations (the identity keyless wrote); the account stays for Porter's pods."""
        live = self._get_account(ref.namespace, ref.name)
        if live is not None:
            self._remove_annotations(live, keys)

    def delete_service_account(self, ref: ObjectRef) -> bool:
        """Delete the account only if it is labelled managed-by keyless; False when it is already gone."""
        namespace, name = ref.namespace, ref.name
        live = self._get_account(namespace, name)
        if live is None:
            return False
        manager = ((live.metadata.labels if live.metadata is not None else None) or {}).get(MANAGED_BY_LABEL)
        if manager != MANAGER:
            raise CloudError(
                f"refusing to delete service account {namespace}/{name}: it is managed by {manager or 'no tool'}, "
                "not keyless", "keyless deletes only accounts it created; remove it yourself if it is unused")
        what = f"delete service account {namespace}/{name}"
        # None: a 404, deleted meanwhile (or by an earlier attempt whose answer was lost).
        deleted = self._get_or_none(what, lambda: self._client.delete(ServiceAccount, name, namespace=namespace)
                                    or True)
        return deleted is not None

    # --- workloads ---

    def update_workload(self, workload: ObjectRef, service: str, settings: PodTemplateSettings) -> None:
        """Merge-patch the pod template; Deployments also get a restart stamp."""
        address = f"{workload.kind} {workload.namespace}/{workload.name}"
        if workload.kind == "Deployment":
            patch = workload_patch("Deployment", settings, restarted_at=_restart_stamp(self._now()))
            self._call(f"update {address}", lambda: self._client.patch(
                Deployment, workload.name, patch, namespace=workload.namespace, patch_type=PatchType.MERGE))
        elif workload.kind == "CronJob":
            # No pods to roll: the next scheduled run starts from the new template.
            patch = workload_patch("CronJob", settings)
            self._call(f"update {address}", lambda: self._client.patch(
                CronJob, workload.name, patch, namespace=workload.namespace, patch_type=PatchType.MERGE))
        else:
            raise CloudError(f"cannot update {address}: the pod template of a {workload.kind} cannot change",
                             "its next run (a new deploy) starts with the new identity")

    def wait_rollout(self, namespace: str, name: str, timeout: float) -> bool:
        """Poll the Deployment until it runs only pods of its latest template; False on timeout or a stuck rollout."""
        def check() -> bool:
            deployment = self._client.get(Deployment, name, namespace=namespace)
            if rolled_out(deployment):
                return True
            if _stuck(deployment):
                raise _RolloutStuck(name)
            return False

        policy = RetryPolicy(max_attempts=1_000_000, base_delay=self._poll_seconds,
                             max_delay=self._poll_seconds * 4, deadline=timeout)
        try:
            # poll() already retries throttled or failed reads until the timeout: no second retry layer here.
            return poll(_unmasked(check), policy=policy, retryable=is_transient, what=f"rollout of {namespace}/{name}",
                        sleep=self._sleep, clock=self._clock)
        except _RolloutStuck:
            return False
        except httpx2.HTTPError as exc:
            raise self._error(f"read Deployment {namespace}/{name}", exc) from exc

    def complete(self, plan: Plan) -> None:
        """Nothing is left to do once every action is applied to a cluster."""
        return None

    def request_token(self, namespace: str, name: str, audience: str) -> str | None:
        """A TokenRequest for the account, as the kubelet gets the projected token a pod would present."""
        request = ServiceAccount.Token(metadata=ObjectMeta(name=name, namespace=namespace),
                                       spec=TokenRequestSpec(audiences=[audience], expirationSeconds=600))
        created = self._call(f"request a token for ServiceAccount {namespace}/{name}",
                             lambda: self._client.create(request, name, namespace=namespace))
        status = getattr(created, "status", None)
        return str(status.token) if status is not None and status.token else None

    # --- the apply lock ---

    def _read_lease(self, lock: AppLock) -> Lease | None:
        live = self._get_or_none(f"read Lease {lock.namespace}/{lock.name}",
                                 lambda: self._client.get(Lease, lock.name, namespace=lock.namespace))
        labels = (live.metadata.labels if live is not None and live.metadata is not None else None) or {}
        if live is not None and labels.get(MANAGED_BY_LABEL) != MANAGER:
            raise CloudError(f"Lease {lock.namespace}/{lock.name} exists and is not keyless's (no label "
                             f"{MANAGED_BY_LABEL}={MANAGER}): keyless will not use it as the lock of {lock.app!r}",
                             "delete or rename that Lease if nothing uses it")
        return live

    def _write_lease(self, lock: AppLock, live: Lease | None, record: LeaseRecord) -> bool:
        """Create the Lease (`live` None) or replace it on the resourceVersion read; False when another writer came
        first (409), so the caller reads again."""
        key = (lock.namespace, lock.name)
        what = f"{'create' if live is None else 'update'} Lease {lock.namespace}/{lock.name}"
        metadata = live.metadata if live is not None else ObjectMeta(  # the one read carries its resourceVersion
            name=lock.name, namespace=lock.namespace, labels=lock_labels(lock.app, lock.target))
        lease = Lease(metadata=metadata, spec=_lease_spec(record))

        def write() -> Lease:
            return self._client.create(lease) if live is None else self._client.replace(lease)

        try:
            written = self._retrying(what, write)
        except httpx2.HTTPStatusError as exc:
            if _status_code(exc) == 409:  # AlreadyExists or Conflict; also a retry of a write that had succeeded
                with self._held_guard:
                    self._held.pop(key, None)
                return False
            raise self._error(what, exc) from exc
        except httpx2.HTTPError as exc:
            raise self._error(what, exc) from exc
        with self._held_guard:
            if record.holder == lock.holder:
                self._held[key] = written
            else:
                self._held.pop(key, None)
        return True

    def try_lock(self, lock: AppLock) -> LockStatus:
        """Create the Lease, or take it over on the resourceVersion read when it is free (released, or its holder
        stopped renewing a whole lease ago); otherwise say who holds it and until when."""
        status = LockStatus(LockState.HELD)
        for _ in range(LOCK_WRITE_ATTEMPTS):
            live = self._read_lease(lock)
            record = _lease_record(live) if live is not None else None
            status = lock_status(record, lock.holder, self._now())
            if status.state is LockState.HELD:
                return status
            mine = taken(record, lock, _micro_time(self._now()))
            if self._write_lease(lock, live, mine):
                return _mine(mine)
        return status if status.state is not LockState.MINE else LockStatus(LockState.HELD)

    def _held_lease(self, lock: AppLock) -> Lease | None:
        with self._held_guard:
            kept = self._held.get((lock.namespace, lock.name))
        return kept if kept is not None else self._read_lease(lock)

    def renew_lock(self, lock: AppLock) -> None:
        """One write of renewTime on the Lease as this instance last wrote it; read again only after a conflict."""
        for _ in range(LOCK_WRITE_ATTEMPTS):
            live = self._held_lease(lock)
            record = _lease_record(live) if live is not None else None
            if live is None or record is None or record.holder != lock.holder:
                who = f"{record.holder} holds it now" if record is not None and record.holder else "its Lease is gone"
                raise LockLost(f"lost the apply lock of {lock.describe()}: {who}",
                               "another apply may be changing the app: let it finish, then run apply again")
            if self._write_lease(lock, live, renewed(record, _micro_time(self._now()))):
                return
        raise LockLost(f"could not renew the apply lock of {lock.describe()}: its Lease keeps changing",
                       "another apply may be changing the app: let it finish, then run apply again")

    def release_lock(self, lock: AppLock) -> None:
        """Clear the holder if it is still this one, so the next apply need not wait for the lease to run out."""
        for _ in range(LOCK_WRITE_ATTEMPTS):
            live = self._held_lease(lock)
            record = _lease_record(live) if live is not None else None
            if live is None or record is None or record.holder != lock.holder:
                break
            if self._write_lease(lock, live, released(record)):
                return
        with self._held_guard:
            self._held.pop((lock.namespace, lock.name), None)
