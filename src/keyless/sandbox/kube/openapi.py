"""The stand-in's OpenAPI documents (v2 and v3, per group-version) and the field validation they drive.

The schemas are derived from lightkube's models, which are generated from Kubernetes' own OpenAPI
document, so field names and nesting are the real ones; what the models do not carry (strategic-merge
keys, the value types of maps) is stated in the two small tables below. kubectl reads these documents to
learn that the server validates fields itself (the ``fieldValidation`` parameter of each PATCH) and to
compute its client-side apply patches; the server then uses the same schemas to find unknown fields.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import re
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from keyless.sandbox.kube.crds import CustomVersion
from keyless.sandbox.kube.merge import JsonDict
from keyless.sandbox.kube.schema import KINDS, Kind

_MODELS: Final = "lightkube.models"
# The Kubernetes definition name of each lightkube model module.
_PREFIXES: Final = {"meta_v1": "io.k8s.apimachinery.pkg.apis.meta.v1", "runtime": "io.k8s.apimachinery.pkg.runtime",
                    "apiextensions_v1": "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1"}
# Names the models declare as plain aliases (``Time = datetime``): their Kubernetes schemas.
_SCALARS: Final[Mapping[str, JsonDict]] = {
    "io.k8s.apimachinery.pkg.apis.meta.v1.Time": {"type": "string", "format": "date-time"},
    "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime": {"type": "string", "format": "date-time"},
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {"type": "string", "x-kubernetes-int-or-string": True},
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"type": "string", "format": "int-or-string",
                                                        "x-kubernetes-int-or-string": True},
}
_FREE_FORM: Final[JsonDict] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}

# Strategic merge: the lists merged by a key, as Kubernetes' types declare with patchStrategy/patchMergeKey.
_MERGE_KEYS: Final[Mapping[tuple[str, str], tuple[str, str | None]]] = {
    ("io.k8s.api.core.v1.PodSpec", "containers"): ("merge", "name"),
    ("io.k8s.api.core.v1.PodSpec", "initContainers"): ("merge", "name"),
    ("io.k8s.api.core.v1.PodSpec", "ephemeralContainers"): ("merge", "name"),
    ("io.k8s.api.core.v1.PodSpec", "volumes"): ("merge,retainKeys", "name"),
    ("io.k8s.api.core.v1.PodSpec", "imagePullSecrets"): ("merge", "name"),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases"): ("merge", "ip"),
    ("io.k8s.api.core.v1.PodSpec", "topologySpreadConstraints"): ("merge", "topologyKey"),
    ("io.k8s.api.core.v1.PodSpec", "schedulingGates"): ("merge", "name"),
    ("io.k8s.api.core.v1.PodSpec", "resourceClaims"): ("merge,retainKeys", "name"),
    ("io.k8s.api.core.v1.Container", "env"): ("merge", "name"),
    ("io.k8s.api.core.v1.Container", "ports"): ("merge", "containerPort"),
    ("io.k8s.api.core.v1.Container", "volumeMounts"): ("merge", "mountPath"),
    ("io.k8s.api.core.v1.Container", "volumeDevices"): ("merge", "devicePath"),
    ("io.k8s.api.core.v1.ServiceAccount", "secrets"): ("merge", "name"),
    ("io.k8s.api.core.v1.ServiceSpec", "ports"): ("merge", "port"),
    ("io.k8s.api.core.v1.PodStatus", "conditions"): ("merge", "type"),
    ("io.k8s.api.apps.v1.DeploymentStatus", "conditions"): ("merge", "type"),
    ("io.k8s.api.apps.v1.ReplicaSetStatus", "conditions"): ("merge", "type"),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "ownerReferences"): ("merge", "uid"),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "finalizers"): ("merge", None),
    ("io.k8s.api.apps.v1.DeploymentSpec", "strategy"): ("retainKeys", None),
}
# The value type of the maps the models type as a bare ``dict`` (anything else takes any value).
_STRING_MAPS: Final = frozenset({
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "labels"),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "annotations"),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector", "matchLabels"),
    ("io.k8s.api.core.v1.PodSpec", "nodeSelector"),
    ("io.k8s.api.core.v1.ServiceSpec", "selector"),
    ("io.k8s.api.core.v1.ConfigMap", "data"),
    ("io.k8s.api.core.v1.ConfigMap", "binaryData"),
    ("io.k8s.api.core.v1.Secret", "data"),
    ("io.k8s.api.core.v1.Secret", "stringData"),
})
_QUANTITY_MAPS: Final = frozenset({
    ("io.k8s.api.core.v1.ResourceRequirements", "limits"),
    ("io.k8s.api.core.v1.ResourceRequirements", "requests"),
})
_PATCH_TYPES: Final = ("application/apply-patch+yaml", "application/json-patch+json",
                       "application/merge-patch+json", "application/strategic-merge-patch+json")
# Custom resources take no strategic merge patch: kubectl reads this to send them a JSON merge patch instead.
_CUSTOM_PATCH_TYPES: Final = _PATCH_TYPES[:3]
_TOKEN_REQUEST: Final = "io.k8s.api.authentication.v1.TokenRequest"
_SCALE: Final = "io.k8s.api.autoscaling.v1.Scale"


def _ref(name: str) -> JsonDict:
    return {"$ref": f"#/components/schemas/{name}"}


def _module_prefix(module: str) -> str:
    if module in _PREFIXES:
        return _PREFIXES[module]
    if module == "resource":
        return "io.k8s.apimachinery.pkg.api.resource"
    if module == "util_intstr":
        return "io.k8s.apimachinery.pkg.util.intstr"
    group, _, version = module.rpartition("_")
    return f"io.k8s.api.{group}.{version}"


def definition_name(model: type) -> str:
    """Kubernetes' name of a lightkube model: ``io.k8s.api.core.v1.ServiceAccount``."""
    module = model.__module__.rsplit(".", 1)[-1]
    return f"{_module_prefix(module)}.{model.__name__}"


