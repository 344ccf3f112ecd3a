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

from keyless import engine
from keyless.bindings import desired_bindings
from keyless.console import apply_with_progress
from keyless.plan import render_text
from keyless.sandbox import control
from keyless.sandbox.porter import deploy_workloads
from keyless.sandbox.stack import EKS_CONTEXT, EKS_TARGET
from keyless.spec import load_app_file, resolve_app_name
from keyless.spec.model import ServiceType
from keyless.targets import load_targets_file


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


def run_demo(file: Path, out: Console, err: Console) -> int:
    directory = control.state_dir(os.environ)
    state, started = control.up(directory)
    out.print(("Started" if started else "Using") + f" the sandbox (pid {state.pid}, state in {directory}).",
              markup=False)
    os.environ.update(state.env)
    env = dict(os.environ)
    loaded = load_app_file(file, env)
    app = resolve_app_name(loaded, None, env)
    target = load_targets_file(env["KEYLESS_TARGETS"], env).get(EKS_TARGET)

    kube_client = Client(KubeConfig.from_file(env["KUBECONFIG"]), namespace=target.namespace)
    for created in deploy_workloads(kube_client, app, loaded.app, target.namespace):
        out.print(f"(as Porter would) deployed {created}", markup=False)

    provider, kube = engine.connect(EKS_TARGET, target)
    planned = engine.plan_app(engine.PlanInput(loaded, app, EKS_TARGET, target), provider, kube)
    out.print(render_text(planned.plan, markup=out.is_terminal), markup=out.is_terminal)
    if planned.plan.blockers:
        return 3
    if planned.plan.changes:
        observed = engine.observe_saved(planned.plan, provider, kube, target.namespace)
        report = apply_with_progress(planned.plan, provider, kube, observed, err)
        if report.failures:
            for failure in report.failures:
                err.print(f"FAILED {failure.action.service}: {failure.message}", markup=False)
            return 1
    out.print("", markup=False)
    out.print(f"Proof from inside the pods (keyless doctor, run in each pod of context {EKS_CONTEXT}):", markup=False)
    bindings, _ = desired_bindings(loaded, app, EKS_TARGET, target)
    status = 0
    for binding in bindings:
        if binding.kind is ServiceType.JOB:
            job = control.run_job(state, target.namespace, f"{app}-{binding.service}")
            out.print(f"  started job {job} for {binding.service}", markup=False)
        pod = _running_pod(kube_client, target.namespace, app, binding.service)
        if pod is None:
            out.print(f"  {binding.service}: no running pod found", markup=False)
            status = 1
            continue
        result = control.exec_in_pod(state, target.namespace, pod,
                                     [sys.executable, "-m", "keyless", "doctor", "--format", "json"], capture=True)
        try:
            checks = json.loads(result.stdout)
        except ValueError:
            out.print(f"  {binding.service}: doctor failed: {result.stderr.strip() or result.stdout.strip()}",
                      markup=False)
            status = 1
            continue
        aws = next((c for c in checks if c["cloud"] == "aws" and c["verdict"] != "error"), None)
        if aws is not None and "arn" in aws["details"]:
            out.print(f"  {binding.service:<16} pod {pod}: assumed {aws['details']['arn']} "
                      f"(via {aws['details'].get('method')})", markup=False)
        else:
            problem = "; ".join(c["summary"] for c in checks)
            out.print(f"  {binding.service:<16} pod {pod}: NO identity: {problem}", markup=False)
            status = 1
    out.print("", markup=False)
    out.print("Run `keyless demo` again: the plan shows no changes. `keyless sandbox down` stops the sandbox.",
              markup=False)
    return status
