"""The dashboard: server-rendered pages over the control plane, readable without JavaScript; htmx adds live parts."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from keyless import clouds, names
from keyless import preview as preview_module
from keyless.audit.model import Finding, sorted_findings
from keyless.audit.render import connection_label
from keyless.errors import Conflict, KeylessError, NotFound
from keyless.operator.resource import ConditionType
from keyless.plan import planfile
from keyless.providers.base import PreflightSeverity
from keyless.server.auth import (
    SESSION_COOKIE,
    check_csrf,
    csrf_token,
    dashboard_user,
    open_session,
    session_user,
    state,
)
from keyless.server.errors import http_status
from keyless.server.operations import ConnectionChange, connection_fields, identity_connection_type, require_service
from keyless.store import (
    AppRecord,
    DeployRecord,
    DeployStatus,
    HandoverRecord,
    Role,
    ServiceRecord,
    TargetRecord,
    TokenRecord,
)
from keyless.store.models import MAX_ID
from keyless.targets import AnyTarget

TEMPLATES = Path(__file__).parent / "templates"
AUDIT_LOG_PAGE = 100
HISTORY_LENGTH = 20

router = APIRouter(include_in_schema=False)

DeployId = Annotated[int, PathParam(ge=1, le=MAX_ID)]

Viewer = Annotated[TokenRecord, Depends(dashboard_user(Role.VIEWER))]
Deployer = Annotated[TokenRecord, Depends(dashboard_user(Role.DEPLOYER))]
Admin = Annotated[TokenRecord, Depends(dashboard_user(Role.ADMIN))]
# Declared after the user on each write route, so that a missing login redirects before the CSRF check refuses.
CsrfChecked = Annotated[None, Depends(check_csrf)]

# Sent with every page: no framing (clickjacking), scripts and styles only from this server, forms post only here.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

def _when(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


_environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                           trim_blocks=True, lstrip_blocks=True)
_environment.filters["when"] = _when
_environment.filters["pretty"] = _pretty
templates = Jinja2Templates(env=_environment)


# --- rendering -------------------------------------------------------------------------------------


def _render(request: Request, template: str, context: Mapping[str, Any], user: TokenRecord | None,
            status_code: int = 200) -> HTMLResponse:
    values = {
        "user": user,
        "csrf": csrf_token(request),
        "can_deploy": user is not None and user.role.allows(Role.DEPLOYER),
        "is_admin": user is not None and user.role.allows(Role.ADMIN),
        **context,
    }
    return templates.TemplateResponse(request, template, values, status_code=status_code, headers=SECURITY_HEADERS)


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})


def _is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def error_page(request: Request, status: int, message: str) -> Response:
    """An HTML page with the status and message (never a traceback), for every non-API error."""
    try:
        user = session_user(request)
    except Exception:  # the error may be the database itself: show the page without the navigation
        user = None
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    return _render(request, "error.html", {"status": status, "reason": reason, "message": message}, user,
                   status_code=status)


def local_path(value: str) -> str:
    """`value` when it is a path on this server (where login may send the browser next), else `/`."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


# --- login -----------------------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, next_url: Annotated[str, Query(alias="next")] = "/") -> Response:
    return _render(request, "login.html", {"next": local_path(next_url), "error": None}, session_user(request))


@router.post("/login", dependencies=[Depends(check_csrf)])
def login(request: Request, token: Annotated[str, Form()] = "",
          next_url: Annotated[str, Form(alias="next")] = "/") -> Response:
    secret = token.strip()
    session = open_session(request, secret) if secret else None
    if session is None:
        return _render(request, "login.html", {
            "next": local_path(next_url),
            "error": "That token is not valid (unknown or revoked). Check it, or ask an admin for a new one.",
        }, None, status_code=401)
    _close_session(request)  # a session this browser had before is replaced, not left behind
    response = _see_other(local_path(next_url))
    response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict",
                        secure=state(request).secure_cookies, path="/")
    return response


def _close_session(request: Request) -> None:
    previous = request.cookies.get(SESSION_COOKIE)
    if previous:
        state(request).store.close_session(previous)


