"""In-pod checks: which identity each cloud SDK's default credential chain resolves to, and static keys in the env."""

from __future__ import annotations

import base64
import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

STATIC_AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
POD_IDENTITY_VARS = ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
IRSA_VARS = ("AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")
STATIC_AZURE_SECRETS = ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_CLIENT_CERTIFICATE_PASSWORD",
                        "AZURE_PASSWORD")
AZURE_WORKLOAD_VARS = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST")
AZURE_DEFAULT_SCOPE = "https://management.azure.com/.default"
GOOGLE_HINT_VARS = ("GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST", "GCE_METADATA_IP", "GCE_METADATA_ROOT")
GOOGLE_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
METADATA_PING = "http://169.254.169.254"  # where GKE's metadata server answers pods when no variable says otherwise


class Verdict(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    ERROR = "error"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Check:
    cloud: str
    verdict: Verdict
    summary: str
    details: Mapping[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {"cloud": self.cloud, "verdict": self.verdict.value, "summary": self.summary,
                "details": dict(self.details)}


def static_key_findings(env: Mapping[str, str]) -> list[Check]:
    """Long-lived keys in the environment defeat the point of workload identity: flag each one by name."""
    fix = {"fix": "remove them from the service's env and env groups; the pod's identity replaces them"}
    findings = []
    aws = [k for k in STATIC_AWS_KEYS[:2] if env.get(k)]
    if aws:
        findings.append(Check("aws", Verdict.ERROR, f"static credentials in the environment: {', '.join(aws)}", fix))
    azure = [k for k in STATIC_AZURE_SECRETS if env.get(k)]
    if azure:
        findings.append(Check("azure", Verdict.ERROR,
                              f"secret or certificate credentials in the environment: {', '.join(azure)}", fix))
    key_file = google_key_file(env)
    if key_file:
        findings.append(Check("gcp", Verdict.ERROR,
                              f"GOOGLE_APPLICATION_CREDENTIALS points at a service-account key file ({key_file})",
                              {"fix": "remove the variable and the mounted key, then delete the key in IAM; on GKE "
                                      "the pod gets its Google service account through Workload Identity"}))
    return findings


def google_key_file(env: Mapping[str, str]) -> str | None:
    """The path GOOGLE_APPLICATION_CREDENTIALS names when it holds a service-account key (a static credential)."""
    path = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.loads(handle.read(1_000_000))
    except (OSError, ValueError):
        return None
    return path if isinstance(data, dict) and data.get("type") == "service_account" else None


def token_claims(token: str) -> dict[str, object]:
    """A JWT access token's claims, read without verifying it: doctor reports who it is, not whether to trust it."""
    try:
        payload = token.split(".")[1]
        decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return decoded if isinstance(decoded, dict) else {}


def check_azure(env: Mapping[str, str]) -> Check:
    """Ask DefaultAzureCredential for a token, as application code would, and say whose it is."""
    if not any(env.get(k) for k in (*AZURE_WORKLOAD_VARS[:3], *STATIC_AZURE_SECRETS)):
        return Check("azure", Verdict.SKIPPED, "no Azure identity is configured in this pod",
                     {"hint": "pods get workload identity variables when labelled azure.workload.identity/use "
                              "and created after their service account has the client-id annotation"})
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import CredentialUnavailableError, DefaultAzureCredential

    details: dict[str, str] = {}
    missing = [k for k in AZURE_WORKLOAD_VARS[:3] if not env.get(k)]
    if missing and not any(env.get(k) for k in STATIC_AZURE_SECRETS):
        return Check("azure", Verdict.ERROR, f"workload identity is incomplete: {', '.join(missing)} not set",
                     {"hint": "the service account needs the azure.workload.identity/client-id annotation and "
                              "the pod the label azure.workload.identity/use: \"true\"; then restart the pod"})
    scope = env.get("KEYLESS_DOCTOR_AZURE_SCOPE", AZURE_DEFAULT_SCOPE)
    try:
        credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
        token = credential.get_token(scope)
    except (ClientAuthenticationError, CredentialUnavailableError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Check("azure", Verdict.ERROR, f"DefaultAzureCredential failed: {first}", details)
    claims = token_claims(token.token)
    for claim in ("oid", "appid", "azp", "tid"):
        if claims.get(claim):
            details[claim] = str(claims[claim])
    details["method"] = "workload identity" if env.get("AZURE_FEDERATED_TOKEN_FILE") else "client secret/certificate"
    who = details.get("appid") or details.get("azp") or "?"
    verdict = Verdict.OK if env.get("AZURE_FEDERATED_TOKEN_FILE") else Verdict.WARNING
    return Check("azure", verdict, f"Azure identity client {who} (object {details.get('oid', '?')}) "
                                   f"via {details['method']}", details)


def check_aws(env: Mapping[str, str]) -> Check:
    """Resolve the default boto3 chain the way application code would, then ask STS who we are."""
    import boto3
    import botocore.exceptions

    configured = any(env.get(k) for k in (*POD_IDENTITY_VARS, *IRSA_VARS, *STATIC_AWS_KEYS, "AWS_PROFILE"))
    if not configured:
        return Check("aws", Verdict.SKIPPED, "no AWS identity is configured in this pod",
                     {"hint": "pods get Pod Identity variables only when created after the association exists"})
    details: dict[str, str] = {}
    if env.get(POD_IDENTITY_VARS[0]):
        details["podIdentityEndpoint"] = env[POD_IDENTITY_VARS[0]]
    if all(env.get(k) for k in IRSA_VARS):
        details["irsaRole"] = env[IRSA_VARS[0]]
    try:
        session = boto3.Session()
        credentials = session.get_credentials()
        if credentials is None:
            return Check("aws", Verdict.ERROR, "the default AWS credential chain found no credentials", details)
        details["method"] = credentials.method
        identity = session.client("sts").get_caller_identity()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        return Check("aws", Verdict.ERROR, f"the default AWS credential chain failed: {exc}", details)
    details["arn"] = identity["Arn"]
    details["account"] = identity["Account"]
    verdict = Verdict.OK if credentials.method == "container-role" else Verdict.WARNING
    summary = f"AWS identity {identity['Arn']} (via {credentials.method})"
    if verdict is Verdict.WARNING:
        summary += "; expected EKS Pod Identity (container-role)"
    return Check("aws", verdict, summary, details)


def _metadata_server_answers() -> bool:
    """A quick look for GKE's metadata server at its fixed address (one short try: off GKE nothing answers)."""
    import requests

    try:
        response = requests.get(METADATA_PING, headers={"Metadata-Flavor": "Google"}, timeout=0.5)
    except requests.RequestException:
        return False
    return response.headers.get("Metadata-Flavor") == "Google"


def check_gcp(env: Mapping[str, str], metadata_answers: Callable[[], bool] = _metadata_server_answers) -> Check:
    """Resolve google.auth.default() as application code would, get a token, and say whose it is."""
    if not any(env.get(k) for k in GOOGLE_HINT_VARS) and not metadata_answers():
        return Check("gcp", Verdict.SKIPPED, "no Google identity is configured in this pod",
                     {"hint": "on GKE, pods reach the metadata server when their node pool runs GKE_METADATA"})
    import google.auth
    from google.auth import exceptions as auth_errors
    from google.auth.transport.requests import Request

    details: dict[str, str] = {}
    try:
        credentials, project = google.auth.default(scopes=[GOOGLE_SCOPE])
        module = type(credentials).__module__
        details["method"] = ("GKE metadata server" if module.startswith("google.auth.compute_engine")
                             else module.removeprefix("google.").removeprefix("auth."))
        if project:
            details["project"] = project
        credentials.refresh(Request())  # type: ignore[no-untyped-call]
    except auth_errors.GoogleAuthError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Check("gcp", Verdict.ERROR, f"google.auth.default() failed: {first}",
                     {**details, "hint": "on GKE both halves are needed: roles/iam.workloadIdentityUser for the "
                                         "Kubernetes service account on the Google service account, and the "
                                         "iam.gke.io/gcp-service-account annotation; `keyless status` shows "
                                         "which is missing"})
    email = str(getattr(credentials, "service_account_email", "") or "")
    if email:
        details["email"] = email
    if google_key_file(env):
        return Check("gcp", Verdict.ERROR, f"Google identity {email or '?'} from a service-account key file", details)
    if email.endswith(".svc.id.goog"):
        return Check("gcp", Verdict.WARNING,
                     f"workload identity pool {email} only: no Google service account is annotated on this pod's "
                     "Kubernetes service account", details)
    if details["method"] == "GKE metadata server":
        return Check("gcp", Verdict.OK, f"Google service account {email or '?'} via the GKE metadata server",
                     details)
    return Check("gcp", Verdict.WARNING, f"Google identity {email or '?'} via {details['method']}; expected the "
                                         "GKE metadata server (Workload Identity)", details)


def run_checks(env: Mapping[str, str], metadata_answers: Callable[[], bool] = _metadata_server_answers) -> list[Check]:
    return [*static_key_findings(env), check_aws(env), check_azure(env), check_gcp(env, metadata_answers)]
