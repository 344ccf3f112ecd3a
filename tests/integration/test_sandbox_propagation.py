"""How late writes reach the sandbox's data planes, on a virtual clock: Entra's seeded delay and flapping, EKS's
seeded association delay, and the Pod Identity agent's per-pod credential cache (issue 15 item 3)."""

from __future__ import annotations

import itertools
import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import jwt
import pytest
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.msi.models import FederatedIdentityCredential, Identity
from botocore.config import Config
from cryptography.hazmat.primitives.asymmetric import rsa
from virtual_time import VirtualTime

from keyless.sandbox.aws import DEMO_CLUSTER, AwsSandbox, StaticClusterKeys
from keyless.sandbox.azure import DEMO_RESOURCE_GROUP, AzureSandbox
from keyless.sandbox.knobs import TimeScale

pytestmark = pytest.mark.integration

ISSUER = "https://oidc.keyless.test/clusters/propagation/"
AUDIENCE = "api://AzureADTokenExchange"
NO_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1})


# ---- Azure: a credential's delay is drawn per write, then it flaps for a while --------------------------------


@pytest.fixture(scope="module")
def issuer_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def azure_time() -> VirtualTime:
    return VirtualTime()


@pytest.fixture(scope="module")
def azure(issuer_key: rsa.RSAPrivateKey, azure_time: VirtualTime) -> Iterator[AzureSandbox]:
    numbers = issuer_key.public_key().public_numbers()

    def b64(value: int) -> str:
        return jwt.utils.base64url_encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).decode()

    with AzureSandbox(write_hold=0.0, time_scale=TimeScale(1.0, azure_time.clock)) as running:
        running.publish_issuer(ISSUER, {"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "k",
                                                   "n": b64(numbers.n), "e": b64(numbers.e)}]})
        running.seed_demo()
        yield running


def _msi(azure: AzureSandbox) -> ManagedServiceIdentityClient:
    return ManagedServiceIdentityClient(azure.deployer_credential(), azure.subscription_id, base_url=azure.arm_url,
                                        connection_verify=str(azure.ca_bundle))


def _verify(azure: AzureSandbox) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(azure.ca_bundle))


