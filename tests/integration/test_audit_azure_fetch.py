"""The Azure audit fetcher with the real azure-mgmt clients and azure-identity against the sandbox's ARM: role
assignments of the principal and their roles, other apps on the identity, denied reads, server errors, and the
target's caBundle reaching the credential as well as the clients."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from azure.mgmt.authorization.v2022_04_01 import AuthorizationManagementClient
from azure.mgmt.authorization.v2022_04_01.models import RoleAssignmentCreateParameters
from azure.mgmt.msi.v2024_11_30 import ManagedServiceIdentityClient
from azure.mgmt.msi.v2024_11_30.models import FederatedIdentityCredential, Identity

from keyless.audit import rules as R
from keyless.bindings import Binding
from keyless.clouds import AzureIdentity, Cloud
from keyless.errors import CloudError
from keyless.names import federated_credential_name
from keyless.porter.model import ServiceType
from keyless.providers.azure_audit import AzureAuditor
from keyless.providers.retry import NO_RETRY, RetryPolicy
from keyless.sandbox.azure import DEMO_CLUSTER, DEMO_RESOURCE_GROUP, AzureSandbox
from keyless.targets import AzureTarget

pytestmark = pytest.mark.integration

RG = DEMO_RESOURCE_GROUP
OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
BLOB_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
ASSIGNMENTS_READ = "Microsoft.Authorization/roleAssignments/read"
ISSUER = "https://oidc.keyless.test/clusters/audit/"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[AzureSandbox]:
    with AzureSandbox() as running:
        running.seed_demo()
        yield running


@pytest.fixture(autouse=True)
def azure_env(sandbox: AzureSandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The workload identity path to the sandbox; the CA reaches keyless only through the target's caBundle."""
    for name in ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                 "AZURE_TOKEN_CREDENTIALS", "IDENTITY_ENDPOINT", "MSI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in sandbox.env().items():
        if name != "REQUESTS_CA_BUNDLE":
            monkeypatch.setenv(name, value)
    yield
    sandbox.reset_faults()


def target(sandbox: AzureSandbox) -> AzureTarget:
    return AzureTarget.model_validate({
        "cloud": "azure", "subscription": sandbox.subscription_id, "resourceGroup": RG, "cluster": DEMO_CLUSTER,
        "namespace": "shop", "armEndpoint": sandbox.arm_url, "caBundle": str(sandbox.ca_bundle)})


def auditor(sandbox: AzureSandbox, retry: RetryPolicy = NO_RETRY) -> AzureAuditor:
    # No credential passed: DefaultAzureCredential, built by the SDK layer with the target's caBundle.
    return AzureAuditor(target(sandbox), retry=retry, sleep=lambda _: None)


def identity(sandbox: AzureSandbox, *roles: tuple[str, str]) -> str:
    """A fresh managed identity holding `roles` ((role GUID, scope) pairs), made as a person at the portal would."""
    name = f"audit-{uuid.uuid4().hex[:8]}"
    credential, sub = sandbox.deployer_credential(), sandbox.subscription_id
    options = {"base_url": sandbox.arm_url, "connection_verify": str(sandbox.ca_bundle)}
    with ManagedServiceIdentityClient(credential, sub, **options) as msi, \
            AuthorizationManagementClient(credential, sub, **options) as auth:
        made = msi.user_assigned_identities.create_or_update(RG, name, Identity(location="eastus"))
        for guid, scope in roles:
            definition = f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{guid}"
            auth.role_assignments.create(scope, str(uuid.uuid4()), RoleAssignmentCreateParameters(
                role_definition_id=definition, principal_id=str(made.principal_id), principal_type="ServicePrincipal"))
    return name


def storage(sandbox: AzureSandbox) -> str:
    return f"/subscriptions/{sandbox.subscription_id}/resourceGroups/{RG}/providers/Microsoft.Storage/" \
           "storageAccounts/shopdata"


def binding(name: str, service: str = "api") -> Binding:
    return Binding(app="shop", service=service, kind=ServiceType.WEB, target="prod-aks", cloud=Cloud.AZURE,
                   namespace="shop", service_account=f"shop-{service}",
                   identity=AzureIdentity(identity_name=name, resource_group=RG))


