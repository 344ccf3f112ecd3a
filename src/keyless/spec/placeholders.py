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
    offset: int  # character offset inside the scalar, for the column of the error
    message: str
    hint: str


def expand(text: str, env: Mapping[str, str]) -> tuple[str, list[PlaceholderProblem]]:
    problems: list[PlaceholderProblem] = []

    def substitute(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$${":
            return "${"
        body = match.group(1)
        if body is None:
            problems.append(PlaceholderProblem(match.start(), "`${` is never closed",
                                               "write ${NAME}, or $${ for a literal ${"))
            return token
        name, sep, default = body.partition(":-")
        if not _NAME.match(name):
            problems.append(PlaceholderProblem(
                match.start(), f"`${{{body}}}` is not a valid placeholder",
                "placeholders look like ${NAME} or ${NAME:-default}; write $${ for a literal ${"))
            return token
        if name in env:
            return env[name]
        if sep:
            return default
        problems.append(PlaceholderProblem(
            match.start(), f"environment variable {name} is not set (used as ${{{name}}})",
            f"export {name} before running keyless, or write ${{{name}:-default}}"))
        return token

    return _PLACEHOLDER.sub(substitute, text), problems