@router.post("/logout", dependencies=[Depends(check_csrf)])
def logout(request: Request) -> Response:
    """Ends the session on the server, so its cookie is refused even where it was copied; then clears it here."""
    _close_session(request)
    response = _see_other("/login")
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=state(request).secure_cookies)
    return response


# --- apps ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _AppRow:
    app: AppRecord
    connections: int
    last: DeployRecord | None
    handover: HandoverRecord | None


def _apps_page(request: Request, user: TokenRecord, import_form: Mapping[str, str] | None = None,
               import_error: str | None = None, status_code: int = 200) -> Response:
    store = state(request).store
    handovers = store.handovers()
    rows = []
    for app in store.list_apps():
        last = store.list_deploys(app.name, limit=1)
        rows.append(_AppRow(app, sum(len(s.connections) for s in app.services), last[0] if last else None,
                            handovers.get(app.name)))
    return _render(request, "apps.html", {
        "rows": rows, "targets": store.list_targets() if user.role.allows(Role.ADMIN) else [],
        "import_form": import_form or {"porter_yaml": "", "name": "", "target": ""}, "import_error": import_error,
    }, user, status_code=status_code)


@router.get("/")
def apps_page(request: Request, user: Viewer) -> Response:
    return _apps_page(request, user)


@router.post("/apps")
def import_app(request: Request, user: Admin, _: CsrfChecked,
               porter_yaml: Annotated[str, Form(max_length=1024 * 1024)] = "",
               name: Annotated[str, Form(max_length=200)] = "", target: Annotated[str, Form(max_length=200)] = "",
               ) -> Response:
    """Import a pasted porter.yaml as a new app; every problem is shown with its line, above the kept text."""
    try:
        app = state(request).plane.import_app(porter_yaml.replace("\r\n", "\n"), name.strip() or None,
                                              target or None, user.actor)
    except KeylessError as exc:
        form = {"porter_yaml": porter_yaml, "name": name, "target": target}
        return _apps_page(request, user, form, exc.render(), status_code=http_status(exc))
    return _see_other(f"/apps/{app.name}")


def _app_page(request: Request, app: str, user: TokenRecord, operator_error: str | None = None,
              taken_back: bool = False, status_code: int = 200) -> Response:
    store = state(request).store
    record = store.get_app(app)
    deploys = store.list_deploys(app, limit=HISTORY_LENGTH)
    return _render(request, "app.html", {
        "app": record, "deploys": deploys, "last": deploys[0] if deploys else None,
        "undeployed": _undeployed(request, record),
        "targets": store.list_targets() if user.role.allows(Role.ADMIN) else [],
        "titles": {e.connection_type: e.connection_title for e in clouds.REGISTRY},
        "handover": store.get_handover(app), "operator_error": operator_error, "taken_back": taken_back,
    }, user, status_code=status_code)


@router.get("/apps/{app}")
def app_page(request: Request, app: str, user: Viewer,
             taken_back: Annotated[bool, Query(alias="taken-back")] = False) -> Response:
    return _app_page(request, app, user, taken_back=taken_back)


@dataclass(frozen=True, slots=True)
class _Undeployed:
    """porter.yaml changes the target has not seen: the revision last deployed (None: never) and by which deploy."""

    deployed_revision: int | None
    deploy_id: int | None


def _undeployed(request: Request, app: AppRecord) -> _Undeployed | None:
    """None when the last successful deploy brought the target to the app's current revision (or there is nothing
    to deploy: never deployed and no connection)."""
    last = state(request).plane.last_deployed(app.name)
    if last is None:
        return _Undeployed(None, None) if any(s.connections for s in app.services) else None
    return _Undeployed(last.app_revision, last.id) if last.app_revision < app.revision else None


@router.post("/apps/{app}/target")
def change_target(request: Request, app: str, user: Admin, _: CsrfChecked,
                  target: Annotated[str, Form()] = "") -> Response:
    state(request).plane.set_app_target(app, target or None, user.actor)
    return _see_other(f"/apps/{app}")


@router.post("/apps/{app}/plan")
def plan(request: Request, app: str, user: Deployer, _: CsrfChecked) -> Response:
    """Plan in the background and follow it on the deploy page: its blockers, or the error, show there."""
    record = state(request).runner.plan_in_background(app, None, user.actor)
    return _see_other(f"/deploys/{record.id}")


