"""Loading porter.yaml: YAML with positions, placeholders, model validation and the rules across fields."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from keyless import names
from keyless.diagnostics import START, Diagnostic, Position, Severity, errors_in, sort_diagnostics
from keyless.errors import InvalidInput
from keyless.names import PORTER_NAME_MAX
from keyless.porter.model import (
    ENV_FORMS,
    IDENTITY_TYPES,
    JOB_DEFAULT_NAMES,
    App,
    AppList,
    ConnectionType,
    ServiceType,
    is_porter_field,
    porter_service_type,
)
from keyless.porter.placeholders import expand
from keyless.porter.yamlsource import Located, Path, read_yaml

M = TypeVar("M", bound=BaseModel)

CONNECTION_TYPES = [t.value for t in ConnectionType]

# What to write, for the fields people most often leave out.
FIELD_HINTS = {
    "services": "list the app's services: `services:` then `- name: api` and `type: web`",
    "name": "give it a name: lowercase letters, digits and '-'",
    "role": "write the IAM role name or ARN: `role: my-app-api-role`",
    "identityName": "write the managed identity's name: `identityName: my-app-api-identity`",
    "resourceGroup": "write the identity's resource group: `resourceGroup: my-resource-group`",
    "serviceAccountEmail": "write `serviceAccountEmail: NAME@PROJECT.iam.gserviceaccount.com`",
}


@dataclass(frozen=True)
class LoadedApp:
    """A validated App, where it came from, and the warnings and notes found while loading it.

    `document` is the app's own part of the file (all of it, or one item of `apps:`), so paths into it start at the
    app; `path` says where that part is (`()`, or `("apps", 1)`), and `diagnostics` are the whole file's."""

    app: App
    document: Located
    diagnostics: tuple[Diagnostic, ...] = field(default=())
    path: Path = ()

    @property
    def file(self) -> str:
        return self.document.file

    def connection_position(self, service_index: int, connection_index: int) -> Position:
        return self.document.value_at(("services", service_index, "connections", connection_index))

    def service_position(self, service_index: int) -> Position:
        return self.document.value_at(("services", service_index))


class _Collector:
    def __init__(self, doc: Located) -> None:
        self.doc = doc
        self.items: list[Diagnostic] = []

    def add(self, severity: Severity, pos: Position, message: str, hint: str = "") -> None:
        self.items.append(Diagnostic(severity, self.doc.file, pos, message, hint))

    def error(self, pos: Position, message: str, hint: str = "") -> None:
        self.add(Severity.ERROR, pos, message, hint)


# --- placeholders ------------------------------------------------------------------------------


def _everything(path: Path) -> bool:
    return True


def read_by_keyless(path: Path) -> bool:
    """Whether keyless reads the value at `path` of an app: the names it derives service accounts and bindings from
    (and the type of workload it patches), and every connection. The rest (env values, build args, commands,
    Porter's own settings) is Porter's alone and often filled in later by CI."""
    match path:
        case ("name",) | ("services", int(), "name" | "type") | ("services", int(), "connections", *_):
            return True
        case ("predeploy" | "initialDeploy", "name") | ("predeploy" | "initialDeploy", "connections", *_):
            return True
    return False


@dataclass
class _Placeholders:
    """What expanding `${VAR}` found: values whose problem is already an error, values kept as written (their
    placeholder could not be expanded in a field keyless does not read), and the variables each value used."""

    bad: set[Path] = field(default_factory=set)
    kept: set[Path] = field(default_factory=set)
    used: dict[Path, list[str]] = field(default_factory=dict)


def _expand_all(value: Any, path: Path, env: Mapping[str, str], out: _Collector, found: _Placeholders,
                reads: Callable[[Path], bool]) -> Any:
    if isinstance(value, dict):
        return {k: _expand_all(v, (*path, k), env, out, found, reads) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_all(v, (*path, i), env, out, found, reads) for i, v in enumerate(value)]
    if isinstance(value, str) and "$" in value:
        expanded, problems, variables = expand(value, env)
        for p in problems:
            where = out.doc.find(path, p.token)
            if reads(path):
                out.error(where, p.message, p.hint)
                found.bad.add(path)
            else:
                out.add(Severity.WARNING, where, p.message,
                        f"keyless does not use this field and keeps `{p.token}` as written, for whatever fills "
                        "it in before Porter deploys (your CI)")
                found.kept.add(path)
        if variables:
            found.used[path] = variables
        return expanded
    return value


