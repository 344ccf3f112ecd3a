"""Security Token Service and IAM Credentials in the GCP sandbox: Kubernetes tokens exchanged, GSAs impersonated."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt

from keyless.sandbox.gcp.oauth import CLOUD_PLATFORM_SCOPE, TOKEN_LIFETIME, AccessTokens, Caller, OAuthError
from keyless.sandbox.gcp.state import (
    IMPERSONATION_ROLES,
    GcpError,
    GcpState,
    ServiceAccount,
    permission_denied,
    workload_pool,
)

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "JWT_TOKEN_TYPE",
    "TOKEN_EXCHANGE",
    "IssuerKeys",
    "access_token_request",
    "exchange_subject_token",
    "impersonation_grant",
    "mint_for_service_account",
    "sts_parameters",
]

# What STS asks the stack for: the JWKS of an issuer, given its URL byte for byte; None if unknown.
IssuerKeys = Callable[[str], Mapping[str, Any] | None]

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
_SUBJECT = re.compile(r"^system:serviceaccount:([^:]+):([^:]+)$")
_CAMEL = {"grantType": "grant_type", "subjectToken": "subject_token", "subjectTokenType": "subject_token_type",
          "requestedTokenType": "requested_token_type"}
_LIFETIME = re.compile(r"^(\d+)(\.\d+)?s$")
_GET_ACCESS_TOKEN = "iam.serviceAccounts.getAccessToken"


def sts_parameters(raw: Mapping[str, Any]) -> dict[str, str]:
    """STS takes a form (snake_case) or JSON (camelCase, or the proto's snake_case names): one shape for both."""
    found: dict[str, str] = {}
    for key, value in raw.items():
        if value is None:
            continue
        found[_CAMEL.get(key, key)] = " ".join(value) if isinstance(value, list) else str(value)
    return found


def _invalid_target() -> OAuthError:
    return OAuthError("invalid_target", 'The target service indicated by the "audience" parameters is invalid. This '
                      "might either be because the pool or provider is disabled or deleted or because it doesn't "
                      "exist.")


def exchange_subject_token(state: GcpState, tokens: AccessTokens, issuer_keys: IssuerKeys | None,
                           params: Mapping[str, str]) -> dict[str, Any]:
    """STS v1/token for GKE: a Kubernetes service-account JWT in, a federated access token for its KSA member out."""
    if params.get("grant_type") != TOKEN_EXCHANGE:
        raise OAuthError("unsupported_grant_type", f'Invalid value for "grant_type": {params.get("grant_type")!r}. '
                         f"Expected: {TOKEN_EXCHANGE}.")
    if params.get("subject_token_type") not in (JWT_TOKEN_TYPE, ID_TOKEN_TYPE):
        raise OAuthError("invalid_request", f'Invalid value for "subject_token_type": '
                         f"{params.get('subject_token_type')!r}. Expected: {JWT_TOKEN_TYPE}.")
    if params.get("requested_token_type", ACCESS_TOKEN_TYPE) != ACCESS_TOKEN_TYPE:
        raise OAuthError("invalid_request", f'Invalid value for "requested_token_type". Expected: {ACCESS_TOKEN_TYPE}.')
    subject_token = params.get("subject_token", "")
    if not subject_token:
        raise OAuthError("invalid_request", 'The "subject_token" parameter is required.')
    prefix, _, rest = params.get("audience", "").partition(":")
    pool, _, issuer = rest.partition(":")
    cluster = state.cluster_by_issuer(issuer)
    if prefix != "identitynamespace" or not state.pool_exists(pool) or cluster is None \
            or not cluster.workload_identity or workload_pool(cluster.project_id) != pool:
        raise _invalid_target()
    try:
        header = jwt.get_unverified_header(subject_token)
        unverified: dict[str, Any] = jwt.decode(subject_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise OAuthError("invalid_grant", "Unable to parse the ID Token.") from None
    if unverified.get("iss") != issuer:
        raise OAuthError("invalid_grant", f"The issuer in ID Token {unverified.get('iss')} does not match the "
                         f"expected ISSUER {issuer}.")
    claims = _verified(subject_token, header, issuer, issuer_keys)
    audiences = claims.get("aud")
    audiences = [audiences] if isinstance(audiences, str) else list(audiences or [])
    if pool not in audiences:
        raise OAuthError("invalid_grant", f"The audience in ID Token {audiences} does not match the expected "
                         f"audience {pool}.")
    remaining = float(claims.get("exp", 0)) - time.time()
    if remaining <= 0:
        raise OAuthError("invalid_grant", "The ID Token has expired.")
    subject = _SUBJECT.match(str(claims.get("sub", "")))
    if subject is None:
        raise OAuthError("invalid_grant", f"The subject {claims.get('sub')!r} of the ID Token is not a Kubernetes "
                         "service account.")
    member = f"serviceAccount:{pool}[{subject[1]}/{subject[2]}]"
    lifetime = int(min(TOKEN_LIFETIME, remaining))
    scopes = tuple(params.get("scope", CLOUD_PLATFORM_SCOPE).split())
    token, _ = tokens.issue(member, "", scopes, lifetime)
    return {"access_token": token, "issued_token_type": ACCESS_TOKEN_TYPE, "token_type": "Bearer",
            "expires_in": lifetime}


def _verified(token: str, header: Mapping[str, Any], issuer: str, issuer_keys: IssuerKeys | None) -> dict[str, Any]:
    try:
        keys = issuer_keys(issuer) if issuer_keys is not None else None
    except Exception:  # a broken lookup is an unreachable issuer to STS, not a crash of the endpoint
        keys = None
    if not keys:
        raise OAuthError("invalid_grant", f"Unable to fetch the public keys of the issuer {issuer}.")
    try:
        key_set = jwt.PyJWKSet.from_dict(dict(keys))
    except jwt.PyJWTError:
        raise OAuthError("invalid_grant", f"The public keys of the issuer {issuer} could not be read.") from None
    for candidate in [k for k in key_set.keys if header.get("kid") in (None, k.key_id)] or key_set.keys:
        try:
            claims: dict[str, Any] = jwt.decode(token, candidate.key, algorithms=["RS256"],
                                                options={"verify_aud": False, "verify_exp": False,
                                                         "verify_iat": False, "verify_nbf": False})
        except jwt.PyJWTError:
            continue
        return claims
    raise OAuthError("invalid_grant", "The ID Token's signature could not be verified with the issuer's keys.")


def impersonation_grant(state: GcpState, member: str, account: ServiceAccount) -> tuple[bool, bool]:
    """(granted, propagated): whether `member` may mint tokens for `account`, on it or on its project."""
    return state.holds((account.resource, f"projects/{account.project_id}"), member, IMPERSONATION_ROLES)


def mint_for_service_account(state: GcpState, tokens: AccessTokens, caller: Caller, account: ServiceAccount,
                             scopes: tuple[str, ...], lifetime: int = TOKEN_LIFETIME, *,
                             permitted: bool = False) -> tuple[str, Caller]:
    """generateAccessToken: the caller needs the permission (or an impersonation role that has propagated)."""
    if not permitted and not impersonation_grant(state, caller.member, account)[1]:
        raise permission_denied(_GET_ACCESS_TOKEN, account.resource)
    if account.disabled:
        raise GcpError(400, "FAILED_PRECONDITION", "Precondition check failed.")
    return tokens.issue(f"serviceAccount:{account.email}", account.email, scopes, lifetime)


def access_token_request(body: Mapping[str, Any]) -> tuple[tuple[str, ...], int]:
    """The scopes and lifetime of a generateAccessToken body, checked as IAM Credentials does."""
    scopes = body.get("scope")
    if isinstance(scopes, str):
        scopes = [scopes]
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) and s for s in scopes):
        raise GcpError(400, "INVALID_ARGUMENT", "Scope required.")
    lifetime = TOKEN_LIFETIME
    if body.get("lifetime") is not None:
        match = _LIFETIME.match(str(body["lifetime"]))
        if match is None:
            raise GcpError(400, "INVALID_ARGUMENT", f"Invalid value at 'lifetime' (type.googleapis.com/"
                           f"google.protobuf.Duration), Field 'lifetime', Illegal duration format; duration must end "
                           f"with 's': {body['lifetime']}")
        lifetime = int(match[1])
        if not 0 < lifetime <= TOKEN_LIFETIME:
            raise GcpError(400, "INVALID_ARGUMENT", "The lifetime requested is not valid: it must be between 1s "
                           "and 3600s (longer needs the iam.allowServiceAccountCredentialLifetimeExtension "
                           "organization policy).")
    if body.get("delegates"):
        raise GcpError(400, "INVALID_ARGUMENT", "Delegation chains are not supported by the keyless sandbox.")
    return tuple(scopes), lifetime
