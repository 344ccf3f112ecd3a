"""The FastAPI application: the REST API under /api/v1, the dashboard, and how errors reach a person."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from keyless import __version__, engine
from keyless.errors import InvalidInput, KeylessError
from keyless.server.auth import LoginRequired, ServerState, SessionLimits, Viewer
from keyless.server.deploys import DeployRunner
from keyless.server.errors import error_body, http_status
from keyless.server.eventlog import EventLog, RequestLog
from keyless.server.limits import BoundedRequests
from keyless.server.operations import Connector, ControlPlane, OperatorConnector, connect_operator_cluster, problems
from keyless.store import Store, TokenRecord, default_files_dir
from keyless.store.models import utcnow

STATIC = Path(__file__).parent / "static"
CSRF_SETTING = "csrf-key"
# The hint of an error the routing itself gives (no such route or method, a parameter of the wrong shape).
_ROUTES_HINT = "see the routes and their parameters in the OpenAPI document at /api/v1/openapi.json"


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def create_app(store: Store, env: Mapping[str, str], connector: Connector = engine.connect,
               secure_cookies: bool = False, server: str = "", files_dir: Path | None = None,
               events: EventLog | None = None, sessions: SessionLimits | None = None,
               clock: Callable[[], dt.datetime] = utcnow,
               operator_connector: OperatorConnector = connect_operator_cluster) -> FastAPI:
    """The application; `server` names this server among those sharing the database (`keyless serve`: host:port);
    targets given through the API may name files under `files_dir` only; requests and deploys are logged to
    `events` (default: JSON lines on stderr); dashboard logins last as `sessions` says, on `clock`; KeylessApps are
    written in targets' clusters through `operator_connector`."""
    events = events or EventLog()
    plane = ControlPlane(store, env, connector, files_dir or default_files_dir(), operator_connector)
    runner = DeployRunner(plane, server=server, events=events)
    server_state = ServerState(store=store, plane=plane, runner=runner,
                               csrf_key=store.secret(CSRF_SETTING).encode(), secure_cookies=secure_cookies,
                               sessions=sessions or SessionLimits(), clock=clock)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        store.interrupt_abandoned(server)
        store.purge_sessions(clock())
        yield
        runner.shutdown()

    app = FastAPI(
        title="keyless", version=__version__, lifespan=lifespan,
        description="Cloud identities for the services of porter.yaml apps, without static keys. Every route but "
                    "/healthz needs `Authorization: Bearer <token>`; roles are viewer < deployer < admin.",
        docs_url=None, redoc_url=None, openapi_url=None,  # served below, behind a token like every route
    )
    app.state.keyless = server_state
    # Outermost: bodies are bounded, and API bodies need a valid token, before anything reads them.
    app.add_middleware(BoundedRequests, store=store)
    # Outside even that, so a refused body is logged too.
    app.add_middleware(RequestLog, events=events)

    @app.middleware("http")
    async def api_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        if _is_api(request):
            # Answers carry tokens and configuration: no cache keeps them, no browser guesses their type.
            response.headers.setdefault("Cache-Control", "no-store")
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    from keyless.server import api, dashboard

    app.include_router(api.router)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", include_in_schema=True, tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: answers without a token."""
        return {"status": "ok", "version": __version__}

    @app.get("/api/v1/openapi.json", tags=["health"], response_model=None)
    def openapi_document(_: TokenRecord = Viewer) -> dict[str, Any]:
        """This API's OpenAPI 3 document."""
        return app.openapi()

    @app.exception_handler(KeylessError)
    async def keyless_error(request: Request, exc: KeylessError) -> Response:
        status = http_status(exc)
        if _is_api(request):
            return JSONResponse(error_body(exc.message if not isinstance(exc, InvalidInput) else
                                           "the input is not valid", exc.hint, problems(exc)), status_code=status)
        return dashboard.error_page(request, status, exc.render())

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        if request.headers.get("HX-Request"):
            # An htmx fragment (live progress) whose session ended: the whole page goes to the login form,
            # and back to the page (not the fragment) afterwards.
            page = urlsplit(request.headers.get("HX-Current-URL", "/")).path or "/"
            return Response(status_code=204, headers={"HX-Redirect": f"/login?next={quote(page, safe='/')}"})
        return RedirectResponse(f"/login?next={quote(exc.next_url, safe='/')}", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, dict) else error_body(str(exc.detail), _ROUTES_HINT)
        if _is_api(request) or request.url.path == "/healthz":
            return JSONResponse(detail, status_code=exc.status_code, headers=exc.headers)
        return dashboard.error_page(request, exc.status_code,
                                    f"{detail.get('error', '')}\n{detail.get('hint', '')}".strip())

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        items = [{"location": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
                 for e in exc.errors()]
        text = "; ".join(f"{i['location']}: {i['message']}" for i in items)
        if _is_api(request):
            return JSONResponse(error_body(f"the request is not valid: {text}", _ROUTES_HINT, items),
                                status_code=422)
        return dashboard.error_page(request, 422, f"the form is not valid: {text}")

    return app
