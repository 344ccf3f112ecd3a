"""Integration tests of the Azure sandbox, driven by the real azure-mgmt clients and azure-identity over HTTPS."""

from __future__ import annotations

import base64
import io
import json
import re
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.identity import DefaultAzureCredential, WorkloadIdentityCredential
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.authorization.v2022_04_01.models import RoleAssignmentCreateParameters
from azure.mgmt.containerservice import ContainerServiceClient
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.msi.models import FederatedIdentityCredential, Identity
from cryptography.hazmat.primitives.asymmetric import rsa

from keyless.sandbox.azure import (
    DEMO_CLUSTER,
    DEMO_CLUSTER_OFF,
    DEMO_LOCATION,
    DEMO_RESOURCE_GROUP,
    AzureDemoSeed,
    AzureSandbox,
    RateLimit,
    WriteLimits,
)
from keyless.sandbox.knobs import KnobSettings

pytestmark = pytest.mark.integration

DELAY = 0.5  # propagation delay of new credentials in this module: short, but long enough to observe
HOLD = 0.3  # how long a credential write holds its identity
RG = DEMO_RESOURCE_GROUP
AUDIENCE = "api://AzureADTokenExchange"
ARM_SCOPE = "https://management.azure.com/.default"
TEST_ISSUER = "https://oidc.keyless.test/clusters/test/"  # with its trailing slash, as AKS issuers have
T = TypeVar("T")


# ---- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def sandbox(issuer_key: rsa.RSAPrivateKey) -> Iterator[AzureSandbox]:
    with AzureSandbox(propagation_delay=DELAY, write_hold=HOLD) as running:
        running.publish_issuer(TEST_ISSUER, _jwks(issuer_key, "test-key"))
        yield running


@pytest.fixture(scope="module")
def seed(sandbox: AzureSandbox) -> AzureDemoSeed:
    return sandbox.seed_demo()


@pytest.fixture(scope="module")
def credential(sandbox: AzureSandbox) -> WorkloadIdentityCredential:
    return sandbox.deployer_credential()


def _common(sandbox: AzureSandbox, **extra: Any) -> dict[str, Any]:
    return {"base_url": sandbox.arm_url, "connection_verify": str(sandbox.ca_bundle), **extra}


@pytest.fixture(scope="module")
def msi(sandbox: AzureSandbox, credential: WorkloadIdentityCredential) -> ManagedServiceIdentityClient:
    return ManagedServiceIdentityClient(credential, sandbox.subscription_id, **_common(sandbox))


@pytest.fixture(scope="module")
def aks(sandbox: AzureSandbox, credential: WorkloadIdentityCredential) -> ContainerServiceClient:
    return ContainerServiceClient(credential, sandbox.subscription_id, **_common(sandbox))


@pytest.fixture(scope="module")
def auth(sandbox: AzureSandbox, credential: WorkloadIdentityCredential) -> AuthorizationManagementClient:
    return AuthorizationManagementClient(credential, sandbox.subscription_id, **_common(sandbox))


@pytest.fixture(autouse=True)
def _clean(sandbox: AzureSandbox) -> Iterator[None]:
    yield
    sandbox.reset_faults()
    sandbox.write_hold = HOLD
    sandbox.write_limits = WriteLimits()


def _b64(value: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


def _jwks(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    return {"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": _b64(numbers.n),
                      "e": _b64(numbers.e)}]}


def _assertion(key: rsa.RSAPrivateKey, subject: str, *, kid: str = "test-key", **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"iss": TEST_ISSUER, "sub": subject, "aud": [AUDIENCE], "iat": now, "nbf": now,
                              "exp": now + 3600}
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def _identity(msi: ManagedServiceIdentityClient) -> Identity:
    created: Identity = msi.user_assigned_identities.create_or_update(RG, f"id-{uuid.uuid4().hex[:8]}",
                                                                      Identity(location="eastus"))
    return created


def _fic(issuer: str = TEST_ISSUER, subject: str | None = None, audiences: list[str] | None = None
         ) -> FederatedIdentityCredential:
    return FederatedIdentityCredential(issuer=issuer, subject=subject or f"system:serviceaccount:shop:{uuid.uuid4()}",
                                       audiences=audiences or [AUDIENCE])


def _code(error: pytest.ExceptionInfo[HttpResponseError]) -> tuple[int | None, str | None]:
    return error.value.status_code, error.value.error.code if error.value.error else None


def _retry_after(error: HttpResponseError) -> str:
    response: Any = error.response  # azure-core types it as the common base, which has no headers
    return str(response.headers["Retry-After"])


def _workload_credential(sandbox: AzureSandbox, tmp_path: Path, client_id: str, token: str
                         ) -> WorkloadIdentityCredential:
    token_file = tmp_path / f"token-{uuid.uuid4().hex[:6]}"
    token_file.write_text(token)
    return WorkloadIdentityCredential(tenant_id=sandbox.tenant_id, client_id=client_id,
                                      token_file_path=str(token_file), authority=sandbox.authority_url,
                                      connection_verify=str(sandbox.ca_bundle))


