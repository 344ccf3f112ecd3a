"""Microsoft.ManagedIdentity's own write limits, as the Azure sandbox's Python API names them (the knobs keep them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from keyless.sandbox.knobs import REALISTIC_LIMITS, RateLimit

__all__ = ["REAL_WRITE_LIMITS", "RateLimit", "WriteLimits"]


@dataclass(frozen=True)
class WriteLimits:
    """Token buckets on managed-identity writes (identities and their federated credentials)."""

    per_identity: RateLimit | None = None
    per_subscription: RateLimit | None = None

    def apply_to(self, limits: Mapping[str, RateLimit]) -> dict[str, RateLimit]:
        """`limits` with the two managed-identity buckets replaced by these."""
        merged = {k: v for k, v in limits.items() if k not in ("msi-write-identity", "msi-write-subscription")}
        if self.per_identity is not None:
            merged["msi-write-identity"] = self.per_identity
        if self.per_subscription is not None:
            merged["msi-write-subscription"] = self.per_subscription
        return merged

    @classmethod
    def of(cls, limits: Mapping[str, RateLimit]) -> WriteLimits:
        return cls(limits.get("msi-write-identity"), limits.get("msi-write-subscription"))


# Azure's documented limits: 0.25 writes/s per identity, 2 per subscription. The sandbox throttles only when asked,
# so that tests and demos stay fast; a set-up that wants Azure's pace passes these (or the `realistic` preset).
REAL_WRITE_LIMITS = WriteLimits.of(REALISTIC_LIMITS)
