"""How keyless errors reach a person over HTTP: the status of each kind of error and the JSON error body."""

from __future__ import annotations

from typing import Any

from keyless.errors import CloudError, Conflict, KeylessError, NotFound, PreflightFailed

# What the API answers a request without a usable token (the route's dependency and the body limit alike).
NO_TOKEN = ("this API needs a token", "send `Authorization: Bearer <token>`; `keyless serve` printed the first admin "
            "token, and admins create more with POST /api/v1/tokens")
BAD_TOKEN = ("this token is not valid (unknown or revoked)", "ask an admin for a new token")


def http_status(error: KeylessError) -> int:
    """The HTTP status of each kind of keyless error."""
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, Conflict | PreflightFailed):
        return 409
    if isinstance(error, CloudError):
        return 502
    if error.exit_code == 2:  # invalid input of any kind: porter.yaml, a target, a field, a request body
        return 422
    return 500


def error_body(message: str, hint: str = "", items: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """`{"error", "hint", "problems"}`; a hint or problems that would be empty are left out."""
    body: dict[str, Any] = {"error": message}
    if hint:
        body["hint"] = hint
    if items:
        body["problems"] = items
    return body