def _kind_model(kind: Kind) -> type:
    # lightkube names a module after the group's first label: rbac.authorization.k8s.io/v1 is rbac_v1.
    module = importlib.import_module(f"{_MODELS}.{kind.group.split('.')[0] or 'core'}_{kind.version}")
    model: type = getattr(module, kind.kind)
    return model


_TYPE_TOKEN: Final = re.compile(r"[\w.]+|[\[\],]")


def _parse_annotation(text: str) -> tuple[str, list[Any]]:
    """``Optional[List[meta_v1.Condition]]`` as nested (name, arguments) pairs."""
    tokens = _TYPE_TOKEN.findall(text)
    position = 0

    def parse() -> tuple[str, list[Any]]:
        nonlocal position
        name = tokens[position]
        position += 1
        arguments: list[Any] = []
        if position < len(tokens) and tokens[position] == "[":
            position += 1
            while tokens[position] != "]":
                arguments.append(parse())
                if tokens[position] == ",":
                    position += 1
            position += 1
        return name, arguments

    return parse()


@dataclass(frozen=True)
class Schemas:
    """Every schema the served kinds reach, by Kubernetes definition name."""

    components: Mapping[str, JsonDict]

    def kind_schema(self, kind: Kind) -> str:
        return definition_name(_kind_model(kind))

    def resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        while "$ref" in schema:
            schema = self.components[str(schema["$ref"]).rsplit("/", 1)[-1]]
        return schema

    def unknown_fields(self, kind: Kind, obj: Any, *, patch: bool = False) -> list[str]:
        """The paths of fields ``obj`` has that the kind's schema does not (``metadata.lables``).

        ``patch``: ``obj`` is a strategic merge patch, whose ``$``-directives are not fields.
        """
        return list(self._walk(_ref(self.kind_schema(kind)), obj, "", patch))

    def _walk(self, schema: Mapping[str, Any], value: Any, path: str, patch: bool) -> Iterator[str]:
        schema = self.resolve(schema)
        if isinstance(value, list) and "items" in schema:
            for index, item in enumerate(value):
                yield from self._walk(schema["items"], item, f"{path}[{index}]", patch)
        elif isinstance(value, dict) and "properties" in schema:
            properties = schema["properties"]
            for key, item in value.items():
                if patch and str(key).startswith("$"):
                    continue
                where = f"{path}.{key}" if path else str(key)
                if key in properties:
                    yield from self._walk(properties[key], item, where, patch)
                else:
                    yield where
        elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
            for key, item in value.items():
                yield from self._walk(schema["additionalProperties"], item, f"{path}[{key}]", patch)


