"""The REST API under /api/v1: targets, apps, services, connections, plans, deploys, status, the operator, audit,
tokens."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from keyless.audit.render import to_json as audit_json
from keyless.errors import UsageError
from keyless.operator.resource import KeylessAppState
from keyless.providers.base import PreflightSeverity
from keyless.server.auth import Admin, Deployer, Viewer, state
from keyless.server.operations import ConnectionChange, identity_connection_type, issues_json, require_service
from keyless.store import (
    AppRecord,
    AuditEvent,
    DeployRecord,
    HandoverRecord,
    Role,
    ServiceRecord,
    TargetRecord,
    TokenRecord,
)
from keyless.store.models import MAX_ID

router = APIRouter(prefix="/api/v1")

RowId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
RevisionQuery = Annotated[int | None, Query(ge=0, le=MAX_ID, description="refuse (409) if the app moved past "
                                                                            "this revision")]

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")
MAX_DOCUMENT = 1024 * 1024  # the same cap porter.yaml files have on the command line


class _Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ImportApp(_Body):
    porter_yaml: str = Field(description="The porter.yaml text, exactly as in the repository.")
    name: str | None = Field(None, description="The app's name when porter.yaml has no `name:`.")
    target: str | None = Field(None, description="The target deploys go to by default.")


class SetTarget(_Body):
    target: str | None


class HandOver(_Body):
    refresh_interval: str | None = Field(None, max_length=32, examples=["10m"], description=(
        "How often the operator reads every binding back and repairs drift (default: the operator's own, 10m)."))
    suspend: bool = Field(False, description="The operator plans and reports, and writes nothing.")


class NewToken(_Body):
    name: str = Field(min_length=1, max_length=100)
    role: Role


# --- how records look in JSON ----------------------------------------------------------------------


def service_json(app: str, service: ServiceRecord) -> dict[str, Any]:
    return {"name": service.name, "kind": service.kind,
            "connections": [{"type": c.type, **c.settings} for c in service.connections],
            "links": {"self": f"/api/v1/apps/{app}/services/{service.name}"}}


def app_json(app: AppRecord, full: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": app.name, "target": app.target_name, "revision": app.revision,
        "createdAt": app.created_at.isoformat(), "updatedAt": app.updated_at.isoformat(),
        "services": [service_json(app.name, s) for s in app.services],
        "links": {"self": f"/api/v1/apps/{app.name}", "porterYaml": f"/api/v1/apps/{app.name}/porter.yaml",
                  "deploys": f"/api/v1/apps/{app.name}/deploys"},
    }
    if full:
        body["porterYaml"] = app.porter_yaml
    return body


def target_json(target: TargetRecord) -> dict[str, Any]:
    return {"name": target.name, "cloud": target.cloud, "settings": target.settings,
            "updatedAt": target.updated_at.isoformat()}


def deploy_json(deploy: DeployRecord) -> dict[str, Any]:
    return {
        "id": deploy.id, "app": deploy.app, "appRevision": deploy.app_revision, "target": deploy.target_name,
        "status": deploy.status.value, "finished": deploy.status.finished, "requestedBy": deploy.requested_by,
        "createdAt": deploy.created_at.isoformat(),
        "startedAt": deploy.started_at.isoformat() if deploy.started_at else None,
        "finishedAt": deploy.finished_at.isoformat() if deploy.finished_at else None,
        "seconds": deploy.seconds, "message": deploy.message,
        "progress": {"done": deploy.done, "total": deploy.total_actions, "failed": deploy.failed},
        "plan": deploy.plan, "planText": deploy.plan_text,
        "actions": [{"seq": a.seq, "service": a.service, "resource": a.resource, "kind": a.kind,
                     "address": a.address, "ok": a.ok, "message": a.message, "seconds": round(a.seconds, 3),
                     "finishedAt": a.finished_at.isoformat()} for a in deploy.actions],
        "links": {"self": f"/api/v1/deploys/{deploy.id}", "apply": f"/api/v1/deploys/{deploy.id}/apply"},
    }


def token_json(token: TokenRecord) -> dict[str, Any]:
    return {"id": token.id, "name": token.name, "role": token.role.value, "prefix": token.prefix,
            "createdAt": token.created_at.isoformat(), "createdBy": token.created_by,
            "lastUsedAt": token.last_used_at.isoformat() if token.last_used_at else None,
            "revoked": token.revoked_at is not None}


def operator_json(app: AppRecord, handover: HandoverRecord | None, found: KeylessAppState | None,
                  read: bool = True) -> dict[str, Any]:
    """An app's handover to the operator and its KeylessApp as read (null when there is none or it was not read)."""
    body: dict[str, Any] = {"app": app.name, "handedOver": handover is not None, "handover": None,
                            "keylessApp": found.as_json() if found is not None else None,
                            "links": {"self": f"/api/v1/apps/{app.name}/operator", "app": f"/api/v1/apps/{app.name}"}}
    if handover is not None:
        body["handover"] = {
            "target": handover.target_name, "namespace": handover.namespace, "name": app.name,
            "revision": handover.revision, "appRevision": app.revision, "upToDate": handover.revision == app.revision,
            "refreshInterval": handover.refresh_interval, "suspend": handover.suspend,
            "handedBy": handover.handed_by, "handedAt": handover.handed_at.isoformat()}
        if read and found is None:
            body["missing"] = (f"KeylessApp {handover.namespace}/{app.name} is not in the cluster of target "
                               f"{handover.target_name!r}: someone deleted it there; hand the app over again, or take "
                               "it back")
    return body


