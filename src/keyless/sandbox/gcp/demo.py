"""The GCP demo the sandbox seeds: its project, GKE clusters and Google service accounts, and what it reports back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keyless.sandbox.gcp import GcpSandbox

__all__ = [
    "DEMO_ACCOUNTS",
    "DEMO_BROAD_ACCOUNT",
    "DEMO_CLUSTER",
    "DEMO_CLUSTER_OFF",
    "DEMO_LOCATION",
    "DEMO_PROJECT",
    "DEMO_PROJECT_NUMBER",
    "DEMO_RETIRED_ACCOUNT",
    "DEPLOYER_ACCOUNT",
    "GcpDemoSeed",
    "seed_demo",
]

DEMO_PROJECT = "keyless-sandbox"
DEMO_PROJECT_NUMBER = "684920371145"
DEMO_LOCATION = "us-central1"
DEMO_CLUSTER = "sandbox-gke"
DEMO_CLUSTER_OFF = "sandbox-gke-off"
DEPLOYER_ACCOUNT = "keyless-deployer"
DEMO_ACCOUNTS = ("shop-web", "shop-worker", "shop-reports")
DEMO_BROAD_ACCOUNT = "shop-reports"  # roles/editor on the project and a static key: what the audit must flag
DEMO_RETIRED_ACCOUNT = "shop-retired"  # disabled


@dataclass(frozen=True)
class GcpDemoSeed:
    """What seed_demo() made."""

    project: str
    project_number: str
    location: str
    cluster: str
    cluster_issuer: str
    cluster_off: str
    service_accounts: Mapping[str, str]  # account id -> email
    broad_account: str
    retired_account: str
    deployer: str


def seed_demo(sandbox: GcpSandbox) -> GcpDemoSeed:
    """Create (or find) the demo's clusters and accounts in the sandbox's project; safe to run twice."""
    sandbox.add_cluster(DEMO_LOCATION, DEMO_CLUSTER, workload_identity=True, metadata_modes=("GKE_METADATA",))
    sandbox.add_cluster(DEMO_LOCATION, DEMO_CLUSTER_OFF, workload_identity=False, metadata_modes=("GCE_METADATA",))
    emails = {name: sandbox.add_service_account(name, display_name=f"keyless demo: {name}")
              for name in DEMO_ACCOUNTS}
    broad = emails[DEMO_BROAD_ACCOUNT]
    member = f"serviceAccount:{broad}"
    if "roles/editor" not in sandbox.project_roles(member):
        sandbox.grant_project_role("roles/editor", member)
    if not sandbox.user_managed_keys(broad):
        sandbox.add_user_managed_key(broad)
    retired = sandbox.add_service_account(DEMO_RETIRED_ACCOUNT, disabled=True, display_name="keyless demo: retired")
    return GcpDemoSeed(
        project=sandbox.project, project_number=sandbox.project_number, location=DEMO_LOCATION,
        cluster=DEMO_CLUSTER, cluster_issuer=sandbox.cluster_issuer(DEMO_LOCATION, DEMO_CLUSTER),
        cluster_off=DEMO_CLUSTER_OFF, service_accounts=MappingProxyType(emails), broad_account=broad,
        retired_account=retired, deployer=sandbox.deployer_email,
    )