def _collect(roots: list[type]) -> dict[str, JsonDict]:
    components: dict[str, JsonDict] = {}
    pending = list(roots)
    while pending:
        model = pending.pop()
        name = definition_name(model)
        if name in components:
            continue
        components[name] = _object_schema(model, name, pending)
    return components


def _object_schema(model: type, name: str, pending: list[type]) -> JsonDict:
    module = importlib.import_module(model.__module__)
    python_names: tuple[str, ...] = model.__struct_fields__  # type: ignore[attr-defined]
    json_names: tuple[str, ...] = model.__struct_encode_fields__  # type: ignore[attr-defined]
    defaults: tuple[Any, ...] = model.__struct_defaults__  # type: ignore[attr-defined]
    required = list(json_names[: len(json_names) - len(defaults)])
    properties: JsonDict = {}
    for python_name, json_name in zip(python_names, json_names, strict=True):
        annotation = model.__annotations__[python_name]
        prop = _type_schema(_parse_annotation(str(annotation)), module, (name, json_name), pending)
        strategy = _MERGE_KEYS.get((name, json_name))
        if strategy is not None:
            prop["x-kubernetes-patch-strategy"] = strategy[0]
            if strategy[1] is not None:
                prop["x-kubernetes-patch-merge-key"] = strategy[1]
        properties[json_name] = prop
    doc = (model.__doc__ or "").strip().split("\n\n", 1)[0]
    schema: JsonDict = {"description": " ".join(doc.split()), "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _type_schema(parsed: tuple[str, list[Any]], module: types.ModuleType, field: tuple[str, str],
                 pending: list[type]) -> JsonDict:
    name, arguments = parsed
    if name == "Optional":
        return _type_schema(arguments[0], module, field, pending)
    if name == "List":
        return {"type": "array", "items": _type_schema(arguments[0], module, field, pending)}
    if name in ("str", "int", "bool", "float"):
        return {"type": {"str": "string", "int": "integer", "bool": "boolean", "float": "number"}[name]}
    if name in ("dict", "Dict"):
        if field in _STRING_MAPS:
            return {"type": "object", "additionalProperties": {"type": "string"}}
        if field in _QUANTITY_MAPS:
            return {"type": "object", "additionalProperties": _ref("io.k8s.apimachinery.pkg.api.resource.Quantity")}
        return dict(_FREE_FORM)
    owner, _, short = name.rpartition(".")
    home = importlib.import_module(f"{_MODELS}.{owner}") if owner else module
    target = getattr(home, short)
    qualified = f"{_module_prefix(home.__name__.rsplit('.', 1)[-1])}.{short}"
    if qualified in _SCALARS:
        return _ref(qualified)
    if isinstance(target, type) and hasattr(target, "__struct_fields__"):
        pending.append(target)
        return _ref(qualified)
    return dict(_FREE_FORM)  # an alias of Dict or Any (FieldsV1, RawExtension, Patch)


