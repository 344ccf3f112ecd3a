"""porter.yaml: reading, validating and modelling an app and its services' connections."""

from keyless.spec.loader import LoadedApp, load_app, resolve_app_name
from keyless.spec.model import (
    App,
    AwsRoleConnection,
    AzureManagedIdentityConnection,
    ConnectionType,
    GcpServiceAccountConnection,
    IdentityConnection,
    Job,
    Service,
    ServiceType,
)

__all__ = [
    "App",
    "AwsRoleConnection",
    "AzureManagedIdentityConnection",
    "ConnectionType",
    "GcpServiceAccountConnection",
    "IdentityConnection",
    "Job",
    "LoadedApp",
    "Service",
    "ServiceType",
    "load_app",
    "resolve_app_name",
]
