"""The one GCP REST layer: Application Default Credentials, gcloud's endpoint overrides, and the call wrapper
(retries with Retry-After, not-found as None, explained errors), shared by the provider (`gcp.py`) and the auditor.

Why REST through google-auth's AuthorizedSession rather than the google-cloud-* client libraries: the IAM admin
client (`iam_admin_v1`) is gRPC only, gRPC ignores REQUESTS_CA_BUNDLE and gcloud's endpoint overrides, and keyless
needs five small calls whose JSON Google documents. One requests session serves IAM, GKE, Resource Manager, STS and
IAM Credentials alike, honours REQUESTS_CA_BUNDLE like every requests-based client, and lets this module own
retries (the only layer that does)."""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlparse

import google.auth
import requests
from google.auth import exceptions as auth_errors
from google.auth.credentials import Credentials
from google.auth.transport.requests import AuthorizedSession

from keyless.errors import CloudError, Denied
from keyless.providers.retry import (
    RetryPolicy,
    call_with_retry,
    endpoint_root,
    retry_after,
    unreachable_cause,
    unreachable_hint,
)

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
TIMEOUT = (5.0, 30.0)  # connect, read: seconds
# IAM policy writes on one service account race with every other writer (409 ABORTED): the whole
# read-modify-write is redone on that, so the schedule leaves room for a few rounds.
DEFAULT_RETRY = RetryPolicy(max_attempts=6, base_delay=0.5, max_delay=8.0, deadline=45.0)
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


class GoogleApi(enum.Enum):
    """Each REST API keyless calls: the gcloud override variable's suffix and Google's public root."""

    IAM = ("IAM", "https://iam.googleapis.com/")
    CONTAINER = ("CONTAINER", "https://container.googleapis.com/")
    RESOURCE_MANAGER = ("CLOUDRESOURCEMANAGER", "https://cloudresourcemanager.googleapis.com/")
    STS = ("STS", "https://sts.googleapis.com/")
    IAM_CREDENTIALS = ("IAMCREDENTIALS", "https://iamcredentials.googleapis.com/")

    @property
    def variable(self) -> str:
        return f"CLOUDSDK_API_ENDPOINT_OVERRIDES_{self.value[0]}"


def endpoint(api: GoogleApi, env: Mapping[str, str] = os.environ) -> str:
    """The root URL of an API: gcloud's override variable when set (sandbox, private endpoints), else Google's."""
    override = env.get(api.variable, "").strip()
    if not override:
        return api.value[1]
    parsed = urlparse(override)
    if parsed.scheme not in ("https", "http") or not parsed.netloc:
        raise CloudError(f"{api.variable}={override!r} is not a root URL",
                         f"set it to a URL such as https://{api.value[1].split('//')[1]}, or unset it")
    return override if override.endswith("/") else override + "/"


def service_account_path(email: str) -> str:
    """The IAM resource path of a service account; the email is checked before it gets here, and quoted anyway."""
    return f"v1/projects/-/serviceAccounts/{quote(email, safe='@')}"


class GoogleHttpError(Exception):
    """A non-2xx answer: the HTTP status and Google's `error.status` ("ABORTED", "PERMISSION_DENIED"...)."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str]) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers)


def _error_of(response: requests.Response) -> GoogleHttpError:
    """Google's `{"error": {"code", "message", "status"}}`, or the OAuth form `{"error", "error_description"}`."""
    code, message = "", ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code, message = str(error.get("status") or ""), str(error.get("message") or "")
        elif isinstance(error, str):
            code, message = error, str(body.get("error_description") or "")
    if not message:
        message = " ".join(response.text.split())[:300] or response.reason or "no message"
    return GoogleHttpError(response.status_code, code, message, response.headers)


def _tls_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, requests.exceptions.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def is_transient(exc: BaseException) -> bool:
    """Throttling, server errors and lost connections; a certificate that is not trusted is not weather."""
    if isinstance(exc, GoogleHttpError):
        return exc.status in _TRANSIENT_STATUS
    if isinstance(exc, requests.ConnectionError | requests.Timeout | auth_errors.TransportError):
        return not _tls_failure(exc)
    return False


def _compact(text: str, limit: int = 500) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


