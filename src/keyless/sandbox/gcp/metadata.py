"""The GKE metadata server of the sandbox: what a pod's google-auth reads, answered for the pod named in the path."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from keyless.sandbox.gcp.oauth import CLOUD_PLATFORM_SCOPE, AccessTokens, Caller
from keyless.sandbox.gcp.state import Cluster, GcpError, GcpState, ServiceAccount, workload_pool
from keyless.sandbox.gcp.sts import impersonation_grant, mint_for_service_account

__all__ = ["GSA_ANNOTATION", "MetadataServer", "PodLookup"]

GSA_ANNOTATION = "iam.gke.io/gcp-service-account"
# How the metadata server learns a pod's cluster (its issuer URL, or "location/name" in the sandbox's project),
# its Kubernetes service account and that account's annotations; None for a pod it does not know.
PodLookup = Callable[[str, str], tuple[str, str, Mapping[str, str]] | None]
_HEADERS = {"Metadata-Flavor": "Google", "Server": "GKE Metadata Server"}
_TEXT = "application/text"  # what the metadata server answers plain values with
_ROOT = "/computeMetadata/v1/"


@dataclass(frozen=True)
class _PodIdentity:
    """What GKE's metadata server makes of one pod: the email it shows and, when both halves hold, the GSA."""

    cluster: Cluster
    member: str
    email: str
    account: ServiceAccount | None
    refusal: str  # why no token is served; empty when one is


def _text(value: str, status: int = 200) -> web.Response:
    return web.Response(text=value, status=status, content_type=_TEXT, headers=_HEADERS)


def _json(value: Any) -> web.Response:
    return web.Response(text=json.dumps(value), content_type="application/json", headers=_HEADERS)


class MetadataServer:
    """Plain HTTP like 169.254.169.254; the pod is the first part of the path: /pods/NAMESPACE/POD/..."""

    def __init__(self, state: GcpState, tokens: AccessTokens, project_id: str) -> None:
        self.state = state
        self.tokens = tokens
        self.project_id = project_id
        self.pod_lookup: PodLookup | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/pods/{namespace}/{pod}", self._serve)
        app.router.add_get("/pods/{namespace}/{pod}/{rest:.*}", self._serve)
        return app

    def _cluster(self, reference: str) -> Cluster | None:
        if reference.startswith("https://"):
            return self.state.cluster_by_issuer(reference)
        location, _, name = reference.partition("/")
        return self.state.find_cluster(self.project_id, location, name)

    def identity(self, namespace: str, pod: str) -> _PodIdentity | None:
        """Both halves, as GKE checks them: the KSA's annotation AND the KSA's member holding the role on the GSA."""
        try:
            found = self.pod_lookup(namespace, pod) if self.pod_lookup is not None else None
        except Exception:  # a broken lookup means the pod is not known here, not a crash of the server
            found = None
        if found is None:
            return None
        reference, service_account, annotations = found
        cluster = self._cluster(reference)
        if cluster is None or not cluster.runs_gke_metadata:
            return None
        pool = workload_pool(cluster.project_id)
        member = f"serviceAccount:{pool}[{namespace}/{service_account}]"
        annotated = str(annotations.get(GSA_ANNOTATION) or "").strip()
        if not annotated:
            return _PodIdentity(cluster, member, pool, None,
                                f"The Kubernetes service account {namespace}/{service_account} has no "
                                f"{GSA_ANNOTATION} annotation, so no Google service account is bound to the pod. "
                                f"Annotate it with the Google service account's email, and grant {member} "
                                "roles/iam.workloadIdentityUser on that account.")
        account = self.state.find_service_account(annotated)
        effective = account is not None and impersonation_grant(self.state, member, account)[1]
        if account is None or not effective:
            return _PodIdentity(cluster, member, pool, None,
                                "Unable to generate access token; IAM returned 403 Forbidden: Permission "
                                "'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).\n"
                                f"This error could be caused by a missing IAM policy binding on the target IAM "
                                f"service account {annotated}: {member} needs roles/iam.workloadIdentityUser on it "
                                "(the annotation is in place; a new binding takes a while to propagate).\n")
        return _PodIdentity(cluster, member, account.email, account, "")

    async def _serve(self, request: web.Request) -> web.Response:
        if request.headers.get("Metadata-Flavor") != "Google":
            return _text("Missing required header \"Metadata-Flavor\": \"Google\"\n", 403)
        namespace, pod = request.match_info["namespace"], request.match_info["pod"]
        rest = "/" + request.match_info.get("rest", "")
        # In a thread: the lookup asks the cluster's stand-in, which may run on another loop.
        identity = await asyncio.to_thread(self.identity, namespace, pod)
        if identity is None:
            return _text(f"The GKE metadata server does not know the pod {namespace}/{pod} (not on a node pool "
                         "with the GKE metadata server).\n", 404)
        if rest == "/":
            return _text("computeMetadata/\n")
        if not rest.startswith(_ROOT):
            return _text("Not Found\n", 404)
        path = rest.removeprefix(_ROOT)
        project = self.state.project(identity.cluster.project_id)
        plain = {"project/project-id": project.project_id, "project/numeric-project-id": project.number,
                 "universe/universe-domain": "googleapis.com",
                 "instance/attributes/cluster-name": identity.cluster.name,
                 "instance/attributes/cluster-location": identity.cluster.location}
        if path in plain:
            return _text(plain[path])
        if path == "instance/service-accounts/":
            return _text(f"default/\n{identity.email}/\n")
        if not path.startswith("instance/service-accounts/"):
            return _text("Not Found\n", 404)
        account, _, leaf = path.removeprefix("instance/service-accounts/").partition("/")
        if account not in ("default", identity.email):
            return _text("Not Found\n", 404)
        scopes = (CLOUD_PLATFORM_SCOPE,)
        if leaf == "":
            if request.query.get("recursive") == "true":
                return _json({"aliases": ["default"], "email": identity.email, "scopes": list(scopes)})
            return _text("aliases\nemail\nidentity\nscopes\ntoken\n")
        if leaf == "email":
            return _text(identity.email)
        if leaf == "scopes":
            return _text("".join(f"{s}\n" for s in scopes))
        if leaf == "aliases":
            return _text("default")
        if leaf == "token":
            return self._token(identity, request.query.get("scopes"))
        return _text("Not Found\n", 404)

    def _token(self, identity: _PodIdentity, scopes: str | None) -> web.Response:
        if identity.account is None:
            return _text(identity.refusal, 403)
        wanted = tuple(s for s in (scopes or CLOUD_PLATFORM_SCOPE).split(",") if s)
        caller = Caller(identity.member, "", wanted, 0.0)
        try:
            token, minted = mint_for_service_account(self.state, self.tokens, caller, identity.account, wanted)
        except GcpError as error:
            return _text(f"Unable to generate access token; IAM returned {error.code}: {error.message}\n",
                         403 if error.code in (401, 403) else 400)
        expires_in = max(0, int(minted.expires_at - time.time()))
        return _json({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"})
