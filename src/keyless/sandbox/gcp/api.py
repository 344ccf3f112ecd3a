"""The GCP sandbox's HTTPS front: IAM, GKE, Resource Manager, STS, IAM Credentials and OAuth on one port."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from keyless.sandbox.gcp.oauth import AccessTokens, Caller, OAuthError, exchange_jwt_bearer
from keyless.sandbox.gcp.state import (
    BASIC_ROLE_PERMISSIONS,
    Cluster,
    GcpError,
    GcpState,
    Project,
    ServiceAccount,
    invalid_argument,
    permission_denied,
    rfc3339,
)
from keyless.sandbox.gcp.sts import (
    IssuerKeys,
    access_token_request,
    exchange_subject_token,
    mint_for_service_account,
    sts_parameters,
)
from keyless.sandbox.knobs import Call, Denied, Knobs, Refusal, Throttled, Verdict
from keyless.sandbox.knobs_http import knob_routes, serve_call

__all__ = ["API_PREFIXES", "GcpApiStandIn", "Interleaved", "gcp_call"]

# The path prefix of each API on the one HTTPS port; env() turns them into gcloud's endpoint overrides.
API_PREFIXES = {"IAM": "iam", "CONTAINER": "container", "CLOUDRESOURCEMANAGER": "crm", "STS": "sts",
                "IAMCREDENTIALS": "iamcredentials"}
_JSON = dict[str, Any]
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                 409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
                 504: "DEADLINE_EXCEEDED"}
_FAULT_MESSAGES = {
    429: "Quota exceeded for quota metric '{kind} requests' and limit '{kind} requests per minute' of service "
         "'{api}.googleapis.com' for consumer 'project_number:{number}'.",
    503: "The service is currently unavailable.",
    500: "Internal error encountered.",
}
_OAUTH_FAULTS = {429: "rate_limit_exceeded", 503: "temporarily_unavailable"}
_SA_ETAG = "MDEwMjE5MjA="  # IAM gives every service account this etag
_GKE_VERSION = "1.31.5-gke.1233000"
_SA_PATH = re.compile(r"^v1/projects/([^/]+)/serviceAccounts/([^/:]+)(:getIamPolicy|:setIamPolicy|/keys)?$")
_CLUSTER_PATH = re.compile(r"^v1/projects/([^/]+)/(?:locations|zones)/([^/]+)/clusters/([^/:]+)$")
_PROJECT_PATH = re.compile(r"^(v1|v3)/projects/([^/:]+)(:getIamPolicy)?$")
_GENERATE_PATH = re.compile(r"^v1/projects/([^/]+)/serviceAccounts/([^/:]+):generateAccessToken$")
_KEY_TYPES = ("USER_MANAGED", "SYSTEM_MANAGED")


class Interleaved:
    """Writers a test slips in just before the next setIamPolicy on an account, so that write is stale (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._writers: dict[str, list[Callable[[], object]]] = {}

    def add(self, email: str, writer: Callable[[], object]) -> None:
        with self._lock:
            self._writers.setdefault(email.lower(), []).append(writer)

    def take(self, email: str) -> Callable[[], object] | None:
        with self._lock:
            pending = self._writers.get(email.lower())
            return pending.pop(0) if pending else None

    def clear(self) -> None:
        with self._lock:
            self._writers.clear()


_IAM_METHODS = {"": "get", ":getIamPolicy": "getIamPolicy", ":setIamPolicy": "setIamPolicy", "/keys": "keys.list"}


def gcp_call(method: str, path: str) -> Call:
    """The knobs' view of a request: Google's method id (`iam.projects.serviceAccounts.getIamPolicy`) and the IAM
    API's read and write quotas, per project."""
    if path in ("/token", "/tokeninfo"):
        return Call(method, path, f"oauth2{path.replace('/', '.')}")
    prefix, _, rest = path.lstrip("/").partition("/")
    if prefix == "sts":
        return Call(method, path, "sts.token")
    if prefix == "iam" and (match := _SA_PATH.match(rest)) is not None:
        name = _IAM_METHODS[match[3] or ""]
        write = name == "setIamPolicy"
        return Call(method, path, f"iam.projects.serviceAccounts.{name}", write=write,
                    buckets=(("gcp-iam-write" if write else "gcp-iam-read", match[1]),))
    if prefix == "container" and _CLUSTER_PATH.match(rest):
        return Call(method, path, "container.projects.locations.clusters.get")
    if prefix == "crm" and (project := _PROJECT_PATH.match(rest)) is not None:
        return Call(method, path, f"cloudresourcemanager.projects.{'getIamPolicy' if project[3] else 'get'}")
    if prefix == "iamcredentials" and _GENERATE_PATH.match(rest):
        return Call(method, path, "iamcredentials.projects.serviceAccounts.generateAccessToken")
    return Call(method, path, f"{method} {path}", buckets=())


class GcpDialect:
    """Google's answers to throttled and failed calls: 429 RESOURCE_EXHAUSTED with the google.rpc error JSON and
    Retry-After; the OAuth endpoints (token, STS) answer in OAuth's words."""

    def __init__(self, api: GcpApiStandIn, oauth: bool) -> None:
        self.api, self.oauth = api, oauth

    def refuse(self, refusal: Refusal, call: Call) -> web.StreamResponse:
        if isinstance(refusal, Denied):  # not reached: GCP checks its permissions where it knows the resource
            return self.api.render(permission_denied(refusal.action, call.path), self.oauth)
        status = 429 if isinstance(refusal, Throttled) else refusal.status
        headers = {"Retry-After": refusal.retry_after} if refusal.retry_after else {}
        return self.api.render(self.api.injected(status, call, headers), self.oauth)

    def lost(self, call: Call) -> web.StreamResponse:
        return self.api.render(GcpError(500, "INTERNAL", "Internal error encountered."), self.oauth)

    def decorate(self, response: web.StreamResponse, verdict: Verdict) -> None:
        return None


def _project_of(resource: str) -> str:
    return resource.split("/")[1] if resource.startswith("projects/") else ""


class GcpApiStandIn:
    """Routes the APIs by prefix; every API call needs a bearer token from the token endpoint or STS."""

    def __init__(self, state: GcpState, tokens: AccessTokens, knobs: Knobs, *, project_id: str,
                 deployer_email: str) -> None:
        self.state = state
        self.project_id = project_id
        self.tokens = tokens
        self.knobs = knobs
        self.interleaved = Interleaved()
        self.deployer_email = deployer_email
        self.issuer_keys: IssuerKeys | None = None
        self.url = ""  # https://127.0.0.1:PORT/, set once the server has its port

    @property
    def token_uri(self) -> str:
        return f"{self.url}token"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/{path:.*}", self._dispatch)
        return app

    # ---- the front door ------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        if request.path.startswith("/_sandbox/"):
            answer = await knob_routes(self.knobs, request, request.path.split("/")[2:])
            return answer or self.render(self._no_route(request), oauth=False)
        oauth = request.path in ("/token", "/tokeninfo") or request.path.startswith("/sts/")

        async def handle() -> web.StreamResponse:
            try:
                return await handler(request)
            except OAuthError as error:
                return web.json_response(error.body(), status=error.status, headers={"Cache-Control": "no-store"})
            except GcpError as error:
                return self.render(error, oauth)

        return await serve_call(self.knobs, request, gcp_call(request.method, request.path), GcpDialect(self, oauth),
                                handle)

    @staticmethod
    def render(error: GcpError, oauth: bool) -> web.Response:
        if oauth:
            name = _OAUTH_FAULTS.get(error.code, "server_error" if error.code >= 500 else "invalid_request")
            return web.json_response({"error": name, "error_description": error.message}, status=error.code,
                                     headers=error.headers)
        return web.json_response(error.body(), status=error.code, headers=error.headers)

    def injected(self, status: int, call: Call, headers: Mapping[str, str]) -> GcpError:
        """The error Google answers with this status; a 429 names the quota that ran out, as Google does."""
        prefix = call.path.strip("/").split("/", 1)[0]
        api = {"crm": "cloudresourcemanager", "token": "oauth2", "tokeninfo": "oauth2"}.get(prefix, prefix)
        project = self.state.find_project(self.project_id)
        number = project.number if project else "0"
        template = _FAULT_MESSAGES.get(status, "Fault injected by the keyless sandbox.")
        message = template.format(api=api, number=number, kind="Write" if call.write else "Read")
        details: list[dict[str, Any]] = []
        if status == 429:
            details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED",
                            "domain": "googleapis.com",
                            "metadata": {"service": f"{api}.googleapis.com", "consumer": f"projects/{number}",
                                         "quota_metric": f"{api}.googleapis.com/default_requests",
                                         "quota_limit": "DefaultRequestsPerMinutePerProject"}})
        return GcpError(status, STATUS_NAMES.get(status, "UNKNOWN"), message, details=details, headers=headers)

    async def _dispatch(self, request: web.Request) -> web.Response:
        path = request.path
        if path == "/token" and request.method == "POST":
            form = {k: str(v) for k, v in (await request.post()).items()}
            return web.json_response(exchange_jwt_bearer(self.state, self.tokens, form, self.token_uri),
                                     headers={"Cache-Control": "no-store"})
        if path == "/tokeninfo":
            form = {k: str(v) for k, v in (await request.post()).items()} if request.method == "POST" else {}
            token = request.query.get("access_token") or form.get("access_token", "")
            caller = self.tokens.lookup(token)
            account = self.state.find_service_account(caller.email) if caller and caller.email else None
            return web.json_response(self.tokens.token_info(token, account.unique_id if account else ""))
        prefix, _, rest = path.lstrip("/").partition("/")
        if prefix == "sts" and rest == "v1/token" and request.method == "POST":
            return web.json_response(exchange_subject_token(self.state, self.tokens, self.issuer_keys,
                                                            sts_parameters(await self._params(request))),
                                     headers={"Cache-Control": "no-store"})
        if prefix not in API_PREFIXES.values():
            raise self._no_route(request)
        caller = self.tokens.caller(request.headers.get("Authorization"))
        if prefix == "iam":
            return await self._iam(request, caller, rest)
        if prefix == "container":
            return self._container(request, caller, rest)
        if prefix == "crm":
            return await self._resource_manager(request, caller, rest)
        if prefix == "iamcredentials":
            return await self._credentials(request, caller, rest)
        raise self._no_route(request)

    @staticmethod
    def _no_route(request: web.Request) -> GcpError:
        return GcpError(404, "NOT_FOUND", f"The GCP sandbox does not serve {request.method} {request.path}.")

    @staticmethod
    async def _body(request: web.Request) -> _JSON:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise invalid_argument(f"Invalid JSON payload received. {exc}.") from None
        if not isinstance(body, dict):
            raise invalid_argument("Invalid JSON payload received. The body must be a JSON object.")
        return body

    async def _params(self, request: web.Request) -> dict[str, Any]:
        if request.content_type == "application/json":
            return await self._body(request)
        return {k: str(v) for k, v in (await request.post()).items()}

    def _holds(self, caller: Caller, permission: str, resource: str) -> bool:
        """The deployer holds every permission not denied; another account what its project's basic roles give."""
        if self.knobs.denies(permission) or caller.federated:
            return False
        if caller.email == self.deployer_email:
            return True
        roles = self.state.project_roles(_project_of(resource), caller.member)
        return any(permission in BASIC_ROLE_PERMISSIONS.get(role, frozenset()) for role in roles)

    def _require(self, caller: Caller, permission: str, resource: str, message: str | None = None) -> None:
        if not self._holds(caller, permission, resource):
            raise permission_denied(permission, resource, message)

    # ---- IAM --------------------------------------------------------------------------------------------

    async def _iam(self, request: web.Request, caller: Caller, rest: str) -> web.Response:
        match = _SA_PATH.match(rest)
        if match is None:
            raise self._no_route(request)
        project, who, action = match[1], match[2], match[3] or ""
        method = request.method
        found = self.state.find_service_account(who)
        resource = found.resource if found else f"projects/{project}/serviceAccounts/{who}"
        if action == "" and method == "GET":
            self._require(caller, "iam.serviceAccounts.get", resource)
            return web.json_response(_render_account(self.state.service_account(who, project)))
        if action == ":getIamPolicy" and method == "POST":
            await self._body(request)
            self._require(caller, "iam.serviceAccounts.getIamPolicy", resource)
            account = self.state.service_account(who, project)
            return web.json_response(self.state.get_policy(account.resource))
        if action == ":setIamPolicy" and method == "POST":
            body = await self._body(request)
            self._require(caller, "iam.serviceAccounts.setIamPolicy", resource)
            account = self.state.service_account(who, project)
            policy = body.get("policy")
            if not isinstance(policy, dict):
                raise invalid_argument("Invalid JSON payload received. 'policy' is required and must be an object.")
            writer = self.interleaved.take(account.email)
            if writer is not None:
                await asyncio.to_thread(writer)  # in a thread: the writer may call this very server
            mask = body.get("updateMask")
            return web.json_response(self.state.set_policy(account.resource, policy,
                                                           str(mask) if mask is not None else None))
        if action == "/keys" and method == "GET":
            self._require(caller, "iam.serviceAccountKeys.list", resource)
            account = self.state.service_account(who, project)
            return web.json_response(_render_keys(account, request.query.getall("keyTypes", [])))
        raise self._no_route(request)

    # ---- GKE ----------------------------------------------------------------------------------------------

    def _container(self, request: web.Request, caller: Caller, rest: str) -> web.Response:
        match = _CLUSTER_PATH.match(rest)
        if match is None or request.method != "GET":
            raise self._no_route(request)
        project, location, name = match.groups()
        resource = f"projects/{project}/locations/{location}/clusters/{name}"
        self._require(caller, "container.clusters.get", resource,
                      f'Required "container.clusters.get" permission(s) for "{resource}".')
        cluster = self.state.find_cluster(project, location, name)
        if cluster is None:
            raise GcpError(404, "NOT_FOUND", f"Not found: {resource}.")
        return web.json_response(_render_cluster(cluster, self.url))

    # ---- Resource Manager ------------------------------------------------------------------------------------

    async def _resource_manager(self, request: web.Request, caller: Caller, rest: str) -> web.Response:
        match = _PROJECT_PATH.match(rest)
        if match is None:
            raise self._no_route(request)
        version, wanted, action = match.groups()
        denied = "The caller does not have permission"
        found = self.state.find_project(wanted)
        resource = found.resource if found else f"projects/{wanted}"
        if action and request.method == "POST":
            await self._body(request)
            self._require(caller, "resourcemanager.projects.getIamPolicy", resource, denied)
            return web.json_response(self.state.get_policy(self.state.project(wanted).resource))
        if not action and request.method == "GET":
            self._require(caller, "resourcemanager.projects.get", resource, denied)
            return web.json_response(_render_project(self.state.project(wanted), version))
        raise self._no_route(request)

    # ---- IAM Credentials ----------------------------------------------------------------------------------------

    async def _credentials(self, request: web.Request, caller: Caller, rest: str) -> web.Response:
        match = _GENERATE_PATH.match(rest)
        if match is None or request.method != "POST":
            raise self._no_route(request)
        scopes, lifetime = access_token_request(await self._body(request))
        account = self.state.find_service_account(match[2])
        if account is None:
            raise GcpError(404, "NOT_FOUND", f"Not found; Gaia id not found for email {match[2]}")
        permission = "iam.serviceAccounts.getAccessToken"
        if self.knobs.denies(permission):
            raise permission_denied(permission, account.resource)
        # A project-wide permission (the deployer, an owner) or a role on the account itself, once propagated.
        permitted = self._holds(caller, permission, account.resource)
        token, minted = mint_for_service_account(self.state, self.tokens, caller, account, scopes, lifetime,
                                                 permitted=permitted)
        return web.json_response({"accessToken": token, "expireTime": rfc3339(minted.expires_at)})