def event_json(event: AuditEvent) -> dict[str, Any]:
    return {"id": event.id, "at": event.at.isoformat(), "actor": event.actor, "action": event.action,
            "subject": event.subject, "before": event.before, "after": event.after}


async def _document(request: Request) -> str:
    """A YAML request body as text: UTF-8, at most 1 MiB (the loader reports everything else with positions)."""
    raw = await request.body()
    if len(raw) > MAX_DOCUMENT:
        raise UsageError(f"the document is {len(raw)} bytes; at most {MAX_DOCUMENT} are accepted")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("the document is not UTF-8 text", "send porter.yaml as UTF-8") from None


_YAML_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    t: {"schema": {"type": "string"}} for t in ("application/yaml", "text/plain")}}}


# --- who am I --------------------------------------------------------------------------------------


@router.get("/whoami", tags=["tokens"])
def whoami(caller: TokenRecord = Viewer) -> dict[str, Any]:
    """The calling token: its name and role."""
    return token_json(caller)


# --- targets ---------------------------------------------------------------------------------------


@router.get("/targets", tags=["targets"])
def list_targets(request: Request, _: TokenRecord = Viewer) -> list[dict[str, Any]]:
    return [target_json(t) for t in state(request).store.list_targets()]


@router.post("/targets/import", tags=["targets"], openapi_extra=_YAML_BODY)
async def import_targets(request: Request, caller: TokenRecord = Admin) -> list[dict[str, Any]]:
    """Create or replace every target of a targets file (the YAML the CLI reads with --targets)."""
    text = await _document(request)
    results = state(request).plane.import_targets(text, "targets file (request body)", caller.actor)
    return [{**target_json(t), "created": created} for t, created in results]


@router.get("/targets/{name}", tags=["targets"])
def get_target(name: str, request: Request, _: TokenRecord = Viewer) -> dict[str, Any]:
    return target_json(state(request).store.get_target(name))


@router.put("/targets/{name}", tags=["targets"])
def put_target(name: str, request: Request, response: Response,
               body: Annotated[dict[str, Any], Body(examples=[{
                   "cloud": "aws", "region": "us-east-1", "cluster": "prod", "namespace": "shop"}])],
               caller: TokenRecord = Admin) -> dict[str, Any]:
    """Create or replace a target; the body has the fields of one entry of a targets file."""
    record, created = state(request).plane.put_target(name, body, caller.actor)
    response.status_code = 201 if created else 200
    return target_json(record)


@router.delete("/targets/{name}", tags=["targets"], status_code=204)
def delete_target(name: str, request: Request, caller: TokenRecord = Admin) -> Response:
    state(request).store.delete_target(name, caller.actor)
    return Response(status_code=204)


@router.get("/targets/{name}/preflight", tags=["targets"])
def preflight_target(name: str, request: Request, _: TokenRecord = Viewer) -> dict[str, Any]:
    """The target's own checks (cluster found, Pod Identity agent or OIDC issuer and workload identity on)."""
    issues = state(request).plane.preflight_target(name)
    return {"target": name, "ready": not any(i.severity is PreflightSeverity.BLOCKING for i in issues),
            "issues": issues_json(issues)}


