"""Calls keyless makes to EKS for one command, counted per operation and per object with boto3's public event
hooks: a no-op makes no write and reads each object at most once, a cold apply never polls, a saved plan is
observed once, and a one-service change touches that service only."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest
from e2e_support import Sandbox, run_cli
from lightkube import Client, KubeConfig

from keyless import engine
from keyless.inputs import load_targets_file
from keyless.plan import Refresh, planfile
from keyless.porter import load_app
from keyless.providers.aws import AwsProvider
from keyless.sandbox.porter import deploy_workloads
from keyless.sandbox.stack import EKS_CONTEXT, EKS_TARGET
from keyless.targets import AwsTarget

pytestmark = pytest.mark.integration

SERVICES = 24
PAGE = 100
READS = ("ListPodIdentityAssociations", "DescribePodIdentityAssociation")
WRITES = ("CreatePodIdentityAssociation", "UpdatePodIdentityAssociation", "DeletePodIdentityAssociation",
          "TagResource", "UntagResource")


class Calls:
    """Every EKS request of a boto3 session: by operation, and Describes by association id."""

    def __init__(self) -> None:
        self.session = boto3.Session()
        self.by_operation: Counter[str] = Counter()
        self.described: Counter[str] = Counter()
        self.session.events.register("before-call.eks", self._count)

    def _count(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        self.by_operation[model.name] += 1
        if model.name == "DescribePodIdentityAssociation":
            self.described[params["url_path"].rsplit("/", 1)[-1]] += 1  # .../pod-identity-associations/ID

    @property
    def writes(self) -> int:
        return sum(self.by_operation[w] for w in WRITES)


def porter_text(app: str, roles: dict[str, str | None]) -> str:
    lines = [f"name: {app}", "services:"]
    for service, role in roles.items():
        lines += [f"  - name: {service}", "    type: worker"]
        if role:
            lines += ["    connections:", "      - type: awsRole", f"        role: {role}"]
    return "\n".join(lines) + "\n"


def _target(env: dict[str, str]) -> AwsTarget:
    target = load_targets_file(Path(env["KEYLESS_TARGETS"]), env).get(EKS_TARGET)
    assert isinstance(target, AwsTarget)
    return target


def plan(env: dict[str, str], app: str, text: str, *,
         refresh: Refresh = Refresh.FULL) -> tuple[engine.PlannedApp, AwsProvider, Calls, Any]:
    """`keyless plan` as the CLI runs it, with a provider whose session counts its requests."""
    loaded = load_app(text.encode(), "porter.yaml", {})
    client = Client(KubeConfig.from_file(env["KUBECONFIG"]).get(context_name=EKS_CONTEXT), namespace="shop")
    deploy_workloads(client, app, loaded.app, "shop")
    target = _target(env)
    calls = Calls()
    provider = AwsProvider(target, calls.session, settle=0.2)
    _, kube = engine.connect(EKS_TARGET, target)
    planned = engine.plan_app(engine.PlanInput(loaded, app, EKS_TARGET, target), provider, kube, refresh=refresh)
    return planned, provider, calls, kube


def apply(env: dict[str, str], app: str, text: str) -> tuple[engine.PlannedApp, Calls]:
    """`keyless apply -f porter.yaml --auto-approve`: one observation, then the plan carried out."""
    planned, provider, calls, kube = plan(env, app, text)
    report = engine.apply_plan(planned.plan, provider, kube)
    assert not report.failures, [f.message for f in report.failures]
    return planned, calls


def unchanged(env: dict[str, str], app: str, roles: dict[str, str | None], refresh: Refresh) -> Calls:
    """Plan an unchanged app with `refresh`: no change, and the same observation as a full refresh; its calls."""
    full, _, _, _ = plan(env, app, porter_text(app, roles))
    planned, _, calls, _ = plan(env, app, porter_text(app, roles), refresh=refresh)
    assert not planned.plan.changes
    assert planned.plan.observed_digest == full.plan.observed_digest
    assert calls.by_operation["ListPodIdentityAssociations"] == 0
    return calls


def _associations(env: dict[str, str]) -> int:
    eks = boto3.client("eks")
    pages = eks.get_paginator("list_pod_identity_associations").paginate(clusterName=_target(env).cluster)
    return sum(len(page["associations"]) for page in pages)


def test_cold_apply_no_op_and_one_change_cost_what_they_must(sandbox: Sandbox, env: dict[str, str]) -> None:
    app = "counted"
    roles: dict[str, str | None] = {f"s{i:02d}": "keyless-demo-api" for i in range(SERVICES)}

    # Cold: one listing, a create per service, and no Describe at all: nothing to read, and the creates'
    # answers say when each settles (no polling).
    planned, calls = apply(env, app, porter_text(app, roles))
    assert [a.kind.value for a in planned.plan.changes if a.resource.value == "cloud_binding"] == ["create"] * SERVICES
    pages = math.ceil(_associations(env) / PAGE)
    assert calls.by_operation["CreatePodIdentityAssociation"] == SERVICES
    assert calls.by_operation["ListPodIdentityAssociations"] == max(1, math.ceil((_associations(env) - SERVICES)
                                                                                 / PAGE))
    assert calls.by_operation["DescribePodIdentityAssociation"] == 0
    assert calls.writes == SERVICES

    # No change (full refresh): the listing's pages once, each owned association described exactly once, no write.
    # (A plan that creates nothing does not count the cluster's associations: the listing is observe's.)
    planned, calls = apply(env, app, porter_text(app, roles))
    assert not planned.plan.changes
    assert calls.writes == 0
    assert calls.by_operation["ListPodIdentityAssociations"] == pages
    assert len(calls.described) == SERVICES
    assert set(calls.described.values()) == {1}

    # One role changed: one Update, and still every object read once (the update reuses what observe read).
    roles["s03"] = "keyless-demo-worker"
    planned, calls = apply(env, app, porter_text(app, roles))
    assert calls.by_operation["UpdatePodIdentityAssociation"] == 1
    assert calls.writes == 1
    assert calls.by_operation["ListPodIdentityAssociations"] == pages
    assert set(calls.described.values()) == {1}

    # One connection removed: one Delete, of an association read once.
    roles["s04"] = None
    planned, calls = apply(env, app, porter_text(app, roles))
    assert calls.by_operation["DeletePodIdentityAssociation"] == 1
    assert calls.writes == 1
    assert set(calls.described.values()) == {1}


def test_a_saved_plan_is_observed_once_when_applied(sandbox: Sandbox, env: dict[str, str], tmp_path: Path) -> None:
    app = "saved"
    roles: dict[str, str | None] = {f"s{i}": "keyless-demo-api" for i in range(6)}
    apply(env, app, porter_text(app, roles))
    roles["s1"] = "keyless-demo-worker"
    roles["s2"] = None
    planned, _, _, _ = plan(env, app, porter_text(app, roles))
    saved = tmp_path / "plan.json"
    saved.write_text(json.dumps(planfile.dump(planned.plan)))

    # `keyless apply plan.json`, in a new process: a fresh provider observes once for staleness, then applies.
    plan_again = planfile.load(json.loads(saved.read_text()))
    target = _target(env)
    calls = Calls()
    provider = AwsProvider(target, calls.session, settle=0.2)
    _, kube = engine.connect(EKS_TARGET, target)
    observed = engine.observe_saved(plan_again, provider, kube, target.namespace)
    assert observed.digest() == plan_again.observed_digest
    report = engine.apply_plan(plan_again, provider, kube)
    assert not report.failures
    assert calls.by_operation["ListPodIdentityAssociations"] == math.ceil(
        (_associations(env) + 1) / PAGE)  # listed before the delete, once
    assert set(calls.described.values()) == {1}
    assert calls.by_operation["UpdatePodIdentityAssociation"] == 1
    assert calls.by_operation["DeletePodIdentityAssociation"] == 1
    assert calls.writes == 2


def test_refresh_false_trusts_the_journal_and_reads_no_object(sandbox: Sandbox, env: dict[str, str]) -> None:
    app = "journaled"
    roles: dict[str, str | None] = {f"s{i:02d}": "keyless-demo-api" for i in range(12)}
    apply(env, app, porter_text(app, roles))

    # No change: not one association listed or described; the journal observes what a full refresh observes.
    calls = unchanged(env, app, roles, Refresh.NONE)
    assert calls.by_operation["DescribePodIdentityAssociation"] == 0
    assert set(calls.by_operation) <= {"DescribeCluster", "DescribeAddon"}  # the preflight's two reads

    # One role changed: that service alone is read (its key listed, its association described), then updated.
    roles["s05"] = "keyless-demo-worker"
    planned, provider, calls, kube = plan(env, app, porter_text(app, roles), refresh=Refresh.NONE)
    assert not engine.apply_plan(planned.plan, provider, kube).failures
    assert calls.by_operation["UpdatePodIdentityAssociation"] == 1
    assert calls.writes == 1
    assert sum(calls.by_operation.values()) <= 6
    [changed] = [a for a in planned.plan.changes if a.observed is not None]
    assert list(calls.described) == [changed.observed.id]  # only the association that changes

    # The CLI spells it as Terraform does, and as --no-refresh; anything else is a usage error.
    for spelling in (["--refresh=false"], ["--no-refresh"]):
        code, output = run_cli("plan", "-f", str(_written(env, app, roles)), "--target", EKS_TARGET, *spelling)
        assert code == 0, output
        assert "No changes" in output
    code, output = run_cli("plan", "-f", str(_written(env, app, roles)), "--target", EKS_TARGET, "--refresh=maybe")
    assert code == 2
    assert "expected true or false" in output


def test_a_bound_refresh_reads_each_binding_by_its_id_and_lists_nothing(sandbox: Sandbox, env: dict[str, str]) -> None:
    """What the operator's periodic refresh costs: one Describe per binding, whatever the size of the cluster."""
    app = "bounded"
    roles: dict[str, str | None] = {f"s{i:02d}": "keyless-demo-api" for i in range(12)}
    apply(env, app, porter_text(app, roles))

    # No change: each association described once by the id its account records; not one list page.
    calls = unchanged(env, app, roles, Refresh.BOUND)
    assert len(calls.described) == 12
    assert set(calls.described.values()) == {1}
    assert calls.writes == 0

    # One association deleted by hand: its id is gone, so its key alone is listed; the plan creates it again, and
    # counting the cluster for the quota is the one whole listing.
    eks = boto3.client("eks")
    [gone] = eks.list_pod_identity_associations(clusterName=_target(env).cluster, namespace="shop",
                                                serviceAccount=f"{app}-s07")["associations"]
    eks.delete_pod_identity_association(clusterName=_target(env).cluster, associationId=gone["associationId"])
    pages = math.ceil(_associations(env) / PAGE)
    full, _, _, _ = plan(env, app, porter_text(app, roles))
    bound, provider, calls, kube = plan(env, app, porter_text(app, roles), refresh=Refresh.BOUND)
    assert [(a.kind.value, a.service) for a in bound.plan.changes if a.resource.value == "cloud_binding"] == [
        ("create", "s07")]
    assert bound.plan.observed_digest == full.plan.observed_digest
    assert calls.by_operation["ListPodIdentityAssociations"] == 1 + pages
    assert len(calls.described) == 12
    assert set(calls.described.values()) == {1}
    assert not engine.apply_plan(bound.plan, provider, kube).failures

    # Repaired, and the journal records the new id: the next bound refresh lists nothing again.
    again, _, calls, _ = plan(env, app, porter_text(app, roles), refresh=Refresh.BOUND)
    assert not again.plan.changes
    assert calls.by_operation["ListPodIdentityAssociations"] == 0


def _written(env: dict[str, str], app: str, roles: dict[str, str | None]) -> Path:
    path = Path(env["KUBECONFIG"]).parent / f"{app}-porter.yaml"
    path.write_text(porter_text(app, roles))
    return path
