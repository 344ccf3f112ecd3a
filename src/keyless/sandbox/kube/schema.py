"""The resource types the stand-in serves: their names, defaulting, validation, and the API's Status errors."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from keyless.sandbox.kube.merge import JsonDict, SelectorError, labels_match, selector_from_match

_VERBS: Final = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class Kind:
    """One served resource type (a group/version/plural and what the server knows about it)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str
    short_names: tuple[str, ...] = ()
    status_subresource: bool = False
    has_generation: bool = False  # metadata.generation counts spec changes
    field_selectors: frozenset[str] = frozenset()
    subresources: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()  # what `kubectl get all` lists
    verbs: tuple[str, ...] = _VERBS  # a review is only created, never stored: ("create",)
    custom: bool = False  # served because a CustomResourceDefinition says so (crds.py holds its schema)

    @property
    def resource_key(self) -> tuple[str, str]:
        """What stays the same across versions of one resource (a CRD's versions share their objects)."""
        return self.group, self.plural

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How errors name the resource: ``serviceaccounts``, ``deployments.apps``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        """How validation errors name the kind: ``Pod``, ``Deployment.apps``."""
        return f"{self.kind}.{self.group}" if self.group else self.kind


NAMESPACES = Kind("", "v1", "namespaces", "Namespace", False, "namespace", ("ns",), status_subresource=True,
                  field_selectors=frozenset({"status.phase"}), subresources=("status",))
SERVICE_ACCOUNTS = Kind("", "v1", "serviceaccounts", "ServiceAccount", True, "serviceaccount", ("sa",),
                        subresources=("token",))
PODS = Kind("", "v1", "pods", "Pod", True, "pod", ("po",), status_subresource=True,
            field_selectors=frozenset({"spec.nodeName", "spec.serviceAccountName", "spec.restartPolicy",
                                       "spec.schedulerName", "status.phase", "status.podIP"}),
            subresources=("status",), categories=("all",))
CONFIG_MAPS = Kind("", "v1", "configmaps", "ConfigMap", True, "configmap", ("cm",))
SECRETS = Kind("", "v1", "secrets", "Secret", True, "secret", (), field_selectors=frozenset({"type"}))
SERVICES = Kind("", "v1", "services", "Service", True, "service", ("svc",), status_subresource=True,
                subresources=("status",), categories=("all",))
EVENTS = Kind("", "v1", "events", "Event", True, "event", ("ev",),
              field_selectors=frozenset({"involvedObject.kind", "involvedObject.name", "involvedObject.uid",
                                         "involvedObject.namespace", "reason", "type"}))
DEPLOYMENTS = Kind("apps", "v1", "deployments", "Deployment", True, "deployment", ("deploy",),
                   status_subresource=True, has_generation=True, subresources=("status", "scale"),
                   categories=("all",))
REPLICA_SETS = Kind("apps", "v1", "replicasets", "ReplicaSet", True, "replicaset", ("rs",),
                    status_subresource=True, has_generation=True, subresources=("status", "scale"),
                    categories=("all",))
JOBS = Kind("batch", "v1", "jobs", "Job", True, "job", (), status_subresource=True, has_generation=True,
            field_selectors=frozenset({"status.successful"}), subresources=("status",), categories=("all",))
CRON_JOBS = Kind("batch", "v1", "cronjobs", "CronJob", True, "cronjob", ("cj",), status_subresource=True,
                 has_generation=True, subresources=("status",), categories=("all",))
# What leader election and keyless's per-app apply lock hold: no status, no generation, writes checked on
# resourceVersion like every update.
LEASES = Kind("coordination.k8s.io", "v1", "leases", "Lease", True, "lease")

