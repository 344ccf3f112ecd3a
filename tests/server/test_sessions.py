"""Dashboard sessions on SQLite and PostgreSQL: kept on the server, named by a random cookie, ended by logout,
revocation and expiry (on an injected clock), and the migration that brings them to an existing database."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import MetaData, func, insert, select

from keyless.server.app import create_app
from keyless.server.auth import CSRF_HEADER, SESSION_COOKIE, SessionLimits
from keyless.store import Role, Store
from keyless.store.models import ApiTokenRow, Base, DashboardSessionRow
from keyless.store.store import MIGRATIONS, hash_token

CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')
LIMITS = SessionLimits(idle=dt.timedelta(minutes=30), lifetime=dt.timedelta(hours=2))
START = dt.datetime(2030, 1, 2, 9, 0, tzinfo=dt.UTC)


class Clock:
    """The server's clock in these tests: it moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@dataclass
class Server:
    store: Store
    clock: Clock
    client: TestClient  # one browser; `browser()` makes more
    secrets: dict[Role, str]

    def browser(self, cookie: str | None = None) -> TestClient:
        """A browser of its own, holding `cookie` as its session cookie when given (a copied cookie)."""
        client = TestClient(self.client.app, follow_redirects=False)
        if cookie is not None:
            client.cookies.set(SESSION_COOKIE, cookie)
        return client

    def sessions(self, token_name: str | None = None) -> int:
        """How many session rows the store holds (of the token named so, when given)."""
        query = select(func.count()).select_from(DashboardSessionRow)
        if token_name is not None:
            query = query.join(ApiTokenRow).where(ApiTokenRow.name == token_name)
        with self.store.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())


@pytest.fixture
def server(database_url: str) -> Iterator[Server]:
    store = Store.open(database_url)
    clock = Clock()
    secrets = {role: store.create_token(f"{role.value}-person", role, "test")[1] for role in Role}
    try:
        with TestClient(create_app(store, {}, sessions=LIMITS, clock=clock), follow_redirects=False) as client:
            yield Server(store, clock, client, secrets)
    finally:
        store.close()


def csrf_of(client: TestClient, path: str = "/login") -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = CSRF.search(page.text)
    assert found, page.text
    return found.group(1)


def login(client: TestClient, secret: str) -> str:
    """Log in; the session cookie's value."""
    response = client.post("/login", data={"token": secret, "next": "/", "csrf": csrf_of(client)})
    assert response.status_code == 303, response.text
    cookie = client.cookies.get(SESSION_COOKIE)
    assert cookie
    return cookie


def assert_logged_out(client: TestClient) -> None:
    """Refused as the dashboard refuses a missing session: pages redirect to the login form, and an htmx fragment
    sends the whole page there."""
    page = client.get("/targets")
    assert page.status_code == 303, page.text
    assert page.headers["location"] == "/login?next=/targets"
    fragment = client.get("/deploys/1/progress", headers={"HX-Request": "true",
                                                          "HX-Current-URL": "http://testserver/deploys/1"})
    assert fragment.status_code == 204, fragment.text
    assert fragment.headers["HX-Redirect"] == "/login?next=/deploys/1"


def assert_logged_in(client: TestClient, who: str = "viewer-person (viewer)") -> None:
    page = client.get("/targets")
    assert page.status_code == 200, page.text
    assert who in page.text


# --- what the cookie holds ---------------------------------------------------------------------------


def test_login_sets_a_cookie_that_is_not_the_token_and_the_session_works(server: Server) -> None:
    secret = server.secrets[Role.VIEWER]
    response = server.client.post("/login", data={"token": secret, "next": "/targets",
                                                  "csrf": csrf_of(server.client)})
    assert response.status_code == 303
    header = response.headers["set-cookie"]
    assert "HttpOnly" in header
    assert "SameSite=strict" in header
    cookie = server.client.cookies.get(SESSION_COOKIE)
    assert cookie
    assert secret not in cookie
    assert secret not in header
    assert_logged_in(server.client)
    assert server.sessions("viewer-person") == 1