def _eventually(action: Callable[[], T], timeout: float = 5.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except ClientAuthenticationError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _raw(sandbox: AzureSandbox, url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], dict[str, Any]]:
    context = ssl.create_default_context(cafile=str(sandbox.ca_bundle))
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), json.loads(error.read())


# ---- the seed and the read side ---------------------------------------------------------------------------


def test_seed_demo_through_arm(sandbox: AzureSandbox, seed: AzureDemoSeed, aks: ContainerServiceClient,
                               msi: ManagedServiceIdentityClient) -> None:
    # AKS assigns the issuer: https://<region>.oic.prod-aks.azure.com/<tenant>/<id>/, trailing slash included.
    assert re.fullmatch(rf"https://{DEMO_LOCATION}\.oic\.prod-aks\.azure\.com/{sandbox.tenant_id}/[0-9a-f-]{{36}}/",
                        seed.cluster_issuer_url)
    cluster = aks.managed_clusters.get(RG, DEMO_CLUSTER)
    assert cluster.properties is not None
    assert cluster.properties.oidc_issuer_profile is not None
    assert cluster.properties.oidc_issuer_profile.enabled is True
    assert cluster.properties.oidc_issuer_profile.issuer_url == seed.cluster_issuer_url
    assert cluster.properties.security_profile is not None
    assert cluster.properties.security_profile.workload_identity is not None
    assert cluster.properties.security_profile.workload_identity.enabled is True
    off = aks.managed_clusters.get(RG, DEMO_CLUSTER_OFF)
    assert off.properties is not None
    assert off.properties.oidc_issuer_profile is not None
    assert off.properties.oidc_issuer_profile.enabled is False
    assert off.properties.oidc_issuer_profile.issuer_url is None
    assert off.properties.security_profile is not None
    assert off.properties.security_profile.workload_identity is None  # AKS leaves it out until it is enabled
    api = msi.user_assigned_identities.get(RG, "keyless-demo-api-identity")
    assert (api.client_id, api.principal_id, api.tenant_id) == (
        seed.identities["keyless-demo-api-identity"].client_id,
        seed.identities["keyless-demo-api-identity"].principal_id, sandbox.tenant_id)
    assert sandbox.seed_demo() == seed  # idempotent: the issuer stays the one AKS assigned first


def test_aks_assigns_the_issuer_and_ignores_one_in_the_request(
        sandbox: AzureSandbox, seed: AzureDemoSeed, aks: ContainerServiceClient) -> None:
    """issuerURL is read-only (azure-rest-api-specs, ManagedClusterOIDCIssuerProfile): AKS ignores one sent."""
    body = {"location": DEMO_LOCATION, "properties": {
        "dnsPrefix": "picky", "oidcIssuerProfile": {"enabled": True, "issuerURL": "https://mine.example/"},
        "securityProfile": {"workloadIdentity": {"enabled": True}}}}
    created = aks.managed_clusters.begin_create_or_update(
        RG, "aks-picky", io.BytesIO(json.dumps(body).encode())).result()
    assert created.oidc_issuer_profile is not None
    assigned = created.oidc_issuer_profile.issuer_url
    assert assigned != "https://mine.example/"
    assert str(assigned).startswith(f"https://{DEMO_LOCATION}.oic.prod-aks.azure.com/{sandbox.tenant_id}/")
    assert str(assigned).endswith("/")
    again = aks.managed_clusters.begin_create_or_update(
        RG, "aks-picky", io.BytesIO(json.dumps(body).encode())).result()
    assert again.oidc_issuer_profile is not None
    assert again.oidc_issuer_profile.issuer_url == assigned  # kept across updates


def test_arm_serves_federated_credentials_only_at_api_versions_that_have_them(
        sandbox: AzureSandbox, seed: AzureDemoSeed, credential: WorkloadIdentityCredential) -> None:
    identity = (f"/subscriptions/{sandbox.subscription_id}/resourceGroups/{RG}/providers/"
                f"Microsoft.ManagedIdentity/userAssignedIdentities/keyless-deployer")
    token = credential.get_token(ARM_SCOPE).token
    headers = {"Authorization": f"Bearer {token}"}

    def get(path: str, version: str) -> tuple[int, dict[str, Any]]:
        status, _, body = _raw(sandbox, f"{sandbox.arm_url}{path}?api-version={version}", headers=headers)
        return status, body

    assert get(identity, "2018-11-30")[0] == 200  # identities existed long before federated credentials
    assert get(f"{identity}/federatedIdentityCredentials", "2022-01-31-PREVIEW")[0] == 200  # case-insensitive
    status, body = get(f"{identity}/federatedIdentityCredentials", "2018-11-30")
    assert (status, body["error"]["code"]) == (400, "NoRegisteredProviderFound")
    assert "for type 'userAssignedIdentities/federatedIdentityCredentials'" in body["error"]["message"]
    assert "2022-01-31-preview" in body["error"]["message"]
    assert "2024-11-30" in body["error"]["message"]
    status, body = get(identity, "2024-12-01")  # date-shaped, but never published
    assert (status, body["error"]["code"]) == (400, "NoRegisteredProviderFound")
    status, body = get(identity, "latest")
    assert (status, body["error"]["code"]) == (400, "InvalidApiVersionParameter")


