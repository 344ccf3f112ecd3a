"""Reading a YAML file into plain values plus the line and column of every key and value, safely."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from keyless.diagnostics import START, Diagnostic, Position, Severity

MAX_BYTES = 1024 * 1024  # porter.yaml files are a few KiB; a megabyte is already absurd
TOO_LARGE_HINT = "porter.yaml should be a small text file; is this the right file?"
MAX_NODES = 200_000  # counted after alias expansion: stops "billion laughs" bombs
MAX_DEPTH = 64

Path = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"


@dataclass
class Located:
    """A YAML document as plain Python values, with positions of values and of mapping keys by path."""

    file: str
    value: Any
    values: dict[Path, Position] = field(default_factory=dict)
    keys: dict[Path, Position] = field(default_factory=dict)
    texts: dict[Path, str] = field(default_factory=dict)  # scalars as written (env values keep "1.10")
    lines: list[str] = field(default_factory=list)

    def find(self, path: Path, needle: str) -> Position:
        """Where `needle` is written inside the value at `path` (quoted, folded or block scalars alike)."""
        start = self.value_at(path)
        for index in range(start.line - 1, min(len(self.lines), start.line + 200)):
            line = self.lines[index]
            offset = line.find(needle, start.column - 1 if index == start.line - 1 else 0)
            if offset >= 0:
                return Position(index + 1, offset + 1)
        return start

    def value_at(self, path: Path) -> Position:
        """The position of the value at `path`, or of its nearest located ancestor."""
        for i in range(len(path), -1, -1):
            pos = self.values.get(path[:i])
            if pos is not None:
                return pos
        return START

    def key_at(self, path: Path) -> Position:
        """The position of the key naming `path` (falls back to its value's position)."""
        return self.keys.get(path) or self.value_at(path)

    def part(self, prefix: Path) -> Located:
        """The value at `prefix` as a document of its own: paths start there, positions stay the file's."""
        n = len(prefix)

        def under(table: dict[Path, Any]) -> dict[Path, Any]:
            return {path[n:]: item for path, item in table.items() if path[:n] == prefix}

        value = self.value
        for step in prefix:
            value = value[step]
        return Located(self.file, value, under(self.values), under(self.keys), under(self.texts), self.lines)

    def resolve(self, loc: tuple[Any, ...]) -> Path:
        """Map a validator's location (which may hold extra union-tag steps) onto a real data path."""
        path: list[str | int] = []
        current = self.value
        for step in loc:
            if isinstance(current, dict) and step in current:
                path.append(step)
                current = current[step]
            elif isinstance(current, list) and isinstance(step, int) and 0 <= step < len(current):
                path.append(step)
                current = current[step]
        return tuple(path)


class _Abort(Exception):
    """Stop reading: the document is too large or too deep to be a real configuration file."""

    def __init__(self, position: Position, message: str, hint: str) -> None:
        super().__init__(message)
        self.position = position
        self.message = message
        self.hint = hint


def _pos(node: Node) -> Position:
    mark = node.start_mark
    return Position(mark.line + 1, mark.column + 1)


def _decode(data: bytes, file: str) -> tuple[str | None, list[Diagnostic]]:
    def error(pos: Position, message: str, hint: str) -> tuple[None, list[Diagnostic]]:
        return None, [Diagnostic(Severity.ERROR, file, pos, message, hint)]

    if len(data) > MAX_BYTES:
        return error(START, f"file is {len(data):,} bytes; keyless reads at most {MAX_BYTES:,}", TOO_LARGE_HINT)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return error(START, "file is UTF-16 encoded", "save it as UTF-8")
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        col = nul - (data.rfind(b"\n", 0, nul) + 1) + 1
        return error(Position(line, col), "file contains a NUL byte: this is binary data, not YAML",
                     "point -f at your porter.yaml")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        return error(Position(line, col), f"file is not valid UTF-8 (byte 0x{data[exc.start]:02x})",
                     "save the file as UTF-8")
    for i, ch in enumerate(text):
        if ch < " " and ch not in "\t\n\r":
            line = text.count("\n", 0, i) + 1
            col = i - (text.rfind("\n", 0, i) + 1) + 1
            return error(Position(line, col), f"file contains control character U+{ord(ch):04X}",
                         "remove it; YAML files are plain text")
    return text, []


class _Builder:
    """Turns a composed node graph into plain values, checking what the YAML parser leaves to us."""

    def __init__(self, doc: Located) -> None:
        self.doc = doc
        self.diagnostics: list[Diagnostic] = []
        self.count = 0
        self.active: set[int] = set()

    def error(self, pos: Position, message: str, hint: str = "") -> None:
        self.diagnostics.append(Diagnostic(Severity.ERROR, self.doc.file, pos, message, hint))

    def build(self, node: Node, path: Path) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _Abort(_pos(node), f"document expands to more than {MAX_NODES:,} values",
                         "this looks like an alias bomb; write the values out or use fewer aliases")
        if len(path) > MAX_DEPTH:
            raise _Abort(_pos(node), f"document is nested more than {MAX_DEPTH} levels deep",
                         "porter.yaml is only a few levels deep")
        if id(node) in self.active:
            raise _Abort(_pos(node), "an alias refers to a node that contains it (a recursive structure)",
                         "remove the recursive alias")
        self.doc.values.setdefault(path, _pos(node))
        self._check_collection_tag(node)
        self.active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self.mapping(node, path)
            if isinstance(node, SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            return self.scalar(node, path)
        finally:
            self.active.discard(id(node))

    def _check_collection_tag(self, node: Node) -> None:
        if isinstance(node, ScalarNode):
            return
        tag = _tag(node)
        allowed = (_TAG + "map", _TAG + "omap") if isinstance(node, MappingNode) else (_TAG + "seq",)
        if tag not in allowed:
            self.error(_pos(node), f"unsupported YAML tag {tag!r}",
                       "porter.yaml uses plain YAML values; remove the tag")

    def _entries(self, node: MappingNode) -> Iterator[tuple[Node, Node, bool]]:
        """Own entries first, then those pulled in by `<<` merge keys (which never override)."""
        merged: list[tuple[Node, Node, bool]] = []
        for key, value in node.value:
            if _tag(key) == _TAG + "merge":
                sources = value.value if isinstance(value, SequenceNode) else [value]
                for source in sources:
                    if isinstance(source, MappingNode):
                        merged.extend((k, v, True) for k, v in source.value)
                    else:
                        self.error(_pos(source), "a `<<` merge key takes a mapping or a list of mappings")
            else:
                yield key, value, False
        yield from merged

    def mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node, from_merge in self._entries(node):
            if not isinstance(key_node, ScalarNode):
                self.error(_pos(key_node), "mapping keys must be plain strings, not lists or mappings",
                           "write the key as plain text followed by ':'")
                continue
            key_value = self.scalar(key_node)
            if key_value is None:
                self.error(_pos(key_node), "a mapping key is empty (null)", "give the key a name")
                continue
            key = str(key_value) if not isinstance(key_value, bool) else key_node.value
            if key in result:
                if not from_merge:
                    first = self.doc.keys.get((*path, key))
                    where = f" (first at line {first.line})" if first else ""
                    self.error(_pos(key_node), f"duplicate key {key!r}{where}",
                               "YAML keeps only one of them; remove or merge the duplicates")
                continue
            self.doc.keys[(*path, key)] = _pos(key_node)
            if isinstance(value_node, ScalarNode) and value_node.value == "" and value_node.style is None:
                # An empty value has no token of its own; the parser marks the next one, often lines below.
                key_pos = _pos(key_node)
                self.doc.values[(*path, key)] = Position(key_pos.line, key_pos.column + len(key_node.value) + 1)
            result[key] = self.build(value_node, (*path, key))
        return result

    def scalar(self, node: Node, path: Path | None = None) -> Any:
        assert isinstance(node, ScalarNode)
        tag, text = _tag(node), node.value
        if path is not None:
            self.doc.texts[path] = text
        if tag == _TAG + "null":
            return None
        if tag == _TAG + "bool":
            return text.lower() == "true"
        if tag == _TAG + "int":
            return _parse_int(text)
        if tag == _TAG + "float":
            return _parse_float(text)
        if tag in (_TAG + "str", "!", _TAG + "timestamp"):
            return text
        self.error(_pos(node), f"unsupported YAML tag {tag!r}", "porter.yaml uses plain YAML values; remove the tag")
        return text


def _tag(node: Node) -> str:
    tag = node.tag
    return tag if isinstance(tag, str) else str(getattr(tag, "value", tag))


def _parse_int(text: str) -> int | str:
    cleaned = text.replace("_", "")
    try:
        if cleaned.lower().startswith(("0o", "+0o", "-0o")):
            return int(cleaned.replace("o", "").replace("O", ""), 8)
        return int(cleaned, 0) if cleaned.lower().lstrip("+-").startswith("0x") else int(cleaned, 10)
    except ValueError:
        return text


def _parse_float(text: str) -> float | str:
    lowered = text.lower().replace("_", "")
    if lowered in (".inf", "+.inf"):
        return float("inf")
    if lowered == "-.inf":
        return float("-inf")
    if lowered == ".nan":
        return float("nan")
    try:
        return float(lowered)
    except ValueError:
        return text


def _flow_brackets(text: str) -> tuple[Position | None, Position | None]:
    """Where flow brackets nest past MAX_DEPTH (the parser would hit Python's recursion limit first),
    and where the innermost bracket left open at the end of the file was opened."""
    depth = line = 0
    column = 0
    quote = ""
    opened: list[Position] = []
    for ch in text:
        column += 1
        if ch == "\n":
            line, column, quote = line + 1, 0, ""
        elif quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and not opened:
            quote = "\n"  # a comment runs to the end of the line
        elif ch in "[{":
            depth += 1
            opened.append(Position(line + 1, column))
            if depth > MAX_DEPTH:
                return opened[-1], None
        elif ch in "]}":
            depth = max(0, depth - 1)
            if opened:
                opened.pop()
    return None, (opened[-1] if opened else None)


def read_yaml(data: bytes, file: str) -> tuple[Located | None, list[Diagnostic]]:
    """Parse one YAML document; never raises for bad input, returns diagnostics instead."""
    text, problems = _decode(data, file)
    if text is None:
        return None, problems
    lines = text.splitlines()
    deep, unclosed = _flow_brackets(text)
    if deep is not None:
        return None, [Diagnostic(Severity.ERROR, file, deep, f"document is nested more than {MAX_DEPTH} levels deep",
                                 "porter.yaml is only a few levels deep; check the brackets")]
    yaml = YAML(typ="rt", pure=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a reused anchor name: legal YAML, not worth a word
            nodes = list(yaml.compose_all(io.StringIO(text)))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at_end = mark is None or mark.line >= len(lines) or (mark.line == len(lines) - 1 and not lines[-1].strip())
        if at_end and exc.context_mark is not None:
            mark = exc.context_mark  # the file ended inside a quote or bracket: point at where it opened
        pos = Position(mark.line + 1, mark.column + 1) if mark else START
        if at_end and unclosed is not None:
            pos = unclosed
        message = " ".join(str(part) for part in (exc.context, exc.problem) if part) or "invalid YAML"
        return None, [Diagnostic(Severity.ERROR, file, pos, f"invalid YAML: {message}",
                                 "check the indentation and quoting around this place")]
    except RecursionError:
        return None, [Diagnostic(Severity.ERROR, file, START, "document is nested too deeply",
                                 "porter.yaml is only a few levels deep")]
    except (YAMLError, ValueError) as exc:
        return None, [Diagnostic(Severity.ERROR, file, START, f"invalid YAML: {exc}",
                                 "check that this is the right file and that it is YAML")]
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        return None, [Diagnostic(Severity.ERROR, file, START, "file is empty",
                                 "a porter.yaml needs at least `services:`")]
    if len(nodes) > 1:
        return None, [Diagnostic(Severity.ERROR, file, _pos(nodes[1]),
                                 f"file holds {len(nodes)} YAML documents; keyless reads exactly one",
                                 "remove the extra `---` separators")]
    doc = Located(file=file, value=None, lines=lines)
    builder = _Builder(doc)
    try:
        doc.value = builder.build(nodes[0], ())
    except _Abort as exc:
        return None, [Diagnostic(Severity.ERROR, file, exc.position, exc.message, exc.hint)]
    except RecursionError:
        return None, [Diagnostic(Severity.ERROR, file, START, "document is nested too deeply")]
    return doc, builder.diagnostics
