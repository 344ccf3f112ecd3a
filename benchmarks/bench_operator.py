"""`make bench`'s operator rows: a fleet of KeylessApps kept by `keyless operator`, run as its own process.

What it does, in order (the issue's "500 KeylessApps of 10 services"):
  1. starts the sandbox in this process (SandboxStack), installs the operator's CRD and RBAC from
     `operator_manifests` (not its Deployment), and gives its service account a token and a kubeconfig context;
  2. runs `python -m keyless operator` as a separate process, so that its memory (VmRSS, VmHWM) is its own;
  3. setup, rate limits off: creates APPS KeylessApps of SERVICES awsRole services each on the sandbox EKS target and
     waits until every one is Ready with observedGeneration == generation (the operator's cold apply of them all);
     it looks at the fleet every POLL seconds (that is the resolution of the setup and restart times);
  4. restart: a fresh operator process with the measured --refresh-interval; kopf resumes every app (a plan that reads
     each binding back by its recorded id, no change), so the time until every app has a new lastRefreshTime is a
     refresh of the whole fleet, limits off;
  5. no change: the sandbox's realistic limits and latency on; from when the first refreshes fall due, counters reset
     and one refresh interval passes untouched; then the cloud calls by operation, the Kubernetes calls by verb and
     resource, the writes, how many reconciles started and finished in the interval, and the operator's memory;
  6. one app edited: one service's role changed in one KeylessApp's spec; wall time until its status is Ready for
     the new generation and the EKS association has the new role.

Time: the operator's clock, refresh interval, timers, pacing (EKS reads 20/s per process) and settle waits are real
time; the sandbox's time scale (OPERATOR_TIME_SCALE) divides only the sandbox's own delays and multiplies its rate
limits, so at a scale other than 1 the clouds answer faster than real ones would while the operator does not.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from lightkube import Client, KubeConfig
from lightkube.codecs import load_all_yaml
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.types import PatchType

from keyless.kube.yamltext import to_yaml
from keyless.operator.manifests import operator_manifests
from keyless.operator.resource import GROUP, KIND, PLURAL, VERSION
from keyless.sandbox.stack import DEMO_NAMESPACE, EKS_CONTEXT, EKS_TARGET, SandboxStack

APPS = int(os.environ.get("KEYLESS_BENCH_OPERATOR_APPS", "500"))
SERVICES = int(os.environ.get("KEYLESS_BENCH_OPERATOR_SERVICES", "10"))
# Seconds, the operator's --refresh-interval: its default, 10 minutes.
REFRESH = float(os.environ.get("KEYLESS_BENCH_OPERATOR_REFRESH", "600"))
TIME_SCALE = float(os.environ.get("KEYLESS_BENCH_OPERATOR_TIME_SCALE", "1"))
LATENCY = float(os.environ.get("KEYLESS_BENCH_LATENCY", "0.03"))  # seconds per request, before the scale
SETUP_DEADLINE = float(os.environ.get("KEYLESS_BENCH_OPERATOR_SETUP_DEADLINE", "1800"))
EDIT_DEADLINE = 300.0
POLL = 10.0  # seconds between two looks at the fleet
ROLES = ("keyless-demo-api", "keyless-demo-worker")
OPERATOR_NAMESPACE = "keyless-system"
OPERATOR_ACCOUNT = "keyless-operator"
OPERATOR_CONTEXT = f"{OPERATOR_ACCOUNT}@{EKS_CONTEXT}"
KeylessApp = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)


# --- the fleet ------------------------------------------------------------------------------------------------


def app_name(index: int) -> str:
    return f"fleet-{index:03d}"


def porter_yaml(app: str, role_of: Callable[[int], str]) -> str:
    lines = [f"name: {app}", "services:"]
    for i in range(SERVICES):
        lines += [f"  - name: svc-{i:02d}", "    type: worker", "    run: ./start", "    connections:",
                  "      - type: awsRole", f"        role: {role_of(i)}"]
    return "\n".join(lines) + "\n"


def keylessapp(app: str, porter: str) -> Any:
    return KeylessApp(metadata=ObjectMeta(name=app, namespace=DEMO_NAMESPACE),
                      spec={"target": EKS_TARGET, "porterYaml": porter})


def default_roles(i: int) -> str:
    return ROLES[i % 2]


# --- the operator, installed and running ------------------------------------------------------------------------


def install(stack: SandboxStack, admin: Client, kubeconfig: Path) -> None:
    """CRD, service account and least-privilege RBAC as `keyless operator manifests` prints them (the Deployment
    aside: the operator runs here as a process), and `kubectl create token` for its context."""
    documents = [d for d in operator_manifests(OPERATOR_NAMESPACE, "keyless:bench") if d.get("kind") != "Deployment"]
    for obj in load_all_yaml(to_yaml(*documents), create_resources_for_crds=True):
        admin.apply(obj, force=True)
    assert stack.eks is not None
    token = stack.eks.mint_token(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, expiration_seconds=24 * 3600)
    stack.eks.write_kubeconfig(kubeconfig, OPERATOR_CONTEXT, token=token, make_current=False)


def set_settle(targets: Path, seconds: float | None) -> None:
    """The EKS target's settleSeconds in the operator's targets file (which it reads again when it changes)."""
    lines = [line for line in targets.read_text().splitlines() if not line.startswith("    settleSeconds:")]
    if seconds is not None:
        at = next(i for i, line in enumerate(lines) if line.startswith("    kubernetes:"))  # the EKS target's, first
        lines.insert(at + 1, f"    settleSeconds: {seconds:g}")
    targets.write_text("\n".join(lines) + "\n")
    time.sleep(0.05)  # a new mtime, even on coarse clocks


@dataclass
class Memory:
    rss: float  # MiB
    peak: float


def memory(pid: int) -> Memory:
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = float(value.split()[0]) / 1024  # kB
    return Memory(fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0))


# --- watching the fleet ---------------------------------------------------------------------------------------


def _ready(obj: Any) -> bool:
    status = obj.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return ready and status.get("observedGeneration") == obj["metadata"]["generation"]


def _refreshed(obj: Any) -> datetime | None:
    stamp = (obj.get("status") or {}).get("lastRefreshTime")
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) if stamp else None


def list_fleet(admin: Client) -> list[Any]:
    return list(admin.list(KeylessApp, namespace=DEMO_NAMESPACE))


def wait_for(admin: Client, operator: subprocess.Popen[bytes], done: Callable[[Any], bool], apps: int,
             deadline: float) -> int:
    """Polls every POLL seconds until `done` holds for every app; answers for how many it does."""
    count = 0
    while time.monotonic() < deadline:
        if operator.poll() is not None:
            raise RuntimeError(f"the operator exited ({operator.returncode})")
        count = sum(1 for obj in list_fleet(admin) if done(obj))
        if count >= apps:
            break
        time.sleep(POLL)
    return count


def start_operator(targets: Path, refresh: float, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "keyless", "operator", "--context", OPERATOR_CONTEXT, "--targets", str(targets),
             "--all-namespaces", "--refresh-interval", f"{refresh:g}s"],
            env=dict(os.environ), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)


def stop_operator(operator: subprocess.Popen[bytes]) -> None:
    if operator.poll() is None:
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(60)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait(10)


# --- the rows -------------------------------------------------------------------------------------------------


@dataclass
class OperatorRow:
    scenario: str
    wall: float
    detail: list[str] = field(default_factory=list)


def _ops(calls: Mapping[str, int]) -> str:
    return ", ".join(f"{op} {n}" for op, n in sorted(calls.items()) if n) or "-"


def _is_write(op: str) -> bool:
    return not op.startswith(("get ", "list ", "watch ", "Describe", "List", "Get"))


def _kube_ops(calls: Mapping[str, int]) -> Counter[str]:
    return Counter({op: n for op, n in calls.items() if " /" not in op})  # resources, not discovery URLs


def _memory_line(mem: Memory) -> str:
    return f"operator VmRSS {mem.rss:.0f} MiB, VmHWM {mem.peak:.0f} MiB"


@dataclass
class Fleet:
    """The running sandbox and what the scenarios share."""

    stack: SandboxStack
    admin: Client
    targets: Path
    log: Path
    cluster: str
    apps: int


def setup(shared: Fleet) -> tuple[OperatorRow, bool]:
    """The operator's cold apply of the fleet, rate limits off, by an operator that refreshes nothing meanwhile;
    answers its row and whether every app became Ready."""
    stack, admin, apps = shared.stack, shared.admin, shared.apps
    # Writes take effect after the stand-in's fixed 1 s, and keyless waits 1 s for them (settleSeconds).
    stack.configure({"rateLimits": "off", "latency": 0, "propagation": "off"})
    set_settle(shared.targets, 1.0)
    operator = start_operator(shared.targets, 24 * 3600, shared.log)  # no refresh during the setup
    try:
        start = time.monotonic()
        for i in range(apps):
            admin.create(keylessapp(app_name(i), porter_yaml(app_name(i), default_roles)))
        ready = wait_for(admin, operator, _ready, apps, start + SETUP_DEADLINE)
        row = OperatorRow(f"setup: {apps} apps x {SERVICES} services", time.monotonic() - start)
        row.detail.append(f"{ready}/{apps} Ready for their generation: the operator's cold apply of "
                          f"{apps * SERVICES} services (rate limits off, latency 0, writes effective after 1 s, "
                          "settleSeconds 1)")
        row.detail.append(_memory_line(memory(operator.pid)))
    finally:
        stop_operator(operator)
    return row, ready == apps


def run(out: Callable[[str], None] = print) -> list[OperatorRow]:
    rows: list[OperatorRow] = []
    with tempfile.TemporaryDirectory() as tmp:
        stack = SandboxStack(Path(tmp) / "sandbox", association_delay=1.0, time_scale=TIME_SCALE)
        state = stack.start()
        saved = dict(os.environ)
        operator: subprocess.Popen[bytes] | None = None
        log = Path(tmp) / "operator.log"
        try:
            os.environ.update(state.env)
            for key in ("AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"):
                os.environ.pop(key, None)
            kubeconfig = Path(state.env["KUBECONFIG"])
            admin = Client(KubeConfig.from_file(kubeconfig).get(context_name=EKS_CONTEXT), field_manager="bench")
            eks = boto3.client("eks")
            cluster = str(eks.list_clusters()["clusters"][0])
            held = sum(len(p["associations"]) for p in eks.get_paginator(
                "list_pod_identity_associations").paginate(clusterName=cluster))
            quota = stack.aws.association_quota
            apps = min(APPS, (quota - held) // SERVICES)
            out(f"the sandbox cluster holds {held} pod identity associations before the fleet (quota {quota}): "
                f"{apps} apps x {SERVICES} services fit" + ("" if apps == APPS else f", not {APPS}"))
            install(stack, admin, kubeconfig)
            targets = Path(tmp) / "operator.targets.yaml"
            targets.write_text(Path(state.env["KEYLESS_TARGETS"]).read_text())
            shared = Fleet(stack, admin, targets, log, cluster, apps)
            row, all_ready = setup(shared)
            rows.append(row)
            if not all_ready:
                row.detail.append(f"not every app was Ready within {SETUP_DEADLINE:g} s: nothing more measured")
                return rows

            # A fresh operator with the measured refresh interval: its start reconciles every app (no change).
            set_settle(targets, None)  # keyless's default settle from now on, as with realistic propagation
            restart = datetime.now(UTC).replace(microsecond=0)
            started = time.monotonic()
            operator = start_operator(targets, REFRESH, log)
            resumed = wait_for(admin, operator, lambda obj: (_refreshed(obj) or restart) >= restart and _ready(obj),
                               apps, started + SETUP_DEADLINE)
            row = OperatorRow("restart: every app reconciled once", time.monotonic() - started)
            row.detail.append(f"{resumed}/{apps} reconciled (kopf resumes each app: a plan reading each binding back "
                              "by id, no change), rate limits off: a full refresh of the fleet as fast as the operator "
                              "and the sandbox go")
            rows.append(row)

            # No change: realistic limits and latency; one refresh interval, from when refreshes fall due.
            stack.configure({"rateLimits": "realistic", "latency": LATENCY, "propagation": "realistic"})
            time.sleep(max(0.0, started + REFRESH - time.monotonic()))
            stack.reset_calls()
            time.sleep(REFRESH)
            calls = stack.calls()
            mem = memory(operator.pid)
            aws = Counter(calls["aws"]["operations"])
            assert stack.eks is not None
            kube = _kube_ops(calls[stack.eks.knobs.name]["operations"])
            cloud_writes = sum(n for op, n in aws.items() if _is_write(op))
            kube_writes = sum(n for op, n in kube.items() if _is_write(op))
            completed = kube.get("patch keylessapps/status", 0)
            row = OperatorRow(f"no change: one interval ({REFRESH:g} s)", REFRESH)
            row.detail += [
                f"reconciles started {aws.get('DescribeCluster', 0)} (DescribeCluster), status written "
                f"{completed}, of {apps} apps due",
                f"cloud calls {sum(aws.values())}, {cloud_writes} writes: {_ops(aws)}",
                f"Kubernetes calls {sum(kube.values())}, {kube_writes} writes: {_ops(kube)}",
                _memory_line(mem),
            ]
            rows.append(row)
            rows.append(edit(shared, operator))
        finally:
            if operator is not None:
                stop_operator(operator)
                if operator.returncode not in (0, -signal.SIGTERM):
                    out(f"operator log (last lines):\n{log.read_text()[-3000:]}")
            stack.stop()
            os.environ.clear()
            os.environ.update(saved)
    return rows


def edit(shared: Fleet, operator: subprocess.Popen[bytes]) -> OperatorRow:
    """One app edited: service 0 of the first app moves to the other role, under the same limits."""
    admin, name = shared.admin, app_name(0)
    eks = boto3.client("eks")
    edited = porter_yaml(name, lambda i: ROLES[(i + (i == 0)) % 2])
    wanted = boto3.client("iam").get_role(RoleName=ROLES[1])["Role"]["Arn"]
    account = f"{name}-svc-00"
    start = time.monotonic()
    patched = admin.patch(KeylessApp, name, {"spec": {"porterYaml": edited}}, namespace=DEMO_NAMESPACE,
                          patch_type=PatchType.MERGE)
    generation = patched["metadata"]["generation"]
    done = False
    while not done and time.monotonic() - start < EDIT_DEADLINE and operator.poll() is None:
        obj = admin.get(KeylessApp, name, namespace=DEMO_NAMESPACE)
        if _ready(obj) and obj["metadata"]["generation"] == generation:
            found = eks.list_pod_identity_associations(clusterName=shared.cluster, namespace=DEMO_NAMESPACE,
                                                       serviceAccount=account)["associations"]
            done = bool(found) and eks.describe_pod_identity_association(
                clusterName=shared.cluster, associationId=found[0]["associationId"])["association"]["roleArn"] \
                == wanted
        if not done:
            time.sleep(0.2)
    row = OperatorRow("one app edited: time to applied", time.monotonic() - start)
    row.detail.append("Ready for the new generation, the association on the new role (realistic limits, "
                      "propagation 2-10 s, keyless's settle 10 s; the fleet's refreshes still running)" if done
                      else f"not applied within {EDIT_DEADLINE:g} s")
    return row


def print_rows(rows: list[OperatorRow]) -> None:
    print(f"\n{'operator scenario':<40} {'wall s':>7}")
    for row in rows:
        print(f"{row.scenario:<40} {row.wall:7.2f}")
        for line in row.detail:
            print(f"{'':<40}   {line}")


def main() -> int:
    print(f"keyless operator benchmark: {APPS} KeylessApps x {SERVICES} awsRole services, refresh interval "
          f"{REFRESH:g} s, sandbox time scale {TIME_SCALE:g}")
    rows = run()
    print_rows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
