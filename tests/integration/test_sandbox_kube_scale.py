"""The Kubernetes stand-in at scale: a request reads what it answers or changes, not every object of its kind.

Work is counted (stored objects read, objects copied), never timed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from lightkube import Client
from lightkube.config.kubeconfig import KubeConfig
from lightkube.models.apps_v1 import DeploymentSpec
from lightkube.models.core_v1 import Container, PodSpec, PodTemplateSpec
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Namespace, ServiceAccount

from keyless.sandbox.kube import KubeStandIn
from keyless.sandbox.kube import api as api_module
from keyless.sandbox.kube import controllers as controllers_module
from keyless.sandbox.kube.schema import DEPLOYMENTS, PODS, REPLICA_SETS, SERVICE_ACCOUNTS, Kind

pytestmark = pytest.mark.integration


class CountingReads(dict[Any, Any]):
    """A shelf's objects, counting how many stored objects are read."""

    reads = 0

    def __getitem__(self, key: Any) -> Any:
        CountingReads.reads += 1
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        CountingReads.reads += 1
        return super().get(key, default)


class CountingCopies:
    """Stands for the `copy` module in the stand-in's modules: counts the objects deep-copied."""

    copies = 0

    @staticmethod
    def deepcopy(value: Any) -> Any:
        CountingCopies.copies += 1
        return copy.deepcopy(value)


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeStandIn]:
    with KubeStandIn("scale", state_dir=tmp_path_factory.mktemp("kube-state")) as standin:
        yield standin
    assert standin.api.unexpected_errors == []


@pytest.fixture(scope="module")
def client(kube: KubeStandIn, tmp_path_factory: pytest.TempPathFactory) -> Client:
    config = kube.write_kubeconfig(tmp_path_factory.mktemp("kubeconfig") / "config", "scale")
    return Client(config=KubeConfig.from_file(Path(config)), field_manager="keyless")


def count_reads(kube: KubeStandIn, *kinds: Kind) -> None:
    for kind in kinds:
        shelf = kube.api._shelves[kube.api.ref(kind)]
        if not isinstance(shelf.objects, CountingReads):
            shelf.objects = CountingReads(shelf.objects)
    CountingReads.reads = 0


def deployment(namespace: str, name: str) -> Deployment:
    labels = {"porter.run/app-name": "shop", "porter.run/service-name": name}
    return Deployment(
        metadata=ObjectMeta(name=name, namespace=namespace, labels=labels),
        spec=DeploymentSpec(replicas=1, selector=LabelSelector(matchLabels=labels), template=PodTemplateSpec(
            metadata=ObjectMeta(labels=labels), spec=PodSpec(containers=[Container(name="app", image="app:1")]))),
    )


def test_a_paginated_list_reads_and_copies_only_its_pages(kube: KubeStandIn, client: Client,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    client.create(Namespace(metadata=ObjectMeta(name="paged")))
    for i in range(200):
        client.create(ServiceAccount(metadata=ObjectMeta(name=f"sa-{i:03d}", namespace="paged")))
    kube.wait_idle()
    url = f"{kube.url}/api/v1/namespaces/paged/serviceaccounts"
    count_reads(kube, SERVICE_ACCOUNTS)
    monkeypatch.setattr(api_module, "copy", CountingCopies)
    CountingCopies.copies = 0
    first = httpx.get(url, params={"limit": "10"}, headers=kube.admin_headers).json()
    assert len(first["items"]) == 10
    assert first["metadata"]["remainingItemCount"] == 191  # and the namespace's default account
    assert CountingReads.reads == 10

    names, token = [i["metadata"]["name"] for i in first["items"]], first["metadata"]["continue"]
    while token:
        page = httpx.get(url, params={"limit": "10", "continue": token}, headers=kube.admin_headers).json()
        names += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue")
    assert names == ["default", *(f"sa-{i:03d}" for i in range(200))]
    assert CountingReads.reads == 201  # each object once, over all the pages
    assert CountingCopies.copies == 0


def test_one_more_deployment_costs_the_same_in_a_crowded_namespace(kube: KubeStandIn, client: Client,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for namespace, count in (("few", 2), ("crowded", 40)):
        client.create(Namespace(metadata=ObjectMeta(name=namespace)))
        for i in range(count):
            client.create(deployment(namespace, f"svc-{i}"))
    kube.wait_idle()
    monkeypatch.setattr(api_module, "copy", CountingCopies)
    monkeypatch.setattr(controllers_module, "copy", CountingCopies)
    work = {}
    for namespace in ("few", "crowded"):
        count_reads(kube, DEPLOYMENTS, REPLICA_SETS, PODS)
        CountingCopies.copies = 0
        client.create(deployment(namespace, "one-more"))
        kube.wait_idle()
        assert client.get(Deployment, "one-more", namespace=namespace).status.readyReplicas == 1  # type: ignore[union-attr]
        work[namespace] = (CountingReads.reads, CountingCopies.copies)
    assert work["crowded"] == work["few"]
    assert work["few"][0] > 0