PERMISSIONS_HINT = ("the Google identity keyless runs as lacks a permission: give it a custom role with "
                    "iam.serviceAccounts.get, iam.serviceAccounts.getIamPolicy, iam.serviceAccounts.setIamPolicy, "
                    "container.clusters.get and resourcemanager.projects.get (and for `keyless audit` "
                    "resourcemanager.projects.getIamPolicy and iam.serviceAccountKeys.list)")


def explain(exc: BaseException, doing: str, api: GoogleApi | None = None, root: str = "") -> CloudError:
    """A CloudError a person can act on, with Google's status and message when there is one. `api` and `root` name the
    endpoint the call went to, for saying which one could not be reached."""
    gave_up = next((n for n in getattr(exc, "__notes__", ()) if n.startswith("gave up")), "")
    suffix = f" ({gave_up})" if gave_up else ""
    cause = unreachable_cause(exc)
    if cause is not None and isinstance(exc, requests.ConnectionError | auth_errors.TransportError):
        if isinstance(exc, auth_errors.TransportError):
            # The credentials' token request, not the API call: its endpoint comes from the credentials file.
            where = _token_endpoint(exc)
            return CloudError(f"{doing}: could not reach Google's token endpoint{f' at {where}' if where else ''}: "
                              f"{cause}{suffix}",
                              unreachable_hint(f"//{where}", "the token_uri of the credentials file "
                                               "GOOGLE_APPLICATION_CREDENTIALS names"))
        endpoint = endpoint_root(root) if root else "Google"
        settings = f"{api.variable}" if api is not None else "the CLOUDSDK_API_ENDPOINT_OVERRIDES_* variables"
        return CloudError(f"{doing}: could not reach Google at {endpoint}: {cause}{suffix}",
                          unreachable_hint(endpoint, settings))
    if isinstance(exc, auth_errors.DefaultCredentialsError):
        return CloudError(f"{doing}: no Google credentials found: {_compact(str(exc))}",
                          "run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a "
                          "credentials file (workload identity federation or a service account)")
    if _tls_failure(exc):
        return CloudError(f"{doing}: the TLS certificate of the Google endpoint was not trusted: {_compact(str(exc))}",
                          "set REQUESTS_CA_BUNDLE to a bundle holding the CA that signed the endpoint's certificate")
    if isinstance(exc, auth_errors.RefreshError):
        return CloudError(f"{doing}: Google refused keyless's credentials: {_compact(str(exc))}",
                          "sign in again (`gcloud auth application-default login`) or check the credentials file "
                          "GOOGLE_APPLICATION_CREDENTIALS names")
    if isinstance(exc, requests.ConnectionError | requests.Timeout | auth_errors.TransportError):
        overrides = ", ".join(api.variable for api in GoogleApi)
        return CloudError(f"{doing}: could not reach Google: {_compact(str(exc))}{suffix}",
                          f"check the network and proxy settings, and the endpoint override variables ({overrides})")
    if not isinstance(exc, GoogleHttpError):
        return CloudError(f"{doing}: {_compact(str(exc))}{suffix}")
    text = f"{doing}: {exc.status} {exc.code or 'error'}: {_compact(exc.message)}{suffix}"
    if exc.status == 403:
        return Denied(text, PERMISSIONS_HINT, doing=doing, code=exc.code or "403")
    if exc.status == 401:
        return CloudError(text, "keyless's Google credentials were not accepted: sign in again "
                                "(`gcloud auth application-default login`) or check GOOGLE_APPLICATION_CREDENTIALS")
    if exc.status == 429:
        return CloudError(text, "Google kept throttling keyless; wait a minute and run it again")
    if exc.status == 409 and exc.code == "ABORTED":
        return CloudError(text, "other writers kept changing the same IAM policy; run it again when they are done")
    if exc.status >= 500:
        return CloudError(text, "Google had a transient failure; run it again")
    return CloudError(text)


def _token_endpoint(exc: BaseException) -> str:
    """HOST:PORT of the token request google-auth's transport error names (urllib3's "host=..., port=..."), or ""."""
    text = str(exc)
    host = text.partition("host='")[2].partition("'")[0]
    port = text.partition("port=")[2].partition(")")[0].strip()
    return f"{host}:{port}" if host and port.isdigit() else ""


