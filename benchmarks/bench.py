"""`make bench`: what keyless costs at scale on the sandbox, in one table from one run.

Scenarios (render-mode targets: the cloud side is what is measured; Kubernetes manifests go to files):
  (a) cold apply of AWS_SERVICES awsRole services on one EKS cluster;
  (b) the same again, nothing changed, full refresh;
  (c) (b) with --refresh=false (keyless's journal on the service accounts);
  (d) one role changed, --refresh=false;
  (e) Azure: cold apply of AZURE_SERVICES services on AZURE_IDENTITIES managed identities;
  (f) GKE: cold apply of GCP_SERVICES services on the sandbox's Google service accounts.
Then the operator's rows (bench_operator.py): a fleet of KeylessApps, no change for one refresh interval, one edited.
For each: wall seconds, calls by operation (counted by keyless's SDK layers), writes, peak RSS of this process, the
floor the cloud's limits impose (for each limit, its calls / its rate, the longest of those, plus one settle window
where the scenario writes) and efficiency = floor / wall. The per-resource strategy (list, describe every object,
then write what differs, 10 at a time, the SDK's own retries, no pacing) runs on the same sandbox for the AWS
scenarios, and keyless / per-resource is the ratio of their wall times.

The limits are keyless's defaults (AWS does not publish EKS's; ARM's are in REFERENCE.md). The sandbox runs with
`--rate-limits realistic`, refusing requests past them as the clouds do, a per-request latency, and a time scale
that multiplies every rate and divides every delay, on the sandbox and on keyless alike, so a run keeps the clouds'
ratios in seconds (keyless's own CPU time is not scaled: it counts more here than against a real cloud).
"""

from __future__ import annotations

import math
import os
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import bench_operator  # this directory, first on sys.path when run as a script
import boto3
import httpx
from botocore.config import Config

from keyless import engine
from keyless.inputs import load_targets_file
from keyless.kube.render import RenderedKube
from keyless.plan import Refresh
from keyless.porter import load_app
from keyless.providers.aws import PROPAGATION_SETTLE, AwsProvider
from keyless.providers.aws_api import DEFAULT_LIMITS as AWS_LIMITS
from keyless.providers.aws_api import AwsLimits
from keyless.providers.azure import AzureProvider
from keyless.providers.azure_api import DEFAULT_LIMITS as AZURE_LIMITS
from keyless.providers.azure_api import AzureLimits
from keyless.providers.gcp import GcpProvider
from keyless.providers.retry import RateLimit
from keyless.sandbox import control
from keyless.targets import AnyTarget, AwsTarget, AzureTarget, GcpTarget, KubernetesMode

AWS_SERVICES = int(os.environ.get("KEYLESS_BENCH_SERVICES", "1000"))
AZURE_SERVICES = int(os.environ.get("KEYLESS_BENCH_AZURE_SERVICES", "200"))
AZURE_IDENTITIES = int(os.environ.get("KEYLESS_BENCH_AZURE_IDENTITIES", "100"))
GCP_SERVICES = int(os.environ.get("KEYLESS_BENCH_GCP_SERVICES", "200"))
TIME_SCALE = float(os.environ.get("KEYLESS_BENCH_TIME_SCALE", "2"))
LATENCY = float(os.environ.get("KEYLESS_BENCH_LATENCY", "0.03"))  # seconds per cloud request, before the scale
PER_RESOURCE_CONCURRENCY = 10
GSAS = ("shop-web@keyless-sandbox.iam.gserviceaccount.com", "shop-worker@keyless-sandbox.iam.gserviceaccount.com")
ROLES = ("keyless-demo-api", "keyless-demo-worker")
APP = "bench"


def _scaled(limit: RateLimit) -> RateLimit:
    return RateLimit(per_second=limit.per_second * TIME_SCALE, burst=limit.burst)


AWS_SCALED = AwsLimits(eks_reads=_scaled(AWS_LIMITS.eks_reads), eks_writes=_scaled(AWS_LIMITS.eks_writes),
                       iam_reads=_scaled(AWS_LIMITS.iam_reads), iam_writes=_scaled(AWS_LIMITS.iam_writes))
