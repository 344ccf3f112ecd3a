"""The one Azure SDK layer: credential and ARM clients, the call wrapper (retry with Retry-After, not-found as None,
explained errors) and the error classification, shared by the provider (`azure.py`) and the auditor."""

from __future__ import annotations

import os
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import DefaultAzureCredential
from azure.mgmt.authorization.v2022_04_01 import AuthorizationManagementClient
from azure.mgmt.containerservice import ContainerServiceClient
from azure.mgmt.msi.v2024_11_30 import ManagedServiceIdentityClient

from keyless.errors import CloudError, Denied
from keyless.providers.retry import (
    RateLimit,
    RetryPolicy,
    call_with_retry,
    endpoint_root,
    unreachable_cause,
    unreachable_hint,
)
from keyless.providers.retry import retry_after as retry_seconds
from keyless.targets import AzureTarget

T = TypeVar("T")

CREDENTIALS_PER_IDENTITY = 20  # Azure: federated identity credentials per managed identity (not adjustable)
CONCURRENT_WRITES = "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity"
AUTHORITY_ENV = "AZURE_AUTHORITY_HOST"

# As on AWS, retries live in keyless.providers.retry only: the Azure SDK clients make one attempt per call
# (`retry_total=0`), so attempts never multiply and the total deadline holds. Writes on one identity are
# throttled to about one every four seconds and concurrent writers get a 409, so the schedule is longer than
# AWS's: a write queued behind a handful of others on the same identity still gets through.
DEFAULT_RETRY = RetryPolicy(max_attempts=8, base_delay=1.0, max_delay=10.0, deadline=60.0)


@dataclass(frozen=True, slots=True)
class AzureLimits:
    """The federated-credential write rates keyless paces itself to (REFERENCE.md: about 0.25/s per identity and
    2/s per subscription, 429 with Retry-After beyond)."""

    writes_per_subscription: RateLimit
    writes_per_identity: RateLimit


# ARM's bursts are not documented: keyless assumes small ones (the sandbox grants twice these), so requests bunched
# by network jitter land in the cloud's unspent burst; a burst the cloud does not grant costs a 429 and its
# Retry-After, which the retry helper honours.
DEFAULT_LIMITS = AzureLimits(writes_per_subscription=RateLimit(per_second=2.0, burst=10),
                             writes_per_identity=RateLimit(per_second=0.25, burst=2))

_AADSTS = re.compile(r"AADSTS\d+.*", re.DOTALL)
_DENIED_CODES = frozenset({"AuthorizationFailed", "LinkedAuthorizationFailed", "Forbidden",
                           "InvalidAuthenticationToken", "InvalidAuthenticationTokenTenant",
                           "ExpiredAuthenticationToken"})



# --- errors: which ones are worth another attempt, and how to explain the rest -------------------------


def arm_code(exc: BaseException) -> str:
    """The ARM error code (`error.code` of the body); azure-core raises one exception type for every 409."""
    if isinstance(exc, HttpResponseError) and exc.error is not None:
        return str(exc.error.code or "")
    return ""


def arm_message(exc: HttpResponseError) -> str:
    if exc.error is not None and exc.error.message:
        return str(exc.error.message)
    return str(exc.reason or exc.message or "no message")


def status_of(exc: BaseException) -> int:
    return int(getattr(exc, "status_code", None) or 0) if isinstance(exc, HttpResponseError) else 0


def is_concurrent_write(exc: BaseException) -> bool:
    """Another write on the same identity is in flight: the same request succeeds once it is done."""
    return status_of(exc) == 409 and arm_code(exc) == CONCURRENT_WRITES


def is_throttled(exc: BaseException) -> bool:
    return status_of(exc) == 429


def _tls_failure(exc: BaseException) -> bool:
    """Is a TLS verification failure somewhere in the chain (wrong or missing caBundle, not weather)?"""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError) or type(current).__name__ == "SSLError":
            return True
        inner = getattr(current, "inner_exception", None)
        current = inner if isinstance(inner, BaseException) else (current.__cause__ or current.__context__)
    return False


def is_transient(exc: BaseException) -> bool:
    """Throttling, concurrent writes on one identity, server errors and lost connections (the token endpoint's too)."""
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return not _tls_failure(exc)
    if isinstance(exc, ClientAuthenticationError) and getattr(exc, "response", None) is None:
        return unreachable_cause(exc) is not None  # the credential makes one attempt: the retrying is ours
    if isinstance(exc, HttpResponseError):
        # A credential that could not get a token is a ClientAuthenticationError without a status: not weather.
        status = status_of(exc)
        return status == 429 or status >= 500 or is_concurrent_write(exc)
    return False


