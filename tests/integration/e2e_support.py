"""What the end-to-end tests share besides fixtures: the CLI as they run it, and the sandbox's type."""

from __future__ import annotations

from typer.testing import CliRunner

from keyless.cli import app as cli
from keyless.sandbox.stack import SandboxStack, SandboxState

Sandbox = tuple[SandboxStack, SandboxState]


def run_cli(*args: str) -> tuple[int, str]:
    """Exit code and everything the command printed, which never holds a traceback."""
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output
