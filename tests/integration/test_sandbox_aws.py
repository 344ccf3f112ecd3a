"""Integration tests of the AWS sandbox, driven by real boto3/botocore clients over HTTP."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import httpx
import jwt
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, CredentialRetrievalError
from cryptography.hazmat.primitives.asymmetric import rsa
from virtual_time import VirtualTime

from keyless.sandbox.aws import DEMO_CLUSTER, POD_IDENTITY_TRUST_POLICY, AwsSandbox, DemoSeed, StaticClusterKeys
from keyless.sandbox.aws.eks_model import DEFAULT_ASSOCIATION_QUOTA
from keyless.sandbox.aws.moto_server import DEFAULT_ACCOUNT
from keyless.sandbox.knobs import Knobs, KnobSettings, RateLimit, TimeScale

pytestmark = pytest.mark.integration

DELAY = 0.3  # association visibility delay used by this module: short, but long enough to observe
NO_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1})


# ---- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def sandbox(signing_key: rsa.RSAPrivateKey) -> Iterator[AwsSandbox]:
    keys = StaticClusterKeys({DEMO_CLUSTER: signing_key.public_key()})
    # moto's state is per process, so one sandbox serves the whole module; tests use their own names.
    with AwsSandbox(association_delay=DELAY, cluster_keys=keys) as running:
        yield running


@pytest.fixture(scope="module")
def seed(sandbox: AwsSandbox) -> DemoSeed:
    return sandbox.seed_demo()


@pytest.fixture
def eks(sandbox: AwsSandbox) -> Any:
    return sandbox.client("eks", NO_RETRIES)


@pytest.fixture
def iam(sandbox: AwsSandbox) -> Any:
    return sandbox.client("iam")


@pytest.fixture(autouse=True)
def _clean_faults(sandbox: AwsSandbox) -> Iterator[None]:
    yield
    sandbox.reset_faults()


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _new_cluster(sandbox: AwsSandbox, seed: DemoSeed, **extra: Any) -> str:
    name = _unique("c")
    role = sandbox.client("iam").get_role(RoleName="keyless-sandbox-cluster")["Role"]["Arn"]
    sandbox.client("eks").create_cluster(name=name, roleArn=role, resourcesVpcConfig={}, **extra)
    return name


def _new_role(iam: Any, trust: Mapping[str, Any] = POD_IDENTITY_TRUST_POLICY) -> str:
    arn: str = iam.create_role(RoleName=_unique("role"), AssumeRolePolicyDocument=json.dumps(dict(trust)))["Role"][
        "Arn"
    ]
    return arn


def _code(error: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response: Any = error.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def _token(key: rsa.RSAPrivateKey, namespace: str, service_account: str, **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "https://kubernetes.default.svc",
        "sub": f"system:serviceaccount:{namespace}:{service_account}",
        "aud": ["pods.eks.amazonaws.com"],
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "kubernetes.io": {"namespace": namespace, "pod": {"name": f"{service_account}-pod", "uid": "uid-1"}},
    }
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm="RS256")


_AGENT_ERROR = re.compile(
    r"\[(?P<request>[^\]]*)\]: \((?P<code>[A-Za-z]+)\): (?P<message>.*), fault: (client|server)\n"
)


def _agent(url: str, token: str | None) -> tuple[int, dict[str, Any]]:
    """Credentials as JSON, or an error split into code and message from the agent's plain-text answer."""
    headers = {"Accept": "application/json"} | ({"Authorization": token} if token is not None else {})
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            kind = error.headers.get_content_type()
            text = error.read().decode()
        assert kind == "text/plain"
        relayed = _AGENT_ERROR.fullmatch(text)
        if relayed is None:
            return error.code, {"code": None, "message": text.rstrip("\n")}
        return error.code, {"code": relayed["code"], "message": relayed["message"]}