def default_credentials() -> Credentials:
    """Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS, gcloud's ADC file, or the metadata server."""
    try:
        credentials, _ = google.auth.default(scopes=list(SCOPES))
    except auth_errors.DefaultCredentialsError as exc:
        raise explain(exc, "finding Google credentials") from exc
    return credentials


class GcpApi:
    """One authorized requests session for every Google API keyless calls, and the one way it calls them.

    Endpoints come from gcloud's override variables (read once, here); TLS trust from REQUESTS_CA_BUNDLE, which
    requests honours for the API calls and the credentials' token requests alike."""

    def __init__(
        self,
        credentials: Credentials | None = None,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
        env: Mapping[str, str] = os.environ,
    ) -> None:
        self.retry = retry
        self.sleep = sleep
        self.clock = clock
        self.now = now
        self.roots = {api: endpoint(api, env) for api in GoogleApi}
        self._credentials = credentials
        self._session: AuthorizedSession | None = None
        self.calls = 0  # HTTP requests made (attempts included), for the tests' call counts

    @property
    def session(self) -> AuthorizedSession:
        # Built on first use: finding credentials is itself I/O (the metadata server), and pure commands need none.
        if self._session is None:
            self._session = AuthorizedSession(self._credentials or default_credentials())  # type: ignore[no-untyped-call]
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()  # type: ignore[no-untyped-call]

    def url(self, api: GoogleApi, path: str) -> str:
        return self.roots[api] + path.lstrip("/")

    def _once(self, method: str, url: str, body: Mapping[str, Any] | None, params: Mapping[str, str] | None,
              headers: Mapping[str, str] | None, session: requests.Session,
              form: Mapping[str, str] | None = None) -> dict[str, Any]:
        self.calls += 1
        response = session.request(method, url, json=body, data=form, params=params, headers=headers,
                                   timeout=TIMEOUT)
        if response.status_code >= 400:
            raise _error_of(response)
        if not response.content:
            return {}
        try:
            parsed = response.json()
        except ValueError as exc:
            raise GoogleHttpError(response.status_code, "", f"not JSON: {response.text[:200]!r}", {}) from exc
        return parsed if isinstance(parsed, dict) else {}

    def call(
        self,
        doing: str,
        method: str,
        api: GoogleApi,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        form: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        policy: RetryPolicy | None = None,
        retryable: Callable[[BaseException], bool] = is_transient,
        session: requests.Session | None = None,
    ) -> dict[str, Any]:
        """One REST call with the retry policy (stretched to Retry-After); whatever escapes becomes a CloudError
        (Denied for a 403). `body` is sent as JSON, `form` form-encoded (OAuth endpoints); `session` replaces the
        authorized one for calls that carry their own token (STS)."""
        url = self.url(api, path)
        try:
            return call_with_retry(
                lambda: self._once(method, url, body, params, headers, session or self.session, form),
                policy=policy or self.retry, retryable=retryable, what=doing, sleep=self.sleep, clock=self.clock,
                asked=lambda exc: retry_after(exc.headers, self.now) if isinstance(exc, GoogleHttpError) else None)
        except (GoogleHttpError, requests.RequestException, auth_errors.GoogleAuthError) as exc:
            raise explain(exc, doing, api, self.roots[api]) from exc

    def get(self, doing: str, api: GoogleApi, path: str, *, params: Mapping[str, str] | None = None
            ) -> dict[str, Any] | None:
        """A GET whose 404 (the object does not exist) is answered as None."""
        try:
            return self.call(doing, "GET", api, path, params=params)
        except CloudError as exc:
            if isinstance(exc.__cause__, GoogleHttpError) and exc.__cause__.status == 404:
                return None
            raise


def http_status(exc: CloudError) -> int:
    """The HTTP status behind a CloudError this module raised (0 when it was not an HTTP answer)."""
    cause = exc.__cause__
    return cause.status if isinstance(cause, GoogleHttpError) else 0


def google_code(exc: CloudError) -> str:
    cause = exc.__cause__
    return cause.code if isinstance(cause, GoogleHttpError) else ""
