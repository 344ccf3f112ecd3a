"""The EKS front: an aiohttp server speaking EKS's restJson1 API; it serves what moto lacks and proxies the rest."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, unquote

import aiohttp
from aiohttp import web
from botocore.exceptions import ClientError
from yarl import URL

from keyless.sandbox.aws.eks import EksState
from keyless.sandbox.aws.eks_model import (
    KNOWN_ADDONS,
    BindingChange,
    ClusterRef,
    EksError,
    parse_role_arn,
    validate_max_results,
    validate_tags,
)
from keyless.sandbox.aws.moto_server import DEFAULT_ACCOUNT, MotoClients
from keyless.sandbox.aws.policy import missing_service_actions
from keyless.sandbox.knobs import Call, Denied, Failed, Knobs, LostMode, Refusal, Throttled, Verdict
from keyless.sandbox.knobs_http import knob_routes, serve_call

LostResponseMode = LostMode

_REGION = re.compile(r"Credential=[^/,]+/\d{8}/([a-z0-9-]+)/")
_HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding"}
_PASSED_BACK = {"content-type", "x-amzn-errortype", "x-amzn-requestid", "x-amz-request-id"}
_ROLE_MISSING = "Role provided in the request does not exist"
# EKS's answer when the role's trust policy does not let pods.eks.amazonaws.com assume and tag (botocore documents
# only the InvalidParameterException; the wording is what EKS sends, e.g. terraform-provider-aws issue 41483).
_TRUST_INVALID = "Trust policy of the role provided is invalid. Follow the official documentation to resolve the issue."
_POD_IDENTITY_PRINCIPAL = "pods.eks.amazonaws.com"
_POD_IDENTITY_ACTIONS = ("sts:AssumeRole", "sts:TagSession")
_ACTION = re.compile(r"[a-z0-9-]+:[A-Za-z0-9]+")
IAM_PREFIX = "iam"  # AWS_ENDPOINT_URL_IAM points at /iam on this front, which checks denials and passes on to moto
STS_PREFIX = "sts"  # and AWS_ENDPOINT_URL_STS at /sts, so STS has the same knobs
_IAM_READS = ("Get", "List", "Simulate")
_IAM_XMLNS = "https://iam.amazonaws.com/doc/2010-05-08/"


@dataclass(frozen=True)
class Upstream:
    """moto's answer to a proxied request, kept so it can be post-processed before it is returned."""

    status: int
    body: bytes
    headers: Mapping[str, str]

    def response(self) -> web.Response:
        return web.Response(status=self.status, body=self.body, headers=dict(self.headers))

    def json(self) -> dict[str, Any]:
        loaded = json.loads(self.body)
        return loaded if isinstance(loaded, dict) else {}


def _error(error: EksError) -> web.Response:
    body = {"message": error.message, **error.fields}
    return web.json_response(
        body,
        status=error.status,
        headers={"x-amzn-ErrorType": f"{error.code}:", "x-amzn-RequestId": str(uuid.uuid4())},
    )


def is_action(action: str) -> bool:
    """`service:Operation`, what deny() takes on the AWS front."""
    return _ACTION.fullmatch(action) is not None


_EKS_FAILURES = {403: "AccessDeniedException", 404: "ResourceNotFoundException", 409: "ResourceInUseException",
                 429: "ThrottlingException", 503: "ServiceUnavailableException"}


class EksDialect:
    """EKS's restJson1 errors: x-amzn-ErrorType carries the code botocore raises (ThrottlingException is HTTP 429 in
    botocore's EKS model, and botocore's retry handlers treat it as throttling)."""

    def refuse(self, refusal: Refusal, call: Call) -> web.StreamResponse:
        if isinstance(refusal, Throttled):
            return _error(EksError("ThrottlingException", "Rate exceeded"))
        if isinstance(refusal, Denied):
            return _error(EksError("AccessDeniedException", _not_authorized(refusal.action)))
        code = _EKS_FAILURES.get(refusal.status, "ServerException" if refusal.status >= 500 else "BadRequestException")
        response = _error(EksError(code, f"Fault injected by the keyless sandbox (HTTP {refusal.status})"))
        response.set_status(refusal.status)
        return response

    def lost(self, call: Call) -> web.StreamResponse:
        return _error(EksError("ServerException", "An internal error occurred (injected: the response was lost)"))

    def decorate(self, response: web.StreamResponse, verdict: Verdict) -> None:
        return None


