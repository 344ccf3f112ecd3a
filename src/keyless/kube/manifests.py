"""The Kubernetes side of a binding as plain data: service accounts, pod templates, the plan, rendered files."""

from __future__ import annotations

import io
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML

from keyless import names
from keyless.bindings import AwsRole, AzureIdentity, Binding, Cloud, GcpIdentity
from keyless.errors import PreflightFailed
from keyless.plan import (
    IDENTITY_ANNOTATION,
    Action,
    ActionKind,
    Blocker,
    ObservedServiceAccount,
    ObservedWorkload,
    Resource,
)
from keyless.porter.model import ServiceType

MANAGER = "keyless"  # the label value and the server-side apply field manager

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
APP_LABEL = "keyless.dev/app"
SERVICE_LABEL = "keyless.dev/service"
TARGET_LABEL = "keyless.dev/target"
PORTER_APP_LABEL = "porter.run/app-name"
PORTER_SERVICE_LABEL = "porter.run/service-name"

AZURE_CLIENT_ID_ANNOTATION = "azure.workload.identity/client-id"
AZURE_TENANT_ID_ANNOTATION = "azure.workload.identity/tenant-id"
AZURE_USE_LABEL = "azure.workload.identity/use"
GCP_SERVICE_ACCOUNT_ANNOTATION = "iam.gke.io/gcp-service-account"
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
RESTARTED_AT_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
# On service accounts the same key records the bound identity in readable form (role ARN, group/name
# of the managed identity, Google account email); on pod templates it holds the identity fingerprint.
IDENTITY_RECORD = IDENTITY_ANNOTATION

# Service account annotations keyless writes for each cloud.
IDENTITY_ANNOTATIONS: Mapping[Cloud, frozenset[str]] = {
    Cloud.AWS: frozenset({IDENTITY_RECORD}),
    Cloud.AZURE: frozenset({IDENTITY_RECORD, AZURE_CLIENT_ID_ANNOTATION, AZURE_TENANT_ID_ANNOTATION}),
    Cloud.GCP: frozenset({IDENTITY_RECORD, GCP_SERVICE_ACCOUNT_ANNOTATION}),
}
ALL_IDENTITY_ANNOTATIONS: frozenset[str] = frozenset().union(*IDENTITY_ANNOTATIONS.values())

# Annotations that contradict keyless's binding, per cloud, with why: removed from accounts keyless manages.
STALE_ANNOTATIONS: Mapping[Cloud, Mapping[str, str]] = {
    Cloud.AWS: {IRSA_ANNOTATION: "IRSA, superseded by EKS Pod Identity"},
    Cloud.AZURE: {},
    Cloud.GCP: {},
}

RESTART_REASON = "restart: identity changed"

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def label_value(text: str) -> str:
    """`text` if Kubernetes accepts it as a label value, else a stable shortened form (same input, same output)."""
    if len(text) <= names.DNS_LABEL_MAX and _LABEL_VALUE.match(text):
        return text
    suffix = names.short_hash(text)
    head = re.sub(r"[^-A-Za-z0-9_.]", "-", text)[: names.DNS_LABEL_MAX - len(suffix) - 1].strip("-_.")
    return f"{head}-{suffix}" if head else suffix


# --- service accounts --------------------------------------------------------------------------------


def ownership_labels(app: str, service: str, target: str) -> dict[str, str]:
    """Labels that mark an account as keyless's for one app, service and target (plus Porter's own)."""
    return {
        MANAGED_BY_LABEL: MANAGER,
        APP_LABEL: label_value(app),
        SERVICE_LABEL: label_value(service),
        TARGET_LABEL: label_value(target),
        PORTER_APP_LABEL: label_value(app),
        PORTER_SERVICE_LABEL: label_value(service),
    }


