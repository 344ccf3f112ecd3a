"""The AWS provider: IAM roles bound to Kubernetes service accounts through EKS Pod Identity associations."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    ProxyConnectionError,
    SSLError,
    SSOError,
    TokenRetrievalError,
)

from keyless import names
from keyless.bindings import Binding
from keyless.clouds import AwsRole, Cloud
from keyless.errors import CloudError
from keyless.federation import POD_IDENTITY_SERVICE, TRUST_ACTIONS, trust_statement
from keyless.ownership import Owner, owner_from_tags, ownership_tags
from keyless.plan import Action, ActionKind, ObservedBinding
from keyless.providers.base import (
    ActionOutcome,
    BindingWrites,
    PreflightIssue,
    desired_of,
    observed_of,
)
from keyless.providers.base import (
    PreflightSeverity as Severity,
)
from keyless.providers.retry import RetryPolicy, call_with_retry, poll
from keyless.targets import AwsTarget

if TYPE_CHECKING:
    from mypy_boto3_eks import EKSClient
    from mypy_boto3_eks.type_defs import ClusterTypeDef, PodIdentityAssociationTypeDef
    from mypy_boto3_iam import IAMClient
    from mypy_boto3_sts import STSClient

T = TypeVar("T")

log = logging.getLogger(__name__)

AGENT_ADDON = "eks-pod-identity-agent"
ASSOCIATION_QUOTA = 1000  # EKS: pod identity associations per cluster (not adjustable)
PAGE_SIZE = 100  # the largest maxResults ListPodIdentityAssociations accepts

# Retries live in keyless.providers.retry, not in botocore: the SDK makes exactly one attempt per call
# (`total_max_attempts: 1`). Stacking botocore's retries under ours would multiply attempts and delays,
# botocore cannot honour our total deadline, and it would not know that "role does not exist" right
# after the role was created is worth waiting for. `mode` is irrelevant with a single attempt; standard
# avoids adaptive mode's client-side token bucket, which sleeps inside the call where no deadline sees it.
SDK_CONFIG = Config(
    retries={"mode": "standard", "total_max_attempts": 1},
    connect_timeout=5,
    read_timeout=30,
    user_agent_extra="keyless",
)

# Throttling and 5xx: a handful of attempts within ~45 s, then the person hears about it.
DEFAULT_RETRY = RetryPolicy(max_attempts=6, base_delay=0.5, max_delay=8.0, deadline=45.0)
# IAM propagation of a new role is usually seconds, occasionally a minute or two.
ROLE_PROPAGATION_RETRY = RetryPolicy(max_attempts=12, base_delay=1.0, max_delay=10.0, deadline=120.0)
# A new or changed association is visible to Describe at once but reaches the Pod Identity webhook and
# agent seconds later; pods created in between get no credentials. wait_visible waits this long after
# the association's modifiedAt before it reports the binding as in effect.
PROPAGATION_SETTLE = 5.0

_THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "RequestLimitExceeded", "RequestThrottled", "SlowDown",
    "PriorRequestNotComplete", "TransactionInProgressException",
})
_SERVER_CODES = frozenset({
    "ServerException", "ServiceUnavailableException", "ServiceUnavailable", "InternalFailure",
    "InternalError", "InternalServerError", "InternalServerException", "ServiceFailure",
    "RequestTimeout", "RequestTimeoutException",
})
_DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})
_BAD_CREDENTIAL_CODES = frozenset({
    "InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch",
    "InvalidSignatureException", "MissingAuthenticationTokenException", "IncompleteSignature",
})
_EXPIRED_CODES = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired"})
_ROLE_NOT_FOUND = re.compile(r"role.*(does not exist|not found|cannot be found)", re.IGNORECASE)


# --- errors: which ones are worth another attempt, and how to explain the rest -------------------


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_transient(exc: BaseException) -> bool:
    """Throttling, server errors and lost connections: the same request may well succeed later."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = _status(exc)
        return code in _THROTTLING_CODES or code in _SERVER_CODES or status == 429 or status >= 500
    if isinstance(exc, SSLError | ProxyConnectionError):
        return False  # configuration, not weather: retrying only delays the message
    return isinstance(exc, ConnectionError | HTTPClientError)


def is_role_not_propagated(exc: BaseException) -> bool:
    """EKS's answer for a role IAM has not propagated yet (also for one that does not exist at all)."""
    if error_code(exc) != "InvalidParameterException":
        return False
    assert isinstance(exc, ClientError)
    return bool(_ROLE_NOT_FOUND.search(str(exc.response.get("Error", {}).get("Message", ""))))


