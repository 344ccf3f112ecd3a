"""The Store: every read and write of the control plane's database, each change recorded in the audit log."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, case, create_engine, delete, event, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DataError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, selectinload, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from keyless.errors import Conflict, NotFound, StaleRevision, UsageError
from keyless.store.models import (
    ApiTokenRow,
    AppLockRow,
    AppRow,
    AuditEventRow,
    ConnectionRow,
    DashboardSessionRow,
    DeployActionRow,
    DeployRow,
    HandoverRow,
    ServiceRow,
    SettingRow,
    TargetRow,
    utcnow,
)
from keyless.store.records import (
    AppChange,
    AppRecord,
    AuditEvent,
    ConnectionRecord,
    DeployActionRecord,
    DeployRecord,
    DeployStatus,
    HandoverRecord,
    Role,
    ServiceRecord,
    TargetRecord,
    TokenRecord,
)

MIGRATIONS = Path(__file__).parent / "migrations"
TOKEN_PREFIX = "kl_"
# A lock whose deploy has not reported for this long belongs to a server that died mid-deploy.
LOCK_STALE_AFTER = dt.timedelta(minutes=10)
# How often a token's last use and a session's idle expiry are written: at most once a minute, not on every request.
TOUCH_EVERY = dt.timedelta(minutes=1)


def data_dir() -> Path:
    """keyless's directory in the user's data directory ($XDG_DATA_HOME/keyless)."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "keyless"


def default_database_url() -> str:
    """SQLite in the user's data directory, so `keyless serve` with no flags keeps its state across restarts."""
    return f"sqlite:///{data_dir() / 'keyless.db'}"


def default_files_dir() -> Path:
    """Where targets given to `keyless serve` through the API may name files, unless --files-dir says otherwise."""
    return data_dir() / "files"


def hash_token(secret: str) -> str:
    """What the store keeps of a random secret (an API token, a dashboard session): its SHA-256, never the secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # keyless issues BEGIN itself (below), so that a transaction takes the write lock when it starts.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")  # the deploy threads and the web requests share one file
    cursor.close()


def _private_file(path: Path) -> None:
    """Create the SQLite file readable by its owner only: it holds token hashes, porter.yaml texts and the audit log."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    with contextlib.suppress(OSError):  # best effort: a file keyless may not chmod keeps its mode
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)


