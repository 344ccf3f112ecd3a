"""Google's OAuth side in the sandbox: the JWT-bearer token endpoint, the access tokens it and STS issue, tokeninfo."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from keyless.sandbox.gcp.state import GcpError, GcpState, ServiceAccount

__all__ = [
    "CLOUD_PLATFORM_SCOPE",
    "JWT_BEARER",
    "AccessTokens",
    "Caller",
    "OAuthError",
    "exchange_jwt_bearer",
]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
TOKEN_LIFETIME = 3600
GOOGLE_TOKEN_URIS = ("https://oauth2.googleapis.com/token", "https://accounts.google.com/o/oauth2/token",
                     "https://www.googleapis.com/oauth2/v4/token")
_CLOCK_SKEW = 300  # seconds of difference Google tolerates between the client's clock and its own


class OAuthError(Exception):
    """An OAuth endpoint failure in the form Google's token endpoints answer: {"error", "error_description"}."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True)
class Caller:
    """Who an access token stands for: a service account (`email` set) or a federated Kubernetes identity."""

    member: str  # as IAM policies name it: serviceAccount:EMAIL or serviceAccount:POOL[NS/KSA]
    email: str  # empty for a federated identity
    scopes: tuple[str, ...]
    expires_at: float  # wall-clock seconds, like the expiry Google states

    @property
    def federated(self) -> bool:
        return not self.email


class AccessTokens:
    """Opaque bearer tokens ("ya29." like Google's) and whom they stand for; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, Caller] = {}

    def issue(self, member: str, email: str, scopes: tuple[str, ...], lifetime: int = TOKEN_LIFETIME
              ) -> tuple[str, Caller]:
        token = f"ya29.sandbox-{secrets.token_urlsafe(48)}"
        caller = Caller(member, email, scopes, time.time() + lifetime)
        with self._lock:
            now = time.time()
            # Drop expired tokens as new ones come, so a long-running sandbox does not grow without bound.
            self._tokens = {t: c for t, c in self._tokens.items() if c.expires_at > now}
            self._tokens[token] = caller
        return token, caller

    def lookup(self, token: str) -> Caller | None:
        with self._lock:
            caller = self._tokens.get(token)
        return caller if caller is not None and caller.expires_at > time.time() else None

    def caller(self, authorization: str | None) -> Caller:
        """The caller of an API request; Google's 401 when the bearer token is missing, unknown or expired."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise GcpError(401, "UNAUTHENTICATED", "Request is missing required authentication credential. Expected "
                           "OAuth 2 access token, login cookie or other valid authentication credential. See "
                           "https://developers.google.com/identity/sign-in/web/devconsole-project.",
                           headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'})
        caller = self.lookup(token.strip())
        if caller is None:
            raise GcpError(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 "
                           "access token, login cookie or other valid authentication credential. See "
                           "https://developers.google.com/identity/sign-in/web/devconsole-project.",
                           headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", '
                                                        'error="invalid_token"'})
        return caller

    def token_info(self, token: str, client_id: str) -> dict[str, Any]:
        """What https://oauth2.googleapis.com/tokeninfo tells about a service account's access token."""
        caller = self.lookup(token)
        if caller is None or caller.federated:
            raise OAuthError("invalid_token", "Invalid Value")
        remaining = max(0, int(caller.expires_at - time.time()))
        return {"azp": client_id, "aud": client_id, "scope": " ".join(caller.scopes),
                "exp": str(int(caller.expires_at)), "expires_in": str(remaining), "email": caller.email,
                "email_verified": "true", "access_type": "online"}


def _verified_claims(account: ServiceAccount, assertion: str, header: Mapping[str, Any]) -> dict[str, Any]:
    keys = [k for k in account.keys if k.public_pem and header.get("kid") in (None, k.key_id)]
    for key in keys:
        public = serialization.load_pem_public_key(key.public_pem.encode())
        try:
            claims: dict[str, Any] = jwt.decode(assertion, public, algorithms=["RS256"],  # type: ignore[arg-type]
                                                options={"verify_aud": False, "verify_exp": False,
                                                         "verify_iat": False, "verify_nbf": False})
        except jwt.PyJWTError:
            continue
        return claims
    raise OAuthError("invalid_grant", "Invalid JWT Signature.")


def exchange_jwt_bearer(state: GcpState, tokens: AccessTokens, form: Mapping[str, str], token_uri: str
                        ) -> dict[str, Any]:
    """The token endpoint's answer to a service account's signed assertion (RFC 7523), as Google gives it."""
    grant = form.get("grant_type", "")
    if grant != JWT_BEARER:
        raise OAuthError("unsupported_grant_type", f"Invalid grant_type: {grant}")
    assertion = form.get("assertion", "")
    try:
        header = jwt.get_unverified_header(assertion)
        unverified: dict[str, Any] = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise OAuthError("invalid_request", "Invalid JWT: the assertion could not be parsed.") from None
    issuer = str(unverified.get("iss", ""))
    account = state.find_service_account(issuer) if issuer else None
    if account is None or account.disabled:
        raise OAuthError("invalid_grant", "Invalid grant: account not found")
    claims = _verified_claims(account, assertion, header)
    # google-auth puts Google's own token URL in `aud` whatever the key file's token_uri: Google accepts its
    # token URLs, the sandbox its own as well.
    if claims.get("aud") not in (token_uri, *GOOGLE_TOKEN_URIS):
        raise OAuthError("invalid_grant", f"Invalid JWT: Failed audience check. The right audience is {token_uri}")
    now = time.time()
    try:
        issued, expires = float(claims["iat"]), float(claims["exp"])
    except (KeyError, TypeError, ValueError):
        raise OAuthError("invalid_grant", "Invalid JWT: iat and exp are required.") from None
    if expires <= now - _CLOCK_SKEW or issued > now + _CLOCK_SKEW or expires - issued > TOKEN_LIFETIME:
        raise OAuthError("invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                         "reasonable timeframe. Check your iat and exp values in the JWT claim.")
    scopes = tuple(str(claims.get("scope") or "").split())
    if not scopes:
        # Google refuses a service account assertion that asks for nothing (google.auth.default() without scopes).
        raise OAuthError("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
    token, _ = tokens.issue(f"serviceAccount:{account.email}", account.email, scopes)
    return {"access_token": token, "expires_in": TOKEN_LIFETIME, "token_type": "Bearer"}