def explain(exc: BaseException, doing: str) -> CloudError:
    """A CloudError a person can act on. Credential errors are described, never quoted: their text may
    carry a credential process's output."""
    gave_up = next((n for n in getattr(exc, "__notes__", ()) if n.startswith("gave up")), "")
    suffix = f" ({gave_up})" if gave_up else ""
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return CloudError(f"{doing}: no usable AWS credentials were found",
                          "set AWS_PROFILE (and run `aws sso login` if it is an SSO profile), or "
                          "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, TokenRetrievalError | SSOError):
        return CloudError(f"{doing}: the AWS SSO session is missing or has expired", "run `aws sso login`")
    if isinstance(exc, ProfileNotFound):
        return CloudError(f"{doing}: {exc}", "check AWS_PROFILE and ~/.aws/config")
    if isinstance(exc, NoRegionError):
        return CloudError(f"{doing}: no AWS region", "set `region` on the target")
    if isinstance(exc, ConnectionError | HTTPClientError):
        return CloudError(f"{doing}: could not reach AWS: {exc}{suffix}",
                          "check the network, proxy settings and any AWS_ENDPOINT_URL* variables")
    if not isinstance(exc, ClientError):
        return CloudError(f"{doing}: {exc}{suffix}")
    code = error_code(exc)
    message = str(exc.response.get("Error", {}).get("Message", "")) or "no message"
    text = f"{doing}: {code}: {message}{suffix}"
    if code in _DENIED_CODES:
        return CloudError(text, "the AWS identity keyless runs as lacks a permission: keyless needs "
                          "eks:DescribeCluster, eks:DescribeAddon, eks:*PodIdentityAssociation*, "
                          "eks:TagResource, iam:GetRole, and iam:PassRole on the roles it binds")
    if code in _EXPIRED_CODES:
        return CloudError(text, "the AWS credentials have expired: refresh them (e.g. `aws sso login`)")
    if code in _BAD_CREDENTIAL_CODES:
        return CloudError(text, "the AWS credentials are not valid here: check AWS_PROFILE, the access keys, "
                          "and any AWS_ENDPOINT_URL* variables")
    if code in _THROTTLING_CODES or _status(exc) == 429:
        return CloudError(text, "AWS kept throttling keyless; wait a minute and run it again")
    if is_role_not_propagated(exc):
        return CloudError(text, "if the role was created moments ago, IAM may still be propagating it: run "
                          "again in a minute; otherwise check that the role exists (`aws iam get-role`)")
    if code == "ResourceLimitExceededException":
        return CloudError(text, f"EKS allows {ASSOCIATION_QUOTA} pod identity associations per cluster: "
                          "delete unused ones (`aws eks list-pod-identity-associations`)")
    if is_transient(exc):
        return CloudError(text, "AWS had a transient failure; run it again")
    return CloudError(text)


# --- trust policies (pure) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrustFinding:
    """What a role's trust policy does with the actions EKS Pod Identity needs."""

    missing: tuple[str, ...] = ()  # no Allow statement grants it
    denied: tuple[str, ...] = ()  # a Deny statement without conditions refuses it
    conditional: tuple[str, ...] = ()  # granted or denied only under conditions keyless does not evaluate

    @property
    def ok(self) -> bool:
        return not self.missing and not self.denied


def load_policy(document: object) -> Mapping[str, Any]:
    """A policy as AWS hands it out: already parsed, JSON text, or URL-encoded JSON (IAM's raw API)."""
    if isinstance(document, Mapping):
        return document
    if isinstance(document, str):
        text = document.strip()
        if text.startswith("%"):
            text = unquote(text)
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"the policy document is not valid JSON ({exc})") from exc
        if isinstance(parsed, dict):
            return parsed
    raise ValueError("the policy document is not a JSON object")


def _as_list(value: object) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _action_matches(pattern: object, action: str) -> bool:
    # IAM action patterns are case-insensitive and know only the wildcards * and ?.
    regex = re.escape(str(pattern)).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, action, re.IGNORECASE) is not None


def _principal_covers(principal: object, service: str) -> bool:
    if principal == "*":
        return True
    if not isinstance(principal, Mapping):
        return False
    # {"AWS": "*"} means everyone, exactly like "*".
    return "*" in _as_list(principal.get("AWS")) or service in _as_list(principal.get("Service"))


def _statement_covers(statement: Mapping[str, Any], service: str, action: str) -> bool:
    effect = statement.get("Effect")
    if "Principal" in statement:
        principal_ok = _principal_covers(statement["Principal"], service)
    elif "NotPrincipal" in statement and effect == "Deny":
        principal_ok = not _principal_covers(statement["NotPrincipal"], service)
    else:
        principal_ok = False  # NotPrincipal with Allow grants nothing in a trust policy
    if not principal_ok:
        return False
    if "Action" in statement:
        return any(_action_matches(p, action) for p in _as_list(statement["Action"]))
    if "NotAction" in statement:
        return not any(_action_matches(p, action) for p in _as_list(statement["NotAction"]))
    return False


