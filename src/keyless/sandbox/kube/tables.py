"""Server-side printing: the ``meta.k8s.io/v1`` Table kubectl asks for, with the API server's columns per kind."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from keyless.sandbox.kube import crds
from keyless.sandbox.kube.merge import JsonDict
from keyless.sandbox.kube.schema import (
    CLUSTER_ROLE_BINDINGS,
    CLUSTER_ROLES,
    CONFIG_MAPS,
    CRON_JOBS,
    CUSTOM_RESOURCE_DEFINITIONS,
    DEPLOYMENTS,
    JOBS,
    NAMESPACES,
    PODS,
    REPLICA_SETS,
    ROLE_BINDINGS,
    ROLES,
    SECRETS,
    SERVICE_ACCOUNTS,
    SERVICES,
    Kind,
)

TABLE_MEDIA: Final = "as=Table"


@dataclass(frozen=True)
class Column:
    """One column definition, as the API server's printers declare it (priority 1: only with ``-o wide``)."""

    name: str
    type: str = "string"
    format: str = ""
    description: str = ""
    priority: int = 0

    def to_api(self) -> JsonDict:
        return {"name": self.name, "type": self.type, "format": self.format, "description": self.description,
                "priority": self.priority}


def wants_table(accept: str) -> bool:
    """kubectl get sends ``application/json;as=Table;v=v1;g=meta.k8s.io, application/json``."""
    for media in accept.split(","):
        params = {k.strip(): v.strip() for k, _, v in (p.partition("=") for p in media.split(";")[1:])}
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", None):
            return True
    return False


