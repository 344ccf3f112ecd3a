"""Edits of porter.yaml text that keep the rest as written: a service's identity connections, the app's name."""

from __future__ import annotations

import copy
import difflib
import io
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, YAMLError
from ruamel.yaml.tokens import CommentToken

from keyless.diagnostics import errors_in, sort_diagnostics
from keyless.errors import InvalidInput, UsageError
from keyless.porter.model import IDENTITY_TYPES, JOB_DEFAULT_NAMES
from keyless.porter.yamlsource import read_yaml

FILE = "porter.yaml"  # how diagnostics name the document: the text comes with no file name
CONNECTIONS = "connections"
SERVICES = "services"
NAME = "name"
TYPE = "type"
WIDTH = 1 << 20  # never fold a long line: a folded value is a changed line

Collection = CommentedMap | CommentedSeq


# --- the three edits ---------------------------------------------------------------------------


def set_connection(text: str, service: str, connection: Mapping[str, str]) -> str:
    """Give `service` this identity connection: its fields replace those of one of the same type, in place,
    or it is appended to the service's `connections` (created if absent)."""
    wanted = _wanted_connection(connection)
    return _edit(text, lambda doc: _set_connection(doc, _workload(doc, service), wanted))


def remove_connection(text: str, service: str, connection_type: str) -> str:
    """Remove `service`'s connection of this type, and `connections:` if that leaves it empty."""
    return _edit(text, lambda doc: _remove_connection(doc, _workload(doc, service), connection_type))


# A top-level `name:` key of a block mapping with a value on its line (only block mappings put a key at
# column 0); an empty or null name does not count.
_TOP_LEVEL_NAME = re.compile(r"^name[ \t]*:[ \t]+(?!(?:~|null|Null|NULL)[ \t]*(?:#|$))[^\s#]", re.MULTILINE)


def with_app_name(text: str, name: str) -> str:
    """The document with `name: <name>` as its first key, unless it names the app already."""
    if _TOP_LEVEL_NAME.search(text):
        return text  # the common case, answered without parsing (a round trip costs ~1 s for 300 services)
    return _edit(text, lambda doc: _name_app(doc, name))


# --- reading and writing the document ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Indent:
    """The block indentation a document uses, so that lines ruamel writes look like their neighbours."""

    mapping: int = 2
    sequence: int = 4
    offset: int = 2  # of the '-' within the sequence indentation