@functools.cache
def schemas() -> Schemas:
    """The schemas of every served kind (built once: they depend only on the installed models)."""
    roots = [_kind_model(kind) for kind in KINDS]
    roots.append(importlib.import_module(f"{_MODELS}.authentication_v1").TokenRequest)
    roots.append(importlib.import_module(f"{_MODELS}.autoscaling_v1").Scale)
    roots.append(importlib.import_module(f"{_MODELS}.meta_v1").ListMeta)  # every list's metadata
    components = _collect(roots)
    for kind in KINDS:
        components[definition_name(_kind_model(kind))]["x-kubernetes-group-version-kind"] = [
            {"group": kind.group, "kind": kind.kind, "version": kind.version}]
    components[_TOKEN_REQUEST]["x-kubernetes-group-version-kind"] = [
        {"group": "authentication.k8s.io", "kind": "TokenRequest", "version": "v1"}]
    components[_SCALE]["x-kubernetes-group-version-kind"] = [
        {"group": "autoscaling", "kind": "Scale", "version": "v1"}]
    components.update({name: dict(schema) for name, schema in _SCALARS.items()})
    return Schemas(components)


# --- the documents ---------------------------------------------------------------------------------


def group_versions() -> list[str]:
    """The v3 index's keys: ``api/v1``, ``apis/apps/v1``, ..."""
    return sorted({_group_version_path(kind) for kind in KINDS})


def _group_version_path(kind: Kind) -> str:
    return f"apis/{kind.group}/{kind.version}" if kind.group else f"api/{kind.version}"


def _parameter(name: str, where: str, description: str, type_name: str = "string") -> JsonDict:
    parameter: JsonDict = {"name": name, "in": where, "description": description, "schema": {"type": type_name}}
    if where == "path":
        parameter["required"] = True
    return parameter


_FIELD_VALIDATION: Final = _parameter(
    "fieldValidation", "query",
    "How the server handles unknown fields in the request: Ignore, Warn (the default) or Strict.")
_WRITE_PARAMETERS: Final = (
    _parameter("dryRun", "query", "All: validate and answer without storing."),
    _parameter("fieldManager", "query", "The name of the actor making the change."),
    _FIELD_VALIDATION,
)
_LIST_PARAMETERS: Final = (
    _parameter("labelSelector", "query", "Select objects by their labels."),
    _parameter("fieldSelector", "query", "Select objects by their fields."),
    _parameter("limit", "query", "At most this many objects per page.", "integer"),
    _parameter("continue", "query", "The continue token of the previous page."),
    _parameter("resourceVersion", "query", "List or watch from this resource version."),
    _parameter("watch", "query", "Watch for changes instead of listing.", "boolean"),
    _parameter("timeoutSeconds", "query", "End a watch after this many seconds.", "integer"),
)


def _content(name: str) -> JsonDict:
    return {media: {"schema": _ref(name)} for media in ("application/json", "application/yaml")}


def _operation(action: str, verb: str, kind: Kind, gvk: JsonDict, *, body: str | None, answer: str,
               parameters: tuple[JsonDict, ...] = (), scope: str = "", patch: bool = False,
               patch_types: tuple[str, ...] = _PATCH_TYPES) -> JsonDict:
    op_kind = str(gvk["kind"])
    operation_id = f"{verb}{kind.group.split('.')[0].capitalize() or 'Core'}{kind.version.capitalize()}{scope}{op_kind}"
    operation: JsonDict = {
        "operationId": operation_id, "tags": [f"{kind.group or 'core'}_{kind.version}"],
        "parameters": list(parameters),
        "responses": {"200": {"description": "OK", "content": _content(answer)},
                      "401": {"description": "Unauthorized"}},
        "x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk,
    }
    if body is not None:
        if patch:
            operation["requestBody"] = {"required": True, "content": {
                media: {"schema": _ref("io.k8s.apimachinery.pkg.apis.meta.v1.Patch")} for media in patch_types}}
        else:
            operation["requestBody"] = {"required": True, "content": _content(body)}
    return operation