def test_missing_cluster_is_resource_not_found(aks: ContainerServiceClient) -> None:
    with pytest.raises(ResourceNotFoundError) as missing:
        aks.managed_clusters.get(RG, "no-such-cluster")
    assert _code(missing) == (404, "ResourceNotFound")


def test_add_cluster_keeps_the_issuer_byte_for_byte(sandbox: AzureSandbox, seed: AzureDemoSeed,
                                                   aks: ContainerServiceClient) -> None:
    sandbox.add_cluster("aks-no-slash", issuer_url=TEST_ISSUER.rstrip("/"))
    got = aks.managed_clusters.get(RG, "aks-no-slash").properties
    assert got is not None
    assert got.oidc_issuer_profile is not None
    assert got.oidc_issuer_profile.issuer_url == TEST_ISSUER.rstrip("/")


def test_identity_get_and_failures(seed: AzureDemoSeed, msi: ManagedServiceIdentityClient) -> None:
    identity = msi.user_assigned_identities.get(RG, "keyless-demo-broad-identity")
    assert identity.client_id
    assert identity.principal_id
    assert identity.tenant_id
    with pytest.raises(ResourceNotFoundError) as missing:
        msi.user_assigned_identities.get(RG, "no-such-identity")
    assert _code(missing) == (404, "ResourceNotFound")
    with pytest.raises(ResourceNotFoundError) as no_group:
        msi.user_assigned_identities.get("no-such-rg", "keyless-demo-broad-identity")
    assert _code(no_group) == (404, "ResourceGroupNotFound")
    names = {i.name for i in msi.user_assigned_identities.list_by_resource_group(RG)}
    assert {"keyless-demo-api-identity", "keyless-demo-broad-identity", "keyless-deployer"} <= names


def test_role_assignments_and_definitions(seed: AzureDemoSeed, auth: AuthorizationManagementClient) -> None:
    api = seed.identities["keyless-demo-api-identity"]
    sub_scope = f"/subscriptions/{seed.subscription_id}"
    found = list(auth.role_assignments.list_for_scope(sub_scope, filter=f"principalId eq '{api.principal_id}'"))
    assert [(a.scope, a.role_definition_id.rsplit("/", 1)[-1]) for a in found if a.role_definition_id] == [
        (seed.storage_account_id, "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1")]
    reader = auth.role_definitions.get(seed.storage_account_id, "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1")
    assert reader.role_name == "Storage Blob Data Reader"
    assert reader.permissions
    assert reader.permissions[0].data_actions == [
        "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"]
    broad = seed.identities["keyless-demo-broad-identity"]
    (contributor,) = auth.role_assignments.list_for_scope(f"{sub_scope}/resourceGroups/{RG}",
                                                          filter=f"principalId eq '{broad.principal_id}'")
    assert contributor.role_definition_id is not None
    definition = auth.role_definitions.get_by_id(contributor.role_definition_id)
    assert (definition.role_name, definition.role_type) == ("Contributor", "BuiltInRole")
    names = {d.role_name for d in auth.role_definitions.list(sub_scope)}
    assert {"Owner", "Contributor", "Reader", "User Access Administrator", "Role Based Access Control Administrator",
            "Storage Blob Data Reader", "Storage Blob Data Contributor"} <= names
    (owner,) = auth.role_definitions.list(sub_scope, filter="roleName eq 'Owner'")
    assert owner.name == "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
    with pytest.raises(HttpResponseError) as unknown:
        auth.role_assignments.create(sub_scope, str(uuid.uuid4()), RoleAssignmentCreateParameters(
            role_definition_id=owner.id or "", principal_id=str(uuid.uuid4())))
    assert _code(unknown) == (400, "PrincipalNotFound")
    with pytest.raises(ResourceExistsError) as twice:
        auth.role_assignments.create(seed.storage_account_id, str(uuid.uuid4()), RoleAssignmentCreateParameters(
            role_definition_id=found[0].role_definition_id or "", principal_id=api.principal_id))
    assert _code(twice) == (409, "RoleAssignmentExists")


# ---- federated credentials --------------------------------------------------------------------------------


def test_credential_lifecycle(seed: AzureDemoSeed, msi: ManagedServiceIdentityClient) -> None:
    identity = _identity(msi)
    name = str(identity.name)
    created = msi.federated_identity_credentials.create_or_update(RG, name, "shop-api", _fic(subject="s:1"))
    assert (created.issuer, created.subject, created.audiences) == (TEST_ISSUER, "s:1", [AUDIENCE])
    assert created.id == f"{identity.id}/federatedIdentityCredentials/shop-api"
    msi.federated_identity_credentials.create_or_update(RG, name, "shop-worker", _fic(subject="s:2"))
    listed = msi.federated_identity_credentials.list(RG, name, top=1)  # pages through nextLink
    assert sorted(c.name for c in listed) == ["shop-api", "shop-worker"]
    assert msi.federated_identity_credentials.get(RG, name, "shop-api").subject == "s:1"
    msi.federated_identity_credentials.delete(RG, name, "shop-api")
    with pytest.raises(ResourceNotFoundError):
        msi.federated_identity_credentials.get(RG, name, "shop-api")
    with pytest.raises(ResourceNotFoundError) as no_parent:
        msi.federated_identity_credentials.create_or_update(RG, "no-such-identity", "x-api", _fic())
    assert _code(no_parent) == (404, "ParentResourceNotFound")