_RBAC: Final = "rbac.authorization.k8s.io"
ROLES = Kind(_RBAC, "v1", "roles", "Role", True, "role")
CLUSTER_ROLES = Kind(_RBAC, "v1", "clusterroles", "ClusterRole", False, "clusterrole")
ROLE_BINDINGS = Kind(_RBAC, "v1", "rolebindings", "RoleBinding", True, "rolebinding")
CLUSTER_ROLE_BINDINGS = Kind(_RBAC, "v1", "clusterrolebindings", "ClusterRoleBinding", False, "clusterrolebinding")
# Reviews: created and answered, never stored (what `kubectl auth can-i` and `kubectl auth whoami` post).
SELF_SUBJECT_ACCESS_REVIEWS = Kind("authorization.k8s.io", "v1", "selfsubjectaccessreviews",
                                   "SelfSubjectAccessReview", False, "selfsubjectaccessreview", verbs=("create",))
SELF_SUBJECT_RULES_REVIEWS = Kind("authorization.k8s.io", "v1", "selfsubjectrulesreviews",
                                  "SelfSubjectRulesReview", False, "selfsubjectrulesreview", verbs=("create",))
SELF_SUBJECT_REVIEWS = Kind("authentication.k8s.io", "v1", "selfsubjectreviews", "SelfSubjectReview", False,
                            "selfsubjectreview", verbs=("create",))
REVIEWS: Final = (SELF_SUBJECT_ACCESS_REVIEWS, SELF_SUBJECT_RULES_REVIEWS, SELF_SUBJECT_REVIEWS)
CUSTOM_RESOURCE_DEFINITIONS = Kind("apiextensions.k8s.io", "v1", "customresourcedefinitions",
                                   "CustomResourceDefinition", False, "customresourcedefinition", ("crd", "crds"),
                                   status_subresource=True, has_generation=True, subresources=("status",),
                                   categories=("api-extensions",))

KINDS: Final = (NAMESPACES, SERVICE_ACCOUNTS, PODS, CONFIG_MAPS, SECRETS, SERVICES, EVENTS,
                DEPLOYMENTS, REPLICA_SETS, JOBS, CRON_JOBS, LEASES,
                ROLES, CLUSTER_ROLES, ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS, *REVIEWS, CUSTOM_RESOURCE_DEFINITIONS)


def kind_for(group: str | None, version: str | None, plural: str | None) -> Kind | None:
    for kind in KINDS:
        if (kind.group, kind.version, kind.plural) == (group, version, plural):
            return kind
    return None


def verbs() -> tuple[str, ...]:
    return _VERBS


# What each subresource is, as discovery states it: (group, version, kind or None for the parent's, verbs).
_SUBRESOURCES: Final[dict[str, tuple[str, str, str | None, tuple[str, ...]]]] = {
    "status": ("", "", None, ("get", "patch", "update")),
    "token": ("authentication.k8s.io", "v1", "TokenRequest", ("create",)),
    "scale": ("autoscaling", "v1", "Scale", ("get", "patch", "update")),
}


def api_resources(group: str, version: str, kinds: Iterable[Kind] = KINDS) -> list[JsonDict]:
    """The ``resources`` of a group-version's discovery document (``/api/v1``, ``/apis/apps/v1``).

    Short names and categories belong to a resource only, never to its subresources: kubectl
    resolves ``sa`` against every entry and warns when a subresource could match too.
    """
    found: list[JsonDict] = []
    for kind in kinds:
        if (kind.group, kind.version) != (group, version):
            continue
        entry: JsonDict = {"name": kind.plural, "singularName": kind.singular, "namespaced": kind.namespaced,
                           "kind": kind.kind, "verbs": list(kind.verbs)}
        if kind.short_names:
            entry["shortNames"] = list(kind.short_names)
        if kind.categories:
            entry["categories"] = list(kind.categories)
        found.append(entry)
        for sub in kind.subresources:
            sub_group, sub_version, sub_kind, sub_verbs = _SUBRESOURCES[sub]
            sub_entry: JsonDict = {"name": f"{kind.plural}/{sub}", "singularName": "", "namespaced": kind.namespaced,
                                   "kind": sub_kind or kind.kind, "verbs": list(sub_verbs)}
            if sub_group:
                sub_entry |= {"group": sub_group, "version": sub_version}
            found.append(sub_entry)
    return found