def _sandbox_api(sandbox: AwsSandbox, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{sandbox.eks_url}/_sandbox/{path}", data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=10) as response:
        loaded: dict[str, Any] = json.loads(response.read())
        return loaded


def _associate(eks: Any, cluster: str, namespace: str, service_account: str, role: str, **extra: Any) -> Any:
    return eks.create_pod_identity_association(
        clusterName=cluster, namespace=namespace, serviceAccount=service_account, roleArn=role, **extra
    )["association"]


# ---- the demo seed ----------------------------------------------------------------------------------


def test_seed_demo_creates_cluster_addon_and_roles(sandbox: AwsSandbox, seed: DemoSeed, eks: Any, iam: Any) -> None:
    assert (seed.account, seed.region, seed.cluster) == ("123456789012", "us-east-1", "keyless-sandbox")
    assert eks.describe_cluster(name=DEMO_CLUSTER)["cluster"]["status"] == "ACTIVE"
    addon = eks.describe_addon(clusterName=DEMO_CLUSTER, addonName="eks-pod-identity-agent")["addon"]
    assert addon["status"] == "ACTIVE"
    assert set(seed.roles) == {"keyless-demo-api", "keyless-demo-worker", "keyless-demo-broad"}
    trust = iam.get_role(RoleName="keyless-demo-api")["Role"]["AssumeRolePolicyDocument"]
    statement = trust["Statement"][0]
    assert statement["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    assert set(statement["Action"]) == {"sts:AssumeRole", "sts:TagSession"}
    broad = iam.get_role_policy(RoleName="keyless-demo-broad", PolicyName="keyless-demo")["PolicyDocument"]
    assert broad["Statement"][0]["Action"] == "s3:*"
    assert broad["Statement"][0]["Resource"] == "*"
    scoped = iam.get_role_policy(RoleName="keyless-demo-api", PolicyName="keyless-demo")["PolicyDocument"]
    assert "*" not in json.dumps(scoped["Statement"][0]["Action"])
    assert sandbox.seed_demo() == seed  # idempotent: a restarted demo can seed again


def test_env_points_sdks_at_the_sandbox(sandbox: AwsSandbox, seed: DemoSeed, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in sandbox.env().items():
        monkeypatch.setenv(key, value)
    session = boto3.Session()
    assert session.client("sts").get_caller_identity()["Account"] == seed.account
    assert DEMO_CLUSTER in session.client("eks").list_clusters()["clusters"]


# ---- pod identity associations ------------------------------------------------------------------------


def test_association_lifecycle(sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _new_cluster(sandbox, seed)
    created = _associate(eks, cluster, "shop", "api", seed.roles["keyless-demo-api"], tags={"owner": "keyless"})
    assert created["associationId"].startswith("a-")
    assert created["associationArn"].endswith(f":podidentityassociation/{cluster}/{created['associationId']}")
    described = eks.describe_pod_identity_association(clusterName=cluster, associationId=created["associationId"])
    assert described["association"]["roleArn"] == seed.roles["keyless-demo-api"]
    assert described["association"]["tags"] == {"owner": "keyless"}

    updated = eks.update_pod_identity_association(
        clusterName=cluster, associationId=created["associationId"], roleArn=seed.roles["keyless-demo-worker"]
    )["association"]
    assert updated["roleArn"] == seed.roles["keyless-demo-worker"]
    assert (updated["namespace"], updated["serviceAccount"]) == ("shop", "api")
    with pytest.raises(ClientError) as nothing:
        eks.update_pod_identity_association(clusterName=cluster, associationId=created["associationId"])
    assert _code(nothing) == ("InvalidParameterException", 400)

    eks.delete_pod_identity_association(clusterName=cluster, associationId=created["associationId"])
    with pytest.raises(ClientError) as gone:
        eks.describe_pod_identity_association(clusterName=cluster, associationId=created["associationId"])
    assert _code(gone) == ("ResourceNotFoundException", 404)


def test_duplicate_service_account_is_resource_in_use(sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _new_cluster(sandbox, seed)
    _associate(eks, cluster, "shop", "api", seed.roles["keyless-demo-api"])
    with pytest.raises(ClientError) as duplicate:
        _associate(eks, cluster, "shop", "api", seed.roles["keyless-demo-worker"])
    assert _code(duplicate) == ("ResourceInUseException", 409)


def test_missing_cluster_is_resource_not_found(seed: DemoSeed, eks: Any) -> None:
    with pytest.raises(ClientError) as create:
        _associate(eks, "no-such-cluster", "shop", "api", seed.roles["keyless-demo-api"])
    assert _code(create) == ("ResourceNotFoundException", 404)
    with pytest.raises(ClientError) as listing:
        eks.list_pod_identity_associations(clusterName="no-such-cluster")
    assert _code(listing) == ("ResourceNotFoundException", 404)


def test_missing_role_is_invalid_parameter(sandbox: AwsSandbox, seed: DemoSeed, eks: Any, iam: Any) -> None:
    cluster = _new_cluster(sandbox, seed)
    with pytest.raises(ClientError) as missing:
        _associate(eks, cluster, "shop", "api", "arn:aws:iam::123456789012:role/does-not-exist")
    assert _code(missing) == ("InvalidParameterException", 400)
    assert missing.value.response["Error"]["Message"] == "Role provided in the request does not exist"

    # IAM's eventual consistency: a brand-new role is refused for a while, then accepted.
    sandbox.role_propagation_delay = 60.0
    try:
        fresh = _new_role(iam)
        with pytest.raises(ClientError) as too_new:
            _associate(eks, cluster, "shop", "fresh", fresh)
        assert too_new.value.response["Error"]["Message"] == "Role provided in the request does not exist"
    finally:
        sandbox.role_propagation_delay = 0.0
    assert _associate(eks, cluster, "shop", "fresh", fresh)["roleArn"] == fresh


def test_quota_is_resource_limit_exceeded(sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _new_cluster(sandbox, seed)
    sandbox.association_quota = 3
    try:
        for n in range(3):
            _associate(eks, cluster, "shop", f"sa-{n}", seed.roles["keyless-demo-api"])
        with pytest.raises(ClientError) as limit:
            _associate(eks, cluster, "shop", "sa-3", seed.roles["keyless-demo-api"])
    finally:
        sandbox.association_quota = DEFAULT_ASSOCIATION_QUOTA
    assert _code(limit) == ("ResourceLimitExceededException", 400)


def test_tags_are_validated_and_taggable(sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _new_cluster(sandbox, seed)
    too_many = {f"k{n}": "v" for n in range(51)}
    with pytest.raises(ClientError) as many:
        _associate(eks, cluster, "shop", "api", seed.roles["keyless-demo-api"], tags=too_many)
    assert _code(many) == ("InvalidParameterException", 400)
    with pytest.raises(ClientError) as empty:  # TagMap is 1..50: botocore sends {}, the API refuses it
        _associate(eks, cluster, "shop", "api", seed.roles["keyless-demo-api"], tags={})
    assert _code(empty) == ("InvalidParameterException", 400)
    with pytest.raises(ClientError) as reserved:
        _associate(eks, cluster, "shop", "api", seed.roles["keyless-demo-api"], tags={"aws:x": "y"})
    assert _code(reserved) == ("InvalidParameterException", 400)

    arn = _associate(eks, cluster, "shop", "api", seed.roles["keyless-demo-api"], tags={"a": "1"})["associationArn"]
    eks.tag_resource(resourceArn=arn, tags={"b": "2"})
    assert eks.list_tags_for_resource(resourceArn=arn)["tags"] == {"a": "1", "b": "2"}
    eks.untag_resource(resourceArn=arn, tagKeys=["a"])
    assert eks.list_tags_for_resource(resourceArn=arn)["tags"] == {"b": "2"}


def test_pagination_and_summaries(sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _new_cluster(sandbox, seed)
    role = seed.roles["keyless-demo-api"]
    for n in range(120):
        _associate(eks, cluster, "ns-a" if n % 2 else "ns-b", f"sa-{n}", role, tags={"n": str(n)})

    first = eks.list_pod_identity_associations(clusterName=cluster)
    assert len(first["associations"]) == 100  # the default page size
    assert "nextToken" in first
    second = eks.list_pod_identity_associations(clusterName=cluster, nextToken=first["nextToken"])
    assert len(second["associations"]) == 20
    assert "nextToken" not in second

    pages = list(
        eks.get_paginator("list_pod_identity_associations").paginate(
            clusterName=cluster, PaginationConfig={"PageSize": 7}
        )
    )
    sizes = [len(page["associations"]) for page in pages]
    assert sizes == [7] * 17 + [1]
    everything = [a for page in pages for a in page["associations"]]
    assert len({a["associationId"] for a in everything}) == 120

    # Summaries carry no roleArn and no tags: a caller must Describe to learn the role.
    assert {frozenset(a) for a in everything} == {
        frozenset({"clusterName", "namespace", "serviceAccount", "associationArn", "associationId"})
    }

    only_a = eks.list_pod_identity_associations(clusterName=cluster, namespace="ns-a", maxResults=100)
    assert len(only_a["associations"]) == 60
    one = eks.list_pod_identity_associations(clusterName=cluster, namespace="ns-b", serviceAccount="sa-4")
    assert [a["serviceAccount"] for a in one["associations"]] == ["sa-4"]

    with pytest.raises(ClientError) as too_big:
        eks.list_pod_identity_associations(clusterName=cluster, maxResults=101)
    assert _code(too_big) == ("InvalidParameterException", 400)
    with pytest.raises(ClientError) as bad_token:
        eks.list_pod_identity_associations(clusterName=cluster, nextToken="not-a-token")
    assert _code(bad_token) == ("InvalidParameterException", 400)


def test_max_results_zero_is_refused_by_the_server(sandbox: AwsSandbox, seed: DemoSeed) -> None:
    # botocore refuses maxResults=0 before sending; a raw client must still get the API's answer.
    request = urllib.request.Request(
        f"{sandbox.eks_url}/clusters/{DEMO_CLUSTER}/pod-identity-associations?maxResults=0",
        headers={"Authorization": "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/eks/aws4_request"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    with refused.value as response:
        assert response.code == 400
        assert response.headers["x-amzn-ErrorType"].startswith("InvalidParameterException")


def test_client_request_token_makes_create_idempotent(sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _new_cluster(sandbox, seed)
    role = seed.roles["keyless-demo-api"]
    first = _associate(eks, cluster, "shop", "api", role, clientRequestToken="token-1")
    again = _associate(eks, cluster, "shop", "api", role, clientRequestToken="token-1")
    assert again["associationId"] == first["associationId"]
    with pytest.raises(ClientError) as mismatch:
        _associate(eks, cluster, "shop", "api", seed.roles["keyless-demo-worker"], clientRequestToken="token-1")
    assert _code(mismatch) == ("InvalidParameterException", 400)
    with pytest.raises(ClientError) as fresh_token:
        _associate(eks, cluster, "shop", "api", role, clientRequestToken="token-2")
    assert _code(fresh_token) == ("ResourceInUseException", 409)


def test_addon_owned_associations_cannot_be_changed(sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _new_cluster(sandbox, seed)
    addon = eks.create_addon(
        clusterName=cluster,
        addonName="aws-ebs-csi-driver",
        podIdentityAssociations=[
            {"serviceAccount": "ebs-csi-controller-sa", "roleArn": seed.roles["keyless-demo-api"]}
        ],
    )["addon"]
    [owned] = eks.list_pod_identity_associations(clusterName=cluster, namespace="kube-system")["associations"]
    assert owned["ownerArn"] == addon["addonArn"]
    assert addon["podIdentityAssociations"] == [owned["associationArn"]]

    with pytest.raises(ClientError) as update:
        eks.update_pod_identity_association(
            clusterName=cluster, associationId=owned["associationId"], roleArn=seed.roles["keyless-demo-worker"]
        )
    assert _code(update) == ("InvalidRequestException", 400)
    with pytest.raises(ClientError) as delete:
        eks.delete_pod_identity_association(clusterName=cluster, associationId=owned["associationId"])
    assert _code(delete) == ("InvalidRequestException", 400)

    eks.delete_addon(clusterName=cluster, addonName="aws-ebs-csi-driver")
    assert eks.list_pod_identity_associations(clusterName=cluster)["associations"] == []


# ---- faults ------------------------------------------------------------------------------------------


def test_throttling_is_retried_by_botocore(sandbox: AwsSandbox, seed: DemoSeed) -> None:
    sandbox.throttle_next(1)
    with pytest.raises(ClientError) as throttled:
        sandbox.client("eks", NO_RETRIES).describe_cluster(name=DEMO_CLUSTER)
    assert _code(throttled) == ("ThrottlingException", 429)

    assert _sandbox_api(sandbox, "faults/throttle", {"count": 2})["throttleRemaining"] == 2
    retrying = sandbox.client("eks", Config(retries={"mode": "standard", "total_max_attempts": 4}))
    response = retrying.describe_cluster(name=DEMO_CLUSTER)
    assert response["ResponseMetadata"]["RetryAttempts"] == 2
    assert sandbox.faults.throttle_remaining == 0


def test_lost_create_response_leaves_the_association(sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _new_cluster(sandbox, seed)
    role = seed.roles["keyless-demo-api"]
    sandbox.lose_next_create_response("error")
    with pytest.raises(ClientError) as lost:
        _associate(eks, cluster, "shop", "api", role)
    assert _code(lost) == ("ServerException", 500)
    # It was created: a plain retry (new token) collides, and listing finds it to adopt.
    with pytest.raises(ClientError) as retry:
        _associate(eks, cluster, "shop", "api", role)
    assert _code(retry) == ("ResourceInUseException", 409)
    found = eks.list_pod_identity_associations(clusterName=cluster, namespace="shop", serviceAccount="api")
    assert len(found["associations"]) == 1

    _sandbox_api(sandbox, "faults/lose-next-create", {"mode": "drop"})
    with pytest.raises(ConnectionClosedError):
        _associate(eks, cluster, "shop", "worker", role)
    assert eks.list_pod_identity_associations(clusterName=cluster, serviceAccount="worker")["associations"]

    # botocore's own retry resends the same clientRequestToken, so a lost response heals silently.
    sandbox.lose_next_create_response("drop")
    healed = _associate(sandbox.client("eks"), cluster, "shop", "jobs", role)
    assert len(eks.list_pod_identity_associations(clusterName=cluster, serviceAccount="jobs")["associations"]) == 1
    assert healed["serviceAccount"] == "jobs"
    assert _sandbox_api(sandbox, "faults/reset", {}) == {"throttleRemaining": 0, "loseRemaining": 0, "armed": [],
                                                          "denied": []}


# ---- add-ons and Auto Mode ---------------------------------------------------------------------------


def test_missing_addon_is_resource_not_found(sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    cluster = _new_cluster(sandbox, seed)
    with pytest.raises(ClientError) as missing:
        eks.describe_addon(clusterName=cluster, addonName="eks-pod-identity-agent")
    assert _code(missing) == ("ResourceNotFoundException", 404)
    assert eks.list_addons(clusterName=cluster)["addons"] == []
    eks.create_addon(clusterName=cluster, addonName="eks-pod-identity-agent")
    assert eks.list_addons(clusterName=cluster)["addons"] == ["eks-pod-identity-agent"]
    with pytest.raises(ClientError) as twice:
        eks.create_addon(clusterName=cluster, addonName="eks-pod-identity-agent")
    assert _code(twice) == ("ResourceInUseException", 409)


def test_auto_mode_cluster_reports_compute_config(sandbox: AwsSandbox, seed: DemoSeed, eks: Any) -> None:
    auto = _new_cluster(
        sandbox,
        seed,
        computeConfig={"enabled": True, "nodePools": ["general-purpose", "system"]},
        storageConfig={"blockStorage": {"enabled": True}},
        kubernetesNetworkConfig={"elasticLoadBalancing": {"enabled": True}},
    )
    described = eks.describe_cluster(name=auto)["cluster"]
    assert described["computeConfig"]["enabled"] is True
    assert described["computeConfig"]["nodePools"] == ["general-purpose", "system"]
    plain = eks.describe_cluster(name=DEMO_CLUSTER)["cluster"]
    assert not plain.get("computeConfig", {}).get("enabled", False)
    with pytest.raises(ClientError) as partial:
        _new_cluster(sandbox, seed, computeConfig={"enabled": True})
    assert _code(partial) == ("InvalidParameterException", 400)


# ---- the pod identity agent ---------------------------------------------------------------------------


def test_association_takes_effect_after_the_delay(
    sandbox: AwsSandbox, seed: DemoSeed, eks: Any, signing_key: rsa.RSAPrivateKey
) -> None:
    namespace = _unique("ns")
    _associate(eks, DEMO_CLUSTER, namespace, "api", seed.roles["keyless-demo-api"])
    token = _token(signing_key, namespace, "api")
    assert sandbox.association_for(DEMO_CLUSTER, namespace, "api") is None
    status, body = _agent(sandbox.agent_url, token)
    assert (status, body["code"]) == (404, "ResourceNotFoundException")
    time.sleep(DELAY + 0.1)
    assert sandbox.association_for(DEMO_CLUSTER, namespace, "api") == seed.roles["keyless-demo-api"]
    status, body = _agent(sandbox.agent_url, token)
    assert status == 200
    assert set(body) == {"AccessKeyId", "SecretAccessKey", "Token", "Expiration", "AccountId"}
    assert body["AccountId"] == seed.account


def test_container_credentials_resolve_through_botocore(
    sandbox: AwsSandbox,
    seed: DemoSeed,
    eks: Any,
    signing_key: rsa.RSAPrivateKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    namespace = _unique("ns")
    _associate(eks, DEMO_CLUSTER, namespace, "api", seed.roles["keyless-demo-api"])
    time.sleep(DELAY + 0.1)
    session = _pod_session(sandbox, signing_key, namespace, "api", tmp_path, monkeypatch)
    credentials = session.get_credentials()
    assert credentials is not None
    assert credentials.method == "container-role"
    identity = boto3.Session(botocore_session=session).client("sts").get_caller_identity()
    assert identity["Arn"].startswith("arn:aws:sts::123456789012:assumed-role/keyless-demo-api/eks-keyless-sandbox-")


def test_agent_failure_surfaces_in_botocore(
    sandbox: AwsSandbox, signing_key: rsa.RSAPrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = _pod_session(sandbox, signing_key, _unique("ns"), "nobody", tmp_path, monkeypatch)
    with pytest.raises(CredentialRetrievalError, match="ResourceNotFoundException"):
        session.get_credentials()


def _pod_session(
    sandbox: AwsSandbox,
    key: rsa.RSAPrivateKey,
    namespace: str,
    service_account: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> botocore.session.Session:
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text(_token(key, namespace, service_account))
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    # Only the container variables and endpoints: no keys, no profile, no config files.
    for name, value in sandbox.pod_env(str(token_file)).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "missing-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "missing-credentials"))
    return botocore.session.Session()


def test_agent_refuses_bad_tokens(
    sandbox: AwsSandbox, seed: DemoSeed, eks: Any, signing_key: rsa.RSAPrivateKey
) -> None:
    namespace = _unique("ns")
    _associate(eks, DEMO_CLUSTER, namespace, "api", seed.roles["keyless-demo-api"])
    time.sleep(DELAY + 0.1)
    url = sandbox.agent_url

    status, body = _agent(url, _token(signing_key, namespace, "api", aud=["sts.amazonaws.com"]))
    assert (status, body["code"]) == (400, "InvalidTokenException")
    assert "pods.eks.amazonaws.com" in body["message"]

    past = int(time.time()) - 7200
    status, body = _agent(url, _token(signing_key, namespace, "api", iat=past, nbf=past, exp=past + 600))
    assert (status, body["code"]) == (400, "ExpiredTokenException")

    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    status, body = _agent(url, _token(stranger, namespace, "api"))
    assert (status, body["code"]) == (400, "InvalidTokenException")

    status, body = _agent(url, None)
    assert status == 400
    assert body["message"] == "Service account token cannot be empty"

    status, body = _agent(url, _token(signing_key, namespace, "other"))
    assert (status, body["code"]) == (404, "ResourceNotFoundException")


def test_trust_policy_without_tag_session_is_denied(
    sandbox: AwsSandbox, eks: Any, iam: Any, signing_key: rsa.RSAPrivateKey
) -> None:
    no_tag_session = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    role = _new_role(iam)
    namespace = _unique("ns")
    _associate(eks, DEMO_CLUSTER, namespace, "api", role)
    # EKS checks the trust policy when the association is made; a change afterwards only shows at assume time.
    iam.update_assume_role_policy(RoleName=role.rsplit("/", 1)[1], PolicyDocument=json.dumps(no_tag_session))
    time.sleep(DELAY + 0.1)
    status, body = _agent(sandbox.agent_url, _token(signing_key, namespace, "api"))
    assert (status, body["code"]) == (400, "AccessDeniedException")
    assert "sts:TagSession" in body["message"]

    wrong_service = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": ["sts:AssumeRole", "sts:TagSession"],
            }
        ],
    }
    iam.update_assume_role_policy(RoleName=role.rsplit("/", 1)[1], PolicyDocument=json.dumps(wrong_service))
    status, body = _agent(sandbox.agent_url, _token(signing_key, namespace, "api"))
    assert (status, body["code"]) == (400, "AccessDeniedException")


def test_target_role_is_chained_with_external_id(
    sandbox: AwsSandbox, seed: DemoSeed, eks: Any, iam: Any, signing_key: rsa.RSAPrivateKey
) -> None:
    namespace = _unique("ns")
    source = seed.roles["keyless-demo-worker"]
    external_id = f"us-east-1/123456789012/{DEMO_CLUSTER}/{namespace}/jobs"
    target = _new_role(
        iam,
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": source},
                    "Action": ["sts:AssumeRole", "sts:TagSession"],
                    "Condition": {"StringEquals": {"sts:ExternalId": external_id}},
                }
            ],
        },
    )
    association = _associate(eks, DEMO_CLUSTER, namespace, "jobs", source, targetRoleArn=target)
    assert association["externalId"] == external_id
    time.sleep(DELAY + 0.1)
    status, body = _agent(sandbox.agent_url, _token(signing_key, namespace, "jobs"))
    assert status == 200, body
    sts = boto3.client(
        "sts",
        endpoint_url=sandbox.moto_url,
        region_name="us-east-1",
        aws_access_key_id=body["AccessKeyId"],
        aws_secret_access_key=body["SecretAccessKey"],
        aws_session_token=body["Token"],
    )
    assert sts.get_caller_identity()["Arn"].split("/")[1] == target.rsplit("/", 1)[1]


def test_agent_is_absent_without_the_addon(sandbox: AwsSandbox, seed: DemoSeed, signing_key: rsa.RSAPrivateKey) -> None:
    cluster = _new_cluster(sandbox, seed)
    with pytest.raises((ConnectionError, urllib.error.URLError)):
        _agent(sandbox.agent_url_for(cluster), _token(signing_key, "shop", "api"))


def test_update_keeps_the_old_role_until_it_propagates(
    sandbox: AwsSandbox, seed: DemoSeed, eks: Any, signing_key: rsa.RSAPrivateKey
) -> None:
    namespace = _unique("ns")
    created = _associate(eks, DEMO_CLUSTER, namespace, "api", seed.roles["keyless-demo-api"])
    time.sleep(DELAY + 0.1)
    eks.update_pod_identity_association(
        clusterName=DEMO_CLUSTER, associationId=created["associationId"], roleArn=seed.roles["keyless-demo-worker"]
    )
    assert sandbox.association_for(DEMO_CLUSTER, namespace, "api") == seed.roles["keyless-demo-api"]
    time.sleep(DELAY + 0.1)
    assert sandbox.association_for(DEMO_CLUSTER, namespace, "api") == seed.roles["keyless-demo-worker"]


# ---- denied actions: a least-privileged caller ------------------------------------------------------


def test_denied_actions_answer_like_aws_and_can_be_allowed_again(sandbox: AwsSandbox, seed: DemoSeed) -> None:
    iam, eks = sandbox.client("iam"), sandbox.client("eks", NO_RETRIES)
    sandbox.deny("iam:ListRoles", "eks:DescribeCluster")
    try:
        with pytest.raises(ClientError) as denied_iam:
            iam.list_roles()
        assert denied_iam.value.response["Error"]["Code"] == "AccessDenied"
        assert denied_iam.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert "is not authorized to perform: iam:ListRoles" in denied_iam.value.response["Error"]["Message"]
        with pytest.raises(ClientError) as denied_eks:
            eks.describe_cluster(name=seed.cluster)
        assert denied_eks.value.response["Error"]["Code"] == "AccessDeniedException"
        assert denied_eks.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        iam.get_role(RoleName="keyless-demo-api")  # what is not denied still works, through the same front
        eks.list_pod_identity_associations(clusterName=seed.cluster)
        assert sandbox.faults.denied == ("eks:DescribeCluster", "iam:ListRoles")  # as given; matched ignoring case
    finally:
        sandbox.deny()
    assert iam.list_roles()["Roles"]
    assert eks.describe_cluster(name=seed.cluster)["cluster"]["name"] == seed.cluster


def test_deny_refuses_what_is_not_an_iam_action(sandbox: AwsSandbox) -> None:
    with pytest.raises(ValueError, match="not IAM actions"):
        sandbox.deny("ListRoles")
    answer = httpx.post(f"{sandbox.eks_url}/_sandbox/faults/deny", json={"actions": ["nope"]})
    assert answer.status_code == 400


def test_the_sandbox_measures_its_delays_on_the_clock_it_is_given() -> None:
    virtual = VirtualTime()
    with AwsSandbox(association_delay=30.0, clock=virtual.clock) as timed:
        seed = timed.seed_demo()
        eks = timed.client("eks", NO_RETRIES)
        _associate(eks, seed.cluster, "clocked", "api", seed.roles["keyless-demo-api"])
        assert timed.association_for(seed.cluster, "clocked", "api") is None  # 30 virtual seconds to go
        virtual.sleep(29.0)
        assert timed.association_for(seed.cluster, "clocked", "api") is None
        virtual.sleep(1.0)
        assert timed.association_for(seed.cluster, "clocked", "api") == seed.roles["keyless-demo-api"]
        assert timed.clock == virtual.clock  # exposed, so a test can read the time the sandbox goes by


# ---- fidelity: limits, trust policy at create time, the agent's plain-text errors -----------------------------


def test_the_association_quota_is_eks_5000_per_cluster() -> None:
    # EKS user guide, "EKS Pod Identity limits": 5,000 associations per cluster (1,000 was a wrong reading).
    assert AwsSandbox().association_quota == 5000


@pytest.mark.parametrize("trust", [
    {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"}, "Action": "sts:AssumeRole"}]},
    {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
         "Action": ["sts:AssumeRole", "sts:TagSession"]}]},
    {"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Principal": {"Service": "pods.eks.amazonaws.com"}, "Action": "sts:*"}]},
], ids=["no-tag-session", "other-service", "deny-only"])
def test_create_refuses_a_role_eks_pod_identity_cannot_assume(
    sandbox: AwsSandbox, seed: DemoSeed, eks: Any, iam: Any, trust: Mapping[str, Any]
) -> None:
    role = _new_role(iam, trust)
    with pytest.raises(ClientError) as refused:
        _associate(eks, DEMO_CLUSTER, _unique("ns"), "api", role)
    assert _code(refused) == ("InvalidParameterException", 400)
    assert refused.value.response["Error"]["Message"].startswith("Trust policy of the role provided is invalid")
    # The same check guards changing an association's role.
    made = _associate(eks, DEMO_CLUSTER, _unique("ns"), "api", seed.roles["keyless-demo-api"])
    with pytest.raises(ClientError) as update:
        eks.update_pod_identity_association(clusterName=DEMO_CLUSTER, associationId=made["associationId"],
                                            roleArn=role)
    assert _code(update) == ("InvalidParameterException", 400)


def test_create_accepts_wildcards_and_conditions_in_the_trust_policy(sandbox: AwsSandbox, eks: Any, iam: Any) -> None:
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": ["ec2.amazonaws.com", "pods.eks.amazonaws.com"]},
        "Action": "sts:*", "Condition": {"StringEquals": {"aws:SourceAccount": "123456789012"}}}]}
    role = _new_role(iam, trust)
    assert _associate(eks, DEMO_CLUSTER, _unique("ns"), "api", role)["roleArn"] == role


def test_agent_errors_are_plain_text_like_the_real_agent(
    sandbox: AwsSandbox, eks: Any, signing_key: rsa.RSAPrivateKey
) -> None:
    token = _token(signing_key, _unique("ns"), "x")
    request = urllib.request.Request(sandbox.agent_url, headers={"Authorization": token})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    with refused.value as error:
        assert (error.code, error.headers["Content-Type"]) == (404, "text/plain; charset=utf-8")
        assert error.headers["X-Content-Type-Options"] == "nosniff"
        text = error.read().decode()
    assert re.fullmatch(r"\[[0-9a-f-]{36}\]: \(ResourceNotFoundException\): .+, fault: client\n", text), text
# ---- knobs: rate limits, random faults, counters, time scale ------------------------------------------


@pytest.fixture
def knobs(sandbox: AwsSandbox) -> Iterator[Knobs]:
    yield sandbox.knobs
    sandbox.knobs.configure(KnobSettings())


def test_an_eks_rate_limit_answers_throttling_exception_which_botocore_retries(
        sandbox: AwsSandbox, seed: DemoSeed, knobs: Knobs) -> None:
    knobs.configure(KnobSettings(rate_limits={"eks-read": RateLimit(20.0, burst=1)}))
    eks = sandbox.client("eks", NO_RETRIES)
    eks.describe_cluster(name=seed.cluster)
    with pytest.raises(ClientError) as throttled:
        eks.describe_cluster(name=seed.cluster)
    assert _code(throttled) == ("ThrottlingException", 429)  # HTTP 429, as botocore's EKS model has it
    assert throttled.value.response["Error"]["Message"] == "Rate exceeded"
    knobs.configure(KnobSettings(rate_limits={"eks-read": RateLimit(5.0, burst=1)}))
    retrying = sandbox.client("eks", Config(retries={"mode": "standard", "total_max_attempts": 10}))
    retrying.describe_cluster(name=seed.cluster)
    # botocore saw a throttling error and backed off until the bucket had a token again.
    assert retrying.describe_cluster(name=seed.cluster)["ResponseMetadata"]["RetryAttempts"] >= 1


def test_an_iam_rate_limit_answers_throttling_which_botocore_retries(
        sandbox: AwsSandbox, seed: DemoSeed, knobs: Knobs) -> None:
    knobs.configure(KnobSettings(rate_limits={"iam-read": RateLimit(5.0, burst=1)}))
    iam = sandbox.client("iam", NO_RETRIES)
    iam.get_role(RoleName="keyless-demo-api")
    with pytest.raises(ClientError) as throttled:
        iam.get_role(RoleName="keyless-demo-api")
    assert _code(throttled) == ("Throttling", 400)  # IAM's query protocol: 400 Throttling, "Rate exceeded"
    retrying = sandbox.client("iam", Config(retries={"mode": "standard", "total_max_attempts": 10}))
    assert retrying.get_role(RoleName="keyless-demo-api")["ResponseMetadata"]["RetryAttempts"] >= 1
    sandbox.client("iam", NO_RETRIES).create_role(  # writes have their own bucket
        RoleName=_unique("bucketed"), AssumeRolePolicyDocument=json.dumps(dict(POD_IDENTITY_TRUST_POLICY)))


def test_sts_goes_through_the_front_and_takes_its_faults(sandbox: AwsSandbox, knobs: Knobs) -> None:
    sts = sandbox.client("sts", NO_RETRIES)
    assert sts.get_caller_identity()["Account"] == DEFAULT_ACCOUNT
    knobs.deny(["sts:GetCallerIdentity"])
    with pytest.raises(ClientError) as denied:
        sts.get_caller_identity()
    assert _code(denied) == ("AccessDenied", 403)
    knobs.reset_faults()
    knobs.fail_next(1, status=500, match=("GetCallerIdentity",))
    with pytest.raises(ClientError) as failed:
        sts.get_caller_identity()
    assert _code(failed) == ("InternalFailure", 500)
    assert knobs.calls()["GetCallerIdentity"] >= 3


def test_random_faults_follow_their_seed_and_a_lost_write_still_happens(
        sandbox: AwsSandbox, seed: DemoSeed, eks: Any, knobs: Knobs) -> None:
    cluster = _new_cluster(sandbox, seed)
    no_retry = sandbox.client("eks", NO_RETRIES)

    def outcomes() -> list[str]:
        httpx.post(f"{sandbox.eks_url}/_sandbox/knobs", json={"faultRate": 0.6, "faultSeed": 11}).raise_for_status()
        found = []
        for _ in range(12):
            try:
                no_retry.list_pod_identity_associations(clusterName=cluster)
                found.append("ok")
            except ClientError as error:
                found.append(error.response["Error"]["Code"])
        return found

    first = outcomes()
    assert first == outcomes()  # the same seed, the same faults in the same order
    assert {"ok", "ThrottlingException"} <= set(first)
    assert set(first) <= {"ok", "ThrottlingException", "ServerException", "ServiceUnavailableException"}
    knobs.configure(KnobSettings())
    knobs.lose_next(1, mode="error", match=("CreatePodIdentityAssociation",))
    with pytest.raises(ClientError) as lost:
        _associate(no_retry, cluster, "shop", "lost", seed.roles["keyless-demo-api"])
    assert _code(lost) == ("ServerException", 500)
    assert eks.list_pod_identity_associations(clusterName=cluster, serviceAccount="lost")["associations"]


def test_calls_are_counted_per_operation_and_reset_over_http(
        sandbox: AwsSandbox, seed: DemoSeed, eks: Any, iam: Any) -> None:
    httpx.delete(f"{sandbox.eks_url}/_sandbox/calls").raise_for_status()
    eks.list_pod_identity_associations(clusterName=seed.cluster)
    eks.list_pod_identity_associations(clusterName=seed.cluster)
    iam.get_role(RoleName="keyless-demo-api")
    counted = httpx.get(f"{sandbox.eks_url}/_sandbox/calls").json()
    assert counted["operations"] == {"GetRole": 1, "ListPodIdentityAssociations": 2}
    assert counted["total"] == 3
    assert httpx.get(f"{sandbox.eks_url}/_sandbox/requests").json() == {"GET": 2}  # EKS only, by method
    assert httpx.post(f"{sandbox.eks_url}/_sandbox/calls/reset").json()["total"] == 0
    assert httpx.post(f"{sandbox.eks_url}/_sandbox/knobs", json={"faultRate": 3}).status_code == 400


def test_the_time_scale_divides_the_association_delay() -> None:
    virtual = VirtualTime()
    with AwsSandbox(association_delay=30.0, time_scale=TimeScale(10.0, virtual.clock)) as scaled:
        seed = scaled.seed_demo()
        _associate(scaled.client("eks", NO_RETRIES), seed.cluster, "scaled", "api", seed.roles["keyless-demo-api"])
        virtual.sleep(2.9)
        assert scaled.association_for(seed.cluster, "scaled", "api") is None  # 29 of 30 sandbox seconds
        virtual.sleep(0.1)
        assert scaled.association_for(seed.cluster, "scaled", "api") == seed.roles["keyless-demo-api"]
        answer = httpx.post(f"{scaled.eks_url}/_sandbox/knobs", json={"timeScale": 2, "latency": "40ms"}).json()
        assert (answer["timeScale"], answer["latency"]) == (2.0, 0.04)