def identity_annotations(binding: Binding) -> dict[str, str]:
    """What the cloud's webhook (or a person running `kubectl describe`) reads on the service account."""
    identity = binding.identity
    out = {IDENTITY_RECORD: identity.describe()}
    if isinstance(identity, AwsRole):
        # Pod Identity keys on the account's name; the annotation only records which role is bound.
        return out
    if isinstance(identity, AzureIdentity):
        if not identity.client_id:
            # Without the client ID the webhook starts pods with no AZURE_CLIENT_ID and they fail later.
            raise PreflightFailed(
                f"managed identity {identity.describe()} of service {binding.service!r} has no client ID",
                "keyless reads it from Azure before it writes Kubernetes objects; check that the identity exists",
            )
        out[AZURE_CLIENT_ID_ANNOTATION] = identity.client_id
        if identity.tenant_id:
            out[AZURE_TENANT_ID_ANNOTATION] = identity.tenant_id
        return out
    assert isinstance(identity, GcpIdentity)
    out[GCP_SERVICE_ACCOUNT_ANNOTATION] = identity.email
    return out


def service_account_manifest(binding: Binding) -> dict[str, Any]:
    """The ServiceAccount of a binding, exactly as keyless applies it (server-side apply) or renders it."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": binding.service_account,
            "namespace": binding.namespace,
            "labels": ownership_labels(binding.app, binding.service, binding.target),
            "annotations": dict(sorted(identity_annotations(binding).items())),
        },
    }


def released_service_account_manifest(
    *, app: str, service: str, target: str, namespace: str, name: str
) -> dict[str, Any]:
    """The account of a service whose connection was removed: still keyless's, with no identity on it."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace, "labels": ownership_labels(app, service, target)},
    }


def defer_to_other_manager(manifest: Mapping[str, Any], live_labels: Mapping[str, str]) -> dict[str, Any]:
    """Drop the managed-by label when another tool (Helm, say) manages the account, so the two never fight over it."""
    owner = live_labels.get(MANAGED_BY_LABEL)
    metadata = dict(manifest["metadata"])
    labels = dict(metadata.get("labels", {}))
    if owner is not None and owner != MANAGER:
        labels.pop(MANAGED_BY_LABEL, None)
    metadata["labels"] = labels
    return {**manifest, "metadata": metadata}


def manifest_cloud(manifest: Mapping[str, Any]) -> Cloud | None:
    """The cloud a service account manifest binds to, read from its identity annotations; None when unbound."""
    annotations = manifest.get("metadata", {}).get("annotations") or {}
    if AZURE_CLIENT_ID_ANNOTATION in annotations:
        return Cloud.AZURE
    if GCP_SERVICE_ACCOUNT_ANNOTATION in annotations:
        return Cloud.GCP
    if IDENTITY_RECORD in annotations:
        return Cloud.AWS  # Pod Identity needs nothing on the account but keyless's record
    return None


def stale_annotations_for(manifest: Mapping[str, Any]) -> tuple[str, ...]:
    """Annotations to strip from the live account after applying `manifest` (when present)."""
    cloud = manifest_cloud(manifest)
    return tuple(sorted(STALE_ANNOTATIONS[cloud])) if cloud is not None else ()


def owned_by(account: ObservedServiceAccount, app: str, target: str) -> bool:
    """Whether the account carries keyless's labels for this app on this target."""
    labels = account.labels
    return labels.get(APP_LABEL) == label_value(app) and labels.get(TARGET_LABEL) == label_value(target)


def claimed_elsewhere(account: ObservedServiceAccount, app: str, target: str) -> bool:
    """Whether keyless put the account there for another app or target (two names can collide)."""
    labels = account.labels
    return (APP_LABEL in labels or TARGET_LABEL in labels) and not owned_by(account, app, target)


# --- pod templates --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodTemplateSettings:
    """What keyless sets on a workload's pod template; a None value removes that key."""

    service_account_name: str | None  # None: leave the template's account as it is
    annotations: Mapping[str, str | None] = field(default_factory=dict)
    labels: Mapping[str, str | None] = field(default_factory=dict)

    def patch(self) -> dict[str, Any]:
        """The pod template fragment (`metadata` and `spec`) these settings amount to."""
        template: dict[str, Any] = {}
        metadata: dict[str, Any] = {}
        if self.annotations:
            metadata["annotations"] = dict(sorted(self.annotations.items()))
        if self.labels:
            metadata["labels"] = dict(sorted(self.labels.items()))
        if metadata:
            template["metadata"] = metadata
        if self.service_account_name is not None:
            template["spec"] = {"serviceAccountName": self.service_account_name}
        return template


