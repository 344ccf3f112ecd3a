"""The sandbox's Kubernetes cluster: a stand-in API server on a local port that real clients (lightkube) drive."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import logging
import os
import re
import shutil
import socket
import ssl
import tempfile
import threading
import urllib.parse
from collections.abc import Coroutine, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar

import aiohttp.web
import httpx
import trustme
from cryptography.hazmat.primitives.asymmetric import rsa
from ruamel.yaml import YAML

from keyless.sandbox.knobs import Knobs, KnobSettings, TimeScale
from keyless.sandbox.kube import rbac
from keyless.sandbox.kube.admission import (
    AZURE_AUDIENCE,
    AZURE_TOKEN_FILE,
    EKS_AUDIENCE,
    EKS_TOKEN_FILE,
    GKE_POD_NAME_VARIABLE,
    AzureWorkloadIdentityWebhook,
    EksPodIdentityWebhook,
    GkeMetadataRouting,
    Mutator,
    azure_workload_identity_mutator,
    eks_pod_identity_mutator,
    gke_metadata_mutator,
)
from keyless.sandbox.kube.api import KubeApiServer, is_kube_action, random_suffix
from keyless.sandbox.kube.controllers import Controllers
from keyless.sandbox.kube.merge import JsonDict
from keyless.sandbox.kube.schema import (
    CLUSTER_ROLE_BINDINGS,
    CLUSTER_ROLES,
    CONFIG_MAPS,
    NAMESPACES,
    PODS,
    ROLE_BINDINGS,
    SECRETS,
    StatusError,
)
from keyless.sandbox.kube.tokens import DEFAULT_EXPIRATION_SECONDS, ServiceAccountIssuer

__all__ = [
    "AZURE_AUDIENCE",
    "AZURE_TOKEN_FILE",
    "EKS_AUDIENCE",
    "EKS_TOKEN_FILE",
    "GKE_POD_NAME_VARIABLE",
    "AzureWorkloadIdentityWebhook",
    "EksPodIdentityWebhook",
    "GkeMetadataRouting",
    "KubeStandIn",
    "KubeStandInError",
    "Mutator",
    "azure_workload_identity_mutator",
    "eks_pod_identity_mutator",
    "gke_metadata_mutator",
]

T = TypeVar("T")
logger = logging.getLogger("keyless.sandbox.kube")
WorkloadKind = Literal["Deployment", "CronJob", "Job"]

SYSTEM_NAMESPACES: Final = ("default", "kube-system", "kube-public", "kube-node-lease")
SEED_MANAGER: Final = "porter"  # who creates the app's workloads in a real set-up
KEYLESS_NAMESPACE: Final = "keyless-system"  # where keyless's own service account lives
KEYLESS_ACCOUNT: Final = "keyless"
KEYLESS_TOKEN_SECONDS: Final = 365 * 24 * 3600  # `kubectl create token keyless --duration=8760h`
DEFAULT_IMAGE: Final = "registry.sandbox.local/porter/app:latest"
_HOST_ENV: Final = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TERM", "SYSTEMROOT")
_DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ENV_REFERENCE: Final = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class KubeStandInError(RuntimeError):
    """The stand-in cannot do what was asked (not started, no such pod, pod not running...)."""


class KubeStandIn:
    """One Kubernetes cluster of the sandbox, served over HTTP on 127.0.0.1 from a background thread.

    Works the same inside pytest and inside a long-running process: the API server runs its own
    asyncio loop on a daemon thread; every method here is synchronous and thread-safe.
    """

    def __init__(
        self,
        cluster_name: str = "sandbox",
        *,
        issuer_url: str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        mutators: Iterable[Mutator] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        pod_startup_seconds: float = 0.0,
        knobs: KnobSettings | None = None,
        time_scale: TimeScale | None = None,
    ) -> None:
        """``issuer_url`` is the service-account issuer, kept byte for byte (default: the API server URL).

        A ``{url}`` in it stands for the API server's URL, known once the port is bound, e.g.
        ``"{url}/oidc/prod/"``; discovery is then also served below that path.

        ``state_dir`` holds token files written for ``exec_env`` and the signing key, so that a
        restarted sandbox keeps its JWKS; without it a temporary directory is used and removed.

        ``knobs`` shape every request (latency, the `kube` rate limit, faults); ``time_scale`` (shared by the stack)
        divides the pods' start-up time and every other delay.
        """
        self.knobs = Knobs(f"kube-{cluster_name}", time_scale, knobs, check_action=is_kube_action,
                           action_form="Kubernetes verbs and resources (`patch deployments`)")
        self.cluster_name = cluster_name
        self._issuer_url = issuer_url
        self._given_state_dir = Path(state_dir) if state_dir is not None else None
        self._mutators: list[Mutator] = list(mutators)
        self._host = host
        self._port = port
        self._pod_startup_seconds = pod_startup_seconds
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._api: KubeApiServer | None = None
        self._controllers: Controllers | None = None
        self._url = ""
        self._https_url = ""
        # kubectl sends a kubeconfig's credentials to https servers only, so kubeconfigs point at an HTTPS port
        # signed by this CA; the plain port stays for the OIDC issuer and the sandbox's own calls.
        self._ca = trustme.CA(organization_name=f"keyless sandbox cluster {cluster_name}")
        self._state_dir: Path | None = None
        self._startup_error: BaseException | None = None

    # --- life cycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            raise KubeStandInError("the Kubernetes stand-in is already started")
        if self._given_state_dir is not None:
            self._given_state_dir.mkdir(parents=True, exist_ok=True)
            self._state_dir = self._given_state_dir
        else:
            self._state_dir = Path(tempfile.mkdtemp(prefix="keyless-kube-"))
        ready = threading.Event()
        self._startup_error = None
        self._thread = threading.Thread(target=self._thread_main, args=(ready,), daemon=True,
                                        name=f"keyless-kube-{self.cluster_name}")
        self._thread.start()
        if not ready.wait(timeout):
            raise KubeStandInError("the Kubernetes stand-in did not start in time")
        if self._startup_error is not None:
            self._thread.join(timeout)
            self._thread = None
            raise KubeStandInError(f"the Kubernetes stand-in failed to start: {self._startup_error}") \
                from self._startup_error

    def stop(self, timeout: float = 30.0) -> None:
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)
        self._thread = None
        if self._given_state_dir is None and self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _thread_main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as error:
            if not ready.is_set():
                self._startup_error = error
                ready.set()
            else:
                logger.exception("the Kubernetes stand-in %s stopped on an error", self.cluster_name)
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        assert self._state_dir is not None  # set by start()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        url = f"http://{self._host}:{sock.getsockname()[1]}"
        key_file = self._given_state_dir / "kube" / self.cluster_name / "sa-signing-key.pem" \
            if self._given_state_dir is not None else None
        issuer_url = (self._issuer_url or url).replace("{url}", url)
        issuer = ServiceAccountIssuer.load_or_create(issuer_url, key_file)
        api = KubeApiServer(issuer=issuer, cluster_name=self.cluster_name, mutators=self._mutators,
                            jwks_uri=f"{url}/openid/v1/jwks", admin_token=self.admin_token, knobs=self.knobs)
        parts = urllib.parse.urlsplit(issuer_url)
        issuer_paths: list[str] = []
        if f"{parts.scheme}://{parts.netloc}" == url:
            api.serve_discovery_under(parts.path)
            if parts.path.rstrip("/"):
                issuer_paths.append(f"{parts.path.rstrip('/')}/.well-known/openid-configuration")
        async with api:
            controllers = Controllers(api, pod_startup_seconds=self._pod_startup_seconds)
            controllers.start()
            # handler_cancellation: a watch whose client hung up must end, not linger until its timeout.
            runner = aiohttp.web.ServerRunner(aiohttp.web.Server(api, handler_cancellation=True),
                                              shutdown_timeout=1.0)
            await runner.setup()
            try:
                await aiohttp.web.SockSite(runner, sock).start()
                secure = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                secure.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                secure.bind((self._host, 0))
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                self._ca.issue_cert(self._host, "localhost").configure_cert(context)
                await aiohttp.web.SockSite(runner, secure, ssl_context=context).start()
                self._https_url = f"https://{self._host}:{secure.getsockname()[1]}"
                for namespace in SYSTEM_NAMESPACES:
                    await api.create_object(NAMESPACES, None, {"metadata": {"name": namespace}},
                                            manager="kube-apiserver")
                for role in rbac.bootstrap_cluster_roles(issuer_paths):
                    await api.create_object(CLUSTER_ROLES, None, role, manager="kube-apiserver")
                for binding in rbac.bootstrap_cluster_role_bindings():
                    await api.create_object(CLUSTER_ROLE_BINDINGS, None, binding, manager="kube-apiserver")
                await controllers.settle()
                self._api, self._controllers, self._url = api, controllers, url
                self._stopping = asyncio.Event()
                ready.set()
                await self._stopping.wait()
            finally:
                api.close_watches()
                await runner.cleanup()
                await controllers.stop()

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        loop = self._loop
        if self._thread is None or loop is None or self._api is None:
            coroutine.close()
            raise KubeStandInError("the Kubernetes stand-in is not started")
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise KubeStandInError("called from the stand-in's own thread (a mutator?): this would deadlock")
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)

    # --- what the rest of the sandbox reads -----------------------------------------------------

    @property
    def api(self) -> KubeApiServer:
        """The kmock emulator behind the port: object histories, requests, fault-injection reactions."""
        if self._api is None:
            raise KubeStandInError("the Kubernetes stand-in is not started")
        return self._api

    @property
    def admin_token(self) -> str:
        """The admin kubeconfig's token: user kubernetes-admin in group system:masters (cluster-admin)."""
        return f"keyless-sandbox-{self.cluster_name}"

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    @property
    def url(self) -> str:
        """The plain-HTTP address: where the issuer's documents are, and what the sandbox itself calls."""
        if not self._url:
            raise KubeStandInError("the Kubernetes stand-in is not started")
        return self._url

    @property
    def https_url(self) -> str:
        """The HTTPS address kubeconfigs name (signed by ``ca_pem``), as every real API server is reached."""
        if not self._https_url:
            raise KubeStandInError("the Kubernetes stand-in is not started")
        return self._https_url

    @property
    def ca_pem(self) -> bytes:
        return self._ca.cert_pem.bytes()

    @property
    def issuer_url(self) -> str:
        return self.api.issuer.issuer_url

    @property
    def state_dir(self) -> Path:
        if self._state_dir is None:
            raise KubeStandInError("the Kubernetes stand-in is not started")
        return self._state_dir

    def jwks(self) -> dict[str, Any]:
        return self.api.issuer.jwks()

    def public_key(self) -> rsa.RSAPublicKey:
        return self.api.issuer.public_key()

    @property
    def mutators(self) -> tuple[Mutator, ...]:
        return tuple(self._mutators)

    def add_mutator(self, mutator: Mutator) -> None:
        """Install a mutating webhook; it sees pods created from now on, never existing ones."""
        self._mutators.append(mutator)

    def remove_mutator(self, mutator: Mutator) -> None:
        self._mutators.remove(mutator)

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Block until the controllers have nothing left to do (rollouts done, pods started)."""
        controllers = self._controllers
        if controllers is None:
            raise KubeStandInError("the Kubernetes stand-in is not started")
        self._call(controllers.settle(), timeout)

    def write_kubeconfig(self, path: str | os.PathLike[str], context_name: str | None = None, *,
                         namespace: str | None = None, make_current: bool = True, token: str | None = None) -> Path:
        """Add (or refresh) a cluster, user and context for this stand-in in the kubeconfig at ``path``.

        The user is the cluster's admin (system:masters) unless ``token`` names another identity (a service
        account's, from ``keyless_identity``). Other entries of an existing file are kept, so several sandbox
        clusters and identities can share one file.
        """
        target = Path(path)
        name = context_name or self.cluster_name
        yaml = YAML(typ="safe", pure=True)
        yaml.default_flow_style = False
        config: dict[str, Any] = {}
        if target.exists():
            loaded = yaml.load(target.read_text(encoding="utf-8"))
            config = dict(loaded) if isinstance(loaded, dict) else {}
        config.setdefault("apiVersion", "v1")
        config.setdefault("kind", "Config")
        context: dict[str, Any] = {"cluster": name, "user": name}
        if namespace:
            context["namespace"] = namespace
        entries = {
            "clusters": {"name": name, "cluster": {
                "server": self.https_url,
                "certificate-authority-data": base64.b64encode(self.ca_pem).decode("ascii")}},
            "users": {"name": name, "user": {"token": token or self.admin_token}},
            "contexts": {"name": name, "context": context},
        }
        for section, entry in entries.items():
            kept = [e for e in config.get(section) or [] if isinstance(e, dict) and e.get("name") != name]
            config[section] = [*kept, entry]
        if make_current or not config.get("current-context"):
            config["current-context"] = name
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yaml.dump(config, handle)
        return target

    # --- seeding workloads (through the HTTP API, as Porter would) ------------------------------

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0,
                            headers={"User-Agent": "keyless-sandbox", **self.admin_headers})

    def keyless_identity(self, namespaces: Iterable[str], *, rules: Iterable[Mapping[str, Any]] | None = None,
                         ) -> str:
        """Set keyless up as the README says, with least privilege, and answer a token of its service account.

        Creates the ServiceAccount ``keyless-system/keyless``, the ClusterRole ``keyless`` (README's rules, or
        ``rules``) and a RoleBinding ``keyless`` to it in each of ``namespaces``, as an admin would with
        kubectl; the token is what ``kubectl create token keyless -n keyless-system --duration=8760h`` gives.
        """
        role = rbac.keyless_cluster_role()
        if rules is not None:
            role["rules"] = [dict(rule) for rule in rules]
        self.ensure_namespace(KEYLESS_NAMESPACE)
        with self._client() as client:
            apply = {"fieldManager": "kubectl", "force": "true"}
            headers = {"Content-Type": "application/apply-patch+yaml"}
            self._check(client.patch(f"/api/v1/namespaces/{KEYLESS_NAMESPACE}/serviceaccounts/{KEYLESS_ACCOUNT}",
                                     params=apply, headers=headers, json={
                                         "apiVersion": "v1", "kind": "ServiceAccount",
                                         "metadata": {"name": KEYLESS_ACCOUNT, "namespace": KEYLESS_NAMESPACE}}))
            self._check(client.patch(f"/apis/{CLUSTER_ROLES.api_version}/clusterroles/{rbac.KEYLESS_ROLE}",
                                     params=apply, headers=headers, json=role))
            for namespace in namespaces:
                self.ensure_namespace(namespace)
                binding = rbac.keyless_role_binding(namespace, KEYLESS_NAMESPACE, KEYLESS_ACCOUNT)
                self._check(client.patch(
                    f"/apis/{ROLE_BINDINGS.api_version}/namespaces/{namespace}/rolebindings/{rbac.KEYLESS_ROLE}",
                    params=apply, headers=headers, json=binding))
        return self.mint_token(KEYLESS_NAMESPACE, KEYLESS_ACCOUNT, expiration_seconds=KEYLESS_TOKEN_SECONDS)

    @staticmethod
    def _check(response: httpx.Response) -> JsonDict:
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise KubeStandInError(f"{response.request.method} {response.request.url.path}: {message}")
        body = response.json()
        return body if isinstance(body, dict) else {}

    def ensure_namespace(self, namespace: str) -> None:
        with self._client() as client:
            response = client.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace",
                                                               "metadata": {"name": namespace}})
            if response.status_code != 409:
                self._check(response)
        self.wait_idle()

    def seed_workload(
        self,
        namespace: str,
        name: str,
        kind: WorkloadKind = "Deployment",
        labels: Mapping[str, str] | None = None,
        replicas: int = 1,
        *,
        service_account: str | None = None,
        image: str = DEFAULT_IMAGE,
        schedule: str = "0 * * * *",
        env: Mapping[str, str] | None = None,
    ) -> JsonDict:
        """Create (or re-apply) an app's workload the way Porter deploys it, then wait for it to run.

        ``labels`` (e.g. ``porter.run/app-name`` and ``porter.run/service-name``) go on the object,
        its selector and its pod template. Returns the object as the API server stored it.
        """
        selector = dict(labels or {"app.kubernetes.io/name": name})
        container: JsonDict = {"name": re.sub(r"[^a-z0-9-]+", "-", name.lower())[:63].strip("-") or "app",
                               "image": image}
        if env:
            container["env"] = [{"name": k, "value": v} for k, v in env.items()]
        pod_spec: JsonDict = {"containers": [container]}
        if service_account:
            pod_spec["serviceAccountName"] = service_account
        template: JsonDict = {"metadata": {"labels": dict(selector)}, "spec": pod_spec}
        if kind == "Deployment":
            api_path, api_version = "/apis/apps/v1", "apps/v1"
            spec: JsonDict = {"replicas": replicas, "selector": {"matchLabels": dict(selector)}, "template": template}
        else:
            api_path, api_version = "/apis/batch/v1", "batch/v1"
            pod_spec["restartPolicy"] = "Never"
            job_spec: JsonDict = {"template": template, "backoffLimit": 0}
            spec = job_spec if kind == "Job" else {
                "schedule": schedule, "jobTemplate": {"metadata": {"labels": dict(selector)}, "spec": job_spec}}
        body = {"apiVersion": api_version, "kind": kind,
                "metadata": {"name": name, "namespace": namespace, "labels": dict(selector)}, "spec": spec}
        self.ensure_namespace(namespace)
        plural = {"Deployment": "deployments", "CronJob": "cronjobs", "Job": "jobs"}[kind]
        with self._client() as client:
            created = self._check(client.patch(
                f"{api_path}/namespaces/{namespace}/{plural}/{name}",
                params={"fieldManager": SEED_MANAGER, "force": "true"},
                headers={"Content-Type": "application/apply-patch+yaml"}, json=body,
            ))
        self.wait_idle()
        return created

    def run_job(self, namespace: str, cronjob: str, *, job_name: str | None = None) -> str:
        """Start a Job from a CronJob's template now (``kubectl create job --from=cronjob/...``); answers its name.

        Schedules never fire on their own in the sandbox: this is how a job service gets a pod.
        """
        name = job_name or f"{cronjob[:63 - 13]}-manual-{random_suffix()}"
        with self._client() as client:
            source = self._check(client.get(f"/apis/batch/v1/namespaces/{namespace}/cronjobs/{cronjob}"))
            template = copy.deepcopy(source["spec"]["jobTemplate"])
            meta = template.get("metadata") or {}
            annotations = {**(meta.get("annotations") or {}), "cronjob.kubernetes.io/instantiate": "manual"}
            body = {
                "apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": name, "namespace": namespace, "labels": meta.get("labels") or {},
                             "annotations": annotations,
                             "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": cronjob,
                                                  "uid": source["metadata"]["uid"], "controller": True}]},
                "spec": template.get("spec") or {},
            }
            self._check(client.post(f"/apis/batch/v1/namespaces/{namespace}/jobs",
                                    params={"fieldManager": "kubectl-create"}, json=body))
        self.wait_idle()
        return name

    def finish_pod(self, namespace: str, pod_name: str, *, succeeded: bool = True) -> None:
        """Mark a pod's containers as exited (after ``keyless sandbox exec`` ran its command, for a job)."""
        controllers = self._controllers
        if controllers is None:
            raise KubeStandInError("the Kubernetes stand-in is not started")
        self._call(self._guarded(controllers.finish_pod(namespace, pod_name, succeeded=succeeded)))
        self.wait_idle()

    @staticmethod
    async def _guarded(coroutine: Coroutine[Any, Any, T]) -> T:
        try:
            return await coroutine
        except StatusError as error:
            raise KubeStandInError(error.message) from error

    # --- tokens and exec ------------------------------------------------------------------------

    def mint_token(self, namespace: str, service_account: str, audience: str | None = None, *,
                   expiration_seconds: int = DEFAULT_EXPIRATION_SECONDS) -> str:
        """A service-account token, as ``kubectl create token`` gets it (not bound to a pod)."""
        async def mint() -> str:
            return self.api.mint_token(namespace, service_account, [audience] if audience else None,
                                       expiration_seconds=expiration_seconds)
        return self._call(self._guarded(mint()))

    def exec_env(self, namespace: str, pod_name: str, container: str | None = None) -> dict[str, str]:
        """The environment a process in the pod's container sees, with its volumes made real on disk.

        Projected token volumes (and config, secret, downward-API and emptyDir volumes) are written
        under the state directory with fresh tokens, and env values pointing inside a mount are
        rewritten to the host path. Only PATH/HOME-like basics come from the host.
        """
        return self._call(self._guarded(self._exec_env(namespace, pod_name, container)))

    async def _exec_env(self, namespace: str, pod_name: str, container_name: str | None) -> dict[str, str]:
        api = self.api
        pod = api.get_object(PODS, namespace, pod_name)
        if pod is None:
            raise KubeStandInError(f'pods "{pod_name}" not found in namespace {namespace}')
        phase = (pod.get("status") or {}).get("phase")
        if phase != "Running":
            raise KubeStandInError(f"pod {namespace}/{pod_name} is not running (phase: {phase})")
        containers = pod["spec"].get("containers") or []
        # Like kubectl: the annotated default container, else the first one.
        wanted = container_name or (pod["metadata"].get("annotations") or {}).get(
            "kubectl.kubernetes.io/default-container")
        container = next((c for c in containers if wanted in (None, c.get("name"))), None)
        if container is None:
            raise KubeStandInError(f"container {wanted} is not valid for pod {pod_name}")
        uid = str(pod["metadata"]["uid"])
        pod_dir = self.state_dir / "pods" / namespace / f"{pod_name}-{uid[:8]}"
        volumes = {v.get("name"): v for v in pod["spec"].get("volumes") or []}
        mounts: list[tuple[str, Path]] = []
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount.get("name"))
            if volume is None:
                continue
            host = self._materialize(pod, volume, pod_dir / "volumes" / str(mount["name"]))
            if host is None:
                continue
            target = host / mount["subPath"] if mount.get("subPath") else host
            mounts.append((str(mount["mountPath"]).rstrip("/") or "/", target))
        env = {k: os.environ[k] for k in _HOST_ENV if k in os.environ}
        env.setdefault("PATH", _DEFAULT_PATH)
        env["HOSTNAME"] = pod_name
        env.update(self._container_env(pod, container))
        mounts.sort(key=lambda m: len(m[0]), reverse=True)
        for key, value in env.items():
            for mount_path, host in mounts:
                if value == mount_path or value.startswith(mount_path + "/"):
                    env[key] = str(host) + value[len(mount_path):]
                    break
        return env

    def _field(self, pod: Mapping[str, Any], path: str) -> str:
        meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
        indexed = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if indexed:
            return str((meta.get(indexed[1]) or {}).get(indexed[2], ""))
        simple = {
            "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
            "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
            "spec.serviceAccountName": spec.get("serviceAccountName"), "status.hostIP": status.get("hostIP"),
            "status.podIP": status.get("podIP"),
            "status.podIPs": ",".join(i.get("ip", "") for i in status.get("podIPs") or []),
        }
        if path not in simple:
            raise KubeStandInError(f"unsupported fieldRef {path!r}")
        return str(simple[path] or "")

    def _key_ref(self, namespace: str, ref: Mapping[str, Any], secret: bool) -> str | None:
        kind = SECRETS if secret else CONFIG_MAPS
        obj = self.api.get_object(kind, namespace, str(ref.get("name")))
        data = (obj or {}).get("data") or {}
        if obj is None or ref.get("key") not in data:
            if ref.get("optional"):
                return None
            what = "secret" if secret else "configmap"
            raise KubeStandInError(f'CreateContainerConfigError: {what} "{ref.get("name")}" or its key '
                                   f'"{ref.get("key")}" not found')
        value = data[ref["key"]]
        return base64.b64decode(value).decode("utf-8", "replace") if secret else str(value)

    def _container_env(self, pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
        namespace = str(pod["metadata"]["namespace"])
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = str(source.get("prefix") or "")
            for secret, ref in ((False, source.get("configMapRef")), (True, source.get("secretRef"))):
                if not ref:
                    continue
                obj = self.api.get_object(SECRETS if secret else CONFIG_MAPS, namespace, str(ref.get("name")))
                if obj is None and not ref.get("optional"):
                    raise KubeStandInError(f'CreateContainerConfigError: {"secret" if secret else "configmap"} '
                                           f'"{ref.get("name")}" not found')
                for key, value in ((obj or {}).get("data") or {}).items():
                    env[prefix + key] = base64.b64decode(value).decode("utf-8", "replace") if secret else str(value)
        for item in container.get("env") or []:
            name = str(item.get("name"))
            if "value" in item or not item.get("valueFrom"):
                # $(VAR) refers to variables defined before; $$ escapes. Unknown references stay as written.
                env[name] = _ENV_REFERENCE.sub(
                    lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), str(item.get("value", "")))
                continue
            source = item["valueFrom"]
            resolved: str | None
            if source.get("fieldRef"):
                resolved = self._field(pod, str(source["fieldRef"].get("fieldPath")))
            elif source.get("configMapKeyRef"):
                resolved = self._key_ref(namespace, source["configMapKeyRef"], secret=False)
            elif source.get("secretKeyRef"):
                resolved = self._key_ref(namespace, source["secretKeyRef"], secret=True)
            else:
                resolved = None  # resourceFieldRef: the sandbox sets no resource limits
            if resolved is not None:
                env[name] = resolved
        return env

    def _materialize(self, pod: Mapping[str, Any], volume: Mapping[str, Any], directory: Path) -> Path | None:
        """Write a volume's files the way the kubelet would; None for volume types the sandbox lacks."""
        namespace = str(pod["metadata"]["namespace"])
        if "emptyDir" in volume:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            return directory
        files: dict[str, str] = {}
        if "projected" in volume:
            for source in (volume.get("projected") or {}).get("sources") or []:
                files.update(self._source_files(pod, namespace, source))
        elif "secret" in volume:
            files.update(self._source_files(pod, namespace, {"secret": {
                "name": volume["secret"].get("secretName"), **volume["secret"]}}))
        elif "configMap" in volume or "downwardAPI" in volume:
            files.update(self._source_files(pod, namespace, volume))
        else:
            return None
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for relative, content in files.items():
            target = directory / relative
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Write then rename, so a process reading the token while it is refreshed never sees half of it.
            temporary = target.with_name(f".{target.name}.tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(content)
            os.replace(temporary, target)
        return directory

    def _source_files(self, pod: Mapping[str, Any], namespace: str, source: Mapping[str, Any]) -> dict[str, str]:
        files: dict[str, str] = {}
        token = source.get("serviceAccountToken")
        if isinstance(token, dict):
            audience = token.get("audience")
            files[str(token.get("path", "token"))] = self.api.mint_token(
                namespace, str(pod["spec"].get("serviceAccountName") or "default"),
                [audience] if audience else None,
                expiration_seconds=int(token.get("expirationSeconds") or DEFAULT_EXPIRATION_SECONDS), pod=pod,
            )
        for key, secret in (("configMap", False), ("secret", True)):
            ref = source.get(key)
            if not isinstance(ref, dict):
                continue
            obj = self.api.get_object(SECRETS if secret else CONFIG_MAPS, namespace, str(ref.get("name")))
            data = (obj or {}).get("data") or {}
            items = ref.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                if item.get("key") in data:
                    raw = data[item["key"]]
                    files[str(item["path"])] = (base64.b64decode(raw).decode("utf-8", "replace") if secret
                                                else str(raw))
        downward = source.get("downwardAPI")
        if isinstance(downward, dict):
            for item in downward.get("items") or []:
                if item.get("fieldRef"):
                    files[str(item["path"])] = self._field(pod, str(item["fieldRef"].get("fieldPath")))
        return files