@router.get("/apps/{app}/status")
def status_page(request: Request, app: str, user: Viewer) -> Response:
    """The page at once; its bindings are read from the cloud by the part below, so a slow or unreachable cloud
    never holds the page (htmx loads the part; without JavaScript a link opens it)."""
    return _render(request, "status.html", {"app": state(request).store.get_app(app)}, user)


@router.get("/apps/{app}/status/bindings")
def status_bindings(request: Request, app: str, user: Viewer) -> Response:
    """What is bound for each service, read now: a fragment for htmx, else a page; a cloud error shows with its
    hint in place."""
    plane = state(request).plane
    record = plane.store.get_app(app)
    rows, error = [], None
    try:
        rows = plane.status(app, None)
    except KeylessError as exc:
        error = exc.render()
    context = {"app": record, "rows": rows, "error": error}
    return _render(request, "_status.html" if _is_htmx(request) else "status_bindings.html", context, user)


# --- the keyless operator --------------------------------------------------------------------------


@router.get("/apps/{app}/operator")
def operator_status(request: Request, app: str, user: Viewer) -> Response:
    """The app's KeylessApp as the operator reports it, read now from the target's cluster: a fragment for htmx (the
    app page's Operator panel), else a page; an unreachable cluster or one without the operator shows in place."""
    plane = state(request).plane
    record = plane.store.get_app(app)
    context: dict[str, Any] = {"app": record, "handover": None, "found": None, "error": None,
                               "condition_types": [t.value for t in ConditionType]}
    try:
        context["handover"], context["found"] = plane.operator_status(app)
    except KeylessError as exc:
        context["handover"] = plane.store.get_handover(app)
        context["error"] = exc.render()
    return _render(request, "_operator.html" if _is_htmx(request) else "operator.html", context, user)


@router.get("/apps/{app}/operator/summary")
def operator_summary(request: Request, app: str, user: Viewer) -> Response:
    """One word for the apps list (Ready, Drifted, Blocked, Pending, ...), read now: htmx loads it per app."""
    plane = state(request).plane
    summary, error = None, None
    try:
        _, found = plane.operator_status(app)
        summary = found.summary if found is not None else "Missing"
    except KeylessError as exc:
        error = exc.message
    return _render(request, "_operator_summary.html", {"summary": summary, "error": error}, user)


@router.post("/apps/{app}/operator")
def hand_over(request: Request, app: str, user: Deployer, _: CsrfChecked,
              refresh_interval: Annotated[str, Form(max_length=32)] = "",
              suspend: Annotated[str, Form(max_length=10)] = "") -> Response:
    """Write the app's KeylessApp (again: its spec follows porter.yaml's current text); a refusal shows on the page."""
    try:
        state(request).plane.hand_over(app, user.actor, refresh_interval.strip() or None, bool(suspend))
    except NotFound:
        raise
    except KeylessError as exc:
        return _app_page(request, app, user, operator_error=exc.render(), status_code=http_status(exc))
    return _see_other(f"/apps/{app}#operator")


@router.post("/apps/{app}/operator/take-back")
def take_back(request: Request, app: str, user: Deployer, _: CsrfChecked,
              confirm: Annotated[str, Form(max_length=10)] = "") -> Response:
    """Delete the app's KeylessApp, once the person has ticked that the operator then removes the bindings."""
    try:
        state(request).plane.take_back(
            app, user.actor, confirmed=confirm == "yes",
            confirm_hint="tick the box saying you know the bindings are removed, then Take back")
    except NotFound:
        raise
    except KeylessError as exc:
        return _app_page(request, app, user, operator_error=exc.render(), status_code=http_status(exc))
    return _see_other(f"/apps/{app}?taken-back=true#operator")


# --- a service and its connections -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    label: str
    value: str
    placeholder: str


@dataclass(frozen=True, slots=True)
class _Section:
    type: str
    title: str
    toggle_label: str
    enabled: bool
    fields: tuple[_Field, ...]
    warning: str
    preview: preview_module.ConnectionPreview | None
    preview_error: str | None
    error: str | None
    cloud_name: str  # "AWS"
    applies: bool  # the app's target is on this cloud (or it has no target yet): shown open, else collapsed


