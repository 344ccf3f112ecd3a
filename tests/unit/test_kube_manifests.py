"""Unit tests of keyless.kube.manifests with plain values: manifests, pod settings, helm values, the plan, render."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from ruamel.yaml import YAML

from keyless import clouds, ownership
from keyless.bindings import Binding
from keyless.clouds import IDENTITY_ANNOTATION, AwsRole, AzureIdentity, Cloud, GcpIdentity, Identity
from keyless.errors import PreflightFailed
from keyless.kube import manifests as km
from keyless.kube.yamltext import to_yaml
from keyless.names import service_account_name
from keyless.plan import ActionKind, ObservedServiceAccount, ObservedWorkload, Resource
from keyless.plan import kubernetes as pk
from keyless.plan.model import AccountSpec, ObjectRef
from keyless.porter.model import ServiceType

APP = "shop"
TARGET = "prod"
NS = "shop"
ROLE_ARN = "arn:aws:iam::123456789012:role/shop-api"
AZURE = AzureIdentity("shop-api-id", "platform", client_id="11111111-2222-3333-4444-555555555555",
                      tenant_id="99999999-8888-7777-6666-555555555555")
GCP = GcpIdentity("api@my-project.iam.gserviceaccount.com")


def binding(identity: Identity | None = None, *, service: str = "api", cloud: Cloud = Cloud.AWS,
            kind: ServiceType = ServiceType.WEB, app: str = APP) -> Binding:
    return Binding(
        app=app, service=service, kind=kind, target=TARGET, cloud=cloud, namespace=NS,
        service_account=service_account_name(app, service),
        identity=identity if identity is not None else AwsRole("shop-api", arn=ROLE_ARN),
    )


def sa(b: Binding) -> dict[str, Any]:
    """The account keyless applies for a binding."""
    return km.service_account_manifest(b.namespace, b.service_account, km.account_spec(b))


def released(service: str, name: str) -> dict[str, Any]:
    """The account of a service whose connection was removed: keyless's labels, no identity."""
    return km.service_account_manifest(NS, name, AccountSpec(ownership.ownership_labels(APP, service, TARGET), {}))


def rendered(bindings: list[Binding]) -> list[km.RenderedService]:
    """What render mode writes for these bindings, read from the plan of an empty cluster."""
    actions = pk.plan_kubernetes(bindings, [b.service for b in bindings], [], [], APP, TARGET)
    return km.rendered_services(actions)


def account_from(manifest: Mapping[str, object], **extra_annotations: str) -> ObservedServiceAccount:
    """What observing the cluster returns after keyless applied `manifest` (plus annotations others set)."""
    metadata = manifest["metadata"]
    assert isinstance(metadata, dict)
    return ObservedServiceAccount(
        namespace=metadata["namespace"], name=metadata["name"],
        annotations={**metadata.get("annotations", {}), **extra_annotations}, labels=dict(metadata["labels"]),
    )


def workload(b: Binding, *, kind: str = "Deployment", service_account: str | None = None,
             fingerprint: str | None = None, pod_labels: Mapping[str, str] | None = None) -> ObservedWorkload:
    return ObservedWorkload(namespace=NS, kind=kind, name=f"{b.app}-{b.service}", service=b.service,
                            service_account=service_account, identity_annotation=fingerprint,
                            pod_labels=pod_labels or {})


def in_order(b: Binding, kind: str = "Deployment") -> ObservedWorkload:
    settings = km.pod_template_settings(b)
    labels = {k: v for k, v in settings.labels.items() if v is not None}
    return workload(b, kind=kind, service_account=b.service_account, fingerprint=b.identity_fingerprint(),
                    pod_labels=labels)


def plan(desired: list[Binding], accounts: list[ObservedServiceAccount], workloads: list[ObservedWorkload],
         services: tuple[str, ...] = ("api", "worker")) -> list[tuple[ActionKind, Resource, str, str]]:
    actions = pk.plan_kubernetes(desired, services, accounts, workloads, APP, TARGET)
    return [(a.kind, a.resource, a.address, a.reason) for a in actions]


# --- service account manifests -------------------------------------------------------------------------


