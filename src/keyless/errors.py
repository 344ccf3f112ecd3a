"""The one error hierarchy of keyless; each error knows the exit code the CLI returns for it."""

from __future__ import annotations

from collections.abc import Sequence

from keyless.diagnostics import Diagnostic


class KeylessError(Exception):
    """Base of every error keyless reports to a person (never shown as a traceback)."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        return self.message + (f"\n    hint: {self.hint}" if self.hint else "")


class InvalidInput(KeylessError):
    """porter.yaml, the targets file or the arguments are wrong: nothing reached a cloud (exit 2)."""

    exit_code = 2

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = tuple(diagnostics)
        super().__init__("\n".join(d.render() for d in self.diagnostics))

    def render(self) -> str:
        return self.message


class UsageError(KeylessError):
    """A command line that cannot be acted on (exit 2)."""

    exit_code = 2


class PreflightFailed(KeylessError):
    """Something that must hold in the cloud or cluster does not; the message says what to fix (exit 3)."""

    exit_code = 3


class CloudError(KeylessError):
    """A cloud or Kubernetes call failed in a way retries did not cure (exit 1)."""

    exit_code = 1


class Denied(CloudError):
    """A cloud refused a call for lack of permission (403); `doing` and `code` say which, for an incomplete audit."""

    def __init__(self, message: str, hint: str, *, doing: str, code: str) -> None:
        super().__init__(message, hint)
        self.doing = doing
        self.code = code


class ApplyFailed(KeylessError):
    """One or more actions of a plan failed while applying (exit 1)."""

    exit_code = 1


class LockHeld(KeylessError):
    """Another apply of the same app on the same target held its lock past --lock-timeout: nothing was changed
    (exit 4)."""

    exit_code = 4


class LockLost(CloudError):
    """The apply lock was taken by someone else while this apply held it (renewals failed for a whole lease):
    no new step starts (exit 1)."""


class NotFound(KeylessError):
    """A named thing (app, service, target, deploy, token) does not exist (exit 2; HTTP 404)."""

    exit_code = 2


class Conflict(KeylessError):
    """The request clashes with the current state: a name already taken, a deploy already running (HTTP 409)."""

    exit_code = 1


class StaleRevision(Conflict):
    """Someone else changed the app since this change read it: it was not written (HTTP 409)."""