# --- Status errors ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cause:
    """One field-level reason of an Invalid error."""

    field: str
    message: str
    reason: str = "FieldValueInvalid"


class StatusError(Exception):
    """An API failure answered with a ``Status`` body, like every error of the real API server."""

    def __init__(self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})

    def body(self) -> JsonDict:
        body: JsonDict = {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _details(kind: Kind | None, name: str | None) -> JsonDict:
    details: JsonDict = {}
    if name:
        details["name"] = name
    if kind is not None:
        if kind.group:
            details["group"] = kind.group
        details["kind"] = kind.plural
    return details


def not_found(kind: Kind, name: str) -> StatusError:
    return StatusError(404, "NotFound", f'{kind.qualified} "{name}" not found', _details(kind, name))


def already_exists(kind: Kind, name: str) -> StatusError:
    return StatusError(409, "AlreadyExists", f'{kind.qualified} "{name}" already exists', _details(kind, name))


def conflict(kind: Kind, name: str, why: str) -> StatusError:
    return StatusError(409, "Conflict", f'Operation cannot be fulfilled on {kind.qualified} "{name}": {why}',
                       _details(kind, name))


def forbidden(kind: Kind, name: str, why: str) -> StatusError:
    return StatusError(403, "Forbidden", f'{kind.qualified} "{name}" is forbidden: {why}', _details(kind, name))


def bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)


def invalid(kind: Kind, name: str, causes: list[Cause]) -> StatusError:
    parts = [f"{c.field}: {c.message}" for c in causes]
    summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    details = _details(kind, name)
    details["kind"] = kind.kind
    details["causes"] = [{"reason": c.reason, "message": c.message, "field": c.field} for c in causes]
    return StatusError(422, "Invalid", f'{kind.qualified_kind} "{name}" is invalid: {summary}', details)


# --- Validation ------------------------------------------------------------------------------------

_DNS_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME: Final = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE: Final = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_ENV_NAME: Final = re.compile(r"^[^=\s][^=]*$")
_ANNOTATIONS_MAX: Final = 256 * 1024


def _check_dns_label(value: Any, where: str, causes: list[Cause]) -> None:
    if not isinstance(value, str) or len(value) > 63 or not _DNS_LABEL.match(value):
        causes.append(Cause(where, f"Invalid value: {json.dumps(value)}: a lowercase RFC 1123 label must consist "
                                   "of lower case alphanumeric characters or '-', and must start and end with an "
                                   "alphanumeric character (at most 63 characters)"))


def _check_subdomain(value: Any, where: str, causes: list[Cause]) -> None:
    if not isinstance(value, str) or len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        causes.append(Cause(where, f"Invalid value: {json.dumps(value)}: a lowercase RFC 1123 subdomain must "
                                   "consist of lower case alphanumeric characters, '-' or '.', and must start and "
                                   "end with an alphanumeric character (at most 253 characters)"))


def _check_qualified_key(key: str, where: str, causes: list[Cause]) -> None:
    prefix, _, name = key.rpartition("/")
    ok = bool(name) and len(name) <= 63 and bool(_QUALIFIED_NAME.match(name))
    if prefix:
        ok = ok and len(prefix) <= 253 and bool(_DNS_SUBDOMAIN.match(prefix))
    if not ok:
        causes.append(Cause(where, f"Invalid value: {json.dumps(key)}: name part must consist of alphanumeric "
                                   "characters, '-', '_' or '.', and must start and end with an alphanumeric "
                                   "character (at most 63 characters), with an optional DNS subdomain prefix"))