def _without(value: Any, paths: set[Path]) -> Any:
    """`value` without the values at `paths` (list items removed from the last, so indices stay right)."""
    if not paths:
        return value
    if isinstance(value, dict):
        return {k: _without(v, {p[1:] for p in paths if p[0] == k and len(p) > 1})
                for k, v in value.items() if (k,) not in paths}
    if isinstance(value, list):
        return [_without(v, {p[1:] for p in paths if p[0] == i and len(p) > 1})
                for i, v in enumerate(value) if (i,) not in paths]
    return value


ENV_PATHS = ("env", "ingressAnnotations")


def _written(value: Any, doc: Located, path: Path) -> Any:
    return doc.texts.get(path, value) if isinstance(value, int | float) else value


def _keep_written_env(value: Any, doc: Located, path: Path = ()) -> Any:
    """Env values keep their spelling (`1.10` stays "1.10", `0042` stays "0042"), as Porter passes them on."""
    if isinstance(value, dict):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if key in ENV_PATHS and isinstance(item, dict):
                result[key] = {k: _written(v, doc, (*path, key, k)) for k, v in item.items()}
            elif key in ENV_PATHS and isinstance(item, list):  # Porter's list form: `- key: NAME` / `value: V`
                result[key] = [{k: _written(v, doc, (*path, key, i, k)) if k == "value" else v
                                for k, v in entry.items()} if isinstance(entry, dict) else entry
                               for i, entry in enumerate(item)]
            else:
                result[key] = _keep_written_env(item, doc, (*path, key))
        return result
    if isinstance(value, list):
        return [_keep_written_env(item, doc, (*path, i)) for i, item in enumerate(value)]
    return value


# --- model validation errors -------------------------------------------------------------------


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _close_key(wanted: str, present: list[str]) -> str | None:
    norm = {k.replace("_", "").replace("-", "").lower(): k for k in present}
    hit = norm.get(wanted.lower())
    if hit:
        return hit
    found = difflib.get_close_matches(wanted, present, n=1, cutoff=0.7)
    return found[0] if found else None


# The porter.yaml fields keyless acts on: a key one edit away from one of them is almost surely that field
# misspelled, and keeping it as an unknown field would silently drop what it says (a misspelled `connections:`
# makes the plan delete the service's binding). So it is an error, not a warning.
ACTED_ON_FIELDS = frozenset({"connections", "type", "role", "identityName", "resourceGroup", "serviceAccountEmail",
                             "name", "services"})


def one_edit_apart(a: str, b: str) -> bool:
    """Whether `a` becomes `b` by one insertion, deletion, substitution or swap of neighbours (case ignored)."""
    a, b = a.lower(), b.lower()
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


# The values a discriminator takes, for the hint when it is missing (pydantic does not say).
DISCRIMINATOR_VALUES = {"type": CONNECTION_TYPES, "cloud": ["aws", "azure", "gcp"]}


