"""What `keyless operator manifests` prints: the KeylessApp CRD, the operator's least-privilege RBAC, its Deployment.

Pure values; `cli.py` dumps them as one YAML stream for `kubectl apply -f -`.
"""

from __future__ import annotations

from typing import Any, Final

from keyless.kube.manifests import KEYLESS_ROLE_RULES
from keyless.operator.resource import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION

__all__ = ["CONTROL_PLANE_RULES", "OPERATOR_NAME", "OPERATOR_RULES", "crd_manifest", "operator_manifests"]

OPERATOR_NAME: Final = "keyless-operator"
TARGETS_CONFIG_MAP: Final = "keyless-targets"
TARGETS_KEY: Final = "targets.yaml"
LIVENESS_PORT: Final = 8080

# Exactly what the operator calls: its own resource (kopf watches it, and patches finalizers, its progress
# annotations and the status), Events about it, the per-app Leases it shares with `keyless apply`, the ConfigMaps
# porterYamlFrom names, and what keyless itself needs in each target namespace (README "Kubernetes permissions").
OPERATOR_RULES: Final[tuple[dict[str, Any], ...]] = (
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
    *KEYLESS_ROLE_RULES,
)

# What the control plane needs, on top of keyless's own rules, in a target namespace where it hands apps to the
# operator: read the app's KeylessApp, server-side apply it (create when new, patch), delete it (take back).
CONTROL_PLANE_RULES: Final[tuple[dict[str, Any], ...]] = (
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "create", "patch", "delete"]},
)

_CONDITION_COLUMN = '.status.conditions[?(@.type=="{}")].status'


def _spec_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["target"],
        "properties": {
            "target": {"type": "string", "minLength": 1,
                       "description": "A target of the operator's targets file: the cluster, namespace and cloud."},
            "porterYaml": {"type": "string", "description": "The app's porter.yaml, as text."},
            "porterYamlFrom": {
                "type": "object", "required": ["configMapKeyRef"],
                "properties": {"configMapKeyRef": {
                    "type": "object", "required": ["name", "key"],
                    "properties": {"name": {"type": "string", "minLength": 1},
                                   "key": {"type": "string", "minLength": 1}}}},
                "description": "Where porter.yaml is instead: a key of a ConfigMap in this namespace.",
            },
            "app": {"type": "string", "description": "The app in porter.yaml (default: its name)."},
            "refreshInterval": {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ms|h|m|s))+$",
                                "description": "How often the operator reads every binding back and repairs drift "
                                               "(default: the operator's --refresh-interval, 10m)."},
            "suspend": {"type": "boolean", "default": False,
                        "description": "Stop writing (plans and status go on)."},
        },
        "x-kubernetes-validations": [{
            "rule": "has(self.porterYaml) != has(self.porterYamlFrom)",
            "message": "give exactly one of porterYaml and porterYamlFrom",
        }],
    }


def _status_schema() -> dict[str, Any]:
    condition = {
        "type": "object", "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"}, "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"}, "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer"},
        },
    }
    binding = {
        "type": "object",
        "properties": {k: {"type": "string"} for k in ("service", "cloud", "identity", "bindingId", "state")},
    }
    return {
        "type": "object",
        "properties": {
            "observedGeneration": {"type": "integer"},
            "conditions": {"type": "array", "items": condition,
                           "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
            "bindings": {"type": "array", "items": binding},
            "lastAppliedPlan": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "appliedTo": {"type": "object", "properties": {"target": {"type": "string"}, "app": {"type": "string"},
                                                           "namespace": {"type": "string"}},
                          "description": "Where keyless holds bindings for this object: what deleting it removes."},
            "lastRefreshTime": {"type": "string", "format": "date-time"},
        },
    }


def crd_manifest() -> dict[str, Any]:
    """The CustomResourceDefinition `keylessapps.keyless.dev`, version v1alpha1, with the status subresource."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": PLURAL, "singular": SINGULAR, "kind": KIND, "listKind": f"{KIND}List",
                      "shortNames": list(SHORT_NAMES), "categories": ["keyless"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "One app's porter.yaml deployed to one target, kept bound by keyless.",
                    "properties": {"spec": _spec_schema(), "status": _status_schema()},
                    "required": ["spec"],
                }},
                "additionalPrinterColumns": [
                    {"name": "Target", "type": "string", "jsonPath": ".spec.target"},
                    {"name": "Ready", "type": "string", "jsonPath": _CONDITION_COLUMN.format("Ready")},
                    {"name": "Drifted", "type": "string", "jsonPath": _CONDITION_COLUMN.format("Drifted")},
                    {"name": "Blocked", "type": "string", "jsonPath": _CONDITION_COLUMN.format("Blocked")},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
            }],
        },
    }


def operator_manifests(namespace: str, image: str, replicas: int = 2) -> list[dict[str, Any]]:
    """Everything `kubectl apply -f -` needs to run the operator in `namespace` (the targets ConfigMap aside)."""
    labels = {"app.kubernetes.io/name": OPERATOR_NAME, "app.kubernetes.io/managed-by": "keyless"}
    return [
        crd_manifest(),
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": OPERATOR_NAME, "namespace": namespace, "labels": labels}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": OPERATOR_NAME, "labels": labels}, "rules": [dict(r) for r in OPERATOR_RULES]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": OPERATOR_NAME, "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": OPERATOR_NAME},
         "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_NAME, "namespace": namespace}]},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": OPERATOR_NAME, "namespace": namespace, "labels": labels},
         "spec": {
             "replicas": replicas,
             "selector": {"matchLabels": {"app.kubernetes.io/name": OPERATOR_NAME}},
             "template": {
                 "metadata": {"labels": labels},
                 "spec": {
                     "serviceAccountName": OPERATOR_NAME,
                     "containers": [{
                         "name": "operator",
                         "image": image,
                         "args": ["operator", "--targets", f"/etc/keyless/{TARGETS_KEY}", "--all-namespaces",
                                  "--liveness", f"http://0.0.0.0:{LIVENESS_PORT}/healthz"],
                         "ports": [{"name": "health", "containerPort": LIVENESS_PORT}],
                         "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"},
                                           "periodSeconds": 30},
                         "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                       "limits": {"memory": "512Mi"}},
                         "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                             "readOnlyRootFilesystem": True,
                                             "capabilities": {"drop": ["ALL"]}},
                         "volumeMounts": [{"name": "targets", "mountPath": "/etc/keyless", "readOnly": True},
                                          {"name": "tmp", "mountPath": "/tmp"}],
                     }],
                     "volumes": [{"name": "targets", "configMap": {"name": TARGETS_CONFIG_MAP}},
                                 {"name": "tmp", "emptyDir": {}}],
                 },
             },
         }},
    ]