def test_aws_account_records_the_role_and_needs_nothing_else() -> None:
    manifest = sa(binding())
    assert manifest["apiVersion"] == "v1"
    assert manifest["kind"] == "ServiceAccount"
    assert manifest["metadata"]["name"] == "shop-api"
    assert manifest["metadata"]["namespace"] == NS
    assert manifest["metadata"]["annotations"] == {"keyless.dev/identity": ROLE_ARN}
    assert manifest["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "keyless",
        "keyless.dev/app": APP,
        "keyless.dev/service": "api",
        "keyless.dev/target": TARGET,
        "porter.run/app-name": APP,
        "porter.run/service-name": "api",
    }


def test_aws_account_records_the_role_as_written_until_resolved() -> None:
    manifest = sa(binding(AwsRole("shop-api")))
    assert manifest["metadata"]["annotations"] == {"keyless.dev/identity": "shop-api"}


def test_azure_account_carries_client_and_tenant_id() -> None:
    annotations = sa(binding(AZURE, cloud=Cloud.AZURE))["metadata"]["annotations"]
    assert annotations == {
        "azure.workload.identity/client-id": AZURE.client_id,
        "azure.workload.identity/tenant-id": AZURE.tenant_id,
        "keyless.dev/identity": "platform/shop-api-id",
    }


def test_azure_tenant_is_left_out_when_unknown() -> None:
    identity = replace(AZURE, tenant_id=None)
    annotations = sa(binding(identity, cloud=Cloud.AZURE))["metadata"]["annotations"]
    assert "azure.workload.identity/tenant-id" not in annotations
    assert annotations["azure.workload.identity/client-id"] == AZURE.client_id


def test_azure_without_client_id_is_refused() -> None:
    with pytest.raises(PreflightFailed, match="no client ID"):
        sa(binding(AzureIdentity("shop-api-id", "platform"), cloud=Cloud.AZURE))


def test_gcp_account_names_the_google_service_account() -> None:
    annotations = sa(binding(GCP, cloud=Cloud.GCP))["metadata"]["annotations"]
    assert annotations == {"iam.gke.io/gcp-service-account": GCP.email, "keyless.dev/identity": GCP.email}


def test_long_names_use_the_hashed_account_name() -> None:
    app, service = "a" * 31, "b" * 31 + "-" + "c" * 10
    b = binding(app=app, service=service)
    manifest = sa(b)
    assert manifest["metadata"]["name"] == service_account_name(app, service)
    assert len(manifest["metadata"]["name"]) <= 63
    assert all(len(v) <= 63 for v in manifest["metadata"]["labels"].values())


@pytest.mark.parametrize("text", ["prod.", "x" * 70, "prod-", "a b"])
def test_label_values_are_made_valid_and_stable(text: str) -> None:
    value = ownership.label_value(text)
    assert value == ownership.label_value(text)
    assert len(value) <= 63
    assert value[0].isalnum()
    assert value[-1].isalnum()


def test_valid_label_values_are_kept() -> None:
    assert ownership.label_value("prod-eks.1") == "prod-eks.1"


def test_stale_annotations_per_cloud() -> None:
    assert set(clouds.entry(Cloud.AWS).stale_annotations) == {"eks.amazonaws.com/role-arn"}
    assert not clouds.entry(Cloud.AZURE).stale_annotations
    assert not clouds.entry(Cloud.GCP).stale_annotations


def test_a_released_account_keeps_the_labels_and_drops_every_identity_annotation() -> None:
    aws = sa(binding())
    gone = released("api", "shop-api")
    assert "annotations" not in gone["metadata"]
    assert gone["metadata"]["labels"] == aws["metadata"]["labels"]


def test_other_managers_keep_their_managed_by_label() -> None:
    labels = sa(binding())["metadata"]["labels"]
    helm = km.defer_to_other_manager(labels, {"app.kubernetes.io/managed-by": "Helm"})
    assert "app.kubernetes.io/managed-by" not in helm
    assert "app.kubernetes.io/managed-by" in labels  # the input is not changed
    mine = km.defer_to_other_manager(labels, {"app.kubernetes.io/managed-by": "keyless"})
    assert mine == labels


# --- pod templates ---------------------------------------------------------------------------------------


def test_pod_settings_carry_account_and_fingerprint() -> None:
    b = binding()
    settings = km.pod_template_settings(b)
    assert settings.service_account_name == "shop-api"
    assert settings.annotations == {IDENTITY_ANNOTATION: b.identity_fingerprint()}
    assert settings.labels == {}