@dataclass
class _Document:
    """The tree ruamel read, and the edits on it that keep comments where a reader expects them."""

    root: CommentedMap
    indent: _Indent
    shared: set[int]  # ids of collections reached from more than one place (anchors and aliases)

    def own_list(self, workload: CommentedMap) -> CommentedSeq:
        """The workload's connections as a list it alone holds: an aliased or merged-in list is copied first."""
        if id(workload[CONNECTIONS]) in self.shared or CONNECTIONS not in _own_keys(workload):
            workload[CONNECTIONS] = _unshared_copy(workload[CONNECTIONS])
        connections: CommentedSeq = workload[CONNECTIONS]
        return connections

    def replace_fields(self, connection: CommentedMap, wanted: Mapping[str, str]) -> None:
        trailing = self.take_trailing(connection)
        for key in [k for k in _own_keys(connection) if k not in wanted]:
            self.delete_key(connection, key)
        for key, value in wanted.items():
            if connection.get(key) != value:
                connection[key] = value  # an existing key keeps its place, comments and quoting
        self.give_trailing(connection, trailing)

    def append_key(self, mapping: CommentedMap, key: str, value: Any) -> None:
        trailing = self.take_trailing(mapping)
        mapping[key] = value
        self.give_trailing(mapping, trailing)

    def replace_value(self, mapping: CommentedMap, key: str, value: Any) -> None:
        trailing = self.take_trailing(_Slot(mapping, key))
        mapping[key] = value
        self.give_trailing(self.entry(mapping, key), trailing)

    def append_item(self, sequence: CommentedSeq, item: Any) -> None:
        trailing = self.take_trailing(sequence)
        sequence.append(item)
        self.give_trailing(sequence, trailing)

    def delete_key(self, mapping: CommentedMap, key: str) -> None:
        keys = _own_keys(mapping)
        position = keys.index(key)
        trailing = self.take_trailing(mapping[key]) + self.take_trailing(_Slot(mapping, key))
        mapping.ca.items.pop(key, None)
        del mapping[key]
        if position > 0:
            self.give_trailing(self.entry(mapping, keys[position - 1]), trailing)

    def delete_item(self, sequence: CommentedSeq, index: int) -> None:
        trailing = self.take_trailing(sequence[index])
        del sequence[index]
        if index > 0:
            self.give_trailing(self.entry(sequence, index - 1), trailing)
        elif trailing:
            # What followed the first item now precedes the new first one.
            if not sequence.ca.comment:
                sequence.ca.comment = [None, None]
            if sequence.ca.comment[1] is None:
                sequence.ca.comment[1] = []
            sequence.ca.comment[1].extend(_comment_lines(trailing))

    def entry(self, owner: Collection, key: Any) -> Any:
        """The value at `key` when the comments after it live inside it, else the slot of the entry itself."""
        value = owner[key]
        return value if self._holds_comments(value) else _Slot(owner, key)

    def _holds_comments(self, value: Any, *, edited: bool = False) -> bool:
        """Does ruamel keep the comments after `value` inside it? Not in a flow collection, nor in an aliased
        one (written elsewhere), unless it is the very collection being edited."""
        return (isinstance(value, CommentedMap | CommentedSeq) and bool(len(value)) and not value.fa.flow_style()
                and (edited or id(value) not in self.shared))

    def last_slot(self, node: Any) -> _Slot | None:
        """The slot holding the comments after `node`: that of its deepest last entry, as ruamel reads it."""
        if isinstance(node, _Slot):
            return node
        slot: _Slot | None = None
        current = node
        while self._holds_comments(current, edited=current is node):
            if isinstance(current, CommentedMap):
                keys = _own_keys(current)
                if not keys:
                    break
                slot, current = _Slot(current, keys[-1]), current[keys[-1]]
            else:
                slot, current = _Slot(current, len(current) - 1), current[-1]
        return slot

    def take_trailing(self, node: Any) -> str:
        """Remove and return the comment and blank lines after `node`; an end-of-line comment stays."""
        slot = self.last_slot(node)
        token = slot.get() if slot is not None else None
        if slot is None or token is None:
            return ""
        head, _, rest = token.value.partition("\n")
        if not rest:
            return ""
        if head.strip():
            token.value = head + "\n"
        else:
            slot.set(None)
        return str(rest)

    def give_trailing(self, node: Any, trailing: str) -> None:
        """Put comment and blank lines after `node` (after its end-of-line comment, if it has one)."""
        slot = self.last_slot(node)
        if not trailing or slot is None:
            return
        token = slot.get()
        if token is None:
            slot.set(CommentToken("\n" + trailing, CommentMark(0), None))
        else:
            token.value = (token.value if token.value.endswith("\n") else token.value + "\n") + trailing


def _yaml(indent: _Indent = _Indent()) -> YAML:
    yaml = YAML(typ="rt", pure=True)
    yaml.preserve_quotes = True
    yaml.width = WIDTH
    yaml.indent(mapping=indent.mapping, sequence=indent.sequence, offset=indent.offset)
    return yaml


def _parse(text: str) -> _Document:
    # The loader's reader rejects what no porter.yaml is (bad YAML, alias bombs, duplicate keys, tags)
    # with located diagnostics, before ruamel builds the tree that is edited.
    located, diagnostics = read_yaml(text.encode("utf-8"), FILE)
    if located is None or errors_in(diagnostics):
        raise InvalidInput(sort_diagnostics(diagnostics))
    try:
        root = _yaml().load(text)
    except (YAMLError, ValueError) as exc:
        raise UsageError(f"{FILE} cannot be edited: {exc}", "check that this is a valid porter.yaml") from None
    if not isinstance(root, CommentedMap):
        raise UsageError(f"the top level of {FILE} must be a mapping",
                         "start with `services:` (and optionally `version: v2` and `name: my-app`)")
    return _Document(root=root, indent=_guess_indent(root), shared=_shared(root))