def validate_metadata(kind: Kind, obj: Mapping[str, Any]) -> list[Cause]:
    meta = obj.get("metadata") or {}
    causes: list[Cause] = []
    name = meta.get("name")
    if not name:
        causes.append(Cause("metadata.name", "Required value: name or generateName is required",
                            "FieldValueRequired"))
    elif kind is NAMESPACES:
        _check_dns_label(name, "metadata.name", causes)
    elif kind.group == _RBAC:
        # RBAC names are path segments, so the bootstrap roles can be called "system:discovery".
        if not isinstance(name, str) or name in (".", "..") or "/" in name or "%" in name:
            causes.append(Cause("metadata.name", f"Invalid value: {json.dumps(name)}: may not be '.' or '..', "
                                                 "and may not contain '/' or '%'"))
    else:
        _check_subdomain(name, "metadata.name", causes)
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        causes.append(Cause("metadata.labels", "Invalid value: labels must be a map of strings"))
        labels = {}
    for key, value in labels.items():
        _check_qualified_key(key, "metadata.labels", causes)
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append(Cause("metadata.labels", f"Invalid value: {json.dumps(value)}: a valid label must be an "
                                                   "empty string or consist of alphanumeric characters, '-', '_' or "
                                                   "'.', and must start and end with an alphanumeric character "
                                                   "(at most 63 characters)"))
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        causes.append(Cause("metadata.annotations", "Invalid value: annotations must be a map of strings"))
        annotations = {}
    for key, value in annotations.items():
        _check_qualified_key(key, "metadata.annotations", causes)
        if not isinstance(value, str):
            causes.append(Cause(f"metadata.annotations[{key}]", "Invalid value: must be a string"))
    if sum(len(k) + len(str(v)) for k, v in annotations.items()) > _ANNOTATIONS_MAX:
        causes.append(Cause("metadata.annotations", "Too long: must have at most 262144 bytes", "FieldValueTooLong"))
    return causes


def validate_pod_spec(spec: Any, where: str, *, restart_policies: Iterable[str] | None = None) -> list[Cause]:
    causes: list[Cause] = []
    if not isinstance(spec, dict):
        return [Cause(where, "Required value", "FieldValueRequired")]
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        causes.append(Cause(f"{where}.containers", "Required value", "FieldValueRequired"))
        containers = []
    volumes = {v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)}
    seen: set[str] = set()
    for group in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(group) or []):
            at = f"{where}.{group}[{index}]"
            if not isinstance(container, dict):
                causes.append(Cause(at, "Invalid value: must be an object"))
                continue
            name = container.get("name")
            _check_dns_label(name, f"{at}.name", causes)
            if name in seen:
                causes.append(Cause(f"{at}.name", f"Duplicate value: {json.dumps(name)}", "FieldValueDuplicate"))
            seen.add(str(name))
            if not container.get("image"):
                causes.append(Cause(f"{at}.image", "Required value", "FieldValueRequired"))
            for env_index, env in enumerate(container.get("env") or []):
                if not isinstance(env, dict) or not _ENV_NAME.match(str(env.get("name", ""))):
                    causes.append(Cause(f"{at}.env[{env_index}].name", "Invalid value: a valid environment "
                                                                       "variable name is required"))
            for mount_index, mount in enumerate(container.get("volumeMounts") or []):
                if not isinstance(mount, dict) or mount.get("name") not in volumes:
                    causes.append(Cause(f"{at}.volumeMounts[{mount_index}].name",
                                        f"Not found: {json.dumps((mount or {}).get('name'))}", "FieldValueNotFound"))
                elif not str(mount.get("mountPath", "")).startswith("/"):
                    causes.append(Cause(f"{at}.volumeMounts[{mount_index}].mountPath", "Required value",
                                        "FieldValueRequired"))
    names = [v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)]
    for index, name in enumerate(names):
        _check_dns_label(name, f"{where}.volumes[{index}].name", causes)
        if names.count(name) > 1 and names.index(name) != index:
            causes.append(Cause(f"{where}.volumes[{index}].name", f"Duplicate value: {json.dumps(name)}",
                                "FieldValueDuplicate"))
    for volume in spec.get("volumes") or []:
        for source in ((volume or {}).get("projected") or {}).get("sources") or []:
            token = (source or {}).get("serviceAccountToken")
            if isinstance(token, dict) and int(token.get("expirationSeconds", 3600)) < 600:
                causes.append(Cause(f"{where}.volumes[{volume.get('name')}].projected.sources.serviceAccountToken"
                                    ".expirationSeconds", "Invalid value: may not specify a duration less than "
                                                          "10 minutes"))
    policy = spec.get("restartPolicy")
    if restart_policies is not None and policy not in set(restart_policies):
        allowed = ", ".join(json.dumps(p) for p in restart_policies)
        causes.append(Cause(f"{where}.restartPolicy", f"Unsupported value: {json.dumps(policy)}: supported "
                                                      f"values: {allowed}", "FieldValueNotSupported"))
    account = spec.get("serviceAccountName")
    if account:
        _check_subdomain(account, f"{where}.serviceAccountName", causes)
    return causes