AZURE_SCALED = AzureLimits(writes_per_subscription=_scaled(AZURE_LIMITS.writes_per_subscription),
                           writes_per_identity=_scaled(AZURE_LIMITS.writes_per_identity))
AWS_SETTLE = PROPAGATION_SETTLE / TIME_SCALE


# --- porter.yaml and targets --------------------------------------------------------------------------------


def porter_yaml(services: int, connection: Callable[[int], list[str]]) -> bytes:
    lines = ["version: v2", f"name: {APP}", "services:"]
    for i in range(services):
        lines += [f"  - name: svc-{i:04d}", "    type: worker", "    run: ./start", "    connections:",
                  *(f"      {line}" for line in connection(i))]
    return ("\n".join(lines) + "\n").encode()


def aws_connection(role_of: Callable[[int], str]) -> Callable[[int], list[str]]:
    return lambda i: ["- type: awsRole", f"  role: {role_of(i)}"]


def azure_connection(resource_group: str) -> Callable[[int], list[str]]:
    return lambda i: ["- type: azureManagedIdentity", f"  identityName: bench-id-{i % AZURE_IDENTITIES:03d}",
                      f"  resourceGroup: {resource_group}"]


def gcp_connection(i: int) -> list[str]:
    return ["- type: gcpServiceAccount", f"  serviceAccountEmail: {GSAS[i % len(GSAS)]}"]


def render_targets(sandbox: Mapping[str, AnyTarget], out: Path) -> dict[str, AnyTarget]:
    """The sandbox's targets, each in render mode (the cloud side is what the benchmark measures)."""
    return {name: target.model_copy(update={"kubernetes": target.kubernetes.model_copy(
        update={"mode": KubernetesMode.RENDER, "out_dir": str(out / name)})}) for name, target in sandbox.items()}


# --- measuring ------------------------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass
class Row:
    scenario: str
    wall: float
    calls: Counter[str]
    writes: int
    rss: float
    floor: float
    per_resource: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def efficiency(self) -> float:
        return self.floor / self.wall if self.wall > 0 else 0.0


def _floor(calls: Mapping[str, int], limits: Mapping[str, RateLimit], settle: float) -> float:
    """The least time the limits allow for these calls: the busiest limit's calls at its rate (its burst free),
    plus one settle window when something was written."""
    busiest = max((max(0, n - limits[k].burst) / limits[k].per_second for k, n in calls.items() if k in limits),
                  default=0.0)
    return busiest + settle


def _aws_classes(calls: Mapping[str, int]) -> Counter[str]:
    by_class: Counter[str] = Counter()
    for operation, n in calls.items():
        service, name = operation.split(":", 1)
        read = name.startswith(("Describe", "List", "Get"))
        by_class[f"{service} {'reads' if read else 'writes'}"] += n
    return by_class


AWS_CLASS_LIMITS = {"eks reads": AWS_SCALED.eks_reads, "eks writes": AWS_SCALED.eks_writes,
                    "iam reads": AWS_SCALED.iam_reads, "iam writes": AWS_SCALED.iam_writes}
AWS_WRITES = ("Create", "Update", "Delete", "Tag", "Untag")


def aws_writes(calls: Mapping[str, int]) -> int:
    return sum(n for op, n in calls.items() if op.split(":", 1)[1].startswith(AWS_WRITES))


def run_aws(scenario: str, target_name: str, target: AwsTarget, data: bytes, *, refresh: Refresh) -> Row:
    loaded = load_app(data, "porter.yaml", {})
    provider = AwsProvider(target, limits=AWS_SCALED, settle=AWS_SETTLE)
    kube = RenderedKube(target_name, target.kubernetes)
    start = time.perf_counter()
    planned = engine.plan_app(engine.PlanInput(loaded, APP, target_name, target), provider, kube, refresh=refresh)
    report = engine.apply_plan(planned.plan, provider, kube) if planned.plan.changes else engine.ApplyReport(())
    wall = time.perf_counter() - start
    calls = Counter(provider.api.calls)
    writes = aws_writes(calls)
    row = Row(scenario, wall, calls, writes, peak_rss_mib(),
              _floor(_aws_classes(calls), AWS_CLASS_LIMITS, AWS_SETTLE if writes else 0.0))
    if report.failures:
        row.notes.append(f"{len(report.failures)} actions failed: {report.failures[0].message}")
    return row