# ---- JSON shapes -------------------------------------------------------------------------------------------


def _render_account(account: ServiceAccount) -> _JSON:
    body: _JSON = {"name": account.resource, "projectId": account.project_id, "uniqueId": account.unique_id,
                   "email": account.email, "etag": _SA_ETAG, "oauth2ClientId": account.unique_id}
    if account.display_name:
        body["displayName"] = account.display_name
    if account.description:
        body["description"] = account.description
    if account.disabled:
        body["disabled"] = True  # IAM leaves the field out for an enabled account
    return body


def _render_keys(account: ServiceAccount, key_types: list[str]) -> _JSON:
    bad = [t for t in key_types if t not in (*_KEY_TYPES, "KEY_TYPE_UNSPECIFIED")]
    if bad:
        raise invalid_argument(f"Invalid value at 'key_types' (type.googleapis.com/google.iam.admin.v1."
                               f"ListServiceAccountKeysRequest.KeyType), \"{bad[0]}\"")
    wanted = {t for t in key_types if t in _KEY_TYPES} or set(_KEY_TYPES)
    keys = [{"name": f"{account.resource}/keys/{key.key_id}", "validAfterTime": rfc3339(key.valid_after),
             "validBeforeTime": key.valid_before, "keyAlgorithm": "KEY_ALG_RSA_2048", "keyOrigin": "GOOGLE_PROVIDED",
             "keyType": key.key_type} for key in account.keys if key.key_type in wanted]
    return {"keys": keys} if keys else {}  # an empty list is left out, as proto3 JSON does