def _paths(kind: Kind, name: str | None = None) -> dict[str, JsonDict]:
    name = name or definition_name(_kind_model(kind))
    patch_types = _CUSTOM_PATCH_TYPES if kind.custom else _PATCH_TYPES
    list_name = f"{name}List"
    gvk: JsonDict = {"group": kind.group, "kind": kind.kind, "version": kind.version}
    root = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
    scope = "Namespaced" if kind.namespaced else ""
    collection = f"{root}/namespaces/{{namespace}}/{kind.plural}" if kind.namespaced else f"{root}/{kind.plural}"
    item = f"{collection}/{{name}}"
    namespace_parameter = [_parameter("namespace", "path", "The object's namespace.")] if kind.namespaced else []
    name_parameter = _parameter("name", "path", f"The name of the {kind.kind}.")
    force = _parameter("force", "query", "Take over fields other managers own (apply only).", "boolean")
    if kind.verbs == ("create",):  # a review: posted and answered, nothing else
        return {collection: {"parameters": namespace_parameter,
                             "post": _operation("post", "create", kind, gvk, body=name, answer=name,
                                                parameters=_WRITE_PARAMETERS, scope=scope)}}
    paths: dict[str, JsonDict] = {
        collection: {
            "parameters": namespace_parameter,
            "get": _operation("list", "list", kind, gvk, body=None, answer=list_name, parameters=_LIST_PARAMETERS,
                              scope=scope),
            "post": _operation("post", "create", kind, gvk, body=name, answer=name, parameters=_WRITE_PARAMETERS,
                               scope=scope),
            "delete": _operation("deletecollection", "deleteCollection", kind, gvk,
                                 body=None, answer="io.k8s.apimachinery.pkg.apis.meta.v1.Status",
                                 parameters=_LIST_PARAMETERS[:2], scope=scope),
        },
        item: {
            "parameters": [name_parameter, *namespace_parameter],
            "get": _operation("get", "read", kind, gvk, body=None, answer=name, scope=scope),
            "put": _operation("put", "replace", kind, gvk, body=name, answer=name, parameters=_WRITE_PARAMETERS,
                              scope=scope),
            "patch": _operation("patch", "patch", kind, gvk, body=name, answer=name,
                                parameters=(*_WRITE_PARAMETERS, force), scope=scope, patch=True,
                                patch_types=patch_types),
            "delete": _operation("delete", "delete", kind, gvk, body=None, answer=name, scope=scope),
        },
    }
    if kind.namespaced:
        paths[f"{root}/{kind.plural}"] = {
            "get": _operation("list", "list", kind, gvk, body=None, answer=list_name, parameters=_LIST_PARAMETERS,
                              scope="ForAllNamespaces"),
        }
    for sub in kind.subresources:
        if sub == "status":
            paths[f"{item}/status"] = {
                "parameters": [name_parameter, *namespace_parameter],
                "get": _operation("get", "read", kind, gvk, body=None, answer=name, scope=f"{scope}Status"),
                "put": _operation("put", "replace", kind, gvk, body=name, answer=name, parameters=_WRITE_PARAMETERS,
                                  scope=f"{scope}Status"),
                "patch": _operation("patch", "patch", kind, gvk, body=name, answer=name,
                                    parameters=(*_WRITE_PARAMETERS, force), scope=f"{scope}Status", patch=True,
                                    patch_types=patch_types),
            }
        elif sub == "scale":
            scale_gvk: JsonDict = {"group": "autoscaling", "kind": "Scale", "version": "v1"}
            paths[f"{item}/scale"] = {
                "parameters": [name_parameter, *namespace_parameter],
                "get": _operation("get", "read", kind, scale_gvk, body=None, answer=_SCALE,
                                  scope=f"{scope}{kind.kind}"),
                "put": _operation("put", "replace", kind, scale_gvk, body=_SCALE, answer=_SCALE,
                                  parameters=_WRITE_PARAMETERS, scope=f"{scope}{kind.kind}"),
                "patch": _operation("patch", "patch", kind, scale_gvk, body=_SCALE, answer=_SCALE,
                                    parameters=(*_WRITE_PARAMETERS, force), scope=f"{scope}{kind.kind}", patch=True),
            }
        elif sub == "token":
            token_gvk: JsonDict = {"group": "authentication.k8s.io", "kind": "TokenRequest", "version": "v1"}
            paths[f"{item}/token"] = {
                "parameters": [name_parameter, *namespace_parameter],
                "post": _operation("post", "create", kind, token_gvk, body=_TOKEN_REQUEST, answer=_TOKEN_REQUEST,
                                   parameters=_WRITE_PARAMETERS, scope=f"{scope}{kind.kind}"),
            }
    return paths


