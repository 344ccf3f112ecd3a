"""Pure document operations of the stand-in API server: the three patch formats, server-side apply, selectors."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

JsonDict = dict[str, Any]
FieldPath = tuple[str, ...]  # FieldsV1 tokens, e.g. ("f:metadata", "f:labels", "f:app")

_MISSING: Final = object()


class PatchError(ValueError):
    """A patch that cannot be applied to the document (the API server answers 422)."""


class SelectorError(ValueError):
    """A label or field selector that does not parse (the API server answers 400)."""


# Lists whose items are merged by key instead of replaced as a whole. The API server takes this from
# each type's schema (patchMergeKey / listMapKeys); the stand-in serves few types, so a table of
# field names is enough. Several candidate keys: the first one every item carries wins.
_LIST_MAP_KEYS: Final[Mapping[str, tuple[tuple[str, ...], ...]]] = {
    "containers": (("name",),),
    "initContainers": (("name",),),
    "ephemeralContainers": (("name",),),
    "env": (("name",),),
    "volumes": (("name",),),
    "volumeMounts": (("mountPath",),),
    "volumeDevices": (("devicePath",),),
    "ports": (("containerPort",), ("port",)),
    "imagePullSecrets": (("name",),),
    "ownerReferences": (("uid",),),
    "conditions": (("type",),),
    "hostAliases": (("ip",),),
    "secrets": (("name",),),
    "topologySpreadConstraints": (("topologyKey", "whenUnsatisfiable"),),
}
# Primitive lists that strategic merge patch unions instead of replacing.
_SET_LISTS: Final = frozenset({"finalizers"})


def list_keys(field_name: str, items: Iterable[Any]) -> tuple[str, ...] | None:
    """The merge key of a list field, or None when the list is atomic (replaced as a whole)."""
    materialized = list(items)
    for candidate in _LIST_MAP_KEYS.get(field_name, ()):
        if materialized and all(isinstance(i, dict) and all(k in i for k in candidate) for i in materialized):
            return candidate
    return None


def _item_key(item: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(json.dumps(item.get(k), sort_keys=True) for k in keys)


def prune_nones(value: Any) -> Any:
    """Drop null map values: in an applied configuration they mean "not set"."""
    if isinstance(value, dict):
        return {k: prune_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [prune_nones(v) for v in value]
    return value


# --- JSON merge patch (RFC 7386) -------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 merge patch: maps merge, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: JsonDict = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- Strategic merge patch (the Kubernetes dialect) ------------------------------------------------


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Apply a strategic merge patch: like a merge patch, but keyed lists merge item by item.

    Supports the directives clients send in practice: ``$patch: replace|delete|merge``,
    ``$retainKeys``, ``$deleteFromPrimitiveList/<field>``; ``$setElementOrder/<field>`` is accepted and ignored.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive not in (None, "merge", "delete"):
        raise PatchError(f"unknown patch type: {directive!r}")
    result: JsonDict = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            if not isinstance(value, list):
                raise PatchError(f"{key} must be a list")
            if isinstance(result.get(name), list):
                result[name] = [v for v in result[name] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            if value.get("$patch") == "delete":
                result.pop(key, None)
            else:
                result[key] = strategic_merge_patch(result.get(key), value)
        elif isinstance(value, list):
            result[key] = _strategic_merge_list(key, result.get(key), value)
        else:
            result[key] = value
    retain = patch.get("$retainKeys")
    if retain is not None:
        if not isinstance(retain, list):
            raise PatchError("$retainKeys must be a list")
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _strategic_merge_list(field_name: str, current: Any, patch: list[Any]) -> list[Any]:
    live: list[Any] = copy.deepcopy(current) if isinstance(current, list) else []
    if field_name in _SET_LISTS and all(not isinstance(v, dict | list) for v in patch):
        return live + [v for v in patch if v not in live]
    items = [i for i in patch if not (isinstance(i, dict) and set(i) == {"$patch"})]
    replace = len(items) != len(patch) and any(
        isinstance(i, dict) and i.get("$patch") == "replace" for i in patch
    )
    keys = list_keys(field_name, [i for i in items if isinstance(i, dict)] or items)
    if keys is None or replace:
        return [_strip_directives(i) for i in items]
    for item in items:
        index = next((n for n, old in enumerate(live) if _item_key(old, keys) == _item_key(item, keys)), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del live[index]
        elif index is None:
            live.append(_strip_directives(item))
        else:
            live[index] = strategic_merge_patch(live[index], item)
    return live


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


# --- JSON patch (RFC 6902) -------------------------------------------------------------------------


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise PatchError(f"invalid JSON pointer: {path!r}")
    if path == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, tokens: list[str], op: str, path: str) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise PatchError(f"{op} operation does not apply: doc is missing path: {path!r}")
    return node


def _index(container: list[Any], token: str, op: str, path: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise PatchError(f"{op} operation does not apply: invalid array index in {path!r}")
    index = int(token)
    if index > len(container) or (index == len(container) and not allow_end):
        raise PatchError(f"{op} operation does not apply: index out of range in {path!r}")
    return index


def _get(doc: Any, tokens: list[str], op: str, path: str) -> Any:
    if not tokens:
        return doc
    parent = _parent(doc, tokens, op, path)
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, op, path, allow_end=False)]
    raise PatchError(f"{op} operation does not apply: doc is missing path: {path!r}")


def _remove(doc: Any, tokens: list[str], op: str, path: str) -> Any:
    if not tokens:
        raise PatchError(f"{op} operation does not apply: cannot remove the whole document")
    parent = _parent(doc, tokens, op, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"{op} operation does not apply: doc is missing path: {path!r}")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, op, path, allow_end=False))
    raise PatchError(f"{op} operation does not apply: doc is missing path: {path!r}")


def _add(doc: Any, tokens: list[str], value: Any, op: str, path: str, *, replace: bool) -> Any:
    if not tokens:
        return value
    parent = _parent(doc, tokens, op, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise PatchError(f"{op} operation does not apply: doc is missing key: {path!r}")
        parent[last] = value
    elif isinstance(parent, list):
        index = _index(parent, last, op, path, allow_end=not replace)
        if replace:
            parent[index] = value
        else:
            parent.insert(index, value)
    else:
        raise PatchError(f"{op} operation does not apply: doc is missing path: {path!r}")
    return doc


def json_patch(document: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(document)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise PatchError(f"invalid JSON patch operation: {operation!r}")
        op, path = operation["op"], operation["path"]
        tokens = _pointer(path)
        if op in ("add", "replace", "test") and "value" not in operation:
            raise PatchError(f"{op} operation needs a value: {operation!r}")
        if op == "add":
            doc = _add(doc, tokens, copy.deepcopy(operation["value"]), op, path, replace=False)
        elif op == "replace":
            doc = _add(doc, tokens, copy.deepcopy(operation["value"]), op, path, replace=True)
        elif op == "remove":
            _remove(doc, tokens, op, path)
        elif op in ("move", "copy"):
            source = operation.get("from")
            from_tokens = _pointer(source)
            if op == "move":
                if tokens[: len(from_tokens)] == from_tokens and tokens != from_tokens:
                    raise PatchError("move operation does not apply: cannot move a value into itself")
                value = _remove(doc, from_tokens, op, str(source))
            else:
                value = copy.deepcopy(_get(doc, from_tokens, op, str(source)))
            doc = _add(doc, tokens, value, op, path, replace=False)
        elif op == "test":
            if _get(doc, tokens, op, path) != operation["value"]:
                raise PatchError(f"testing value {path} failed: test failed")
        else:
            raise PatchError(f"unexpected kind of JSON patch operation: {op!r}")
    return doc


# --- Field sets and server-side apply --------------------------------------------------------------

# Fields the server owns; they never appear in managedFields and an applier cannot take them.
_SYSTEM_METADATA: Final = frozenset({
    "name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
    "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink", "generateName",
})


def tracked(obj: Mapping[str, Any], *, with_status: bool) -> JsonDict:
    """The part of an object whose fields have owners: no system metadata, status only if asked."""
    result = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    if not with_status:
        result.pop("status", None)
    meta = result.get("metadata")
    if isinstance(meta, dict):
        kept = {k: v for k, v in meta.items() if k not in _SYSTEM_METADATA}
        if kept:
            result["metadata"] = kept
        else:
            result.pop("metadata")
    return result


def leaves(obj: Mapping[str, Any]) -> dict[FieldPath, Any]:
    """Every owned leaf of a document with its value.

    Scalars, atomic lists and empty maps are leaves; each item of a keyed list also gets a ``.``
    leaf (its value is the item's key) so that an applier can own, and later drop, the item itself.
    """
    out: dict[FieldPath, Any] = {}
    for key, value in obj.items():
        _walk(key, value, (f"f:{key}",), out)
    return out


def _walk(field_name: str, value: Any, path: FieldPath, out: dict[FieldPath, Any]) -> None:
    if isinstance(value, dict):
        if not value:
            out[path] = {}
        for key, sub in value.items():
            _walk(key, sub, (*path, f"f:{key}"), out)
        return
    if isinstance(value, list):
        keys = list_keys(field_name, value)
        if keys is None:
            out[path] = value
            return
        for item in value:
            ident = {k: item[k] for k in keys}
            item_path = (*path, "k:" + json.dumps(ident, separators=(",", ":"), sort_keys=True))
            out[(*item_path, ".")] = ident
            for key, sub in item.items():
                _walk(key, sub, (*item_path, f"f:{key}"), out)
        return
    out[path] = value


def fields_to_v1(paths: Iterable[FieldPath]) -> JsonDict:
    """Render a field set in the FieldsV1 form that ``metadata.managedFields`` carries."""
    root: JsonDict = {}
    for path in sorted(paths):
        node = root
        for token in path:
            node = node.setdefault(token, {})
    return root


def fields_from_v1(tree: Mapping[str, Any], prefix: FieldPath = ()) -> frozenset[FieldPath]:
    """Parse a FieldsV1 tree back into a set of leaf paths."""
    out: set[FieldPath] = set()
    for token, sub in tree.items():
        path = (*prefix, token)
        if token == "." or not isinstance(sub, dict) or not sub:
            out.add(path)
        else:
            out |= fields_from_v1(sub, path)
    return frozenset(out)


def render_path(path: FieldPath) -> str:
    """A field path as the API server prints it in conflict messages, e.g. ``.metadata.labels.app``."""
    text = ""
    for token in path:
        if token.startswith("f:"):
            text += "." + token[2:]
        elif token.startswith("k:"):
            ident = json.loads(token[2:])
            text += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in ident.items()) + "]"
        elif token.startswith("v:"):
            text += f"[={token[2:]}]"
    return text


@dataclass(frozen=True)
class ManagedEntry:
    """One ``metadata.managedFields`` entry: who set which fields, how."""

    manager: str
    operation: str  # "Apply" or "Update"
    api_version: str
    time: str
    fields: frozenset[FieldPath]
    subresource: str = ""

    @property
    def ident(self) -> tuple[str, str, str]:
        return (self.manager, self.operation, self.subresource)

    def to_json(self) -> JsonDict:
        entry: JsonDict = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields_to_v1(self.fields),
        }
        if self.subresource:
            entry["subresource"] = self.subresource
        return entry

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> ManagedEntry:
        tree = entry.get("fieldsV1")
        return cls(
            manager=str(entry.get("manager", "")),
            operation=str(entry.get("operation", "Update")),
            api_version=str(entry.get("apiVersion", "")),
            time=str(entry.get("time", "")),
            fields=fields_from_v1(tree) if isinstance(tree, dict) else frozenset(),
            subresource=str(entry.get("subresource", "")),
        )


def read_managed(obj: Mapping[str, Any] | None) -> list[ManagedEntry]:
    if not obj:
        return []
    raw = obj.get("metadata", {}).get("managedFields") or []
    return [ManagedEntry.from_json(e) for e in raw if isinstance(e, dict)]


def write_managed(obj: JsonDict, entries: Iterable[ManagedEntry]) -> None:
    rendered = [e.to_json() for e in entries if e.fields]
    meta = obj.setdefault("metadata", {})
    if rendered:
        meta["managedFields"] = rendered
    else:
        meta.pop("managedFields", None)


def _replace_entry(entries: list[ManagedEntry], new: ManagedEntry) -> list[ManagedEntry]:
    """Put ``new`` in place of the entry with the same identity, keeping the old time if nothing changed."""
    result: list[ManagedEntry] = []
    placed = False
    for entry in entries:
        if entry.ident == new.ident:
            placed = True
            same = entry.fields == new.fields and entry.api_version == new.api_version
            result.append(entry if same else new)
        else:
            result.append(entry)
    if not placed:
        result.append(new)
    return result


def record_update(
    old: Mapping[str, Any] | None,
    new: JsonDict,
    *,
    manager: str,
    api_version: str,
    now: str,
    subresource: str = "",
    with_status: bool,
) -> None:
    """Update ``new``'s managedFields for a non-apply write: the writer takes every field it changed."""
    entries = read_managed(old)
    before = leaves(tracked(old, with_status=with_status)) if old else {}
    after = leaves(tracked(new, with_status=with_status))
    changed = {p for p, v in after.items() if before.get(p, _MISSING) != v}
    gone = set(before) - set(after)
    entries = [
        ManagedEntry(e.manager, e.operation, e.api_version, e.time, e.fields - changed - gone, e.subresource)
        for e in entries
    ]
    mine = next((e for e in entries if e.ident == (manager, "Update", subresource)), None)
    owned = (mine.fields if mine else frozenset()) | changed
    entries = _replace_entry(entries, ManagedEntry(manager, "Update", api_version, now, frozenset(owned), subresource))
    write_managed(new, entries)


@dataclass(frozen=True)
class Conflict:
    """A field another manager owns with a different value than the applier wants."""

    manager: str
    api_version: str
    path: FieldPath


class ApplyConflictError(Exception):
    """Server-side apply would change fields other managers own; retry with force to take them."""

    def __init__(self, conflicts: list[Conflict]) -> None:
        self.conflicts = conflicts
        noun = "conflict" if len(conflicts) == 1 else "conflicts"
        lines = [f'conflict with "{c.manager}" using {c.api_version}: {render_path(c.path)}' for c in conflicts]
        message = f"Apply failed with {len(conflicts)} {noun}: " + (
            lines[0] if len(lines) == 1 else "\n" + "\n".join("- " + line for line in lines)
        )
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ApplyResult:
    """The merged object (managedFields updated) of a server-side apply."""

    obj: JsonDict
    removed: tuple[FieldPath, ...] = field(default=())


def server_side_apply(
    live: Mapping[str, Any] | None,
    config: Mapping[str, Any],
    *,
    manager: str,
    force: bool,
    api_version: str,
    now: str,
    with_status: bool = False,
) -> ApplyResult:
    """Merge an applied configuration into the live object the way server-side apply does.

    The applier's new field set is exactly the leaves of its configuration. Fields it applied
    before and omits now are removed unless another manager also owns them. Fields another
    manager owns with a different value are conflicts, taken over when ``force`` is set.
    """
    config = prune_nones(dict(config))
    base: JsonDict = copy.deepcopy(dict(live)) if live else {}
    entries = read_managed(base)
    wanted = leaves(tracked(config, with_status=with_status))
    current = leaves(tracked(base, with_status=with_status))
    ident = (manager, "Apply", "")

    conflicts: list[Conflict] = []
    for entry in entries:
        if entry.ident == ident:
            continue
        for path in sorted(entry.fields & set(wanted)):
            if current.get(path, _MISSING) != wanted[path]:
                conflicts.append(Conflict(entry.manager, entry.api_version, path))
    if conflicts and not force:
        raise ApplyConflictError(conflicts)
    taken = {c.path for c in conflicts}
    entries = [
        ManagedEntry(e.manager, e.operation, e.api_version, e.time, e.fields - taken, e.subresource)
        if e.ident != ident else e
        for e in entries
    ]

    previous = next((e.fields for e in entries if e.ident == ident), frozenset())
    merged = _apply_merge(base, config)
    others = [e.fields for e in entries if e.ident != ident]
    dropped = previous - set(wanted)
    removed: list[FieldPath] = []
    # Whole keyed-list items first (outermost first), unless another manager owns something inside.
    for marker in sorted((p for p in dropped if p[-1] == "."), key=len):
        item = marker[:-1]
        if any(item[: len(r)] == r for r in removed):
            continue
        if any(p[: len(item)] == item for owned in others for p in owned):
            continue
        if _remove_path(merged, item):
            removed.append(item)
    # Then single fields, deepest first, except those of removed items and the keys of kept items.
    for path in sorted((p for p in dropped if p[-1] != "."), key=len, reverse=True):
        if any(path[: len(r)] == r for r in removed) or any(path in owned for owned in others):
            continue
        if len(path) >= 2 and path[-2].startswith("k:") and path[-1][2:] in json.loads(path[-2][2:]):
            continue
        if _remove_path(merged, path):
            removed.append(path)

    entries = _replace_entry(entries, ManagedEntry(manager, "Apply", api_version, now, frozenset(wanted)))
    write_managed(merged, entries)
    return ApplyResult(merged, tuple(removed))


def _apply_merge(live: Any, config: Any, field_name: str = "") -> Any:
    if isinstance(config, dict):
        result: JsonDict = copy.deepcopy(live) if isinstance(live, dict) else {}
        for key, value in config.items():
            result[key] = _apply_merge(result.get(key), value, key)
        return result
    if isinstance(config, list):
        keys = list_keys(field_name, config)
        if keys is None or not isinstance(live, list):
            return copy.deepcopy(config)
        merged: list[Any] = copy.deepcopy(live)
        for item in config:
            wanted_key = _item_key(item, keys)
            index = next(
                (n for n, old in enumerate(merged) if isinstance(old, dict) and _item_key(old, keys) == wanted_key),
                None,
            )
            if index is None:
                merged.append(copy.deepcopy(item))
            else:
                merged[index] = _apply_merge(merged[index], item)
        return merged
    return copy.deepcopy(config)


def _remove_path(doc: JsonDict, path: FieldPath) -> bool:
    """Remove the field or keyed-list item at ``path``; prune maps the removal leaves empty."""
    trail: list[tuple[Any, Any]] = []  # (container, key-or-index) from the root down
    node: Any = doc
    for token in path:
        if token.startswith("f:") and isinstance(node, dict) and token[2:] in node:
            trail.append((node, token[2:]))
            node = node[token[2:]]
        elif token.startswith("k:") and isinstance(node, list):
            ident = json.loads(token[2:])
            index = next(
                (n for n, item in enumerate(node)
                 if isinstance(item, dict) and all(item.get(k) == v for k, v in ident.items())),
                None,
            )
            if index is None:
                return False
            trail.append((node, index))
            node = node[index]
        else:
            return False
    if not trail:
        return False
    container, key = trail.pop()
    del container[key]
    # Go omits empty maps and lists from JSON, so a parent emptied by the removal disappears too.
    while trail:
        container, key = trail.pop()
        if isinstance(container[key], dict | list) and not container[key]:
            del container[key]
        else:
            break
    return True


# --- Selectors -------------------------------------------------------------------------------------

_SELECTOR_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                           r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Requirement:
    """One term of a label selector: ``key op values``."""

    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        return not present or value not in self.values  # "!=" and "notin" match absent keys too


def _split_terms(selector: str) -> list[str]:
    terms: list[str] = []
    depth = 0
    current = ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [t.strip() for t in terms if t.strip()]


_SET_TERM = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)$")


