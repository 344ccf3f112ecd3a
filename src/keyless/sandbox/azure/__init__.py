"""The local Azure sandbox: ARM and Entra ID stand-ins over HTTPS with a local CA, reached by the real Azure SDKs."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

import certifi
import trustme

from keyless.sandbox.azure.arm import MSI_WRITES, ArmStandIn, is_arm_action
from keyless.sandbox.azure.demo import (
    DEMO_CLUSTER,
    DEMO_CLUSTER_OFF,
    DEMO_LOCATION,
    DEMO_RESOURCE_GROUP,
    DEPLOYER_IDENTITY,
    AzureDemoSeed,
    DemoIdentity,
    assignment_name,
    seed_demo,
)
from keyless.sandbox.azure.entra import ARM_AUDIENCES, EntraStandIn
from keyless.sandbox.azure.limits import REAL_WRITE_LIMITS, RateLimit, WriteLimits
from keyless.sandbox.azure.oidc import AKS_ISSUER_HOST_SUFFIX, sni_server_context
from keyless.sandbox.azure.rbac import RoleAssignments
from keyless.sandbox.azure.roles import MANAGED_IDENTITY_CONTRIBUTOR, READER
from keyless.sandbox.azure.state import (
    MAX_FEDERATED_CREDENTIALS,
    TOKEN_EXCHANGE_AUDIENCE,
    ArmError,
    AzureState,
    Identity,
    ManagedCluster,
)
from keyless.sandbox.knobs import Knobs, KnobSettings, TimeScale
from keyless.sandbox.kube.tokens import ServiceAccountIssuer
from keyless.sandbox.servers import BackgroundServers

if TYPE_CHECKING:
    from azure.identity import WorkloadIdentityCredential

__all__ = [
    "AKS_ISSUER_HOST_SUFFIX",
    "DEMO_CLUSTER",
    "DEMO_CLUSTER_OFF",
    "DEMO_LOCATION",
    "DEMO_RESOURCE_GROUP",
    "DEPLOYER_IDENTITY",
    "MAX_FEDERATED_CREDENTIALS",
    "REAL_WRITE_LIMITS",
    "SANDBOX_SUBSCRIPTION_ID",
    "SANDBOX_TENANT_ID",
    "TOKEN_EXCHANGE_AUDIENCE",
    "AzureDemoSeed",
    "AzureSandbox",
    "DemoIdentity",
    "ManagedCluster",
    "RateLimit",
    "WriteLimits",
]

SANDBOX_TENANT_ID = "7d1f3c2a-5b6e-4f80-9a1b-2c3d4e5f6a7b"
SANDBOX_SUBSCRIPTION_ID = "3b8e9d41-2f6a-4c7e-8d5b-1a9c0e7f4d23"
DEPLOYER_CREDENTIAL = "keyless-deployer-sandbox"
DEPLOYER_NAMESPACE = "keyless-system"
DEPLOYER_SERVICE_ACCOUNT = "keyless-deployer"
_DEPLOYER_ISSUER_PATH = "keyless-sandbox/deployer-issuer/"
_DEPLOYER_UID = uuid.UUID("3f2d8c1e-6a4b-4e9f-8b7a-1c0d2e3f4a5b")


class AzureSandbox:
    """Starts and stops the Azure half of the sandbox: ARM and the Entra ID authority, HTTPS on loopback.

    TLS: a local CA (trustme) signs a certificate for 127.0.0.1 and localhost; ``ca_bundle`` is its PEM.
    azure-core verifies through requests, which does NOT read the system store or SSL_CERT_FILE (it uses
    certifi's bundle). Two ways to trust the sandbox, both verified by the tests:

    * ``connection_verify=sandbox.ca_bundle`` on every mgmt client AND on the credential; it reaches the
      transport of both. This is enough on its own for explicit credentials (``WorkloadIdentityCredential``,
      ``DefaultAzureCredential(connection_verify=...)`` passes it on too).
    * ``REQUESTS_CA_BUNDLE``: requests uses it whenever ``connection_verify`` is left at True, for the
      clients and the credential alike. ``env()`` sets it to ``trust_bundle`` (certifi's roots plus the sandbox
      CA), so a CLI that only honours the environment still reaches public endpoints as well.
    SSL_CERT_FILE does not help: requests ignores it (a test pins this down).

    ``env()`` is DefaultAzureCredential's workload identity path for the bootstrap "keyless-deployer"
    identity: a federated token file that the sandbox signs with its own issuer key, writes and refreshes,
    and a federated credential on the deployer trusting that issuer. It works offline.

    Usable from pytest and from a long-running process: the servers run on their own asyncio thread.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        arm_port: int = 0,
        authority_port: int = 0,
        state_dir: str | os.PathLike[str] | None = None,
        tenant_id: str = SANDBOX_TENANT_ID,
        subscription_id: str = SANDBOX_SUBSCRIPTION_ID,
        propagation_delay: float = 1.0,
        write_hold: float = 0.3,
        write_limits: WriteLimits | None = None,
        token_lifetime: int = 3600,
        deployer_token_lifetime: int = 3600,
        clock: Callable[[], float] = time.monotonic,
        ca: trustme.CA | None = None,
        knobs: KnobSettings | None = None,
        time_scale: TimeScale | None = None,
    ) -> None:
        """``ca`` signs the HTTPS certificate; give the one other stand-ins use so that one bundle trusts them all.

        ``knobs`` shape every call of ARM and of the token endpoint; ``time_scale`` (shared with the other stand-ins
        by the stack) runs the sandbox's time faster than ``clock``."""
        self.clock = clock  # propagation delays, write holds and write limits are measured on it (scaled)
        self.time = time_scale or TimeScale(clock=clock)
        self.host = host
        self._ports = (arm_port, authority_port)
        self._given_state_dir = Path(state_dir) if state_dir is not None else None
        self._state = AzureState(tenant_id, subscription_id, propagation_delay=propagation_delay,
                                 write_hold=write_hold, clock=self.time.now)
        self._rbac = RoleAssignments(self._state)
        settings = knobs or KnobSettings()
        if write_limits is not None:
            settings = replace(settings, rate_limits=write_limits.apply_to(settings.rate_limits))
        self.arm_knobs = Knobs("arm", self.time, settings, check_action=is_arm_action,
                               action_form="ARM actions (Namespace/type/.../read|write|delete)")
        self.entra_knobs = Knobs("entra", self.time, knobs)
        # Credential writes reach the token plane as the token endpoint's `entra-credential` propagation knob says.
        self._state.settling = lambda key: self.entra_knobs.settings.settling("entra-credential", key)
        self._entra = EntraStandIn(self._state, token_lifetime=token_lifetime, knobs=self.entra_knobs)
        self._arm = ArmStandIn(self._state, self._entra, self._rbac, self.arm_knobs)
        self._deployer_token_lifetime = deployer_token_lifetime
        self._deployer_issuer: ServiceAccountIssuer | None = None
        self._deployer_client_id = ""
        self._state_dir: Path | None = None
        self._temporary_dir = False
        self._ca: trustme.CA | None = ca
        self._servers = BackgroundServers("keyless-azure-sandbox", host)
        self._refresh: asyncio.TimerHandle | None = None
        self._lock = threading.Lock()

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> AzureSandbox:
        with self._lock:
            if self._servers.running:
                return self
            try:
                self._prepare_files()
                self._servers.start([(self._arm.app(), self._ports[0]), (self._entra.app(), self._ports[1])],
                                    ssl_context=self._server_context())
                self._arm.url = self.arm_url
                self._entra.arm_url = self.arm_url
                self._entra.authority_url = self.authority_url
                self._bootstrap()
                assert self._servers.loop is not None
                self._servers.loop.call_soon_threadsafe(self._schedule_refresh)
            except BaseException:
                self._shutdown()
                raise
        return self

    def _prepare_files(self) -> None:
        if self._given_state_dir is not None:
            self._given_state_dir.mkdir(parents=True, exist_ok=True)
            self._state_dir, self._temporary_dir = self._given_state_dir, False
        else:
            self._state_dir, self._temporary_dir = Path(tempfile.mkdtemp(prefix="keyless-azure-")), True
        self._ca = self._ca or trustme.CA(organization_name="keyless sandbox")
        self._ca.cert_pem.write_to_path(str(self.ca_bundle))
        # A bundle for REQUESTS_CA_BUNDLE must keep the public roots, or everything else the process reaches breaks.
        self.trust_bundle.write_bytes(Path(certifi.where()).read_bytes() + b"\n" + self._ca.cert_pem.bytes())

    def _server_context(self) -> ssl.SSLContext:
        assert self._ca is not None
        # Entra fetches issuers over HTTPS; so that it trusts the ones this sandbox hosts, it trusts the sandbox CA.
        self._entra.fetcher.trust(self._ca.cert_pem.bytes().decode())
        return sni_server_context(self._ca, self._entra.issuers)

    def _bootstrap(self) -> None:
        """The deployer identity exists before anyone calls the sandbox, as a CI identity would in a real tenant."""
        issuer_url = f"{self.authority_url}{_DEPLOYER_ISSUER_PATH}"
        key_file = self.state_dir / "deployer-issuer-key.pem"
        self._deployer_issuer = ServiceAccountIssuer.load_or_create(issuer_url, key_file)
        self._entra.issuers.publish(issuer_url, self._deployer_issuer.jwks)
        state, sub = self._state, self._state.subscription_id
        state.put_resource_group(sub, DEMO_RESOURCE_GROUP, DEMO_LOCATION, {"keyless:sandbox": "demo"})
        deployer, _ = state.put_identity(sub, DEMO_RESOURCE_GROUP, DEPLOYER_IDENTITY, DEMO_LOCATION,
                                         {"keyless:sandbox": "deployer"})
        key = (DEMO_RESOURCE_GROUP.lower(), DEPLOYER_IDENTITY.lower())
        state.put_credential(key, DEPLOYER_CREDENTIAL, {
            "issuer": issuer_url,
            "subject": f"system:serviceaccount:{DEPLOYER_NAMESPACE}:{DEPLOYER_SERVICE_ACCOUNT}",
            "audiences": [TOKEN_EXCHANGE_AUDIENCE],
        })
        state.make_propagated(deployer.client_id)
        self._deployer_client_id = deployer.client_id
        group_scope = f"/subscriptions/{sub}/resourceGroups/{DEMO_RESOURCE_GROUP}"
        for scope, role in ((group_scope, MANAGED_IDENTITY_CONTRIBUTOR), (f"/subscriptions/{sub}", READER)):
            self._ensure_assignment_direct(scope, role, deployer.principal_id)
        self.refresh_deployer_token()

    def _ensure_assignment_direct(self, scope: str, role: str, principal_id: str) -> None:
        try:
            self._rbac.put_role_assignment(scope, assignment_name(scope, role, principal_id), {
                "roleDefinitionId": f"/providers/Microsoft.Authorization/roleDefinitions/{role}",
                "principalId": principal_id, "principalType": "ServicePrincipal",
            })
        except ArmError as error:
            if error.code != "RoleAssignmentExists":
                raise

    def _schedule_refresh(self) -> None:
        # Like the kubelet, rewrite the projected token well before it expires (azure-identity rereads every 10 min).
        assert self._servers.loop is not None
        self._refresh = self._servers.loop.call_later(max(60.0, self._deployer_token_lifetime / 2), self._refresh_tick)

    def _refresh_tick(self) -> None:
        try:
            self.refresh_deployer_token()
        finally:
            self._schedule_refresh()

    def _cancel_refresh(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None

    def stop(self) -> None:
        with self._lock:
            self._shutdown()

    def _shutdown(self) -> None:
        self._servers.stop(before=self._cancel_refresh)
        if self._temporary_dir and self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None

    def __enter__(self) -> AzureSandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._servers.running

    # ---- where things are --------------------------------------------------------------------------

    @property
    def arm_url(self) -> str:
        """The ARM endpoint (base_url of the mgmt clients; `armEndpoint` of a target)."""
        return f"https://{self.host}:{self._servers.port(0)}"

    @property
    def authority_url(self) -> str:
        """The Entra ID authority host (AZURE_AUTHORITY_HOST), with its trailing slash."""
        return f"https://{self.host}:{self._servers.port(1)}/"

    @property
    def tenant_id(self) -> str:
        return self._state.tenant_id

    @property
    def subscription_id(self) -> str:
        return self._state.subscription_id

    @property
    def credential_scope(self) -> str:
        """The token scope the mgmt clients ask for by default, which this ARM accepts."""
        return f"{ARM_AUDIENCES[0]}/.default"

    @property
    def state_dir(self) -> Path:
        if self._state_dir is None:
            raise RuntimeError("the Azure sandbox is not started")
        return self._state_dir

    @property
    def ca_bundle(self) -> Path:
        """PEM of the sandbox CA alone: pass it as `connection_verify=` (or `caBundle` in a target)."""
        return self.state_dir / "azure-sandbox-ca.pem"

    @property
    def trust_bundle(self) -> Path:
        """certifi's public roots plus the sandbox CA: what REQUESTS_CA_BUNDLE is set to in env()."""
        return self.state_dir / "azure-trust-bundle.pem"

    @property
    def deployer_token_file(self) -> Path:
        return self.state_dir / "deployer-federated-token"

    @property
    def deployer_client_id(self) -> str:
        if not self._deployer_client_id:
            raise RuntimeError("the Azure sandbox is not started")
        return self._deployer_client_id

    @property
    def deployer_issuer_url(self) -> str:
        if self._deployer_issuer is None:
            raise RuntimeError("the Azure sandbox is not started")
        return self._deployer_issuer.issuer_url

    def env(self) -> dict[str, str]:
        """What DefaultAzureCredential (workload identity path) and azure-core need to use this sandbox offline."""
        self.refresh_deployer_token()
        return {
            "AZURE_CLIENT_ID": self.deployer_client_id,
            "AZURE_TENANT_ID": self.tenant_id,
            "AZURE_FEDERATED_TOKEN_FILE": str(self.deployer_token_file),
            "AZURE_AUTHORITY_HOST": self.authority_url,
            "AZURE_SUBSCRIPTION_ID": self.subscription_id,
            "REQUESTS_CA_BUNDLE": str(self.trust_bundle),
        }

    def ca_env(self) -> dict[str, str]:
        """Only the CA trust, for processes (pods) whose AZURE_* variables come from the workload identity webhook."""
        return {"REQUESTS_CA_BUNDLE": str(self.trust_bundle)}

    def refresh_deployer_token(self) -> None:
        """Write a fresh federated token for the deployer, atomically so that a reader never sees half of one."""
        if self._deployer_issuer is None:
            raise RuntimeError("the Azure sandbox is not started")
        token = self._deployer_issuer.mint(
            namespace=DEPLOYER_NAMESPACE, service_account=DEPLOYER_SERVICE_ACCOUNT,
            service_account_uid=str(_DEPLOYER_UID),
            audiences=[TOKEN_EXCHANGE_AUDIENCE], expiration_seconds=self._deployer_token_lifetime,
        )
        partial = self.deployer_token_file.with_suffix(".tmp")
        partial.write_text(token)
        os.replace(partial, self.deployer_token_file)

    def deployer_credential(self) -> WorkloadIdentityCredential:
        """azure-identity's WorkloadIdentityCredential for the deployer, trusting the sandbox CA."""
        from azure.identity import WorkloadIdentityCredential

        return WorkloadIdentityCredential(
            tenant_id=self.tenant_id, client_id=self.deployer_client_id,
            token_file_path=str(self.deployer_token_file), authority=self.authority_url,
            connection_verify=str(self.ca_bundle),
        )

    # ---- hooks for the stack and tests ----------------------------------------------------------------

    def publish_issuer(self, issuer_url: str, jwks: Mapping[str, Any] | Callable[[], Mapping[str, Any]]) -> None:
        """Host an OIDC issuer's discovery document and keys at its own URL, as Azure hosts AKS clusters' issuers.

        Entra fetches them over HTTPS when a token of that issuer is exchanged. The issuer's host name (any name:
        `eastus.oic.prod-aks.azure.com`, `oidc.example.test`) resolves to this sandbox for Entra, with a
        certificate from the sandbox CA. `jwks` may be a function, read at each fetch (a cluster's keys)."""
        keys = jwks
        self._entra.issuers.publish(issuer_url, keys if callable(keys) else (lambda: keys))

    def withdraw_issuer(self, issuer_url: str) -> None:
        """Stop serving an issuer: Entra's next fetch fails (AADSTS90061), as for an issuer gone offline."""
        self._entra.issuers.withdraw(issuer_url)
        self._entra.fetcher.forget()

    def trust_issuer_ca(self, ca_pem: str) -> None:
        """Let Entra fetch issuers served with this CA's certificates (e.g. a Kubernetes stand-in's own)."""
        self._entra.fetcher.trust(ca_pem)

    def add_cluster(
        self,
        name: str,
        *,
        issuer_url: str | None,
        resource_group: str = DEMO_RESOURCE_GROUP,
        oidc_issuer_enabled: bool | None = None,
        workload_identity_enabled: bool | None = None,
        location: str = DEMO_LOCATION,
    ) -> ManagedCluster:
        """Create or replace a managed cluster directly (no ARM rules); the issuer is kept byte for byte."""
        oidc = issuer_url is not None if oidc_issuer_enabled is None else oidc_issuer_enabled
        cluster = ManagedCluster(
            self.subscription_id, self._state.resource_group(self.subscription_id, resource_group).name, name,
            location, oidc_issuer_enabled=oidc, issuer_url=issuer_url if oidc else None,
            workload_identity_enabled=oidc if workload_identity_enabled is None else workload_identity_enabled,
            extra=MappingProxyType({"dnsPrefix": f"{name}-dns"}),
        )
        self._state.set_cluster(cluster)
        return cluster

    def set_cluster(self, cluster: ManagedCluster) -> None:
        """Replace a cluster as is (e.g. ``dataclasses.replace(sandbox.cluster(...), issuer_url=...)``)."""
        self._state.set_cluster(cluster)

    def cluster(self, name: str, resource_group: str = DEMO_RESOURCE_GROUP) -> ManagedCluster:
        return self._state.cluster(self.subscription_id, resource_group, name)

    def identity(self, name: str, resource_group: str = DEMO_RESOURCE_GROUP) -> Identity:
        return self._state.identity(self.subscription_id, resource_group, name)

    def add_principal(self, object_id: str, principal_type: str = "User") -> None:
        """A user, group or app that role assignments may name (managed identities are known already)."""
        self._state.add_principal(object_id, principal_type)

    # ---- faults and knobs -------------------------------------------------------------------------------

    def throttle_next(self, count: int, retry_after: float = 1.0) -> None:
        """The next `count` managed-identity writes answer 429 TooManyRequests with this Retry-After (seconds)."""
        self.arm_knobs.throttle_next(count, retry_after=retry_after, match=MSI_WRITES)

    def deny(self, *actions: str) -> None:
        """Refuse these Azure RBAC actions (`Microsoft.Authorization/roleAssignments/read`, ...) with 403
        AuthorizationFailed, as ARM does for a caller without a role that grants them; none allows all again."""
        self.arm_knobs.deny(actions)

    def fail_next(self, action: str, count: int = 1, status: int = 500) -> None:
        """The next `count` requests needing `action` answer this 5xx status."""
        if not is_arm_action(action) or not 500 <= status <= 599:
            raise ValueError("fail_next takes an ARM action, a count >= 0 and a 5xx status")
        self.arm_knobs.fail_next(count, status=status, match=(action,))

    @property
    def arm_requests(self) -> list[tuple[str, str, str]]:
        """(method, path, action) of every ARM request so far, in order: count the calls keyless makes."""
        return [(c.method, c.path, c.action) for c in self.arm_knobs.history()]

    def reset_faults(self) -> None:
        self.arm_knobs.reset_faults()
        self.entra_knobs.reset_faults()

    @property
    def propagation_delay(self) -> float:
        """Seconds before a credential write reaches the token endpoint (new ones fail with AADSTS70021 until then)."""
        return self._state.propagation_delay

    @propagation_delay.setter
    def propagation_delay(self, seconds: float) -> None:
        self._state.propagation_delay = seconds

    @property
    def write_hold(self) -> float:
        """Seconds a credential write holds its identity; concurrent writes to it meanwhile get 409."""
        return self._state.write_hold

    @write_hold.setter
    def write_hold(self, seconds: float) -> None:
        self._state.write_hold = seconds

    @property
    def write_limits(self) -> WriteLimits:
        """Token buckets on managed-identity writes (none by default; REAL_WRITE_LIMITS are Azure's)."""
        return WriteLimits.of(self.arm_knobs.settings.rate_limits)

    @write_limits.setter
    def write_limits(self, limits: WriteLimits) -> None:
        settings = self.arm_knobs.settings
        self.arm_knobs.configure(replace(settings, rate_limits=limits.apply_to(settings.rate_limits)))

    # ---- the demo -----------------------------------------------------------------------------------------

    def seed_demo(self) -> AzureDemoSeed:
        """Create the demo's resource group, clusters, storage account, identities and roles through ARM (idempotent).

        Runs the real mgmt clients as the deployer. AKS assigns the cluster's issuer URL (`cluster_issuer_url`
        in the answer); whoever plays the cluster signs its tokens as that issuer and publishes its keys
        (`publish_issuer`), as AKS does.
        """
        return seed_demo(self.deployer_credential(), arm_url=self.arm_url, ca_bundle=str(self.ca_bundle),
                         tenant_id=self.tenant_id, subscription_id=self.subscription_id)
