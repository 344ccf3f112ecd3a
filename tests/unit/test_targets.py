"""The targets file: all three clouds load, every field is checked where it is written, names are looked up."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from keyless.diagnostics import Diagnostic, Severity
from keyless.errors import InvalidInput
from keyless.inputs import load_targets_file
from keyless.targets import (
    AwsTarget,
    AzureTarget,
    GcpTarget,
    KubernetesMode,
    Targets,
    load_targets,
    targets_path,
)

FILE = "keyless.targets.yaml"

GOOD = """\
targets:
  prod-eks:
    cloud: aws
    region: us-east-1
    cluster: prod
    namespace: shop
    kubernetes: {context: prod, mode: apply}
  prod-aks:
    cloud: azure
    subscription: 00000000-0000-0000-0000-000000000000
    resourceGroup: platform
    cluster: prod-aks
    namespace: shop
    armEndpoint: https://management.azure.com
    caBundle: /path/to/ca.pem
  prod-gke:
    cloud: gcp
    project: my-project
    location: us-central1
    cluster: prod-gke
    namespace: shop
    kubernetes:
      kubeconfig: ~/.kube/gke
      mode: render
      outDir: ./manifests
"""


def load(text: str, env: dict[str, str] | None = None) -> Targets:
    return load_targets(textwrap.dedent(text).encode(), FILE, env or {})


def errors_of(text: str, env: dict[str, str] | None = None) -> list[Diagnostic]:
    with pytest.raises(InvalidInput) as caught:
        load(text, env)
    found = [d for d in caught.value.diagnostics if d.severity is Severity.ERROR]
    assert found
    for d in found:
        assert d.render().startswith(f"{FILE}:{d.position.line}:{d.position.column}: ")
    return found


def one(diagnostics: list[Diagnostic], fragment: str) -> Diagnostic:
    hits = [d for d in diagnostics if fragment in d.message or fragment in d.hint]
    assert len(hits) == 1, "\n".join(d.render() for d in diagnostics)
    return hits[0]


def replace(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


def test_a_file_with_all_three_clouds_loads() -> None:
    targets = load(GOOD)
    assert targets.diagnostics == ()
    eks, aks, gke = targets.get("prod-eks"), targets.get("prod-aks"), targets.get("prod-gke")
    assert isinstance(eks, AwsTarget)
    assert isinstance(aks, AzureTarget)
    assert isinstance(gke, GcpTarget)
    assert (eks.region, eks.cluster, eks.namespace) == ("us-east-1", "prod", "shop")
    assert (eks.kubernetes.context, eks.kubernetes.mode) == ("prod", KubernetesMode.APPLY)
    assert (aks.subscription, aks.resource_group, aks.cluster) == (
        "00000000-0000-0000-0000-000000000000", "platform", "prod-aks")
    assert (aks.arm_endpoint, aks.ca_bundle) == ("https://management.azure.com", "/path/to/ca.pem")
    assert (gke.project, gke.location, gke.cluster) == ("my-project", "us-central1", "prod-gke")
    assert (gke.kubernetes.mode, gke.kubernetes.out_dir, gke.kubernetes.kubeconfig) == (
        KubernetesMode.RENDER, "./manifests", "~/.kube/gke")
    assert sorted(targets.by_name) == ["prod-aks", "prod-eks", "prod-gke"]


def test_optional_fields_have_defaults() -> None:
    targets = load("""\
        targets:
          dev:
            cloud: azure
            subscription: 00000000-0000-0000-0000-000000000000
            resourceGroup: rg
            cluster: dev
            namespace: dev
        """)
    dev = targets.get("dev")
    assert isinstance(dev, AzureTarget)
    assert dev.arm_endpoint == "https://management.azure.com"
    assert dev.ca_bundle is None
    assert dev.kubernetes.mode is KubernetesMode.APPLY


def test_a_trailing_slash_on_the_arm_endpoint_is_dropped() -> None:
    aks = load(replace("https://management.azure.com", "https://management.usgovcloudapi.net/")).get("prod-aks")
    assert isinstance(aks, AzureTarget)
    assert aks.arm_endpoint == "https://management.usgovcloudapi.net"


@pytest.mark.parametrize(("region", "ok"), [
    ("us-east-1", True), ("eu-central-2", True), ("ap-southeast-4", True), ("us-gov-west-1", True),
    ("cn-north-1", True), ("us-isob-east-1", True),
    ("us-east", False), ("US-EAST-1", False), ("useast1", False), ("us-east-1a", False), ("", False),
])
def test_aws_regions(region: str, ok: bool) -> None:
    text = replace("region: us-east-1", f"region: '{region}'")
    if ok:
        load(text)
    else:
        d = one(errors_of(text), "AWS region")
        assert (d.position.line, d.position.column) == (4, 13)


@pytest.mark.parametrize(("location", "ok"), [
    ("us-central1", True), ("us-central1-a", True), ("europe-west4", True), ("northamerica-northeast1", True),
    ("us-central", False), ("mars", False), ("US-CENTRAL1", False), ("us-central1-", False),
])
def test_gcp_locations(location: str, ok: bool) -> None:
    text = replace("location: us-central1", f"location: '{location}'")
    if ok:
        load(text)
    else:
        one(errors_of(text), "GKE location")


@pytest.mark.parametrize(("old", "new", "fragment", "line"), [
    ("cloud: aws", "cloud: ibm", "unknown cloud 'ibm'", 3),
    ("cloud: aws", "cloud: AWS", "unknown cloud 'AWS'", 3),
    ("    namespace: shop\n    kubernetes: {context", "    namespace: Shop\n    kubernetes: {context",
     "namespace 'Shop' is not a valid name", 6),
    ("    cluster: prod\n", "    cluster: 'prod cluster'\n", "EKS cluster name 'prod cluster' is not valid", 5),
    ("00000000-0000-0000-0000-000000000000", "my-subscription", "is not a subscription ID", 10),
    ("resourceGroup: platform", "resourceGroup: platform/../other", "resource group name", 11),
    ("resourceGroup: platform", "resourceGroup: platform.", "resource group name 'platform.' is not valid", 11),
    ("cluster: prod-aks", "cluster: -aks", "AKS cluster name '-aks' is not valid", 12),
    ("https://management.azure.com", "http://management.azure.com", "armEndpoint", 14),
    ("https://management.azure.com", "https://management.azure.com/x?y#z", "armEndpoint", 14),
    ("https://management.azure.com", "https://user@evil.example/", "armEndpoint", 14),
    ("project: my-project", "project: My-Project", "project ID 'My-Project' is not valid", 18),
    ("cluster: prod-gke", "cluster: Prod_GKE", "GKE cluster name 'Prod_GKE' is not valid", 20),
    ("mode: render", "mode: yolo", "`mode` must be 'apply' or 'render'", 24),
    ("prod-eks:", "'prod eks!':", "target name 'prod eks!' is not valid", 2),
])
def test_each_invalid_field_is_reported_where_it_is_written(old: str, new: str, fragment: str, line: int) -> None:
    d = one(errors_of(replace(old, new)), fragment)
    assert d.position.line == line, d.render()
    assert d.hint, d.render()


def test_missing_required_fields_are_named() -> None:
    errors = errors_of(replace("    region: us-east-1\n", ""))
    assert one(errors, "missing required field `region`").position.line == 3  # the target's mapping


def test_a_target_without_cloud_lists_the_clouds() -> None:
    d = one(errors_of(replace("    cloud: aws\n", "")), "missing required field `cloud`")
    for cloud in ("aws", "azure", "gcp"):
        assert cloud in d.hint, f"hint lists no clouds: {d.hint!r}"


@pytest.mark.parametrize(("text", "fragment"), [
    ("targets: {}\n", "no targets are defined"),
    ("targets: []\n", "`targets` must be a mapping"),
    ("nothing: 1\n", "missing required field `targets`"),
    ("- a\n", "the top level of the targets file must be a mapping"),
    ("", "file is empty"),
])
def test_the_shape_of_the_file(text: str, fragment: str) -> None:
    one(errors_of(text), fragment)


def test_all_errors_come_at_once() -> None:
    text = GOOD.replace("us-east-1", "mars").replace("my-project", "X").replace("mode: render", "mode: yolo")
    errors = errors_of(text)
    assert [d.position.line for d in errors] == [4, 18, 24]


def test_unknown_fields_in_a_target_are_warned_about() -> None:
    targets = load(replace("    region: us-east-1\n", "    region: us-east-1\n    regoin: us-east-2\n"))
    d = one(list(targets.diagnostics), "unknown field `regoin`")
    assert d.severity is Severity.WARNING
    assert d.position.line == 5


def test_unknown_fields_in_the_kubernetes_side_are_warned_about() -> None:
    targets = load(replace("kubernetes: {context: prod, mode: apply}", "kubernetes: {contxt: prod, mode: apply}"))
    assert one(list(targets.diagnostics), "unknown field `contxt`").severity is Severity.WARNING


def test_placeholders_expand_in_the_targets_file() -> None:
    text = replace("    namespace: shop\n    kubernetes: {context", "    namespace: ${NS}\n    kubernetes: {context")
    assert load(text, {"NS": "shop-staging"}).get("prod-eks").namespace == "shop-staging"
    d = one(errors_of(text), "environment variable NS is not set")
    assert (d.position.line, d.position.column) == (6, 16)


def test_an_unknown_target_name_lists_the_known_ones() -> None:
    targets = load(GOOD)
    with pytest.raises(InvalidInput) as caught:
        targets.get("prod")
    (d,) = caught.value.diagnostics
    assert d.message == "no target named 'prod'"
    assert d.hint == "targets in this file: prod-aks, prod-eks, prod-gke"
    assert caught.value.exit_code == 2


def test_the_targets_file_is_found_by_flag_then_environment_then_default() -> None:
    assert targets_path("a.yaml", {"KEYLESS_TARGETS": "b.yaml"}) == Path("a.yaml")
    assert targets_path(None, {"KEYLESS_TARGETS": "b.yaml"}) == Path("b.yaml")
    assert targets_path(None, {}) == Path("keyless.targets.yaml")


def test_reading_a_targets_file_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(GOOD)
    assert load_targets_file(path, {}).file == str(path)
    with pytest.raises(InvalidInput) as caught:
        load_targets_file(tmp_path / "missing.yaml", {})
    assert "file not found" in caught.value.render()
    with pytest.raises(InvalidInput) as caught:
        load_targets_file(tmp_path, {})
    assert "directory" in caught.value.render()


@pytest.mark.parametrize("old", ["region: us-east-1", "namespace: shop", "project: my-project"])
def test_a_trailing_newline_does_not_sneak_into_a_target_field(old: str) -> None:
    key, value = old.split(": ")
    errors_of(replace(old, f'{key}: "{value}\\n"'))
