"""The whole sandbox in one process: the AWS, Azure and GCP stand-ins, a Kubernetes API per cluster, and control."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlparse

import httpx
import trustme

from keyless.sandbox.aws import AwsSandbox
from keyless.sandbox.azure import AzureSandbox
from keyless.sandbox.azure.demo import DEMO_CLUSTER, AzureDemoSeed
from keyless.sandbox.gcp import GcpDemoSeed, GcpSandbox, PodLookup
from keyless.sandbox.knobs import Knobs, KnobSettings, TimeScale, parse_settings
from keyless.sandbox.knobs_http import calls_json
from keyless.sandbox.kube import (
    KubeStandIn,
    KubeStandInError,
    azure_workload_identity_mutator,
    eks_pod_identity_mutator,
    gke_metadata_mutator,
)

EKS_TARGET = "sandbox-eks"
EKS_CONTEXT = "sandbox-eks"
AKS_TARGET = "sandbox-aks"
AKS_CONTEXT = "sandbox-aks"
GKE_TARGET = "sandbox-gke"
GKE_CONTEXT = "sandbox-gke"
# Each cluster has two contexts in the exported kubeconfig: the admin one above (cluster-admin, for kubectl and for
# Porter's stand-in) and keyless's own, bound to the least-privilege role the README documents, which the targets
# file names: keyless never runs with more than a real set-up would give it.
KEYLESS_CONTEXT_PREFIX = "keyless@"
DEMO_NAMESPACE = "shop"
STATE_FILE = "state.json"


@dataclass(frozen=True, slots=True)
class SandboxState:
    """What a running sandbox tells its clients (written to STATE_FILE in the state directory)."""

    pid: int
    control_url: str
    env: dict[str, str]
    pod_env: dict[str, str]  # endpoints a pod's SDK needs in the sandbox (no keys)

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "controlUrl": self.control_url, "env": self.env, "podEnv": self.pod_env}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxState:
        return cls(pid=int(data["pid"]), control_url=str(data["controlUrl"]), env=dict(data["env"]),
                   pod_env=dict(data["podEnv"]))


def keyless_context(admin_context: str) -> str:
    return f"{KEYLESS_CONTEXT_PREFIX}{admin_context}"


def admin_contexts(contexts: Iterable[str]) -> list[str]:
    """The sandbox kubeconfig's cluster-admin contexts (one per cluster), without keyless's own."""
    return sorted(c for c in contexts if not c.startswith(KEYLESS_CONTEXT_PREFIX))


def targets_document(region: str, cluster: str, azure: AzureDemoSeed, arm_url: str, ca_bundle: Path,
                     gcp: GcpDemoSeed, settle_seconds: float | None = None) -> str:
    # A sandbox whose propagation is short and fixed says so, and keyless waits that long rather than the clouds'
    # worst case; with realistic (drawn) delays, keyless keeps its defaults, as on a real cloud.
    settle = f"    settleSeconds: {settle_seconds:g}\n" if settle_seconds is not None else ""
    return (
        "# Written by `keyless sandbox up`: the sandbox's own targets.\n"
        "targets:\n"
        f"  {EKS_TARGET}:\n"
        "    cloud: aws\n"
        f"    region: {region}\n"
        f"    cluster: {cluster}\n"
        f"    namespace: {DEMO_NAMESPACE}\n"
        f"    kubernetes: {{context: {keyless_context(EKS_CONTEXT)}, mode: apply}}\n"
        f"{settle}"
        f"  {AKS_TARGET}:\n"
        "    cloud: azure\n"
        f"    subscription: {azure.subscription_id}\n"
        f"    resourceGroup: {azure.resource_group}\n"
        f"    cluster: {azure.cluster}\n"
        f"    namespace: {DEMO_NAMESPACE}\n"
        f"    armEndpoint: {arm_url}\n"
        f"    caBundle: {ca_bundle}\n"
        f"    kubernetes: {{context: {keyless_context(AKS_CONTEXT)}, mode: apply}}\n"
        f"{settle}"
        f"  {GKE_TARGET}:\n"
        "    cloud: gcp\n"
        f"    project: {gcp.project}\n"
        f"    location: {gcp.location}\n"
        f"    cluster: {gcp.cluster}\n"
        f"    namespace: {DEMO_NAMESPACE}\n"
        f"    kubernetes: {{context: {keyless_context(GKE_CONTEXT)}, mode: apply}}\n"
    )


def kube_pod_lookup(cluster: KubeStandIn) -> PodLookup:
    """How the GKE metadata server learns a pod's service account: from the cluster's API, as the real one does."""
    def lookup(namespace: str, pod: str) -> tuple[str, str, dict[str, str]] | None:
        # As the metadata server's own service account would; the sandbox's is the cluster admin.
        with httpx.Client(base_url=cluster.url, timeout=10.0, headers=cluster.admin_headers) as client:
            found = client.get(f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}")
            if found.status_code != 200:
                return None
            account = str(found.json().get("spec", {}).get("serviceAccountName") or "default")
            read = client.get(f"/api/v1/namespaces/{quote(namespace)}/serviceaccounts/{quote(account)}")
            annotations = read.json().get("metadata", {}).get("annotations") or {} if read.status_code == 200 else {}
        return cluster.issuer_url, account, {str(k): str(v) for k, v in annotations.items()}
    return lookup


class SandboxStack:
    """Starts the stand-ins, wires the pod identity webhook and agent to the cluster, seeds the demo."""

    def __init__(self, state_dir: Path, *, association_delay: float = 1.0, knobs: KnobSettings | None = None,
                 time_scale: float = 1.0, settle_seconds: float | None = None) -> None:
        """``knobs`` shape every call of every front (none by default: the demo stays fast); ``time_scale`` divides
        every delay of every stand-in (latency, bucket refill, propagation, pod start-up); ``settle_seconds`` goes
        into the targets file for the EKS and AKS targets (unset: keyless's defaults, for realistic propagation)."""
        self.state_dir = state_dir
        self.settle_seconds = settle_seconds
        self.time = TimeScale(time_scale)
        self.initial_knobs = knobs or KnobSettings()
        # One CA signs every HTTPS stand-in, so that one REQUESTS_CA_BUNDLE trusts them all.
        ca = trustme.CA(organization_name="keyless sandbox")
        # The knobs are set once the demo is seeded (end of start()): seeding must neither wait nor fail at random.
        self.aws = AwsSandbox(association_delay=association_delay, time_scale=self.time)
        self.azure = AzureSandbox(state_dir=state_dir / "azure", propagation_delay=association_delay, ca=ca,
                                  time_scale=self.time)
        self.gcp = GcpSandbox(state_dir=state_dir / "gcp", propagation_delay=association_delay, ca=ca,
                              time_scale=self.time)
        self.eks: KubeStandIn | None = None
        self.aks: KubeStandIn | None = None
        self.gke: KubeStandIn | None = None
        self._control: ThreadingHTTPServer | None = None

    def start(self) -> SandboxState:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.aws.start()
        seed = self.aws.seed_demo()
        # The API server signs tokens as the issuer EKS describes (identity.oidc.issuer), as on a real cluster.
        eks_issuer = str(self.aws.client("eks").describe_cluster(name=seed.cluster)["cluster"]["identity"]["oidc"]
                         ["issuer"])
        eks = KubeStandIn(
            seed.cluster,
            issuer_url=eks_issuer,
            state_dir=self.state_dir / "clusters" / seed.cluster,
            time_scale=self.time,
            # The webhook adds the credentials path itself, as the real one does to its fixed agent address. That
            # address is link-local 169.254.170.23, which an unprivileged process cannot bind: the agent listens on
            # loopback instead (docs/SANDBOX.md).
            mutators=[eks_pod_identity_mutator(self.aws.association_for,
                                               self.aws.agent_url.removesuffix("/v1/credentials"), self.aws.region)],
        )
        eks.start()
        self.eks = eks
        self.aws.set_cluster_keys(lambda cluster: eks.jwks() if cluster == seed.cluster else None)
        kubeconfig = eks.write_kubeconfig(self.state_dir / "kubeconfig", EKS_CONTEXT)
        eks.ensure_namespace(DEMO_NAMESPACE)
        self._grant_keyless(eks, kubeconfig, EKS_CONTEXT)

        azure = self.azure.start()
        # AKS assigns the cluster's issuer (https://<region>.oic.prod-aks.azure.com/<tenant>/<id>/, trailing slash
        # included) and hosts its discovery document and keys, which Entra fetches over HTTPS; the API server signs
        # service-account tokens as that issuer.
        azure_seed = azure.seed_demo()
        aks = KubeStandIn(
            DEMO_CLUSTER,
            issuer_url=azure_seed.cluster_issuer_url,
            state_dir=self.state_dir / "clusters" / DEMO_CLUSTER,
            time_scale=self.time,
            mutators=[azure_workload_identity_mutator(azure.tenant_id, azure.authority_url)],
        )
        aks.start()
        self.aks = aks
        azure.publish_issuer(aks.issuer_url, aks.jwks)
        aks.write_kubeconfig(kubeconfig, AKS_CONTEXT, make_current=False)
        aks.ensure_namespace(DEMO_NAMESPACE)
        self._grant_keyless(aks, kubeconfig, AKS_CONTEXT)

        gcp = self.gcp.start()
        gcp_seed = gcp.seed_demo()
        # GKE signs service-account tokens as the cluster's URL on the container API; STS matches it byte for byte.
        gke = KubeStandIn(
            gcp_seed.cluster,
            issuer_url=gcp_seed.cluster_issuer,
            state_dir=self.state_dir / "clusters" / gcp_seed.cluster,
            time_scale=self.time,
            mutators=[gke_metadata_mutator(gcp.metadata_host_for(gcp_seed.location, gcp_seed.cluster))],
        )
        gke.start()
        self.gke = gke
        gcp.set_issuer_keys(lambda issuer: gke.jwks() if issuer == gke.issuer_url else None)
        gcp.set_pod_lookup(kube_pod_lookup(gke))
        gke.write_kubeconfig(kubeconfig, GKE_CONTEXT, make_current=False)
        gke.ensure_namespace(DEMO_NAMESPACE)
        self._grant_keyless(gke, kubeconfig, GKE_CONTEXT)

        targets = self.state_dir / "keyless.targets.yaml"
        targets.write_text(targets_document(seed.region, seed.cluster, azure_seed, azure.arm_url, azure.ca_bundle,
                                            gcp_seed, self.settle_seconds))
        self._control = ThreadingHTTPServer(("127.0.0.1", 0), _control_handler(self))
        threading.Thread(target=self._control.serve_forever, daemon=True, name="keyless-sandbox-control").start()
        env = {**self.aws.env(), **azure.env(), **gcp.env(), "KUBECONFIG": str(kubeconfig),
               "KEYLESS_TARGETS": str(targets)}
        # What a pod's SDKs need to stay inside the sandbox: endpoints and the sandbox CA, never credentials.
        pod_env = {k: v for k, v in self.aws.pod_env("/dev/null", seed.cluster).items()
                   if k.startswith(("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA"))}
        pod_env.update(azure.ca_env())
        pod_env.update(gcp.pod_env())  # the metadata host is per pod: the GKE routing sets it at admission
        pod_env["KEYLESS_DOCTOR_AZURE_SCOPE"] = f"{azure.arm_url}/.default"
        self.set_knobs(self.initial_knobs)
        for knobs in self.fronts().values():
            knobs.reset_calls()  # the counters count what the sandbox's users call, not its own seeding
        host, port = self._control.server_address[:2]
        state = SandboxState(pid=os.getpid(), control_url=f"http://{host!s}:{port}", env=env, pod_env=pod_env)
        (self.state_dir / STATE_FILE).write_text(json.dumps(state.to_json(), indent=2))
        return state

    @staticmethod
    def _grant_keyless(cluster: KubeStandIn, kubeconfig: Path, admin_context: str) -> None:
        """keyless's service account, role and binding in the demo namespace, and its context in the kubeconfig."""
        token = cluster.keyless_identity([DEMO_NAMESPACE])
        cluster.write_kubeconfig(kubeconfig, keyless_context(admin_context), namespace=DEMO_NAMESPACE,
                                 make_current=False, token=token)

    def stop(self) -> None:
        if self._control is not None:
            self._control.shutdown()
        for cluster in (self.eks, self.aks, self.gke):
            if cluster is not None:
                cluster.stop()
        self.aws.stop()
        if self.azure.running:
            self.azure.stop()
        if self.gcp.running:
            self.gcp.stop()
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)

    # ---- knobs across every front ----------------------------------------------------------------------

    def fronts(self) -> dict[str, Knobs]:
        """Every front's knobs by name: aws (EKS, IAM, STS), arm, entra, gcp, and kube-<cluster> per cluster."""
        found = {k.name: k for k in (self.aws.knobs, self.azure.arm_knobs, self.azure.entra_knobs, self.gcp.knobs)}
        found.update({c.knobs.name: c.knobs for c in (self.eks, self.aks, self.gke) if c is not None})
        return found

    def knobs_json(self) -> dict[str, Any]:
        return {"timeScale": self.time.factor, "fronts": {n: k.to_json() for n, k in self.fronts().items()}}

    def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        """Apply knob settings (the JSON the HTTP routes take) to every front at once; ValueError if bad."""
        fronts = self.fronts()
        settings = {name: parse_settings(body, knobs.settings) for name, knobs in fronts.items()}  # all or nothing
        if "timeScale" in body:
            scale = body["timeScale"]
            if isinstance(scale, bool) or not isinstance(scale, int | float):
                raise ValueError("timeScale must be a number")
            self.time.factor = float(scale)
        for name, knobs in fronts.items():
            knobs.configure(settings[name])
        return self.knobs_json()

    def set_knobs(self, settings: KnobSettings) -> None:
        """The same settings on every front (rate limits a front has no calls for are ignored by it)."""
        for knobs in self.fronts().values():
            knobs.configure(settings)

    def calls(self) -> dict[str, Any]:
        return {name: calls_json(knobs) for name, knobs in self.fronts().items()}

    def reset_calls(self) -> dict[str, Any]:
        for knobs in self.fronts().values():
            knobs.reset_calls()
        return self.calls()

    def _clusters(self, context: str | None = None) -> list[KubeStandIn]:
        by_context = {EKS_CONTEXT: self.eks, AKS_CONTEXT: self.aks, GKE_CONTEXT: self.gke}
        if context is not None and context not in by_context:
            raise KubeStandInError(f"no sandbox cluster for context {context!r}; contexts: {', '.join(by_context)}")
        chosen = [by_context[context]] if context else list(by_context.values())
        return [c for c in chosen if c is not None]

    def exec_env(self, namespace: str, pod: str, context: str | None = None) -> dict[str, str]:
        """The pod's environment, from the context's cluster, else from whichever sandbox cluster runs it."""
        last: KubeStandInError | None = None
        for cluster in self._clusters(context):
            try:
                return cluster.exec_env(namespace, pod)
            except KubeStandInError as exc:
                last = exc
        raise last or KubeStandInError(f"pod {namespace}/{pod} not found")

    def run_job(self, namespace: str, cronjob: str, context: str | None = None) -> str:
        last: KubeStandInError | None = None
        for cluster in self._clusters(context):
            try:
                return cluster.run_job(namespace, cronjob)
            except KubeStandInError as exc:
                last = exc
        raise last or KubeStandInError(f"cronjob {namespace}/{cronjob} not found")


