"""Diagnostics: a located finding about an input file (error, warning or note), and how it prints."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

# A value echoed in a message is cut to this many characters: a 500 KB name must not come back whole.
ECHO_LIMIT = 300  # longer than any real ARN or email, far shorter than a hostile value
_LONG_RUN = re.compile(rf"\S{{{ECHO_LIMIT + 1},}}")


def clip(text: str) -> str:
    """`text` with every run of non-blank characters longer than ECHO_LIMIT shortened, saying how long it was."""
    return _LONG_RUN.sub(lambda m: f"{m.group(0)[:ECHO_LIMIT - 20]}…({len(m.group(0)):,} characters)", text)


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


@dataclass(frozen=True, slots=True)
class Position:
    """1-based line and column, as editors and compilers print them."""

    line: int
    column: int


START = Position(1, 1)


@dataclass(frozen=True, slots=True)
class Diagnostic:
    severity: Severity
    file: str
    position: Position
    message: str
    hint: str = ""

    def __post_init__(self) -> None:
        # Values from the input are quoted in messages; a hostile or broken file must not make them huge.
        object.__setattr__(self, "message", clip(self.message))
        object.__setattr__(self, "hint", clip(self.hint))

    def render(self) -> str:
        """`FILE:LINE:COL: message`, with the severity spelled out unless it is an error."""
        where = f"{self.file}:{self.position.line}:{self.position.column}:"
        label = "" if self.severity is Severity.ERROR else f" {self.severity.value}:"
        text = f"{where}{label} {self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text

    def as_json(self) -> dict[str, object]:
        return {
            "severity": self.severity.value,
            "file": self.file,
            "line": self.position.line,
            "column": self.position.column,
            "message": self.message,
            "hint": self.hint,
        }


def sort_diagnostics(items: Iterable[Diagnostic]) -> list[Diagnostic]:
    """File order first, so a person reads them top to bottom; duplicates dropped."""
    unique = dict.fromkeys(items)
    return sorted(unique, key=lambda d: (d.file, d.position.line, d.position.column, d.message))


def errors_in(items: Iterable[Diagnostic]) -> list[Diagnostic]:
    return [d for d in items if d.severity is Severity.ERROR]