def _dump(doc: _Document) -> str:
    out = io.StringIO()
    _yaml(doc.indent).dump(doc.root, out)
    return out.getvalue()


def _edit(text: str, change: Callable[[_Document], None]) -> str:
    """Apply `change` to the document's tree, then carry only the lines it changed over to `text`."""
    crlf = "\r\n" in text and "\n" not in text.replace("\r\n", "")
    source = text.replace("\r\n", "\n") if crlf else text
    doc = _parse(source)
    before = _dump(doc)
    change(doc)
    after = _dump(doc)
    if after == before:
        return text
    result = after if before == source else _rebase(source, before, after)
    if result != after and not _same_data(result, after):
        result = after  # the carried-over lines did not fit their new neighbours: ruamel's whole text is right
    return result.replace("\n", "\r\n") if crlf else result


# --- finding the workload ----------------------------------------------------------------------


def _workload(doc: _Document, service: str) -> CommentedMap:
    """The mapping of the service named `service`, or of predeploy/initialDeploy by the name it goes by."""
    root = doc.root
    services = root.get(SERVICES)
    known: list[str] = []
    if isinstance(services, CommentedSeq):
        for item in services:
            if isinstance(item, CommentedMap) and isinstance(item.get(NAME), str):
                if item[NAME] == service:
                    return item
                known.append(str(item[NAME]))
    for key, default_name in JOB_DEFAULT_NAMES.items():
        job = root.get(key)
        if isinstance(job, CommentedMap):
            job_name = job.get(NAME) or default_name
            if job_name == service:
                return job
            known.append(str(job_name))
    listing = ", ".join(repr(n) for n in known) or "none"
    raise UsageError(f"{FILE} has no service named {service!r}", f"its services: {listing}")


# Characters a one-line YAML scalar cannot carry as they are: controls (but tab), line and paragraph
# separators, the byte-order mark, and lone surrogates.
_UNWRITABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff]")


def _wanted_connection(connection: Mapping[str, str]) -> dict[str, str]:
    """`connection` with `type` first. Only its shape is checked here: the loader validates the values."""
    kinds = [t.value for t in IDENTITY_TYPES]
    kind = connection.get(TYPE)
    if kind not in kinds:
        raise UsageError(f"connection type {kind!r} is not an identity connection", f"use one of {', '.join(kinds)}")
    for key, value in connection.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise UsageError(f"connection field {key!r} must be text, got {type(value).__name__}",
                             "pass every field of the connection as a string")
        if _UNWRITABLE.search(value):
            # YAML turns these into line breaks or refuses them, so the file would not say what was asked.
            raise UsageError(f"connection field {key!r} contains a line break or control character",
                             "enter the value on one line, without control characters")
    return {TYPE: kind, **{k: v for k, v in connection.items() if k != TYPE}}


# --- the edits on the tree ---------------------------------------------------------------------


def _set_connection(doc: _Document, workload: CommentedMap, wanted: dict[str, str]) -> None:
    connections = workload.get(CONNECTIONS)
    if CONNECTIONS not in workload:
        doc.append_key(workload, CONNECTIONS, CommentedSeq([CommentedMap(wanted)]))
        return
    if connections is None or (isinstance(connections, CommentedSeq) and not connections):
        doc.replace_value(workload, CONNECTIONS, CommentedSeq([CommentedMap(wanted)]))  # `connections:` or `[]`
        return
    if not isinstance(connections, CommentedSeq):
        raise UsageError(f"`connections` of service {workload.get(NAME)!r} is not a list",
                         "write each connection as a list item: `- type: awsRole`")
    connections = doc.own_list(workload)
    for index, item in enumerate(connections):
        if isinstance(item, CommentedMap) and item.get(TYPE) == wanted[TYPE]:
            if id(item) in doc.shared:
                connections[index] = _unshared_copy(item)
            doc.replace_fields(connections[index], wanted)
            return
    doc.append_item(connections, CommentedMap(wanted))