def _control_handler(stack: SandboxStack) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        """Loopback-only control calls that have no cloud or Kubernetes API: exec, running a job now, and the knobs
        and call counters of every front at once."""

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the CLI prints what matters
            return

        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _call(self, routes: dict[str, Callable[[dict[str, Any]], Any]]) -> None:
            url = urlparse(self.path)
            query: dict[str, Any] = {k: v[0] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                try:
                    body = json.loads(self.rfile.read(length))
                except ValueError:
                    body = None
                if not isinstance(body, dict):
                    self._answer(400, {"message": "the body must be a JSON object"})
                    return
                query.update(body)
            route = routes.get(url.path)
            if route is None:
                self._answer(404, {"message": f"no such control call {self.command} {url.path}"})
                return
            try:
                self._answer(200, route(query))
            except KeyError as exc:
                self._answer(400, {"message": f"missing parameter {exc}"})
            except KubeStandInError as exc:
                self._answer(404, {"message": str(exc)})
            except ValueError as exc:
                self._answer(400, {"message": str(exc)})

        def do_GET(self) -> None:
            self._call({
                "/health": lambda q: {"ok": True},
                "/knobs": lambda q: stack.knobs_json(),
                "/calls": lambda q: stack.calls(),
                "/exec-env": lambda q: stack.exec_env(q.get("namespace", DEMO_NAMESPACE), q["pod"], q.get("context")),
            })

        def do_POST(self) -> None:
            self._call({
                "/knobs": stack.configure,
                "/calls/reset": lambda q: stack.reset_calls(),
                "/run-job": lambda q: {"job": stack.run_job(q.get("namespace", DEMO_NAMESPACE), q["cronjob"],
                                                            q.get("context"))},
            })

    return Handler


def serve(state_dir: Path, knobs: dict[str, Any] | None = None) -> None:
    """Run the sandbox until SIGTERM or SIGINT (what `keyless sandbox up` starts in the background), its fronts shaped
    by `knobs` (the JSON POST /knobs takes: latency, rateLimits, timeScale, faultRate, ...)."""
    body = dict(knobs or {})
    scale = body.pop("timeScale", 1.0)
    # Without drawn propagation delays, a binding takes the stack's fixed association delay (1 s) to work.
    fixed = body.get("propagation", "off") == "off"
    stack = SandboxStack(state_dir, knobs=parse_settings(body), time_scale=float(scale),
                         settle_seconds=2.0 if fixed else None)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    try:
        stack.start()
        done.wait()
    finally:
        stack.stop()