def _yaml_spelling(value: Any) -> str:
    """A value as YAML would show it (true, null, a list), not as Python's repr."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return _describe(value)
    return repr(str(value))


def _kind_hint(kind: str, field_name: str, ctx: Mapping[str, Any]) -> str:
    hints = {
        "int": f"write a whole number without quotes or units, e.g. `{field_name}: 2`",
        "float": f"write a number, e.g. `{field_name}: 0.5`",
        "bool": f"write `{field_name}: true` or `{field_name}: false`",
        "string": f"write text; quote it if it looks like a number or a boolean: `{field_name}: \"...\"`",
        "mapping": f"indent `key: value` lines under `{field_name}:`",
        "list": f"start each item of `{field_name}` on its own line with '- '",
        "range": "use a value within the allowed range",
        "choice": f"use one of: {ctx.get('expected', '')}",
    }
    family = {
        "int_parsing": "int", "int_type": "int", "int_from_float": "int",
        "float_parsing": "float", "float_type": "float", "finite_number": "float",
        "bool_parsing": "bool", "bool_type": "bool", "string_type": "string",
        "dict_type": "mapping", "model_type": "mapping", "model_attributes_type": "mapping",
        "list_type": "list", "greater_than": "range", "greater_than_equal": "range", "less_than_equal": "range",
        "less_than": "range", "literal_error": "choice", "enum": "choice",
    }.get(kind, "")
    return hints.get(family, "")


def _validation_diagnostic(err: ErrorDetails, doc: Located, out: _Collector,
                           from_placeholders: Mapping[Path, list[str]]) -> None:
    loc = tuple(step for step in err["loc"] if step not in ENV_FORMS)  # which form of `env`: not a data step
    path = doc.resolve(loc)
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    last = loc[-1] if loc else "value"
    owner = next((str(s) for s in reversed(loc) if isinstance(s, str)), "value")
    # An error on a list item names the item, not the list (`- api` under services is one bad service).
    field_name = owner
    subject = f"`{field_name}`" if isinstance(last, str) else f"item {int(last) + 1} of `{owner}`"
    pos = doc.value_at(path)
    if kind == "missing":
        parent = doc.value
        for step in path:
            parent = parent[step]
        present = list(parent) if isinstance(parent, dict) else []
        misspelt = _close_key(field_name, present)
        hint = (f"write `{field_name}`, not `{misspelt}`" if misspelt
                else FIELD_HINTS.get(field_name, f"add `{field_name}: ...` here"))
        out.error(pos, f"missing required field `{field_name}`", hint)
        return
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        key = str(ctx.get("discriminator", "'type'")).strip("'")
        expected = [t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(",") if t.strip()]
        expected = expected or DISCRIMINATOR_VALUES.get(key, [])
        what_tag = "connection type" if key == "type" else key
        listing = f"{what_tag} is one of: " + ", ".join(expected)
        raw = value.get(key) if isinstance(value, dict) else None
        if kind == "union_tag_not_found" or raw is None:
            where = doc.value_at((*path, key)) if isinstance(value, dict) and key in value else pos
            problem = (f"`{key}` is empty" if isinstance(value, dict) and key in value
                       else f"missing required field `{key}`")
            out.error(where, problem, listing)
            return
        close = difflib.get_close_matches(str(raw), expected, n=1, cutoff=0.5) if isinstance(raw, str) else []
        hint = f"did you mean {close[0]!r}? " if close else ""
        out.error(doc.value_at((*path, key)), f"unknown {what_tag} {_yaml_spelling(raw)}", hint + listing)
        return
    if kind == "keyless":
        out.error(pos, str(ctx.get("message", err["msg"])), str(ctx.get("hint", "")))
        return
    what = _describe(value)
    messages = {
        "int_parsing": f"{subject} must be a whole number, got {what}",
        "int_type": f"{subject} must be a whole number, got {what}",
        "int_from_float": f"{subject} must be a whole number, got {what}",
        "float_parsing": f"{subject} must be a number, got {what}",
        "float_type": f"{subject} must be a number, got {what}",
        "finite_number": f"{subject} must be a finite number, got {what}",
        "bool_parsing": f"{subject} must be true or false, got {what}",
        "bool_type": f"{subject} must be true or false, got {what}",
        "string_type": f"{subject} must be a string, got {what}",
        "dict_type": f"{subject} must be a mapping of `key: value` lines, got {what}",
        "model_type": f"{subject} must be a mapping of `key: value` lines, got {what}",
        "model_attributes_type": f"{subject} must be a mapping of `key: value` lines, got {what}",
        "list_type": f"{subject} must be a list (lines starting with '-'), got {what}",
        "greater_than": f"{subject} must be greater than {ctx.get('gt')}, got {what}",
        "greater_than_equal": f"{subject} must be at least {ctx.get('ge')}, got {what}",
        "less_than": f"{subject} must be less than {ctx.get('lt')}, got {what}",
        "less_than_equal": f"{subject} must be at most {ctx.get('le')}, got {what}",
        "literal_error": f"{subject} must be {ctx.get('expected')}, got {what}",
        "enum": f"{subject} must be {ctx.get('expected')}, got {what}",
    }
    message = messages.get(kind, f"{subject}: {err['msg']}")
    hint = _kind_hint(kind, field_name, ctx)
    if field_name == "services" and kind == "list_type" and isinstance(value, dict):
        hint = "services is a list: write `- name: api` under `services:` for each service"
    elif field_name == "connections" and kind == "list_type":
        hint = "write each connection as a list item: `- type: awsRole` with its fields indented below"
    elif owner in ("services", "connections", "domains", "apps") and not isinstance(last, str):
        example = {"services": "- name: api", "connections": "- type: awsRole", "domains": "- name: example.com",
                   "apps": "- name: backend"}
        hint = f"each item is a mapping, e.g. `{example[owner]}` with its fields indented below"
    elif owner == "env" and not isinstance(last, str):
        hint = ("write `NAME: value` lines under `env:`, or Porter's list form: `- key: NAME` with `value: ...` "
                "indented below")
    elif field_name == "version":
        hint = "keyless reads porter.yaml v2: write `version: v2` or leave it out"
    variables = from_placeholders.get(path)
    if variables:
        hint = f"the value comes from {', '.join('${' + v + '}' for v in variables)}: check that variable"
    out.error(pos, message, hint)


# --- unknown fields ----------------------------------------------------------------------------


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _container_arg(annotation: Any, container: type, index: int) -> Any | None:
    """For list[X] (index 0) or dict[K, X] (index 1), possibly optional or annotated: X; else None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _container_arg(typing.get_args(annotation)[0], container, index)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _container_arg(arg, container, index)
            if found is not None:
                return found
        return None
    if origin is container:
        return typing.get_args(annotation)[index]
    return None