def _app_target(request: Request, app: AppRecord) -> tuple[str | None, AnyTarget | None]:
    """The app's target, or None when it has none or it no longer loads (the page still shows)."""
    if not app.target_name:
        return None, None
    try:
        return app.target_name, state(request).plane.target(app.target_name)
    except KeylessError:
        return app.target_name, None


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A connection form the control plane refused: its message, and what to show in its fields again."""

    type: str
    message: str
    entered: Mapping[str, str] | None = None  # None: show what is stored
    enabled: bool | None = None


def _entered(type_: str, given: Mapping[str, str]) -> dict[str, str]:
    """The fields of a connection of this type, from a form or query string (missing ones empty)."""
    return {f: given.get(f, "") for f in connection_fields(identity_connection_type(type_))}


def _section(app: AppRecord, service: ServiceRecord, type_: str, target_name: str | None, target: AnyTarget | None,
             entered: Mapping[str, str] | None = None, enabled: bool | None = None,
             error: str | None = None) -> _Section:
    """One provider's section; `entered` and `enabled` are what a form held, else the stored connection shows."""
    current = service.connection(type_)
    values = dict(entered) if entered is not None else dict(current.settings) if current else {}
    entry = clouds.by_connection_type(type_)
    examples = entry.example_values(app.name, service.name, target)
    fields = tuple(_Field(f.name, f.label, values.get(f.name, ""), examples[f.name]) for f in entry.connection_fields)
    title = entry.connection_title
    preview_values = {"type": type_, **{f.name: f.value.strip() or f.placeholder for f in fields}}
    preview, preview_error = None, None
    try:
        preview = preview_module.preview_connection(app.name, service.name, preview_values, target_name, target)
    except KeylessError as exc:
        preview_error = f"keyless cannot show what it will create for these values: {exc.message}"
    return _Section(
        type=type_, title=title, toggle_label=f"Enable the {title}",
        enabled=enabled if enabled is not None else current is not None,
        fields=fields,
        warning=(f"Enabling this connection gives the pods of {service.name} access to every cloud resource "
                 f"{entry.access_words} can reach. Grant it only what this service needs."),
        preview=preview, preview_error=preview_error, error=error,
        cloud_name=entry.name, applies=target is None or clouds.for_target(target).cloud is entry.cloud,
    )


@dataclass(frozen=True, slots=True)
class _Saved:
    """What a Save changed in porter.yaml, shown above the service once the browser is back on its page."""

    revision: int
    diff: tuple[str, ...]  # `- ` and `+ ` lines of the service's connections; empty: nothing changed


def _connection_yaml(connection: Mapping[str, Any]) -> list[str]:
    """A connection as porter.yaml spells it under `connections:`."""
    lines: list[str] = []
    for key, value in connection.items():
        lines.append(f"{'- ' if not lines else '  '}{key}: {value}")
    return lines


def _saved(request: Request, app: AppRecord, service: str, revision: int) -> _Saved:
    """The change that made `revision` of this service's connections, read back from the audit log (0: none)."""
    if revision == 0:
        return _Saved(app.revision, ())
    subject = f"app/{app.name}/service/{service}"
    for event in state(request).store.audit_events(subject, limit=HISTORY_LENGTH):
        after, before = event.after or {}, event.before or {}
        if event.subject != subject or after.get("revision") != revision:
            continue
        old = list(before.get("connections", {}).get(service, []))
        new = list(after.get("connections", {}).get(service, []))
        diff = [f"- {line}" for c in old if c not in new for line in _connection_yaml(c)]
        diff += [f"+ {line}" for c in new if c not in old for line in _connection_yaml(c)]
        return _Saved(revision, tuple(diff))
    return _Saved(revision, ())


def _service_page(request: Request, user: TokenRecord, app_name: str, service_name: str,
                  refused: _Refusal | None = None, status_code: int = 200, saved: int | None = None) -> Response:
    app = state(request).store.get_app(app_name)
    service = require_service(app, service_name)
    target_name, target = _app_target(request, app)
    sections = []
    for type_ in clouds.connection_types():
        if refused is not None and refused.type == type_:
            sections.append(_section(app, service, type_, target_name, target, refused.entered, refused.enabled,
                                     refused.message))
        else:
            sections.append(_section(app, service, type_, target_name, target))
    return _render(request, "service.html", {
        "app": app, "service": service, "sections": sections, "target": target,
        "target_cloud": clouds.for_target(target).name if target is not None else None,
        "service_account": names.service_account_name(app.name, service.name),
        "saved": _saved(request, app, service.name, saved) if saved is not None else None,
    }, user, status_code=status_code)


