"""Shared helpers for the unit tests: load porter.yaml text and get either the app or its diagnostics."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from keyless.diagnostics import Diagnostic, Severity
from keyless.errors import InvalidInput
from keyless.porter import LoadedApp, load_app

DATA = Path(__file__).resolve().parent.parent / "data"

LoadOk = Callable[..., LoadedApp]
LoadErrors = Callable[..., list[Diagnostic]]


def _bytes(text: str | bytes, dedent: bool) -> bytes:
    if isinstance(text, bytes):
        return text
    return (textwrap.dedent(text) if dedent else text).encode("utf-8")


@pytest.fixture
def load_ok() -> LoadOk:
    """`load_ok(text, env=None)`: the LoadedApp; fails the test with every diagnostic if the file is rejected."""

    def load(text: str | bytes, env: Mapping[str, str] | None = None, *, dedent: bool = True) -> LoadedApp:
        try:
            return load_app(_bytes(text, dedent), "porter.yaml", env or {})
        except InvalidInput as exc:
            pytest.fail("porter.yaml was rejected:\n" + exc.render())

    return load


@pytest.fixture
def load_errors() -> LoadErrors:
    """`load_errors(text, env=None)`: the error diagnostics of a file that must be rejected."""

    def load(text: str | bytes, env: Mapping[str, str] | None = None, *, dedent: bool = True) -> list[Diagnostic]:
        try:
            loaded = load_app(_bytes(text, dedent), "porter.yaml", env or {})
        except InvalidInput as exc:
            errors = [d for d in exc.diagnostics if d.severity is Severity.ERROR]
            assert errors, "InvalidInput raised without any error diagnostic"
            return errors
        pytest.fail("porter.yaml was accepted, expected errors; diagnostics:\n"
                    + "\n".join(d.render() for d in loaded.diagnostics))

    return load