# --- apps ------------------------------------------------------------------------------------------


@router.get("/apps", tags=["apps"])
def list_apps(request: Request, _: TokenRecord = Viewer) -> list[dict[str, Any]]:
    return [app_json(a) for a in state(request).store.list_apps()]


@router.post("/apps", tags=["apps"], status_code=201, openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": ImportApp.model_json_schema()},
    "application/yaml": {"schema": {"type": "string"}}}}})
async def import_app(request: Request, response: Response, caller: TokenRecord = Admin,
                     name: Annotated[str | None, Query(description="for a YAML body: the app's name")] = None,
                     target: Annotated[str | None, Query(description="for a YAML body: the default target")] = None,
                     ) -> dict[str, Any]:
    """Import a porter.yaml as a new app: JSON `{porterYaml, name?, target?}`, or the YAML itself as the body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            body = ImportApp.model_validate_json(await request.body())
        except ValidationError as exc:
            detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
            raise UsageError(f"the request body is not valid: {detail}",
                             "send {\"porterYaml\": \"...\", \"name\": \"...\", \"target\": \"...\"}") from None
        text, name, target = body.porter_yaml, body.name or name, body.target or target
    elif content_type in YAML_TYPES or not content_type:
        text = await _document(request)
    else:
        raise UsageError(f"content type {content_type!r} is not accepted",
                         "send application/json ({porterYaml, name, target}) or application/yaml (the file)")
    app = state(request).plane.import_app(text, name, target, caller.actor)
    response.headers["Location"] = f"/api/v1/apps/{app.name}"
    return app_json(app, full=True)


@router.get("/apps/{app}", tags=["apps"])
def get_app(app: str, request: Request, _: TokenRecord = Viewer) -> dict[str, Any]:
    return app_json(state(request).store.get_app(app), full=True)


@router.delete("/apps/{app}", tags=["apps"], status_code=204)
def delete_app(app: str, request: Request, caller: TokenRecord = Admin,
               force: Annotated[bool, Query(description="forget it even if cloud bindings may remain")] = False,
               ) -> Response:
    """Forget the app and its deploy history. Refused (409) while it has connections or undeployed changes,
    since its cloud bindings would stay behind untracked; detach, deploy, then delete (or force)."""
    state(request).plane.delete_app(app, caller.actor, force)
    return Response(status_code=204)


@router.get("/apps/{app}/porter.yaml", tags=["apps"], response_class=PlainTextResponse,
            responses={200: {"content": {"application/yaml": {}}}})
def export_app(app: str, request: Request, _: TokenRecord = Viewer) -> Response:
    """The app as porter.yaml: what was imported, with every change made here, ready for `keyless apply -f`."""
    return Response(state(request).plane.export_app(app), media_type="application/yaml")


@router.put("/apps/{app}/porter.yaml", tags=["apps"], openapi_extra=_YAML_BODY)
async def replace_app(app: str, request: Request, caller: TokenRecord = Admin,
                      revision: RevisionQuery = None) -> dict[str, Any]:
    """Replace the app's porter.yaml (validated as the CLI does)."""
    text = await _document(request)
    return app_json(state(request).plane.replace_app(app, text, caller.actor, revision), full=True)


@router.put("/apps/{app}/target", tags=["apps"])
def set_app_target(app: str, body: SetTarget, request: Request, caller: TokenRecord = Admin) -> dict[str, Any]:
    """The target the app's plans and deploys go to unless a request names another."""
    return app_json(state(request).plane.set_app_target(app, body.target, caller.actor))


# --- services and connections --------------------------------------------------------------------


@router.get("/apps/{app}/services", tags=["services"])
def list_services(app: str, request: Request, _: TokenRecord = Viewer) -> list[dict[str, Any]]:
    record = state(request).store.get_app(app)
    return [service_json(app, s) for s in record.services]


def _service(request: Request, app: str, service: str) -> ServiceRecord:
    return require_service(state(request).store.get_app(app), service)


@router.get("/apps/{app}/services/{service}", tags=["services"])
def get_service(app: str, service: str, request: Request, _: TokenRecord = Viewer) -> dict[str, Any]:
    found = _service(request, app, service)
    return service_json(app, found)


