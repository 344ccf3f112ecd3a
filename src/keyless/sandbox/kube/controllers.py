"""The stand-in's controllers: deployments, replica sets, jobs, namespaces, garbage collection and a kubelet."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import heapq
import json
import logging
import math
import secrets
from collections.abc import Mapping
from typing import Any, Final

from keyless.sandbox.kube.api import ChangeEvent, KubeApiServer, now_rfc3339
from keyless.sandbox.kube.merge import JsonDict
from keyless.sandbox.kube.schema import (
    DEPLOYMENTS,
    EVENTS,
    JOBS,
    NAMESPACES,
    PODS,
    REPLICA_SETS,
    SERVICE_ACCOUNTS,
    Kind,
    StatusError,
)

logger = logging.getLogger("keyless.sandbox.kube")

MANAGER: Final = "kube-controller-manager"
HASH_LABEL: Final = "pod-template-hash"
REVISION: Final = "deployment.kubernetes.io/revision"
_HASH_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"
_EVENTS_KEPT: Final = 500
_RETRY_FIRST: Final = 0.5
_RETRY_MAX: Final = 10.0

Key = tuple[str, str | None, str]  # (what, namespace, name-or-uid)


def template_hash(template: Mapping[str, Any]) -> str:
    """The ``pod-template-hash`` of a pod template: FNV-1a of the template, spelled like the real controller."""
    digest = 0x811C9DC5
    for byte in json.dumps(template, sort_keys=True, separators=(",", ":")).encode():
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(_HASH_ALPHABET[ord(c) % len(_HASH_ALPHABET)] for c in str(digest))


def owner_reference(kind: Kind, owner: Mapping[str, Any]) -> JsonDict:
    meta = owner["metadata"]
    return {"apiVersion": kind.api_version, "kind": kind.kind, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def controller_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def _is_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )


def _nonzero(values: Mapping[str, int]) -> JsonDict:
    # Go omits zero counters from status JSON; clients must cope with their absence, so do we.
    return {k: v for k, v in values.items() if v}


def _condition(previous: list[JsonDict], kind: str, status: str, reason: str, message: str) -> JsonDict:
    old = next((c for c in previous if c.get("type") == kind), None)
    stamp = now_rfc3339()
    if old and (old.get("status"), old.get("reason"), old.get("message")) == (status, reason, message):
        return old
    transition = old.get("lastTransitionTime", stamp) if old and old.get("status") == status else stamp
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastUpdateTime": stamp, "lastTransitionTime": transition}


def _percent(value: Any, total: int, *, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = total * int(value[:-1]) / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value or 0)


class Controllers:
    """Reacts to committed changes like kube-controller-manager, the scheduler and a kubelet together.

    Work runs on one queue, one key at a time, so reconciliations never race each other.
    Everything they write goes through the API server's own create/write/delete paths (pods
    therefore go through admission), and each write is seen again by the controllers.
    """

    def __init__(self, api: KubeApiServer, *, pod_startup_seconds: float = 0.0) -> None:
        self.api = api
        self.pod_startup_seconds = pod_startup_seconds
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._busy = False
        self._starting = 0  # pods waiting for their (simulated) start-up delay
        self._backoff: dict[Key, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._ip = 10

    def start(self) -> None:
        self.api.on_change(self._on_change)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def idle(self) -> bool:
        return self._queue.empty() and not self._busy and self._starting == 0

    async def settle(self) -> None:
        """Return once nothing is queued or running (delayed retries of failing work do not count)."""
        quiet = 0
        while quiet < 3:  # idle for a few ticks in a row: a write may still be waking a controller up
            await asyncio.sleep(0.005)
            quiet = quiet + 1 if self.idle else 0

    def enqueue(self, key: Key) -> None:
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    # --- routing --------------------------------------------------------------------------------

    def _on_change(self, change: ChangeEvent) -> None:
        meta = change.obj.get("metadata") or {}
        namespace, name = meta.get("namespace"), str(meta.get("name"))
        owner = controller_of(change.obj)
        if owner is not None and owner.get("kind") in ("ReplicaSet", "Job", "Deployment"):
            self.enqueue((str(owner["kind"]), namespace, str(owner["name"])))
        if change.type == "DELETED":
            self.enqueue(("gc", namespace, str(meta.get("uid"))))
            terminating = self.api.get_object(NAMESPACES, None, str(namespace)) if namespace else None
            if terminating is not None and terminating["metadata"].get("deletionTimestamp"):
                self.enqueue(("Namespace", None, str(namespace)))
            return
        if change.kind is NAMESPACES:
            self.enqueue(("Namespace", None, name))
        elif change.kind is DEPLOYMENTS:
            self.enqueue(("Deployment", namespace, name))
        elif change.kind is REPLICA_SETS:
            self.enqueue(("ReplicaSet", namespace, name))
        elif change.kind is JOBS:
            self.enqueue(("Job", namespace, name))
        elif change.kind is SERVICE_ACCOUNTS and change.type == "ADDED":
            # Work that failed for want of this account need not wait out its back-off.
            for key in [k for k in self._backoff if k[1] == namespace]:
                self.enqueue(key)
        elif change.kind is PODS and change.type == "ADDED" and change.obj.get("status", {}).get("phase") == "Pending":
            self._starting += 1
            asyncio.get_running_loop().call_later(self.api.knobs.time.wall(self.pod_startup_seconds), self._pod_started,
                                                  namespace, name)

    def _pod_started(self, namespace: str | None, name: str) -> None:
        self._starting -= 1
        self.enqueue(("kubelet", namespace, name))

    def _retry_later(self, key: Key) -> None:
        delay = self._backoff.get(key, _RETRY_FIRST / 2) * 2
        self._backoff[key] = min(delay, _RETRY_MAX)
        asyncio.get_running_loop().call_later(self._backoff[key], self.enqueue, key)

    async def _run(self) -> None:
        handlers = {
            "Namespace": self._namespace, "Deployment": self._deployment, "ReplicaSet": self._replica_set,
            "Job": self._job, "kubelet": self._kubelet, "gc": self._collect_garbage,
        }
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._busy = True
            try:
                await handlers[key[0]](key[1], key[2])
            except StatusError as error:
                if error.code == 409:  # someone wrote in between, or holds the name: look again later
                    self._retry_later(key)
                else:
                    logger.warning("controller %s %s/%s: %s", key[0], key[1], key[2], error.message)
            except Exception:
                logger.exception("controller %s %s/%s failed", key[0], key[1], key[2])
            finally:
                self._busy = False

    # --- helpers --------------------------------------------------------------------------------

    def _owned(self, kind: Kind, namespace: str | None, owner: Mapping[str, Any]) -> list[JsonDict]:
        uid = owner["metadata"]["uid"]
        return self.api.list_objects(kind, namespace, lambda o: (controller_of(o) or {}).get("uid") == uid
                                     and not o["metadata"].get("deletionTimestamp"), owner=uid)

    def _pods_of(self, job: JsonDict) -> list[JsonDict]:
        uid = job["metadata"]["uid"]
        return self.api.list_objects(PODS, job["metadata"]["namespace"],
                                     lambda p: (controller_of(p) or {}).get("uid") == uid, owner=uid)

    def _write_status(self, kind: Kind, obj: JsonDict, status: JsonDict, manager: str = MANAGER) -> None:
        if obj.get("status") == status:
            return
        updated = copy.deepcopy(obj)
        updated["status"] = status
        self.api.write_object(kind, obj, updated, manager=manager, subresource="status", trusted=True)

    async def _event(self, kind: Kind, obj: Mapping[str, Any], event_type: str, reason: str, message: str,
                     component: str = "controllermanager") -> None:
        """Record a core/v1 Event like the controllers do (repeated ones are counted, not duplicated)."""
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        stamp = now_rfc3339()
        same = self.api.list_objects(EVENTS, namespace, lambda e: (
            (e.get("involvedObject") or {}).get("uid"), e.get("reason"), e.get("message")) == (meta["uid"], reason,
                                                                                                 message))
        if same:
            existing = same[0]
            updated = copy.deepcopy(existing)
            updated["count"] = int(existing.get("count") or 1) + 1
            updated["lastTimestamp"] = stamp
            self.api.write_object(EVENTS, existing, updated, manager=MANAGER, trusted=True)
            return
        body = {
            "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}", "namespace": namespace},
            "involvedObject": {"kind": kind.kind, "namespace": meta.get("namespace"), "name": meta["name"],
                               "uid": meta["uid"], "apiVersion": kind.api_version,
                               "resourceVersion": meta.get("resourceVersion")},
            "reason": reason, "message": message, "type": event_type, "count": 1,
            "source": {"component": component}, "firstTimestamp": stamp, "lastTimestamp": stamp,
            "reportingComponent": component, "reportingInstance": self.api.node_name,
        }
        with contextlib.suppress(StatusError):
            await self.api.create_object(EVENTS, namespace, body, manager=MANAGER)
        excess = self.api.count_objects(EVENTS) - _EVENTS_KEPT
        if excess > 0:  # real clusters expire events after an hour
            oldest = heapq.nsmallest(excess, self.api.scan(EVENTS), key=lambda e: (
                e.get("lastTimestamp") or "", int(e["metadata"]["resourceVersion"])))
            for where, name in [(e["metadata"]["namespace"], e["metadata"]["name"]) for e in oldest]:
                with contextlib.suppress(StatusError):
                    await self.api.delete_object(EVENTS, where, name)

    # --- namespaces and garbage collection ------------------------------------------------------

    async def _namespace(self, _: str | None, name: str) -> None:
        namespace = self.api.get_object(NAMESPACES, None, name)
        if namespace is None:
            return
        if not namespace["metadata"].get("deletionTimestamp"):
            if self.api.get_object(SERVICE_ACCOUNTS, name, "default") is None:
                with contextlib.suppress(StatusError):
                    await self.api.create_object(SERVICE_ACCOUNTS, name, {"metadata": {"name": "default"}},
                                                 manager=MANAGER)
            return
        for kind in self.api.kinds():
            if not kind.namespaced:
                continue
            for obj in self.api.list_objects(kind, name):
                with contextlib.suppress(StatusError):
                    await self.api.delete_object(kind, name, obj["metadata"]["name"])
        # Objects with finalizers linger; the namespace goes once they are gone (their deletion requeues it).
        if not any(self.api.count_objects(k, name) for k in self.api.kinds() if k.namespaced):
            finalized = copy.deepcopy(namespace)
            finalized.setdefault("spec", {})["finalizers"] = []
            self.api.write_object(NAMESPACES, namespace, finalized, manager=MANAGER, trusted=True)

    async def _collect_garbage(self, namespace: str | None, owner_uid: str) -> None:
        for kind, dependent in self.api.dependents(owner_uid, namespace):
            meta = dependent["metadata"]
            with contextlib.suppress(StatusError):
                await self.api.delete_object(kind, meta.get("namespace"), meta["name"])

    # --- deployments and replica sets -----------------------------------------------------------

    async def _deployment(self, namespace: str | None, name: str) -> None:
        deployment = self.api.get_object(DEPLOYMENTS, namespace, name)
        if deployment is None or deployment["metadata"].get("deletionTimestamp"):
            return
        spec = deployment.get("spec") or {}
        template = spec.get("template") or {}
        desired = int(spec.get("replicas", 1))
        digest = template_hash(template)
        owned = self._owned(REPLICA_SETS, namespace, deployment)
        current = next((rs for rs in owned if (rs["metadata"].get("labels") or {}).get(HASH_LABEL) == digest), None)
        revisions = [int((rs["metadata"].get("annotations") or {}).get(REVISION, "0") or 0) for rs in owned]
        newest = max(revisions, default=0)
        surge = _percent((spec.get("strategy") or {}).get("rollingUpdate", {}).get("maxSurge", "25%"), desired,
                         round_up=True)
        if current is None:
            current = await self._new_replica_set(deployment, template, digest, desired, newest + 1, surge)
        else:
            revision = int((current["metadata"].get("annotations") or {}).get(REVISION, "0") or 0)
            updated = copy.deepcopy(current)
            updated["spec"]["replicas"] = desired
            if revision < newest:  # rolling back to an older template makes its replica set the newest
                updated["metadata"].setdefault("annotations", {})[REVISION] = str(newest + 1)
            updated["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/desired-replicas"] = str(
                desired)
            if updated != current:
                current = self.api.write_object(REPLICA_SETS, current, updated, manager=MANAGER, trusted=True)
        # The new replica set takes all replicas at once and the old ones go to zero: a rollout that
        # replaces every pod, finishing when the new pods run (no surge pacing).
        for old in owned:
            if old["metadata"]["uid"] != current["metadata"]["uid"] and int(old["spec"].get("replicas", 0)) != 0:
                scaled = copy.deepcopy(old)
                scaled["spec"]["replicas"] = 0
                self.api.write_object(REPLICA_SETS, old, scaled, manager=MANAGER, trusted=True)
                await self._event(DEPLOYMENTS, deployment, "Normal", "ScalingReplicaSet",
                                  f"Scaled down replica set {old['metadata']['name']} from "
                                  f"{old['spec'].get('replicas', 0)} to 0", "deployment-controller")
        await self._prune_history(deployment, current)
        revision = (current["metadata"].get("annotations") or {}).get(REVISION, "1")
        if (deployment["metadata"].get("annotations") or {}).get(REVISION) != revision:
            annotated = copy.deepcopy(deployment)
            annotated["metadata"].setdefault("annotations", {})[REVISION] = revision
            deployment = self.api.write_object(DEPLOYMENTS, deployment, annotated, manager=MANAGER, trusted=True)
        self._deployment_status(deployment, current, desired)

    async def _new_replica_set(self, deployment: JsonDict, template: JsonDict, digest: str, desired: int,
                               revision: int, surge: int) -> JsonDict:
        meta = deployment["metadata"]
        labels = {**((template.get("metadata") or {}).get("labels") or {}), HASH_LABEL: digest}
        pod_template = copy.deepcopy(template)
        pod_template.setdefault("metadata", {})["labels"] = labels
        selector = copy.deepcopy(deployment["spec"].get("selector") or {})
        selector.setdefault("matchLabels", {})[HASH_LABEL] = digest
        body = {
            "apiVersion": REPLICA_SETS.api_version, "kind": REPLICA_SETS.kind,
            "metadata": {
                "name": f"{meta['name']}-{digest}", "namespace": meta["namespace"], "labels": labels,
                "annotations": {"deployment.kubernetes.io/desired-replicas": str(desired),
                                "deployment.kubernetes.io/max-replicas": str(desired + surge),
                                REVISION: str(revision)},
                "ownerReferences": [owner_reference(DEPLOYMENTS, deployment)],
            },
            "spec": {"replicas": desired, "selector": selector, "template": pod_template},
        }
        created = await self.api.create_object(REPLICA_SETS, meta["namespace"], body, manager=MANAGER)
        await self._event(DEPLOYMENTS, deployment, "Normal", "ScalingReplicaSet",
                          f"Scaled up replica set {created['metadata']['name']} from 0 to {desired}",
                          "deployment-controller")
        return created

    async def _prune_history(self, deployment: JsonDict, current: JsonDict) -> None:
        limit = int((deployment.get("spec") or {}).get("revisionHistoryLimit", 10))
        namespace = deployment["metadata"]["namespace"]
        old = [rs for rs in self._owned(REPLICA_SETS, namespace, deployment)
               if rs["metadata"]["uid"] != current["metadata"]["uid"] and not rs["spec"].get("replicas")
               and not (rs.get("status") or {}).get("replicas")]
        old.sort(key=lambda rs: int((rs["metadata"].get("annotations") or {}).get(REVISION, "0") or 0))
        for rs in old[: max(len(old) - limit, 0)]:
            with contextlib.suppress(StatusError):
                await self.api.delete_object(REPLICA_SETS, namespace, rs["metadata"]["name"])

    def _deployment_status(self, deployment: JsonDict, current: JsonDict, desired: int) -> None:
        namespace = deployment["metadata"]["namespace"]
        owned = self._owned(REPLICA_SETS, namespace, deployment)
        statuses = [rs.get("status") or {} for rs in owned]
        fresh = self.api.get_object(REPLICA_SETS, namespace, current["metadata"]["name"]) or current
        new_status = fresh.get("status") or {}
        replicas = sum(int(s.get("replicas", 0)) for s in statuses)
        updated = int(new_status.get("replicas", 0))
        ready = sum(int(s.get("readyReplicas", 0)) for s in statuses)
        available = sum(int(s.get("availableReplicas", 0)) for s in statuses)
        spec = deployment.get("spec") or {}
        max_unavailable = _percent((spec.get("strategy") or {}).get("rollingUpdate", {}).get("maxUnavailable", "25%"),
                                   desired, round_up=False)
        previous = list((deployment.get("status") or {}).get("conditions") or [])
        rs_name = fresh["metadata"]["name"]
        if available >= desired - max_unavailable:
            conditions = [_condition(previous, "Available", "True", "MinimumReplicasAvailable",
                                     "Deployment has minimum availability.")]
        else:
            conditions = [_condition(previous, "Available", "False", "MinimumReplicasUnavailable",
                                     "Deployment does not have minimum availability.")]
        done = updated == desired and replicas == desired and available >= desired
        if done:
            progressing = _condition(previous, "Progressing", "True", "NewReplicaSetAvailable",
                                     f'ReplicaSet "{rs_name}" has successfully progressed.')
        else:
            progressing = self._progress(deployment, previous, rs_name)
        conditions.append(progressing)
        failure = next((c for c in new_status.get("conditions") or [] if c.get("type") == "ReplicaFailure"), None)
        if failure is not None:
            conditions.append(_condition(previous, "ReplicaFailure", "True", "FailedCreate",
                                         str(failure.get("message", ""))))
        status: JsonDict = {"observedGeneration": int(deployment["metadata"].get("generation", 1))}
        status |= _nonzero({"replicas": replicas, "updatedReplicas": updated, "readyReplicas": ready,
                            "availableReplicas": available,
                            "unavailableReplicas": max(desired - available, 0)})
        status["conditions"] = conditions
        self._write_status(DEPLOYMENTS, deployment, status)

    def _progress(self, deployment: JsonDict, previous: list[JsonDict], rs_name: str) -> JsonDict:
        """The Progressing condition of an unfinished rollout, turning False once its deadline passes.

        keyless gives up waiting on ProgressDeadlineExceeded; a short ``progressDeadlineSeconds``
        lets a sandbox user see that happen (the clock starts when the rollout does).
        """
        timed_out = f'ReplicaSet "{rs_name}" has timed out progressing.'
        old = next((c for c in previous if c.get("type") == "Progressing"), None)
        if old is not None and old.get("message") == timed_out:
            return old
        condition = _condition(previous, "Progressing", "True", "ReplicaSetUpdated",
                               f'ReplicaSet "{rs_name}" is progressing.')
        deadline = int((deployment.get("spec") or {}).get("progressDeadlineSeconds", 600))
        started = datetime.datetime.strptime(condition["lastUpdateTime"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.UTC)
        elapsed = (datetime.datetime.now(tz=datetime.UTC) - started).total_seconds()
        if elapsed >= deadline:
            return _condition(previous, "Progressing", "False", "ProgressDeadlineExceeded", timed_out)
        meta = deployment["metadata"]
        asyncio.get_running_loop().call_later(deadline - elapsed + 0.1, self.enqueue,
                                              ("Deployment", meta["namespace"], meta["name"]))
        return condition

    async def _replica_set(self, namespace: str | None, name: str) -> None:
        key: Key = ("ReplicaSet", namespace, name)
        replica_set = self.api.get_object(REPLICA_SETS, namespace, name)
        if replica_set is None or replica_set["metadata"].get("deletionTimestamp"):
            self._backoff.pop(key, None)
            return
        want = int(replica_set["spec"].get("replicas", 1))
        failure = await self._scale(REPLICA_SETS, replica_set, want)
        pods = self._owned(PODS, namespace, replica_set)
        ready = sum(1 for p in pods if _is_ready(p))
        status: JsonDict = {"replicas": len(pods)}  # the one counter Go does not omit when zero
        status |= _nonzero({"fullyLabeledReplicas": len(pods), "readyReplicas": ready, "availableReplicas": ready})
        status["observedGeneration"] = int(replica_set["metadata"].get("generation", 1))
        if failure:
            previous = list((replica_set.get("status") or {}).get("conditions") or [])
            status["conditions"] = [_condition(previous, "ReplicaFailure", "True", "FailedCreate", failure)]
            self._retry_later(key)
        else:
            self._backoff.pop(key, None)
        fresh = self.api.get_object(REPLICA_SETS, namespace, name)
        if fresh is not None:
            self._write_status(REPLICA_SETS, fresh, status)

    async def _scale(self, kind: Kind, owner: JsonDict, want: int, *, active_only: bool = False) -> str:
        """Create or delete owned pods until ``want`` exist; answers the creation error, if any.

        Jobs count only their active pods and never delete: finished pods stay for their logs.
        """
        meta = owner["metadata"]
        namespace = meta["namespace"]
        pods = self._owned(PODS, namespace, owner)
        if active_only:
            pods = [p for p in pods if (p.get("status") or {}).get("phase") in ("Pending", "Running")]
        elif len(pods) > want:
            # Not-ready pods go first, then the youngest, as the real controller prefers.
            pods.sort(key=lambda p: (_is_ready(p), p["metadata"].get("creationTimestamp", "")), reverse=False)
            for pod in pods[: len(pods) - want]:
                with contextlib.suppress(StatusError):
                    await self.api.delete_object(PODS, namespace, pod["metadata"]["name"])
                    await self._event(kind, owner, "Normal", "SuccessfulDelete",
                                      f"Deleted pod: {pod['metadata']['name']}")
            return ""
        template = (owner.get("spec") or {}).get("template") or {}
        for _ in range(want - len(pods)):
            template_meta = template.get("metadata") or {}
            body: JsonDict = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": f"{meta['name']}-", "namespace": namespace,
                             "labels": copy.deepcopy(template_meta.get("labels") or {}),
                             "ownerReferences": [owner_reference(kind, owner)]},
                "spec": copy.deepcopy(template.get("spec") or {}),
            }
            if template_meta.get("annotations"):
                body["metadata"]["annotations"] = copy.deepcopy(template_meta["annotations"])
            try:
                pod = await self.api.create_object(PODS, namespace, body, manager=MANAGER)
            except StatusError as error:
                await self._event(kind, owner, "Warning", "FailedCreate", f"Error creating: {error.message}")
                return error.message
            await self._event(kind, owner, "Normal", "SuccessfulCreate", f"Created pod: {pod['metadata']['name']}")
        return ""

    # --- jobs -----------------------------------------------------------------------------------

    async def _job(self, namespace: str | None, name: str) -> None:
        key: Key = ("Job", namespace, name)
        job = self.api.get_object(JOBS, namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            self._backoff.pop(key, None)
            return
        spec = job.get("spec") or {}
        previous = dict(job.get("status") or {})
        finished = any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                       for c in previous.get("conditions") or [])
        all_pods = self._pods_of(job)
        succeeded = sum(1 for p in all_pods if (p.get("status") or {}).get("phase") == "Succeeded")
        failed = sum(1 for p in all_pods if (p.get("status") or {}).get("phase") == "Failed")
        completions = int(spec.get("completions", 1))
        failure = ""
        if not finished and not spec.get("suspend"):
            running = [p for p in all_pods if (p.get("status") or {}).get("phase") in ("Pending", "Running")]
            need = min(int(spec.get("parallelism", 1)), completions - succeeded)
            if succeeded < completions and failed <= int(spec.get("backoffLimit", 6)) and len(running) < need:
                failure = await self._scale(JOBS, job, need, active_only=True)
        all_pods = self._pods_of(job)
        active = [p for p in all_pods if (p.get("status") or {}).get("phase") in ("Pending", "Running")]
        status: JsonDict = {"startTime": previous.get("startTime") or now_rfc3339()}
        status |= _nonzero({"active": len(active), "ready": sum(1 for p in active if _is_ready(p)),
                            "succeeded": succeeded, "failed": failed})
        conditions = list(previous.get("conditions") or [])
        if not finished and succeeded >= completions:
            status["completionTime"] = now_rfc3339()
            conditions = [_condition([], "SuccessCriteriaMet", "True", "CompletionsReached", "Reached expected "
                                     "number of succeeded pods"),
                          _condition([], "Complete", "True", "CompletionsReached", "Reached expected number of "
                                     "succeeded pods")]
        elif not finished and failed > int(spec.get("backoffLimit", 6)):
            conditions = [_condition([], "Failed", "True", "BackoffLimitExceeded",
                                     "Job has reached the specified backoff limit")]
        elif previous.get("completionTime"):
            status["completionTime"] = previous["completionTime"]
        if conditions:
            status["conditions"] = conditions
        if failure:
            self._retry_later(key)
        else:
            self._backoff.pop(key, None)
        fresh = self.api.get_object(JOBS, namespace, name)
        if fresh is not None:
            self._write_status(JOBS, fresh, status)

    # --- kubelet --------------------------------------------------------------------------------

    async def _kubelet(self, namespace: str | None, name: str) -> None:
        pod = self.api.get_object(PODS, namespace, name)
        if pod is None or (pod.get("status") or {}).get("phase") != "Pending":
            return
        if not pod["spec"].get("nodeName"):
            bound = copy.deepcopy(pod)
            bound["spec"]["nodeName"] = self.api.node_name
            pod = self.api.write_object(PODS, pod, bound, manager="kube-scheduler", trusted=True)
        stamp = now_rfc3339()
        self._ip = self._ip % 250 + 1
        ip = f"10.244.0.{self._ip}"
        status: JsonDict = {
            "phase": "Running",
            "conditions": [{"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": stamp}
                           for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                                     "PodScheduled")],
            "hostIP": "10.0.0.10", "hostIPs": [{"ip": "10.0.0.10"}], "podIP": ip, "podIPs": [{"ip": ip}],
            "startTime": stamp, "qosClass": (pod.get("status") or {}).get("qosClass", "BestEffort"),
            "containerStatuses": [
                {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": True, "started": True,
                 "restartCount": 0, "containerID": f"containerd://{secrets.token_hex(32)}",
                 "state": {"running": {"startedAt": stamp}}}
                for c in pod["spec"].get("containers") or []
            ],
        }
        self._write_status(PODS, pod, status, manager="kubelet")

    async def finish_pod(self, namespace: str, name: str, *, succeeded: bool) -> None:
        """End a pod's containers (as if its command exited); its job then counts it."""
        pod = self.api.get_object(PODS, namespace, name)
        if pod is None:
            raise StatusError(404, "NotFound", f'pods "{name}" not found')
        stamp = now_rfc3339()
        status = copy.deepcopy(pod.get("status") or {})
        status["phase"] = "Succeeded" if succeeded else "Failed"
        status["conditions"] = [
            {**c, "status": "False", "lastTransitionTime": stamp} if c.get("type") in ("Ready", "ContainersReady")
            else c for c in status.get("conditions") or []
        ]
        code = 0 if succeeded else 1
        status["containerStatuses"] = [
            {**s, "ready": False, "started": False,
             "state": {"terminated": {"exitCode": code, "reason": "Completed" if succeeded else "Error",
                                      "startedAt": stamp, "finishedAt": stamp}}}
            for s in status.get("containerStatuses") or []
        ]
        self._write_status(PODS, pod, status, manager="kubelet")