def test_fetcher_reads_assignments_of_the_principal_and_resolves_their_roles(sandbox: AzureSandbox) -> None:
    name = identity(sandbox, (OWNER, f"/subscriptions/{sandbox.subscription_id}"), (BLOB_READER, storage(sandbox)))
    before = len(sandbox.arm_requests)
    report = auditor(sandbox).audit("shop", "prod-aks", [binding(name)])
    [connection] = report.connections
    assert sorted(f.rule.id for f in connection.findings) == ["AZ-PRIVILEGED-ROLE", "AZ-SCOPE-SUBSCRIPTION"]
    made = sandbox.arm_requests[before:]
    assert all(method == "GET" for method, _, _ in made)  # an audit reads, never writes
    assert sum(1 for _, _, action in made if action == ASSIGNMENTS_READ) == 1  # one listing, by principalId


def test_fetcher_finds_other_apps_on_the_same_identity_through_keyless_credentials(sandbox: AzureSandbox) -> None:
    name = identity(sandbox, (BLOB_READER, storage(sandbox)))
    credentials = {federated_credential_name("billing", "worker", "prod-aks"): "system:serviceaccount:shop:bw",
                   federated_credential_name("billing", "api", "staging-aks"): "system:serviceaccount:shop:ba",
                   "hand-made": "system:serviceaccount:ops:tool"}
    with ManagedServiceIdentityClient(sandbox.deployer_credential(), sandbox.subscription_id, base_url=sandbox.arm_url,
                                      connection_verify=str(sandbox.ca_bundle)) as msi:
        for credential, subject in credentials.items():
            msi.federated_identity_credentials.create_or_update(RG, name, credential, FederatedIdentityCredential(
                issuer=ISSUER, subject=subject, audiences=["api://AzureADTokenExchange"]))
    report = auditor(sandbox).audit("shop", "prod-aks", [binding(name)])
    [finding] = report.connections[0].findings
    assert finding.rule is R.SHARED_IDENTITY
    assert "app billing service worker" in finding.message
    assert "staging" not in finding.message
    assert "tool" not in finding.message


def test_a_clean_identity_has_no_findings(sandbox: AzureSandbox) -> None:
    name = identity(sandbox, (BLOB_READER, storage(sandbox)))
    assert auditor(sandbox).audit("shop", "prod-aks", [binding(name)]).connections[0].findings == ()


def test_a_missing_identity_or_a_denied_read_is_an_incomplete_audit(sandbox: AzureSandbox) -> None:
    [finding] = auditor(sandbox).audit("shop", "prod-aks", [binding("nobody-home")]).connections[0].findings
    assert finding.rule is R.AUDIT_INCOMPLETE
    assert "does not exist" in finding.message
    name = identity(sandbox, (BLOB_READER, storage(sandbox)))
    sandbox.deny(ASSIGNMENTS_READ)
    [finding] = auditor(sandbox).audit("shop", "prod-aks", [binding(name)]).connections[0].findings
    assert finding.rule is R.AUDIT_INCOMPLETE
    assert "AuthorizationFailed" in finding.message
    assert "listing role assignments" in finding.message


def test_a_transient_server_error_is_retried_like_the_provider_does(sandbox: AzureSandbox) -> None:
    name = identity(sandbox, (BLOB_READER, storage(sandbox)))
    sandbox.fail_next(ASSIGNMENTS_READ, count=2, status=503)
    retrying = RetryPolicy(max_attempts=4, base_delay=0.0, max_delay=0.0, deadline=60.0)
    assert auditor(sandbox, retrying).audit("shop", "prod-aks", [binding(name)]).connections[0].findings == ()


def test_server_errors_that_persist_become_a_cloud_error(sandbox: AzureSandbox) -> None:
    name = identity(sandbox, (BLOB_READER, storage(sandbox)))
    sandbox.fail_next(ASSIGNMENTS_READ, count=10, status=500)
    with pytest.raises(CloudError, match="listing role assignments"):
        auditor(sandbox).audit("shop", "prod-aks", [binding(name)])


def test_without_the_ca_bundle_the_auditor_says_the_certificate_is_not_trusted(sandbox: AzureSandbox) -> None:
    untrusted = target(sandbox).model_copy(update={"ca_bundle": None})
    with pytest.raises(CloudError) as caught:
        AzureAuditor(untrusted, retry=NO_RETRY).audit("shop", "prod-aks", [binding("anything")])
    # The token request to Entra is what fails first: the credential, too, trusts only the target's caBundle.
    assert "CERTIFICATE_VERIFY_FAILED" in caught.value.message
    assert "caBundle" in caught.value.hint