@router.get("/apps/{app}/services/{service}/connections", tags=["connections"])
def list_connections(app: str, service: str, request: Request, _: TokenRecord = Viewer) -> list[dict[str, Any]]:
    found = _service(request, app, service)
    return [{"type": c.type, **c.settings} for c in found.connections]


@router.put("/apps/{app}/services/{service}/connections/{type}", tags=["connections"])
def put_connection(app: str, service: str, type: str, request: Request,
                   body: Annotated[dict[str, str], Body(examples=[{"role": "my-app-api-role"}, {
                       "identityName": "my-app-api-identity", "resourceGroup": "my-resource-group"}, {
                       "serviceAccountEmail": "api@my-project.iam.gserviceaccount.com"}])],
                   caller: TokenRecord = Deployer,
                   revision: RevisionQuery = None) -> dict[str, Any]:
    """Attach or change a connection (awsRole, azureManagedIdentity, gcpServiceAccount); the next deploy binds it."""
    change = ConnectionChange(service=service, type=identity_connection_type(type), fields=body)
    record = state(request).plane.change_connection(app, change, caller.actor, revision)
    return app_json(record)


@router.delete("/apps/{app}/services/{service}/connections/{type}", tags=["connections"])
def delete_connection(app: str, service: str, type: str, request: Request, caller: TokenRecord = Deployer,
                      revision: RevisionQuery = None) -> dict[str, Any]:
    """Detach a connection; the next deploy removes the binding keyless made for it."""
    change = ConnectionChange(service=service, type=identity_connection_type(type), fields=None)
    return app_json(state(request).plane.change_connection(app, change, caller.actor, revision))


# --- plan, deploy, status, audit -----------------------------------------------------------------


TargetQuery = Annotated[str | None, Query(description="the target (default: the app's)")]


@router.post("/apps/{app}/plan", tags=["deploys"], status_code=201)
def plan_app(app: str, request: Request, response: Response, caller: TokenRecord = Deployer,
             target: TargetQuery = None) -> dict[str, Any]:
    """Plan now; the plan is kept as a deploy in status `planned`, to review and then apply."""
    record = state(request).runner.plan(app, target, caller.actor)
    response.headers["Location"] = f"/api/v1/deploys/{record.id}"
    return deploy_json(record)


@router.post("/apps/{app}/deploys", tags=["deploys"], status_code=202)
def deploy_app(app: str, request: Request, response: Response, caller: TokenRecord = Deployer,
               target: TargetQuery = None) -> dict[str, Any]:
    """Plan and apply in the background (409 while another deploy of this app runs). Poll the Location."""
    record = state(request).runner.deploy(app, target, caller.actor)
    response.headers["Location"] = f"/api/v1/deploys/{record.id}"
    return deploy_json(record)


@router.post("/deploys/{deploy_id}/apply", tags=["deploys"], status_code=202)
def apply_deploy(deploy_id: RowId, request: Request, caller: TokenRecord = Deployer) -> dict[str, Any]:
    """Apply a planned deploy in the background; refused (409) when the app or the world changed since the plan."""
    return deploy_json(state(request).runner.apply(deploy_id, caller.actor))


@router.get("/apps/{app}/deploys", tags=["deploys"])
def list_deploys(app: str, request: Request, _: TokenRecord = Viewer) -> list[dict[str, Any]]:
    return [deploy_json(d) for d in state(request).store.list_deploys(app)]


@router.get("/deploys/{deploy_id}", tags=["deploys"])
def get_deploy(deploy_id: RowId, request: Request, _: TokenRecord = Viewer) -> dict[str, Any]:
    """A deploy's progress (actions done of total, each with its outcome) and, once finished, its result."""
    return deploy_json(state(request).store.get_deploy(deploy_id))


@router.get("/apps/{app}/status", tags=["status"])
def app_status(app: str, request: Request, _: TokenRecord = Viewer, target: TargetQuery = None) -> dict[str, Any]:
    """Per service: the cloud binding keyless owns, the identity, the service account, and drift."""
    rows = state(request).plane.status(app, target)
    return {"app": app, "services": [r.as_json() for r in rows]}


# --- the keyless operator ------------------------------------------------------------------------