def _query_error(status: int, code: str, message: str, kind: str = "Sender") -> web.Response:
    xml = (f'<ErrorResponse xmlns="{_IAM_XMLNS}"><Error><Type>{kind}</Type><Code>{code}</Code>'
           f"<Message>{message}</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>")
    return web.Response(status=status, text=xml, content_type="text/xml")


class QueryDialect:
    """IAM's and STS's query-protocol errors: throttling is HTTP 400 `Throttling` ("Rate exceeded"), the code
    botocore's retry handlers know as throttling."""

    def __init__(self, failure_code: str) -> None:
        self.failure_code = failure_code

    def refuse(self, refusal: Refusal, call: Call) -> web.StreamResponse:
        if isinstance(refusal, Throttled):
            return _query_error(400, "Throttling", "Rate exceeded")
        if isinstance(refusal, Denied):
            return _query_error(403, "AccessDenied", _not_authorized(refusal.action))
        if isinstance(refusal, Failed) and refusal.status == 429:
            return _query_error(400, "Throttling", "Rate exceeded")
        if refusal.status < 500:
            return _query_error(refusal.status, "InvalidInput", "Fault injected by the keyless sandbox")
        return _query_error(refusal.status, self.failure_code, "Fault injected by the keyless sandbox", "Receiver")

    def lost(self, call: Call) -> web.StreamResponse:
        return _query_error(500, self.failure_code, "An internal error occurred (injected: the response was lost)",
                            "Receiver")

    def decorate(self, response: web.StreamResponse, verdict: Verdict) -> None:
        return None


_DIALECTS = {IAM_PREFIX: QueryDialect("ServiceFailure"), STS_PREFIX: QueryDialect("InternalFailure")}