def pod_template_settings(binding: Binding) -> PodTemplateSettings:
    """The account, the identity fingerprint (so a changed identity recreates pods) and any label a webhook needs."""
    labels: dict[str, str | None] = {}
    if binding.cloud is Cloud.AZURE:
        # The Azure webhook mutates only pods carrying this label.
        labels[AZURE_USE_LABEL] = "true"
    return PodTemplateSettings(
        service_account_name=binding.service_account,
        annotations={IDENTITY_ANNOTATION: binding.identity_fingerprint()},
        labels=labels,
    )


def released_pod_template_settings() -> PodTemplateSettings:
    """For a removed connection: keep the account Porter's pods use, drop the fingerprint, roll the pods."""
    return PodTemplateSettings(service_account_name=None, annotations={IDENTITY_ANNOTATION: None})


def workload_patch(kind: str, settings: PodTemplateSettings, restarted_at: str | None = None) -> dict[str, Any]:
    """A merge patch (also a valid strategic-merge patch) setting the pod template of a Deployment, CronJob or Job."""
    template = settings.patch()
    if restarted_at is not None:
        # What `kubectl rollout restart` sets: a template change even when nothing else changed.
        metadata = template.setdefault("metadata", {})
        metadata["annotations"] = {**metadata.get("annotations", {}), RESTARTED_AT_ANNOTATION: restarted_at}
    if kind == "CronJob":
        return {"spec": {"jobTemplate": {"spec": {"template": template}}}}
    if kind in ("Deployment", "Job"):
        return {"spec": {"template": template}}
    raise ValueError(f"keyless does not manage pod templates of {kind} objects")


# --- helm values ---------------------------------------------------------------------------------------


def helm_values(bindings: Iterable[Binding]) -> dict[str, Any]:
    """Values for Porter-style charts, keyed by service: the service account to create and the pod settings."""
    values: dict[str, Any] = {}
    for binding in bindings:
        settings = pod_template_settings(binding)
        values[binding.service] = {
            "serviceAccount": {
                "create": True,
                "name": binding.service_account,
                "annotations": dict(sorted(identity_annotations(binding).items())),
            },
            "podLabels": {k: v for k, v in sorted(settings.labels.items()) if v is not None},
            "podAnnotations": {k: v for k, v in sorted(settings.annotations.items()) if v is not None},
        }
    return values


# --- planning -----------------------------------------------------------------------------------------