def parse_label_selector(selector: str | None) -> tuple[Requirement, ...]:
    """Parse a label selector string (``a=b,c!=d,e in (x,y),!f``) into requirements."""
    if not selector:
        return ()
    requirements: list[Requirement] = []
    for term in _split_terms(selector):
        set_term = _SET_TERM.match(term)
        if set_term:
            values = tuple(v.strip() for v in set_term["values"].split(",") if v.strip())
            requirement = Requirement(set_term["key"], set_term["op"], values)
        elif term.startswith("!"):
            requirement = Requirement(term[1:].strip(), "!")
        elif "!=" in term:
            key, value = term.split("!=", 1)
            requirement = Requirement(key.strip(), "!=", (value.strip(),))
        elif "=" in term:
            key, value = term.replace("==", "=", 1).split("=", 1)
            requirement = Requirement(key.strip(), "=", (value.strip(),))
        else:
            requirement = Requirement(term, "exists")
        if not _SELECTOR_KEY.match(requirement.key):
            raise SelectorError(f"unable to parse requirement: invalid label key {requirement.key!r}")
        requirements.append(requirement)
    return tuple(requirements)


def selector_from_match(selector: Mapping[str, Any] | None) -> tuple[Requirement, ...]:
    """Requirements of a structured ``LabelSelector`` (matchLabels + matchExpressions)."""
    if not selector:
        return ()
    requirements = [Requirement(k, "=", (str(v),)) for k, v in (selector.get("matchLabels") or {}).items()]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expression in selector.get("matchExpressions") or []:
        op = ops.get(str(expression.get("operator")))
        if op is None:
            raise SelectorError(f"unknown selector operator {expression.get('operator')!r}")
        requirements.append(Requirement(str(expression.get("key")), op, tuple(expression.get("values") or ())))
    return tuple(requirements)


