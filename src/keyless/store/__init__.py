"""The control plane's persistent state: models, Alembic migrations, and the Store that reads and writes them."""

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
from keyless.store.store import Store, default_database_url, default_files_dir

__all__ = [
    "AppChange",
    "AppRecord",
    "AuditEvent",
    "ConnectionRecord",
    "DeployActionRecord",
    "DeployRecord",
    "DeployStatus",
    "HandoverRecord",
    "Role",
    "ServiceRecord",
    "Store",
    "TargetRecord",
    "TokenRecord",
    "default_database_url",
    "default_files_dir",
]