def _exchange(azure: AzureSandbox, key: rsa.RSAPrivateKey, client_id: str, subject: str) -> str:
    """'ok', or the AADSTS code Entra's token endpoint answered."""
    now = int(time.time())
    assertion = jwt.encode({"iss": ISSUER, "sub": subject, "aud": [AUDIENCE], "iat": now, "nbf": now,
                            "exp": now + 3600}, key, algorithm="RS256", headers={"kid": "k"})
    answer = httpx.post(f"{azure.authority_url}{azure.tenant_id}/oauth2/v2.0/token", verify=_verify(azure),
                        data={"grant_type": "client_credentials", "client_id": client_id,
                              "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                              "client_assertion": assertion, "scope": "https://management.azure.com/.default"})
    return "ok" if answer.status_code == 200 else f"AADSTS{answer.json()['error_codes'][0]}"


def _runs(outcomes: list[tuple[float, str]]) -> list[tuple[str, float, float]]:
    """Consecutive equal outcomes as (outcome, first seen, last seen)."""
    runs = []
    for outcome, group in itertools.groupby(outcomes, key=lambda pair: pair[1]):
        seen = [t for t, _ in group]
        runs.append((outcome, seen[0], seen[-1]))
    return runs


def _write_and_watch(azure: AzureSandbox, clock: VirtualTime, key: rsa.RSAPrivateKey, until: float,
                     step: float = 0.5) -> list[tuple[float, str]]:
    msi = _msi(azure)
    identity = msi.user_assigned_identities.create_or_update(DEMO_RESOURCE_GROUP, f"id-{uuid.uuid4().hex[:8]}",
                                                             Identity(location="eastus"))
    subject = f"system:serviceaccount:shop:{uuid.uuid4().hex[:8]}"
    msi.federated_identity_credentials.create_or_update(
        DEMO_RESOURCE_GROUP, str(identity.name), "web",
        FederatedIdentityCredential(issuer=ISSUER, subject=subject, audiences=[AUDIENCE]))
    written = clock.clock()
    outcomes = []
    while clock.clock() - written <= until:
        outcomes.append((clock.clock() - written,
                         _exchange(azure, key, str(identity.client_id), subject)))
        clock.sleep(step)
    return outcomes


def test_a_credential_fails_then_works_then_flaps_then_works_for_good(
        azure: AzureSandbox, azure_time: VirtualTime, issuer_key: rsa.RSAPrivateKey) -> None:
    # Set on the token endpoint's own knobs route, as `keyless sandbox knobs --propagation` does on every front.
    knobs = {"faultSeed": 11, "propagation": {"entra-credential": {"minDelay": 10, "maxDelay": 20,
                                                                   "flapWindow": 40, "flapRate": 0.5}}}
    answer = httpx.post(f"{azure.authority_url}_sandbox/knobs", json=knobs, verify=_verify(azure))
    assert answer.status_code == 200, answer.text
    assert answer.json()["propagation"]["entra-credential"]["flapWindow"] == 40
    try:
        runs = _runs(_write_and_watch(azure, azure_time, issuer_key, until=80))
    finally:
        azure.entra_knobs.configure(type(azure.entra_knobs.settings)())
    outcomes = [outcome for outcome, _, _ in runs]
    assert outcomes[0] == "AADSTS70021"  # not propagated yet: the generic code, the one worth waiting on
    first_success = runs[1][1]
    assert 10 <= first_success <= 20.5  # drawn from the configured range
    assert outcomes[:4] == ["AADSTS70021", "ok", "AADSTS70021", "ok"]  # worked, then failed again
    assert set(outcomes) == {"ok", "AADSTS70021"}  # flapping is always the generic code
    last_failure = max(end for outcome, _, end in runs if outcome != "ok")
    assert last_failure < first_success + 40  # only within the flap window
    assert runs[-1][0] == "ok"  # then it works for good
    assert runs[-1][2] == 80


def test_without_a_propagation_knob_the_fixed_delay_holds_and_nothing_flaps(
        azure: AzureSandbox, azure_time: VirtualTime, issuer_key: rsa.RSAPrivateKey) -> None:
    azure.propagation_delay = 3.0
    try:
        runs = _runs(_write_and_watch(azure, azure_time, issuer_key, until=20))
    finally:
        azure.propagation_delay = 1.0
    assert [(outcome, start) for outcome, start, _ in runs] == [("AADSTS70021", 0.0), ("ok", 3.0)]


# ---- AWS: the association delay is drawn per write; the agent caches credentials per pod ----------------------


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def aws_time() -> VirtualTime:
    return VirtualTime()


@pytest.fixture(scope="module")
def aws(signing_key: rsa.RSAPrivateKey, aws_time: VirtualTime) -> Iterator[AwsSandbox]:
    keys = StaticClusterKeys({DEMO_CLUSTER: signing_key.public_key()})
    with AwsSandbox(cluster_keys=keys, time_scale=TimeScale(1.0, aws_time.clock)) as running:
        running.seed_demo()
        yield running


@pytest.fixture(autouse=True)
def _fresh_knobs(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "aws" in request.fixturenames:
        sandbox: AwsSandbox = request.getfixturevalue("aws")
        sandbox.knobs.configure(type(sandbox.knobs.settings)())


def _pod_token(key: rsa.RSAPrivateKey, namespace: str, service_account: str, pod_uid: str) -> str:
    now = int(time.time())
    return jwt.encode({"iss": "https://kubernetes.default.svc", "sub": f"system:serviceaccount:{namespace}:"
                       f"{service_account}", "aud": ["pods.eks.amazonaws.com"], "iat": now, "nbf": now,
                       "exp": now + 3600, "jti": uuid.uuid4().hex,  # every token its own, as kubelet's rotations
                       "kubernetes.io": {"namespace": namespace, "pod": {"name": f"pod-{pod_uid}", "uid": pod_uid}}},
                      key, algorithm="RS256")


def _role_of(aws: AwsSandbox, token: str) -> str:
    """The role name the agent's credentials for `token` are a session of, or the agent's error."""
    request = urllib.request.Request(aws.agent_url, headers={"Authorization": token})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return f"HTTP {error.code}"
    sts = boto3.client("sts", endpoint_url=aws.moto_url, region_name="us-east-1",
                       aws_access_key_id=body["AccessKeyId"], aws_secret_access_key=body["SecretAccessKey"],
                       aws_session_token=body["Token"])
    return str(sts.get_caller_identity()["Arn"].split("/")[1])


def test_the_association_delay_is_drawn_from_the_configured_range_per_write(
        aws: AwsSandbox, aws_time: VirtualTime) -> None:
    answer = httpx.post(f"{aws.eks_url}/_sandbox/knobs", json={
        "faultSeed": 5, "propagation": {"eks-association": {"minDelay": "20s", "maxDelay": "40s"}}})
    assert answer.status_code == 200, answer.text
    eks = aws.client("eks", NO_RETRIES)
    role = aws.client("iam").get_role(RoleName="keyless-demo-api")["Role"]["Arn"]
    namespace = f"ns-{uuid.uuid4().hex[:6]}"
    accounts = [f"sa{i}" for i in range(6)]
    for account in accounts:
        eks.create_pod_identity_association(clusterName=DEMO_CLUSTER, namespace=namespace, serviceAccount=account,
                                            roleArn=role)
    start = aws_time.clock()
    settled: dict[str, float] = {}
    while aws_time.clock() - start <= 41:
        for account in accounts:
            if account not in settled and aws.association_for(DEMO_CLUSTER, namespace, account) == role:
                settled[account] = aws_time.clock() - start
        aws_time.sleep(0.25)
    assert set(settled) == set(accounts)
    assert all(20 <= seconds <= 40.25 for seconds in settled.values()), settled
    assert len(set(settled.values())) > 1  # drawn per write, not one fixed delay


def test_a_running_pod_keeps_its_old_role_until_the_agent_cache_expires_and_a_new_pod_gets_the_new_one(
        aws: AwsSandbox, aws_time: VirtualTime, signing_key: rsa.RSAPrivateKey) -> None:
    aws.knobs.configure(type(aws.knobs.settings)(agent_cache=600.0))
    aws.association_delay = 5.0
    try:
        eks = aws.client("eks", NO_RETRIES)
        iam = aws.client("iam")
        old, new = (iam.get_role(RoleName=name)["Role"]["Arn"] for name in ("keyless-demo-api", "keyless-demo-worker"))
        namespace = f"ns-{uuid.uuid4().hex[:6]}"
        association = eks.create_pod_identity_association(clusterName=DEMO_CLUSTER, namespace=namespace,
                                                          serviceAccount="web", roleArn=old)["association"]
        aws_time.sleep(5.0)
        running_pod = "uid-running"
        assert _role_of(aws, _pod_token(signing_key, namespace, "web", running_pod)) == "keyless-demo-api"
        cached_at = aws_time.clock()

        eks.update_pod_identity_association(clusterName=DEMO_CLUSTER, associationId=association["associationId"],
                                            roleArn=new)
        aws_time.sleep(10.0)  # the change has reached the agent: a new pod gets the new role
        assert aws.association_for(DEMO_CLUSTER, namespace, "web") == new
        assert _role_of(aws, _pod_token(signing_key, namespace, "web", "uid-new")) == "keyless-demo-worker"
        # The running pod, even with a rotated token, is served from the agent's cache: the old role.
        assert _role_of(aws, _pod_token(signing_key, namespace, "web", running_pod)) == "keyless-demo-api"
        aws_time.sleep(cached_at + 599.0 - aws_time.clock())
        assert _role_of(aws, _pod_token(signing_key, namespace, "web", running_pod)) == "keyless-demo-api"
        aws_time.sleep(1.0)  # the cache entry is due for renewal: the agent asks eks-auth again
        assert _role_of(aws, _pod_token(signing_key, namespace, "web", running_pod)) == "keyless-demo-worker"
    finally:
        aws.association_delay = 1.0


def test_without_an_agent_cache_a_running_pod_gets_the_new_role_once_it_settles(
        aws: AwsSandbox, aws_time: VirtualTime, signing_key: rsa.RSAPrivateKey) -> None:
    eks = aws.client("eks", NO_RETRIES)
    iam = aws.client("iam")
    old, new = (iam.get_role(RoleName=name)["Role"]["Arn"] for name in ("keyless-demo-api", "keyless-demo-worker"))
    namespace = f"ns-{uuid.uuid4().hex[:6]}"
    association = eks.create_pod_identity_association(clusterName=DEMO_CLUSTER, namespace=namespace,
                                                      serviceAccount="web", roleArn=old)["association"]
    aws_time.sleep(1.0)
    assert _role_of(aws, _pod_token(signing_key, namespace, "web", "uid-1")) == "keyless-demo-api"
    eks.update_pod_identity_association(clusterName=DEMO_CLUSTER, associationId=association["associationId"],
                                        roleArn=new)
    aws_time.sleep(1.0)
    assert _role_of(aws, _pod_token(signing_key, namespace, "web", "uid-1")) == "keyless-demo-worker"
