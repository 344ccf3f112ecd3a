"""The stand-in Kubernetes API server: kmock's emulator given real write semantics, admission, watches and OIDC."""

from __future__ import annotations

import asyncio
import base64
import bisect
import collections
import contextlib
import copy
import dataclasses
import datetime
import functools
import json
import logging
import math
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import aiohttp.web
import attrs
import jwt
import kmock

# kmock does not re-export the response record its reactions may return (status, headers, body), nor the
# error a reaction raises when it does not serve a request.
from kmock._internal.rendering import ReactionMismatchError
from kmock._internal.rendering import Response as KmockResponse
from ruamel.yaml import YAML

from keyless.sandbox.knobs import Call, Denied, Knobs, Refusal, Throttled, Verdict
from keyless.sandbox.knobs_http import knob_routes, serve_call
from keyless.sandbox.kube import crds, openapi, rbac, tables
from keyless.sandbox.kube.admission import Mutator, WebhookDenied, mutator_name, service_account_admission
from keyless.sandbox.kube.merge import (
    ApplyConflictError,
    FieldRequirement,
    JsonDict,
    PatchError,
    Requirement,
    SelectorError,
    json_patch,
    labels_match,
    merge_patch,
    parse_field_selector,
    parse_label_selector,
    record_update,
    render_path,
    server_side_apply,
    strategic_merge_patch,
)
from keyless.sandbox.kube.schema import (
    CLUSTER_ROLE_BINDINGS,
    CLUSTER_ROLES,
    CUSTOM_RESOURCE_DEFINITIONS,
    JOBS,
    KINDS,
    NAMESPACES,
    PODS,
    REVIEWS,
    ROLE_BINDINGS,
    ROLES,
    SELF_SUBJECT_ACCESS_REVIEWS,
    SELF_SUBJECT_RULES_REVIEWS,
    SERVICE_ACCOUNTS,
    Cause,
    Kind,
    StatusError,
    already_exists,
    api_resources,
    apply_defaults,
    bad_request,
    conflict,
    default_job_selector,
    forbidden,
    invalid,
    kind_for,
    not_found,
    validate,
    validate_metadata,
)
from keyless.sandbox.kube.tokens import DEFAULT_EXPIRATION_SECONDS, BoundObject, ServiceAccountIssuer

logger = logging.getLogger("keyless.sandbox.kube")

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
ResourceKey = tuple[str, str]  # (group, plural): what a watch follows, whatever version it was asked through
ListKey = tuple[str, str]  # (namespace, "" for a cluster-scoped object; name): the order lists are in
CRDS: Final = CUSTOM_RESOURCE_DEFINITIONS

APPLY_PATCH: Final = "application/apply-patch+yaml"
MERGE_PATCH: Final = "application/merge-patch+json"
STRATEGIC_PATCH: Final = "application/strategic-merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"

_HISTORY_KEPT: Final = 16  # object versions kmock keeps per object (for assertions), older ones are dropped
_TOMBSTONES_KEPT: Final = 500  # deleted objects whose history kmock keeps
_REQUESTS_KEPT: Final = 16  # kmock matches every request against the history it keeps (a linear scan per
# reaction), so a long history makes each request slower: keep only the last few for kmock's own assertions
_WATCH_WINDOW: Final = 1000  # events kept per resource to resume watches from (the watch cache's history)
_BOOKMARK_SECONDS: Final = 60.0  # the watch cache sends each watcher a bookmark about once a minute
_INITIAL_EVENTS_END: Final = "k8s.io/initial-events-end"
_GENERATED_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"  # the API server's alphabet for generated names


def now_rfc3339() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(length: int = 5) -> str:
    return "".join(secrets.choice(_GENERATED_ALPHABET) for _ in range(length))


@dataclass(frozen=True)
class ChangeEvent:
    """One committed change, as watches and the controllers see it."""

    type: EventType
    kind: Kind
    obj: JsonDict  # the new state; for DELETED the last state
    old: JsonDict | None
    rv: int


@dataclass(eq=False)
class _Shelf:
    """The live objects of one stored resource by namespace and name, and their keys in list order.

    A stored object is never changed once stored (a write stores a new dict), so what is here may be read,
    serialized or put in a watch event without a copy; what a caller may change is a copy (``get_object``,
    ``list_objects``).
    """

    objects: dict[ListKey, JsonDict] = field(default_factory=dict)
    order: list[ListKey] = field(default_factory=list)  # sorted

    def put(self, key: ListKey, obj: JsonDict) -> None:
        if key not in self.objects:
            bisect.insort(self.order, key)
        self.objects[key] = obj

    def drop(self, key: ListKey) -> None:
        if self.objects.pop(key, None) is not None:
            del self.order[bisect.bisect_left(self.order, key)]

    def span(self, namespace: str | None, after: ListKey | None = None) -> range:
        """The positions in ``order`` of the keys in ``namespace`` (None: in any) that come after ``after``."""
        start, stop = 0, len(self.order)
        if namespace is not None:
            # (ns,) sorts before every (ns, name), and (ns + "\0",) after them and before any other namespace.
            start = bisect.bisect_left(self.order, (namespace,))
            stop = bisect.bisect_left(self.order, (namespace + "\0",))
        if after is not None:
            start = max(start, bisect.bisect_right(self.order, after))
        return range(start, max(start, stop))


@dataclass(eq=False)
class _Watcher:
    kind: Kind
    namespace: str | None
    labels: tuple[Requirement, ...]
    fields: tuple[FieldRequirement, ...]
    queue: asyncio.Queue[JsonDict | None] = field(default_factory=asyncio.Queue)
    bookmarks: bool = False

    def selects(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return labels_match(self.labels, meta.get("labels")) and all(f.matches(obj) for f in self.fields)

    def event_for(self, change: ChangeEvent) -> JsonDict | None:
        """The event this watcher sees: objects entering or leaving its selection are ADDED or DELETED."""
        now_selected = change.type != "DELETED" and self.selects(change.obj)
        was_selected = self.selects(change.old) if change.type != "ADDED" else False
        if change.type == "DELETED":
            was_selected = self.selects(change.obj)
        if now_selected and was_selected:
            kind = "MODIFIED"
        elif now_selected:
            kind = "ADDED"
        elif was_selected:
            kind = "DELETED"
        else:
            return None
        return {"type": kind, "object": _in_version(self.kind, change.obj)}

    def bookmark(self, resource_version: int, *, initial_events_end: bool = False) -> JsonDict:
        """A BOOKMARK: only apiVersion, kind and metadata.resourceVersion (and the end-of-initial-events mark)."""
        meta: JsonDict = {"resourceVersion": str(resource_version)}
        if initial_events_end:
            meta["annotations"] = {_INITIAL_EVENTS_END: "true"}
        return {"type": "BOOKMARK", "object": {"kind": self.kind.kind, "apiVersion": self.kind.api_version,
                                               "metadata": meta}}


def _in_version(kind: Kind, obj: JsonDict) -> JsonDict:
    """A custom object as served through ``kind``'s version (a CRD's versions share storage; conversion None only
    changes apiVersion)."""
    if kind.custom and obj.get("apiVersion") != kind.api_version:
        return {**obj, "apiVersion": kind.api_version}
    return obj


def _header(request: kmock.Request, name: str) -> str:
    for key, value in request.headers.items():
        if key.lower() == name.lower():
            return value
    return ""


def _json_response(payload: Any, status: int = 200) -> aiohttp.web.Response:
    # Exactly "application/json", no charset: lightkube only turns such error bodies into ApiError.
    return aiohttp.web.Response(body=json.dumps(payload).encode(), status=status, content_type="application/json")


def _api_response(payload: Any, status: int = 200) -> KmockResponse:
    # No other headers here: kmock merges a response's headers into its reaction, so they would stick to
    # every later answer of that route. Per-response headers go through KubeApiServer._add_header.
    return KmockResponse(status=status, headers={"Content-Type": "application/json"},
                          payload=json.dumps(payload).encode())


def status_response(error: StatusError) -> aiohttp.web.Response:
    return _json_response(error.body(), error.code)


def _parse_path(path: str) -> tuple[str | None, str | None, str | None, str | None, str | None, str | None]:
    """(group, version, plural, namespace, name, subresource) of a Kubernetes API path.

    Written here rather than taken from kmock because kmock misreads the cluster-scoped
    ``namespaces`` resource (``/api/v1/namespaces``), which the stand-in must serve.
    """
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 2 and parts[0] == "apis":
        if len(parts) == 2:
            return parts[1], None, None, None, None, None
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None, None, None, None, None, None
    namespace: str | None = None
    own_subresource = len(rest) == 3 and rest[2] in ("status", "finalize")  # of a Namespace object itself
    if rest and rest[0] == "namespaces" and len(rest) >= 3 and not own_subresource:
        namespace, rest = rest[1], rest[2:]
    plural = rest[0] if rest else None
    name = rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    return group, version, plural, namespace, name, subresource


def _guess_action(method: str, plural: str | None, name: str | None, query: Mapping[str, str]) -> kmock.action | None:
    if plural is None:
        return None  # discovery documents, not objects
    if method == "GET" and query.get("watch") in ("true", "1"):
        return kmock.action.WATCH
    if name is None:
        return {"GET": kmock.action.LIST, "POST": kmock.action.CREATE}.get(method)
    return {"GET": kmock.action.FETCH, "PATCH": kmock.action.UPDATE, "DELETE": kmock.action.DELETE}.get(method)


_VERBS: Final = {"POST": "create", "PUT": "update", "PATCH": "patch"}
_KUBE_ACTION: Final = re.compile(r"^[a-z]+ [a-z0-9.-]+(/[a-z0-9.-]+)?$")


def is_kube_action(action: str) -> bool:
    """`verb resource[/subresource]` (`patch deployments`, `create serviceaccounts/token`): what deny() takes."""
    return _KUBE_ACTION.fullmatch(action) is not None


def kube_call(cluster: str, method: str, path: str, query: Mapping[str, str]) -> Call:
    """The knobs' view of a request: the RBAC verb and resource (`list pods`), one bucket for the whole cluster."""
    _, _, plural, _, name, subresource = _parse_path(path)
    if plural is None:
        operation = f"{method.lower()} {path}"  # a non-resource URL (discovery, OpenAPI, version, health)
        return Call(method, path, operation, "", False, (("kube", cluster),))
    if method == "GET":
        verb = "watch" if query.get("watch") in ("true", "1") else "get" if name else "list"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = _VERBS.get(method, method.lower())
    operation = f"{verb} {plural}" + (f"/{subresource}" if subresource else "")
    return Call(method, path, operation, operation, verb not in ("get", "list", "watch"), (("kube", cluster),))


class KubeDialect:
    """The API server's answers: 429 TooManyRequests with Retry-After (as API Priority and Fairness sends it), 403
    Forbidden in RBAC's words, 5xx InternalError or ServiceUnavailable, each a `Status`."""

    def refuse(self, refusal: Refusal, call: Call) -> aiohttp.web.StreamResponse:
        if isinstance(refusal, Denied):
            verb, _, resource = refusal.action.partition(" ")
            return status_response(StatusError(403, "Forbidden", f'{resource} is forbidden: User "keyless-sandbox" '
                                               f'cannot {verb} resource "{resource}" (denied by the keyless sandbox)'))
        if isinstance(refusal, Throttled) or refusal.status == 429:
            wait = refusal.retry_after or "1"
            response = status_response(StatusError(429, "TooManyRequests", "Too many requests, please try again "
                                                   "later.", {"retryAfterSeconds": max(1, math.ceil(float(wait)))}))
            response.headers["Retry-After"] = wait
            return response
        reason = {503: "ServiceUnavailable", 504: "Timeout", 404: "NotFound", 409: "Conflict"}.get(
            refusal.status, "InternalError" if refusal.status >= 500 else "BadRequest")
        return status_response(StatusError(refusal.status, reason, "Internal error occurred: fault injected by the "
                                           "keyless sandbox"))

    def lost(self, call: Call) -> aiohttp.web.StreamResponse:
        return status_response(StatusError(500, "InternalError", "Internal error occurred: the response was lost "
                                           "(fault injected by the keyless sandbox)"))

    def decorate(self, response: aiohttp.web.StreamResponse, verdict: Verdict) -> None:
        return None


def _strip_for_list(obj: Mapping[str, Any]) -> JsonDict:
    # Items of a list carry no apiVersion/kind: the list's kind says it, as on a real server.
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}


