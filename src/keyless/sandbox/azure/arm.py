"""The ARM stand-in: the REST paths and JSON shapes azure-mgmt-msi, -containerservice and -authorization use."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import urlencode

from aiohttp import web

from keyless.sandbox.azure.entra import EntraStandIn
from keyless.sandbox.azure.rbac import RoleAssignment, RoleAssignments
from keyless.sandbox.azure.state import (
    AKS_TYPE,
    FIC_TYPE,
    UAMI_TYPE,
    ArmError,
    AzureState,
    FederatedCredential,
    Identity,
    ManagedCluster,
    ResourceGroup,
)
from keyless.sandbox.knobs import Call, Denied, Knobs, Refusal, Throttled, Verdict
from keyless.sandbox.knobs_http import knob_routes, serve_call

__all__ = ["ArmStandIn"]

_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview|-beta|-alpha)?$", re.IGNORECASE)
# The api-versions Microsoft.ManagedIdentity publishes (azure-rest-api-specs, specification/msi/resource-manager):
# ARM serves a type only at the versions its resource provider registered, and federated identity credentials
# appeared with 2022-01-31-preview. Other providers' types are served at any date-shaped version here.
_IDENTITY_API_VERSIONS: Final = (
    "2015-08-31-preview", "2018-11-30", "2021-09-30-preview", "2022-01-31-preview", "2023-01-31",
    "2023-07-31-preview", "2024-11-30", "2025-01-31-preview", "2025-05-31-preview", "2026-04-30", "2026-05-31",
)
_CREDENTIAL_API_VERSIONS: Final = _IDENTITY_API_VERSIONS[_IDENTITY_API_VERSIONS.index("2022-01-31-preview"):]
_JSON = dict[str, Any]
_Route = Callable[[web.Request, list[str]], Awaitable[web.Response]]


def _render_group(group: ResourceGroup) -> _JSON:
    return {"id": group.id, "name": group.name, "type": "Microsoft.Resources/resourceGroups",
            "location": group.location, "tags": dict(group.tags), "properties": {"provisioningState": "Succeeded"}}


def _render_identity(identity: Identity) -> _JSON:
    return {
        "id": identity.id, "name": identity.name, "type": UAMI_TYPE, "location": identity.location,
        "tags": dict(identity.tags),
        "properties": {"tenantId": identity.tenant_id, "principalId": identity.principal_id,
                       "clientId": identity.client_id, "isolationScope": "None"},
    }


def _render_credential(identity: Identity, credential: FederatedCredential) -> _JSON:
    return {
        "id": f"{identity.id}/federatedIdentityCredentials/{credential.name}",
        "name": credential.name,
        "type": FIC_TYPE,
        "properties": {"issuer": credential.issuer, "subject": credential.subject,
                       "audiences": list(credential.audiences)},
    }


def _render_cluster(cluster: ManagedCluster, tenant_id: str) -> _JSON:
    props = dict(cluster.extra)
    dns_prefix = str(props.get("dnsPrefix") or f"{cluster.name}-dns")
    suffix = uuid.uuid5(uuid.NAMESPACE_URL, cluster.id.lower()).hex[:8]
    security = dict(props.pop("securityProfile", None) or {})
    # AKS leaves workloadIdentity out entirely until it was enabled once: callers must cope with it missing.
    if cluster.workload_identity_enabled:
        security["workloadIdentity"] = {"enabled": True}
    oidc: _JSON = {"enabled": cluster.oidc_issuer_enabled}
    if cluster.oidc_issuer_enabled and cluster.issuer_url:
        oidc["issuerURL"] = cluster.issuer_url
    props.update({
        "provisioningState": "Succeeded",
        "powerState": {"code": "Running"},
        "kubernetesVersion": cluster.kubernetes_version,
        "currentKubernetesVersion": cluster.kubernetes_version,
        "dnsPrefix": dns_prefix,
        "fqdn": f"{dns_prefix}-{suffix}.hcp.{cluster.location}.azmk8s.io",
        "nodeResourceGroup": props.get("nodeResourceGroup") or f"MC_{cluster.resource_group}_{cluster.name}_"
                                                                f"{cluster.location}",
        "enableRBAC": props.get("enableRBAC", True),
        "oidcIssuerProfile": oidc,
        "securityProfile": security,
    })
    principal = uuid.uuid5(uuid.NAMESPACE_URL, f"{cluster.id.lower()}#identity")
    return {
        "id": cluster.id, "name": cluster.name, "type": AKS_TYPE, "location": cluster.location,
        "tags": dict(cluster.tags), "sku": {"name": "Base", "tier": "Free"},
        "identity": {"type": "SystemAssigned", "principalId": str(principal), "tenantId": tenant_id},
        "properties": props,
    }


def _render_assignment(assignment: RoleAssignment) -> _JSON:
    return {
        "id": assignment.id, "name": assignment.name, "type": "Microsoft.Authorization/roleAssignments",
        "properties": {
            "roleDefinitionId": assignment.role_definition_id, "principalId": assignment.principal_id,
            "principalType": assignment.principal_type, "scope": assignment.scope,
            "condition": assignment.condition, "conditionVersion": assignment.condition_version,
            "createdOn": assignment.created_on, "updatedOn": assignment.created_on,
            "createdBy": None, "updatedBy": None, "delegatedManagedIdentityResourceId": None,
            "description": assignment.description,
        },
    }


_ACTION = re.compile(r"[A-Za-z]+\.[A-Za-z.]+(/[A-Za-z]+)+/(read|write|delete)")
SANDBOX_CALLER = "00000000-0000-0000-0000-00000000cafe"


def is_arm_action(action: str) -> bool:
    """`Namespace/type/.../read|write|delete`, what deny() takes on ARM."""
    return _ACTION.fullmatch(action) is not None


# The managed-identity writes Microsoft.ManagedIdentity throttles on its own (what throttle_next() arms by default).
MSI_WRITES = tuple(f"Microsoft.ManagedIdentity/userAssignedIdentities/{what}" for what in
                   ("write", "delete", "federatedIdentityCredentials/write", "federatedIdentityCredentials/delete"))


class ArmDialect:
    """ARM's answers to throttled, failed and denied calls: 429 with Retry-After and ARM's error body, and the
    x-ms-ratelimit-remaining-subscription-* headers on calls that were served."""

    def __init__(self, subscription_id: str) -> None:
        self.subscription_id = subscription_id

    def _json(self, error: ArmError) -> web.Response:
        return web.json_response(error.body(), status=error.status, headers=error.headers)

    def refuse(self, refusal: Refusal, call: Call) -> web.StreamResponse:
        if isinstance(refusal, Denied):
            return self._json(ArmError(
                403, "AuthorizationFailed",
                f"The client '{SANDBOX_CALLER}' with object id '{SANDBOX_CALLER}' does not have authorization to "
                f"perform action '{refusal.action}' over scope '{call.path}' or the scope is invalid. If access was "
                "recently granted, please refresh your credentials."))
        if isinstance(refusal, Throttled):
            wait = {"Retry-After": refusal.retry_after}
            kind = "write" if call.write else "read"
            if refusal.limit in ("arm-read", "arm-write", "msi-write-subscription"):
                return self._json(ArmError(
                    429, "SubscriptionRequestsThrottled",
                    f"Number of '{kind}' requests for subscription '{self.subscription_id}' exceeded the limit. Please "
                    f"try again after '{refusal.retry_after}' seconds. Refer to https://aka.ms/arm-throttling", wait))
            if refusal.limit == "msi-write-identity":
                return self._json(ArmError(
                    429, "TooManyRequests", f"Too many write requests for the managed identity "
                    f"'{refusal.scope.rsplit('/', 1)[-1]}'. Please retry after {refusal.retry_after} seconds.", wait))
            return self._json(ArmError(429, "TooManyRequests", "The request was throttled by "
                                       f"Microsoft.ManagedIdentity. Please retry after {refusal.retry_after} seconds.",
                                       wait))
        headers = {"Retry-After": refusal.retry_after} if refusal.retry_after else {}
        if refusal.status == 429:
            return self._json(ArmError(429, "TooManyRequests", "The request was throttled. Please retry after "
                                       f"{refusal.retry_after or '1'} seconds.", headers or {"Retry-After": "1"}))
        code = {503: "ServiceUnavailable", 404: "NotFound", 409: "Conflict"}.get(
            refusal.status, "InternalServerError" if refusal.status >= 500 else "BadRequest")
        return self._json(ArmError(refusal.status, code, "Encountered internal server error. Diagnostic information: "
                                   "fault injected by the keyless sandbox.", headers))

    def lost(self, call: Call) -> web.StreamResponse:
        return self._json(ArmError(500, "InternalServerError", "Encountered internal server error. Diagnostic "
                                   "information: the response was lost (fault injected by the keyless sandbox)."))

    def decorate(self, response: web.StreamResponse, verdict: Verdict) -> None:
        left = verdict.remaining
        if "arm-read" in left:
            response.headers["x-ms-ratelimit-remaining-subscription-reads"] = str(left["arm-read"])
        writes = [left[name] for name in ("arm-write", "msi-write-subscription") if name in left]
        if writes:
            response.headers["x-ms-ratelimit-remaining-subscription-writes"] = str(min(writes))


def arm_operation(method: str, path: str) -> str:
    """The operation as ARM's request log shows it: the method and the resource type it reaches
    (`GET federatedIdentityCredentials`); reading a collection is `GET ... (list)`."""
    segments = [s for s in path.split("/") if s]
    lowered = [s.lower() for s in segments]
    if "providers" in lowered:
        at = len(lowered) - 1 - lowered[::-1].index("providers")
        types, names = segments[at + 2::2], segments[at + 3::2]
    else:
        types, names = segments[0::2], segments[1::2]
    if not types:
        return f"{method} {path}"
    listed = " (list)" if len(names) < len(types) and method == "GET" else ""
    return f"{method} {types[-1]}{listed}"


def arm_call(method: str, path: str) -> Call:
    """The knobs' view of an ARM request: reads and writes counted per subscription, identity writes per identity."""
    segments = [s for s in path.split("/") if s]
    lowered = [s.lower() for s in segments]
    subscription = segments[1].lower() if len(segments) > 1 and lowered[0] == "subscriptions" else "tenant"
    write = method not in ("GET", "HEAD")
    buckets = [("arm-write" if write else "arm-read", subscription)]
    if write and "userassignedidentities" in lowered and "resourcegroups" in lowered:
        at = lowered.index("userassignedidentities")
        if at + 1 < len(lowered):
            group = lowered[lowered.index("resourcegroups") + 1]
            buckets += [("msi-write-subscription", subscription), ("msi-write-identity", f"{group}/{lowered[at + 1]}")]
    return Call(method, path, arm_operation(method, path), arm_action(method, path), write, tuple(buckets))