def _pick_model(candidates: list[type[BaseModel]], raw: dict[str, Any]) -> type[BaseModel] | None:
    """The member of a discriminated union that `raw` selects (by its Literal field: `type`, `cloud`)."""
    if len(candidates) == 1:
        return candidates[0]
    for model in candidates:
        for name, info in model.model_fields.items():
            if typing.get_origin(info.annotation) is typing.Literal and \
                    raw.get(info.alias or name) in typing.get_args(info.annotation):
                return model
    return None


def unknown_fields(model: type[BaseModel], raw: Any, path: Path
                   ) -> Iterator[tuple[Path, str, list[str], type[BaseModel]]]:
    """Every key in `raw` that `model` (recursively) does not define: (path, key, known keys, the model)."""
    if not isinstance(raw, dict):
        return
    by_alias = {(f.alias or name): f for name, f in model.model_fields.items()}
    for key, value in raw.items():
        info = by_alias.get(key)
        if info is None:
            yield (*path, key), key, list(by_alias), model
            continue
        item = _container_arg(info.annotation, list, 0)
        entry = _container_arg(info.annotation, dict, 1)
        if entry is not None and isinstance(value, dict) and _models_in(entry):
            for name, element in value.items():
                chosen = _pick_model(_models_in(entry), element) if isinstance(element, dict) else None
                if chosen:
                    yield from unknown_fields(chosen, element, (*path, key, name))
        elif item is not None and isinstance(value, list):
            for i, element in enumerate(value):
                chosen = _pick_model(_models_in(item), element) if isinstance(element, dict) else None
                if chosen:
                    yield from unknown_fields(chosen, element, (*path, key, i))
        elif isinstance(value, dict):
            chosen = _pick_model(_models_in(info.annotation), value)
            if chosen:
                yield from unknown_fields(chosen, value, (*path, key))


# --- rules across fields -----------------------------------------------------------------------


def _cross_checks(raw: dict[str, Any], doc: Located, out: _Collector) -> None:
    if "build" in raw and "image" in raw and raw["build"] is not None and raw["image"] is not None:
        out.error(doc.key_at(("image",)), "`build` and `image` cannot both be set",
                  "use `build` when Porter builds the image, `image` for a pre-built one")
    services = raw.get("services")
    if isinstance(services, list) and not services:
        out.error(doc.value_at(("services",)), "`services` is empty", FIELD_HINTS["services"])
    for job_key, default_name in JOB_DEFAULT_NAMES.items():
        job = raw.get(job_key)
        if isinstance(job, dict):
            _connection_checks(job, (job_key,), f"`{job_key}`", doc, out)
            job_name = job.get("name") or default_name
            clash = [i for i, s in enumerate(services or []) if isinstance(s, dict) and s.get("name") == job_name] \
                if isinstance(services, list) else []
            if clash:
                out.error(doc.value_at(("services", clash[0], "name")),
                          f"service name {job_name!r} is taken by `{job_key}`, whose service account is the same",
                          f"rename the service, or give `{job_key}` a `name:` of its own")
    if not isinstance(services, list):
        return
    seen_names: dict[str, Position] = {}
    for i, service in enumerate(services):
        if not isinstance(service, dict):
            continue
        name = service.get("name")
        name_pos = doc.value_at(("services", i, "name"))
        if isinstance(name, str):
            if name in seen_names:
                out.error(name_pos, f"service name {name!r} is used twice (first at line {seen_names[name].line})",
                          "service names must be unique within an app")
            else:
                seen_names[name] = name_pos
        label = f"service {name!r}" if isinstance(name, str) else f"service #{i + 1}"
        _service_checks(service, i, label, doc, out)


