"""Custom resources: what a CustomResourceDefinition must say, the kinds it serves, and its schema's rules.

A CRD's ``openAPIV3Schema`` is a structural schema: the API server defaults, prunes and validates every custom
object against it (``apiextensions-apiserver``), and prints the version's ``additionalPrinterColumns``. This
module holds those rules as pure functions over JSON values; ``api.py`` calls them on every write.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from keyless.sandbox.kube.merge import JsonDict
from keyless.sandbox.kube.schema import Cause, Kind, verbs

CLEANUP_FINALIZER: Final = "customresourcecleanup.apiextensions.k8s.io"
_SCOPES: Final = ("Cluster", "Namespaced")
_COLUMN_TYPES: Final = ("integer", "number", "string", "boolean", "date")
_TYPES: Final = ("array", "boolean", "integer", "number", "object", "string")
_DNS_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_VERSION: Final = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")
_ROOT_FIELDS: Final = ("apiVersion", "kind", "metadata")  # never pruned: the API machinery owns them
PRESERVE: Final = "x-kubernetes-preserve-unknown-fields"
INT_OR_STRING: Final = "x-kubernetes-int-or-string"


@dataclass(frozen=True)
class PrinterColumn:
    """One ``additionalPrinterColumns`` entry of a CRD version."""

    name: str
    type: str
    json_path: str
    format: str = ""
    description: str = ""
    priority: int = 0


@dataclass(frozen=True, eq=False)
class CustomVersion:
    """One served version of a CRD: the kind it serves, its schema and its columns."""

    kind: Kind
    schema: Mapping[str, Any]
    columns: tuple[PrinterColumn, ...]
    definition: str  # the CRD's name, <plural>.<group>
    storage: bool


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Kubernetes' version order: GA before beta before alpha, higher numbers first, then the rest by name."""
    match = _VERSION.match(version)
    if match is None:
        return (3, 0, 0, version)
    level = {"": 0, "beta": 1, "alpha": 2}[match.group(2) or ""]
    return (level, -int(match.group(1)), -int(match.group(3) or 0), version)


# --- the definition itself -------------------------------------------------------------------------


def default_definition(crd: JsonDict) -> None:
    """The defaults the API server fills into a CRD (``SetDefaults_CustomResourceDefinition``)."""
    spec = crd.get("spec")
    if not isinstance(spec, dict):
        return
    names = spec.get("names")
    if isinstance(names, dict) and isinstance(names.get("kind"), str):
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", f"{names['kind']}List")
    spec.setdefault("conversion", {"strategy": "None"})
    for version in spec.get("versions") or []:
        if isinstance(version, dict) and "additionalPrinterColumns" in version:
            for column in version["additionalPrinterColumns"] or []:
                if isinstance(column, dict):
                    column.setdefault("priority", 0)


