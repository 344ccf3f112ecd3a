"""Reading the input files from disk: the one place that turns a porter.yaml or targets path into a loaded value.

The core (spec, targets) works on bytes and never touches the file system; the CLI, the demo and the
benchmark come through here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from keyless.diagnostics import START, Diagnostic, Severity
from keyless.errors import InvalidInput
from keyless.porter.loader import LoadedApp, load_app
from keyless.targets import Targets, load_targets


def read_file(path: str | Path) -> bytes:
    """The bytes of an input file, or InvalidInput saying why it cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        problem, hint = "file not found", "check the path"
    except IsADirectoryError:
        problem, hint = "this is a directory, not a file", "pass the path of the file itself"
    except OSError as exc:
        problem, hint = f"cannot read file: {exc.strerror}", ""
    raise InvalidInput([Diagnostic(Severity.ERROR, str(path), START, problem, hint)])


def load_app_file(path: str | Path, env: Mapping[str, str]) -> LoadedApp:
    return load_app(read_file(path), str(path), env)


def load_targets_file(path: str | Path, env: Mapping[str, str]) -> Targets:
    return load_targets(read_file(path), str(path), env)