def _create_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UsageError(f"--database-url {url!r} is not a database URL",
                         "use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _private_file(Path(parsed.database))
        engine = create_engine(parsed, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        # A deferred transaction that reads and then writes fails at once ("database is locked") when another
        # writer went first: IMMEDIATE takes the write lock up front, so transactions queue (busy_timeout).
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine
    if backend == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver keyless ships
        return create_engine(parsed, pool_pre_ping=True)
    raise UsageError(f"database {backend!r} is not supported", "use SQLite (the default) or PostgreSQL")


def _touch_token(row: ApiTokenRow, now: dt.datetime) -> None:
    """Record that a token was used (to the minute)."""
    if row.last_used_at is None or now - row.last_used_at > TOUCH_EVERY:
        row.last_used_at = now


def _session_expired(now: dt.datetime) -> ColumnElement[bool]:
    return (DashboardSessionRow.idle_expires_at <= now) | (DashboardSessionRow.expires_at <= now)


def _connection(row: ConnectionRow) -> ConnectionRecord:
    return ConnectionRecord(type=row.type, settings={str(k): str(v) for k, v in row.settings.items()})


def _app(row: AppRow) -> AppRecord:
    return AppRecord(
        name=row.name, target_name=row.target_name, porter_yaml=row.porter_yaml, revision=row.revision,
        created_at=row.created_at, updated_at=row.updated_at,
        services=tuple(ServiceRecord(s.name, s.kind, tuple(_connection(c) for c in s.connections))
                       for s in row.services),
    )


def _target(row: TargetRow) -> TargetRecord:
    return TargetRecord(name=row.name, cloud=row.cloud, settings=dict(row.settings), updated_at=row.updated_at)


def _token(row: ApiTokenRow) -> TokenRecord:
    return TokenRecord(id=row.id, name=row.name, role=Role(row.role), prefix=row.prefix, created_at=row.created_at,
                       created_by=row.created_by, last_used_at=row.last_used_at, revoked_at=row.revoked_at)


def _deploy(row: DeployRow, app: str, with_actions: bool = True) -> DeployRecord:
    actions = tuple(
        DeployActionRecord(seq=a.seq, service=a.service, resource=a.resource, kind=a.kind, address=a.address,
                           ok=a.ok, message=a.message, seconds=a.seconds, finished_at=a.finished_at)
        for a in row.actions
    ) if with_actions else ()
    return DeployRecord(
        id=row.id, app=app, app_revision=row.app_revision, target_name=row.target_name,
        status=DeployStatus(row.status), requested_by=row.requested_by, created_at=row.created_at,
        started_at=row.started_at, finished_at=row.finished_at, plan=row.plan, plan_text=row.plan_text,
        total_actions=row.total_actions, message=row.message, actions=actions,
    )


def _app_summary(app: AppRecord) -> dict[str, Any]:
    """What the audit log keeps of an app: its target, revision and connections (the text is in the app)."""
    return {
        "target": app.target_name, "revision": app.revision,
        "connections": {s.name: [{"type": c.type, **c.settings} for c in s.connections]
                        for s in app.services if s.connections},
    }


class Store:
    """The control plane's database. Each method is one transaction; values in and out are records."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _create_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str | None = None) -> Store:
        """Connect and bring the schema up to date (Alembic migrations)."""
        store = cls(url or default_database_url())
        store.migrate()
        return store

    @property
    def display_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def migrate(self) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except OperationalError as exc:
            raise UsageError(f"cannot open the database {self.display_url}: {exc.orig}",
                             "check --database-url, that the server runs and the user may connect") from None

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        try:
            with self._sessions() as session, session.begin():
                yield session
        except OperationalError as exc:
            if "locked" not in str(exc.orig).lower() and "busy" not in str(exc.orig).lower():
                raise
            # SQLite's busy timeout ran out: another writer held the file that long. Say so; never a 500.
            raise Conflict("the database is busy with other changes", "try again in a moment") from None
        except DataError as exc:  # e.g. a NUL character, which PostgreSQL text cannot hold
            raise UsageError(f"the database cannot store or look up this value: {str(exc.orig).splitlines()[0]}",
                             "names are lowercase letters, digits and '-'; text cannot contain NUL characters") \
                from None

    @staticmethod
    def _record(session: Session, actor: str, action: str, subject: str,
                before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        session.add(AuditEventRow(actor=actor, action=action, subject=subject, before=before, after=after))

    # --- settings ----------------------------------------------------------------------------------

    def secret(self, key: str) -> str:
        """A random value created once and kept (for signing); the same on every server sharing the database."""
        with self._tx() as s:
            row = s.get(SettingRow, key)
            if row is not None:
                return row.value
        value = secrets.token_urlsafe(32)
        try:
            with self._tx() as s:
                s.add(SettingRow(key=key, value=value))
        except IntegrityError:  # another server made it first
            pass
        with self._tx() as s:
            made = s.get(SettingRow, key)
            assert made is not None
            return made.value

    # --- tokens ------------------------------------------------------------------------------------

    def create_token(self, name: str, role: Role, actor: str) -> tuple[TokenRecord, str]:
        """A new token and its secret, which is never stored and cannot be shown again."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._tx() as s:
            row = ApiTokenRow(name=name, role=role.value, token_hash=hash_token(secret), prefix=secret[:8],
                              created_by=actor)
            s.add(row)
            s.flush()
            self._record(s, actor, "token.create", f"token/{row.id}", None,
                         {"name": name, "role": role.value, "prefix": row.prefix})
            return _token(row), secret

    @staticmethod
    def _live_token(s: Session, secret: str, now: dt.datetime) -> ApiTokenRow | None:
        """The unrevoked token with this secret, its last use recorded (to the minute), or None."""
        row = s.scalars(select(ApiTokenRow).where(ApiTokenRow.token_hash == hash_token(secret))).first()
        if row is None or row.revoked_at is not None:
            return None
        _touch_token(row, now)
        return row

    def authenticate(self, secret: str) -> TokenRecord | None:
        """The live token with this secret, or None. Records when it was last used (to the minute)."""
        with self._tx() as s:
            row = self._live_token(s, secret, utcnow())
            return None if row is None else _token(row)

    def has_tokens(self) -> bool:
        with self._tx() as s:
            return s.scalars(select(ApiTokenRow.id).limit(1)).first() is not None

    def list_tokens(self) -> list[TokenRecord]:
        with self._tx() as s:
            return [_token(r) for r in s.scalars(select(ApiTokenRow).order_by(ApiTokenRow.id))]

    def revoke_token(self, token_id: int, actor: str) -> TokenRecord:
        with self._tx() as s:
            row = s.get(ApiTokenRow, token_id)
            if row is None:
                raise NotFound(f"token {token_id} does not exist", "list tokens with GET /api/v1/tokens")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                self._record(s, actor, "token.revoke", f"token/{row.id}",
                             {"name": row.name, "role": row.role}, None)
            # Its dashboard sessions end with it (deleting a token ends them too: the foreign key cascades).
            s.execute(delete(DashboardSessionRow).where(DashboardSessionRow.token_id == row.id))
            return _token(row)

    # --- dashboard sessions --------------------------------------------------------------------------

    def open_session(self, token_secret: str, now: dt.datetime, idle: dt.timedelta,
                     lifetime: dt.timedelta) -> tuple[TokenRecord, str] | None:
        """Log in with an API token: its record and a new session's secret (for the cookie; the store keeps only
        its SHA-256), or None when the token is unknown or revoked. The session ends after `idle` without use or
        `lifetime` in all. Expired sessions of every token are deleted on the way."""
        session_secret = secrets.token_urlsafe(32)
        with self._tx() as s:
            token = self._live_token(s, token_secret, now)
            if token is None:
                return None
            s.execute(delete(DashboardSessionRow).where(_session_expired(now)))
            expires = now + lifetime
            s.add(DashboardSessionRow(secret_hash=hash_token(session_secret), token_id=token.id, created_at=now,
                                      last_seen_at=now, idle_expires_at=min(now + idle, expires), expires_at=expires))
            return _token(token), session_secret

    def session_token(self, session_secret: str, now: dt.datetime, idle: dt.timedelta) -> TokenRecord | None:
        """The token a live session was opened with, or None: no such session (never opened, or logged out), an
        expired one (deleted now), or its token revoked. Each use pushes the idle expiry back to `idle` from now
        (written at most once a minute), never past the session's lifetime."""
        with self._tx() as s:
            found = s.execute(
                select(DashboardSessionRow, ApiTokenRow).join(ApiTokenRow)
                .where(DashboardSessionRow.secret_hash == hash_token(session_secret))).first()
            if found is None:
                return None
            session, token = found
            if token.revoked_at is not None or now >= session.idle_expires_at or now >= session.expires_at:
                # By id, not through the ORM: a concurrent request may have deleted it already.
                s.execute(delete(DashboardSessionRow).where(DashboardSessionRow.id == session.id))
                return None
            if now - session.last_seen_at >= TOUCH_EVERY:
                session.last_seen_at = now
                session.idle_expires_at = min(now + idle, session.expires_at)
            _touch_token(token, now)
            return _token(token)

    def close_session(self, session_secret: str) -> None:
        """Log out: the session is deleted, so its cookie is refused from now on, wherever it was copied to."""
        with self._tx() as s:
            s.execute(delete(DashboardSessionRow).where(
                DashboardSessionRow.secret_hash == hash_token(session_secret)))

    def purge_sessions(self, now: dt.datetime) -> None:
        """Delete the sessions that expired by `now`."""
        with self._tx() as s:
            s.execute(delete(DashboardSessionRow).where(_session_expired(now)))

    # --- targets -----------------------------------------------------------------------------------

    def list_targets(self) -> list[TargetRecord]:
        with self._tx() as s:
            return [_target(r) for r in s.scalars(select(TargetRow).order_by(TargetRow.name))]

    def get_target(self, name: str) -> TargetRecord:
        with self._tx() as s:
            row = s.scalars(select(TargetRow).where(TargetRow.name == name)).first()
            if row is None:
                raise NotFound(f"target {name!r} does not exist", "create it with PUT /api/v1/targets/NAME")
            return _target(row)

    def put_target(self, name: str, cloud: str, settings: dict[str, Any], actor: str) -> tuple[TargetRecord, bool]:
        """Create or replace a target; True when it was created."""
        with self._tx() as s:
            row = s.scalars(select(TargetRow).where(TargetRow.name == name)).first()
            created = row is None
            before = None if row is None else dict(row.settings)
            if row is None:
                row = TargetRow(name=name, cloud=cloud, settings=settings)
                s.add(row)
            elif before == settings:
                return _target(row), False
            else:
                row.cloud, row.settings = cloud, settings
            s.flush()
            self._record(s, actor, "target.create" if created else "target.update", f"target/{name}",
                         before, settings)
            return _target(row), created

    def delete_target(self, name: str, actor: str) -> None:
        with self._tx() as s:
            row = s.scalars(select(TargetRow).where(TargetRow.name == name)).first()
            if row is None:
                raise NotFound(f"target {name!r} does not exist")
            users = list(s.scalars(select(AppRow.name).where(AppRow.target_name == name)))
            if users:
                raise Conflict(f"target {name!r} is the deploy target of {', '.join(sorted(users))}",
                               "move those apps to another target first")
            self._record(s, actor, "target.delete", f"target/{name}", dict(row.settings), None)
            s.delete(row)

    # --- apps --------------------------------------------------------------------------------------

    def _app_row(self, s: Session, name: str, *, lock: bool = False) -> AppRow:
        query = select(AppRow).where(AppRow.name == name)
        if lock:
            query = query.with_for_update(of=AppRow)  # PostgreSQL: held until commit; SQLite: ignored
        row = s.scalars(query.options(selectinload(AppRow.services).selectinload(ServiceRow.connections))).first()
        if row is None:
            raise NotFound(f"app {name!r} does not exist", "import its porter.yaml with POST /api/v1/apps")
        return row

    def list_apps(self) -> list[AppRecord]:
        with self._tx() as s:
            rows = s.scalars(select(AppRow).order_by(AppRow.name).options(
                selectinload(AppRow.services).selectinload(ServiceRow.connections)))
            return [_app(r) for r in rows]

    def get_app(self, name: str) -> AppRecord:
        with self._tx() as s:
            return _app(self._app_row(s, name))

    @staticmethod
    def _set_services(s: Session, row: AppRow, services: Sequence[ServiceRecord]) -> None:
        row.services.clear()
        s.flush()  # the unique (app, name) rows must be gone before the new ones go in
        for i, service in enumerate(services):
            row.services.append(ServiceRow(
                name=service.name, kind=service.kind, position=i,
                connections=[ConnectionRow(type=c.type, settings=dict(c.settings), position=j)
                             for j, c in enumerate(service.connections)],
            ))

    def create_app(self, name: str, porter_yaml: str, services: Sequence[ServiceRecord], target_name: str | None,
                   actor: str) -> AppRecord:
        with self._tx() as s:
            if s.scalars(select(AppRow.id).where(AppRow.name == name)).first() is not None:
                raise Conflict(f"app {name!r} already exists",
                               "replace its porter.yaml with PUT /api/v1/apps/NAME/porter.yaml, or pick another name")
            row = AppRow(name=name, porter_yaml=porter_yaml, target_name=target_name, revision=1)
            s.add(row)
            self._set_services(s, row, services)
            s.flush()
            record = _app(row)
            self._record(s, actor, "app.import", f"app/{name}", None, _app_summary(record))
            return record

    def update_app(self, name: str, *, actor: str, action: str, subject: str, expected_revision: int | None = None,
                   porter_yaml: str | None = None, services: Sequence[ServiceRecord] | None = None,
                   target_name: str | None = None, set_target: bool = False) -> AppRecord:
        """Change an app's porter.yaml (and the services derived from it) and/or its target, as one revision.

        `expected_revision` guards against two people editing the same app at once (HTTP 409 for the second).
        """
        change = AppChange(action=action, subject=subject, porter_yaml=porter_yaml, services=services,
                           target_name=target_name, set_target=set_target)
        return self.edit_app(name, lambda _: change, actor=actor, expected_revision=expected_revision)

    def edit_app(self, name: str, edit: Callable[[AppRecord], AppChange | None], *, actor: str,
                 expected_revision: int | None = None) -> AppRecord:
        """Read the app, compute a change from it with `edit`, and write it, as one locked transaction.

        The app's row is locked for the whole read-modify-write (SELECT ... FOR UPDATE on PostgreSQL; SQLite's
        write transactions are serialized by BEGIN IMMEDIATE), so concurrent edits of one app queue and each one
        starts from the text the previous one wrote: none is lost. `edit` returning None changes nothing."""
        with self._tx() as s:
            row = self._app_row(s, name, lock=True)
            if expected_revision is not None and row.revision != expected_revision:
                raise StaleRevision(f"app {name!r} changed since you loaded it (revision {row.revision}, "
                                    f"you had {expected_revision})", "reload the app and make your change again")
            before = _app(row)
            change = edit(before)
            if change is None:
                return before
            if change.porter_yaml is not None:
                row.porter_yaml = change.porter_yaml
            if change.services is not None:
                self._set_services(s, row, change.services)
            if change.set_target:
                row.target_name = change.target_name
            row.revision += 1
            s.flush()
            after = _app(row)
            self._record(s, actor, change.action, change.subject, _app_summary(before), _app_summary(after))
            return after

    def delete_app(self, name: str, actor: str) -> None:
        with self._tx() as s:
            row = self._app_row(s, name)
            if s.get(AppLockRow, row.id) is not None:
                raise Conflict(f"app {name!r} is being deployed", "wait for the deploy to finish")
            self._record(s, actor, "app.delete", f"app/{name}", _app_summary(_app(row)), None)
            s.delete(row)

    # --- apps handed to the operator ------------------------------------------------------------------

    @staticmethod
    def _handover(row: HandoverRow, app: str) -> HandoverRecord:
        return HandoverRecord(app=app, target_name=row.target_name, namespace=row.namespace, revision=row.revision,
                              refresh_interval=row.refresh_interval, suspend=row.suspend, handed_by=row.handed_by,
                              handed_at=row.handed_at)

    def handovers(self) -> dict[str, HandoverRecord]:
        """Every app handed to the operator, by app name."""
        with self._tx() as s:
            rows = s.execute(select(HandoverRow, AppRow.name).join(AppRow, AppRow.id == HandoverRow.app_id))
            return {name: self._handover(row, name) for row, name in rows}

    def get_handover(self, app_name: str) -> HandoverRecord | None:
        """The app's handover, or None when the control plane has not handed it to the operator."""
        with self._tx() as s:
            row = self._app_row(s, app_name)
            found = s.get(HandoverRow, row.id)
            return None if found is None else self._handover(found, app_name)

    def record_handover(self, app_name: str, *, target_name: str, namespace: str, revision: int,
                        refresh_interval: str | None, suspend: bool, actor: str) -> HandoverRecord:
        """Keep (create or replace) what the control plane wrote as the app's KeylessApp, in the audit log too."""
        with self._tx() as s:
            app = self._app_row(s, app_name)
            row = s.get(HandoverRow, app.id)
            before = None if row is None else self._handover(row, app_name).summary()
            if row is None:
                row = HandoverRow(app_id=app.id)
                s.add(row)
            row.target_name, row.namespace, row.revision = target_name, namespace, revision
            row.refresh_interval, row.suspend, row.handed_by, row.handed_at = refresh_interval, suspend, actor, utcnow()
            s.flush()
            record = self._handover(row, app_name)
            self._record(s, actor, "operator.handover", f"app/{app_name}", before, record.summary())
            return record

    def forget_handover(self, app_name: str, actor: str) -> HandoverRecord | None:
        """The app is no longer the operator's (its KeylessApp was deleted); the one forgotten, or None."""
        with self._tx() as s:
            app = self._app_row(s, app_name)
            row = s.get(HandoverRow, app.id)
            if row is None:
                return None
            record = self._handover(row, app_name)
            self._record(s, actor, "operator.takeback", f"app/{app_name}", record.summary(), None)
            s.delete(row)
            return record

    # --- deploys and the per-app lock ----------------------------------------------------------------

    def _lock_holder(self, s: Session, app_id: int) -> AppLockRow | None:
        return s.get(AppLockRow, app_id)

    def _take_lock(self, s: Session, app: AppRow, deploy_id: int, holder: str, server: str) -> None:
        lock = self._lock_holder(s, app.id)
        now = utcnow()
        if lock is not None:
            if now - lock.heartbeat_at < LOCK_STALE_AFTER:
                since = lock.acquired_at.strftime("%Y-%m-%d %H:%M:%S UTC")
                raise Conflict(
                    f"app {app.name!r} is already being deployed: deploy #{lock.deploy_id} by {lock.holder}, "
                    f"since {since}",
                    f"wait for it to finish (GET /api/v1/deploys/{lock.deploy_id}), then deploy again")
            stale = s.get(DeployRow, lock.deploy_id)
            if stale is not None and DeployStatus(stale.status).active:
                stale.status, stale.finished_at = DeployStatus.INTERRUPTED.value, now
                stale.message = "the server running this deploy stopped reporting; the next deploy converges"
            s.delete(lock)
            s.flush()
        s.add(AppLockRow(app_id=app.id, deploy_id=deploy_id, holder=holder, server=server, acquired_at=now,
                         heartbeat_at=now))
        s.flush()

    def create_deploy(self, app_name: str, target_name: str, actor: str, status: DeployStatus,
                      plan: dict[str, Any] | None = None, plan_text: str | None = None,
                      server: str = "") -> DeployRecord:
        """A new deploy. An active one (planning/applying) takes the app's lock or raises Conflict naming the holder."""
        try:
            with self._tx() as s:
                app = self._app_row(s, app_name)
                row = DeployRow(app_id=app.id, app_revision=app.revision, target_name=target_name,
                                status=status.value, requested_by=actor, plan=plan, plan_text=plan_text,
                                total_actions=0, started_at=utcnow() if status.active else None)
                s.add(row)
                s.flush()
                if status.active:
                    self._take_lock(s, app, row.id, actor, server)
                self._record(s, actor, "deploy.plan" if status is DeployStatus.PLANNED else "deploy.start",
                             f"app/{app_name}/deploy/{row.id}", None, {"target": target_name, "status": status.value})
                return _deploy(row, app_name, with_actions=False)
        except IntegrityError:  # two servers raced for the same lock: the other one won
            with self._tx() as s:
                app = self._app_row(s, app_name)
                lock = self._lock_holder(s, app.id)
                who = f": deploy #{lock.deploy_id} by {lock.holder}" if lock else ""
            raise Conflict(f"app {app_name!r} is already being deployed{who}",
                           "wait for it to finish, then deploy again") from None

    def start_planned(self, deploy_id: int, actor: str, server: str = "") -> DeployRecord:
        """Apply a reviewed plan: takes the lock (or raises Conflict) and marks the deploy applying."""
        with self._tx() as s:
            row = self._deploy_row(s, deploy_id)
            app = s.get(AppRow, row.app_id)
            assert app is not None
            if DeployStatus(row.status) is not DeployStatus.PLANNED:
                raise Conflict(f"deploy #{deploy_id} is {row.status}; only a planned deploy can be applied",
                               "make a new plan with POST /api/v1/apps/APP/plan")
            if app.revision != row.app_revision:
                raise Conflict(f"app {app.name!r} changed since deploy #{deploy_id} was planned "
                               f"(revision {app.revision}, plan made at {row.app_revision})",
                               "make a new plan and review it")
            self._take_lock(s, app, row.id, actor, server)
            row.status, row.started_at = DeployStatus.APPLYING.value, utcnow()
            self._record(s, actor, "deploy.apply", f"app/{app.name}/deploy/{row.id}",
                         {"status": DeployStatus.PLANNED.value}, {"status": DeployStatus.APPLYING.value})
            return _deploy(row, app.name, with_actions=False)

    def _deploy_row(self, s: Session, deploy_id: int) -> DeployRow:
        row = s.get(DeployRow, deploy_id)
        if row is None:
            raise NotFound(f"deploy {deploy_id} does not exist", "list an app's deploys with GET "
                           "/api/v1/apps/APP/deploys")
        return row

    def set_deploy_plan(self, deploy_id: int, plan: dict[str, Any], plan_text: str, total_actions: int,
                        status: DeployStatus) -> None:
        with self._tx() as s:
            row = self._deploy_row(s, deploy_id)
            row.plan, row.plan_text, row.total_actions, row.status = plan, plan_text, total_actions, status.value
            if status.active:
                s.execute(update(AppLockRow).where(AppLockRow.deploy_id == deploy_id).values(heartbeat_at=utcnow()))
            else:  # a background plan now waiting for review (planned) holds no lock, as a planned deploy never does
                s.execute(delete(AppLockRow).where(AppLockRow.deploy_id == deploy_id))

    def record_action(self, deploy_id: int, record: DeployActionRecord) -> None:
        with self._tx() as s:
            s.add(DeployActionRow(deploy_id=deploy_id, seq=record.seq, service=record.service,
                                  resource=record.resource, kind=record.kind, address=record.address,
                                  ok=record.ok, message=record.message, seconds=record.seconds,
                                  finished_at=record.finished_at))
            s.execute(update(AppLockRow).where(AppLockRow.deploy_id == deploy_id).values(heartbeat_at=utcnow()))

    def heartbeat(self, deploy_id: int) -> None:
        with self._tx() as s:
            s.execute(update(AppLockRow).where(AppLockRow.deploy_id == deploy_id).values(heartbeat_at=utcnow()))

    def finish_deploy(self, deploy_id: int, status: DeployStatus, message: str) -> DeployRecord:
        """Record the outcome and release the app's lock."""
        with self._tx() as s:
            row = self._deploy_row(s, deploy_id)
            app = s.get(AppRow, row.app_id)
            assert app is not None
            row.status, row.message, row.finished_at = status.value, message, utcnow()
            s.execute(delete(AppLockRow).where(AppLockRow.deploy_id == deploy_id))
            self._record(s, row.requested_by, "deploy.finish", f"app/{app.name}/deploy/{row.id}",
                         None, {"status": status.value, "message": message})
            s.flush()
            return _deploy(row, app.name)

    def get_deploy(self, deploy_id: int) -> DeployRecord:
        with self._tx() as s:
            row = self._deploy_row(s, deploy_id)
            app = s.get(AppRow, row.app_id)
            assert app is not None
            return _deploy(row, app.name)

    def list_deploys(self, app_name: str, limit: int = 50) -> list[DeployRecord]:
        with self._tx() as s:
            app = self._app_row(s, app_name)
            rows = list(s.scalars(select(DeployRow).where(DeployRow.app_id == app.id)
                                  .order_by(DeployRow.id.desc()).limit(limit)))
            # The actions' counts in one query, not the actions themselves: a listing shows progress, not detail.
            counted = s.execute(
                select(DeployActionRow.deploy_id, func.count(), func.sum(case((DeployActionRow.ok, 0), else_=1)))
                .where(DeployActionRow.deploy_id.in_([r.id for r in rows])).group_by(DeployActionRow.deploy_id))
            counts = {deploy_id: (int(done), int(failed or 0)) for deploy_id, done, failed in counted}
            return [replace(_deploy(r, app_name, with_actions=False), counts=counts.get(r.id, (0, 0))) for r in rows]

    def interrupt_abandoned(self, server: str = "") -> list[int]:
        """Mark deploys whose server died (stale or missing lock) as interrupted and free their apps.

        `server` is the one starting now: its own locks are from before its restart, so they go at once rather
        than after LOCK_STALE_AFTER."""
        now = utcnow()
        done: list[int] = []
        with self._tx() as s:
            active = [DeployStatus.PLANNING.value, DeployStatus.APPLYING.value]
            for row in s.scalars(select(DeployRow).where(DeployRow.status.in_(active))):
                lock = s.scalars(select(AppLockRow).where(AppLockRow.deploy_id == row.id)).first()
                own = bool(server) and lock is not None and lock.server == server
                if lock is not None and now - lock.heartbeat_at < LOCK_STALE_AFTER and not own:
                    continue
                row.status, row.finished_at = DeployStatus.INTERRUPTED.value, now
                row.message = "the server running this deploy stopped; the next deploy converges"
                if lock is not None:
                    s.delete(lock)
                done.append(row.id)
        return done

    # --- the audit log -------------------------------------------------------------------------------

    def audit_events(self, subject_prefix: str | None = None, limit: int = 100,
                     before_id: int | None = None) -> list[AuditEvent]:
        """Newest first. `subject_prefix` such as `app/shop` selects one app's events (and its services')."""
        with self._tx() as s:
            query = select(AuditEventRow).order_by(AuditEventRow.id.desc()).limit(limit)
            if subject_prefix:
                query = query.where((AuditEventRow.subject == subject_prefix)
                                    | AuditEventRow.subject.startswith(subject_prefix + "/", autoescape=True))
            if before_id is not None:
                query = query.where(AuditEventRow.id < before_id)
            return [AuditEvent(id=r.id, at=r.at, actor=r.actor, action=r.action, subject=r.subject,
                               before=r.before, after=r.after) for r in s.scalars(query)]