def test_the_session_cookie_is_no_api_token(server: Server) -> None:
    cookie = login(server.client, server.secrets[Role.ADMIN])
    refused = server.client.get("/api/v1/apps", headers={"Authorization": f"Bearer {cookie}"})
    assert refused.status_code == 401
    assert refused.headers["cache-control"] == "no-store"
    assert refused.headers["x-content-type-options"] == "nosniff"


def test_the_store_never_holds_the_session_secret(server: Server) -> None:
    cookie = login(server.client, server.secrets[Role.DEPLOYER])
    assert_logged_in(server.client, "deployer-person (deployer)")
    tables = MetaData()
    tables.reflect(server.store.engine)
    with server.store.engine.connect() as connection:
        for table in tables.sorted_tables:
            for row in connection.execute(table.select()):
                assert not any(cookie in str(value) for value in row), table.name
        kept = connection.execute(select(DashboardSessionRow.secret_hash)).scalars().all()
    assert kept == [hash_token(cookie)]


# --- how a session ends ------------------------------------------------------------------------------


def test_after_logout_the_same_cookie_is_refused(server: Server) -> None:
    cookie = login(server.client, server.secrets[Role.VIEWER])
    copied = server.browser(cookie)
    assert_logged_in(copied)
    response = server.client.post("/logout", data={"csrf": csrf_of(server.client, "/")})
    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    assert_logged_out(server.client)
    assert_logged_out(copied)  # the value itself is refused, wherever it was copied to
    assert server.sessions() == 0
    # The token was only used to log in: it still works for the API, and to log in again.
    whoami = server.client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {server.secrets[Role.VIEWER]}"})
    assert whoami.status_code == 200
    login(server.client, server.secrets[Role.VIEWER])
    assert_logged_in(server.client)


def test_logging_in_again_replaces_the_browsers_session(server: Server) -> None:
    first = login(server.client, server.secrets[Role.VIEWER])
    second = login(server.client, server.secrets[Role.DEPLOYER])
    assert first != second
    assert_logged_out(server.browser(first))
    assert_logged_in(server.browser(second), "deployer-person (deployer)")
    assert server.sessions() == 1


def test_each_login_is_its_own_session(server: Server) -> None:
    laptop, phone = server.browser(), server.browser()
    login(laptop, server.secrets[Role.VIEWER])
    login(phone, server.secrets[Role.VIEWER])
    assert laptop.cookies.get(SESSION_COOKIE) != phone.cookies.get(SESSION_COOKIE)
    laptop.post("/logout", data={"csrf": csrf_of(laptop, "/")})
    assert_logged_out(laptop)
    assert_logged_in(phone)


def test_a_revoked_tokens_sessions_are_refused(server: Server) -> None:
    made = server.client.post("/api/v1/tokens", headers={"Authorization": f"Bearer {server.secrets[Role.ADMIN]}"},
                              json={"name": "temp", "role": "viewer"}).json()
    browser = server.browser()
    login(browser, made["token"])
    assert_logged_in(browser, "temp (viewer)")
    revoked = server.client.delete(f"/api/v1/tokens/{made['id']}",
                                   headers={"Authorization": f"Bearer {server.secrets[Role.ADMIN]}"})
    assert revoked.status_code == 200
    assert server.sessions("temp") == 0
    assert_logged_out(browser)


def test_a_session_whose_token_was_revoked_behind_its_back_is_refused(server: Server) -> None:
    # Revoked by another path than revoke_token (a row changed by hand): the session is checked against its token.
    cookie = login(server.client, server.secrets[Role.VIEWER])
    with server.store.engine.begin() as connection:
        connection.execute(ApiTokenRow.__table__.update().where(ApiTokenRow.name == "viewer-person")
                           .values(revoked_at=START))
    assert_logged_out(server.browser(cookie))
    assert server.sessions() == 0


def test_an_idle_session_expires(server: Server) -> None:
    login(server.client, server.secrets[Role.VIEWER])
    server.clock.advance(minutes=20)
    assert_logged_in(server.client)  # each use pushes the idle expiry back
    server.clock.advance(minutes=20)
    assert_logged_in(server.client)  # 40 minutes after login, 20 after the last request
    server.clock.advance(minutes=30)
    assert_logged_out(server.client)
    assert server.sessions() == 0  # refused and deleted


