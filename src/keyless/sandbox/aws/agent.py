"""A stand-in for the EKS Pod Identity agent: checks a pod's token like eks-auth, then assumes the role in moto."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from aiohttp import web
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from keyless.sandbox.aws.eks import EksState
from keyless.sandbox.aws.eks_model import POD_IDENTITY_AGENT_ADDON, RoleBinding, parse_role_arn
from keyless.sandbox.aws.moto_server import MotoClients
from keyless.sandbox.aws.policy import AssumeRequest, evaluate_trust

AUDIENCE = "pods.eks.amazonaws.com"
SERVICE_PRINCIPAL = "pods.eks.amazonaws.com"
CREDENTIALS_PATH = "/v1/credentials"

# What a cluster's service-account issuer key may be handed over as: a key object, PEM, a JWK or a JWKS.
KeyMaterial = RSAPublicKey | RSAPrivateKey | str | bytes | Mapping[str, Any]
ClusterKeyLookup = Callable[[str], KeyMaterial | None]

_SUBJECT = re.compile(r"system:serviceaccount:([^:]+):([^:]+)")
# The real agent serves cached credentials only while they have more than this left (defaultMinCredentialTtl in
# internal/credsretriever/refreshing_cache.go).
MIN_CREDENTIAL_TTL = timedelta(seconds=15)
_SESSION_NAME_CHARS = re.compile(r"[^\w+=,.@-]")


class StaticClusterKeys:
    """A ClusterKeyLookup backed by a dict: register each cluster's issuer key (thread-safe)."""

    def __init__(self, keys: Mapping[str, KeyMaterial] | None = None) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, KeyMaterial] = dict(keys or {})

    def set(self, cluster: str, key: KeyMaterial) -> None:
        with self._lock:
            self._keys[cluster] = key

    def __call__(self, cluster: str) -> KeyMaterial | None:
        with self._lock:
            return self._keys.get(cluster)


