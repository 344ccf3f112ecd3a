"""What the end-to-end tests share besides fixtures: the CLI as they run it, and the sandbox's type."""

from __future__ import annotations

from typer.testing import CliRunner

from keyless.cli import app as cli
from keyless.sandbox.stack import SandboxStack, SandboxState

Sandbox = tuple[SandboxStack, SandboxState]

# Where an apply can die: before the intent is recorded, right after the cloud write, and at each Kubernetes step.
KILL_POINTS = ["record_intent", "after_cloud_write", "apply_service_account", "update_workload",
               "remove_annotations"]


class Killed(BaseException):
    """The process dies here (kill -9): nothing after this point runs, no handler cleans up."""


class Dying:
    """keyless's real provider or Kubernetes side, with the process dying at one named step."""

    def __init__(self, inner: object, kill_at: str) -> None:
        self._inner = inner
        self._kill_at = kill_at

    def __getattr__(self, name: str) -> object:
        real = getattr(self._inner, name)
        if name == self._kill_at:
            def die(*args: object, **kwargs: object) -> object:
                raise Killed(name)
            return die
        if name in ("apply", "apply_all") and self._kill_at == "after_cloud_write":
            def write_then_die(*args: object, **kwargs: object) -> object:
                real(*args, **kwargs)  # type: ignore[operator]
                raise Killed("after the cloud write")
            return write_then_die
        return real


def run_cli(*args: str) -> tuple[int, str]:
    """Exit code and everything the command printed, which never holds a traceback."""
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output