def test_a_busy_session_still_ends_at_its_lifetime(server: Server) -> None:
    login(server.client, server.secrets[Role.VIEWER])
    for _ in range(5):  # 1 h 40 min of use, never idle
        server.clock.advance(minutes=20)
        assert_logged_in(server.client)
    server.clock.advance(minutes=19, seconds=59)
    assert_logged_in(server.client)
    server.clock.advance(seconds=1)  # two hours after login
    assert_logged_out(server.client)
    assert server.sessions() == 0


def test_expired_sessions_are_cleaned_up_without_being_presented_again(server: Server) -> None:
    login(server.browser(), server.secrets[Role.VIEWER])
    login(server.browser(), server.secrets[Role.DEPLOYER])
    server.clock.advance(hours=3)
    login(server.client, server.secrets[Role.ADMIN])  # a login clears every expired session
    assert server.sessions() == 1
    server.clock.advance(hours=3)
    with TestClient(server.client.app):  # and so does a server starting
        pass
    assert server.sessions() == 0


# --- CSRF is bound to the session -------------------------------------------------------------------


def test_a_csrf_token_works_only_with_its_own_session(server: Server) -> None:
    laptop, phone = server.browser(), server.browser()
    login(laptop, server.secrets[Role.ADMIN])
    login(phone, server.secrets[Role.ADMIN])  # the same token, another session
    laptops = csrf_of(laptop, "/")
    assert laptops != csrf_of(phone, "/")
    refused = phone.post("/logout", data={"csrf": laptops})
    assert refused.status_code == 403
    assert "CSRF" in refused.text
    assert phone.post("/logout", headers={CSRF_HEADER: laptops}).status_code == 403
    assert_logged_in(phone, "admin-person (admin)")
    old = csrf_of(laptop, "/")
    login(laptop, server.secrets[Role.ADMIN])  # a new session: the forms of the old one are stale
    assert laptop.post("/logout", data={"csrf": old}).status_code == 403
    assert laptop.post("/logout", data={"csrf": csrf_of(laptop, "/")}).status_code == 303


# --- the migration -----------------------------------------------------------------------------------


def _migrate(url: str, revision: str) -> None:
    store = Store(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        with store.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        store.close()


def test_the_migration_upgrades_a_database_made_by_the_previous_head(database_url: str) -> None:
    _migrate(database_url, "0002")
    old = Store(database_url)
    before = MetaData()
    before.reflect(old.engine)
    assert "api_tokens" in before.tables
    assert "dashboard_sessions" not in before.tables
    with old.engine.begin() as connection:
        connection.execute(insert(ApiTokenRow.__table__).values(
            id=7, name="from-before", role="viewer", token_hash=hash_token("kl_from-before"), prefix="kl_from-",
            created_at=START, created_by="0002"))
    old.close()

    store = Store.open(database_url)
    try:
        with store.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
            # The head: 0003 made the sessions; later revisions come on top of it.
            assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one() >= "0003"
        clock = Clock()
        with TestClient(create_app(store, {}, sessions=LIMITS, clock=clock), follow_redirects=False) as client:
            # A cookie made before the migration held the token itself: it is no session, so it is refused.
            before_migration = TestClient(client.app, follow_redirects=False)
            before_migration.cookies.set(SESSION_COOKIE, "kl_from-before")
            assert_logged_out(before_migration)
            cookie = login(client, "kl_from-before")
            assert cookie != "kl_from-before"
            assert_logged_in(client, "from-before (viewer)")
    finally:
        store.close()


def test_the_migration_goes_down_to_the_previous_head_and_up_again(database_url: str) -> None:
    store = Store.open(database_url)
    _, secret = store.create_token("someone", Role.VIEWER, "test")
    assert store.open_session(secret, START, LIMITS.idle, LIMITS.lifetime) is not None
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        with store.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0002")
        reflected = MetaData()
        reflected.reflect(store.engine)
        assert "dashboard_sessions" not in reflected.tables
        store.migrate()
        assert store.authenticate(secret) is not None  # the token outlives its sessions' table
        opened = store.open_session(secret, START, LIMITS.idle, LIMITS.lifetime)
        assert opened is not None
        assert store.session_token(opened[1], START, LIMITS.idle) is not None
    finally:
        store.close()