def retry_after(exc: BaseException, now: Callable[[], float] = time.time) -> float | None:
    """Seconds ARM asked to wait before the next attempt, if it said."""
    response = getattr(exc, "response", None)
    return retry_seconds(getattr(response, "headers", None), now) if isinstance(exc, HttpResponseError) else None


def _compact(text: str, limit: int = 600) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


PUBLIC_AUTHORITY = "https://login.microsoftonline.com"
_CREDENTIAL_LINE = re.compile(r"^\s*(\w+Credential): (.+)$", re.MULTILINE)


def credential_failure(exc: BaseException) -> str:
    """Why azure-identity got no token, in one line: the credential that failed and its reason, never the whole
    dump DefaultAzureCredential writes (every credential it tried, and a troubleshooting link for each)."""
    text = str(getattr(exc, "message", None) or exc)
    tried = _CREDENTIAL_LINE.findall(text)
    failed = [(name, reason) for name, reason in tried if "unavailable" not in reason.lower()]
    if failed:
        name, reason = failed[-1]
        reason = reason.split(" To mitigate this issue")[0].split(" Visit https://")[0]
        return f"{name}: {aadsts(reason) if 'AADSTS' in reason else _compact(reason, 300)}"
    if tried:
        return "none of the credentials DefaultAzureCredential tries is configured here"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return _compact(first.split(" To mitigate this issue")[0], 300)


def explain(exc: BaseException, doing: str, arm_endpoint: str = "", env: Mapping[str, str] = os.environ
            ) -> CloudError:
    """A CloudError a person can act on, with the ARM error code and message when there is one. `arm_endpoint` is
    where the call went (the target's `armEndpoint`), for saying which endpoint could not be reached."""
    gave_up = next((n for n in getattr(exc, "__notes__", ()) if n.startswith("gave up")), "")
    suffix = f" ({gave_up})" if gave_up else ""
    if isinstance(exc, ClientAuthenticationError) and getattr(exc, "response", None) is None:
        # No token at all: azure-identity says which credentials it tried and why each one failed.
        authority = endpoint_root(env.get(AUTHORITY_ENV) or PUBLIC_AUTHORITY)
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return CloudError(f"{doing}: the TLS certificate of the token endpoint {authority} was not trusted "
                              "(CERTIFICATE_VERIFY_FAILED)",
                              f"set `caBundle` on the target to the CA that signed {AUTHORITY_ENV}'s certificate "
                              "(the credential uses it too)")
        cause = unreachable_cause(exc)
        if cause is not None:
            return CloudError(f"{doing}: could not get an Azure token from {authority}: {cause}{suffix}",
                              unreachable_hint(authority, AUTHORITY_ENV))
        return CloudError(
            f"{doing}: no usable Azure credentials ({credential_failure(exc)})",
            "sign in with `az login`, or set the workload identity variables (AZURE_CLIENT_ID, AZURE_TENANT_ID, "
            f"AZURE_FEDERATED_TOKEN_FILE, and {AUTHORITY_ENV} outside the public cloud), or a service principal's "
            "(AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH)")
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        if _tls_failure(exc):
            return CloudError(f"{doing}: the TLS certificate of the Azure endpoint was not trusted: "
                              f"{_compact(str(exc))}",
                              "set `caBundle` on the target to the CA that signed the endpoint's certificate")
        cause = unreachable_cause(exc)
        if cause is not None and arm_endpoint:
            endpoint = endpoint_root(arm_endpoint)
            return CloudError(f"{doing}: could not reach Azure Resource Manager at {endpoint}: {cause}{suffix}",
                              unreachable_hint(endpoint, "`armEndpoint` of the target"))
        return CloudError(f"{doing}: could not reach Azure: {_compact(str(exc))}{suffix}",
                          f"check the network, proxy settings, `armEndpoint` of the target and {AUTHORITY_ENV}")
    if not isinstance(exc, HttpResponseError):
        return CloudError(f"{doing}: {_compact(str(exc))}{suffix}")
    code = arm_code(exc)
    status = status_of(exc)
    text = f"{doing}: {code or status or 'error'}: {_compact(arm_message(exc))}{suffix}"
    lowered = f"{code} {arm_message(exc)}".lower()
    if status in (401, 403) or code in _DENIED_CODES:
        kind: Callable[..., CloudError] = (partial(Denied, doing=doing, code=code or str(status)) if status == 403
                                           else CloudError)
        return kind(text, "the Azure identity keyless runs as lacks a permission: it needs "
                          "Microsoft.ManagedIdentity/userAssignedIdentities/read and "
                          ".../federatedIdentityCredentials/read, write and delete on the identities (the "
                          "'Managed Identity Contributor' role), and Microsoft.ContainerService/managedClusters/read "
                          "on the cluster")
    if is_concurrent_write(exc):
        return CloudError(text, "something else kept writing credentials on the same managed identity; run it "
                          "again when it is done")
    if is_throttled(exc):
        return CloudError(text, "Azure kept throttling keyless (about one credential write per identity every "
                          "four seconds); wait a minute and run it again")
    if status == 400 and any(word in lowered for word in ("too many", "at most", "limit", "maximum", "exceed")):
        return CloudError(text, f"a managed identity holds at most {CREDENTIALS_PER_IDENTITY} federated "
                          "credentials: delete unused ones (`az identity federated-credential list`) or give some "
                          "services another identity")
    if status == 400 and "issuer" in lowered and "subject" in lowered:
        return CloudError(text, "a managed identity accepts one credential per issuer and subject: another "
                          "credential on it already trusts this service account; plan again")
    if status >= 500:
        return CloudError(text, "Azure had a transient failure; run it again")
    return CloudError(text)