# --- the per-resource strategy, for comparison ----------------------------------------------------------------


def per_resource_aws(target: AwsTarget, wanted: Mapping[tuple[str, str], str]) -> float:
    """What a per-resource tool does: list, describe every object, then create or update what differs, 10 at a
    time, with the SDK's own retries and no pacing; then one settle window. Answers its wall seconds."""
    eks = boto3.client("eks", region_name=target.region,
                       config=Config(max_pool_connections=PER_RESOURCE_CONCURRENCY * 2,
                                     retries={"mode": "standard", "max_attempts": 10}))
    start = time.perf_counter()
    summaries = [s for page in eks.get_paginator("list_pod_identity_associations").paginate(
        clusterName=target.cluster) for s in page["associations"]]
    with ThreadPoolExecutor(PER_RESOURCE_CONCURRENCY) as pool:
        described = list(pool.map(lambda s: eks.describe_pod_identity_association(
            clusterName=target.cluster, associationId=s["associationId"])["association"], summaries))
        current = {(a["namespace"], a["serviceAccount"]): a for a in described}

        def converge(key: tuple[str, str]) -> bool:
            role = wanted[key]
            found = current.get(key)
            if found is None:
                eks.create_pod_identity_association(clusterName=target.cluster, namespace=key[0],
                                                    serviceAccount=key[1], roleArn=role)
                return True
            if found["roleArn"] != role:
                eks.update_pod_identity_association(clusterName=target.cluster,
                                                    associationId=found["associationId"], roleArn=role)
                return True
            return False

        wrote = any(list(pool.map(converge, wanted)))
    if wrote:
        time.sleep(AWS_SETTLE)
    return time.perf_counter() - start


def remove_all_associations(target: AwsTarget) -> None:
    """Clean up between strategies (not measured): limits off meanwhile, so nothing is throttled."""
    knobs = f"{os.environ['AWS_ENDPOINT_URL_EKS']}/_sandbox/knobs"
    httpx.post(knobs, json={"rateLimits": "off"}, timeout=10).raise_for_status()
    try:
        _remove_all(target)
    finally:
        httpx.post(knobs, json={"rateLimits": "realistic"}, timeout=10).raise_for_status()


def _remove_all(target: AwsTarget) -> None:
    eks = boto3.client("eks", region_name=target.region, config=Config(max_pool_connections=20))
    ids = [s["associationId"] for page in eks.get_paginator("list_pod_identity_associations").paginate(
        clusterName=target.cluster, namespace=target.namespace) for s in page["associations"]]
    with ThreadPoolExecutor(PER_RESOURCE_CONCURRENCY) as pool:
        list(pool.map(lambda i: eks.delete_pod_identity_association(clusterName=target.cluster, associationId=i),
                      ids))


# --- the sandbox ----------------------------------------------------------------------------------------------