@router.get("/apps/{app}/operator", tags=["operator"])
def operator_status(app: str, request: Request, _: TokenRecord = Viewer) -> dict[str, Any]:
    """The app's handover to the keyless operator, and its KeylessApp as the operator reports it, read now from the
    target's cluster: conditions (Ready, Drifted, Blocked), bindings, whether the operator has caught up with the
    spec (observedGeneration), the last plan. 502 when the cluster cannot be reached, 409 when it has no operator."""
    plane = state(request).plane
    handover, found = plane.operator_status(app)
    return operator_json(plane.store.get_app(app), handover, found)


@router.put("/apps/{app}/operator", tags=["operator"])
def hand_over(app: str, request: Request, caller: TokenRecord = Deployer,
              body: Annotated[HandOver | None, Body()] = None) -> dict[str, Any]:
    """Hand the app to the keyless operator: write (server-side apply, field manager `keyless-control-plane`) the
    KeylessApp named after the app in its target's namespace, with the app's current porter.yaml. An operator must
    run in that cluster with a targets file that has a target of the same name. Again after porter.yaml changed:
    the spec is updated. While handed over, deploys of the app to that target from here are refused (409)."""
    wanted = body or HandOver()
    plane = state(request).plane
    handover, written = plane.hand_over(app, caller.actor, wanted.refresh_interval, wanted.suspend)
    return operator_json(plane.store.get_app(app), handover, written)


@router.delete("/apps/{app}/operator", tags=["operator"])
def take_back(app: str, request: Request, caller: TokenRecord = Deployer,
              remove_bindings: Annotated[bool, Query(alias="removeBindings", description=(
                  "required: deleting the KeylessApp makes the operator remove every binding keyless made for the "
                  "app on that target"))] = False) -> dict[str, Any]:
    """Take the app back from the operator: delete its KeylessApp, and the operator REMOVES every cloud binding and
    service-account mark keyless made for the app on that target (its finalizer holds the object until it has).
    Refused (409) without `?removeBindings=true`. To stop the operator writing and keep the bindings, hand it over
    again with `{"suspend": true}` instead."""
    plane = state(request).plane
    record = plane.store.get_app(app)
    handover, deleted = plane.take_back(app, caller.actor, confirmed=remove_bindings,
                                        confirm_hint="add ?removeBindings=true to go ahead")
    body = operator_json(record, None, None, read=False)
    body["takenBack"] = {"target": handover.target_name, "namespace": handover.namespace, "deleted": deleted,
                         "message": (f"KeylessApp {handover.namespace}/{app} deleted: the operator is removing the "
                                     "app's bindings" if deleted else
                                     f"KeylessApp {handover.namespace}/{app} was already gone or being deleted")}
    return body


@router.get("/apps/{app}/audit", tags=["audit"])
def audit_app(app: str, request: Request, _: TokenRecord = Viewer, target: TargetQuery = None) -> dict[str, Any]:
    """Least-privilege findings for each connection (the same rules as `keyless audit`)."""
    return audit_json(state(request).plane.audit(app, target))


@router.get("/audit-log", tags=["audit"])
def audit_log(request: Request, _: TokenRecord = Viewer,
              subject: Annotated[str | None, Query(description="e.g. app/shop: that app and its services")] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 100,
              before: Annotated[int | None, Query(ge=1, le=MAX_ID,
                                                 description="events older than this id (paging)")] = None,
              ) -> list[dict[str, Any]]:
    """Every change made through the control plane, newest first: who, what, before and after."""
    return [event_json(e) for e in state(request).store.audit_events(subject, limit, before)]


# --- tokens ----------------------------------------------------------------------------------------


@router.get("/tokens", tags=["tokens"])
def list_tokens(request: Request, _: TokenRecord = Admin) -> list[dict[str, Any]]:
    return [token_json(t) for t in state(request).store.list_tokens()]


@router.post("/tokens", tags=["tokens"], status_code=201)
def create_token(body: NewToken, request: Request, caller: TokenRecord = Admin) -> dict[str, Any]:
    """A new token; its secret is in this response only (keyless keeps just its SHA-256)."""
    record, secret = state(request).store.create_token(body.name, body.role, caller.actor)
    return {**token_json(record), "token": secret}


@router.delete("/tokens/{token_id}", tags=["tokens"])
def revoke_token(token_id: RowId, request: Request, caller: TokenRecord = Admin) -> dict[str, Any]:
    return token_json(state(request).store.revoke_token(token_id, caller.actor))
