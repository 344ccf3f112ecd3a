"""The KeylessApp resource as values: spec parsing, conditions by the Kubernetes conventions, status rows, manifests,
and how much each kind of reconcile reads back."""

from __future__ import annotations

import random

import pytest

from keyless.errors import InvalidInput
from keyless.kube.manifests import KEYLESS_ROLE_RULES
from keyless.operator.manifests import OPERATOR_RULES, crd_manifest, operator_manifests
from keyless.operator.reconcile import Trigger, backoff, refresh_for
from keyless.operator.resource import (
    Condition,
    ConditionType,
    ConfigMapKeyRef,
    parse_spec,
    porter_yaml_source,
)
from keyless.operator.resource import merge_conditions as merge
from keyless.plan import Refresh

WHERE = "keylessapp/shop/web"


def test_a_spec_with_defaults() -> None:
    spec = parse_spec({"target": "prod-eks", "porterYaml": "services: []\n"}, WHERE)
    assert (spec.target, spec.porter_yaml, spec.porter_yaml_from, spec.app) == (
        "prod-eks", "services: []\n", None, None)
    assert spec.refresh_interval == 600.0
    assert spec.suspend is False


def test_a_spec_from_a_config_map() -> None:
    spec = parse_spec({"target": "t", "porterYamlFrom": {"configMapKeyRef": {"name": "shop", "key": "porter.yaml"}},
                       "app": "shop", "refreshInterval": "1m", "suspend": True}, WHERE)
    assert spec.porter_yaml_from == ConfigMapKeyRef("shop", "porter.yaml")
    assert (spec.app, spec.refresh_interval, spec.suspend) == ("shop", 60.0, True)
    assert porter_yaml_source("shop", "web", spec) == "configmap/shop/shop[porter.yaml]"


@pytest.mark.parametrize(("spec", "message"), [
    ({"porterYaml": "x"}, "spec.target: required"),
    ({"target": "t"}, "give exactly one of porterYaml"),
    ({"target": "t", "porterYaml": "x", "porterYamlFrom": {"configMapKeyRef": {"name": "a", "key": "b"}}},
     "give exactly one of porterYaml"),
    ({"target": "t", "porterYaml": 3}, "spec.porterYaml: must be the porter.yaml text"),
    ({"target": "t", "porterYamlFrom": {"configMapKeyRef": {"name": "a"}}}, "needs configMapKeyRef with a name"),
    ({"target": "t", "porterYaml": "x", "refreshInterval": "soon"}, "spec.refreshInterval: not a duration: 'soon'"),
    ({"target": "t", "porterYaml": "x", "refreshInterval": "1s"}, "too short"),
    ({"target": "t", "porterYaml": "x", "suspend": "yes"}, "spec.suspend: must be true or false"),
])
def test_a_bad_spec_is_invalid_input_naming_the_object_and_field(spec: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput) as bad:
        parse_spec(spec, WHERE)
    assert message in str(bad.value)
    assert str(bad.value).startswith(f"{WHERE}:1:1: ")
    assert bad.value.exit_code == 2


def test_conditions_keep_their_transition_time_until_the_status_flips() -> None:
    first = merge([], [Condition(ConditionType.READY, True, "Applied", "all bound")], "T1", 1)
    assert first == [{"type": "Ready", "status": "True", "reason": "Applied", "message": "all bound",
                      "lastTransitionTime": "T1", "observedGeneration": 1}]
    same = merge(first, [Condition(ConditionType.READY, True, "UpToDate", "no changes")], "T2", 2)
    assert same[0]["lastTransitionTime"] == "T1"
    assert (same[0]["reason"], same[0]["observedGeneration"]) == ("UpToDate", 2)
    flipped = merge(same, [Condition(ConditionType.READY, False, "Drifted", "repairing")], "T3", 2)
    assert (flipped[0]["status"], flipped[0]["lastTransitionTime"]) == ("False", "T3")


def test_conditions_of_other_types_are_kept_and_ordered() -> None:
    conditions = merge([{"type": "Example", "status": "True"}],
                       [Condition(ConditionType.BLOCKED, False, "NotBlocked"),
                        Condition(ConditionType.READY, True, "Applied")], "T", 1)
    assert [c["type"] for c in conditions] == ["Ready", "Blocked", "Example"]


def test_the_crd_is_keylessapps_v1alpha1_with_status_and_columns() -> None:
    crd = crd_manifest()
    assert crd["metadata"]["name"] == "keylessapps.keyless.dev"
    version = crd["spec"]["versions"][0]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["kind"] == "KeylessApp"
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["required"] == ["target"]
    assert "default" not in spec["properties"]["refreshInterval"]  # the operator's --refresh-interval decides
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Target", "Ready", "Drifted", "Blocked",
                                                                        "Age"]


def test_the_operator_runs_two_replicas_with_exactly_its_rules() -> None:
    manifests = operator_manifests("keyless-system", "keyless:1.0")
    kinds = [m["kind"] for m in manifests]
    assert kinds == ["CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"]
    deployment = manifests[-1]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["metadata"]["namespace"] == "keyless-system"
    role = manifests[2]
    assert role["rules"] == [dict(r) for r in OPERATOR_RULES]
    for rule in KEYLESS_ROLE_RULES:  # what keyless itself needs in a target namespace, nothing wider
        assert rule in role["rules"]
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in role["rules"])
    assert not any("secrets" in r["resources"] for r in role["rules"])