def check_trust_policy(
    document: object, *, service: str = POD_IDENTITY_SERVICE, actions: Sequence[str] = TRUST_ACTIONS
) -> TrustFinding:
    """Does the trust policy let `service` perform each of `actions`? Raises ValueError if unreadable."""
    policy = load_policy(document)
    statements = [s for s in _as_list(policy.get("Statement")) if isinstance(s, Mapping)]
    missing: list[str] = []
    denied: list[str] = []
    conditional: list[str] = []
    for action in actions:
        found = {(s.get("Effect"), bool(s.get("Condition"))) for s in statements
                 if _statement_covers(s, service, action)}
        if ("Deny", False) in found:
            denied.append(action)
        elif ("Allow", False) not in found and ("Allow", True) not in found:
            missing.append(action)
        elif ("Allow", False) not in found or ("Deny", True) in found:
            conditional.append(action)
    return TrustFinding(tuple(missing), tuple(denied), tuple(conditional))


# --- request tokens (pure) ----------------------------------------------------------------------------


def create_request_token(cluster: str, binding: Binding, role_arn: str, attempt: str) -> str:
    """clientRequestToken for one apply attempt of a create: every retry of that attempt sends the same
    token, so EKS answers a retry after a lost response with the association it already made. A new
    attempt (a later run) gets a new token, so a binding deleted and created again is never confused
    with its predecessor."""
    parts = (cluster, binding.namespace, binding.service_account, role_arn, binding.app, binding.service,
             binding.target, attempt)
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16]))


# --- the provider -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Role:
    name: str
    path: str
    arn: str
    trust: object  # AssumeRolePolicyDocument: parsed by botocore, or the encoded string


@dataclass(frozen=True, slots=True)
class _Summary:
    """What ListPodIdentityAssociations tells: no role, no tags (DescribePodIdentityAssociation has those)."""

    id: str
    namespace: str
    service_account: str


@dataclass(frozen=True, slots=True)
class _Association:
    id: str
    arn: str
    namespace: str
    service_account: str
    role_arn: str
    owner_arn: str | None
    tags: Mapping[str, str] = field(default_factory=dict)
    target_role_arn: str | None = None
    modified_at: float | None = None  # epoch seconds, the server's clock

    @property
    def owner(self) -> Owner | None:
        return owner_from_tags(self.tags)

    @property
    def address(self) -> str:
        return f"{self.namespace}/{self.service_account}"

    @classmethod
    def from_api(cls, raw: PodIdentityAssociationTypeDef) -> _Association:
        modified = raw.get("modifiedAt") or raw.get("createdAt")
        return cls(id=raw.get("associationId", ""), arn=raw.get("associationArn", ""),
                   namespace=raw.get("namespace", ""), service_account=raw.get("serviceAccount", ""),
                   role_arn=raw.get("roleArn", ""), owner_arn=raw.get("ownerArn") or None,
                   tags=dict(raw.get("tags") or {}), target_role_arn=raw.get("targetRoleArn") or None,
                   modified_at=modified.timestamp() if modified is not None else None)


def _aws_role(binding: Binding) -> AwsRole:
    if not isinstance(binding.identity, AwsRole):
        raise CloudError(f"service {binding.service!r}: {binding.identity.describe()} is not an AWS role",
                         "only awsRole connections apply to an AWS target")
    return binding.identity


def _role_arn(binding: Binding) -> str:
    role = _aws_role(binding)
    if role.arn is None:
        raise CloudError(f"service {binding.service!r}: role {role.role!r} was not resolved to an ARN",
                         "plan again: resolving the role is part of planning")
    return role.arn


def _owner_of(binding: Binding) -> Owner:
    return Owner(app=binding.app, service=binding.service, target=binding.target)


def _services(bindings: Sequence[Binding]) -> tuple[str, str | None]:
    """("service a" or "services a, b", the service when there is exactly one) for an issue."""
    found = list(dict.fromkeys(b.service for b in bindings))
    label = ("service " if len(found) == 1 else "services ") + ", ".join(found)
    return label, found[0] if len(found) == 1 else None


def _fail(message: str, binding_id: str | None = None) -> ActionOutcome:
    return ActionOutcome(ok=False, message=message, binding_id=binding_id)