def validate_definition(crd: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[Cause]:
    """``ValidateCustomResourceDefinition`` (and its update rules), the parts a person writing one trips over."""
    causes: list[Cause] = []
    spec = crd.get("spec") if isinstance(crd.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    group = spec.get("group")
    names = spec.get("names") if isinstance(spec.get("names"), dict) else {}
    assert isinstance(names, dict)
    plural = names.get("plural")
    if not group:
        causes.append(Cause("spec.group", "Required value", "FieldValueRequired"))
    elif "." not in str(group):
        causes.append(Cause("spec.group", f"Invalid value: {json.dumps(group)}: should be a domain with at least one "
                                          "dot"))
    if not plural:
        causes.append(Cause("spec.names.plural", "Required value", "FieldValueRequired"))
    elif not _DNS_LABEL.match(str(plural)):
        causes.append(Cause("spec.names.plural", f"Invalid value: {json.dumps(plural)}: a lowercase RFC 1123 label "
                                                 "must consist of lower case alphanumeric characters or '-', and must "
                                                 "start and end with an alphanumeric character"))
    if not names.get("kind"):
        causes.append(Cause("spec.names.kind", "Required value", "FieldValueRequired"))
    name = (crd.get("metadata") or {}).get("name")
    if group and plural and name != f"{plural}.{group}":
        causes.append(Cause("metadata.name", f'Invalid value: {json.dumps(name)}: must be spec.names.plural+"."+'
                                             "spec.group"))
    if spec.get("scope") not in _SCOPES:
        causes.append(Cause("spec.scope", f"Unsupported value: {json.dumps(spec.get('scope', ''))}: supported values: "
                                          '"Cluster", "Namespaced"', "FieldValueNotSupported"))
    causes += _validate_versions(spec.get("versions"))
    if old is not None:
        old_spec = old.get("spec") or {}
        for key in ("scope", "group"):
            if old_spec.get(key) != spec.get(key):
                causes.append(Cause(f"spec.{key}", f"Invalid value: {json.dumps(spec.get(key))}: field is immutable"))
    return causes


def _validate_versions(versions: Any) -> list[Cause]:
    if not isinstance(versions, list) or not versions:
        return [Cause("spec.versions", "Invalid value: null: must have exactly one version marked as storage "
                                       "version")]
    causes: list[Cause] = []
    seen: set[str] = set()
    for index, version in enumerate(versions):
        at = f"spec.versions[{index}]"
        if not isinstance(version, dict):
            causes.append(Cause(at, "Invalid value: must be an object"))
            continue
        version_name = str(version.get("name") or "")
        if not version_name:
            causes.append(Cause(f"{at}.name", "Required value", "FieldValueRequired"))
        elif version_name in seen:
            causes.append(Cause(f"{at}.name", f"Duplicate value: {json.dumps(version_name)}", "FieldValueDuplicate"))
        seen.add(version_name)
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        where = f"{at}.schema.openAPIV3Schema"
        if not isinstance(schema, dict):
            causes.append(Cause(where, "Required value: schemas are required", "FieldValueRequired"))
        else:
            if schema.get("type") != "object":
                causes.append(Cause(f"{where}.type", f"Invalid value: {json.dumps(schema.get('type', ''))}: must be "
                                                     "object at the root"))
            causes += list(_structural_problems(schema, where))
        for column_index, listed in enumerate(version.get("additionalPrinterColumns") or []):
            column_at = f"{at}.additionalPrinterColumns[{column_index}]"
            column = listed if isinstance(listed, dict) else {}
            if not column.get("name"):
                causes.append(Cause(f"{column_at}.name", "Required value", "FieldValueRequired"))
            if column.get("type") not in _COLUMN_TYPES:
                causes.append(Cause(f"{column_at}.type", f"Unsupported value: {json.dumps(column.get('type', ''))}: "
                                                         'supported values: "integer", "number", "string", '
                                                         '"boolean", "date"', "FieldValueNotSupported"))
            if not column.get("jsonPath"):
                causes.append(Cause(f"{column_at}.jsonPath", "Required value", "FieldValueRequired"))
            else:
                try:
                    _parse_json_path(str(column["jsonPath"]))
                except ValueError as error:
                    causes.append(Cause(f"{column_at}.jsonPath", f"Invalid value: {json.dumps(column['jsonPath'])}: "
                                                                 f"must be a simple json path: {error}"))
    storage = [v for v in versions if isinstance(v, dict) and v.get("storage") is True]
    if len(storage) != 1:
        causes.append(Cause("spec.versions", f"Invalid value: {json.dumps([v.get('name') for v in storage])}: must "
                                             "have exactly one version marked as storage version"))
    if not any(isinstance(v, dict) and v.get("served") is True for v in versions):
        causes.append(Cause("spec.versions", "Invalid value: must have at least one version marked as served"))
    return causes


def _structural_problems(schema: Mapping[str, Any], where: str) -> Iterator[Cause]:
    """A structural schema gives every field a type (unless it keeps unknown fields or is int-or-string)."""
    properties = schema.get("properties")
    if isinstance(properties, dict):
        for key, child in properties.items():
            child_at = f"{where}.properties[{key}]"
            if not isinstance(child, dict):
                continue
            if not child.get("type") and not child.get(PRESERVE) and not child.get(INT_OR_STRING):
                yield Cause(f"{child_at}.type", "Required value: must not be empty for specified object fields",
                            "FieldValueRequired")
            elif child.get("type") and child["type"] not in _TYPES:
                yield Cause(f"{child_at}.type", f"Unsupported value: {json.dumps(child['type'])}: supported values: "
                                                + ", ".join(json.dumps(t) for t in _TYPES), "FieldValueNotSupported")
            yield from _structural_problems(child, child_at)
    items = schema.get("items")
    if isinstance(items, dict):
        yield from _structural_problems(items, f"{where}.items")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield from _structural_problems(extra, f"{where}.additionalProperties")


def established_status(crd: Mapping[str, Any]) -> JsonDict:
    """The status the naming and establishing controllers give an accepted CRD (no name conflicts checked)."""
    spec = crd.get("spec") or {}
    names = dict(spec.get("names") or {})
    previous = {c.get("type"): c for c in (crd.get("status") or {}).get("conditions") or [] if isinstance(c, dict)}
    stamp = str((crd.get("metadata") or {}).get("creationTimestamp") or "")
    conditions = []
    for kind, reason, message in (("NamesAccepted", "NoConflicts", "no conflicts found"),
                                  ("Established", "InitialNamesAccepted", "the initial names have been accepted")):
        old = previous.get(kind)
        conditions.append({"type": kind, "status": "True", "reason": reason, "message": message,
                           "lastTransitionTime": (old or {}).get("lastTransitionTime") or stamp})
    stored = list((crd.get("status") or {}).get("storedVersions") or [])
    for version in spec.get("versions") or []:
        if version.get("storage") and version.get("name") not in stored:
            stored.append(version["name"])
    return {"acceptedNames": names, "conditions": conditions, "storedVersions": stored}


def served_versions(crd: Mapping[str, Any]) -> list[CustomVersion]:
    """The kinds a CRD serves, one per version marked ``served``."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural = str(spec.get("group")), str(names.get("plural"))
    found = []
    for version in spec.get("versions") or []:
        if not version.get("served"):
            continue
        subresources = version.get("subresources") or {}
        kind = Kind(group, str(version["name"]), plural, str(names.get("kind")), spec.get("scope") == "Namespaced",
                    str(names.get("singular") or str(names.get("kind")).lower()),
                    tuple(names.get("shortNames") or ()), status_subresource="status" in subresources,
                    has_generation=True, subresources=("status",) if "status" in subresources else (),
                    categories=tuple(names.get("categories") or ()), verbs=verbs(), custom=True)
        columns = tuple(PrinterColumn(str(c.get("name")), str(c.get("type")), str(c.get("jsonPath")),
                                      str(c.get("format") or ""), str(c.get("description") or ""),
                                      int(c.get("priority") or 0))
                        for c in version.get("additionalPrinterColumns") or [])
        found.append(CustomVersion(kind, (version.get("schema") or {}).get("openAPIV3Schema") or {}, columns,
                                   str((crd.get("metadata") or {}).get("name")), bool(version.get("storage"))))
    return found


# --- custom objects: defaults, pruning, validation --------------------------------------------------


def _is_object(schema: Mapping[str, Any]) -> bool:
    return schema.get("type") == "object" or "properties" in schema


def apply_defaults(schema: Mapping[str, Any], value: Any) -> None:
    """Structural defaulting: a missing field with a ``default`` gets it, a ``null`` in a non-nullable field is
    dropped first (and then defaulted), inside objects that exist."""
    if isinstance(value, dict):
        properties = schema.get("properties")
        if isinstance(properties, dict):
            for key, child in properties.items():
                if not isinstance(child, dict):
                    continue
                if key in value and value[key] is None and not child.get("nullable"):
                    del value[key]
                if key not in value and "default" in child:
                    value[key] = copy.deepcopy(child["default"])
                if key in value:
                    apply_defaults(child, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for item in value.values():
                apply_defaults(extra, item)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item)


def prune(schema: Mapping[str, Any], value: Any, path: str = "", *, root: bool = True) -> list[str]:
    """Drop the fields the schema does not specify (unless it keeps unknown fields); answer their paths."""
    dropped: list[str] = []
    if isinstance(value, dict) and _is_object(schema):
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        assert isinstance(properties, dict)
        extra = schema.get("additionalProperties")
        for key in list(value):
            where = f"{path}.{key}" if path else str(key)
            if root and key in _ROOT_FIELDS:
                continue
            if key in properties:
                dropped += prune(properties[key], value[key], where, root=False)
            elif isinstance(extra, dict):
                dropped += prune(extra, value[key], where, root=False)
            elif extra is True or schema.get(PRESERVE):
                continue
            else:
                del value[key]
                dropped.append(where)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            dropped += prune(schema["items"], item, f"{path}[{index}]", root=False)
    return dropped


def unknown_fields(schema: Mapping[str, Any], value: Any) -> list[str]:
    """What pruning would drop: the unknown fields ``fieldValidation`` warns about or refuses."""
    return prune(schema, copy.deepcopy(value))


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_matches(wanted: str, value: Any) -> bool:
    actual = _type_name(value)
    return actual == wanted or (wanted == "number" and actual == "integer")


def validate_value(schema: Mapping[str, Any], value: Any, path: str) -> list[Cause]:
    """The OpenAPI checks the API server makes, with its words: type, required, enum, bounds, lengths, pattern."""
    causes: list[Cause] = []
    if value is None:
        if not schema.get("nullable") and schema.get("type"):
            causes.append(Cause(path, f'Invalid value: "null": {path} in body must be of type {schema["type"]}: '
                                      '"null"', "FieldValueTypeInvalid"))
        return causes
    wanted = schema.get("type")
    if schema.get(INT_OR_STRING):
        if _type_name(value) not in ("integer", "string"):
            causes.append(Cause(path, f'Invalid value: "{_type_name(value)}": {path} in body must be of type '
                                      f'integer-or-string: "{_type_name(value)}"', "FieldValueTypeInvalid"))
            return causes
    elif isinstance(wanted, str) and wanted and not _type_matches(wanted, value):
        causes.append(Cause(path, f'Invalid value: "{_type_name(value)}": {path} in body must be of type {wanted}: '
                                  f'"{_type_name(value)}"', "FieldValueTypeInvalid"))
        return causes
    enum = schema.get("enum")
    if isinstance(enum, list) and value not in enum:
        allowed = ", ".join(json.dumps(v) for v in enum)
        causes.append(Cause(path, f"Unsupported value: {json.dumps(value)}: supported values: {allowed}",
                            "FieldValueNotSupported"))
    causes += _bounds(schema, value, path)
    if isinstance(value, dict):
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        assert isinstance(properties, dict)
        for required in schema.get("required") or []:
            if required not in value:
                causes.append(Cause(f"{path}.{required}", "Required value", "FieldValueRequired"))
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in properties and isinstance(properties[key], dict):
                causes += validate_value(properties[key], item, f"{path}.{key}")
            elif isinstance(extra, dict):
                causes += validate_value(extra, item, f"{path}[{key}]")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            causes += validate_value(schema["items"], item, f"{path}[{index}]")
    return causes


def _bounds(schema: Mapping[str, Any], value: Any, path: str) -> list[Cause]:
    causes: list[Cause] = []
    shown = json.dumps(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = schema.get("minimum"), schema.get("maximum")
        if isinstance(low, (int, float)) and (value < low or (schema.get("exclusiveMinimum") and value == low)):
            relation = "greater than" if schema.get("exclusiveMinimum") else "greater than or equal to"
            causes.append(Cause(path, f"Invalid value: {shown}: {path} in body should be {relation} {low}"))
        if isinstance(high, (int, float)) and (value > high or (schema.get("exclusiveMaximum") and value == high)):
            relation = "less than" if schema.get("exclusiveMaximum") else "less than or equal to"
            causes.append(Cause(path, f"Invalid value: {shown}: {path} in body should be {relation} {high}"))
    if isinstance(value, str):
        if isinstance(schema.get("maxLength"), int) and len(value) > schema["maxLength"]:
            causes.append(Cause(path, f"Too long: may not be more than {schema['maxLength']} bytes",
                                "FieldValueTooLong"))
        if isinstance(schema.get("minLength"), int) and len(value) < schema["minLength"]:
            causes.append(Cause(path, f"Invalid value: {shown}: {path} in body should be at least "
                                      f"{schema['minLength']} chars long"))
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and re.search(pattern, value) is None:
            causes.append(Cause(path, f"Invalid value: {shown}: {path} in body should match '{pattern}'"))
    if isinstance(value, list):
        if isinstance(schema.get("maxItems"), int) and len(value) > schema["maxItems"]:
            causes.append(Cause(path, f"Too many: {len(value)}: must have at most {schema['maxItems']} items",
                                "FieldValueTooMany"))
        if isinstance(schema.get("minItems"), int) and len(value) < schema["minItems"]:
            causes.append(Cause(path, f"Invalid value: {len(value)}: {path} in body should have at least "
                                      f"{schema['minItems']} items"))
    return causes


def validate_object(schema: Mapping[str, Any], obj: Mapping[str, Any]) -> list[Cause]:
    """A custom object against its version's schema (``metadata`` is checked like every object's, elsewhere)."""
    causes: list[Cause] = []
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    assert isinstance(properties, dict)
    for required in schema.get("required") or []:
        if required not in obj and required not in _ROOT_FIELDS:
            causes.append(Cause(str(required), "Required value", "FieldValueRequired"))
    for key, value in obj.items():
        if key in _ROOT_FIELDS:
            continue
        child = properties.get(key)
        if isinstance(child, dict):
            causes += validate_value(child, value, str(key))
    return causes


def generation_view(kind: Kind, obj: Mapping[str, Any]) -> JsonDict:
    """What a custom object's generation counts: everything but metadata (and status, when it is a subresource)."""
    ignored = ("metadata", "status") if kind.status_subresource else ("metadata",)
    return {k: v for k, v in obj.items() if k not in ignored}


# --- printer columns (a simple JSONPath, as CRD columns allow) ---------------------------------------

_PATH_TOKEN: Final = re.compile(
    r"""\.(?P<name>[A-Za-z0-9_-]+)|\[(?P<index>-?\d+|\*)\]|\[\?\(@(?P<filter>(?:\.[A-Za-z0-9_-]+)+)\s*==\s*"""
    r"""(?P<quote>["'])(?P<value>.*?)(?P=quote)\)\]|\[(?P<q>["'])(?P<key>.*?)(?P=q)\]""")

Step = tuple[str, Any]


def _parse_json_path(path: str) -> list[Step]:
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    if text.startswith("$"):
        text = text[1:]
    steps: list[Step] = []
    position = 0
    while position < len(text):
        match = _PATH_TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"unexpected {text[position:]!r}")
        if match.group("name") is not None:
            steps.append(("field", match.group("name")))
        elif match.group("key") is not None:
            steps.append(("field", match.group("key")))
        elif match.group("index") is not None:
            index = match.group("index")
            steps.append(("all", None) if index == "*" else ("index", int(index)))
        else:
            steps.append(("filter", (match.group("filter").split(".")[1:], match.group("value"))))
        position = match.end()
    if not steps:
        raise ValueError("empty path")
    return steps


def find(path: str, obj: Any) -> list[Any]:
    """The values ``path`` selects in ``obj`` (``.status.conditions[?(@.type=="Ready")].status``)."""
    found = [obj]
    for step, argument in _parse_json_path(path):
        following: list[Any] = []
        for value in found:
            if step == "field" and isinstance(value, dict) and argument in value:
                following.append(value[argument])
            elif step == "index" and isinstance(value, list) and -len(value) <= argument < len(value):
                following.append(value[argument])
            elif step == "all" and isinstance(value, list):
                following.extend(value)
            elif step == "all" and isinstance(value, dict):
                following.extend(value.values())
            elif step == "filter" and isinstance(value, list):
                keys, wanted = argument
                following.extend(item for item in value if cell_text(_dig(item, keys)) == wanted)
        found = following
    return found


def cell_text(value: Any) -> str | None:
    """A value as JSONPath prints it: strings bare, other values as JSON; nothing for a missing value."""
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


def _dig(value: Any, keys: Sequence[str]) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value
