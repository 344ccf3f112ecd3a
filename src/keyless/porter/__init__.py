"""porter.yaml: reading, validating and modelling an app and its services' connections."""

from keyless.porter.loader import LoadedApp, app_without_services, load_app, load_apps, resolve_app_name
from keyless.porter.model import (
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
    "app_without_services",
    "load_app",
    "load_apps",
    "resolve_app_name",
]
