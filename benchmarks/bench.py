"""`make bench`: how long keyless takes, and how much memory it needs, for a 300-service app on the sandbox.

Measures, each as the median of several runs where cheap:
  1. loading and validating a 300-service porter.yaml (pure core);
  2. planning it against the sandbox (IAM GetRole per role, paginated association listing, Kubernetes reads);
  3. applying it (associations, service accounts, rollouts), with propagation waits set to zero;
  4. planning again when nothing changed (must be "no changes", no write call);
  5. the same app on GKE (300 services on two Google service accounts): plan, apply (one setIamPolicy per
     account, a token exchange per service before its rollout) and plan again, with Google's request count;
  6. the control plane on SQLite, in process: importing the app through the API, changing one connection
     (the porter.yaml edit, re-validation and the store write), and exporting it again.
Time is wall-clock (the sandbox runs in its own process, as `keyless sandbox up` starts it, so it does not
count against keyless's memory); memory is the keyless process's peak resident set size after each phase.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from lightkube import Client, KubeConfig

from keyless import engine
from keyless.inputs import load_targets_file
from keyless.kube.cluster import ClusterKube
from keyless.porter import load_app
from keyless.providers.aws import AwsProvider
from keyless.providers.gcp import GcpProvider
from keyless.sandbox import control
from keyless.sandbox.porter import deploy_workloads
from keyless.sandbox.stack import EKS_TARGET, GKE_CONTEXT, GKE_TARGET
from keyless.targets import AwsTarget, GcpTarget

T = TypeVar("T")
SERVICES = int(os.environ.get("KEYLESS_BENCH_SERVICES", "300"))


GSAS = ("shop-web@keyless-sandbox.iam.gserviceaccount.com", "shop-worker@keyless-sandbox.iam.gserviceaccount.com")


def porter_yaml(services: int, cloud: str = "aws") -> bytes:
    lines = ["version: v2", "name: bench", "services:"]
    for i in range(services):
        kind = ("web", "worker", "job")[i % 3]
        lines += [f"  - name: svc-{i:03d}", f"    type: {kind}", "    run: ./start", "    cpuCores: 0.25",
                  "    ramMegabytes: 256"]
        if kind == "web":
            lines += ["    port: 8080"]
        if kind == "job":
            lines += ["    cron: '*/5 * * * *'"]
        if cloud == "gcp":
            lines += ["    connections:", "      - type: gcpServiceAccount",
                      f"        serviceAccountEmail: {GSAS[i % 2]}"]
        else:
            role = "keyless-demo-api" if i % 2 else "keyless-demo-worker"
            lines += ["    connections:", "      - type: awsRole", f"        role: {role}"]
    return ("\n".join(lines) + "\n").encode()


def measure(label: str, fn: Callable[[], T], repeat: int = 1) -> T:
    times: list[float] = []
    result: T | None = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"{label:<48} median {statistics.median(times) * 1000:9.1f} ms   peak RSS {peak:7.1f} MiB"
          f"   (runs: {repeat})", flush=True)
    assert result is not None
    return result


def control_plane(data: bytes, services: int) -> None:
    """The API's cost for a big app: each connection change re-validates the whole porter.yaml."""
    from fastapi.testclient import TestClient

    from keyless.server.app import create_app
    from keyless.store import Role, Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"sqlite:///{tmp}/bench.db")
        admin = {"Authorization": f"Bearer {store.create_token('bench', Role.ADMIN, 'bench')[1]}"}
        with TestClient(create_app(store, {})) as client:
            def post() -> int:
                return client.post("/api/v1/apps", headers=admin | {"content-type": "application/yaml"},
                                   content=data).status_code

            assert measure("API: import the app", post) == 201
            roles = iter(f"keyless-bench-{i}" for i in range(1000))

            middle = f"/api/v1/apps/bench/services/svc-{services // 2:03d}/connections/awsRole"

            def toggle() -> int:
                return client.put(middle, headers=admin, json={"role": next(roles)}).status_code

            assert measure("API: change one connection", toggle, repeat=7) == 200
            exported = measure("API: export porter.yaml",
                               lambda: client.get("/api/v1/apps/bench/porter.yaml", headers=admin).text, repeat=7)
            assert len(exported) > len(data) // 2
        store.close()


def main() -> int:
    data = porter_yaml(SERVICES)
    print(f"keyless benchmark: {SERVICES} services ({len(data) / 1024:.0f} KiB porter.yaml), "
          f"python {sys.version.split()[0]}")
    loaded = measure(f"load + validate porter.yaml ({SERVICES} services)",
                     lambda: load_app(data, "porter.yaml", {}), repeat=7)
    control_plane(data, SERVICES)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["KEYLESS_SANDBOX_DIR"] = tmp
        state, _ = control.up(Path(tmp))
        try:
            os.environ.update(state.env)
            target = load_targets_file(state.env["KEYLESS_TARGETS"], os.environ).get(EKS_TARGET)
            assert isinstance(target, AwsTarget)
            client = Client(KubeConfig.from_file(state.env["KUBECONFIG"]), namespace=target.namespace)
            deploy_workloads(client, "bench", loaded.app, target.namespace)
            provider = AwsProvider(target, settle=0.0)
            kube = ClusterKube(target.kubernetes)
            spec = engine.PlanInput(loaded, "bench", EKS_TARGET, target)
            planned = measure("plan (nothing bound yet)", lambda: engine.plan_app(spec, provider, kube))
            print(f"  {planned.plan.summary()}")
            report = measure("apply", lambda: engine.apply_plan(planned.plan, provider, kube))
            print(f"  {len(report.results)} actions, {len(report.failures)} failed")
            again = measure("plan again (no changes expected)", lambda: engine.plan_app(spec, provider, kube),
                            repeat=3)
            print(f"  {again.plan.summary()}")
            if again.plan.changes or report.failures:
                return 1
            if not gke(state.env, porter_yaml(SERVICES, "gcp")):
                return 1
        finally:
            control.down(Path(tmp))
    return 0


def gke(env: dict[str, str], data: bytes) -> bool:
    """The GKE half: Google requests are counted by the provider's REST layer."""
    loaded = load_app(data, "porter.yaml", {})
    target = load_targets_file(env["KEYLESS_TARGETS"], os.environ).get(GKE_TARGET)
    assert isinstance(target, GcpTarget)
    client = Client(KubeConfig.from_file(env["KUBECONFIG"]).get(context_name=GKE_CONTEXT), namespace=target.namespace)
    deploy_workloads(client, "bench", loaded.app, target.namespace)
    provider = GcpProvider(target)
    kube = ClusterKube(target.kubernetes)
    spec = engine.PlanInput(loaded, "bench", GKE_TARGET, target)
    planned = measure("GKE: plan (nothing bound yet)", lambda: engine.plan_app(spec, provider, kube))
    print(f"  {planned.plan.summary()} ({provider.api.calls} Google requests)")
    before = provider.api.calls
    report = measure("GKE: apply (with token-exchange proof per service)",
                     lambda: engine.apply_plan(planned.plan, provider, kube))
    print(f"  {len(report.results)} actions, {len(report.failures)} failed; {provider.api.calls - before} Google "
          f"requests ({len(GSAS)} policy writes expected, plus STS and generateAccessToken per service)")
    fresh = GcpProvider(target)
    again = measure("GKE: plan again (no changes expected)", lambda: engine.plan_app(spec, fresh, kube))
    print(f"  {again.plan.summary()} ({fresh.api.calls} Google requests)")
    return not again.plan.changes and not report.failures


if __name__ == "__main__":
    raise SystemExit(main())
