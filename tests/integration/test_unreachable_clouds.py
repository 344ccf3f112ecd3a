"""Each provider pointed at a port nothing listens on (real SDKs, real sockets): a few attempts within ~2 virtual
seconds, and a message that names the endpoint and the likely cause (a sandbox that is not running)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.oauth2.credentials import Credentials as StaticGoogleToken
from virtual_time import VirtualTime

from keyless.errors import CloudError
from keyless.providers.aws_api import AwsApi
from keyless.providers.azure_api import AzureApi
from keyless.providers.gcp_api import GcpApi, GoogleApi
from keyless.providers.retry import UNREACHABLE_RETRY
from keyless.targets import AzureTarget

pytestmark = pytest.mark.integration

SANDBOX_HINT = "keyless sandbox up"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nothing else takes it) but never listening."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@pytest.fixture(autouse=True)
def no_ambient_cloud_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("AWS_", "AZURE_", "CLOUDSDK_", "GOOGLE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))


def attempts(virtual: VirtualTime) -> int:
    return len(virtual.sleeps) + 1


def assert_brief(virtual: VirtualTime, error: CloudError) -> None:
    assert 2 <= attempts(virtual) <= UNREACHABLE_RETRY.max_attempts, virtual.sleeps
    assert virtual.now <= UNREACHABLE_RETRY.deadline
    assert f"gave up after {attempts(virtual)} attempt(s)" in error.message


def test_aws_names_the_endpoint_and_the_variable_that_chose_it(
        closed_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{closed_port}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL_EKS", endpoint)
    virtual = VirtualTime()
    api = AwsApi("us-east-1", sleep=virtual.sleep, clock=virtual.clock)
    with pytest.raises(CloudError) as raised:
        api.describe_cluster("prod")
    assert f"could not reach AWS at {endpoint}: connection refused" in raised.value.message
    assert SANDBOX_HINT in raised.value.hint
    assert "AWS_ENDPOINT_URL_EKS" in raised.value.hint
    assert_brief(virtual, raised.value)


class StaticAzureToken:
    """A token from nowhere: the ARM call is what this test points at a closed port."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("e30.e30.sig", 4_000_000_000)


def azure_target(arm_endpoint: str) -> AzureTarget:
    return AzureTarget.model_validate({
        "cloud": "azure", "subscription": "00000000-0000-0000-0000-000000000000", "resourceGroup": "platform",
        "cluster": "prod-aks", "namespace": "shop", "armEndpoint": arm_endpoint})


def test_azure_names_the_arm_endpoint(closed_port: int) -> None:
    endpoint = f"https://127.0.0.1:{closed_port}"
    virtual = VirtualTime()
    api = AzureApi(azure_target(endpoint), StaticAzureToken(), sleep=virtual.sleep, clock=virtual.clock)
    with pytest.raises(CloudError) as raised:
        api.get("reading AKS cluster 'prod-aks'", lambda: api.clusters.managed_clusters.get("platform", "prod-aks"))
    assert f"could not reach Azure Resource Manager at {endpoint}: connection refused" in raised.value.message
    assert SANDBOX_HINT in raised.value.hint
    assert "`armEndpoint` of the target" in raised.value.hint
    assert_brief(virtual, raised.value)


def test_azure_credentials_that_reach_no_token_endpoint_say_so_without_the_sdks_dump(
        closed_port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    authority = f"https://127.0.0.1:{closed_port}"
    token_file = tmp_path / "token"
    token_file.write_text("e30.e30.sig")
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", authority)
    monkeypatch.setenv("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000001")
    monkeypatch.setenv("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000002")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    virtual = VirtualTime()
    api = AzureApi(azure_target("https://management.azure.com"), sleep=virtual.sleep, clock=virtual.clock)
    try:
        with pytest.raises(CloudError) as raised:
            api.get("reading AKS cluster 'prod-aks'",
                    lambda: api.clusters.managed_clusters.get("platform", "prod-aks"))
    finally:
        api.close()
    assert f"could not get an Azure token from {authority}: connection refused" in raised.value.message
    assert "AZURE_AUTHORITY_HOST" in raised.value.hint
    assert SANDBOX_HINT in raised.value.hint
    rendered = raised.value.render()
    for dump in ("DefaultAzureCredential failed", "EnvironmentCredential", "troubleshoot", "az login"):
        assert dump not in rendered
    assert_brief(virtual, raised.value)


def test_azure_credentials_that_fail_otherwise_name_the_credential_and_a_whole_hint(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Only a token file that does not exist: the workload identity credential fails on it, no network involved.
    monkeypatch.setenv("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000001")
    monkeypatch.setenv("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000002")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(tmp_path / "missing-token"))
    virtual = VirtualTime()
    api = AzureApi(azure_target("https://management.azure.com"), sleep=virtual.sleep, clock=virtual.clock)
    try:
        with pytest.raises(CloudError) as raised:
            api.get("reading AKS cluster 'prod-aks'",
                    lambda: api.clusters.managed_clusters.get("platform", "prod-aks"))
    finally:
        api.close()
    assert "no usable Azure credentials (WorkloadIdentityCredential: " in raised.value.message
    assert "Attempted credentials" not in raised.value.message
    assert "troubleshoot" not in raised.value.message
    assert raised.value.hint.endswith("AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH)")
    assert virtual.sleeps == []  # not weather: no retry


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "no-such-host.invalid"])
def test_gcp_names_the_endpoint_and_its_override_variable(closed_port: int, host: str) -> None:
    endpoint = "http://" + host.format(port=closed_port)
    virtual = VirtualTime()
    api = GcpApi(StaticGoogleToken(token="ya29.test"), sleep=virtual.sleep, clock=virtual.clock,
                 env={GoogleApi.CONTAINER.variable: endpoint + "/"})
    with pytest.raises(CloudError) as raised:
        api.get("reading GKE cluster 'prod-gke'", GoogleApi.CONTAINER, "v1/projects/p/locations/l/clusters/prod-gke")
    cause = "connection refused" if "127.0.0.1" in host else "the host name does not resolve"
    assert f"could not reach Google at {endpoint}: {cause}" in raised.value.message
    assert GoogleApi.CONTAINER.variable in raised.value.hint
    assert (SANDBOX_HINT in raised.value.hint) is ("127.0.0.1" in host)  # only a loopback endpoint is the sandbox
    assert api.calls == attempts(virtual)
    assert_brief(virtual, raised.value)


def test_gcp_credentials_whose_token_endpoint_is_closed(closed_port: int, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    key_file = tmp_path / "deployer.json"
    key_file.write_text(json.dumps({
        "type": "service_account", "project_id": "p", "private_key_id": "k", "private_key": key,
        "client_email": "deployer@p.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": f"http://127.0.0.1:{closed_port}/token"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    virtual = VirtualTime()
    api = GcpApi(sleep=virtual.sleep, clock=virtual.clock)
    with pytest.raises(CloudError) as raised:
        api.get("reading GKE cluster 'prod-gke'", GoogleApi.CONTAINER, "v1/projects/p/locations/l/clusters/prod-gke")
    assert f"could not reach Google's token endpoint at 127.0.0.1:{closed_port}: connection refused" \
        in raised.value.message
    assert "token_uri" in raised.value.hint
    assert SANDBOX_HINT in raised.value.hint
    assert_brief(virtual, raised.value)