def _service_checks(service: dict[str, Any], i: int, label: str, doc: Located, out: _Collector) -> None:
    kind = service.get("type")
    if "type" not in service:
        name = service.get("name")
        guess, word = porter_service_type(name if isinstance(name, str) else "")
        why = (f"its name contains `{word}`" if word
               else "its name contains none of web, worker, wkr, job (Porter's default)")
        hint = f"add `type: {guess.value}` to make it explicit"
        if guess is not ServiceType.WEB and (service.get("port") is not None or service.get("domains")):
            hint = (f"it has a {'port' if service.get('port') is not None else 'domain'}, yet Porter will not "
                    f"serve it as web: add `type: web` if it serves HTTP, else `type: {guess.value}`")
        out.add(Severity.WARNING, doc.value_at(("services", i)), f"{label} has no `type`; Porter treats it "
                f"as {guess.value} because {why}, and so does keyless", hint)
        kind = guess.value
    if service.get("cron") is not None and kind in ("web", "worker"):
        out.add(Severity.WARNING, doc.key_at(("services", i, "cron")),
                f"{label} is a {kind} service; `cron` only applies to jobs", "remove `cron` or use `type: job`")
    if isinstance(service.get("name"), str) and len(service["name"]) > PORTER_NAME_MAX:
        out.add(Severity.WARNING, doc.value_at(("services", i, "name")),
                f"{label} has {len(service['name'])} characters; Porter allows at most {PORTER_NAME_MAX}",
                "shorten the name so Porter accepts it too")
    _connection_checks(service, ("services", i), label, doc, out)


# Parts of a porter.yaml whose connections keyless never binds: Porter's preview-environment overrides, and
# settings marked experimental. A connection there looks bound and is not, so it is said.
UNBOUND_SECTIONS = ("previews", "experimental")