class AgentError(Exception):
    """A refusal, named after the eks-auth error the real agent would relay, with its HTTP status.

    ``relayed`` errors come from eks-auth and the agent passes them on as ``[request id]: (Code): message, fault:
    client``; the others are the agent's own request checks, sent as the bare message. Both are plain text
    (Go's http.Error), never JSON: an SDK shows the text as it is.
    """

    def __init__(self, code: str, status: int, message: str, *, relayed: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.relayed = relayed

    def text(self, request_id: str) -> str:
        if not self.relayed:
            return f"{self.message}\n"
        fault = "server" if self.status >= 500 else "client"
        return f"[{request_id}]: ({self.code}): {self.message}, fault: {fault}\n"


def plain_text_error(error: AgentError) -> web.Response:
    """The agent's error answer: text/plain with nosniff, as Go's http.Error writes it."""
    response = web.Response(status=error.status, text=error.text(str(uuid.uuid4())), content_type="text/plain",
                            charset="utf-8")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@dataclass(frozen=True)
class PodSubject:
    """Who a verified token says is calling: the cluster, the service account, and the pod when known."""

    cluster: str
    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str


@dataclass(frozen=True)
class IssuedCredentials:
    """Temporary credentials in the shape botocore's container provider parses."""

    access_key_id: str
    secret_access_key: str
    token: str
    expiration: datetime
    account_id: str
    assumed_role_arn: str

    def to_json(self) -> dict[str, str]:
        return {
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Token": self.token,
            "Expiration": self.expiration.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "AccountId": self.account_id,
        }


def _verification_key(material: KeyMaterial, kid: str | None) -> Any:
    if isinstance(material, RSAPrivateKey):
        return material.public_key()
    if isinstance(material, RSAPublicKey):
        return material
    if isinstance(material, str | bytes):
        return load_pem_public_key(material.encode() if isinstance(material, str) else material)
    if "keys" in material:
        keys = jwt.PyJWKSet.from_dict(dict(material)).keys
        for key in keys:
            if kid is None or key.key_id == kid:
                return key.key
        raise AgentError("InvalidTokenException", 400, f"No issuer key matches the token's key id {kid!r}")
    return jwt.PyJWK.from_dict(dict(material)).key


class PodIdentityAgent:
    """aiohttp application behind AWS_CONTAINER_CREDENTIALS_FULL_URI."""

    def __init__(
        self,
        state: EksState,
        clients: MotoClients,
        *,
        region: str,
        default_cluster: str,
        key_lookup: ClusterKeyLookup | None = None,
        require_addon: bool = True,
        cache_for: Callable[[], float] = lambda: 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``cache_for`` says how long (seconds on ``clock``) credentials are kept per pod, 0 for not at all."""
        self.state = state
        self.clients = clients
        self.region = region
        self.default_cluster = default_cluster
        self.key_lookup = key_lookup
        self.require_addon = require_addon
        self.cache_for = cache_for
        self.clock = clock
        # Per pod (its uid, else its token): the credentials handed out and until when (on `clock`) they are kept.
        self._cache: dict[tuple[str, str], tuple[IssuedCredentials, float]] = {}
        self._cache_lock = threading.Lock()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(CREDENTIALS_PATH, self._handle)
        # One agent process can stand in for the agents of several sandbox clusters.
        app.router.add_get("/clusters/{cluster}" + CREDENTIALS_PATH, self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        cluster = request.match_info.get("cluster", self.default_cluster)
        if not self._agent_installed(cluster):
            # Without the add-on no agent listens on the node: the pod's connection simply fails.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)
        try:
            credentials = await self.credentials(cluster, request.headers.get("Authorization", ""))
        except AgentError as error:
            return plain_text_error(error)
        except (ClientError, ValueError, OSError) as exc:
            # A broken key lookup or a moto failure: the real agent answers 500 with the reason.
            return plain_text_error(AgentError("InternalServerException", 500, str(exc)))
        return web.json_response(credentials.to_json())

    def _agent_installed(self, cluster: str) -> bool:
        if not self.require_addon:
            return True
        return self.state.auto_mode(self.region, cluster) is not None or self.state.has_addon(
            self.region, cluster, POD_IDENTITY_AGENT_ADDON
        )

    async def credentials(self, cluster: str, token: str) -> IssuedCredentials:
        """Everything the agent and eks-auth do for one request; AgentError says why it was refused.

        Like the real agent, credentials are cached per pod for up to `cache_for` (its
        --max-credential-retention-before-renewal, 3 h by default) and served again to that pod, a rotated token
        included, as long as they have more than MIN_CREDENTIAL_TTL left: a running pod keeps the role it first got
        after its association changes; a new pod asks eks-auth and gets what is in effect then."""
        subject = self.verify(cluster, token)
        key = (cluster, subject.pod_uid or token.strip())
        cached = self._cached(key)
        if cached is not None:
            return cached
        issued = await self._fetch(cluster, subject)
        keep = self.cache_for()
        if keep > 0:
            with self._cache_lock:
                self._cache[key] = (issued, self.clock() + keep)
        return issued

    def _cached(self, key: tuple[str, str]) -> IssuedCredentials | None:
        now = self.clock()
        with self._cache_lock:
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
            found = self._cache.get(key)
        if found is None or found[0].expiration.astimezone(UTC) - datetime.now(UTC) <= MIN_CREDENTIAL_TTL:
            return None
        return found[0]

    def forget_cached(self) -> None:
        """Empty the credential cache (as restarting every agent would)."""
        with self._cache_lock:
            self._cache.clear()

    async def _fetch(self, cluster: str, subject: PodSubject) -> IssuedCredentials:
        found = self.state.effective_binding(self.region, cluster, subject.namespace, subject.service_account)
        if found is None:
            raise AgentError(
                "ResourceNotFoundException",
                404,
                f"No Pod Identity Association is in effect for service account {subject.service_account} "
                f"in namespace {subject.namespace} of cluster {cluster} (new associations take a few "
                "seconds to take effect)",
            )
        _, binding = found
        return await asyncio.to_thread(self._assume, subject, binding)

    def verify(self, cluster: str, token: str) -> PodSubject:
        token = token.strip()
        if not token:
            raise AgentError("InvalidRequestException", 400, "Service account token cannot be empty", relayed=False)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise AgentError("InvalidRequestException", 400, f"Service account token cannot be parsed: {exc}") from exc
        if header.get("alg") != "RS256":
            raise AgentError("InvalidTokenException", 400, "Service account token must be signed with RS256")
        material = self.key_lookup(cluster) if self.key_lookup is not None else None
        if material is None:
            raise AgentError(
                "InvalidTokenException", 400, f"No service account issuer key is known for cluster {cluster}"
            )
        key = _verification_key(material, header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=AUDIENCE,
                options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AgentError("ExpiredTokenException", 400, "Service account token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise AgentError(
                "InvalidTokenException", 400, f"Service account token audience must be {AUDIENCE}: {exc}"
            ) from exc
        except jwt.InvalidTokenError as exc:
            raise AgentError("InvalidTokenException", 400, f"Service account token is invalid: {exc}") from exc
        match = _SUBJECT.fullmatch(str(claims.get("sub", "")))
        if match is None:
            raise AgentError(
                "InvalidTokenException", 400, "Token subject is not system:serviceaccount:<namespace>:<name>"
            )
        namespace, service_account = match.groups()
        kube_claim = claims.get("kubernetes.io")
        kube: Mapping[str, Any] = kube_claim if isinstance(kube_claim, Mapping) else {}
        pod_claim = kube.get("pod")
        pod: Mapping[str, Any] = pod_claim if isinstance(pod_claim, Mapping) else {}
        if kube.get("namespace", namespace) != namespace:
            raise AgentError("InvalidTokenException", 400, "Token namespace claim does not match its subject")
        return PodSubject(
            cluster=cluster,
            namespace=namespace,
            service_account=service_account,
            pod_name=str(pod.get("name", "")),
            pod_uid=str(pod.get("uid", "")),
        )

    # ---- blocking part, run in a worker thread ---------------------------------------------------

    def _assume(self, subject: PodSubject, binding: RoleBinding) -> IssuedCredentials:
        try:
            cluster_arn = self.clients.eks(self.region).describe_cluster(name=subject.cluster)["cluster"]["arn"]
        except ClientError as exc:
            raise AgentError("ResourceNotFoundException", 404, f"Cluster {subject.cluster} not found") from exc
        account = cluster_arn.split(":")[4]
        tags = {
            "eks-cluster-arn": cluster_arn,
            "eks-cluster-name": subject.cluster,
            "kubernetes-namespace": subject.namespace,
            "kubernetes-service-account": subject.service_account,
            "kubernetes-pod-name": subject.pod_name,
            "kubernetes-pod-uid": subject.pod_uid,
        }
        session_tags = {} if binding.disable_session_tags else tags
        first = AssumeRequest(
            actions=("sts:AssumeRole",) if binding.disable_session_tags else ("sts:AssumeRole", "sts:TagSession"),
            service=SERVICE_PRINCIPAL,
            context={
                "aws:SourceAccount": account,
                "aws:SourceArn": cluster_arn,
                **{f"aws:RequestTag/{k}": v for k, v in session_tags.items()},
            },
        )
        self._check_trust(binding.role_arn, first, "EKS Pod Identity (pods.eks.amazonaws.com)")
        session_name = self._session_name(subject)
        sts = self.clients.sts(self.region, parse_role_arn(binding.role_arn)[0])
        final_policy = None if binding.target_role_arn else binding.policy
        response = sts.assume_role(
            RoleArn=binding.role_arn,
            RoleSessionName=session_name,
            Tags=[{"Key": k, "Value": v} for k, v in session_tags.items()],
            **({"Policy": final_policy} if final_policy else {}),  # type: ignore[arg-type]
        )
        if binding.target_role_arn:
            # EKS chains a second AssumeRole from the association's role into the target role.
            chained = AssumeRequest(
                actions=("sts:AssumeRole",) if binding.disable_session_tags else ("sts:AssumeRole", "sts:TagSession"),
                principal_arn=binding.role_arn,
                principal_account=account,
                context={
                    "sts:ExternalId": binding.external_id or "",
                    "aws:PrincipalArn": binding.role_arn,
                    "aws:PrincipalAccount": account,
                    **{f"aws:RequestTag/{k}": v for k, v in session_tags.items()},
                },
            )
            self._check_trust(binding.target_role_arn, chained, binding.role_arn)
            first_credentials = response["Credentials"]
            hop = self.clients.sts_as(
                self.region,
                first_credentials["AccessKeyId"],
                first_credentials["SecretAccessKey"],
                first_credentials["SessionToken"],
            )
            response = hop.assume_role(
                RoleArn=binding.target_role_arn,
                RoleSessionName=session_name,
                ExternalId=binding.external_id or "",
                **({"Policy": binding.policy} if binding.policy else {}),  # type: ignore[arg-type]
            )
        issued = response["Credentials"]
        assumed_arn = response["AssumedRoleUser"]["Arn"]
        return IssuedCredentials(
            access_key_id=issued["AccessKeyId"],
            secret_access_key=issued["SecretAccessKey"],
            token=issued["SessionToken"],
            expiration=issued["Expiration"],
            account_id=assumed_arn.split(":")[4],
            assumed_role_arn=assumed_arn,
        )

    def _check_trust(self, role_arn: str, request: AssumeRequest, who: str) -> None:
        account, name = parse_role_arn(role_arn)
        try:
            role = self.clients.iam(account).get_role(RoleName=name)["Role"]
        except ClientError as exc:
            raise AgentError(
                "AccessDeniedException", 400, f"{who} is not authorized to assume {role_arn}: the role does not exist"
            ) from exc
        document: object = role.get("AssumeRolePolicyDocument")
        try:
            decision = evaluate_trust(document, request)
        except ValueError as exc:
            raise AgentError("AccessDeniedException", 400, f"The trust policy of {role_arn} is unreadable") from exc
        if not decision.allowed:
            why = (
                "an explicit Deny in its trust policy"
                if decision.explicit_deny
                else "its trust policy does not allow it"
            )
            raise AgentError(
                "AccessDeniedException",
                400,
                f"{who} is not authorized to perform {', '.join(decision.denied)} on {role_arn}: {why}",
            )

    @staticmethod
    def _session_name(subject: PodSubject) -> str:
        raw = f"eks-{subject.cluster}-{subject.pod_name or subject.service_account}-{uuid.uuid4().hex[:8]}"
        cleaned = _SESSION_NAME_CHARS.sub("-", raw)
        # RoleSessionName is capped at 64 characters; keep the random suffix that makes it unique.
        return cleaned if len(cleaned) <= 64 else cleaned[:55] + cleaned[-9:]
