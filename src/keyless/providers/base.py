"""The one small Protocol every cloud provider implements: resolve, preflight, observe, apply."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from keyless.bindings import Binding
from keyless.clouds import Cloud
from keyless.errors import CloudError
from keyless.plan.model import Action, ActionKind, ObservedBinding, ObservedServiceAccount, Refresh, Resource


class PreflightSeverity(enum.StrEnum):
    BLOCKING = "blocking"  # apply would fail: exit 3 and say what to fix
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class PreflightIssue:
    severity: PreflightSeverity
    message: str
    fix: str = ""  # the exact thing to run or paste
    service: str | None = None


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    """What applying one cloud action did; `message` feeds status and the deploy record.

    `settles_in`: seconds from now until the write takes effect for new pods, as the cloud's own answer tells
    (EKS: the association's modifiedAt plus the propagation time), so the engine can restart the service's pods
    then without polling; None when the answer cannot tell (the engine asks a VisibilityWaiter instead).
    """

    ok: bool
    message: str
    binding_id: str | None = None
    settles_in: float | None = None


def _damaged(action: Action, which: str) -> CloudError:
    return CloudError(f"{action.address}: a {action.kind} action needs its {which} binding; the plan is damaged",
                      "plan again")


def desired_of(action: Action) -> Binding:
    """The binding an action wants; a plan file without it is damaged, not something to guess around."""
    if action.desired is None:
        raise _damaged(action, "desired")
    return action.desired


def observed_of(action: Action) -> ObservedBinding:
    """The binding an action found; see desired_of."""
    if action.observed is None:
        raise _damaged(action, "observed")
    return action.observed


def failed(message: str, binding_id: str | None = None) -> ActionOutcome:
    """A refusal or failure of one action, reported for its service (the others go on)."""
    return ActionOutcome(ok=False, message=message, binding_id=binding_id)


def services_label(bindings: Sequence[Binding]) -> tuple[str, str | None]:
    """("service a" or "services a, b", the service when there is exactly one), for a preflight issue."""
    found = list(dict.fromkeys(b.service for b in bindings))
    label = ("service " if len(found) == 1 else "services ") + ", ".join(found)
    return label, found[0] if len(found) == 1 else None


Create = Callable[[Binding], ActionOutcome]
Change = Callable[[ObservedBinding, Binding], ActionOutcome]


@dataclass(frozen=True, slots=True)
class BindingWrites:
    """How one provider carries out each kind of cloud-binding action; `update` is None where a cloud has none."""

    cloud: str  # as a person names it, for messages
    create: Create
    adopt: Change
    replace: Change
    delete: Callable[[ObservedBinding], ActionOutcome]
    update: Change | None = None
    no_update: str = ""  # why there is no in-place update (an UPDATE action then means a damaged plan)

    def apply(self, action: Action) -> ActionOutcome:
        """Dispatch one action to its write. Only cloud bindings are a provider's to apply."""
        if action.resource is not Resource.CLOUD_BINDING:
            raise CloudError(f"{action.address}: the {self.cloud} provider applies cloud bindings, "
                             f"not {action.resource}")
        kind = action.kind
        if kind is ActionKind.NOOP:
            return ActionOutcome(True, f"{action.address}: nothing to do",
                                 action.observed.id if action.observed else None)
        if kind is ActionKind.CREATE:
            return self.create(desired_of(action))
        if kind is ActionKind.ADOPT:
            return self.adopt(observed_of(action), desired_of(action))
        if kind is ActionKind.DELETE:
            return self.delete(observed_of(action))
        if kind is ActionKind.REPLACE:
            return self.replace(observed_of(action), desired_of(action))
        if self.update is None:
            raise CloudError(f"{action.address}: {self.no_update}", "plan again")
        return self.update(observed_of(action), desired_of(action))


@runtime_checkable
class TokenExchanger(Protocol):
    """A provider that can prove a federation works by exchanging a service-account token (Azure)."""

    token_audience: str
    # Seconds exchanges must keep being accepted, without a refusal between, before the engine restarts pods: a cloud
    # that converges replica by replica (Entra ID) can refuse again for a while after a first success.
    exchange_steady_for: float

    def try_token_exchange(self, binding: Binding, assertion: str) -> tuple[bool, str]:
        """(True, "") when the cloud accepts the token for the binding's identity; else (False, why)."""
        ...


@runtime_checkable
class CapacityChecker(Protocol):
    """A provider whose cloud limits the bindings of a whole cluster (EKS: associations per cluster): checked once
    the plan says how many it creates, so that a plan that creates nothing never pays for counting them."""

    def check_capacity(self, creating: int) -> list[PreflightIssue]:
        """Blocking issues when `creating` more bindings would pass the limit; none otherwise."""
        ...


@runtime_checkable
class BatchWriter(Protocol):
    """A provider whose cloud keeps several services' bindings in one object (a GCP IAM policy): the engine hands
    it every cloud action at once, so each object is written once with all of the app's changes."""

    def apply_all(self, actions: Sequence[Action]) -> list[ActionOutcome]:
        """One outcome per action, in order; a failure is an outcome, never an exception."""
        ...


class Provider(Protocol):
    cloud: Cloud

    def resolve(self, bindings: Sequence[Binding]) -> tuple[list[Binding], list[PreflightIssue]]:
        """Fill in cloud facts (role ARN, client ID); identities that cannot be resolved become issues."""
        ...

    def preflight(self, bindings: Sequence[Binding]) -> list[PreflightIssue]:
        """Check what must hold before any write: cluster, add-on or issuer, trust, per-identity caps. A limit only
        the plan's creates can pass (a cluster's quota) is a CapacityChecker's, checked once the plan is known."""
        ...

    def observe(self, app: str, target: str, bindings: Sequence[Binding], recorded: Sequence[str] = (),
                accounts: Sequence[ObservedServiceAccount] = (), refresh: Refresh = Refresh.FULL
                ) -> list[ObservedBinding]:
        """Every binding keyless owns for this app on this target, plus whatever sits at the desired keys.

        `recorded` are identities keyless wrote on the app's service accounts (`Identity.describe()`):
        where a cloud keeps bindings on the identity (Azure, GCP), that is how a removed connection is found.
        `accounts` are the app's service accounts as observed: where a binding carries no mark (a GCP member),
        keyless's labels on the account it names say whose it is.
        `refresh`: where reading each binding costs a call of its own and finding them a cluster-wide listing (EKS),
        Refresh.BOUND reads back by id what the journal on `accounts` (BINDING_ANNOTATION) records instead of
        listing, and Refresh.NONE trusts the journal outright; a cloud whose reads are per identity anyway (Azure,
        GCP) reads the same whatever `refresh` says.
        """
        ...

    def apply(self, action: Action) -> ActionOutcome:
        """Carry out one cloud action (create, update, replace, delete, adopt); idempotent on retry."""
        ...


@runtime_checkable
class VisibilityWaiter(Protocol):
    """A provider whose write answers do not say when a binding takes effect (Azure): after a write whose outcome
    has no `settles_in`, the engine waits here before it restarts the service's pods."""

    def wait_visible(self, action: Action, timeout: float) -> bool:
        """Wait until the action's binding takes effect (or the timeout passes); False on timeout."""
        ...
