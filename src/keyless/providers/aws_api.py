"""The one AWS SDK layer: boto3 clients, the call wrapper (retry, not-found as None, explained errors) and paging.

The provider (`aws.py`) and the auditor (`aws_audit.py`) both reach AWS only through `AwsApi`, so they
retry, page, and explain failures the same way.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

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

from keyless.errors import CloudError, Denied
from keyless.providers.retry import (
    RateLimit,
    RetryPolicy,
    call_with_retry,
    endpoint_root,
    retry_after,
    shared_bucket,
    unreachable_cause,
    unreachable_hint,
)

if TYPE_CHECKING:
    from mypy_boto3_eks import EKSClient
    from mypy_boto3_iam import IAMClient
    from mypy_boto3_sts import STSClient

T = TypeVar("T")

ASSOCIATION_QUOTA = 5000  # EKS: pod identity associations per cluster (EKS user guide, "EKS Pod Identity limits")
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
    max_pool_connections=32,  # the provider's concurrent describes and the engine's concurrent writes
    user_agent_extra="keyless",
)

# Throttling and 5xx: a handful of attempts within ~45 s, then the person hears about it.
DEFAULT_RETRY = RetryPolicy(max_attempts=6, base_delay=0.5, max_delay=8.0, deadline=45.0)


@dataclass(frozen=True, slots=True)
class AwsLimits:
    """The request rates keyless paces itself to. AWS does not publish the EKS and IAM limits (REFERENCE.md);
    these sit below the rates at which an account is commonly throttled, so a run of hundreds of calls is paced
    instead of throttled and backed off."""

    eks_reads: RateLimit
    eks_writes: RateLimit
    iam_reads: RateLimit
    iam_writes: RateLimit


# The bursts are half the cloud's: requests paced at the rate still reach the cloud bunched by network jitter, and
# the cloud's unspent burst absorbs that instead of throttling (and a retry reading the same object twice).
DEFAULT_LIMITS = AwsLimits(eks_reads=RateLimit(per_second=20.0, burst=10),
                           eks_writes=RateLimit(per_second=10.0, burst=5),
                           iam_reads=RateLimit(per_second=15.0, burst=8),
                           iam_writes=RateLimit(per_second=5.0, burst=2))


_READ_PREFIXES = ("Describe", "List", "Get")


def _asked_wait(exc: BaseException) -> float | None:
    """The Retry-After a throttled AWS answer carries, if any."""
    if isinstance(exc, ClientError):
        return retry_after(exc.response.get("ResponseMetadata", {}).get("HTTPHeaders"))
    return None

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
DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedException"})
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



def _endpoint_settings(endpoint: str, env: Mapping[str, str] = os.environ) -> str:
    """The AWS_ENDPOINT_URL* variables that point at `endpoint` (botocore's standard endpoint configuration)."""
    chosen = sorted(k for k, v in env.items() if k.startswith("AWS_ENDPOINT_URL") and endpoint_root(v) == endpoint)
    return (", ".join(chosen) + " (which name this endpoint)") if chosen else "the AWS_ENDPOINT_URL* variables"


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
        cause = unreachable_cause(exc)
        url = str(getattr(exc, "kwargs", {}).get("endpoint_url") or "")
        if cause is not None and url:
            endpoint = endpoint_root(url)
            return CloudError(f"{doing}: could not reach AWS at {endpoint}: {cause}{suffix}",
                              unreachable_hint(endpoint, _endpoint_settings(endpoint)))
        return CloudError(f"{doing}: could not reach AWS: {exc}{suffix}",
                          "check the network, proxy settings and any AWS_ENDPOINT_URL* variables")
    if not isinstance(exc, ClientError):
        return CloudError(f"{doing}: {exc}{suffix}")
    code = error_code(exc)
    message = str(exc.response.get("Error", {}).get("Message", "")) or "no message"
    text = f"{doing}: {code}: {message}{suffix}"
    if code in DENIED_CODES:
        return Denied(text, "the AWS identity keyless runs as lacks a permission: keyless needs "
                      "eks:DescribeCluster, eks:DescribeAddon, eks:*PodIdentityAssociation*, "
                      "eks:TagResource, iam:GetRole, and iam:PassRole on the roles it binds", doing=doing, code=code)
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


# --- the clients --------------------------------------------------------------------------------------


class AwsApi:
    """EKS, IAM and STS clients of one region (standard SDK configuration: AWS_PROFILE, AWS_ENDPOINT_URL_*),
    and the one way keyless calls them: retried, paged, not-found as None, failures explained."""

    def __init__(
        self,
        region: str,
        session: boto3.Session | None = None,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        limits: AwsLimits = DEFAULT_LIMITS,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.retry = retry
        self.sleep = sleep
        self.clock = clock
        # Every request is paced by its bucket and counted (`calls`, e.g. "eks:ListPodIdentityAssociations"),
        # through botocore's before-call event: retries are paced and counted too.
        self.calls: Counter[str] = Counter()
        self._counting = threading.Lock()
        self._buckets = {(service, reads): shared_bucket(("aws", region, service, reads), limit, sleep=sleep,
                                                         clock=clock)
                         for service, reads, limit in (("eks", True, limits.eks_reads),
                                                       ("eks", False, limits.eks_writes),
                                                       ("iam", True, limits.iam_reads),
                                                       ("iam", False, limits.iam_writes))}
        try:
            session = session or boto3.Session()
            self.eks: EKSClient = session.client("eks", region_name=region, config=SDK_CONFIG)
            # IAM is global, but its endpoint depends on the partition, which the region implies.
            self.iam: IAMClient = session.client("iam", region_name=region, config=SDK_CONFIG)
            self.sts: STSClient = session.client("sts", region_name=region, config=SDK_CONFIG)
        except BotoCoreError as exc:
            raise explain(exc, "setting up the AWS clients") from exc
        for client in (self.eks, self.iam, self.sts):
            client.meta.events.register("before-call", self._before_call)

    def _before_call(self, model: Any, **_: Any) -> None:
        """Pace and count one request (returning None lets botocore send it)."""
        service = str(model.service_model.endpoint_prefix)
        operation = str(model.name)
        bucket = self._buckets.get((service, operation.startswith(_READ_PREFIXES)))
        if bucket is not None:
            bucket.take()
        with self._counting:
            self.calls[f"{service}:{operation}"] += 1

    def call(
        self,
        doing: str,
        fn: Callable[[], T],
        *,
        policy: RetryPolicy | None = None,
        retryable: Callable[[BaseException], bool] = is_transient,
    ) -> T:
        """Run `fn` (botocore calls) with the retry policy; whatever escapes becomes a CloudError (Denied for a
        missing permission)."""
        try:
            return call_with_retry(fn, policy=policy or self.retry, retryable=retryable, what=doing,
                                   sleep=self.sleep, clock=self.clock, asked=_asked_wait)
        except (ClientError, BotoCoreError) as exc:
            raise explain(exc, doing) from exc

    def get(self, doing: str, fn: Callable[[], T], *, not_found: str) -> T | None:
        """`call`, with the error code `not_found` answered as None (the object does not exist)."""
        def once() -> T | None:
            try:
                return fn()
            except ClientError as exc:
                if error_code(exc) == not_found:
                    return None
                raise

        return self.call(doing, once)

    def eks_pages(self, doing: str, fetch: Callable[..., Any], key: str, **kwargs: Any) -> list[Any]:
        """Every item of an EKS listing (maxResults / nextToken), refusing a token handed back twice."""
        items: list[Any] = []
        seen: set[str] = set()
        token: str | None = None
        while True:
            args = {**kwargs, "maxResults": PAGE_SIZE, **({"nextToken": token} if token else {})}
            page: Mapping[str, Any] = self.call(doing, partial(fetch, **args))
            items += list(page.get(key, []))
            token = page.get("nextToken") or None
            if token is None:
                return items
            if token in seen:
                # A paginator that hands back a token twice would loop forever; stop and say so.
                raise CloudError(f"{doing}: AWS returned the same nextToken twice",
                                 "run it again; if it persists, report it to AWS")
            seen.add(token)

    def iam_pages(self, doing: str, fetch: Callable[..., Any], key: str, **kwargs: Any) -> list[Any]:
        """Every item of an IAM listing (Marker / IsTruncated), refusing a marker handed back twice."""
        items: list[Any] = []
        seen: set[str] = set()
        marker: str | None = None
        while True:
            args = {**kwargs, **({"Marker": marker} if marker else {})}
            page: Mapping[str, Any] = self.call(doing, partial(fetch, **args))
            items += list(page.get(key, []))
            marker = page.get("Marker") or None
            if not page.get("IsTruncated") or marker is None:
                return items
            if marker in seen:
                raise CloudError(f"{doing}: AWS returned the same Marker twice",
                                 "run it again; if it persists, report it to AWS")
            seen.add(marker)

    # --- the reads both the provider and the auditor make ---

    def describe_cluster(self, cluster: str) -> Any | None:
        return self.get(f"describing EKS cluster {cluster!r}",
                        lambda: self.eks.describe_cluster(name=cluster)["cluster"],
                        not_found="ResourceNotFoundException")

    def get_role(self, name: str) -> Any | None:
        return self.get(f"reading IAM role {name!r}", lambda: self.iam.get_role(RoleName=name)["Role"],
                        not_found="NoSuchEntity")

    def list_associations(self, cluster: str, namespace: str | None = None,
                          service_account: str | None = None) -> list[Any]:
        """Every association summary of the cluster (optionally of a namespace / service account)."""
        filters = {k: v for k, v in (("namespace", namespace), ("serviceAccount", service_account)) if v is not None}
        return self.eks_pages(f"listing pod identity associations of cluster {cluster!r}",
                              self.eks.list_pod_identity_associations, "associations", clusterName=cluster, **filters)

    def describe_association(self, cluster: str, association_id: str) -> Any | None:
        return self.get(f"describing pod identity association {association_id}",
                        lambda: self.eks.describe_pod_identity_association(
                            clusterName=cluster, associationId=association_id)["association"],
                        not_found="ResourceNotFoundException")