@router.get("/apps/{app}/services/{service}")
def service_page(request: Request, app: str, service: str, user: Viewer,
                 saved: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None) -> Response:
    return _service_page(request, user, app, service, saved=saved)


@router.post("/apps/{app}/services/{service}/connections/{type_}")
def save_connection(
    request: Request, app: str, service: str, type_: str, user: Deployer, _: CsrfChecked,
    revision: Annotated[int, Form(ge=0, le=MAX_ID)],
    enabled: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = "",
    identity_name: Annotated[str, Form(alias="identityName")] = "",
    resource_group: Annotated[str, Form(alias="resourceGroup")] = "",
    service_account_email: Annotated[str, Form(alias="serviceAccountEmail")] = "",
) -> Response:
    """The toggle on saves the fields into porter.yaml; off detaches the connection."""
    fields = _entered(type_, {"role": role, "identityName": identity_name, "resourceGroup": resource_group,
                              "serviceAccountEmail": service_account_email})
    on = bool(enabled)
    try:
        record = state(request).plane.change_connection(
            app, ConnectionChange(service, type_, fields if on else None), user.actor, expected_revision=revision)
    except NotFound:
        raise
    except KeylessError as exc:
        # A stale form shows what is stored now; any other refusal keeps what the person typed.
        refusal = (_Refusal(type_, exc.render()) if isinstance(exc, Conflict)
                   else _Refusal(type_, exc.render(), fields, on))
        return _service_page(request, user, app, service, refusal, status_code=http_status(exc))
    # Back to the page (a reload does not post again), which says what the save changed in porter.yaml; 0 when
    # porter.yaml already said this (no new revision).
    saved = record.revision if record.revision != revision else 0
    return _see_other(f"/apps/{app}/services/{service}?saved={saved}#saved")


@router.get("/apps/{app}/services/{service}/preview/{type_}")
def connection_preview(request: Request, app: str, service: str, type_: str, user: Viewer) -> Response:
    """The info box of one section for the values being typed (htmx swaps it in as the fields change)."""
    entered = _entered(type_, request.query_params)
    record = state(request).store.get_app(app)
    found = require_service(record, service)
    target_name, target = _app_target(request, record)
    section = _section(record, found, type_, target_name, target, entered)
    return _render(request, "_preview.html", {"app": record, "service": found, "s": section}, user)


@dataclass(frozen=True, slots=True)
class _ConnectionFindings:
    label: str
    summary: str
    findings: list[Finding]  # worst first
    service: str = ""

    @property
    def worst(self) -> str:
        """The CSS class of the summary: the worst severity found, or `ok`."""
        return f"severity-{self.findings[0].severity.value}" if self.findings else "ok"


@router.get("/apps/{app}/services/{service}/findings")
def findings(request: Request, app: str, service: str, user: Viewer) -> Response:
    """The least-privilege findings of this service's connections: a fragment for htmx, else a page."""
    plane = state(request).plane
    record = plane.store.get_app(app)
    require_service(record, service)
    context: dict[str, Any] = {"app": record, "service": service, "report": None, "connections": [], "error": None}
    try:
        report = plane.audit(app, None)
    except KeylessError as exc:
        context["error"] = exc.render()
    else:
        context["report"] = report
        context["connections"] = [
            _ConnectionFindings(connection_label(c.binding), c.summary(), sorted_findings(c.findings))
            for c in report.connections if c.binding.service == service]
    return _render(request, "_findings.html" if _is_htmx(request) else "findings.html", context, user)


# --- deploys ---------------------------------------------------------------------------------------


def _progress_context(request: Request, deploy_id: int) -> dict[str, Any]:
    return {"deploy": state(request).store.get_deploy(deploy_id)}