class AwsProvider:
    """EKS Pod Identity on one cluster. Clients come from the standard SDK configuration (AWS_PROFILE,
    AWS_ENDPOINT_URL_EKS/IAM/STS, ...); the region is the target's."""

    cloud = Cloud.AWS
    in_place_identity_change = True  # UpdatePodIdentityAssociation changes roleArn in place
    marks_adopted = True  # ADOPT tags the association: from then on it is keyless's

    def __init__(
        self,
        target: AwsTarget,
        session: boto3.Session | None = None,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        role_propagation: RetryPolicy = ROLE_PROPAGATION_RETRY,
        settle: float = PROPAGATION_SETTLE,
    ) -> None:
        self.target = target
        self._retry = retry
        self._role_propagation = role_propagation
        self._settle = settle
        try:
            session = session or boto3.Session()
            self._eks: EKSClient = session.client("eks", region_name=target.region, config=SDK_CONFIG)
            # IAM is global, but its endpoint depends on the partition, which the region implies.
            self._iam: IAMClient = session.client("iam", region_name=target.region, config=SDK_CONFIG)
            self._sts: STSClient = session.client("sts", region_name=target.region, config=SDK_CONFIG)
        except BotoCoreError as exc:
            raise explain(exc, "setting up the AWS clients") from exc
        # Roles read by resolve(), reused by preflight() in the same run instead of a second GetRole.
        self._roles: dict[str, _Role] = {}

    @property
    def cluster(self) -> str:
        return self.target.cluster

    # ---- calling AWS ----------------------------------------------------------------------------

    def _call(
        self,
        doing: str,
        fn: Callable[[], T],
        *,
        policy: RetryPolicy | None = None,
        retryable: Callable[[BaseException], bool] = is_transient,
    ) -> T:
        """Run `fn` (botocore calls) with the retry policy; whatever escapes becomes a CloudError."""
        try:
            return call_with_retry(fn, policy=policy or self._retry, retryable=retryable, what=doing)
        except (ClientError, BotoCoreError) as exc:
            raise explain(exc, doing) from exc

    def _describe_cluster(self) -> ClusterTypeDef | None:
        def once() -> ClusterTypeDef | None:
            try:
                return self._eks.describe_cluster(name=self.cluster)["cluster"]
            except ClientError as exc:
                if error_code(exc) == "ResourceNotFoundException":
                    return None
                raise

        return self._call(f"describing EKS cluster {self.cluster!r}", once)

    def _addon_status(self) -> str | None:
        """The agent add-on's status, or None when it is not installed."""

        def once() -> str | None:
            try:
                addon = self._eks.describe_addon(clusterName=self.cluster, addonName=AGENT_ADDON)["addon"]
            except ClientError as exc:
                if error_code(exc) == "ResourceNotFoundException":
                    return None
                raise
            return addon.get("status", "UNKNOWN")

        return self._call(f"describing add-on {AGENT_ADDON} of cluster {self.cluster!r}", once)

    def _get_role(self, name: str) -> _Role | None:
        cached = self._roles.get(name)
        if cached is not None:
            return cached

        def once() -> _Role | None:
            try:
                raw = self._iam.get_role(RoleName=name)["Role"]
            except ClientError as exc:
                if error_code(exc) == "NoSuchEntity":
                    return None
                raise
            return _Role(name=raw["RoleName"], path=raw.get("Path", "/"), arn=raw["Arn"],
                         trust=raw.get("AssumeRolePolicyDocument"))

        role = self._call(f"reading IAM role {name!r}", once)
        if role is not None:
            self._roles[name] = role
        return role

    def _home(self) -> tuple[str, str]:
        """(partition, account) of the credentials in use, which is the cluster's: EKS lists no other."""
        who = self._call("asking STS who keyless runs as", self._sts.get_caller_identity)
        arn = who.get("Arn", "")
        partition = arn.split(":")[1] if arn.count(":") >= 5 else "aws"
        return partition, who.get("Account", "")

    def _list(self, namespace: str | None = None, service_account: str | None = None) -> list[_Summary]:
        """Every association (optionally of a namespace / service account), following every page."""
        found: list[_Summary] = []
        seen: set[str] = set()
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"clusterName": self.cluster, "maxResults": PAGE_SIZE}
            if namespace is not None:
                kwargs["namespace"] = namespace
            if service_account is not None:
                kwargs["serviceAccount"] = service_account
            if token is not None:
                kwargs["nextToken"] = token
            page = self._call(f"listing pod identity associations of cluster {self.cluster!r}",
                              partial(self._eks.list_pod_identity_associations, **kwargs))
            found += [_Summary(id=s.get("associationId", ""), namespace=s.get("namespace", ""),
                               service_account=s.get("serviceAccount", ""))
                      for s in page.get("associations", [])]
            token = page.get("nextToken") or None
            if token is None:
                return found
            if token in seen:
                # A paginator that hands back a token twice would loop forever; stop and say so.
                raise CloudError(f"listing pod identity associations of cluster {self.cluster!r}: EKS returned "
                                 "the same nextToken twice", "run it again; if it persists, report it to AWS")
            seen.add(token)

    def _describe(self, association_id: str) -> _Association | None:
        def once() -> _Association | None:
            try:
                raw = self._eks.describe_pod_identity_association(clusterName=self.cluster,
                                                                  associationId=association_id)
            except ClientError as exc:
                if error_code(exc) == "ResourceNotFoundException":
                    return None
                raise
            return _Association.from_api(raw["association"])

        return self._call(f"describing pod identity association {association_id}", once)

    def _find(self, namespace: str, service_account: str) -> _Association | None:
        """The association of a service account (EKS allows one), described."""
        for summary in self._list(namespace, service_account):
            found = self._describe(summary.id)
            if found is not None:
                return found
        return None

    def _tag(self, association: _Association, owner: Owner) -> None:
        self._call(f"tagging pod identity association {association.id}",
                   lambda: self._eks.tag_resource(resourceArn=association.arn, tags=ownership_tags(owner)))

    # ---- resolve --------------------------------------------------------------------------------

    def resolve(self, bindings: Sequence[Binding]) -> tuple[list[Binding], list[PreflightIssue]]:
        """Look each distinct role up (GetRole) and fill in its ARN; missing or foreign roles become issues."""
        self._roles = {}
        groups: dict[str, list[Binding]] = {}
        for binding in bindings:
            groups.setdefault(_aws_role(binding).role, []).append(binding)
        home: tuple[str, str] | None = None
        arns: dict[str, str] = {}
        issues: list[PreflightIssue] = []
        for written, group in groups.items():
            who, service = _services(group)
            try:
                ref = names.parse_role(written)
            except names.NameRuleError as exc:
                issues.append(PreflightIssue(Severity.BLOCKING, f"{exc.message} ({who})", exc.hint, service))
                continue
            if ref.is_arn:
                home = home or self._home()
                if (ref.partition, ref.account) != home:
                    issues.append(PreflightIssue(
                        Severity.BLOCKING,
                        f"role {written} ({who}) is in account {ref.account} ({ref.partition}), but cluster "
                        f"{self.cluster!r} is in account {home[1]} ({home[0]}); EKS Pod Identity needs a role in "
                        "the cluster's own account",
                        "create the role in the cluster's account and name it in porter.yaml; cross-account "
                        "access (a role in the cluster's account that chains to this one through "
                        "targetRoleArn) is not supported by keyless yet",
                        service))
                    continue
            role = self._get_role(ref.name)
            if role is None:
                issues.append(PreflightIssue(
                    Severity.BLOCKING,
                    f"IAM role {ref.name!r} ({who}) does not exist in the cluster's account",
                    f"create it with a trust policy that has this statement, or fix the role in porter.yaml: "
                    f"{json.dumps(trust_statement())}",
                    service))
                continue
            # Role names are unique in an account, but a path or ARN that was written must match too.
            if (ref.is_arn or ref.path != "/") and role.path != ref.path:
                issues.append(PreflightIssue(
                    Severity.BLOCKING,
                    f"IAM role {ref.name!r} ({who}) has path {role.path!r}, not {ref.path!r} as written",
                    f"write the role as {role.arn}", service))
                continue
            arns[written] = role.arn
        resolved: list[Binding] = []
        for binding in bindings:
            written_role = _aws_role(binding)
            arn = arns.get(written_role.role)
            resolved.append(binding if arn is None else replace(binding, identity=replace(written_role, arn=arn)))
        return resolved, issues

    # ---- preflight ------------------------------------------------------------------------------

    def preflight(self, bindings: Sequence[Binding]) -> list[PreflightIssue]:
        """Cluster, agent add-on (unless Auto Mode), the quota, and each role's trust policy."""
        issues: list[PreflightIssue] = []
        cluster = self._describe_cluster()
        if cluster is None:
            issues.append(PreflightIssue(
                Severity.BLOCKING, f"EKS cluster {self.cluster!r} not found in {self.target.region}",
                f"check `cluster` and `region` of the target (`aws eks list-clusters --region {self.target.region}` "
                "lists the clusters there)"))
        else:
            issues += self._check_cluster(cluster)
            issues += self._check_quota(bindings)
        issues += self._check_trust(bindings)
        return issues

    def _check_cluster(self, cluster: ClusterTypeDef) -> list[PreflightIssue]:
        issues: list[PreflightIssue] = []
        status = cluster.get("status", "ACTIVE")
        if status not in ("ACTIVE", "UPDATING"):
            issues.append(PreflightIssue(
                Severity.WARNING, f"EKS cluster {self.cluster!r} is {status}",
                "pod identity associations may fail until the cluster is ACTIVE"))
        if cluster.get("computeConfig", {}).get("enabled"):
            return issues  # EKS Auto Mode runs the Pod Identity agent itself
        addon = self._addon_status()
        create = (f"aws eks create-addon --cluster-name {self.cluster} --addon-name {AGENT_ADDON} "
                  f"--region {self.target.region}")
        if addon is None:
            issues.append(PreflightIssue(
                Severity.BLOCKING,
                f"EKS cluster {self.cluster!r} does not have the {AGENT_ADDON} add-on: pods would get no credentials",
                create))
        elif addon in ("CREATE_FAILED", "DELETING", "DELETE_FAILED"):
            issues.append(PreflightIssue(
                Severity.BLOCKING, f"the {AGENT_ADDON} add-on of cluster {self.cluster!r} is {addon}",
                f"repair or reinstall it (`aws eks describe-addon --cluster-name {self.cluster} "
                f"--addon-name {AGENT_ADDON}` shows why), e.g. {create}"))
        elif addon in ("CREATING", "DEGRADED", "UPDATE_FAILED"):
            issues.append(PreflightIssue(
                Severity.WARNING, f"the {AGENT_ADDON} add-on of cluster {self.cluster!r} is {addon}",
                "pods may not get credentials until it is ACTIVE"))
        return issues

    def _check_quota(self, bindings: Sequence[Binding]) -> list[PreflightIssue]:
        existing = self._list()
        taken = {(a.namespace, a.service_account) for a in existing}
        creates = len({b.key for b in bindings} - taken)
        if len(existing) + creates <= ASSOCIATION_QUOTA:
            return []
        return [PreflightIssue(
            Severity.BLOCKING,
            f"EKS cluster {self.cluster!r} has {len(existing)} pod identity associations; {creates} more would "
            f"pass the limit of {ASSOCIATION_QUOTA} per cluster",
            f"delete associations no longer used (`aws eks list-pod-identity-associations --cluster-name "
            f"{self.cluster}`)")]

    def _check_trust(self, bindings: Sequence[Binding]) -> list[PreflightIssue]:
        by_arn: dict[str, list[Binding]] = {}
        for binding in bindings:
            arn = _aws_role(binding).arn
            if arn is not None:
                by_arn.setdefault(arn, []).append(binding)
        issues: list[PreflightIssue] = []
        for arn, group in by_arn.items():
            who, service = _services(group)
            name = names.parse_role(arn).name
            role = self._get_role(name)
            if role is None:
                issues.append(PreflightIssue(Severity.BLOCKING, f"IAM role {name!r} ({who}) no longer exists",
                                             "create it again, or fix the role in porter.yaml", service))
                continue
            issue = _trust_issue(role, who, service)
            if issue is not None:
                issues.append(issue)
        return issues

    # ---- observe --------------------------------------------------------------------------------

    def observe(self, app: str, target: str, bindings: Sequence[Binding],
                recorded: Sequence[str] = ()) -> list[ObservedBinding]:
        """What sits at the desired (namespace, service account) keys, plus every association keyless owns
        for this app on this target. Summaries carry no tags, so candidates are described: those at a
        desired key, and those whose service account has the app's `<app>-` prefix (every account keyless
        names for the app has it), in any namespace so that a target whose namespace changed still finds
        its old associations. Other apps' and other people's associations are never described."""
        desired = {b.key for b in bindings}
        prefix = f"{app}-"
        found: list[ObservedBinding] = []
        for summary in self._list():
            key = (summary.namespace, summary.service_account)
            if key not in desired and not summary.service_account.startswith(prefix):
                continue
            association = self._describe(summary.id)
            if association is None:
                continue  # deleted since it was listed
            owner = association.owner
            if key not in desired and (owner is None or owner.app != app or owner.target != target):
                continue
            details = {"associationArn": association.arn}
            if association.target_role_arn:
                details["targetRoleArn"] = association.target_role_arn
            found.append(ObservedBinding(
                cloud=Cloud.AWS, id=association.id, namespace=association.namespace,
                service_account=association.service_account,
                identity=AwsRole(role=association.role_arn, arn=association.role_arn),
                owner=owner, managed_by=association.owner_arn, details=details))
        return found

    # ---- apply ----------------------------------------------------------------------------------

    def apply(self, action: Action) -> ActionOutcome:
        """Carry out one cloud action. Refusals come back as a failed outcome; AWS failures that retries
        did not cure raise CloudError."""
        return BindingWrites("AWS", create=self._create, adopt=self._adopt, replace=self._replace,
                             delete=self._delete, update=self._update).apply(action)

    def _replace(self, observed: ObservedBinding, binding: Binding) -> ActionOutcome:
        # One association per service account, so the old one must go before the new one.
        removed = self._delete(observed)
        if not removed.ok:
            return removed
        created = self._create(binding)
        return replace(created, message=f"{removed.message}; {created.message}")

    def _create(self, binding: Binding) -> ActionOutcome:
        role_arn = _role_arn(binding)
        owner = _owner_of(binding)
        address = f"{binding.namespace}/{binding.service_account}"
        token = create_request_token(self.cluster, binding, role_arn, uuid.uuid4().hex)

        def once() -> _Association | None:
            try:
                made = self._eks.create_pod_identity_association(
                    clusterName=self.cluster, namespace=binding.namespace, serviceAccount=binding.service_account,
                    roleArn=role_arn, clientRequestToken=token, tags=ownership_tags(owner))
            except ClientError as exc:
                if error_code(exc) == "ResourceInUseException":
                    return None
                raise
            return _Association.from_api(made["association"])

        created = self._call(f"creating the pod identity association for {address}", once,
                             policy=self._role_propagation,
                             retryable=lambda e: is_transient(e) or is_role_not_propagated(e))
        if created is None:
            return self._settle_conflict(binding, role_arn, owner)
        return ActionOutcome(True, f"created association {created.id}: {address} -> {role_arn}", created.id)

    def _settle_conflict(self, binding: Binding, role_arn: str, owner: Owner) -> ActionOutcome:
        """Create said the service account is taken: ours after a lost response, identical, or someone's."""
        address = f"{binding.namespace}/{binding.service_account}"
        existing = self._find(binding.namespace, binding.service_account)
        if existing is None:
            return _fail(f"{address}: EKS reported an association for this service account but none is listed "
                         "(deleted meanwhile?); plan and apply again")
        refusal = _foreign(existing, owner, self.cluster)
        if refusal is None and existing.role_arn != role_arn and existing.owner == owner:
            refusal = (f"{address} is already bound to {existing.role_arn} by association {existing.id}, made by "
                       "another keyless run since this plan; plan again")
        if refusal is None and existing.role_arn != role_arn:
            refusal = (f"{address} is already bound to {existing.role_arn} by association {existing.id}, which "
                       f"keyless did not make; keyless will not rebind it. Delete it (`aws eks "
                       f"delete-pod-identity-association --cluster-name {self.cluster} --association-id "
                       f"{existing.id}`) or set the awsRole of service {binding.service!r} to that role so keyless "
                       "adopts it")
        if refusal is not None:
            return _fail(refusal, existing.id)
        if existing.owner == owner:
            return ActionOutcome(True, f"association {existing.id} already exists: {address} -> {role_arn}",
                                 existing.id)
        self._tag(existing, owner)
        return ActionOutcome(True, f"adopted existing association {existing.id} (same role): {address} -> "
                             f"{role_arn}", existing.id)

    def _update(self, observed: ObservedBinding, binding: Binding) -> ActionOutcome:
        role_arn = _role_arn(binding)
        current = self._describe(observed.id)
        if current is None:
            return _fail(f"{_gone(observed)}; plan again", observed.id)
        refusal = _foreign(current, observed.owner, self.cluster, must_be_tagged=True)
        if refusal is not None:
            return _fail(refusal, current.id)
        if current.role_arn != role_arn:
            self._call(f"updating association {current.id} ({current.address})",
                       lambda: self._eks.update_pod_identity_association(
                           clusterName=self.cluster, associationId=current.id, roleArn=role_arn),
                       policy=self._role_propagation,
                       retryable=lambda e: is_transient(e) or is_role_not_propagated(e))
        return ActionOutcome(True, f"updated association {current.id}: {current.address} -> {role_arn}", current.id)

    def _delete(self, observed: ObservedBinding) -> ActionOutcome:
        # Describe first: the plan may be old, and keyless deletes only what it can see is its own now.
        current = self._describe(observed.id)
        if current is None:
            return ActionOutcome(True, f"{_gone(observed)} already", observed.id)
        refusal = _foreign(current, observed.owner, self.cluster, must_be_tagged=True)
        if refusal is not None:
            return _fail(refusal, current.id)

        def once() -> None:
            try:
                self._eks.delete_pod_identity_association(clusterName=self.cluster, associationId=current.id)
            except ClientError as exc:
                # A retry after a lost response finds it gone: that is the outcome we wanted.
                if error_code(exc) != "ResourceNotFoundException":
                    raise

        self._call(f"deleting association {current.id} ({current.address})", once)
        return ActionOutcome(True, f"deleted association {current.id}: {current.address} (was {current.role_arn})",
                             current.id)

    def _adopt(self, observed: ObservedBinding, binding: Binding) -> ActionOutcome:
        role_arn = _role_arn(binding)
        owner = _owner_of(binding)
        current = self._describe(observed.id)
        if current is None:
            return _fail(f"{_gone(observed)}; plan again", observed.id)
        refusal = _foreign(current, owner, self.cluster)
        if refusal is None and current.role_arn != role_arn:
            refusal = (f"{current.address}: association {current.id} is now bound to {current.role_arn}, not "
                       f"{role_arn} as planned; plan again")
        if refusal is not None:
            return _fail(refusal, current.id)
        if current.owner != owner:
            self._tag(current, owner)
        return ActionOutcome(True, f"adopted association {current.id}: {current.address} -> {role_arn}", current.id)

    # ---- wait -----------------------------------------------------------------------------------

    def wait_visible(self, action: Action, timeout: float) -> bool:
        """Poll Describe until the association shows the desired role (or, for a delete, is gone), and
        its last change is `settle` seconds old, so that pods created from now on get the credentials."""
        # The poll only waits for "not yet"; AWS errors inside each check are retried by _call, once.
        schedule = RetryPolicy(max_attempts=10_000, base_delay=0.25, max_delay=2.0, deadline=max(0.0, timeout))
        if action.kind is ActionKind.NOOP:
            return True
        if action.kind is ActionKind.DELETE:
            observed = observed_of(action)
            return poll(lambda: self._describe(observed.id) is None, policy=schedule,
                        what=f"waiting for association {observed.id} to go")
        binding = desired_of(action)
        role_arn = _role_arn(binding)

        def visible() -> bool:
            found = self._find(binding.namespace, binding.service_account)
            if found is None or found.role_arn != role_arn:
                return False
            return found.modified_at is None or time.time() >= found.modified_at + self._settle

        return poll(visible, policy=schedule,
                    what=f"waiting for {binding.namespace}/{binding.service_account} to be bound to {role_arn}")