def test_at_most_twenty_credentials(sandbox: AzureSandbox, seed: AzureDemoSeed,
                                    msi: ManagedServiceIdentityClient) -> None:
    sandbox.write_hold = 0.0
    name = str(_identity(msi).name)
    for index in range(20):
        msi.federated_identity_credentials.create_or_update(RG, name, f"fic-{index:02d}", _fic())
    with pytest.raises(HttpResponseError) as over:
        msi.federated_identity_credentials.create_or_update(RG, name, "fic-20", _fic())
    assert _code(over) == (400, "BadRequest")
    assert "at most 20" in str(over.value.message)
    # Updating one of the twenty is still allowed.
    msi.federated_identity_credentials.create_or_update(RG, name, "fic-00", _fic(subject="changed"))


def test_issuer_and_subject_unique_per_identity(seed: AzureDemoSeed, msi: ManagedServiceIdentityClient) -> None:
    name = str(_identity(msi).name)
    msi.federated_identity_credentials.create_or_update(RG, name, "first", _fic(subject="sub"))
    with pytest.raises(HttpResponseError) as duplicate:
        msi.federated_identity_credentials.create_or_update(RG, name, "second", _fic(subject="sub"))
    assert _code(duplicate) == (400, "BadRequest")
    assert duplicate.value.error is not None
    assert duplicate.value.error.message == "Issuer and subject combination already exists for this Managed Identity."
    # The issuer compares byte for byte: without its trailing slash it is another issuer.
    msi.federated_identity_credentials.create_or_update(RG, name, "third",
                                                        _fic(issuer=TEST_ISSUER.rstrip("/"), subject="sub"))


@pytest.mark.parametrize("bad", ["ab", "-leading-dash", "has.dot", "x" * 121])
def test_credential_name_rules(seed: AzureDemoSeed, msi: ManagedServiceIdentityClient, bad: str) -> None:
    name = "keyless-demo-api-identity"
    with pytest.raises(HttpResponseError) as invalid:
        msi.federated_identity_credentials.create_or_update(RG, name, bad, _fic())
    assert _code(invalid) == (400, "BadRequest")
    assert invalid.value.error is not None
    assert invalid.value.error.message == f"Federated Identity Credential name '{bad}' is invalid."


def test_exactly_one_audience(seed: AzureDemoSeed, msi: ManagedServiceIdentityClient) -> None:
    with pytest.raises(HttpResponseError) as two:
        msi.federated_identity_credentials.create_or_update(
            RG, "keyless-demo-api-identity", "two-audiences", _fic(audiences=[AUDIENCE, "api://other"]))
    assert _code(two) == (400, "BadRequest")
    assert two.value.error is not None
    assert two.value.error.message == "Federated identity credentials must have exactly one audience."


def test_concurrent_writes_to_one_identity_conflict(sandbox: AzureSandbox, seed: AzureDemoSeed,
                                                    msi: ManagedServiceIdentityClient) -> None:
    sandbox.write_hold = 1.0  # wide enough that the second write surely lands inside the first
    name = str(_identity(msi).name)
    start = threading.Barrier(2)

    def write(credential: str) -> object:
        start.wait()
        try:
            return msi.federated_identity_credentials.create_or_update(RG, name, credential, _fic())
        except HttpResponseError as error:
            return error

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(write, ["cred-a", "cred-b"]))
    errors = [r for r in results if isinstance(r, HttpResponseError)]
    assert len(errors) == 1
    conflict = errors[0]
    # azure-core maps every 409 to ResourceExistsError: the ARM code is what tells this conflict apart.
    assert isinstance(conflict, ResourceExistsError)
    assert conflict.status_code == 409
    assert conflict.error is not None
    assert conflict.error.code == "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity"
    assert len(list(msi.federated_identity_credentials.list(RG, name))) == 1


def test_concurrent_writes_to_two_identities_succeed(sandbox: AzureSandbox, seed: AzureDemoSeed,
                                                     msi: ManagedServiceIdentityClient) -> None:
    sandbox.write_hold = 1.0
    names = [str(_identity(msi).name), str(_identity(msi).name)]
    start = threading.Barrier(2)

    def write(identity: str) -> FederatedIdentityCredential:
        start.wait()
        created: FederatedIdentityCredential = msi.federated_identity_credentials.create_or_update(
            RG, identity, "cred", _fic())
        return created

    began = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(write, names))
    assert [r.name for r in results] == ["cred", "cred"]
    assert time.monotonic() - began < 1.8  # side by side: one after the other would take 2 s