@functools.lru_cache(maxsize=1024)
def _store_ref(kind: Kind) -> kmock.resource:
    # Made once per kind: building a kmock.resource checks its arguments' types, and every read asks for one.
    return kmock.resource(kind.group, "" if kind.custom else kind.version, kind.plural)


def _list_key_of(obj: Mapping[str, Any]) -> ListKey:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", str(meta.get("name")))


def _page(objects: Iterable[JsonDict], selects: Callable[[Mapping[str, Any]], bool] | None,
          limit: int | None) -> tuple[list[JsonDict], int]:
    """The first ``limit`` (None: all) of ``objects`` that ``selects`` takes (None: all), and how many more it takes."""
    page: list[JsonDict] = []
    rest = 0
    for obj in objects:
        if selects is None or selects(obj):
            if limit is None or len(page) < limit:
                page.append(obj)
            else:
                rest += 1
    return page, rest


def _owner_uids(obj: Mapping[str, Any]) -> set[str]:
    return {str(r.get("uid")) for r in (obj.get("metadata") or {}).get("ownerReferences") or [] if r.get("uid")}


@attrs.define(kw_only=True)
class KubeApiServer(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator serving the subset of the API keyless drives, with real semantics.

    kmock gives the request plumbing, discovery documents, the user-overridable reactions DSL
    (fault injection: ``server['patch', kmock.resource('apps/v1/deployments')] << 500``) and the
    object histories; this class replaces its naive storage rules with what an API server does.
    """

    issuer: ServiceAccountIssuer
    cluster_name: str = "sandbox"
    node_name: str = "sandbox-node"
    node_uid: str = attrs.field(factory=lambda: str(uuid.uuid4()))
    mutators: list[Mutator] = attrs.field(factory=list)
    jwks_uri: str = ""
    server_version: tuple[str, str] = ("1", "31")
    admin_token: str = ""  # the kubeconfig's static token: a system:masters user (kubeadm's admin.conf)
    _rbac_objects: dict[Kind, dict[tuple[str | None, str], JsonDict]] = attrs.field(
        factory=lambda: {kind: {} for kind in (ROLES, CLUSTER_ROLES, ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS)},
        init=False)
    _request_attributes: dict[int, rbac.Attributes] = attrs.field(factory=dict, init=False)
    authorizer: rbac.Authorizer = attrs.field(init=False)
    _rv: int = attrs.field(default=0, init=False)
    _request_count: int = attrs.field(default=0, init=False)
    # Watchers and the recent changes by resource, so that a change costs only what its own resource's watchers
    # cost, and resuming a watch reads only its resource's history (the API server keeps a watch cache per resource).
    _watchers: dict[ResourceKey, list[_Watcher]] = attrs.field(factory=dict, init=False)
    _logs: dict[ResourceKey, collections.deque[ChangeEvent]] = attrs.field(factory=dict, init=False)
    _evicted: dict[ResourceKey, int] = attrs.field(factory=dict, init=False)  # newest change no longer kept
    _shelves: dict[kmock.resource, _Shelf] = attrs.field(factory=dict, init=False)
    # Who refers to an owner (any ownerReference, by the owner's uid): what the garbage collector and the
    # controllers look up, so that finding an object's dependents costs what it has, not what the store holds.
    _dependents: dict[str, dict[tuple[kmock.resource, ListKey], None]] = attrs.field(factory=dict, init=False)
    # The served versions of the CRDs: (group, version, plural) -> its schema and columns.
    _custom: dict[tuple[str, str, str], crds.CustomVersion] = attrs.field(factory=dict, init=False)
    watch_window: int = _WATCH_WINDOW
    bookmark_seconds: float = _BOOKMARK_SECONDS
    _listeners: list[Callable[[ChangeEvent], None]] = attrs.field(factory=list, init=False)
    _extra_headers: dict[int, list[tuple[str, str]]] = attrs.field(factory=dict, init=False)
    _tombstones: collections.deque[tuple[kmock.resource, str | None, str]] = attrs.field(
        factory=collections.deque, init=False)
    unexpected_errors: list[BaseException] = attrs.field(factory=list, init=False)
    knobs: Knobs = attrs.field(factory=lambda: Knobs("kube", check_action=is_kube_action))

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for kind in KINDS:
            self.resources[self.ref(kind)] = kmock.ResourceInfo(
                kind=kind.kind, singular=kind.singular, namespaced=kind.namespaced, verbs=set(kind.verbs),
                shortnames=set(kind.short_names), subresources=set(kind.subresources),
            )
        # Requests kmock's emulator does not classify: replace, subresource posts, collection deletes.
        self.fallback[kmock.method.PUT] << self._serve_replace
        self.fallback[kmock.method.POST] << self._serve_post_subresource
        self.fallback[kmock.method.DELETE] << self._serve_delete_collection
        self.fallback["get /.well-known/openid-configuration"] << self._serve_oidc_configuration
        self.fallback["get /openid/v1/jwks"] << self._serve_jwks
        self.fallback["get /openapi/v2"] << self._serve_openapi_v2
        self.fallback["get /openapi/v3"] << self._serve_openapi_v3_index
        self.fallback["get", re.compile(r"/openapi/v3/.+")] << self._serve_openapi_v3
        for probe in ("/healthz", "/readyz", "/livez"):
            self.fallback[f"get {probe}"] << b"ok"
        self.authorizer = rbac.Authorizer(rbac.PolicySource(
            roles=lambda namespace: self._policy(ROLES, namespace),
            cluster_roles=lambda: self._policy(CLUSTER_ROLES, None),
            role_bindings=lambda namespace: self._policy(ROLE_BINDINGS, namespace),
            cluster_role_bindings=lambda: self._policy(CLUSTER_ROLE_BINDINGS, None),
        ))

    def _policy(self, kind: Kind, namespace: str | None) -> list[JsonDict]:
        return [obj for (ns, _), obj in self._rbac_objects[kind].items() if ns == namespace]

    # --- request plumbing -----------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.path.startswith("/_sandbox/"):
            answer = await knob_routes(self.knobs, raw_request, raw_request.path.split("/")[2:])
            return answer or status_response(StatusError(404, "NotFound", f"no sandbox endpoint {raw_request.path}"))
        call = kube_call(self.cluster_name, raw_request.method, raw_request.path, raw_request.query)
        return await serve_call(self.knobs, raw_request, call, KubeDialect(), lambda: self._serve(raw_request))

    async def _serve(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        request_id = 0
        try:
            request = await self._parse_request(raw_request)
            request_id = request.id
            self._remember(request)
            self._authorize(request, raw_request)
            response = await self._handle(request)
            if not response.prepared:  # a watch stream has sent its headers already
                for name, value in self._extra_headers.get(request_id, ()):
                    response.headers.add(name, value)
            return response
        except StatusError as error:
            return status_response(error)
        except kmock.KubernetesError as error:  # kmock's discovery refusing an unknown group or path
            return status_response(StatusError(error.status, "NotFound",
                                               "the server could not find the requested resource"))
        except Exception as error:
            logger.exception("the Kubernetes stand-in failed on %s %s", raw_request.method, raw_request.path)
            self.unexpected_errors.append(error)
            del self.unexpected_errors[:-50]
            return status_response(StatusError(500, "InternalError", f"Internal error occurred: {error!r}"))
        finally:
            self._extra_headers.pop(request_id, None)
            self._request_attributes.pop(request_id, None)

    # --- authentication and authorization ----------------------------------------------------------

    def authenticate(self, authorization: str) -> rbac.UserInfo:
        """The user an ``Authorization`` header names: the admin token, a service-account token, or anonymous.

        Like the API server's bearer-token authenticators: a service-account token must be signed by this
        cluster's issuer for the API's audience (the issuer URL), unexpired, and its account (and the pod it is
        bound to) must still exist with the same uid; anything else presented as a token is a 401.
        """
        if not authorization.strip():
            return rbac.ANONYMOUS
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise rbac.unauthorized()
        if self.admin_token and secrets.compare_digest(token, self.admin_token):
            return rbac.ADMIN
        try:
            claims = jwt.decode(token, self.issuer.public_key(), algorithms=["RS256"],
                                audience=self.issuer.issuer_url, issuer=self.issuer.issuer_url)
        except jwt.PyJWTError as error:
            raise rbac.unauthorized() from error
        found = claims.get("kubernetes.io")
        private: dict[str, Any] = found if isinstance(found, dict) else {}
        namespace = str(private.get("namespace") or "")
        account_claim = private.get("serviceaccount") or {}
        account = self.get_object(SERVICE_ACCOUNTS, namespace, str(account_claim.get("name")))
        if account is None or account["metadata"].get("uid") != account_claim.get("uid"):
            raise rbac.unauthorized()  # the account was deleted (and maybe made again): its tokens die with it
        extra: dict[str, tuple[str, ...]] = {}
        if claims.get("jti"):
            extra["authentication.kubernetes.io/credential-id"] = (f"JTI={claims['jti']}",)
        pod_claim = private.get("pod")
        if isinstance(pod_claim, dict):
            pod = self.get_object(PODS, namespace, str(pod_claim.get("name")))
            if pod is None or pod["metadata"].get("uid") != pod_claim.get("uid"):
                raise rbac.unauthorized()
            extra["authentication.kubernetes.io/pod-name"] = (str(pod_claim.get("name")),)
            extra["authentication.kubernetes.io/pod-uid"] = (str(pod_claim.get("uid")),)
        return rbac.service_account_user(namespace, str(account_claim.get("name")), str(account_claim.get("uid")),
                                         extra)

    def _authorize(self, request: kmock.Request, raw: aiohttp.web.BaseRequest) -> None:
        user = self.authenticate(_header(request, "Authorization"))
        attributes = rbac.request_attributes(user, raw.method, raw.path, request.params)
        decision = self.authorizer.authorize(attributes)
        if not decision.allowed:
            raise rbac.forbidden(attributes, decision.reason)
        self._request_attributes[request.id] = attributes

    def _attributes(self, request: kmock.Request) -> rbac.Attributes:
        return self._request_attributes.get(request.id) or rbac.Attributes(rbac.ANONYMOUS, "", False)

    def _authorize_create_on_apply(self, request: kmock.Request) -> None:
        """An apply that creates the object needs ``create`` too (the API server's ``withAuthorization``)."""
        attributes = dataclasses.replace(self._attributes(request), verb="create")
        decision = self.authorizer.authorize(attributes)
        if not decision.allowed:
            raise rbac.forbidden_for(attributes, decision.reason)

    def _add_header(self, request: kmock.Request, name: str, value: str) -> None:
        """Send ``name: value`` with this request's answer (a header line each, as the API server does)."""
        self._extra_headers.setdefault(request.id, []).append((name, value))

    async def _parse_request(self, raw: aiohttp.web.BaseRequest) -> kmock.Request:
        body = await raw.read()
        text = body.decode("utf-8", errors="replace")
        data: Any = None
        if body:
            try:
                data = json.loads(body)
            except ValueError:
                data = None  # apply bodies may be YAML; the apply handler parses those itself
        group, version, plural, namespace, name, subresource = _parse_path(raw.path)
        resource = None if group is None else kmock.resource(group=group, version=version, plural=plural)
        query = dict(raw.query)
        self._request_count += 1
        return kmock.Request(
            id=self._request_count, method=raw.method, url=raw.url, params=query,
            headers=dict(raw.headers), cookies=dict(raw.cookies), body=body, text=text, data=data,
            action=_guess_action(raw.method, plural, name, query), resource=resource,
            namespace=namespace, name=name, subresource=subresource, raw_request=raw,
        )

    def _remember(self, request: kmock.Request) -> None:
        self._requests.append(request)
        if len(self._requests) > 2 * _REQUESTS_KEPT:
            del self._requests[:-_REQUESTS_KEPT]
            for reaction in self._payloads:
                del reaction._requests[:-_REQUESTS_KEPT]

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.action == kmock.action.WATCH:
            return await self._watch(request)
        # kmock's reaction dispatch, not the emulator's own _handle, which would store objects its naive way.
        return await self._dispatch(request)

    async def _dispatch(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """Serve ``request`` with the first reaction that takes it, in kmock's order (highest priority first).

        kmock's own dispatch asks each reaction whether the request is among those its view selects, which
        re-evaluates the view's criteria on every request kept in the history before reaching this one: with
        some twenty reactions that was most of the cost of a request. A view that is only filters and priorities
        over this server selects the request exactly when every filter accepts it (the request is in the
        history: ``_remember`` put it there), so those are asked about this request alone; other views
        (slices, groups, exclusions, streams) are asked kmock's way.
        """
        for reaction in self._by_priority():
            if not self._selects(reaction, request) or reaction._disabled.is_set():
                continue
            try:
                return await reaction(request)
            except ReactionMismatchError:  # the reaction does not serve it, or is used up
                reaction._disabled.set()
            except NotImplementedError:  # it took the request but has nothing to answer
                pass
        raise NotImplementedError(f"no reaction of the Kubernetes stand-in serves {request.method} {request.url}")

    def _by_priority(self) -> list[kmock.Reaction]:
        # A reaction's priorities are those of its chain, outermost last; shorter ones count as zero-padded, and
        # reactions of equal priority keep the order they were added in (kmock's rule).
        priorities = [reaction.priorities for reaction in self._payloads]
        width = max((len(p) for p in priorities), default=0)
        order = sorted(range(len(priorities)),
                       key=lambda i: tuple(-p for p in priorities[i]) + (0.0,) * (width - len(priorities[i])))
        return [self._payloads[i] for i in order]

    def _selects(self, reaction: kmock.Reaction, request: kmock.Request) -> bool:
        view: kmock.View = reaction._source
        while view is not self:
            if type(view) is kmock.Filter:
                if not view.criteria(request):
                    return False
            elif type(view) is not kmock.Priority:
                return request in reaction._source  # a view whose answer may depend on other requests
            view = view._source
        return True

    def _target(self, request: kmock.Request) -> tuple[Kind, str | None]:
        ref = request.resource
        kind = self.kind_of(ref.group, ref.version, ref.plural) if ref is not None else None
        if kind is None:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        if not kind.namespaced and request.namespace:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        if kind in REVIEWS and (request.method != "POST" or request.name is not None):
            raise StatusError(405, "MethodNotAllowed", "the server does not allow this method on the requested "
                                                       "resource")
        return kind, request.namespace if kind.namespaced else None

    @staticmethod
    def ref(kind: Kind) -> kmock.resource:
        """Where a kind's objects are kept: a CRD's versions share one store, so its key names no version."""
        return _store_ref(kind)

    # --- the served kinds: the built-in ones and what the CRDs add --------------------------------

    def kind_of(self, group: str | None, version: str | None, plural: str | None) -> Kind | None:
        found = kind_for(group, version, plural)
        if found is None and group and version and plural:
            custom = self._custom.get((group, version, plural))
            return custom.kind if custom is not None else None
        return found

    def custom_version(self, kind: Kind) -> crds.CustomVersion | None:
        return self._custom.get((kind.group, kind.version, kind.plural)) if kind.custom else None

    def served_kinds(self) -> list[Kind]:
        """Every kind served, each version of a CRD on its own (what discovery lists)."""
        return [*KINDS, *(v.kind for _, v in sorted(self._custom.items()))]

    def kinds(self) -> list[Kind]:
        """One kind per stored resource (a CRD's versions share their objects): what walks over all objects use."""
        found: dict[ResourceKey, Kind] = {}
        for version in self._custom.values():
            if version.storage or version.kind.resource_key not in found:
                found[version.kind.resource_key] = version.kind
        return [*KINDS, *found.values()]

    def _definition_of(self, kind: Kind) -> JsonDict | None:
        return self.get_object(CRDS, None, f"{kind.plural}.{kind.group}") if kind.custom else None

    def _serve_definition(self, definition: JsonDict | None, name: str) -> None:
        """(Re)register what a CRD serves; None: it is gone, and so are its kinds."""
        for key in [k for k, v in self._custom.items() if v.definition == name]:
            del self._custom[key]
        if definition is not None:
            for version in crds.served_versions(definition):
                self._custom[(version.kind.group, version.kind.version, version.kind.plural)] = version

    # --- storage --------------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def on_change(self, listener: Callable[[ChangeEvent], None]) -> None:
        """Call ``listener`` after every committed change (the controllers' informer)."""
        self._listeners.append(listener)

    @staticmethod
    def _list_key(kind: Kind, namespace: str | None, name: str) -> ListKey:
        return (namespace or "" if kind.namespaced else "", name)

    def _view(self, kind: Kind, namespace: str | None, name: str) -> JsonDict | None:
        """The stored object itself, read-only: never change it (``get_object`` gives a copy to change)."""
        shelf = self._shelves.get(self.ref(kind))
        if shelf is None or (kind.namespaced and not namespace):
            return None
        return shelf.objects.get(self._list_key(kind, namespace, name))

    def _views(self, kind: Kind, namespace: str | None = None, after: ListKey | None = None) -> Iterator[JsonDict]:
        """The stored objects of a kind in list order (of one namespace, after a key), read-only: never change
        them. Reads only the positions asked for."""
        shelf = self._shelves.get(self.ref(kind))
        if shelf is None or (namespace is not None and not kind.namespaced):
            return iter(())
        order, objects = shelf.order, shelf.objects
        return (objects[order[i]] for i in shelf.span(namespace, after))

    def get_object(self, kind: Kind, namespace: str | None, name: str) -> JsonDict | None:
        stored = self._view(kind, namespace, name)
        return None if stored is None else _in_version(kind, copy.deepcopy(stored))

    def list_objects(self, kind: Kind, namespace: str | None = None,
                     where: Callable[[JsonDict], bool] | None = None, *, owner: str | None = None) -> list[JsonDict]:
        """Copies of the live objects of a kind, by namespace and name; ``where`` filters before copying.

        ``owner``: only the objects with an ownerReference to that uid. Reads only that kind's objects of that
        namespace (or, with ``owner``, that owner's dependents), and copies only those it answers.
        """
        if owner is None:
            found: Iterable[JsonDict] = self._views(kind, namespace)
        else:
            ref, shelf = self.ref(kind), self._shelves.get(self.ref(kind))
            keys = sorted(k for r, k in self._dependents.get(owner, {}) if r == ref
                          and (namespace is None or k[0] == namespace))
            found = [shelf.objects[k] for k in keys] if shelf is not None else []
        return [_in_version(kind, copy.deepcopy(raw)) for raw in found if where is None or where(raw)]

    def scan(self, kind: Kind, namespace: str | None = None) -> Iterator[Mapping[str, Any]]:
        """The live objects of a kind as stored, to look over many of them without copying: read them before the
        next write, and never change them."""
        return self._views(kind, namespace)

    def count_objects(self, kind: Kind, namespace: str | None = None) -> int:
        shelf = self._shelves.get(self.ref(kind))
        if shelf is None or (namespace is not None and not kind.namespaced):
            return 0
        return len(shelf.objects) if namespace is None else len(shelf.span(namespace))

    def _index_owners(self, ref: kmock.resource, key: ListKey, before: JsonDict | None, after: JsonDict | None) -> None:
        was = _owner_uids(before) if before is not None else set()
        now = _owner_uids(after) if after is not None else set()
        for uid in was - now:
            entries = self._dependents.get(uid, {})
            entries.pop((ref, key), None)
            if not entries:
                self._dependents.pop(uid, None)
        for uid in now - was:
            self._dependents.setdefault(uid, {})[ref, key] = None

    def _record_history(self, ref: kmock.resource, namespace: str | None, name: str, stored: JsonDict,
                        deleted: bool) -> None:
        """kmock's per-object history (the last versions, for assertions in tests), sharing the stored dicts."""
        key = (ref, namespace, name)
        if key in self.objects:
            self.objects[key].history.append(stored)
        else:
            self.objects[key] = stored
        history = self.objects[key]
        if deleted:
            history.delete()
            self._tombstones.append(key)
            while len(self._tombstones) > _TOMBSTONES_KEPT:
                gone = self._tombstones.popleft()
                if gone in self.objects and self.objects[gone].deleted:
                    del self.objects[gone]
        if len(history.history) > _HISTORY_KEPT:
            del history.history[:-_HISTORY_KEPT]

    def _commit(self, kind: Kind, event_type: EventType, old: JsonDict | None, new: JsonDict) -> JsonDict:
        self._rv += 1
        new = copy.deepcopy(new)  # the stored dict, never changed from here on; the caller keeps its own
        meta = new.setdefault("metadata", {})
        meta["resourceVersion"] = str(self._rv)
        ref = self.ref(kind)
        namespace = meta.get("namespace") if kind.namespaced else None
        name = str(meta.get("name"))
        key = self._list_key(kind, namespace, name)
        shelf = self._shelves.setdefault(ref, _Shelf())
        before = shelf.objects.get(key)
        if before is not None:
            old = before  # what watches and resumed lists see as the previous state: the stored one, unchangeable
        if event_type == "DELETED":
            shelf.drop(key)
        else:
            shelf.put(key, new)
        self._index_owners(ref, key, before, None if event_type == "DELETED" else new)
        self._record_history(ref, namespace, name, new, event_type == "DELETED")
        if kind in self._rbac_objects:  # the authorizer reads these on every request: keep them at hand
            policy_key = (namespace, name)
            if event_type == "DELETED":
                self._rbac_objects[kind].pop(policy_key, None)
            else:
                self._rbac_objects[kind][policy_key] = copy.deepcopy(new)
        if kind is CRDS:  # what the CRD serves changes with it, before anyone hears of the change
            self._serve_definition(None if event_type == "DELETED" else new, name)
        change = ChangeEvent(event_type, kind, new, old, self._rv)
        resource = kind.resource_key
        log = self._logs.get(resource)
        if log is None or log.maxlen != self.watch_window:  # first change of the resource, or a new window
            kept = list(log or ())
            if len(kept) > self.watch_window:
                self._evicted[resource] = kept[-self.watch_window - 1].rv
            log = self._logs[resource] = collections.deque(kept, maxlen=self.watch_window)
        if len(log) == log.maxlen:
            self._evicted[resource] = log[0].rv  # watches from before this one must list again (410 Gone)
        log.append(change)
        for watcher in list(self._watchers.get(resource, ())):
            event = watcher.event_for(change)
            if event is not None:
                watcher.queue.put_nowait(event)
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:  # a broken controller must not fail the client's write
                logger.exception("a change listener failed")
        if kind.custom and event_type == "DELETED":
            self._finish_definition_cleanup(kind)
        return copy.deepcopy(new)

    def _generate_name(self, kind: Kind, namespace: str | None, prefix: str) -> str:
        prefix = prefix[: 63 - 5]
        while True:
            candidate = prefix + random_suffix()
            if self.get_object(kind, namespace, candidate) is None:
                return candidate

    def _check_namespace(self, kind: Kind, namespace: str | None, name: str) -> None:
        if not kind.namespaced:
            return
        if not namespace:
            raise bad_request("the namespace of the object must be set for a namespaced resource")
        ns = self.get_object(NAMESPACES, None, namespace)
        if ns is None:
            raise not_found(NAMESPACES, namespace)
        if ns.get("metadata", {}).get("deletionTimestamp"):
            raise StatusError(403, "Forbidden", f'{kind.qualified} "{name}" is forbidden: unable to create new '
                                                f"content in namespace {namespace} because it is being terminated",
                              {"name": name, "kind": kind.plural})

    # --- the operations (used by HTTP handlers and by the controllers) ---------------------------

    async def create_object(self, kind: Kind, namespace: str | None, body: Mapping[str, Any], *, manager: str,
                            dry_run: bool = False, keep_managed_fields: bool = False) -> JsonDict:
        """Create an object through the same path a POST takes: defaults, admission, validation, storage."""
        if not isinstance(body, Mapping):
            raise bad_request("the body of the request must be an object")
        obj = copy.deepcopy(dict(body))
        self._check_type(kind, obj)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if kind.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise bad_request("the namespace of the provided object does not match the namespace sent on "
                                  "the request")
            namespace = namespace or meta.get("namespace")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        for key in ("uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
                    "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(key, None)
        managed = meta.pop("managedFields", None)
        if kind.status_subresource:
            obj.pop("status", None)
        shown_name = str(meta.get("name") or meta.get("generateName") or "")
        self._check_namespace(kind, namespace, shown_name)
        if kind.custom:
            self._check_definition_accepts_writes(kind)
        apply_defaults(kind, obj)
        if kind is CRDS:
            crds.default_definition(obj)
            obj.pop("status", None)
        self._shape_custom(kind, obj)
        if kind is PODS:
            obj = await self._admit_pod(obj, str(namespace), shown_name)
            meta = obj.setdefault("metadata", {})
            self._check_namespace(kind, namespace, shown_name)  # the webhooks took time; it may be gone
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = self._generate_name(kind, namespace, str(meta["generateName"]))
        self._validate(kind, obj, None)
        name = str(meta["name"])
        if self.get_object(kind, namespace, name) is not None:
            raise already_exists(kind, name)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if kind.has_generation:
            meta["generation"] = 1
        if kind is JOBS:
            default_job_selector(obj)
        if keep_managed_fields and managed:
            meta["managedFields"] = managed
        else:
            record_update(None, obj, manager=manager, api_version=kind.api_version, now=now_rfc3339(),
                          with_status=not kind.status_subresource)
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        if dry_run:
            return obj
        created = self._commit(kind, "ADDED", None, obj)
        if kind is CRDS:
            self._establish(created)
        return created

    def _check_type(self, kind: Kind, obj: Mapping[str, Any]) -> None:
        api_version, type_name = obj.get("apiVersion"), obj.get("kind")
        if api_version and api_version != kind.api_version:
            raise bad_request(f"the API version in the data ({api_version}) does not match the expected API "
                              f"version ({kind.api_version})")
        if type_name and type_name != kind.kind:
            raise bad_request(f"the kind in the data ({type_name}) does not match the expected kind ({kind.kind})")

    async def _admit_pod(self, pod: JsonDict, namespace: str, shown_name: str) -> JsonDict:
        account_name = str(pod.get("spec", {}).get("serviceAccountName") or "default")
        account = self.get_object(SERVICE_ACCOUNTS, namespace, account_name)
        if account is None:
            raise forbidden(PODS, shown_name, f"error looking up service account {namespace}/{account_name}: "
                                              f'serviceaccount "{account_name}" not found')
        pod = service_account_admission(pod, account)
        for mutator in tuple(self.mutators):
            # In a thread: a webhook may block (it asks another stand-in), and must not stall the API server.
            try:
                mutated = await asyncio.to_thread(mutator, copy.deepcopy(pod), copy.deepcopy(account),
                                                  self.cluster_name)
            except WebhookDenied as denied:
                raise StatusError(denied.status, "BadRequest", f'admission webhook "{mutator_name(mutator)}" '
                                                               f"denied the request: {denied.message}") from denied
            except Exception as error:
                raise StatusError(500, "InternalError", f'Internal error occurred: failed calling webhook '
                                                        f'"{mutator_name(mutator)}": {error}') from error
            if not isinstance(mutated, dict):
                raise StatusError(500, "InternalError", f'Internal error occurred: webhook '
                                                        f'"{mutator_name(mutator)}" returned no pod')
            pod = mutated
        return pod

    def write_object(self, kind: Kind, live: JsonDict, candidate: JsonDict, *, manager: str,
                     subresource: str = "", dry_run: bool = False, managed_done: bool = False,
                     trusted: bool = False) -> JsonDict:
        """Store ``candidate`` as the next state of ``live`` with the API server's update rules."""
        live_meta = live.get("metadata") or {}
        name = str(live_meta.get("name"))
        cand_meta = candidate.get("metadata")
        if not isinstance(cand_meta, dict):
            cand_meta = {}
        wanted_rv = cand_meta.get("resourceVersion")
        if wanted_rv and str(wanted_rv) != str(live_meta.get("resourceVersion")):
            raise conflict(kind, name, "the object has been modified; please apply your changes to the latest "
                                       "version and try again")
        if cand_meta.get("name") and cand_meta.get("name") != name:
            raise bad_request(f"the name of the object ({cand_meta.get('name')}) does not match the name on the "
                              f"URL ({name})")
        if cand_meta.get("uid") and cand_meta.get("uid") != live_meta.get("uid"):
            raise conflict(kind, name, f"Precondition failed: UID in precondition: {cand_meta.get('uid')}, UID in "
                                       f"object meta: {live_meta.get('uid')}")
        self._check_type(kind, candidate)
        if subresource == "status":
            new = copy.deepcopy(live)
            if "status" in candidate:
                new["status"] = copy.deepcopy(candidate["status"])
            else:
                new.pop("status", None)
            if managed_done:
                new["metadata"]["managedFields"] = cand_meta.get("managedFields", [])
        else:
            new = copy.deepcopy(candidate)
            if kind.status_subresource and not trusted:
                if "status" in live:
                    new["status"] = copy.deepcopy(live["status"])
                else:
                    new.pop("status", None)
        meta = new.setdefault("metadata", {})
        for key in ("name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp",
                    "deletionGracePeriodSeconds", "resourceVersion"):
            if key in live_meta:
                meta[key] = copy.deepcopy(live_meta[key])
            else:
                meta.pop(key, None)
        new["apiVersion"], new["kind"] = kind.api_version, kind.kind
        self._shape_custom(kind, new)
        if subresource != "status" or kind.custom:  # a custom object's status is checked against its schema too
            self._validate(kind, new, None if trusted else live)
        if kind.custom:
            counted = crds.generation_view(kind, new) != crds.generation_view(kind, live)
        else:
            counted = new.get("spec") != live.get("spec")
        if kind.has_generation and counted:
            meta["generation"] = int(live_meta.get("generation") or 1) + 1
        if not managed_done:
            record_update(live, new, manager=manager, api_version=kind.api_version, now=now_rfc3339(),
                          subresource=subresource, with_status=subresource == "status" or not kind.status_subresource)
        if new == live:
            return live  # a no-op write changes nothing, not even the resourceVersion
        if dry_run:
            return new
        pending = meta.get("finalizers") or (kind is NAMESPACES and (new.get("spec") or {}).get("finalizers"))
        if meta.get("deletionTimestamp") and not pending:
            return self._commit(kind, "DELETED", live, new)  # the last finalizer is gone
        written = self._commit(kind, "MODIFIED", live, new)
        if kind is CRDS and subresource != "status" and not meta.get("deletionTimestamp"):
            self._establish(written)
        return written

    async def patch_object(self, kind: Kind, namespace: str | None, name: str, content_type: str, body: Any, *,
                           manager: str | None, force: bool = False, subresource: str = "",
                           dry_run: bool = False) -> tuple[JsonDict, bool]:
        """Apply one PATCH request; answers (object, created)."""
        live = self.get_object(kind, namespace, name)
        if content_type == APPLY_PATCH:
            if not manager:
                raise bad_request("PATCH /apply: fieldManager is required for apply requests")
            config = self._parse_apply_body(body)
            meta = config.get("metadata") or {}
            if meta.get("name") and meta["name"] != name:
                raise bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL "
                                  f"({name})")
            if not config.get("apiVersion") or not config.get("kind"):
                raise bad_request("apply requests need apiVersion and kind in the body")
            self._check_type(kind, config)
            with_status = subresource == "status"
            try:
                result = server_side_apply(live, config, manager=manager, force=force,
                                           api_version=kind.api_version, now=now_rfc3339(), with_status=with_status)
            except ApplyConflictError as error:
                raise StatusError(409, "Conflict", error.message, {
                    "name": name, **({"group": kind.group} if kind.group else {}), "kind": kind.plural,
                    "causes": [{"reason": "FieldManagerConflict", "field": render_path(c.path),
                                "message": f'conflict with "{c.manager}" using {c.api_version}'}
                               for c in error.conflicts],
                }) from error
            if live is None:
                if subresource:
                    raise not_found(kind, name)
                merged = result.obj
                merged.setdefault("metadata", {})["name"] = name
                return await self.create_object(kind, namespace, merged, manager=manager, dry_run=dry_run,
                                         keep_managed_fields=True), True
            return self.write_object(kind, live, result.obj, manager=manager, subresource=subresource, dry_run=dry_run,
                              managed_done=True), False
        if live is None:
            raise not_found(kind, name)
        try:
            if content_type == MERGE_PATCH:
                if not isinstance(body, dict):
                    raise bad_request("a merge patch must be a JSON object")
                candidate = merge_patch(live, body)
            elif content_type == STRATEGIC_PATCH and kind.custom:
                raise StatusError(415, "UnsupportedMediaType",
                                  f"the body of the request was in an unknown format - accepted media types "
                                  f"include: {JSON_PATCH}, {MERGE_PATCH}, {APPLY_PATCH}")
            elif content_type == STRATEGIC_PATCH:
                if not isinstance(body, dict):
                    raise bad_request("a strategic merge patch must be a JSON object")
                candidate = strategic_merge_patch(live, body)
            elif content_type == JSON_PATCH:
                if not isinstance(body, list):
                    raise bad_request("a JSON patch must be a list of operations")
                candidate = json_patch(live, body)
            else:
                raise StatusError(415, "UnsupportedMediaType",
                                  f'the body of the request was in an unknown format - accepted media types '
                                  f'include: {JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC_PATCH}, {APPLY_PATCH}')
        except PatchError as error:
            raise StatusError(422, "Invalid", f"the server rejected our request due to an error in our request: "
                                              f"{error}", {"name": name, "kind": kind.plural}) from error
        if not isinstance(candidate, dict):
            raise StatusError(422, "Invalid", "the patch does not leave an object")
        return self.write_object(kind, live, candidate, manager=manager or "unknown", subresource=subresource,
                          dry_run=dry_run), False

    @staticmethod
    def _parse_apply_body(body: Any) -> JsonDict:
        if isinstance(body, bytes):
            try:
                parsed = json.loads(body)
            except ValueError:
                try:
                    parsed = YAML(typ="safe", pure=True).load(body.decode("utf-8"))
                except Exception as error:
                    raise bad_request(f"error decoding YAML: {error}") from error
        else:
            parsed = body
        if not isinstance(parsed, dict):
            raise bad_request("the body of an apply request must be an object")
        return dict(parsed)

    async def delete_object(self, kind: Kind, namespace: str | None, name: str, *,
                            propagation: str = "Background", preconditions: Mapping[str, Any] | None = None,
                            dry_run: bool = False) -> JsonDict:
        """Delete like the API server: finalizers and namespaces wait, dependents follow unless orphaned."""
        live = self.get_object(kind, namespace, name)
        if live is None:
            raise not_found(kind, name)
        meta = live.get("metadata") or {}
        for field_name in ("uid", "resourceVersion"):
            wanted = (preconditions or {}).get(field_name)
            if wanted and str(wanted) != str(meta.get(field_name)):
                raise conflict(kind, name, f"Precondition failed: {field_name} in precondition: {wanted}, "
                                           f"{field_name} in object meta: {meta.get(field_name)}")
        if dry_run:
            return live
        if meta.get("deletionTimestamp"):
            return live
        if kind is NAMESPACES:
            # Namespaces go through Terminating while their content is removed (the controllers do it).
            terminating = copy.deepcopy(live)
            terminating["metadata"]["deletionTimestamp"] = now_rfc3339()
            terminating.setdefault("status", {})["phase"] = "Terminating"
            return self._commit(kind, "MODIFIED", live, terminating)
        if kind is CRDS:
            return await self._delete_definition(live)
        if meta.get("finalizers"):
            marked = copy.deepcopy(live)
            marked["metadata"]["deletionTimestamp"] = now_rfc3339()
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            if kind.has_generation:  # the first graceful deletion bumps the generation (rest.BeforeDelete)
                marked["metadata"]["generation"] = int(meta.get("generation") or 1) + 1
            return self._commit(kind, "MODIFIED", live, marked)
        if propagation == "Orphan":
            self._orphan_dependents(kind, live)
        return self._commit(kind, "DELETED", live, live)

    # --- custom resources ------------------------------------------------------------------------

    def _shape_custom(self, kind: Kind, obj: JsonDict) -> None:
        """Default, then prune, a custom object by its version's schema (what the API server stores)."""
        version = self.custom_version(kind)
        if version is not None:
            crds.apply_defaults(version.schema, obj)
            crds.prune(version.schema, obj)

    def _validate(self, kind: Kind, obj: JsonDict, old: JsonDict | None) -> None:
        version = self.custom_version(kind)
        if version is not None:
            causes = validate_metadata(kind, obj) + crds.validate_object(version.schema, obj)
        elif kind is CRDS:
            causes = validate_metadata(kind, obj) + crds.validate_definition(obj, old)
        else:
            validate(kind, obj, old)
            return
        if causes:
            raise invalid(kind, str((obj.get("metadata") or {}).get("name") or ""), causes)

    def _check_definition_accepts_writes(self, kind: Kind) -> None:
        definition = self._definition_of(kind)
        if definition is not None and definition["metadata"].get("deletionTimestamp"):
            raise StatusError(405, "MethodNotAllowed", "create not allowed while custom resource definition is "
                                                       "terminating")

    def _establish(self, definition: JsonDict) -> None:
        """The naming and establishing controllers: accept the names, mark the CRD Established, record storage."""
        wanted = copy.deepcopy(definition)
        wanted["status"] = crds.established_status(definition)
        if wanted["status"] != definition.get("status"):
            wanted["metadata"].pop("resourceVersion", None)
            self.write_object(CRDS, definition, wanted, manager="kube-apiserver", subresource="status", trusted=True)

    async def _delete_definition(self, live: JsonDict) -> JsonDict:
        """Deleting a CRD: it turns Terminating, its objects are deleted (waiting on their own finalizers),
        then the cleanup finalizer goes and the CRD with it (the apiextensions finalizer controller)."""
        marked = copy.deepcopy(live)
        meta = marked["metadata"]
        meta["deletionTimestamp"] = now_rfc3339()
        meta["deletionGracePeriodSeconds"] = 0
        meta["finalizers"] = [*(meta.get("finalizers") or []), crds.CLEANUP_FINALIZER]
        status = marked.setdefault("status", {})
        status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != "Terminating"] + [
            {"type": "Terminating", "status": "True", "reason": "InstanceDeletionInProgress",
             "message": "CustomResource deletion is in progress", "lastTransitionTime": meta["deletionTimestamp"]}]
        terminating = self._commit(CRDS, "MODIFIED", live, marked)
        served = [v.kind for v in self._custom.values() if v.definition == meta["name"]]
        if served:
            kind = served[0]
            for obj in self.list_objects(kind):
                with contextlib.suppress(StatusError):
                    await self.delete_object(kind, obj["metadata"].get("namespace"), obj["metadata"]["name"])
            self._finish_definition_cleanup(kind)
        return self.get_object(CRDS, None, meta["name"]) or terminating

    def _finish_definition_cleanup(self, kind: Kind) -> None:
        """Once a terminating CRD's last object is gone, drop its cleanup finalizer (and so the CRD)."""
        definition = self._definition_of(kind)
        if definition is None or not definition["metadata"].get("deletionTimestamp") or self.count_objects(kind):
            return
        finalizers = definition["metadata"].get("finalizers") or []
        if crds.CLEANUP_FINALIZER in finalizers:
            done = copy.deepcopy(definition)
            done["metadata"]["finalizers"] = [f for f in finalizers if f != crds.CLEANUP_FINALIZER]
            done["metadata"].pop("resourceVersion", None)
            self.write_object(CRDS, definition, done, manager="kube-apiserver", trusted=True)

    def _orphan_dependents(self, kind: Kind, owner: Mapping[str, Any]) -> None:
        uid = str((owner.get("metadata") or {}).get("uid"))
        namespace = (owner.get("metadata") or {}).get("namespace")
        for dependent_kind, dependent in self.dependents(uid, namespace):
            updated = copy.deepcopy(dependent)
            refs = [r for r in updated["metadata"].get("ownerReferences", []) if r.get("uid") != uid]
            if refs:
                updated["metadata"]["ownerReferences"] = refs
            else:
                updated["metadata"].pop("ownerReferences", None)
            self.write_object(dependent_kind, dependent, updated, manager="kube-controller-manager", trusted=True)

    def dependents(self, owner_uid: str, namespace: str | None) -> list[tuple[Kind, JsonDict]]:
        """Copies of the objects with an ownerReference to ``owner_uid``, kind by kind (read from the owner index)."""
        if owner_uid not in self._dependents:
            return []
        return [(kind, obj) for kind in self.kinds()
                for obj in self.list_objects(kind, namespace if kind.namespaced else None, owner=owner_uid)]

    @staticmethod
    def _selector(kind: Kind, label_selector: str | None,
                  field_selector: str | None) -> Callable[[Mapping[str, Any]], bool] | None:
        """What a label and a field selector select; None when they select everything."""
        try:
            labels = parse_label_selector(label_selector)
            fields = parse_field_selector(field_selector, kind.field_selectors)
        except SelectorError as error:
            raise bad_request(str(error)) from error
        if not labels and not fields:
            return None
        return lambda obj: labels_match(labels, (obj.get("metadata") or {}).get("labels")) and all(
            f.matches(obj) for f in fields)

    @classmethod
    def _matcher(cls, kind: Kind, label_selector: str | None,
                 field_selector: str | None) -> Callable[[Mapping[str, Any]], bool]:
        return cls._selector(kind, label_selector, field_selector) or (lambda obj: True)

    def select(self, kind: Kind, namespace: str | None, label_selector: str | None = None,
               field_selector: str | None = None) -> list[JsonDict]:
        return self.list_objects(kind, namespace, self._matcher(kind, label_selector, field_selector))

    def mint_token(self, namespace: str, service_account: str, audiences: Iterable[str] | None = None, *,
                   expiration_seconds: int = DEFAULT_EXPIRATION_SECONDS, pod: Mapping[str, Any] | None = None,
                   ) -> str:
        """A token for the service account, bound to ``pod`` if given (what the kubelet projects)."""
        account = self.get_object(SERVICE_ACCOUNTS, namespace, service_account)
        if account is None:
            raise not_found(SERVICE_ACCOUNTS, service_account)
        bound = None
        if pod is not None:
            pod_meta = pod.get("metadata") or {}
            bound = BoundObject(str(pod_meta.get("name")), str(pod_meta.get("uid")), self.node_name, self.node_uid)
        wanted = [a for a in audiences or () if a] or [self.issuer.issuer_url]
        return self.issuer.mint(
            namespace=namespace, service_account=service_account,
            service_account_uid=str(account["metadata"]["uid"]), audiences=wanted,
            expiration_seconds=expiration_seconds, bound=bound,
        )

    # --- HTTP handlers (kmock reactions) --------------------------------------------------------

    def _manager(self, request: kmock.Request) -> str:
        manager = request.params.get("fieldManager")
        if manager:
            return manager
        # Without fieldManager the API server names the writer after its user agent's product.
        agent = _header(request, "User-Agent").split("/")[0].strip()
        return agent[:128] or "unknown"

    @staticmethod
    def _dry_run(request: kmock.Request) -> bool:
        return request.params.get("dryRun") == "All"

    def _field_validation(self, request: kmock.Request, kind: Kind, body: Any, *, patch: bool = False) -> None:
        """Warn about unknown fields in a write's body; with ``fieldValidation=Strict``, refuse it.

        Like the API server: Warn (the default) answers a ``Warning`` header per unknown field, Strict
        refuses the request, Ignore says nothing. Unlike it, the stand-in keeps the fields it warns about.
        """
        directive = request.params.get("fieldValidation") or "Warn"
        if directive not in ("Ignore", "Warn", "Strict"):
            raise bad_request(f'fieldValidation: Unsupported value: "{directive}": supported values: '
                              '"Ignore", "Strict", "Warn"')
        if directive == "Ignore" or not isinstance(body, dict):
            return
        version = self.custom_version(kind)
        unknown = (crds.unknown_fields(version.schema, body) if version is not None
                   else openapi.schemas().unknown_fields(kind, body, patch=patch))
        problems = [f'unknown field "{path}"' for path in unknown]
        if problems and directive == "Strict":
            raise bad_request(f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: '
                              f"strict decoding error: {', '.join(problems)}")
        for problem in problems:
            self._add_header(request, "Warning", f"299 - {json.dumps(problem)}")

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        kind, namespace = self._target(request)
        assert request.name is not None  # a FETCH has a name by definition
        if request.subresource == "scale" and "scale" in kind.subresources:
            live = self.get_object(kind, namespace, request.name)
            if live is None:
                raise not_found(kind, request.name)
            return _api_response(self._scale_of(live))
        if request.subresource not in (None, "status"):
            if kind is PODS and request.subresource == "log":
                if self.get_object(kind, namespace, request.name) is None:
                    raise not_found(kind, request.name)
                return KmockResponse(status=200, headers={"Content-Type": "text/plain"}, payload=b"")
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        stored = self._view(kind, namespace, request.name)  # serialized here and now: no copy needed
        if stored is None:
            raise not_found(kind, request.name)
        obj = _in_version(kind, stored)
        if tables.wants_table(_header(request, "Accept")):
            return _api_response(self._table(request, kind, [obj], {"resourceVersion": str(self._rv)}))
        return _api_response(obj)

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        """A list at the newest version, or (resourceVersionMatch=Exact) as it was at the version asked for.

        Only the page is read whole (without a selector; with one, the rest is only matched, for
        remainingItemCount), and nothing is copied: the stored objects are never changed, and the page is
        serialized here, before any other request runs.
        """
        kind, namespace = self._target(request)
        self._check_list_options(request, watch=False)
        since = self._resource_version(request.params.get("resourceVersion"))
        listed_rv = self._rv
        exact = since if request.params.get("resourceVersionMatch") == "Exact" and since != self._rv else None
        if exact is not None:
            gone = self._expired(kind, exact)
            if gone is not None:
                raise gone
            listed_rv = exact
        selects = self._selector(kind, request.params.get("labelSelector"), request.params.get("fieldSelector"))
        after: ListKey | None = None
        token = request.params.get("continue")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                after = (str(state["after"][0]), str(state["after"][1]))
                listed_rv = int(state["rv"])
            except (ValueError, KeyError, TypeError, IndexError) as error:
                raise bad_request("continue key is not valid") from error
        limit_text = request.params.get("limit")
        limit = int(limit_text) if limit_text and limit_text.isdigit() and int(limit_text) > 0 else None
        shelf = self._shelves.get(self.ref(kind))
        if exact is not None:
            candidates: Iterable[JsonDict] = (
                o for o in self._objects_at(kind, exact)
                if (namespace is None or o["metadata"].get("namespace") == namespace)
                and (after is None or _list_key_of(o) > after))
            found, rest = _page(candidates, selects, limit)
        elif selects is None and limit is not None and shelf is not None:  # the page alone, the rest counted
            span = shelf.span(namespace, after)
            found = [shelf.objects[shelf.order[i]] for i in span[:limit]]
            rest = len(span) - len(found)
        else:
            found, rest = _page(self._views(kind, namespace, after), selects, limit)
        meta: JsonDict = {"resourceVersion": str(listed_rv)}
        if rest:
            last = found[-1]["metadata"]
            state = {"rv": listed_rv, "after": [last.get("namespace") or "", last["name"]]}
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
            meta["remainingItemCount"] = rest
        shown = [_in_version(kind, o) for o in found]
        if tables.wants_table(_header(request, "Accept")):
            return _api_response(self._table(request, kind, shown, meta))
        return _api_response({
            "kind": f"{kind.kind}List", "apiVersion": kind.api_version, "metadata": meta,
            "items": [_strip_for_list(o) for o in shown],
        })

    def _table(self, request: kmock.Request, kind: Kind, objects: list[JsonDict], meta: JsonDict) -> JsonDict:
        include = request.params.get("includeObject") or "Metadata"
        if include not in ("None", "Metadata", "Object"):
            raise bad_request(f'includeObject: Unsupported value: "{include}": supported values: "Metadata", '
                              '"None", "Object"')
        version = self.custom_version(kind)
        return tables.table(kind, objects, meta, include_object=include,
                            custom=version.columns if version is not None else None)

    # --- the scale subresource (autoscaling/v1 Scale), what `kubectl scale` reads and writes ---------

    @staticmethod
    def _scale_of(obj: Mapping[str, Any]) -> JsonDict:
        meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
        selector = spec.get("selector") or {}
        text = ",".join(f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items()))
        return {
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                         if k in meta},
            "spec": {"replicas": int(spec.get("replicas", 1))},
            "status": {"replicas": int(status.get("replicas") or 0), "selector": text},
        }

    def _write_scale(self, request: kmock.Request, kind: Kind, namespace: str, name: str, scale: Any) -> JsonDict:
        live = self.get_object(kind, namespace, name)
        if live is None:
            raise not_found(kind, name)
        if not isinstance(scale, dict) or (scale.get("apiVersion") not in (None, "autoscaling/v1")
                                           or scale.get("kind") not in (None, "Scale")):
            raise bad_request("the body of a scale request must be an autoscaling/v1 Scale")
        meta = scale.get("metadata") or {}
        wanted_rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if wanted_rv and str(wanted_rv) != str(live["metadata"].get("resourceVersion")):
            raise conflict(kind, name, "the object has been modified; please apply your changes to the latest "
                                       "version and try again")
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise StatusError(422, "Invalid", f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: '
                                              f"{json.dumps(replicas)}: must be greater than or equal to 0",
                              {"name": name, "group": "autoscaling", "kind": "Scale",
                               "causes": [{"reason": "FieldValueInvalid", "field": "spec.replicas",
                                           "message": "Invalid value: must be greater than or equal to 0"}]})
        candidate = copy.deepcopy(live)
        candidate["spec"]["replicas"] = replicas
        candidate["metadata"].pop("resourceVersion", None)
        written = self.write_object(kind, live, candidate, manager=self._manager(request), subresource="scale",
                                    dry_run=self._dry_run(request))
        return self._scale_of(written)

    def _patch_scale(self, request: kmock.Request, kind: Kind, namespace: str, name: str,
                     content_type: str) -> kmock.Payload:
        live = self.get_object(kind, namespace, name)
        if live is None:
            raise not_found(kind, name)
        current = self._scale_of(live)
        body = request.data
        try:
            if content_type in (MERGE_PATCH, STRATEGIC_PATCH) and isinstance(body, dict):
                patched = merge_patch(current, body)  # a Scale has no lists: both patch types merge the same way
            elif content_type == JSON_PATCH and isinstance(body, list):
                patched = json_patch(current, body)
            elif content_type == APPLY_PATCH:
                patched = merge_patch(current, self._parse_apply_body(request.body))
            else:
                raise StatusError(415, "UnsupportedMediaType",
                                  f"the body of the request was in an unknown format - accepted media types "
                                  f"include: {JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC_PATCH}, {APPLY_PATCH}")
        except PatchError as error:
            raise StatusError(422, "Invalid", f"the server rejected our request due to an error in our request: "
                                              f"{error}", {"name": name, "kind": kind.plural}) from error
        return _api_response(self._write_scale(request, kind, namespace, name, patched))

    # --- reviews: who am I, may I ---------------------------------------------------------------

    def _review(self, kind: Kind, body: JsonDict, user: rbac.UserInfo) -> JsonDict:
        given = body.get("spec")
        spec: JsonDict = given if isinstance(given, dict) else {}
        answer: JsonDict = {"kind": kind.kind, "apiVersion": kind.api_version,
                            "metadata": {"creationTimestamp": None}}
        if kind is SELF_SUBJECT_ACCESS_REVIEWS:
            resource, url = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
            if (resource is None) == (url is None):
                raise invalid(kind, "", [Cause("spec.resourceAttributes", 'Invalid value: "null": exactly one of '
                                                                          "nonResourceAttributes or resourceAttributes "
                                                                          "must be specified")])
            if isinstance(resource, dict):
                asked = rbac.Attributes(
                    user, str(resource.get("verb") or ""), True, group=str(resource.get("group") or ""),
                    version=str(resource.get("version") or ""), resource=str(resource.get("resource") or ""),
                    subresource=str(resource.get("subresource") or ""),
                    namespace=str(resource.get("namespace") or ""), name=str(resource.get("name") or ""))
            else:
                asked = rbac.Attributes(user, str((url or {}).get("verb") or ""), False,
                                        path=str((url or {}).get("path") or ""))
            decision = self.authorizer.authorize(asked)
            status: JsonDict = {"allowed": decision.allowed}
            if decision.reason:
                status["reason"] = decision.reason
            return {**answer, "spec": spec, "status": status}
        if kind is SELF_SUBJECT_RULES_REVIEWS:
            resource_rules, url_rules, errors = self.authorizer.rules(user, str(spec.get("namespace") or ""))
            rules_status: JsonDict = {"resourceRules": resource_rules, "nonResourceRules": url_rules,
                                      "incomplete": bool(errors)}
            if errors:
                rules_status["evaluationError"] = ", ".join(errors)
            return {**answer, "spec": spec, "status": rules_status}
        return {**answer, "status": {"userInfo": user.to_api()}}

    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        kind, namespace = self._target(request)
        if not isinstance(request.data, dict):
            raise bad_request("the body of the request must be a JSON object")
        if kind in REVIEWS:
            self._check_type(kind, request.data)
            return _api_response(self._review(kind, request.data, self._attributes(request).user), 201)
        self._field_validation(request, kind, request.data)
        obj = await self.create_object(kind, namespace, request.data, manager=self._manager(request),
                                dry_run=self._dry_run(request))
        return _api_response(obj, 201)

    async def _serve_update(self, request: kmock.Request) -> kmock.Payload:
        kind, namespace = self._target(request)
        assert request.name is not None  # a PATCH has a name by definition
        content_type = _header(request, "Content-Type").split(";")[0].strip().lower()
        if request.subresource == "scale" and "scale" in kind.subresources:
            return self._patch_scale(request, kind, str(namespace), request.name, content_type)
        if request.subresource not in (None, "status"):
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        body: Any = request.body if content_type == APPLY_PATCH else request.data
        if content_type == APPLY_PATCH and not request.subresource and \
                self.get_object(kind, namespace, request.name) is None:
            self._authorize_create_on_apply(request)
        if content_type != APPLY_PATCH and body is None:
            raise bad_request("the body of the request could not be decoded as JSON")
        checked = self._parse_apply_body(body) if content_type == APPLY_PATCH else body
        self._field_validation(request, kind, checked, patch=content_type == STRATEGIC_PATCH)
        manager = request.params.get("fieldManager") or (None if content_type == APPLY_PATCH
                                                         else self._manager(request))
        obj, created = await self.patch_object(
            kind, namespace, request.name, content_type, body, manager=manager,
            force=request.params.get("force") == "true", subresource=request.subresource or "",
            dry_run=self._dry_run(request),
        )
        return _api_response(obj, 201 if created else 200)

    async def _serve_replace(self, request: kmock.Request) -> kmock.Payload:
        kind, namespace = self._target(request)
        if request.name is not None and request.subresource == "scale" and "scale" in kind.subresources:
            if not isinstance(request.data, dict):
                raise bad_request("the body of the request must be a JSON object")
            return _api_response(self._write_scale(request, kind, str(namespace), request.name, request.data))
        if request.name is None or request.subresource not in (None, "status"):
            raise StatusError(405, "MethodNotAllowed", "the server does not allow this method on the requested "
                                                       "resource")
        if not isinstance(request.data, dict):
            raise bad_request("the body of the request must be a JSON object")
        self._field_validation(request, kind, request.data)
        live = self.get_object(kind, namespace, request.name)
        if live is None:
            raise not_found(kind, request.name)
        obj = self.write_object(kind, live, request.data, manager=self._manager(request),
                         subresource=request.subresource or "", dry_run=self._dry_run(request))
        return _api_response(obj)

    async def _serve_delete(self, request: kmock.Request) -> kmock.Payload:
        kind, namespace = self._target(request)
        assert request.name is not None  # a DELETE of one object has a name by definition
        options = request.data if isinstance(request.data, dict) else {}
        propagation = str(options.get("propagationPolicy") or request.params.get("propagationPolicy")
                          or "Background")
        if options.get("orphanDependents") is True or request.params.get("orphanDependents") == "true":
            propagation = "Orphan"
        dry_run = self._dry_run(request) or options.get("dryRun") == ["All"]
        obj = await self.delete_object(kind, namespace, request.name, propagation=propagation,
                                preconditions=options.get("preconditions"), dry_run=dry_run)
        if kind is PODS or (obj.get("metadata") or {}).get("deletionTimestamp"):
            return _api_response(obj)  # graceful or finalized deletions answer with the object
        details: JsonDict = {"name": request.name, "kind": kind.plural, "uid": obj["metadata"].get("uid")}
        if kind.group:
            details["group"] = kind.group
        return _api_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                              "details": details})

    async def _serve_delete_collection(self, request: kmock.Request) -> kmock.Payload:
        kind, namespace = self._target(request)
        if request.name is not None:
            raise StatusError(405, "MethodNotAllowed", "the server does not allow this method on the requested "
                                                       "resource")
        deleted = []
        for obj in self.select(kind, namespace, request.params.get("labelSelector"),
                               request.params.get("fieldSelector")):
            meta = obj["metadata"]
            deleted.append(await self.delete_object(kind, meta.get("namespace"), meta["name"],
                                             dry_run=self._dry_run(request)))
        return _api_response({"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                              "metadata": {"resourceVersion": str(self._rv)},
                              "items": [_strip_for_list(o) for o in deleted]})

    async def _serve_post_subresource(self, request: kmock.Request) -> kmock.Payload:
        kind, namespace = self._target(request)
        if kind is SERVICE_ACCOUNTS and request.name and request.subresource == "token":
            return self._token_request(str(namespace), request.name, request.data)
        if kind is PODS and request.subresource in ("exec", "attach", "portforward", "eviction"):
            raise StatusError(400, "BadRequest", f"{request.subresource} is not available in the keyless sandbox; "
                                                 "use `keyless sandbox exec` to run a command as a pod")
        raise StatusError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def _token_request(self, namespace: str, name: str, body: Any) -> kmock.Payload:
        spec = (body or {}).get("spec") or {} if isinstance(body, dict) else {}
        expiration = int(spec.get("expirationSeconds") or DEFAULT_EXPIRATION_SECONDS)
        if expiration < 600:
            raise StatusError(422, "Invalid", 'TokenRequest.authentication.k8s.io "' + name + '" is invalid: '
                                              "spec.expirationSeconds: Invalid value: may not specify a duration "
                                              "less than 10 minutes")
        pod = None
        bound = spec.get("boundObjectRef") or {}
        if bound.get("kind") == "Pod":
            pod = self.get_object(PODS, namespace, str(bound.get("name")))
            if pod is None:
                raise not_found(PODS, str(bound.get("name")))
        audiences = spec.get("audiences") or [self.issuer.issuer_url]
        token = self.mint_token(namespace, name, audiences, expiration_seconds=expiration, pod=pod)
        expires = datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(seconds=max(expiration, 600))
        return _api_response({
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": None},
            "spec": {"audiences": audiences, "expirationSeconds": expiration, "boundObjectRef": bound or None},
            "status": {"token": token, "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")},
        }, 201)

    def serve_discovery_under(self, path: str) -> None:
        """Also answer OIDC discovery below ``path``, for an issuer URL that points into this server.

        The API server itself only answers at the root; a verifier that follows an issuer with a
        path (``<issuer>/.well-known/openid-configuration``) needs this one too.
        """
        prefix = path.rstrip("/")
        if prefix:
            self.fallback[f"get {prefix}/.well-known/openid-configuration"] << self._serve_oidc_configuration

    async def _serve_oidc_configuration(self, request: kmock.Request) -> kmock.Payload:
        return _api_response(self.issuer.discovery(self.jwks_uri))

    async def _serve_jwks(self, request: kmock.Request) -> kmock.Payload:
        return KmockResponse(status=200, headers={"Content-Type": "application/jwk-set+json"},
                              payload=json.dumps(self.issuer.jwks()).encode())

    async def _serve_version(self, request: kmock.Request) -> kmock.Payload:
        # Written here rather than taken from kmock, which gives subresources their parent's short names
        # (kubectl then warns "sa could also match serviceaccounts/token") and spells the core group "/v1".
        ref = request.resource
        group, version = (ref.group, ref.version) if ref is not None else (None, None)
        resources = api_resources(str(group), str(version), self.served_kinds())
        if not resources:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        return _api_response({"kind": "APIResourceList", "apiVersion": "v1",
                              "groupVersion": f"{group}/{version}" if group else str(version),
                              "resources": resources})

    def _group_versions(self) -> dict[str, list[str]]:
        """Each served group (not the core one) and its versions, the preferred one first."""
        groups: dict[str, set[str]] = {}
        for kind in self.served_kinds():
            if kind.group:
                groups.setdefault(kind.group, set()).add(kind.version)
        return {group: sorted(versions, key=crds.version_priority) for group, versions in groups.items()}

    @staticmethod
    def _api_group(group: str, versions: list[str]) -> JsonDict:
        listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": listed, "preferredVersion": listed[0]}

    # Written here rather than taken from kmock, which derives groups from every object it ever stored (a deleted
    # CRD's group would stay) and picks a preferred version at random.
    async def _serve_apis(self, request: kmock.Request) -> kmock.Payload:
        return _api_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            self._api_group(group, versions) for group, versions in self._group_versions().items()]})

    async def _serve_group(self, request: kmock.Request) -> kmock.Payload:
        group = request.resource.group if request.resource is not None else None
        versions = self._group_versions().get(str(group))
        if not versions:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        return _api_response({"kind": "APIGroup", "apiVersion": "v1", **self._api_group(str(group), versions)})

    async def _serve_root(self, request: kmock.Request) -> kmock.Payload:
        paths = {"/api", "/api/v1", "/apis", "/version", "/healthz", "/livez", "/readyz", "/openapi/v2",
                 "/openapi/v3", "/.well-known/openid-configuration", "/openid/v1/jwks"}
        for group, versions in self._group_versions().items():
            paths |= {f"/apis/{group}", *(f"/apis/{group}/{v}" for v in versions)}
        return _api_response({"paths": sorted(paths)})

    # --- OpenAPI: what kubectl reads before it validates or patches -----------------------------

    async def _serve_openapi_v2(self, request: kmock.Request) -> kmock.Payload:
        accepted = [part.split(";")[0].strip().lower() for part in _header(request, "Accept").split(",")]
        if accepted != [""] and not {"application/json", "*/*", "application/*"} & set(accepted):
            # The real server also speaks protobuf here; answering 406 makes clients use what they have.
            raise StatusError(406, "NotAcceptable", "only the following media types are accepted: application/json")
        return KmockResponse(status=200, headers={"Content-Type": "application/json"}, payload=openapi.v2_document())

    def _custom_documents(self) -> dict[str, str]:
        """The OpenAPI v3 text of each group-version the CRDs serve (``apis/keyless.dev/v1alpha1``)."""
        by_group_version: dict[str, list[crds.CustomVersion]] = {}
        for (group, version, _), served in sorted(self._custom.items()):
            by_group_version.setdefault(f"apis/{group}/{version}", []).append(served)
        return {gv: openapi.custom_v3_document(versions) for gv, versions in by_group_version.items()}

    async def _serve_openapi_v3_index(self, request: kmock.Request) -> kmock.Payload:
        custom = {gv: openapi.text_hash(text) for gv, text in self._custom_documents().items()}
        return _api_response(openapi.v3_index(custom))

    async def _serve_openapi_v3(self, request: kmock.Request) -> kmock.Payload:
        group_version = request.url.path.removeprefix("/openapi/v3/").strip("/")
        custom = self._custom_documents().get(group_version)
        if custom is not None:
            document: bytes | None = custom.encode()
            digest = openapi.text_hash(custom)
        else:
            document = openapi.v3_document(group_version)
            digest = openapi.v3_hash(group_version)
        if document is None:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        self._add_header(request, "Etag", f'"{digest}"')
        if request.params.get("hash") == digest:
            self._add_header(request, "Cache-Control", "public, immutable")  # the URL names the content
        return KmockResponse(status=200, headers={"Content-Type": "application/json"}, payload=document)

    async def _serve_server_version(self, request: kmock.Request) -> kmock.Payload:
        major, minor = self.server_version
        return _api_response({
            "major": major, "minor": minor, "gitVersion": f"v{major}.{minor}.0-keyless-sandbox",
            "gitCommit": "0" * 40, "gitTreeState": "clean", "buildDate": "2024-01-01T00:00:00Z",
            "goVersion": "go1.22", "compiler": "gc", "platform": "linux/amd64",
        })

    # --- list and watch options ----------------------------------------------------------------

    def _check_list_options(self, request: kmock.Request, *, watch: bool) -> None:
        """``ValidateListOptions``: how resourceVersionMatch, sendInitialEvents and bookmarks may be combined."""
        params = request.params
        match = params.get("resourceVersionMatch") or ""
        send_initial = params.get("sendInitialEvents")
        causes: list[Cause] = []
        if watch:
            if send_initial is not None and match != "NotOlderThan":
                causes.append(Cause("resourceVersionMatch", "Forbidden: sendInitialEvents requires setting "
                                                            "resourceVersionMatch to NotOlderThan",
                                    "FieldValueForbidden"))
            if match:
                if send_initial is None:
                    causes.append(Cause("resourceVersionMatch", "Forbidden: resourceVersionMatch is forbidden for "
                                                                "watch unless sendInitialEvents is provided",
                                        "FieldValueForbidden"))
                if match != "NotOlderThan":
                    causes.append(Cause("resourceVersionMatch", f"Unsupported value: {json.dumps(match)}: supported "
                                                                'values: "NotOlderThan"', "FieldValueNotSupported"))
                if params.get("allowWatchBookmarks") not in ("true", "1"):
                    causes.append(Cause("allowWatchBookmarks", "Forbidden: allowWatchBookmarks must be set to true "
                                                               "when sendInitialEvents is provided",
                                        "FieldValueForbidden"))
        else:
            if match:
                if not params.get("resourceVersion"):
                    causes.append(Cause("resourceVersionMatch", "Forbidden: resourceVersionMatch is forbidden unless "
                                                                "resourceVersion is provided", "FieldValueForbidden"))
                if params.get("continue"):
                    causes.append(Cause("resourceVersionMatch", "Forbidden: resourceVersionMatch is forbidden when "
                                                                "continue is provided", "FieldValueForbidden"))
                if match not in ("Exact", "NotOlderThan"):
                    causes.append(Cause("resourceVersionMatch", f"Unsupported value: {json.dumps(match)}: supported "
                                                                'values: "Exact", "NotOlderThan", ""',
                                        "FieldValueNotSupported"))
                if match == "Exact" and params.get("resourceVersion") == "0":
                    causes.append(Cause("resourceVersionMatch", 'Forbidden: resourceVersionMatch "exact" is '
                                                                'forbidden for resourceVersion "0"',
                                        "FieldValueForbidden"))
            if send_initial is not None:
                causes.append(Cause("sendInitialEvents", "Forbidden: sendInitialEvents is forbidden for list",
                                    "FieldValueForbidden"))
        if causes:
            parts = [f"{c.field}: {c.message}" for c in causes]
            summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
            raise StatusError(422, "Invalid", f'ListOptions.meta.k8s.io "" is invalid: {summary}', {
                "group": "meta.k8s.io", "kind": "ListOptions",
                "causes": [{"reason": c.reason, "message": c.message, "field": c.field} for c in causes]})

    def _resource_version(self, text: str | None) -> int | None:
        """A requested resourceVersion: None for "" and "0" (any), else a number no newer than the newest."""
        if not text or text == "0":
            return None
        try:
            wanted = int(text)
        except ValueError as error:
            raise bad_request(f"invalid resource version: {text!r}") from error
        if wanted > self._rv:
            # The API server waits a few seconds for its cache to catch up, then gives up with this.
            raise StatusError(504, "Timeout", f"Timeout: Too large resource version: {wanted}, current: {self._rv}",
                              {"causes": [{"reason": "ResourceVersionTooLarge",
                                           "message": "Too large resource version"}], "retryAfterSeconds": 1})
        return wanted

    def _expired(self, kind: Kind, since: int) -> StatusError | None:
        """410 Gone when changes of this resource after ``since`` are no longer kept."""
        evicted = self._evicted.get(kind.resource_key)
        if evicted is None or since >= evicted:
            return None
        log = self._logs[kind.resource_key]
        return StatusError(410, "Expired", f"too old resource version: {since} ({log[0].rv - 1})")

    def _objects_at(self, kind: Kind, since: int) -> list[JsonDict]:
        """The kind's objects as they were at ``since``: today's, with the kept changes after it undone.

        Read-only, like ``_views``: the stored objects and the logged previous states, which are stored ones too.
        """
        shelf = self._shelves.get(self.ref(kind))
        state = dict(shelf.objects) if shelf is not None else {}
        for change in reversed(self._logs.get(kind.resource_key, ())):
            if change.rv <= since:
                break
            key = _list_key_of(change.obj)
            if change.type == "ADDED":
                state.pop(key, None)
            elif change.old is not None:
                state[key] = change.old
        return [state[k] for k in sorted(state)]

    # --- watches --------------------------------------------------------------------------------

    async def _watch(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        kind, namespace = self._target(request)
        self._check_list_options(request, watch=True)
        try:
            labels = parse_label_selector(request.params.get("labelSelector"))
            fields = parse_field_selector(request.params.get("fieldSelector"), kind.field_selectors)
        except SelectorError as error:
            raise bad_request(str(error)) from error
        if request.name is not None:
            fields = (*fields, FieldRequirement("metadata.name", request.name, True))
        watcher = _Watcher(kind, namespace, labels, fields,
                           bookmarks=request.params.get("allowWatchBookmarks") in ("true", "1"))
        # Registration and the initial events happen without an await in between, so nothing is missed.
        initial = self._initial_events(watcher, request.params.get("resourceVersion"),
                                       request.params.get("sendInitialEvents"))
        self._watchers.setdefault(kind.resource_key, []).append(watcher)
        timeout = request.params.get("timeoutSeconds")
        deadline = time.monotonic() + (float(timeout) if timeout and timeout.isdigit() else 1800.0)
        raw = request._raw_request
        assert raw is not None  # every HTTP request carries its aiohttp request
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        try:
            await response.prepare(raw)
            for event in initial:
                await response.write(json.dumps(event).encode() + b"\n")
            if not initial or initial[-1].get("type") != "ERROR":
                async for event in self._events(watcher, deadline):
                    await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away; real watches end the same way
        finally:
            watchers = self._watchers.get(kind.resource_key, [])
            if watcher in watchers:
                watchers.remove(watcher)
        return response

    def _initial_events(self, watcher: _Watcher, resource_version: str | None,
                        send_initial: str | None) -> list[JsonDict]:
        """What a watch sends before live changes, by its resourceVersion and sendInitialEvents.

        Unset or "0": every selected object as ADDED. A version: the kept changes after it, or an ERROR 410 when
        they are no longer kept. sendInitialEvents=true: the objects, then a BOOKMARK marking their end.
        """
        def current() -> list[JsonDict]:
            # The stored objects themselves: they are never changed, so they can wait in the stream uncopied.
            return [{"type": "ADDED", "object": _in_version(watcher.kind, obj)}
                    for obj in self._views(watcher.kind, watcher.namespace) if watcher.selects(obj)]

        since = self._resource_version(resource_version)
        if send_initial in ("true", "1"):
            return [*current(), watcher.bookmark(self._rv, initial_events_end=True)]
        if since is None:
            return [] if send_initial is not None else current()
        gone = self._expired(watcher.kind, since)
        if gone is not None:
            return [{"type": "ERROR", "object": gone.body()}]
        events = []
        for change in self._logs.get(watcher.kind.resource_key, ()):
            if change.rv > since:
                event = watcher.event_for(change)
                if event is not None:
                    events.append(event)
        return events

    async def _events(self, watcher: _Watcher, deadline: float) -> AsyncIterator[JsonDict]:
        next_bookmark = time.monotonic() + self.bookmark_seconds
        while True:
            now = time.monotonic()
            if now >= deadline:
                return
            if watcher.queue.empty():
                wait = min(deadline - now, 5.0)
                if watcher.bookmarks:
                    wait = max(0.0, min(wait, next_bookmark - now))
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), timeout=wait)
                except TimeoutError:
                    if watcher.bookmarks and time.monotonic() >= next_bookmark and watcher.queue.empty():
                        # Every change up to the newest was queued when committed, and the queue is empty: the
                        # watcher has seen everything up to here, which is what a bookmark tells it.
                        next_bookmark = time.monotonic() + self.bookmark_seconds
                        yield watcher.bookmark(self._rv)
                    continue
            else:
                event = watcher.queue.get_nowait()
            if event is None:
                return
            yield event
            if event.get("type") == "ERROR":
                return

    def close_watches(self) -> None:
        """End every open watch (on shutdown), so the HTTP server can stop without waiting."""
        for watchers in self._watchers.values():
            for watcher in list(watchers):
                watcher.queue.put_nowait(None)
