"""Reading the input files from disk: the one place that turns a porter.yaml or targets path into a loaded value.

The core (spec, targets) works on bytes and never touches the file system; the CLI, the demo and the
benchmark come through here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from keyless.diagnostics import START, Diagnostic, Severity
from keyless.errors import InvalidInput
from keyless.porter.loader import LoadedApp, load_app, load_apps
from keyless.porter.yamlsource import MAX_BYTES, TOO_LARGE_HINT
from keyless.targets import Targets, load_targets


def read_file(path: str | Path) -> bytes:
    """The bytes of an input file, or InvalidInput saying why it cannot be read.

    At most one byte past the size cap is read, whatever the file is (a device such as /dev/zero included)."""
    try:
        with Path(path).open("rb") as f:
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            problem, hint = f"file is larger than {MAX_BYTES:,} bytes, the most keyless reads", TOO_LARGE_HINT
        else:
            return data
    except FileNotFoundError:
        problem, hint = "file not found", "check the path"
    except IsADirectoryError:
        problem, hint = "this is a directory, not a file", "pass the path of the file itself"
    except OSError as exc:
        problem, hint = f"cannot read file: {exc.strerror}", ""
    raise InvalidInput([Diagnostic(Severity.ERROR, str(path), START, problem, hint)])


def load_app_file(path: str | Path, env: Mapping[str, str], app_name: str | None = None) -> LoadedApp:
    """The app of a porter.yaml; in a multi-app file (`apps:`), the one named `app_name`."""
    return load_app(read_file(path), str(path), env, app_name)


def load_apps_file(path: str | Path, env: Mapping[str, str]) -> tuple[LoadedApp, ...]:
    """Every app of a porter.yaml: one, or each of `apps:`."""
    return load_apps(read_file(path), str(path), env)


def load_targets_file(path: str | Path, env: Mapping[str, str]) -> Targets:
    return load_targets(read_file(path), str(path), env)
