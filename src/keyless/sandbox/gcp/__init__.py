"""The local GCP sandbox: IAM, GKE, Resource Manager, STS and IAM Credentials over HTTPS, and a GKE metadata server."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import certifi
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keyless.sandbox.gcp.api import API_PREFIXES, STATUS_NAMES, GcpApiStandIn
from keyless.sandbox.gcp.demo import (
    DEMO_CLUSTER,
    DEMO_CLUSTER_OFF,
    DEMO_LOCATION,
    DEMO_PROJECT,
    DEMO_PROJECT_NUMBER,
    DEPLOYER_ACCOUNT,
    GcpDemoSeed,
    seed_demo,
)
from keyless.sandbox.gcp.metadata import GSA_ANNOTATION, MetadataServer, PodLookup
from keyless.sandbox.gcp.oauth import AccessTokens
from keyless.sandbox.gcp.state import PERMISSIONS, Cluster, GcpState, ServiceAccountKey, workload_pool
from keyless.sandbox.gcp.sts import IssuerKeys
from keyless.sandbox.knobs import Knobs, KnobSettings, TimeScale
from keyless.sandbox.servers import BackgroundServers

__all__ = [
    "DEMO_CLUSTER",
    "DEMO_CLUSTER_OFF",
    "DEMO_LOCATION",
    "DEMO_PROJECT",
    "DEMO_PROJECT_NUMBER",
    "GSA_ANNOTATION",
    "GcpDemoSeed",
    "GcpSandbox",
    "IssuerKeys",
    "PodLookup",
]

_NEVER = "9999-12-31T23:59:59Z"  # validBeforeTime of a user-managed key without expiry


def _new_key() -> tuple[rsa.RSAPrivateKey, str]:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048), secrets.token_hex(20)


def _pem(key: rsa.RSAPrivateKey) -> tuple[str, str]:
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


class GcpSandbox:
    """Starts and stops the GCP half of the sandbox: one HTTPS port for the APIs, one plain port for metadata.

    The APIs share one port and are told apart by a path prefix (``/iam/``, ``/container/``, ``/crm/``,
    ``/sts/``, ``/iamcredentials/``); ``env()`` gives them as gcloud's endpoint overrides, with a real
    service-account key file for the deployer whose ``token_uri`` is this sandbox's ``/token``, so that
    ``google.auth.default()`` works unchanged. TLS comes from a local CA (``ca_bundle``); ``trust_bundle``
    (certifi's roots plus that CA) is what REQUESTS_CA_BUNDLE is set to.

    Delays (IAM propagation) are measured on the injected ``clock``; token expiry on the wall clock, as
    Google states it. Usable from pytest and from a long-running process: the servers run on their own thread.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        state_dir: str | os.PathLike[str] | None = None,
        project: str = DEMO_PROJECT,
        project_number: str = DEMO_PROJECT_NUMBER,
        propagation_delay: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        ca: trustme.CA | None = None,
        knobs: KnobSettings | None = None,
        time_scale: TimeScale | None = None,
    ) -> None:
        """``knobs`` shape every call of the HTTPS port; ``time_scale`` (shared with the other stand-ins by the stack)
        runs the sandbox's time faster than ``clock``."""
        self.host = host
        self.clock = clock
        self.time = time_scale or TimeScale(clock=clock)
        self.project = project
        self.project_number = project_number
        self._given_state_dir = Path(state_dir) if state_dir is not None else None
        self._state = GcpState(propagation_delay=propagation_delay, clock=self.time.now)
        self._state.add_project(project, project_number, "keyless sandbox")
        self.deployer_email = f"{DEPLOYER_ACCOUNT}@{project}.iam.gserviceaccount.com"
        self._tokens = AccessTokens()
        self.knobs = Knobs("gcp", self.time, knobs, check_action=PERMISSIONS.__contains__,
                           action_form=f"permissions the sandbox checks ({', '.join(sorted(PERMISSIONS))})")
        self._api = GcpApiStandIn(self._state, self._tokens, self.knobs, project_id=project,
                                  deployer_email=self.deployer_email)
        self._metadata = MetadataServer(self._state, self._tokens, project)
        self._ca = ca
        self._state_dir: Path | None = None
        self._temporary_dir = False
        self._servers = BackgroundServers("keyless-gcp-sandbox", host)
        self._lock = threading.Lock()

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> GcpSandbox:
        with self._lock:
            if self._servers.running:
                return self
            try:
                self._prepare_files()
                self._servers.start([(self._api.app(), 0)], ssl_context=self._server_context(),
                                    plain_apps=[(self._metadata.app(), 0)])
                self._api.url = self.api_url
                self._bootstrap()
            except BaseException:
                self._shutdown()
                raise
        return self

    def stop(self) -> None:
        with self._lock:
            self._shutdown()

    def _shutdown(self) -> None:
        self._servers.stop()
        if self._temporary_dir and self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None

    def __enter__(self) -> GcpSandbox:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._servers.running

    def _prepare_files(self) -> None:
        if self._given_state_dir is not None:
            self._given_state_dir.mkdir(parents=True, exist_ok=True)
            self._state_dir, self._temporary_dir = self._given_state_dir, False
        else:
            self._state_dir, self._temporary_dir = Path(tempfile.mkdtemp(prefix="keyless-gcp-")), True
        self._ca = self._ca or trustme.CA(organization_name="keyless sandbox")
        self._ca.cert_pem.write_to_path(str(self.ca_bundle))
        # A bundle for REQUESTS_CA_BUNDLE must keep the public roots, or everything else the process reaches breaks.
        self.trust_bundle.write_bytes(Path(certifi.where()).read_bytes() + b"\n" + self._ca.cert_pem.bytes())

    def _server_context(self) -> ssl.SSLContext:
        assert self._ca is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1", "localhost", "::1").configure_cert(context)
        return context

    def _bootstrap(self) -> None:
        """The deployer exists, with a key, before anyone calls the sandbox (as a CI identity would in a project).

        The key is kept in the state directory, so that a restarted sandbox still accepts an exported key file.
        """
        account = self._state.add_service_account(self.project, DEPLOYER_ACCOUNT, display_name="keyless deployer")
        key: rsa.RSAPrivateKey | None = None
        key_id = ""
        if self.key_file.exists():
            kept = json.loads(self.key_file.read_text())
            if kept.get("client_email") == self.deployer_email:
                loaded = serialization.load_pem_private_key(kept["private_key"].encode(), password=None)
                if isinstance(loaded, rsa.RSAPrivateKey):
                    key, key_id = loaded, str(kept["private_key_id"])
        if key is None:
            key, key_id = _new_key()
        if not any(k.key_id == key_id for k in account.keys):
            self._state.add_key(self.deployer_email, ServiceAccountKey(key_id, "USER_MANAGED", time.time(), _NEVER,
                                                                       _pem(key)[1]))
        info = self._key_info(self.deployer_email, key, key_id)
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(info, handle, indent=2)
        # What the deployer can do comes from deny()/allow(); these bindings say what a real one would need.
        for role in ("roles/iam.serviceAccountAdmin", "roles/container.clusterViewer", "roles/iam.securityReviewer",
                     "roles/browser"):
            self._state.add_member(f"projects/{self.project}", role, f"serviceAccount:{self.deployer_email}")

    def _key_info(self, email: str, key: rsa.RSAPrivateKey, key_id: str) -> dict[str, str]:
        account = self._state.service_account(email)
        quoted = email.replace("@", "%40")
        return {
            "type": "service_account",
            "project_id": account.project_id,
            "private_key_id": key_id,
            "private_key": _pem(key)[0],
            "client_email": email,
            "client_id": account.unique_id,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self._api.token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{quoted}",
            "universe_domain": "googleapis.com",
        }

    # ---- where things are --------------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        if self._state_dir is None:
            raise RuntimeError("the GCP sandbox is not started")
        return self._state_dir

    @property
    def api_url(self) -> str:
        """The root of the HTTPS port, with its trailing slash; each API is a prefix below it."""
        return f"https://{self.host}:{self._servers.port(0)}/"

    @property
    def metadata_url(self) -> str:
        return f"http://{self.host}:{self._servers.port(1)}"

    @property
    def token_uri(self) -> str:
        return self._api.token_uri

    @property
    def ca_bundle(self) -> Path:
        """PEM of the CA that signs the HTTPS certificate (127.0.0.1, localhost)."""
        return self.state_dir / "gcp-sandbox-ca.pem"

    @property
    def trust_bundle(self) -> Path:
        """certifi's public roots plus the sandbox CA: what REQUESTS_CA_BUNDLE is set to."""
        return self.state_dir / "gcp-trust-bundle.pem"

    @property
    def key_file(self) -> Path:
        """The deployer's service-account key file (GOOGLE_APPLICATION_CREDENTIALS)."""
        return self.state_dir / "gcp-deployer-key.json"

    def _overrides(self) -> dict[str, str]:
        return {f"CLOUDSDK_API_ENDPOINT_OVERRIDES_{name}": f"{self.api_url}{prefix}/"
                for name, prefix in API_PREFIXES.items()}

    def env(self) -> dict[str, str]:
        """What keyless (the deployer) needs: gcloud's endpoint overrides, the key file, the CA, the project."""
        return {**self._overrides(), "GOOGLE_APPLICATION_CREDENTIALS": str(self.key_file),
                "REQUESTS_CA_BUNDLE": str(self.trust_bundle), "GOOGLE_CLOUD_PROJECT": self.project}

    def pod_env(self) -> dict[str, str]:
        """What a pod's SDK needs to stay inside the sandbox: endpoints and the CA, never credentials.

        The metadata server's address is per pod (GCE_METADATA_HOST), set at admission by gke_metadata_mutator.
        """
        return {**self._overrides(), "REQUESTS_CA_BUNDLE": str(self.trust_bundle)}

    def metadata_host(self, namespace: str, pod: str) -> str:
        """GCE_METADATA_HOST (and GCE_METADATA_IP) of one pod: host, port and the pod in the path."""
        return f"{self.host}:{self._servers.port(1)}/pods/{namespace}/{pod}"

    def metadata_host_for(self, location: str, name: str) -> Callable[[str, str], str | None]:
        """For gke_metadata_mutator: the pod's metadata host while the cluster's pools run GKE_METADATA, else None."""
        def host(namespace: str, pod: str) -> str | None:
            cluster = self._state.find_cluster(self.project, location, name)
            return self.metadata_host(namespace, pod) if cluster is not None and cluster.runs_gke_metadata else None
        return host

    # ---- clusters and the Kubernetes side -------------------------------------------------------------

    def add_cluster(self, location: str, name: str, *, workload_identity: bool = True,
                    metadata_modes: Sequence[str] | None = None) -> Cluster:
        """A GKE cluster (replacing one of that name); one node pool per mode, the first is `default-pool`.

        Without `metadata_modes`, the pools run GKE_METADATA when Workload Identity is on, else GCE_METADATA.
        """
        modes = metadata_modes or (("GKE_METADATA",) if workload_identity else ("GCE_METADATA",))
        return self._state.put_cluster(self.project, location, name, workload_identity=workload_identity,
                                       metadata_modes=tuple(modes))

    def cluster(self, location: str, name: str) -> Cluster:
        found = self._state.find_cluster(self.project, location, name)
        if found is None:
            raise KeyError(f"no cluster {location}/{name} in the GCP sandbox")
        return found

    def set_workload_identity(self, location: str, name: str, on: bool) -> None:
        """Turn the workload pool on or off; off also moves the pools to GCE_METADATA, as GKE requires."""
        cluster = self.cluster(location, name)
        pools = cluster.node_pools if on else tuple(replace(p, metadata_mode="GCE_METADATA")
                                                     for p in cluster.node_pools)
        self._state.replace_cluster(replace(cluster, workload_identity=on, node_pools=pools))

    def set_node_pool_mode(self, location: str, name: str, mode: str, *, pool: str = "default-pool") -> None:
        cluster = self.cluster(location, name)
        if mode == "GKE_METADATA" and not cluster.workload_identity:
            raise ValueError("GKE_METADATA node pools need Workload Identity on the cluster")
        if mode not in ("GKE_METADATA", "GCE_METADATA") or pool not in {p.name for p in cluster.node_pools}:
            raise ValueError(f"no node pool {pool!r}, or not a metadata mode: {mode!r}")
        pools = tuple(replace(p, metadata_mode=mode) if p.name == pool else p for p in cluster.node_pools)
        self._state.replace_cluster(replace(cluster, node_pools=pools))

    def cluster_issuer(self, location: str, name: str) -> str:
        """GKE's issuer of the cluster's service-account tokens (the Kubernetes stand-in is started with it)."""
        return f"https://container.googleapis.com/v1/projects/{self.project}/locations/{location}/clusters/{name}"

    @property
    def workload_pool(self) -> str:
        return workload_pool(self.project)

    def set_issuer_keys(self, lookup: IssuerKeys | None) -> None:
        """How STS finds an issuer's JWKS (the stack asks the cluster's Kubernetes stand-in)."""
        self._api.issuer_keys = lookup

    def set_pod_lookup(self, lookup: PodLookup | None) -> None:
        """How the metadata server learns a pod's cluster, Kubernetes service account and its annotations."""
        self._metadata.pod_lookup = lookup

    # ---- service accounts and policies ------------------------------------------------------------------

    def add_project(self, project: str, number: str, display_name: str = "") -> None:
        """Another project (a Google service account may live in a project other than the cluster's)."""
        self._state.add_project(project, number, display_name or project)

    def add_service_account(self, account_id: str, *, project: str | None = None, disabled: bool = False,
                            display_name: str = "") -> str:
        """Create (or update) a Google service account; answers its email."""
        return self._state.add_service_account(project or self.project, account_id, display_name=display_name,
                                               disabled=disabled).email

    def set_disabled(self, email: str, disabled: bool = True) -> None:
        self._state.set_disabled(email, disabled)

    def add_user_managed_key(self, email: str) -> dict[str, str]:
        """A static key on the account (what the audit flags); answers its key file, which the token endpoint takes."""
        key, key_id = _new_key()
        self._state.add_key(email, ServiceAccountKey(key_id, "USER_MANAGED", time.time(), _NEVER, _pem(key)[1]))
        return self._key_info(email, key, key_id)

    def user_managed_keys(self, email: str) -> list[str]:
        return [k.key_id for k in self._state.service_account(email).keys if k.key_type == "USER_MANAGED"]

    def iam_policy(self, email: str) -> dict[str, Any]:
        """The service account's IAM policy, read without a call (and without counting one)."""
        return self._state.get_policy(self._state.service_account(email).resource)

    def project_policy(self) -> dict[str, Any]:
        return self._state.get_policy(f"projects/{self.project}")

    def add_member(self, email: str, role: str, member: str) -> None:
        """An outside writer adds a member to the account's policy: the etag moves, propagation starts now."""
        self._state.add_member(self._state.service_account(email).resource, role, member)

    def grant_project_role(self, role: str, member: str) -> None:
        self._state.add_member(f"projects/{self.project}", role, member)

    def project_roles(self, member: str) -> set[str]:
        return self._state.project_roles(self.project, member)

    # ---- faults, knobs and counters ---------------------------------------------------------------------

    def fail_next(self, status: int, count: int = 1, path_contains: str = "", *,
                  retry_after: float | None = None) -> None:
        """The next `count` API requests whose path contains `path_contains` answer `status` with Google's body
        (429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, ...); a 429 may carry Retry-After (seconds)."""
        if status not in STATUS_NAMES or count < 0:
            raise ValueError(f"fail_next takes a status among {sorted(STATUS_NAMES)} and a count >= 0")
        self.knobs.fail_next(count, status=status, match=(path_contains,) if path_contains else (),
                             retry_after=retry_after)

    def deny(self, *permissions: str) -> None:
        """Refuse these permissions (`iam.serviceAccounts.setIamPolicy`, ...) with 403 PERMISSION_DENIED; adds to
        those denied already."""
        denied = self.knobs.faults().denied
        self.knobs.deny([*denied, *permissions])

    def allow(self, *permissions: str) -> None:
        """Give denied permissions back; with none, all of them."""
        self.knobs.allow(permissions)

    def interleave(self, email: str, writer: Callable[[], object]) -> None:
        """Run `writer` just before the next setIamPolicy on that account is processed (so that write is stale)."""
        self._api.interleaved.add(email, writer)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path with its API prefix) of every request to the HTTPS port so far, in order."""
        return [(c.method, c.path) for c in self.knobs.history()]

    @property
    def blind_writes(self) -> int:
        """setIamPolicy calls without an etag: Google overwrites blindly; keyless must never send one."""
        return self._state.blind_writes

    def reset_faults(self) -> None:
        self.knobs.reset_faults()
        self._api.interleaved.clear()

    @property
    def propagation_delay(self) -> float:
        """Seconds (on `clock`) before a new (role, member) pair lets a principal mint tokens for an account."""
        return self._state.propagation_delay

    @propagation_delay.setter
    def propagation_delay(self, seconds: float) -> None:
        self._state.propagation_delay = seconds

    # ---- the demo ------------------------------------------------------------------------------------------

    def seed_demo(self) -> GcpDemoSeed:
        """The demo's clusters (`sandbox-gke` with Workload Identity, `sandbox-gke-off` without) and accounts."""
        return seed_demo(self)

