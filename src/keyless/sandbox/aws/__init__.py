"""The local AWS sandbox: moto (IAM, STS, EKS clusters), an EKS front for what moto lacks, a pod identity agent."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Literal, overload
from urllib.parse import quote

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from keyless.sandbox.aws.agent import (
    CREDENTIALS_PATH,
    ClusterKeyLookup,
    PodIdentityAgent,
    StaticClusterKeys,
)
from keyless.sandbox.aws.eks import DEFAULT_ASSOCIATION_QUOTA, POD_IDENTITY_AGENT_ADDON, EksState
from keyless.sandbox.aws.eks_api import IAM_PREFIX, STS_PREFIX, EksFront, LostResponseMode, is_action
from keyless.sandbox.aws.moto_server import DEFAULT_ACCOUNT, TEST_ACCESS_KEY, TEST_SECRET_KEY, MotoClients, MotoServer
from keyless.sandbox.knobs import FaultState, Knobs, KnobSettings, TimeScale
from keyless.sandbox.servers import BackgroundServers

if TYPE_CHECKING:
    from mypy_boto3_eks import EKSClient
    from mypy_boto3_iam import IAMClient
    from mypy_boto3_sts import STSClient

__all__ = [
    "DEMO_CLUSTER",
    "POD_IDENTITY_TRUST_POLICY",
    "AwsSandbox",
    "ClusterKeyLookup",
    "DemoSeed",
    "StaticClusterKeys",
]

DEMO_ACCOUNT = DEFAULT_ACCOUNT
DEMO_REGION = "us-east-1"
DEMO_CLUSTER = "keyless-sandbox"

POD_IDENTITY_TRUST_POLICY: Mapping[str, Any] = MappingProxyType(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AllowEksPodIdentity",
                "Effect": "Allow",
                "Principal": {"Service": "pods.eks.amazonaws.com"},
                "Action": ["sts:AssumeRole", "sts:TagSession"],
            }
        ],
    }
)

_EKS_CLUSTER_TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "eks.amazonaws.com"},
            "Action": ["sts:AssumeRole", "sts:TagSession"],
        }
    ],
}


def _permissions(*statements: Mapping[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


# The demo roles: two scoped ones, and one an audit must flag (s3:* on *).
_DEMO_ROLES: Mapping[str, str] = MappingProxyType(
    {
        "keyless-demo-api": _permissions(
            {
                "Sid": "ReadAssets",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": ["arn:aws:s3:::keyless-demo-assets", "arn:aws:s3:::keyless-demo-assets/*"],
            }
        ),
        "keyless-demo-worker": _permissions(
            {
                "Sid": "ConsumeJobs",
                "Effect": "Allow",
                "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"],
                "Resource": f"arn:aws:sqs:{DEMO_REGION}:{DEMO_ACCOUNT}:keyless-demo-jobs",
            }
        ),
        "keyless-demo-broad": _permissions(
            {"Sid": "EverythingS3", "Effect": "Allow", "Action": "s3:*", "Resource": "*"}
        ),
    }
)


@dataclass(frozen=True)
class DemoSeed:
    """What seed_demo() created: the cluster and the ARNs of the demo roles by name."""

    account: str
    region: str
    cluster: str
    cluster_arn: str
    roles: Mapping[str, str]


class AwsSandbox:
    """Starts and stops the AWS half of the sandbox; every server listens on loopback, on free ports by default.

    Usable from pytest and from a long-running `keyless sandbox up`: the servers run on their own threads,
    so the caller's thread (and event loop, if any) stays free.
    """

    def __init__(
        self,
        *,
        region: str = DEMO_REGION,
        host: str = "127.0.0.1",
        moto_port: int = 0,
        eks_port: int = 0,
        agent_port: int = 0,
        association_delay: float = 1.0,
        association_quota: int = DEFAULT_ASSOCIATION_QUOTA,
        role_propagation_delay: float = 0.0,
        addon_delay: float = 0.0,
        cluster_keys: ClusterKeyLookup | None = None,
        agent_cluster: str = DEMO_CLUSTER,
        require_agent_addon: bool = True,
        clock: Callable[[], float] = time.monotonic,
        knobs: KnobSettings | None = None,
        time_scale: TimeScale | None = None,
    ) -> None:
        """``knobs`` shape every call of the EKS front (and IAM and STS behind it); ``time_scale`` (shared with the
        other stand-ins by the stack) runs the sandbox's time faster than ``clock``."""
        self.clock = clock  # association and add-on delays are measured on it (through the time scale)
        self.time = time_scale or TimeScale(clock=clock)
        self.region = region
        self.host = host
        self.agent_cluster = agent_cluster
        self._ports = (eks_port, agent_port)
        self._moto = MotoServer(host, moto_port)
        self._state = EksState(
            association_quota=association_quota, association_delay=association_delay, addon_delay=addon_delay,
            clock=self.time.now,
        )
        self.knobs = Knobs("aws", self.time, knobs, check_action=is_action,
                           action_form="IAM actions (service:Operation)")
        # Association writes reach the agent as the `eks-association` propagation knob says.
        self._state.settling = lambda key: self.knobs.settings.settling("eks-association", key)
        self._role_propagation_delay = role_propagation_delay
        self._cluster_keys = cluster_keys
        self._require_agent_addon = require_agent_addon
        self._servers = BackgroundServers("keyless-aws-sandbox", host)
        self._front: EksFront | None = None
        self._agent: PodIdentityAgent | None = None
        self._lock = threading.Lock()

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> AwsSandbox:
        with self._lock:
            if self._servers.running:
                return self
            self._moto.start()
            try:
                clients = MotoClients(self._moto.url)
                self._front = EksFront(
                    self._state, clients, self._moto.url, self.region, self.knobs, self._role_propagation_delay
                )
                self._agent = PodIdentityAgent(
                    self._state,
                    clients,
                    region=self.region,
                    default_cluster=self.agent_cluster,
                    key_lookup=self._cluster_keys,
                    require_addon=self._require_agent_addon,
                    cache_for=lambda: self.knobs.settings.agent_cache,
                    clock=self.time.now,
                )
                self._servers.start([(self._front.app(), self._ports[0]), (self._agent.app(), self._ports[1])])
            except BaseException:
                self._shutdown()
                raise
        return self

    def stop(self) -> None:
        with self._lock:
            self._shutdown()

    def _shutdown(self) -> None:
        self._servers.stop()
        if self._moto.url:
            self._moto.stop()
            self._moto.url = ""

    def __enter__(self) -> AwsSandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._servers.running

    # ---- where things listen ---------------------------------------------------------------------

    @property
    def moto_url(self) -> str:
        if not self._moto.url:
            raise RuntimeError("the AWS sandbox is not started")
        return self._moto.url

    @property
    def eks_url(self) -> str:
        return f"http://{self.host}:{self._servers.port(0)}"

    @property
    def agent_url(self) -> str:
        """AWS_CONTAINER_CREDENTIALS_FULL_URI for pods of the agent's own cluster."""
        return f"http://{self.host}:{self._servers.port(1)}{CREDENTIALS_PATH}"

    def agent_url_for(self, cluster: str) -> str:
        if cluster == self.agent_cluster:
            return self.agent_url
        return f"http://{self.host}:{self._servers.port(1)}/clusters/{quote(cluster, safe='')}{CREDENTIALS_PATH}"

    def env(self) -> dict[str, str]:
        """What an SDK or the keyless CLI needs to talk to this sandbox instead of AWS."""
        return {
            # The catch-all keeps any other service in moto too, so nothing can reach real AWS by accident.
            "AWS_ENDPOINT_URL": self.moto_url,
            # IAM goes through the front, which can refuse actions like a least-privileged caller (deny()).
            "AWS_ENDPOINT_URL_IAM": f"{self.eks_url}/{IAM_PREFIX}",
            "AWS_ENDPOINT_URL_STS": f"{self.eks_url}/{STS_PREFIX}",  # through the front too, for its knobs
            "AWS_ENDPOINT_URL_EKS": self.eks_url,
            "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def pod_env(self, token_file: str, cluster: str | None = None) -> dict[str, str]:
        """What the pod identity webhook injects into a pod's containers here: no keys, only the agent."""
        env = {k: v for k, v in self.env().items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = self.agent_url_for(cluster or self.agent_cluster)
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = token_file
        return env

    # ---- hooks for the Kubernetes stand-in -------------------------------------------------------

    def association_for(
        self, cluster: str, namespace: str, service_account: str, *, region: str | None = None
    ) -> str | None:
        """The role ARN a pod created now would get, or None (also while a new association propagates)."""
        found = self._state.effective_binding(region or self.region, cluster, namespace, service_account)
        return None if found is None else found[1].role_arn

    def set_cluster_keys(self, lookup: ClusterKeyLookup) -> None:
        """Tell the agent how to find a cluster's service-account issuer key (PEM, key object, JWK or JWKS)."""
        self._cluster_keys = lookup
        if self._agent is not None:
            self._agent.key_lookup = lookup

    # ---- faults and knobs ------------------------------------------------------------------------

    def throttle_next(self, count: int) -> None:
        """The next `count` EKS requests answer ThrottlingException (HTTP 429)."""
        self.knobs.throttle_next(count, match=("/clusters", "/tags"))

    def lose_next_create_response(self, mode: LostResponseMode = "error") -> None:
        """The next CreatePodIdentityAssociation succeeds, but the client gets a 500 ("error") or a dead socket."""
        self.knobs.lose_next(1, mode=mode, match=("CreatePodIdentityAssociation",))

    def deny(self, *actions: str) -> None:
        """Refuse these IAM actions (`iam:ListRolePolicies`, `eks:DescribeCluster`, ...) with AccessDenied from now
        on, as AWS does for a caller whose policies lack them; `deny()` with none allows everything again."""
        self.knobs.deny(actions)

    def reset_faults(self) -> None:
        self.knobs.reset_faults()

    @property
    def faults(self) -> FaultState:
        return self.knobs.faults()

    @property
    def association_delay(self) -> float:
        return self._state.association_delay

    @association_delay.setter
    def association_delay(self, seconds: float) -> None:
        self._state.association_delay = seconds

    @property
    def association_quota(self) -> int:
        return self._state.association_quota

    @association_quota.setter
    def association_quota(self, limit: int) -> None:
        self._state.association_quota = limit

    @property
    def role_propagation_delay(self) -> float:
        return self._role_propagation_delay

    @role_propagation_delay.setter
    def role_propagation_delay(self, seconds: float) -> None:
        self._role_propagation_delay = seconds
        if self._front is not None:
            self._front.role_propagation_delay = seconds

    # ---- clients and the demo --------------------------------------------------------------------

    @overload
    def client(self, service: Literal["eks"], config: Config | None = None) -> EKSClient: ...
    @overload
    def client(self, service: Literal["iam"], config: Config | None = None) -> IAMClient: ...
    @overload
    def client(self, service: Literal["sts"], config: Config | None = None) -> STSClient: ...

    def client(self, service: Literal["eks", "iam", "sts"], config: Config | None = None) -> Any:
        """A boto3 client for this sandbox's public endpoint of `service`, with the test credentials."""
        common: dict[str, Any] = {
            "region_name": self.region,
            "aws_access_key_id": TEST_ACCESS_KEY,
            "aws_secret_access_key": TEST_SECRET_KEY,
            "config": config,
        }
        if service == "eks":
            return boto3.client("eks", endpoint_url=self.eks_url, **common)
        if service == "iam":
            return boto3.client("iam", endpoint_url=f"{self.eks_url}/{IAM_PREFIX}", **common)
        return boto3.client("sts", endpoint_url=f"{self.eks_url}/{STS_PREFIX}", **common)

    def seed_demo(self) -> DemoSeed:
        """Create the demo account's cluster, agent add-on and roles through the public APIs (idempotent)."""
        iam = self.client("iam")
        eks = self.client("eks")
        cluster_role = self._ensure_role(iam, "keyless-sandbox-cluster", _EKS_CLUSTER_TRUST_POLICY, None)
        roles = {
            name: self._ensure_role(iam, name, POD_IDENTITY_TRUST_POLICY, policy)
            for name, policy in _DEMO_ROLES.items()
        }
        try:
            cluster = eks.create_cluster(
                name=DEMO_CLUSTER,
                version="1.31",
                roleArn=cluster_role,
                resourcesVpcConfig={"subnetIds": ["subnet-0a1b2c3d", "subnet-4e5f6a7b"]},
            )["cluster"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ResourceInUseException":
                raise
            cluster = eks.describe_cluster(name=DEMO_CLUSTER)["cluster"]
        try:
            eks.create_addon(clusterName=DEMO_CLUSTER, addonName=POD_IDENTITY_AGENT_ADDON)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ResourceInUseException":
                raise
        return DemoSeed(
            account=cluster["arn"].split(":")[4],
            region=self.region,
            cluster=DEMO_CLUSTER,
            cluster_arn=cluster["arn"],
            roles=MappingProxyType(roles),
        )

    @staticmethod
    def _ensure_role(iam: IAMClient, name: str, trust: Mapping[str, Any], permissions: str | None) -> str:
        try:
            arn = iam.create_role(
                RoleName=name,
                AssumeRolePolicyDocument=json.dumps(dict(trust)),
                Description="keyless sandbox demo role",
                Tags=[{"Key": "keyless:sandbox", "Value": "demo"}],
            )["Role"]["Arn"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "EntityAlreadyExists":
                raise
            arn = iam.get_role(RoleName=name)["Role"]["Arn"]
        if permissions is not None:
            iam.put_role_policy(RoleName=name, PolicyName="keyless-demo", PolicyDocument=permissions)
        return arn
