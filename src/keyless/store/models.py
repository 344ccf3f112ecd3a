"""The control plane's tables, as SQLAlchemy 2 declarative models (the migrations create exactly these)."""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Ids and revisions are INTEGER columns: 32 bits in PostgreSQL. Requests naming a larger one are refused early.
MAX_ID = 2**31 - 1


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timestamp that is always timezone-aware UTC when read back (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dt.datetime: UtcDateTime, dict[str, Any]: JSON}


class TargetRow(Base):
    """A deploy target, with the same fields a targets file gives it."""

    __tablename__ = "targets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    cloud: Mapped[str] = mapped_column(String(16))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AppRow(Base):
    """An app: its porter.yaml text is the source of truth; services and connections index it."""

    __tablename__ = "apps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    target_name: Mapped[str | None] = mapped_column(String(63))
    porter_yaml: Mapped[str] = mapped_column(Text)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    services: Mapped[list[ServiceRow]] = relationship(
        back_populates="app", cascade="all, delete-orphan", order_by="ServiceRow.position")


class ServiceRow(Base):
    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("app_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(16))  # web, worker, job, predeploy, initialDeploy
    position: Mapped[int] = mapped_column(Integer)

    app: Mapped[AppRow] = relationship(back_populates="services")
    connections: Mapped[list[ConnectionRow]] = relationship(
        back_populates="service", cascade="all, delete-orphan", order_by="ConnectionRow.position")


class ConnectionRow(Base):
    __tablename__ = "connections"
    __table_args__ = (UniqueConstraint("service_id", "type"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(32))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    position: Mapped[int] = mapped_column(Integer)

    service: Mapped[ServiceRow] = relationship(back_populates="connections")


class DeployRow(Base):
    """One plan, and the apply that may follow it: who asked, what was planned, how each action went."""

    __tablename__ = "deploys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    app_revision: Mapped[int] = mapped_column(Integer)
    target_name: Mapped[str] = mapped_column(String(63))
    status: Mapped[str] = mapped_column(String(16))
    requested_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column()
    finished_at: Mapped[dt.datetime | None] = mapped_column()
    plan: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    plan_text: Mapped[str | None] = mapped_column(Text)
    total_actions: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str | None] = mapped_column(Text)

    actions: Mapped[list[DeployActionRow]] = relationship(
        back_populates="deploy", cascade="all, delete-orphan", order_by="DeployActionRow.seq")


class DeployActionRow(Base):
    __tablename__ = "deploy_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deploy_id: Mapped[int] = mapped_column(ForeignKey("deploys.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    service: Mapped[str] = mapped_column(String(63))
    resource: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(500))
    ok: Mapped[bool] = mapped_column(Boolean)
    message: Mapped[str] = mapped_column(Text)
    seconds: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    deploy: Mapped[DeployRow] = relationship(back_populates="actions")


class AppLockRow(Base):
    """At most one deploy per app: the primary key is the lock; a second insert fails."""

    __tablename__ = "app_locks"

    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    deploy_id: Mapped[int] = mapped_column(Integer)
    holder: Mapped[str] = mapped_column(String(200))
    server: Mapped[str] = mapped_column(String(200), default="", server_default="")  # which server runs it
    acquired_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class HandoverRow(Base):
    """An app handed to the keyless operator: the KeylessApp the control plane wrote for it, and from what."""

    __tablename__ = "operator_handovers"

    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    target_name: Mapped[str] = mapped_column(String(63))
    namespace: Mapped[str] = mapped_column(String(63))
    revision: Mapped[int] = mapped_column(Integer)
    refresh_interval: Mapped[str | None] = mapped_column(String(32))
    suspend: Mapped[bool] = mapped_column(Boolean, default=False)
    handed_by: Mapped[str] = mapped_column(String(200))
    handed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AuditEventRow(Base):
    """Every change made through the control plane: who, what, and the state before and after."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(300), index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ApiTokenRow(Base):
    """An API token: only its SHA-256 is kept; the secret is shown once, when it is created."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    last_used_at: Mapped[dt.datetime | None] = mapped_column()
    revoked_at: Mapped[dt.datetime | None] = mapped_column()


class DashboardSessionRow(Base):
    """A dashboard login: the browser's cookie holds a random secret, of which only the SHA-256 is kept.

    It lasts until logout, its token's revocation, `idle_expires_at` (pushed back while it is used) or
    `expires_at` (fixed when it is opened), whichever comes first."""

    __tablename__ = "dashboard_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column()
    last_seen_at: Mapped[dt.datetime] = mapped_column()
    idle_expires_at: Mapped[dt.datetime] = mapped_column()
    expires_at: Mapped[dt.datetime] = mapped_column()


class SettingRow(Base):
    """Server-wide values kept across restarts (the key that signs CSRF tokens)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
