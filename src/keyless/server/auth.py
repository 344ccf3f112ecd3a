"""Who is asking and what they may do: API tokens (Bearer for the API), dashboard sessions, roles, CSRF."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request

from keyless.server.deploys import DeployRunner
from keyless.server.errors import BAD_TOKEN, NO_TOKEN
from keyless.server.eventlog import record_caller
from keyless.server.limits import TOKEN_STATE
from keyless.server.operations import ControlPlane
from keyless.store import Role, Store, TokenRecord
from keyless.store.models import utcnow
from keyless.store.store import hash_token

SESSION_COOKIE = "keyless_session"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True)
class SessionLimits:
    """How long a dashboard login lasts: until `idle` passes without a request, and `lifetime` at most."""

    idle: dt.timedelta = dt.timedelta(minutes=30)
    lifetime: dt.timedelta = dt.timedelta(hours=12)


@dataclass(frozen=True)
class ServerState:
    """What every route needs, hung on the FastAPI app at start-up."""

    store: Store
    plane: ControlPlane
    runner: DeployRunner
    csrf_key: bytes
    secure_cookies: bool = False
    sessions: SessionLimits = field(default_factory=SessionLimits)
    clock: Callable[[], dt.datetime] = utcnow  # sessions expire on this clock (tests pass their own)


def state(request: Request) -> ServerState:
    found: ServerState = request.app.state.keyless
    return found


class AuthError(HTTPException):
    """401 or 403 with a message a person can act on."""

    def __init__(self, status_code: int, message: str, hint: str) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
        super().__init__(status_code=status_code, detail={"error": message, "hint": hint}, headers=headers)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _check_role(request: Request, token: TokenRecord, needed: Role) -> TokenRecord:
    record_caller(request.scope, token.name)
    if not token.role.allows(needed):
        raise AuthError(403, f"this needs the {needed.value} role; your token {token.prefix}… is {token.role.value}",
                        "ask an admin for a token with that role (POST /api/v1/tokens)")
    return token


def api_caller(needed: Role) -> Callable[[Request], TokenRecord]:
    """A dependency: the API caller's token (Authorization: Bearer), which must hold `needed` or more."""

    def dependency(request: Request) -> TokenRecord:
        checked: TokenRecord | None = getattr(request.state, TOKEN_STATE, None)
        if checked is not None:  # the body limit already checked it, before reading the body
            return _check_role(request, checked, needed)
        secret = bearer_token(request)
        if secret is None:
            raise AuthError(401, *NO_TOKEN)
        token = state(request).store.authenticate(secret)
        if token is None:
            raise AuthError(401, *BAD_TOKEN)
        return _check_role(request, token, needed)

    return dependency


Viewer = Depends(api_caller(Role.VIEWER))
Deployer = Depends(api_caller(Role.DEPLOYER))
Admin = Depends(api_caller(Role.ADMIN))


# --- the dashboard: a server-side session named by its cookie, and CSRF tokens on every form ------


class LoginRequired(Exception):
    """Raised by dashboard pages without a valid session; the app turns it into a redirect to /login."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def session_user(request: Request) -> TokenRecord | None:
    """The token whose live session the cookie names, or None. The cookie holds the session's random secret, never
    the token: a copied cookie is no API token, and it stops working at logout, revocation or expiry."""
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret:
        return None
    server = state(request)
    return server.store.session_token(secret, server.clock(), server.sessions.idle)


def open_session(request: Request, token_secret: str) -> str | None:
    """Log in with an API token: the new session's secret (the cookie's value), or None for a token not valid."""
    server = state(request)
    opened = server.store.open_session(token_secret, server.clock(), server.sessions.idle, server.sessions.lifetime)
    return None if opened is None else opened[1]


def dashboard_user(needed: Role = Role.VIEWER) -> Callable[[Request], TokenRecord]:
    """A dependency for dashboard pages: the logged-in token (else a redirect to /login), holding `needed`."""

    def dependency(request: Request) -> TokenRecord:
        token = session_user(request)
        if token is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise LoginRequired(target if request.method == "GET" else "/")
        return _check_role(request, token, needed)

    return dependency


def csrf_token(request: Request) -> str:
    """The value forms carry: an HMAC of the session's secret (bound to this session, not to its token), so
    another site cannot forge a form post, and a new login makes the old forms stale."""
    secret = request.cookies.get(SESSION_COOKIE, "")
    return hmac.new(state(request).csrf_key, hash_token(secret).encode(), hashlib.sha256).hexdigest()


def _cross_origin(request: Request) -> bool:
    """A browser's Origin header naming another site (it is sent with every cross-site POST)."""
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return origin == "null"
    return urlsplit(origin).netloc != request.headers.get("Host", request.url.netloc)


async def check_csrf(request: Request) -> None:
    """A dependency for dashboard POSTs: same origin, and the form field or the htmx header carries this session's
    CSRF token. The origin check also covers the login form, whose token is the same for every anonymous visitor."""
    if _cross_origin(request):
        raise HTTPException(status_code=403, detail={
            "error": "this form was posted from another site (Origin check failed)",
            "hint": "open the dashboard itself and submit the form there"})
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent or not hmac.compare_digest(sent, csrf_token(request)):
        raise HTTPException(status_code=403, detail={
            "error": "this form expired or did not come from this dashboard (CSRF check failed)",
            "hint": "reload the page and submit it again"})