def test_backoff_doubles_to_a_cap_with_jitter_on_its_upper_half() -> None:
    rng = random.Random(7)
    for failures, ceiling in [(1, 15.0), (2, 30.0), (3, 60.0), (6, 480.0), (7, 600.0), (30, 600.0)]:
        delays = [backoff(failures, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # spread: a fleet does not retry in step


def test_keyless_role_rules_are_the_ones_the_sandbox_and_readme_give_keyless() -> None:
    """One list of keyless's Kubernetes rights: the product's (for `operator manifests`) is the sandbox's."""
    from keyless.sandbox.kube.rbac import KEYLESS_RULES

    assert [dict(r) for r in KEYLESS_ROLE_RULES] == [dict(r) for r in KEYLESS_RULES]

def test_the_control_planes_keylessapp_holds_only_what_it_owns() -> None:
    from keyless.operator.resource import keylessapp_manifest

    manifest = keylessapp_manifest("shop", "prod", target="prod-eks", porter_yaml="services: []\n", app="shop",
                                   labels={"app.kubernetes.io/managed-by": "keyless-control-plane"},
                                   annotations={"keyless.dev/porter-yaml-revision": "3"})
    assert manifest == {
        "apiVersion": "keyless.dev/v1alpha1", "kind": "KeylessApp",
        "metadata": {"name": "shop", "namespace": "prod",
                     "labels": {"app.kubernetes.io/managed-by": "keyless-control-plane"},
                     "annotations": {"keyless.dev/porter-yaml-revision": "3"}},
        "spec": {"target": "prod-eks", "app": "shop", "porterYaml": "services: []\n", "suspend": False},
    }
    assert parse_spec(manifest["spec"], WHERE).porter_yaml == "services: []\n"  # what the operator accepts
    timed = keylessapp_manifest("shop", "prod", target="t", porter_yaml="x", app="shop", refresh_interval="1m",
                                suspend=True)
    assert (timed["spec"]["refreshInterval"], timed["spec"]["suspend"]) == ("1m", True)
    assert "labels" not in timed["metadata"]


def test_a_keylessapp_read_back_says_whether_the_operator_caught_up_and_how_it_went() -> None:
    from keyless.operator.resource import keylessapp_state

    obj = {
        "metadata": {"name": "shop", "namespace": "prod", "generation": 3, "labels": {"a": "b"}},
        "spec": {"target": "prod-eks", "porterYaml": "services: []\n"},
        "status": {
            "observedGeneration": 2,
            "conditions": [
                {"type": "Blocked", "status": "False", "reason": "NotBlocked", "lastTransitionTime": "T1"},
                {"type": "Ready", "status": "True", "reason": "Applied", "message": "1 bound",
                 "lastTransitionTime": "T0", "observedGeneration": 2},
                "not a condition",
            ],
            "bindings": [{"service": "api", "cloud": "aws", "identity": "arn:x", "bindingId": "a-1",
                          "state": "Bound"}],
            "lastAppliedPlan": {"summary": "1 to create", "applied": True},
        },
    }
    state = keylessapp_state(obj)
    assert (state.generation, state.observed_generation, state.caught_up) == (3, 2, False)
    assert state.summary == "Pending"
    assert [c.type for c in state.conditions] == ["Ready", "Blocked"]
    ready = state.condition(ConditionType.READY)
    assert ready is not None
    assert (ready.status, ready.reason, ready.message, ready.last_transition_time) == ("True", "Applied", "1 bound",
                                                                                     "T0")
    assert state.bindings[0]["bindingId"] == "a-1"
    caught_up = keylessapp_state({**obj, "status": {**obj["status"], "observedGeneration": 3}})
    assert (caught_up.caught_up, caught_up.summary) == (True, "Ready")
    as_json = caught_up.as_json()
    assert as_json["conditions"][0]["lastTransitionTime"] == "T0"
    assert as_json["lastAppliedPlan"] == {"summary": "1 to create", "applied": True}
    blocked = keylessapp_state({**obj, "status": {"observedGeneration": 3, "conditions": [
        {"type": "Blocked", "status": "True", "reason": "InvalidInput"}]}})
    assert blocked.summary == "Blocked"
    assert keylessapp_state({"metadata": {"deletionTimestamp": "now"}}).summary == "Removing"
    empty = keylessapp_state({})
    assert (empty.name, empty.generation, empty.conditions, empty.bindings, empty.caught_up) == ("", 0, (), (), False)


def test_the_readme_grants_the_control_plane_exactly_its_rules() -> None:
    import re
    from pathlib import Path

    import yaml

    from keyless.operator.manifests import CONTROL_PLANE_RULES

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "keyless-control-plane" in b]
    roles = [b for b in blocks if isinstance(b, dict) and b.get("kind") == "ClusterRole"]
    assert [r["rules"] for r in roles] == [[dict(rule) for rule in CONTROL_PLANE_RULES]]


def test_a_new_spec_refreshes_fully_and_a_periodic_refresh_reads_back_what_was_bound() -> None:
    applied = {"target": "prod-eks", "app": "shop", "namespace": "shop"}
    assert refresh_for(Trigger.CHANGE, applied, "shop") is Refresh.FULL
    assert refresh_for(Trigger.REFRESH, applied, "shop") is Refresh.BOUND
    assert refresh_for(Trigger.RESUME, applied, "shop") is Refresh.BOUND
    # Never applied, applied before the status said where, or the target's namespace changed: search everywhere.
    assert refresh_for(Trigger.REFRESH, None, "shop") is Refresh.FULL
    assert refresh_for(Trigger.RESUME, {"target": "prod-eks", "app": "shop"}, "shop") is Refresh.FULL
    assert refresh_for(Trigger.REFRESH, applied, "shop-v2") is Refresh.FULL