def arm_action(method: str, path: str) -> str:
    """The Azure RBAC action a request needs, e.g. Microsoft.Authorization/roleAssignments/read."""
    segments = [s for s in path.split("/") if s]
    verb = {"GET": "read", "HEAD": "read", "DELETE": "delete"}.get(method, "write")
    lowered = [s.lower() for s in segments]
    if "providers" in lowered:
        at = len(lowered) - 1 - lowered[::-1].index("providers")
        namespace, types = segments[at + 1] if at + 1 < len(segments) else "", segments[at + 2::2]
        return "/".join([namespace, *types, verb])
    types = ["subscriptions"] + (["resourceGroups"] if "resourcegroups" in lowered else [])
    return "/".join(["Microsoft.Resources", *types, verb])


class ArmStandIn:
    """Routes ARM requests to the state; every request needs a bearer token the Entra stand-in issued."""

    def __init__(self, state: AzureState, entra: EntraStandIn, rbac: RoleAssignments, knobs: Knobs) -> None:
        self.knobs = knobs
        self.state = state
        self.entra = entra
        self.rbac = rbac
        self.url = ""  # set once the server has its port
        self._dialect = ArmDialect(state.subscription_id)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/{path:.*}", self._dispatch)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        if request.path.startswith("/_sandbox/"):
            answer = await knob_routes(self.knobs, request, request.path.split("/")[2:])
            return answer or web.json_response({"message": f"no sandbox endpoint {request.method} {request.path}"},
                                               status=404)
        request_id = str(uuid.uuid4())
        correlation = request.headers.get("x-ms-correlation-request-id") or request_id
        ids = {"x-ms-request-id": request_id, "x-ms-correlation-request-id": correlation,
               "x-ms-routing-request-id": f"SANDBOX:{request_id}"}
        try:
            self.entra.verify_arm_token(request.headers.get("Authorization"))
            api_version = request.query.get("api-version")
            if not api_version:
                raise ArmError(400, "MissingApiVersionParameter",
                               "The api-version query parameter (?api-version=) is required for all requests.")
            if not _API_VERSION.match(api_version):
                raise ArmError(400, "InvalidApiVersionParameter",
                               f"The api-version '{api_version}' is invalid. The supported versions are dates such as "
                               "'2024-11-30'.")
        except ArmError as error:
            response: web.StreamResponse = web.json_response(error.body(), status=error.status, headers=error.headers)
        else:
            response = await serve_call(self.knobs, request, arm_call(request.method, request.path), self._dialect,
                                        lambda: self._handle(request, handler))
        response.headers.update(ids)
        return response

    @staticmethod
    async def _handle(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ArmError as error:
            return web.json_response(error.body(), status=error.status, headers=error.headers)

    async def _body(self, request: web.Request) -> _JSON:
        raw = await request.read()
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ArmError(400, "InvalidRequestContent",
                           f"The request content was invalid and could not be deserialized: '{exc}'.") from None
        if not isinstance(body, dict):
            raise ArmError(400, "InvalidRequestContent", "The request content must be a JSON object.")
        return body

    async def _dispatch(self, request: web.Request) -> web.Response:
        segments = [s for s in request.path.split("/") if s]
        lowered = [s.lower() for s in segments]
        # Role assignments and definitions hang below any scope: /{scope}/providers/Microsoft.Authorization/...
        for index in range(len(lowered) - 2, -1, -1):
            if lowered[index] == "providers" and lowered[index + 1] == "microsoft.authorization":
                return await self._authorization(request, "/" + "/".join(segments[:index]), segments[index + 2:])
        if len(lowered) < 2 or lowered[0] != "subscriptions":
            raise self._no_route(request)
        subscription = segments[1]
        if len(lowered) == 2 and request.method == "GET":
            self.state.check_subscription(subscription)
            return web.json_response({
                "id": f"/subscriptions/{self.state.subscription_id}", "subscriptionId": self.state.subscription_id,
                "tenantId": self.state.tenant_id, "displayName": "keyless sandbox", "state": "Enabled",
            })
        if len(lowered) >= 5 and lowered[2] == "providers":
            return await self._subscription_list(request, subscription, lowered[3], lowered[4], len(lowered))
        if lowered[2] != "resourcegroups":
            raise self._no_route(request)
        if len(lowered) == 3 and request.method == "GET":
            self.state.check_subscription(subscription)
            return web.json_response({"value": [_render_group(g) for g in self.state.resource_groups(subscription)]})
        group = segments[3]
        if len(lowered) == 4:
            return await self._resource_group(request, subscription, group)
        if len(lowered) < 7 or lowered[4] != "providers":
            raise self._no_route(request)
        namespace, type_name = lowered[5], lowered[6]
        rest = segments[7:]
        if (namespace, type_name) == ("microsoft.managedidentity", "userassignedidentities"):
            return await self._identities(request, subscription, group, rest)
        if (namespace, type_name) == ("microsoft.containerservice", "managedclusters") and len(rest) <= 1:
            return await self._clusters(request, subscription, group, rest)
        if len(rest) == 1:
            return await self._generic(request, subscription, group, f"{segments[5]}/{segments[6]}", rest[0])
        raise self._no_route(request)

    @staticmethod
    def _no_route(request: web.Request) -> ArmError:
        return ArmError(404, "NotFound", f"The Azure sandbox does not serve '{request.method} {request.path}'.")

    @staticmethod
    def _method_not_allowed(request: web.Request) -> ArmError:
        return ArmError(405, "HttpMethodNotAllowed",
                        f"The requested resource does not support http method '{request.method}'.")

    def _location_of(self, subscription: str, group: str) -> str:
        try:
            return self.state.resource_group(subscription, group).location
        except ArmError:
            return "global"  # the group's own 404 comes after the api-version check, as in ARM

    def _check_api_version(self, request: web.Request, type_name: str, supported: tuple[str, ...],
                           location: str) -> None:
        """Refuse an api-version the type's resource provider never registered, as ARM does before the RP sees it."""
        version = request.query.get("api-version", "")
        if version.lower() not in supported:
            raise ArmError(400, "NoRegisteredProviderFound",
                           f"No registered resource provider found for location '{location}' and API version "
                           f"'{version}' for type '{type_name}'. The supported api-versions are "
                           f"'{', '.join(supported)}'. The supported locations are '{location}'.")

    # ---- resource groups -------------------------------------------------------------------------------

    async def _resource_group(self, request: web.Request, subscription: str, group: str) -> web.Response:
        if request.method == "GET":
            return web.json_response(_render_group(self.state.resource_group(subscription, group)))
        if request.method == "HEAD":
            try:
                self.state.resource_group(subscription, group)
            except ArmError as error:
                if error.status == 404:
                    return web.Response(status=404)
                raise
            return web.Response(status=204)
        if request.method == "PUT":
            body = await self._body(request)
            created_group, created = self.state.put_resource_group(subscription, group, body.get("location"),
                                                                   body.get("tags"))
            return web.json_response(_render_group(created_group), status=201 if created else 200)
        raise self._method_not_allowed(request)

    async def _subscription_list(self, request: web.Request, subscription: str, namespace: str, type_name: str,
                                 length: int) -> web.Response:
        if request.method != "GET" or length != 5:
            raise self._no_route(request)
        if (namespace, type_name) == ("microsoft.managedidentity", "userassignedidentities"):
            return web.json_response({"value": [_render_identity(i) for i in self.state.identities(subscription)]})
        if (namespace, type_name) == ("microsoft.containerservice", "managedclusters"):
            return web.json_response({"value": [self._cluster_json(c) for c in self.state.clusters(subscription)]})
        raise self._no_route(request)

    # ---- managed identities and federated credentials ----------------------------------------------------

    async def _identities(self, request: web.Request, subscription: str, group: str, rest: list[str]) -> web.Response:
        method = request.method
        location = self._location_of(subscription, group)
        if len(rest) >= 2 and rest[1].lower() == "federatedidentitycredentials":
            self._check_api_version(request, "userAssignedIdentities/federatedIdentityCredentials",
                                    _CREDENTIAL_API_VERSIONS, location)
        else:
            self._check_api_version(request, "userAssignedIdentities", _IDENTITY_API_VERSIONS, location)
        if not rest:
            if method != "GET":
                raise self._method_not_allowed(request)
            return web.json_response({"value": [_render_identity(i) for i in self.state.identities(subscription,
                                                                                                    group)]})
        name = rest[0]
        if len(rest) == 1:
            if method == "GET":
                return web.json_response(_render_identity(self.state.identity(subscription, group, name)))
            if method not in ("PUT", "PATCH", "DELETE"):
                raise self._method_not_allowed(request)
            self.state.resource_group(subscription, group)
            if method == "PUT":
                body = await self._body(request)
                identity, created = self.state.put_identity(subscription, group, name, body.get("location"),
                                                            body.get("tags"))
                return web.json_response(_render_identity(identity), status=201 if created else 200)
            if method == "PATCH":
                body = await self._body(request)
                current = self.state.identity(subscription, group, name)
                identity, _ = self.state.put_identity(subscription, group, name, current.location,
                                                      body.get("tags", current.tags))
                return web.json_response(_render_identity(identity))
            existed = self.state.delete_identity(subscription, group, name)
            return web.Response(status=200 if existed else 204)
        if rest[1].lower() != "federatedidentitycredentials" or len(rest) > 3:
            raise self._no_route(request)
        if len(rest) == 2:
            if method != "GET":
                raise self._method_not_allowed(request)
            return self._credential_page(request, subscription, group, name)
        credential = rest[2]
        if method == "GET":
            identity = self.state.identity(subscription, group, name)
            return web.json_response(_render_credential(
                identity, self.state.credential(subscription, group, name, credential)))
        if method not in ("PUT", "DELETE"):
            raise self._method_not_allowed(request)
        body = await self._body(request) if method == "PUT" else {}
        self.state.resource_group(subscription, group)
        with self.state.credential_write(subscription, group, name, "write" if method == "PUT" else "delete") as key:
            identity = self.state.identity(subscription, group, name)
            if method == "PUT":
                stored, created = self.state.put_credential(key, credential, body.get("properties"))
            else:
                existed = self.state.delete_credential(key, credential)
            # The write keeps the identity busy for as long as the real RP takes: a second write meanwhile is a 409.
            await asyncio.sleep(self.knobs.time.wall(self.state.write_hold))
        if method == "PUT":
            return web.json_response(_render_credential(identity, stored), status=201 if created else 200)
        return web.Response(status=200 if existed else 204)

    def _credential_page(self, request: web.Request, subscription: str, group: str, name: str) -> web.Response:
        identity = self.state.identity(subscription, group, name)
        everything = self.state.credentials(subscription, group, name)
        try:
            start = int(request.query.get("$skiptoken", "0"))
            top = int(request.query["$top"]) if "$top" in request.query else len(everything)
        except ValueError:
            raise ArmError(400, "InvalidQueryParameterValue", "$top and $skiptoken must be integers.") from None
        page = everything[start:start + max(top, 1)]
        body: _JSON = {"value": [_render_credential(identity, c) for c in page]}
        if start + len(page) < len(everything):
            query = {"api-version": request.query["api-version"], "$top": str(top),
                     "$skiptoken": str(start + len(page))}
            body["nextLink"] = f"{self.url}{request.path}?{urlencode(query)}"
        return web.json_response(body)

    # ---- managed clusters -------------------------------------------------------------------------------

    def _cluster_json(self, cluster: ManagedCluster) -> _JSON:
        return _render_cluster(cluster, self.state.tenant_id)

    async def _clusters(self, request: web.Request, subscription: str, group: str, rest: list[str]) -> web.Response:
        if not rest:
            if request.method != "GET":
                raise self._method_not_allowed(request)
            return web.json_response({"value": [self._cluster_json(c) for c in self.state.clusters(subscription,
                                                                                                  group)]})
        if request.method == "GET":
            return web.json_response(self._cluster_json(self.state.cluster(subscription, group, rest[0])))
        if request.method == "PUT":
            body = await self._body(request)
            cluster, created = self.state.put_cluster(subscription, group, rest[0], body)
            # Finished at once: a terminal provisioningState in the body ends the SDK's poller without polling.
            return web.json_response(self._cluster_json(cluster), status=201 if created else 200)
        raise self._method_not_allowed(request)

    # ---- other resources (role-assignment scopes such as storage accounts) ----------------------------------

    async def _generic(self, request: web.Request, subscription: str, group: str, type_name: str,
                       name: str) -> web.Response:
        self.state.resource_group(subscription, group)
        resource_id = f"/subscriptions/{subscription}/resourceGroups/{group}/providers/{type_name}/{name}"
        if request.method == "GET":
            return web.json_response(self.state.resource(resource_id, group, type_name, name))
        if request.method == "PUT":
            stored, created = self.state.put_resource(resource_id, type_name, name, await self._body(request))
            return web.json_response(stored, status=201 if created else 200)
        raise self._method_not_allowed(request)

    # ---- role assignments and definitions --------------------------------------------------------------------

    async def _authorization(self, request: web.Request, scope: str, rest: list[str]) -> web.Response:
        kind = rest[0].lower() if rest else ""
        method = request.method
        if kind == "roleassignments" and len(rest) == 1 and method == "GET":
            found = self.rbac.role_assignments(scope, request.query.get("$filter"))
            return web.json_response({"value": [_render_assignment(a) for a in found]})
        if kind == "roleassignments" and len(rest) == 2:
            if method == "GET":
                return web.json_response(_render_assignment(self.rbac.role_assignment(scope, rest[1])))
            if method == "PUT":
                body = await self._body(request)
                assignment, created = self.rbac.put_role_assignment(scope, rest[1], body.get("properties") or {})
                return web.json_response(_render_assignment(assignment), status=201 if created else 200)
            if method == "DELETE":
                removed = self.rbac.delete_role_assignment(scope, rest[1])
                if removed is None:
                    return web.Response(status=204)
                return web.json_response(_render_assignment(removed))
            raise self._method_not_allowed(request)
        if kind == "roledefinitions" and len(rest) == 1 and method == "GET":
            roles = self.rbac.role_definitions(scope, request.query.get("$filter"))
            return web.json_response({"value": [r.resource(scope) for r in roles]})
        if kind == "roledefinitions" and len(rest) == 2 and method == "GET":
            return web.json_response(self.rbac.role_definition(scope, rest[1]).resource(scope))
        raise self._no_route(request)