def _remove_connection(doc: _Document, workload: CommentedMap, connection_type: str) -> None:
    connections = workload.get(CONNECTIONS)
    if not isinstance(connections, CommentedSeq):
        return
    doomed = [i for i, item in enumerate(connections)
              if isinstance(item, CommentedMap) and item.get(TYPE) == connection_type]
    if not doomed:
        return
    connections = doc.own_list(workload)
    if len(doomed) < len(connections):
        for index in reversed(doomed):
            doc.delete_item(connections, index)
    elif _merged_in(workload, CONNECTIONS):
        doc.replace_value(workload, CONNECTIONS, CommentedSeq())  # an own `[]` hides the list a `<<` brings in
    else:
        doc.delete_key(workload, CONNECTIONS)


def _name_app(doc: _Document, name: str) -> None:
    root = doc.root
    if root.get(NAME) not in (None, ""):
        return
    if NAME in root:
        root[NAME] = name
    else:
        root.insert(0, NAME, name)


def _unshared_copy(node: Collection) -> Any:
    """A copy to edit in place of an aliased collection: written out in full, with no anchor or comments."""
    duplicate = copy.deepcopy(node)
    for part in _walk(duplicate):
        part.yaml_set_anchor(None)
        part.ca.items.clear()
        part.ca.comment = None
    return duplicate


def _merged_in(mapping: CommentedMap, key: str) -> bool:
    """Does a `<<` merge key bring `key` into `mapping` (whether or not the mapping also sets it)?"""
    sources = (s[1] if isinstance(s, tuple) else s for s in getattr(mapping, "merge", []))
    return any(isinstance(source, Mapping) and key in source for source in sources)


def _own_keys(mapping: CommentedMap) -> list[Any]:
    """The keys written in the mapping itself, in order (not those a `<<` merge brings in)."""
    return [k for k, _ in mapping.non_merged_items()]


# --- keeping comments in place -----------------------------------------------------------------
#
# ruamel keeps the comment lines (and blank lines) that follow an entry on the deepest last value before
# them. An entry appended after that value would push them above itself, and a deleted entry would take them
# along, so the edits move them: what followed a collection still follows it.


@dataclass(frozen=True, slots=True)
class _Slot:
    """Where ruamel keeps the comment after one entry: of a mapping (by key) or of a sequence (by index)."""

    owner: Collection
    key: Any

    def get(self) -> CommentToken | None:
        entry = self.owner.ca.items.get(self.key)
        token = entry[self._index] if entry is not None else None
        return token if isinstance(token, CommentToken) else None

    def set(self, token: CommentToken | None) -> None:
        self.owner.ca.items.setdefault(self.key, [None, None, None, None])[self._index] = token

    @property
    def _index(self) -> int:
        return 2 if isinstance(self.owner, CommentedMap) else 0


def _comment_lines(text: str) -> list[CommentToken]:
    """Comment and blank lines as ruamel keeps them before an entry: one token per line, with its column."""
    tokens = []
    for line in text.splitlines(keepends=True):
        content = line.lstrip(" ")
        blank = not content.strip()
        tokens.append(CommentToken("\n" if blank else content, CommentMark(0 if blank else len(line) - len(content))))
    return tokens


# --- the shape of the document -----------------------------------------------------------------


def _walk(node: Any) -> Iterator[Collection]:
    """Every collection under `node` (itself included), each once however many aliases reach it."""
    seen: set[int] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if not isinstance(current, CommentedMap | CommentedSeq) or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(current.values() if isinstance(current, CommentedMap) else current)


def _shared(root: CommentedMap) -> set[int]:
    """Collections that more than one place refers to: editing one of them in place would edit them all."""
    references: Counter[int] = Counter()
    for node in _walk(root):
        values = [v for _, v in node.non_merged_items()] if isinstance(node, CommentedMap) else list(node)
        references.update(id(v) for v in values if isinstance(v, CommentedMap | CommentedSeq))
    return {ident for ident, count in references.items() if count > 1}