def test_throttled_write_is_retried_after_retry_after(sandbox: AzureSandbox, seed: AzureDemoSeed,
                                                      msi: ManagedServiceIdentityClient,
                                                      credential: WorkloadIdentityCredential) -> None:
    name = str(_identity(msi).name)
    sandbox.throttle_next(1, retry_after=1)
    began = time.monotonic()
    created = msi.federated_identity_credentials.create_or_update(RG, name, "after-429", _fic())
    assert created.name == "after-429"
    assert time.monotonic() - began >= 0.9  # azure-core waited as told
    no_retry = ManagedServiceIdentityClient(credential, sandbox.subscription_id, **_common(sandbox, retry_total=0))
    sandbox.throttle_next(1)
    with pytest.raises(HttpResponseError) as throttled:
        no_retry.federated_identity_credentials.create_or_update(RG, name, "throttled", _fic())
    assert _code(throttled) == (429, "TooManyRequests")
    assert _retry_after(throttled.value) == "1"


def test_write_rate_limit_per_identity(sandbox: AzureSandbox, seed: AzureDemoSeed,
                                       credential: WorkloadIdentityCredential,
                                       msi: ManagedServiceIdentityClient) -> None:
    sandbox.write_hold = 0.0
    names = [str(_identity(msi).name), str(_identity(msi).name)]
    sandbox.write_limits = WriteLimits(per_identity=RateLimit(0.5, burst=1))
    no_retry = ManagedServiceIdentityClient(credential, sandbox.subscription_id, **_common(sandbox, retry_total=0))
    no_retry.federated_identity_credentials.create_or_update(RG, names[0], "first", _fic())
    with pytest.raises(HttpResponseError) as throttled:
        no_retry.federated_identity_credentials.create_or_update(RG, names[0], "second", _fic())
    assert _code(throttled) == (429, "TooManyRequests")
    assert _retry_after(throttled.value) == "2"
    no_retry.federated_identity_credentials.create_or_update(RG, names[1], "first", _fic())  # its own bucket


# ---- token exchange ------------------------------------------------------------------------------------------


