"""The Kubernetes side of a binding as plain data: service accounts, pod templates, patches and rendered files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from keyless import clouds, names
from keyless.bindings import Binding
from keyless.clouds import IDENTITY_ANNOTATION
from keyless.kube.yamltext import to_yaml
from keyless.ownership import (
    MANAGED_BY_LABEL,
    MANAGER,
    PORTER_APP_LABEL,
    PORTER_SERVICE_LABEL,
    label_value,
    ownership_labels,
)
from keyless.plan.model import AccountSpec, Action, PodTemplateSettings, Resource
from keyless.porter.model import ServiceType

RESTARTED_AT_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
# On service accounts this key records the bound identity in readable form; on pod templates, its fingerprint.
IDENTITY_RECORD = IDENTITY_ANNOTATION


# --- service accounts --------------------------------------------------------------------------------


# What keyless needs on a target namespace: exactly the calls kube/cluster.py makes (README "Kubernetes
# permissions" shows them; the sandbox's keyless contexts get the same, and tests check that they agree).
KEYLESS_ROLE_RULES: Final[tuple[dict[str, Any], ...]] = (
    # observe (list), apply_service_account and record_intent (get, then server-side apply: patch, and create
    # when the account is new), remove_annotations (JSON patch), delete_service_account (delete).
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get", "list", "create", "patch", "delete"]},
    # request_token: the TokenRequest the proof of a token exchange presents.
    {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
    # observe (list), update_workload (merge patch), wait_rollout (get).
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "patch"]},
    # observe (list) and update_workload (merge patch); Jobs are only listed.
    {"apiGroups": ["batch"], "resources": ["cronjobs"], "verbs": ["list", "patch"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list"]},
    # try_lock, renew_lock, release_lock: the app's apply lock (a Lease per app and target; released, not deleted).
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
)


def identity_annotations(binding: Binding) -> dict[str, str]:
    """What the cloud's webhook (or a person running `kubectl describe`) reads on the service account."""
    return {IDENTITY_RECORD: binding.identity.describe(), **binding.identity.annotations(binding.service)}


def account_spec(binding: Binding) -> AccountSpec:
    """The labels and annotations of a binding's service account, as keyless applies (or renders) them."""
    return AccountSpec(labels=ownership_labels(binding.app, binding.service, binding.target),
                       annotations=dict(sorted(identity_annotations(binding).items())))


def service_account_manifest(namespace: str, name: str, spec: AccountSpec | None) -> dict[str, Any]:
    """The ServiceAccount object for server-side apply or a rendered file (`spec` None: just the name)."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if spec is not None:
        metadata["labels"] = dict(spec.labels)
        if spec.annotations:
            metadata["annotations"] = dict(spec.annotations)
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata}


def defer_to_other_manager(labels: Mapping[str, str], live_labels: Mapping[str, str]) -> dict[str, str]:
    """Drop the managed-by label when another tool (Helm, say) manages the account, so the two never fight over it."""
    owner = live_labels.get(MANAGED_BY_LABEL)
    out = dict(labels)
    if owner is not None and owner != MANAGER:
        out.pop(MANAGED_BY_LABEL, None)
    return out


# --- pod templates --------------------------------------------------------------------------------------


def pod_template_settings(binding: Binding) -> PodTemplateSettings:
    """The account, the identity fingerprint (so a changed identity recreates pods) and any label a webhook needs."""
    labels: dict[str, str | None] = dict(clouds.entry(binding.cloud).pod_labels)
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


# --- render mode ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RenderedService:
    """What render mode writes for one bound service, as the plan carries it."""

    app: str
    service: str
    kind: ServiceType
    namespace: str
    service_account: str
    account: AccountSpec
    pod_template: PodTemplateSettings


def helm_values(services: Sequence[RenderedService]) -> dict[str, Any]:
    """Values for Porter-style charts, keyed by service: the service account to create and the pod settings."""
    values: dict[str, Any] = {}
    for item in services:
        settings = item.pod_template
        values[item.service] = {
            "serviceAccount": {
                "create": True,
                "name": item.service_account,
                "annotations": dict(sorted(item.account.annotations.items())),
            },
            "podLabels": {k: v for k, v in sorted(settings.labels.items()) if v is not None},
            "podAnnotations": {k: v for k, v in sorted(settings.annotations.items()) if v is not None},
        }
    return values


def service_account_path(name: str) -> str:
    return f"serviceaccounts/{name}.yaml"


def _guess_kind(kind: ServiceType) -> str:
    return "CronJob" if kind is ServiceType.JOB else "Deployment"


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


def file_header(app: str, target: str) -> str:
    return f"# Written by keyless for app {app!r} on target {target!r}; do not edit by hand.\n"


def service_account_file(manifest: Mapping[str, Any], *, app: str, target: str) -> str:
    """The text of a rendered service account file."""
    return file_header(app, target) + to_yaml(manifest)


def render_manifests(services: Sequence[RenderedService], *, app: str, target: str) -> dict[str, str]:
    """Every file render mode writes, as {relative path: text}: accounts, pod template patches, helm values."""
    files: dict[str, str] = {}
    header = file_header(app, target)
    for item in services:
        files[service_account_path(item.service_account)] = service_account_file(
            service_account_manifest(item.namespace, item.service_account, item.account), app=app, target=target)
        kind = _guess_kind(item.kind)
        # Porter names workloads after the app and service; the label selector is what really matches.
        name = names.service_account_name(item.app, item.service)
        selector = {PORTER_APP_LABEL: label_value(item.app), PORTER_SERVICE_LABEL: label_value(item.service)}
        files[workload_patch_path(kind, name)] = header + workload_patch_document(
            kind, name, item.namespace, item.pod_template, selector)
    values_header = (header + "# Helm values for Porter-style charts, keyed by service. Use either these values or\n"
                     "# the files under serviceaccounts/, not both: each creates the service accounts.\n")
    files["helm-values.yaml"] = values_header + to_yaml(helm_values(services))
    return dict(sorted(files.items()))


def rendered_services(actions: Sequence[Action]) -> list[RenderedService]:
    """What render mode writes, read from a plan: every bound service's account and pod template, as planned."""
    found: list[RenderedService] = []
    for action in actions:
        if (action.resource is Resource.SERVICE_ACCOUNT and action.desired is not None
                and action.account is not None and action.pod_template is not None):
            b = action.desired
            found.append(RenderedService(b.app, b.service, b.kind, action.ref.namespace, action.ref.name,
                                         action.account, action.pod_template))
    return found