def labels_match(requirements: Iterable[Requirement], labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    return all(r.matches(labels) for r in requirements)


@dataclass(frozen=True)
class FieldRequirement:
    """One term of a field selector: ``path=value`` or ``path!=value``."""

    path: str
    value: str
    equal: bool

    def matches(self, obj: Mapping[str, Any]) -> bool:
        node: Any = obj
        for part in self.path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        actual = "" if node is None else str(node).lower() if isinstance(node, bool) else str(node)
        return (actual == self.value) == self.equal


def parse_field_selector(selector: str | None, supported: Iterable[str]) -> tuple[FieldRequirement, ...]:
    """Parse a field selector, refusing fields the resource does not index (like the API server)."""
    if not selector:
        return ()
    allowed = set(supported) | {"metadata.name", "metadata.namespace"}
    requirements: list[FieldRequirement] = []
    for term in _split_terms(selector):
        if "!=" in term:
            path, value = term.split("!=", 1)
            equal = False
        elif "=" in term:
            path, value = term.replace("==", "=", 1).split("=", 1)
            equal = True
        else:
            raise SelectorError(f"invalid selector: {selector!r}; can't understand {term!r}")
        path = path.strip()
        if path not in allowed:
            raise SelectorError(f'field label not supported: {path}')
        requirements.append(FieldRequirement(path, value.strip(), equal))
    return tuple(requirements)
