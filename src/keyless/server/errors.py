"""How keyless errors reach a person over HTTP: the status of each kind of error and the JSON error body."""

from __future__ import annotations

from typing import Any

from keyless.errors import CloudError, Conflict, InvalidInput, KeylessError, NotFound, PreflightFailed


def http_status(error: KeylessError) -> int:
    """The HTTP status of each kind of keyless error."""
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, Conflict | PreflightFailed):
        return 409
    if isinstance(error, InvalidInput):
        return 422
    if isinstance(error, CloudError):
        return 502
    if error.exit_code == 2:
        return 400
    return 500


def error_body(message: str, hint: str = "", items: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message, "hint": hint}
    if items:
        body["problems"] = items
    return body