def aadsts(exc: BaseException) -> str:
    """The Entra ID error of a failed token request, from its AADSTS code on (the useful part)."""
    text = str(getattr(exc, "message", None) or exc)
    match = _AADSTS.search(text)
    return _compact(match.group(0) if match else text, 400)


# --- the provider -------------------------------------------------------------------------------------


def client_options(target: AzureTarget) -> dict[str, Any]:
    """What every ARM client of a target is built with: its endpoint and token scope (sovereign clouds, the
    sandbox), its CA, and one attempt per call (keyless.providers.retry does the retrying)."""
    options: dict[str, Any] = {
        "base_url": target.arm_endpoint,
        "credential_scopes": [f"{target.arm_endpoint}/.default"],
        "retry_total": 0,
        "connection_timeout": 5,
        "read_timeout": 30,
        "user_agent": "keyless",
    }
    if target.ca_bundle:
        options["connection_verify"] = target.ca_bundle
    return options


class AzureApi:
    """The ARM clients of a target (endpoint `armEndpoint`, CA `caBundle`, one attempt per SDK call) and the one way
    keyless calls them. The credential is DefaultAzureCredential (az login, a service principal, or the workload
    identity variables with AZURE_AUTHORITY_HOST), given the CA bundle too, unless one is passed in."""

    def __init__(
        self,
        target: AzureTarget,
        credential: TokenCredential | None = None,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.target = target
        self.retry = retry
        self.sleep = sleep
        self.clock = clock
        self.now = now
        self.scope = f"{target.arm_endpoint}/.default"
        verify: dict[str, Any] = {"connection_verify": target.ca_bundle} if target.ca_bundle else {}
        self._owns_credential = credential is None
        # DefaultAzureCredential reads AZURE_AUTHORITY_HOST itself; the CA bundle must reach its token requests too.
        # One attempt per token request too (retry_total=0): its own retries waited ~5 s on a refused connection,
        # out of reach of our deadline; is_transient retries a token request that found nothing listening.
        self.credential: TokenCredential = credential or DefaultAzureCredential(retry_total=0, **verify)
        options = client_options(target)
        self.msi = ManagedServiceIdentityClient(self.credential, target.subscription, **options)
        self.clusters = ContainerServiceClient(self.credential, target.subscription, **options)
        self.authorization = AuthorizationManagementClient(self.credential, target.subscription, **options)

    def close(self) -> None:
        for client in (self.msi, self.clusters, self.authorization):
            client.close()
        if self._owns_credential and isinstance(self.credential, DefaultAzureCredential):
            self.credential.close()

    def call(
        self,
        doing: str,
        fn: Callable[[], T],
        *,
        policy: RetryPolicy | None = None,
        retryable: Callable[[BaseException], bool] = is_transient,
    ) -> T:
        """Run `fn` (SDK calls) with the retry policy (stretched to ARM's Retry-After); whatever escapes becomes a
        CloudError (Denied for a 403)."""
        try:
            return call_with_retry(fn, policy=policy or self.retry, retryable=retryable, what=doing,
                                   sleep=self.sleep, clock=self.clock, asked=lambda exc: retry_after(exc, self.now))
        except AzureError as exc:
            raise explain(exc, doing, self.target.arm_endpoint) from exc

    def get(self, doing: str, fn: Callable[[], T]) -> T | None:
        """`call`, with a 404 (the object or its resource group does not exist) answered as None."""
        def once() -> T | None:
            try:
                return fn()
            except ResourceNotFoundError:
                return None

        return self.call(doing, once)
