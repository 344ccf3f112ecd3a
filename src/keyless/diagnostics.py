"""Diagnostics: a located finding about an input file (error, warning or note), and how it prints."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


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
