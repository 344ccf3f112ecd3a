"""The Kubernetes side of keyless: pure manifests and plans, and the interface cluster and render modes share."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Protocol

from keyless.kube.manifests import PodTemplateSettings
from keyless.plan import ObservedServiceAccount, ObservedWorkload


class KubeSide(Protocol):
    """What the engine asks of a cluster (`mode: apply`) or of a directory of manifests (`mode: render`)."""

    def observe(
        self, namespace: str, app: str, service_accounts: Collection[str] = ()
    ) -> tuple[list[ObservedServiceAccount], list[ObservedWorkload]]:
        """The app's workloads, and the accounts keyless labelled for it plus those named in `service_accounts`."""
        ...

    def apply_service_account(
        self, manifest: Mapping[str, Any], *, remove_annotations: Collection[str] | None = None
    ) -> None:
        """Create or update the account as keyless's, then strip `remove_annotations` (default: the stale ones)."""
        ...

    def strip_service_account(self, namespace: str, name: str) -> None:
        """Remove keyless's identity annotations from an account whose connection was removed; keep the account."""
        ...

    def delete_service_account(self, namespace: str, name: str) -> bool:
        """Delete the account if keyless manages it; False when it was already gone."""
        ...

    def update_workload(self, workload: ObservedWorkload, settings: PodTemplateSettings | None) -> None:
        """Set the pod template (None: remove the identity) and make the controller roll the pods."""
        ...

    def wait_rollout(self, namespace: str, name: str, timeout: float) -> bool:
        """Wait until a Deployment runs only pods of its current template; False on timeout."""
        ...

    def request_token(self, namespace: str, name: str, audience: str) -> str | None:
        """A short-lived token for the account (TokenRequest), to prove a federation works; None in render mode."""
        ...