def _list_schema(kind: Kind, name: str | None = None) -> JsonDict:
    return {
        "description": f"A list of {kind.kind} objects.", "type": "object", "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"},
            "items": {"type": "array", "items": _ref(name or definition_name(_kind_model(kind)))},
            "metadata": _ref("io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"),
        },
        "x-kubernetes-group-version-kind": [{"group": kind.group, "kind": f"{kind.kind}List",
                                             "version": kind.version}],
    }


def _reachable(roots: list[str], components: Mapping[str, JsonDict]) -> dict[str, JsonDict]:
    found: dict[str, JsonDict] = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in found or name not in components:
            continue
        found[name] = components[name]
        pending.extend(ref.rsplit("/", 1)[-1] for ref in re.findall(r'"\$ref": "([^"]+)"', json.dumps(found[name])))
    return found


_META_SCHEMAS: Final = (
    "io.k8s.apimachinery.pkg.apis.meta.v1.Patch", "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
    "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta",
)
_STATUS: Final[JsonDict] = {
    "description": "Status is a return value for calls that do not return other objects.", "type": "object",
    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "code": {"type": "integer"},
                   "details": dict(_FREE_FORM), "message": {"type": "string"},
                   "metadata": _ref("io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"),
                   "reason": {"type": "string"}, "status": {"type": "string"}},
    "x-kubernetes-group-version-kind": [{"group": "", "kind": "Status", "version": "v1"}],
}


@functools.cache
def _v3_document_text(group_version: str) -> str:
    every = dict(schemas().components)
    every["io.k8s.apimachinery.pkg.apis.meta.v1.Patch"] = {
        "description": "Patch is the body of a PATCH request.", "type": "object"}
    every["io.k8s.apimachinery.pkg.apis.meta.v1.Status"] = _STATUS
    paths: dict[str, JsonDict] = {}
    roots = list(_META_SCHEMAS)
    for kind in KINDS:
        if _group_version_path(kind) != group_version:
            continue
        every[f"{definition_name(_kind_model(kind))}List"] = _list_schema(kind)
        paths.update(_paths(kind))
        roots += [definition_name(_kind_model(kind)), f"{definition_name(_kind_model(kind))}List"]
        if "token" in kind.subresources:
            roots.append(_TOKEN_REQUEST)
        if "scale" in kind.subresources:
            roots.append(_SCALE)
    document = {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (keyless sandbox)", "version": "unversioned"},
        "paths": paths,
        "components": {"schemas": _reachable(roots, every)},
    }
    return json.dumps(document, sort_keys=True)


def v3_document(group_version: str) -> bytes | None:
    """The OpenAPI v3 document of one group-version (``api/v1``), or None for one the stand-in lacks."""
    if group_version not in group_versions():
        return None
    return _v3_document_text(group_version).encode()


def v3_hash(group_version: str) -> str:
    return hashlib.sha512(_v3_document_text(group_version).encode()).hexdigest()[:128].upper()


def v3_index(custom: Mapping[str, str] | None = None) -> JsonDict:
    """``/openapi/v3``: where each group-version's document is (its URL carries the content hash).

    ``custom``: the hash of each group-version the CRDs serve.
    """
    hashes = {gv: v3_hash(gv) for gv in group_versions()} | dict(custom or {})
    return {"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest}"}
                      for gv, digest in sorted(hashes.items())}}


def text_hash(text: str) -> str:
    return hashlib.sha512(text.encode()).hexdigest()[:128].upper()