def _template_labels_match(spec: Mapping[str, Any], where: str) -> list[Cause]:
    selector = spec.get("selector")
    if not isinstance(selector, dict) or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        return [Cause(f"{where}.selector", "Required value", "FieldValueRequired")]
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    try:
        requirements = selector_from_match(selector)
    except SelectorError as exc:
        return [Cause(f"{where}.selector", f"Invalid value: {exc}")]
    if not labels_match(requirements, labels):
        return [Cause(f"{where}.template.metadata.labels",
                      f"Invalid value: {json.dumps(labels, sort_keys=True)}: `selector` does not match template "
                      "`labels`")]
    return []


def validate(kind: Kind, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> None:
    """Raise an Invalid error for what the real API server would refuse (the parts keyless can trip over)."""
    causes = validate_metadata(kind, obj)
    spec = obj.get("spec") or {}
    if kind is PODS:
        causes += validate_pod_spec(spec, "spec", restart_policies=("Always", "OnFailure", "Never"))
        if old is not None and _pod_spec_mutable_view(spec) != _pod_spec_mutable_view(old.get("spec") or {}):
            causes.append(Cause("spec", "Forbidden: pod updates may not change fields other than "
                                        "`spec.containers[*].image`, `spec.initContainers[*].image`, "
                                        "`spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to "
                                        "existing tolerations) or `spec.terminationGracePeriodSeconds`",
                                "FieldValueForbidden"))
    elif kind in (DEPLOYMENTS, REPLICA_SETS):
        causes += _template_labels_match(spec, "spec")
        template = spec.get("template") or {}
        causes += validate_pod_spec(template.get("spec"), "spec.template.spec", restart_policies=("Always",))
        if int(spec.get("replicas", 1)) < 0:
            causes.append(Cause("spec.replicas", "Invalid value: must be greater than or equal to 0"))
        if old is not None and (old.get("spec") or {}).get("selector") != spec.get("selector"):
            causes.append(Cause("spec.selector", "Invalid value: field is immutable"))
    elif kind is JOBS:
        template = spec.get("template") or {}
        causes += validate_pod_spec(template.get("spec"), "spec.template.spec",
                                    restart_policies=("OnFailure", "Never"))
        if old is not None and (old.get("spec") or {}).get("template") != spec.get("template"):
            causes.append(Cause("spec.template", "Invalid value: field is immutable"))
    elif kind is CRON_JOBS:
        if not spec.get("schedule"):
            causes.append(Cause("spec.schedule", "Required value", "FieldValueRequired"))
        template = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
        causes += validate_pod_spec(template.get("spec"), "spec.jobTemplate.spec.template.spec",
                                    restart_policies=("OnFailure", "Never"))
    elif kind in (ROLES, CLUSTER_ROLES):
        for index, rule in enumerate(obj.get("rules") or []):
            causes += _validate_rule(rule if isinstance(rule, dict) else {}, f"rules[{index}]",
                                     namespaced=kind is ROLES)
    elif kind in (ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS):
        causes += _validate_binding(kind, obj, old)
    elif kind is EVENTS:
        causes += _validate_event(obj)
    elif kind is LEASES:
        # Kubernetes' ValidateLeaseSpec, with its wording.
        if spec.get("leaseDurationSeconds") is not None and int(spec["leaseDurationSeconds"]) <= 0:
            causes.append(Cause("spec.leaseDurationSeconds", "Invalid value: must be greater than 0"))
        if spec.get("leaseTransitions") is not None and int(spec["leaseTransitions"]) < 0:
            causes.append(Cause("spec.leaseTransitions", "Invalid value: must be greater than or equal to 0"))
    if causes:
        raise invalid(kind, str((obj.get("metadata") or {}).get("name") or ""), causes)


def _validate_rule(rule: Mapping[str, Any], where: str, *, namespaced: bool) -> list[Cause]:
    """Kubernetes' ValidatePolicyRule, with its wording."""
    causes: list[Cause] = []
    if not rule.get("verbs"):
        causes.append(Cause(f"{where}.verbs", "Required value: verbs must contain at least one value",
                            "FieldValueRequired"))
    urls = rule.get("nonResourceURLs") or []
    if urls:
        if namespaced:
            causes.append(Cause(f"{where}.nonResourceURLs", f"Invalid value: {json.dumps(urls)}: namespaced rules "
                                                            "cannot apply to non-resource URLs"))
        if rule.get("apiGroups") or rule.get("resources") or rule.get("resourceNames"):
            causes.append(Cause(f"{where}.nonResourceURLs", f"Invalid value: {json.dumps(urls)}: rules cannot apply "
                                                            "to both regular resources and non-resource URLs"))
        return causes
    if not rule.get("apiGroups"):
        causes.append(Cause(f"{where}.apiGroups", "Required value: resource rules must supply at least one api group",
                            "FieldValueRequired"))
    if not rule.get("resources"):
        causes.append(Cause(f"{where}.resources", "Required value: resource rules must supply at least one resource",
                            "FieldValueRequired"))
    return causes


def _validate_binding(kind: Kind, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[Cause]:
    """Kubernetes' ValidateRoleBinding and ValidateClusterRoleBinding, with their wording."""
    causes: list[Cause] = []
    ref = obj.get("roleRef")
    ref = ref if isinstance(ref, dict) else {}
    if ref.get("apiGroup") != _RBAC:
        causes.append(Cause("roleRef.apiGroup", f"Unsupported value: {json.dumps(ref.get('apiGroup', ''))}: "
                                                f'supported values: "{_RBAC}"', "FieldValueNotSupported"))
    kinds = ("Role", "ClusterRole") if kind is ROLE_BINDINGS else ("ClusterRole",)
    if ref.get("kind") not in kinds:
        allowed = ", ".join(json.dumps(k) for k in kinds)
        causes.append(Cause("roleRef.kind", f"Unsupported value: {json.dumps(ref.get('kind', ''))}: supported "
                                            f"values: {allowed}", "FieldValueNotSupported"))
    if not ref.get("name"):
        causes.append(Cause("roleRef.name", "Required value", "FieldValueRequired"))
    for index, listed in enumerate(obj.get("subjects") or []):
        subject = listed if isinstance(listed, dict) else {}
        where = f"subjects[{index}]"
        if not subject.get("name"):
            causes.append(Cause(f"{where}.name", "Required value", "FieldValueRequired"))
        if subject.get("kind") not in ("ServiceAccount", "User", "Group"):
            causes.append(Cause(f"{where}.kind", f"Unsupported value: {json.dumps(subject.get('kind', ''))}: "
                                                 'supported values: "ServiceAccount", "User", "Group"',
                                "FieldValueNotSupported"))
        elif subject["kind"] == "ServiceAccount" and kind is CLUSTER_ROLE_BINDINGS and not subject.get("namespace"):
            causes.append(Cause(f"{where}.namespace", "Required value", "FieldValueRequired"))
    if old is not None and old.get("roleRef") != obj.get("roleRef"):
        causes.append(Cause("roleRef", f"Invalid value: {json.dumps(ref, sort_keys=True)}: cannot change roleRef"))
    return causes


def _validate_event(event: Mapping[str, Any]) -> list[Cause]:
    """Kubernetes' legacy core/v1 Event rule: the event lives in its object's namespace (or, for a cluster-scoped
    object, in none or ``default``); the newer events.k8s.io fields are not required of core/v1 writers."""
    namespace = (event.get("metadata") or {}).get("namespace") or ""
    involved = event.get("involvedObject")
    involved_namespace = (involved if isinstance(involved, dict) else {}).get("namespace") or ""
    if (involved_namespace and involved_namespace != namespace) or (
            not involved_namespace and namespace not in ("", "default")):
        return [Cause("involvedObject.namespace", f"Invalid value: {json.dumps(involved_namespace)}: does not match "
                                                  "event.namespace")]
    return []


def _pod_spec_mutable_view(spec: Mapping[str, Any]) -> JsonDict:
    """A pod spec without the few fields an update may change."""
    view = copy.deepcopy(dict(spec))
    for key in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"):
        view.pop(key, None)
    for group in ("containers", "initContainers"):
        for container in view.get(group) or []:
            if isinstance(container, dict):
                container.pop("image", None)
    return view


# --- Defaulting ------------------------------------------------------------------------------------


def _default_container(container: JsonDict) -> None:
    image = str(container.get("image", ""))
    tag = image.rsplit("/", 1)[-1]
    latest = "@" not in image and (":" not in tag or tag.endswith(":latest"))
    container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    container.setdefault("resources", {})


def default_pod_spec(spec: JsonDict, *, restart_policy: str = "Always") -> None:
    spec.setdefault("restartPolicy", restart_policy)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("securityContext", {})
    for group in ("initContainers", "containers"):
        for container in spec.get(group) or []:
            if isinstance(container, dict):
                _default_container(container)


def apply_defaults(kind: Kind, obj: JsonDict) -> None:
    """Fill in the defaults the API server sets on create (and that clients then see)."""
    meta = obj.setdefault("metadata", {})
    spec = obj.get("spec")
    if kind is NAMESPACES:
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name", "")
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")
    elif kind is PODS and isinstance(spec, dict):
        default_pod_spec(spec)
        # The ServiceAccount admission plugin fills these before any webhook sees the pod.
        spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
        spec["serviceAccount"] = spec["serviceAccountName"]
        spec.setdefault("enableServiceLinks", True)
        obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
    elif kind is DEPLOYMENTS and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        spec.setdefault("strategy", {"type": "RollingUpdate",
                                     "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        template_spec = (spec.get("template") or {}).get("spec")
        if isinstance(template_spec, dict):
            default_pod_spec(template_spec)
    elif kind is REPLICA_SETS and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        template_spec = (spec.get("template") or {}).get("spec")
        if isinstance(template_spec, dict):
            default_pod_spec(template_spec)
    elif kind is JOBS and isinstance(spec, dict):
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        template_spec = (spec.get("template") or {}).get("spec")
        if isinstance(template_spec, dict):
            default_pod_spec(template_spec, restart_policy="Never")
    elif kind is CRON_JOBS and isinstance(spec, dict):
        spec.setdefault("concurrencyPolicy", "Allow")
        spec.setdefault("suspend", False)
        spec.setdefault("successfulJobsHistoryLimit", 3)
        spec.setdefault("failedJobsHistoryLimit", 1)
        template_spec = (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec")
        if isinstance(template_spec, dict):
            default_pod_spec(template_spec, restart_policy="Never")
    elif kind is SECRETS:
        obj.setdefault("type", "Opaque")


def default_job_selector(obj: JsonDict) -> None:
    """Jobs select their pods by the job's uid; the server writes that selector and labels on create."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec")
    if not isinstance(spec, dict) or spec.get("manualSelector"):
        return
    uid, name = meta.get("uid", ""), meta.get("name", "")
    spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    labels = spec.setdefault("template", {}).setdefault("metadata", {}).setdefault("labels", {})
    labels.update({
        "batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
        "controller-uid": uid, "job-name": name,
    })
