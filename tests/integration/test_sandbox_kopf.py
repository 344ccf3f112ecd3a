"""A real kopf operator against the Kubernetes stand-in: discovery, list-then-watch, finalizers, status, events.

kopf runs in its own thread and event loop over HTTPS, as it would against a cluster; the assertions read what
the API server holds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import kopf
import pytest
from lightkube import ApiError, Client, codecs
from lightkube.config.kubeconfig import KubeConfig
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Namespace
from lightkube.types import PatchType

from keyless.sandbox.kube import KubeStandIn

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL, KIND = "keyless.dev", "v1alpha1", "kopfapps", "KopfApp"
KopfApp = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)
NAMESPACE = "operated"
FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"  # kopf's default finalizer

CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP, "scope": "Namespaced", "names": {"plural": PLURAL, "kind": KIND},
        "versions": [{
            "name": VERSION, "served": True, "storage": True, "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "properties": {"target": {"type": "string"}}},
                "status": {"type": "object", "properties": {
                    "observedGeneration": {"type": "integer"}, "lastAppliedPlan": {"type": "string"},
                    "ticks": {"type": "integer"}}},
            }}},
        }],
    },
}


def _registry(kube: KubeStandIn, deleted: list[str]) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=kube.https_url, ca_data=kube.ca_pem, token=kube.admin_token,
                                   default_namespace=NAMESPACE)

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    def created(body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, patch: kopf.Patch, **_: Any) -> None:
        kopf.info(body, reason="Planned", message=f"planned for {spec.get('target')}")  # a core v1 Event
        patch.status["lastAppliedPlan"] = f"created:{spec.get('target')}"
        patch.status["observedGeneration"] = meta.get("generation")

    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    def updated(spec: kopf.Spec, meta: kopf.Meta, patch: kopf.Patch, **_: Any) -> None:
        patch.status["lastAppliedPlan"] = f"updated:{spec.get('target')}"
        patch.status["observedGeneration"] = meta.get("generation")

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    def removed(name: str, **_: Any) -> None:
        deleted.append(name)

    @kopf.timer(GROUP, VERSION, PLURAL, interval=0.2, registry=registry)
    def tick(status: kopf.Status, patch: kopf.Patch, **_: Any) -> None:
        patch.status["ticks"] = int(status.get("ticks") or 0) + 1

    return registry


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeStandIn]:
    with KubeStandIn("kopf-test", state_dir=tmp_path_factory.mktemp("kube")) as standin:
        yield standin
    assert standin.api.unexpected_errors == []


@pytest.fixture(scope="module")
def client(kube: KubeStandIn, tmp_path_factory: pytest.TempPathFactory) -> Client:
    kubeconfig = kube.write_kubeconfig(tmp_path_factory.mktemp("kubeconfig") / "config", "sandbox-kopf")
    return Client(config=KubeConfig.from_file(kubeconfig), field_manager="kopf-test")


@pytest.fixture(scope="module")
def deleted() -> list[str]:
    return []


@pytest.fixture(scope="module")
def operator(kube: KubeStandIn, client: Client, deleted: list[str]) -> Iterator[None]:
    client.create(Namespace(metadata=ObjectMeta(name=NAMESPACE)))
    client.create(codecs.from_dict(CRD))
    settings = kopf.OperatorSettings()
    settings.peering.standalone = True  # kopf's own peering CRDs are not what this test is about
    settings.watching.server_timeout = 5  # watches end and resume from their resourceVersion, often
    stop, ready = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(kopf.operator(registry=_registry(kube, deleted), settings=settings, standalone=True,
                                      namespaces=[NAMESPACE], stop_flag=stop, ready_flag=ready))
        except BaseException as error:  # reported by the fixture, not lost in the thread
            failures.append(error)

    thread = threading.Thread(target=run, name="kopf-operator", daemon=True)
    thread.start()
    assert ready.wait(30), failures
    yield
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    assert failures == []


def _until(read: Callable[[], Any], wanted: Callable[[Any], bool]) -> Any:
    """Read until ``wanted`` holds (kopf works on its own time); fail with the last value read."""
    value = None
    for _ in range(300):
        value = read()
        if wanted(value):
            return value
        time.sleep(0.1)
    raise AssertionError(f"never reached the wanted state; last read: {value!r}")


def _read(client: Client, name: str) -> Any:
    try:
        return client.get(KopfApp, name, namespace=NAMESPACE)
    except ApiError as error:
        if error.status.code == 404:
            return None
        raise


def test_kopf_handles_create_update_timer_and_delete(client: Client, operator: None, deleted: list[str]) -> None:
    client.create(KopfApp(metadata=ObjectMeta(name="shop", namespace=NAMESPACE), spec={"target": "eks-prod"}))
    created = _until(lambda: _read(client, "shop"),
                     lambda o: (o.status or {}).get("lastAppliedPlan") == "created:eks-prod")
    assert FINALIZER in (created.metadata.finalizers or [])
    assert created.status["observedGeneration"] == 1

    client.patch(KopfApp, "shop", {"spec": {"target": "aks-prod"}}, namespace=NAMESPACE, patch_type=PatchType.MERGE)
    updated = _until(lambda: _read(client, "shop"),
                     lambda o: (o.status or {}).get("lastAppliedPlan") == "updated:aks-prod")
    assert updated.metadata.generation == 2
    assert updated.status["observedGeneration"] == 2
    _until(lambda: _read(client, "shop"), lambda o: int((o.status or {}).get("ticks") or 0) >= 2)

    events = _until(lambda: list(client.list(Event, namespace=NAMESPACE, fields={"involvedObject.name": "shop"})),
                    lambda found: any(e.reason == "Planned" for e in found))
    posted = next(e for e in events if e.reason == "Planned")
    assert (posted.message, posted.type, posted.reportingComponent) == ("planned for eks-prod", "Normal", "kopf")
    assert (posted.involvedObject.kind, posted.involvedObject.uid) == (KIND, created.metadata.uid)
    assert posted.metadata.name.startswith("kopf-event-")

    client.delete(KopfApp, "shop", namespace=NAMESPACE)
    assert _until(lambda: _read(client, "shop"), lambda o: o is None) is None
    assert deleted == ["shop"]