def test_azure_pods_are_labelled_for_the_webhook() -> None:
    settings = km.pod_template_settings(binding(AZURE, cloud=Cloud.AZURE))
    assert settings.labels == {"azure.workload.identity/use": "true"}


def test_changing_the_identity_changes_the_pod_annotation() -> None:
    before = km.pod_template_settings(binding(AwsRole("shop-api", arn=ROLE_ARN)))
    after = km.pod_template_settings(binding(AwsRole("shop-api-v2", arn=ROLE_ARN + "-v2")))
    same = km.pod_template_settings(binding(AwsRole("shop-api", arn=ROLE_ARN)))
    assert before.annotations[IDENTITY_ANNOTATION] != after.annotations[IDENTITY_ANNOTATION]
    assert before == same


def test_pod_settings_are_frozen() -> None:
    settings = km.pod_template_settings(binding())
    with pytest.raises(AttributeError):
        settings.service_account_name = "other"  # type: ignore[misc]


def test_workload_patch_per_kind() -> None:
    settings = km.pod_template_settings(binding(AZURE, cloud=Cloud.AZURE))
    deployment = km.workload_patch("Deployment", settings, restarted_at="2024-01-01T00:00:00Z")
    template = deployment["spec"]["template"]
    assert template["spec"] == {"serviceAccountName": "shop-api"}
    assert template["metadata"]["labels"] == {"azure.workload.identity/use": "true"}
    assert template["metadata"]["annotations"] == {
        IDENTITY_ANNOTATION: binding(AZURE, cloud=Cloud.AZURE).identity_fingerprint(),
        "kubectl.kubernetes.io/restartedAt": "2024-01-01T00:00:00Z",
    }
    cron = km.workload_patch("CronJob", settings)
    assert cron["spec"]["jobTemplate"]["spec"]["template"]["spec"] == {"serviceAccountName": "shop-api"}
    assert "kubectl.kubernetes.io/restartedAt" not in cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"][
        "annotations"]
    with pytest.raises(ValueError, match="StatefulSet"):
        km.workload_patch("StatefulSet", settings)


def test_released_settings_remove_the_fingerprint_and_keep_the_account() -> None:
    patch = km.workload_patch("Deployment", km.released_pod_template_settings())
    assert patch == {"spec": {"template": {"metadata": {"annotations": {IDENTITY_ANNOTATION: None}}}}}


# --- helm values ------------------------------------------------------------------------------------


def test_helm_values_per_service() -> None:
    api = binding(AZURE, cloud=Cloud.AZURE)
    worker = binding(replace(AZURE, identity_name="shop-worker-id"), service="worker", cloud=Cloud.AZURE,
                     kind=ServiceType.WORKER)
    values = km.helm_values(rendered([api, worker]))
    assert set(values) == {"api", "worker"}
    assert values["api"] == {
        "serviceAccount": {
            "create": True,
            "name": "shop-api",
            "annotations": {
                "azure.workload.identity/client-id": AZURE.client_id,
                "azure.workload.identity/tenant-id": AZURE.tenant_id,
                "keyless.dev/identity": "platform/shop-api-id",
            },
        },
        "podLabels": {"azure.workload.identity/use": "true"},
        "podAnnotations": {IDENTITY_ANNOTATION: api.identity_fingerprint()},
    }
    assert values["worker"]["serviceAccount"]["name"] == "shop-worker"


def test_helm_values_for_aws_have_no_pod_labels() -> None:
    values = km.helm_values(rendered([binding()]))
    assert values["api"]["podLabels"] == {}
    assert values["api"]["serviceAccount"]["annotations"] == {"keyless.dev/identity": ROLE_ARN}


# --- plan_kubernetes ---------------------------------------------------------------------------------


def test_missing_account_is_created() -> None:
    b = binding()
    actions = pk.plan_kubernetes([b], ["api"], [], [], APP, TARGET)
    assert len(actions) == 1
    action = actions[0]
    assert (action.kind, action.resource, action.address) == (ActionKind.CREATE, Resource.SERVICE_ACCOUNT,
                                                             "shop/shop-api")
    assert action.desired == b
    assert action.service == "api"
    assert ROLE_ARN in action.reason


