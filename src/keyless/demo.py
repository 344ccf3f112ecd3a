"""`keyless demo`: the main job, end to end, on the embedded sandbox."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from lightkube import Client, KubeConfig
from lightkube.resources.core_v1 import Pod
from rich.console import Console

from keyless import clouds, engine
from keyless.bindings import Binding, desired_bindings
from keyless.console import apply_with_progress
from keyless.inputs import load_app_file, load_targets_file
from keyless.plan.render import render_text
from keyless.porter import LoadedApp, resolve_app_name
from keyless.porter.model import ServiceType
from keyless.sandbox import control
from keyless.sandbox.porter import deploy_workloads
from keyless.sandbox.stack import (
    AKS_CONTEXT,
    AKS_TARGET,
    EKS_CONTEXT,
    EKS_TARGET,
    GKE_CONTEXT,
    GKE_TARGET,
    SandboxState,
)


def _running_pod(client: Client, namespace: str, app: str, service: str, timeout: float = 60.0) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = [p for p in client.list(Pod, namespace=namespace,
                                         labels={"porter.run/app-name": app, "porter.run/service-name": service})
                if p.status is not None and p.status.phase == "Running" and p.metadata is not None
                and p.metadata.deletionTimestamp is None]
        if pods:
            newest = max(pods, key=lambda p: p.metadata.creationTimestamp if p.metadata else 0)  # type: ignore[arg-type,return-value]
            assert newest.metadata is not None
            return newest.metadata.name
        time.sleep(0.5)
    return None


def _prove(state: SandboxState, kube_client: Client, app: str, target_name: str, context: str,
           binding: Binding, out: Console) -> bool:
    """Run `keyless doctor` in a pod of the binding's service and print the identity it resolved."""
    namespace = binding.namespace
    if binding.kind is ServiceType.JOB:
        job = control.run_job(state, namespace, f"{app}-{binding.service}", context=context)
        out.print(f"  started job {job} for {binding.service}", markup=False)
    pod = _running_pod(kube_client, namespace, app, binding.service)
    if pod is None:
        out.print(f"  {binding.service}: no running pod found", markup=False)
        return False
    result = control.exec_in_pod(state, namespace, pod, [sys.executable, "-m", "keyless", "doctor", "--format", "json"],
                                 capture=True, context=context)
    try:
        checks = json.loads(result.stdout)
    except ValueError:
        out.print(f"  {binding.service}: doctor failed: {result.stderr.strip() or result.stdout.strip()}", markup=False)
        return False
    cloud = binding.cloud.value
    check = next((c for c in checks if c["cloud"] == cloud and c["verdict"] in ("ok", "warning")), None)
    label = f"  {target_name:<12} {binding.service:<16} pod {pod}:"
    if check is None:
        problem = "; ".join(c["summary"] for c in checks if c["cloud"] == cloud)
        out.print(f"{label} NO identity: {problem}", markup=False)
        return False
    details = check["details"]
    if cloud == "aws":
        out.print(f"{label} assumed {details['arn']} (via {details.get('method')})", markup=False)
    elif cloud == "gcp":
        out.print(f"{label} acts as Google service account {details.get('email')} (via {details.get('method')})",
                  markup=False)
    else:
        out.print(f"{label} got a token for managed identity client {details.get('appid') or details.get('azp')} "
                  f"(object {details.get('oid')}, via {details.get('method')})", markup=False)
    return True


# The demo's app ships inside the package, so `keyless demo` works from any directory; the repository's
# examples/porter.yaml is the same file (a test keeps them identical).
EXAMPLE = Path(__file__).parent / "examples" / "porter.yaml"


def run_demo(file: Path | None, out: Console, err: Console) -> int:
    """Start (or reuse) the sandbox and run the demo; a sandbox this run started is stopped again if the run fails."""
    # Invalid input starts nothing: the file is read before the sandbox is.
    loaded = load_app_file(file or EXAMPLE, os.environ)
    app = resolve_app_name(loaded, None, os.environ)
    directory = control.state_dir(os.environ)
    # A sandbox started for the demo applies writes after the short fixed delays, not the realistic minutes.
    state, started = control.up(directory, defaults={**control.STARTUP_KNOBS, "propagation": "off"})
    out.print(("Started" if started else "Using") + f" the sandbox (pid {state.pid}, state in {directory}).",
              markup=False)
    try:
        return _run(state, loaded, app, out, err)
    except BaseException:
        if started:
            control.down(directory)
            err.print("Stopped the sandbox this demo had started.", markup=False)
        raise


def _run(state: SandboxState, loaded: LoadedApp, app: str, out: Console, err: Console) -> int:
    os.environ.update(state.env)
    env = dict(os.environ)
    targets = load_targets_file(env["KEYLESS_TARGETS"], env)
    status = 0
    proofs: list[tuple[str, str, Binding]] = []
    for target_name, context in ((EKS_TARGET, EKS_CONTEXT), (AKS_TARGET, AKS_CONTEXT), (GKE_TARGET, GKE_CONTEXT)):
        target = targets.get(target_name)
        out.print(f"\n== {target_name} ({clouds.for_target(target).cloud.value}) ==", markup=False)
        kube_client = Client(KubeConfig.from_file(env["KUBECONFIG"]).get(context_name=context),
                             namespace=target.namespace)
        for created in deploy_workloads(kube_client, app, loaded.app, target.namespace):
            out.print(f"(as Porter would) deployed {created}", markup=False)
        provider, kube = engine.connect(target_name, target)
        planned = engine.plan_app(engine.PlanInput(loaded, app, target_name, target), provider, kube)
        out.print(render_text(planned.plan, markup=out.is_terminal), markup=out.is_terminal)
        if planned.plan.blockers:
            return 3
        if planned.plan.changes:
            report = apply_with_progress(planned.plan, provider, kube, err)
            for failure in report.failures:
                err.print(f"FAILED {failure.action.service}: {failure.message}", markup=False)
                status = 1
        bindings, _ = desired_bindings(loaded, app, target_name, target)
        proofs += [(target_name, context, b) for b in bindings]
    out.print("\nProof from inside the pods (keyless doctor, run in a pod of each connected service):", markup=False)
    for target_name, context, binding in proofs:
        client = Client(KubeConfig.from_file(env["KUBECONFIG"]).get(context_name=context), namespace=binding.namespace)
        if not _prove(state, client, app, target_name, context, binding, out):
            status = 1
    out.print("", markup=False)
    out.print("Run `keyless demo` again: the plans show no changes. To look around: eval \"$(keyless sandbox env)\", "
              "then `keyless sandbox pods`; `keyless sandbox down` stops the sandbox.", markup=False)
    return status
