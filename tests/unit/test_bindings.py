"""Unit tests of keyless.bindings: desired bindings of a loaded porter.yaml on a target, and fingerprints."""

from __future__ import annotations

import textwrap
from dataclasses import replace

import pytest

from keyless import clouds
from keyless.bindings import Binding, desired_bindings
from keyless.clouds import AwsRole, AzureIdentity, Cloud, GcpIdentity
from keyless.diagnostics import Position, Severity
from keyless.names import DNS_LABEL_MAX
from keyless.porter import LoadedApp, ServiceType, load_app
from keyless.targets import AnyTarget, load_targets

TARGETS = """\
targets:
  prod:
    cloud: aws
    region: us-east-1
    cluster: prod
    namespace: shop-prod
  prod-aks:
    cloud: azure
    subscription: 00000000-0000-0000-0000-000000000000
    resourceGroup: platform
    cluster: prod-aks
    namespace: shop
  prod-gke:
    cloud: gcp
    project: my-project
    location: us-central1
    cluster: prod-gke
    namespace: shop
"""

PORTER = """\
name: shop
services:
  - name: api
    type: web
    port: 8080
    connections:
      - type: awsRole
        role: api-role
      - type: gcpServiceAccount
        serviceAccountEmail: api-sa@my-project.iam.gserviceaccount.com
  - name: worker
    type: worker
    connections:
      - type: azureManagedIdentity
        identityName: shop-worker
        resourceGroup: platform
      - {type: awsRole, role: "arn:aws:iam::123456789012:role/worker"}
  - name: web-static
    type: web
    port: 80
  - name: cache
    type: worker
    connections:
      - type: disk
        config: {size: 10}
"""


def target(name: str = "prod") -> AnyTarget:
    return load_targets(TARGETS.encode(), "keyless.targets.yaml", {}).get(name)


def loaded(text: str = PORTER) -> LoadedApp:
    return load_app(textwrap.dedent(text).encode(), "porter.yaml", {})


def bindings_of(text: str = PORTER, target_name: str = "prod", app: str = "shop") -> list[Binding]:
    found, _ = desired_bindings(loaded(text), app, target_name, target(target_name))
    return found


def test_one_binding_per_aws_role_connection() -> None:
    found = bindings_of()
    assert [(b.service, b.identity) for b in found] == [
        ("api", AwsRole("api-role")),
        ("worker", AwsRole("arn:aws:iam::123456789012:role/worker")),
    ]
    api = found[0]
    assert (api.app, api.kind, api.target, api.cloud) == ("shop", ServiceType.WEB, "prod", Cloud.AWS)
    assert api.namespace == "shop-prod"  # the target's namespace
    assert api.key == ("shop-prod", "shop-api")
    assert found[1].service_account == "shop-worker"
    assert found[1].kind is ServiceType.WORKER


def test_the_app_name_given_names_the_service_accounts() -> None:
    assert [b.service_account for b in bindings_of(app="store")] == ["store-api", "store-worker"]
    assert {b.app for b in bindings_of(app="store")} == {"store"}


def test_predeploy_and_initial_deploy_jobs_get_their_own_accounts() -> None:
    found = bindings_of("""\
        name: shop
        services:
          - name: api
            type: web
            port: 8080
        predeploy:
          run: migrate
          connections:
            - type: awsRole
              role: migrate-role
        initialDeploy:
          run: seed
          connections:
            - type: awsRole
              role: seed-role
        """)
    assert [(b.service, b.service_account, b.kind, b.identity.describe()) for b in found] == [
        ("predeploy", "shop-predeploy", ServiceType.JOB, "migrate-role"),
        ("initial-deploy", "shop-initial-deploy", ServiceType.JOB, "seed-role"),
    ]


def test_a_named_predeploy_job_uses_its_name() -> None:
    found = bindings_of("""\
        name: shop
        services:
          - name: api
            type: web
            port: 8080
        predeploy:
          name: migrate
          run: migrate
          connections:
            - type: awsRole
              role: migrate-role
        """)
    assert [(b.service, b.service_account) for b in found] == [("migrate", "shop-migrate")]


def test_connections_for_another_cloud_are_notes_not_bindings() -> None:
    found, notes = desired_bindings(loaded(), "shop", "prod", target())
    assert all(b.cloud is Cloud.AWS for b in found)
    assert [(n.severity, n.file, n.position) for n in notes] == [
        (Severity.NOTE, "porter.yaml", Position(9, 9)),  # api's gcpServiceAccount
        (Severity.NOTE, "porter.yaml", Position(14, 9)),  # worker's azureManagedIdentity
    ]
    assert notes[0].message == ("gcpServiceAccount connection of service 'api' does not apply to target "
                                "'prod' (aws)")
    assert notes[0].hint == "it applies when you deploy to a target on Google Cloud"
    assert "azureManagedIdentity connection of service 'worker'" in notes[1].message