def _guess_indent(root: CommentedMap) -> _Indent:
    """The indentation most block collections of the document use (ruamel writes one for all)."""
    mapping: Counter[int] = Counter()
    sequence: Counter[tuple[int, int]] = Counter()
    for node in _walk(root):
        if not isinstance(node, CommentedMap) or node.fa.flow_style():
            continue
        for key, value in node.non_merged_items():
            if not isinstance(value, CommentedMap | CommentedSeq) or not len(value) or value.fa.flow_style():
                continue
            key_line, key_column = node.lc.key(key)
            if value.lc.line <= key_line:
                continue  # on the key's own line (an alias, or `- name:` items): no indentation to read
            if isinstance(value, CommentedMap):
                mapping[value.lc.col - key_column] += 1
            else:
                dash = value.lc.col - key_column
                first = value[0]
                content = (first.lc.col - key_column if isinstance(first, CommentedMap | CommentedSeq)
                           and not first.fa.flow_style() else dash + 2)
                sequence[(content, dash)] += 1
    default = _Indent()
    mapping_indent = mapping.most_common(1)[0][0] if mapping else default.mapping
    sequence_indent, offset = sequence.most_common(1)[0][0] if sequence else (default.sequence, default.offset)
    if mapping_indent < 1 or offset < 0 or sequence_indent < offset + 2:
        return default
    return _Indent(mapping=mapping_indent, sequence=sequence_indent, offset=offset)


# --- carrying an edit over to the original text ------------------------------------------------


def _rebase(original: str, before: str, after: str) -> str:
    """`original` changed as ruamel's rendering went from `before` to `after` (the document before and after
    the edit). Line by line; where ruamel spells the lines around a change unlike `original` (a flow
    collection wrapped elsewhere), word by word within those lines."""
    return "".join(_carry(_lines(original), _lines(before), _lines(after), refine=True))


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


_WORDS = re.compile(r"\s+|[\[\]{},]|[^\s\[\]{},]+")


def _words(text: str) -> list[str]:
    return _WORDS.findall(text)


def _carry(source: list[str], old: list[str], new: list[str], *, refine: bool) -> list[str]:
    """`source` (spelt like `old`, maybe differently) with the pieces that differ between `old` and `new`
    replaced. A change is widened to where `source` and `old` agree, overlapping ones merged."""
    alignment = difflib.SequenceMatcher(None, source, old, autojunk=False).get_opcodes()
    changes = [(o1, o2, n1, n2) for tag, o1, o2, n1, n2 in
               difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes() if tag != "equal"]
    groups: list[tuple[int, int, int, int, list[tuple[int, int, int, int]]]] = []
    for change in changes:
        src_start, old_start = _aligned(alignment, change[0], start=True)
        src_end, old_end = _aligned(alignment, change[1], start=False)
        if groups and old_start < groups[-1][3]:
            first_src, last_src, first_old, last_old, members = groups[-1]
            groups[-1] = (first_src, max(src_end, last_src), first_old, max(old_end, last_old), [*members, change])
        else:
            groups.append((src_start, src_end, old_start, old_end, [change]))
    pieces: list[str] = []
    copied = 0
    for src_start, src_end, old_start, old_end, members in groups:
        pieces.extend(source[copied:src_start])
        replacement: list[str] = []
        position = old_start
        for o1, o2, n1, n2 in members:
            replacement.extend(old[position:o1])
            replacement.extend(new[n1:n2])
            position = o2
        replacement.extend(old[position:old_end])
        written = source[src_start:src_end]
        if refine and written != old[old_start:old_end]:
            replacement = _carry(_words("".join(written)), _words("".join(old[old_start:old_end])),
                                 _words("".join(replacement)), refine=False)
        pieces.extend(replacement)
        copied = src_end
    pieces.extend(source[copied:])
    return pieces


def _aligned(alignment: Sequence[tuple[str, int, int, int, int]], line: int, *, start: bool) -> tuple[int, int]:
    """(line of `original`, line of `before`) at which both texts agree up to there, for a start (or end) at
    line `line` of `before`: that line itself where it is spelt alike, else the start (end) of its run."""
    for tag, src_start, _, old_start, old_end in alignment:
        if tag == "equal" and old_start <= line <= old_end:
            return src_start + (line - old_start), line
    for _, src_start, src_end, old_start, old_end in alignment:
        if old_start <= line <= old_end:
            return (src_start, old_start) if start else (src_end, old_end)
    return (alignment[-1][2] if alignment else 0), line


def _same_data(text: str, expected: str) -> bool:
    try:
        return bool(_plain(_yaml().load(text)) == _plain(_yaml().load(expected)))
    except (YAMLError, ValueError):
        return False


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
