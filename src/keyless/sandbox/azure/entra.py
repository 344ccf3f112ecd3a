"""The Entra ID stand-in: the v2.0 token endpoint for federated client assertions, and the tokens ARM accepts."""

from __future__ import annotations

import base64
import hashlib
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keyless.sandbox.azure.oidc import IssuerDirectory, IssuerFetcher
from keyless.sandbox.azure.state import ArmError, AzureState, Identity
from keyless.sandbox.knobs import Call, Denied, Knobs, Refusal, Throttled, Verdict
from keyless.sandbox.knobs_http import knob_routes, serve_call

__all__ = [
    "ARM_AUDIENCES",
    "CLIENT_ASSERTION_TYPE",
    "EntraStandIn",
]

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# The audiences ARM accepts in a token, whichever of its identifier URIs the client asked for.
ARM_AUDIENCES = (
    "https://management.azure.com",
    "https://management.azure.com/",
    "https://management.core.windows.net",
    "https://management.core.windows.net/",
)
_WORKLOAD_IDENTITY_DOCS = "https://learn.microsoft.com/entra/workload-id/workload-identity-federation"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _EntraDialect:
    """The token endpoint's answers to throttled and failed requests: OAuth errors with their AADSTS numbers."""

    def __init__(self, entra: EntraStandIn, request: web.Request) -> None:
        self.entra, self.request = entra, request

    def refuse(self, refusal: Refusal, call: Call) -> web.StreamResponse:
        if isinstance(refusal, Denied):  # not reached: token requests name no action
            return self.entra._error_response(self.request, _AadError("unauthorized_client", 700016, "Denied."))
        if isinstance(refusal, Throttled) or refusal.status == 429:
            response = self.entra._error_response(self.request, _AadError(
                "temporarily_unavailable", 90055, "TenantThrottlingError: There are too many incoming requests. "
                "Please retry later.", 429))
            response.headers["Retry-After"] = refusal.retry_after or "1"
            return response
        return self.entra._error_response(self.request, _AadError(
            "temporarily_unavailable", 90033, "A transient error has occurred. Please try again.", refusal.status))

    def lost(self, call: Call) -> web.StreamResponse:
        return self.entra._error_response(self.request, _AadError(
            "temporarily_unavailable", 90033, "A transient error has occurred. Please try again.", 500))

    def decorate(self, response: web.StreamResponse, verdict: Verdict) -> None:
        return None


def _timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%d %H:%M:%SZ")


class _AadError(Exception):
    """An Entra token-endpoint failure: OAuth error, AADSTS number and text, and the HTTP status."""

    def __init__(self, error: str, code: int, text: str, status: int = 400) -> None:
        super().__init__(f"AADSTS{code}: {text}")
        self.error, self.code, self.text, self.status = error, code, text, status