def test_account_in_order_is_noop() -> None:
    b = binding()
    account = account_from(sa(b), **{"example.com/other": "kept"})
    assert plan([b], [account], [in_order(b)]) == [
        (ActionKind.NOOP, Resource.SERVICE_ACCOUNT, "shop/shop-api", f"annotated for {ROLE_ARN}"),
        (ActionKind.NOOP, Resource.WORKLOAD, "Deployment shop/shop-api", "pods run as shop-api"),
    ]


def test_stale_irsa_annotation_is_an_update() -> None:
    b = binding()
    account = account_from(sa(b), **{"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"})
    actions = pk.plan_kubernetes([b], ["api"], [account], [], APP, TARGET)
    assert [a.kind for a in actions] == [ActionKind.UPDATE]
    assert "eks.amazonaws.com/role-arn" in actions[0].reason
    assert "IRSA" in actions[0].reason
    assert actions[0].remove_annotations == ("eks.amazonaws.com/role-arn",)
    assert actions[0].account == km.account_spec(b)  # apply writes exactly the planned account


def test_irsa_annotation_is_not_stale_on_other_clouds() -> None:
    b = binding(GCP, cloud=Cloud.GCP)
    account = account_from(sa(b), **{"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"})
    assert [a.kind for a in pk.plan_kubernetes([b], ["api"], [account], [], APP, TARGET)] == [ActionKind.NOOP]


def test_changed_annotation_is_an_update_saying_what_differs() -> None:
    old = binding(GCP, cloud=Cloud.GCP)
    new = binding(GcpIdentity("api2@my-project.iam.gserviceaccount.com"), cloud=Cloud.GCP)
    account = account_from(sa(old))
    [action] = pk.plan_kubernetes([new], ["api"], [account], [], APP, TARGET)
    assert action.kind is ActionKind.UPDATE
    assert "iam.gke.io/gcp-service-account" in action.reason
    assert "api2@my-project.iam.gserviceaccount.com" in action.reason


def test_changed_label_is_an_update() -> None:
    b = binding()
    account = account_from(sa(b))
    account = replace(account, labels={**account.labels, "porter.run/service-name": "other"})
    [action] = pk.plan_kubernetes([b], ["api"], [account], [], APP, TARGET)
    assert action.kind is ActionKind.UPDATE
    assert "label porter.run/service-name" in action.reason


def test_unlabelled_existing_account_is_taken_over() -> None:
    b = binding()
    account = ObservedServiceAccount(NS, "shop-api", annotations={}, labels={"porter.run/app-name": APP})
    [action] = pk.plan_kubernetes([b], ["api"], [account], [], APP, TARGET)
    assert action.kind is ActionKind.UPDATE
    assert "take over" in action.reason


def test_helm_managed_account_is_not_fought_over() -> None:
    b = binding()
    manifest = km.defer_to_other_manager(sa(b), {"app.kubernetes.io/managed-by": "Helm"})
    account = account_from(manifest)
    account = replace(account, labels={**account.labels, "app.kubernetes.io/managed-by": "Helm"})
    assert [a.kind for a in pk.plan_kubernetes([b], ["api"], [account], [], APP, TARGET)] == [ActionKind.NOOP]


def test_removed_service_deletes_the_account_keyless_created() -> None:
    gone = binding(service="worker")
    account = account_from(sa(gone))
    w = in_order(gone)
    actions = pk.plan_kubernetes([], ["api"], [account], [w], APP, TARGET)
    assert [(a.kind, a.resource, a.address, a.service) for a in actions] == [
        (ActionKind.DELETE, Resource.SERVICE_ACCOUNT, "shop/shop-worker", "worker")]
    assert "service removed" in actions[0].reason
    assert actions[0].desired is None


def test_removed_service_on_a_helm_account_only_strips_keyless_annotations() -> None:
    gone = binding(service="worker")
    account = account_from(sa(gone))
    account = replace(account, labels={**account.labels, "app.kubernetes.io/managed-by": "Helm"})
    [action] = pk.plan_kubernetes([], ["api"], [account], [], APP, TARGET)
    assert action.kind is ActionKind.UPDATE
    assert action.remove_annotations == ("keyless.dev/identity",)
    assert action.account is None  # not keyless's account: only the identity goes