def custom_definition_name(kind: Kind) -> str:
    """How the API server names a CRD's schema: the group reversed, the version, the kind (``dev.keyless.v1.App``)."""
    return ".".join([*reversed(kind.group.split(".")), kind.version, kind.kind])


def _custom_schema(version: CustomVersion) -> JsonDict:
    schema = json.loads(json.dumps(version.schema))  # a copy, JSON values only
    properties = schema.setdefault("properties", {})
    properties["apiVersion"] = {"type": "string", "description": "APIVersion defines the versioned schema of this "
                                                                 "representation of an object."}
    properties["kind"] = {"type": "string", "description": "Kind is a string value representing the REST resource "
                                                           "this object represents."}
    properties["metadata"] = _ref("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
    schema["x-kubernetes-group-version-kind"] = [{"group": version.kind.group, "kind": version.kind.kind,
                                                  "version": version.kind.version}]
    return dict(schema)


def custom_v3_document(versions: list[CustomVersion]) -> str:
    """The OpenAPI v3 document of a group-version served by CRDs: their schemas, as kubectl validates against."""
    every = dict(schemas().components)
    every["io.k8s.apimachinery.pkg.apis.meta.v1.Patch"] = {
        "description": "Patch is the body of a PATCH request.", "type": "object"}
    every["io.k8s.apimachinery.pkg.apis.meta.v1.Status"] = _STATUS
    paths: dict[str, JsonDict] = {}
    roots = list(_META_SCHEMAS)
    for version in versions:
        name = custom_definition_name(version.kind)
        every[name] = _custom_schema(version)
        every[f"{name}List"] = _list_schema(version.kind, name)
        paths.update(_paths(version.kind, name))
        roots += [name, f"{name}List"]
    document = {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes CRD Swagger (keyless sandbox)", "version": "v0.1.0"},
        "paths": paths,
        "components": {"schemas": _reachable(roots, every)},
    }
    return json.dumps(document, sort_keys=True)


@functools.cache
def v2_document() -> bytes:
    """``/openapi/v2``: one Swagger 2.0 document for every served kind, as the API server's JSON form."""
    definitions: JsonDict = {}
    paths: JsonDict = {}
    for group_version in group_versions():
        document = json.loads(_v3_document_text(group_version))
        definitions.update(document["components"]["schemas"])
        for path, item in document["paths"].items():
            paths[path] = _v2_path(item)
    text = json.dumps({
        "swagger": "2.0", "info": {"title": "Kubernetes (keyless sandbox)", "version": "unversioned"},
        "paths": paths, "definitions": definitions,
    }, sort_keys=True).replace('"#/components/schemas/', '"#/definitions/')
    return text.encode()


def _v2_path(item: Mapping[str, Any]) -> JsonDict:
    converted: JsonDict = {}
    for key, value in item.items():
        if key == "parameters":
            converted[key] = [_v2_parameter(p) for p in value]
            continue
        operation = {k: v for k, v in value.items() if k not in ("requestBody", "responses")}
        operation["parameters"] = [_v2_parameter(p) for p in value.get("parameters", [])]
        if "requestBody" in value:
            content = value["requestBody"]["content"]
            operation["consumes"] = sorted(content)
            schema = next(iter(content.values()))["schema"]
            operation["parameters"].append({"name": "body", "in": "body", "required": True, "schema": schema})
        responses = {}
        for code, response in value["responses"].items():
            body = response.get("content", {}).get("application/json")
            responses[code] = {"description": response["description"], **({"schema": body["schema"]} if body else {})}
        operation["responses"] = responses
        operation["produces"] = ["application/json", "application/yaml"]
        operation["schemes"] = ["https"]
        converted[key] = operation
    return converted


def _v2_parameter(parameter: Mapping[str, Any]) -> JsonDict:
    converted = {k: v for k, v in parameter.items() if k != "schema"}
    converted["type"] = parameter["schema"]["type"]
    converted["uniqueItems"] = True
    return converted