def _gone(observed: ObservedBinding) -> str:
    return f"{observed.namespace}/{observed.service_account}: association {observed.id} is gone"


def _foreign(
    association: _Association, owner: Owner | None, cluster: str, *, must_be_tagged: bool = False
) -> str | None:
    """Why keyless must not touch this association on behalf of `owner`, or None when it may.

    `must_be_tagged`: the association has to carry `owner`'s tags already (update, delete), rather than
    merely not belong to anyone else (adopt, settling a create conflict)."""
    if association.owner_arn is not None:
        return (f"{association.address}: association {association.id} is owned by {association.owner_arn} "
                "(an EKS add-on); keyless never changes or deletes it")
    current = association.owner
    if current is not None and current != owner:
        return (f"{association.address}: association {association.id} belongs to keyless app {current.app!r}, "
                f"service {current.service!r}, target {current.target!r}; keyless will not take it over")
    if must_be_tagged and (current is None or current != owner):
        return (f"{association.address}: association {association.id} no longer carries keyless's ownership tags "
                f"(someone changed it); keyless will not touch it. Inspect it with `aws eks "
                f"describe-pod-identity-association --cluster-name {cluster} --association-id {association.id}`")
    return None


def _trust_issue(role: _Role, who: str, service: str | None) -> PreflightIssue | None:
    statement = json.dumps(trust_statement(), indent=2)
    where = (f"the trust policy of role {role.name!r} (IAM console > Roles > {role.name} > Trust relationships, "
             f"or `aws iam update-assume-role-policy --role-name {role.name} --policy-document file://trust.json`)")
    try:
        finding = check_trust_policy(role.trust)
    except ValueError as exc:
        return PreflightIssue(Severity.BLOCKING, f"cannot read the trust policy of role {role.name!r} ({who}): {exc}",
                              f"make sure {where} is valid JSON and contains:\n{statement}", service)
    if finding.denied:
        return PreflightIssue(
            Severity.BLOCKING,
            f"the trust policy of role {role.name!r} ({who}) denies {', '.join(finding.denied)} to "
            f"{POD_IDENTITY_SERVICE}",
            f"remove or narrow the Deny statement in {where}, and make sure it contains:\n{statement}", service)
    if finding.missing:
        return PreflightIssue(
            Severity.BLOCKING,
            f"the trust policy of role {role.name!r} ({who}) does not allow {POD_IDENTITY_SERVICE} "
            f"{' and '.join(finding.missing)}; EKS Pod Identity needs both {' and '.join(TRUST_ACTIONS)}",
            f"add this statement to {where}:\n{statement}", service)
    if finding.conditional:
        return PreflightIssue(
            Severity.WARNING,
            f"the trust policy of role {role.name!r} ({who}) allows {', '.join(finding.conditional)} to "
            f"{POD_IDENTITY_SERVICE} only under conditions keyless does not evaluate",
            "make sure the conditions hold for this cluster, namespace and service account", service)
    return None