def human_duration(seconds: float) -> str:
    """Kubernetes' duration.HumanDuration, how AGE columns read."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        rest = whole % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = whole // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _since(timestamp: Any, now: datetime.datetime) -> str:
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.datetime.strptime(str(timestamp), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return "<unknown>"
    return human_duration((now - then).total_seconds())


def _or_none(value: Any) -> str:
    return str(value) if value not in (None, "", []) else "<none>"


def _selector_text(selector: Mapping[str, Any] | None) -> str:
    if not selector:
        return "<none>"
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        values = ",".join(expression.get("values") or [])
        operator = str(expression.get("operator", "")).lower()
        parts.append(f"{expression.get('key')} {operator} ({values})" if values else
                     f"{'!' if operator == 'doesnotexist' else ''}{expression.get('key')}")
    return ",".join(parts) or "<none>"


def _containers(spec: Mapping[str, Any] | None) -> tuple[str, str]:
    containers = (spec or {}).get("containers") or []
    return (",".join(str(c.get("name", "")) for c in containers),
            ",".join(str(c.get("image", "")) for c in containers))


Printer = Callable[[JsonDict, datetime.datetime], list[Any]]

_NAME: Final = Column("Name", format="name", description="Name must be unique within a namespace.")
_AGE: Final = Column("Age", description="CreationTimestamp is a timestamp representing the server time when this "
                                        "object was created.")


def _age(obj: Mapping[str, Any], now: datetime.datetime) -> str:
    return _since((obj.get("metadata") or {}).get("creationTimestamp"), now)


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _pod_row(pod: JsonDict, now: datetime.datetime) -> list[Any]:
    spec, status, meta = pod.get("spec") or {}, pod.get("status") or {}, pod.get("metadata") or {}
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount") or 0) for s in statuses)
    reason = str(status.get("reason") or status.get("phase") or "Unknown")
    for container in statuses:
        state = container.get("state") or {}
        if (state.get("waiting") or {}).get("reason"):
            reason = str(state["waiting"]["reason"])
        elif (state.get("terminated") or {}).get("reason"):
            reason = str(state["terminated"]["reason"])
    if meta.get("deletionTimestamp"):
        reason = "Terminating"
    gates = spec.get("readinessGates") or []
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    gate_text = (f"{sum(1 for g in gates if conditions.get(g.get('conditionType')) == 'True')}/{len(gates)}"
                 if gates else "<none>")
    return [_name(pod), f"{ready}/{len(spec.get('containers') or [])}", reason, str(restarts), _age(pod, now),
            _or_none(status.get("podIP")), _or_none(spec.get("nodeName")), _or_none(status.get("nominatedNodeName")),
            gate_text]


def _deployment_row(deployment: JsonDict, now: datetime.datetime) -> list[Any]:
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    names, images = _containers((spec.get("template") or {}).get("spec"))
    return [_name(deployment), f"{int(status.get('readyReplicas') or 0)}/{int(spec.get('replicas', 1))}",
            int(status.get("updatedReplicas") or 0), int(status.get("availableReplicas") or 0),
            _age(deployment, now), names, images, _selector_text(spec.get("selector"))]


def _replica_set_row(replica_set: JsonDict, now: datetime.datetime) -> list[Any]:
    spec, status = replica_set.get("spec") or {}, replica_set.get("status") or {}
    names, images = _containers((spec.get("template") or {}).get("spec"))
    return [_name(replica_set), int(spec.get("replicas", 1)), int(status.get("replicas") or 0),
            int(status.get("readyReplicas") or 0), _age(replica_set, now), names, images,
            _selector_text(spec.get("selector"))]


def _job_row(job: JsonDict, now: datetime.datetime) -> list[Any]:
    spec, status = job.get("spec") or {}, job.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    state = ("Complete" if conditions.get("Complete") == "True" else "Failed" if conditions.get("Failed") == "True"
             else "Suspended" if spec.get("suspend") else "Running")
    names, images = _containers((spec.get("template") or {}).get("spec"))
    duration = ""
    if status.get("startTime"):
        end = status.get("completionTime")
        started = datetime.datetime.strptime(str(status["startTime"]), "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.UTC)
        finished = (datetime.datetime.strptime(str(end), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
                    if end else now)
        duration = human_duration((finished - started).total_seconds())
    return [_name(job), state, f"{int(status.get('succeeded') or 0)}/{int(spec.get('completions', 1))}", duration,
            _age(job, now), names, images, _selector_text(spec.get("selector"))]


def _cron_job_row(cron_job: JsonDict, now: datetime.datetime) -> list[Any]:
    spec, status = cron_job.get("spec") or {}, cron_job.get("status") or {}
    template = (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec")
    names, images = _containers(template)
    last = status.get("lastScheduleTime")
    return [_name(cron_job), str(spec.get("schedule", "")), _or_none(spec.get("timeZone")),
            "True" if spec.get("suspend") else "False", len(status.get("active") or []),
            _since(last, now) if last else "<none>", _age(cron_job, now), names, images, "<none>"]


def _binding_row(binding: JsonDict, now: datetime.datetime) -> list[Any]:
    ref = binding.get("roleRef") or {}
    subjects = binding.get("subjects") or []

    def of(kind: str) -> str:
        return ", ".join(f"{s.get('namespace')}/{s.get('name')}" if kind == "ServiceAccount" else str(s.get("name"))
                         for s in subjects if s.get("kind") == kind)
    return [_name(binding), f"{ref.get('kind')}/{ref.get('name')}", _age(binding, now), of("User"), of("Group"),
            of("ServiceAccount")]


def _created_at(obj: JsonDict, now: datetime.datetime) -> list[Any]:
    return [_name(obj), str((obj.get("metadata") or {}).get("creationTimestamp", ""))]


def _service_row(service: JsonDict, now: datetime.datetime) -> list[Any]:
    spec = service.get("spec") or {}
    ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or [])
    return [_name(service), str(spec.get("type", "ClusterIP")), _or_none(spec.get("clusterIP")), "<none>",
            ports or "<none>", _age(service, now), _selector_text({"matchLabels": spec.get("selector") or {}})]


_WIDE_CONTAINERS: Final = (Column("Containers", description="Names of each container in the template.", priority=1),
                           Column("Images", description="Images referenced by each container in the template.",
                                  priority=1),
                           Column("Selector", description="Label selector for pods.", priority=1))
_BINDING_COLUMNS: Final = (_NAME, Column("Role", description="RoleRef is the reference to the role."), _AGE,
                           Column("Users", priority=1), Column("Groups", priority=1),
                           Column("ServiceAccounts", priority=1))
_CREATED_AT: Final = (_NAME, Column("Created At", type="date",
                                    description="CreationTimestamp is a timestamp representing the server time when "
                                                "this object was created."))

# The columns of Kubernetes' printers (pkg/printers/internalversion/printers.go) for the kinds served here.
PRINTERS: Final[Mapping[Kind, tuple[Sequence[Column], Printer]]] = {
    PODS: ((_NAME, Column("Ready", description="The aggregate readiness state of this pod for accepting traffic."),
            Column("Status", description="The aggregate status of the containers in this pod."),
            Column("Restarts", type="string", description="The number of times the containers in this pod have "
                                                          "been restarted and when the last container restarted."),
            _AGE,
            Column("IP", description="IP address allocated to the pod.", priority=1),
            Column("Node", description="Name of the node this pod runs on.", priority=1),
            Column("Nominated Node", description="Name of the node where the pod is nominated to run.", priority=1),
            Column("Readiness Gates", description="The readiness gates of the pod.", priority=1)), _pod_row),
    DEPLOYMENTS: ((_NAME, Column("Ready", description="Number of the pod with ready state"),
                   Column("Up-to-date", type="integer", description="Total number of non-terminated pods targeted "
                                                                    "by this deployment that have the desired template "
                                                                    "spec."),
                   Column("Available", type="integer", description="Total number of available pods (ready for at "
                                                                   "least minReadySeconds) targeted by this "
                                                                   "deployment."),
                   _AGE, *_WIDE_CONTAINERS), _deployment_row),
    REPLICA_SETS: ((_NAME, Column("Desired", type="integer", description="Number of desired pods."),
                    Column("Current", type="integer", description="Number of actual replicas."),
                    Column("Ready", type="integer", description="Number of ready replicas."),
                    _AGE, *_WIDE_CONTAINERS), _replica_set_row),
    JOBS: ((_NAME, Column("Status", description="Status of the job."),
            Column("Completions", description="The completion status of the job."),
            Column("Duration", description="Time required to complete the job."),
            _AGE, *_WIDE_CONTAINERS), _job_row),
    CRON_JOBS: ((_NAME, Column("Schedule", description="The schedule in Cron format."),
                 Column("Timezone", description="The time zone of the schedule."),
                 Column("Suspend", type="boolean", description="Whether the controller suspends runs."),
                 Column("Active", type="integer", description="Number of currently running jobs."),
                 Column("Last Schedule", description="When the job was last scheduled."),
                 _AGE, *_WIDE_CONTAINERS), _cron_job_row),
    SERVICE_ACCOUNTS: ((_NAME, Column("Secrets", type="integer", description="Secrets is a list of the secrets in "
                                                                             "the same namespace."), _AGE),
                       lambda o, now: [_name(o), len(o.get("secrets") or []), _age(o, now)]),
    NAMESPACES: ((_NAME, Column("Status", description="The status of the namespace"), _AGE),
                 lambda o, now: [_name(o), str((o.get("status") or {}).get("phase", "")), _age(o, now)]),
    CONFIG_MAPS: ((_NAME, Column("Data", type="integer", description="Data contains the configuration data."), _AGE),
                  lambda o, now: [_name(o), len(o.get("data") or {}) + len(o.get("binaryData") or {}),
                                  _age(o, now)]),
    SECRETS: ((_NAME, Column("Type", description="The type of the secret"),
               Column("Data", type="integer", description="The number of entries in the secret"), _AGE),
              lambda o, now: [_name(o), str(o.get("type", "")), len(o.get("data") or {}), _age(o, now)]),
    SERVICES: ((_NAME, Column("Type", description="The type of the service."),
                Column("Cluster-IP", description="The IP of the service."),
                Column("External-IP", description="The external IPs of the service."),
                Column("Port(s)", description="The ports of the service."), _AGE,
                Column("Selector", description="The selector of the service.", priority=1)), _service_row),
    ROLE_BINDINGS: (_BINDING_COLUMNS, _binding_row),
    CLUSTER_ROLE_BINDINGS: (_BINDING_COLUMNS, _binding_row),
    ROLES: (_CREATED_AT, _created_at),
    CLUSTER_ROLES: (_CREATED_AT, _created_at),
    CUSTOM_RESOURCE_DEFINITIONS: (_CREATED_AT, _created_at),
}
_DEFAULT: Final = ((_NAME, _AGE), lambda o, now: [_name(o), _age(o, now)])


def _row_object(obj: JsonDict, include: str) -> JsonDict | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata") or {}}


def _custom_cell(column: crds.PrinterColumn, obj: JsonDict, now: datetime.datetime) -> Any:
    """One cell as the apiextensions table convertor makes it: the first value the path finds, typed by the
    column (dates as ages); None (kubectl prints ``<none>``) when nothing is found or the type does not fit."""
    try:
        found = crds.find(column.json_path, obj)
    except ValueError:
        return None
    if not found or found[0] is None:
        return None
    value = found[0]
    if column.type == "string":
        return crds.cell_text(value)
    if column.type == "integer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if column.type == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if column.type == "boolean" and isinstance(value, bool):
        return value
    if column.type == "date" and isinstance(value, str):
        try:
            then = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return "<invalid>"
        return human_duration((now - then).total_seconds())
    return None


def custom_printer(columns: Sequence[crds.PrinterColumn]) -> tuple[Sequence[Column], Printer]:
    """A CRD version's columns: Name, then its ``additionalPrinterColumns`` (only Age when it declares none)."""
    if not columns:
        return _DEFAULT
    shown = (_NAME, *(Column(c.name, c.type, c.format, c.description, c.priority) for c in columns))

    def printer(obj: JsonDict, now: datetime.datetime) -> list[Any]:
        return [_name(obj), *(_custom_cell(c, obj, now) for c in columns)]
    return shown, printer


def table(kind: Kind, objects: Sequence[JsonDict], list_metadata: JsonDict, *, include_object: str = "Metadata",
          now: datetime.datetime | None = None, custom: Sequence[crds.PrinterColumn] | None = None) -> JsonDict:
    """The Table of ``objects`` (full objects, apiVersion and kind included) with the kind's columns.

    ``custom``: the kind is a CRD's version and these are its printer columns.
    """
    columns, printer = custom_printer(custom) if custom is not None else PRINTERS.get(kind, _DEFAULT)
    moment = now or datetime.datetime.now(tz=datetime.UTC)
    rows = []
    for obj in objects:
        row: JsonDict = {"cells": printer(obj, moment)}
        shown = _row_object(obj, include_object)
        if shown is not None:
            row["object"] = shown
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_metadata,
            "columnDefinitions": [c.to_api() for c in columns], "rows": rows}