class EntraStandIn:
    """Signs access tokens with its own RSA key, and exchanges federated assertions for them like Entra ID."""

    def __init__(
        self,
        state: AzureState,
        *,
        token_lifetime: int = 3600,
        knobs: Knobs | None = None,
    ) -> None:
        self.knobs = knobs or Knobs("entra")
        self.state = state
        self.token_lifetime = token_lifetime
        self.authority_url = ""  # set once the server has its port
        self.arm_url = ""
        # The issuers this front hosts (AKS clusters', the sandbox's own), and how Entra fetches any issuer's keys.
        self.issuers = IssuerDirectory()
        self.fetcher = IssuerFetcher(self.issuers, self._address)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = self._key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        # Entra's kid and x5t are the certificate thumbprint; a hash of the public key plays that part here.
        self.key_id = _b64url(hashlib.sha1(der).digest())

    # ---- keys and documents ------------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        numbers = self._key.public_key().public_numbers()
        return {"keys": [{
            "kty": "RSA", "use": "sig", "kid": self.key_id, "x5t": self.key_id, "alg": "RS256",
            "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": _b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
            "issuer": f"{self.authority_url}{{tenantid}}/v2.0",
        }]}

    def openid_configuration(self, tenant: str) -> dict[str, Any]:
        base = f"{self.authority_url}{tenant}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{self.authority_url}{tenant}/discovery/v2.0/keys",
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "issuer": f"{base}/v2.0",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "tenant_region_scope": "NA",
            "cloud_instance_name": "microsoftonline.com",
        }

    def _address(self) -> tuple[str, int]:
        """Where this front listens: what the issuer hosts it serves resolve to."""
        parts = urllib.parse.urlsplit(self.authority_url)
        return parts.hostname or "127.0.0.1", parts.port or 443

    # ---- access tokens ------------------------------------------------------------------------------

    def mint_access_token(self, identity: Identity, resource: str, *, lifetime: int | None = None) -> tuple[str, int]:
        """A v1 access token for `identity` with the claims Entra puts in a managed identity's token."""
        now = int(time.time())
        expires_in = self.token_lifetime if lifetime is None else lifetime
        sts = f"https://sts.windows.net/{identity.tenant_id}/"
        claims = {
            "aud": resource, "iss": sts, "iat": now, "nbf": now, "exp": now + expires_in,
            "aio": _b64url(uuid.uuid4().bytes), "appid": identity.client_id, "appidacr": "2",
            "azp": identity.client_id, "azpacr": "2", "idp": sts, "idtyp": "app",
            "oid": identity.principal_id, "sub": identity.principal_id, "tid": identity.tenant_id,
            "rh": _b64url(uuid.uuid4().bytes), "uti": _b64url(uuid.uuid4().bytes)[:22], "ver": "1.0",
            "xms_mirid": identity.id,
        }
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.key_id, "x5t": self.key_id})
        return token, expires_in

    def verify_arm_token(self, authorization: str | None) -> dict[str, Any]:
        """The claims of the bearer token on an ARM request; ARM's 401 answers when it is missing or not valid."""
        if not authorization:
            raise self._unauthorized("AuthenticationFailed", "Authentication failed. The 'Authorization' header is "
                                     "missing.", "The authentication failed because of missing 'Authorization' header.")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise self._unauthorized("AuthenticationFailedInvalidHeader", "Authentication failed. The 'Authorization' "
                                     "header is provided in an invalid format.", "The access token is invalid.")
        try:
            claims: dict[str, Any] = jwt.decode(token.strip(), self._key.public_key(), algorithms=["RS256"],
                                                options={"verify_aud": False, "verify_exp": False,
                                                         "require": ["exp", "aud", "tid"]})
        except jwt.PyJWTError:
            raise self._unauthorized("InvalidAuthenticationToken", "The access token is invalid.",
                                     "The access token is invalid.") from None
        now = time.time()
        if float(claims["exp"]) <= now:
            expiry = datetime.fromtimestamp(float(claims["exp"]), UTC).strftime("%m/%d/%Y %H:%M:%S")
            current = datetime.fromtimestamp(now, UTC).strftime("%m/%d/%Y %H:%M:%S")
            raise self._unauthorized("ExpiredAuthenticationToken", f"The access token expiry UTC time '{expiry}' is "
                                     f"earlier than current UTC time '{current}'.", "The access token has expired.")
        allowed = (*ARM_AUDIENCES, self.arm_url, f"{self.arm_url}/")
        if claims["aud"] not in allowed:
            listed = ",".join(f"'{a}'" for a in ARM_AUDIENCES)
            raise self._unauthorized("InvalidAuthenticationTokenAudience",
                                     f"The access token has been obtained for wrong audience or resource "
                                     f"'{claims['aud']}'. It should exactly match with one of the allowed audiences "
                                     f"{listed}.", "The access token has been obtained for wrong audience.")
        if str(claims["tid"]).lower() != self.state.tenant_id.lower():
            raise self._unauthorized("InvalidAuthenticationTokenTenant",
                                     f"The access token is from the wrong issuer 'https://sts.windows.net/"
                                     f"{claims['tid']}/'. It must match the tenant 'https://sts.windows.net/"
                                     f"{self.state.tenant_id}/' associated with this subscription. Please use the "
                                     f"authority (URL) '{self.authority_url}{self.state.tenant_id}' to get the token.",
                                     "The access token is from the wrong issuer.")
        return claims

    def _unauthorized(self, code: str, message: str, description: str) -> ArmError:
        challenge = (f'Bearer authorization_uri="{self.authority_url}{self.state.tenant_id}", '
                     f'error="invalid_token", error_description="{description}"')
        return ArmError(401, code, message, {"WWW-Authenticate": challenge})

    # ---- the token endpoint ---------------------------------------------------------------------------

    async def exchange(self, tenant: str, form: Mapping[str, str]) -> dict[str, Any]:
        """Answer a client-credentials request carrying a federated assertion, or raise _AadError like Entra."""
        if tenant.lower() != self.state.tenant_id.lower():
            raise _AadError("invalid_request", 90002,
                            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
                            "signing into the correct cloud. Check with your subscription administrator, this may "
                            "happen if there are no active subscriptions for the tenant.")
        grant = form.get("grant_type", "")
        if grant != "client_credentials":
            raise _AadError("unsupported_grant_type", 70003,
                            f"The app requested an unsupported grant type '{grant}'. This sandbox supports "
                            "client_credentials with a federated client assertion.")
        client_id = form.get("client_id", "")
        identity = self.state.identity_by_client_id(client_id) if client_id else None
        if identity is None:
            raise _AadError("unauthorized_client", 700016,
                            f"Application with identifier '{client_id}' was not found in the directory "
                            f"'{self.state.tenant_id}'. This can happen if the application has not been installed by "
                            "the administrator of the tenant or consented to by any user in the tenant. You may have "
                            "sent your authentication request to the wrong tenant.")
        assertion = form.get("client_assertion", "")
        if not assertion or form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            raise _AadError("invalid_client", 7000218, "The request body must contain the following parameter: "
                            "'client_assertion' or 'client_secret'.", status=401)
        resource = self._resource(form.get("scope", ""))
        await self._verified_assertion(identity, assertion)
        token, expires_in = self.mint_access_token(identity, resource)
        return {"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in,
                "access_token": token}

    @staticmethod
    def _resource(scope: str) -> str:
        scopes = scope.split()
        if not scopes:
            raise _AadError("invalid_request", 90014, "The required field 'scope' is missing from the credential. "
                            "Ensure that you have all the necessary parameters for the login request.")
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            raise _AadError("invalid_scope", 1002012,
                            f"The provided value for scope {scope} is not valid. Client credential flows must have "
                            "a scope value with /.default suffixed to the resource identifier (application ID URI).")
        return scopes[0][: -len("/.default")]

    async def _verified_assertion(self, identity: Identity, assertion: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(assertion)
            claims: dict[str, Any] = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _AadError("invalid_request", 50027, "JWT token is invalid or malformed.") from None
        issuer, subject = str(claims.get("iss", "")), str(claims.get("sub", ""))
        raw_aud = claims.get("aud", [])
        audiences = [raw_aud] if isinstance(raw_aud, str) else [str(a) for a in raw_aud or []]
        self._match_record(identity, issuer, subject, audiences)
        kid = header.get("kid")
        keys = await self.fetcher.keys(issuer, kid if isinstance(kid, str) else None)
        if not keys:
            # Entra could not fetch the issuer's discovery document or keys (AADSTS90061, invalid_request).
            raise _AadError("invalid_request", 90061, "Request to External OIDC endpoint failed.")
        try:
            key_set = jwt.PyJWKSet.from_dict(dict(keys))
            candidates = [k for k in key_set.keys if header.get("kid") in (None, k.key_id)] or list(key_set.keys)
        except jwt.PyJWTError:
            raise _AadError("invalid_request", 90061, "Request to External OIDC endpoint failed.") from None
        for candidate in candidates:
            try:
                jwt.decode(assertion, candidate.key, algorithms=["RS256"],
                           options={"verify_aud": False, "verify_exp": False, "verify_nbf": False,
                                    "verify_iat": False})
                break
            except jwt.PyJWTError:
                continue
        else:
            raise _AadError("invalid_client", 700027, f"Client assertion failed signature validation. "
                            f"Key id: '{header.get('kid')}'. Issuer: '{issuer}'.")
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
        if not isinstance(exp, int | float) or exp <= now or (isinstance(nbf, int | float) and nbf > now + 300):
            def show(value: Any) -> str:
                if not isinstance(value, int | float):
                    return "(none)"
                return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
            raise _AadError("invalid_client", 700024,
                            f"Client assertion is not within its valid time range. Current time: {show(now)}, "
                            f"assertion valid from {show(nbf)}, expiry time of assertion {show(exp)}. Review the "
                            "documentation at https://docs.microsoft.com/azure/active-directory/develop/"
                            "active-directory-certificate-credentials .")
        return claims

    def _match_record(self, identity: Identity, issuer: str, subject: str, audiences: list[str]) -> None:
        """Find the federated identity record for the assertion, or refuse with the code Entra uses.

        Matching is exact and case-sensitive. What Entra's token plane holds is what it compares with: a credential
        written but not propagated yet (or flapping back) is not there, and an assertion it would match gets the
        generic AADSTS70021, the one worth waiting on. Against the records that are there, an issuer none of them
        names is AADSTS700211, a subject none of that issuer's names AADSTS700213 (AADSTS7002138 when only the case
        differs), and a wrong audience the generic AADSTS70021.
        """
        shown_aud = ",".join(audiences)
        generic = _AadError("invalid_request", 70021,
                            f"No matching federated identity record found for presented assertion. Assertion Issuer: "
                            f"'{issuer}'. Assertion Subject: '{subject}'. Assertion Audience: '{shown_aud}'. "
                            f"{_WORKLOAD_IDENTITY_DOCS}")
        records = self.state.trusts(identity.client_id)
        if self.state.pending(identity.client_id, issuer, subject) or not records:
            raise generic
        exact = [t for t in records if t.issuer == issuer and t.subject == subject]
        if exact:
            if not any(a in t.audiences for t in exact for a in audiences):
                raise generic
            return
        if not any(t.issuer == issuer for t in records):
            raise _AadError("invalid_client", 700211,
                            f"No matching federated identity record found for presented assertion issuer '{issuer}'. "
                            "Please check your federated identity credential Subject, Audience and Issuer against the "
                            f"presented assertion. {_WORKLOAD_IDENTITY_DOCS}")
        if any(t.issuer == issuer and t.subject.lower() == subject.lower() for t in records):
            raise _AadError("invalid_client", 7002138,
                            f"No matching federated identity record found for presented assertion subject '{subject}'. "
                            "The subject matches with case-insensitive comparison, but not with case-sensitive "
                            "comparison. Check your federated identity credential Subject, Audience and Issuer against "
                            f"the presented assertion. See documentation at: {_WORKLOAD_IDENTITY_DOCS}")
        raise _AadError("invalid_client", 700213,
                        f"No matching federated identity record found for presented assertion subject '{subject}'. "
                        "Check your federated identity credential Subject, Audience and Issuer against the presented "
                        f"assertion. {_WORKLOAD_IDENTITY_DOCS}")

    # ---- HTTP ----------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._configuration)
        app.router.add_get("/{tenant}/.well-known/openid-configuration", self._configuration)
        app.router.add_get("/{tenant}/discovery/v2.0/keys", self._keys)
        app.router.add_get("/{tenant}/discovery/keys", self._keys)
        app.router.add_get("/common/discovery/instance", self._instance_discovery)
        app.router.add_get("/{path:.*}", self._issuer_documents)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        parts = request.path.split("/")
        if parts[1:2] == ["_sandbox"]:
            answer = await knob_routes(self.knobs, request, parts[2:])
            return answer or web.json_response({"message": f"no sandbox endpoint {request.method} {request.path}"},
                                               status=404)
        operation = {"token": "token", "keys": "keys", "openid-configuration": "openid-configuration",
                     "instance": "instance-discovery"}.get(parts[-1], f"{request.method} {request.path}")
        buckets = (("entra-token", parts[1].lower()),) if operation == "token" else ()
        call = Call(request.method, request.path, operation, buckets=buckets)
        return await serve_call(self.knobs, request, call, _EntraDialect(self, request), lambda: handler(request))

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        try:
            return web.json_response(await self.exchange(request.match_info["tenant"], form),
                                     headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})
        except _AadError as failure:
            return self._error_response(request, failure)

    def _error_response(self, request: web.Request, failure: _AadError) -> web.Response:
        now = datetime.now(UTC)
        trace_id = str(uuid.uuid4())
        correlation_id = request.headers.get("client-request-id") or request.headers.get(
            "x-ms-client-request-id") or str(uuid.uuid4())
        description = (f"AADSTS{failure.code}: {failure.text}\r\nTrace ID: {trace_id}\r\n"
                       f"Correlation ID: {correlation_id}\r\nTimestamp: {_timestamp(now)}")
        body = {
            "error": failure.error,
            "error_description": description,
            "error_codes": [failure.code],
            "timestamp": _timestamp(now),
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{self.authority_url}error?code={failure.code}",
        }
        return web.json_response(body, status=failure.status, headers={
            "Cache-Control": "no-store, no-cache", "Pragma": "no-cache", "x-ms-request-id": trace_id,
            "client-request-id": correlation_id, "x-ms-clitelem": f"1,{failure.code},0,,",
        })

    async def _configuration(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        if tenant.lower() not in (self.state.tenant_id.lower(), "common", "organizations"):
            return web.json_response({"error": "invalid_tenant", "error_description":
                                      f"AADSTS90002: Tenant '{tenant}' not found."}, status=400)
        return web.json_response(self.openid_configuration(tenant))

    async def _keys(self, request: web.Request) -> web.Response:
        return web.json_response(self.jwks())

    async def _instance_discovery(self, request: web.Request) -> web.Response:
        host = self.authority_url.split("://", 1)[-1].rstrip("/")
        authority = request.query.get("authorization_endpoint", f"{self.authority_url}common/oauth2/authorize")
        return web.json_response({
            "tenant_discovery_endpoint": authority.replace("oauth2/authorize", "v2.0/.well-known/openid-configuration")
            .replace("oauth2/v2.0/authorize", "v2.0/.well-known/openid-configuration"),
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        })

    async def _issuer_documents(self, request: web.Request) -> web.Response:
        # The issuer host: AKS clusters' issuers (by their own host name) and the sandbox's own, by URL.
        document = self.issuers.document(f"https://{request.host}{request.path}")
        if document is None:
            return web.json_response({"error": "not_found", "error_description": f"no such document {request.path}"},
                                     status=404)
        return web.json_response(document)
