"""What the engine asks of a target's Kubernetes side: a cluster (`mode: apply`) or files (`mode: render`)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from keyless.kube.lock import AppLock, LockStatus
from keyless.plan.model import (
    AccountSpec,
    Intent,
    ObjectRef,
    ObservedServiceAccount,
    ObservedWorkload,
    Plan,
    PodTemplateSettings,
)


class KubeSide(Protocol):
    """Every method takes what the plan's typed fields say; none decides anything the plan already decided."""

    def observe(
        self, namespace: str, app: str, service_accounts: Collection[str] = ()
    ) -> tuple[list[ObservedServiceAccount], list[ObservedWorkload]]:
        """The app's workloads, and the accounts keyless labelled for it plus those named in `service_accounts`."""
        ...

    def apply_service_account(self, ref: ObjectRef, spec: AccountSpec, remove_annotations: Collection[str]) -> None:
        """Create or update the account as keyless's, then strip `remove_annotations` where present."""
        ...

    def record_intent(self, intent: Intent) -> None:
        """Record on the account (creating it, labelled keyless's, if needed) the identities a cloud write is about
        to bind, before the write; removed with `remove_annotations` once the service's apply is done."""
        ...

    def remove_annotations(self, ref: ObjectRef, keys: Collection[str]) -> None:
        """Strip these annotations from an account (a removed connection); keep the account."""
        ...

    def delete_service_account(self, ref: ObjectRef) -> bool:
        """Delete the account if keyless manages it; False when it was already gone."""
        ...

    def update_workload(self, workload: ObjectRef, service: str, settings: PodTemplateSettings) -> None:
        """Set the pod template of one of `service`'s workloads and make its controller roll the pods."""
        ...

    def wait_rollout(self, namespace: str, name: str, timeout: float) -> bool:
        """Wait until a Deployment runs only pods of its current template; False on timeout."""
        ...

    def request_token(self, namespace: str, name: str, audience: str) -> str | None:
        """A short-lived token for the account (TokenRequest), to prove a federation works; None in render mode."""
        ...

    def complete(self, plan: Plan) -> None:
        """Once every action of the plan succeeded: render mode writes the app's files; a cluster does nothing."""
        ...

    def try_lock(self, lock: AppLock) -> LockStatus:
        """One attempt at the app's apply lock: MINE once taken (created, taken over from a holder whose lease ran
        out, or already ours), else who holds it and until when. Render mode has no cluster and no lock: MINE."""
        ...

    def renew_lock(self, lock: AppLock) -> None:
        """Keep the lock: its renewTime becomes now. Raises LockLost when someone else holds it."""
        ...

    def release_lock(self, lock: AppLock) -> None:
        """Give the lock up if it is still ours (the Lease stays, with no holder)."""
        ...