@contextmanager
def sandbox() -> Iterator[dict[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["KEYLESS_SANDBOX_DIR"] = tmp
        knobs = {"latency": LATENCY, "rateLimits": "realistic", "timeScale": TIME_SCALE}
        state, _ = control.up(Path(tmp), knobs)
        try:
            os.environ.update(state.env)
            yield dict(state.env)
        finally:
            control.down(Path(tmp))


def make_identities(target: AzureTarget, count: int) -> None:
    """The managed identities scenario (e) binds, made as a person would (they are not keyless's to create)."""
    from azure.core.exceptions import HttpResponseError
    from azure.mgmt.msi.v2024_11_30 import ManagedServiceIdentityClient
    from azure.mgmt.msi.v2024_11_30.models import Identity

    from keyless.providers.azure_api import AzureApi

    api = AzureApi(target)
    msi: ManagedServiceIdentityClient = api.msi

    def make(i: int) -> None:
        name = f"bench-id-{i:03d}"
        while True:  # ARM's write limit applies to identities too: wait as it says (not measured)
            try:
                msi.user_assigned_identities.create_or_update(target.resource_group, name,
                                                              Identity(location="eastus"))
                break
            except HttpResponseError as exc:
                if exc.status_code != 429:
                    raise
                time.sleep(0.5)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(make, range(count)))
    api.close()


def run_azure(target_name: str, target: AzureTarget) -> Row:
    loaded = load_app(porter_yaml(AZURE_SERVICES, azure_connection(target.resource_group)), "porter.yaml", {})
    provider = AzureProvider(target, limits=AZURE_SCALED, settle=0.0)
    kube = RenderedKube(target_name, target.kubernetes)
    start = time.perf_counter()
    planned = engine.plan_app(engine.PlanInput(loaded, APP, target_name, target), provider, kube)
    report = engine.apply_plan(planned.plan, provider, kube) if planned.plan.changes else engine.ApplyReport(())
    wall = time.perf_counter() - start
    writes = sum(1 for r in report.results if r.action.resource.value == "cloud_binding" and r.ok)
    per_identity = math.ceil(AZURE_SERVICES / AZURE_IDENTITIES)
    limits = AZURE_SCALED
    floor = max(max(0, writes - limits.writes_per_subscription.burst) / limits.writes_per_subscription.per_second,
                max(0, per_identity - limits.writes_per_identity.burst) / limits.writes_per_identity.per_second)
    row = Row("(e) Azure cold apply", wall, Counter({"ARM credential PUT": writes}), writes, peak_rss_mib(), floor)
    row.notes.append(f"{AZURE_SERVICES} services on {AZURE_IDENTITIES} identities")
    if report.failures:
        row.notes.append(f"{len(report.failures)} actions failed: {report.failures[0].message}")
    return row


def run_gcp(target_name: str, target: GcpTarget) -> Row:
    loaded = load_app(porter_yaml(GCP_SERVICES, gcp_connection), "porter.yaml", {})
    provider = GcpProvider(target)
    kube = RenderedKube(target_name, target.kubernetes)
    start = time.perf_counter()
    planned = engine.plan_app(engine.PlanInput(loaded, APP, target_name, target), provider, kube)
    report = engine.apply_plan(planned.plan, provider, kube) if planned.plan.changes else engine.ApplyReport(())
    wall = time.perf_counter() - start
    row = Row("(f) GKE cold apply", wall, Counter({"Google requests": provider.api.calls}), len(GSAS),
              peak_rss_mib(), 0.0)
    row.notes.append(f"{GCP_SERVICES} services on {len(GSAS)} Google service accounts: one setIamPolicy each; "
                     "no published limit, so no floor")
    if report.failures:
        row.notes.append(f"{len(report.failures)} actions failed: {report.failures[0].message}")
    return row


# --- the table ------------------------------------------------------------------------------------------------


def _calls_text(calls: Mapping[str, int]) -> str:
    return ", ".join(f"{op.split(':', 1)[-1]} {n}" for op, n in sorted(calls.items())) or "-"


def print_table(rows: list[Row]) -> None:
    print(f"{'scenario':<34} {'wall s':>7} {'floor s':>7} {'effic.':>6} {'writes':>6} {'RSS MiB':>7} "
          f"{'vs per-res.':>11}  calls")
    for row in rows:
        ratio = f"{row.wall / row.per_resource:.2f}x" if row.per_resource else "-"
        efficiency = f"{row.efficiency:.2f}" if row.floor > 0 else "-"
        print(f"{row.scenario:<34} {row.wall:7.2f} {row.floor:7.2f} {efficiency:>6} {row.writes:6d} "
              f"{row.rss:7.0f} {ratio:>11}  {_calls_text(row.calls)}")
        for note in row.notes:
            print(f"{'':<34}   {note}")


def main() -> int:
    print(f"keyless benchmark, python {sys.version.split()[0]}; time scale {TIME_SCALE:g}: every rate x{TIME_SCALE:g} "
          f"and every delay /{TIME_SCALE:g}, on keyless and on the sandbox alike")
    print(f"limits (unscaled): EKS reads {AWS_LIMITS.eks_reads.per_second:g}/s, EKS writes "
          f"{AWS_LIMITS.eks_writes.per_second:g}/s, IAM reads {AWS_LIMITS.iam_reads.per_second:g}/s; ARM credential "
          f"writes {AZURE_LIMITS.writes_per_subscription.per_second:g}/s per subscription and "
          f"{AZURE_LIMITS.writes_per_identity.per_second:g}/s per identity; EKS settle {PROPAGATION_SETTLE:g} s")
    print(f"the sandbox: `keyless sandbox up --rate-limits realistic --latency {LATENCY * 1000:g}ms --time-scale "
          f"{TIME_SCALE:g}` (EKS and ARM refuse requests past these limits, as the clouds do)")
    print("render-mode targets: the cloud side is measured, manifests go to files\n")
    rows: list[Row] = []
    with sandbox() as env, tempfile.TemporaryDirectory() as out:
        targets = render_targets(load_targets_file(Path(env["KEYLESS_TARGETS"]), os.environ).by_name,
                                 Path(out))
        aws_name, aws = next((n, t) for n, t in targets.items() if isinstance(t, AwsTarget))
        assert isinstance(aws, AwsTarget)
        roles = {r: boto3.client("iam").get_role(RoleName=r)["Role"]["Arn"] for r in ROLES}
        names = [f"{APP}-svc-{i:04d}" for i in range(AWS_SERVICES)]

        def role(i: int) -> str:
            return ROLES[i % 2]

        # The per-resource strategy first, on the keys keyless binds next, then its associations go again.
        wanted = {(aws.namespace, n): roles[role(i)] for i, n in enumerate(names)}
        per_resource = [per_resource_aws(aws, wanted), per_resource_aws(aws, wanted)]
        wanted[(aws.namespace, names[1])] = roles[ROLES[0]]
        per_resource.append(per_resource_aws(aws, wanted))
        remove_all_associations(aws)

        data = porter_yaml(AWS_SERVICES, aws_connection(role))
        rows.append(run_aws(f"(a) AWS cold apply, {AWS_SERVICES}", aws_name, aws, data, refresh=Refresh.FULL))
        rows.append(run_aws("(b) no change, full refresh", aws_name, aws, data, refresh=Refresh.FULL))
        rows.append(run_aws("(c) no change, --refresh=false", aws_name, aws, data, refresh=Refresh.NONE))
        changed = porter_yaml(AWS_SERVICES, aws_connection(lambda i: ROLES[(i + (i == 1)) % 2]))
        rows.append(run_aws("(d) one role changed, --refresh=false", aws_name, aws, changed, refresh=Refresh.NONE))
        # The per-resource strategy has no cheaper no-op than its full one: (c) is compared with (b)'s.
        for row, seconds in zip(rows, [per_resource[0], per_resource[1], per_resource[1], per_resource[2]],
                                strict=True):
            row.per_resource = seconds

        azure_name, azure = next((n, t) for n, t in targets.items() if isinstance(t, AzureTarget))
        assert isinstance(azure, AzureTarget)
        make_identities(azure, AZURE_IDENTITIES)
        rows.append(run_azure(azure_name, azure))
        gcp_name, gcp = next((n, t) for n, t in targets.items() if isinstance(t, GcpTarget))
        assert isinstance(gcp, GcpTarget)
        rows.append(run_gcp(gcp_name, gcp))
    print_table(rows)
    failed = any(row.notes and "failed" in " ".join(row.notes) for row in rows)
    if bench_operator.APPS > 0:  # KEYLESS_BENCH_OPERATOR_APPS=0 leaves the operator's rows out
        print()
        bench_operator.main()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