def _account_address(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def _workload_address(workload: ObservedWorkload) -> str:
    return f"{workload.kind} {workload.namespace}/{workload.name}"


def _workload_detail(workload: ObservedWorkload) -> dict[str, str]:
    detail = {"kind": workload.kind, "namespace": workload.namespace, "name": workload.name}
    if workload.service_account is not None:
        detail["service_account"] = workload.service_account
    return detail


def _differences(want: Mapping[str, str], have: Mapping[str, str], what: str) -> list[str]:
    out: list[str] = []
    for key, value in sorted(want.items()):
        if key not in have:
            out.append(f"{what} {key} missing")
        elif have[key] != value:
            out.append(f"{what} {key} is {have[key]!r}, wants {value!r}")
    return out


def _stale_present(cloud: Cloud, annotations: Mapping[str, str]) -> list[str]:
    return [key for key in sorted(STALE_ANNOTATIONS[cloud]) if key in annotations]


def _plan_account(binding: Binding, observed: ObservedServiceAccount | None) -> Action:
    address = _account_address(binding.namespace, binding.service_account)
    detail = {"namespace": binding.namespace, "name": binding.service_account}
    identity = binding.identity.describe()
    manifest = service_account_manifest(binding)
    if observed is None:
        return Action(ActionKind.CREATE, Resource.SERVICE_ACCOUNT, binding.service, address,
                      f"create the service account for {identity}", binding, detail=detail)
    manifest = defer_to_other_manager(manifest, observed.labels)
    metadata = manifest["metadata"]
    if APP_LABEL in observed.labels:
        changes = _differences(metadata["labels"], observed.labels, "label")
    else:
        changes = ["take over the existing account (add keyless's labels)"]
    changes += _differences(metadata.get("annotations", {}), observed.annotations, "annotation")
    stale = _stale_present(binding.cloud, observed.annotations)
    changes += [f"remove annotation {key} ({STALE_ANNOTATIONS[binding.cloud][key]})" for key in stale]
    if not changes:
        return Action(ActionKind.NOOP, Resource.SERVICE_ACCOUNT, binding.service, address,
                      f"annotated for {identity}", binding, detail=detail)
    if stale:
        detail["remove_annotations"] = ",".join(stale)
    return Action(ActionKind.UPDATE, Resource.SERVICE_ACCOUNT, binding.service, address,
                  "; ".join(changes), binding, detail=detail)


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
    address = _workload_address(workload)
    detail = _workload_detail(workload)
    changes = _workload_changes(binding, workload)
    if not changes:
        return Action(ActionKind.NOOP, Resource.WORKLOAD, binding.service, address,
                      f"pods run as {binding.service_account}", binding, detail=detail)
    if workload.kind == "Job":
        # A Job's pod template cannot change; Porter creates a new Job on the next run or deploy.
        return Action(ActionKind.NOOP, Resource.WORKLOAD, binding.service, address,
                      "job keeps its pods; its next run gets the new identity", binding, detail=detail)
    return Action(ActionKind.UPDATE, Resource.WORKLOAD, binding.service, address,
                  f"{RESTART_REASON} ({'; '.join(changes)})", binding, detail=detail)


def _plan_released(account: ObservedServiceAccount, service: str, still_declared: bool,
                   workloads: Sequence[ObservedWorkload]) -> list[Action]:
    address = _account_address(account.namespace, account.name)
    detail = {"namespace": account.namespace, "name": account.name}
    ours = account.labels.get(MANAGED_BY_LABEL) == MANAGER
    bound = sorted(key for key in ALL_IDENTITY_ANNOTATIONS if key in account.annotations)
    actions: list[Action] = []
    if not still_declared:
        # Porter removes the service's workloads itself; only the account is keyless's to clean up.
        if ours:
            return [Action(ActionKind.DELETE, Resource.SERVICE_ACCOUNT, service, address,
                           "service removed from porter.yaml", detail=detail)]
        if bound:
            detail["remove_annotations"] = ",".join(bound)
            return [Action(ActionKind.UPDATE, Resource.SERVICE_ACCOUNT, service, address,
                           "service removed from porter.yaml; the account belongs to "
                           f"{account.labels.get(MANAGED_BY_LABEL)}, so keyless only removes "
                           f"{', '.join(bound)}", detail=detail)]
        return [Action(ActionKind.NOOP, Resource.SERVICE_ACCOUNT, service, address,
                       "service removed from porter.yaml; nothing of keyless's left on the account",
                       detail=detail)]
    if bound:
        # Porter's pods keep running as <app>-<service>: keep the account, drop the identity.
        detail["remove_annotations"] = ",".join(bound)
        actions.append(Action(ActionKind.UPDATE, Resource.SERVICE_ACCOUNT, service, address,
                              f"connection removed from porter.yaml: remove {', '.join(bound)}", detail=detail))
    else:
        actions.append(Action(ActionKind.NOOP, Resource.SERVICE_ACCOUNT, service, address,
                              "no identity connection; account kept for the service's pods", detail=detail))
    for workload in workloads:
        wdetail = _workload_detail(workload)
        if workload.identity_annotation is None:
            actions.append(Action(ActionKind.NOOP, Resource.WORKLOAD, service, _workload_address(workload),
                                  "no identity on the pod template", detail=wdetail))
        elif workload.kind == "Job":
            actions.append(Action(ActionKind.NOOP, Resource.WORKLOAD, service, _workload_address(workload),
                                  "job keeps its pods; its next run has no identity", detail=wdetail))
        else:
            actions.append(Action(ActionKind.UPDATE, Resource.WORKLOAD, service, _workload_address(workload),
                                  f"{RESTART_REASON} (connection removed)", detail=wdetail))
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
) -> list[Action]:
    """Service account and workload actions that make the cluster match the desired bindings. Pure.

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
        if account is not None and claimed_elsewhere(account, app, target):
            continue
        actions.append(_plan_account(binding, account))
        for workload in workloads.get((binding.namespace, binding.service), []):
            actions.append(_plan_workload(binding, workload))
    declared = set(services_in_app)
    for key, account in sorted(accounts.items()):
        if key in wanted or not owned_by(account, app, target):
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
        if account is None or not claimed_elsewhere(account, app, target):
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


# --- render mode ---------------------------------------------------------------------------------------


def to_yaml(*documents: Mapping[str, Any]) -> str:
    """YAML text of one or more documents, keys in the order given (the order kubectl prints)."""
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 4096  # long annotation values (ARNs) stay on one line
    yaml.indent(mapping=2, sequence=4, offset=2)
    out = io.StringIO()
    yaml.dump_all([_plain(d) for d in documents], out)
    return out.getvalue()


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def service_account_path(name: str) -> str:
    return f"serviceaccounts/{name}.yaml"


def _guess_kind(binding: Binding) -> str:
    return "CronJob" if binding.kind is ServiceType.JOB else "Deployment"


def workload_patch_path(kind: str, name: str) -> str:
    return f"patches/{kind.lower()}-{name}.yaml"


def workload_patch_document(
    kind: str, name: str, namespace: str, settings: PodTemplateSettings, selector: Mapping[str, str]
) -> str:
    """A strategic-merge patch file for a GitOps tool, with a header saying which objects it targets."""
    api = "batch/v1" if kind in ("CronJob", "Job") else "apps/v1"
    document = {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": namespace},
                **workload_patch(kind, settings)}
    match = ",".join(f"{k}={v}" for k, v in selector.items())
    header = (f"# keyless: strategic-merge patch for the {kind} whose labels match {match}\n"
              "# (e.g. a kustomize `patches:` entry with `target: {kind: " + kind + ", labelSelector: \""
              + match + "\"}`)\n")
    return header + to_yaml(document)


def _header(app: str, target: str) -> str:
    return f"# Written by keyless for app {app!r} on target {target!r}; do not edit by hand.\n"


def service_account_file(manifest: Mapping[str, Any], *, app: str, target: str) -> str:
    """The text of a rendered service account file."""
    return _header(app, target) + to_yaml(manifest)


def render_manifests(bindings: Sequence[Binding], *, app: str, target: str) -> dict[str, str]:
    """Every file render mode writes, as {relative path: text}: accounts, pod template patches, helm values."""
    files: dict[str, str] = {}
    header = _header(app, target)
    for binding in bindings:
        files[service_account_path(binding.service_account)] = service_account_file(
            service_account_manifest(binding), app=app, target=target)
        kind = _guess_kind(binding)
        # Porter names workloads after the app and service; the label selector is what really matches.
        name = names.service_account_name(binding.app, binding.service)
        selector = {PORTER_APP_LABEL: label_value(binding.app), PORTER_SERVICE_LABEL: label_value(binding.service)}
        files[workload_patch_path(kind, name)] = header + workload_patch_document(
            kind, name, binding.namespace, pod_template_settings(binding), selector)
    values_header = (header + "# Helm values for Porter-style charts, keyed by service. Use either these values or\n"
                     "# the files under serviceaccounts/, not both: each creates the service accounts.\n")
    files["helm-values.yaml"] = values_header + to_yaml(helm_values(bindings))
    return dict(sorted(files.items()))