def _render_cluster(cluster: Cluster, url: str) -> _JSON:
    pools = []
    for pool in cluster.node_pools:
        pools.append({
            "name": pool.name,
            "config": {"machineType": "e2-standard-4", "diskSizeGb": 100, "imageType": "COS_CONTAINERD",
                       "workloadMetadataConfig": {"mode": pool.metadata_mode}},
            "initialNodeCount": 1, "version": _GKE_VERSION, "status": "RUNNING",
            "selfLink": f"https://container.googleapis.com/v1/{cluster.resource}/nodePools/{pool.name}",
        })
    zones = [cluster.location] if cluster.location[-2] == "-" else [f"{cluster.location}-{z}" for z in "abc"]
    body: _JSON = {
        "name": cluster.name,
        "id": uuid.uuid5(uuid.NAMESPACE_URL, cluster.resource).hex,
        "location": cluster.location,
        "locations": zones,
        "zone": cluster.location,
        "selfLink": f"https://container.googleapis.com/v1/{cluster.resource}",
        "status": "RUNNING",
        "createTime": rfc3339(cluster.created),
        "currentMasterVersion": _GKE_VERSION,
        "currentNodeVersion": _GKE_VERSION,
        "endpoint": url.split("//", 1)[-1].split(":", 1)[0],
        "nodeConfig": pools[0]["config"] if pools else {},
        "nodePools": pools,
    }
    if cluster.workload_identity:
        body["workloadIdentityConfig"] = {"workloadPool": f"{cluster.project_id}.svc.id.goog"}
    return body


def _render_project(project: Project, version: str) -> _JSON:
    created = rfc3339(project.created)
    if version == "v1":
        return {"projectNumber": project.number, "projectId": project.project_id, "lifecycleState": "ACTIVE",
                "name": project.display_name, "createTime": created}
    return {"name": f"projects/{project.number}", "projectId": project.project_id, "state": "ACTIVE",
            "displayName": project.display_name, "createTime": created, "updateTime": created,
            "etag": f'W/"{uuid.uuid5(uuid.NAMESPACE_URL, project.project_id).hex[:16]}"'}