def test_exchange_fails_until_propagated_then_yields_a_token_arm_accepts(
        sandbox: AzureSandbox, seed: AzureDemoSeed, msi: ManagedServiceIdentityClient,
        issuer_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    identity = _identity(msi)
    subject = "system:serviceaccount:shop:shop-api"
    msi.federated_identity_credentials.create_or_update(RG, str(identity.name), "shop-api", _fic(subject=subject))
    pod = _workload_credential(sandbox, tmp_path, str(identity.client_id), _assertion(issuer_key, subject))
    with pytest.raises(ClientAuthenticationError) as early:
        pod.get_token(ARM_SCOPE)
    assert "AADSTS70021" in str(early.value.message)
    time.sleep(DELAY)
    token = _eventually(lambda: pod.get_token(ARM_SCOPE))
    claims = jwt.decode(token.token, options={"verify_signature": False})
    assert claims["oid"] == identity.principal_id
    assert claims["appid"] == claims["azp"] == identity.client_id
    assert claims["tid"] == sandbox.tenant_id
    assert claims["aud"] == "https://management.azure.com"
    assert claims["exp"] - claims["iat"] >= 3000  # its own lifetime, not a race with the wall clock
    # The token is good for ARM: the pod's identity can read itself.
    as_pod = ManagedServiceIdentityClient(pod, sandbox.subscription_id, **_common(sandbox))
    assert as_pod.user_assigned_identities.get(RG, str(identity.name)).client_id == identity.client_id


def test_exchange_matches_issuer_subject_and_audience_exactly(
        sandbox: AzureSandbox, seed: AzureDemoSeed, msi: ManagedServiceIdentityClient,
        issuer_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    identity = _identity(msi)
    subject = "system:serviceaccount:shop:exact"
    msi.federated_identity_credentials.create_or_update(RG, str(identity.name), "exact", _fic(subject=subject))
    time.sleep(DELAY)
    client_id = str(identity.client_id)
    good = _workload_credential(sandbox, tmp_path, client_id, _assertion(issuer_key, subject))
    _eventually(lambda: good.get_token(ARM_SCOPE))
    cases = {
        # Codes as Entra sends them (azure-workload-identity issue 1200, Azure/login issues 482 and 515).
        "AADSTS700211: No matching federated identity record found for presented assertion issuer":
            _assertion(issuer_key, subject, iss=TEST_ISSUER.rstrip("/")),  # trailing slash matters
        "AADSTS700213: No matching federated identity record found for presented assertion subject":
            _assertion(issuer_key, "system:serviceaccount:shop:other"),
        "AADSTS7002138: ": _assertion(issuer_key, "system:serviceaccount:shop:Exact"),  # case-only difference
        "AADSTS70021: No matching": _assertion(issuer_key, subject, aud=["api://SomethingElse"]),
        "AADSTS700024: ": _assertion(issuer_key, subject, iat=1, nbf=1, exp=2),
        "AADSTS700027: ": _assertion(rsa.generate_private_key(public_exponent=65537, key_size=2048), subject),
    }
    for expected, token in cases.items():
        with pytest.raises(ClientAuthenticationError) as failed:
            _workload_credential(sandbox, tmp_path, client_id, token).get_token(ARM_SCOPE)
        assert expected in str(failed.value.message), expected
    with pytest.raises(ClientAuthenticationError) as unknown:
        _workload_credential(sandbox, tmp_path, str(uuid.uuid4()), _assertion(issuer_key, subject)).get_token(ARM_SCOPE)
    assert "AADSTS700016" in str(unknown.value.message)


def test_entra_error_body_has_entras_shape(sandbox: AzureSandbox, seed: AzureDemoSeed,
                                           issuer_key: rsa.RSAPrivateKey) -> None:
    form = urllib.parse.urlencode({
        "client_id": seed.identities["keyless-demo-api-identity"].client_id,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": _assertion(issuer_key, "system:serviceaccount:shop:nobody"),
        "scope": ARM_SCOPE, "grant_type": "client_credentials",
    }).encode()
    status, _, body = _raw(sandbox, f"{sandbox.authority_url}{sandbox.tenant_id}/oauth2/v2.0/token", data=form,
                           headers={"client-request-id": "0f1e2d3c-0000-4000-8000-000000000001"})
    assert status == 400
    assert body["error"] == "invalid_request"
    assert body["error_codes"] == [70021]  # the demo identity trusts nothing from this issuer yet: the generic code
    assert body["error_description"].startswith(
        f"AADSTS70021: No matching federated identity record found for presented assertion. "
        f"Assertion Issuer: '{TEST_ISSUER}'. Assertion Subject: 'system:serviceaccount:shop:nobody'. "
        f"Assertion Audience: '{AUDIENCE}'.")
    assert body["correlation_id"] == "0f1e2d3c-0000-4000-8000-000000000001"
    assert {"timestamp", "trace_id", "error_uri"} <= set(body)


def test_deleted_credential_keeps_working_until_propagated(
        sandbox: AzureSandbox, seed: AzureDemoSeed, msi: ManagedServiceIdentityClient,
        issuer_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    identity = _identity(msi)
    subject = "system:serviceaccount:shop:gone"
    msi.federated_identity_credentials.create_or_update(RG, str(identity.name), "gone", _fic(subject=subject))
    time.sleep(DELAY)
    msi.federated_identity_credentials.delete(RG, str(identity.name), "gone")
    token = _assertion(issuer_key, subject)
    _workload_credential(sandbox, tmp_path, str(identity.client_id), token).get_token(ARM_SCOPE)  # still cached
    time.sleep(DELAY)
    with pytest.raises(ClientAuthenticationError) as gone:
        _workload_credential(sandbox, tmp_path, str(identity.client_id), token).get_token(ARM_SCOPE)
    assert "AADSTS70021" in str(gone.value.message)


# ---- authentication to ARM and CA trust ------------------------------------------------------------------------


def test_arm_requires_a_bearer_token(sandbox: AzureSandbox, seed: AzureDemoSeed) -> None:
    url = f"{sandbox.arm_url}/subscriptions/{sandbox.subscription_id}/resourcegroups/{RG}?api-version=2021-04-01"
    status, headers, body = _raw(sandbox, url)
    assert status == 401
    assert body["error"]["code"] == "AuthenticationFailed"
    assert headers["WWW-Authenticate"].startswith("Bearer authorization_uri=")
    status, _, body = _raw(sandbox, url, headers={"Authorization": "Bearer not-a-token"})
    assert (status, body["error"]["code"]) == (401, "InvalidAuthenticationToken")


def test_arm_refuses_a_token_for_another_audience(sandbox: AzureSandbox, seed: AzureDemoSeed,
                                                  credential: WorkloadIdentityCredential) -> None:
    storage_scoped = ManagedServiceIdentityClient(
        credential, sandbox.subscription_id,
        **_common(sandbox, credential_scopes=["https://storage.azure.com/.default"]))
    with pytest.raises(ClientAuthenticationError) as refused:
        storage_scoped.user_assigned_identities.get(RG, "keyless-deployer")
    assert _code(refused) == (401, "InvalidAuthenticationTokenAudience")


def test_default_credential_through_env(sandbox: AzureSandbox, seed: AzureDemoSeed,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    env = sandbox.env()
    token = Path(env["AZURE_FEDERATED_TOKEN_FILE"]).read_text()
    assert jwt.decode(token, options={"verify_signature": False})["iss"] == sandbox.deployer_issuer_url
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # REQUESTS_CA_BUNDLE alone: no connection_verify anywhere.
    client = ManagedServiceIdentityClient(DefaultAzureCredential(), env["AZURE_SUBSCRIPTION_ID"],
                                          base_url=sandbox.arm_url)
    assert client.user_assigned_identities.get(RG, "keyless-deployer").client_id == env["AZURE_CLIENT_ID"]


def test_connection_verify_alone_is_enough(sandbox: AzureSandbox, seed: AzureDemoSeed,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in sandbox.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    ca = str(sandbox.ca_bundle)
    client = ManagedServiceIdentityClient(DefaultAzureCredential(connection_verify=ca), sandbox.subscription_id,
                                          base_url=sandbox.arm_url, connection_verify=ca)
    assert client.user_assigned_identities.get(RG, "keyless-deployer").name == "keyless-deployer"
    # Without it, neither the credential nor the client trusts the sandbox (azure-core does not read SSL_CERT_FILE).
    with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
        WorkloadIdentityCredential(retry_total=0).get_token(ARM_SCOPE)
    untrusting = ManagedServiceIdentityClient(DefaultAzureCredential(connection_verify=ca), sandbox.subscription_id,
                                              base_url=sandbox.arm_url, retry_total=0)
    monkeypatch.setenv("SSL_CERT_FILE", ca)
    with pytest.raises(ServiceRequestError):
        untrusting.user_assigned_identities.get(RG, "keyless-deployer")


def test_a_credential_still_propagating_is_the_generic_code_even_beside_others(
        sandbox: AzureSandbox, seed: AzureDemoSeed, msi: ManagedServiceIdentityClient,
        issuer_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    identity = _identity(msi)
    msi.federated_identity_credentials.create_or_update(RG, str(identity.name), "first", _fic())
    time.sleep(DELAY)
    subject = "system:serviceaccount:shop:late"
    msi.federated_identity_credentials.create_or_update(RG, str(identity.name), "late", _fic(subject=subject))
    token = _assertion(issuer_key, subject)
    with pytest.raises(ClientAuthenticationError) as early:  # not 700213: the record exists, Entra lags behind
        _workload_credential(sandbox, tmp_path, str(identity.client_id), token).get_token(ARM_SCOPE)
    assert "AADSTS70021: " in str(early.value.message)
    _eventually(lambda: _workload_credential(sandbox, tmp_path, str(identity.client_id), token).get_token(ARM_SCOPE))


def test_an_issuer_whose_keys_cannot_be_fetched_is_aadsts90061(
        sandbox: AzureSandbox, seed: AzureDemoSeed, msi: ManagedServiceIdentityClient,
        issuer_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    identity = _identity(msi)
    unreachable = "https://oidc.keyless.test/clusters/unreachable/"  # published by nobody: no document to fetch
    subject = "system:serviceaccount:shop:api"
    msi.federated_identity_credentials.create_or_update(RG, str(identity.name), "far",
                                                        _fic(issuer=unreachable, subject=subject))
    token = _assertion(issuer_key, subject, iss=unreachable)
    time.sleep(DELAY + 0.2)
    with pytest.raises(ClientAuthenticationError) as failed:
        _workload_credential(sandbox, tmp_path, str(identity.client_id), token).get_token(ARM_SCOPE)
    assert "AADSTS90061: Request to External OIDC endpoint failed." in str(failed.value.message)
def test_entra_fetches_the_issuers_discovery_document_and_keys_over_https(
        sandbox: AzureSandbox, seed: AzureDemoSeed, msi: ManagedServiceIdentityClient,
        issuer_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    """Entra reads <issuer>/.well-known/openid-configuration, then its jwks_uri, from the issuer's own host."""
    identity = _identity(msi)
    issuer = "https://oidc.keyless.test/clusters/fetched/"
    subject = "system:serviceaccount:shop:api"
    msi.federated_identity_credentials.create_or_update(RG, str(identity.name), "fetched",
                                                        _fic(issuer=issuer, subject=subject))
    token = _assertion(issuer_key, subject, iss=issuer)
    time.sleep(DELAY + 0.2)
    with pytest.raises(ClientAuthenticationError) as unpublished:
        _workload_credential(sandbox, tmp_path, str(identity.client_id), token).get_token(ARM_SCOPE)
    assert "AADSTS90061" in str(unpublished.value.message)
    sandbox.publish_issuer(issuer, _jwks(issuer_key, "test-key"))
    sandbox.entra_knobs.reset_calls()
    _workload_credential(sandbox, tmp_path, str(identity.client_id), token).get_token(ARM_SCOPE)
    calls = sandbox.entra_knobs.calls()
    # Two HTTPS requests reached the issuer host: the discovery document, then the keys it points to.
    assert calls.get("openid-configuration") == 1
    assert calls.get("GET /clusters/fetched/openid/v1/jwks") == 1
    assert calls.get("token") == 1
    sandbox.withdraw_issuer(issuer)  # the issuer goes offline: the next exchange cannot fetch its keys
    with pytest.raises(ClientAuthenticationError) as gone:
        _workload_credential(sandbox, tmp_path, str(identity.client_id), token).get_token(ARM_SCOPE)
    assert "AADSTS90061" in str(gone.value.message)
    plain = "http://oidc.keyless.test/clusters/plain/"  # Entra fetches issuers over https only
    msi.federated_identity_credentials.create_or_update(RG, str(identity.name), "plain",
                                                        _fic(issuer=plain, subject=subject))
    time.sleep(DELAY + 0.2)
    with pytest.raises(ClientAuthenticationError) as insecure:
        _workload_credential(sandbox, tmp_path, str(identity.client_id),
                             _assertion(issuer_key, subject, iss=plain)).get_token(ARM_SCOPE)
    assert "AADSTS90061" in str(insecure.value.message)


# ---- knobs: ARM and Entra rate limits, lost answers, counters ------------------------------------------------


def test_an_arm_read_limit_answers_429_with_retry_after_which_azure_core_honours(
        sandbox: AzureSandbox, seed: AzureDemoSeed, credential: WorkloadIdentityCredential,
        msi: ManagedServiceIdentityClient) -> None:
    name = str(_identity(msi).name)
    seen: list[tuple[int, dict[str, str]]] = []

    def record(response: Any) -> None:
        seen.append((response.http_response.status_code, dict(response.http_response.headers)))

    sandbox.arm_knobs.configure(KnobSettings(rate_limits={"arm-read": RateLimit(1.0, burst=1)}))
    try:
        no_retry = ManagedServiceIdentityClient(credential, sandbox.subscription_id,
                                                **_common(sandbox, retry_total=0, raw_response_hook=record))
        no_retry.user_assigned_identities.get(RG, name)
        assert seen[-1][1]["x-ms-ratelimit-remaining-subscription-reads"] == "0"
        with pytest.raises(HttpResponseError) as throttled:
            no_retry.user_assigned_identities.get(RG, name)
        assert _code(throttled) == (429, "SubscriptionRequestsThrottled")
        assert _retry_after(throttled.value) == "1"
        seen.clear()
        began = time.monotonic()
        retrying = ManagedServiceIdentityClient(credential, sandbox.subscription_id,
                                                **_common(sandbox, raw_response_hook=record))
        assert retrying.user_assigned_identities.get(RG, name).name == name
        assert [status for status, _ in seen] == [429, 200]  # throttled once, then served
        assert time.monotonic() - began >= 0.5  # azure-core waited as told, not its own sub-second backoff
    finally:
        sandbox.arm_knobs.configure(KnobSettings())


def test_the_token_endpoint_throttles_in_entra_words_and_azure_identity_honours_retry_after(
        sandbox: AzureSandbox, seed: AzureDemoSeed) -> None:
    before = sandbox.entra_knobs.calls().get("token", 0)
    sandbox.entra_knobs.throttle_next(1)
    began = time.monotonic()
    assert sandbox.deployer_credential().get_token(ARM_SCOPE).token
    assert time.monotonic() - began >= 0.9  # it waited the Retry-After second, then asked again
    assert sandbox.entra_knobs.calls()["token"] == before + 2
    sandbox.entra_knobs.throttle_next(20)
    with pytest.raises(ClientAuthenticationError) as throttled:
        sandbox.deployer_credential().get_token(ARM_SCOPE)
    assert "AADSTS90055" in str(throttled.value.message)


def test_a_lost_answer_leaves_the_credential_written(sandbox: AzureSandbox, seed: AzureDemoSeed,
                                                    credential: WorkloadIdentityCredential,
                                                    msi: ManagedServiceIdentityClient) -> None:
    name = str(_identity(msi).name)
    no_retry = ManagedServiceIdentityClient(credential, sandbox.subscription_id, **_common(sandbox, retry_total=0))
    sandbox.arm_knobs.lose_next(1, match=("federatedIdentityCredentials/write",))
    with pytest.raises(HttpResponseError) as lost:
        no_retry.federated_identity_credentials.create_or_update(RG, name, "lost-answer", _fic())
    assert _code(lost) == (500, "InternalServerError")
    assert msi.federated_identity_credentials.get(RG, name, "lost-answer").name == "lost-answer"


def test_arm_counts_calls_by_operation_and_takes_faults_over_http(
        sandbox: AzureSandbox, seed: AzureDemoSeed, msi: ManagedServiceIdentityClient) -> None:
    name = str(_identity(msi).name)
    with httpx.Client(base_url=f"{sandbox.arm_url}/_sandbox/",
                      verify=ssl.create_default_context(cafile=str(sandbox.ca_bundle))) as control:
        control.delete("calls").raise_for_status()
        list(msi.federated_identity_credentials.list(RG, name))
        msi.federated_identity_credentials.create_or_update(RG, name, "counted", _fic())
        msi.federated_identity_credentials.get(RG, name, "counted")
        assert control.get("calls").json()["operations"] == {
            "GET federatedIdentityCredentials (list)": 1, "PUT federatedIdentityCredentials": 1,
            "GET federatedIdentityCredentials": 1}
        denied = control.post("faults/deny", json={"actions": [
            "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/read"]})
        assert denied.json()["denied"] == [
            "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/read"]
        with pytest.raises(HttpResponseError) as refused:
            msi.federated_identity_credentials.get(RG, name, "counted")
        assert _code(refused) == (403, "AuthorizationFailed")
        assert control.post("faults/deny", json={"actions": ["read everything"]}).status_code == 400