def test_removed_connection_keeps_the_account_and_restarts_pods() -> None:
    was = binding(service="worker")
    account = account_from(sa(was))
    w = in_order(was)
    actions = pk.plan_kubernetes([], ["api", "worker"], [account], [w], APP, TARGET)
    assert [(a.kind, a.resource, a.address) for a in actions] == [
        (ActionKind.UPDATE, Resource.SERVICE_ACCOUNT, "shop/shop-worker"),
        (ActionKind.UPDATE, Resource.WORKLOAD, "Deployment shop/shop-worker"),
    ]
    assert "connection removed" in actions[0].reason
    assert "keyless.dev/identity" in actions[0].reason
    assert actions[1].reason.startswith("restart: identity changed")
    assert all(a.desired is None for a in actions)
    assert actions[0].remove_annotations == ("keyless.dev/identity",)
    assert actions[1].ref == ObjectRef("Deployment", NS, "shop-worker")
    assert actions[1].pod_template == km.released_pod_template_settings()


def test_removed_connection_once_stripped_is_noop() -> None:
    was = binding(service="worker")
    account = account_from(released("worker", "shop-worker"))
    w = replace(in_order(was), identity_annotation=None)
    actions = pk.plan_kubernetes([], ["api", "worker"], [account], [w], APP, TARGET)
    assert [a.kind for a in actions] == [ActionKind.NOOP, ActionKind.NOOP]


def test_accounts_of_other_apps_and_targets_are_ignored() -> None:
    other_app = account_from(sa(binding(app="cart", service="api")))
    other_target = account_from(sa(replace(binding(service="worker"), target="staging")))
    assert pk.plan_kubernetes([], ["api"], [other_app, other_target], [], APP, TARGET) == []


def test_account_claimed_by_another_target_is_a_blocker_not_a_takeover() -> None:
    b = binding()
    claimed = account_from(sa(replace(b, target="staging")))
    assert pk.plan_kubernetes([b], ["api"], [claimed], [in_order(b)], APP, TARGET) == []
    [blocker] = pk.kubernetes_blockers([b], [claimed], APP, TARGET)
    assert blocker.service == "api"
    assert "staging" in blocker.message
    assert pk.kubernetes_blockers([b], [account_from(sa(b))], APP, TARGET) == []


def test_workload_restarts_when_the_identity_changed() -> None:
    old = binding(AwsRole("shop-api", arn=ROLE_ARN))
    new = binding(AwsRole("shop-api-v2", arn=ROLE_ARN + "-v2"))
    account = account_from(sa(old))
    actions = pk.plan_kubernetes([new], ["api"], [account], [in_order(old)], APP, TARGET)
    assert [(a.kind, a.resource) for a in actions] == [(ActionKind.UPDATE, Resource.SERVICE_ACCOUNT),
                                                       (ActionKind.UPDATE, Resource.WORKLOAD)]
    assert actions[1].reason.startswith("restart: identity changed")
    assert actions[1].desired == new


def test_workload_restarts_when_it_runs_as_another_account() -> None:
    b = binding()
    account = account_from(sa(b))
    w = replace(in_order(b), service_account=None)
    [_, action] = pk.plan_kubernetes([b], ["api"], [account], [w], APP, TARGET)
    assert action.kind is ActionKind.UPDATE
    assert action.reason.startswith("restart: identity changed")
    assert "serviceAccountName default -> shop-api" in action.reason


def test_azure_workload_without_the_webhook_label_is_restarted() -> None:
    b = binding(AZURE, cloud=Cloud.AZURE)
    account = account_from(sa(b))
    w = replace(in_order(b), pod_labels={})
    [_, action] = pk.plan_kubernetes([b], ["api"], [account], [w], APP, TARGET)
    assert action.kind is ActionKind.UPDATE
    assert "azure.workload.identity/use" in action.reason


def test_workload_is_not_restarted_when_only_the_account_changed() -> None:
    b = binding()
    account = account_from(sa(b))
    account = replace(account, labels={**account.labels, "keyless.dev/service": "x"})
    actions = pk.plan_kubernetes([b], ["api"], [account], [in_order(b)], APP, TARGET)
    assert [a.kind for a in actions] == [ActionKind.UPDATE, ActionKind.NOOP]