def _ok(payload: Mapping[str, Any]) -> web.Response:
    return web.json_response(dict(payload), headers={"x-amzn-RequestId": str(uuid.uuid4())})


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise EksError("SerializationException", "The request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise EksError("SerializationException", "The request body must be a JSON object")
    return body


class EksFront:
    """aiohttp application behind AWS_ENDPOINT_URL_EKS."""

    def __init__(
        self,
        state: EksState,
        clients: MotoClients,
        moto_url: str,
        default_region: str,
        knobs: Knobs,
        role_propagation_delay: float = 0.0,
    ) -> None:
        self.state = state
        self.clients = clients
        self.moto_url = moto_url
        self.default_region = default_region
        self.knobs = knobs
        self.role_propagation_delay = role_propagation_delay  # sandbox seconds: the knobs' time scale divides it
        self._session: aiohttp.ClientSession | None = None
        self._dialect = EksDialect()

    @property
    def requests(self) -> dict[str, int]:
        """EKS requests by HTTP method, so a user (or a test) can check that a run made no write call."""
        counts: dict[str, int] = {}
        for call in self.knobs.history():
            if call.action.startswith("eks:"):
                counts[call.method] = counts.get(call.method, 0) + 1
        return counts

    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.cleanup_ctx.append(self._session_ctx)
        # One catch-all route: ARNs arrive percent-encoded (slashes included) and must be split by hand.
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    async def _session_ctx(self, _: web.Application) -> AsyncIterator[None]:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        yield
        await self._session.close()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        segments = [unquote(s) for s in request.rel_url.raw_path.split("/")[1:]]
        if segments and segments[0] == "_sandbox":
            return await self._sandbox_api(request, segments[1:])
        if segments and segments[0] in _DIALECTS:
            return await self._query_service(request, segments[0])
        operation = _eks_operation(request.method, segments) or f"{request.method} {request.path}"
        write = request.method != "GET"
        if "Authorization" not in request.headers:
            return _error(EksError("MissingAuthenticationTokenException", "Missing Authentication Token"))
        match = _REGION.search(request.headers["Authorization"])
        region = match.group(1) if match else self.default_region
        call = Call(request.method, request.path, operation, f"eks:{operation}", write,
                    (("eks-write" if write else "eks-read", region),))
        return await serve_call(self.knobs, request, call, self._dialect,
                                lambda: self._serve(request, region, segments))

    async def _serve(self, request: web.Request, region: str, segments: list[str]) -> web.StreamResponse:
        try:
            return await self._route(request, region, segments)
        except EksError as error:
            return _error(error)
        except (aiohttp.ClientError, ClientError, OSError) as exc:
            # moto unreachable or failing: answer like EKS does when a dependency breaks, not with a traceback.
            return _error(EksError("ServerException", f"Internal failure: {exc}"))

    async def _route(self, request: web.Request, region: str, seg: list[str]) -> web.StreamResponse:
        method = request.method
        if seg[:1] == ["clusters"]:
            if len(seg) == 1 and method == "POST":
                return await self._create_cluster(request, region)
            if len(seg) == 2 and method == "GET":
                return await self._describe_cluster(request, region, seg[1])
            if len(seg) == 2 and method == "DELETE":
                upstream = await self._proxy(request)
                if upstream.status == 200:
                    self.state.forget_cluster(region, seg[1])
                return upstream.response()
            if len(seg) >= 3 and seg[2] == "pod-identity-associations":
                return await self._associations(request, region, seg[1], seg[3:])
            if len(seg) >= 3 and seg[2] == "addons":
                return await self._addons(request, region, seg[1], seg[3:])
        if seg[:1] == ["tags"] and len(seg) >= 2:
            arn = "/".join(seg[1:])
            if self.state.owns_arn(arn):
                return await self._tags(request, arn)
        if seg == ["addons", "supported-versions"] and method == "GET":
            return _ok(_addon_versions(request.query.get("addonName")))
        unsupported = _unsupported_operation(method, seg)
        if unsupported is not None:
            raise EksError("InvalidRequestException", f"{unsupported} is not supported by the keyless sandbox")
        upstream = await self._proxy(request)
        if upstream.status == 404 and "json" not in upstream.headers.get("Content-Type", ""):
            # moto's page for a route it lacks is HTML, which botocore cannot read: answer as an AWS API does.
            raise EksError("UnknownOperationException",
                           f"the keyless sandbox's EKS does not serve {method} {request.path}")
        return upstream.response()

    # ---- IAM and STS: pass-throughs to moto with the front's knobs (denials, throttling, faults) -----

    async def _query_service(self, request: web.Request, prefix: str) -> web.StreamResponse:
        body = await request.read()
        action = parse_qs(body.decode("utf-8", "replace")).get("Action", [""])[0]
        if prefix == IAM_PREFIX:
            write = not action.startswith(_IAM_READS)
            bucket = ("iam-write" if write else "iam-read", "account")
        else:
            write, bucket = False, ("sts", "account")
        call = Call(request.method, request.path, action or "Unknown", f"{prefix}:{action}" if action else "",
                    write, (bucket,))
        return await serve_call(self.knobs, request, call, _DIALECTS[prefix],
                                lambda: self._pass_to_moto(request, prefix, body))

    async def _pass_to_moto(self, request: web.Request, prefix: str, body: bytes) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        path = request.raw_path[len(prefix) + 1:] or "/"
        try:
            async with self._session.request(request.method, URL(self.moto_url + path, encoded=True), data=body,
                                             headers=headers) as upstream:
                payload = await upstream.read()
                passed = {k: v for k, v in upstream.headers.items() if k.lower() in _PASSED_BACK}
                return Upstream(upstream.status, payload, passed).response()
        except (aiohttp.ClientError, OSError) as exc:
            return _query_error(500, _DIALECTS[prefix].failure_code, f"Internal failure: {exc}", "Receiver")

    # ---- moto ------------------------------------------------------------------------------------

    async def _proxy(self, request: web.Request, body: bytes | None = None) -> Upstream:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        data = await request.read() if body is None else body
        async with self._session.request(
            request.method, URL(self.moto_url + request.raw_path, encoded=True), data=data, headers=headers
        ) as upstream:
            payload = await upstream.read()
            passed = {k: v for k, v in upstream.headers.items() if k.lower() in _PASSED_BACK}
            return Upstream(upstream.status, payload, passed)

    async def _cluster(self, request: web.Request, region: str, name: str) -> ClusterRef:
        """Look the cluster up in moto with the caller's own signature, so moto picks the same account."""
        assert self._session is not None
        headers = {"Authorization": request.headers["Authorization"]}
        for header in ("X-Amz-Date", "X-Amz-Security-Token"):
            if header in request.headers:
                headers[header] = request.headers[header]
        url = URL(f"{self.moto_url}/clusters/{quote(name, safe='')}", encoded=True)
        async with self._session.get(url, headers=headers) as upstream:
            if upstream.status == 404:
                raise EksError("ResourceNotFoundException", f"No cluster found for name: {name}.", clusterName=name)
            if upstream.status != 200:
                raise EksError("ServerException", f"cluster lookup failed with HTTP {upstream.status}")
            cluster = (await upstream.json(content_type=None))["cluster"]
        arn = str(cluster["arn"])
        return ClusterRef(region=region, account=arn.split(":")[4], name=name, arn=arn)

    async def _require_role(self, arn: str) -> None:
        """IAM is eventually consistent: a role that does not exist, or was created too recently, is refused; so is
        one whose trust policy does not let pods.eks.amazonaws.com call sts:AssumeRole and sts:TagSession."""
        account, name = parse_role_arn(arn)

        def lookup() -> object | None:
            """The role's trust policy, or None while IAM does not show the role to EKS."""
            try:
                role = self.clients.iam(account).get_role(RoleName=name)["Role"]
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") == "NoSuchEntity":
                    return None
                raise
            if role["Arn"] != arn:
                return None
            age = (datetime.now(UTC) - role["CreateDate"]).total_seconds()  # wall time, as IAM stamps it
            propagated = age >= self.knobs.time.wall(self.role_propagation_delay)
            return role.get("AssumeRolePolicyDocument") or {} if propagated else None

        trust = await asyncio.to_thread(lookup)
        if trust is None:
            raise EksError("InvalidParameterException", _ROLE_MISSING)
        try:
            missing = missing_service_actions(trust, _POD_IDENTITY_PRINCIPAL, _POD_IDENTITY_ACTIONS)
        except ValueError:
            missing = _POD_IDENTITY_ACTIONS
        if missing:
            raise EksError("InvalidParameterException", _TRUST_INVALID)

    # ---- clusters (Auto Mode is the only thing moto does not keep) -------------------------------

    async def _create_cluster(self, request: web.Request, region: str) -> web.StreamResponse:
        raw = await request.read()
        body = await _json_body(request)
        compute = _enabled(body.get("computeConfig"))
        storage = _enabled(_get(body, "storageConfig", "blockStorage"))
        balancing = _enabled(_get(body, "kubernetesNetworkConfig", "elasticLoadBalancing"))
        if len({compute, storage, balancing}) > 1:
            raise EksError(
                "InvalidParameterException",
                "For EKS Auto Mode, computeConfig.enabled, kubernetesNetworkConfig.elasticLoadBalancing.enabled "
                "and storageConfig.blockStorage.enabled must all be true, or all be false",
            )
        upstream = await self._proxy(request, raw)
        if upstream.status == 200 and compute:
            config = body.get("computeConfig") or {}
            self.state.set_auto_mode(
                region,
                str(body.get("name")),
                {
                    "enabled": True,
                    "nodePools": list(config.get("nodePools") or []),
                    **({"nodeRoleArn": config["nodeRoleArn"]} if config.get("nodeRoleArn") else {}),
                },
            )
            return _ok(self._with_auto_mode(upstream.json(), region))
        return upstream.response()

    async def _describe_cluster(self, request: web.Request, region: str, name: str) -> web.StreamResponse:
        upstream = await self._proxy(request)
        if upstream.status != 200 or self.state.auto_mode(region, name) is None:
            return upstream.response()
        return _ok(self._with_auto_mode(upstream.json(), region))

    def _with_auto_mode(self, payload: dict[str, Any], region: str) -> dict[str, Any]:
        cluster = payload.get("cluster") or {}
        compute = self.state.auto_mode(region, str(cluster.get("name")))
        if compute is not None:
            cluster["computeConfig"] = dict(compute)
            cluster["storageConfig"] = {"blockStorage": {"enabled": True}}
            network = cluster.setdefault("kubernetesNetworkConfig", {})
            network["elasticLoadBalancing"] = {"enabled": True}
        return payload

    # ---- pod identity associations ---------------------------------------------------------------

    async def _associations(
        self, request: web.Request, region: str, cluster_name: str, rest: list[str]
    ) -> web.StreamResponse:
        method = request.method
        cluster = await self._cluster(request, region, cluster_name)
        if not rest and method == "POST":
            return await self._create_association(request, cluster)
        if not rest and method == "GET":
            query = request.query
            page, token = self.state.list_associations(
                region,
                cluster_name,
                namespace=query.get("namespace"),
                service_account=query.get("serviceAccount"),
                max_results=validate_max_results(query.get("maxResults")),
                next_token=query.get("nextToken"),
            )
            payload: dict[str, Any] = {"associations": [a.to_summary() for a in page]}
            if token is not None:
                payload["nextToken"] = token
            return _ok(payload)
        if len(rest) == 1 and method == "GET":
            return _ok({"association": self.state.describe_association(region, cluster_name, rest[0]).to_api()})
        if len(rest) == 1 and method == "POST":
            return await self._update_association(request, cluster, rest[0])
        if len(rest) == 1 and method == "DELETE":
            deleted = self.state.delete_association(region, cluster_name, rest[0])
            return _ok({"association": deleted.to_api()})
        raise EksError("BadRequestException", f"Unsupported request {method} {request.path}")

    async def _create_association(self, request: web.Request, cluster: ClusterRef) -> web.StreamResponse:
        body = await _json_body(request)
        create, token = self.state.check_create(cluster, body)
        replayed = self.state.replay(cluster, create, token)
        if replayed is not None:
            return _ok({"association": replayed.to_api()})
        await self._require_role(create.binding.role_arn)
        association = self.state.create_association(cluster, create, token)
        return _ok({"association": association.to_api()})

    async def _update_association(
        self, request: web.Request, cluster: ClusterRef, association_id: str
    ) -> web.StreamResponse:
        body = await _json_body(request)
        current = self.state.describe_association(cluster.region, cluster.name, association_id)
        if current.owner_arn is not None:
            raise EksError(
                "InvalidRequestException",
                f"Pod Identity Association {association_id} is owned by {current.owner_arn}; "
                "update it through the add-on (UpdateAddon)",
                clusterName=cluster.name,
            )
        change = BindingChange(
            role_arn=_optional_str(body, "roleArn"),
            target_role_arn=_optional_str(body, "targetRoleArn"),
            disable_session_tags=_optional_bool(body, "disableSessionTags"),
            policy=_optional_str(body, "policy"),
        )
        if change == BindingChange():
            raise EksError(
                "InvalidParameterException",
                "At least one of roleArn, targetRoleArn, disableSessionTags or policy must be provided",
            )
        if change.role_arn is not None:
            account, _ = parse_role_arn(change.role_arn)
            if account != cluster.account:
                raise EksError("InvalidParameterException", "roleArn must be in the same account as the cluster")
            await self._require_role(change.role_arn)
        if change.target_role_arn:
            parse_role_arn(change.target_role_arn, "targetRoleArn")
        updated = self.state.update_association(cluster.region, cluster.name, association_id, change)
        return _ok({"association": updated.to_api()})

    # ---- add-ons ---------------------------------------------------------------------------------

    async def _addons(
        self, request: web.Request, region: str, cluster_name: str, rest: list[str]
    ) -> web.StreamResponse:
        method = request.method
        cluster = await self._cluster(request, region, cluster_name)
        now = self.state.now()
        if not rest and method == "POST":
            body = await _json_body(request)
            addon, owned = self.state.create_addon(cluster, body)
            arns: list[str] = []
            try:
                for create in owned:
                    await self._require_role(create.binding.role_arn)
                for create in owned:
                    made = self.state.create_association(cluster, create, None, owner_arn=addon.arn)
                    arns.append(made.association_arn)
            except EksError:
                self.state.delete_addon(region, cluster_name, addon.name)
                raise
            addon = self.state.attach_addon_associations(addon, tuple(arns))
            return _ok({"addon": addon.to_api(now)})
        if not rest and method == "GET":
            names = self.state.list_addons(region, cluster_name)
            size = validate_max_results(request.query.get("maxResults"))
            token = request.query.get("nextToken") or "0"
            if not token.isdigit():
                raise EksError("InvalidParameterException", "The nextToken provided is not valid")
            start = int(token)
            payload: dict[str, Any] = {"addons": names[start : start + size]}
            if start + size < len(names):
                payload["nextToken"] = str(start + size)
            return _ok(payload)
        if len(rest) == 1 and method == "GET":
            return _ok({"addon": self.state.describe_addon(region, cluster_name, rest[0]).to_api(now)})
        if len(rest) == 1 and method == "DELETE":
            return _ok({"addon": self.state.delete_addon(region, cluster_name, rest[0]).to_api(now)})
        if len(rest) == 2 and rest[1] == "update" and method == "POST":
            raise EksError("InvalidRequestException", "UpdateAddon is not supported by the keyless sandbox")
        raise EksError("InvalidRequestException", f"Unsupported add-on request {method} {request.path}")

    # ---- tags on associations and add-ons --------------------------------------------------------

    async def _tags(self, request: web.Request, arn: str) -> web.StreamResponse:
        if request.method == "GET":
            return _ok({"tags": self.state.tags_for(arn)})
        if request.method == "POST":
            body = await _json_body(request)
            self.state.retag(arn, validate_tags(body.get("tags"), code="BadRequestException"))
            return _ok({})
        if request.method == "DELETE":
            keys = tuple(request.query.getall("tagKeys", []))
            self.state.retag(arn, {}, keys)
            return _ok({})
        raise EksError("BadRequestException", f"Unsupported tags request {request.method}")

    # ---- /_sandbox: knobs, faults, counters and settings, for the CLI and for tests ---------------

    async def _sandbox_api(self, request: web.Request, seg: list[str]) -> web.StreamResponse:
        if seg == ["health"]:
            return web.json_response({"ok": True})
        if seg == ["requests"] and request.method == "GET":
            return web.json_response(self.requests)
        if seg == ["faults", "lose-next-create"] and request.method == "POST":
            # The route tests used before the shared knobs: lose_next on CreatePodIdentityAssociation.
            try:
                body = await _json_body(request)
                self.knobs.lose_next(1, mode=body.get("mode", "error"), match=("CreatePodIdentityAssociation",))
            except (EksError, ValueError) as exc:
                return web.json_response({"message": str(exc)}, status=400)
            return web.json_response(self.knobs.faults().to_json())
        answer = await knob_routes(self.knobs, request, seg)
        if answer is not None:
            return answer
        if seg == ["settings"] and request.method in ("GET", "POST"):
            try:
                body = await _json_body(request) if request.method == "POST" else {}
            except EksError as error:
                return web.json_response({"message": error.message}, status=400)
            return self._settings(body)
        return web.json_response({"message": f"no sandbox endpoint {request.method} {request.path}"}, status=404)

    def _settings(self, body: Mapping[str, Any]) -> web.Response:
        numbers = {
            "associationDelay": float,
            "associationQuota": int,
            "rolePropagationDelay": float,
            "addonDelay": float,
        }
        for key, kind in numbers.items():
            if key in body and (not isinstance(body[key], int | float) or body[key] < 0):
                return web.json_response({"message": f"{key} must be a non-negative number"}, status=400)
            if key in body and kind is int and not isinstance(body[key], int):
                return web.json_response({"message": f"{key} must be an integer"}, status=400)
        if "associationDelay" in body:
            self.state.association_delay = float(body["associationDelay"])
        if "associationQuota" in body:
            self.state.association_quota = int(body["associationQuota"])
        if "rolePropagationDelay" in body:
            self.role_propagation_delay = float(body["rolePropagationDelay"])
        if "addonDelay" in body:
            self.state.addon_delay = float(body["addonDelay"])
        return web.json_response(
            {
                "associationDelay": self.state.association_delay,
                "associationQuota": self.state.association_quota,
                "rolePropagationDelay": self.role_propagation_delay,
                "addonDelay": self.state.addon_delay,
            }
        )


def _get(body: Mapping[str, Any], *path: str) -> object:
    node: object = body
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def _enabled(block: object) -> bool:
    return isinstance(block, Mapping) and block.get("enabled") is True


def _optional_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise EksError("InvalidParameterException", f"{key} must be a string")
    return value


def _optional_bool(body: Mapping[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise EksError("InvalidParameterException", f"{key} must be a boolean")
    return value


def _not_authorized(action: str) -> str:
    """AWS's wording for an action the caller's identity-based policies do not allow."""
    return (f"User: arn:aws:iam::{DEFAULT_ACCOUNT}:user/test is not authorized to perform: {action} because no "
            "identity-based policy allows the {action} action").replace("{action}", action)


def _addon_versions(name: str | None) -> dict[str, Any]:
    """DescribeAddonVersions for the add-ons the sandbox installs: one version each, the default of every cluster."""
    addons = [{
        "addonName": addon, "type": "security", "owner": "aws", "publisher": "eks",
        "addonVersions": [{"addonVersion": version, "architecture": ["amd64", "arm64"], "computeTypes": ["ec2"],
                           "compatibilities": [{"clusterVersion": "1.31", "platformVersions": ["*"],
                                                "defaultVersion": True}],
                           "requiresConfiguration": False, "requiresIamPermissions": False}],
    } for addon, version in sorted(KNOWN_ADDONS.items()) if name in (None, "", addon)]
    return {"addons": addons}


# EKS operations the sandbox knows and does not serve (moto lacks them too), by method and path shape.
def _unsupported_operation(method: str, seg: Sequence[str]) -> str | None:
    if seg[:1] == ["clusters"] and len(seg) >= 3 and seg[2] == "access-entries":
        if len(seg) == 3:
            return {"GET": "ListAccessEntries", "POST": "CreateAccessEntry"}.get(method, "AccessEntries")
        return "AccessEntries" if len(seg) > 4 else {
            "GET": "DescribeAccessEntry", "POST": "UpdateAccessEntry", "DELETE": "DeleteAccessEntry"}.get(method)
    if seg[:1] == ["access-policies"]:
        return "ListAccessPolicies"
    if seg[:1] == ["clusters"] and len(seg) == 3 and method == "POST":
        return {"update-config": "UpdateClusterConfig", "updates": "UpdateClusterVersion"}.get(seg[2])
    return None


# The EKS operations whose denial the sandbox can simulate, by method and path shape.
def _eks_operation(method: str, seg: Sequence[str]) -> str | None:
    if seg[:1] == ["tags"]:
        return {"GET": "ListTagsForResource", "POST": "TagResource", "DELETE": "UntagResource"}.get(method)
    if seg[:1] != ["clusters"]:
        return None
    if len(seg) == 1:
        return {"POST": "CreateCluster", "GET": "ListClusters"}.get(method)
    if len(seg) == 2:
        return {"GET": "DescribeCluster", "DELETE": "DeleteCluster"}.get(method)
    if seg[2] == "pod-identity-associations":
        if len(seg) == 3:
            return {"POST": "CreatePodIdentityAssociation", "GET": "ListPodIdentityAssociations"}.get(method)
        return {"GET": "DescribePodIdentityAssociation", "POST": "UpdatePodIdentityAssociation",
                "DELETE": "DeletePodIdentityAssociation"}.get(method)
    if seg[2] == "addons":
        if len(seg) == 3:
            return {"POST": "CreateAddon", "GET": "ListAddons"}.get(method)
        return {"GET": "DescribeAddon", "DELETE": "DeleteAddon", "POST": "UpdateAddon"}.get(method)
    return None