def test_an_azure_target_binds_azure_identities_and_notes_the_rest() -> None:
    found, notes = desired_bindings(loaded(), "shop", "prod-aks", target("prod-aks"))
    assert [(b.service, b.cloud, b.identity) for b in found] == [
        ("worker", Cloud.AZURE, AzureIdentity(identity_name="shop-worker", resource_group="platform")),
    ]
    assert len(notes) == 3  # api: awsRole and gcpServiceAccount; worker: awsRole
    assert all(n.severity is Severity.NOTE for n in notes)


def test_a_gcp_target_binds_google_service_accounts() -> None:
    found = bindings_of(target_name="prod-gke")
    assert [(b.service, b.identity) for b in found] == [
        ("api", GcpIdentity("api-sa@my-project.iam.gserviceaccount.com")),
    ]


def test_non_identity_connections_produce_nothing() -> None:
    found, notes = desired_bindings(loaded(), "shop", "prod", target())
    assert "cache" not in {b.service for b in found}
    assert not any("cache" in n.message for n in notes)


@pytest.mark.parametrize(("name", "cloud"), [("prod", Cloud.AWS), ("prod-aks", Cloud.AZURE), ("prod-gke", Cloud.GCP)])
def test_target_cloud(name: str, cloud: Cloud) -> None:
    assert clouds.for_target(target(name)).cloud is cloud


LONG = "a" * 50 + "-service-name"  # 63 characters: a valid service name, too long with the app prefix


def long_service_porter(*services: str) -> str:
    lines = ["name: shop", "services:"]
    for service in services:
        lines += [f"  - name: {service}", "    type: worker", "    connections:",
                  "      - type: awsRole", "        role: r"]
    return "\n".join(lines) + "\n"


def test_service_account_names_past_63_characters_are_hashed() -> None:
    other = "a" * 50 + "-service-namf"
    first, second = bindings_of(long_service_porter(LONG, other))
    assert len(f"shop-{LONG}") > DNS_LABEL_MAX
    for b in (first, second):
        assert len(b.service_account) <= DNS_LABEL_MAX
        assert b.service_account.startswith("shop-aaaa")
        assert b.service_account[-1].isalnum()
    assert first.service_account != second.service_account  # the hash tells them apart
    assert bindings_of(long_service_porter(LONG))[0].service_account == first.service_account  # and is stable


def test_short_names_are_not_hashed() -> None:
    assert bindings_of(long_service_porter("a" * 58))[0].service_account == "shop-" + "a" * 58  # exactly 63


def test_source_positions_point_at_each_connection() -> None:
    found = bindings_of()
    assert [(b.source.file, b.source.position) for b in found if b.source] == [
        ("porter.yaml", Position(7, 9)),  # `- type: awsRole` of api
        ("porter.yaml", Position(17, 9)),  # the flow mapping of worker's awsRole
    ]
    lines = PORTER.splitlines()
    assert lines[6][8:].startswith("type: awsRole")
    assert lines[16][8:].startswith("{type: awsRole")


# --- fingerprints ----------------------------------------------------------------------------------------


def test_identity_fingerprint_changes_with_the_identity_only() -> None:
    api = bindings_of()[0]
    fingerprint = api.identity_fingerprint()
    assert len(fingerprint) == 16
    assert int(fingerprint, 16) >= 0
    unrelated = replace(api, service="other", namespace="elsewhere", service_account="x", source=None,
                        kind=ServiceType.JOB, app="store", target="staging")
    assert unrelated.identity_fingerprint() == fingerprint
    assert replace(api, identity=AwsRole("other-role")).identity_fingerprint() != fingerprint
    resolved = replace(api, identity=AwsRole("api-role", arn="arn:aws:iam::123456789012:role/api-role"))
    assert resolved.identity_fingerprint() != fingerprint  # the resolved ARN is what pods get
    assert replace(api, identity=AwsRole("other-role")).identity_fingerprint() == \
        replace(api, identity=AwsRole("other-role")).identity_fingerprint()


def test_identity_fingerprint_differs_across_clouds_for_the_same_text() -> None:
    api = bindings_of()[0]
    assert replace(api, cloud=Cloud.GCP).identity_fingerprint() != api.identity_fingerprint()
