"""`${VAR}` placeholders in porter.yaml values, expanded from an environment mapping."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# ${NAME}, ${NAME:-default}; `$${` writes a literal `${`.
_PLACEHOLDER = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class PlaceholderProblem:
    token: str  # the placeholder as written, to find its line and column in the file
    message: str
    hint: str


def expand(text: str, env: Mapping[str, str]) -> tuple[str, list[PlaceholderProblem], list[str]]:
    """The expanded text, the problems found, and the names of the variables it used."""
    problems: list[PlaceholderProblem] = []
    used: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$${":
            return "${"
        body = match.group(1)
        if body is None:
            problems.append(PlaceholderProblem(token, "`${` is never closed",
                                               "write ${NAME}, or $${ for a literal ${"))
            return token
        name, sep, default = body.partition(":-")
        if not _NAME.match(name):
            problems.append(PlaceholderProblem(
                token, f"`${{{body}}}` is not a valid placeholder",
                "placeholders look like ${NAME} or ${NAME:-default}; write $${ for a literal ${"))
            return token
        used.append(name)
        if sep and not env.get(name):
            return default  # as in shells: unset or empty takes the default
        if name in env:
            return env[name]
        problems.append(PlaceholderProblem(
            token, f"environment variable {name} is not set (used as ${{{name}}})",
            f"export {name} before running keyless, or write ${{{name}:-default}}"))
        return token

    return _PLACEHOLDER.sub(substitute, text), problems, used