def _unbound_connections(value: Any, path: Path, section: str | None, doc: Located, out: _Collector) -> None:
    """Warn at every `connections:` inside a section keyless does not act on."""
    if isinstance(value, dict):
        for key, item in value.items():
            if section is not None and key == "connections":
                out.add(Severity.WARNING, doc.key_at((*path, key)),
                        f"keyless does not act on connections under `{section}`: nothing is bound for them",
                        "keyless binds the connections of `services`, `predeploy` and `initialDeploy`; "
                        "move the connection there if the service needs it")
            inner = section if section is not None else (key if key in UNBOUND_SECTIONS else None)
            _unbound_connections(item, (*path, key), inner, doc, out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _unbound_connections(item, (*path, index), section, doc, out)


def _connection_checks(workload: dict[str, Any], path: Path, label: str, doc: Located, out: _Collector) -> None:
    connections = workload.get("connections")
    if not isinstance(connections, list):
        return
    first_of_type: dict[str, Position] = {}
    for j, conn in enumerate(connections):
        if not isinstance(conn, dict) or not isinstance(conn.get("type"), str):
            continue
        ctype = conn["type"]
        pos = doc.value_at((*path, "connections", j, "type"))
        if ctype in first_of_type:
            out.error(pos, f"{label} has two {ctype} connections (first at line {first_of_type[ctype].line})",
                      "a service takes at most one connection of each type; keep one")
        else:
            first_of_type[ctype] = pos
        if ctype in (ConnectionType.CLOUD_SQL, ConnectionType.DISK):
            out.add(Severity.NOTE, pos, f"{ctype} connection of {label} is not handled by keyless",
                    "keyless binds cloud identities only; Porter still handles this connection")


# --- entry points ------------------------------------------------------------------------------


def validate_document(model: type[M], doc: Located, env: Mapping[str, str], out: _Collector,
                      acted_on: frozenset[str] = frozenset(), reads: Callable[[Path], bool] = _everything) -> M | None:
    """Expand placeholders, report unknown fields, validate against `model`; problems go to `out`.

    An unknown key one edit away from a field in `acted_on` that is valid at its place is an error. A placeholder
    that cannot be expanded is an error where `reads(path)`, else a warning and the value is kept as written (and
    left out of validation when, as written, it is not of the field's type)."""
    found = _Placeholders()
    doc.value = _keep_written_env(doc.value, doc)
    doc.value = _expand_all(doc.value, (), env, out, found, reads)
    for path, key, known, owner in unknown_fields(model, doc.value, ()):
        if is_porter_field(owner, key):
            out.add(Severity.NOTE, doc.key_at(path), f"`{key}` is a Porter field keyless does not use",
                    "keyless keeps it as written; Porter applies it")
            continue
        misspelled = next((k for k in known if k in acted_on and one_edit_apart(key, k)), None)
        if misspelled is not None:
            why = ("without it the service has no connections, and the plan would delete its binding"
                   if misspelled == "connections" else "ignored, it would change what keyless binds")
            out.add(Severity.ERROR, doc.key_at(path), f"unknown field `{key}`: did you mean `{misspelled}`?",
                    f"keyless acts on `{misspelled}`, and {why}: write `{misspelled}`")
            continue
        guess = _close_key(key, known)
        hint = f"did you mean `{guess}`?" if guess else "keyless keeps it as is and does not use it"
        out.add(Severity.WARNING, doc.key_at(path), f"unknown field `{key}`", hint)
    try:
        return model.model_validate(doc.value)
    except ValidationError as exc:
        errors = [(err, doc.resolve(tuple(s for s in err["loc"] if s not in ENV_FORMS))) for err in exc.errors()]
    kept = {path for _, path in errors if any(path[:len(k)] == k for k in found.kept)}
    for err, path in errors:
        discriminated = any((*path, key) in found.bad for key in DISCRIMINATOR_VALUES)
        if path in found.bad or discriminated or path in kept:
            continue  # already reported as a placeholder problem
        _validation_diagnostic(err, doc, out, found.used)
    if any(path not in kept for _, path in errors):
        return None
    try:  # only values kept as written, in fields keyless does not use, failed: load without them
        return model.model_validate(_without(doc.value, kept))
    except ValidationError as exc:
        for err in exc.errors():
            _validation_diagnostic(err, doc, out, found.used)
    return None


def read_mapping(data: bytes, file: str, what: str, hint: str) -> tuple[Located, _Collector]:
    """Parse YAML whose top level must be a mapping; raises InvalidInput otherwise."""
    doc, found = read_yaml(data, file)
    if doc is None:
        raise InvalidInput(found)
    out = _Collector(doc)
    out.items.extend(found)
    if not isinstance(doc.value, dict):
        out.error(START, f"the top level of {what} must be a mapping, got {_describe(doc.value)}", hint)
        raise InvalidInput(sort_diagnostics(out.items))
    return doc, out


def _app_documents(doc: Located, env: Mapping[str, str], out: _Collector) -> list[tuple[Path, Located]]:
    """The apps of the file: the whole of it, or each item of `apps:` (Porter's multi-app form) as its own part."""
    if not isinstance(doc.value, dict) or "apps" not in doc.value:
        return [((), doc)]
    for key in doc.value:
        if key in ACTED_ON_FIELDS:
            out.error(doc.key_at((key,)), f"`{key}` at the top level of a file with `apps:` is not read",
                      f"in the multi-app form each app has its own `{key}`: move it under its app in `apps:`")
    top = Located(doc.file, {k: v for k, v in doc.value.items() if k != "apps" and k not in ACTED_ON_FIELDS},
                  doc.values, doc.keys, doc.texts, doc.lines)
    validate_document(AppList, top, env, out, reads=lambda path: False)
    apps = doc.value["apps"]
    if not isinstance(apps, list):
        out.error(doc.value_at(("apps",)), f"`apps` must be a list (lines starting with '-'), got {_describe(apps)}",
                  "write each app as a list item: `- name: backend` with its `services:` below")
        return []
    if not apps:
        out.error(doc.value_at(("apps",)), "`apps` is empty", "list the apps: `apps:` then `- name: backend` and "
                  "its `services:`")
    parts: list[tuple[Path, Located]] = []
    for index, item in enumerate(apps):
        if not isinstance(item, dict):
            out.error(doc.value_at(("apps", index)), f"item {index + 1} of `apps` must be a mapping, got "
                      f"{_describe(item)}", "each app is a mapping: `- name: backend` with its `services:` below")
            continue
        part = doc.part(("apps", index))
        parts.append((("apps", index), part))
        if not isinstance(item.get("name"), str):
            out.error(part.value_at(()), f"app {index + 1} of `apps` has no `name`",
                      "each app of a multi-app file needs `name:` (it is how --app picks it)")
    return parts


def load_apps(data: bytes, file: str, env: Mapping[str, str]) -> tuple[LoadedApp, ...]:
    """Load and validate every app of porter.yaml content (one, or each of `apps:`). Raises InvalidInput with every
    problem found in the file."""
    return _load_file(data, file, env)[1]


def _load_file(data: bytes, file: str, env: Mapping[str, str]) -> tuple[Located, tuple[LoadedApp, ...]]:
    doc, out = read_mapping(data, file, "porter.yaml",
                            "start with `services:` (and optionally `version: v2` and `name: my-app`)")
    loaded: list[tuple[App, Path, Located]] = []
    parts = _app_documents(doc, env, out)
    for path, part in parts:
        app = validate_document(App, part, env, out, ACTED_ON_FIELDS, read_by_keyless)
        _cross_checks(part.value, part, out)
        _unbound_connections(part.value, (), None, part, out)
        if app is not None:
            loaded.append((app, path, part))
    seen: dict[str, Position] = {}
    for app, _, part in loaded:
        if len(parts) > 1 and app.name is not None:
            if app.name in seen:
                out.error(part.value_at(("name",)), f"app name {app.name!r} is used twice (first at line "
                          f"{seen[app.name].line})", "app names must be unique within the file")
            seen.setdefault(app.name, part.value_at(("name",)))
    if not parts or len(loaded) != len(parts) or errors_in(out.items):
        raise InvalidInput(sort_diagnostics(out.items))
    diagnostics = tuple(sort_diagnostics(out.items))
    return doc, tuple(LoadedApp(app=app, document=part, diagnostics=diagnostics, path=path)
                      for app, path, part in loaded)


def load_app(data: bytes, file: str, env: Mapping[str, str], app_name: str | None = None) -> LoadedApp:
    """Load and validate porter.yaml content: its app, or in a multi-app file the one named `app_name` (which may
    be left out when the file holds one app). Raises InvalidInput with every problem found."""
    doc, apps = _load_file(data, file, env)
    if not apps[0].path:
        return apps[0]  # a file of one app: --app names it (resolve_app_name), it does not pick it
    names = [a.app.name or "" for a in apps]
    listing = ", ".join(names)
    if app_name is not None:
        picked = next((a for a in apps if a.app.name == app_name), None)
        if picked is None:
            raise InvalidInput([Diagnostic(Severity.ERROR, file, doc.key_at(("apps",)),
                                           f"the file holds no app named {app_name!r}",
                                           f"its apps: {listing}; pass one of them to --app")])
        return picked
    if len(apps) == 1:
        return apps[0]
    raise InvalidInput([Diagnostic(Severity.ERROR, file, doc.key_at(("apps",)),
                                   f"the file holds {len(apps)} apps ({listing}); keyless works on one at a time",
                                   f"pass --app NAME, one of: {listing}")])


def app_without_services(name: str, file: str) -> LoadedApp:
    """An app that keeps its name and has no services left: what a plan removes everything keyless bound for
    the app against (the operator, when a KeylessApp is deleted, whatever its porter.yaml says by then)."""
    names.check_app_name(name)
    return LoadedApp(app=App.model_construct(name=name, services=[]), document=Located(file, {"name": name}))


def resolve_app_name(loaded: LoadedApp, override: str | None, env: Mapping[str, str]) -> str:
    """The app name: `--app`, else `name:` in the file, else $PORTER_APP_NAME (as Porter's CLI does)."""
    candidates = [
        (override, "--app", START),
        (loaded.app.name, "name", loaded.document.value_at(("name",))),
        (env.get("PORTER_APP_NAME"), "PORTER_APP_NAME", START),
    ]
    for value, source, pos in candidates:
        if value:
            try:
                names.check_app_name(value)
            except names.NameRuleError as exc:
                raise InvalidInput([Diagnostic(Severity.ERROR, loaded.file, pos,
                                               f"{exc.message} (from {source})", exc.hint)]) from None
            return value
    raise InvalidInput([Diagnostic(Severity.ERROR, loaded.file, START, "the app has no name",
                                   "add `name: my-app` to porter.yaml or pass --app my-app")])


def identity_types() -> tuple[str, ...]:
    return tuple(t.value for t in IDENTITY_TYPES)