def test_jobs_cannot_be_restarted_and_say_so() -> None:
    b = binding(kind=ServiceType.JOB)
    account = account_from(sa(b))
    w = workload(b, kind="Job")
    [_, action] = pk.plan_kubernetes([b], ["api"], [account], [w], APP, TARGET)
    assert action.kind is ActionKind.NOOP
    assert "next run" in action.reason


def test_cronjobs_are_updated() -> None:
    b = binding(kind=ServiceType.JOB)
    account = account_from(sa(b))
    [_, action] = pk.plan_kubernetes([b], ["api"], [account], [workload(b, kind="CronJob")], APP, TARGET)
    assert action.kind is ActionKind.UPDATE
    assert action.address == "CronJob shop/shop-api"


def test_workloads_of_other_services_are_left_alone() -> None:
    b = binding()
    other = binding(service="worker")
    account = account_from(sa(b))
    actions = pk.plan_kubernetes([b], ["api", "worker"], [account], [workload(other)], APP, TARGET)
    assert [a.resource for a in actions] == [Resource.SERVICE_ACCOUNT]


def test_plan_is_deterministic() -> None:
    api = binding()
    worker = binding(AwsRole("w", arn=ROLE_ARN + "-w"), service="worker")
    accounts = [account_from(sa(worker)),
                account_from(sa(binding(service="old")))]
    workloads = [workload(worker, kind="CronJob"), workload(worker), workload(api)]
    first = pk.plan_kubernetes([api, worker], ["api", "worker"], accounts, workloads, APP, TARGET)
    second = pk.plan_kubernetes([api, worker], ["api", "worker"], list(reversed(accounts)),
                               list(reversed(workloads)), APP, TARGET)
    assert first == second
    assert [a.address for a in first] == [
        "shop/shop-api", "Deployment shop/shop-api",
        "shop/shop-worker", "CronJob shop/shop-worker", "Deployment shop/shop-worker",
        "shop/shop-old",
    ]


# --- render mode ------------------------------------------------------------------------------------


def _load_all(text: str) -> list[object]:
    return list(YAML(typ="safe").load_all(text))


def test_render_writes_accounts_patches_and_helm_values() -> None:
    api = binding(AZURE, cloud=Cloud.AZURE)
    job = binding(replace(AZURE, identity_name="shop-cron-id"), service="cron", cloud=Cloud.AZURE,
                  kind=ServiceType.JOB)
    files = km.render_manifests(rendered([api, job]), app=APP, target=TARGET)
    assert sorted(files) == [
        "helm-values.yaml",
        "patches/cronjob-shop-cron.yaml",
        "patches/deployment-shop-api.yaml",
        "serviceaccounts/shop-api.yaml",
        "serviceaccounts/shop-cron.yaml",
    ]
    assert _load_all(files["serviceaccounts/shop-api.yaml"]) == [sa(api)]
    [patch] = _load_all(files["patches/deployment-shop-api.yaml"])
    assert isinstance(patch, dict)
    assert patch["kind"] == "Deployment"
    assert patch["apiVersion"] == "apps/v1"
    template = patch["spec"]["template"]
    assert template["metadata"]["labels"] == {"azure.workload.identity/use": "true"}  # a string, not a bool
    assert template["metadata"]["annotations"] == {IDENTITY_ANNOTATION: api.identity_fingerprint()}
    assert "porter.run/app-name=shop,porter.run/service-name=api" in files["patches/deployment-shop-api.yaml"]
    [cron] = _load_all(files["patches/cronjob-shop-cron.yaml"])
    assert isinstance(cron, dict)
    assert cron["spec"]["jobTemplate"]["spec"]["template"]["spec"] == {"serviceAccountName": "shop-cron"}
    assert _load_all(files["helm-values.yaml"]) == [km.helm_values(rendered([api, job]))]


def test_render_is_byte_stable() -> None:
    bindings = [binding(), binding(AwsRole("w", arn=ROLE_ARN + "-w"), service="worker")]
    first = km.render_manifests(rendered(bindings), app=APP, target=TARGET)
    assert first == km.render_manifests(rendered(bindings), app=APP, target=TARGET)


def test_long_arns_stay_on_one_line() -> None:
    arn = "arn:aws:iam::123456789012:role/" + "/".join(["very-long-path-segment"] * 8) + "/role"
    text = to_yaml(sa(binding(AwsRole("r", arn=arn))))
    assert f"keyless.dev/identity: {arn}" in text