@router.get("/deploys/{deploy_id}")
def deploy_page(request: Request, deploy_id: DeployId, user: Viewer) -> Response:
    context = _progress_context(request, deploy_id)
    deploy = context["deploy"]
    app = state(request).store.get_app(deploy.app)
    context.update(
        blockers=list((deploy.plan or {}).get("blockers", [])),
        stale=app.revision != deploy.app_revision,
        app_revision=app.revision,
    )
    return _render(request, "deploy.html", context, user)


@router.get("/deploys/{deploy_id}/progress")
def deploy_progress(request: Request, deploy_id: DeployId, user: Viewer,
                    since: Annotated[str, Query(max_length=20)] = "") -> Response:
    """The live part of the deploy page; it stops asking to be polled once the deploy has finished. A page shown
    while planning (`since=planning`) is reloaded whole once the plan is made, blocked or failed: the plan, its
    blockers and the Apply button are outside this part."""
    context = _progress_context(request, deploy_id)
    if since == DeployStatus.PLANNING.value and context["deploy"].status is not DeployStatus.PLANNING:
        return Response(status_code=200, headers={"HX-Refresh": "true", "Cache-Control": "no-store"})
    return _render(request, "_progress.html", context, user)


@router.get("/deploys/{deploy_id}/audit")
def plan_audit(request: Request, deploy_id: DeployId, user: Viewer) -> Response:
    """The least-privilege summary of the identities a plan binds, one line per connection as `keyless plan`
    prints it: a fragment for htmx, else a page."""
    plane = state(request).plane
    deploy = plane.store.get_deploy(deploy_id)
    context: dict[str, Any] = {"deploy": deploy, "connections": [], "error": None, "report": None}
    try:
        if deploy.plan is None:
            raise Conflict(f"deploy #{deploy.id} has no plan yet", "wait for the plan to be made")
        report = plane.audit_plan(planfile.load(deploy.plan))
    except KeylessError as exc:
        context["error"] = exc.render()
    else:
        context["report"] = report
        context["connections"] = [
            _ConnectionFindings(connection_label(c.binding), c.summary(), sorted_findings(c.findings),
                                c.binding.service) for c in report.connections]
    return _render(request, "_plan_audit.html" if _is_htmx(request) else "plan_audit.html", context, user)


@router.post("/deploys/{deploy_id}/apply")
def apply(request: Request, deploy_id: DeployId, user: Deployer, _: CsrfChecked) -> Response:
    record = state(request).runner.apply(deploy_id, user.actor)
    return _see_other(f"/deploys/{record.id}")


# --- targets and the audit log ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TargetRow:
    record: TargetRecord
    settings: list[tuple[str, str]]
    apps: list[str]


@router.get("/targets")
def targets_page(request: Request, user: Viewer) -> Response:
    """Each target with its settings at once; its preflight checks are run by the part below, one request per
    target, so one slow or unreachable cloud neither holds the page nor hides the other targets."""
    server = state(request)
    apps = server.store.list_apps()
    rows = []
    for record in server.store.list_targets():
        settings = [(key, value if isinstance(value, str) else json.dumps(value, sort_keys=True))
                    for key, value in record.settings.items() if key != "cloud"]
        rows.append(_TargetRow(record=record, settings=settings,
                               apps=[a.name for a in apps if a.target_name == record.name]))
    return _render(request, "targets.html", {"rows": rows}, user)


@router.get("/targets/{name}/preflight")
def target_preflight(request: Request, name: str, user: Viewer) -> Response:
    """One target's preflight checks, run now: a fragment for htmx, else a page; a cloud error shows with its hint."""
    server = state(request)
    record = server.store.get_target(name)
    issues, error = [], None
    try:
        issues = server.plane.preflight_target(name)
    except KeylessError as exc:
        error = exc.render()
    context = {"record": record, "issues": issues, "error": error,
               "ready": error is None and not any(i.severity is PreflightSeverity.BLOCKING for i in issues)}
    return _render(request, "_preflight.html" if _is_htmx(request) else "preflight.html", context, user)


@router.get("/audit-log")
def audit_log(request: Request, user: Viewer, before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
              subject: str = "") -> Response:
    events = state(request).store.audit_events(subject_prefix=subject or None, limit=AUDIT_LOG_PAGE,
                                                before_id=before)
    older = events[-1].id if len(events) == AUDIT_LOG_PAGE else None
    return _render(request, "audit_log.html", {"events": events, "subject": subject, "older": older}, user)
